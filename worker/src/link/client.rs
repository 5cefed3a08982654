//! The worker's network client: one persistent socket to the master, kept alive.
//!
//! The client is the part of the worker that reads the clock and owns the connection
//! ([`Connection`], the only code that reads or writes the socket). It drives a [`Session`] (which decides what to say) and a [`Pool`] (which runs the
//! tasks). One main thread waits in a `select!` on everything that can happen:
//!
//! - a message decoded by the reader thread of the current connection;
//! - a task result from the pool;
//! - the stop signal;
//! - the outcome of a connection attempt (made on a helper thread, so that a slow
//!   connect or DNS lookup never delays a stop);
//! - the next timer: the session's deadline while connected, the end of the backoff
//!   while disconnected.
//!
//! After each event it hands the session's events to the pool and the outbox on disk
//! (a result is saved before anything queued after it is written), and writes whatever
//! the session wants sent. When the connection drops it reconnects with exponential
//! backoff and full jitter; the session re-registers and resends its outbox, and tasks
//! keep running in the pool all the while.
//!
//! Stopping has two steps. [`StopHandle::stop`] starts a graceful leave: the session
//! drains (a `draining` heartbeat at once, new assignments refused) and the loop keeps
//! running until nothing is running and every result is acknowledged, for at most the
//! drain timeout. Then, or at once after [`StopHandle::stop_now`], the worker says
//! `goodbye` (handing back what still runs), cancels the rest and returns.

use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvError};
use protocol::{EncodedEnvelope, ResultStatus, TaskProgress, TaskResult};

use crate::device::profile::MetricsSampler;
use crate::link::backoff::{connection_earned_fresh_backoff, Backoff};
use crate::link::connection::{connect, Connection, Incoming};
use crate::link::StopHandle;
use crate::session::{DeviceProfile, Outgoing, Session, SessionConfig, SessionEvent, StoredResult};
use crate::state::outbox::Outbox;
use crate::tasks::exec::CancelToken;
use crate::tasks::pool::{Job, Pool, PoolClosed, Runner};
use crate::tasks::task::TaskOutcome;

/// How long a stopping worker waits for the master to acknowledge its `goodbye` before
/// it closes the socket anyway.
pub const GOODBYE_LINGER: Duration = Duration::from_millis(300);

/// How many progress reports may wait for the main loop before new ones are dropped.
const PROGRESS_QUEUE: usize = 1024;

/// The most finished results taken from the pool in one turn of the loop (and so saved
/// with one flush); the bound keeps a turn short enough that messages from the master
/// are not kept waiting behind a flood of results.
const MAX_RESULTS_PER_TURN: usize = 1024;

/// The wire name of a result status, for the log.
fn status_name(status: ResultStatus) -> &'static str {
    match status {
        ResultStatus::Completed => "completed",
        ResultStatus::Failed => "failed",
        ResultStatus::Timeout => "timed out",
        ResultStatus::Cancelled => "cancelled",
    }
}

/// The status line for the service manager, e.g. `registered with nas.local:8080
/// as pi-1: 2 tasks running`.
fn status_line(session: &Session, master: &str, running: usize) -> String {
    if session.is_registered() {
        format!(
            "registered with {master} as {}: {running} tasks running",
            session.device_id()
        )
    } else {
        format!("reconnecting to {master}: {running} tasks running")
    }
}

/// Where the client stands with the master.
#[derive(Debug)]
enum Link {
    /// Not connected; the next attempt starts at `retry_at`.
    Waiting { retry_at: Instant },
    /// A helper thread is connecting and will send the outcome here.
    Connecting {
        outcome: Receiver<io::Result<TcpStream>>,
    },
    /// Connected.
    Connected(Connection),
}

/// The main loop's state. See the module documentation.
struct Client {
    master: String,
    session: Session,
    pool: Pool,
    results: Receiver<TaskResult>,
    progress: Receiver<TaskProgress>,
    /// The cancel tokens of the attempts in the pool, by (task id, attempt).
    cancels: HashMap<(String, u32), CancelToken>,
    sampler: MetricsSampler,
    origin: Instant,
    backoff: Backoff,
    link: Link,
    /// When the current connection was opened.
    connected_at: Option<Instant>,
    /// The durable copy of the session's outbox.
    outbox: Outbox,
    /// How long a graceful stop waits for running tasks.
    drain_timeout: Duration,
    /// Tells systemd the worker registered, how it is doing, that this loop still
    /// turns (the watchdog), and that it stops.
    notifier: daemon::notify::Notifier,
    /// Whether READY=1 was sent (at the first registration).
    ready: bool,
    /// Where the worker's credential lives (the pinned master key is written there).
    state_dir: std::path::PathBuf,
    /// Whether the worker authenticates (it has credentials).
    authenticates: bool,
    /// The address of the current (or last) connection.
    peer: Option<std::net::SocketAddr>,
    /// Addresses whose last connection ended before registering; `--join auto` tries
    /// them after the others (see [`crate::link::resolve`]).
    distrusted: Vec<std::net::SocketAddr>,
}

/// How the worker behaves as a service: how long a graceful stop waits, what it
/// tells the service manager, and where it reads its power sensors.
pub(crate) struct Service {
    /// How long a graceful stop waits for running tasks.
    pub(crate) drain_timeout: Duration,
    /// systemd's notify socket, or a notifier that does nothing.
    pub(crate) notifier: daemon::notify::Notifier,
    /// Where the battery and temperature sensors are read.
    pub(crate) sysfs_root: PathBuf,
}

/// Why the link ended other than by a requested stop; [`crate::run`] reports it as the
/// matching [`crate::WorkerError`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A thread of the worker could not be started.
    #[error("could not start the worker's threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The master refused this worker for good (revoked, wrong token, …).
    #[error("the master refused this worker: {0}")]
    Refused(String),
}

