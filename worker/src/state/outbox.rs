//! The durable outbox: finished results kept on disk until the master acknowledges them.
//!
//! Every result a task produces is written here **before** it is sent, and forgotten once
//! the master's `ack` for it arrives (the master acks only once the result is durable on
//! its side). So a result survives a dropped connection, a master restart and a restart
//! (or a `kill -9`, or a power cut) of the worker itself: on start the worker loads the
//! outbox and sends it after its register ack.
//!
//! Layout, under the state dir (`--state-dir`, see [`super::default_state_dir`]):
//!
//! ```text
//! STATE_DIR/
//!   DEVICE_ID/                  one directory per device id (mode 0700), so that workers
//!     lock                      with different ids can share a state dir; `lock` is held
//!     outbox/                   (flock) while a worker runs, so two workers never share
//!       log-00000000000000000007.jsonl   one outbox; results go into append-only logs
//! ```
//!
//! A log holds one line per result and one line `{"forget":"MESSAGE_ID"}` per result of
//! it the master acknowledged. A result's line is its `task_result` envelope exactly as
//! it is sent, but for the `timestamp` each send adds: the session encodes a result once
//! ([`protocol::EncodedEnvelope`]), and the same bytes are saved here and written to the
//! socket. Reading a log back decodes each line; lines older workers wrote (without a
//! `sender_id`) read the same way.
//!
//! **Group commit.** [`Outbox::save_all`] appends every result it is given with one
//! `write` and one `fdatasync`, however many there are: the worker hands it all the
//! results that finished while the previous write was on its way to the disk, so a busy
//! worker pays one disk flush per batch instead of one per result, and an idle one pays a
//! single flush per result (no file created, renamed or directory flushed). The directory
//! is flushed only when a new log is created, so that the log itself survives a power cut.
//! A write cut short by a crash leaves at most a torn last line, which was never sent
//! (results are sent only after the flush) and is skipped when the log is read back.
//!
//! **Forgetting** appends a `forget` line to the result's own log, without a flush, so a
//! drained log can always be deleted whole. A forget lost to a power cut only means the
//! result is sent once more, and the master acknowledges a result it already has with
//! `recorded: false` and changes nothing. A log whose results are all forgotten is
//! deleted once a newer log has taken over; the current log is replaced by a new one
//! when it passes [`LOG_BYTES`].
//!
//! **Compaction.** When the logs hold more than twice the bytes of the results still
//! waiting plus two logs' worth, the waiting results are copied into a fresh log (each
//! line checked on the way), which is flushed before the old logs are deleted. So the
//! logs hold at most about `2 × waiting + 2 × LOG_BYTES` between compactions and
//! `3 × waiting + 2 × LOG_BYTES` while one runs: with the bounds below, at most about
//! 776 MiB, and in practice a few MiB. A compaction runs on the worker's loop, as a save
//! does; it copies at most [`MAX_BYTES`].
//!
//! **Failed writes** (a full disk): a log whose write failed may end in a partial line,
//! so nothing more is ever appended to it; the next save starts a new log. The results of
//! the failed write are still sent and kept in memory (the caller logs it). A failed
//! compaction deletes its copy and changes nothing else; none is tried again until the
//! logs have grown by another [`LOG_BYTES`].
//!
//! **Opening** reads every log (and the one-file-per-result `NAME.json` files older
//! workers wrote), keeps the results not forgotten, writes them into a fresh log and only
//! then deletes the old files. A log with an unreadable line *before* a readable one is
//! not a torn write but damage: once its readable results are safe in the new log it is
//! kept aside as `NAME.corrupt` (those files are not counted in any bound; they are for
//! a human to look at). When the rewrite fails, the old files stay as they are and their
//! results are still returned, to be sent again after every start until a rewrite works.
//! A file that cannot be read at all is left alone, with an error in the log.
//!
//! The outbox is bounded ([`MAX_RESULTS`] results, [`MAX_BYTES`] bytes waiting). Past the
//! bound a result is kept in memory only (and still sent), with an error in the log; the
//! session also stops accepting tasks while that many results wait for acks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use protocol::{Envelope, Message};

use crate::session::StoredResult;
use crate::state::try_lock;

/// The most results the outbox keeps on disk at once (10,000): as many as the session
/// lets wait for acks ([`crate::session::MAX_UNACKNOWLEDGED_RESULTS`]).
pub const MAX_RESULTS: usize = crate::session::MAX_UNACKNOWLEDGED_RESULTS;

/// The most bytes of waiting results the outbox keeps at once (256 MiB). One result is at
/// most about 900 KiB (`worker::tasks::executor::MAX_RESULT_BYTES`), so this holds at least 280 of
/// the largest results and many thousands of ordinary ones.
pub const MAX_BYTES: u64 = 256 << 20;

/// A log is left for a new one once it holds this many bytes (4 MiB).
pub const LOG_BYTES: u64 = 4 << 20;

/// The name of the directory inside `STATE_DIR/DEVICE_ID/` that holds the logs.
const OUTBOX_DIR: &str = "outbox";

/// The name of the lock file inside `STATE_DIR/DEVICE_ID/`.
const LOCK_FILE: &str = "lock";

/// How a log's file name starts and ends; the number between is zero-padded so that
/// names sort in the order the logs were made.
const LOG_PREFIX: &str = "log-";
const LOG_SUFFIX: &str = ".jsonl";

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

/// Where a waiting result's line is: which log, at which offset, how long.
#[derive(Debug, Clone, Copy)]
struct Saved {
    log: u64,
    offset: u64,
    len: u64,
}

/// A log file on disk.
#[derive(Debug)]
struct Log {
    /// Results in it not forgotten yet.
    n_waiting: usize,
    /// Its size on disk, as far as this process wrote it.
    n_bytes: u64,
    /// False once a write to it failed: it may end in a partial line now, so nothing
    /// more is appended to it (a line after that would make it look damaged, or be
    /// glued to the partial one and lost).
    appendable: bool,
}

/// A log file open for appending.
#[derive(Debug)]
struct OpenLog {
    number: u64,
    file: File,
}

/// The outbox's writes and flushes go through here: it counts the flushes, and in
/// tests it can run out of space part way through a write, as a full disk does.
#[derive(Debug, Default)]
struct Disk {
    n_flushes: u64,
    /// Bytes that can still be written before writes fail; `None` is no limit.
    #[cfg(test)]
    space_left: Option<u64>,
}

