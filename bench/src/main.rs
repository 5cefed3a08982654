//! The Retire-Cluster benchmark harness.
//!
//! `cargo run --release -p bench -- <scenario> [flags]` starts the real
//! `retire-master` and `retire-worker` binaries (found next to the `bench`
//! executable, so build them first with `cargo build --release --workspace
//! --bins`) on loopback in a temp dir, runs one scenario, and prints a
//! small table and one JSON line. `all` runs every scenario; `--smoke`
//! shrinks every size so the whole set runs in seconds (CI runs that).
//! Figures and how they were taken are in `docs/benchmarks.md`.

mod attack;
mod client;
mod connections;
mod footprint;
mod history;
mod http;
mod latency;
mod listing;
mod procs;
mod prune;
mod report;
mod scheduling;
mod soak;
mod throughput;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// Benchmarks of a real Retire-Cluster on loopback.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// Tiny sizes, for a smoke run that only checks the scenario works.
    #[arg(long, global = true)]
    smoke: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N echo tasks in batches through 4 workers x 8 slots, until every
    /// result is durable; tasks/s and CPU seconds.
    Throughput(ThroughputArgs),
    /// One task at a time on an idle cluster: submit -> task_finished
    /// p50, p99, max.
    Latency(LatencyArgs),
    /// K simulated workers heartbeating once a second; the master's CPU
    /// and RSS. `--ramp` finds the largest count the machine holds.
    Connections(ConnectionsArgs),
    /// Idle RSS of the master and a worker, the worker's CPU time and
    /// wake-ups while idle.
    Footprint(FootprintArgs),
    /// Cost per assignment in the master's core with a deep queue and
    /// 10 -> 10,000 workers.
    Scheduling(SchedulingArgs),
    /// Cost of one read (list_tasks, text tasks, status) in the master's
    /// core with 10,000 -> 200,000 stored tasks.
    Listing(ListingArgs),
    /// Hostile peers: non-readers that make the master hold replies (its
    /// RSS), and a listing flood (others' latency meanwhile).
    Attack(AttackArgs),
    /// A long history: a master started on 1,000,000 finished and 10,000
    /// queued tasks; its start time, RSS and `task_status` of finished
    /// tasks (read from the store).
    History(HistoryArgs),
    /// A million tasks in minutes with a retention of seconds: the
    /// master's RSS and database size, sampled, stay flat after warm-up.
    Soak(SoakArgs),
    /// The HTTP surface: `GET /api/v1/tasks` latency with many tasks
    /// stored, and what open Server-Sent Events clients cost the master.
    Http(HttpArgs),
    /// Deleting a long history: one pruning batch on the store alone, and
    /// a real master's submit latency while `prune` deletes 1,000,000
    /// finished tasks.
    Prune(PruneArgs),
    /// Every scenario in turn, each with its default sizes.
    All,
}

#[derive(Debug, Default, Args)]
struct ThroughputArgs {
    /// Tasks in all [default: 100000; smoke: 200].
    #[arg(long, alias = "size")]
    tasks: Option<usize>,
    /// Tasks per batch submit, at most 10000 [default: 10000; smoke: 50].
    #[arg(long)]
    batch: Option<usize>,
    /// Batches in flight before their acks arrive [default: 2].
    #[arg(long)]
    window: Option<usize>,
    /// Worker processes [default: 4].
    #[arg(long)]
    workers: Option<usize>,
    /// Slots per worker [default: 8].
    #[arg(long)]
    slots: Option<usize>,
}

#[derive(Debug, Default, Args)]
struct LatencyArgs {
    /// Measured tasks [default: 2000; smoke: 20].
    #[arg(long, alias = "size")]
    tasks: Option<usize>,
    /// Unmeasured tasks first [default: 50; smoke: 2].
    #[arg(long)]
    warmup: Option<usize>,
}

#[derive(Debug, Default, Args)]
struct ConnectionsArgs {
    /// Simulated workers [default: 10000; smoke: 50].
    #[arg(long, alias = "size")]
    workers: Option<usize>,
    /// Seconds they heartbeat while the master is measured [default: 60; smoke: 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Instead, add workers a level at a time until the machine does not hold them.
    #[arg(long)]
    ramp: bool,
    /// Workers added per level with --ramp [default: 2000; smoke: 20].
    #[arg(long)]
    step: Option<usize>,
    /// Seconds each level is held and measured with --ramp [default: 10; smoke: 0.5].
    #[arg(long)]
    hold: Option<f64>,
    /// Most workers --ramp tries [default: 1000000; smoke: 40].
    #[arg(long)]
    max: Option<usize>,
}

