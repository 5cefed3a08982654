//! The Retire-Cluster master.
//!
//! [`run`] takes an already bound listener and a [`Config`], opens the
//! store, restores the core from it, and runs the event loop until the
//! [`Shutdown`] handle is triggered. The `retire-master` binary is a thin
//! wrapper around it; tests call it directly on `127.0.0.1:0`.
//!
//! - [`core`]: the sans-IO state machine (registry, queue, scheduling).
//! - `event_loop`: the only code that touches sockets (HTTP connections
//!   in `event_loop/http.rs`).
//! - [`http`]: the HTTP edge codec: requests to messages, replies to
//!   responses, no I/O.
//! - [`store`]: the only code that touches SQLite.
//! - [`credentials`]: the tokens and the master's key on disk.
//! - [`config`]: the settings from flags, environment, config file and
//!   defaults, with where each came from.

pub mod announce;
pub mod config;
pub mod core;
pub mod credentials;
mod event_loop;
pub mod http;
pub mod store;

use crate::core::{Core, CoreConfig};
use event_loop::{EventLoop, LoopLimits};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
pub use store::Synchronous;

/// Default longest line a peer may send (1 MiB).
pub const DEFAULT_MAX_LINE: usize = protocol::DEFAULT_MAX_LINE;
/// Default most connections at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default longest line before a peer has authenticated (4 KiB).
pub const DEFAULT_PRE_AUTH_MAX_LINE: usize = 4096;
/// Default most bytes queued for one authenticated peer (unsent output
/// plus replies held for a commit): 64 MiB. Past it the connection is
/// closed; past half of it nothing more is read from the peer. Enough for
/// an admin who submits a few batches of 10,000 tasks while subscribed,
/// before reading the events; [`DEFAULT_MAX_TOTAL_OUTPUT`] bounds what
/// all of them together may make the master hold.
pub const DEFAULT_MAX_PENDING_OUTPUT: usize = 64 * 1024 * 1024;
/// Default most bytes queued for all connections together: 256 MiB. Past
/// it the connection with the largest backlog is closed, until the total
/// is under it again.
pub const DEFAULT_MAX_TOTAL_OUTPUT: usize = 256 * 1024 * 1024;
/// Most bytes queued for one connection that has not authenticated (one
/// still in its handshake, or an anonymous reader from `read_only_from`):
/// 1 MiB, past half of which nothing more is read from it. A single reply
/// larger than this (a task with a large payload) is still sent to a peer
/// that had nothing queued.
pub const UNTRUSTED_MAX_PENDING_OUTPUT: usize = 1024 * 1024;
/// Most bytes queued for all connections that have not authenticated,
/// together: 32 MiB. Past it the one with the largest backlog is closed, so
/// strangers can never crowd out workers and clients with tokens.
pub const UNTRUSTED_MAX_TOTAL_OUTPUT: usize = 32 * 1024 * 1024;
/// Requests of one connection handed to the core per loop turn: 64. The
/// rest waits for the next turn, after every other connection had its
/// turn, so one peer's burst cannot starve heartbeats or other clients.
pub const WORK_FRAMES_PER_TURN: usize = 64;
/// Time spent on one connection's requests per loop turn: 2 ms (a request
/// that has started always finishes; the next one waits for the next turn).
pub const WORK_TIME_PER_TURN: std::time::Duration = std::time::Duration::from_millis(2);
/// Time spent on the requests of all connections that have not
/// authenticated (in their handshake, or anonymous readers), together, per
/// loop turn: 4 ms. They share it round-robin, each turn starting after
/// the last one served, so every one of them progresses however many
/// there are; connections that authenticated are served before them, each
/// with its own [`WORK_FRAMES_PER_TURN`] and [`WORK_TIME_PER_TURN`]. A
/// request that has started always finishes, so a turn gives strangers at
/// most this plus one request of each kind (a handshake step, a listing
/// page).
pub const UNTRUSTED_WORK_PER_TURN: std::time::Duration = std::time::Duration::from_millis(4);
/// The part of [`UNTRUSTED_WORK_PER_TURN`] that connections in their
/// handshake get first: 2 ms. A worker that reconnects is one of them, so
/// it never waits behind every anonymous reader (there may be thousands);
/// readers get the rest, at least 2 ms, so a handshake flood cannot starve
/// them either.
pub const PENDING_WORK_PER_TURN: std::time::Duration = std::time::Duration::from_millis(2);
/// Default time a connection whose peer half-closed (shut down its
/// sending side) has to take the replies still queued for it: 30 s. After
/// it the connection is closed whether or not they were written, so a
/// peer that half-closes and never reads cannot keep up to its cap
/// (64 MiB with a token) queued for good. One-shot tools (`nc -N`) read
/// their replies at once.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default time an anonymous reader may stay without sending a request
/// and without taking any of its replies: 10 minutes. A quiet `retire
/// watch` (subscribed, with nothing queued) is never idle, whatever the
/// time; a subscriber that stops reading its events is. Long enough for a
/// person at a netcat prompt; short enough that connections a local user
/// opens and forgets do not pile up towards `--max-connections`.
pub const DEFAULT_READER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a connection the master closes (a deadline passed, a refusal,
/// a missed heartbeat) may take to receive its last reply: 1 s. After it
/// the connection is closed whether or not that reply was sent.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the master needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory that holds the database.
    pub data_dir: PathBuf,
    /// Core settings (heartbeats, ids).
    pub core: CoreConfig,
    /// Longest line a peer may send.
    pub max_line: usize,
    /// Longest line a peer may send before it has authenticated.
    pub pre_auth_max_line: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most bytes queued for one slow authenticated peer before it is
    /// disconnected.
    pub max_pending_output: usize,
    /// Most bytes queued for all peers together.
    pub max_total_output: usize,
    /// SQLite's `synchronous` setting.
    pub synchronous: Synchronous,
    /// How long a half-closed connection has to take its last replies.
    pub drain_timeout: std::time::Duration,
    /// How long an anonymous reader may stay idle (see
    /// [`DEFAULT_READER_IDLE_TIMEOUT`]).
    pub reader_idle_timeout: std::time::Duration,
    /// How long a Server-Sent Events stream may stay silent before it
    /// gets a `: keep-alive` comment (see [`http::SSE_KEEP_ALIVE_INTERVAL`]).
    pub sse_keep_alive: std::time::Duration,
    /// How long finished tasks are kept (see [`store::retention`]).
    pub retention: store::retention::Retention,
}

