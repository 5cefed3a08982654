//! `SHA256SUMS`: the SHA-256 of every file `dist` makes, in the format
//! `sha256sum -c SHA256SUMS` checks (`HEX  NAME`, two spaces, one line per
//! file, names relative to the folder holding the list).

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// The name of the list in the output folder.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// The SHA-256 of the file at `path`, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The text of a `SHA256SUMS` file for `(file name, hex digest)` pairs, in
/// the order given.
pub fn render(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn sha256sum_accepts_the_list_and_catches_a_changed_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut entries = Vec::new();
        for (name, content) in [("retire-worker-armv7", "worker"), ("retire-x86_64", "")] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            entries.push((name.to_string(), sha256_file(&path).expect("hash")));
        }
        assert_eq!(
            entries[1].1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "the SHA-256 of nothing"
        );
        std::fs::write(dir.path().join(SUMS_FILE), render(&entries)).expect("write the sums");
        let check = || {
            Command::new("sha256sum")
                .args(["--check", "--strict", SUMS_FILE])
                .current_dir(dir.path())
                .output()
                .expect("run sha256sum (coreutils)")
        };
        let output = check();
        assert!(output.status.success(), "{output:?}");
        std::fs::write(dir.path().join("retire-x86_64"), "tampered").expect("write");
        assert!(!check().status.success(), "a changed file fails the check");
    }
}
