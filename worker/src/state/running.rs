//! Records of the tasks' processes that are running, so that a worker killed with
//! `SIGKILL` (or by the OOM killer, or a crash) has them killed by its next start.
//!
//! A worker that dies that way cannot kill its tasks' process groups, and the master
//! runs those tasks again once the worker is back: without these records both copies
//! would run at once. So every external run is recorded in the state dir while it runs:
//!
//! ```text
//! STATE_DIR/DEVICE_ID/running/MARKER     one small file per running process group
//! ```
//!
//! The file is created **before** the process is spawned, holding the boot id
//! (`/proc/sys/kernel/random/boot_id`), the run's marker (the value of
//! `RETIRE_SANDBOX_ID` in every process of the run, random per worker process) and the
//! worker's own start time; once the process is spawned a second line adds its process
//! group id and its start time (field 22 of `/proc/PID/stat`, clock ticks since boot).
//! The file is removed once the run's group has been killed. Nothing is flushed to
//! disk: the records only need to survive the worker process, not the machine, since a
//! reboot ends every process anyway. So a run costs one file created, written twice and
//! removed.
//!
//! On start, before it registers, [`Ledger::open`] reads the records the previous run
//! of this device left and, for those of the current boot:
//!
//! - kills the process group with `SIGKILL` when its leader (pid = group id) still has
//!   the recorded start time: a pid, and so a group id, that was reused belongs to a
//!   process started later, whose start time differs;
//! - kills every process whose environment carries a recorded marker and that started
//!   no earlier than the recorded worker: that finds the members of a group whose
//!   leader already died, and the processes that left the group with `setsid`.
//!   Markers are random, so no unrelated process carries one;
//! - removes the records.
//!
//! Records of another boot are removed without killing anything.
//!
//! What this cannot catch: a process whose leader died and that both left the
//! group (or lives in a group whose leader died) and rewrote its environment, the same
//! limit as the sweep of `orphans`. Records are also only read by a worker started
//! with the same state dir and device id.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::device::proc;

/// The folder under the device's state dir that holds the records.
pub const RUNNING_DIR: &str = "running";

/// The first word of a record, naming its format.
const RECORD_VERSION: &str = "v1";

/// How long a start waits for the processes it killed to be gone before it goes on:
/// `SIGKILL` is not refused, but a process in uninterruptible sleep (a hung NFS read)
/// dies only when it wakes.
pub const LEFTOVERS_WAIT: Duration = Duration::from_secs(2);

/// Where the kernel tells the current boot apart from the others.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The current boot's id, if the kernel gives it.
fn boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|id| !id.is_empty() && !id.contains(char::is_whitespace))
}

/// The start time of process `pid` (clock ticks since boot), if it is alive.
fn start_time(pid: libc::pid_t) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let stat = proc::parse_stat(&text)?;
    if matches!(stat.state, 'Z' | 'X') {
        return None;
    }
    stat.start_time
}

/// What one record says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    boot_id: String,
    marker: String,
    /// The start time of the worker that ran it: every process of the run started
    /// no earlier.
    worker_start: u64,
    /// The process group and its leader's start time, once spawned.
    group: Option<(libc::pid_t, u64)>,
}

impl Entry {
    /// Reads a record; a record cut short after its first line has no group.
    fn parse(text: &str) -> Option<Entry> {
        let mut lines = text.lines();
        let mut first = lines.next()?.split_whitespace();
        if first.next()? != RECORD_VERSION {
            return None;
        }
        let boot_id = first.next()?.to_string();
        let marker = first.next()?.to_string();
        let worker_start = first.next()?.parse().ok()?;
        let group = lines.next().and_then(|line| {
            let mut words = line.split_whitespace();
            let pgid: libc::pid_t = words.next()?.parse().ok()?;
            let start = words.next()?.parse().ok()?;
            (pgid > 1).then_some((pgid, start))
        });
        Some(Entry {
            boot_id,
            marker,
            worker_start,
            group,
        })
    }
}

/// What a start found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Records read.
    pub records: usize,
    /// Process groups killed because their leader still ran.
    pub groups_killed: usize,
    /// Processes killed because they carried a recorded marker.
    pub processes_killed: usize,
}

