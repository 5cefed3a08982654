//! `retire-master backup FILE`: a copy of the live database, taken while a
//! master runs, through SQLite's online backup API.
//!
//! The copy is made on a connection of its own (in the process that runs
//! `backup`, not the master's), which opens one read transaction on the
//! database and keeps it until the copy is done. In WAL mode a reader never
//! blocks the writer, so the master goes on committing while the pages are
//! copied, [`PAGES_PER_STEP`] at a time; the copy is the database as it was
//! when the read began (a committed state: everything acknowledged before
//! `backup` started is in it). Because the snapshot is held, a commit in
//! between does not make SQLite start the copy over.
//!
//! The target is created with `O_EXCL` and mode 0600 (it holds every payload
//! and result): an existing file is refused, never overwritten. A copy that
//! fails half way is removed, and a finished one is synced and checked
//! (`PRAGMA quick_check`) before `backup` reports success.
//!
//! While the snapshot is held, a checkpoint cannot copy the frames written
//! after it into the database, so the master's WAL grows for the length of
//! the backup (a few seconds for a database of hundreds of MiB).

use super::files::FILE_MODE;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pages copied per step of the backup: 1,024 pages, 4 MiB with the
/// default page size.
pub const PAGES_PER_STEP: i32 = 1024;

/// Pause between two steps, so a backup of a large database leaves the
/// disk to the master now and then.
pub const STEP_PAUSE: Duration = Duration::from_millis(5);

/// How long a step waits for a lock it needs before it gives up (a
/// checkpoint resetting the WAL holds one for a moment).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Steps in a row that may find the database locked before the backup
/// gives up.
const MAX_BUSY_STEPS: u32 = 20;

/// Exit status when there is no database to copy (`EX_NOINPUT`).
pub const EXIT_NO_DATABASE: u8 = 66;

/// Exit status when the target exists or cannot be written
/// (`EX_CANTCREAT`).
pub const EXIT_TARGET: u8 = 73;

/// Exit status when the copy itself failed (`EX_IOERR`).
pub const EXIT_COPY: u8 = 74;

/// Why a backup was not made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// There is no database to copy.
    #[error("no database at {path} to back up (is --data-dir the master's?)")]
    NoDatabase {
        /// The database that was looked for.
        path: PathBuf,
    },
    /// The target is already there; a backup never overwrites a file.
    #[error("the backup target {path} already exists; a backup never overwrites a file: choose another name or move it away")]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// The target cannot be created.
    #[error("cannot create the backup target {path}: {source}")]
    TargetUnwritable {
        /// The target.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// SQLite failed while copying; the partial target has been removed.
    #[error("copying {from} to {to} failed (the partial copy was removed): {source}")]
    Copy {
        /// The live database.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The finished copy does not pass SQLite's check; it has been removed.
    #[error("the copy {path} does not pass quick_check ({verdict}); it was removed")]
    Damaged {
        /// The target.
        path: PathBuf,
        /// What SQLite said.
        verdict: String,
    },
}

impl BackupError {
    /// The exit status `retire-master backup` ends with for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::NoDatabase { .. } => EXIT_NO_DATABASE,
            BackupError::TargetExists { .. } | BackupError::TargetUnwritable { .. } => EXIT_TARGET,
            BackupError::Copy { .. } | BackupError::Damaged { .. } => EXIT_COPY,
        }
    }
}

/// What a finished backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Pages in the copy.
    pub pages: i32,
    /// Bytes of the copy on disk.
    pub bytes: u64,
}

/// Copies the database in `data_dir` to `target`, which must not exist,
/// while a master may be running on it (see the module's doc).
pub fn backup(data_dir: &Path, target: &Path) -> Result<Copied, BackupError> {
    let source_path = data_dir.join(super::DB_FILE);
    if !source_path.is_file() {
        return Err(BackupError::NoDatabase { path: source_path });
    }
    // `create_new` is the check and the creation in one step: no other
    // process can slip a file in between.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(target)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => BackupError::TargetExists {
                path: target.to_path_buf(),
            },
            _ => BackupError::TargetUnwritable {
                path: target.to_path_buf(),
                source,
            },
        })?;
    match copy(&source_path, target) {
        Ok(copied) => Ok(copied),
        Err(err) => {
            // Only the file this call created (and SQLite's journal next
            // to it) is removed.
            let _ = fs::remove_file(target);
            let _ = fs::remove_file(journal_of(target));
            Err(err)
        }
    }
}

/// The rollback journal SQLite keeps next to `target` while it writes.
fn journal_of(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

/// The copy itself, into the empty file `target`.
fn copy(source_path: &Path, target: &Path) -> Result<Copied, BackupError> {
    let failed = |source| BackupError::Copy {
        from: source_path.to_path_buf(),
        to: target.to_path_buf(),
        source,
    };
    // Read-write without `CREATE`: a reader of a WAL database needs to
    // write the shared-memory index, and nothing is created or changed.
    let source = Connection::open_with_flags(
        source_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    source.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    let mut destination = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    // The copy is synced to disk as it is finished.
    destination
        .pragma_update(None, "synchronous", "FULL")
        .map_err(failed)?;
    // One snapshot for the whole copy: a read transaction the backup's
    // steps all use (see the module's doc).
    source.execute_batch("BEGIN").map_err(failed)?;
    source
        .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(failed)?;
    let pages = {
        let backup = Backup::new(&source, &mut destination).map_err(failed)?;
        let mut busy = 0;
        loop {
            match backup.step(PAGES_PER_STEP).map_err(failed)? {
                StepResult::Done => break,
                StepResult::More => {
                    busy = 0;
                    std::thread::sleep(STEP_PAUSE);
                }
                // A lock held for a moment (the busy timeout already
                // waited): try again a few times, then give up.
                _ if busy < MAX_BUSY_STEPS => {
                    busy += 1;
                    std::thread::sleep(STEP_PAUSE);
                }
                _ => {
                    return Err(failed(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked".into()),
                    )))
                }
            }
        }
        backup.progress().pagecount
    };
    source.execute_batch("COMMIT").map_err(failed)?;
    drop(source);
    let verdict: String = destination
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(failed)?;
    destination.close().map_err(|(_, err)| failed(err))?;
    if verdict != "ok" {
        return Err(BackupError::Damaged {
            path: target.to_path_buf(),
            verdict,
        });
    }
    // The new file's name is durable too once its directory is synced.
    if let Some(dir) = target.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if let Err(err) = fs::File::open(dir).and_then(|dir| dir.sync_all()) {
            log::warn!("cannot sync {} after the backup: {err}", dir.display());
        }
    }
    let bytes = fs::metadata(target).map(|meta| meta.len()).unwrap_or(0);
    Ok(Copied { pages, bytes })
}