#[derive(Debug, Default, Args)]
struct FootprintArgs {
    /// Idle seconds over which CPU and wake-ups are counted [default: 60; smoke: 0.5].
    #[arg(long, alias = "size")]
    idle: Option<f64>,
    /// Seconds to settle after the worker joined [default: 5; smoke: 0.2].
    #[arg(long)]
    settle: Option<f64>,
}

#[derive(Debug, Default, Args)]
struct SchedulingArgs {
    /// Worker counts, comma-separated [default: 10,100,1000,10000; smoke: 10,100].
    #[arg(long, alias = "size", value_delimiter = ',')]
    workers: Option<Vec<usize>>,
    /// Tasks queued behind full slots [default: 100000; smoke: 1000].
    #[arg(long)]
    queued: Option<usize>,
    /// Timed assignments per size [default: 10000; smoke: 200].
    #[arg(long)]
    assignments: Option<usize>,
    /// The master's placement strategy (docs/placement.md).
    #[arg(long, default_value = "least_loaded", value_parser = parse_strategy)]
    strategy: protocol::PlacementStrategy,
}

fn parse_strategy(text: &str) -> Result<protocol::PlacementStrategy, String> {
    text.parse()
        .map_err(|why: protocol::types::UnknownStrategy| why.to_string())
}

#[derive(Debug, Default, Args)]
struct ListingArgs {
    /// Stored task counts, comma-separated [default: 10000,200000; smoke: 100,1000].
    #[arg(long, alias = "size", value_delimiter = ',')]
    tasks: Option<Vec<usize>>,
    /// Timed requests of each kind per size [default: 1000; smoke: 10].
    #[arg(long)]
    requests: Option<usize>,
    /// Connected device counts for the device reads, comma-separated
    /// [default: 100,10000; smoke: 10,100]; 0 skips them.
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<usize>>,
}

#[derive(Debug, Default, Args)]
struct HistoryArgs {
    /// Finished tasks in the database [default: 1000000; smoke: 2000].
    #[arg(long, alias = "size")]
    finished: Option<usize>,
    /// Queued tasks after them [default: 10000; smoke: 100].
    #[arg(long)]
    queued: Option<usize>,
    /// Timed task_status requests [default: 2000; smoke: 20].
    #[arg(long)]
    requests: Option<usize>,
    /// Timed runs of `retire task ID` [default: 200; smoke: 3].
    #[arg(long)]
    cli_runs: Option<usize>,
}

#[derive(Debug, Default, Args)]
struct SoakArgs {
    /// Tasks in all [default: 1000000; smoke: 300].
    #[arg(long, alias = "size")]
    tasks: Option<usize>,
    /// Tasks per batch submit, at most 10000 [default: 5000; smoke: 50].
    #[arg(long)]
    batch: Option<usize>,
    /// Batches submitted ahead of the results, at most [default: 4].
    #[arg(long)]
    window: Option<usize>,
    /// Worker processes [default: 4].
    #[arg(long)]
    workers: Option<usize>,
    /// Slots per worker [default: 8].
    #[arg(long)]
    slots: Option<usize>,
    /// The master's retention of finished tasks, failed ones too, in
    /// seconds [default: 5; smoke: 1].
    #[arg(long)]
    retention: Option<u64>,
    /// Seconds between samples [default: 5; smoke: 0.2].
    #[arg(long)]
    sample: Option<f64>,
}

#[derive(Debug, Default, Args)]
struct PruneArgs {
    /// Finished tasks in the database [default: 1000000; smoke: 1200].
    #[arg(long, alias = "size")]
    finished: Option<usize>,
    /// Bytes of each task's payload [default: 1024].
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Bytes of each task's result output [default: 2048].
    #[arg(long)]
    result_bytes: Option<usize>,
    /// Pruning batches timed on the store alone [default: 200; smoke: 2].
    #[arg(long)]
    batches: Option<usize>,
    /// On the store alone, batches of 500 rows with neither the byte bound
    /// nor the time adaptation, as before them.
    #[arg(long)]
    rows_only: bool,
    /// Seconds of submits timed before the prune [default: 3; smoke: 0.2].
    #[arg(long)]
    quiet: Option<f64>,
    /// Milliseconds between one submit's ack and the next [default: 2].
    #[arg(long)]
    pace: Option<f64>,
}

