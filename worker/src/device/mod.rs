//! The device the worker runs on, as it can be observed: what it is and how busy it is
//! ([`profile`]), and the processes `/proc` shows (`proc`). Nothing here writes
//! anything. [`power`] reads the battery, the mains supply and the temperatures;
//! owner-presence sensing belongs here too later.

pub mod benchmark;
pub mod power;
pub(crate) mod proc;
pub mod profile;
