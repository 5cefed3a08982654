//! `retire-worker --config FILE` and `retire-worker config`: the real binary lays
//! its flags and environment over the file, says where each value came from, never
//! prints the join token, and stops on a wrong file with the key and its line.

use daemon::settings::printed;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `retire-worker` with none of the test's own `RETIRE_*` variables.
fn worker(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retire-worker"));
    command
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RETIRE_") {
            command.env_remove(name);
        }
    }
    command
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).expect("write the config file");
    path.to_string_lossy().into_owned()
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("run retire-worker");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// The value and source `config` printed for `key`.
fn line_of(output: &str, key: &str) -> (String, String) {
    printed(output, key).unwrap_or_else(|| panic!("no {key} in {output}"))
}

#[test]
fn retire_worker_config_shows_each_source_and_hides_the_join_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "join = \"nas.local:8080\"\nslots = 2\nrole = \"camera\"\n\ndeny_types = [\"shell\"]\n",
    );
    let token = "rcj_this-must-never-be-printed";
    let (output, stdout, stderr) = run(worker(&["--config", &config, "--role", "pi", "config"])
        .env("RETIRE_SLOTS", "3")
        .env("RETIRE_JOIN_TOKEN", token));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let expect = [
        ("join", "\"nas.local:8080\"", format!("file {config}:1")),
        ("slots", "3", "env RETIRE_SLOTS".to_string()),
        ("role", "\"pi\"", "flag --role".into()),
        ("deny_types", "[\"shell\"]", format!("file {config}:5")),
        ("drain_timeout", "30", "default".into()),
    ];
    for (key, value, source) in expect {
        assert_eq!(
            line_of(&stdout, key),
            (value.to_string(), source),
            "{stdout}"
        );
    }
    let redacted = stdout
        .lines()
        .find(|line| line.starts_with("# token = "))
        .unwrap_or_else(|| panic!("no token line in {stdout}"));
    assert!(
        redacted.starts_with("# token = \"(redacted)\""),
        "{redacted}"
    );
    assert!(redacted.ends_with("# env RETIRE_JOIN_TOKEN"), "{redacted}");
    // What it prints is a config file the worker reads back.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &stdout).expect("write the copy");
    let (output, again, stderr) = run(&mut worker(&[
        "--config",
        &copy.to_string_lossy(),
        "config",
    ]));
    assert_eq!(output.status.code(), Some(0), "{again}{stderr}");
    assert_eq!(line_of(&again, "slots").0, "3", "{again}");
    let processes = line_of(&again, "limits.processes").1;
    assert!(
        processes.starts_with(&format!("file {}:", copy.display())),
        "{again}"
    );
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "{stdout}{stderr}"
    );
}

#[test]
fn a_wrong_or_missing_config_file_stops_the_worker_with_its_own_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "join = \"127.0.0.1:1\"\n[limits]\nmemory = 5\n");
    let (output, _, stderr) = run(&mut worker(&["--config", &config]));
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{config}:3: limits.memory: unknown field `memory`"
        )),
        "{stderr}"
    );
    let missing = dir.path().join("missing.toml");
    let (output, _, stderr) =
        run(worker(&["--join", "127.0.0.1:1"]).env("RETIRE_CONFIG", &missing));
    assert_eq!(output.status.code(), Some(66), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read the config file {}",
            missing.display()
        )),
        "{stderr}"
    );
    let (output, _, stderr) = run(&mut worker(&[]));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("join is not set: give --join HOST:PORT"),
        "{stderr}"
    );
}

/// The sandbox keys print with their sources, and a token file that tasks could
/// read (here: under a `[sandbox] read` path) gets a warning at start.
#[test]
fn sandbox_paths_print_and_a_token_file_tasks_can_read_is_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let config = write(
        dir.path(),
        &format!(
            "join = \"127.0.0.1:9\"\n[sandbox]\nread = [\"{}\"]\nnetwork = false\n\
             [types.shell]\nnetwork = true\n",
            shared.display()
        ),
    );
    let (output, stdout, stderr) = run(&mut worker(&["--config", &config, "config"]));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let from_file = |line: u32| format!("file {config}:{line}");
    assert_eq!(
        line_of(&stdout, "sandbox.read"),
        (format!("[\"{}\"]", shared.display()), from_file(3))
    );
    assert_eq!(
        line_of(&stdout, "sandbox.write"),
        ("[]".into(), "default".into())
    );
    assert_eq!(
        line_of(&stdout, "sandbox.network"),
        ("false".into(), from_file(4))
    );
    assert_eq!(
        line_of(&stdout, "types.shell.network"),
        ("true".into(), from_file(6))
    );

    // The file holds no valid token, so the worker stops right after the check.
    for (token_dir, warned) in [(&shared, true), (&dir.path().to_path_buf(), false)] {
        let token_file = token_dir.join("join.token");
        std::fs::write(&token_file, "not-a-token").expect("write the token file");
        let token_arg = token_file.to_string_lossy().into_owned();
        let (output, _, stderr) = run(&mut worker(&[
            "--config",
            &config,
            "--token-file",
            &token_arg,
        ]));
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("invalid join token"), "{stderr}");
        assert_eq!(
            stderr.contains("lies where tasks may read it"),
            warned,
            "{token_arg}: {stderr}"
        );
    }
}

/// A worker whose state dir lies under a `[sandbox] read` path says at start that
/// tasks can read it (where Landlock confines tasks at all), and names a configured
/// path that does not exist.
#[test]
fn a_state_dir_opened_to_tasks_is_warned_about_at_start() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        &format!(
            "[sandbox]\nread = [\"{}\", \"/nonexistent-retire-path\"]\nwork_dir = \"{}\"\n",
            dir.path().display(),
            dir.path().join("work").display()
        ),
    );
    let state = dir.path().join("state").to_string_lossy().into_owned();
    // Nothing listens on port 9 of loopback: the worker keeps retrying until killed.
    let mut child = worker(&[
        "--config",
        &config,
        "--join",
        "127.0.0.1:9",
        "--state-dir",
        &state,
        "--id",
        "exposed",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start retire-worker");
    let stderr = child.stderr.take().expect("piped");
    let mut said = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        said.push_str(&line);
        said.push('\n');
        // The sandbox's own line comes first, then (maybe) the state dir's.
        if line.contains("state dir") || line.contains("retrying") || line.contains("connect") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("/nonexistent-retire-path, which does not exist"),
        "{said}"
    );
    if said.contains("sandbox: none") {
        println!("NOTE: no Landlock here: every file is open to tasks, as the worker said");
    } else {
        assert!(
            said.contains("tasks can read this worker's state dir"),
            "{said}"
        );
    }
}
