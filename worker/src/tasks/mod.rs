//! Running tasks: the fixed pool of slot threads ([`pool`]), the [`executor::Executor`]
//! that runs every task type under the owner's policy ([`config`]), the interface a
//! task type implements ([`task`]), custom types from a handlers folder
//! ([`handlers`]), the built-in `http_request` (`http`), and for external
//! commands the process groups ([`exec`]), the [`sandbox`], the trial of its risky
//! system calls in a child ([`probe`]) and the catching of escaped processes (`orphans`).

pub mod config;
pub mod exec;
pub mod executor;
pub mod handlers;
pub(crate) mod http;
pub mod limits;
pub(crate) mod orphans;
pub mod pool;
pub mod probe;
pub mod sandbox;
pub mod task;
