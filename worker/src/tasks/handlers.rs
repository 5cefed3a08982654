//! Custom task types: executables in a handlers folder, and handlers written in Rust by a
//! program that embeds the worker.
//!
//! **A handlers folder** (`retire-worker --handlers DIR`) holds one executable per task
//! type, named exactly after the type (`DIR/resize` runs `resize` tasks). The worker
//! looks at the folder when it starts. Each task runs the executable in the sandbox
//! with:
//!
//! - the task's payload as JSON on stdin;
//! - `RETIRE_TASK_ID`, `RETIRE_TASK_TYPE`, `RETIRE_ATTEMPT` and `RETIRE_PROGRESS_FD` in
//!   its environment (plus the sandbox's allowlist, `HOME` and `TMPDIR`);
//! - a progress channel on file descriptor 3 (`RETIRE_PROGRESS_FD`): each line written
//!   there becomes a `task_progress` message. A line is a JSON object with any of
//!   `fraction` (0 to 1), `done`, `total` and `message`; a bare number is a fraction;
//!   any other text is a message.
//!
//! Its stdout is the task's `output`, parsed as JSON when it is valid JSON, else kept as
//! text; exit code 0 means completed.
//!
//! **Rust handlers** are [`Handler`](crate::tasks::task::Handler) closures given to [`crate::run_with`].
//! They run inside the worker process, on the task's slot thread, and are trusted code:
//! the sandbox is for external processes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Finds the handlers in `dir`: every executable regular file whose name is a valid
/// task type. Other files are skipped with a warning.
pub fn scan_folder(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follow symlinks: a handler may well be a link to a program elsewhere.
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if name.starts_with('.') || !metadata.is_file() {
            continue;
        }
        if metadata.permissions().mode() & 0o111 == 0 {
            log::warn!(
                "handlers folder: {} is not executable; skipped",
                path.display()
            );
            continue;
        }
        if let Err(reason) = protocol::types::validate_id("task type", &name) {
            log::warn!("handlers folder: {}: {reason}; skipped", path.display());
            continue;
        }
        found.insert(name, path);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_scan_keeps_executables_named_like_types() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("resize", 0o755);
        write("notes.txt", 0o644);
        write(".hidden", 0o755);
        write("has space", 0o755);
        std::fs::create_dir(dir.path().join("subdir")).expect("mkdir");
        let found = scan_folder(dir.path()).expect("scan");
        assert_eq!(found.keys().collect::<Vec<_>>(), ["resize"]);
    }
}
