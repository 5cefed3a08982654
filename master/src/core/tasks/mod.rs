//! The tasks: every task the master knows, by id, and the queue of those
//! waiting for a device.

mod listing;

use super::page::Page;
use super::queue::{QueueKey, TaskQueue};
use super::records::TaskRecord;
use super::timers::{TimerKey, TimerTable};
use super::{Now, ReplyError};
use listing::TaskListing;
use protocol::{ErrorCode, ResultStatus, TaskSpec, TaskState};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Task {
    pub(super) record: TaskRecord,
    /// Devices that refused this task; it is not offered to them again.
    pub(super) refused_by: BTreeSet<String>,
    /// The state it is filed under in the listing (see [`Tasks::relist`]).
    listed: TaskState,
    /// The batch that holds the newest write of its record (0: none
    /// since it was loaded); it may leave memory once that batch has
    /// committed (see [`Tasks::note_written`]).
    written: u64,
}

impl Task {
    /// A task to be added to `Tasks::by_id`, filed in the listing under
    /// its record's state.
    fn new(record: TaskRecord) -> Task {
        Task {
            listed: record.state,
            record,
            refused_by: BTreeSet::new(),
            written: 0,
        }
    }
}

/// Every task, and the queue.
#[derive(Debug)]
pub(super) struct Tasks {
    /// Every task in memory, by id: the live ones (queued, assigned,
    /// running, retrying) and finished ones until their last write has
    /// committed (see [`Tasks::evict`]); the others are in the store only.
    pub(super) by_id: HashMap<String, Task>,
    /// The queued tasks, by placement.
    pub(super) queue: TaskQueue,
    /// The `seq` the next new task gets (submission order).
    next_seq: u64,
    /// Every task by state in submission order, for listings and the
    /// counts per state; moved only by the methods below.
    listing: TaskListing,
    /// Finished tasks per state that are in the store only (evicted, or
    /// never loaded at start): added to the listing's counts.
    stored: [u64; listing::STATES],
    /// Finished tasks by the batch of their last write, oldest first:
    /// each may leave memory once that batch has committed. An entry is
    /// checked when its batch commits, so a stale one (the task was
    /// written again, or retried) is skipped; the deque holds at most the
    /// tasks finished since the last commit.
    finishing: VecDeque<(u64, String)>,
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            by_id: HashMap::new(),
            queue: TaskQueue::default(),
            next_seq: 1,
            listing: TaskListing::default(),
            stored: [0; listing::STATES],
            finishing: VecDeque::new(),
        }
    }
}

impl Tasks {
    /// Puts task `task_id`, whose state is `queued`, in the queue under
    /// its record's key (without copying the record).
    pub(super) fn enqueue(&mut self, task_id: &str) {
        if let Some(task) = self.by_id.get(task_id) {
            self.queue
                .insert(QueueKey::of(&task.record), &task.record.spec);
        }
    }

    /// The record of task `task_id`.
    pub(super) fn record(&self, task_id: &str) -> Option<&TaskRecord> {
        self.by_id.get(task_id).map(|task| &task.record)
    }

    /// Adds task `spec` to the tasks and the queue; returns its id and
    /// type, or, if its client-chosen id already exists, that id as the
    /// error (idempotent submit: it is not queued again). Every call uses
    /// up a `seq`, so submission order stays the order of arrival.
    pub(super) fn submit(
        &mut self,
        now: Now,
        mut spec: TaskSpec,
    ) -> Result<(String, String), String> {
        let mut seq = self.next_seq;
        self.next_seq += 1;
        let task_id = match spec.task_id.clone() {
            Some(id) if self.by_id.contains_key(&id) => return Err(id),
            Some(id) => {
                // An id of the generated form: the master never generates
                // it (or any below it) later, when this task may be in the
                // store only.
                self.pass_generated(&id);
                id
            }
            None => {
                let mut id = generated_task_id(now, seq);
                // A client may already have chosen this very id for a task
                // of its own; inserting over it would lose that task.
                while self.by_id.contains_key(&id) {
                    seq = self.next_seq;
                    self.next_seq += 1;
                    id = generated_task_id(now, seq);
                }
                id
            }
        };
        spec.task_id = Some(task_id.clone());
        let record = TaskRecord::queued(task_id.clone(), seq, spec, now.unix_ms);
        self.queue.insert(QueueKey::of(&record), &record.spec);
        let task_type = record.spec.task_type.clone();
        self.listing.insert(record.state, record.seq, &task_id);
        self.by_id.insert(task_id.clone(), Task::new(record));
        Ok((task_id, task_type))
    }