impl Disk {
    fn write(&mut self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(space_left) = self.space_left {
            let fits = usize::try_from(space_left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            file.write_all(&bytes[..fits])?;
            self.space_left = Some(space_left - fits as u64);
            if fits < bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (simulated)",
                ));
            }
            return Ok(());
        }
        file.write_all(bytes)
    }

    fn flush(&mut self, file: &File) -> io::Result<()> {
        self.n_flushes += 1;
        file.sync_data()
    }
}

/// How much of a new log is gathered in memory before it is written.
const WRITE_CHUNK: usize = 1 << 20;

/// One device's outbox directory, locked for this process. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// The results waiting for an ack, by message id.
    waiting: HashMap<String, Saved>,
    /// Bytes of the waiting results' lines.
    n_waiting_bytes: u64,
    /// Every log this process knows on disk, by number.
    logs: BTreeMap<u64, Log>,
    /// The log appended to; `None` until the first save, after a log was left for being
    /// full, and after a failed write.
    current: Option<OpenLog>,
    /// The number the next new log gets.
    next_log: u64,
    /// [`LOG_BYTES`]; smaller in tests.
    log_bytes: u64,
    /// After a failed compaction, none is tried again before the logs hold this many
    /// bytes, so a nearly full disk does not get a full copy attempt on every save.
    compact_not_before: u64,
    disk: Disk,
    /// Holds the flock for as long as the outbox lives.
    _lock: File,
}

impl Outbox {
    /// Opens (creating it if needed) the outbox of `device_id` under `state_dir`, locks
    /// it, and returns it with the results it already held, oldest first. Those are
    /// rewritten into one fresh log, and only then are the older files deleted and
    /// damaged ones set aside. When the rewrite fails (a full disk) the results stay in
    /// their files, are still returned, and are sent again after every start until a
    /// rewrite succeeds (the master ignores the ones it already has).
    pub fn open(
        state_dir: &Path,
        device_id: &str,
    ) -> Result<(Outbox, Vec<StoredResult>), OutboxError> {
        Outbox::open_on(state_dir, device_id, Disk::default())
    }

    /// [`Outbox::open`] with the given disk (tests give one that fills up).
    fn open_on(
        state_dir: &Path,
        device_id: &str,
        disk: Disk,
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
        let found = read_dir(&dir).map_err(io_error(&dir))?;
        let outbox = Outbox {
            dir,
            waiting: HashMap::new(),
            n_waiting_bytes: 0,
            logs: BTreeMap::new(),
            current: None,
            next_log: found.next_log,
            log_bytes: LOG_BYTES,
            compact_not_before: 0,
            disk,
            _lock: lock,
        };
        Ok(outbox.take_over(found))
    }

    /// Rewrites what an earlier run left into a fresh log, then tidies up the old files.
    fn take_over(mut self, found: Found) -> (Outbox, Vec<StoredResult>) {
        if !found.results.is_empty() {
            let lines = found
                .results
                .iter()
                .map(|loaded| Ok((loaded.stored.message_id.clone(), loaded.line.clone())));
            match self.write_new_log(lines) {
                Ok(log) => self.current = Some(log),
                Err(error) => {
                    log::error!(
                        "could not rewrite the {} waiting result(s) in {} into a new log: {error}; \
                         they stay in their files and are sent again at every start until this works",
                        found.results.len(),
                        self.dir.display()
                    );
                    let loaded = found.results.into_iter().map(|loaded| loaded.stored);
                    return (self, loaded.collect());
                }
            }
        }
        // Only now that the results are safe in the new log may the old files go.
        for path in found.obsolete {
            if let Err(error) = fs::remove_file(&path) {
                log::warn!(
                    "could not delete the old outbox file {}: {error}",
                    path.display()
                );
            }
        }
        for (path, why) in found.damaged {
            set_aside(&path, why);
        }
        let loaded = found.results.into_iter().map(|loaded| loaded.stored);
        (self, loaded.collect())
    }

    /// The results waiting in the outbox of `device_id` under `state_dir`, oldest first,
    /// read without taking the lock or changing anything (for tests and diagnostics; a
    /// worker that is writing at the same time may have a last line half written, which
    /// is skipped).
    pub fn peek(state_dir: &Path, device_id: &str) -> io::Result<Vec<StoredResult>> {
        let dir = state_dir.join(device_id).join(OUTBOX_DIR);
        let found = read_dir(&dir)?;
        Ok(found
            .results
            .into_iter()
            .map(|loaded| loaded.stored)
            .collect())
    }

    /// The directory the logs are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many results wait for an ack.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no result waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How many bytes the waiting results take.
    pub fn n_bytes(&self) -> u64 {
        self.n_waiting_bytes
    }

    /// How many bytes this process's logs take on disk (waiting results, forgotten
    /// ones and `forget` lines).
    pub fn n_bytes_on_disk(&self) -> u64 {
        self.logs.values().map(|log| log.n_bytes).sum()
    }

    /// How many times the outbox has flushed a log to disk since it was opened (one per
    /// [`Outbox::save_all`] that wrote anything, one per compaction).
    pub fn n_flushes(&self) -> u64 {
        self.disk.n_flushes
    }

