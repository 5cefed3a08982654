//! Placement: which of the devices that can take a task gets it.
//!
//! Dispatch (`core/dispatch.rs`) finds, for each queue head, the devices
//! that match the task and have a free slot, least loaded first, and asks
//! the strategy in force for the task (its own `strategy`, else the
//! master's) to choose one. A strategy is one small type implementing
//! [`Strategy`], in a file of its own here; adding one is that file, a
//! variant of `protocol::PlacementStrategy`, and a line in
//! [`Placement::strategy`]. `docs/placement.md` explains each one.
//!
//! Every strategy is deterministic: the core is sans-IO and tested on
//! simulated time, so `random` draws from a generator seeded by the
//! master ([`crate::core::CoreConfig::placement_seed`]).

mod energy_aware;
mod fewest_tasks;
mod least_loaded;
mod random;
mod round_robin;
mod weighted;

pub use energy_aware::HOT_TEMPERATURE_C;
pub use weighted::DEFAULT_CPU_BENCHMARK;

use super::records::SettingRecord;
use super::registry::Device;
use super::{Core, ReplyError};
use protocol::{PlacementStrategy, Power, Reply, StrategyReply, StrategyRequest, Success};

/// How a strategy chooses a device.
///
/// `candidates` are the devices that match the task and have a free slot
/// now, least loaded first (by share of slots in use, then fewest tasks,
/// then id). A strategy must choose one of them whenever there is one: it
/// orders, it never holds a task back, so a placement whose head no device
/// can take is the same under every strategy (dispatch relies on it). The
/// device it returns is given the task, so it may update its own state
/// (a cursor, a generator) as it chooses.
pub(in crate::core) trait Strategy: std::fmt::Debug {
    /// Chooses the device for one task.
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device>;
}

/// The strategy in force and the state of every strategy (kept when the
/// strategy is switched away and back, for the life of the master).
#[derive(Debug)]
pub(in crate::core) struct Placement {
    current: PlacementStrategy,
    least_loaded: least_loaded::LeastLoaded,
    round_robin: round_robin::RoundRobin,
    fewest_tasks: fewest_tasks::FewestTasks,
    random: random::Random,
    weighted: weighted::Weighted,
    energy_aware: energy_aware::EnergyAware,
}

impl Placement {
    /// `current` in force, `random` seeded with `seed`.
    pub(in crate::core) fn new(current: PlacementStrategy, seed: u64) -> Placement {
        Placement {
            current,
            least_loaded: least_loaded::LeastLoaded,
            round_robin: round_robin::RoundRobin::default(),
            fewest_tasks: fewest_tasks::FewestTasks,
            random: random::Random::new(seed),
            weighted: weighted::Weighted::default(),
            energy_aware: energy_aware::EnergyAware,
        }
    }

    /// The master's strategy, for tasks that do not name one.
    pub(in crate::core) fn current(&self) -> PlacementStrategy {
        self.current
    }

    /// Switches the master's strategy; returns the one it replaced.
    pub(in crate::core) fn set(&mut self, strategy: PlacementStrategy) -> PlacementStrategy {
        std::mem::replace(&mut self.current, strategy)
    }

    /// Chooses among `candidates` by `strategy` (`None`: the master's).
    pub(in crate::core) fn choose<'a>(
        &mut self,
        strategy: Option<PlacementStrategy>,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        self.strategy(strategy.unwrap_or(self.current))
            .choose(candidates)
    }

    /// The implementation of `which`.
    fn strategy(&mut self, which: PlacementStrategy) -> &mut dyn Strategy {
        match which {
            PlacementStrategy::LeastLoaded => &mut self.least_loaded,
            PlacementStrategy::RoundRobin => &mut self.round_robin,
            PlacementStrategy::FewestTasks => &mut self.fewest_tasks,
            PlacementStrategy::Random => &mut self.random,
            PlacementStrategy::Weighted => &mut self.weighted,
            PlacementStrategy::EnergyAware => &mut self.energy_aware,
        }
    }
}

/// The key the master's strategy is kept under in the store's settings.
pub const STRATEGY_SETTING: &str = "placement_strategy";

impl Device {
    /// What the device last said about its power: its latest heartbeat's
    /// report, else its registration's, else nothing (on mains, no sensor).
    pub(in crate::core) fn power(&self) -> Power {
        self.power.or(self.record.profile.power).unwrap_or_default()
    }

    /// Tasks the device runs now (counted against its slots).
    pub(in crate::core) fn running(&self) -> usize {
        self.active.len()
    }
}

impl Core {
    /// `strategy`: the master's placement strategy, switched first when
    /// the request names one. A switch is stored (it outlives a restart)
    /// and the reply waits for that commit; it takes effect from the next
    /// assignment on. Tasks that name their own strategy keep it.
    pub(super) fn on_strategy(&mut self, request: StrategyRequest) -> Result<Reply, ReplyError> {
        let Some(strategy) = request.strategy else {
            let current = self.placement.current();
            return Ok(Reply::from(StrategyReply {
                message: format!("placement strategy {current}"),
                previous: None,
                strategy: current,
                success: Success,
            }));
        };
        self.check_storage()?;
        let previous = self.placement.set(strategy);
        self.changes.setting(SettingRecord {
            key: STRATEGY_SETTING.to_string(),
            value: strategy.as_str().to_string(),
        });
        if previous != strategy {
            log::info!("placement strategy {strategy} (was {previous})");
        }
        Ok(Reply::from(StrategyReply {
            message: format!("placement strategy {strategy} (was {previous})"),
            previous: Some(previous),
            strategy,
            success: Success,
        }))
    }

    /// Puts in force the strategy the store kept (set by `strategy`
    /// before a restart), over the configured one; called at start.
    pub fn restore_strategy(&mut self, strategy: PlacementStrategy) {
        self.placement.set(strategy);
    }

    /// The master's placement strategy now.
    pub fn strategy(&self) -> PlacementStrategy {
        self.placement.current()
    }
}
