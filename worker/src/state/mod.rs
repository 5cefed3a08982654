//! What the worker keeps on disk, in `STATE_DIR/DEVICE_ID/`: results not yet
//! acknowledged ([`outbox`]), the device's key and the master's pinned key
//! ([`identity`]), and a record of every external process group while it runs
//! ([`running`]).
//!
//! It also finds the state dir when none is given ([`default_state_dir`]) and holds
//! the lock that keeps a second worker with the same device id off all of it (taken
//! by [`outbox::Outbox::open`], which every start opens first).
//!
//! Architecture invariant: only this folder writes the state dir.

pub mod identity;
pub mod outbox;
pub mod running;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The directory name the default state dir ends in.
const APP_DIR: &str = "retire-worker";

/// The state dir used when none is given: the first of `$XDG_STATE_HOME/retire-worker`,
/// `~/.local/state/retire-worker` and `retire-worker-state` next to the binary that this
/// user can create (or already has; [`can_create`]), so that an `XDG_STATE_HOME` left
/// pointing somewhere read-only or absent (a phone's Termux, a service manager's
/// environment) falls back to the home. When none can be made, the first is returned
/// and creating it reports why. `None` only when there is no candidate at all.
pub fn default_state_dir() -> Option<PathBuf> {
    state_dir_from(
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
        std::env::current_exe().ok(),
        &can_create,
    )
}

/// Whether this process can create `dir` (or it is a directory it can write already):
/// its nearest existing ancestor is a directory it may write and search.
fn can_create(dir: &Path) -> bool {
    let Some(existing) = dir.ancestors().find(|path| path.exists()) else {
        return false;
    };
    existing.is_dir()
        && rustix::fs::access(
            existing,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
}

/// [`default_state_dir`] from explicit values, for tests.
fn state_dir_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
    exe: Option<PathBuf>,
    usable: &dyn Fn(&Path) -> bool,
) -> Option<PathBuf> {
    // The XDG base directory spec says a relative value is invalid and must be ignored.
    let xdg = xdg_state_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .map(|xdg| xdg.join(APP_DIR));
    let home = home
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state").join(APP_DIR));
    let beside = exe.and_then(|exe| Some(exe.parent()?.join(format!("{APP_DIR}-state"))));
    let candidates: Vec<PathBuf> = [xdg, home, beside].into_iter().flatten().collect();
    candidates
        .iter()
        .find(|dir| usable(dir))
        .or(candidates.first())
        .cloned()
}

/// Takes an exclusive advisory lock on `file` without waiting: `Ok(false)` when another
/// process holds it. The lock ends with the process, so a crashed worker never leaves a
/// stale one behind.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_dir_follows_xdg_then_home_then_the_binary() {
        let exe = Some(PathBuf::from("/opt/retire/bin/retire-worker"));
        assert_eq!(
            state_dir_from(
                Some("/var/state".into()),
                Some("/home/pi".into()),
                exe.clone(),
                &|_| true
            ),
            Some(PathBuf::from("/var/state/retire-worker"))
        );
        assert_eq!(
            state_dir_from(
                Some("relative".into()),
                Some("/home/pi".into()),
                exe.clone(),
                &|_| true
            ),
            Some(PathBuf::from("/home/pi/.local/state/retire-worker"))
        );
        assert_eq!(
            state_dir_from(None, Some("".into()), exe.clone(), &|_| true),
            Some(PathBuf::from("/opt/retire/bin/retire-worker-state"))
        );
        assert_eq!(state_dir_from(None, None, None, &|_| true), None);
    }

    #[test]
    fn a_default_state_dir_that_cannot_be_made_gives_way_to_the_home() {
        let exe = Some(PathBuf::from(
            "/data/data/com.termux/files/usr/bin/retire-worker",
        ));
        let home = || Some(OsString::from("/data/data/com.termux/files/home"));
        let not_under_var = |dir: &Path| !dir.starts_with("/var");
        assert_eq!(
            state_dir_from(
                Some("/var/state".into()),
                home(),
                exe.clone(),
                &not_under_var
            ),
            Some(PathBuf::from(
                "/data/data/com.termux/files/home/.local/state/retire-worker"
            ))
        );
        let nothing = |_: &Path| false;
        assert_eq!(
            state_dir_from(Some("/var/state".into()), home(), exe.clone(), &nothing),
            Some(PathBuf::from("/var/state/retire-worker")),
            "when nothing can be made, the first says why"
        );
        let only_beside = |dir: &Path| dir.starts_with("/data/data/com.termux/files/usr");
        assert_eq!(
            state_dir_from(None, home(), exe, &only_beside),
            Some(PathBuf::from(
                "/data/data/com.termux/files/usr/bin/retire-worker-state"
            ))
        );
    }

    #[test]
    fn a_directory_can_be_created_where_its_nearest_ancestor_is_writable() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert!(can_create(&dir.path().join("a/b/c")));
        assert!(can_create(dir.path()));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("a file");
        assert!(!can_create(&file.join("below")), "a file is no directory");
    }
}