    /// Writes `line` durably under `message_id`; see [`Outbox::save_all`].
    pub fn save(&mut self, message_id: &str, line: &[u8]) -> Result<(), SaveError> {
        match self.save_all([(message_id, line)]).pop() {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Writes every result durably under its message id, with one write and one flush
    /// for the whole batch. Returns the ones that could not be saved, each with why; the
    /// rest are on disk when this returns. Saving an id already saved is a no-op.
    ///
    /// Each result comes as its `task_result` line, exactly as it is sent
    /// ([`protocol::EncodedEnvelope`]: the session encodes a result once, and those
    /// bytes are both saved here and written to the socket); it is stored as it is.
    pub fn save_all<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<(String, SaveError)> {
        let mut failed = Vec::new();
        let mut lines: Vec<(String, &[u8])> = Vec::new();
        let mut in_batch = HashSet::new();
        let mut n_batch_bytes = 0;
        for (message_id, line) in batch {
            if self.waiting.contains_key(message_id) || in_batch.contains(message_id) {
                continue;
            }
            if !is_safe_message_id(message_id) {
                failed.push((
                    message_id.to_string(),
                    SaveError::BadId(message_id.to_string()),
                ));
                continue;
            }
            let size = line.len() as u64;
            if self.waiting.len() + lines.len() >= MAX_RESULTS
                || self.n_waiting_bytes + n_batch_bytes + size > MAX_BYTES
            {
                failed.push((
                    message_id.to_string(),
                    SaveError::Full {
                        n_results: self.waiting.len() + lines.len(),
                        n_bytes: self.n_waiting_bytes + n_batch_bytes,
                    },
                ));
                continue;
            }
            n_batch_bytes += size;
            in_batch.insert(message_id);
            lines.push((message_id.to_string(), line));
        }
        if lines.is_empty() {
            return failed;
        }
        if let Err(error) = self.append(&lines) {
            failed.extend(lines.into_iter().map(|(id, _)| {
                let copy = io::Error::new(error.kind(), error.to_string());
                (id, SaveError::Io(copy))
            }));
            return failed;
        }
        if let Err(error) = self.compact_if_wasteful() {
            // The results are safe in their logs already; only the disk space is not
            // reclaimed yet.
            log::warn!(
                "could not compact the outbox in {}: {error}; trying again after {} more bytes",
                self.dir.display(),
                self.log_bytes
            );
        }
        failed
    }

    /// Forgets the result saved under `message_id` (the master acknowledged it, or
    /// refused it for good). Unknown ids are ignored.
    pub fn remove(&mut self, message_id: &str) {
        let Some(saved) = self.waiting.remove(message_id) else {
            return;
        };
        self.n_waiting_bytes -= saved.len;
        if let Some(log) = self.logs.get_mut(&saved.log) {
            log.n_waiting = log.n_waiting.saturating_sub(1);
        }
        let is_current = self
            .current
            .as_ref()
            .is_some_and(|current| current.number == saved.log);
        let drained = self
            .logs
            .get(&saved.log)
            .is_some_and(|log| log.n_waiting == 0);
        if drained && !is_current {
            self.delete_log(saved.log);
            return;
        }
        if let Err(error) = self.append_forget(saved.log, message_id) {
            log::warn!(
                "could not note in {} that the result {message_id} was acknowledged: {error}; \
                 it will be sent again at the next start (the master will ignore it)",
                self.dir.display()
            );
        }
    }

    /// Appends `{"forget":ID}` to the log that holds the result, without a flush, so
    /// that every log's `forget` lines are about its own results and a drained log can
    /// always be deleted whole. A log that is not appendable gets none: its forgotten
    /// results are sent once more after a restart, which the master ignores.
    fn append_forget(&mut self, number: u64, message_id: &str) -> io::Result<()> {
        if !self.logs.get(&number).is_some_and(|log| log.appendable) {
            return Ok(());
        }
        let line = format!("{{\"forget\":\"{message_id}\"}}\n");
        let written = match self.current.as_mut() {
            Some(current) if current.number == number => {
                self.disk.write(&mut current.file, line.as_bytes())
            }
            _ => {
                // Only results that were waiting when their log was left get here.
                OpenOptions::new()
                    .append(true)
                    .open(self.log_path(number))
                    .and_then(|mut file| self.disk.write(&mut file, line.as_bytes()))
            }
        };
        if let Err(error) = written {
            self.stop_appending_to(number);
            return Err(error);
        }
        if let Some(log) = self.logs.get_mut(&number) {
            log.n_bytes += line.len() as u64;
        }
        self.roll_if_full();
        Ok(())
    }

    /// Appends the lines to the current log (a new one when there is none) with one
    /// write and one flush, and records them as waiting.
    fn append(&mut self, lines: &[(String, &[u8])]) -> io::Result<()> {
        let mut log = match self.current.take() {
            Some(log) => log,
            None => self.create_log()?,
        };
        let number = log.number;
        let mut buffer = Vec::with_capacity(lines.iter().map(|(_, line)| line.len()).sum());
        let mut placed = Vec::with_capacity(lines.len());
        // The real end of the file, not a count kept aside: offsets must match the file
        // whatever happened to it.
        let written = log.file.metadata().and_then(|metadata| {
            let start = metadata.len();
            for (message_id, line) in lines {
                let saved = Saved {
                    log: number,
                    offset: start + buffer.len() as u64,
                    len: line.len() as u64,
                };
                buffer.extend_from_slice(line);
                placed.push((message_id.clone(), saved));
            }
            self.disk.write(&mut log.file, &buffer)?;
            self.disk.flush(&log.file)?;
            Ok(start + buffer.len() as u64)
        });
        let end = match written {
            Ok(end) => end,
            Err(error) => {
                // `log` is dropped here, so the next save starts a new log; what this
                // one held before stays valid and counted.
                self.stop_appending_to(number);
                return Err(error);
            }
        };
        if let Some(entry) = self.logs.get_mut(&number) {
            entry.n_bytes = end;
        }
        for (message_id, saved) in placed {
            self.record(message_id, saved);
        }
        self.current = Some(log);
        self.roll_if_full();
        Ok(())
    }

    /// Counts a result as waiting at `saved`, in place of wherever it was before.
    fn record(&mut self, message_id: String, saved: Saved) {
        if let Some(log) = self.logs.get_mut(&saved.log) {
            log.n_waiting += 1;
        }
        self.n_waiting_bytes += saved.len;
        if let Some(old) = self.waiting.insert(message_id, saved) {
            self.n_waiting_bytes -= old.len;
            if let Some(log) = self.logs.get_mut(&old.log) {
                log.n_waiting = log.n_waiting.saturating_sub(1);
            }
        }
    }

    /// A write to log `number` failed: nothing more goes into it, and it goes at once if
    /// nothing in it waits.
    fn stop_appending_to(&mut self, number: u64) {
        // What a failed write left behind still takes room: count it.
        let size = fs::metadata(self.log_path(number)).map(|metadata| metadata.len());
        if let Some(log) = self.logs.get_mut(&number) {
            log.appendable = false;
            if let Ok(size) = size {
                log.n_bytes = size;
            }
        }
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.number == number)
        {
            self.current = None;
        }
        self.delete_if_drained(number);
    }

    /// Creates the next log (flushing the directory, so that it survives a power cut)
    /// and counts it.
    fn create_log(&mut self) -> io::Result<OpenLog> {
        let number = self.next_log;
        // Moved on first, so that a log that could not be set up never blocks the next.
        self.next_log = number
            .checked_add(1)
            .ok_or_else(|| io::Error::other("the outbox has used up its log numbers"))?;
        let path = self.log_path(number);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)?;
        if let Err(error) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        self.logs.insert(
            number,
            Log {
                n_waiting: 0,
                n_bytes: 0,
                appendable: true,
            },
        );
        Ok(OpenLog { number, file })
    }