    /// Adds a task the store loaded (its state already settled by the
    /// caller): listed, and queued if its state is `queued`. The store
    /// cannot hold two records with one id (it is the key); given them
    /// anyway, the last one wins, in the listing too.
    pub(super) fn restore(&mut self, record: TaskRecord) {
        self.next_seq = self.next_seq.max(record.seq + 1);
        self.pass_generated(&record.task_id);
        if record.state == TaskState::Queued {
            self.queue.insert(QueueKey::of(&record), &record.spec);
        }
        let task_id = record.task_id.clone();
        let (state, seq) = (record.state, record.seq);
        if let Some(twin) = self.by_id.insert(task_id.clone(), Task::new(record)) {
            self.listing.remove(twin.listed, twin.record.seq, &task_id);
        }
        self.listing.insert(state, seq, &task_id);
    }

    /// Moves task `task_id` to the listing's set of its current state, if
    /// it changed since it was filed. `Core::persist_task` calls it: every
    /// change to a task's record is persisted, so every change of state
    /// passes here (and the sans-IO tests check, after every step, that
    /// none was missed).
    pub(super) fn relist(&mut self, task_id: &str) {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return;
        };
        let new = task.record.state;
        if task.listed != new {
            let old = std::mem::replace(&mut task.listed, new);
            self.listing.update(task.record.seq, task_id, old, new);
        }
    }

    /// Tasks in `state`, O(1): the length of its set in the listing, plus
    /// the finished ones that are in the store only.
    pub(super) fn count(&self, state: TaskState) -> usize {
        self.listing.count(state) + self.stored[listing::state_slot(state)] as usize
    }

    /// Whether the store holds finished tasks that are not in memory in
    /// `state` (any state when `None`): a read of them must go there.
    pub(super) fn in_store(&self, state: Option<TaskState>) -> bool {
        match state {
            Some(state) => self.stored[listing::state_slot(state)] > 0,
            None => self.stored.iter().any(|&count| count > 0),
        }
    }

    /// Moves `next_seq` past the number of `task_id` if it has the form of
    /// a generated id (see `records::generated_seq`).
    fn pass_generated(&mut self, task_id: &str) {
        if let Some(n) = super::records::generated_seq(task_id) {
            self.next_seq = self.next_seq.max(n + 1);
        }
    }

    /// The history a start left in the store: how many finished tasks of
    /// each state it holds (`counts`), and the highest `seq` it ever gave,
    /// so new tasks keep their place after every stored one.
    pub(super) fn set_history(&mut self, counts: &[(TaskState, u64)], max_seq: u64) {
        for &(state, count) in counts {
            self.stored[listing::state_slot(state)] += count;
        }
        self.next_seq = self.next_seq.max(max_seq + 1);
    }

    /// Task `task_id`'s record was just written into batch `batch`. A
    /// finished task is noted, to leave memory once the batch commits.
    pub(super) fn note_written(&mut self, task_id: &str, batch: u64) {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return;
        };
        task.written = batch;
        if task.record.state.is_terminal() {
            self.finishing.push_back((batch, task_id.to_string()));
        }
    }

    /// The finished tasks whose last write is in a batch up to
    /// `committed`: candidates to leave memory (see [`Tasks::evict`]).
    pub(super) fn committed(&mut self, committed: u64) -> Vec<String> {
        let mut due = Vec::new();
        while self
            .finishing
            .front()
            .is_some_and(|(batch, _)| *batch <= committed)
        {
            if let Some((_, task_id)) = self.finishing.pop_front() {
                due.push(task_id);
            }
        }
        due
    }

    /// Forgets finished task `task_id`, whose last write has committed
    /// (checked against `committed`): from then on it is read from the
    /// store, and counted as stored. Whether it left memory.
    pub(super) fn evict(&mut self, task_id: &str, committed: u64) -> bool {
        let evictable = self
            .by_id
            .get(task_id)
            .is_some_and(|task| task.record.state.is_terminal() && task.written <= committed);
        if !evictable {
            return false;
        }
        let Some(task) = self.by_id.remove(task_id) else {
            return false;
        };
        self.listing.remove(task.listed, task.record.seq, task_id);
        self.stored[listing::state_slot(task.listed)] += 1;
        true
    }

    /// Takes task `task_id`, deleted from the store by retention (in
    /// `state`) after batch `committed`, off the counts (see
    /// `Core::handle_pruned`).
    pub(super) fn pruned(&mut self, task_id: &str, state: TaskState, committed: u64) {
        match self.by_id.get(task_id) {
            Some(task) if task.written > committed || !task.record.state.is_terminal() => {}
            Some(_) => {
                if let Some(task) = self.by_id.remove(task_id) {
                    self.listing.remove(task.listed, task.record.seq, task_id);
                }
            }
            None => {
                let slot = &mut self.stored[listing::state_slot(state)];
                *slot = slot.saturating_sub(1);
            }
        }
    }

    /// Forgets task `task_id` for good (a dead letter deleted by
    /// `task_delete`): out of memory and the listing, and not counted as
    /// stored. Whether it was in memory.
    pub(super) fn forget(&mut self, task_id: &str) -> bool {
        let Some(task) = self.by_id.remove(task_id) else {
            return false;
        };
        self.listing.remove(task.listed, task.record.seq, task_id);
        true
    }

    /// Brings a finished task the store returned back into memory (to be
    /// retried), no longer counted as stored. A task already in memory is
    /// left as it is: memory is newer than the store.
    pub(super) fn reload(&mut self, record: TaskRecord) {
        if self.by_id.contains_key(&record.task_id) || !record.state.is_terminal() {
            return;
        }
        let slot = &mut self.stored[listing::state_slot(record.state)];
        *slot = slot.saturating_sub(1);
        // Should it not be retried after all, it leaves again at the next
        // commit (it is as the store has it).
        self.finishing.push_front((0, record.task_id.clone()));
        self.restore(record);
    }

    /// The place of task `task_id` in listings, when it is in memory.
    pub(super) fn list_key(&self, task_id: &str) -> Option<(u64, String)> {
        self.by_id
            .get(task_id)
            .map(|task| (task.record.seq, task_id.to_string()))
    }

    /// Up to `limit` ids of tasks in `state` (every state when `None`)
    /// submitted before `before` (its `seq` and id), newest first (see
    /// [`TaskListing::page`]).
    pub(super) fn page(
        &self,
        state: Option<TaskState>,
        before: Option<&(u64, String)>,
        limit: usize,
    ) -> Page<'_> {
        self.listing.page(state, before, limit)
    }

    /// Panics unless the listing files every task under its state (for the
    /// sans-IO tests).
    #[cfg(test)]
    pub(super) fn check_indexes(&self) {
        let listed: std::collections::BTreeMap<listing::ListKey, TaskState> = self
            .by_id
            .iter()
            .map(|(id, task)| {
                assert_eq!(task.listed, task.record.state, "task {id}: listed state");
                ((task.record.seq, id.clone()), task.record.state)
            })
            .collect();
        assert_eq!(self.listing.entries(), listed, "tasks by state");
        for state in TaskState::ALL {
            let count = listed.values().filter(|&&s| s == state).count();
            assert_eq!(self.listing.count(state), count, "{state} count");
        }
    }

    /// Task `task_id` is running on device `device_id`, which reports it
    /// still runs `attempt` of it: takes it out of the queue and marks it
    /// running. `None` if that attempt is not current (the device's copy is
    /// stale); otherwise whether the record changed.
    pub(super) fn resume(
        &mut self,
        now: Now,
        device_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Option<bool> {
        let record = &mut self.by_id.get_mut(task_id)?.record;
        let current = record.attempt == attempt
            && record.device_id.as_deref() == Some(device_id)
            && matches!(
                record.state,
                TaskState::Queued | TaskState::Assigned | TaskState::Running
            );
        if !current {
            return None;
        }
        if record.state == TaskState::Queued {
            self.queue.remove(&QueueKey::of(record));
        }
        if record.state == TaskState::Running {
            return Some(false);
        }
        record.state = TaskState::Running;
        record.started_unix_ms.get_or_insert(now.unix_ms);
        Some(true)
    }

    /// Task `task_id` lost its worker `device_id`. Only the attempt that
    /// device holds is lost: a task that has moved on since is left as it
    /// is. A task that has lost more than `max_lost` workers is
    /// dead-lettered. `None` for an unknown task.
    pub(super) fn lose_attempt(
        &mut self,
        now: Now,
        device_id: &str,
        task_id: &str,
        max_lost: u32,
    ) -> Option<Lost> {
        let record = &mut self.by_id.get_mut(task_id)?.record;
        if !held_by(record, device_id) {
            return Some(Lost::NotHeld);
        }
        record.lost += 1;
        if record.lost <= max_lost {
            return Some(Lost::Requeue);
        }
        record.state = TaskState::DeadLetter;
        record.finished_unix_ms = Some(now.unix_ms);
        record.error = Some(format!(
            "lost its worker {} times; it may be crashing the devices it runs on",
            record.lost
        ));
        Some(Lost::DeadLetter)
    }

    /// Cancels task `task_id` (a client asked): out of the queue, and its
    /// backoff, which `timers` holds, removed so it cannot fire into a
    /// later retry. Returns the state it was in, and its holder and
    /// attempt then, so the caller can tell the holder to stop it.
    pub(super) fn cancel(
        &mut self,
        now: Now,
        task_id: &str,
        timers: &mut TimerTable,
    ) -> Result<(TaskState, Option<String>, u32), ReplyError> {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        let record = &mut task.record;
        if record.state.is_terminal() {
            return Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!("task {task_id} already {}", record.state),
            ));
        }
        let was = record.state;
        let holder = record.device_id.clone();
        let attempt = record.attempt;
        record.state = TaskState::Cancelled;
        record.finished_unix_ms = Some(now.unix_ms);
        record.retry_at_unix_ms = None;
        record.error = Some("cancelled by a client".into());
        self.queue.remove(&QueueKey::of(record));
        if was == TaskState::Retrying {
            // Its backoff must not fire into a later one (after a retry).
            timers.remove(&TimerKey::Retry(task_id.to_string()));
        }
        Ok((was, holder, attempt))
    }

    /// Puts task `task_id`, held by device `device_id`, back in the queue
    /// in its original place; whether it did. A task whose current attempt
    /// is not that device's (it ended, or it runs elsewhere now) stays as
    /// it is.
    pub(super) fn requeue(&mut self, device_id: &str, task_id: &str) -> bool {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return false;
        };
        if !held_by(&task.record, device_id) {
            return false;
        }
        task.record.state = TaskState::Queued;
        self.enqueue(task_id);
        true
    }

    /// Moves task `task_id`, whose current attempt just ended (`end`, its
    /// result already on the record), to its next state: terminal, or
    /// `retrying` after `delay(seq, failures)` while it has retries left of
    /// `max_retries`. `None` for an unknown task.
    pub(super) fn end_attempt(
        &mut self,
        now: Now,
        task_id: &str,
        end: AttemptEnd,
        max_retries: u32,
        delay: impl FnOnce(u64, u32) -> Duration,
    ) -> Option<Ended> {
        let record = &mut self.by_id.get_mut(task_id)?.record;
        let failed_as = match end {
            AttemptEnd::Reported(ResultStatus::Completed) => None,
            AttemptEnd::Reported(ResultStatus::Cancelled) => {
                record.state = TaskState::Cancelled;
                record.finished_unix_ms = Some(now.unix_ms);
                return Some(Ended::Finished);
            }
            AttemptEnd::Reported(ResultStatus::Failed) => Some(TaskState::Failed),
            AttemptEnd::Reported(ResultStatus::Timeout) | AttemptEnd::MasterTimeout => {
                Some(TaskState::TimedOut)
            }
        };
        let Some(failed_as) = failed_as else {
            record.state = TaskState::Completed;
            record.finished_unix_ms = Some(now.unix_ms);
            record.retry_at_unix_ms = None;
            return Some(Ended::Finished);
        };
        record.failures += 1;
        if record.failures <= max_retries {
            let delay = delay(record.seq, record.failures);
            record.state = TaskState::Retrying;
            record.retry_at_unix_ms = Some(now.unix_ms + delay.as_millis() as i64);
            log::info!(
                "task {task_id} attempt {} {}; retry {} of {max_retries} in {delay:?}",
                record.attempt,
                failed_as,
                record.failures
            );
            return Some(Ended::Retry(delay));
        }
        // A task that asked for no retries simply failed; one that used up
        // its retries goes to the dead-letter state, from which `retire
        // retry` can queue it again.
        record.state = if max_retries == 0 {
            failed_as
        } else {
            TaskState::DeadLetter
        };
        record.finished_unix_ms = Some(now.unix_ms);
        record.retry_at_unix_ms = None;
        Some(Ended::Finished)
    }

    /// Task `task_id`'s backoff is over: if it is still `retrying`, it goes
    /// back to the queue; whether it did. The last attempt ended, so no
    /// device's report of it may count as the task's result any more, nor
    /// may a device take it back.
    pub(super) fn retry_due(&mut self, task_id: &str) -> bool {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return false;
        };
        if task.record.state != TaskState::Retrying {
            return false;
        }
        task.record.state = TaskState::Queued;
        task.record.retry_at_unix_ms = None;
        task.record.device_id = None;
        self.enqueue(task_id);
        true
    }

    /// `task_retry`: a finished task that did not complete goes back to
    /// the queue with a fresh retry budget, as after a backoff: the last
    /// attempt ended, and nothing of it counts for the task any more.
    pub(super) fn retry(&mut self, task_id: &str) -> Result<(), ReplyError> {
        let Some(task) = self.by_id.get_mut(task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        let record = &mut task.record;
        if !record.state.is_terminal() || record.state == TaskState::Completed {
            return Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!(
                    "task {task_id} is {}; only failed, timed-out, cancelled or dead-lettered tasks are retried",
                    record.state
                ),
            ));
        }
        record.state = TaskState::Queued;
        record.device_id = None;
        record.failures = 0;
        record.lost = 0;
        record.finished_unix_ms = None;
        record.retry_at_unix_ms = None;
        record.error = None;
        task.refused_by.clear();
        self.enqueue(task_id);
        Ok(())
    }

    /// When the master gives up on task `task_id`'s current attempt if it
    /// has a timeout: that attempt, and the time (its timeout plus `grace`
    /// from now). `None` without a timeout, or one too large to add to
    /// the clock (it is never reached).
    pub(super) fn attempt_deadline(
        &self,
        now: Now,
        task_id: &str,
        grace: Duration,
    ) -> Option<(u32, Duration)> {
        let record = &self.by_id.get(task_id)?.record;
        let timeout = record
            .spec
            .timeout
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())?;
        let due = now.monotonic.checked_add(timeout)?.checked_add(grace)?;
        Some((record.attempt, due))
    }

    /// The master gives up on `attempt` of task `task_id` (no result by its
    /// timeout and grace): if it is still the current attempt, assigned or
    /// running, it is marked so and its holder returned (`Some(None)`: it
    /// has none); the caller ends the attempt. `None` if it moved on.
    pub(super) fn time_out(&mut self, task_id: &str, attempt: u32) -> Option<Option<String>> {
        let record = &mut self.by_id.get_mut(task_id)?.record;
        if record.attempt != attempt
            || !matches!(record.state, TaskState::Assigned | TaskState::Running)
        {
            return None;
        }
        log::warn!("task {task_id} attempt {attempt} gave no result within its timeout and grace");
        record.error = Some("no result within the task's timeout and grace period".into());
        record.exit_code = None;
        Some(record.device_id.clone())
    }

    /// Hands the task of queue entry `key` to device `device_id`: out of
    /// the queue, assigned, with a new attempt. Returns its record.
    pub(super) fn assign(
        &mut self,
        now: Now,
        key: &QueueKey,
        device_id: &str,
    ) -> Option<&TaskRecord> {
        self.queue.remove(key);
        let record = &mut self.by_id.get_mut(&key.task_id)?.record;
        record.state = TaskState::Assigned;
        record.attempt += 1;
        record.device_id = Some(device_id.to_string());
        record.started_unix_ms = Some(now.unix_ms);
        Some(record)
    }
}

