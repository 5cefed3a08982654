//! The only code that touches SQLite.
//!
//! The store runs on its own thread, fed by a crossbeam channel. It commits
//! everything that is waiting in one transaction (group commit), then tells
//! the event loop which batch is durable and wakes it, so the replies held
//! for that batch can go out.

mod checkpoint;

use crate::core::records::{Batch, DeviceKeyRecord, DeviceRecord, StoreOp, TaskRecord};
use checkpoint::{Checkpointer, WalAction};
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "retire.db";

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Longest pause between retries of a failed commit.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// How SQLite syncs to disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// In WAL mode, commits survive a crash of the process (kill -9) but the
    /// last ones may be lost on power loss. The default.
    #[default]
    Normal,
    /// Every commit is synced: it survives power loss too, at a cost.
    Full,
}

impl Synchronous {
    /// Parses `normal` or `full`.
    pub fn parse(text: &str) -> Option<Synchronous> {
        match text.to_ascii_lowercase().as_str() {
            "normal" => Some(Synchronous::Normal),
            "full" => Some(Synchronous::Full),
            _ => None,
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored record could not be read back.
    #[error("database {path}: corrupt {what} record {id}: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// `task`, `device` or `device key`.
        what: &'static str,
        /// The record's id.
        id: String,
        /// Why it could not be decoded.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer version.
    #[error("database {path} has schema version {found}; this master understands up to {SCHEMA_VERSION}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
}

/// An open database.
pub struct Store {
    connection: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path, synchronous: Synchronous) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let connection = Connection::open(&path).map_err(wrap)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        connection
            .pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(wrap)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(wrap)?;
        // Checkpoints run off the commit path (see `checkpoint`): no
        // automatic one inside a commit; the hook reports the WAL's size.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(wrap)?;
        connection
            .pragma_update(None, "journal_size_limit", checkpoint::WAL_KEEP_BYTES)
            .map_err(wrap)?;
        connection.wal_hook(Some(checkpoint::wal_hook));
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(wrap)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
            });
        }
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS devices (
                     device_id TEXT PRIMARY KEY,
                     status TEXT NOT NULL,
                     record TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS tasks (
                     task_id TEXT PRIMARY KEY,
                     seq INTEGER NOT NULL,
                     state TEXT NOT NULL,
                     record TEXT NOT NULL
                 );
                 -- Nothing reads tasks by state (the master loads every
                 -- task at start and keeps them in memory), and an index
                 -- on it cost two more B-tree writes at every state change.
                 DROP INDEX IF EXISTS tasks_by_state;
                 CREATE TABLE IF NOT EXISTS device_keys (
                     device_id TEXT PRIMARY KEY,
                     record TEXT NOT NULL
                 );",
            )
            .map_err(wrap)?;
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(wrap)?;
        Ok(Store { connection, path })
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads every device and task back.
    pub fn load(&self) -> Result<(Vec<DeviceRecord>, Vec<TaskRecord>), StoreError> {
        let devices = self.load_table("SELECT device_id, record FROM devices", "device")?;
        let tasks = self.load_table("SELECT task_id, record FROM tasks ORDER BY seq", "task")?;
        Ok((devices, tasks))
    }

    /// Reads the devices' credential records back.
    pub fn load_device_keys(&self) -> Result<Vec<DeviceKeyRecord>, StoreError> {
        self.load_table("SELECT device_id, record FROM device_keys", "device key")
    }

    fn load_table<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.connection.prepare(sql).map_err(|e| self.sqlite(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| self.sqlite(e))?;
        let mut records = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(|e| self.sqlite(e))?;
            let record = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                what,
                id,
                source,
            })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Commits `batches` in one transaction.
    pub fn commit(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let transaction = self.connection.transaction().map_err(wrap)?;
        {
            let mut put_device = transaction
                .prepare_cached("INSERT OR REPLACE INTO devices (device_id, status, record) VALUES (?1, ?2, ?3)")
                .map_err(wrap)?;
            let mut put_task = transaction
                // An update in place: `INSERT OR REPLACE` would delete the
                // row and insert it again under a new rowid, rewriting the
                // primary key's index entry too, at every state change.
                .prepare_cached(
                    "INSERT INTO tasks (task_id, seq, state, record) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (task_id) DO UPDATE
                     SET seq = excluded.seq, state = excluded.state, record = excluded.record",
                )
                .map_err(wrap)?;
            let mut put_key = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO device_keys (device_id, record) VALUES (?1, ?2)",
                )
                .map_err(wrap)?;
            for op in batches.iter().flat_map(|batch| &batch.ops) {
                match op {
                    StoreOp::PutDeviceKey(record) => {
                        let json = serde_json::to_string(record).unwrap_or_default();
                        put_key
                            .execute(params![record.device_id, json])
                            .map_err(wrap)?;
                    }
                    StoreOp::PutDevice(record) => {
                        let json = serde_json::to_string(record).unwrap_or_default();
                        put_device
                            .execute(params![record.device_id, record.status.as_str(), json])
                            .map_err(wrap)?;
                    }
                    StoreOp::PutTask(task) => {
                        put_task
                            .execute(params![
                                task.task_id,
                                task.seq as i64,
                                task.state.as_str(),
                                task.json
                            ])
                            .map_err(wrap)?;
                    }
                }
            }
        }
        transaction.commit().map_err(wrap)
    }

    /// Copies the whole WAL into the database and starts it over, waiting
    /// for readers and a running checkpoint. Only when the WAL reached its
    /// limit: it delays the next commit.
    fn checkpoint_restart(&self) {
        let outcome = self
            .connection
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            });
        match outcome {
            Ok((0, pages)) => log::info!("WAL at its limit: checkpointed {pages} pages"),
            Ok((_, pages)) => log::warn!(
                "WAL at its limit ({pages} pages) and busy; trying again after the next commit"
            ),
            Err(err) => log::warn!("WAL checkpoint failed: {err}"),
        }
    }

    /// Runs SQLite's own consistency check; `Ok(())` when it says "ok".
    pub fn integrity_check(&self) -> Result<Result<(), String>, StoreError> {
        let verdict: Option<String> = self
            .connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .optional()
            .map_err(|e| self.sqlite(e))?;
        Ok(match verdict.as_deref() {
            Some("ok") => Ok(()),
            other => Err(other.unwrap_or("no answer").to_string()),
        })
    }
}

