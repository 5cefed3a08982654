//! The only code that touches SQLite.
//!
//! The store runs on its own thread, fed by a crossbeam channel. It commits
//! everything that is waiting in one transaction (group commit), then tells
//! the event loop which batch is durable and wakes it, so the replies held
//! for that batch can go out.

pub mod backup;
mod checkpoint;
pub mod files;
pub mod retention;
mod schema;

use crate::core::records::{Batch, DeviceKeyRecord, DeviceRecord, StoreOp, TaskRecord};
use crate::core::{ReadAnswer, ReadRequest};
use checkpoint::{Checkpointer, WalAction};
use crossbeam_channel::{Receiver, Sender};
use protocol::TaskState;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "retire.db";

/// Schema version written to `PRAGMA user_version` (see [`schema`]).
pub const SCHEMA_VERSION: i64 = schema::VERSION;

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
    /// The data directory or the database file cannot be used (see
    /// [`files`]).
    #[error(transparent)]
    Files(#[from] files::FilesError),
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
    created: bool,
    /// The highest task number written so far (`meta`'s `max_seq`, see
    /// [`Store::commit`]).
    max_seq: u64,
}

impl Store {
    /// Opens the database in `data_dir`, creating the directory (0700) and
    /// the database (0600) if they are missing: a first start. An existing
    /// database must be a readable SQLite file (see [`files::prepare`]).
    pub fn open(data_dir: &Path, synchronous: Synchronous) -> Result<Store, StoreError> {
        Store::open_with(data_dir, synchronous, files::Create::IfMissing)
    }

    /// Opens the database in `data_dir`, which must exist (`--check`).
    pub fn open_existing(data_dir: &Path, synchronous: Synchronous) -> Result<Store, StoreError> {
        Store::open_with(data_dir, synchronous, files::Create::Never)
    }

