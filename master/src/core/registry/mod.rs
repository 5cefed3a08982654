//! The registry: every known device (online or not), every connection,
//! and the devices' enrolled keys.
//!
//! Architecture invariant: a connection speaks for at most one device
//! (`Conn::device_id`) and a device is bound to at most one connection
//! (`Device::conn`); the two always agree.

use super::auth::{auth_required, revoked, taken, Refusal};
use super::handshake::{ConnAuth, Role};
pub(super) mod index;

use super::records::{DeviceKeyRecord, DeviceRecord};
use super::{not_registered, ConnId, ReplyError, MAX_UNTRUSTED_SUBSCRIBERS};
use protocol::auth::PublicKey;
use protocol::{DeviceStatus, ErrorCode, Message, Metrics, Subscribe};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Device {
    /// What is persisted, with the registration it last sent
    /// (`record.profile`).
    pub(super) record: DeviceRecord,
    pub(super) conn: Option<ConnId>,
    /// Tasks given to this device whose attempt it has not yet reported.
    pub(super) active: BTreeSet<String>,
    pub(super) last_seen: Duration,
    pub(super) metrics: Option<Metrics>,
    /// Its power and heat as its latest heartbeat reported them (see
    /// `Device::power`).
    pub(super) power: Option<protocol::Power>,
    pub(super) paused_until: Option<Duration>,
    /// While offline: until when the master holds its tasks for it.
    pub(super) lease_until: Option<Duration>,
    /// Its entries in the core's indexes.
    pub(super) indexed: index::Indexed,
}

#[derive(Debug, Default)]
pub(super) struct Conn {
    /// The address the connection came from, when the loop knows it.
    pub(super) peer_ip: Option<IpAddr>,
    pub(super) device_id: Option<String>,
    pub(super) subscription: Option<Subscribe>,
    /// It subscribed before authenticating and counts against
    /// [`MAX_UNTRUSTED_SUBSCRIBERS`] until it unsubscribes or leaves
    /// (authenticating later does not give the place back early: simpler,
    /// and only ever stricter).
    untrusted_subscriber: bool,
    /// Its role and handshake; only the registry hands it out, by
    /// connection ([`Registry::auth`], [`Registry::auth_mut`]).
    auth: ConnAuth,
}

impl Conn {
    /// Its role and handshake.
    pub(super) fn auth(&self) -> &ConnAuth {
        &self.auth
    }
}

/// What a device's timer found when it fired (see [`Registry::end_pause`],
/// [`Registry::end_lease`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due<T> {
    /// It was due and has ended, with what the caller needs of it.
    Now(T),
    /// It runs on until this later time; the timer is set again.
    Later(Duration),
    /// There is nothing to end (an unknown device, or none set).
    Not,
}

/// What became of a device's tasks when it left (see [`Registry::leave`]).
#[derive(Debug)]
pub(super) enum Left {
    /// It holds this many on a lease: it keeps running them while away.
    Leased(usize),
    /// It gave these up.
    Gave(BTreeSet<String>),
}

/// What a heartbeat changed (see [`Registry::heartbeat`]).
#[derive(Debug)]
pub(super) struct Beat {
    /// The device is online: its heartbeat deadline moves.
    pub(super) online: bool,
    /// It started draining with this heartbeat: its record to persist.
    pub(super) drained: Option<DeviceRecord>,
}

/// Devices, connections and keys.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Every device ever registered, by id.
    pub(super) devices: BTreeMap<String, Device>,
    /// The open connections.
    pub(super) conns: HashMap<ConnId, Conn>,
    /// Enrolled devices' public keys and revocations, by device id.
    device_keys: HashMap<String, DeviceKeyRecord>,
    /// Subscribed connections that had not authenticated when they
    /// subscribed (see [`super::MAX_UNTRUSTED_SUBSCRIBERS`]).
    untrusted_subscribers: usize,
    /// Connections with a subscription, by the tasks they follow.
    pub(super) subscribers: index::Subscribers,
    /// Devices that can take a task now, least loaded first.
    pub(super) free: index::FreeSlots,
    /// Every device, newest registered first.
    pub(super) by_registration: index::DeviceListing,
    /// Totals over the connected devices.
    pub(super) totals: index::DeviceTotals,
}

