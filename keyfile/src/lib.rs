//! Key files: the two things both the master and the worker do with a secret.
//!
//! [`random_bytes`] makes a fresh secret from the operating system, and
//! [`write_private`] keeps one in a file only its owner can read (0600), replacing any
//! old file atomically. The master keeps its tokens and its key with them, the worker
//! its device key and the master's pinned key. They live in a crate of their own so
//! that the master does not link the worker library to use them (the worker's device
//! profiling, sandbox and HTTP client), and so that there is one copy of each.
//!
//! The crate is deliberately tiny: it depends on `getrandom` and `thiserror` only, and
//! on no C code, so the worker still cross-builds to static musl.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a secret could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyfileError {
    /// A file or folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The operating system gave no random bytes.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyfileError + '_ {
    move |source| KeyfileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh random value of `N` bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyfileError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| KeyfileError::Random(err.to_string()))?;
    Ok(bytes)
}

/// Writes `text` and a newline to `path`, readable by its owner only (0600), replacing
/// any old file atomically (a new file, synced, renamed over it). The folder is
/// created if missing.
pub fn write_private(path: &Path, text: &str) -> Result<(), KeyfileError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let temporary = path.with_extension("new");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    // The umask may have taken bits off the mode asked for, never added any; this
    // makes it exactly 0600 whatever the umask.
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o600))
        .map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_the_owners_only_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secrets").join("key");
        write_private(&path, "first").expect("write");
        write_private(&path, "second").expect("write again");
        assert_eq!(fs::read_to_string(&path).expect("read"), "second\n");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the file itself is left: the temporary was renamed over it.
        let names: Vec<_> = fs::read_dir(path.parent().expect("folder"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["key"]);
    }

    #[test]
    fn a_file_in_the_way_of_the_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "").expect("write");
        let error = write_private(&blocker.join("key"), "x").expect_err("no folder");
        assert!(
            error
                .to_string()
                .starts_with(&blocker.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn random_values_differ() {
        let a: [u8; 32] = random_bytes().expect("random");
        let b: [u8; 32] = random_bytes().expect("random");
        assert_ne!(a, b);
    }
}