    /// Whether this open created the database (a first start).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The database's schema version (`PRAGMA user_version`); after an
    /// open it is [`SCHEMA_VERSION`].
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.sqlite(e))
    }

    fn open_with(
        data_dir: &Path,
        synchronous: Synchronous,
        create: files::Create,
    ) -> Result<Store, StoreError> {
        let created = files::prepare(data_dir, DB_FILE, create)?;
        let path = data_dir.join(DB_FILE);
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // Without `CREATE`: the file exists now (`files::prepare`), and
        // should it vanish, SQLite must not make a new one with the umask's
        // mode.
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(wrap)?;
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
                 -- A full index on the state cost two more B-tree writes
                 -- at every state change; the partial ones of
                 -- the history indexes of schema 3 (`store/schema.rs`) replace it.
                 DROP INDEX IF EXISTS tasks_by_state;
                 CREATE TABLE IF NOT EXISTS device_keys (
                     device_id TEXT PRIMARY KEY,
                     record TEXT NOT NULL
                 );",
            )
            .map_err(wrap)?;
        schema::migrate(&connection, version).map_err(wrap)?;
        let max_seq = stored_max_seq(&connection).map_err(wrap)?;
        Ok(Store {
            connection,
            path,
            created,
            max_seq,
        })
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads every device and task back.
    ///
    /// A record that cannot be read back (it does not decode, or holds a
    /// value nested deeper than `protocol::MAX_VALUE_DEPTH` allows) does
    /// not stop the master: it is moved to the `quarantine` table with the
    /// reason, logged as a warning, and left out; everything else loads.
    /// [`Store::quarantined`] lists what was set aside, then and before.
    pub fn load(&self) -> Result<(Vec<DeviceRecord>, Vec<TaskRecord>), StoreError> {
        let devices = self.load_records::<DeviceRecord>(DEVICES)?;
        let tasks = self.load_records::<TaskRecord>(TASKS)?;
        Ok((devices, tasks))
    }

    /// Reads every device and the live tasks back (queued, assigned,
    /// running, retrying), quarantining unreadable ones as [`Store::load`]
    /// does, and counts the finished tasks, which stay in the store: the
    /// master reads them when asked (`core/history.rs`), so a start costs
    /// the live tasks, not the history.
    pub fn load_live(&self) -> Result<(Vec<DeviceRecord>, Vec<TaskRecord>, History), StoreError> {
        let devices = self.load_records::<DeviceRecord>(DEVICES)?;
        let tasks = self.load_records::<TaskRecord>(LIVE_TASKS)?;
        let history = self.history().map_err(|e| self.sqlite(e))?;
        Ok((devices, tasks, history))
    }

    /// How many tasks the store holds as completed at or after
    /// `since_unix_ms` (the start of the UTC day, at a start: `status`'s
    /// `completed_today`), counted on the `tasks_finished_at` index.
    pub fn completed_since(&self, since_unix_ms: i64) -> Result<u64, StoreError> {
        let count: i64 = self
            .connection
            .query_row(
                &format!(
                    "SELECT count(*) FROM tasks INDEXED BY tasks_finished_at
                     WHERE state = 'completed' AND {FINISHED} AND finished_unix_ms >= ?1"
                ),
                [since_unix_ms],
                |row| row.get(0),
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(count.max(0) as u64)
    }

    /// The finished tasks per state and the highest `seq`, from the
    /// indexes (no record is read).
    fn history(&self) -> rusqlite::Result<History> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT state, count(*) FROM tasks WHERE {FINISHED} GROUP BY state"
        ))?;
        let mut finished = Vec::new();
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let state: String = row.get(0)?;
            let count: i64 = row.get(1)?;
            if let Ok(state) = state.parse::<TaskState>() {
                finished.push((state, count.max(0) as u64));
            }
        }
        let max_seq = |condition: &str| -> rusqlite::Result<i64> {
            self.connection.query_row(
                &format!("SELECT coalesce(max(seq), 0) FROM tasks WHERE {condition}"),
                [],
                |row| row.get(0),
            )
        };
        let live = max_seq(live_condition!())?;
        let max_seq =
            (live.max(max_seq(FINISHED)?).max(0) as u64).max(stored_max_seq(&self.connection)?);
        Ok(History { finished, max_seq })
    }

    /// Reads the devices' credential records back.
    ///
    /// An unreadable one is quarantined like any other record, but it fails
    /// closed: forgetting it could forget a revocation (a revoked device
    /// could enroll again), so its row is replaced by a revoked record for
    /// the same id in the same transaction. The device is cut off until the
    /// operator looks at the quarantine; a row whose id is not even text is
    /// only set aside, since no device can authenticate under it.
    pub fn load_device_keys(&self) -> Result<Vec<DeviceKeyRecord>, StoreError> {
        let (mut records, bad) = self.read_records::<DeviceKeyRecord>(DEVICE_KEYS)?;
        if !bad.is_empty() {
            let now_ms = self.quarantine(DEVICE_KEYS, &bad)?;
            records.extend(
                bad.iter()
                    .filter_map(|(_, row)| revoked_in_place_of(row, now_ms)),
            );
        }
        Ok(records)
    }

    /// The value of the setting `key` changed at run time (see
    /// `StoreOp::PutSetting`), if one was ever stored.
    pub fn load_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.connection
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| self.sqlite(e))
    }

    /// Reads every row of `table`, quarantining those that cannot be read.
    fn load_records<T: Restorable>(&self, table: &Table) -> Result<Vec<T>, StoreError> {
        let (records, bad) = self.read_records::<T>(table)?;
        if !bad.is_empty() {
            self.quarantine(table, &bad)?;
        }
        Ok(records)
    }

    /// Reads every row of `table`: the records that decode, and the rows
    /// that do not, with the reason.
    fn read_records<T: Restorable>(
        &self,
        table: &Table,
    ) -> Result<(Vec<T>, Vec<BadRow>), StoreError> {
        let mut statement = self
            .connection
            .prepare(table.select)
            .map_err(|e| self.sqlite(e))?;
        let mut rows = statement.query([]).map_err(|e| self.sqlite(e))?;
        let mut records = Vec::new();
        let mut bad = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            // Read leniently: a key or record that is not even text (a
            // row written by hand) is quarantined too, not fatal.
            let text = |index: usize| -> Result<Option<String>, StoreError> {
                Ok(match row.get_ref(index).map_err(|e| self.sqlite(e))? {
                    ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                    _ => None,
                })
            };
            let (id, record) = (text(0)?, text(1)?);
            let rowid: i64 = row.get(2).map_err(|e| self.sqlite(e))?;
            let id_text = id.clone().unwrap_or_else(|| NOT_TEXT.into());
            let outcome = match (&id, &record) {
                (None, _) => Err("its id is not text".to_string()),
                (_, None) => Err("its record is not text".to_string()),
                (Some(_), Some(json)) => T::restore(json),
            };
            match outcome {
                Ok(decoded) => records.push(decoded),
                Err(reason) => bad.push((
                    rowid,
                    Quarantined {
                        table: table.name.to_string(),
                        id: id_text,
                        record: record.unwrap_or_default(),
                        reason,
                    },
                )),
            }
        }
        Ok((records, bad))
    }

    /// Moves `bad` rows of `table` into `quarantine`, in one transaction,
    /// and logs each; a credential row is replaced by a revoked record
    /// rather than deleted (see [`Store::load_device_keys`]). Returns the
    /// time it recorded.
    fn quarantine(&self, table: &Table, bad: &[BadRow]) -> Result<i64, StoreError> {
        let wrap = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let transaction = self.connection.unchecked_transaction().map_err(wrap)?;
        transaction.execute_batch(QUARANTINE_TABLE).map_err(wrap)?;
        for (rowid, row) in bad {
            transaction
                .execute(
                    "INSERT INTO quarantine (source, id, record, reason, quarantined_unix_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![row.table, row.id, row.record, row.reason, now_ms],
                )
                .map_err(wrap)?;
            // By rowid: the row's key may not even be text.
            match (table.revoke_in_place, revoked_in_place_of(row, now_ms)) {
                (true, Some(revoked)) => {
                    // A struct of strings and numbers always encodes.
                    let json = serde_json::to_string(&revoked).unwrap_or_default();
                    transaction
                        .execute(
                            "UPDATE device_keys SET record = ?2 WHERE rowid = ?1",
                            params![rowid, json],
                        )
                        .map_err(wrap)?;
                }
                _ => {
                    transaction
                        .execute(table.delete, params![rowid])
                        .map_err(wrap)?;
                }
            }
            log::warn!(
                "quarantined {} record {}: {} (kept in the quarantine table of {}){}",
                table.what,
                row.id,
                row.reason,
                self.path.display(),
                if table.revoke_in_place {
                    "; the device is treated as revoked"
                } else {
                    ""
                }
            );
        }
        transaction.commit().map_err(wrap)?;
        Ok(now_ms)
    }

    /// Every record set aside so far (the `quarantine` table), oldest
    /// first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let exists: bool = self
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|e| self.sqlite(e))?
            > 0;
        if !exists {
            return Ok(Vec::new());
        }
        let mut statement = self
            .connection
            .prepare("SELECT source, id, record, reason FROM quarantine ORDER BY rowid")
            .map_err(|e| self.sqlite(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Quarantined {
                    table: row.get(0)?,
                    id: row.get(1)?,
                    record: row.get(2)?,
                    reason: row.get(3)?,
                })
            })
            .map_err(|e| self.sqlite(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sqlite(e))
    }

    /// What `--check` reports beyond SQLite's own check: the records
    /// already quarantined, and those the next start would quarantine.
    /// It changes nothing.
    pub fn unreadable_records(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut found = self.quarantined()?;
        let keys = self.read_records::<DeviceKeyRecord>(DEVICE_KEYS)?.1;
        let devices = self.read_records::<DeviceRecord>(DEVICES)?.1;
        let tasks = self.read_records::<TaskRecord>(TASKS)?.1;
        found.extend(
            keys.into_iter()
                .chain(devices)
                .chain(tasks)
                .map(|(_, row)| row),
        );
        Ok(found)
    }

    /// Commits `batches` in one transaction.
    pub fn commit(&mut self, batches: &[Batch]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut max_seq = self.max_seq;
        let transaction = self.connection.transaction().map_err(wrap)?;
        {
            let mut put_device = transaction
                .prepare_cached("INSERT OR REPLACE INTO devices (device_id, status, record) VALUES (?1, ?2, ?3)")
                .map_err(wrap)?;
            let mut put_task = transaction
                // An update in place: `INSERT OR REPLACE` would delete the
                // row and insert it again under a new rowid, rewriting the
                // primary key's index entry too, at every state change.
                .prepare_cached(PUT_TASK)
                .map_err(wrap)?;
            let mut put_key = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO device_keys (device_id, record) VALUES (?1, ?2)",
                )
                .map_err(wrap)?;
            for op in batches.iter().flat_map(|batch| &batch.ops) {
                if let StoreOp::PutTask(task) = op {
                    max_seq = max_seq
                        .max(task.seq)
                        .max(crate::core::records::generated_seq(&task.task_id).unwrap_or(0));
                }
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
                    // Run after the commit, between later ones (see
                    // `spawn`): not part of this transaction.
                    StoreOp::Prune(_) => {}
                    StoreOp::PutSetting(setting) => {
                        transaction
                            .prepare_cached(
                                "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                            )
                            .and_then(|mut put| put.execute(params![setting.key, setting.value]))
                            .map_err(wrap)?;
                    }
                    StoreOp::DeleteDeadLetter(task_id) => {
                        // The core checked the state; the store checks it
                        // again, so no other row is ever deleted by it.
                        transaction
                            .prepare_cached(
                                "DELETE FROM tasks WHERE task_id = ?1 AND state = 'dead_letter'",
                            )
                            .map_err(wrap)?
                            .execute(params![task_id])
                            .map_err(wrap)?;
                    }
                    StoreOp::PutTask(task) => {
                        put_task
                            .execute(params![
                                task.task_id,
                                task.seq as i64,
                                task.state.as_str(),
                                task.json,
                                task.finished_unix_ms
                            ])
                            .map_err(wrap)?;
                    }
                }
            }
        }
        if max_seq > self.max_seq {
            transaction
                .prepare_cached(PUT_MAX_SEQ)
                .and_then(|mut statement| statement.execute(params![max_seq as i64]))
                .map_err(wrap)?;
        }
        transaction.commit().map_err(wrap)?;
        self.max_seq = max_seq;
        Ok(())
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

    /// Copies the whole WAL into the database and truncates it, for a
    /// program that writes through a `Store` without the store thread
    /// (whose checkpointer does this as it goes): the bench's fill. `Ok`
    /// even when a reader kept part of the WAL.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.sqlite(e))
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