impl Config {
    /// Defaults, with the database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            core: CoreConfig::default(),
            max_line: DEFAULT_MAX_LINE,
            pre_auth_max_line: DEFAULT_PRE_AUTH_MAX_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_output: DEFAULT_MAX_PENDING_OUTPUT,
            max_total_output: DEFAULT_MAX_TOTAL_OUTPUT,
            synchronous: Synchronous::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            reader_idle_timeout: DEFAULT_READER_IDLE_TIMEOUT,
            sse_keep_alive: http::SSE_KEEP_ALIVE_INTERVAL,
            retention: store::retention::Retention::default(),
        }
    }
}

/// Why the master could not run.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The database could not be opened or read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The tokens or the master's key could not be read or created.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    /// A socket or poll operation failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

impl MasterError {
    /// The exit status this failure has its own of, if any (see the
    /// README): a read-only data dir, `store::files::EXIT_READ_ONLY`.
    pub fn exit_code(&self) -> Option<u8> {
        match self {
            MasterError::Store(store::StoreError::Files(files)) => files.exit_code(),
            _ => None,
        }
    }
}

/// Asks a running master to stop; cloneable, usable from any thread or a
/// signal handler thread.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: AtomicBool,
    waker: Mutex<Option<Arc<mio::Waker>>>,
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks the master to stop: it stops accepting, commits what it holds,
    /// sends the replies that were waiting for that commit, and returns.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        let waker = self.inner.waker.lock().map(|w| w.clone()).unwrap_or(None);
        if let Some(waker) = waker {
            let _ = waker.wake();
        }
    }

    /// Whether [`Shutdown::trigger`] has been called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    fn set_waker(&self, waker: Arc<mio::Waker>) {
        if let Ok(mut slot) = self.inner.waker.lock() {
            *slot = Some(waker);
        }
    }
}

/// The data directory as a start found it: see [`open`].
pub struct Opened {
    /// The open database.
    pub store: store::Store,
    /// Whether this is a first start: the database was missing and has
    /// been created. An empty or unreadable one is an error instead.
    pub first_start: bool,
    /// The secrets, when authentication is on.
    pub secrets: Option<core::Secrets>,
}

/// Opens the data directory as a start does: makes it and the database
/// private (0700, 0600; see `docs/security.md`), opens the database
/// (creating it when it is missing, a first start) and reads the secrets
/// (creating missing ones, see [`credentials::load_for_start`]) when
/// `auth_required`. The binary calls it before it listens, so the commands
/// it prints work, and [`run`] calls it again.
pub fn open(
    data_dir: &std::path::Path,
    synchronous: Synchronous,
    auth_required: bool,
) -> Result<Opened, MasterError> {
    let store = store::Store::open(data_dir, synchronous)?;
    let first_start = store.created();
    let secrets = if auth_required {
        let enrolled = if first_start {
            0
        } else {
            store
                .load_device_keys()?
                .iter()
                .filter(|key| key.public_key.is_some() && key.revoked_unix_ms.is_none())
                .count()
        };
        Some(credentials::load_for_start(
            data_dir,
            first_start,
            enrolled,
        )?)
    } else {
        None
    };
    Ok(Opened {
        store,
        first_start,
        secrets,
    })
}

