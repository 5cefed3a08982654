//! `energy_aware`: devices on mains power before devices on battery, and
//! cool devices before hot ones; within each group, the least loaded. A
//! device on battery gets a task only when no device on mains that can
//! take it has a free slot: battery devices are the overflow.
//!
//! What a device is on comes from the `power` it last reported (heartbeat,
//! else registration; see `docs/protocol.md`). A device that reports no
//! power (no battery, an older worker) counts as on mains, and one that
//! reports no temperature as cool: a missing sensor is never a
//! constraint. The power and heat rules that stop a device taking work at
//! all come with the worker's sensing (`docs/placement.md`). It looks at
//! every candidate until it finds one on mains and cool.

use super::Strategy;
use crate::core::registry::Device;

/// From this temperature (°C) on, a device counts as hot and gets a task
/// only when no cool device in its power group can take it: 70 °C, where
/// phones and Raspberry Pis begin to throttle.
pub const HOT_TEMPERATURE_C: f64 = 70.0;

/// The order of preference: on mains and cool (0), on mains and hot (1),
/// on battery and cool (2), on battery and hot (3).
fn rank(device: &Device) -> u8 {
    let power = device.power();
    let hot = power
        .temperature_c
        .is_some_and(|celsius| celsius >= HOT_TEMPERATURE_C);
    u8::from(power.on_battery()) * 2 + u8::from(hot)
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(in crate::core) struct EnergyAware;

impl Strategy for EnergyAware {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        let mut best: Option<(u8, &Device)> = None;
        for device in candidates {
            let rank = rank(device);
            if best.is_none_or(|(best, _)| rank < best) {
                best = Some((rank, device));
                if rank == 0 {
                    break;
                }
            }
        }
        best.map(|(_, device)| device)
    }
}
