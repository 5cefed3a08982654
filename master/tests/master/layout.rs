//! The master library does not use the worker library. `master/Cargo.toml` depends on
//! `worker` only so that `retire-master --dev` can run a worker in the same process;
//! the library (the event loop, the core, the store) must not reach for it, or the
//! master would link the worker's device profiling, sandbox and HTTP client. Cargo
//! cannot give a dependency to a binary alone, so this test reads the sources and fails
//! on any path into the `worker` crate outside `src/main.rs`.
//!
//! It also reads the master's core: each part (registry, tasks, timers, queue, changes,
//! outgoing, outbox, a connection's handshake) names only the parts it owns or is handed,
//! and never `Core`, so what needs several parts stays routed by `Core`. And `core/mod.rs`
//! is the core's public face only: its `impl Core` holds the public API and no handler,
//! which live in the routing files by role (`register.rs`, `results.rs`, `control.rs`, ...).

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

/// The parts of the master's core, each a struct that owns its state, and the other
/// parts of the core each may name (always through a module path, `super::x::` or
/// `crate::core::x::`). A part never names `Core`: what needs several parts is routed by
/// `Core` (in `core/mod.rs` and the routing files: `register.rs`, `results.rs`,
/// `control.rs`, `effects.rs`, `restore.rs`, `auth.rs`, `life.rs`, `dispatch.rs`,
/// `views.rs`, `text.rs`),
/// so one part never reaches into another's state. The registry holds each connection's
/// authentication (`handshake`) and answers refusals (`auth`'s error types); the tasks
/// hold the queue and are handed the timer table to drop a cancelled task's backoff.
const PARTS: &[(&str, &[&str])] = &[
    ("registry", &["auth", "handshake", "records", "page"]),
    ("tasks", &["queue", "timers", "records", "page"]),
    ("handshake.rs", &["auth"]),
    ("queue.rs", &["records"]),
    ("timers.rs", &[]),
    ("changes.rs", &["records"]),
    ("outgoing.rs", &["outbox"]),
    ("outbox.rs", &[]),
    ("page.rs", &[]),
];

/// The modules of the core that a line of `file` names by path, and whether it names
/// `Core`. In a file inside a part's folder (not its `mod.rs`), `super::` is the part
/// itself, so only `super::super::` and `crate::core::` lead to the core.
fn core_references(text: &str, nested: bool) -> (Vec<String>, bool) {
    let mut modules = Vec::new();
    let mut names_core = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let prefixes: &[&str] = if nested {
            &["super::super::", "crate::core::"]
        } else {
            &["super::super::", "crate::core::", "super::"]
        };
        for prefix in prefixes {
            for (at, _) in code.match_indices(prefix) {
                // `super::super::x` also contains `super::x`; count it once.
                if *prefix == "super::" && code[..at].ends_with("super::") {
                    continue;
                }
                let rest = &code[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // A module is a path that goes on (`x::`); `super::a_function` is not.
                if !name.is_empty() && rest[name.len()..].starts_with("::") {
                    modules.push(name);
                }
            }
        }
        names_core |= code.match_indices("Core").any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = code[at + 4..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
    }
    (modules, names_core)
}

#[test]
fn a_part_of_the_core_reaches_only_into_the_parts_it_owns_or_is_handed() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut checked = 0;
    let mut offending = Vec::new();
    for (part, allowed) in PARTS {
        let path = core.join(part);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for file in files {
            let nested = file.parent() != Some(core.as_path())
                && file.file_name().is_some_and(|name| name != "mod.rs");
            let text = std::fs::read_to_string(&file).expect("a source file of the core");
            let (modules, names_core) = core_references(&text, nested);
            let relative = file
                .strip_prefix(&core)
                .expect("under core")
                .display()
                .to_string();
            if names_core {
                offending.push(format!("{relative} names Core"));
            }
            for module in modules {
                if !allowed.contains(&module.as_str()) {
                    offending.push(format!("{relative} reaches into core::{module}"));
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= PARTS.len() + 2, "{checked} files");
    assert!(
        offending.is_empty(),
        "a part of the core reaches past what it owns (route it through Core instead):\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_part_check_sees_paths_into_the_core_and_core_itself() {
    for (text, nested, modules, names_core) in [
        ("use super::tasks::Tasks;", false, vec!["tasks"], false),
        ("use super::{Core, Now};", false, vec![], true),
        ("impl Core {", false, vec![], true),
        ("use super::Device;", true, vec![], false),
        (
            "use super::super::timers::TimerKey;",
            true,
            vec!["timers"],
            false,
        ),
        ("use crate::core::page::Page;", true, vec!["page"], false),
        ("use super::not_registered;", false, vec![], false),
        ("/// See `super::tasks::x` and Core.", false, vec![], false),
        (
            "let core_count = CoreConfig::default();",
            false,
            vec![],
            false,
        ),
    ] {
        let (found, core) = core_references(text, nested);
        assert_eq!(
            (found, core),
            (
                modules.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                names_core
            ),
            "{text}"
        );
    }
}

/// The methods of `impl Core` in `text` (the core's `mod.rs`) that are not public API:
/// each `fn` of that block that is not `pub fn`, and any handler (`fn on_`) anywhere in
/// the file. A handler belongs in a routing file by role, so `mod.rs` stays the face a
/// newcomer reads: the struct, its construction, the public types and the routing match.
fn private_in_the_face(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_core = false;
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("impl Core {") {
            in_core = true;
        } else if line.starts_with('}') {
            in_core = false;
        }
        let code = line.trim_start();
        let declares = code.starts_with("fn ")
            || code.starts_with("pub(super) fn ")
            || code.starts_with("pub(crate) fn ")
            || code.starts_with("pub fn ");
        let handler = declares && code.contains("fn on_");
        let private = in_core && declares && !code.starts_with("pub fn ");
        if handler || private {
            found.push(format!("{}: {}", number + 1, code));
        }
    }
    found
}

#[test]
fn the_cores_mod_rs_is_its_public_face_and_holds_no_handler() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core/mod.rs");
    let text = std::fs::read_to_string(path).expect("src/core/mod.rs");
    assert!(
        text.contains("impl Core {"),
        "the check reads Core's impl block"
    );
    let found = private_in_the_face(&text);
    assert!(
        found.is_empty(),
        "core/mod.rs holds what is not public API (move it to a routing file by role):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_face_check_sees_handlers_and_private_methods() {
    for (text, found) in [
        ("impl Core {\n    pub fn handle_tick(&mut self) {}\n}", 0),
        ("impl Core {\n    fn on_submit(&mut self) {}\n}", 1),
        ("impl Core {\n    pub(super) fn requeue(&mut self) {}\n}", 1),
        ("impl Core {\n}\nfn not_registered() -> ReplyError {}", 0),
        (
            "impl Default for CoreConfig {\n    fn default() -> CoreConfig {}\n}",
            0,
        ),
        ("fn on_result() {}", 1),
    ] {
        assert_eq!(private_in_the_face(text).len(), found, "{text}");
    }
}