impl Registry {
    /// Records whether, and how loaded, device `device_id` can take a task
    /// now (see [`index::FreeSlots`]).
    pub(super) fn refresh_slots(&mut self, device_id: &str) {
        if let Some(device) = self.devices.get_mut(device_id) {
            refile(&mut self.free, device_id, device);
        }
    }

    /// The connection device `device_id` is bound to, if it is online.
    pub(super) fn conn_of(&self, device_id: &str) -> Option<ConnId> {
        self.devices.get(device_id).and_then(|device| device.conn)
    }

    /// Starts (or replaces) `conn`'s subscription, in the connection and
    /// in the subscribers' index. A connection that has not authenticated (`trusted` is
    /// false) takes one of the [`MAX_UNTRUSTED_SUBSCRIBERS`] places, kept
    /// until it leaves (authenticating later does not give the place back
    /// early: simpler, and only ever stricter).
    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        trusted: bool,
        subscribe: Subscribe,
    ) -> Result<(), ReplyError> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Err(ReplyError::new(
                ErrorCode::InternalError,
                "unknown connection",
            ));
        };
        if !trusted && !state.untrusted_subscriber {
            if self.untrusted_subscribers >= MAX_UNTRUSTED_SUBSCRIBERS {
                return Err(ReplyError::new(
                    ErrorCode::TooManyConnections,
                    format!(
                        "too many unauthenticated watchers ({MAX_UNTRUSTED_SUBSCRIBERS}); \
                         authenticate or try again later"
                    ),
                ));
            }
            state.untrusted_subscriber = true;
            self.untrusted_subscribers += 1;
        }
        // The old one out first: the new one may follow some of its tasks.
        if let Some(old) = state.subscription.replace(subscribe) {
            self.subscribers.remove(conn, &old);
        }
        if let Some(new) = &state.subscription {
            self.subscribers.add(conn, new);
        }
        Ok(())
    }

    /// Forgets connection `conn` (it closed), its subscription, and its
    /// place among the unauthenticated subscribers; returns its state.
    pub(super) fn disconnect(&mut self, conn: ConnId) -> Option<Conn> {
        let state = self.conns.remove(&conn)?;
        if let Some(subscription) = &state.subscription {
            self.subscribers.remove(conn, subscription);
        }
        if state.untrusted_subscriber {
            self.untrusted_subscribers -= 1;
        }
        Some(state)
    }

    /// The connections of every online device.
    pub(super) fn connected(&self) -> Vec<ConnId> {
        self.devices
            .values()
            .filter_map(|device| device.conn)
            .collect()
    }

    /// Whether connection `conn` has authenticated (see
    /// [`ConnAuth::is_trusted`]).
    pub(super) fn is_trusted(&self, conn: ConnId) -> bool {
        self.auth(conn).is_some_and(ConnAuth::is_trusted)
    }

    /// The device this connection authenticated as, if any.
    pub(super) fn authenticated_device(&self, conn: ConnId) -> Option<&str> {
        self.auth(conn)?.device()
    }

    /// Whether a worker message on `conn` may speak for `device_id` by
    /// naming it in `sender_id` (older one-shot workers do). A legacy or
    /// not yet authenticated connection may, when `allow_legacy` (the
    /// legacy switch) is on, speak for a device without enrolled keys.
    pub(super) fn may_speak_for(&self, conn: ConnId, device_id: &str, allow_legacy: bool) -> bool {
        match self.auth(conn).map(ConnAuth::role) {
            Some(Role::Open) => true,
            Some(Role::Worker(id)) => id == device_id,
            Some(Role::Legacy(_) | Role::Pending | Role::Reader) => {
                allow_legacy && !self.device_keys.contains_key(device_id)
            }
            _ => false,
        }
    }

    /// The device a worker message speaks for: the one registered on this
    /// connection, or, for older one-shot workers that open a connection
    /// per message, the known device named by `sender_id`.
    pub(super) fn speaker(
        &self,
        conn: ConnId,
        sender: Option<String>,
        allow_legacy: bool,
    ) -> Result<String, ReplyError> {
        if let Some(bound) = self.conns.get(&conn).and_then(|c| c.device_id.clone()) {
            return Ok(bound);
        }
        // Only a device that may speak on this connection: the one it
        // authenticated as, or (legacy switch, or authentication off) a
        // device without credentials.
        let sender = sender.or_else(|| self.authenticated_device(conn).map(str::to_string));
        match sender {
            Some(id)
                if self.devices.contains_key(&id)
                    && self.may_speak_for(conn, &id, allow_legacy) =>
            {
                Ok(id)
            }
            _ => Err(not_registered()),
        }
    }

    // ----- devices -----

    /// Counts task `task_id` on device `device_id` (it was given it) and
    /// refiles the device's free slots; whether the device is known.
    pub(super) fn give(&mut self, device_id: &str, task_id: &str) -> bool {
        let Some(device) = self.devices.get_mut(device_id) else {
            return false;
        };
        device.active.insert(task_id.to_string());
        refile(&mut self.free, device_id, device);
        true
    }

    /// Stops counting task `task_id` on device `device_id` and refiles the
    /// device's free slots; whether the device counted it.
    pub(super) fn take_away(&mut self, device_id: &str, task_id: &str) -> bool {
        let Some(device) = self.devices.get_mut(device_id) else {
            return false;
        };
        let counted = device.active.remove(task_id);
        refile(&mut self.free, device_id, device);
        counted
    }

    /// Puts device `record.device_id` online on `conn`, replacing what
    /// was known of it (it keeps its place in the listing by first
    /// registration and its index entries); `conn` speaks for it from now
    /// on. Returns the tasks the master had counted on it, which the
    /// caller keeps or takes as lost.
    pub(super) fn join(
        &mut self,
        conn: ConnId,
        record: DeviceRecord,
        now: Duration,
    ) -> BTreeSet<String> {
        let device_id = record.device_id.clone();
        let (previous_active, indexed) = match self.devices.get_mut(&device_id) {
            Some(old) => {
                self.totals.remove(old);
                (std::mem::take(&mut old.active), old.indexed)
            }
            None => {
                self.by_registration
                    .insert(record.registered_unix_ms, &device_id);
                Default::default()
            }
        };
        let device = Device {
            record,
            conn: Some(conn),
            active: BTreeSet::new(),
            last_seen: now,
            metrics: None,
            power: None,
            paused_until: None,
            lease_until: None,
            indexed,
        };
        self.totals.add(&device);
        self.devices.insert(device_id.clone(), device);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.device_id = Some(device_id);
        }
        previous_active
    }

    /// Device `device_id` lost its connection: it is offline. Offered a
    /// lease (`lease_until`), a device that supports leases and holds
    /// tasks keeps them until then ([`Left::Leased`], how many); otherwise
    /// it gives every task up ([`Left::Gave`]), for the caller to requeue
    /// or take as lost. Also returns its record to persist; `None` for an
    /// unknown device.
    pub(super) fn leave(
        &mut self,
        device_id: &str,
        lease_until: Option<Duration>,
    ) -> Option<(DeviceRecord, Left)> {
        let device = self.devices.get_mut(device_id)?;
        self.totals.remove(device);
        device.conn = None;
        device.record.status = DeviceStatus::Offline;
        let record = device.record.clone();
        let left = match lease_until {
            Some(until) if device.record.leases && !device.active.is_empty() => {
                device.lease_until = Some(until);
                Left::Leased(device.active.len())
            }
            _ => Left::Gave(std::mem::take(&mut device.active)),
        };
        Some((record, left))
    }

    /// A heartbeat from device `device_id` at `now` (`unix_ms` by the wall
    /// clock) with its metrics; `draining` when the worker says it is
    /// leaving, which takes an online device out of the free slots. Says
    /// whether the device is online (its heartbeat deadline moves) and,
    /// when it started draining here, its record to persist.
    pub(super) fn heartbeat(
        &mut self,
        device_id: &str,
        now: Duration,
        unix_ms: i64,
        metrics: Metrics,
        draining: bool,
    ) -> Result<Beat, ReplyError> {
        let Some(device) = self.devices.get_mut(device_id) else {
            return Err(not_registered());
        };
        device.last_seen = now;
        device.record.last_seen_unix_ms = unix_ms;
        device.metrics = Some(metrics);
        let online = device.conn.is_some();
        let mut drained = None;
        if draining && device.record.status == DeviceStatus::Online && online {
            device.record.status = DeviceStatus::Draining;
            drained = Some(device.record.clone());
            refile(&mut self.free, device_id, device);
        }
        Ok(Beat { online, drained })
    }

    /// Drains online device `device_id` (an operator asked): no new work
    /// for it from now on. Returns its record to persist.
    pub(super) fn drain(&mut self, device_id: &str) -> Result<DeviceRecord, ReplyError> {
        let Some(device) = self.devices.get_mut(device_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no device {device_id}"),
            ));
        };
        if device.conn.is_none() {
            return Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!("device {device_id} is offline"),
            ));
        }
        device.record.status = DeviceStatus::Draining;
        let record = device.record.clone();
        refile(&mut self.free, device_id, device);
        Ok(record)
    }

    /// Device `device_id` was heard from at `now` (a result, say);
    /// whether it is online, so its heartbeat deadline moves too.
    pub(super) fn seen(&mut self, device_id: &str, now: Duration) -> bool {
        let Some(device) = self.devices.get_mut(device_id) else {
            return false;
        };
        device.last_seen = now;
        device.conn.is_some()
    }

    /// Gives device `device_id` no new task until `until` (it said it had
    /// no free slot) and refiles its free slots; whether the device is
    /// known, so the caller sets its timer.
    pub(super) fn pause(&mut self, device_id: &str, until: Duration) -> bool {
        let Some(device) = self.devices.get_mut(device_id) else {
            return false;
        };
        device.paused_until = Some(until);
        refile(&mut self.free, device_id, device);
        true
    }

    /// Device `device_id` reported its power and heat (a heartbeat).
    pub(super) fn set_power(&mut self, device_id: &str, power: protocol::Power) {
        if let Some(device) = self.devices.get_mut(device_id) {
            device.power = Some(power);
        }
    }

    /// Free slots over every device that can take a task now.
    pub(super) fn free_slots(&self) -> usize {
        self.free.total()
    }

    /// The devices that can take a task now, least loaded first.
    pub(super) fn free_devices(&self) -> impl Iterator<Item = &Device> {
        self.free
            .least_loaded()
            .filter_map(|id| self.devices.get(id))
    }

    /// Device `device_id`'s pause (after it said it had no free slot), as
    /// its timer fires at `now`: over (ended here, its slots refiled), or
    /// still on until a later time (the timer held a lower bound).
    pub(super) fn end_pause(&mut self, device_id: &str, now: Duration) -> Due<()> {
        let Some(device) = self.devices.get_mut(device_id) else {
            return Due::Not;
        };
        match device.paused_until {
            Some(until) if until <= now => {
                device.paused_until = None;
                self.refresh_slots(device_id);
                Due::Now(())
            }
            Some(until) => Due::Later(until),
            None => Due::Not,
        }
    }

    /// Device `device_id`'s heartbeat deadline, as its timer fires at
    /// `now`: passed (silent for `timeout`; its connection, which the
    /// caller closes), or moved to a later time by a heartbeat since. An
    /// offline device has none.
    pub(super) fn heartbeat_due(
        &self,
        device_id: &str,
        now: Duration,
        timeout: Duration,
    ) -> Due<ConnId> {
        let Some(device) = self.devices.get(device_id) else {
            return Due::Not;
        };
        let Some(conn) = device.conn else {
            return Due::Not;
        };
        if now.saturating_sub(device.last_seen) >= timeout {
            Due::Now(conn)
        } else {
            Due::Later(device.last_seen + timeout)
        }
    }

    /// Offline device `device_id`'s lease, as its timer fires at `now`: run
    /// out (ended here; the tasks it held, which the caller takes as lost),
    /// or on until a later time.
    pub(super) fn end_lease(&mut self, device_id: &str, now: Duration) -> Due<Vec<String>> {
        let Some(device) = self.devices.get_mut(device_id) else {
            return Due::Not;
        };
        match device.lease_until {
            Some(until) if until <= now => {
                device.lease_until = None;
                Due::Now(device.active.iter().cloned().collect())
            }
            Some(until) => Due::Later(until),
            None => Due::Not,
        }
    }

    // ----- connections -----

    /// Opens connection `conn` from `peer_ip`, with its authentication.
    pub(super) fn connect(&mut self, conn: ConnId, peer_ip: Option<IpAddr>, auth: ConnAuth) {
        self.conns.insert(
            conn,
            Conn {
                peer_ip,
                auth,
                ..Conn::default()
            },
        );
    }

    /// Connection `conn` no longer speaks for its device (the device was
    /// taken away from it, and it is being closed).
    pub(super) fn unbind(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.device_id = None;
        }
    }

    /// Connection `conn`'s authentication.
    pub(super) fn auth(&self, conn: ConnId) -> Option<&ConnAuth> {
        self.conns.get(&conn).map(|state| &state.auth)
    }

    /// Connection `conn`'s authentication, to change it.
    pub(super) fn auth_mut(&mut self, conn: ConnId) -> Option<&mut ConnAuth> {
        self.conns.get_mut(&conn).map(|state| &mut state.auth)
    }

    /// Whether the core is closing connection `conn` (nothing more it sends
    /// is handled).
    pub(super) fn is_closing(&self, conn: ConnId) -> bool {
        self.auth(conn).is_some_and(ConnAuth::is_closing)
    }

    /// Whether connection `conn` is subscribed to events.
    pub(super) fn is_subscribed(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|state| state.subscription.is_some())
    }

    /// The address connection `conn` came from, if known.
    pub(super) fn peer_ip(&self, conn: ConnId) -> Option<IpAddr> {
        self.conns.get(&conn)?.peer_ip
    }

    /// How logs name connection `conn`: its address, or its number.
    pub(super) fn peer_label(&self, conn: ConnId) -> String {
        self.peer_ip(conn)
            .map_or_else(|| format!("connection {conn}"), |ip| ip.to_string())
    }

    // ----- keys -----

    /// Replaces the enrolled keys and revocations with `keys` (at start).
    pub(super) fn restore_keys(&mut self, keys: Vec<DeviceKeyRecord>) {
        self.device_keys = keys
            .into_iter()
            .map(|key| (key.device_id.clone(), key))
            .collect();
    }

    /// Device `device_id`'s key record (its key and when and from where it
    /// enrolled, or its revocation), if it has one.
    pub(super) fn key(&self, device_id: &str) -> Option<&DeviceKeyRecord> {
        self.device_keys.get(device_id)
    }

    /// Keeps `record` as its device's key (an enrollment).
    pub(super) fn set_key(&mut self, record: DeviceKeyRecord) {
        self.device_keys.insert(record.device_id.clone(), record);
    }

    /// Whether `device_id` was revoked.
    pub(super) fn is_revoked(&self, device_id: &str) -> bool {
        self.device_keys
            .get(device_id)
            .is_some_and(|key| key.revoked_unix_ms.is_some())
    }

    /// Whether `device_id` is known, as a device or by its key.
    pub(super) fn is_known(&self, device_id: &str) -> bool {
        self.devices.contains_key(device_id) || self.device_keys.contains_key(device_id)
    }

    /// `Ok` if `device_id` may enroll with the join token: it holds no key
    /// (an enrolled id authenticates with its own key) and was not revoked.
    pub(super) fn check_unenrolled(&self, device_id: &str) -> Result<(), Refusal> {
        match self.device_keys.get(device_id) {
            Some(key) if key.revoked_unix_ms.is_some() => Err(revoked(device_id)),
            Some(_) => Err(taken(device_id)),
            None => Ok(()),
        }
    }

    /// `Ok` if `device_id` may authenticate with its own key: it enrolled
    /// one and was not revoked.
    pub(super) fn check_enrolled(&self, device_id: &str) -> Result<(), Refusal> {
        match self.device_keys.get(device_id) {
            Some(key) if key.revoked_unix_ms.is_some() => Err(revoked(device_id)),
            Some(key) if key.public_key.is_some() => Ok(()),
            _ => Err(Refusal::close(
                ErrorCode::AuthFailed,
                format!("device {device_id} is not enrolled here; join with the join token"),
            )),
        }
    }

    /// The public key device `device_id` proves itself with, unless it was
    /// revoked (or its stored key cannot be read).
    pub(super) fn public_key(&self, device_id: &str) -> Option<PublicKey> {
        self.device_keys
            .get(device_id)
            .filter(|key| key.revoked_unix_ms.is_none())
            .and_then(|key| key.public_key.as_deref())
            .and_then(|key| key.parse::<PublicKey>().ok())
    }

    /// An older worker without credentials (legacy switch on): it may
    /// register under an id no enrolled device holds, and send worker
    /// messages for such a device.
    pub(super) fn legacy_speaker_allowed(
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
        match self.device_keys.get(id) {
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

    /// Revokes `device_id`'s key at `unix_ms` (keeping what it enrolled
    /// with, if it did); returns the record to persist.
    pub(super) fn revoke_key(&mut self, device_id: &str, unix_ms: i64) -> DeviceKeyRecord {
        let record = DeviceKeyRecord {
            device_id: device_id.to_string(),
            revoked_unix_ms: Some(unix_ms),
            ..self
                .device_keys
                .get(device_id)
                .cloned()
                .unwrap_or(DeviceKeyRecord {
                    device_id: device_id.to_string(),
                    public_key: None,
                    enrolled_unix_ms: unix_ms,
                    enrolled_from: None,
                    revoked_unix_ms: None,
                })
        };
        self.device_keys
            .insert(device_id.to_string(), record.clone());
        record
    }

    /// Unbinds every connection that speaks for `device_id` (registered as
    /// it, or authenticated as it) and returns them, to be closed.
    pub(super) fn unbind_speakers(&mut self, device_id: &str) -> Vec<ConnId> {
        let mut speaking = Vec::new();
        for (&conn, state) in &mut self.conns {
            if state.device_id.as_deref() == Some(device_id) || state.auth.speaks_for(device_id) {
                state.device_id = None;
                speaking.push(conn);
            }
        }
        speaking
    }

    /// Panics unless the subscribers' index and the count of unauthenticated
    /// subscribers agree with the connections (for the sans-IO tests).
    #[cfg(test)]
    pub(super) fn check_connections(&self) {
        let subscribers: BTreeMap<ConnId, BTreeSet<String>> = self
            .conns
            .iter()
            .filter_map(|(&conn, state)| {
                let subscription = state.subscription.as_ref()?;
                Some((conn, subscription.task_ids.iter().cloned().collect()))
            })
            .collect();
        assert_eq!(self.subscribers.filters(), subscribers, "subscribers");
        let untrusted = self
            .conns
            .values()
            .filter(|state| state.untrusted_subscriber)
            .count();
        assert_eq!(
            self.untrusted_subscribers, untrusted,
            "untrusted subscribers counted"
        );
    }
}

/// Files `device` (by id `device_id`) in `free` as it stands now: whether,
/// and how loaded, it can take a task (see [`index::FreeSlots`]).
fn refile(free: &mut index::FreeSlots, device_id: &str, device: &mut Device) {
    let new = index::SlotEntry::of(device);
    let old = std::mem::replace(&mut device.indexed.slots, new);
    free.update(device_id, old, new);
}
