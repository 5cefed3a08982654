//! The Retire-Cluster worker library.
//!
//! A worker runs on whatever device its owner has lying around (a Raspberry Pi, an old
//! laptop, an Android phone under Termux), joins a master and runs the tasks the master
//! hands it. This crate holds the building blocks the `retire-worker` binary is made of,
//! and [`run`], the entry point both that binary and the master's `--dev` mode call:
//!
//! The folders follow the roles, and the arrows between them point one way:
//!
//! - [`session`]: the worker's side of the protocol as a state machine with no I/O
//!   (handshake, register, heartbeat schedule, accepting tasks, results awaiting acks),
//!   tested on simulated time; it defines the plain values it exchanges with the rest.
//! - [`link`]: the one persistent socket to the master, reconnecting with backoff, that
//!   drives the session, the task pool and the outbox.
//! - [`state`]: what lives in the state dir: the [`state::outbox`] of results until the
//!   master acknowledges them, the device's key ([`state::identity`]), the records of
//!   running process groups ([`state::running`]).
//! - [`tasks`]: running tasks: the slot threads ([`tasks::pool`]), the interface of a
//!   task type ([`tasks::task`]), the built-in types and the
//!   [`tasks::executor::Executor`] that runs every type, custom types
//!   ([`tasks::handlers`]), the owner's policy ([`tasks::config`]), and for external
//!   commands the process groups ([`tasks::exec`]) and the [`tasks::sandbox`].
//! - [`device`]: what the device is and how busy it is ([`device::profile`]).
//! - [`scrub`]: the process hardening `main` does first (the join token masked, not
//!   dumpable).
//!
//! A program can embed a worker with task types of its own, written in Rust:
//!
//! ```no_run
//! use worker::{ExecutionConfig, Handlers, StopHandle, TaskOutcome, WorkerConfig};
//!
//! let handlers = Handlers::new().add("word_count", |task, _context| {
//!     let text = task.payload["text"].as_str().unwrap_or_default();
//!     TaskOutcome::completed(serde_json::json!(text.split_whitespace().count()))
//! });
//! let config = WorkerConfig { master: "nas.local:8080".into(), ..WorkerConfig::default() };
//! worker::run_with(config, ExecutionConfig::default(), handlers, StopHandle::new())?;
//! # Ok::<(), worker::WorkerError>(())
//! ```
//!
//! (`worker/examples/embedded.rs` is a complete program.)
//!
//! The crate deliberately pulls in no C code, so that the worker cross-compiles to a
//! static `aarch64-unknown-linux-musl` binary with nothing but rustup's target and
//! `rust-lld`.

pub mod device;
pub mod link;
pub mod scrub;
pub mod session;
pub mod settings;
pub mod state;
pub mod tasks;

use crate::device::profile;
use crate::link::client::{self, LinkError};
use crate::state::{identity, outbox, running};
use crate::tasks::pool;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::TaskSpec;

use crate::tasks::executor::{Executor, ExecutorError};
use crate::tasks::task::Handler;

pub use crate::link::StopHandle;
pub use crate::tasks::config::ExecutionConfig;
pub use crate::tasks::task::{Progress, TaskContext, TaskOutcome};

/// Task types written in Rust, for [`run_with`].
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, Handler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Adds the handler for task type `name`. It runs on a slot thread of the worker, in
    /// the worker's process (it is trusted code, not sandboxed); it should return soon
    /// after `context.cancel` is cancelled, and may report progress through
    /// `context.report_progress`. A name of a built-in type is refused when the worker
    /// starts.
    pub fn add(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&TaskSpec, &TaskContext) -> TaskOutcome + Send + Sync + 'static,
    ) -> Handlers {
        self.map.insert(name.into(), Arc::new(handler));
        self
    }
}

