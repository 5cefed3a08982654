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
//!
//! A connection's own state (its role, the handshake in progress, its
//! deadline) is its [`ConnAuth`], with its own methods (`handshake.rs`); the
//! enrolled keys are the registry's. This file holds the policy and the
//! secrets, and routes what needs several parts: a connection's
//! `ConnAuth`, the registry's keys, the deadlines in the timer table,
//! persisting an enrollment or a revocation, and the replies.

use super::handshake::{ConnAuth, Grant, Role};
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

/// A refusal: the reply, and whether the connection closes after it.
pub(super) struct Refusal {
    pub(super) error: ReplyError,
    pub(super) close: bool,
}

impl Refusal {
    pub(super) fn stay(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            error: ReplyError::new(code, message),
            close: false,
        }
    }

    pub(super) fn close(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            error: ReplyError::new(code, message),
            close: true,
        }
    }
}

pub(super) fn auth_required() -> Refusal {
    Refusal::stay(
        ErrorCode::AuthRequired,
        "authenticate first: workers join with RETIRE_JOIN_TOKEN (or `--token-file`), clients set RETIRE_TOKEN \
         (the admin token), netcat users type `auth TOKEN`",
    )
}

impl AuthPolicy {
    /// Whether a connection from `peer_ip` may read without authenticating
    /// (its address is in `read_only_from`).
    fn may_read_from(&self, peer_ip: Option<IpAddr>) -> bool {
        peer_ip.is_some_and(|ip| {
            self.read_only_from
                .iter()
                .any(|net| network_contains(net, ip))
        })
    }
}

impl Core {
    /// Replaces the secrets (at start, and when the operator rotates a
    /// token). Connections that already authenticated stay.
    pub fn set_secrets(&mut self, secrets: Secrets) {
        self.secrets = Some(secrets);
    }

    /// Restores the enrolled devices' public keys and revocations.
    pub fn restore_device_keys(&mut self, keys: Vec<DeviceKeyRecord>) {
        self.registry.restore_keys(keys);
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
            .auth(conn)
            .is_some_and(|auth| *auth.role() == Role::Reader)
    }

    /// Whether `conn` is subscribed to events (a `retire watch`): with
    /// nothing queued for it, it is waiting, not idle.
    pub fn is_subscribed(&self, conn: ConnId) -> bool {
        self.registry.is_subscribed(conn)
    }

