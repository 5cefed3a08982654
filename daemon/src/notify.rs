//! systemd's notify protocol, for a unit with `Type=notify` and `WatchdogSec=`.
//!
//! systemd hands a service the path of a Unix datagram socket (`NOTIFY_SOCKET`) and, with
//! a watchdog, the time within which it must hear from it (`WATCHDOG_USEC`). The daemon
//! says `READY=1` once it serves, `STATUS=...` lines that `systemctl status` shows,
//! `WATCHDOG=1` from its main loop (so a loop that hangs stops the pings and systemd
//! restarts the service), and `STOPPING=1` as it shuts down. Without `NOTIFY_SOCKET`
//! (started by hand, by a test, in Docker) a [`Notifier`] does nothing and never asks
//! its loop to wake up.
//!
//! The [`Notifier`] sends nothing by itself: its owner's loop asks [`Notifier::next_wake`]
//! how long it may sleep and calls [`Notifier::tick`] every turn, so the pings come from
//! the loop and stop when it stops.

use std::time::{Duration, Instant};

/// The variable that names the socket of the service manager.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Shortest time between two `STATUS=` lines: 5 s. The line is a summary for a person
/// running `systemctl status`, and each one is a datagram and a wake-up of systemd.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Tells the service manager how the daemon is doing; see the module's documentation.
#[derive(Debug)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` was set: without it every method does nothing.
    enabled: bool,
    /// Time between two `WATCHDOG=1`: half of `WATCHDOG_USEC`, as systemd advises, so
    /// one late turn does not get the service killed.
    ping_every: Option<Duration>,
    /// When the next `WATCHDOG=1` is due.
    next_ping: Option<Instant>,
    /// When the status line may next be sent.
    next_status: Option<Instant>,
    /// The status line sent last, so an unchanged one is not sent again.
    last_status: String,
    /// Whether a send already failed (logged once, not on every turn).
    failed: bool,
    /// Whether STOPPING=1 was sent: nothing but it is sent afterwards.
    stopped: bool,
}

impl Notifier {
    /// A notifier for the service manager named by the environment (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC` and `WATCHDOG_PID`), or one that does nothing when there is none.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os(NOTIFY_SOCKET).is_some();
        let ping_every = if enabled {
            sd_notify::watchdog_enabled()
                .map(|timeout| timeout / 2)
                .filter(|every| !every.is_zero())
        } else {
            None
        };
        Notifier {
            enabled,
            ping_every,
            next_ping: None,
            next_status: None,
            last_status: String::new(),
            failed: false,
            stopped: false,
        }
    }

    /// A notifier that does nothing (a daemon embedded in another program, or a test).
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            ping_every: None,
            next_ping: None,
            next_status: None,
            last_status: String::new(),
            failed: false,
            stopped: false,
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The time between two watchdog pings, when systemd asked for them.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Says `READY=1` with a first status line, and starts the watchdog pings and status
    /// updates that [`Notifier::tick`] sends.
    pub fn ready(&mut self, now: Instant, status: &str) {
        if !self.enabled || self.stopped {
            return;
        }
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
        self.last_status = status.to_string();
        self.next_status = Some(now + STATUS_INTERVAL);
        self.next_ping = self.ping_every.map(|every| now + every);
    }

    /// How long the loop may sleep before [`Notifier::tick`] has something to send, or
    /// `None` when nothing is ever due.
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        [self.next_ping, self.next_status]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Sends what is due at `now`: `WATCHDOG=1` when the ping is due, and the line
    /// `status` builds (called only then) when [`STATUS_INTERVAL`] has passed and it
    /// changed. Cheap when nothing is due: two comparisons.
    pub fn tick(&mut self, now: Instant, status: impl FnOnce() -> String) {
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if at <= now {
                self.send(&[sd_notify::NotifyState::Watchdog]);
                self.next_ping = Some(now + every);
            }
        }
        if self.next_status.is_some_and(|at| at <= now) {
            let line = status();
            if line != self.last_status {
                self.send(&[sd_notify::NotifyState::Status(&line)]);
                self.last_status = line;
            }
            self.next_status = Some(now + STATUS_INTERVAL);
        }
    }

    /// Says `STOPPING=1` with a last status line; nothing follows it (no ping, status
    /// line or READY=1), and a second call sends nothing.
    pub fn stopping(&mut self, status: &str) {
        if !self.enabled || self.stopped {
            return;
        }
        self.stopped = true;
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status(status),
        ]);
        self.next_ping = None;
        self.next_status = None;
    }

    /// Sends one datagram. A failure is logged once: the daemon serves on without the
    /// service manager's view of it, which is better than stopping.
    fn send(&mut self, states: &[sd_notify::NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            if !self.failed {
                log::warn!("cannot notify the service manager ({NOTIFY_SOCKET}): {error}");
                self.failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_notifier_never_asks_to_wake() {
        let mut notifier = Notifier::disabled();
        let now = Instant::now();
        notifier.ready(now, "serving");
        assert_eq!(notifier.next_wake(now), None);
        notifier.tick(now + Duration::from_secs(3600), || {
            panic!("no status is built when nobody listens")
        });
    }
}
