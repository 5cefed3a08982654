//! The data directory and the database files on disk, with the real
//! `retire-master` binary: who may read them, and which database a start
//! takes for a first start.

use master::core::records::{Batch, DeviceKeyRecord, StoreOp};
use master::store::{Store, DB_FILE};
use master::Synchronous;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MASTER: &str = env!("CARGO_BIN_EXE_retire-master");

/// A `retire-master` process whose log goes to a file.
struct Started {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Started {
    /// Starts the binary on `data` with the umask `umask` (through a shell,
    /// so the test process keeps its own) and waits until it listens.
    fn start(data: &Path, log_dir: &Path, umask: &str) -> Started {
        let log = log_dir.join(format!("master-{}.log", std::process::id()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(MASTER)
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start retire-master");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the first line");
        // The rest is read (and dropped) until the master exits: with the
        // pipe closed, its next line would fail.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let addr = first
            .trim()
            .strip_prefix("retire-master listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address in {first:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .parse()
            .expect("an address");
        let started = Started { child, addr, log };
        started.wait_until_serving();
        started
    }

    /// Waits for a reply to `status`: by then `master::run` has opened the
    /// store, so SQLite's `-wal` and `-shm` exist.
    fn wait_until_serving(&self) {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
            .write_all(b"{\"message_type\":\"status\"}\n")
            .expect("send");
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .expect("a reply to status");
        assert!(line.contains("\"ack\""), "status: {line}");
    }

    /// Kills it with SIGKILL (leaving `-wal` and `-shm` behind) and returns
    /// its log.
    fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How long a master that should refuse to start gets to do so.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the binary on `data` expecting it to refuse to start; one that
/// starts anyway is killed after [`PATIENCE`] (and the test fails).
fn start_refused(data: &Path) -> Output {
    let mut child = Command::new(MASTER)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run retire-master");
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().expect("poll the master").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the master's output")
}

/// Runs the library on `data` expecting it to refuse to start, and returns
/// its error.
fn run_refused(data: &Path) -> master::MasterError {
    let (sender, receiver) = std::sync::mpsc::channel();
    let shutdown = master::Shutdown::new();
    let handle = shutdown.clone();
    let config = master::Config::new(data);
    let thread = std::thread::spawn(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _ = sender.send(master::run(listener, config, handle));
    });
    let outcome = receiver.recv_timeout(PATIENCE);
    shutdown.trigger();
    let _ = thread.join();
    match outcome {
        Ok(Err(err)) => err,
        other => panic!("the library started on {}: {other:?}", data.display()),
    }
}

fn check_database(data: &Path) -> Output {
    Command::new(MASTER)
        .arg("--check")
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("run retire-master --check")
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn companion(data: &Path, suffix: &str) -> PathBuf {
    data.join(format!("{DB_FILE}{suffix}"))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A data dir as a first start left it, killed with SIGKILL so the WAL and
/// the shared memory file stay.
fn started_once(root: &Path) -> PathBuf {
    let data = root.join("data");
    Started::start(&data, root, "022").kill9();
    data
}

#[test]
fn a_first_start_makes_the_data_dir_and_every_database_file_private_whatever_the_umask() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let master = Started::start(&data, root.path(), "000");
    let files = [
        (data.clone(), 0o700),
        (data.join(DB_FILE), 0o600),
        (companion(&data, "-wal"), 0o600),
        (companion(&data, "-shm"), 0o600),
        (data.join("secrets"), 0o700),
    ];
    for (path, expected) in &files {
        assert_eq!(mode(path), *expected, "{}", path.display());
    }
    let log = master.kill9();
    assert!(
        !log.contains("WARN"),
        "a first start warns of nothing: {log}"
    );
}

#[test]
fn an_open_data_dir_and_readable_database_files_are_made_private_with_a_warning() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    let mut opened = vec![(data.clone(), 0o755)];
    for suffix in ["", "-wal", "-shm"] {
        opened.push((companion(&data, suffix), 0o644));
    }
    for (path, was) in &opened {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*was))
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    }
    let log = Started::start(&data, root.path(), "022").kill9();
    for (path, was) in &opened {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(path), expected, "{}", path.display());
        let warning = format!(
            "{} was open to other users (mode {was:o}): made it {expected:o}",
            path.display()
        );
        assert!(
            log.lines()
                .any(|line| line.contains("WARN") && line.contains(&warning)),
            "no warning {warning:?} in {log}"
        );
    }
}

/// A database that is there but cannot be used refuses the start and
/// `--check`, naming the file, and is left as it was.
fn check_refused(contents: &[u8], mode: u32, expect: &str) {
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(companion(&data, suffix)).expect("remove a companion file");
    }
    let db = data.join(DB_FILE);
    std::fs::write(&db, contents).expect("write the database");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let name = db.display().to_string();
    for (what, output) in [
        ("a start", start_refused(&data)),
        ("--check", check_database(&data)),
    ] {
        let text = said(&output);
        assert!(!output.status.success(), "{what} succeeded: {text}");
        assert!(
            text.contains(&name) && text.contains(expect),
            "{what} did not name {name} with {expect:?}: {text}"
        );
        assert!(!text.contains("ok:"), "{what}: {text}");
    }
    let library = run_refused(&data);
    assert!(library.to_string().contains(&name), "{library}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(std::fs::read(&db).expect("read it back"), contents);
    assert!(!companion(&data, "-wal").exists());
}