/// A stored record that could not be read back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The table it came from (`tasks` or `devices`).
    pub table: String,
    /// Its id (task or device).
    pub id: String,
    /// The record as it was stored.
    pub record: String,
    /// Why it could not be read.
    pub reason: String,
}

/// A row that cannot be read back: its `rowid` (its key may not even be
/// text) and what is reported about it.
type BadRow = (i64, Quarantined);

/// What a quarantined row's id reads as when the stored key is not text.
const NOT_TEXT: &str = "(not text)";

/// Where records that cannot be read back are kept, so that nothing is
/// lost and the operator can look at them.
const QUARANTINE_TABLE: &str = "CREATE TABLE IF NOT EXISTS quarantine (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_unix_ms INTEGER NOT NULL
);";

/// The condition of the live history index (schema 3, `store/schema.rs`).
/// A query spells it the same so that SQLite uses the index. It is a chain
/// of `OR`s, not `state IN (…)`: SQLite evaluates a partial index's
/// condition at every write of a row, and an `IN` list of more than two
/// values costs a temporary b-tree each time (nine per task update, which
/// tripled the master's instructions per task in `bench throughput`).
macro_rules! live_condition {
    () => {
        "(state = 'queued' OR state = 'assigned' OR state = 'running' OR state = 'retrying')"
    };
}
pub(crate) use live_condition;

/// The condition of the finished history indexes, likewise.
macro_rules! finished_condition {
    () => {
        "(state = 'completed' OR state = 'failed' OR state = 'timed_out' \
         OR state = 'cancelled' OR state = 'dead_letter')"
    };
}
pub(crate) use finished_condition;

/// Writes a task's record: an update in place when the task exists.
const PUT_TASK: &str = "INSERT INTO tasks (task_id, seq, state, record, finished_unix_ms)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (task_id) DO UPDATE
     SET seq = excluded.seq, state = excluded.state, record = excluded.record,
         finished_unix_ms = excluded.finished_unix_ms";

/// Raises the highest task number kept in `meta` (schema 5): the `seq`
/// of every task written and the number of every id of the generated
/// form (`records::generated_seq`), so a generated id never repeats one
/// that a pruned task had.
const PUT_MAX_SEQ: &str = "INSERT INTO meta (key, value) VALUES ('max_seq', ?1)
     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

/// The highest task number `meta` keeps (0 when none is kept).
fn stored_max_seq(connection: &Connection) -> rusqlite::Result<u64> {
    let value: Option<i64> = connection
        .query_row("SELECT value FROM meta WHERE key = 'max_seq'", [], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(value.unwrap_or(0).max(0) as u64)
}

/// [`finished_condition`] as a value, for queries built with `format!`.
const FINISHED: &str = finished_condition!();

/// What a start leaves in the store without loading it (see
/// [`Store::load_live`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Finished tasks per state.
    pub finished: Vec<(TaskState, u64)>,
    /// The highest `seq` of any task.
    pub max_seq: u64,
}

/// A table of records the master restores.
struct Table {
    name: &'static str,
    what: &'static str,
    select: &'static str,
    delete: &'static str,
    /// Whether an unreadable row is replaced by a revoked credential for its
    /// id instead of being deleted (fail closed).
    revoke_in_place: bool,
}

const DEVICES: &Table = &Table {
    name: "devices",
    what: "device",
    select: "SELECT device_id, record, rowid FROM devices",
    delete: "DELETE FROM devices WHERE rowid = ?1",
    revoke_in_place: false,
};

const DEVICE_KEYS: &Table = &Table {
    name: "device_keys",
    what: "device key",
    select: "SELECT device_id, record, rowid FROM device_keys",
    delete: "DELETE FROM device_keys WHERE rowid = ?1",
    revoke_in_place: true,
};

