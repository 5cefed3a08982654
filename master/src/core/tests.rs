//! The core's tests, on simulated time with no sockets: a `Sim` harness
//! (after quinn-proto's `Pair`) drives the core, fake workers and clients
//! until idle, and a fake database applies every batch.

#![allow(clippy::unwrap_used)]

mod sim;

mod auth;
mod devices;
mod durability;
mod held;
mod life;
mod lifecycle;
mod listing;
mod nesting;
mod prop;
mod registration;
mod replies;
mod restart;
mod results;
mod scheduling;
mod text;
