//! The durable outbox: finished results kept on disk until the master acknowledges them.
//!
//! Every result a task produces is written here **before** it is sent, and deleted once
//! the master's `ack` for it arrives (the master acks only once the result is durable on
//! its side). So a result survives a dropped connection, a master restart and a restart
//! (or a `kill -9`, or a power cut) of the worker itself: on start the worker loads the
//! outbox and sends it after its register ack.
//!
//! Layout, under the state dir (`--state-dir`, see [`default_state_dir`]):
//!
//! ```text
//! STATE_DIR/
//!   DEVICE_ID/            one directory per device id (mode 0700), so that workers with
//!     lock                different ids can share a state dir; `lock` is held (flock)
//!     outbox/             while a worker runs, so two workers never share one outbox
//!       res-5f3a9c01-9.json   one file per result: the `task_result` line as sent
//! ```
//!
//! A result is written to `NAME.tmp`, fsynced, renamed to `NAME.json`, and the directory
//! is fsynced, so a file is either whole or absent. Deleting after the ack is not fsynced:
//! a deletion lost to a power cut only means the result is sent once more, and the master
//! acknowledges a result it already has with `recorded: false` and changes nothing.
//!
//! The outbox is bounded ([`MAX_RESULTS`] files, [`MAX_BYTES`] bytes). Past the bound a
//! result is kept in memory only (and still sent), with an error in the log; the session
//! also stops accepting tasks while that many results wait for acks.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use protocol::{Envelope, Message, TaskResult};

/// The most results the outbox keeps on disk at once.
pub const MAX_RESULTS: usize = 10_000;

/// The most bytes the outbox keeps on disk at once (256 MiB). One result is at most about
/// 900 KiB (`worker::tasks::MAX_RESULT_BYTES`), so this holds at least 280 of the largest
/// results and many thousands of ordinary ones.
pub const MAX_BYTES: u64 = 256 << 20;

/// The name of the directory inside `STATE_DIR/DEVICE_ID/` that holds the results.
const OUTBOX_DIR: &str = "outbox";

/// The name of the lock file inside `STATE_DIR/DEVICE_ID/`.
const LOCK_FILE: &str = "lock";

/// The directory name the default state dir ends in.
const APP_DIR: &str = "retire-worker";

/// The state dir used when none is given: `$XDG_STATE_HOME/retire-worker`, else
/// `~/.local/state/retire-worker`, else (no home at all, as under some service
/// managers) `retire-worker-state` next to the binary. `None` only when not even the
/// binary's own path is known.
pub fn default_state_dir() -> Option<PathBuf> {
    state_dir_from(
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
        std::env::current_exe().ok(),
    )
}

/// [`default_state_dir`] from explicit values, for tests.
fn state_dir_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
    exe: Option<PathBuf>,
) -> Option<PathBuf> {
    // The XDG base directory spec says a relative value is invalid and must be ignored.
    if let Some(xdg) = xdg_state_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
    {
        return Some(xdg.join(APP_DIR));
    }
    if let Some(home) = home.filter(|home| !home.is_empty()) {
        return Some(PathBuf::from(home).join(".local/state").join(APP_DIR));
    }
    Some(exe?.parent()?.join(format!("{APP_DIR}-state")))
}

/// Why the outbox could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A directory or file of the state dir could not be created or read.
    #[error("state dir {path}: {source}")]
    Io {
        /// What could not be used.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another worker process holds the lock on this device's state.
    #[error(
        "state dir {path} is in use by another worker with the same device id; \
         give each worker its own --id or --state-dir"
    )]
    InUse {
        /// The locked directory.
        path: PathBuf,
    },
}

/// Why a result could not be saved. The result is still sent; it is only not durable.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The outbox holds [`MAX_RESULTS`] files or would pass [`MAX_BYTES`].
    #[error("the outbox is full ({n_results} results, {n_bytes} bytes; at most {MAX_RESULTS} results and {MAX_BYTES} bytes)")]
    Full {
        /// Results on disk now.
        n_results: usize,
        /// Bytes on disk now.
        n_bytes: u64,
    },
    /// The message id cannot be a file name.
    #[error("message id {0:?} cannot name a file")]
    BadId(String),
    /// Writing failed (disk full, I/O error, …).
    #[error("writing the result failed: {0}")]
    Io(#[from] io::Error),
}

/// A result loaded from disk: send it again under the same message id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// The `message_id` it was (or would have been) sent with.
    pub message_id: String,
    /// The result.
    pub result: TaskResult,
}

/// One device's outbox directory, locked for this process. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// Bytes of each file on disk, by message id.
    files: BTreeMap<String, u64>,
    n_bytes: u64,
    /// Holds the flock for as long as the outbox lives.
    _lock: File,
}