/// The records of one device's running process groups.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    /// `None` where the kernel gives no boot id: then nothing is recorded and nothing
    /// killed, since a record could not be told from one of an earlier boot.
    boot_id: Option<String>,
    /// This worker's start time, from `/proc/self/stat`.
    worker_start: u64,
}

impl Ledger {
    /// Opens the records under `device_dir` (creating `running/`, 0700), kills what
    /// the previous run of this device left running, and removes its records. The
    /// caller holds the device's lock (the outbox's), so no other worker uses them.
    pub fn open(device_dir: &Path) -> io::Result<(Ledger, Leftovers)> {
        let dir = device_dir.join(RUNNING_DIR);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let me = rustix::process::getpid().as_raw_pid();
        let worker_start = start_time(me).unwrap_or(0);
        let boot_id = boot_id();
        if boot_id.is_none() {
            log::warn!(
                "{BOOT_ID_PATH} cannot be read: a task's processes left running by a worker \
                 killed with SIGKILL will not be killed at its next start"
            );
        }
        let ledger = Ledger {
            dir,
            boot_id,
            worker_start,
        };
        let leftovers = ledger.kill_leftovers()?;
        Ok((ledger, leftovers))
    }

    /// Kills what the records of the current boot name, and removes every record.
    fn kill_leftovers(&self) -> io::Result<Leftovers> {
        let mut leftovers = Leftovers::default();
        let mut markers: HashMap<String, u64> = HashMap::new();
        let mut killed: Vec<libc::pid_t> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            leftovers.records += 1;
            match (Entry::parse(&text), &self.boot_id) {
                (Some(entry), Some(boot)) if entry.boot_id == *boot => {
                    if let Some((pgid, leader_start)) = entry.group {
                        if start_time(pgid) == Some(leader_start) {
                            log::warn!(
                                "killing process group {pgid}, left running by a task when \
                                 this worker was last stopped abruptly"
                            );
                            // The group is above 1 (`Entry::parse`); one gone meanwhile
                            // is what was wanted.
                            if let Some(group) = Pid::from_raw(pgid) {
                                let _ = kill_process_group(group, Signal::KILL);
                            }
                            killed.push(pgid);
                            leftovers.groups_killed += 1;
                        }
                    }
                    markers.insert(entry.marker, entry.worker_start);
                }
                _ => {}
            }
            if let Err(err) = fs::remove_file(&path) {
                log::warn!("cannot remove {}: {err}", path.display());
            }
        }
        if !markers.is_empty() {
            let groups = killed.clone();
            for (pid, pgid, command) in marked_processes(&markers) {
                if groups.contains(&pgid) {
                    // Killed with its group just now; it only has not died yet.
                    continue;
                }
                log::warn!(
                    "killing process {pid} ({command}), left running by a task when this \
                     worker was last stopped abruptly"
                );
                // The pid is above 1; one gone meanwhile is what was wanted.
                if let Some(process) = Pid::from_raw(pid) {
                    let _ = kill_process(process, Signal::KILL);
                }
                killed.push(pid);
                leftovers.processes_killed += 1;
            }
        }
        wait_until_gone(&killed);
        Ok(leftovers)
    }

    /// Records a run about to be spawned with `marker`. The record is removed when the
    /// returned [`Record`] is dropped, which the caller does once the run's group is
    /// dead. `None` when nothing can be recorded (no boot id).
    pub(crate) fn begin(&self, marker: &str) -> io::Result<Option<Record>> {
        let Some(boot_id) = &self.boot_id else {
            return Ok(None);
        };
        let path = self.dir.join(marker);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let written = writeln!(
            file,
            "{RECORD_VERSION} {boot_id} {marker} {}",
            self.worker_start
        );
        let record = Record {
            path,
            file: Some(file),
        };
        // Dropping the record on an error removes the file again.
        written?;
        Ok(Some(record))
    }
}

/// The live processes (pid, process group, command) carrying one of `markers` in
/// their environment that started no earlier than the worker that recorded the marker.
fn marked_processes(markers: &HashMap<String, u64>) -> Vec<(libc::pid_t, libc::pid_t, String)> {
    let me = rustix::process::getpid().as_raw_pid();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| *pid > 1 && *pid != me)
        .filter_map(|pid| {
            let marker = proc::marker_of(pid)?;
            let not_before = *markers.get(&marker)?;
            let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let stat = proc::parse_stat(&text)?;
            let started = stat.start_time?;
            (started >= not_before && !matches!(stat.state, 'Z' | 'X')).then_some((
                pid,
                stat.pgid,
                stat.command,
            ))
        })
        .collect()
}

