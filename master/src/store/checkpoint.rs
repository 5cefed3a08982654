//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold, on the store thread: it copies the WAL's pages into the
//! database and syncs both files, and every reply waiting for that commit
//! waits for it too. The store turns it off (`wal_autocheckpoint = 0`) and
//! instead:
//!
//! - learns the WAL's size after every commit from SQLite's WAL hook;
//! - past [`CHECKPOINT_PAGES`], asks the checkpointer thread, which has its
//!   own connection, for a `PASSIVE` checkpoint. A passive checkpoint never
//!   blocks the writer: commits go on while it copies, and the next commit
//!   after it caught up starts the WAL over from its beginning;
//! - past [`WAL_LIMIT_PAGES`] (the checkpointer fell behind a writer that
//!   never paused), checkpoints on the store thread itself with `RESTART`,
//!   after the commit has been reported, so the WAL stays bounded.
//!
//! None of this changes what a commit promises: a transaction is durable
//! (as `--synchronous` says) when it is in the WAL, whether or not it has
//! been copied into the database yet.

use rusqlite::hooks::Wal;
use rusqlite::Connection;
use std::cell::Cell;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// WAL size (pages) past which the checkpointer is asked for a passive
/// checkpoint: SQLite's own default threshold, about 4 MiB.
pub(crate) const CHECKPOINT_PAGES: i32 = 1000;

/// WAL size (pages) past which the store thread checkpoints itself, even
/// though that delays the next commit: 16,384 pages, 64 MiB with the
/// default 4 KiB page. The WAL holds at most this plus one group commit.
pub(crate) const WAL_LIMIT_PAGES: i32 = 16_384;

/// After a WAL restart, SQLite truncates the file back to this size (bytes)
/// if it grew larger, so a burst does not keep its disk space.
pub(crate) const WAL_KEEP_BYTES: i64 = 16 * 1024 * 1024;

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's WAL hook: it runs on the committing thread after each commit.
/// (It must be a plain `fn`; the store connection lives on one thread, so
/// a thread-local carries the count to it.)
pub(crate) fn wal_hook(_wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|count| count.set(pages));
    Ok(())
}

/// The WAL size the last commit on this thread reported, and forgets it.
pub(crate) fn take_wal_pages() -> i32 {
    WAL_PAGES.with(|count| count.replace(0))
}

/// What the store should do about the WAL after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalAction {
    /// Nothing yet.
    Nothing,
    /// Ask the checkpointer thread.
    Passive,
    /// Checkpoint now, on the store thread.
    Restart,
}

/// Decides, from the WAL size after each commit, when to checkpoint (apart
/// from the I/O, so it can be tested).
///
/// A passive checkpoint copies the frames that were in the WAL when it
/// started; the WAL starts over only if the next write transaction begins
/// after it caught up. Under steady writes it often has not, and asking
/// again after every commit would run a checkpoint (two `fsync`s) per
/// commit. So a passive checkpoint is asked for once per
/// [`CHECKPOINT_PAGES`] written; when the WAL still reaches
/// [`WAL_LIMIT_PAGES`], the store's own `RESTART` checkpoint has only the
/// pages since the last passive one left to copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalWatch {
    /// Ask for a passive checkpoint when the WAL reaches this size.
    next_passive: i32,
    /// The WAL size after the previous commit.
    last: i32,
}

impl Default for WalWatch {
    fn default() -> WalWatch {
        WalWatch {
            next_passive: CHECKPOINT_PAGES,
            last: 0,
        }
    }
}

impl WalWatch {
    /// The WAL holds `pages` after a commit: what to do.
    pub(crate) fn after_commit(&mut self, pages: i32) -> WalAction {
        if pages < self.last {
            // The WAL started over.
            self.next_passive = CHECKPOINT_PAGES;
        }
        self.last = pages;
        if pages >= WAL_LIMIT_PAGES {
            self.next_passive = CHECKPOINT_PAGES;
            WalAction::Restart
        } else if pages >= self.next_passive {
            self.next_passive = pages + CHECKPOINT_PAGES;
            WalAction::Passive
        } else {
            WalAction::Nothing
        }
    }
}

