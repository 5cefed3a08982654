//! A device joining, staying and leaving: `register` (with the tasks it
//! says it still runs taken back, the rest lost), heartbeats and their
//! deadlines, `goodbye`, and a device going offline however it went.
//!
//! The changes to one device are the registry's methods; this file routes
//! between the registry, the tasks, the timer table, the changes to persist
//! and the events.

use super::records::{self, DeviceRecord};
use super::registry::{Due, Left};
use super::timers::{TimerKey, TimerKind};
use super::{ConnId, Core, Now, ReplyError};
use protocol::message::RunningTask;
use protocol::{
    DeviceStatus, Done, ErrorCode, Event, Goodbye, Heartbeat, Register, Registered, Reply, Success,
};
use std::collections::BTreeMap;

impl Core {
    /// A device registers (or registers again) on `conn`: its record is
    /// replaced, its heartbeat deadline set, and the tasks it held are kept
    /// if it still runs them and lost otherwise.
    pub(super) fn on_register(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        register: Register,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let sender =
            sender.or_else(|| self.registry.authenticated_device(conn).map(str::to_string));
        let device_id = sender.ok_or_else(|| {
            ReplyError::new(
                ErrorCode::InvalidMessage,
                "register needs a sender_id (the device id)",
            )
        })?;
        protocol::types::validate_id("sender_id", &device_id)
            .map_err(|detail| ReplyError::new(ErrorCode::InvalidMessage, detail))?;
        if self.is_revoked(&device_id) {
            return Err(ReplyError::new(
                ErrorCode::DeviceRevoked,
                format!("device {device_id} was revoked; it cannot register again under this id"),
            ));
        }
        // A connection speaks for one device; a second register under
        // another id would leave the first one's tasks stranded.
        if let Some(bound) = self
            .registry
            .conns
            .get(&conn)
            .and_then(|c| c.device_id.clone())
        {
            if bound != device_id {
                return Err(ReplyError::new(
                    ErrorCode::InvalidState,
                    format!("this connection is already registered as {bound}"),
                ));
            }
        }
        let previous_conn = self.registry.devices.get(&device_id).and_then(|d| d.conn);
        if let Some(old) = previous_conn.filter(|&old| old != conn) {
            // The device reconnected before its old socket was noticed as
            // dead: the new connection wins and the old one is closed.
            if let Some(state) = self.registry.conns.get_mut(&old) {
                state.device_id = None;
            }
            self.out.close(old);
        }
        let still_running: BTreeMap<String, u32> = register
            .running_tasks
            .iter()
            .map(|RunningTask { task_id, attempt }| (task_id.clone(), *attempt))
            .collect();
        let role = register.role.clone().unwrap_or_else(|| "worker".into());
        let slots = register
            .slots
            .or(register.cpu_cores)
            .unwrap_or(1)
            .clamp(1, 1024);
        // The address the worker reports wins (it knows its LAN address
        // behind NAT); otherwise the address it connected from.
        let ip_address = register
            .ip_address
            .clone()
            .or_else(|| {
                self.registry
                    .conns
                    .get(&conn)
                    .and_then(|c| c.peer_ip)
                    .map(|ip| ip.to_string())
            })
            .unwrap_or_default();
        let profile = records::profile_value(&register);
        protocol::limits::check_profile_size(&profile)
            .map_err(|detail| ReplyError::new(ErrorCode::InvalidMessage, detail))?;
        let record = DeviceRecord {
            device_id: device_id.clone(),
            role,
            status: DeviceStatus::Online,
            tags: register.tags.clone(),
            task_types: register.task_types.clone(),
            slots,
            ip_address,
            registered_unix_ms: self
                .registry
                .devices
                .get(&device_id)
                .map_or(now.unix_ms, |d| d.record.registered_unix_ms),
            last_seen_unix_ms: now.unix_ms,
            leases: register.leases,
            profile: register,
        };
        self.persist_device(&record);
        let previous_active = self.registry.join(conn, record, now.monotonic);
        self.set_heartbeat_due(
            &device_id,
            Some(now.monotonic + self.config.heartbeat_timeout),
        );
        // Tasks the master thinks this device holds: keep the ones it says
        // it still runs, requeue the rest.
        for task_id in previous_active {
            let kept = self
                .tasks
                .by_id
                .get(&task_id)
                .is_some_and(|task| still_running.get(&task_id) == Some(&task.record.attempt));
            if !kept {
                // The worker no longer knows this task (it restarted, say):
                // the attempt is lost.
                self.lose_attempt(now, &device_id, &task_id);
            }
        }
        // The tasks the device says it still runs are its own again if their
        // attempt is still the current one, even when the master had already
        // put them back in the queue (after a disconnect it noticed, or a
        // restart) and nobody has taken them since.
        for (task_id, attempt) in &still_running {
            self.take_back(now, &device_id, task_id, *attempt);
        }
        self.refresh_slots(&device_id);
        self.needs_dispatch = true;
        self.emit(
            Event::DeviceJoined {
                device_id: device_id.clone(),
            },
            true,
        );
        self.note_legacy_register(conn, &device_id);
        log::info!("device {device_id} registered");
        Ok(Reply::from(Registered {
            message: format!("registered {device_id}"),
            device_id,
            heartbeat_interval: self.config.heartbeat_interval.as_secs_f64(),
            success: Success,
        }))
    }

