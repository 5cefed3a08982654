//! Who may say what: the handshake, roles, and the limits on connections
//! that have not authenticated yet.
//!
//! Every connection starts `Pending` (or `Open` when authentication is
//! turned off, which only a loopback master allows). The handshake of
//! [`protocol::auth`] makes it a `Worker` for one device or an `Admin`;
//! `auth TOKEN` in text mode makes it an `Admin`. A pending connection from
//! an address in `read_only_from` may read without authenticating and then
//! becomes a `Reader`. With the legacy switch on, an older worker that
//! cannot authenticate registers as `Legacy`: it may heartbeat, report its
//! own tasks and ask for status, and nothing else.

use super::records::DeviceKeyRecord;
use super::timers::{TimerKey, TimerKind};
use super::{ConnId, Core, Now, Output, Reply, ReplyError};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use protocol::auth::{self, Challenge, Hello, KeyPair, Method, Nonce, Proof, Token, Transcript};
use protocol::{AuthChallenge, Authenticated, ErrorCode, ErrorReply, Message, Revoked, Success};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The secrets the master checks proofs with and proves itself with.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Lets new workers enroll.
    pub join: Token,
    /// Lets clients change and read everything.
    pub admin: Token,
    /// The master's identity; enrolled workers pin its public half.
    pub master_key: KeyPair,
}

/// A network and prefix length, such as `127.0.0.0/8` or `::1/128`.
pub type Network = IpNet;

/// Reads `ADDRESS/PREFIX` or a bare address (a network of one: `/32` or
/// `/128`), as `--read-only-from` takes them.
pub fn parse_network(text: &str) -> Result<Network, String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or ADDRESS/PREFIX"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix.trim().parse::<u8>().ok().filter(|&p| p <= max),
        None => Some(max),
    };
    prefix
        .and_then(|prefix| IpNet::new(address, prefix).ok())
        .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))
}

/// Whether `ip` lies in `network`. An IPv4 address written as an
/// IPv4-mapped IPv6 address counts as IPv4, since a dual-stack listener
/// reports IPv4 peers that way.
pub(super) fn network_contains(network: &Network, ip: IpAddr) -> bool {
    network.contains(&ip.to_canonical())
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Whether connections must authenticate. Off means every connection
    /// may do everything; the binary allows that on loopback only.
    pub required: bool,
    /// Accept older workers that cannot authenticate (register, heartbeat,
    /// report their own tasks, ask for status; never submit).
    pub allow_legacy_workers: bool,
    /// Sources that may read (status, devices, tasks, task, subscribe)
    /// without authenticating.
    pub read_only_from: Vec<Network>,
    /// How long a connection has to authenticate (or, from a read-only
    /// source, to start reading).
    pub deadline: Duration,
    /// The most connections waiting to authenticate at once; past it the
    /// one that has waited longest is closed.
    pub max_unauthenticated: usize,
}

/// How long a connection has to authenticate, by default.
pub const DEFAULT_AUTH_DEADLINE: Duration = Duration::from_secs(5);
/// The most connections waiting to authenticate, by default.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 128;

impl AuthPolicy {
    /// Authentication turned off: for tests of other things, and for a
    /// master that listens on loopback only and says so.
    pub fn off() -> AuthPolicy {
        AuthPolicy {
            required: false,
            ..AuthPolicy::default()
        }
    }

    /// The loopback networks, which may read without a token by default.
    pub fn loopback() -> Vec<Network> {
        vec![
            IpNet::from(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::from(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        ]
    }
}

impl Default for AuthPolicy {
    fn default() -> AuthPolicy {
        AuthPolicy {
            required: true,
            allow_legacy_workers: false,
            read_only_from: AuthPolicy::loopback(),
            deadline: DEFAULT_AUTH_DEADLINE,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
        }
    }
}

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
    pub(super) role: Role,
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
    pub(super) closing: bool,
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
        | Message::Subscribe(_) => Need::Read,
        Message::TaskSubmit(_)
        | Message::TaskCancel(_)
        | Message::TaskRetry(_)
        | Message::DrainDevice(_)
        | Message::RevokeDevice(_) => Need::Change,
        Message::AuthHello(_) | Message::AuthProof(_) => Need::Handshake,
        Message::TaskAssign(_) | Message::Event(_) => Need::Nothing,
    }
}