    /// Writes the lines into a new log, in chunks, with one flush at the end, and counts
    /// them as waiting there. On failure the new log is deleted and nothing changes.
    fn write_new_log(
        &mut self,
        lines: impl Iterator<Item = io::Result<(String, Vec<u8>)>>,
    ) -> io::Result<OpenLog> {
        let mut log = self.create_log()?;
        let mut placed = Vec::new();
        let mut chunk = Vec::new();
        let mut end = 0;
        let written = || -> io::Result<()> {
            for line in lines {
                let (message_id, line) = line?;
                placed.push((
                    message_id,
                    Saved {
                        log: log.number,
                        offset: end,
                        len: line.len() as u64,
                    },
                ));
                end += line.len() as u64;
                chunk.extend_from_slice(&line);
                if chunk.len() >= WRITE_CHUNK {
                    self.disk.write(&mut log.file, &chunk)?;
                    chunk.clear();
                }
            }
            self.disk.write(&mut log.file, &chunk)?;
            self.disk.flush(&log.file)
        };
        if let Err(error) = written() {
            self.logs.remove(&log.number);
            let _ = fs::remove_file(self.log_path(log.number));
            return Err(error);
        }
        if let Some(entry) = self.logs.get_mut(&log.number) {
            entry.n_bytes = end;
        }
        for (message_id, saved) in placed {
            self.record(message_id, saved);
        }
        Ok(log)
    }

    /// Leaves the current log once it passes [`LOG_BYTES`]; it is deleted when its
    /// last result is forgotten (or at once, when none waits).
    fn roll_if_full(&mut self) {
        let Some(number) = self.current.as_ref().map(|current| current.number) else {
            return;
        };
        if self
            .logs
            .get(&number)
            .is_some_and(|log| log.n_bytes >= self.log_bytes)
        {
            self.current = None;
            self.delete_if_drained(number);
        }
    }

    fn delete_if_drained(&mut self, number: u64) {
        if self.logs.get(&number).is_some_and(|log| log.n_waiting == 0) {
            self.delete_log(number);
        }
    }

    /// Deletes a log nothing waits in. Not flushed: a log that comes back after a power
    /// cut only holds results the master already has.
    fn delete_log(&mut self, number: u64) {
        self.logs.remove(&number);
        let path = self.log_path(number);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => log::error!(
                "could not delete the finished outbox log {}: {error}; \
                 its results will be sent again at the next start (the master will ignore them)",
                path.display()
            ),
        }
    }

    /// Copies the waiting results into a fresh log and deletes the others when the logs
    /// take much more room than the results (see the module docs for the bound). Every
    /// line read back is checked to be the result it should be; on any failure the
    /// copy is deleted, nothing else changes, and no compaction is tried again before
    /// the logs have grown by another [`LOG_BYTES`].
    fn compact_if_wasteful(&mut self) -> io::Result<()> {
        let on_disk = self.n_bytes_on_disk();
        if self.logs.len() < 2
            || on_disk <= 2 * self.n_waiting_bytes + 2 * self.log_bytes
            || on_disk < self.compact_not_before
        {
            return Ok(());
        }
        let mut ordered: Vec<(Saved, String)> = self
            .waiting
            .iter()
            .map(|(message_id, saved)| (*saved, message_id.clone()))
            .collect();
        ordered.sort_by_key(|(saved, _)| (saved.log, saved.offset));
        let dir = self.dir.clone();
        let mut open_log: Option<(u64, File)> = None;
        let lines = ordered.into_iter().map(move |(saved, message_id)| {
            if open_log.as_ref().map(|(number, _)| *number) != Some(saved.log) {
                open_log = Some((saved.log, File::open(log_path_in(&dir, saved.log))?));
            }
            let Some((_, file)) = open_log.as_ref() else {
                return Err(io::Error::other("no log to copy from"));
            };
            let len = usize::try_from(saved.len).map_err(io::Error::other)?;
            let mut line = vec![0; len];
            file.read_exact_at(&mut line, saved.offset)?;
            match parse_log_line(&line) {
                Some(LogLine::Result(stored)) if stored.message_id == message_id => {
                    Ok((message_id, line))
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the outbox's line for {message_id} is not where it should be in log {}",
                        saved.log
                    ),
                )),
            }
        });
        let old: Vec<u64> = self.logs.keys().copied().collect();
        let log = match self.write_new_log(lines) {
            Ok(log) => log,
            Err(error) => {
                self.compact_not_before = on_disk.saturating_add(self.log_bytes);
                return Err(error);
            }
        };
        log::debug!(
            "compacted the outbox: {on_disk} bytes in {} logs became one log of {} bytes ({} results)",
            old.len(),
            self.n_waiting_bytes,
            self.waiting.len()
        );
        self.current = Some(log);
        for number in old {
            self.delete_log(number);
        }
        Ok(())
    }

    fn log_path(&self, number: u64) -> PathBuf {
        log_path_in(&self.dir, number)
    }
}

fn log_path_in(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{LOG_PREFIX}{number:020}{LOG_SUFFIX}"))
}

/// A waiting result read from disk, with its line as written.
struct Loaded {
    stored: StoredResult,
    line: Vec<u8>,
}

