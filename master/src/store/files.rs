//! The data directory and the database files on disk, before SQLite opens
//! them: who may read them, and whether a database is there at all.
//!
//! The data directory is 0700 and `retire.db`, `retire.db-wal` and
//! `retire.db-shm` are 0600, whatever the umask: every payload and result
//! is in them, so no other local user may read them. A start makes an open
//! directory or file private again and logs a warning naming it.
//!
//! A first start is recognised by the absence of `retire.db`, never by its
//! emptiness: a database that is there but empty, not a SQLite database or
//! unreadable is an error naming the file, so a truncated or replaced
//! database is never taken for a fresh install (which would forget every
//! enrolled and revoked device). A missing database is created whole under
//! a temporary name and renamed into place, so a crash during a first
//! start leaves either no database or a complete, empty one, never an
//! empty file.

use rusqlite::Connection;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of the data directory: its owner only.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the database and SQLite's companion files: its owner only.
/// SQLite gives `-wal` and `-shm` the mode of the database file when it
/// creates them, whatever the umask.
pub const FILE_MODE: u32 = 0o600;

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The suffixes of the files SQLite keeps next to the database in WAL mode.
const COMPANIONS: [&str; 2] = ["-wal", "-shm"];

/// The suffix of the database while a first start creates it.
const CREATING_SUFFIX: &str = ".creating";

/// Why the data directory or the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file or directory could not be created, read or protected.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The database file is there but holds nothing.
    #[error(
        "the database {path} is empty (0 bytes): it was truncated or replaced. A first start \
         is recognised by a missing database, not an empty one, so the master will not start \
         afresh and forget every enrolled and revoked device; restore the file from a backup, \
         or move it away to start with an empty database"
    )]
    Empty {
        /// The database file.
        path: PathBuf,
    },
    /// The database file is there but is not a SQLite database.
    #[error(
        "{path} is not a SQLite database (it does not start with SQLite's header); restore the \
         database from a backup, or move this file away to start with an empty database"
    )]
    NotDatabase {
        /// The file.
        path: PathBuf,
    },
    /// The database file is there but cannot be read.
    #[error("cannot read the database {path}: {source}")]
    Unreadable {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The write-ahead log is there without its database.
    #[error(
        "the database {path} is missing but its write-ahead log {wal} is there: the database \
         was moved or deleted without it; put the database back, or move the log away too to \
         start with an empty database"
    )]
    OrphanWal {
        /// The missing database file.
        path: PathBuf,
        /// The write-ahead log left behind.
        wal: PathBuf,
    },
    /// The data directory is on a read-only file system (or was mounted
    /// read-only): the master cannot write its database there.
    #[error(
        "{path}: the data dir's file system is read-only, and the master writes its database \
         there; remount it read-write or give --data-dir a writable directory"
    )]
    ReadOnly {
        /// The file or directory a write was refused for.
        path: PathBuf,
    },
    /// There is no database, and none was to be created (`--check`).
    #[error("no database at {path} (a master creates it at its first start)")]
    Missing {
        /// The database file.
        path: PathBuf,
    },
}

/// The exit status of a master that cannot start because its data dir
/// cannot be written ([`FilesError::ReadOnly`]): 73, sysexits'
/// `EX_CANTCREAT`.
pub const EXIT_READ_ONLY: u8 = 73;

impl FilesError {
    /// The exit status of a master that cannot start for this reason, if
    /// it has its own (see the README): [`EXIT_READ_ONLY`] for a
    /// read-only data dir.
    pub fn exit_code(&self) -> Option<u8> {
        match self {
            FilesError::ReadOnly { .. } => Some(EXIT_READ_ONLY),
            _ => None,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FilesError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::ReadOnlyFilesystem {
            return FilesError::ReadOnly {
                path: path.to_path_buf(),
            };
        }
        FilesError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether a missing database is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A missing database is a first start: create it.
    IfMissing,
    /// A missing database is an error ([`FilesError::Missing`]).
    Never,
}

/// Creates `dir` with mode 0700 if it is missing (its parents as the umask
/// says), or makes it 0700 if other users may open it, with a warning.
pub fn private_dir(dir: &Path) -> Result<(), FilesError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => restrict(dir, meta.permissions().mode(), DIR_MODE),
        Ok(_) => Err(FilesError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            // The mode is masked by the umask, which can only take bits
            // away; setting it again afterwards makes it exact.
            match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {}
                // Another process made it in between: check that one.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io_error(dir)(err)),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_error(dir))
        }
        Err(err) => Err(io_error(dir)(err)),
    }
}