#[derive(Debug, Default, Args)]
struct AttackArgs {
    /// Which attack [default: all].
    #[arg(long, value_enum)]
    phase: Option<attack::Phase>,
    /// Seconds each attack lasts [default: 20; smoke: 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Non-reading `help` connections [default: 48; smoke: 4].
    #[arg(long)]
    help_conns: Option<usize>,
    /// Non-reading `list_tasks` readers [default: 8; smoke: 2].
    #[arg(long)]
    readers: Option<usize>,
    /// Tasks stored before the `list` attack [default: 1000; smoke: 20].
    #[arg(long)]
    list_tasks: Option<usize>,
    /// Tasks stored before the flood [default: 10000; smoke: 50].
    #[arg(long)]
    flood_tasks: Option<usize>,
    /// Connections flooding listings [default: 1].
    #[arg(long)]
    flooders: Option<usize>,
    /// Non-reading anonymous watchers of the `watch` attack [default: 300; smoke: 20].
    #[arg(long)]
    watchers: Option<usize>,
    /// Seconds RSS is given to fall after the attackers close [default: 3; smoke: 0.2].
    #[arg(long)]
    after_close: Option<f64>,
    /// Finished tasks in the database of the `history` attack [default: 1000000; smoke: 2000].
    #[arg(long)]
    history_tasks: Option<usize>,
    /// Bytes of each of their results [default: 2048].
    #[arg(long)]
    history_result_bytes: Option<usize>,
}

#[derive(Debug, Default, Args)]
struct HttpArgs {
    /// Completed tasks stored before the reads [default: 10000; smoke: 100].
    #[arg(long)]
    stored: Option<usize>,
    /// Timed requests of each kind [default: 1000; smoke: 10].
    #[arg(long)]
    requests: Option<usize>,
    /// Server-Sent Events clients held open [default: 100; smoke: 5].
    #[arg(long)]
    streams: Option<usize>,
    /// Seconds of load in each phase [default: 20; smoke: 0.5].
    #[arg(long)]
    load: Option<f64>,
    /// Tasks submitted per second during the load [default: 100; smoke: 20].
    #[arg(long)]
    rate: Option<usize>,
}