/// The record that stands in for an unreadable credential: the same id,
/// no key, revoked at `now_ms`. `None` when the row's id is not text.
fn revoked_in_place_of(row: &Quarantined, now_ms: i64) -> Option<DeviceKeyRecord> {
    (row.id != NOT_TEXT).then(|| DeviceKeyRecord {
        device_id: row.id.clone(),
        public_key: None,
        enrolled_unix_ms: 0,
        enrolled_from: None,
        revoked_unix_ms: Some(now_ms),
    })
}

/// The live tasks: what a start loads.
const LIVE_TASKS: &Table = &Table {
    name: "tasks",
    what: "task",
    select: concat!(
        "SELECT task_id, record, rowid FROM tasks WHERE ",
        live_condition!(),
        " ORDER BY seq"
    ),
    delete: "DELETE FROM tasks WHERE rowid = ?1",
    revoke_in_place: false,
};

const TASKS: &Table = &Table {
    name: "tasks",
    what: "task",
    select: "SELECT task_id, record, rowid FROM tasks ORDER BY seq",
    delete: "DELETE FROM tasks WHERE rowid = ?1",
    revoke_in_place: false,
};

/// A record the master restores at start, and what makes one unreadable.
trait Restorable: serde::de::DeserializeOwned {
    /// Decodes the stored JSON and checks that every free-form value in it
    /// can still be sent (see `protocol::limits`).
    fn restore(json: &str) -> Result<Self, String> {
        let record: Self = serde_json::from_str(json).map_err(|err| err.to_string())?;
        record.check_depth()?;
        Ok(record)
    }

    /// Checks the nesting of the record's free-form values.
    fn check_depth(&self) -> Result<(), String>;
}

impl Restorable for TaskRecord {
    fn check_depth(&self) -> Result<(), String> {
        protocol::limits::check_depth("its payload", &self.spec.payload)?;
        match &self.result {
            Some(result) => protocol::limits::check_result_depth(result),
            None => Ok(()),
        }
    }
}

impl Restorable for DeviceKeyRecord {
    fn check_depth(&self) -> Result<(), String> {
        // Written by the master alone: no free-form value in it.
        Ok(())
    }
}

impl Restorable for DeviceRecord {
    fn check_depth(&self) -> Result<(), String> {
        // The profile is a register's `data`: its free-form values sit one
        // level (capabilities, unknown fields) or two (unknown fields of
        // `device_info` / `hardware_specs`) below it.
        let profile = crate::core::records::profile_value(&self.profile);
        let Some(profile) = profile.as_object() else {
            return Ok(());
        };
        for (key, value) in profile {
            match (key.as_str(), value) {
                ("device_info" | "hardware_specs", serde_json::Value::Object(fields)) => {
                    for (field, value) in fields {
                        protocol::limits::check_depth(&format!("its {key}.{field}"), value)?;
                    }
                }
                _ => protocol::limits::check_depth(&format!("its {key}"), value)?,
            }
        }
        Ok(())
    }
}

/// Most bytes of records one listing page reads from the store, 1 MiB
/// (at least one record, however large): a page of 1,000 finished tasks
/// with large results would otherwise read and decode up to a GiB on the
/// event loop's thread, one request stalling every peer. A page cut
/// short says so (`ReadAnswer::Tasks::cut`) and the core ends the reply
/// with a cursor there, so the client reads on from it.
pub const PAGE_READ_BYTES: u64 = 1 << 20;

/// A read-only connection to the database, which answers the core's reads
/// of finished tasks (`Output::Read`) on the event loop's thread. Every
/// read is a lookup by key or a walk of one index that stops after its
/// page, so it costs what it returns. In WAL mode it reads the last
/// commit without waiting for the writer; the core keeps a finished task
/// until its write has committed, so what it asks for is there.
pub struct Reader {
    connection: Connection,
}