/// Waits (at most [`LEFTOVERS_WAIT`]) until every pid in `pids` is gone or a zombie.
fn wait_until_gone(pids: &[libc::pid_t]) {
    let deadline = Instant::now() + LEFTOVERS_WAIT;
    let alive = |pid: &libc::pid_t| start_time(*pid).is_some();
    while pids.iter().any(alive) {
        if Instant::now() >= deadline {
            log::warn!(
                "processes {:?} were sent SIGKILL but still run after {LEFTOVERS_WAIT:?}",
                pids.iter().filter(|pid| alive(pid)).collect::<Vec<_>>()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The record of one run; removed when dropped.
#[derive(Debug)]
pub(crate) struct Record {
    path: PathBuf,
    /// Open until the group is recorded.
    file: Option<fs::File>,
}

impl Record {
    /// Adds the spawned group `pgid` and its leader's start time to the record.
    pub(crate) fn started(&mut self, pgid: libc::pid_t) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let outcome = match start_time(pgid) {
            Some(start) => writeln!(file, "{pgid} {start}"),
            None => Ok(()),
        };
        if let Err(err) = outcome {
            // The marker line still lets the next start find the run's processes.
            log::warn!("cannot complete {}: {err}", self.path.display());
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.file = None;
        if let Err(err) = fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    fn spawn_group(script: &str, marker: &str) -> Child {
        Command::new("/bin/sh")
            .args(["-c", script])
            .env(proc::MARKER_ENV, marker)
            .process_group(0)
            .spawn()
            .expect("spawn sh")
    }

    fn pid_of(child: &Child) -> libc::pid_t {
        libc::pid_t::try_from(child.id()).expect("a pid")
    }

    /// Writes a record as a run would have.
    fn record(dir: &Path, entry: &Entry) {
        let running = dir.join(RUNNING_DIR);
        fs::create_dir_all(&running).expect("mkdir");
        let mut text = format!(
            "{RECORD_VERSION} {} {} {}\n",
            entry.boot_id, entry.marker, entry.worker_start
        );
        if let Some((pgid, start)) = entry.group {
            text.push_str(&format!("{pgid} {start}\n"));
        }
        fs::write(running.join(&entry.marker), text).expect("write the record");
    }

    fn alive(pid: libc::pid_t) -> bool {
        start_time(pid).is_some()
    }

    fn unique_marker(name: &str) -> String {
        format!(
            "test-{}-{name}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    #[test]
    fn records_read_back_and_a_torn_one_has_no_group() {
        let entry = Entry::parse("v1 boot-1 m-1 77\n1234 5678\n").expect("parses");
        assert_eq!(entry.group, Some((1234, 5678)));
        assert_eq!(entry.worker_start, 77);
        assert_eq!(
            Entry::parse("v1 boot-1 m-1 77\n").expect("parses").group,
            None
        );
        assert_eq!(
            Entry::parse("v1 boot-1 m-1 77\n12").expect("parses").group,
            None
        );
        assert!(Entry::parse("v2 boot-1 m-1 77\n").is_none());
        assert!(Entry::parse("").is_none());
    }

    #[test]
    fn a_group_whose_leader_start_time_does_not_match_is_left_alone() {
        let Some(boot) = boot_id() else {
            return;
        };
        let state = tempfile::tempdir().expect("temp dir");
        // A process that took a recorded pid: same pid, a later start time, and no
        // marker of the recorded run.
        let mut stranger = spawn_group("exec sleep 60", "not-a-recorded-marker");
        let pid = pid_of(&stranger);
        let start = start_time(pid).expect("its start time");
        for (name, entry) in [
            (
                "another start time",
                Entry {
                    boot_id: boot.clone(),
                    marker: unique_marker("reused"),
                    worker_start: 0,
                    group: Some((pid, start.saturating_sub(1))),
                },
            ),
            (
                "another boot",
                Entry {
                    boot_id: "00000000-0000-0000-0000-000000000000".into(),
                    marker: unique_marker("rebooted"),
                    worker_start: 0,
                    group: Some((pid, start)),
                },
            ),
        ] {
            record(state.path(), &entry);
            let (_, leftovers) = Ledger::open(state.path()).expect("open");
            assert_eq!(leftovers.records, 1, "{name}");
            assert_eq!(leftovers.groups_killed, 0, "{name}");
            assert!(alive(pid), "{name}: the stranger was killed");
            assert_eq!(
                fs::read_dir(state.path().join(RUNNING_DIR))
                    .expect("list")
                    .count(),
                0,
                "{name}: the record stays"
            );
        }
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    #[test]
    fn a_recorded_group_is_killed_and_so_are_members_whose_leader_died() {
        let Some(boot) = boot_id() else {
            return;
        };
        let state = tempfile::tempdir().expect("temp dir");
        let (ledger, _) = Ledger::open(state.path()).expect("open");
        // A group whose leader runs, as a task's would be recorded.
        let marker = unique_marker("leader");
        let mut record = ledger.begin(&marker).expect("record").expect("a boot id");
        let mut leader = spawn_group("sleep 60 & wait", &marker);
        record.started(pid_of(&leader));
        std::mem::forget(record);
        // A group whose leader already exited, leaving a member (with the marker) behind,
        // recorded before the spawn only, as when a worker dies during one.
        let orphan_marker = unique_marker("orphan");
        let pid_file = state.path().join("orphan.pid");
        let mut quitter = spawn_group(
            &format!("sleep 60 & echo $! > {}", pid_file.display()),
            &orphan_marker,
        );
        quitter.wait().expect("the leader exits");
        let member: libc::pid_t = fs::read_to_string(&pid_file)
            .expect("the member's pid")
            .trim()
            .parse()
            .expect("a pid");
        assert!(alive(member));
        // The member may still be on its way from the quitter's fork to `sleep`; while the
        // kernel sets up the new program its environment (and so its marker) reads as
        // empty, and a start looking right then would not see it. A worker that dies
        // leaves its tasks' processes long past that moment; so does this test.
        wait_until_running(member, "sleep", &orphan_marker);
        record_entry_without_group(state.path(), &boot, &orphan_marker, ledger.worker_start);
        drop(ledger);

        let (_, leftovers) = Ledger::open(state.path()).expect("reopen");
        assert_eq!(leftovers.records, 2);
        assert_eq!(leftovers.groups_killed, 1);
        assert!(leftovers.processes_killed >= 1, "{leftovers:?}");
        leader.wait().expect("the leader was killed");
        assert!(!alive(member), "the member whose leader died still runs");
        assert_eq!(
            fs::read_dir(state.path().join(RUNNING_DIR))
                .expect("list")
                .count(),
            0
        );
    }

    /// How long a test waits for a process it started to reach a state.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Waits (at most [`PATIENCE`]) until `pid` runs `command` with `marker` in its
    /// environment, that is until its exec is complete. There is no event to wait on for
    /// another process's exec, so this reads `/proc` until it says so.
    fn wait_until_running(pid: libc::pid_t, command: &str, marker: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let runs = proc::parse_stat(&text).is_some_and(|stat| stat.command == command);
            // The command name changes before the new environment is in place, so the
            // marker is read after it.
            if runs && proc::marker_of(pid).as_deref() == Some(marker) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} does not run {command} with its marker after {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn record_entry_without_group(dir: &Path, boot: &str, marker: &str, worker_start: u64) {
        record(
            dir,
            &Entry {
                boot_id: boot.to_string(),
                marker: marker.to_string(),
                worker_start,
                group: None,
            },
        );
    }

    #[test]
    fn a_record_is_removed_when_its_run_ends() {
        let state = tempfile::tempdir().expect("temp dir");
        let (ledger, _) = Ledger::open(state.path()).expect("open");
        let Some(record) = ledger.begin("m-1").expect("record") else {
            return;
        };
        assert!(state.path().join(RUNNING_DIR).join("m-1").exists());
        drop(record);
        assert!(!state.path().join(RUNNING_DIR).join("m-1").exists());
    }
}
