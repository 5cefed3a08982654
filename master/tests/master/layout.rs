//! The master library does not use the worker library. `master/Cargo.toml` depends on
//! `worker` only so that `retire-master --dev` can run a worker in the same process;
//! the library (the event loop, the core, the store) must not reach for it, or the
//! master would link the worker's device profiling, sandbox and HTTP client. Cargo
//! cannot give a dependency to a binary alone, so this test reads the sources and fails
//! on any path into the `worker` crate outside `src/main.rs`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("master/src can be listed") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The lines of `text` that name the `worker` crate: a `worker::` path that is not
/// part of a longer path or name (`crate::worker::` or `my_worker::` would be the
/// master's own; a leading `::worker::` is the crate), or a `use worker` / `extern crate worker` that brings the crate in by name.
fn worker_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let names_the_crate = line.match_indices("worker").any(|(at, _)| {
            // A leading `::` (`::worker::x`) still names the crate; `a::worker` does not.
            let prefix = &line[..at];
            let prefix = prefix.strip_suffix("::").unwrap_or(prefix);
            let before = prefix.chars().next_back();
            let after = line[at + "worker".len()..].trim_start();
            let starts_a_path = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
            starts_a_path
                && (after.starts_with("::")
                    || line[..at].trim_end().ends_with("use")
                    || line[..at].trim_end().ends_with("extern crate"))
        });
        if names_the_crate {
            found.push(format!("{}: {}", number + 1, line.trim()));
        }
    }
    found
}

#[test]
fn only_the_binary_uses_the_worker_library() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let mut offending = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        if relative == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("a source file");
        for reference in worker_references(&text) {
            offending.push(format!("{}:{reference}", relative.display()));
        }
    }
    assert!(
        offending.is_empty(),
        "the master library uses the worker library (only src/main.rs may, for --dev):\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_check_sees_every_way_of_naming_the_worker_crate() {
    // The binary does use the worker, so the reader must find it there.
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
        .expect("src/main.rs");
    assert!(!worker_references(&main).is_empty());
    for (line, named) in [
        ("use worker::identity::random_bytes;", true),
        ("let stop = worker::StopHandle::new();", true),
        ("    use worker;", true),
        ("extern crate worker;", true),
        ("let config = ::worker::WorkerConfig::default();", true),
        ("crate::worker::thing()", false),
        ("my_worker::go()", false),
        ("let worker = 3; worker.max(2)", false),
        ("/// the worker's key", false),
    ] {
        assert_eq!(!worker_references(line).is_empty(), named, "{line}");
    }
}
