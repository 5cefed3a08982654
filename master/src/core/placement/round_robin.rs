//! `round_robin`: the devices in turn, by id. Each task goes to the first
//! candidate whose id comes after the device the previous task went to
//! (under this strategy), wrapping around to the smallest id; so devices
//! that are all free get tasks in strict turn and their counts never
//! differ by more than one. It looks at every candidate.

use super::Strategy;
use crate::core::registry::Device;

/// See the module documentation.
#[derive(Debug, Default)]
pub(in crate::core) struct RoundRobin {
    /// The device the last task went to.
    last: Option<String>,
}

impl Strategy for RoundRobin {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        let mut after: Option<&Device> = None;
        let mut first: Option<&Device> = None;
        for device in candidates {
            let id = device.record.device_id.as_str();
            if first.is_none_or(|first| id < first.record.device_id.as_str()) {
                first = Some(device);
            }
            let comes_after = self.last.as_deref().is_none_or(|last| id > last);
            if comes_after && after.is_none_or(|after| id < after.record.device_id.as_str()) {
                after = Some(device);
            }
        }
        let chosen = after.or(first)?;
        self.last = Some(chosen.record.device_id.clone());
        Some(chosen)
    }
}