/// The thread that runs passive checkpoints on its own connection.
pub(crate) struct Checkpointer {
    requests: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread for the database at `path`.
    pub(crate) fn spawn(path: PathBuf) -> std::io::Result<Checkpointer> {
        // One pending request is enough: a checkpoint copies everything in
        // the WAL when it starts.
        let (requests, pending) = crossbeam_channel::bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                // Opened at the first request: a master that writes little
                // never pays for a second connection.
                if pending.recv().is_err() {
                    return;
                }
                let connection = match Connection::open(&path).and_then(|connection| {
                    connection.busy_timeout(Duration::from_secs(5))?;
                    // It copies pages; it has no use for a page cache.
                    connection.pragma_update(None, "cache_size", 16)?;
                    Ok(connection)
                }) {
                    Ok(connection) => connection,
                    Err(err) => {
                        // The store checkpoints itself at the WAL limit.
                        log::error!("checkpointer cannot open {}: {err}", path.display());
                        return;
                    }
                };
                loop {
                    let outcome =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                        });
                    match outcome {
                        Ok((log, copied)) => {
                            log::debug!("checkpoint: {copied} of {log} WAL pages copied")
                        }
                        Err(err) => log::warn!("passive checkpoint failed: {err}"),
                    }
                    if pending.recv().is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            requests: Some(requests),
            handle: Some(handle),
        })
    }

    /// Asks for a passive checkpoint, unless one is already pending.
    pub(crate) fn request(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_passive_checkpoint_per_threshold_of_pages_and_a_restart_at_the_limit() {
        let mut watch = WalWatch::default();
        assert_eq!(watch.after_commit(10), WalAction::Nothing);
        assert_eq!(watch.after_commit(CHECKPOINT_PAGES - 1), WalAction::Nothing);
        assert_eq!(watch.after_commit(CHECKPOINT_PAGES + 3), WalAction::Passive);
        // The checkpoint did not let the WAL start over: not again at once.
        assert_eq!(
            watch.after_commit(CHECKPOINT_PAGES + 10),
            WalAction::Nothing
        );
        assert_eq!(
            watch.after_commit(2 * CHECKPOINT_PAGES + 2),
            WalAction::Nothing
        );
        assert_eq!(
            watch.after_commit(2 * CHECKPOINT_PAGES + 3),
            WalAction::Passive
        );
        // It started over: the next threshold is the first one again.
        assert_eq!(watch.after_commit(5), WalAction::Nothing);
        assert_eq!(watch.after_commit(CHECKPOINT_PAGES), WalAction::Passive);
        assert_eq!(watch.after_commit(WAL_LIMIT_PAGES), WalAction::Restart);
        assert_eq!(watch.after_commit(WAL_LIMIT_PAGES + 5), WalAction::Restart);
        assert_eq!(watch.after_commit(3), WalAction::Nothing);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::core::records::{Batch, EncodedTask, StoreOp, TaskRecord};
    use crate::store::{Store, Synchronous};
    use protocol::TaskSpec;

    fn batch(id: u64, first: u64, count: u64) -> Batch {
        let ops = (first..first + count)
            .map(|seq| {
                StoreOp::PutTask(EncodedTask::new(
                    &TaskRecord::queued(
                        format!("t{seq}"),
                        seq,
                        TaskSpec::new("echo", serde_json::json!({ "pad": "x".repeat(2000) })),
                        0,
                    ),
                    &mut Vec::new(),
                ))
            })
            .collect();
        Batch { id, ops }
    }

    #[test]
    fn commits_never_checkpoint_and_a_passive_checkpoint_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        take_wal_pages();
        // Past SQLite's old automatic threshold, nothing is checkpointed
        // inside a commit: the WAL only grows.
        let mut pages = 0;
        let mut id = 0;
        while pages < CHECKPOINT_PAGES + 100 {
            id += 1;
            store.commit(&[batch(id, id * 100, 100)]).expect("commit");
            let now = take_wal_pages();
            assert!(now > pages, "the WAL grew from {pages} to {now} pages");
            pages = now;
        }
        // A passive checkpoint on the other connection copies it all, and
        // the next commit starts the WAL over.
        let checkpointer =
            Checkpointer::spawn(dir.path().join(crate::store::DB_FILE)).expect("checkpointer");
        checkpointer.request();
        drop(checkpointer); // handles the pending request, then ends
        id += 1;
        store.commit(&[batch(id, 1, 1)]).expect("commit");
        let after = take_wal_pages();
        assert!(after < 10, "the WAL started over: {after} pages");
        // And the limit's checkpoint works on the store's own connection.
        store.checkpoint_restart();
        drop(store);
        let store = Store::open(dir.path(), Synchronous::Normal).expect("reopen");
        let (_, tasks) = store.load().expect("load");
        assert_eq!(
            tasks.len() as u64,
            100 * (id - 1) + 1,
            "every task is there"
        );
    }
}