/// What [`Core::authorize`] allows.
#[derive(Debug, PartialEq, Eq)]
enum Grant {
    /// The message, in the connection's current role.
    AsIs,
    /// A read from a read-only source, which makes the connection a reader.
    AsReader,
}

/// A refusal: the reply, and whether the connection closes after it.
pub(super) struct Refusal {
    pub(super) error: ReplyError,
    pub(super) close: bool,
}

impl Refusal {
    fn stay(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            error: ReplyError::new(code, message),
            close: false,
        }
    }

    fn close(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            error: ReplyError::new(code, message),
            close: true,
        }
    }
}

fn auth_required() -> Refusal {
    Refusal::stay(
        ErrorCode::AuthRequired,
        "authenticate first: workers join with RETIRE_JOIN_TOKEN (or `--token-file`), clients set RETIRE_TOKEN \
         (the admin token), netcat users type `auth TOKEN`",
    )
}

impl Core {
    /// Replaces the secrets (at start, and when the operator rotates a
    /// token). Connections that already authenticated stay.
    pub fn set_secrets(&mut self, secrets: Secrets) {
        self.secrets = Some(secrets);
    }

    /// Restores the enrolled devices' public keys and revocations.
    pub fn restore_device_keys(&mut self, keys: Vec<DeviceKeyRecord>) {
        self.registry.device_keys = keys
            .into_iter()
            .map(|key| (key.device_id.clone(), key))
            .collect();
    }

    /// Whether `conn` may still only send small lines (it has not
    /// authenticated).
    pub fn is_trusted(&self, conn: ConnId) -> bool {
        self.registry.is_trusted(conn)
    }

    /// Whether `conn` is an anonymous reader: no token, from a read-only
    /// source, and it has started reading (it has no authentication
    /// deadline any more; the loop closes it when it is idle).
    pub fn is_reader(&self, conn: ConnId) -> bool {
        self.registry
            .conns
            .get(&conn)
            .is_some_and(|state| state.auth.role == Role::Reader)
    }

    /// Whether `conn` is subscribed to events (a `retire watch`): with
    /// nothing queued for it, it is waiting, not idle.
    pub fn is_subscribed(&self, conn: ConnId) -> bool {
        self.registry
            .conns
            .get(&conn)
            .is_some_and(|state| state.subscription.is_some())
    }

    /// Sets up a new connection's authentication: open when it is off,
    /// otherwise pending with a deadline, closing the connection that has
    /// waited longest when too many are pending.
    pub(super) fn auth_connect(&mut self, now: Now, conn: ConnId, nonce: Nonce) {
        let policy = &self.config.auth;
        let required = policy.required;
        let deadline = now.monotonic + policy.deadline;
        let max_pending = policy.max_unauthenticated.max(1);
        let may_read = self.registry.conns.get(&conn).is_some_and(|state| {
            state.peer_ip.is_some_and(|ip| {
                policy
                    .read_only_from
                    .iter()
                    .any(|net| network_contains(net, ip))
            })
        });
        let Some(state) = self.registry.conns.get_mut(&conn) else {
            return;
        };
        if !required {
            state.auth.role = Role::Open;
            return;
        }
        state.auth.nonce = Some(nonce);
        state.auth.may_read = may_read;
        state.auth.deadline = Some(deadline);
        self.timers.set(TimerKey::Auth(conn), deadline);
        while self.timers.len(TimerKind::Auth) > max_pending {
            let Some((_, &TimerKey::Auth(oldest))) = self.timers.first(TimerKind::Auth) else {
                break;
            };
            self.timers.remove(&TimerKey::Auth(oldest));
            self.refuse_and_close(
                oldest,
                None,
                ErrorCode::TooManyConnections,
                format!(
                    "more than {max_pending} connections are waiting to authenticate; \
                     closing the one that waited longest"
                ),
            );
        }
    }

    /// A connection went away: forget its deadline.
    pub(super) fn auth_disconnect(&mut self, conn: ConnId, auth: &ConnAuth) {
        if auth.deadline.is_some() {
            self.timers.remove(&TimerKey::Auth(conn));
        }
    }

