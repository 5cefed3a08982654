//! `weighted`: tasks in proportion to each device's capacity, its CPU
//! benchmark score times the tasks it can run at once.
//!
//! A worker measures its score at start (`worker/src/benchmark.rs`: a
//! fixed amount of single-threaded work, so the score is work units per
//! second on one core) and sends it in its registration
//! (`hardware_specs.cpu_benchmark`). A device's weight is that score times
//! its usable cores: its slots, or its cores when it has fewer cores than
//! slots. A device that sent no score (an older worker) counts as
//! [`DEFAULT_CPU_BENCHMARK`].
//!
//! The spread is stride scheduling over task counts: each device has a
//! pass, a task moves it on by 1 / weight, and the task goes to the
//! candidate with the smallest pass (ties to the less loaded). While
//! devices stay free, each gets its weight's share of the tasks to within
//! one task. The virtual time is the pass of the last device chosen, the
//! smallest among the candidates then; a device that was full, offline or
//! new starts from it, so it gets no burst of tasks to catch up. It looks
//! at every candidate.

use super::Strategy;
use crate::core::registry::Device;
use std::collections::HashMap;

/// The score of a device that reported none: 50, a guess at one core of a
/// Raspberry Pi 4 (not measured on one; see `docs/placement.md` for what
/// was measured).
pub const DEFAULT_CPU_BENCHMARK: f64 = 50.0;

/// The weight of `device`: its score times its usable cores.
pub(in crate::core) fn weight(device: &Device) -> f64 {
    let profile = &device.record.profile;
    let score = profile
        .cpu_benchmark
        .filter(|score| score.is_finite() && *score > 0.0)
        .unwrap_or(DEFAULT_CPU_BENCHMARK);
    let slots = device.record.slots.max(1);
    let cores = profile
        .cpu_cores
        .filter(|&cores| cores > 0)
        .unwrap_or(slots);
    score * f64::from(slots.min(cores))
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(in crate::core) struct Weighted {
    /// The virtual time: the pass of the device chosen last.
    now: f64,
    /// Each device's pass.
    pass: HashMap<String, f64>,
}

impl Strategy for Weighted {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        let mut best: Option<(f64, &Device)> = None;
        for device in candidates {
            // A device that was not a candidate for a while (full, away,
            // new) starts from now, not from where it fell behind.
            let pass = self
                .pass
                .get(&device.record.device_id)
                .copied()
                .unwrap_or(self.now)
                .max(self.now);
            // Strictly smaller only: ties go to the less loaded.
            if best.is_none_or(|(best, _)| pass < best) {
                best = Some((pass, device));
            }
        }
        let (pass, device) = best?;
        self.now = pass;
        self.pass
            .insert(device.record.device_id.clone(), pass + 1.0 / weight(device));
        Some(device)
    }
}
