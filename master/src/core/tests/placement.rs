//! Placement strategies (`core/placement`, `docs/placement.md`) over
//! 10,000 tasks each, on simulated time: round robin spreads within one
//! task, weighted follows the CPU scores, energy-aware keeps battery
//! devices for overflow, and a switch takes effect on the next assignment
//! and outlives a restart.

use super::sim::{register, spec, Reply, Sim};
use crate::core::{CoreConfig, DEFAULT_CPU_BENCHMARK};
use protocol::{
    BatchSubmitted, ErrorCode, Heartbeat, Message, PlacementStrategy, Power, Register,
    StrategyReply, StrategyRequest, TaskSpec, TaskSubmit,
};
use std::collections::BTreeMap;

/// Tasks every test places.
const TASKS: usize = 10_000;

/// Submits `count` echo tasks as one batch; returns their ids.
fn submit_batch(sim: &mut Sim, count: usize, strategy: Option<PlacementStrategy>) -> Vec<String> {
    let conn = sim.client();
    let tasks = (0..count)
        .map(|_| TaskSpec {
            strategy,
            ..spec("echo")
        })
        .collect();
    let reply = sim.request(conn, Message::TaskSubmit(TaskSubmit { tasks, batch: true }));
    reply.parse::<BatchSubmitted>().task_ids
}

/// Sends `strategy` (a read when `None`).
fn strategy(sim: &mut Sim, strategy: Option<PlacementStrategy>) -> Reply {
    let conn = sim.client();
    sim.request(conn, Message::Strategy(StrategyRequest { strategy }))
}

/// Tasks offered to each worker so far.
fn offers(sim: &Sim) -> BTreeMap<String, usize> {
    sim.workers
        .iter()
        .map(|(id, worker)| (id.clone(), worker.offers.len()))
        .collect()
}

/// A plain worker profile with `slots` slots, `cores` cores and a CPU
/// benchmark score, if any.
fn profile(slots: u32, cores: u32, score: Option<f64>) -> Register {
    Register {
        cpu_cores: Some(cores),
        cpu_benchmark: score,
        ..register(slots)
    }
}

/// A master that places by `strategy` from the start (its configuration).
fn sim_with(strategy: PlacementStrategy) -> Sim {
    let mut sim = Sim::with_config(CoreConfig {
        strategy,
        placement_seed: 16,
        ..CoreConfig::default()
    });
    // Finished tasks leave memory, as in the master: 10,000 of them stay
    // cheap to check after every step.
    sim.evict = true;
    sim
}