/// Runs the worker until `stop` is stopped; see [`crate::run`]. `outbox` is the opened
/// outbox with the results an earlier run left in it.
pub(crate) fn run(
    master: &str,
    config: SessionConfig,
    profile: &DeviceProfile,
    runner: Runner,
    identity: Identity,
    service: Service,
    stop: &StopHandle,
) -> Result<(), LinkError> {
    let (result_sender, results) = crossbeam_channel::unbounded();
    let (progress_sender, progress) = crossbeam_channel::bounded(PROGRESS_QUEUE);
    let pool = Pool::with_progress(config.slots, runner, result_sender, Some(progress_sender))
        .map_err(LinkError::Threads)?;
    log::info!(
        "worker {} joining {master} with {} slot(s), running {}",
        config.device_id,
        pool.slots(),
        config.task_types.join(", ")
    );
    let (outbox, restored) = identity.outbox;
    if restored.is_empty() {
        log::info!(
            "results wait in {} until the master acknowledges them",
            outbox.dir().display()
        );
    } else {
        log::info!(
            "{} result(s) from an earlier run wait in {}; they are sent after registering",
            restored.len(),
            outbox.dir().display()
        );
    }
    let mut session = Session::new(config, profile);
    session.restore_outbox(restored);
    let authenticates = identity.credentials.is_some();
    if let Some(credentials) = identity.credentials.clone() {
        session.set_credentials(credentials);
    }
    let origin = Instant::now();
    let mut client = Client {
        master: master.to_string(),
        session,
        pool,
        results,
        progress,
        cancels: HashMap::new(),
        sampler: MetricsSampler::with_power_root(&service.sysfs_root),
        origin,
        backoff: Backoff::new(),
        link: Link::Waiting { retry_at: origin },
        connected_at: None,
        outbox,
        drain_timeout: service.drain_timeout,
        notifier: service.notifier,
        ready: false,
        state_dir: identity.state_dir,
        authenticates,
        peer: None,
        distrusted: Vec::new(),
    };
    client.run_until(stop);
    let refusal = client.session.refusal().map(str::to_string);
    client.shut_down();
    match refusal {
        Some(reason) => Err(LinkError::Refused(reason)),
        None => Ok(()),
    }
}

/// What the worker keeps on disk: its outbox and its credential.
pub(crate) struct Identity {
    /// The opened outbox, with the results an earlier run left in it.
    pub(crate) outbox: (Outbox, Vec<StoredResult>),
    /// The state dir (the credential is in `STATE_DIR/DEVICE_ID/`).
    pub(crate) state_dir: std::path::PathBuf,
    /// What the worker proves; `None`: it does not authenticate.
    pub(crate) credentials: Option<crate::session::Credentials>,
}

impl Client {
    /// The session's notion of now: time since the client started.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Serves until `stop` is stopped, then drains until nothing is left to wait for,
    /// the drain timeout passes, or `stop` is stopped at once.
    fn run_until(&mut self, stop: &StopHandle) {
        self.serve(stop.stopped_receiver(), None, |session| {
            session.refusal().is_some()
        });
        self.notifier
            .stopping("stopping: finishing the running tasks, then saying goodbye");
        if stop.is_stopped_now() || self.session.refusal().is_some() {
            return;
        }
        let now = self.now();
        self.session.handle_drain(now);
        self.drive();
        if self.session.is_drained() {
            return;
        }
        log::info!(
            "draining: taking no new tasks, waiting up to {} s for {} running task(s) and {} unacknowledged result(s) (stop again to leave at once)",
            self.drain_timeout.as_secs_f64(),
            self.cancels.len(),
            self.session.n_unacknowledged_results()
        );
        let deadline = Instant::now() + self.drain_timeout;
        self.serve(
            stop.stopped_now_receiver(),
            Some(deadline),
            Session::is_drained,
        );
        if !self.session.is_drained() {
            log::warn!(
                "{}: {} task(s) still running are handed back to the master, {} result(s) not yet acknowledged stay in the outbox",
                if stop.is_stopped_now() {
                    "leaving at once"
                } else {
                    "drain timeout reached"
                },
                self.cancels.len(),
                self.session.n_unacknowledged_results()
            );
        }
    }

    /// The main loop: handles whatever happens until `until` is ready (stopped),
    /// `deadline` passes, or `done` says the session has nothing left to wait for.
    fn serve(
        &mut self,
        until: &Receiver<()>,
        deadline: Option<Instant>,
        done: fn(&Session) -> bool,
    ) {
        let deadline = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        while !done(&self.session) {
            // The receivers are cloned (cheap handles to the same channels) so that the
            // arms below may change `self.link` while the select holds them.
            let (incoming, connect_outcome) = match &self.link {
                Link::Connected(connection) => {
                    (connection.incoming.clone(), crossbeam_channel::never())
                }
                Link::Connecting { outcome } => (crossbeam_channel::never(), outcome.clone()),
                Link::Waiting { .. } => (crossbeam_channel::never(), crossbeam_channel::never()),
            };
            let wake_at = match &self.link {
                Link::Waiting { retry_at } => Some(*retry_at),
                Link::Connecting { .. } => None,
                Link::Connected(_) => self
                    .session
                    .poll_timeout()
                    .map(|deadline| self.origin + deadline),
            };
            let timer = wake_at.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            let notify = self
                .notifier
                .next_wake(Instant::now())
                .map_or_else(crossbeam_channel::never, crossbeam_channel::after);
            let results = self.results.clone();
            let progress = self.progress.clone();
            select! {
                recv(until) -> _ => return,
                recv(deadline) -> _ => return,
                recv(results) -> result => {
                    if let Ok(result) = result {
                        self.on_task_finished(result);
                        // Results that finished meanwhile (typically while the last
                        // batch was being flushed to disk) join this one, so that
                        // `drive` saves them all with one flush.
                        for result in results.try_iter().take(MAX_RESULTS_PER_TURN) {
                            self.on_task_finished(result);
                        }
                    }
                },
                recv(progress) -> report => {
                    if let Ok(report) = report {
                        let now = self.now();
                        self.session.handle_task_progress(now, report);
                    }
                },
                recv(connect_outcome) -> outcome => self.on_connect_outcome(outcome),
                recv(incoming) -> item => self.on_incoming(item),
                recv(timer) -> _ => self.on_timer(),
                recv(notify) -> _ => {},
            }
            self.drive();
            self.notify_service_manager();
        }
    }

    /// READY=1 at the first registration, then, from this loop after every event,
    /// the watchdog ping and the status line when they are due (see
    /// [`daemon::notify::Notifier`]).
    fn notify_service_manager(&mut self) {
        let now = Instant::now();
        if !self.ready && self.session.is_registered() {
            self.ready = true;
            let status = self.status_line();
            self.notifier.ready(now, &status);
        }
        let (session, master, running) = (&self.session, &self.master, self.cancels.len());
        self.notifier
            .tick(now, || status_line(session, master, running));
    }

    /// What `systemctl status` shows.
    fn status_line(&self) -> String {
        status_line(&self.session, &self.master, self.cancels.len())
    }

