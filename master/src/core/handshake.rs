//! One connection's authentication: its role, the handshake in progress,
//! whether it still has a deadline, and whether the core is closing it.
//!
//! Each connection owns one [`ConnAuth`] (in the registry's `Conn`), the
//! way rustls's `tlsserver-mio` keeps a connection's TLS state on the
//! connection: every decision that needs only this connection's state is
//! a method here. What needs more (the enrolled keys, the secrets, the
//! timer table that holds the deadline, persisting an enrollment) is
//! routed by `Core` in `auth.rs`; a method that drops the deadline says
//! so, and the caller removes its entry from the timer table.

use super::auth::{auth_required, Refusal};
use protocol::auth::{Challenge, Hello, Nonce};
use protocol::{ErrorCode, Message};
use std::time::Duration;

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Role {
    /// Not authenticated yet.
    #[default]
    Pending,
    /// Not authenticated, from a read-only source, and reading.
    Reader,
    /// Authenticated as this enrolled device.
    Worker(String),
    /// An older worker accepted by the legacy switch, as this device.
    Legacy(String),
    /// Authenticated with the admin token.
    Admin,
    /// Authentication is off: everything is allowed.
    Open,
}

/// A connection's authentication state.
#[derive(Debug, Default)]
pub(super) struct ConnAuth {
    role: Role,
    /// The master's nonce for this connection's handshake.
    nonce: Option<Nonce>,
    /// A hello that is waiting for its proof.
    /// (Boxed: it is large, and a connection holds it only between hello
    /// and proof; inline, it made every connection's state 4× larger.)
    handshake: Option<Box<(Hello, Challenge)>>,
    /// Whether the hello has been used (one handshake per connection).
    hello_seen: bool,
    /// Until when it may stay without authenticating.
    deadline: Option<Duration>,
    /// It comes from a read-only source.
    may_read: bool,
    /// The core asked the loop to close it; it is ignored until it goes.
    closing: bool,
}

/// What a message asks for, for the role check.
enum Need {
    Worker,
    Read,
    Change,
    Handshake,
    Nothing,
}

fn need(message: &Message) -> Need {
    match message {
        Message::Register(_)
        | Message::Heartbeat(_)
        | Message::TaskResult(_)
        | Message::TaskProgress(_)
        | Message::Goodbye(_)
        | Message::Ack(_)
        | Message::Error(_) => Need::Worker,
        Message::Status
        | Message::ListTasks(_)
        | Message::ListDevices(_)
        | Message::TaskStatus(_)
        | Message::DeviceInfo(_)
        | Message::Subscribe(_)
        | Message::Strategy(protocol::StrategyRequest { strategy: None }) => Need::Read,
        Message::TaskSubmit(_)
        | Message::TaskCancel(_)
        | Message::TaskRetry(_)
        | Message::TaskDelete(_)
        | Message::DrainDevice(_)
        | Message::RevokeDevice(_)
        | Message::Prune(_)
        | Message::Strategy(_) => Need::Change,
        Message::AuthHello(_) | Message::AuthProof(_) => Need::Handshake,
        Message::TaskAssign(_) | Message::Event(_) => Need::Nothing,
    }
}

/// What [`ConnAuth::access`] allows.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Grant {
    /// The message, in the connection's current role.
    AsIs,
    /// A read from a read-only source, which makes the connection a reader.
    AsReader,
    /// A worker message from a connection that has not authenticated,
    /// under the legacy switch: allowed if the device it speaks for has no
    /// credential (the registry knows; see `Registry::legacy_speaker_allowed`).
    IfLegacySpeaker,
}

impl ConnAuth {
    /// A connection on a master with authentication off: it may do
    /// everything.
    pub(super) fn open() -> ConnAuth {
        ConnAuth {
            role: Role::Open,
            ..ConnAuth::default()
        }
    }

    /// A connection that must authenticate by `deadline`, with `nonce` as
    /// its handshake's challenge; `may_read` when it comes from a
    /// read-only source.
    pub(super) fn pending(nonce: Nonce, may_read: bool, deadline: Duration) -> ConnAuth {
        ConnAuth {
            nonce: Some(nonce),
            may_read,
            deadline: Some(deadline),
            ..ConnAuth::default()
        }
    }

