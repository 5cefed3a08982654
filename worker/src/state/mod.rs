//! What the worker keeps on disk, in `STATE_DIR/DEVICE_ID/`: results not yet
//! acknowledged ([`outbox`]), the device's key and the master's pinned key
//! ([`identity`]), and a record of every external process group while it runs
//! ([`running`]).
//!
//! Architecture invariant: only this folder writes the state dir. The outbox's lock
//! keeps a second worker with the same device id off all of it.

pub mod identity;
pub mod outbox;
pub mod running;
