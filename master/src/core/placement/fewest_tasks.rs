//! `fewest_tasks`: the device running the fewest tasks, whatever its
//! number of slots (`least_loaded` counts the share of slots instead, so
//! a device with many slots fills up first there and last here); ties go
//! to the less loaded, then the smaller id. It looks at every candidate.

use super::Strategy;
use crate::core::registry::Device;

/// See the module documentation.
#[derive(Debug, Default)]
pub(in crate::core) struct FewestTasks;

impl Strategy for FewestTasks {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        // `min_by_key` keeps the first of equal ones: the less loaded.
        candidates.min_by_key(|device| device.running())
    }
}