    /// A heartbeat: the device is alive (its deadline moves), its metrics
    /// are kept, and a worker that says it is draining gets no new work.
    pub(super) fn on_heartbeat(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        heartbeat: Heartbeat,
    ) -> Result<(), ReplyError> {
        let device_id = self.speaker(conn, sender)?;
        // A worker that is leaving gracefully says so in its heartbeats: it
        // gets no new work from then on.
        let draining = heartbeat.status.as_deref() == Some("draining");
        if let Some(power) = heartbeat.power {
            self.registry.set_power(&device_id, power);
        }
        let beat = self.registry.heartbeat(
            &device_id,
            now.monotonic,
            now.unix_ms,
            heartbeat.metrics,
            draining,
        )?;
        if beat.online {
            let due = now.monotonic + self.config.heartbeat_timeout;
            self.timers.set(TimerKey::Heartbeat(device_id.clone()), due);
        }
        if let Some(record) = beat.drained {
            self.persist_device(&record);
            self.emit(Event::DeviceDraining { device_id }, true);
        }
        Ok(())
    }

    /// A worker leaves on purpose: it hands its tasks back to the queue.
    pub(super) fn on_goodbye(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        goodbye: Goodbye,
    ) -> Result<Reply, ReplyError> {
        let device_id = self.speaker(conn, sender)?;
        let reason = goodbye.reason.unwrap_or_else(|| "goodbye".into());
        log::info!("device {device_id} said goodbye: {reason}");
        if self
            .registry
            .devices
            .get(&device_id)
            .is_some_and(|d| d.conn == Some(conn))
        {
            self.device_gone(now, &device_id, &reason, true);
            if let Some(state) = self.registry.conns.get_mut(&conn) {
                state.device_id = None;
            }
        }
        Ok(Reply::from(Done {
            message: "goodbye".into(),
            success: Success,
        }))
    }

    /// A device lost its connection: it is offline and its tasks go back
    /// to the queue at once.
    pub(super) fn device_gone(
        &mut self,
        now: Now,
        device_id: &str,
        reason: &str,
        handed_back: bool,
    ) {
        // The worker keeps running its tasks while it is away and comes
        // back with their results: hold them for it for a while, unless it
        // handed them back.
        let until = now.monotonic + self.config.lease_grace;
        let lease = (!handed_back).then_some(until);
        let Some((record, left)) = self.registry.leave(device_id, lease) else {
            return;
        };
        self.timers
            .remove(&TimerKey::Heartbeat(device_id.to_string()));
        match left {
            Left::Leased(held) => {
                self.timers
                    .set(TimerKey::Lease(device_id.to_string()), until);
                log::info!(
                    "device {device_id} holds {held} tasks on a lease for {:?}",
                    self.config.lease_grace
                );
            }
            Left::Gave(active) => {
                self.persist_device(&record);
                for task_id in active {
                    if handed_back {
                        self.requeue(device_id, &task_id);
                    } else {
                        self.lose_attempt(now, device_id, &task_id);
                    }
                }
            }
        }
        self.persist_device(&record);
        self.refresh_slots(device_id);
        self.emit(
            Event::DeviceLeft {
                device_id: device_id.to_string(),
                reason: reason.to_string(),
            },
            true,
        );
        log::info!("device {device_id} is offline ({reason})");
    }

    /// Gives a task back to the device that reports it is still running
    /// `attempt` of it, if that attempt is still current; otherwise the
    /// device's copy is stale and its result will be fenced off.
    pub(super) fn take_back(&mut self, now: Now, device_id: &str, task_id: &str, attempt: u32) {
        let Some(changed) = self.tasks.resume(now, device_id, task_id, attempt) else {
            return;
        };
        if changed {
            self.persist_task(task_id);
        }
        if let Some(device) = self.registry.devices.get_mut(device_id) {
            device.active.insert(task_id.to_string());
        }
        self.refresh_slots(device_id);
    }

    /// The device a worker's message on `conn` speaks for (see
    /// `Registry::speaker`), under the configured policy on older
    /// one-shot workers.
    pub(super) fn speaker(
        &self,
        conn: ConnId,
        sender: Option<String>,
    ) -> Result<String, ReplyError> {
        self.registry
            .speaker(conn, sender, self.config.auth.allow_legacy_workers)
    }

    /// Closes the connections of devices whose heartbeats stopped: only
    /// the devices whose heartbeat deadline has passed, from the timer table.
    pub(super) fn expire_heartbeats(&mut self, now: Now) {
        // Only devices whose heartbeat deadline has passed, from the index.
        let mut expired: Vec<(String, ConnId)> = Vec::new();
        let timeout = self.config.heartbeat_timeout;
        for device_id in self
            .timers
            .pop_due_devices(TimerKind::Heartbeat, now.monotonic)
        {
            match self
                .registry
                .heartbeat_due(&device_id, now.monotonic, timeout)
            {
                Due::Now(conn) => expired.push((device_id, conn)),
                Due::Later(due) => self.set_heartbeat_due(&device_id, Some(due)),
                Due::Not => {}
            }
        }
        for (device_id, conn) in expired {
            log::warn!("device {device_id} missed its heartbeats; closing its connection");
            self.device_gone(now, &device_id, "heartbeat timeout", false);
            self.registry.unbind(conn);
            self.out.close(conn);
        }
    }
}