    /// Closes the connections whose time to authenticate ran out.
    pub(super) fn expire_auth(&mut self, now: Now) {
        while let Some(key) = self.timers.pop_due(TimerKind::Auth, now.monotonic) {
            let TimerKey::Auth(conn) = key else {
                continue;
            };
            self.refuse_and_close(
                conn,
                None,
                ErrorCode::AuthTimeout,
                format!(
                    "did not authenticate within {:?}; closing the connection",
                    self.config.auth.deadline
                ),
            );
        }
    }

    /// Whether `conn` may send `message`; a pending connection from a
    /// read-only source that reads becomes a reader.
    pub(super) fn authorize(
        &mut self,
        conn: ConnId,
        sender: Option<&str>,
        message: &Message,
    ) -> Result<(), Refusal> {
        if self.access(conn, sender, message)? == Grant::AsReader {
            self.become_reader(conn);
        }
        Ok(())
    }

    /// The decision of [`Core::authorize`], made without changing anything
    /// (and without copying the role: this runs for every message).
    fn access(
        &self,
        conn: ConnId,
        sender: Option<&str>,
        message: &Message,
    ) -> Result<Grant, Refusal> {
        let allow_legacy = self.config.auth.allow_legacy_workers;
        let Some(state) = self.registry.conns.get(&conn) else {
            return Err(Refusal::close(
                ErrorCode::InternalError,
                "unknown connection",
            ));
        };
        let role = &state.auth.role;
        let may_read = state.auth.may_read;
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
                Role::Pending | Role::Reader if allow_legacy => {
                    self.legacy_speaker_allowed(sender, message)
                }
                Role::Pending | Role::Reader => Err(auth_required()),
            },
            Need::Read => match role {
                Role::Open | Role::Admin | Role::Reader => Ok(()),
                Role::Legacy(_) if matches!(message, Message::Status) => Ok(()),
                Role::Pending if may_read => return Ok(Grant::AsReader),
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

    /// An older worker without credentials (legacy switch on): it may
    /// register under an id no enrolled device holds, and send worker
    /// messages for such a device.
    fn legacy_speaker_allowed(
        &self,
        sender: Option<&str>,
        message: &Message,
    ) -> Result<(), Refusal> {
        let Some(id) = sender else {
            return match message {
                Message::Register(_) => Ok(()),
                _ => Err(auth_required()),
            };
        };
        match self.registry.device_keys.get(id) {
            Some(key) if key.revoked_unix_ms.is_some() => Err(Refusal::close(
                ErrorCode::DeviceRevoked,
                format!("device {id} was revoked"),
            )),
            Some(_) => Err(Refusal::stay(
                ErrorCode::AuthRequired,
                format!("device {id} is enrolled: it must authenticate with its own credential"),
            )),
            None => Ok(()),
        }
    }

    /// A registration on a pending connection under the legacy switch
    /// makes it a legacy worker for that device.
    pub(super) fn note_legacy_register(&mut self, conn: ConnId, device_id: &str) {
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            if matches!(state.auth.role, Role::Pending | Role::Reader) {
                state.auth.role = Role::Legacy(device_id.to_string());
                log::warn!("device {device_id} registered without credentials (legacy switch)");
                self.trust(conn);
            }
        }
    }

