//! The registry: every known device (online or not), every connection,
//! and the devices' enrolled keys.
//!
//! Architecture invariant: a connection speaks for at most one device
//! (`Conn::device_id`) and a device is bound to at most one connection
//! (`Device::conn`); the two always agree.

use super::auth::{self, Role};
use super::index;
use super::records::{DeviceKeyRecord, DeviceRecord};
use super::{not_registered, ConnId, ReplyError, MAX_UNTRUSTED_SUBSCRIBERS};
use protocol::{ErrorCode, Metrics, Register, Subscribe};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Device {
    pub(super) record: DeviceRecord,
    pub(super) register: Register,
    pub(super) conn: Option<ConnId>,
    /// Tasks given to this device whose attempt it has not yet reported.
    pub(super) active: BTreeSet<String>,
    pub(super) last_seen: Duration,
    pub(super) metrics: Option<Metrics>,
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
    pub(super) untrusted_subscriber: bool,
    pub(super) auth: auth::ConnAuth,
}

impl Conn {
    /// Whether it has authenticated (or authentication is off), so it may
    /// send full-size lines.
    pub(super) fn is_trusted(&self) -> bool {
        matches!(
            self.auth.role,
            Role::Worker(_) | Role::Legacy(_) | Role::Admin | Role::Open
        )
    }
}

/// Devices, connections and keys.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Every device ever registered, by id.
    pub(super) devices: BTreeMap<String, Device>,
    /// The open connections.
    pub(super) conns: HashMap<ConnId, Conn>,
    /// Enrolled devices' public keys and revocations, by device id.
    pub(super) device_keys: HashMap<String, DeviceKeyRecord>,
    /// Subscribed connections that had not authenticated when they
    /// subscribed (see [`super::MAX_UNTRUSTED_SUBSCRIBERS`]).
    pub(super) untrusted_subscribers: usize,
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
        let Some(device) = self.devices.get_mut(device_id) else {
            return;
        };
        let new = index::SlotEntry::of(device);
        let old = std::mem::replace(&mut device.indexed.slots, new);
        self.free.update(device_id, old, new);
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

    /// Whether connection `conn` has authenticated (see [`Conn::is_trusted`]).
    pub(super) fn is_trusted(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::is_trusted)
    }

    /// The device this connection authenticated as, if any.
    pub(super) fn authenticated_device(&self, conn: ConnId) -> Option<&str> {
        match &self.conns.get(&conn)?.auth.role {
            Role::Worker(id) => Some(id),
            _ => None,
        }
    }

    /// Whether a worker message on `conn` may speak for `device_id` by
    /// naming it in `sender_id` (older one-shot workers do). A legacy or
    /// not yet authenticated connection may, when `allow_legacy` (the
    /// legacy switch) is on, speak for a device without enrolled keys.
    pub(super) fn may_speak_for(&self, conn: ConnId, device_id: &str, allow_legacy: bool) -> bool {
        match self.conns.get(&conn).map(|state| &state.auth.role) {
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
}