impl Reader {
    /// Opens the database in `data_dir` for reading (the store opened it
    /// first, so it exists and is in WAL mode).
    pub fn open(data_dir: &Path) -> Result<Reader, StoreError> {
        let path = data_dir.join(DB_FILE);
        let connection = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|connection| {
            connection.busy_timeout(Duration::from_secs(5))?;
            Ok(connection)
        })
        .map_err(|source| StoreError::Sqlite { path, source })?;
        Ok(Reader { connection })
    }

    /// Answers `request`.
    pub fn read(&self, request: &ReadRequest) -> rusqlite::Result<ReadAnswer> {
        match request {
            ReadRequest::Task { task_id } => {
                let mut statement = self
                    .connection
                    .prepare_cached("SELECT record FROM tasks WHERE task_id = ?1")?;
                let json: Option<String> = statement
                    .query_row(params![task_id], |row| row.get(0))
                    .optional()?;
                Ok(ReadAnswer::Tasks {
                    records: json
                        .and_then(|json| decoded(task_id, &json))
                        .into_iter()
                        .collect(),
                    before_seq: None,
                    cut: false,
                })
            }
            ReadRequest::Exists { task_ids } => {
                let mut statement = self
                    .connection
                    .prepare_cached("SELECT 1 FROM tasks WHERE task_id = ?1")?;
                let mut found = Vec::new();
                for task_id in task_ids {
                    if statement.exists(params![task_id])? {
                        found.push(task_id.clone());
                    }
                }
                Ok(ReadAnswer::Ids(found))
            }
            ReadRequest::Page {
                state,
                before,
                before_seq,
                limit,
            } => {
                let before_seq = match (before, before_seq) {
                    (Some(task_id), None) => {
                        let seq: Option<i64> = self
                            .connection
                            .prepare_cached("SELECT seq FROM tasks WHERE task_id = ?1")?
                            .query_row(params![task_id], |row| row.get(0))
                            .optional()?;
                        match seq {
                            Some(seq) => Some(seq.max(0) as u64),
                            None => return Ok(ReadAnswer::NoCursor),
                        }
                    }
                    (_, seq) => *seq,
                };
                let upper = before_seq.map_or(i64::MAX, |seq| seq as i64);
                let rows = (*limit as i64).saturating_add(1);
                let (records, cut) = match state {
                    Some(state) if !state.is_terminal() => (Vec::new(), false),
                    Some(state) => self.page(
                        &format!(
                            "SELECT rowid, octet_length(record) FROM tasks
                             INDEXED BY tasks_finished_by_state
                             WHERE state = ?3 AND {FINISHED} AND seq < ?1
                             ORDER BY state DESC, seq DESC LIMIT ?2"
                        ),
                        params![upper, rows, state.as_str()],
                    )?,
                    None => self.page(
                        &format!(
                            "SELECT rowid, octet_length(record) FROM tasks
                             INDEXED BY tasks_finished
                             WHERE {FINISHED} AND seq < ?1 ORDER BY seq DESC LIMIT ?2"
                        ),
                        params![upper, rows],
                    )?,
                };
                Ok(ReadAnswer::Tasks {
                    records,
                    before_seq,
                    cut,
                })
            }
        }
    }

    /// The records of a page query (`sql` selects each row's `rowid` and
    /// the size of its record), newest first, as many as fit in
    /// [`PAGE_READ_BYTES`] (at least one), and whether that bound cut the
    /// page short. Sizes come from `octet_length`, which SQLite answers
    /// from a row's header, so only the records shown are read. An
    /// unreadable record is left out (and logged).
    fn page(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<(Vec<TaskRecord>, bool)> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let mut rows = statement.query(params)?;
        let mut chosen = Vec::new();
        let mut bytes = 0u64;
        let mut cut = false;
        while let Some(row) = rows.next()? {
            let rowid: i64 = row.get(0)?;
            let size = row.get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64;
            if !chosen.is_empty() && bytes.saturating_add(size) > PAGE_READ_BYTES {
                cut = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            chosen.push(rowid);
        }
        drop(rows);
        let mut read = self
            .connection
            .prepare_cached("SELECT task_id, record FROM tasks WHERE rowid = ?1")?;
        let mut records = Vec::with_capacity(chosen.len());
        for rowid in chosen {
            let row: Option<(String, String)> = read
                .query_row(params![rowid], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((task_id, json)) = row {
                records.extend(decoded(&task_id, &json));
            }
        }
        Ok((records, cut))
    }
}

/// A stored task record, or `None` (logged) if it cannot be read back.
fn decoded(task_id: &str, json: &str) -> Option<TaskRecord> {
    match <TaskRecord as Restorable>::restore(json) {
        Ok(record) => Some(record),
        Err(why) => {
            log::warn!("stored task {task_id} cannot be read back: {why}");
            None
        }
    }
}

/// What the store thread tells the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A `prune` request is done: every task it deleted was reported in
    /// a [`StoreEvent::Pruned`] before; `outcome` is the totals per state,
    /// or why it stopped.
    PruneDone {
        /// The request.
        job: crate::core::records::PruneJob,
        /// Deleted tasks per state, or the error.
        outcome: Result<Vec<(TaskState, u64)>, String>,
    },
    /// Retention deleted these finished tasks; every batch up to
    /// `committed` had committed before (so a task the core wrote later
    /// is back in the store, or will be).
    Pruned {
        /// The last batch committed before the delete.
        committed: u64,
        /// What was deleted.
        pruned: retention::Pruned,
    },
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

/// When the store thread prunes next, and whether a batch is due now.
struct Pruning {
    retention: Option<retention::Retention>,
    /// `prune` requests whose batch has committed, oldest first, each with
    /// what it has deleted so far.
    manual: std::collections::VecDeque<(crate::core::records::PruneJob, Vec<(TaskState, u64)>)>,
    /// The last batch was full: more is due right after the next commit.
    more: bool,
    /// The row bound of the next batch, adapted to how long batches take
    /// (`retention::next_limit`).
    limit: usize,
    /// When to look again otherwise.
    next: std::time::Instant,
    /// No batch before this: the last one left the WAL past
    /// `retention::PRUNE_WAL_PAGES`, and the checkpointer gets time to
    /// copy it back before pruning writes more.
    held: Option<std::time::Instant>,
}

impl Pruning {
    fn new(retention: Option<retention::Retention>) -> Pruning {
        Pruning {
            retention,
            manual: std::collections::VecDeque::new(),
            more: false,
            limit: retention::PRUNE_BATCH,
            // The first look soon after start, not at once: a start has
            // enough to do.
            next: std::time::Instant::now()
                + retention.map_or(Duration::ZERO, |retention| retention.interval()),
            held: None,
        }
    }

    /// The `prune` requests of batches that just committed.
    fn take_requests(&mut self, batches: &[Batch]) {
        for op in batches.iter().flat_map(|batch| &batch.ops) {
            if let StoreOp::Prune(job) = op {
                self.manual.push_back((job.clone(), Vec::new()));
            }
        }
    }

    /// Runs one pruning batch if one is due, for a `prune` request first:
    /// what it deleted, if anything, and the request it finished, if it
    /// did.
    #[allow(clippy::type_complexity)]
    fn run(
        &mut self,
        store: &mut Store,
        shutdown: &crate::Shutdown,
    ) -> (
        Option<retention::Pruned>,
        Option<(
            crate::core::records::PruneJob,
            Result<Vec<(TaskState, u64)>, String>,
        )>,
    ) {
        if shutdown.is_triggered() {
            self.manual.clear();
        }
        if let Some(held) = self.held {
            if std::time::Instant::now() < held {
                return (None, None);
            }
            self.held = None;
        }
        let Some((job, _)) = self.manual.front() else {
            return (self.run_retention(store, shutdown), None);
        };
        let started = std::time::Instant::now();
        match store.prune_before(job.before_unix_ms, self.limit) {
            Ok(pruned) => {
                let full = pruned.full;
                self.limit = retention::next_limit(self.limit, started.elapsed(), full);
                if let Some((_, total)) = self.manual.front_mut() {
                    retention::add_counts(total, &pruned.per_state());
                }
                let reported = (!pruned.tasks.is_empty()).then_some(pruned);
                if full {
                    return (reported, None);
                }
                let done = self.manual.pop_front().map(|(job, total)| (job, Ok(total)));
                (reported, done)
            }
            Err(err) => {
                let done = self
                    .manual
                    .pop_front()
                    .map(|(job, _)| (job, Err(err.to_string())));
                (None, done)
            }
        }
    }

    /// Runs one retention batch if one is due; what it deleted, if
    /// anything. A failure is logged and tried again at the next look:
    /// pruning is housekeeping, never a reason to stop committing.
    fn run_retention(
        &mut self,
        store: &mut Store,
        shutdown: &crate::Shutdown,
    ) -> Option<retention::Pruned> {
        let retention = self.retention?;
        let now = std::time::Instant::now();
        if shutdown.is_triggered() {
            // Stopping: no more pruning, and no busy wait for it either.
            self.more = false;
            self.next = now + retention.interval();
            return None;
        }
        if !self.more && now < self.next {
            return None;
        }
        let now_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let outcome = store.prune_batch(&retention, now_unix_ms, self.limit);
        self.more = matches!(&outcome, Ok(pruned) if pruned.full);
        if outcome.is_ok() {
            self.limit = retention::next_limit(self.limit, now.elapsed(), self.more);
        }
        if !self.more {
            self.next = now + retention.interval();
        }
        match outcome {
            Ok(pruned) if pruned.tasks.is_empty() => None,
            Ok(pruned) => {
                log::debug!("retention deleted {} finished tasks", pruned.tasks.len());
                Some(pruned)
            }
            Err(err) => {
                log::warn!("retention: pruning failed, trying again later: {err}");
                None
            }
        }
    }

    /// The WAL holds `pages` after a pruning batch: past
    /// `retention::PRUNE_WAL_PAGES`, the next batch waits
    /// `retention::PRUNE_WAL_WAIT`.
    fn after_batch(&mut self, pages: i32) {
        if pages > retention::PRUNE_WAL_PAGES {
            self.held = Some(std::time::Instant::now() + retention::PRUNE_WAL_WAIT);
        }
    }

    /// How long the thread may wait for a batch before pruning is due.
    fn wait(&self) -> Duration {
        let due = if !self.manual.is_empty() {
            Duration::ZERO
        } else {
            match self.retention {
                None => Duration::from_secs(3600),
                Some(_) if self.more => Duration::ZERO,
                Some(_) => self
                    .next
                    .saturating_duration_since(std::time::Instant::now()),
            }
        };
        match self.held {
            Some(held) => due.max(held.saturating_duration_since(std::time::Instant::now())),
            None => due,
        }
    }
}

/// Starts the store thread. It ends when the batch sender is dropped and
/// everything sent has been committed. With a `retention`, it also prunes
/// finished tasks past it between commits (see [`retention`]) and reports
/// what it deleted ([`StoreEvent::Pruned`]).
pub fn spawn(
    mut store: Store,
    retention: Option<retention::Retention>,
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
            let mut last_committed = 0;
            let mut pruning = Pruning::new(retention);
            loop {
                // Retention between group commits: one small batch at a
                // time (see `retention`), so a commit waits for one at most.
                let (pruned, done) = pruning.run(&mut store, &shutdown);
                if pruned.is_some() || done.is_some() {
                    // Pruning writes the WAL as a commit does: the
                    // checkpointer is asked as often, and past a bound
                    // pruning waits for it (never the store itself: a
                    // checkpoint here would delay the next commit).
                    let pages = checkpoint::take_wal_pages();
                    let action = wal.after_commit(pages);
                    if action != WalAction::Nothing || pages > retention::PRUNE_WAL_PAGES {
                        checkpointer.request();
                    }
                    pruning.after_batch(pages);
                }
                let events = pruned
                    .map(|pruned| StoreEvent::Pruned {
                        committed: last_committed,
                        pruned,
                    })
                    .into_iter()
                    .chain(done.map(|(job, outcome)| StoreEvent::PruneDone { job, outcome }));
                let mut any = false;
                for event in events {
                    any = true;
                    if event_tx.send(event).is_err() {
                        return;
                    }
                }
                if any {
                    waker.wake();
                }
                let first = match batch_rx.recv_timeout(pruning.wait()) {
                    Ok(first) => first,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
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
                last_committed = last;
                pruning.take_requests(&batches);
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

    /// The SQLite opcodes of `sql`, as `EXPLAIN` lists them.
    fn opcodes(connection: &Connection, sql: &str) -> Vec<String> {
        let mut statement = connection
            .prepare(&format!("EXPLAIN {sql}"))
            .expect("explain");
        // EXPLAIN compiles the statement only; its parameters stay unbound.
        let unbound = vec![rusqlite::types::Null; statement.parameter_count()];
        let rows = statement
            .query_map(rusqlite::params_from_iter(unbound), |row| {
                row.get::<_, String>(1)
            })
            .expect("opcodes");
        rows.map(|row| row.expect("an opcode")).collect()
    }

    /// A task's write keeps three partial indexes up to date, and SQLite
    /// checks each one's condition at every write: spelled as an `IN` list
    /// it built a temporary b-tree per check (nine per write, three times
    /// the master's work per task), spelled as `OR`s it compares in place.
    /// The reads still use the indexes.
    #[test]
    fn a_task_write_checks_the_history_indexes_without_temporary_tables() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let ops = opcodes(&store.connection, PUT_TASK);
        assert!(ops.iter().any(|op| op == "IdxInsert"), "{ops:?}");
        assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{ops:?}");
        let plan = |sql: &str| -> String {
            let mut statement = store
                .connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan");
            let rows = statement
                .query_map([], |row| row.get::<_, String>(3))
                .expect("plan rows");
            rows.map(|row| row.expect("a plan row"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let live = plan(LIVE_TASKS.select);
        assert!(live.contains("tasks_live"), "{live}");
        let page = plan(&format!(
            "SELECT record FROM tasks WHERE {FINISHED} AND seq < 10 ORDER BY seq DESC LIMIT 5"
        ));
        assert!(page.contains("tasks_finished"), "{page}");
    }

    /// `status`'s `completed_today` at a start: the completed tasks
    /// finished at or after the day's start, not before, and no other
    /// finished state.
    #[test]
    fn the_completions_since_the_day_started_are_counted_from_the_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let midnight = crate::core::observe::utc_day_start(1_700_000_000_000);
        let tasks = [
            (TaskState::Completed, Some(midnight - 1)),
            (TaskState::Completed, Some(midnight)),
            (TaskState::Completed, Some(midnight + 3_600_000)),
            (TaskState::Failed, Some(midnight + 1)),
            (TaskState::Cancelled, Some(midnight + 2)),
            (TaskState::Running, None),
        ];
        for (i, (state, finished)) in tasks.into_iter().enumerate() {
            let seq = i as u64 + 1;
            let mut record =
                TaskRecord::queued(format!("t{seq}"), seq, TaskSpec::new("echo", json!({})), 5);
            record.state = state;
            record.finished_unix_ms = finished;
            store.commit(&[put(&record, seq)]).expect("commit");
        }
        let count = |since| store.completed_since(since).expect("count");
        assert_eq!(count(midnight), 2);
        assert_eq!(count(midnight - 1), 3);
        assert_eq!(count(midnight + 3_600_001), 0);
    }

    #[test]
    fn a_start_loads_the_live_tasks_and_the_reader_serves_the_finished_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let states = [
            TaskState::Queued,
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Completed,
            TaskState::Running,
        ];
        for (i, state) in states.into_iter().enumerate() {
            let seq = i as u64 + 1;
            let mut record =
                TaskRecord::queued(format!("t{seq}"), seq, TaskSpec::new("echo", json!({})), 5);
            record.state = state;
            store.commit(&[put(&record, seq)]).expect("commit");
        }
        let (_, live, history) = store.load_live().expect("load");
        let live: Vec<&str> = live.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(live, ["t1", "t5"]);
        let mut finished = history.finished.clone();
        finished.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(
            finished,
            [(TaskState::Completed, 2), (TaskState::Failed, 1)]
        );
        assert_eq!(history.max_seq, 5);

        let reader = Reader::open(dir.path()).expect("reader");
        let ids = |answer: ReadAnswer| match answer {
            ReadAnswer::Tasks {
                records,
                before_seq,
                cut: false,
            } => (
                records.into_iter().map(|r| r.task_id).collect::<Vec<_>>(),
                before_seq,
            ),
            other => panic!("not tasks: {other:?}"),
        };
        let read = |request: ReadRequest| reader.read(&request).expect("read");
        let task = |id: &str| read(ReadRequest::Task { task_id: id.into() });
        assert_eq!(ids(task("t2")), (vec!["t2".to_string()], None));
        assert_eq!(ids(task("nope")), (vec![], None));
        assert_eq!(
            read(ReadRequest::Exists {
                task_ids: vec!["t1".into(), "nope".into(), "t4".into()]
            }),
            ReadAnswer::Ids(vec!["t1".into(), "t4".into()])
        );
        let page = |state, before: Option<&str>, before_seq, limit| {
            read(ReadRequest::Page {
                state,
                before: before.map(str::to_string),
                before_seq,
                limit,
            })
        };
        // Finished tasks only, newest first, one past the page.
        assert_eq!(
            ids(page(None, None, None, 1)),
            (vec!["t4".to_string(), "t3".to_string()], None)
        );
        // A cursor the store looks up, or the one the core knew.
        assert_eq!(
            ids(page(Some(TaskState::Completed), Some("t4"), None, 5)),
            (vec!["t2".to_string()], Some(4))
        );
        assert_eq!(
            ids(page(None, Some("t5"), Some(5), 5)),
            (vec!["t4".into(), "t3".into(), "t2".into()], Some(5))
        );
        assert_eq!(page(None, Some("nope"), None, 5), ReadAnswer::NoCursor);
        assert_eq!(
            ids(page(Some(TaskState::Queued), None, None, 5)),
            (vec![], None)
        );
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

    /// `task_delete`'s op deletes a dead letter's row and no other: a task
    /// in another state keeps its row, whatever the core asked.
    #[test]
    fn a_dead_letter_delete_takes_only_a_dead_letters_row() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let mut dead = TaskRecord::queued("dead".into(), 1, TaskSpec::new("echo", json!({})), 5);
        dead.state = TaskState::DeadLetter;
        let mut done = TaskRecord::queued("done".into(), 2, TaskSpec::new("echo", json!({})), 5);
        done.state = TaskState::Completed;
        let live = TaskRecord::queued("live".into(), 3, TaskSpec::new("echo", json!({})), 5);
        for (i, record) in [&dead, &done, &live].into_iter().enumerate() {
            store.commit(&[put(record, i as u64 + 1)]).expect("write");
        }
        let ops = ["dead", "done", "live"]
            .map(|id| StoreOp::DeleteDeadLetter(id.to_string()))
            .to_vec();
        store.commit(&[Batch { id: 4, ops }]).expect("delete");
        let (_, tasks) = store.load().expect("load");
        let mut ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["done", "live"]);
    }

    /// A device's registration is a typed `Register` now, where it was a
    /// JSON value: rows written then load with their registration, in
    /// either wire shape, and a registration is stored as the same JSON.
    /// A setting changed at run time (`retire strategy`) is read back by
    /// the next open, the newest write winning; an unset one is `None`.
    #[test]
    fn a_setting_outlives_the_store_and_the_newest_write_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let setting = |value: &str| {
            StoreOp::PutSetting(crate::core::records::SettingRecord {
                key: crate::core::STRATEGY_SETTING.into(),
                value: value.into(),
            })
        };
        {
            let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
            assert_eq!(
                store
                    .load_setting(crate::core::STRATEGY_SETTING)
                    .expect("read"),
                None
            );
            let batches = [
                Batch {
                    id: 1,
                    ops: vec![setting("weighted")],
                },
                Batch {
                    id: 2,
                    ops: vec![setting("round_robin")],
                },
            ];
            store.commit(&batches).expect("commit");
        }
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open again");
        assert_eq!(
            store
                .load_setting(crate::core::STRATEGY_SETTING)
                .expect("read"),
            Some("round_robin".to_string())
        );
        assert_eq!(store.load_setting("no_such_setting").expect("read"), None);
    }

    #[test]
    fn devices_stored_with_a_json_profile_load_with_their_registration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        // As the master wrote them when the profile was a `Value`: the
        // design's shape (with fields nobody knows, kept), the older flat
        // shape, and `null`.
        let row = |id: &str, profile: serde_json::Value| {
            json!({
                "device_id": id, "role": "worker", "status": "online", "profile": profile,
                "tags": ["lab"], "task_types": null, "slots": 2, "ip_address": "10.0.0.9",
                "registered_unix_ms": 1, "last_seen_unix_ms": 2,
            })
            .to_string()
        };
        let design = json!({
            "device_info": {"hostname": "pi", "platform": "linux", "architecture": "aarch64",
                            "board": "rpi4"},
            "hardware_specs": {"cpu_cores": 4, "memory_total": 4_294_967_296_u64,
                               "disk_space": 34_359_738_368_u64, "network_interfaces": []},
            "capabilities": ["gpio"], "slots": 2, "tags": ["lab"], "leases": true,
        });
        let flat = json!({"hostname": "old", "platform": "linux", "cpu_count": 2});
        for (id, profile) in [("pi", design), ("old", flat), ("bare", json!(null))] {
            store
                .connection
                .execute(
                    "INSERT INTO devices (device_id, status, record) VALUES (?1, 'online', ?2)",
                    rusqlite::params![id, row(id, profile)],
                )
                .expect("an older row");
        }
        let (devices, _) = store.load().expect("load");
        assert_eq!(store.quarantined().expect("the quarantine"), Vec::new());
        let by_id: std::collections::BTreeMap<&str, &DeviceRecord> = devices
            .iter()
            .map(|device| (device.device_id.as_str(), device))
            .collect();
        let pi = &by_id["pi"].profile;
        assert_eq!(pi.hostname.as_deref(), Some("pi"));
        assert_eq!(pi.architecture.as_deref(), Some("aarch64"));
        assert_eq!(pi.cpu_cores, Some(4));
        assert_eq!(pi.memory_total_bytes, Some(4 << 30));
        assert_eq!(pi.capabilities, Some(json!(["gpio"])));
        assert_eq!(pi.extra["board"], json!("rpi4"));
        assert!(pi.leases);
        assert_eq!(by_id["old"].profile.hostname.as_deref(), Some("old"));
        assert_eq!(by_id["old"].profile.cpu_cores, Some(2));
        assert_eq!(by_id["bare"].profile, protocol::Register::default());

        // Written again, a registration is the JSON its register message's
        // `data` is, as when the record held that JSON.
        let record = by_id["pi"];
        let stored = serde_json::to_value(record).expect("a record is JSON");
        let data = protocol::Envelope::new(protocol::Message::Register(record.profile.clone()))
            .to_value()["data"]
            .clone();
        assert_eq!(stored["profile"], data);
        store
            .commit(&[Batch {
                id: 1,
                ops: vec![StoreOp::PutDevice(record.clone())],
            }])
            .expect("write");
        let (again, _) = store.load().expect("load again");
        assert!(again.contains(record));
    }

    /// `depth` arrays around a number.
    fn nested(depth: usize) -> serde_json::Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        value
    }

    /// Writes one task with a payload and a result field nested as given,
    /// then loads: the record comes back as written, or is quarantined
    /// (with `reason` in its reason) and the load goes on.
    fn check_restore(payload: usize, output: usize, reason: Option<&str>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        let mut record =
            TaskRecord::queued("t".into(), 1, TaskSpec::new("echo", nested(payload)), 5);
        record.state = TaskState::Completed;
        record.result = Some(json!({ "output": nested(output), "exit_code": 0 }));
        let other = TaskRecord::queued("other".into(), 2, TaskSpec::new("echo", json!({})), 5);
        store
            .commit(&[put(&record, 1), put(&other, 2)])
            .expect("write");
        let (_, tasks) = store.load().expect("a bad record never fails the load");
        let quarantined = store.quarantined().expect("list the quarantine");
        match reason {
            None => {
                assert_eq!(tasks, vec![record, other]);
                assert_eq!(quarantined, Vec::new());
            }
            Some(reason) => {
                assert_eq!(tasks, vec![other], "{payload} {output}");
                assert_eq!(quarantined.len(), 1);
                assert_eq!(
                    (quarantined[0].table.as_str(), quarantined[0].id.as_str()),
                    ("tasks", "t")
                );
                assert!(quarantined[0].reason.contains(reason), "{quarantined:?}");
                // Moved, not copied: the next load finds nothing more to set aside.
                store.load().expect("load again");
                assert_eq!(store.quarantined().expect("list").len(), 1);
            }
        }
    }

    #[test]
    fn records_at_the_nesting_limit_load_and_deeper_ones_are_quarantined() {
        let limit = protocol::MAX_VALUE_DEPTH;
        check_restore(limit, limit, None);
        check_restore(limit + 1, 0, Some("its payload nests more than 64"));
        check_restore(
            0,
            limit + 1,
            Some("the result's \"output\" nests more than 64"),
        );
        check_restore(126, 0, Some("recursion limit exceeded"));
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

    #[test]
    fn an_unreadable_credential_is_quarantined_and_its_device_stays_revoked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = DeviceKeyRecord {
            device_id: "nas".into(),
            public_key: Some("cd".into()),
            enrolled_unix_ms: 1_800_000_000_000,
            enrolled_from: None,
            revoked_unix_ms: None,
        };
        let mut store = Store::open(dir.path(), Synchronous::Normal).expect("open");
        store
            .commit(&[Batch {
                id: 1,
                ops: vec![StoreOp::PutDeviceKey(good.clone())],
            }])
            .expect("write");
        store
            .connection
            .execute(
                "INSERT INTO device_keys VALUES ('pi', '{\"device_id\":\"pi\",\"revoked')",
                [],
            )
            .expect("a damaged row");
        let keys = store
            .load_device_keys()
            .expect("a bad credential never fails the load");
        let pi = keys
            .iter()
            .find(|key| key.device_id == "pi")
            .expect("pi is still known");
        assert!(
            pi.revoked_unix_ms.is_some() && pi.public_key.is_none(),
            "{pi:?}"
        );
        assert!(keys.contains(&good), "{keys:?}");
        let quarantined = store.quarantined().expect("list");
        assert_eq!(quarantined.len(), 1, "{quarantined:?}");
        assert_eq!(
            (quarantined[0].table.as_str(), quarantined[0].id.as_str()),
            ("device_keys", "pi")
        );
        // The revocation stands in the table itself, so the next start
        // reads it without quarantining anything more.
        drop(store);
        let store = Store::open(dir.path(), Synchronous::Normal).expect("open again");
        let again = store.load_device_keys().expect("load again");
        assert!(again
            .iter()
            .any(|key| key.device_id == "pi" && key.revoked_unix_ms.is_some()));
        assert_eq!(store.quarantined().expect("list").len(), 1);
    }
}
