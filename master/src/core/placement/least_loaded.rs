//! `least_loaded` (the default): the device with the smallest share of its
//! slots in use, then the fewest tasks, then the smallest id. The
//! candidates already come in that order, so this takes the first and
//! looks at no other device.

use super::Strategy;
use crate::core::registry::Device;

/// See the module documentation.
#[derive(Debug, Default)]
pub(in crate::core) struct LeastLoaded;

impl Strategy for LeastLoaded {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        candidates.next()
    }
}