    /// Opens connection `conn` from `peer_ip` in the registry with its
    /// authentication: open when it is off, otherwise pending with a
    /// deadline (an entry of the timer table), closing the connection that
    /// has waited longest when too many are pending.
    pub(super) fn auth_connect(
        &mut self,
        now: Now,
        conn: ConnId,
        peer_ip: Option<IpAddr>,
        nonce: Nonce,
    ) {
        let policy = &self.config.auth;
        if !policy.required {
            self.registry.connect(conn, peer_ip, ConnAuth::open());
            return;
        }
        let max_pending = policy.max_unauthenticated.max(1);
        let deadline = now.monotonic + policy.deadline;
        let may_read = policy.may_read_from(peer_ip);
        self.registry
            .connect(conn, peer_ip, ConnAuth::pending(nonce, may_read, deadline));
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
        if auth.has_deadline() {
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

    /// Whether `conn` may send `message`: its role decides
    /// ([`ConnAuth::access`]), and the registry's keys for a legacy
    /// speaker; a pending connection from a read-only source that reads
    /// becomes a reader.
    pub(super) fn authorize(
        &mut self,
        conn: ConnId,
        sender: Option<&str>,
        message: &Message,
    ) -> Result<(), Refusal> {
        let Some(auth) = self.registry.auth(conn) else {
            return Err(Refusal::close(
                ErrorCode::InternalError,
                "unknown connection",
            ));
        };
        match auth.access(sender, message, self.config.auth.allow_legacy_workers)? {
            Grant::AsIs => Ok(()),
            Grant::IfLegacySpeaker => self.registry.legacy_speaker_allowed(sender, message),
            Grant::AsReader => {
                self.become_reader(conn);
                Ok(())
            }
        }
    }

    /// A registration on a pending connection under the legacy switch
    /// makes it a legacy worker for that device.
    pub(super) fn note_legacy_register(&mut self, conn: ConnId, device_id: &str) {
        let made_legacy = self
            .registry
            .auth_mut(conn)
            .is_some_and(|auth| auth.register_legacy(device_id));
        if made_legacy {
            log::warn!("device {device_id} registered without credentials (legacy switch)");
            self.trust(conn, None);
        }
    }

    fn become_reader(&mut self, conn: ConnId) {
        if self
            .registry
            .auth_mut(conn)
            .is_some_and(ConnAuth::become_reader)
        {
            self.timers.remove(&TimerKey::Auth(conn));
        }
    }

    /// The connection authenticated (as `role`, or in the role it has): it
    /// leaves the pending set and the loop lifts its small line limit.
    fn trust(&mut self, conn: ConnId, role: Option<Role>) {
        if self
            .registry
            .auth_mut(conn)
            .is_some_and(|auth| auth.authenticated(role))
        {
            self.timers.remove(&TimerKey::Auth(conn));
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
        let Some(had_deadline) = self
            .registry
            .auth_mut(conn)
            .and_then(ConnAuth::start_closing)
        else {
            return;
        };
        if had_deadline {
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
        let Some(auth) = self.registry.auth(conn) else {
            return Err(Refusal::close(
                ErrorCode::InternalError,
                "unknown connection",
            ));
        };
        let nonce = auth.hello_allowed()?;
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
                self.registry.check_unenrolled(device_id)?;
            }
            Method::Device { device_id } => self.registry.check_enrolled(device_id)?,
            Method::Admin => {}
        }
        let challenge = Challenge {
            server_nonce: nonce,
            master_key,
        };
        if let Some(auth) = self.registry.auth_mut(conn) {
            auth.start_handshake(hello, challenge);
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
        if matches!(&result, Err(refusal) if refusal.error.code == ErrorCode::AuthFailed) {
            self.auth_failures += 1;
        }
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
        let peer = self.registry.peer_label(conn);
        let handshake = self
            .registry
            .auth_mut(conn)
            .and_then(ConnAuth::take_handshake);
        let Some((hello, challenge)) = handshake else {
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
                self.registry.check_unenrolled(device_id)?;
                self.enroll(now, conn, device_id, public_key, &peer)?;
                (
                    Role::Worker(device_id.clone()),
                    transcript.master_mac(&secrets.join),
                )
            }
            Method::Device { device_id } => {
                let Some(key) = self.registry.public_key(device_id) else {
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
        self.trust(conn, Some(role));
        Ok(Reply::from(Authenticated {
            device_id,
            master_proof: master_proof.to_string(),
            role: role_name.into(),
            success: Success,
        }))
    }

    /// Enrolls device `device_id` with `public_key` (its join proof
    /// checked): the key is persisted, kept in the registry and announced.
    fn enroll(
        &mut self,
        now: Now,
        conn: ConnId,
        device_id: &str,
        public_key: &auth::PublicKey,
        peer: &str,
    ) -> Result<(), Refusal> {
        self.check_storage()
            .map_err(|error| Refusal { error, close: true })?;
        let enrolled_from = self.registry.peer_ip(conn).map(|ip| ip.to_string());
        let record = DeviceKeyRecord {
            device_id: device_id.to_string(),
            public_key: Some(public_key.to_string()),
            enrolled_unix_ms: now.unix_ms,
            enrolled_from: enrolled_from.clone(),
            revoked_unix_ms: None,
        };
        self.persist_device_key(&record);
        self.registry.set_key(record);
        // Enrolling is rare and is what a leaked join token allows: the
        // operator sees every one (log, event, `retire devices`), once it
        // is on disk.
        log::info!("device {device_id} enrolled from {peer}");
        self.emit(
            protocol::Event::DeviceEnrolled {
                device_id: device_id.to_string(),
                enrolled_from,
            },
            true,
        );
        Ok(())
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
            self.grant_admin(conn);
        } else {
            self.auth_failures += 1;
            log::warn!(
                "text-mode or bearer authentication failed from {}",
                self.registry.peer_label(conn)
            );
        }
        matched
    }

    /// Makes `conn` an admin connection: the HTTP edge vouched for the
    /// request (a signed-in session with its CSRF token, see
    /// `http/session.rs`), as a good `auth TOKEN` does.
    pub fn grant_admin(&mut self, conn: ConnId) {
        if let Some(auth) = self.registry.auth_mut(conn) {
            auth.text_admin();
        }
        self.trust(conn, None);
    }

    /// Takes back what [`Core::grant_admin`] gave `conn` for a session, when
    /// a later request on it comes without a live one (signed out, expired):
    /// a browser keeps its connections open across a sign-out, and reads on
    /// them must follow the read-only rule again.
    pub fn end_grant(&mut self, conn: ConnId) {
        if let Some(auth) = self.registry.auth_mut(conn) {
            auth.end_granted_admin();
        }
    }

    /// Whether `conn` may read (status, devices, tasks) now, by the same
    /// rule as a read message: an admin, or a connection from a read-only
    /// network (which becomes a reader). For HTTP routes that read the
    /// core's state without a message (`/metrics`, `/text/logs`).
    pub fn may_read(&mut self, conn: ConnId) -> bool {
        self.authorize(conn, None, &Message::Status).is_ok()
    }

    /// What a text command may do on `conn`: `Ok` or the reason it may not.
    pub(super) fn authorize_text(&mut self, conn: ConnId, changes: bool) -> Result<(), String> {
        let Some(auth) = self.registry.auth(conn) else {
            return Err("unknown connection".into());
        };
        if auth.access_text(changes)? {
            self.become_reader(conn);
        }
        Ok(())
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
        if !self.registry.is_known(device_id) {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no device {device_id}"),
            ));
        }
        let record = self.registry.revoke_key(device_id, now.unix_ms);
        self.persist_device_key(&record);
        self.device_gone(now, device_id, "revoked", true);
        for conn in self.registry.unbind_speakers(device_id) {
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
        self.registry.is_revoked(device_id)
    }
}

pub(super) fn taken(device_id: &str) -> Refusal {
    Refusal::close(
        ErrorCode::DeviceIdTaken,
        format!(
            "device {device_id} is already enrolled: it authenticates with its own key; a new \
             device needs another --id"
        ),
    )
}

pub(super) fn revoked(device_id: &str) -> Refusal {
    Refusal::close(
        ErrorCode::DeviceRevoked,
        format!("device {device_id} was revoked; it cannot connect again under this id"),
    )
}
