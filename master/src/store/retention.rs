//! Retention: finished tasks older than an age are deleted from the
//! database, and the file shrinks again.
//!
//! The store thread prunes between group commits (see [`super::spawn`]):
//! each pruning transaction deletes at most [`PRUNE_BATCH`] rows and at
//! most [`PRUNE_BATCH_BYTES`] of records (at least one row), so a commit
//! waiting behind it waits for one small delete, never for the whole
//! backlog, however large the tasks' payloads and results; then `PRAGMA
//! incremental_vacuum` hands the freed pages back to the file system
//! (schema 2 turned incremental auto-vacuum on). A batch cut short by
//! either bound means more is due, and the next one runs right after the
//! next commit (or at once, when none is waiting); otherwise the next look
//! is [`PRUNE_INTERVAL`] later, or sooner when a retention is shorter.
//! `bench prune` measures what one batch costs (docs/benchmarks.md).
//!
//! Only finished tasks are ever deleted: every statement's `WHERE` names
//! the finished states, so a live task (queued, assigned, running,
//! retrying) is never touched, whatever its age. Their age is counted from
//! when they finished (the `finished_unix_ms` column of schema 4).

use std::time::Duration;

use protocol::TaskState;
use rusqlite::params;

use super::{Store, StoreError, FINISHED};

/// Most rows one pruning transaction deletes: at a few hundred bytes to a
/// few KiB per row, a batch takes a few milliseconds, which is all a
/// commit behind it waits.
pub const PRUNE_BATCH: usize = 500;

/// Most bytes of records (payload and result included) one pruning
/// transaction deletes, 256 KiB, whatever [`PRUNE_BATCH`] allows: a
/// batch's delete and the vacuum after it cost about the pages they free
/// (about 9 ms a MiB on the 2-core development machine, `bench prune`), so
/// a batch of tasks with a few KiB each, or with large results, is cut to
/// what 500 small ones cost: a few milliseconds. A batch always deletes at
/// least one row, so a single task larger than this still goes, alone.
pub const PRUNE_BATCH_BYTES: u64 = 256 << 10;

/// How long one pruning batch should hold the write lock at most, 5 ms:
/// the store thread times each batch and halves its row bound after one
/// that took longer (see [`next_limit`]), so on a slower disk (or with
/// tasks that cost more to delete) batches shrink until a commit waiting
/// behind one waits about this long.
pub const PRUNE_BATCH_TIME: Duration = Duration::from_millis(5);

/// The fewest rows the store thread's row bound goes down to (16), so
/// pruning still makes progress on the slowest disk.
pub const MIN_PRUNE_BATCH: usize = 16;

/// The row bound of the store thread's next pruning batch, given the last
/// one's bound (`limit`), how long that batch took and whether a bound
/// stopped it (`full`): halved, down to [`MIN_PRUNE_BATCH`], after a batch
/// longer than [`PRUNE_BATCH_TIME`]; doubled, up to [`PRUNE_BATCH`], after
/// a full batch that took less than half of it; otherwise the same.
pub fn next_limit(limit: usize, took: Duration, full: bool) -> usize {
    if took > PRUNE_BATCH_TIME {
        (limit / 2).max(MIN_PRUNE_BATCH)
    } else if full && took < PRUNE_BATCH_TIME / 2 {
        limit.saturating_mul(2).min(PRUNE_BATCH)
    } else {
        limit.clamp(MIN_PRUNE_BATCH, PRUNE_BATCH)
    }
}

/// WAL size (pages) past which the store thread lets the checkpointer
/// catch up before the next pruning batch: 4,096 pages, 16 MiB with 4 KiB
/// pages. Deleting and vacuuming write the WAL faster than a passive
/// checkpoint copies it back; without this pause a long prune grew the WAL
/// to its hard limit, where the store checkpoints on its own thread and
/// the commit after it waits (`bench prune`).
pub const PRUNE_WAL_PAGES: i32 = 4096;

/// How long pruning waits when the WAL is past [`PRUNE_WAL_PAGES`]
/// (commits go on meanwhile), 20 ms.
pub const PRUNE_WAL_WAIT: Duration = Duration::from_millis(20);

/// How often the store thread looks for tasks past their retention when
/// the last look found none left (sooner if a retention is shorter).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest wait between looks, whatever the retention: a retention
/// of milliseconds (a test) must not make the store thread spin.
pub const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(100);

