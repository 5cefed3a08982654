//! The layout of `worker/src` as ARCHITECTURE.md states it: the folders are layers,
//! and a module imports only from its own folder or a lower layer (`session` lowest,
//! then `device`, `state`, `tasks`, `link`, and the crate root on top). A `use` that
//! points up a layer (an import circle between folders, or the sans-IO session
//! reaching for a module that does I/O) fails this test with the file and the path.

use std::path::{Path, PathBuf};

/// The folders from the lowest layer up; the crate root's own files come last.
const LAYERS: &[&str] = &["session", "device", "state", "tasks", "link"];

/// The layer of a module path's first segment: a folder's index, or the top for the
/// crate root's files (`lib.rs`, `scrub.rs`, and the items defined in `lib.rs`).
fn layer(first_segment: &str) -> usize {
    LAYERS
        .iter()
        .position(|folder| *folder == first_segment)
        .unwrap_or(LAYERS.len())
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("worker/src can be listed") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The code of a file without its unit tests and comments: tests may reach anywhere.
fn code_of(text: &str) -> String {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment after every `crate::` in `code`; `{` or an item name (upper
/// case) means the crate root itself.
fn crate_references(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(at, _)| {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let segment = &rest[..end];
            if segment.is_empty() || segment.starts_with(|c: char| c.is_ascii_uppercase()) {
                "(root)".to_string()
            } else {
                segment.to_string()
            }
        })
        .collect()
}

#[test]
fn worker_modules_import_only_their_own_folder_or_a_lower_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first: String = match relative.components().count() {
            1 => "(root)".into(),
            _ => relative
                .components()
                .next()
                .and_then(|part| part.as_os_str().to_str())
                .expect("a folder name")
                .into(),
        };
        let text = std::fs::read_to_string(file).expect("a source file");
        for target in crate_references(&code_of(&text)) {
            let from = layer(&first);
            let to = layer(&target);
            // Only the crate root's files may import the root; a folder may not.
            let root_from_folder = target == "(root)" && first != "(root)";
            if (to > from && target != first) || root_from_folder {
                upward.push(format!("{} -> crate::{target}", relative.display()));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports that point up a layer (see ARCHITECTURE.md, `worker/`):\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_session_imports_nothing_else_of_the_worker() {
    let session = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session");
    let mut files = Vec::new();
    rust_files(&session, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        for target in crate_references(&code_of(&text)) {
            assert_eq!(
                target,
                "session",
                "{} imports crate::{target}",
                file.display()
            );
        }
    }
}