/// Makes `path` (now `mode`) exactly `private` if group or others have any
/// permission on it, and says so.
fn restrict(path: &Path, mode: u32, private: u32) -> Result<(), FilesError> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(private)).map_err(io_error(path))?;
    log::warn!(
        "{} was open to other users (mode {:o}): made it {private:o}",
        path.display(),
        mode & 0o7777
    );
    Ok(())
}

/// Checks the data directory and the database in it before SQLite opens
/// it: the directory is made private, an existing database must be a
/// readable SQLite file (its files are made private), and a missing one is
/// created (`Create::IfMissing`). Returns whether it was created (a first
/// start).
pub fn prepare(data_dir: &Path, db_file: &str, create: Create) -> Result<bool, FilesError> {
    let path = data_dir.join(db_file);
    if create == Create::Never && !data_dir.exists() {
        return Err(FilesError::Missing { path });
    }
    private_dir(data_dir)?;
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let wal = data_dir.join(format!("{db_file}-wal"));
            if fs::metadata(&wal).is_ok_and(|meta| meta.len() > 0) {
                return Err(FilesError::OrphanWal { path, wal });
            }
            if create == Create::Never {
                return Err(FilesError::Missing { path });
            }
            create_database(data_dir, db_file)?;
            return Ok(true);
        }
        Err(err) => return Err(io_error(&path)(err)),
    };
    if !meta.is_file() {
        return Err(FilesError::NotDatabase { path });
    }
    if meta.len() == 0 {
        return Err(FilesError::Empty { path });
    }
    let mut header = [0u8; SQLITE_HEADER.len()];
    let read = fs::File::open(&path).and_then(|mut file| {
        let mut filled = 0;
        while filled < header.len() {
            match file.read(&mut header[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    });
    match read {
        Ok(filled) if filled == header.len() && &header == SQLITE_HEADER => {}
        Ok(_) => return Err(FilesError::NotDatabase { path }),
        Err(source) => return Err(FilesError::Unreadable { path, source }),
    }
    if create == Create::IfMissing {
        // A master writes its database: a read-only data dir is said
        // plainly here, not as SQLite's "unable to open database file".
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
    }
    restrict(&path, meta.permissions().mode(), FILE_MODE)?;
    for suffix in COMPANIONS {
        let companion = data_dir.join(format!("{db_file}{suffix}"));
        match fs::metadata(&companion) {
            Ok(meta) => restrict(&companion, meta.permissions().mode(), FILE_MODE)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(&companion)(err)),
        }
    }
    Ok(false)
}

/// Creates an empty database at `data_dir/db_file`, mode 0600, atomically:
/// it is made whole under a temporary name (SQLite writes its header), made
/// durable, and renamed into place.
fn create_database(data_dir: &Path, db_file: &str) -> Result<(), FilesError> {
    let path = data_dir.join(db_file);
    let creating = data_dir.join(format!("{db_file}{CREATING_SUFFIX}"));
    // What a crash during an earlier first start left.
    for leftover in [
        creating.clone(),
        data_dir.join(format!("{db_file}{CREATING_SUFFIX}-journal")),
    ] {
        match fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(&leftover)(err)),
        }
    }
    // Created with the final mode before SQLite opens it: SQLite keeps the
    // mode of an existing file and gives it to its journal, `-wal` and
    // `-shm` too.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&creating)
        .and_then(|file| file.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
        .map_err(io_error(&creating))?;
    let sqlite = |source: rusqlite::Error| FilesError::Io {
        path: creating.clone(),
        source: io::Error::other(source),
    };
    let connection = Connection::open(&creating).map_err(sqlite)?;
    // Writing the header: `VACUUM` on an empty database writes page 1 (in
    // the rollback journal mode a new file starts in, so no `-wal` is left
    // behind).
    connection.execute_batch("VACUUM").map_err(sqlite)?;
    connection.close().map_err(|(_, source)| sqlite(source))?;
    fs::File::open(&creating)
        .and_then(|file| file.sync_all())
        .map_err(io_error(&creating))?;
    fs::rename(&creating, &path).map_err(io_error(&path))?;
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(data_dir))?;
    log::info!(
        "no database at {}: a first start, so a new one was created (mode {FILE_MODE:o})",
        path.display()
    );
    Ok(())
}