    fn on_timer(&mut self) {
        match &self.link {
            Link::Waiting { retry_at } if Instant::now() >= *retry_at => self.start_connecting(),
            Link::Connected(_) => {
                let now = self.now();
                let sampler = &mut self.sampler;
                self.session.handle_timeout(now, || sampler.sample());
            }
            _ => {}
        }
    }

    fn start_connecting(&mut self) {
        let (sender, outcome) = crossbeam_channel::bounded(1);
        let master = self.master.clone();
        let distrusted = self.distrusted.clone();
        // The attempt runs on its own thread so that a stop never waits for a slow
        // connect or DNS lookup; an abandoned attempt ends on its own within
        // CONNECT_TIMEOUT and its socket is dropped.
        let spawned = thread::Builder::new()
            .name("master-connect".into())
            .spawn(move || {
                let _ = sender.send(connect(&master, &distrusted));
            });
        match spawned {
            Ok(_) => self.link = Link::Connecting { outcome },
            Err(error) => self.retry_later(&format!("could not start a connect thread: {error}")),
        }
    }

    fn on_connect_outcome(&mut self, outcome: Result<io::Result<TcpStream>, RecvError>) {
        let stream = match outcome {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return self.retry_later(&format!("could not connect to {}: {error}", self.master))
            }
            Err(RecvError) => {
                return self.retry_later("the connect thread ended without an answer")
            }
        };
        let local_ip = stream
            .local_addr()
            .ok()
            .map(|address| address.ip())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map(|ip| ip.to_string());
        self.peer = stream.peer_addr().ok();
        match Connection::open(stream) {
            Ok(connection) => {
                match self.peer {
                    Some(peer) if self.master != peer.to_string() => {
                        log::info!("connected to {} at {peer}", self.master)
                    }
                    _ => log::info!("connected to {}", self.master),
                }
                self.link = Link::Connected(connection);
                self.connected_at = Some(Instant::now());
                let now = self.now();
                let nonce = if self.authenticates {
                    match keyfile::random_bytes() {
                        Ok(bytes) => Some(protocol::auth::Nonce(bytes)),
                        Err(error) => {
                            return self.disconnect(&format!("no nonce for the handshake: {error}"))
                        }
                    }
                } else {
                    None
                };
                self.session
                    .handle_connected_with_nonce(now, local_ip, nonce);
            }
            Err(error) => self.retry_later(&format!("could not set up the connection: {error}")),
        }
    }

    fn on_incoming(&mut self, item: Result<Incoming, RecvError>) {
        let now = self.now();
        match item {
            Ok(Incoming::Message(envelope)) => {
                log::trace!("received {}", envelope.message.message_type());
                self.session.handle_message(now, *envelope);
            }
            Ok(Incoming::Undecodable {
                error,
                message_type,
            }) => {
                self.session
                    .handle_undecodable(now, error, message_type.as_deref());
            }
            Ok(Incoming::Closed(reason)) => self.disconnect(&reason),
            Err(RecvError) => self.disconnect("the connection's reader ended"),
        }
    }

    fn on_task_finished(&mut self, result: TaskResult) {
        // A task's progress is queued before its result; pass it on first, or the
        // session would drop it as belonging to an attempt that has finished.
        while let Ok(report) = self.progress.try_recv() {
            let now = self.now();
            self.session.handle_task_progress(now, report);
        }
        let key = (result.task_id.clone(), result.attempt.unwrap_or(0));
        self.cancels.remove(&key);
        log::info!(
            "task {} attempt {} {} after {:.3} s",
            key.0,
            key.1,
            status_name(result.status),
            result.execution_time.unwrap_or(0.0)
        );
        let now = self.now();
        self.session.handle_task_finished(now, result);
    }

    /// Carries out the session's events and writes what it wants sent, until it has
    /// nothing more to say.
    fn drive(&mut self) {
        loop {
            // Results to save are gathered and saved together (one write, one flush)
            // before anything else happens: before any other event, in order, and before
            // anything is sent, since the session may have queued them for sending.
            let mut to_save = Vec::new();
            while let Some(event) = self.session.poll_event() {
                match event {
                    SessionEvent::SaveResult {
                        message_id,
                        task_id,
                        attempt,
                        line,
                    } => {
                        to_save.push(ToSave {
                            message_id,
                            task_id,
                            attempt,
                            line,
                        });
                    }
                    other => {
                        self.save_results(std::mem::take(&mut to_save));
                        self.on_session_event(other);
                    }
                }
            }
            self.save_results(to_save);
            let outgoing: Vec<Outgoing> =
                std::iter::from_fn(|| self.session.poll_transmit()).collect();
            if outgoing.is_empty() {
                return;
            }
            let Link::Connected(connection) = &mut self.link else {
                // The session clears its queue when it learns the link is down, so this
                // only drops messages that had nowhere to go anyway.
                continue;
            };
            if let Err(error) = connection.write(outgoing) {
                self.disconnect(&format!("writing to the master failed: {error}"));
            }
        }
    }

    fn on_session_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::StartTask { task, attempt } => {
                let task_id = task.task_id.clone().unwrap_or_default();
                log::info!(
                    "starting {} task {task_id} attempt {attempt}",
                    task.task_type
                );
                let cancel = CancelToken::new();
                self.cancels
                    .insert((task_id.clone(), attempt), cancel.clone());
                let job = Job {
                    task: *task,
                    attempt,
                    cancel,
                };
                if let Err(PoolClosed(job)) = self.pool.submit(job) {
                    self.cancels.remove(&(task_id.clone(), attempt));
                    let outcome = TaskOutcome::failed("the worker's task pool has shut down");
                    let result = outcome.into_task_result(task_id, job.attempt, Duration::ZERO);
                    let now = self.now();
                    self.session.handle_task_finished(now, result);
                }
            }
            SessionEvent::CancelTask { task_id, attempt } => {
                match self.cancels.get(&(task_id.clone(), attempt)) {
                    Some(cancel) => {
                        log::info!("cancelling task {task_id} attempt {attempt}");
                        cancel.cancel();
                    }
                    None => log::debug!(
                        "cancel for {task_id} attempt {attempt}, which is not in the pool"
                    ),
                }
            }
            SessionEvent::Reconnect { reason } => self.disconnect(&reason),
            SessionEvent::SaveResult {
                message_id,
                task_id,
                attempt,
                line,
            } => self.save_results(vec![ToSave {
                message_id,
                task_id,
                attempt,
                line,
            }]),
            SessionEvent::ForgetResult { message_id } => self.outbox.remove(&message_id),
            SessionEvent::PinMasterKey { key } => {
                let device_id = self.session.device_id().to_string();
                if let Err(error) =
                    crate::state::identity::pin_master_key(&self.state_dir, &device_id, &key)
                {
                    // The next connection enrolls again with the join token instead.
                    log::error!("could not keep the master's key: {error}");
                }
            }
            SessionEvent::Refused { reason } => {
                log::error!("stopping: {reason}");
                self.disconnect(&reason);
            }
        }
    }

    /// Makes results durable before they are sent, all with one flush. A result that
    /// cannot be saved is still sent and kept in memory until acknowledged; only a
    /// restart of the worker before the ack can lose it then.
    fn save_results(&mut self, batch: Vec<ToSave>) {
        if batch.is_empty() {
            return;
        }
        let failed = self.outbox.save_all(
            batch
                .iter()
                .map(|save| (save.message_id.as_str(), save.line.as_bytes())),
        );
        for (message_id, error) in failed {
            let Some(save) = batch.iter().find(|save| save.message_id == message_id) else {
                continue;
            };
            log::error!(
                "could not keep the result of {} attempt {} in {}: {error}; it is held in memory only until the master acknowledges it",
                save.task_id,
                save.attempt,
                self.outbox.dir().display()
            );
        }
    }

    /// Drops the current connection (if any) and schedules the next attempt.
    fn disconnect(&mut self, reason: &str) {
        let link = std::mem::replace(
            &mut self.link,
            Link::Waiting {
                retry_at: Instant::now(),
            },
        );
        if let Link::Connected(connection) = link {
            connection.close();
        }
        // A connection that worked (see HEALTHY_CONNECTION) starts the backoff afresh,
        // so a worker whose master restarts comes back quickly; one that was dropped at
        // once does not, so a master in trouble is not hammered.
        let lived = self.connected_at.take().map(|at| at.elapsed());
        if let (Some(peer), true) = (self.peer, lived.is_some()) {
            crate::link::resolve::note_outcome(
                &mut self.distrusted,
                peer,
                self.session.registered_on_this_connection(),
            );
        }
        if connection_earned_fresh_backoff(
            self.session.registered_on_this_connection(),
            lived,
            self.session.results_acknowledged_on_this_connection(),
        ) {
            self.backoff.reset();
        }
        let now = self.now();
        self.session.handle_disconnected(now);
        self.retry_later(&format!("lost the connection to {}: {reason}", self.master));
    }

    fn retry_later(&mut self, reason: &str) {
        let delay = self.backoff.next_delay();
        log::warn!("{reason}; retrying in {} ms", delay.as_millis());
        self.link = Link::Waiting {
            retry_at: Instant::now() + delay,
        };
    }

    /// Says goodbye (handing back the tasks still running), cancels every task, waits
    /// briefly for the goodbye's ack, closes the connection and joins the task threads.
    fn shut_down(mut self) {
        if self.cancels.is_empty() {
            log::info!("stopping: saying goodbye");
        } else {
            log::info!(
                "stopping: saying goodbye, handing back and cancelling {} task(s)",
                self.cancels.len()
            );
        }
        let now = self.now();
        self.session.handle_stop(now);
        self.drive();
        // The session asked for every task it knew to be cancelled; this also catches
        // any job whose start raced with the stop.
        for cancel in self.cancels.values() {
            cancel.cancel();
        }
        let link = std::mem::replace(
            &mut self.link,
            Link::Waiting {
                retry_at: Instant::now(),
            },
        );
        if let Link::Connected(connection) = link {
            self.linger_for_goodbye_ack(&connection);
            connection.close();
        }
        self.pool.shutdown();
        // Drain what the pool finished so the count below is honest.
        while let Ok(result) = self.results.try_recv() {
            let now = self.now();
            self.session.handle_task_finished(now, result);
        }
        let n_undelivered = self.session.n_unacknowledged_results();
        if n_undelivered > 0 {
            log::warn!(
                "{n_undelivered} result(s) are not acknowledged yet; {} of them wait in {} and are sent when the worker starts again",
                self.outbox.len(),
                self.outbox.dir().display()
            );
        }
        log::info!("worker stopped");
    }

    /// Waits up to [`GOODBYE_LINGER`] for the master to acknowledge the goodbye or close
    /// the connection, so that closing does not race the goodbye on the wire.
    fn linger_for_goodbye_ack(&mut self, connection: &Connection) {
        let give_up = crossbeam_channel::after(GOODBYE_LINGER);
        while !self.session.goodbye_acknowledged() {
            select! {
                recv(connection.incoming) -> item => match item {
                    Ok(Incoming::Message(envelope)) => {
                        let now = self.now();
                        self.session.handle_message(now, *envelope);
                        // The master processes the goodbye before anything sent after
                        // it, so it assigns nothing more; any reply the session queued
                        // here would be for a device the master already counts as gone.
                        while self.session.poll_transmit().is_some() {}
                        // Acks of results sent before the goodbye arrive before its ack.
                        while let Some(event) = self.session.poll_event() {
                            match event {
                                SessionEvent::ForgetResult { message_id } => {
                                    self.outbox.remove(&message_id);
                                }
                                SessionEvent::Reconnect { .. } => return,
                                other => log::debug!("ignoring {other:?} while leaving"),
                            }
                        }
                    }
                    Ok(Incoming::Undecodable { .. }) => {}
                    Ok(Incoming::Closed(_)) | Err(_) => return,
                },
                recv(give_up) -> _ => {
                    log::debug!("no ack for the goodbye within {} ms", GOODBYE_LINGER.as_millis());
                    return;
                },
            }
        }
    }
}