/// How long a worker asked to stop waits for its running tasks before it hands them back
/// ([`WorkerConfig::drain_timeout`], `--drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a worker joins its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The master's worker port, as `HOST:PORT`.
    pub master: String,
    /// The id to register under; `None` derives a stable one from the hostname and
    /// machine id ([`profile::default_device_id`]).
    pub device_id: Option<String>,
    /// How many tasks run at once; `None` means one per logical CPU.
    pub slots: Option<usize>,
    /// The role to register with (`worker` unless told otherwise).
    pub role: String,
    /// Tags to register with, for tasks that require them.
    pub tags: Vec<String>,
    /// Where the worker keeps its state: the outbox of results not yet acknowledged, in
    /// `STATE_DIR/DEVICE_ID/outbox/` (see [`outbox`]). `None` means
    /// [`state::default_state_dir`] (`$XDG_STATE_HOME/retire-worker`, else
    /// `~/.local/state/retire-worker`).
    pub state_dir: Option<PathBuf>,
    /// How long [`StopHandle::stop`] waits for running tasks (and the acks of their
    /// results) before the worker hands what still runs back to the master.
    pub drain_timeout: Duration,
    /// The master's join token, to enroll; after enrolling the worker proves its own
    /// key (see [`identity`]). An enrolled worker given it enrolls again with a master
    /// that proves it, when the pinned master no longer answers as itself.
    pub token: Option<protocol::auth::Token>,
    /// Drop the pinned master key before starting (`--forget-master`), to enroll
    /// with the join token again; the device keeps its own key.
    pub forget_master: bool,
    /// Whether to speak systemd's notify protocol when systemd started the process
    /// (`NOTIFY_SOCKET`): READY=1 once registered, a STATUS= line, WATCHDOG=1 from the
    /// main loop, STOPPING=1 on a stop. The `retire-worker` binary turns it on; it is
    /// off by default so that a worker embedded in another daemon (the master's
    /// `--dev`) never speaks for that daemon.
    pub notify: bool,
    /// Where the battery and temperature sensors are read: `/sys`
    /// ([`device::power::SYSFS_ROOT`]), or a fake tree in tests.
    pub sysfs_root: PathBuf,
}

impl WorkerConfig {
    /// Checks what can be checked before the worker starts: the master address looks
    /// like `HOST:PORT`, slots (when given) are at least one, and the device id (when
    /// given) is a valid id. [`run`] does the same checks; callers use this to fail
    /// before announcing anything.
    pub fn validate(&self) -> Result<(), WorkerError> {
        check_master_address(&self.master)?;
        if self.slots == Some(0) {
            return Err(WorkerError::NoSlots);
        }
        if let Some(device_id) = &self.device_id {
            check_device_id(device_id)?;
        }
        Ok(())
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            master: format!("127.0.0.1:{}", protocol::DEFAULT_PORT),
            device_id: None,
            slots: None,
            role: "worker".to_string(),
            tags: Vec::new(),
            state_dir: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            token: None,
            forget_master: false,
            notify: false,
            sysfs_root: PathBuf::from(device::power::SYSFS_ROOT),
        }
    }
}

