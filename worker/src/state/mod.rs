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
use std::path::PathBuf;

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