#[test]
fn an_empty_database_is_refused_rather_than_taken_for_a_first_start() {
    check_refused(b"", 0o600, "is empty");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    check_refused(
        &b"this is not a database, it only sits where one should be\n".repeat(100),
        0o600,
        "not a SQLite database",
    );
    check_refused(b"SQLite format 3", 0o600, "not a SQLite database");
}

#[test]
fn an_unreadable_database_is_refused() {
    const CONTENTS: &[u8] = b"SQLite format 3\0 and more";
    if !running_as_root() {
        check_refused(CONTENTS, 0o000, "cannot read");
        return;
    }
    // Root reads a file whatever its mode, so as root (as in CI) the data
    // dir is handed to `nobody` and the binary runs as `nobody`, from a
    // copy in the temp dir, since the build tree may be in root's home.
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(companion(&data, suffix)).expect("remove a companion file");
    }
    let db = data.join(DB_FILE);
    std::fs::write(&db, CONTENTS).expect("write the database");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let binary = root.path().join("retire-master");
    std::fs::copy(MASTER, &binary).expect("copy the binary");
    for entry in walk(root.path()) {
        std::os::unix::fs::chown(&entry, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let name = db.display().to_string();
    for (what, args) in [
        ("a start", vec!["--listen", "127.0.0.1:0"]),
        ("--check", vec!["--check"]),
    ] {
        let output = Command::new(&binary)
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .expect("run retire-master as nobody");
        let text = said(&output);
        assert!(!output.status.success(), "{what} succeeded: {text}");
        assert!(
            text.contains(&name) && text.contains("cannot read"),
            "{what} did not name {name} with \"cannot read\": {text}"
        );
    }
    assert_eq!(std::fs::read(&db).expect("root reads it back"), CONTENTS);
}

/// The user and group id of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// `dir` and everything under it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut paths = vec![dir.to_path_buf()];
    let mut index = 0;
    while index < paths.len() {
        if paths[index].is_dir() {
            let entries = std::fs::read_dir(&paths[index]).expect("read a dir");
            paths.extend(entries.map(|entry| entry.expect("a dir entry").path()));
        }
        index += 1;
    }
    paths
}

#[test]
fn check_on_a_missing_database_says_so_and_creates_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let output = check_database(&data);
    let text = said(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&data.join(DB_FILE).display().to_string()) && text.contains("no database"),
        "{text}"
    );
    assert!(!data.join(DB_FILE).exists());
}

/// Enrolls a device in the database the way the master records one.
fn enroll(data: &Path, device_id: &str) {
    let mut store = Store::open(data, Synchronous::Normal).expect("open the store");
    let public_key = protocol::auth::KeyPair::from_seed([7; 32])
        .public()
        .to_string();
    store
        .commit(&[Batch {
            id: 1,
            ops: vec![StoreOp::PutDeviceKey(DeviceKeyRecord {
                device_id: device_id.into(),
                public_key: Some(public_key),
                enrolled_unix_ms: 1,
                enrolled_from: None,
                revoked_unix_ms: None,
            })],
        }])
        .expect("commit");
}

#[test]
fn a_lost_master_key_with_enrolled_devices_is_refused_and_token_show_makes_a_new_one() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    enroll(&data, "pi");
    let key = data.join("secrets").join("master.key");
    std::fs::remove_file(&key).expect("lose the master key");
    let output = start_refused(&data);
    let text = said(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(&key.display().to_string())
            && text.contains("1 enrolled device")
            && text.contains("token show"),
        "{text}"
    );
    assert!(!key.exists(), "no new key was made behind the user's back");
    // The way out the message names: `token show` makes a new key.
    let shown = Command::new(MASTER)
        .args(["token", "show", "--data-dir"])
        .arg(&data)
        .output()
        .expect("token show");
    assert!(shown.status.success(), "{}", said(&shown));
    assert!(key.exists());
    Started::start(&data, root.path(), "022").kill9();
}

#[test]
fn a_missing_database_with_secrets_is_a_first_start_that_keeps_the_tokens() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    let secrets = data.join("secrets");
    let read = |file: &str| std::fs::read_to_string(secrets.join(file)).expect("a secret");
    let before = (read("join.token"), read("admin.token"), read("master.key"));
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(companion(&data, suffix)).expect("remove the database");
    }
    let log = Started::start(&data, root.path(), "022").kill9();
    assert!(log.contains("first start"), "{log}");
    assert_eq!(
        (read("join.token"), read("admin.token"), read("master.key")),
        before
    );
}

#[test]
fn a_database_without_secrets_and_without_enrolled_devices_gets_new_secrets_with_a_warning() {
    // As when a master that ran with --no-auth is started with
    // authentication on.
    let root = tempfile::tempdir().expect("temp dir");
    let data = started_once(root.path());
    std::fs::remove_dir_all(data.join("secrets")).expect("remove the secrets");
    let log = Started::start(&data, root.path(), "022").kill9();
    assert!(data.join("secrets").join("master.key").exists());
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("master.key was missing")),
        "{log}"
    );
}