/// How an attempt ended, as far as the task's life is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptEnd {
    /// The worker reported it.
    Reported(ResultStatus),
    /// The master gave up waiting for it (timeout plus grace).
    MasterTimeout,
}

/// What became of a task whose attempt ended (see [`Tasks::end_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// It reached a terminal state.
    Finished,
    /// It waits this long, `retrying`, before it is queued again.
    Retry(Duration),
}

/// What became of a task whose worker was lost (see
/// [`Tasks::lose_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lost {
    /// That device did not hold its current attempt: nothing changed.
    NotHeld,
    /// It lost too many workers and is dead-lettered.
    DeadLetter,
    /// It counts one more lost worker and goes back to the queue (the
    /// caller requeues it).
    Requeue,
}

/// Whether device `device_id` holds the current attempt of the task of
/// `record` (it was given it, and the attempt has not ended).
fn held_by(record: &TaskRecord, device_id: &str) -> bool {
    record.device_id.as_deref() == Some(device_id)
        && matches!(record.state, TaskState::Assigned | TaskState::Running)
}

/// The id of a task whose client chose none: the time and its `seq`
/// (`records::generated_seq` reads the `seq` back).
fn generated_task_id(now: Now, seq: u64) -> String {
    format!("task-{:x}-{seq}", now.unix_ms)
}
