//! The tasks' listing index: every task by state, newest first, so that a
//! listing (which any reader may ask for on every line it sends) costs its
//! page, not the history, and the count of tasks per state is at hand.
//! Held by [`super::Tasks`] and moved only by its methods.

use crate::core::page::Page;
use protocol::TaskState;
use std::collections::BTreeSet;

/// Where a task stands in the listing: its submission order, then its id.
/// A task keeps its key for life (its `seq` never changes); the id makes
/// keys unique even if a store ever held two tasks with the same `seq`.
pub(super) type ListKey = (u64, String);

/// The number of task states, one ordered set each in [`TaskListing`].
pub(super) const STATES: usize = TaskState::ALL.len();

/// Every task, one ordered set per state, newest (highest `seq`) last in
/// each set and so first when walked backwards.
///
/// Why this shape: a listing is asked for by any reader, as often as it
/// likes (a text `tasks` line is 6 bytes), so it must cost the page it
/// returns, whatever the history. A page of one state is a backwards walk
/// of that state's set from the cursor; a page of every state merges the
/// nine sets' walks (nine is a constant, and one set per state, rather than
/// one more set of every task, keeps a single entry per task in memory).
/// The walk is lazy and stops after `limit + 1` entries, the one past the
/// page saying whether there is a next page. The sets' lengths are the
/// counts per state, kept as tasks move, so `status` counts nothing.
#[derive(Debug, Default)]
pub(super) struct TaskListing {
    by_state: [BTreeSet<ListKey>; STATES],
}

impl TaskListing {
    fn set(&self, state: TaskState) -> &BTreeSet<ListKey> {
        &self.by_state[state_slot(state)]
    }

    fn set_mut(&mut self, state: TaskState) -> &mut BTreeSet<ListKey> {
        &mut self.by_state[state_slot(state)]
    }

    /// Adds a task (new, or restored) in `state`.
    pub(super) fn insert(&mut self, state: TaskState, seq: u64, task_id: &str) {
        self.set_mut(state).insert((seq, task_id.to_string()));
    }

    /// Takes a task out of the listing.
    pub(super) fn remove(&mut self, state: TaskState, seq: u64, task_id: &str) {
        self.set_mut(state).remove(&(seq, task_id.to_string()));
    }

    /// Moves a task from `old` to `new` (its key is moved, not copied).
    pub(super) fn update(&mut self, seq: u64, task_id: &str, old: TaskState, new: TaskState) {
        if old == new {
            return;
        }
        let key = self
            .set_mut(old)
            .take(&(seq, task_id.to_string()))
            .unwrap_or_else(|| (seq, task_id.to_string()));
        self.set_mut(new).insert(key);
    }

    /// Tasks in `state`: the length of its set, O(1).
    pub(super) fn count(&self, state: TaskState) -> usize {
        self.set(state).len()
    }

    /// The walks a page is merged from: one per state in the filter, each
    /// newest first and starting below `before` (exclusive).
    fn sources<'a>(
        &'a self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
    ) -> Vec<impl Iterator<Item = &'a ListKey>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let upper = before.map_or(Unbounded, Excluded);
        let states: &[TaskState] = match &state {
            Some(state) => std::slice::from_ref(state),
            None => &TaskState::ALL,
        };
        states
            .iter()
            .map(|&state| self.set(state).range((Unbounded, upper)).rev())
            .collect()
    }

    /// Up to `limit` tasks of `state` (every state when `None`) older than
    /// `before`, newest first. Visits at most `limit + 1` entries for one
    /// state and `limit + STATES` for all (see [`merge_page`]).
    pub(super) fn page(
        &self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
        limit: usize,
    ) -> Page<'_> {
        merge_page(self.sources(state, before), limit)
    }

    /// [`TaskListing::page`], and how many index entries its walk visited.
    #[cfg(test)]
    pub(super) fn page_counted(
        &self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
        limit: usize,
    ) -> (Page<'_>, usize) {
        let visited = std::cell::Cell::new(0usize);
        let sources = self
            .sources(state, before)
            .into_iter()
            .map(|walk| walk.inspect(|_| visited.set(visited.get() + 1)))
            .collect();
        let page = merge_page(sources, limit);
        (page, visited.get())
    }

    /// Every key, with its state (for checks).
    #[cfg(test)]
    pub(super) fn entries(&self) -> std::collections::BTreeMap<ListKey, TaskState> {
        TaskState::ALL
            .into_iter()
            .flat_map(|state| self.set(state).iter().map(move |key| (key.clone(), state)))
            .collect()
    }
}

/// Where a state's set is in [`TaskListing::by_state`].
pub(super) fn state_slot(state: TaskState) -> usize {
    match state {
        TaskState::Queued => 0,
        TaskState::Assigned => 1,
        TaskState::Running => 2,
        TaskState::Retrying => 3,
        TaskState::Completed => 4,
        TaskState::Failed => 5,
        TaskState::TimedOut => 6,
        TaskState::Cancelled => 7,
        TaskState::DeadLetter => 8,
    }
}