/// What the store thread tells the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// Every batch up to and including this id is durable.
    Committed(u64),
    /// A commit failed; the store keeps retrying it.
    Failing,
    /// Commits succeed again after a failure.
    Recovered,
}

/// Something the store thread can be woken with; the event loop passes its
/// mio `Waker`.
pub trait Wake: Send + Sync + 'static {
    /// Wakes the consumer of [`StoreEvent`]s.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        if let Err(err) = mio::Waker::wake(self) {
            log::error!("cannot wake the event loop: {err}");
        }
    }
}

/// Starts the store thread. It ends when the batch sender is dropped and
/// everything sent has been committed.
pub fn spawn(
    mut store: Store,
    waker: Arc<dyn Wake>,
    shutdown: crate::Shutdown,
) -> std::io::Result<(Sender<Batch>, Receiver<StoreEvent>, JoinHandle<()>)> {
    let (batch_tx, batch_rx) = crossbeam_channel::unbounded::<Batch>();
    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let checkpointer = Checkpointer::spawn(store.path.clone())?;
    let handle = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            // Dropped (and joined) when this thread ends, before the store's
            // connection closes.
            let checkpointer = checkpointer;
            let mut wal = checkpoint::WalWatch::default();
            while let Ok(first) = batch_rx.recv() {
                // Group commit: everything that queued up while the last
                // transaction ran goes into this one.
                let mut batches = vec![first];
                batches.extend(batch_rx.try_iter());
                let mut pause = Duration::from_millis(50);
                let mut failing = false;
                while let Err(err) = store.commit(&batches) {
                    if !failing {
                        failing = true;
                        if event_tx.send(StoreEvent::Failing).is_err() {
                            return;
                        }
                        waker.wake();
                    }
                    if shutdown.is_triggered() {
                        // Nothing in these batches was acknowledged, so
                        // giving up loses no promise; waiting for the disk
                        // would only keep the master from stopping.
                        log::error!(
                            "commit failed while shutting down; {} unsaved change batches were never acknowledged: {err}",
                            batches.len()
                        );
                        return;
                    }
                    // Nothing is acknowledged until this succeeds; keep
                    // trying so the master recovers by itself, for example
                    // when disk space returns.
                    log::error!("commit failed, retrying in {pause:?}: {err}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                let last = batches.last().map_or(0, |batch| batch.id);
                if failing && event_tx.send(StoreEvent::Recovered).is_err() {
                    break;
                }
                if event_tx.send(StoreEvent::Committed(last)).is_err() {
                    break;
                }
                waker.wake();
                // After the commit is reported: a checkpoint here delays
                // only the next commit, never this one's replies.
                match wal.after_commit(checkpoint::take_wal_pages()) {
                    WalAction::Nothing => {}
                    WalAction::Passive => checkpointer.request(),
                    WalAction::Restart => store.checkpoint_restart(),
                }
            }
        })?;
    Ok((batch_tx, event_rx, handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::records::EncodedTask;
    use protocol::{TaskSpec, TaskState};
    use serde_json::json;

    fn put(record: &TaskRecord, id: u64) -> Batch {
        Batch {
            id,
            ops: vec![StoreOp::PutTask(EncodedTask::new(record, &mut Vec::new()))],
        }
    }

    #[test]
    fn a_task_written_again_is_updated_in_place_and_the_state_index_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A database as earlier masters created it, index included.
        Connection::open(dir.path().join(DB_FILE))
            .and_then(|connection| {
                connection.execute_batch(
                    "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
                         state TEXT NOT NULL, record TEXT NOT NULL);
                     CREATE INDEX tasks_by_state ON tasks(state, seq);",
                )
            })
            .expect("the earlier schema");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let indexes: i64 = store
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tasks_by_state'",
                [],
                |row| row.get(0),
            )
            .expect("count indexes");
        assert_eq!(indexes, 0);

        let mut record = TaskRecord::queued("t1".into(), 7, TaskSpec::new("echo", json!({})), 5);
        store.commit(&[put(&record, 1)]).expect("first write");
        record.state = TaskState::Completed;
        record.result = Some(json!({ "output": "hi", "exit_code": 0 }));
        store.commit(&[put(&record, 2)]).expect("second write");
        let (_, tasks) = store.load().expect("load");
        assert_eq!(tasks, vec![record]);
        let state: String = store
            .connection
            .query_row("SELECT state FROM tasks WHERE task_id = 't1'", [], |row| {
                row.get(0)
            })
            .expect("read the state column");
        assert_eq!(state, "completed");
    }

    #[test]
    fn device_keys_written_before_enrollment_addresses_were_kept_still_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A key as earlier masters stored it: no `enrolled_from`.
        Connection::open(dir.path().join(DB_FILE))
            .and_then(|connection| {
                connection.execute_batch(
                    r#"CREATE TABLE device_keys (device_id TEXT PRIMARY KEY, record TEXT NOT NULL);
                     INSERT INTO device_keys VALUES ('pi', '{"device_id":"pi","public_key":"ab",
                         "enrolled_unix_ms":1700000000000,"revoked_unix_ms":null}');
                     PRAGMA user_version = 1;"#,
                )
            })
            .expect("the earlier schema");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let old = DeviceKeyRecord {
            device_id: "pi".into(),
            public_key: Some("ab".into()),
            enrolled_unix_ms: 1_700_000_000_000,
            enrolled_from: None,
            revoked_unix_ms: None,
        };
        assert_eq!(store.load_device_keys().expect("load"), vec![old]);
        let new = DeviceKeyRecord {
            device_id: "nas".into(),
            public_key: Some("cd".into()),
            enrolled_unix_ms: 1_800_000_000_000,
            enrolled_from: Some("192.168.1.20".into()),
            revoked_unix_ms: None,
        };
        store
            .commit(&[Batch {
                id: 1,
                ops: vec![StoreOp::PutDeviceKey(new.clone())],
            }])
            .expect("write");
        drop(store);
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open again");
        let keys = store.load_device_keys().expect("load");
        assert!(keys.contains(&new), "{keys:?}");
    }
}