/// How long finished tasks are kept: completed and cancelled ones for
/// `retention` (default [`DEFAULT_RETENTION`], 30 days, which suits a home
/// NAS: a month of history at a few MB per thousand tasks), failed, timed
/// out and dead-lettered ones for `retention_failed` (default
/// [`DEFAULT_RETENTION_FAILED`], 90 days: they are the ones someone comes
/// back to look at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Age after which a completed or cancelled task is deleted.
    pub retention: Duration,
    /// Age after which a failed, timed-out or dead-lettered task is deleted.
    pub retention_failed: Duration,
}

/// The default of `retention`: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default of `retention_failed`: 90 days.
pub const DEFAULT_RETENTION_FAILED: Duration = Duration::from_secs(90 * 24 * 3600);

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            retention: DEFAULT_RETENTION,
            retention_failed: DEFAULT_RETENTION_FAILED,
        }
    }
}

impl Retention {
    /// How long the store thread waits between looks when nothing is left
    /// to prune: [`PRUNE_INTERVAL`], or the shorter retention if it is
    /// shorter still (a soak with a retention of seconds), but never less
    /// than [`MIN_PRUNE_INTERVAL`].
    pub fn interval(&self) -> Duration {
        PRUNE_INTERVAL
            .min(self.retention)
            .min(self.retention_failed)
            .max(MIN_PRUNE_INTERVAL)
    }
}

/// The states `retention` applies to.
const KEPT_SHORT: &str = "('completed', 'cancelled')";

/// The states `retention_failed` applies to.
const KEPT_LONG: &str = "('failed', 'timed_out', 'dead_letter')";

/// The tasks one pruning transaction deleted: their ids and the state each
/// had in the store. The core takes them off its counts
/// (`Core::handle_pruned`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The deleted tasks.
    pub tasks: Vec<(String, TaskState)>,
    /// The batch stopped at its row or byte bound, so more may be due.
    pub full: bool,
}

impl Pruned {
    /// How many were deleted per state, in the order states first appear.
    pub fn per_state(&self) -> Vec<(TaskState, u64)> {
        let mut counts = Vec::new();
        for (_, state) in &self.tasks {
            add_counts(&mut counts, &[(*state, 1)]);
        }
        counts
    }
}

/// Adds `counts` per state to `total`.
pub(crate) fn add_counts(total: &mut Vec<(TaskState, u64)>, counts: &[(TaskState, u64)]) {
    for &(state, count) in counts {
        match total.iter_mut().find(|(known, _)| *known == state) {
            Some((_, sum)) => *sum += count,
            None => total.push((state, count)),
        }
    }
}

impl Store {
    /// Deletes at most `limit` finished tasks past their retention at
    /// `now_unix_ms` (the long-kept states first, then the others), in one transaction, then shrinks the file by the pages
    /// that freed.
    pub fn prune_batch(
        &mut self,
        retention: &Retention,
        now_unix_ms: i64,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let cutoff = |age: Duration| now_unix_ms.saturating_sub(age.as_millis() as i64);
        self.prune_classes(
            [
                (KEPT_LONG, cutoff(retention.retention_failed)),
                (KEPT_SHORT, cutoff(retention.retention)),
            ],
            limit,
            PRUNE_BATCH_BYTES,
        )
    }

    /// Deletes at most `limit` finished tasks, of any finished state, that
    /// finished before `before_unix_ms` (`retire prune --before`), in one
    /// transaction, then shrinks the file by the pages that freed.
    pub fn prune_before(
        &mut self,
        before_unix_ms: i64,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        self.prune_before_within(before_unix_ms, limit, PRUNE_BATCH_BYTES)
    }

    /// [`Store::prune_before`] with a byte bound of `bytes` instead of
    /// [`PRUNE_BATCH_BYTES`] (`bench prune --batch-bytes` compares bounds).
    pub fn prune_before_within(
        &mut self,
        before_unix_ms: i64,
        limit: usize,
        bytes: u64,
    ) -> Result<Pruned, StoreError> {
        self.prune_classes(
            [(KEPT_LONG, before_unix_ms), (KEPT_SHORT, before_unix_ms)],
            limit,
            bytes,
        )
    }