/// Merges walks that are each newest first into one page of `limit`,
/// newest first, plus whether an entry follows it.
///
/// Cost, by construction: each walk is pulled once to fill its head, then
/// once each time its head is taken, and the merge takes at most `limit`
/// heads (a head left over after that is the proof of a next page). So it
/// pulls at most `walks + limit` entries (`limit + 1` for one state) and
/// compares at most `walks` heads per entry taken, whatever the walks'
/// lengths; each pull is a step of a B-tree range iterator, whose start
/// costs O(log n) once.
fn merge_page<'a, I>(walks: Vec<I>, limit: usize) -> Page<'a>
where
    I: Iterator<Item = &'a ListKey>,
{
    let mut heads: Vec<(Option<&'a ListKey>, I)> = walks
        .into_iter()
        .map(|mut walk| (walk.next(), walk))
        .collect();
    let mut ids = Vec::with_capacity(limit.min(1024));
    loop {
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (head, _))| head.map(|key| (i, key)))
            .max_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        let Some(i) = newest else {
            return Page { ids, more: false };
        };
        if ids.len() == limit {
            return Page { ids, more: true };
        }
        let (head, walk) = &mut heads[i];
        if let Some((_, id)) = head.take() {
            ids.push(id.as_str());
        }
        *head = walk.next();
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    /// A listing of `size` tasks `t{seq}`: nine in ten completed, the rest
    /// spread over the other states, and the oldest one queued.
    fn listing(size: u64) -> TaskListing {
        let mut listing = TaskListing::default();
        for seq in 0..size {
            let state = match seq {
                0 => TaskState::Queued,
                _ if seq % 10 != 0 => TaskState::Completed,
                _ => TaskState::ALL[1 + (seq / 10 % 8) as usize],
            };
            listing.insert(state, seq, &format!("t{seq}"));
        }
        listing
    }

    #[test]
    fn task_listing_pages_newest_first_and_moves_tasks_between_states() {
        let mut listing = TaskListing::default();
        for (seq, state) in [
            (1, TaskState::Queued),
            (2, TaskState::Running),
            (3, TaskState::Queued),
        ] {
            listing.insert(state, seq, &format!("t{seq}"));
        }
        let page = |listing: &TaskListing, state, before: Option<(u64, &str)>, limit| {
            let before = before.map(|(seq, id)| (seq, id.to_string()));
            let page = listing.page(state, before.as_ref(), limit);
            (
                page.ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
                page.more,
            )
        };
        assert_eq!(
            page(&listing, None, None, 10),
            (vec!["t3".into(), "t2".into(), "t1".into()], false)
        );
        assert_eq!(
            page(&listing, None, None, 2),
            (vec!["t3".into(), "t2".into()], true)
        );
        assert_eq!(
            page(&listing, None, Some((2, "t2")), 2),
            (vec!["t1".into()], false)
        );
        assert_eq!(
            page(&listing, Some(TaskState::Queued), None, 1),
            (vec!["t3".into()], true)
        );
        assert_eq!(page(&listing, None, None, 0), (vec![], true));
        assert_eq!(
            page(&listing, Some(TaskState::Failed), None, 5),
            (vec![], false)
        );
        listing.update(3, "t3", TaskState::Queued, TaskState::Completed);
        listing.update(3, "t3", TaskState::Completed, TaskState::Completed);
        assert_eq!(listing.count(TaskState::Queued), 1);
        assert_eq!(listing.count(TaskState::Completed), 1);
        assert_eq!(page(&listing, None, None, 10).0, ["t3", "t2", "t1"]);
        assert_eq!(page(&listing, Some(TaskState::Queued), None, 10).0, ["t1"]);
        listing.remove(TaskState::Running, 2, "t2");
        assert_eq!(page(&listing, None, None, 10).0, ["t3", "t1"]);
    }

    #[test]
    fn a_page_visits_its_length_plus_one_entry_per_walked_state_whatever_the_history() {
        // The cost of a listing, counted rather than timed: the entries its
        // walk takes from the index, for 1,000 and for 100,000 tasks.
        let small = listing(1000);
        let large = listing(100_000);
        for (listing, size) in [(&small, 1000u64), (&large, 100_000)] {
            let cursors = [
                None,
                Some((size / 2, format!("t{}", size / 2))),
                Some((1, "t1".to_string())),
            ];
            for state in std::iter::once(None).chain(TaskState::ALL.map(Some)) {
                let walks = if state.is_some() { 1 } else { STATES };
                for before in &cursors {
                    for limit in [0, 1, 10, 100, 1000] {
                        let (page, visited) = listing.page_counted(state, before.as_ref(), limit);
                        assert_eq!(page, listing.page(state, before.as_ref(), limit));
                        assert!(
                            visited <= limit + walks,
                            "{size} tasks, {state:?} before {before:?}, limit {limit}: {visited} entries"
                        );
                        assert!(page.ids.len() <= limit);
                    }
                }
            }
        }
        // The same first page costs the same with a hundred times the
        // history: of all tasks, of a common state, and of a state that
        // only the oldest task is in (the scan walked all 100,000 for it).
        for (state, shown) in [
            (None, 100),
            (Some(TaskState::Completed), 100),
            (Some(TaskState::Queued), 1),
        ] {
            let (small_page, small_visits) = small.page_counted(state, None, 100);
            let (large_page, large_visits) = large.page_counted(state, None, 100);
            assert_eq!(small_visits, large_visits, "{state:?}");
            assert_eq!((small_page.ids.len(), large_page.ids.len()), (shown, shown));
        }
        let (queued, visits) = large.page_counted(Some(TaskState::Queued), None, 100);
        assert_eq!(
            queued.ids.len(),
            visits,
            "only the queued tasks were walked"
        );
    }
}