    /// What the connection may do now.
    pub(super) fn role(&self) -> &Role {
        &self.role
    }

    /// Whether it has authenticated (or authentication is off), so it may
    /// send full-size lines.
    pub(super) fn is_trusted(&self) -> bool {
        matches!(
            self.role,
            Role::Worker(_) | Role::Legacy(_) | Role::Admin | Role::Open
        )
    }

    /// The device it authenticated as, if any.
    pub(super) fn device(&self) -> Option<&str> {
        match &self.role {
            Role::Worker(id) => Some(id),
            _ => None,
        }
    }

    /// Whether it speaks for `device_id` by its role (authenticated as it,
    /// or registered as it under the legacy switch).
    pub(super) fn speaks_for(&self, device_id: &str) -> bool {
        matches!(&self.role, Role::Worker(id) | Role::Legacy(id) if id == device_id)
    }

    /// Whether the core asked the loop to close it (it is ignored until it
    /// goes).
    pub(super) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Marks it closing (a failed text `auth`), leaving its deadline, if
    /// any, to fire into a connection that is already closing.
    pub(super) fn mark_closing(&mut self) {
        self.closing = true;
    }

    /// Whether it still waits to authenticate by a deadline (an entry of
    /// the core's timer table).
    pub(super) fn has_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// Marks it closing and drops its deadline. `None` if it was already
    /// closing; otherwise whether it had a deadline (whose timer the caller
    /// removes).
    pub(super) fn start_closing(&mut self) -> Option<bool> {
        if self.closing {
            return None;
        }
        self.closing = true;
        Some(self.deadline.take().is_some())
    }

    /// Whether `message` is allowed in its role (see [`Grant`]), decided
    /// without changing anything and without copying the role: this runs
    /// for every message. `sender` is the message's `sender_id`.
    pub(super) fn access(
        &self,
        sender: Option<&str>,
        message: &Message,
        allow_legacy: bool,
    ) -> Result<Grant, Refusal> {
        let role = &self.role;
        let allowed = match need(message) {
            Need::Nothing | Need::Handshake => Ok(()),
            Need::Worker => match role {
                Role::Open => Ok(()),
                // A legacy worker speaks for the device it registered as,
                // and only for that one (it proved nothing else).
                Role::Legacy(id) => match sender {
                    Some(sender) if sender != id => Err(Refusal::stay(
                        ErrorCode::Forbidden,
                        format!("this connection registered as device {id}, not {sender}"),
                    )),
                    _ => Ok(()),
                },
                Role::Worker(id) => match (message, sender) {
                    (Message::Register(_), Some(sender)) if sender != id => Err(Refusal::stay(
                        ErrorCode::Forbidden,
                        format!("this connection authenticated as device {id}, not {sender}"),
                    )),
                    _ => Ok(()),
                },
                Role::Admin => Err(Refusal::stay(
                    ErrorCode::Forbidden,
                    "an admin connection cannot speak for a worker; workers authenticate with \
                     their own credential",
                )),
                Role::Pending | Role::Reader if allow_legacy => return Ok(Grant::IfLegacySpeaker),
                Role::Pending | Role::Reader => Err(auth_required()),
            },
            Need::Read => match role {
                Role::Open | Role::Admin | Role::Reader => Ok(()),
                Role::Legacy(_) if matches!(message, Message::Status) => Ok(()),
                Role::Pending if self.may_read => return Ok(Grant::AsReader),
                Role::Pending => Err(auth_required()),
                Role::Worker(_) | Role::Legacy(_) => Err(Refusal::stay(
                    ErrorCode::Forbidden,
                    "a worker credential may register, heartbeat and report its own tasks, \
                     nothing else",
                )),
            },
            Need::Change => match role {
                Role::Open | Role::Admin => Ok(()),
                Role::Pending | Role::Reader => Err(auth_required()),
                Role::Worker(_) | Role::Legacy(_) => Err(Refusal::stay(
                    ErrorCode::Forbidden,
                    "a worker credential cannot submit, cancel, drain or revoke; use the \
                     admin token",
                )),
            },
        };
        allowed.map(|()| Grant::AsIs)
    }