/// What is in an outbox directory.
struct Found {
    /// The waiting results, oldest first, each once.
    results: Vec<Loaded>,
    /// Files to delete once the results are safe elsewhere: logs and result files that
    /// were read, and unfinished writes of the older layout.
    obsolete: Vec<PathBuf>,
    /// Files to set aside (with why) once the results are safe elsewhere.
    damaged: Vec<(PathBuf, &'static str)>,
    /// The number for the next log: past every log, set aside or not.
    next_log: u64,
}

/// Reads an outbox directory, changing nothing: the older one-file-per-result `.json`
/// files first (by age), then the logs in order, applying their `forget` lines. A file
/// that cannot be read at all is skipped with an error in the log (and left alone).
fn read_dir(dir: &Path) -> io::Result<Found> {
    let mut single_files = Vec::new();
    let mut logs = Vec::new();
    let mut found = Found {
        results: Vec::new(),
        obsolete: Vec::new(),
        damaged: Vec::new(),
        next_log: 1,
    };
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let log_number = name
            .strip_suffix(".corrupt")
            .unwrap_or(name)
            .strip_prefix(LOG_PREFIX)
            .and_then(|rest| rest.strip_suffix(LOG_SUFFIX))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(number) = log_number {
            // A number that leaves no room after it is not one this outbox made.
            let Some(next) = number.checked_add(1) else {
                continue;
            };
            found.next_log = found.next_log.max(next);
            if !name.ends_with(".corrupt") {
                logs.push((number, path));
            }
        } else if name.ends_with(".tmp") {
            found.obsolete.push(path);
        } else if name.ends_with(".json") {
            let modified = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            single_files.push((modified, path));
        }
    }
    single_files.sort();
    logs.sort();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut results: Vec<Option<Loaded>> = Vec::new();
    let mut keep = |loaded: Loaded| {
        if !index.contains_key(&loaded.stored.message_id) {
            index.insert(loaded.stored.message_id.clone(), results.len());
            results.push(Some(loaded));
        }
    };
    for (_, path) in single_files {
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                log::error!("could not read {}: {error}; left as it is", path.display());
                continue;
            }
        };
        match parse_single_file(&path, &bytes) {
            Some(stored) => {
                let mut line = bytes;
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                keep(Loaded { stored, line });
                found.obsolete.push(path);
            }
            None => found.damaged.push((path, "is not a readable task_result")),
        }
    }
    let mut forgotten = Vec::new();
    for (_, path) in logs {
        match read_log(&path, &mut keep, &mut forgotten) {
            Ok(true) => found.obsolete.push(path),
            Ok(false) => found
                .damaged
                .push((path, "has unreadable lines between readable ones")),
            Err(error) => {
                log::error!("could not read {}: {error}; left as it is", path.display())
            }
        }
    }
    for message_id in forgotten {
        if let Some(&position) = index.get(&message_id) {
            results[position] = None;
        }
    }
    found.results = results.into_iter().flatten().collect();
    Ok(found)
}

/// Reads one log line by line, handing each result to `keep` and each forgotten id to
/// `forgotten`. `Ok(false)` when an unreadable line comes before a readable one (damage,
/// not a torn last write: the readable results are still handed over).
fn read_log(
    path: &Path,
    keep: &mut impl FnMut(Loaded),
    forgotten: &mut Vec<String>,
) -> io::Result<bool> {
    let mut reader = io::BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut unreadable_before = false;
    let mut intact = true;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(intact);
        }
        match parse_log_line(&line) {
            Some(parsed) => {
                if unreadable_before {
                    intact = false;
                }
                match parsed {
                    LogLine::Result(stored) => keep(Loaded {
                        stored,
                        line: line.clone(),
                    }),
                    LogLine::Forget(message_id) => forgotten.push(message_id),
                }
            }
            // Unreadable lines at the very end are a write torn by a crash, never sent.
            None => unreadable_before = true,
        }
    }
}

/// Moves a damaged file aside as `NAME.corrupt` and says so.
fn set_aside(path: &Path, why: &str) {
    let mut aside = path.to_path_buf().into_os_string();
    aside.push(".corrupt");
    log::error!(
        "{} {why}; moved it aside as {} (its readable results are still sent)",
        path.display(),
        Path::new(&aside).display()
    );
    if let Err(error) = fs::rename(path, &aside) {
        log::error!("could not move {} aside: {error}", path.display());
    }
}

/// One line of a log.
enum LogLine {
    Result(StoredResult),
    Forget(String),
}

/// The prefix of a `forget` line; the outbox writes these itself, always this way.
const FORGET_PREFIX: &[u8] = b"{\"forget\":\"";

fn parse_log_line(line: &[u8]) -> Option<LogLine> {
    let line = line.strip_suffix(b"\n")?;
    if let Some(rest) = line.strip_prefix(FORGET_PREFIX) {
        let id = std::str::from_utf8(rest.strip_suffix(b"\"}")?).ok()?;
        return is_safe_message_id(id).then(|| LogLine::Forget(id.to_string()));
    }
    let envelope = Envelope::decode(line).ok()?;
    let message_id = envelope.message_id?;
    match envelope.message {
        Message::TaskResult(result) => Some(LogLine::Result(StoredResult { message_id, result })),
        _ => None,
    }
}