/// Runs the master on `listener` until `shutdown` is triggered.
pub fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: Shutdown,
) -> Result<(), MasterError> {
    let Opened { store, secrets, .. } = open(
        &config.data_dir,
        config.synchronous,
        config.core.auth.required,
    )?;
    // Only the live tasks: the finished ones stay in the store and are
    // read when asked for (`core/history.rs`), so a start and the
    // master's memory cost the live tasks, not the history.
    let (devices, tasks, history) = store.load_live()?;
    let reader = store::Reader::open(&config.data_dir)?;
    let device_keys = store.load_device_keys()?;
    // Records set aside now (each logged as it was moved) or at an earlier
    // start stay visible: in this line, in `status` and in `--check`.
    let quarantined = store.quarantined()?;
    if !quarantined.is_empty() {
        log::warn!(
            "{} stored records are quarantined (they could not be read back); \
             `retire-master --check` lists them",
            quarantined.len()
        );
    }
    log::info!(
        "restored {} devices and {} live tasks ({} finished ones stay in the store) from {}",
        devices.len(),
        tasks.len(),
        history.finished.iter().map(|(_, count)| count).sum::<u64>(),
        config.data_dir.join(store::DB_FILE).display()
    );
    let started = Instant::now();
    let now = crate::core::Now {
        monotonic: started.elapsed(),
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let mut core_config = config.core.clone();
    core_config.max_task_bytes = config
        .max_line
        .saturating_sub(crate::core::ASSIGN_OVERHEAD)
        .max(1);
    // The `random` strategy's seed: fresh at every start (the core draws
    // no randomness itself). A failed draw only makes the spread
    // predictable, so the wall clock stands in.
    core_config.placement_seed = keyfile::random_bytes::<8>()
        .map(u64::from_le_bytes)
        .unwrap_or(now.unix_ms as u64);
    let configured = core_config.strategy;
    let mut core = Core::new(core_config, devices, tasks, now);
    // A strategy set with `retire strategy` outlives restarts and wins over
    // the configured one, which is only the default until one is set.
    match store.load_setting(crate::core::STRATEGY_SETTING)? {
        Some(stored) => match stored.parse::<protocol::PlacementStrategy>() {
            Ok(strategy) => {
                if strategy == configured {
                    log::info!("placement strategy {strategy}");
                } else {
                    log::info!(
                        "placement strategy {strategy}, as set with `retire strategy` \
                         (the configured {configured} applies only until one is set)"
                    );
                }
                core.restore_strategy(strategy);
            }
            Err(why) => log::warn!("ignoring the stored placement strategy: {why}"),
        },
        None => log::info!("placement strategy {configured}"),
    }
    core.restore_history(&history.finished, history.max_seq);
    let today = crate::core::observe::utc_day_start(now.unix_ms);
    core.restore_completed_today(now, store.completed_since(today)?);
    core.restore_device_keys(device_keys);
    core.set_quarantined(quarantined.len() as u64);
    let watch = if let Some(secrets) = secrets {
        core.set_secrets(secrets);
        credentials::Watch::new(&config.data_dir)
    } else {
        log::warn!("authentication is off: anyone who reaches this port can run tasks");
        credentials::Watch::off()
    };
    let poll = mio::Poll::new()?;
    let waker = EventLoop::make_waker(&poll)?;
    shutdown.set_waker(waker.clone());
    let (batches, store_events, store_thread) =
        store::spawn(store, Some(config.retention), waker, shutdown.clone())?;
    listener.set_nonblocking(true)?;
    let listener = mio::net::TcpListener::from_std(listener);
    let limits = LoopLimits {
        max_line: config.max_line,
        pre_auth_max_line: config.pre_auth_max_line.min(config.max_line),
        max_connections: config.max_connections,
        max_pending_output: config.max_pending_output.max(1),
        max_total_output: config.max_total_output.max(1),
        untrusted_max_pending_output: UNTRUSTED_MAX_PENDING_OUTPUT
            .min(config.max_pending_output)
            .max(1),
        untrusted_max_total_output: UNTRUSTED_MAX_TOTAL_OUTPUT.min(config.max_total_output),
        drain_timeout: config.drain_timeout,
        reader_idle_timeout: config.reader_idle_timeout,
        sse_keep_alive: config.sse_keep_alive,
    };
    let mut event_loop = EventLoop::new(
        poll,
        listener,
        core,
        limits,
        (batches, store_events),
        started,
        watch,
    )?;
    // systemd's notify socket and watchdog, when it started the master.
    event_loop.set_reader(reader);
    event_loop.set_notifier(daemon::notify::Notifier::from_env());
    let result = event_loop.run(&shutdown);
    // The loop dropped its batch sender, so the store thread finishes the
    // last commit and ends.
    if store_thread.join().is_err() {
        log::error!("the store thread panicked");
    }
    result.map_err(MasterError::from)
}
