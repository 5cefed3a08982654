//! `retire-master`: parses flags and environment, sets up logging and
//! signals, binds the listener and calls [`master::run`].

use anyhow::{bail, Context, Result};
use clap::Parser;
use master::core::CoreConfig;
use master::{Config, Shutdown, Synchronous};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

/// The Retire-Cluster master: registry, queue and scheduler for your idle devices.
///
/// Every flag can also be set through the environment variable shown; a flag
/// wins over the environment, which wins over the default.
#[derive(Parser, Debug)]
#[command(name = "retire-master", version)]
struct Args {
    /// Address to listen on for workers, clients and netcat.
    #[arg(long, env = "RETIRE_LISTEN")]
    listen: Option<SocketAddr>,

    /// Directory for the database (created if missing).
    #[arg(long, env = "RETIRE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Development mode: listen on 127.0.0.1:8080, keep data in ./.retire-dev,
    /// and run a local worker in this process.
    #[arg(long)]
    dev: bool,

    /// Seconds between worker heartbeats (told to workers at registration).
    #[arg(long, env = "RETIRE_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    heartbeat_interval: f64,

    /// Seconds of silence after which a worker is considered gone.
    #[arg(long, env = "RETIRE_HEARTBEAT_TIMEOUT", default_value_t = 15.0)]
    heartbeat_timeout: f64,

    /// Longest line a peer may send, in bytes.
    #[arg(long, env = "RETIRE_MAX_LINE", default_value_t = master::DEFAULT_MAX_LINE)]
    max_line: usize,

    /// Most connections open at once.
    #[arg(long, env = "RETIRE_MAX_CONNECTIONS", default_value_t = master::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// SQLite synchronous mode: `normal` (survives a crash of the master) or
    /// `full` (also survives power loss).
    #[arg(long, env = "RETIRE_SYNCHRONOUS", default_value = "normal")]
    synchronous: String,

    /// Retries a task gets when it does not set `max_retries` itself.
    #[arg(long, env = "RETIRE_DEFAULT_MAX_RETRIES", default_value_t = 0)]
    default_max_retries: u32,

    /// Seconds past a task's timeout before the master itself gives up on
    /// the attempt.
    #[arg(long, env = "RETIRE_TIMEOUT_GRACE", default_value_t = 10.0)]
    timeout_grace: f64,

    /// Seconds the master holds the tasks of a worker it lost (one that
    /// keeps running them while away) before it requeues them.
    #[arg(long, env = "RETIRE_LEASE_GRACE", default_value_t = 60.0)]
    lease_grace: f64,

    /// Check the database in --data-dir (SQLite's integrity_check), print
    /// the verdict and exit: 0 when it is sound, 1 when it is not.
    #[arg(long)]
    check: bool,

    /// Slots of the local worker in --dev mode (default: number of cores).
    #[arg(long, env = "RETIRE_DEV_SLOTS")]
    dev_slots: Option<usize>,
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value <= 0.0 {
        bail!("--{name} must be a positive number of seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(err) = real_main() {
        eprintln!("retire-master: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let listen = args.listen.unwrap_or_else(|| {
        if args.dev {
            SocketAddr::from(([127, 0, 0, 1], protocol::DEFAULT_PORT))
        } else {
            SocketAddr::from(([0, 0, 0, 0], protocol::DEFAULT_PORT))
        }
    });
    let data_dir = match (&args.data_dir, args.dev) {
        (Some(dir), _) => dir.clone(),
        (None, true) => PathBuf::from(".retire-dev"),
        (None, false) => PathBuf::from("/var/lib/retire-cluster"),
    };
    if args.check {
        let store = master::store::Store::open(&data_dir, Synchronous::Normal)
            .with_context(|| format!("opening the database in {}", data_dir.display()))?;
        let verdict = store.integrity_check().context("running integrity_check")?;
        return match verdict {
            Ok(()) => {
                println!(
                    "ok: {} passes integrity_check",
                    data_dir.join(master::store::DB_FILE).display()
                );
                Ok(())
            }
            Err(problem) => bail!("the database is damaged: {problem}"),
        };
    }
    let synchronous = Synchronous::parse(&args.synchronous).with_context(|| {
        format!(
            "--synchronous must be normal or full, got {:?}",
            args.synchronous
        )
    })?;
    let core = CoreConfig {
        heartbeat_interval: seconds("heartbeat-interval", args.heartbeat_interval)?,
        heartbeat_timeout: seconds("heartbeat-timeout", args.heartbeat_timeout)?,
        default_max_retries: args.default_max_retries,
        timeout_grace: seconds("timeout-grace", args.timeout_grace)?,
        lease_grace: seconds("lease-grace", args.lease_grace)?,
        ..CoreConfig::default()
    };
    if core.heartbeat_timeout <= core.heartbeat_interval {
        bail!("--heartbeat-timeout must be longer than --heartbeat-interval");
    }
    let config = Config {
        data_dir: data_dir.clone(),
        core,
        max_line: args.max_line.max(1024),
        max_connections: args.max_connections.max(1),
        synchronous,
        ..Config::new(&data_dir)
    };
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;

    // With a file-size limit (RLIMIT_FSIZE) reached, the kernel would kill
    // the master with SIGXFSZ. Handling the signal makes the write fail
    // with EFBIG instead, which the store treats like a full disk: no ack,
    // retry, recover.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .context("installing the SIGXFSZ handler")?;
    let shutdown = Shutdown::new();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let on_signal = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            if let Some(signal) = signals.next() {
                log::info!("signal {signal} received; stopping (send it again to stop at once)");
                on_signal.trigger();
            }
            if let Some(signal) = signals.next() {
                // A second signal means the operator will not wait. Nothing
                // unacknowledged is lost by exiting, and everything
                // acknowledged is already on disk.
                log::warn!("signal {signal} received again; exiting now");
                std::process::exit(130);
            }
        })
        .context("starting the signal thread")?;

    // Tests and scripts read this first line to learn the port when they
    // ask for port 0.
    println!("retire-master listening on {bound}");
    log::info!("data in {}", data_dir.display());
    let local_worker = if args.dev {
        let stop = worker::StopHandle::new();
        let worker_config = worker::WorkerConfig {
            master: bound.to_string(),
            device_id: Some("local".into()),
            slots: args.dev_slots,
            // The local worker keeps its outbox with the master's data, so
            // `--dev` leaves nothing in the home directory.
            state_dir: Some(data_dir.join("worker-state")),
            ..worker::WorkerConfig::default()
        };
        let handle_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("local-worker".into())
            .spawn(move || {
                if let Err(err) = worker::run(worker_config, handle_stop) {
                    log::error!("local worker: {err}");
                }
            })
            .context("starting the local worker")?;
        println!(
            "dev mode: a local worker runs in this process; data in {}",
            data_dir.display()
        );
        println!("submit work from another terminal:");
        println!(
            "  cargo run -p cli -- --master {bound} submit --wait -- echo hello from the cluster"
        );
        println!("  cargo run -p cli -- --master {bound} devices");
        println!(
            "or by hand:  nc {} {}   then type: help",
            bound.ip(),
            bound.port()
        );
        println!("stop with Ctrl-C");
        Some((stop, thread))
    } else {
        None
    };

    let result = master::run(listener, config, shutdown);
    if let Some((stop, thread)) = local_worker {
        stop.stop();
        let _ = thread.join();
    }
    result.context("master stopped with an error")?;
    log::info!("stopped cleanly");
    Ok(())
}