    /// What a text command may do: `Ok(true)` if it may and makes the
    /// connection a reader (see [`ConnAuth::become_reader`]), `Ok(false)`
    /// if it may as it is, or the reason it may not. `changes`: the
    /// command changes the cluster.
    pub(super) fn access_text(&self, changes: bool) -> Result<bool, String> {
        match (&self.role, changes) {
            (Role::Open | Role::Admin, _) => Ok(false),
            (Role::Reader, false) => Ok(false),
            (Role::Pending, false) if self.may_read => Ok(true),
            (Role::Worker(_) | Role::Legacy(_), _) => {
                Err("a worker connection cannot use text commands".into())
            }
            (_, true) => Err(
                "this command changes the cluster: send `auth TOKEN` (the admin \
                 token) first"
                    .into(),
            ),
            (_, false) => Err("send `auth TOKEN` first (only help works without it from \
                 this address)"
                .into()),
        }
    }

    /// It starts reading without a token (from a read-only source): it is a
    /// reader from now on, with no deadline. Whether it had one (whose
    /// timer the caller removes).
    pub(super) fn become_reader(&mut self) -> bool {
        self.role = Role::Reader;
        self.deadline.take().is_some()
    }

    /// It authenticated as `role` (or, for `None`, keeps its role): it
    /// leaves the pending set. Whether it had a deadline (whose timer the
    /// caller removes).
    pub(super) fn authenticated(&mut self, role: Option<Role>) -> bool {
        if let Some(role) = role {
            self.role = role;
        }
        self.deadline.take().is_some()
    }

    /// `auth TOKEN` in text mode matched: a connection that had not
    /// authenticated becomes an admin.
    pub(super) fn text_admin(&mut self) {
        if matches!(self.role, Role::Pending | Role::Reader) {
            self.role = Role::Admin;
        }
    }

    /// Ends the admin role the HTTP edge granted for a signed-in session,
    /// when a later request on the connection brings no live session: the
    /// connection reads by the read-only rule again, as a new one would.
    pub(super) fn end_granted_admin(&mut self) {
        if matches!(self.role, Role::Admin) {
            self.role = Role::Pending;
        }
    }

    /// A registration on a connection that has not authenticated (legacy
    /// switch) makes it a legacy worker for `device_id`; whether it did.
    pub(super) fn register_legacy(&mut self, device_id: &str) -> bool {
        if matches!(self.role, Role::Pending | Role::Reader) {
            self.role = Role::Legacy(device_id.to_string());
            true
        } else {
            false
        }
    }

    /// Whether it may start a handshake now: its nonce (the challenge), or
    /// why not.
    pub(super) fn hello_allowed(&self) -> Result<Nonce, Refusal> {
        match self.role {
            Role::Pending | Role::Reader => {}
            Role::Open => {
                return Err(Refusal::stay(
                    ErrorCode::InvalidState,
                    "authentication is turned off on this master; send requests directly",
                ))
            }
            _ => {
                return Err(Refusal::stay(
                    ErrorCode::InvalidState,
                    "this connection has already authenticated",
                ))
            }
        }
        if self.hello_seen {
            return Err(Refusal::close(
                ErrorCode::AuthFailed,
                "one handshake per connection; reconnect to try again",
            ));
        }
        self.nonce
            .ok_or_else(|| Refusal::close(ErrorCode::InternalError, "no nonce for this connection"))
    }

    /// Keeps `hello` and the `challenge` it was answered with until the
    /// proof comes; the one hello of this connection is used.
    pub(super) fn start_handshake(&mut self, hello: Hello, challenge: Challenge) {
        self.hello_seen = true;
        self.handshake = Some(Box::new((hello, challenge)));
    }

    /// The hello waiting for its proof, and its challenge (taken: a proof
    /// is checked once).
    pub(super) fn take_handshake(&mut self) -> Option<(Hello, Challenge)> {
        self.handshake.take().map(|boxed| *boxed)
    }
}