impl Outbox {
    /// Opens (creating it if needed) the outbox of `device_id` under `state_dir`, locks
    /// it, and returns it with the results it already held, oldest first. Leftover
    /// temporary files (a write cut short by a crash, never sent) are deleted; a file that
    /// cannot be read as a `task_result` is renamed to `NAME.corrupt` and skipped.
    pub fn open(
        state_dir: &Path,
        device_id: &str,
    ) -> Result<(Outbox, Vec<StoredResult>), OutboxError> {
        let device_dir = state_dir.join(device_id);
        let dir = device_dir.join(OUTBOX_DIR);
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error(&dir))?;
        let lock_path = device_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match try_lock(&lock) {
            Ok(true) => {}
            Ok(false) => return Err(OutboxError::InUse { path: device_dir }),
            Err(source) => {
                return Err(OutboxError::Io {
                    path: lock_path,
                    source,
                })
            }
        }
        let mut outbox = Outbox {
            dir,
            files: BTreeMap::new(),
            n_bytes: 0,
            _lock: lock,
        };
        let loaded = outbox.load().map_err(io_error(&outbox.dir))?;
        Ok((outbox, loaded))
    }

    /// The directory the result files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many results are on disk.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no result is on disk.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// How many bytes the results on disk take.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Writes `result` durably under `message_id`; when this returns `Ok` the file is on
    /// disk (fsynced, renamed, directory fsynced). Saving an id already saved is a no-op.
    pub fn save(&mut self, message_id: &str, result: &TaskResult) -> Result<(), SaveError> {
        if self.files.contains_key(message_id) {
            return Ok(());
        }
        if !is_safe_file_stem(message_id) {
            return Err(SaveError::BadId(message_id.to_string()));
        }
        let mut envelope = Envelope::new(Message::TaskResult(result.clone()));
        envelope.message_id = Some(message_id.to_string());
        let line = envelope.to_line();
        let size = line.len() as u64;
        if self.files.len() >= MAX_RESULTS || self.n_bytes + size > MAX_BYTES {
            return Err(SaveError::Full {
                n_results: self.files.len(),
                n_bytes: self.n_bytes,
            });
        }
        let temporary = self.dir.join(format!("{message_id}.tmp"));
        let written = write_synced(&temporary, &line)
            .and_then(|()| fs::rename(&temporary, self.path_of(message_id)))
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(error) = written {
            // Best effort: a leftover temporary file is deleted at the next start anyway.
            let _ = fs::remove_file(&temporary);
            return Err(SaveError::Io(error));
        }
        self.files.insert(message_id.to_string(), size);
        self.n_bytes += size;
        Ok(())
    }

    /// Deletes the result saved under `message_id` (the master acknowledged it, or
    /// refused it for good). Unknown ids are ignored.
    pub fn remove(&mut self, message_id: &str) {
        let Some(size) = self.files.remove(message_id) else {
            return;
        };
        self.n_bytes -= size;
        match fs::remove_file(self.path_of(message_id)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => log::error!(
                "could not delete the acknowledged result {message_id} from {}: {error}; \
                 it will be sent again at the next start (the master will ignore it)",
                self.dir.display()
            ),
        }
    }

    fn path_of(&self, message_id: &str) -> PathBuf {
        self.dir.join(format!("{message_id}.json"))
    }

    /// Reads every result file, oldest first.
    fn load(&mut self) -> io::Result<Vec<StoredResult>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            match path.extension().and_then(|extension| extension.to_str()) {
                Some("tmp") => {
                    log::debug!("deleting the unfinished write {}", path.display());
                    let _ = fs::remove_file(&path);
                }
                Some("json") => {
                    let modified = entry
                        .metadata()
                        .and_then(|metadata| metadata.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((modified, path));
                }
                _ => {}
            }
        }
        found.sort();
        let mut loaded = Vec::new();
        for (_, path) in found {
            let bytes = fs::read(&path)?;
            match parse_stored(&path, &bytes) {
                Some(stored) => {
                    self.files
                        .insert(stored.message_id.clone(), bytes.len() as u64);
                    self.n_bytes += bytes.len() as u64;
                    loaded.push(stored);
                }
                None => {
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    log::error!(
                        "{} is not a readable task_result; moved it aside",
                        path.display()
                    );
                    let _ = fs::rename(&path, aside);
                }
            }
        }
        Ok(loaded)
    }
}

/// A stored file back into a result; `None` when it is not one of ours.
fn parse_stored(path: &Path, bytes: &[u8]) -> Option<StoredResult> {
    let stem = path.file_stem()?.to_str()?;
    let envelope = Envelope::decode(bytes).ok()?;
    let message_id = envelope.message_id?;
    if message_id != stem {
        return None;
    }
    match envelope.message {
        Message::TaskResult(result) => Some(StoredResult { message_id, result }),
        _ => None,
    }
}