    /// Deletes at most `limit` tasks and `bytes` of records (at least one
    /// row) of each class's states that finished before its cutoff, the
    /// classes in order, in one transaction.
    fn prune_classes(
        &mut self,
        classes: [(&str, i64); 2],
        limit: usize,
        bytes: u64,
    ) -> Result<Pruned, StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut pruned = Pruned::default();
        let mut bytes = bytes;
        let transaction = self.connection.transaction().map_err(wrap)?;
        for (states, before) in classes {
            let room = limit.saturating_sub(pruned.tasks.len());
            if room == 0 || pruned.full {
                pruned.full = true;
                break;
            }
            delete_before(&transaction, states, before, room, &mut bytes, &mut pruned)
                .map_err(wrap)?;
        }
        transaction.commit().map_err(wrap)?;
        if !pruned.tasks.is_empty() {
            self.vacuum()?;
        }
        Ok(pruned)
    }

    /// Gives the file's free pages back to the file system. SQLite frees
    /// them as the statement is stepped, so it is stepped to the end.
    fn vacuum(&self) -> Result<(), StoreError> {
        let step = || -> rusqlite::Result<()> {
            let mut statement = self
                .connection
                .prepare_cached("PRAGMA incremental_vacuum")?;
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        };
        step().map_err(|e| self.sqlite(e))
    }
}