/// A file of the older one-file-per-result layout back into a result; `None` when it is
/// not one of ours.
fn parse_single_file(path: &Path, bytes: &[u8]) -> Option<StoredResult> {
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

/// Whether `id` is safe as a message id in the outbox: ASCII letters, digits, `-` and
/// `_`, not empty, not too long (so it can name a file and needs no escaping in a
/// `forget` line). The session's ids (`res-PREFIX-N`) always are.
fn is_safe_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EncodedEnvelope, ResultStatus, TaskResult};
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

    /// Saving as the worker does: each result's line, encoded once under its id.
    trait Put {
        fn put(&mut self, message_id: &str, result: &TaskResult) -> Result<(), SaveError>;
        fn put_all(&mut self, batch: &[(&str, &TaskResult)]) -> Vec<(String, SaveError)>;
    }

    impl Put for Outbox {
        fn put(&mut self, message_id: &str, result: &TaskResult) -> Result<(), SaveError> {
            self.save(message_id, encoded(message_id, result).as_bytes())
        }

        fn put_all(&mut self, batch: &[(&str, &TaskResult)]) -> Vec<(String, SaveError)> {
            let lines: Vec<(&str, EncodedEnvelope)> = batch
                .iter()
                .map(|(id, result)| (*id, encoded(id, result)))
                .collect();
            self.save_all(lines.iter().map(|(id, line)| (*id, line.as_bytes())))
        }
    }

    fn encoded(message_id: &str, result: &TaskResult) -> EncodedEnvelope {
        EncodedEnvelope::new(
            &Envelope::new(Message::TaskResult(result.clone())).with_id(message_id),
        )
    }

    fn stored(message_id: &str, task_id: &str, attempt: u32) -> StoredResult {
        StoredResult {
            message_id: message_id.into(),
            result: result(task_id, attempt),
        }
    }

    /// How long a test waits for the lock of an outbox it dropped to be free again.
    const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

    /// Opens the outbox of `pi` under `state` again, after the test dropped it.
    ///
    /// The lock can outlive `drop(outbox)` for a moment: another test of this process
    /// may be spawning a process right then, and between its fork and its exec the
    /// child holds a copy of every open file description, the lock's included
    /// (close-on-exec closes it only at the exec). A worker holds its lock for its whole
    /// life, so while it runs such a copy changes nothing; only a start a moment after a
    /// worker exited in the middle of a spawn could see it. Tests reopen in the process
    /// that dropped the outbox, so they wait for the release (a blocking `flock` on
    /// another thread, at most [`LOCK_PATIENCE`]) instead of failing with `InUse`.
    fn reopen(state: &Path) -> (Outbox, Vec<StoredResult>) {
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match Outbox::open(state, "pi") {
                Err(OutboxError::InUse { path }) => {
                    wait_for_the_lock(&path.join(LOCK_FILE), deadline);
                }
                other => return other.expect("reopen"),
            }
        }
    }

    /// Waits until the lock at `path` can be taken (taking it and letting it go at
    /// once), at most until `deadline`.
    fn wait_for_the_lock(path: &Path, deadline: std::time::Instant) {
        let file = File::open(path).expect("open the lock file");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let taken = rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive);
            // `file` is closed here, which lets the lock go again.
            let _ = sender.send(taken);
        });
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match receiver.recv_timeout(left) {
            Ok(taken) => taken.expect("flock"),
            Err(_) => panic!(
                "{} was still locked after {LOCK_PATIENCE:?}",
                path.display()
            ),
        }
    }

    #[test]
    fn a_forked_child_holds_the_lock_until_it_execs_and_reopen_waits_for_it() {
        use std::os::unix::process::CommandExt;
        let state = tempfile::tempdir().expect("temp dir");
        let (outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        // A child that stops between its fork and its exec until the pipe has a byte.
        // Close-on-exec, so no other test's child keeps them.
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("a pipe");
        let (gate_read, gate_write) = pipe();
        let (forked_read, forked_write) = pipe();
        let gate = std::os::fd::AsRawFd::as_raw_fd(&gate_read);
        let forked = std::os::fd::AsRawFd::as_raw_fd(&forked_write);
        let mut command = std::process::Command::new("/bin/true");
        // SAFETY: the closure only makes the system calls `write` and `read` on fds that
        // stay open in the child; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let gate = std::os::fd::BorrowedFd::borrow_raw(gate);
                let forked = std::os::fd::BorrowedFd::borrow_raw(forked);
                let _ = rustix::io::write(forked, b"f");
                let _ = rustix::io::read(gate, &mut [0u8; 1]);
                Ok(())
            });
        }
        let spawner = std::thread::spawn(move || command.status().expect("run true"));
        rustix::io::read(&forked_read, &mut [0u8; 1]).expect("the child forked");
        drop(outbox);
        // The child's copy of the lock's file description keeps the lock.
        assert!(matches!(
            Outbox::open(state.path(), "pi"),
            Err(OutboxError::InUse { .. })
        ));
        let release = std::thread::spawn(move || {
            rustix::io::write(&gate_write, b"g").expect("let the child exec");
        });
        let (_outbox, loaded) = reopen(state.path());
        assert!(loaded.is_empty());
        release.join().expect("the gate opened");
        assert!(spawner.join().expect("the spawn").success());
    }

    /// The names of the files in `dir`, sorted.
    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read the outbox")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// The bytes the files in `dir` really take.
    fn real_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("read the outbox")
            .map(|entry| entry.expect("an entry").metadata().expect("stat").len())
            .sum()
    }

    /// The ids `Outbox::peek` finds for device `pi`.
    fn peeked_ids(state: &Path) -> Vec<String> {
        Outbox::peek(state, "pi")
            .expect("peek")
            .into_iter()
            .map(|stored| stored.message_id)
            .collect()
    }

    #[test]
    fn saved_results_survive_reopening_and_forgotten_ones_do_not() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, loaded) = Outbox::open(state.path(), "pi").expect("open");
        assert!(loaded.is_empty());
        outbox.put("res-a-1", &result("t-1", 1)).expect("save");
        outbox.put("res-a-2", &result("t-2", 3)).expect("save");
        outbox
            .put("res-a-2", &result("t-2", 3))
            .expect("saving twice is a no-op");
        assert_eq!(outbox.len(), 2);
        outbox.remove("res-a-1");
        outbox.remove("res-unknown");
        assert_eq!(outbox.len(), 1);
        let n_bytes = outbox.n_bytes();
        // A reader sees the same while the worker runs.
        assert_eq!(peeked_ids(state.path()), ["res-a-2"]);
        drop(outbox);

        let (outbox, loaded) = reopen(state.path());
        assert_eq!(loaded, vec![stored("res-a-2", "t-2", 3)]);
        assert_eq!(outbox.n_bytes(), n_bytes);
        assert!(outbox.dir().starts_with(state.path().join("pi")));
        // Opening rewrote the waiting result into one fresh log: the task_result line
        // as sent, and nothing else.
        let names = file_names(outbox.dir());
        assert_eq!(names, ["log-00000000000000000002.jsonl"]);
        let text = fs::read_to_string(outbox.dir().join(&names[0])).expect("read");
        assert_eq!(text.lines().count(), 1);
        let wire: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(wire["message_type"], "task_result");
        assert_eq!(wire["message_id"], "res-a-2");
        assert_eq!(wire["data"]["attempt"], 3);
        assert_eq!(outbox.n_bytes_on_disk(), text.len() as u64);
    }

    #[test]
    fn a_batch_goes_into_one_log_and_only_bad_entries_fail() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        let one = result("t-1", 1);
        let two = result("t-2", 1);
        let three = result("t-3", 2);
        let failed = outbox.put_all(&[
            ("res-b-1", &one),
            ("../escape", &two),
            ("res-b-3", &three),
            ("res-b-1", &one),
        ]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "../escape");
        assert!(matches!(failed[0].1, SaveError::BadId(_)));
        assert_eq!(outbox.len(), 2);
        // One flush for the whole batch.
        assert_eq!(outbox.n_flushes(), 1);
        assert_eq!(file_names(outbox.dir()).len(), 1);
        assert_eq!(peeked_ids(state.path()), ["res-b-1", "res-b-3"]);
        // An empty batch writes nothing.
        assert!(outbox.put_all(&[]).is_empty());
        assert_eq!(outbox.len(), 2);
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

    /// A `task_result` line as the outbox writes it.
    fn line(message_id: &str, task_id: &str) -> String {
        let mut envelope = Envelope::new(Message::TaskResult(result(task_id, 1)));
        envelope.message_id = Some(message_id.into());
        String::from_utf8(envelope.to_line()).expect("utf-8")
    }

    #[test]
    fn torn_writes_damaged_logs_and_older_files_are_handled_on_open() {
        let state = tempfile::tempdir().expect("temp dir");
        let dir = state.path().join("pi").join("outbox");
        fs::create_dir_all(&dir).expect("mkdir");
        // The older layout: one file per result, plus leftovers of its writes.
        fs::write(dir.join("res-old-1.json"), line("res-old-1", "t-old")).expect("write");
        fs::write(dir.join("res-old-2.tmp"), b"{\"message_type\":\"task_re").expect("write");
        fs::write(dir.join("res-old-3.json"), b"").expect("write");
        fs::write(
            dir.join("res-old-4.json"),
            b"{\"message_type\":\"heartbeat\",\"message_id\":\"res-old-4\"}\n",
        )
        .expect("write");
        // A log whose last write was torn by a crash: the whole lines count, the torn
        // tail (never sent) does not, and a forget line applies to an earlier log too.
        let torn = format!(
            "{}{}{{\"forget\":\"res-old-1\"}}\n{}",
            line("res-x-1", "t-x1"),
            line("res-x-2", "t-x2"),
            &line("res-x-3", "t-x3")[..40]
        );
        fs::write(dir.join("log-00000000000000000004.jsonl"), torn).expect("write");
        // A log damaged in the middle: its readable results are kept, the file set aside.
        let damaged = format!(
            "{}garbage\n{}",
            line("res-y-1", "t-y1"),
            line("res-y-2", "t-y2")
        );
        fs::write(dir.join("log-00000000000000000009.jsonl"), damaged).expect("write");

        let (outbox, loaded) = Outbox::open(state.path(), "pi").expect("open");
        let ids: Vec<&str> = loaded
            .iter()
            .map(|stored| stored.message_id.as_str())
            .collect();
        assert_eq!(ids, ["res-x-1", "res-x-2", "res-y-1", "res-y-2"]);
        assert_eq!(loaded[1], stored("res-x-2", "t-x2", 1));
        assert_eq!(outbox.len(), 4);
        assert_eq!(
            file_names(&dir),
            [
                "log-00000000000000000009.jsonl.corrupt",
                "log-00000000000000000010.jsonl",
                "res-old-3.json.corrupt",
                "res-old-4.json.corrupt",
            ]
        );
        drop(outbox);
        // Reopening finds the same results, now all in one log.
        let (_outbox, again) = reopen(state.path());
        assert_eq!(again, loaded);
    }

    /// Opens the outbox of `pi` with logs that are left after about four results, and
    /// says how long one result's line is.
    fn open_with_small_logs(state: &Path) -> (Outbox, u64) {
        let (mut outbox, _) = Outbox::open(state, "pi").expect("open");
        let one_line = line("res-c-00000", "t-00000").len() as u64;
        outbox.log_bytes = 4 * one_line;
        (outbox, one_line)
    }

    #[test]
    fn full_logs_are_left_deleted_when_drained_and_compacted_when_wasteful() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = open_with_small_logs(state.path());
        // Each round leaves one result unacknowledged and four acknowledged at once, so
        // every log would stay pinned by one waiting result if nothing compacted them.
        let mut pinned = Vec::new();
        let mut most_files = 0;
        let mut most_on_disk = 0;
        for round in 0..10 {
            for idx in 0..5 {
                let id = format!("res-c-{round:02}{idx:03}");
                outbox
                    .put(&id, &result(&format!("t-{round}-{idx}"), 1))
                    .expect("save");
                if idx == 0 {
                    pinned.push(id);
                } else {
                    outbox.remove(&id);
                }
                most_files = most_files.max(file_names(outbox.dir()).len());
                most_on_disk = most_on_disk.max(real_bytes(outbox.dir()));
            }
        }
        assert_eq!(outbox.len(), 10);
        assert_eq!(outbox.n_bytes_on_disk(), real_bytes(outbox.dir()));
        // Drained logs went as soon as a newer one took over, and pinned ones were copied
        // into a fresh log whenever the logs held far more than the waiting results
        // (without that there would be ten pinned logs and the current one).
        assert!(most_files < 10, "{most_files} files at once");
        let bound = 2 * outbox.n_bytes() + 3 * outbox.log_bytes;
        assert!(
            most_on_disk <= bound,
            "{most_on_disk} bytes on disk, bound {bound}"
        );
        assert_eq!(peeked_ids(state.path()), pinned);
        drop(outbox);
        let (_outbox, loaded) = reopen(state.path());
        let ids: Vec<String> = loaded.into_iter().map(|stored| stored.message_id).collect();
        assert_eq!(ids, pinned);
    }

    /// Opens the outbox of `pi` on a disk with `space_left` bytes free.
    fn open_with_space(state: &Path, space_left: Option<u64>) -> (Outbox, Vec<StoredResult>) {
        Outbox::open_on(
            state,
            "pi",
            Disk {
                n_flushes: 0,
                space_left,
            },
        )
        .expect("open")
    }

    fn ids(stored: &[StoredResult]) -> Vec<&str> {
        stored
            .iter()
            .map(|stored| stored.message_id.as_str())
            .collect()
    }

    #[test]
    fn a_forget_line_cut_short_by_a_full_disk_loses_no_later_result() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        outbox.put("res-a-1", &result("t-1", 1)).expect("save");
        outbox.put("res-a-2", &result("t-2", 1)).expect("save");
        // The disk fills up in the middle of the forget line for res-a-1.
        outbox.disk.space_left = Some(5);
        outbox.remove("res-a-1");
        // Space again: the next results must not follow the partial line.
        outbox.disk.space_left = None;
        outbox.put("res-a-3", &result("t-3", 1)).expect("save");
        outbox.put("res-a-4", &result("t-4", 1)).expect("save");
        outbox.remove("res-a-4");
        assert_eq!(outbox.n_bytes_on_disk(), real_bytes(outbox.dir()));
        drop(outbox);
        let (_outbox, loaded) = reopen(state.path());
        // res-a-1 comes back (its forget was lost, the master will ignore it); every
        // result still waiting is there.
        assert_eq!(ids(&loaded), ["res-a-1", "res-a-2", "res-a-3"]);
        assert_eq!(loaded[2], stored("res-a-3", "t-3", 1));
    }

    #[test]
    fn a_save_that_fails_half_way_is_reported_and_the_next_one_starts_a_new_log() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        outbox.put("res-a-1", &result("t-1", 1)).expect("save");
        outbox.disk.space_left = Some(30);
        let one = result("t-2", 1);
        let two = result("t-3", 1);
        let failed = outbox.put_all(&[("res-a-2", &one), ("res-a-3", &two)]);
        assert_eq!(failed.len(), 2);
        for (_, error) in &failed {
            match error {
                SaveError::Io(error) => assert_eq!(error.kind(), io::ErrorKind::StorageFull),
                other => panic!("expected an I/O error, got {other:?}"),
            }
        }
        assert_eq!(outbox.len(), 1);
        outbox.disk.space_left = None;
        outbox.put("res-a-4", &result("t-4", 1)).expect("save");
        outbox.remove("res-a-1");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.n_bytes_on_disk(), real_bytes(outbox.dir()));
        drop(outbox);
        let (_outbox, loaded) = reopen(state.path());
        // The first log, torn by the failed write, went as soon as res-a-1 was
        // acknowledged; res-a-4 is there; the failed ones were never durable.
        assert_eq!(ids(&loaded), ["res-a-4"]);
    }

    #[test]
    fn a_full_disk_at_start_keeps_the_old_files_until_a_rewrite_works() {
        let state = tempfile::tempdir().expect("temp dir");
        let dir = state.path().join("pi").join("outbox");
        fs::create_dir_all(&dir).expect("mkdir");
        let damaged = format!(
            "{}garbage\n{}",
            line("res-y-1", "t-y1"),
            line("res-y-2", "t-y2")
        );
        fs::write(dir.join("log-00000000000000000003.jsonl"), &damaged).expect("write");
        fs::write(dir.join("res-old-1.json"), line("res-old-1", "t-old")).expect("write");
        {
            let (mut outbox, loaded) = open_with_space(state.path(), Some(100));
            assert_eq!(ids(&loaded), ["res-old-1", "res-y-1", "res-y-2"]);
            // Nothing was moved or deleted, and new results still find room later.
            assert_eq!(
                file_names(&dir),
                ["log-00000000000000000003.jsonl", "res-old-1.json"]
            );
            outbox.disk.space_left = None;
            outbox.put("res-z-1", &result("t-z1", 1)).expect("save");
        }
        let (_outbox, loaded) = reopen(state.path());
        assert_eq!(ids(&loaded), ["res-old-1", "res-y-1", "res-y-2", "res-z-1"]);
        assert_eq!(
            file_names(&dir),
            [
                "log-00000000000000000003.jsonl.corrupt",
                "log-00000000000000000006.jsonl"
            ]
        );
    }

    #[test]
    fn a_failed_compaction_changes_nothing_and_waits_before_trying_again() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, one_line) = open_with_small_logs(state.path());
        let mut pinned = Vec::new();
        let save = |outbox: &mut Outbox, round: usize, idx: usize| {
            let id = format!("res-c-{round:02}{idx:03}");
            outbox
                .put(&id, &result(&format!("t-{round}-{idx}"), 1))
                .expect("save");
            id
        };
        // Every save has room for itself (and a forget line) but not for a copy of two
        // pinned results, so the first compaction that is tried fails.
        let room = one_line + 64;
        let mut tried = false;
        'rounds: for round in 0..20 {
            for idx in 0..5 {
                let flushes_before = outbox.n_flushes();
                outbox.disk.space_left = Some(room);
                let id = save(&mut outbox, round, idx);
                if idx == 0 {
                    pinned.push(id);
                } else {
                    outbox.remove(&id);
                }
                if outbox.compact_not_before > 0 {
                    // The save went through; the copy was tried, failed and was undone.
                    assert_eq!(outbox.n_flushes(), flushes_before + 1);
                    tried = true;
                    break 'rounds;
                }
            }
        }
        outbox.disk.space_left = None;
        assert!(tried, "no compaction was tried");
        assert!(pinned.len() >= 2);
        assert_eq!(outbox.len(), pinned.len());
        assert_eq!(outbox.n_bytes_on_disk(), real_bytes(outbox.dir()));
        // Not tried again at once, although there is room now: the next save only
        // appends.
        let flushes_before = outbox.n_flushes();
        pinned.push(save(&mut outbox, 99, 0));
        assert_eq!(outbox.n_flushes(), flushes_before + 1);
        drop(outbox);
        let (_outbox, loaded) = reopen(state.path());
        let loaded: Vec<String> = loaded.into_iter().map(|stored| stored.message_id).collect();
        assert_eq!(loaded, pinned);
    }

    #[test]
    fn the_outbox_refuses_to_grow_past_its_bound() {
        let state = tempfile::tempdir().expect("temp dir");
        let (mut outbox, _) = Outbox::open(state.path(), "pi").expect("open");
        // Pretend the disk already holds nearly the most bytes allowed.
        outbox.n_waiting_bytes = MAX_BYTES - 10;
        match outbox.put("res-a-1", &result("t-1", 1)) {
            Err(SaveError::Full { .. }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        outbox.n_waiting_bytes = 0;
        let nowhere = Saved {
            log: 0,
            offset: 0,
            len: 0,
        };
        for idx in 0..MAX_RESULTS - 1 {
            outbox.waiting.insert(format!("fake-{idx}"), nowhere);
        }
        // One more fits; in a batch of two, the second does not.
        let failed = outbox.put_all(&[
            ("res-a-1", &result("t-1", 1)),
            ("res-a-2", &result("t-2", 1)),
        ]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "res-a-2");
        assert!(matches!(failed[0].1, SaveError::Full { .. }));
        assert!(matches!(
            outbox.put("../escape", &result("t-1", 1)),
            Err(SaveError::BadId(_))
        ));
    }
}