/// Why a worker could not run at all. Losing the master is not an error: the worker
/// keeps reconnecting until it is stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The master address is not `HOST:PORT`.
    #[error("invalid master address {address:?}: {reason}")]
    InvalidMasterAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device id is empty, too long or contains whitespace.
    #[error("invalid device id {device_id:?}: {reason}")]
    InvalidDeviceId {
        /// The id as given.
        device_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Zero slots were asked for.
    #[error("slots must be at least 1")]
    NoSlots,
    /// A thread of the worker could not be started.
    #[error("could not start the worker's threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The sandbox or the handlers could not be set up.
    #[error(transparent)]
    Execution(#[from] ExecutorError),
    /// No state dir was given and none could be derived (no `$HOME`, no binary path).
    #[error("no state dir: set --state-dir (RETIRE_STATE_DIR), XDG_STATE_HOME or HOME")]
    NoStateDir,
    /// The state dir could not be used (see [`outbox::OutboxError`]).
    #[error("could not open the outbox: {0}")]
    Outbox(#[from] outbox::OutboxError),
    /// The records of running tasks could not be read or cleared (see [`running`]).
    #[error("{path}: {source}")]
    Running {
        /// The records' folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker's credential could not be read or created.
    #[error("credential: {0}")]
    Identity(#[from] identity::IdentityError),
    /// The master refused this worker for good (revoked, wrong token, …).
    #[error("the master refused this worker: {0}")]
    Refused(String),
}

impl From<LinkError> for WorkerError {
    fn from(error: LinkError) -> WorkerError {
        match error {
            LinkError::Threads(source) => WorkerError::Threads(source),
            LinkError::Refused(reason) => WorkerError::Refused(reason),
        }
    }
}

/// Runs a worker until `stop` is stopped: joins the master at `config.master`, keeps
/// the connection (reconnecting with backoff whenever it drops) and runs the tasks the
/// master assigns. Results are kept in the outbox under `config.state_dir` until the
/// master acknowledges them; those an earlier run left there are sent after registering.
///
/// On [`StopHandle::stop`] it drains: its next heartbeat (sent at once) says
/// `draining`, it refuses new tasks with `shutting_down`, and waits up to
/// `config.drain_timeout` for the running tasks to finish and their results to be
/// acknowledged. Then (or at once on [`StopHandle::stop_now`]) it says goodbye, which
/// hands the tasks still running back to the master, cancels them, waits for the task
/// threads to end and returns, well under a second plus the task kill grace
/// ([`tasks::exec::KILL_GRACE_PERIOD`]) after that, whether or not it is connected. With
/// nothing running and nothing to deliver it returns promptly.
pub fn run(config: WorkerConfig, stop: StopHandle) -> Result<(), WorkerError> {
    run_with(config, ExecutionConfig::default(), Handlers::new(), stop)
}

/// Runs a worker like [`run`], with the owner's policy, sandbox set-up and limits from
/// `execution` and the task types in `handlers` besides the built-in ones. The worker
/// advertises exactly the types it can run and `execution` allows.
pub fn run_with(
    config: WorkerConfig,
    execution: ExecutionConfig,
    handlers: Handlers,
    stop: StopHandle,
) -> Result<(), WorkerError> {
    config.validate()?;
    let mut executor = Executor::new(execution, handlers.map)?;
    let state_dir = match config.state_dir.clone() {
        Some(dir) => dir,
        None => state::default_state_dir().ok_or(WorkerError::NoStateDir)?,
    };
    let slots = config.slots.unwrap_or_else(pool::default_slots);
    let mut device_profile = profile::collect();
    device_profile.sandbox = Some(executor.sandbox().level().as_str().to_string());
    if executor.sandbox().landlock().is_active() && executor.sandbox().exposes(&state_dir) {
        log::warn!(
            "tasks can read this worker's state dir {} (its device key among it): it lies \
             under a path `[sandbox] read` or `write` opens to them; move one or the other",
            state_dir.display()
        );
    }
    let device_id = config
        .device_id
        .unwrap_or_else(|| profile::default_device_id(&device_profile));
    check_device_id(&device_id)?;
    let outbox = outbox::Outbox::open(&state_dir, &device_id)?;
    // After the outbox, whose lock keeps other workers off this device's records; before
    // the worker registers, so the master's new runs of the tasks it left never overlap
    // the old ones.
    let device_dir = state_dir.join(&device_id);
    let (ledger, leftovers) =
        running::Ledger::open(&device_dir).map_err(|source| WorkerError::Running {
            path: device_dir.join(running::RUNNING_DIR),
            source,
        })?;
    if leftovers.records > 0 {
        log::info!(
            "the last run of this worker left {} task run(s) recorded: killed {} process \
             group(s) and {} other process(es) still running",
            leftovers.records,
            leftovers.groups_killed,
            leftovers.processes_killed
        );
    }
    executor.record_runs_in(Arc::new(ledger));
    let executor = Arc::new(executor);
    if config.forget_master {
        if identity::forget_master(&state_dir, &device_id)? {
            log::warn!(
                "--forget-master: dropped the pinned master key of {device_id}; the worker \
                 enrolls again with the join token{}",
                if config.token.is_some() {
                    ""
                } else {
                    ", but none was given: it will not authenticate"
                }
            );
        } else {
            log::info!("--forget-master: {device_id} had no pinned master key");
        }
    }
    let credentials = identity::load(&state_dir, &device_id, config.token.clone())?;
    let session_config = session::SessionConfig {
        device_id,
        task_types: executor.task_types(),
        slots,
        role: config.role,
        tags: config.tags,
        message_id_prefix: format!("{:08x}", fastrand::u32(..)),
    };
    let runner: pool::Runner =
        Arc::new(move |task: &TaskSpec, context: &TaskContext| executor.run(task, context));
    client::run(
        &config.master,
        session_config,
        &device_profile,
        runner,
        client::Identity {
            outbox,
            state_dir,
            credentials,
        },
        client::Service {
            drain_timeout: config.drain_timeout,
            sysfs_root: config.sysfs_root,
            notifier: if config.notify {
                daemon::notify::Notifier::from_env()
            } else {
                daemon::notify::Notifier::disabled()
            },
        },
        &stop,
    )
    .map_err(WorkerError::from)
}

fn check_device_id(device_id: &str) -> Result<(), WorkerError> {
    protocol::types::validate_id("device id", device_id).map_err(|reason| {
        WorkerError::InvalidDeviceId {
            device_id: device_id.to_string(),
            reason,
        }
    })
}

/// Checks that `address` looks like `HOST:PORT`, or is `auto` (find the master on the
/// LAN, see [`link::resolve`]). Resolving the host waits until the worker connects,
/// because a device often starts before its network or DNS is up.
fn check_master_address(address: &str) -> Result<(), WorkerError> {
    if link::resolve::Target::parse(address) == link::resolve::Target::Auto {
        return Ok(());
    }
    let invalid = |reason: &str| WorkerError::InvalidMasterAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid(
            "expected HOST:PORT, for example 192.168.1.10:8080, or `auto`",
        ));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(invalid("the host is empty or contains spaces"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("write an IPv6 address in brackets, as [::1]:8080"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(invalid("the port must be a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_are_checked() {
        for good in [
            "127.0.0.1:8080",
            "nas.local:1",
            "[::1]:8080",
            "localhost:65535",
            "auto",
            "AUTO",
        ] {
            assert!(check_master_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "nas",
            "nas:",
            ":8080",
            "nas:0",
            "nas:70000",
            "::1:8080",
            "na s:80",
            "automatic",
        ] {
            let error = check_master_address(bad).expect_err(bad);
            assert!(
                matches!(error, WorkerError::InvalidMasterAddress { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn run_refuses_bad_configuration_at_once() {
        let stop = StopHandle::new();
        let bad_address = WorkerConfig {
            master: "no-port".into(),
            ..WorkerConfig::default()
        };
        assert!(matches!(
            run(bad_address, stop.clone()),
            Err(WorkerError::InvalidMasterAddress { .. })
        ));
        let no_slots = WorkerConfig {
            slots: Some(0),
            ..WorkerConfig::default()
        };
        assert!(matches!(
            run(no_slots, stop.clone()),
            Err(WorkerError::NoSlots)
        ));
        let bad_id = WorkerConfig {
            device_id: Some("has space".into()),
            ..WorkerConfig::default()
        };
        assert!(matches!(
            run(bad_id, stop),
            Err(WorkerError::InvalidDeviceId { .. })
        ));
    }

    #[test]
    fn stop_handle_is_shared_and_wakes_selectors() {
        let stop = StopHandle::new();
        let clone = stop.clone();
        assert!(!clone.is_stopped());
        assert!(clone
            .stopped_receiver()
            .recv_timeout(std::time::Duration::from_millis(1))
            .is_err_and(|error| error.is_timeout()));
        stop.stop();
        stop.stop();
        assert!(clone.is_stopped());
        assert!(clone.stopped_receiver().recv().is_err());
    }
}