/// Whether `stem` can name a file in the outbox without any surprise: ASCII letters,
/// digits, `-` and `_`, not empty, not too long. The session's ids (`res-PREFIX-N`)
/// always are.
fn is_safe_file_stem(stem: &str) -> bool {
    !stem.is_empty()
        && stem.len() <= 200
        && stem
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Creates `path` (mode 0600), writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Takes an exclusive advisory lock on `file` without waiting: `Ok(false)` when another
/// process holds it. The lock ends with the process, so a crashed worker never leaves a
/// stale one behind.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
    let outcome = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if outcome == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ResultStatus;
    use serde_json::json;

    fn result(task_id: &str, attempt: u32) -> TaskResult {
        TaskResult {
            task_id: task_id.into(),
            attempt: Some(attempt),
            status: ResultStatus::Completed,
            execution_time: Some(0.25),
            result: json!({"output": format!("out of {task_id}"), "exit_code": 0}),
            error: None,
        }
    }

    #[test]
    fn saved_results_survive_reopening_and_removed_ones_do_not() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, loaded) = Outbox::open(state.path(), "pi").expect("open");
        assert!(loaded.is_empty());
        outbox.save("res-a-1", &result("t-1", 1)).expect("save");
        outbox.save("res-a-2", &result("t-2", 3)).expect("save");
        outbox
            .save("res-a-2", &result("t-2", 3))
            .expect("saving twice is a no-op");
        assert_eq!(outbox.len(), 2);
        outbox.remove("res-a-1");
        outbox.remove("res-unknown");
        assert_eq!(outbox.len(), 1);
        let n_bytes = outbox.n_bytes();
        drop(outbox);

        let (outbox, loaded) = Outbox::open(state.path(), "pi").expect("reopen");
        assert_eq!(
            loaded,
            vec![StoredResult {
                message_id: "res-a-2".into(),
                result: result("t-2", 3)
            }]
        );
        assert_eq!(outbox.n_bytes(), n_bytes);
        assert!(outbox.dir().starts_with(state.path().join("pi")));
        // The file is the task_result line, as sent.
        let line = fs::read_to_string(outbox.dir().join("res-a-2.json")).expect("read");
        assert!(line.ends_with('\n'));
        let wire: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(wire["message_type"], "task_result");
        assert_eq!(wire["message_id"], "res-a-2");
        assert_eq!(wire["data"]["attempt"], 3);
    }

    #[test]
    fn a_second_worker_with_the_same_id_is_refused_and_other_ids_are_not() {
        let state = tempfile::tempdir().expect("temp dir");
        let (_first, _) = Outbox::open(state.path(), "pi").expect("open");
        match Outbox::open(state.path(), "pi") {
            Err(OutboxError::InUse { path }) => assert_eq!(path, state.path().join("pi")),
            other => panic!("expected InUse, got {other:?}"),
        }
        Outbox::open(state.path(), "laptop").expect("another id has its own outbox");
    }

    #[test]
    fn unfinished_and_corrupt_files_are_cleaned_up() {
        let state = tempfile::tempdir().expect("temp dir");
        let dir = {
            let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
            outbox.save("res-a-1", &result("t-1", 1)).expect("save");
            outbox.dir().to_path_buf()
        };
        fs::write(dir.join("res-a-2.tmp"), b"{\"message_type\":\"task_re").expect("write");
        fs::write(dir.join("res-a-3.json"), b"").expect("write");
        fs::write(
            dir.join("res-a-4.json"),
            b"{\"message_type\":\"heartbeat\",\"message_id\":\"res-a-4\"}\n",
        )
        .expect("write");
        let (outbox, loaded) = Outbox::open(state.path(), "pi").expect("reopen");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].message_id, "res-a-1");
        assert_eq!(outbox.len(), 1);
        assert!(!dir.join("res-a-2.tmp").exists());
        assert!(dir.join("res-a-3.json.corrupt").exists());
        assert!(dir.join("res-a-4.json.corrupt").exists());
    }

    #[test]
    fn the_outbox_refuses_to_grow_past_its_bound() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        // Pretend the disk already holds nearly the most bytes allowed.
        outbox.n_bytes = MAX_BYTES - 10;
        match outbox.save("res-a-1", &result("t-1", 1)) {
            Err(SaveError::Full { .. }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        outbox.n_bytes = 0;
        for idx in 0..MAX_RESULTS {
            outbox.files.insert(format!("fake-{idx}"), 0);
        }
        assert!(matches!(
            outbox.save("res-a-1", &result("t-1", 1)),
            Err(SaveError::Full { .. })
        ));
        assert!(matches!(
            outbox.save("../escape", &result("t-1", 1)),
            Err(SaveError::BadId(_))
        ));
    }

    #[test]
    fn the_default_state_dir_follows_xdg_then_home_then_the_binary() {
        let exe = Some(PathBuf::from("/opt/retire/bin/retire-worker"));
        assert_eq!(
            state_dir_from(
                Some("/var/state".into()),
                Some("/home/pi".into()),
                exe.clone()
            ),
            Some(PathBuf::from("/var/state/retire-worker"))
        );
        assert_eq!(
            state_dir_from(
                Some("relative".into()),
                Some("/home/pi".into()),
                exe.clone()
            ),
            Some(PathBuf::from("/home/pi/.local/state/retire-worker"))
        );
        assert_eq!(
            state_dir_from(None, Some("".into()), exe.clone()),
            Some(PathBuf::from("/opt/retire/bin/retire-worker-state"))
        );
        assert_eq!(state_dir_from(None, None, None), None);
    }
}
