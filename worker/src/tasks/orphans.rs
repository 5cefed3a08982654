//! Catching the processes that leave a task's process group.
//!
//! Killing a task's process group reaches everything the task started, except a process
//! that moved itself into another group or session (`setsid`, `setpgid`, a daemon's
//! double fork). To catch those, the worker makes itself a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`): when a process of a task dies, its children are handed
//! to the worker instead of to init. An escaped process therefore becomes a child of
//! the worker at the latest when the task's own processes are killed, and
//! [`unregister_and_sweep`] kills and reaps it then.
//!
//! A child of the worker that the worker did not start itself is a task's orphan when
//! its process group is the group of a task that just ended, or when its environment
//! carries [`MARKER_ENV`](crate::device::proc::MARKER_ENV) with a marker this worker
//! process handed out to a task that is no longer running. Children
//! with neither (a program embedding the worker may start its own) are never touched,
//! and neither is one whose marker is a running task's: its group id may be an ended
//! task's leader pid reused.
//! What remains possible is documented in `docs/sandbox.md`: a process that both leaves
//! the group and rewrites its environment survives until the worker stops.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use rustix::io::Errno;
use rustix::process::{kill_process, kill_process_group, waitpid, Pid, Signal, WaitOptions};

use crate::device::proc::{marker_of, parse_stat, ProcStat};

/// How many ended task groups are remembered, so that members of a group that die
/// late (and become the worker's zombies) are still recognised and reaped.
const REMEMBERED_GROUPS: usize = 256;

/// How many rounds one sweep makes at most: each round can uncover the children of
/// the processes killed in the previous one.
const MAX_SWEEP_ROUNDS: usize = 64;

/// A command the worker started and has not reaped yet.
#[derive(Debug)]
struct Live {
    pid: libc::pid_t,
    marker: Option<String>,
}

#[derive(Debug, Default)]
struct Registry {
    live: Vec<Live>,
    ended_groups: VecDeque<libc::pid_t>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    ended_groups: VecDeque::new(),
});

static SUBREAPER: Once = Once::new();
static IS_SUBREAPER: AtomicBool = AtomicBool::new(false);

fn registry() -> MutexGuard<'static, Registry> {
    // The registry holds plain data that stays consistent even if a holder panicked.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process a child subreaper, once. Returns whether it is one.
pub fn become_subreaper() -> bool {
    SUBREAPER.call_once(|| {
        // Any pid sets the flag; the kernel keeps only whether it is non-zero.
        match rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            Ok(()) => IS_SUBREAPER.store(true, Ordering::SeqCst),
            Err(error) => log::warn!(
                "could not become a child subreaper ({}); processes that leave a task's \
                 process group will not be caught",
                io::Error::from(error)
            ),
        }
    });
    IS_SUBREAPER.load(Ordering::SeqCst)
}

/// Holds the registry lock while a command is spawned, so that a sweep running on
/// another thread never mistakes the new child for an orphan.
pub struct SpawnGuard {
    registry: MutexGuard<'static, Registry>,
}

impl SpawnGuard {
    /// Takes the lock.
    pub fn lock() -> SpawnGuard {
        SpawnGuard {
            registry: registry(),
        }
    }

    /// Records a freshly spawned leader and releases the lock.
    pub fn register(mut self, pid: libc::pid_t, marker: Option<String>) {
        self.registry.live.push(Live { pid, marker });
    }
}

/// Forgets a leader that has been reaped, and remembers its group as ended.
pub fn unregister(pid: libc::pid_t) {
    forget(&mut registry(), pid);
}

fn forget(registry: &mut Registry, pid: libc::pid_t) {
    if let Some(position) = registry.live.iter().position(|live| live.pid == pid) {
        registry.live.remove(position);
    }
    registry.ended_groups.push_back(pid);
    while registry.ended_groups.len() > REMEMBERED_GROUPS {
        registry.ended_groups.pop_front();
    }
}

/// Forgets the leader `pid` (as [`unregister`] does), then kills and reaps every orphan
/// of an ended task that is now a child of this process, and returns how many live (not
/// yet dead) orphans it killed.
///
/// Both happen under one hold of the registry lock. Were the leader unregistered first
/// and the sweep made after, a sweep on another thread could run in between, find this
/// task's escaped processes (no longer protected by a live marker), and kill them
/// itself: they would be gone, but this task would report no orphans killed.
pub fn unregister_and_sweep(pid: libc::pid_t) -> usize {
    let mut registry = registry();
    forget(&mut registry, pid);
    if !become_subreaper() {
        return 0;
    }
    sweep_locked(&registry)
}

