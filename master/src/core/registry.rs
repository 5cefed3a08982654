//! The registry: every known device (online or not), every connection,
//! and the devices' enrolled keys.
//!
//! Architecture invariant: a connection speaks for at most one device
//! (`Conn::device_id`) and a device is bound to at most one connection
//! (`Device::conn`); the two always agree.

use super::auth;
use super::index;
use super::records::{DeviceKeyRecord, DeviceRecord};
use super::{ConnId, ReplyError, MAX_UNTRUSTED_SUBSCRIBERS};
use protocol::{ErrorCode, Metrics, Register, Subscribe};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    pub(super) peer_ip: Option<String>,
    pub(super) device_id: Option<String>,
    pub(super) subscription: Option<Subscribe>,
    /// It subscribed before authenticating and counts against
    /// [`MAX_UNTRUSTED_SUBSCRIBERS`] until it unsubscribes or leaves
    /// (authenticating later does not give the place back early: simpler,
    /// and only ever stricter).
    pub(super) untrusted_subscriber: bool,
    pub(super) auth: auth::ConnAuth,
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
}

impl Registry {
    /// The connection device `device_id` is bound to, if it is online.
    pub(super) fn conn_of(&self, device_id: &str) -> Option<ConnId> {
        self.devices.get(device_id).and_then(|device| device.conn)
    }

    /// Starts (or replaces) `conn`'s subscription; returns the one it
    /// replaces. A connection that has not authenticated (`trusted` is
    /// false) takes one of the [`MAX_UNTRUSTED_SUBSCRIBERS`] places, kept
    /// until it leaves (authenticating later does not give the place back
    /// early: simpler, and only ever stricter).
    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        trusted: bool,
        subscribe: Subscribe,
    ) -> Result<Option<Subscribe>, ReplyError> {
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
        Ok(state.subscription.replace(subscribe))
    }

    /// `conn`'s subscription, if it has one.
    pub(super) fn subscription(&self, conn: ConnId) -> Option<&Subscribe> {
        self.conns.get(&conn)?.subscription.as_ref()
    }

    /// Forgets connection `conn` (it closed) and gives back its place among
    /// the unauthenticated subscribers; returns its state.
    pub(super) fn disconnect(&mut self, conn: ConnId) -> Option<Conn> {
        let state = self.conns.remove(&conn)?;
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
}