    fn become_reader(&mut self, conn: ConnId) {
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            state.auth.role = Role::Reader;
            if state.auth.deadline.take().is_some() {
                self.timers.remove(&TimerKey::Auth(conn));
            }
        }
    }

    /// The connection authenticated: it leaves the pending set and the loop
    /// lifts its small line limit.
    fn trust(&mut self, conn: ConnId) {
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            if state.auth.deadline.take().is_some() {
                self.timers.remove(&TimerKey::Auth(conn));
            }
        }
        self.out.push(Output::Trusted { conn });
    }

    fn refuse_and_close(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        code: ErrorCode,
        message: String,
    ) {
        let Some(state) = self.registry.conns.get_mut(&conn) else {
            return;
        };
        if state.auth.closing {
            return;
        }
        state.auth.closing = true;
        if state.auth.deadline.take().is_some() {
            self.timers.remove(&TimerKey::Auth(conn));
        }
        // A refusal that follows from a change (a revocation) waits for its
        // commit like every reply; the others reveal nothing and go at once.
        let after = (code == ErrorCode::DeviceRevoked).then_some(self.changes.last_write_batch());
        self.out.send(
            conn,
            Message::Error(ErrorReply::new(reply_to, code, message)),
            after,
        );
        self.out.close(conn);
    }

    /// Answers a refusal from [`Core::authorize`].
    pub(super) fn send_refusal(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        refusal: Refusal,
    ) {
        if refusal.close {
            self.refuse_and_close(conn, reply_to, refusal.error.code, refusal.error.message);
        } else {
            let reply = ErrorReply::new(reply_to, refusal.error.code, refusal.error.message);
            self.out.send(conn, Message::Error(reply), None);
        }
    }

    /// `auth_hello`: check the claim, answer with the challenge.
    pub(super) fn on_auth_hello(&mut self, conn: ConnId, reply_to: Option<String>, hello: Hello) {
        let result = self.auth_hello(conn, hello);
        self.finish_auth_step(conn, reply_to, result, None);
    }

    fn auth_hello(&mut self, conn: ConnId, hello: Hello) -> Result<Reply, Refusal> {
        let Some(secrets) = self.secrets.as_ref() else {
            return Err(Refusal::stay(
                ErrorCode::InvalidState,
                "authentication is turned off on this master; send requests directly",
            ));
        };
        let master_key = secrets.master_key.public();
        let Some(state) = self.registry.conns.get(&conn) else {
            return Err(Refusal::close(
                ErrorCode::InternalError,
                "unknown connection",
            ));
        };
        match state.auth.role {
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
        if state.auth.hello_seen {
            return Err(Refusal::close(
                ErrorCode::AuthFailed,
                "one handshake per connection; reconnect to try again",
            ));
        }
        let Some(nonce) = state.auth.nonce else {
            return Err(Refusal::close(
                ErrorCode::InternalError,
                "no nonce for this connection",
            ));
        };
        match &hello.method {
            Method::Join {
                device_id,
                public_key,
            } => {
                // The public key is no secret (it crossed the wire when the
                // device enrolled), so a join for an enrolled id proves
                // nothing about holding the device's key: an enrolled device
                // authenticates with `device`, never with `join` again.
                let _ = public_key;
                match self.registry.device_keys.get(device_id) {
                    Some(key) if key.revoked_unix_ms.is_some() => return Err(revoked(device_id)),
                    Some(_) => return Err(taken(device_id)),
                    None => {}
                }
            }
            Method::Device { device_id } => match self.registry.device_keys.get(device_id) {
                Some(key) if key.revoked_unix_ms.is_some() => return Err(revoked(device_id)),
                Some(key) if key.public_key.is_some() => {}
                _ => {
                    return Err(Refusal::close(
                        ErrorCode::AuthFailed,
                        format!(
                            "device {device_id} is not enrolled here; join with the join token"
                        ),
                    ))
                }
            },
            Method::Admin => {}
        }
        let challenge = Challenge {
            server_nonce: nonce,
            master_key,
        };
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            state.auth.hello_seen = true;
            state.auth.handshake = Some(Box::new((hello, challenge)));
        }
        Ok(Reply::from(AuthChallenge {
            challenge: challenge.server_nonce.to_string(),
            master_key: challenge.master_key.to_string(),
            success: Success,
        }))
    }

    /// `auth_proof`: check it against the hello's transcript; on success
    /// the connection gets its role and the master proves itself back.
    pub(super) fn on_auth_proof(
        &mut self,
        now: Now,
        conn: ConnId,
        reply_to: Option<String>,
        proof: Proof,
    ) {
        let written_before = self.changes.last_write_batch();
        let result = self.auth_proof(now, conn, proof);
        // An enrollment is acknowledged only once the key is on disk; a
        // handshake that wrote nothing waits for nothing (so clients can
        // still authenticate, and read, while the disk is failing).
        let after = (self.changes.last_write_batch() != written_before)
            .then_some(self.changes.last_write_batch());
        self.finish_auth_step(conn, reply_to, result, after);
    }

    fn auth_proof(&mut self, now: Now, conn: ConnId, proof: Proof) -> Result<Reply, Refusal> {
        let Some(secrets) = self.secrets.clone() else {
            return Err(Refusal::stay(
                ErrorCode::InvalidState,
                "authentication is turned off on this master; send requests directly",
            ));
        };
        let peer = self.peer_label(conn);
        let handshake = self
            .registry
            .conns
            .get_mut(&conn)
            .and_then(|state| state.auth.handshake.take());
        let Some((hello, challenge)) = handshake.map(|boxed| *boxed) else {
            return Err(Refusal::close(
                ErrorCode::AuthFailed,
                "auth_proof must follow auth_hello on the same connection",
            ));
        };
        let transcript = Transcript::new(&hello, &challenge);
        let failed = |what: &str| {
            log::warn!("authentication failed from {peer}: {what}");
            Refusal::close(ErrorCode::AuthFailed, "authentication failed")
        };
        let (role, master_proof) = match &hello.method {
            Method::Join {
                device_id,
                public_key,
            } => {
                if !transcript.verify_client_mac(&secrets.join, &proof) {
                    return Err(failed(&format!("wrong join proof for device {device_id}")));
                }
                // Another connection may have enrolled the id, or it may have
                // been revoked, since the hello.
                match self.registry.device_keys.get(device_id) {
                    Some(key) if key.revoked_unix_ms.is_some() => return Err(revoked(device_id)),
                    Some(_) => return Err(taken(device_id)),
                    None => {
                        self.check_storage()
                            .map_err(|error| Refusal { error, close: true })?;
                        let enrolled_from = self
                            .registry
                            .conns
                            .get(&conn)
                            .and_then(|c| c.peer_ip)
                            .map(|ip| ip.to_string());
                        let record = DeviceKeyRecord {
                            device_id: device_id.clone(),
                            public_key: Some(public_key.to_string()),
                            enrolled_unix_ms: now.unix_ms,
                            enrolled_from: enrolled_from.clone(),
                            revoked_unix_ms: None,
                        };
                        self.persist_device_key(&record);
                        self.registry.device_keys.insert(device_id.clone(), record);
                        // Enrolling is rare and is what a leaked join token
                        // allows: the operator sees every one (log, event,
                        // `retire devices`), once it is on disk.
                        log::info!("device {device_id} enrolled from {peer}");
                        self.emit(
                            protocol::Event::DeviceEnrolled {
                                device_id: device_id.clone(),
                                enrolled_from,
                            },
                            true,
                        );
                    }
                }
                (
                    Role::Worker(device_id.clone()),
                    transcript.master_mac(&secrets.join),
                )
            }
            Method::Device { device_id } => {
                let key = self
                    .registry
                    .device_keys
                    .get(device_id)
                    .filter(|key| key.revoked_unix_ms.is_none())
                    .and_then(|key| key.public_key.as_deref())
                    .and_then(|key| key.parse::<auth::PublicKey>().ok());
                let Some(key) = key else {
                    return Err(failed(&format!("device {device_id} has no usable key")));
                };
                if !transcript.verify_device_signature(&key, &proof) {
                    return Err(failed(&format!("wrong signature for device {device_id}")));
                }
                (
                    Role::Worker(device_id.clone()),
                    transcript.master_signature(&secrets.master_key),
                )
            }
            Method::Admin => {
                if !transcript.verify_client_mac(&secrets.admin, &proof) {
                    return Err(failed("wrong admin proof"));
                }
                (Role::Admin, transcript.master_mac(&secrets.admin))
            }
        };
        let role_name = match &role {
            Role::Worker(_) => "worker",
            _ => "admin",
        };
        let device_id = match &role {
            Role::Worker(id) => Some(id.clone()),
            _ => None,
        };
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            state.auth.role = role;
        }
        self.trust(conn);
        Ok(Reply::from(Authenticated {
            device_id,
            master_proof: master_proof.to_string(),
            role: role_name.into(),
            success: Success,
        }))
    }

    /// `auth TOKEN` in text mode: the admin token itself, compared in
    /// constant time. Returns whether it matched; a wrong token closes
    /// the connection.
    pub(super) fn text_auth(&mut self, conn: ConnId, token: &str) -> bool {
        let matched = self
            .secrets
            .as_ref()
            .is_some_and(|secrets| secrets.admin.matches_text(token));
        if matched {
            if let Some(state) = self.registry.conns.get_mut(&conn) {
                if matches!(state.auth.role, Role::Pending | Role::Reader) {
                    state.auth.role = Role::Admin;
                }
            }
            self.trust(conn);
        } else {
            log::warn!(
                "text-mode authentication failed from {}",
                self.peer_label(conn)
            );
        }
        matched
    }

    /// What a text command may do on `conn`: `Ok` or the reason it may not.
    pub(super) fn authorize_text(&mut self, conn: ConnId, changes: bool) -> Result<(), String> {
        let Some(state) = self.registry.conns.get(&conn) else {
            return Err("unknown connection".into());
        };
        match (&state.auth.role, changes) {
            (Role::Open | Role::Admin, _) => Ok(()),
            (Role::Reader, false) => Ok(()),
            (Role::Pending, false) if state.auth.may_read => {
                self.become_reader(conn);
                Ok(())
            }
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

    fn finish_auth_step(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        result: Result<Reply, Refusal>,
        after: Option<u64>,
    ) {
        match result {
            Ok(reply) => {
                let ack = protocol::Ack::reply(reply_to, reply);
                self.out.send(conn, Message::Ack(ack), after);
            }
            Err(refusal) => self.send_refusal(conn, reply_to, refusal),
        }
    }

    /// `revoke_device`: the device's credential stops working at once and
    /// for good; its connection closes and its tasks go back to the queue.
    pub(super) fn on_revoke(&mut self, now: Now, device_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let known = self.registry.devices.contains_key(device_id)
            || self.registry.device_keys.contains_key(device_id);
        if !known {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no device {device_id}"),
            ));
        }
        let record = DeviceKeyRecord {
            device_id: device_id.to_string(),
            revoked_unix_ms: Some(now.unix_ms),
            ..self
                .registry
                .device_keys
                .get(device_id)
                .cloned()
                .unwrap_or(DeviceKeyRecord {
                    device_id: device_id.to_string(),
                    public_key: None,
                    enrolled_unix_ms: now.unix_ms,
                    enrolled_from: None,
                    revoked_unix_ms: None,
                })
        };
        self.persist_device_key(&record);
        self.registry
            .device_keys
            .insert(device_id.to_string(), record);
        self.device_gone(now, device_id, "revoked", true);
        let speaking: Vec<ConnId> = self
            .registry.conns
            .iter()
            .filter(|(_, state)| {
                state.device_id.as_deref() == Some(device_id)
                    || matches!(&state.auth.role, Role::Worker(id) | Role::Legacy(id) if id == device_id)
            })
            .map(|(&conn, _)| conn)
            .collect();
        for conn in speaking {
            if let Some(state) = self.registry.conns.get_mut(&conn) {
                state.device_id = None;
            }
            self.refuse_and_close(
                conn,
                None,
                ErrorCode::DeviceRevoked,
                format!("device {device_id} was revoked"),
            );
        }
        log::warn!("device {device_id} revoked");
        Ok(Reply::from(Revoked {
            device_id: device_id.to_string(),
            message: format!("revoked {device_id}"),
            success: Success,
        }))
    }

    /// Whether `device_id` was revoked.
    pub(super) fn is_revoked(&self, device_id: &str) -> bool {
        self.registry
            .device_keys
            .get(device_id)
            .is_some_and(|key| key.revoked_unix_ms.is_some())
    }

    fn peer_label(&self, conn: ConnId) -> String {
        self.registry
            .conns
            .get(&conn)
            .and_then(|state| state.peer_ip)
            .map_or_else(|| format!("connection {conn}"), |ip| ip.to_string())
    }
}

fn taken(device_id: &str) -> Refusal {
    Refusal::close(
        ErrorCode::DeviceIdTaken,
        format!(
            "device {device_id} is already enrolled: it authenticates with its own key; a new \
             device needs another --id"
        ),
    )
}

fn revoked(device_id: &str) -> Refusal {
    Refusal::close(
        ErrorCode::DeviceRevoked,
        format!("device {device_id} was revoked; it cannot connect again under this id"),
    )
}