fn pick<T>(value: Option<T>, smoke: bool, small: T, full: T) -> T {
    value.unwrap_or(if smoke { small } else { full })
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn throughput(args: &ThroughputArgs, smoke: bool) -> Result<report::Report> {
    throughput::run(&throughput::Params {
        tasks: pick(args.tasks, smoke, 200, 100_000),
        batch: pick(args.batch, smoke, 50, 10_000),
        window: args.window.unwrap_or(2),
        workers: args.workers.unwrap_or(4),
        slots: args.slots.unwrap_or(8),
    })
}

fn latency(args: &LatencyArgs, smoke: bool) -> Result<report::Report> {
    latency::run(&latency::Params {
        tasks: pick(args.tasks, smoke, 20, 2000),
        warmup: pick(args.warmup, smoke, 2, 50),
    })
}

fn connections(args: &ConnectionsArgs, smoke: bool) -> Result<report::Report> {
    connections::run(&connections::Params {
        workers: pick(args.workers, smoke, 50, 10_000),
        duration: secs(pick(args.duration, smoke, 1.0, 60.0)),
        ramp: args.ramp,
        step: pick(args.step, smoke, 20, 2000),
        hold: secs(pick(args.hold, smoke, 0.5, 10.0)),
        max: pick(args.max, smoke, 40, 1_000_000),
    })
}

fn footprint(args: &FootprintArgs, smoke: bool) -> Result<report::Report> {
    footprint::run(&footprint::Params {
        idle: secs(pick(args.idle, smoke, 0.5, 60.0)),
        settle: secs(pick(args.settle, smoke, 0.2, 5.0)),
    })
}

fn scheduling(args: &SchedulingArgs, smoke: bool) -> Result<report::Report> {
    scheduling::run(&scheduling::Params {
        sizes: pick(
            args.workers.clone(),
            smoke,
            vec![10, 100],
            vec![10, 100, 1000, 10_000],
        ),
        queued: pick(args.queued, smoke, 1000, 100_000),
        assignments: pick(args.assignments, smoke, 200, 10_000),
        strategy: args.strategy,
    })
}

fn listing(args: &ListingArgs, smoke: bool) -> Result<report::Report> {
    listing::run(&listing::Params {
        sizes: pick(
            args.tasks.clone(),
            smoke,
            vec![100, 1000],
            vec![10_000, 200_000],
        ),
        requests: pick(args.requests, smoke, 10, 1000),
        device_sizes: pick(
            args.devices.clone(),
            smoke,
            vec![10, 100],
            vec![100, 10_000],
        )
        .into_iter()
        .filter(|&n| n > 0)
        .collect(),
    })
}

fn attack(args: &AttackArgs, smoke: bool) -> Result<report::Report> {
    attack::run(&attack::Params {
        phase: args.phase.unwrap_or(attack::Phase::All),
        duration: secs(pick(args.duration, smoke, 1.0, 20.0)),
        help_conns: pick(args.help_conns, smoke, 4, 48),
        readers: pick(args.readers, smoke, 2, 8),
        list_tasks: pick(args.list_tasks, smoke, 20, 1000),
        flood_tasks: pick(args.flood_tasks, smoke, 50, 10_000),
        flooders: args.flooders.unwrap_or(1),
        watchers: pick(args.watchers, smoke, 20, 300),
        after_close: secs(pick(args.after_close, smoke, 0.2, 3.0)),
        history_tasks: pick(args.history_tasks, smoke, 2000, 1_000_000),
        history_result_bytes: args.history_result_bytes.unwrap_or(2048),
    })
}

fn history(args: &HistoryArgs, smoke: bool) -> Result<report::Report> {
    history::run(&history::Params {
        finished: pick(args.finished, smoke, 2000, 1_000_000),
        queued: pick(args.queued, smoke, 100, 10_000),
        requests: pick(args.requests, smoke, 20, 2000),
        cli_runs: pick(args.cli_runs, smoke, 3, 200),
    })
}

fn soak(args: &SoakArgs, smoke: bool) -> Result<report::Report> {
    soak::run(&soak::Params {
        load: throughput::Params {
            tasks: pick(args.tasks, smoke, 300, 1_000_000),
            batch: pick(args.batch, smoke, 50, 5000),
            window: args.window.unwrap_or(4),
            workers: args.workers.unwrap_or(4),
            slots: args.slots.unwrap_or(8),
        },
        retention_secs: pick(args.retention, smoke, 1, 5),
        sample_every: secs(pick(args.sample, smoke, 0.2, 5.0)),
    })
}

fn http(args: &HttpArgs, smoke: bool) -> Result<report::Report> {
    http::run(&http::Params {
        stored: pick(args.stored, smoke, 100, 10_000),
        requests: pick(args.requests, smoke, 10, 1000),
        streams: pick(args.streams, smoke, 5, 100),
        load_secs: pick(args.load, smoke, 0.5, 20.0),
        rate: pick(args.rate, smoke, 20, 100),
    })
}

fn prune(args: &PruneArgs, smoke: bool) -> Result<report::Report> {
    prune::run(&prune::Params {
        finished: pick(args.finished, smoke, 1200, 1_000_000),
        payload_bytes: args.payload_bytes.unwrap_or(1024),
        result_bytes: args.result_bytes.unwrap_or(2048),
        batches: pick(args.batches, smoke, 2, 200),
        rows_only: args.rows_only,
        quiet: secs(pick(args.quiet, smoke, 0.2, 3.0)),
        pace: secs(args.pace.unwrap_or(2.0) / 1000.0),
    })
}

fn print(report: Result<report::Report>) -> bool {
    match report {
        Ok(report) => {
            println!("{}", report.render());
            true
        }
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            false
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let smoke = cli.smoke;
    let ok = match &cli.scenario {
        Scenario::Throughput(args) => print(throughput(args, smoke)),
        Scenario::Latency(args) => print(latency(args, smoke)),
        Scenario::Connections(args) => print(connections(args, smoke)),
        Scenario::Footprint(args) => print(footprint(args, smoke)),
        Scenario::Scheduling(args) => print(scheduling(args, smoke)),
        Scenario::Listing(args) => print(listing(args, smoke)),
        Scenario::Attack(args) => print(attack(args, smoke)),
        Scenario::History(args) => print(history(args, smoke)),
        Scenario::Soak(args) => print(soak(args, smoke)),
        Scenario::Http(args) => print(http(args, smoke)),
        Scenario::Prune(args) => print(prune(args, smoke)),
        Scenario::All => {
            let results = [
                print(throughput(&ThroughputArgs::default(), smoke)),
                print(latency(&LatencyArgs::default(), smoke)),
                print(connections(&ConnectionsArgs::default(), smoke)),
                print(connections(
                    &ConnectionsArgs {
                        ramp: true,
                        ..ConnectionsArgs::default()
                    },
                    smoke,
                )),
                print(footprint(&FootprintArgs::default(), smoke)),
                print(scheduling(&SchedulingArgs::default(), smoke)),
                print(listing(&ListingArgs::default(), smoke)),
                print(attack(&AttackArgs::default(), smoke)),
                print(history(&HistoryArgs::default(), smoke)),
                print(soak(&SoakArgs::default(), smoke)),
                print(http(&HttpArgs::default(), smoke)),
                print(prune(&PruneArgs::default(), smoke)),
            ];
            results.iter().all(|ok| *ok)
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
