//! The link to the master: where `--join` points ([`resolve`]: `.local` names over
//! mDNS, `auto` by discovery), the one socket ([`connection`]), reconnecting with
//! backoff ([`backoff`]), and the loop that drives the sans-IO [`crate::session`] with
//! what the socket, the clock, the task pool and the state dir report ([`client`]),
//! and the name lookup of Termux, where the system resolver has no configuration
//! (`dns`).
//!
//! Architecture invariant: only [`connection`] reads or writes the master's socket.

pub mod backoff;
pub mod client;
pub mod connection;
mod dns;
pub mod resolve;

use crossbeam_channel::Receiver;

use crate::tasks::exec::CancelToken;

/// Asks a running worker to stop. Clones share the request; stopping is permanent.
///
/// [`StopHandle::stop`] asks for a graceful leave (drain, then goodbye);
/// [`StopHandle::stop_now`] for an immediate one, also in the middle of a drain. Either
/// wakes the worker at once wherever it waits (connected, connecting or backing off):
/// each level is a channel that never carries a message and is closed by stopping,
/// which the worker's `select!` sees immediately.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    // Stopping is cancelling: the same one-shot, wake-everyone flag that stops a
    // running command stops the whole worker.
    token: CancelToken,
    now: CancelToken,
}

impl StopHandle {
    /// A handle that has not been stopped.
    pub fn new() -> Self {
        StopHandle::default()
    }

    /// Asks the worker to leave gracefully: it takes no new tasks, waits up to its drain
    /// timeout for the running ones and for the acks of their results, then says
    /// goodbye, handing back whatever still runs. Calling it again is harmless.
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Asks the worker to leave at once: it says goodbye, handing back its running tasks,
    /// and cancels them, whether it was serving or draining.
    pub fn stop_now(&self) {
        self.now.cancel();
        self.token.cancel();
    }

    /// Whether [`StopHandle::stop`] or [`StopHandle::stop_now`] has been called.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether [`StopHandle::stop_now`] has been called.
    pub fn is_stopped_now(&self) -> bool {
        self.now.is_cancelled()
    }

    /// A receiver that becomes ready (disconnected) once stopped, for `select!`.
    pub(crate) fn stopped_receiver(&self) -> &Receiver<()> {
        self.token.cancelled_receiver()
    }

    /// A receiver that becomes ready once stopped at once, for `select!`.
    pub(crate) fn stopped_now_receiver(&self) -> &Receiver<()> {
        self.now.cancelled_receiver()
    }
}