/// Deletes up to `limit` tasks of `states` that finished before `before`,
/// and up to `bytes` of their records (at least one row per batch, if any
/// is due), adding them to `pruned` and taking their size off `bytes`;
/// sets `pruned.full` when a bound stopped it. In index order, not oldest
/// first: sorting would read the whole backlog at every batch. The rows'
/// sizes come from `octet_length`, which SQLite answers from the row's
/// header without reading a large record. The `WHERE` repeats the
/// finished states: whatever `states` says, a live task is never deleted.
fn delete_before(
    connection: &rusqlite::Connection,
    states: &str,
    before: i64,
    limit: usize,
    bytes: &mut u64,
    pruned: &mut Pruned,
) -> rusqlite::Result<()> {
    let mut select = connection.prepare_cached(&format!(
        "SELECT rowid, octet_length(record) FROM tasks INDEXED BY tasks_finished_at
         WHERE state IN {states} AND {FINISHED} AND finished_unix_ms < ?1
         LIMIT ?2"
    ))?;
    let mut due = Vec::new();
    let mut rows = select.query(params![before, limit as i64])?;
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let size = row.get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64;
        if size > *bytes && !(due.is_empty() && pruned.tasks.is_empty()) {
            pruned.full = true;
            break;
        }
        *bytes = bytes.saturating_sub(size);
        due.push(rowid);
    }
    drop(rows);
    if due.len() >= limit {
        pruned.full = true;
    }
    let mut delete = connection.prepare_cached(&format!(
        "DELETE FROM tasks WHERE rowid = ?1 AND {FINISHED} RETURNING task_id, state"
    ))?;
    for rowid in due {
        let mut rows = delete.query(params![rowid])?;
        while let Some(row) = rows.next()? {
            let task_id: String = row.get(0)?;
            let state: String = row.get(1)?;
            if let Ok(state) = state.parse::<TaskState>() {
                pruned.tasks.push((task_id, state));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::records::{Batch, EncodedTask, StoreOp, TaskRecord};
    use crate::store::Synchronous;
    use protocol::TaskSpec;
    use serde_json::json;

    const DAY_MS: i64 = 24 * 3600 * 1000;
    const NOW: i64 = 1_800_000_000_000;

    /// Writes tasks `(id, state, finished days ago)`, each with `payload`.
    fn write(store: &mut Store, tasks: &[(String, TaskState, i64)], payload: &str) {
        let ops = tasks
            .iter()
            .enumerate()
            .map(|(i, (id, state, days_ago))| {
                let mut record = TaskRecord::queued(
                    id.clone(),
                    i as u64 + 1,
                    TaskSpec::new("echo", json!({ "text": payload })),
                    NOW - days_ago * DAY_MS - 1,
                );
                record.state = *state;
                if state.is_terminal() {
                    record.finished_unix_ms = Some(NOW - days_ago * DAY_MS);
                }
                StoreOp::PutTask(EncodedTask::new(&record, &mut Vec::new()))
            })
            .collect();
        store.commit(&[Batch { id: 1, ops }]).expect("commit");
    }

    fn ids(store: &Store) -> Vec<String> {
        let mut statement = store
            .connection
            .prepare("SELECT task_id FROM tasks ORDER BY seq")
            .expect("prepare");
        let rows = statement.query_map([], |row| row.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    /// Old finished tasks go, a batch at a time; live ones stay whatever
    /// their age, young ones stay, and failed ones are kept longer.
    #[test]
    fn old_finished_tasks_are_deleted_in_batches_and_live_and_young_ones_kept() {
        use TaskState::*;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let tasks: Vec<(String, TaskState, i64)> = [
            ("old-done-1", Completed, 40),
            ("old-done-2", Completed, 31),
            ("old-cancelled", Cancelled, 100),
            ("young-done", Completed, 29),
            ("failed-45", Failed, 45),
            ("failed-91", Failed, 91),
            ("timed-out-95", TimedOut, 95),
            ("dead-89", DeadLetter, 89),
            ("dead-120", DeadLetter, 120),
            ("queued-200", Queued, 200),
            ("running-200", Running, 200),
            ("assigned-200", Assigned, 200),
            ("retrying-200", Retrying, 200),
        ]
        .into_iter()
        .map(|(id, state, days)| (id.to_string(), state, days))
        .collect();
        write(&mut store, &tasks, "x");
        let retention = Retention::default();

        let mut batches = Vec::new();
        loop {
            let pruned = store.prune_batch(&retention, NOW, 2).expect("prune");
            assert!(pruned.tasks.len() <= 2, "{pruned:?}");
            if pruned.tasks.is_empty() {
                break;
            }
            batches.push(pruned);
        }
        assert_eq!(batches.len(), 3, "six tasks in batches of two: {batches:?}");
        let mut deleted: Vec<String> = batches
            .iter()
            .flat_map(|batch| batch.tasks.iter().map(|(id, _)| id.clone()))
            .collect();
        deleted.sort();
        assert_eq!(
            deleted,
            [
                "dead-120",
                "failed-91",
                "old-cancelled",
                "old-done-1",
                "old-done-2",
                "timed-out-95"
            ]
        );
        let states: Vec<TaskState> = batches
            .iter()
            .flat_map(|batch| batch.tasks.iter().map(|(_, state)| *state))
            .collect();
        assert_eq!(states.len(), 6);
        assert_eq!(
            ids(&store),
            [
                "young-done",
                "failed-45",
                "dead-89",
                "queued-200",
                "running-200",
                "assigned-200",
                "retrying-200"
            ]
        );
        // The counts a start reads agree with what is left.
        let (_, live, history) = store.load_live().expect("load");
        assert_eq!(live.len(), 4);
        let mut finished = history.finished;
        finished.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(finished, [(Completed, 1), (DeadLetter, 1), (Failed, 1)]);

        // A shorter retention reaches the young ones, never the live ones.
        let short = Retention {
            retention: Duration::from_secs(1),
            retention_failed: Duration::from_secs(1),
        };
        let pruned = store.prune_batch(&short, NOW, PRUNE_BATCH).expect("prune");
        let mut counts = pruned.per_state();
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(counts, [(Completed, 1), (DeadLetter, 1), (Failed, 1)]);
        assert_eq!(
            ids(&store),
            ["queued-200", "running-200", "assigned-200", "retrying-200"]
        );
    }

    /// Prunes with the default retention, a batch at a time, until
    /// nothing is left to prune: every batch that deleted something.
    fn prune_all(store: &mut Store) -> Vec<Pruned> {
        let mut batches = Vec::new();
        loop {
            let pruned = store
                .prune_batch(&Retention::default(), NOW, PRUNE_BATCH)
                .expect("prune");
            if pruned.tasks.is_empty() {
                assert!(!pruned.full, "an empty batch says nothing more is due");
                return batches;
            }
            batches.push(pruned);
        }
    }

    /// A batch deletes at most `PRUNE_BATCH_BYTES` of records, however
    /// many rows `PRUNE_BATCH` would allow: tasks of 80 KiB go three at a
    /// time, one larger than the bound goes alone, and every batch that a
    /// bound stopped says more is due.
    #[test]
    fn a_batch_of_large_tasks_is_cut_by_bytes_and_a_larger_one_goes_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let huge = PRUNE_BATCH_BYTES as usize + 1;
        write(
            &mut store,
            &[("huge".to_string(), TaskState::Completed, 61)],
            &"x".repeat(huge),
        );
        let large: Vec<(String, TaskState, i64)> = (0..7)
            .map(|i| (format!("large-{i}"), TaskState::Completed, 60))
            .chain([("live".to_string(), TaskState::Queued, 60)])
            .collect();
        write(&mut store, &large, &"x".repeat(80 * 1024));
        let batches: Vec<(Vec<String>, bool)> = prune_all(&mut store)
            .into_iter()
            .map(|pruned| {
                let ids = pruned.tasks.iter().map(|(id, _)| id.clone()).collect();
                (ids, pruned.full)
            })
            .collect();
        let shape: Vec<(usize, bool)> = batches
            .iter()
            .map(|(ids, full)| (ids.len(), *full))
            .collect();
        assert_eq!(
            shape,
            [(1, true), (3, true), (3, true), (1, false)],
            "{batches:?}"
        );
        assert_eq!(batches[0].0, ["huge"]);
        assert_eq!(ids(&store), ["live"]);
    }

    /// The store thread's row bound shrinks after a slow batch and grows
    /// back after fast full ones, within its bounds.
    #[test]
    fn the_row_bound_follows_how_long_batches_take() {
        let ms = Duration::from_millis;
        let check = |limit: usize, took: Duration, full: bool, expect: usize| {
            assert_eq!(
                next_limit(limit, took, full),
                expect,
                "{limit} rows, {took:?}, full {full}"
            );
        };
        check(PRUNE_BATCH, ms(6), true, PRUNE_BATCH / 2);
        check(PRUNE_BATCH, ms(60), false, PRUNE_BATCH / 2);
        check(20, ms(60), true, MIN_PRUNE_BATCH);
        check(MIN_PRUNE_BATCH, ms(60), true, MIN_PRUNE_BATCH);
        check(100, ms(1), true, 200);
        check(400, ms(1), true, PRUNE_BATCH);
        check(PRUNE_BATCH, ms(1), true, PRUNE_BATCH);
        // Not full: nothing says a larger batch would be due.
        check(100, ms(1), false, 100);
        // Between half the aim and the aim: kept.
        check(100, ms(4), true, 100);
        check(100, PRUNE_BATCH_TIME, true, 100);
    }

    /// The highest task number survives the pruning of the tasks that had
    /// it, and a restart: the `seq`s written and the number of an id of
    /// the generated form, so the master never generates a pruned task's
    /// id again.
    #[test]
    fn the_highest_task_number_outlives_its_pruned_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let tasks: Vec<(String, TaskState, i64)> = [
            ("task-18c1d2e3f4a-900", TaskState::Completed, 60),
            ("client-chosen", TaskState::Failed, 100),
            ("task-18c1d2e3f4a-1", TaskState::Queued, 60),
        ]
        .into_iter()
        .map(|(id, state, days)| (id.to_string(), state, days))
        .collect();
        write(&mut store, &tasks, "x");
        prune_all(&mut store);
        assert_eq!(ids(&store), ["task-18c1d2e3f4a-1"]);
        drop(store);
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open again");
        let (_, live, history) = store.load_live().expect("load");
        assert_eq!(live.len(), 1);
        assert_eq!(history.finished, []);
        assert_eq!(history.max_seq, 900);
    }

    fn pages(store: &Store) -> i64 {
        store
            .connection
            .pragma_query_value(None, "page_count", |row| row.get(0))
            .expect("page_count")
    }

    /// After a large prune the database file is small again.
    #[test]
    fn the_file_shrinks_after_a_large_prune() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let tasks: Vec<(String, TaskState, i64)> = (0..2 * PRUNE_BATCH + 10)
            .map(|i| (format!("t{i}"), TaskState::Completed, 60))
            .chain([("live".to_string(), TaskState::Queued, 60)])
            .collect();
        write(&mut store, &tasks, &"x".repeat(2000));
        let before = pages(&store);
        // Rows of 2 KB: the byte bound cuts each batch before its 500 rows.
        let row: i64 = store
            .connection
            .query_row(
                "SELECT octet_length(record) FROM tasks WHERE task_id = ?1",
                ["t0"],
                |r| r.get(0),
            )
            .expect("a row's size");
        let per_batch = (PRUNE_BATCH_BYTES as usize / row as usize).min(PRUNE_BATCH);
        assert!(per_batch < PRUNE_BATCH);
        let batches: Vec<(usize, bool)> = prune_all(&mut store)
            .into_iter()
            .map(|pruned| (pruned.tasks.len(), pruned.full))
            .collect();
        let (last, full) = batches[..batches.len() - 1]
            .iter()
            .fold((0, true), |(sum, all), (len, full)| {
                (sum + len, all && *full)
            });
        assert!(
            full,
            "every batch but the last was cut by a bound: {batches:?}"
        );
        assert_eq!(last + batches[batches.len() - 1].0, 2 * PRUNE_BATCH + 10);
        assert!(
            batches.iter().all(|(len, _)| *len <= per_batch),
            "{per_batch} rows of {row} B a batch at most: {batches:?}"
        );
        assert_eq!(batches.len(), (2 * PRUNE_BATCH + 10).div_ceil(per_batch));
        assert_eq!(ids(&store), ["live"]);
        let after = pages(&store);
        assert!(
            after * 20 < before,
            "{before} pages before, {after} after the prune"
        );
        // And on disk, once the WAL is copied back.
        store
            .connection
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let bytes = std::fs::metadata(dir.path().join(crate::store::DB_FILE))
            .expect("stat")
            .len();
        assert!(bytes < 200 * 1024, "{bytes} bytes left");
    }
}

#[cfg(test)]
mod thread_tests {
    use super::*;
    use crate::core::records::{Batch, EncodedTask, StoreOp, TaskRecord};
    use crate::store::{StoreEvent, Synchronous, Wake};
    use protocol::TaskSpec;
    use serde_json::json;
    use std::sync::Arc;

    /// The test waits on the event channel itself.
    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    fn task(id: &str, state: TaskState, finished_unix_ms: i64) -> StoreOp {
        let mut record = TaskRecord::queued(id.into(), 1, TaskSpec::new("echo", json!({})), 1);
        record.state = state;
        record.finished_unix_ms = Some(finished_unix_ms);
        StoreOp::PutTask(EncodedTask::new(&record, &mut Vec::new()))
    }

    /// The store thread prunes by itself between commits, in batches of
    /// at most `PRUNE_BATCH`, reports what it deleted after the commits
    /// before it, and keeps committing.
    #[test]
    fn the_store_thread_prunes_between_commits_and_reports_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let retention = Retention {
            retention: Duration::from_millis(200),
            retention_failed: Duration::from_millis(200),
        };
        let (batches, events, thread) = crate::store::spawn(
            store,
            Some(retention),
            Arc::new(NoWake),
            crate::Shutdown::new(),
        )
        .expect("spawn");
        let old = 1_000;
        let mut ops: Vec<StoreOp> = (0..PRUNE_BATCH + 7)
            .map(|i| task(&format!("t{i}"), TaskState::Completed, old))
            .collect();
        ops.push(task("live", TaskState::Running, old));
        batches.send(Batch { id: 1, ops }).expect("send");
        let mut pruned = Vec::new();
        let mut committed = Vec::new();
        while pruned.iter().map(|p: &Pruned| p.tasks.len()).sum::<usize>() < PRUNE_BATCH + 7 {
            match events
                .recv_timeout(Duration::from_secs(30))
                .expect("an event")
            {
                StoreEvent::Committed(id) => committed.push(id),
                StoreEvent::Pruned {
                    committed: after,
                    pruned: batch,
                } => {
                    assert_eq!(after, 1, "reported after the commit it followed");
                    pruned.push(batch);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(committed, [1]);
        assert!(pruned.len() >= 2, "in batches: {}", pruned.len());
        assert!(pruned.iter().all(|batch| batch.tasks.len() <= PRUNE_BATCH));
        // Still committing.
        batches
            .send(Batch {
                id: 2,
                ops: vec![task("after", TaskState::Queued, 0)],
            })
            .expect("send");
        loop {
            if let StoreEvent::Committed(2) =
                events.recv_timeout(Duration::from_secs(30)).expect("event")
            {
                break;
            }
        }
        drop(batches);
        thread.join().expect("the store thread ends");
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open again");
        let (_, live, history) = store.load_live().expect("load");
        let mut live: Vec<String> = live.into_iter().map(|record| record.task_id).collect();
        live.sort();
        assert_eq!(live, ["after", "live"]);
        assert_eq!(history.finished, []);
    }
}
