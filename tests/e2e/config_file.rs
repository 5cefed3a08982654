//! `retire-master --config FILE` and `retire-master config`: the real binary
//! reads its settings from a file, under the environment and the flags, and
//! tells a missing file from a wrong one by its exit status.

use super::setup;
use daemon::settings::printed;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use tests::launch::wait_listening;
use tests::{bin, text_command, PATIENCE};

/// A master started by the test itself (the shared launcher always passes
/// `--listen` and `--data-dir`, which would hide the file's); killed on drop.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `retire-master` with only the environment the test gives it.
fn master_command(dir: &Path) -> Command {
    let mut command = Command::new(bin("retire-master"));
    command
        .env("RUST_LOG", "warn")
        .env("XDG_STATE_HOME", dir.join("xdg-state"))
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RETIRE_") {
            command.env_remove(name);
        }
    }
    command
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("master.toml");
    std::fs::write(&path, text).expect("write the config file");
    path.to_string_lossy().into_owned()
}

/// Starts a master from `config` (and `env`) and returns it with its address.
fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Started, std::net::SocketAddr) {
    let mut command = master_command(dir);
    command
        .args(["--config", config])
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let mut child = command.spawn().expect("start retire-master");
    let addr = wait_listening(&mut child, PATIENCE).expect("retire-master listens");
    (Started(child), addr)
}

#[test]
fn a_master_takes_its_listen_address_data_dir_and_policy_from_the_file() {
    let dir = setup();
    let data = dir.path().join("from-the-file");
    let config = write_config(
        dir.path(),
        &format!(
            "# where the master lives\nlisten = \"127.0.0.1:0\"\ndata_dir = '{}'\nread_only_from = [\"none\"]\n",
            data.display()
        ),
    );
    let (_master, addr) = start(dir.path(), &config, &[]);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(
        data.join("retire.db").exists(),
        "the database is in the file's data_dir"
    );
    // Nobody may read without a token: the file's read_only_from.
    let refused = text_command(addr, "status");
    assert!(refused.contains("auth"), "{refused}");
    drop(_master);

    // The environment wins over the file: loopback may read again.
    let (_master, addr) = start(
        dir.path(),
        &config,
        &[("RETIRE_READ_ONLY_FROM", "127.0.0.1/32")],
    );
    let status = text_command(addr, "status");
    assert!(!status.contains("auth"), "{status}");
    assert!(status.contains("devices"), "{status}");
}

/// The value and source `config` printed for `key`.
fn line_of(output: &str, key: &str) -> (String, String) {
    printed(output, key).unwrap_or_else(|| panic!("no {key} in {output}"))
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("run retire-master");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn retire_master_config_prints_each_value_with_where_it_came_from() {
    let dir = setup();
    let config = write_config(
        dir.path(),
        "data_dir = \"/srv/retire\"\n\nheartbeat_interval = \"1m\"\nheartbeat_timeout = 300\nmax_line = 4096\n",
    );
    let (output, stdout, stderr) = run(master_command(dir.path())
        .args(["--config", &config, "--max-line", "2048", "config"])
        .env("RETIRE_HEARTBEAT_TIMEOUT", "10m"));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let expect = [
        ("listen", "\"0.0.0.0:8080\"", "default".to_string()),
        ("data_dir", "\"/srv/retire\"", format!("file {config}:1")),
        ("heartbeat_interval", "60", format!("file {config}:3")),
        (
            "heartbeat_timeout",
            "600",
            "env RETIRE_HEARTBEAT_TIMEOUT".into(),
        ),
        ("max_line", "2048", "flag --max-line".into()),
        (
            "read_only_from",
            "[\"127.0.0.0/8\", \"::1\"]",
            "default".into(),
        ),
    ];
    for (key, value, source) in expect {
        assert_eq!(
            line_of(&stdout, key),
            (value.to_string(), source),
            "{stdout}"
        );
    }
    // What it prints is a config file the master reads back.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &stdout).expect("write the copy");
    let (output, again, stderr) =
        run(master_command(dir.path()).args(["--config", &copy.to_string_lossy(), "config"]));
    assert_eq!(output.status.code(), Some(0), "{again}{stderr}");
    assert_eq!(line_of(&again, "max_line").0, "2048", "{again}");
    assert_eq!(line_of(&again, "heartbeat_timeout").0, "600", "{again}");
}

#[test]
fn a_wrong_or_missing_config_file_stops_the_master_with_its_own_status() {
    let dir = setup();
    let config = write_config(dir.path(), "listen = \"127.0.0.1:0\"\nheartbeat = 3\n");
    let (output, stdout, stderr) = run(master_command(dir.path()).args(["--config", &config]));
    assert_eq!(output.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{config}:2: heartbeat: unknown field `heartbeat`")),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "{stdout}");

    write_config(dir.path(), "max_connections = \"many\"\n");
    let (output, _, stderr) = run(master_command(dir.path())
        .args(["config"])
        .env("RETIRE_CONFIG", &config));
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{config}:1: max_connections: invalid type: string \"many\""
        )),
        "{stderr}"
    );

    let missing = dir.path().join("missing.toml");
    let (output, _, stderr) =
        run(master_command(dir.path()).args(["--config", &missing.to_string_lossy()]));
    assert_eq!(output.status.code(), Some(66), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the config file {}",
            missing.display()
        )),
        "{stderr}"
    );
}

/// `retire-master check` is `--check`, and a config file's `data_dir` is where
/// it looks.
#[test]
fn check_is_also_a_subcommand_and_finds_the_data_dir_in_the_file() {
    let dir = setup();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = '{}'\n",
            data.display()
        ),
    );
    let (master, _) = start(dir.path(), &config, &[]);
    drop(master);
    for args in [&["check"][..], &["--check"][..]] {
        let (output, stdout, stderr) = run(master_command(dir.path())
            .args(["--config", &config])
            .args(args));
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.starts_with(&format!(
                "ok: {} passes integrity_check",
                data.join("retire.db").display()
            )),
            "{args:?}: {stdout}"
        );
    }
    let empty = dir.path().join("empty");
    let (output, _, stderr) =
        run(master_command(dir.path()).args(["check", "--data-dir", &empty.to_string_lossy()]));
    assert_eq!(
        output.status.code(),
        Some(1),
        "a missing database: {stderr}"
    );
}