/// A result to make durable, as [`SessionEvent::SaveResult`] gives it.
struct ToSave {
    message_id: String,
    task_id: String,
    attempt: u32,
    /// The line that is saved, and sent as it is.
    line: EncodedEnvelope,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WorkerConfig, WorkerError};
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::path::Path;
    use std::thread::JoinHandle;

    /// The longest any single step of these tests may take before it counts as hung.
    const STEP_LIMIT: Duration = Duration::from_secs(10);

    /// The bound on how long stopping at once may take with a 60-second `sleep` task
    /// running: far less than the task, so a stop that waited for it fails, and far
    /// more than a loaded machine needs to kill it.
    const LONG_BEFORE_THE_TASK_ENDS: Duration = Duration::from_secs(30);

    /// The master's end of one worker connection, driven line by line by the test.
    struct ScriptedMaster {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    impl ScriptedMaster {
        /// Accepts the worker's next connection, failing the test if none comes.
        fn accept(listener: &TcpListener) -> ScriptedMaster {
            let listener = listener.try_clone().expect("clone the listener");
            let (sender, accepted) = crossbeam_channel::bounded(1);
            // Accepting on a helper thread lets the test give up instead of hanging
            // when the worker never connects.
            thread::spawn(move || {
                let _ = sender.send(listener.accept().map(|(stream, _)| stream));
            });
            let stream = accepted
                .recv_timeout(STEP_LIMIT)
                .expect("the worker connects")
                .expect("accept succeeds");
            stream
                .set_read_timeout(Some(STEP_LIMIT))
                .expect("set a read timeout");
            ScriptedMaster {
                reader: BufReader::new(stream.try_clone().expect("clone the stream")),
                writer: stream,
            }
        }

        /// The next message from the worker, as JSON.
        fn recv(&mut self) -> Value {
            let mut line = String::new();
            let n_read = self.reader.read_line(&mut line).expect("read a line");
            assert!(n_read > 0, "the worker closed the connection");
            assert!(
                line.ends_with('\n'),
                "every message ends with a newline: {line:?}"
            );
            serde_json::from_str(&line).expect("the worker sends JSON")
        }

        /// The next message that is not a heartbeat; heartbeats are acknowledged like a
        /// real master does.
        fn recv_skipping_heartbeats(&mut self) -> Value {
            loop {
                let message = self.recv();
                if message["message_type"] == "heartbeat" {
                    self.ack(&message, json!({}));
                } else {
                    return message;
                }
            }
        }

        fn send(&mut self, message: Value) {
            let mut line = message.to_string();
            line.push('\n');
            self.writer
                .write_all(line.as_bytes())
                .expect("write to the worker");
        }

        fn ack(&mut self, request: &Value, fields: Value) {
            let mut result = json!({"success": true});
            if let (Some(result), Value::Object(fields)) = (result.as_object_mut(), fields) {
                result.extend(fields);
            }
            self.send(json!({
                "message_type": "ack",
                "sender_id": "main-node",
                "data": {"original_message_id": request["message_id"], "result": result},
            }));
        }

        fn assign(&mut self, task_id: &str, attempt: u32, task_type: &str, payload: Value) {
            self.send(json!({
                "message_type": "task_assign",
                "sender_id": "main-node",
                "target_id": "test-worker",
                "message_id": format!("assign:{attempt}:{task_id}"),
                "data": {
                    "task": {"task_id": task_id, "task_type": task_type, "payload": payload},
                    "attempt": attempt,
                },
            }));
        }

        /// Assigns a task and checks the worker accepts it.
        fn assign_accepted(
            &mut self,
            task_id: &str,
            attempt: u32,
            task_type: &str,
            payload: Value,
        ) {
            self.assign(task_id, attempt, task_type, payload);
            let reply = self.recv_skipping_heartbeats();
            assert_eq!(reply["message_type"], "ack", "{reply}");
            assert_eq!(
                reply["data"]["original_message_id"],
                json!(format!("assign:{attempt}:{task_id}"))
            );
        }
    }

    /// A worker's state dir for one test, deleted with it.
    fn state_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temp dir")
    }

    fn test_config(address: SocketAddr, state: &Path) -> WorkerConfig {
        WorkerConfig {
            master: address.to_string(),
            device_id: Some("test-worker".into()),
            slots: Some(2),
            role: "worker".into(),
            tags: vec!["ci".into()],
            state_dir: Some(state.to_path_buf()),
            drain_timeout: crate::DEFAULT_DRAIN_TIMEOUT,
            token: None,
            forget_master: false,
            notify: false,
            // No sensors, so that these tests never depend on the host's battery.
            sysfs_root: state.join("no-sysfs"),
        }
    }

    fn start_worker(
        address: SocketAddr,
        stop: &StopHandle,
        state: &Path,
    ) -> JoinHandle<Result<(), WorkerError>> {
        start_worker_with(test_config(address, state), stop)
    }

    fn start_worker_with(
        config: WorkerConfig,
        stop: &StopHandle,
    ) -> JoinHandle<Result<(), WorkerError>> {
        let stop = stop.clone();
        thread::spawn(move || crate::run(config, stop))
    }

    /// The results waiting in the outbox of `state`, as a reader of the disk sees them.
    /// Every line of the outbox's logs, as JSON.
    fn saved_lines(state: &Path) -> Vec<Value> {
        let dir = state.join("test-worker").join("outbox");
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the outbox dir") {
            let bytes = std::fs::read(entry.expect("an entry").path()).expect("a log");
            for line in bytes
                .split(|&byte| byte == b'\n')
                .filter(|line| !line.is_empty())
            {
                lines.push(serde_json::from_slice(line).expect("a JSON line"));
            }
        }
        lines
    }

    fn outbox_results(state: &Path) -> Vec<StoredResult> {
        Outbox::peek(state, "test-worker").expect("the outbox can be read")
    }

    fn join_within(worker: JoinHandle<Result<(), WorkerError>>, limit: Duration) {
        let (sender, joined) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            let _ = sender.send(worker.join());
        });
        let outcome = joined
            .recv_timeout(limit)
            .expect("run returns promptly after stop");
        let result = outcome.expect("the worker thread does not panic");
        assert!(result.is_ok(), "{result:?}");
    }

    fn assert_register(register: &Value, running_tasks: Option<Value>) {
        assert_eq!(register["message_type"], "register", "{register}");
        assert_eq!(register["sender_id"], "test-worker");
        let data = &register["data"];
        assert_eq!(data["slots"], json!(2));
        assert_eq!(data["tags"], json!(["ci"]));
        assert_eq!(data["device_info"]["role"], json!("worker"));
        let types = data["task_types"].as_array().expect("task_types is a list");
        for builtin in crate::tasks::executor::BUILTIN_TYPES {
            assert!(types.contains(&json!(builtin)), "{types:?}");
        }
        assert_eq!(data.get("running_tasks").cloned(), running_tasks);
    }

    #[test]
    fn worker_registers_runs_tasks_reconnects_and_says_goodbye() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());

        // First connection: register, run one echo task, see a heartbeat.
        let mut master = ScriptedMaster::accept(&listener);
        let register = master.recv();
        assert_register(&register, None);
        master.ack(
            &register,
            json!({"message": "registered", "heartbeat_interval": 0.05}),
        );

        master.assign_accepted("t-1", 1, "echo", json!({"message": "hello"}));
        let result = master.recv_skipping_heartbeats();
        assert_eq!(result["message_type"], "task_result", "{result}");
        assert_eq!(result["sender_id"], "test-worker");
        assert_eq!(result["data"]["task_id"], "t-1");
        assert_eq!(result["data"]["attempt"], json!(1));
        assert_eq!(result["data"]["status"], "completed");
        assert_eq!(result["data"]["result"]["output"], "hello");
        assert_eq!(result["data"]["result"]["exit_code"], json!(0));
        assert!(result["data"]["execution_time"].is_number());
        master.ack(&result, json!({"recorded": true}));

        let heartbeat = master.recv();
        assert_eq!(heartbeat["message_type"], "heartbeat", "{heartbeat}");
        assert_eq!(heartbeat["data"]["status"], "online");
        assert!(heartbeat["data"]["system_metrics"]["memory_usage"].is_number());
        master.ack(&heartbeat, json!({}));

        // A second result is left unacknowledged when the connection drops.
        master.assign_accepted("t-2", 1, "echo", json!({"message": "again"}));
        let unacked = master.recv_skipping_heartbeats();
        assert_eq!(unacked["data"]["task_id"], "t-2", "{unacked}");
        // It was on disk before it was sent.
        let stored = outbox_results(state.path());
        assert_eq!(stored.len(), 1, "{stored:?}");
        let mut envelope =
            protocol::Envelope::new(protocol::Message::TaskResult(stored[0].result.clone()));
        envelope.message_id = Some(stored[0].message_id.clone());
        let on_disk: Value = serde_json::from_slice(&envelope.to_line()).expect("JSON");
        assert_eq!(on_disk["message_id"], unacked["message_id"]);
        assert_eq!(on_disk["data"], unacked["data"]);
        // The log holds the very line that was sent, but for the timestamp of the send.
        let mut sent_line = unacked.clone();
        sent_line
            .as_object_mut()
            .expect("an object")
            .remove("timestamp")
            .expect("a timestamp");
        assert!(
            saved_lines(state.path()).contains(&sent_line),
            "{sent_line} is not in the outbox's logs"
        );
        drop(master);

        // Second connection: re-register, listing the finished but
        // unacknowledged task as still held, then the outbox is resent.
        let mut master = ScriptedMaster::accept(&listener);
        let register = master.recv();
        assert_register(&register, Some(json!([{"task_id": "t-2", "attempt": 1}])));
        master.ack(&register, json!({"heartbeat_interval": 0.05}));
        let resent = master.recv_skipping_heartbeats();
        assert_eq!(resent["message_type"], "task_result", "{resent}");
        assert_eq!(resent["message_id"], unacked["message_id"]);
        assert_eq!(resent["data"], unacked["data"]);
        master.ack(&resent, json!({"recorded": true}));

        // A cancel reaches the running task.
        master.assign_accepted("t-3", 2, "sleep", json!({"seconds": 60}));
        master.send(json!({
            "message_type": "task_cancel",
            "sender_id": "main-node",
            "message_id": "cancel-1",
            "data": {"task_id": "t-3", "attempt": 2},
        }));
        let cancel_reply = master.recv_skipping_heartbeats();
        assert_eq!(cancel_reply["message_type"], "ack", "{cancel_reply}");
        assert_eq!(cancel_reply["data"]["original_message_id"], "cancel-1");
        assert_eq!(cancel_reply["data"]["result"]["cancelled"], json!(true));
        let cancelled = master.recv_skipping_heartbeats();
        assert_eq!(cancelled["data"]["task_id"], "t-3", "{cancelled}");
        assert_eq!(cancelled["data"]["attempt"], json!(2));
        assert_eq!(cancelled["data"]["status"], "cancelled");
        master.ack(&cancelled, json!({}));

        // Unknown task types are refused with the assign's id.
        master.assign("t-4", 1, "teleport", json!({}));
        let refusal = master.recv_skipping_heartbeats();
        assert_eq!(refusal["message_type"], "error", "{refusal}");
        assert_eq!(refusal["data"]["code"], "unsupported_task_type");
        assert_eq!(refusal["data"]["original_message_id"], "assign:1:t-4");

        // Stopping at once with a task still running says goodbye and returns promptly.
        master.assign_accepted("t-5", 1, "sleep", json!({"seconds": 60}));
        let stopped_at = Instant::now();
        stop.stop_now();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        assert_eq!(goodbye["sender_id"], "test-worker");
        master.ack(&goodbye, json!({"message": "goodbye"}));
        join_within(worker, STEP_LIMIT);
        assert!(
            stopped_at.elapsed() < LONG_BEFORE_THE_TASK_ENDS,
            "stopping took {:?}",
            stopped_at.elapsed()
        );
        // Every result was acknowledged, and the handed-back task left none behind.
        assert_eq!(outbox_results(state.path()), Vec::new());
    }

    #[test]
    fn running_tasks_are_listed_when_the_worker_re_registers() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());

        let mut master = ScriptedMaster::accept(&listener);
        let register = master.recv();
        master.ack(&register, json!({"heartbeat_interval": 0.05}));
        master.assign_accepted("long", 7, "sleep", json!({"seconds": 60}));
        drop(master);

        let mut master = ScriptedMaster::accept(&listener);
        let register = master.recv();
        assert_register(&register, Some(json!([{"task_id": "long", "attempt": 7}])));
        master.ack(&register, json!({"heartbeat_interval": 0.05}));
        stop.stop_now();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
    }

    #[test]
    fn stop_returns_promptly_while_backing_off() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());
        // Two connections closed before registering: the worker is now backing off.
        drop(ScriptedMaster::accept(&listener));
        drop(ScriptedMaster::accept(&listener));
        let stopped_at = Instant::now();
        stop.stop();
        join_within(worker, STEP_LIMIT);
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "stopping took {:?}",
            stopped_at.elapsed()
        );
    }

    #[test]
    fn stop_returns_promptly_when_the_master_was_never_reachable() {
        // A port that was just free and has no listener refuses connections.
        let address = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());
        stop.stop();
        join_within(worker, STEP_LIMIT);
    }

    /// Accepts the worker's next connection and answers its register, with a heartbeat
    /// interval so long that every heartbeat the test sees was sent on purpose.
    fn accept_registered(listener: &TcpListener) -> (ScriptedMaster, Value) {
        let mut master = ScriptedMaster::accept(listener);
        let register = master.recv();
        assert_eq!(register["message_type"], "register", "{register}");
        master.ack(&register, json!({"heartbeat_interval": 3600}));
        (master, register)
    }

    /// A worker (2 slots, its own state dir) started against a scripted master on
    /// `127.0.0.1:0`, registered: its stop handle, state dir, thread and master.
    fn registered_worker() -> (
        StopHandle,
        tempfile::TempDir,
        JoinHandle<Result<(), WorkerError>>,
        ScriptedMaster,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());
        let (master, _) = accept_registered(&listener);
        (stop, state, worker, master)
    }

    fn assert_draining_heartbeat(message: &Value) {
        assert_eq!(message["message_type"], "heartbeat", "{message}");
        assert_eq!(message["data"]["status"], "draining", "{message}");
    }

    #[test]
    fn draining_refuses_new_work_waits_for_running_tasks_and_delivers_their_results() {
        let (stop, state, worker, mut master) = registered_worker();
        master.assign_accepted("long", 1, "sleep", json!({"seconds": 60}));

        stop.stop();
        // A heartbeat saying "draining" goes out at once (the interval is an hour).
        let heartbeat = master.recv();
        assert_draining_heartbeat(&heartbeat);
        assert_eq!(heartbeat["data"]["active_tasks"], json!(1));
        master.ack(&heartbeat, json!({}));
        // New work is refused, retryably.
        master.assign("late", 1, "echo", json!({"message": "too late"}));
        let refusal = master.recv();
        assert_eq!(refusal["message_type"], "error", "{refusal}");
        assert_eq!(refusal["data"]["code"], "shutting_down");
        assert_eq!(refusal["data"]["original_message_id"], "assign:1:late");
        // The same attempt assigned again is still confirmed, not refused.
        master.assign_accepted("long", 1, "sleep", json!({"seconds": 60}));

        // The worker waits for the running task; here a client cancels it.
        master.send(json!({
            "message_type": "task_cancel",
            "sender_id": "main-node",
            "message_id": "cancel-1",
            "data": {"task_id": "long", "attempt": 1},
        }));
        assert_eq!(master.recv()["data"]["original_message_id"], "cancel-1");
        let result = master.recv();
        assert_eq!(result["message_type"], "task_result", "{result}");
        assert_eq!(result["data"]["task_id"], "long");
        assert_eq!(result["data"]["status"], "cancelled");
        assert_eq!(outbox_results(state.path()).len(), 1);
        master.ack(&result, json!({"recorded": true}));

        // Nothing runs and nothing waits for an ack: goodbye.
        let goodbye = master.recv();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({"message": "goodbye"}));
        join_within(worker, STEP_LIMIT);
        assert_eq!(outbox_results(state.path()), Vec::new());
    }

    #[test]
    fn the_drain_timeout_hands_running_tasks_back_with_the_goodbye() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let config = WorkerConfig {
            drain_timeout: Duration::from_millis(200),
            ..test_config(address, state.path())
        };
        let worker = start_worker_with(config, &stop);
        let (mut master, _) = accept_registered(&listener);
        master.assign_accepted("long", 4, "sleep", json!({"seconds": 60}));

        let stopped_at = Instant::now();
        stop.stop();
        let heartbeat = master.recv();
        assert_draining_heartbeat(&heartbeat);
        master.ack(&heartbeat, json!({}));
        // No result for the task: the goodbye hands it back.
        let goodbye = master.recv();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
        assert!(stopped_at.elapsed() >= Duration::from_millis(200));
        // The cancelled attempt's result is neither sent nor kept.
        assert_eq!(outbox_results(state.path()), Vec::new());
    }

    #[test]
    fn a_second_stop_ends_the_drain_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let config = WorkerConfig {
            drain_timeout: Duration::from_secs(3600),
            ..test_config(address, state.path())
        };
        let worker = start_worker_with(config, &stop);
        let (mut master, _) = accept_registered(&listener);
        master.assign_accepted("long", 1, "sleep", json!({"seconds": 60}));
        stop.stop();
        assert_draining_heartbeat(&master.recv());
        let stopped_at = Instant::now();
        stop.stop_now();
        let goodbye = master.recv();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
        assert!(
            stopped_at.elapsed() < LONG_BEFORE_THE_TASK_ENDS,
            "stopping took {:?}",
            stopped_at.elapsed()
        );
    }

    #[test]
    fn every_result_of_a_busy_worker_is_on_disk_before_it_is_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let mut config = test_config(address, state.path());
        config.slots = Some(8); // n_slots below
        let worker = start_worker_with(config, &stop);
        let (mut master, _) = accept_registered(&listener);
        // Many short tasks at once, so that results finish together and are saved in
        // batches; each must be on disk by the time its line arrives.
        let (n_waves, n_slots) = (8, 8);
        let n_tasks = n_waves * n_slots;
        for wave in 0..n_waves {
            for slot in 0..n_slots {
                let idx = wave * n_slots + slot;
                master.assign(&format!("t-{idx}"), 1, "echo", json!({"message": idx}));
            }
            let mut n_results = 0;
            while n_results < n_slots {
                let message = master.recv_skipping_heartbeats();
                if message["message_type"] == "ack" {
                    continue;
                }
                assert_eq!(message["message_type"], "task_result", "{message}");
                n_results += 1;
                let on_disk: Vec<String> = outbox_results(state.path())
                    .into_iter()
                    .map(|stored| stored.message_id)
                    .collect();
                let message_id = message["message_id"].as_str().expect("a message id");
                assert!(
                    on_disk.iter().any(|id| id == message_id),
                    "{message_id} was sent before it was saved"
                );
            }
        }
        stop.stop_now();
        join_within(worker, STEP_LIMIT);
        // Nothing was acknowledged, so everything is still there for the next run.
        assert_eq!(outbox_results(state.path()).len(), n_tasks);
    }

    #[test]
    fn a_result_finished_while_disconnected_is_resent_with_its_attempt() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());
        let (mut master, _) = accept_registered(&listener);
        master.assign_accepted("nap", 3, "sleep", json!({"seconds": 0.5}));
        // The master drops the connection while the task runs.
        drop(master);

        // The worker comes back. It lists the task it holds, running or
        // finished with its result not yet acknowledged; registrations are
        // dropped unanswered until the task has finished while the worker was
        // disconnected (its result is then in the outbox).
        let mut n_listing = 0;
        let (mut master, register) = loop {
            let mut master = ScriptedMaster::accept(&listener);
            let register = master.recv();
            assert_register(&register, Some(json!([{"task_id": "nap", "attempt": 3}])));
            if outbox_results(state.path()).len() == 1 {
                break (master, register);
            }
            n_listing += 1;
            assert!(n_listing < 20, "the task never finished");
        };
        assert_eq!(register["data"]["running_tasks"][0]["task_id"], "nap");
        master.ack(&register, json!({"heartbeat_interval": 3600}));
        let result = master.recv();
        assert_eq!(result["message_type"], "task_result", "{result}");
        assert_eq!(result["data"]["task_id"], "nap");
        assert_eq!(result["data"]["attempt"], json!(3));
        assert_eq!(result["data"]["status"], "completed");
        master.ack(&result, json!({"recorded": true}));

        // The ack deletes it; then a stop says goodbye (after a draining heartbeat if
        // the stop overtakes the ack).
        stop.stop();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
        assert_eq!(outbox_results(state.path()), Vec::new());
    }

    #[test]
    fn unacknowledged_results_are_sent_again_by_the_next_run() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let state = state_dir();
        let config = WorkerConfig {
            drain_timeout: Duration::ZERO,
            ..test_config(address, state.path())
        };

        let stop = StopHandle::new();
        let worker = start_worker_with(config.clone(), &stop);
        let (mut master, _) = accept_registered(&listener);
        master.assign_accepted("t-1", 2, "echo", json!({"message": "kept"}));
        let first = master.recv();
        assert_eq!(first["message_type"], "task_result", "{first}");
        // Never acknowledged: the worker stops (drain timeout zero) and keeps it.
        stop.stop();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
        assert_eq!(outbox_results(state.path()).len(), 1);

        // The next run sends it after its register ack, under the same id.
        let stop = StopHandle::new();
        let worker = start_worker_with(config, &stop);
        let (mut master, register) = accept_registered(&listener);
        assert_register(&register, Some(json!([{"task_id": "t-1", "attempt": 2}])));
        let again = master.recv();
        assert_eq!(again["message_type"], "task_result", "{again}");
        assert_eq!(again["message_id"], first["message_id"]);
        assert_eq!(again["data"], first["data"]);
        master.ack(&again, json!({"recorded": true}));
        stop.stop();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({}));
        join_within(worker, STEP_LIMIT);
        assert_eq!(outbox_results(state.path()), Vec::new());
    }

    #[test]
    fn a_goodbye_from_the_master_is_acknowledged_and_the_worker_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("local address");
        let stop = StopHandle::new();
        let state = state_dir();
        let worker = start_worker(address, &stop, state.path());
        let (mut master, _) = accept_registered(&listener);
        master.send(json!({
            "message_type": "goodbye",
            "sender_id": "main-node",
            "data": {"reason": "the master is shutting down"},
        }));
        let reply = master.recv();
        assert_eq!(reply["message_type"], "ack", "{reply}");
        drop(master);
        let (mut master, _) = accept_registered(&listener);
        stop.stop();
        assert_eq!(master.recv()["message_type"], "goodbye");
        join_within(worker, STEP_LIMIT);
    }

    /// The first attack as a worker saw it: an assignment whose payload nests
    /// 126 deep, so that the line is deeper than `serde_json` reads. The worker refuses
    /// it by the id it finds in the raw line, with `invalid_message` (on which the master
    /// fails the task), and it takes no slot: both slots still accept work.
    #[test]
    fn an_assignment_too_deep_to_read_is_refused_by_its_id_and_takes_no_slot() {
        let (stop, _state, worker, mut master) = registered_worker();
        let mut payload = json!(1);
        for _ in 0..126 {
            payload = json!([payload]);
        }
        master.assign("deep-1", 1, "echo", payload);
        let refusal = master.recv();
        assert_eq!(refusal["message_type"], "error", "{refusal}");
        assert_eq!(refusal["data"]["code"], "invalid_message", "{refusal}");
        assert_eq!(refusal["data"]["original_message_id"], "assign:1:deep-1");
        let reason = refusal["data"]["error"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("could not read the assignment: recursion limit"),
            "{reason}"
        );
        // Both slots are free.
        master.assign_accepted("a", 1, "sleep", json!({"seconds": 60}));
        master.assign_accepted("b", 1, "sleep", json!({"seconds": 60}));
        stop.stop_now();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({"message": "goodbye"}));
        join_within(worker, STEP_LIMIT);
    }

    /// A result the master can never take (it answers `malformed_json` or
    /// `invalid_message` naming the result, as it does for one nested too deep) is
    /// dropped from the outbox on disk, not kept to be resent forever; a retryable
    /// refusal keeps it.
    #[test]
    fn a_result_the_master_refuses_for_good_leaves_the_outbox() {
        let (stop, state, worker, mut master) = registered_worker();
        let refuse = |master: &mut ScriptedMaster, task_id: &str, code: &str| {
            master.assign_accepted(task_id, 1, "echo", json!({"message": task_id}));
            let result = master.recv();
            assert_eq!(result["message_type"], "task_result", "{result}");
            assert_eq!(
                outbox_results(state.path()).len(),
                1,
                "saved before it was sent"
            );
            master.send(json!({
                "message_type": "error",
                "sender_id": "main-node",
                "data": {
                    "original_message_id": result["message_id"],
                    "error": "the master cannot take it",
                    "code": code,
                },
            }));
            // The worker handles what it receives in order: once it has answered the
            // next message (an assignment of a type it does not run), the refusal
            // has been handled.
            master.assign(&format!("{task_id}-marker"), 1, "teleport", json!({}));
            let marker = master.recv();
            assert_eq!(marker["data"]["code"], "unsupported_task_type", "{marker}");
            outbox_results(state.path()).len()
        };
        assert_eq!(refuse(&mut master, "deep", "malformed_json"), 0);
        assert_eq!(refuse(&mut master, "deeper", "invalid_message"), 0);
        assert_eq!(refuse(&mut master, "later", "storage_unavailable"), 1);
        stop.stop_now();
        let goodbye = master.recv_skipping_heartbeats();
        assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
        master.ack(&goodbye, json!({"message": "goodbye"}));
        join_within(worker, STEP_LIMIT);
    }
}
