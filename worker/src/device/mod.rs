//! The device the worker runs on, as it can be observed: what it is and how busy it is
//! ([`profile`]), and the processes `/proc` shows (`proc`). Nothing here writes
//! anything; later power, heat and owner-presence sensing belongs here too.

pub mod benchmark;
pub(crate) mod proc;
pub mod profile;