/// Kills and reaps every orphan of an ended task that is now a child of this process,
/// and returns how many live (not yet dead) orphans it killed. The caller holds the
/// registry lock.
fn sweep_locked(registry: &Registry) -> usize {
    let live_pids: HashSet<libc::pid_t> = registry.live.iter().map(|live| live.pid).collect();
    let live_markers: HashSet<&str> = registry
        .live
        .iter()
        .filter_map(|live| live.marker.as_deref())
        .collect();
    let ended_groups: HashSet<libc::pid_t> = registry.ended_groups.iter().copied().collect();
    let me = rustix::process::getpid().as_raw_pid();
    let mut n_killed = 0;
    for _ in 0..MAX_SWEEP_ROUNDS {
        let mut found = false;
        for child in children_of(me) {
            if live_pids.contains(&child.pid) || live_pids.contains(&child.pgid) {
                // A running task's own process, or a member of its group: that task's
                // end deals with it.
                continue;
            }
            let marker = marker_of(child.pid);
            if marker
                .as_deref()
                .is_some_and(|marker| live_markers.contains(marker))
            {
                // An escaped process of a running task, whatever its group: its id may
                // be the pid of an ended task's leader, since pids are reused.
                continue;
            }
            // Only markers this process handed out: a child that carries another
            // (a program embedding the worker, a test) is not a task's.
            let orphan = ended_groups.contains(&child.pgid)
                || marker
                    .as_deref()
                    .is_some_and(|marker| marker.starts_with(crate::tasks::exec::marker_prefix()));
            if !orphan {
                continue;
            }
            found = true;
            if child.state != 'Z' {
                n_killed += 1;
                log::info!(
                    "killing process {} ({}), left behind by a task outside its process group",
                    child.pid,
                    child.command
                );
            }
            // The pid is our own child and is not reaped yet, so it cannot have been
            // reused; a pid read from /proc is never 0.
            let Some(pid) = Pid::from_raw(child.pid) else {
                continue;
            };
            if child.pgid == child.pid && child.pgid > 1 {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            let _ = kill_process(pid, Signal::KILL);
            reap(pid);
        }
        if !found {
            break;
        }
    }
    n_killed
}

/// Waits for one child that was just killed.
fn reap(pid: Pid) {
    while let Err(Errno::INTR) = waitpid(Some(pid), WaitOptions::empty()) {}
}

/// The processes whose parent is `parent`, read from `/proc`.
fn children_of(parent: libc::pid_t) -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .filter(|stat| stat.ppid == parent)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_become_a_subreaper() {
        assert!(become_subreaper());
        // PR_GET_CHILD_SUBREAPER reports the flag as 1.
        assert_eq!(rustix::process::child_subreaper(), Ok(Pid::from_raw(1)));
    }

    #[test]
    fn a_running_tasks_escapee_in_a_group_with_a_reused_ended_id_is_left_alone() {
        use std::os::unix::process::CommandExt;
        assert!(become_subreaper());
        // A leader pid no process can have (pids stay below 2^22), standing for a running
        // task whose escaped process is the child below.
        const RUNNING_LEADER: libc::pid_t = libc::pid_t::MAX;
        let marker = format!(
            "{}reused-group-{:016x}",
            crate::tasks::exec::marker_prefix(),
            fastrand::u64(..)
        );
        // Registered before the spawn, so that no sweep ever sees the child unprotected.
        SpawnGuard::lock().register(RUNNING_LEADER, Some(marker.clone()));
        let mut escapee = std::process::Command::new("sleep")
            .arg("30")
            .env(crate::device::proc::MARKER_ENV, &marker)
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = libc::pid_t::try_from(escapee.id()).expect("a pid");
        // Until its `exec`, the child carries this process's environment.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while marker_of(pid).as_deref() != Some(marker.as_str())
            && std::time::Instant::now() < give_up
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A task whose leader had the pid that is now the escapee's group id ends (its
        // pid was reused, as it is once pids wrap around): its sweep must not take the
        // running task's process for its own orphan.
        unregister_and_sweep(pid);
        let still_running = matches!(escapee.try_wait(), Ok(None));
        unregister(RUNNING_LEADER);
        let _ = escapee.kill();
        let _ = escapee.wait();
        assert!(still_running, "a running task's process was swept");
    }
}