#[test]
fn round_robin_spreads_ten_thousand_tasks_within_one() {
    let mut sim = sim_with(PlacementStrategy::RoundRobin);
    // Thirteen devices with unequal slots: least loaded would fill them in
    // proportion to their slots; round robin gives each its turn.
    let ids: Vec<String> = (0..13).map(|i| format!("w{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let slots = 780 + 20 * i as u32;
        assert_eq!(
            sim.join(id, register(slots)).field("success"),
            serde_json::json!(true)
        );
    }
    let tasks = submit_batch(&mut sim, TASKS, None);
    assert!(sim.queue().is_empty());
    // In turn, by id.
    for (task, id) in tasks.iter().zip(&ids) {
        assert_eq!(sim.task(task).device_id.as_deref(), Some(id.as_str()));
    }
    let counts = offers(&sim);
    let (least, most) = (counts.values().min(), counts.values().max());
    assert_eq!(counts.values().sum::<usize>(), TASKS);
    assert!(
        most.zip(least)
            .is_some_and(|(most, least)| most - least <= 1),
        "{counts:?}"
    );
}

#[test]
fn weighted_follows_the_cpu_scores_within_five_percent() {
    let mut sim = sim_with(PlacementStrategy::Weighted);
    // Weight is the score times the usable cores: a 4 (4 cores), b 2 × 200
    // on 4 cores with only 2 slots, c 400 × 4, and d an older worker
    // without a score (the default) × 4.
    let devices = [
        ("a", profile(64, 4, Some(100.0)), 400.0),
        ("b", profile(2, 4, Some(200.0)), 400.0),
        ("c", profile(1024, 4, Some(400.0)), 1600.0),
        ("d", profile(1024, 4, None), DEFAULT_CPU_BENCHMARK * 4.0),
    ];
    // b's two slots make it full most of the time: it gets its share only
    // while it has a free slot, and no burst afterwards.
    let devices = &devices[..];
    for (id, register, _) in devices {
        sim.join(id, register.clone());
    }
    // Waves that fit the free slots of the devices other than b: every
    // device can take its share, and finishes it before the next wave.
    let free: Vec<(&str, f64)> = devices
        .iter()
        .filter(|(id, _, _)| *id != "b")
        .map(|(id, _, weight)| (*id, *weight))
        .collect();
    let mut placed = 0;
    while placed < TASKS {
        submit_batch(&mut sim, 50, None);
        placed += 50;
        for (id, _, _) in devices {
            sim.complete_all(id);
        }
        assert!(sim.queue().is_empty(), "all placed at once");
    }
    let counts = offers(&sim);
    let total: usize = free.iter().map(|(id, _)| counts[*id]).sum();
    let weights: f64 = free.iter().map(|(_, weight)| weight).sum();
    for (id, weight) in &free {
        let expected = total as f64 * weight / weights;
        let got = counts[*id] as f64;
        assert!(
            (got - expected).abs() <= expected * 0.05,
            "{id}: {got} tasks, expected {expected:.0} ± 5 %: {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), TASKS);
}

#[test]
fn weighted_spreads_free_devices_exactly_by_weight() {
    // With slots enough for everything, the shares are the weights' to
    // within one task: 1 : 2 : 4 of 7,000 tasks is 1,000 : 2,000 : 4,000.
    let mut sim = sim_with(PlacementStrategy::Weighted);
    sim.join("slow", profile(1024, 1, Some(50.0)));
    sim.join("mid", profile(1024, 1, Some(100.0)));
    sim.join("fast", profile(1024, 2, Some(100.0)));
    for _ in 0..7 {
        submit_batch(&mut sim, 1000, None);
        for id in ["slow", "mid", "fast"] {
            sim.complete_all(id);
        }
    }
    let counts = offers(&sim);
    for (id, expected) in [("slow", 1000), ("mid", 2000), ("fast", 4000)] {
        assert!(counts[id].abs_diff(expected) <= 1, "{counts:?}");
    }
}

/// A deterministic sequence (an LCG) for the steps of a test.
struct Steps(u64);

impl Steps {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn energy_aware_puts_nothing_on_battery_while_a_mains_device_has_a_free_slot() {
    let mut sim = sim_with(PlacementStrategy::EnergyAware);
    let power = |on_ac: bool, temperature_c: Option<f64>| Power {
        on_ac: Some(on_ac),
        temperature_c,
        ..Power::default()
    };
    // Mains and cool: a Pi that says so, and a NAS that says nothing
    // (no battery, no sensor: mains). Mains and hot: a laptop at 80 °C.
    // Battery: a phone, and a laptop that registered on mains and then
    // was unplugged (its heartbeat says so).
    sim.join(
        "pi",
        Register {
            power: Some(power(true, Some(45.0))),
            ..register(2)
        },
    );
    sim.join("nas", register(3));
    sim.join(
        "hot-laptop",
        Register {
            power: Some(power(true, Some(80.0))),
            ..register(2)
        },
    );
    sim.join(
        "phone",
        Register {
            power: Some(power(false, Some(30.0))),
            ..register(4)
        },
    );
    sim.join(
        "laptop",
        Register {
            power: Some(power(true, None)),
            ..register(4)
        },
    );
    let unplugged = Heartbeat {
        power: Some(power(false, Some(40.0))),
        ..Heartbeat::default()
    };
    sim.worker_request("laptop", Message::Heartbeat(unplugged));
    let rank = |id: &str| match id {
        "pi" | "nas" => 0,
        "hot-laptop" => 1,
        _ => 2,
    };
    let slots: BTreeMap<&str, usize> = BTreeMap::from([
        ("pi", 2),
        ("nas", 3),
        ("hot-laptop", 2),
        ("phone", 4),
        ("laptop", 4),
    ]);
    let mut steps = Steps(16);
    let mut submitted = 0;
    let mut before = offers(&sim);
    let mut overflowed = BTreeMap::<usize, usize>::new();
    while submitted < TASKS || sim.workers.values().any(|w| !w.running.is_empty()) {
        // Submits of 1.5 tasks two times in five, a task finished three
        // times in five: as many come as go, so the cluster is sometimes
        // idle, often full, and the queue stays short.
        if submitted < TASKS && steps.below(5) < 2 {
            let count = (1 + steps.below(2) as usize).min(TASKS - submitted);
            submit_batch(&mut sim, count, None);
            submitted += count;
        } else {
            let busy: Vec<String> = sim
                .workers
                .iter()
                .filter(|(_, worker)| !worker.running.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            if busy.is_empty() {
                continue;
            }
            let id = &busy[steps.below(busy.len() as u64) as usize];
            let task = sim.worker(id).running.keys().next().cloned().expect("one");
            sim.complete(id, &task);
        }
        // What the core sent is not looked at again: dropping it keeps
        // each step's search for its reply short.
        sim.inbox.clear();
        // A device that got a task in this step did while every device of
        // a better rank was full, and they stay full until the step ends.
        let after = offers(&sim);
        for (id, count) in &after {
            if *count == before[id] {
                continue;
            }
            for (better, slots) in &slots {
                if rank(better) < rank(id) {
                    assert_eq!(
                        sim.active(better).len(),
                        *slots,
                        "{id} got a task while {better} had a free slot"
                    );
                }
            }
            *overflowed.entry(rank(id)).or_default() += count - before[id];
        }
        before = after;
    }
    assert_eq!(before.values().sum::<usize>(), TASKS);
    // Every group took work: the test saw overflow, not just mains.
    assert_eq!(overflowed.len(), 3, "{overflowed:?}");
}

#[test]
fn fewest_tasks_and_random_place_every_task() {
    for (strategy, expect) in [
        // Fewest tasks counts tasks, not shares of slots: the small device
        // ends with as many as the big one; least loaded fills by share.
        (PlacementStrategy::FewestTasks, (2, 2)),
        (PlacementStrategy::LeastLoaded, (3, 1)),
    ] {
        let mut sim = sim_with(strategy);
        sim.join("big", register(8));
        sim.join("small", register(2));
        submit_batch(&mut sim, 4, None);
        let counts = offers(&sim);
        assert_eq!((counts["big"], counts["small"]), expect, "{strategy}");
    }
    // Random: every device gets about its share, and the same seed gives
    // the same placement.
    let run = || {
        let mut sim = sim_with(PlacementStrategy::Random);
        for id in ["a", "b", "c", "d"] {
            sim.join(id, register(1024));
        }
        for _ in 0..10 {
            submit_batch(&mut sim, 1000, None);
            for id in ["a", "b", "c", "d"] {
                sim.complete_all(id);
            }
        }
        offers(&sim)
    };
    let counts = run();
    assert_eq!(counts, run(), "seeded: the same every time");
    for (id, count) in &counts {
        assert!((2300..2700).contains(count), "{id}: {counts:?}");
    }
}

#[test]
fn switching_takes_effect_on_the_next_assignment_and_a_task_may_name_its_own() {
    let mut sim = sim_with(PlacementStrategy::EnergyAware);
    sim.join(
        "phone",
        Register {
            power: Some(Power {
                on_ac: Some(false),
                ..Power::default()
            }),
            ..register(10)
        },
    );
    sim.join("pi", register(10));
    let read = strategy(&mut sim, None).parse::<StrategyReply>();
    assert_eq!(read.strategy, PlacementStrategy::EnergyAware);
    assert_eq!(read.previous, None);
    // Energy-aware: the pi, on mains, takes all three.
    for _ in 0..3 {
        submit_batch(&mut sim, 1, None);
    }
    assert_eq!(offers(&sim)["phone"], 0);
    // Least loaded from the very next task: the idle phone.
    let reply = strategy(&mut sim, Some(PlacementStrategy::LeastLoaded));
    let switched = reply.parse::<StrategyReply>();
    assert_eq!(switched.previous, Some(PlacementStrategy::EnergyAware));
    assert_eq!(switched.strategy, PlacementStrategy::LeastLoaded);
    assert_eq!(
        switched.message,
        "placement strategy least_loaded (was energy_aware)"
    );
    // The reply waits for the commit that keeps the switch.
    let kept = reply.after_batch.expect("held for a commit");
    assert_eq!(
        sim.db
            .settings
            .get(crate::core::STRATEGY_SETTING)
            .map(String::as_str),
        Some("least_loaded")
    );
    // The batch the reply waits for is the one that writes the setting,
    // not merely an earlier write.
    assert!(sim.batches.iter().any(|batch| batch.id == kept
        && batch.ops.iter().any(|op| matches!(
            op,
            crate::core::records::StoreOp::PutSetting(setting)
                if setting.key == crate::core::STRATEGY_SETTING
        ))));
    let next = submit_batch(&mut sim, 1, None);
    assert_eq!(sim.task(&next[0]).device_id.as_deref(), Some("phone"));
    // A task that names a strategy is placed by it whatever the master's.
    let own = submit_batch(&mut sim, 1, Some(PlacementStrategy::EnergyAware));
    assert_eq!(sim.task(&own[0]).device_id.as_deref(), Some("pi"));
    let next = submit_batch(&mut sim, 1, None);
    assert_eq!(sim.task(&next[0]).device_id.as_deref(), Some("phone"));

    // The switch outlives a restart, over the configured strategy.
    let mut sim = sim.restart();
    assert_eq!(sim.core.strategy(), PlacementStrategy::LeastLoaded);
    let read = strategy(&mut sim, None).parse::<StrategyReply>();
    assert_eq!(read.strategy, PlacementStrategy::LeastLoaded);
    // Refused while the store cannot commit, and nothing changes.
    sim.set_storage(false);
    let refused = strategy(&mut sim, Some(PlacementStrategy::Random));
    assert_eq!(refused.code(), ErrorCode::StorageUnavailable);
    assert_eq!(sim.core.strategy(), PlacementStrategy::LeastLoaded);
}
