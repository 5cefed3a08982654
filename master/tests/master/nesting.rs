//! Issue 11, item 4: deeply nested JSON. Each attack as it was reproduced
//! against the release binary, over real sockets and a real database:
//! refused at the edge with nothing stored, and a record that cannot be
//! read back quarantined at start instead of stopping the master.

use super::{connect, reply, setup};
use master::core::AuthPolicy;
use master::{Config, Shutdown};
use protocol::MAX_VALUE_DEPTH;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

/// `depth` arrays around a number, as JSON text.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Sends one text command and reads its reply up to the `.` line.
fn text(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, command: &str) -> String {
    writer
        .write_all(format!("{command}\n").as_bytes())
        .expect("send");
    let mut body = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read") > 0, "closed");
        if line == ".\n" {
            return body;
        }
        body.push_str(&line);
    }
}

/// Sends one JSON request and reads its reply.
fn request(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, line: &str) -> Value {
    writer
        .write_all(format!("{line}\n").as_bytes())
        .expect("send");
    reply(reader)
}

#[test]
fn a_text_submit_nested_126_deep_is_refused_and_one_at_the_limit_reads_back() {
    let master = setup(|_| {});
    let (mut reader, mut writer) = connect(master.addr);
    let answer = text(
        &mut reader,
        &mut writer,
        &format!("submit echo {}", nested(126)),
    );
    assert!(
        answer.starts_with("error: payload nests more than 64 levels deep"),
        "{answer}"
    );
    // Over JSON too, just past the limit and far past it (where the whole
    // line passes serde_json's own limit: the error still names the request).
    let deep = format!(
        r#"{{"message_type":"task_submit","message_id":"s1","data":{{"task":{{"task_type":"echo","payload":{}}}}}}}"#,
        nested(MAX_VALUE_DEPTH + 1)
    );
    let answer = request(&mut reader, &mut writer, &deep);
    assert_eq!(answer["data"]["code"], "invalid_message", "{answer}");
    assert_eq!(answer["data"]["original_message_id"], "s1");
    let deeper = deep.replace(&nested(MAX_VALUE_DEPTH + 1), &nested(126));
    let answer = request(&mut reader, &mut writer, &deeper);
    assert_eq!(answer["data"]["code"], "malformed_json", "{answer}");
    assert_eq!(answer["data"]["original_message_id"], "s1");
    // Nothing was stored.
    let listing = request(&mut reader, &mut writer, r#"{"message_type":"list_tasks"}"#);
    assert_eq!(listing["data"]["result"]["tasks"], json!([]), "{listing}");

    // Right at the limit: accepted, and shown in full both ways.
    let answer = text(
        &mut reader,
        &mut writer,
        &format!("submit echo {}", nested(MAX_VALUE_DEPTH)),
    );
    let task_id = answer
        .trim()
        .strip_prefix("submitted ")
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();
    let status = request(
        &mut reader,
        &mut writer,
        &format!(r#"{{"message_type":"task_status","data":{{"task_id":"{task_id}"}}}}"#),
    );
    let payload = &status["data"]["result"]["task"]["payload"];
    assert_eq!(payload.to_string(), nested(MAX_VALUE_DEPTH), "{status}");
    let shown = text(&mut reader, &mut writer, &format!("task {task_id}"));
    assert!(shown.contains(&task_id), "{shown}");
}

#[test]
fn a_register_with_capabilities_123_deep_is_refused_and_devices_still_list() {
    let master = setup(|_| {});
    let (mut reader, mut writer) = connect(master.addr);
    let register = |capabilities: &str| {
        format!(
            r#"{{"message_type":"register","sender_id":"deep-1","message_id":"r1","data":{{"device_info":{{"platform":"linux"}},"capabilities":{capabilities},"slots":1}}}}"#
        )
    };
    let answer = request(&mut reader, &mut writer, &register(&nested(123)));
    assert_eq!(answer["data"]["code"], "invalid_message", "{answer}");
    let reason = answer["data"]["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("capabilities nests more than 64"),
        "{reason}"
    );
    assert_eq!(answer["data"]["original_message_id"], "r1");
    // An unknown registration field is held to the same limit.
    let extra = r#"{"message_type":"register","sender_id":"deep-2","message_id":"r2","data":{"device_info":{"platform":"linux","x":DEEP},"slots":1}}"#
        .replace("DEEP", &nested(MAX_VALUE_DEPTH + 1));
    let answer = request(&mut reader, &mut writer, &extra);
    assert_eq!(answer["data"]["code"], "invalid_message", "{answer}");
    let listing = request(
        &mut reader,
        &mut writer,
        r#"{"message_type":"list_devices"}"#,
    );
    assert_eq!(listing["data"]["result"]["devices"], json!([]), "{listing}");

    // At the limit a device registers and every reader can list it.
    let answer = request(
        &mut reader,
        &mut writer,
        &register(&nested(MAX_VALUE_DEPTH)),
    );
    assert_eq!(answer["message_type"], "ack", "{answer}");
    let (mut other_reader, mut other) = connect(master.addr);
    let listing = request(
        &mut other_reader,
        &mut other,
        r#"{"message_type":"list_devices"}"#,
    );
    let devices = &listing["data"]["result"]["devices"];
    assert_eq!(devices[0]["device_id"], "deep-1", "{listing}");
    // A listing shows summaries; the device in full shows its profile.
    let shown = request(
        &mut other_reader,
        &mut other,
        r#"{"message_type":"device_info","data":{"device_id":"deep-1"}}"#,
    );
    assert_eq!(
        shown["data"]["result"]["device"]["profile"]["capabilities"].to_string(),
        nested(MAX_VALUE_DEPTH),
        "{shown}"
    );
    let shown = text(&mut other_reader, &mut other, "devices");
    assert!(shown.contains("deep-1"), "{shown}");
}

/// Runs the master library on `dir` while `body` talks to it.
pub(super) fn run_once(dir: &Path, body: impl FnOnce(SocketAddr)) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut config = Config::new(dir);
    config.core.auth = AuthPolicy::off();
    let shutdown = Shutdown::new();
    let handle = shutdown.clone();
    let thread = std::thread::spawn(move || master::run(listener, config, handle));
    body(addr);
    shutdown.trigger();
    thread
        .join()
        .expect("the master thread ends")
        .expect("the master ran");
}

/// `retire-master --check` on `dir`: its exit status and output.
fn check(dir: &Path) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_retire-master"))
        .arg("--check")
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "off")
        .output()
        .expect("run retire-master --check");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn a_poisoned_record_is_quarantined_and_the_master_serves_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    run_once(dir.path(), |addr| {
        let (mut reader, mut writer) = connect(addr);
        let answer = request(
            &mut reader,
            &mut writer,
            r#"{"message_type":"task_submit","data":{"task":{"task_id":"good","task_type":"echo"}}}"#,
        );
        assert_eq!(answer["data"]["result"]["task_id"], "good", "{answer}");
    });
    let (sound, report) = check(dir.path());
    assert!(sound, "a sound database passes: {report}");

    // Poison the database directly, as an older master (or a hand) could
    // have: a task too deep for serde_json to read at all, one that reads
    // but is deeper than the limit, and a device record that is not JSON.
    let database = rusqlite::Connection::open(dir.path().join(master::store::DB_FILE))
        .expect("open the database");
    let task = |id: &str, depth: usize| {
        format!(
            r#"{{"task_id":"{id}","seq":90,"spec":{{"task_id":"{id}","task_type":"echo","payload":{}}},"state":"assigned","attempt":1,"device_id":"gone","submitted_unix_ms":0}}"#,
            nested(depth)
        )
    };
    for (id, depth) in [("poisoned", 126), ("too-deep", MAX_VALUE_DEPTH + 1)] {
        database
            .execute(
                "INSERT INTO tasks (task_id, seq, state, record) VALUES (?1, 90, 'assigned', ?2)",
                rusqlite::params![id, task(id, depth)],
            )
            .expect("insert a task");
    }
    database
        .execute(
            "INSERT INTO devices (device_id, status, record) VALUES ('broken', 'online', '{not json')",
            [],
        )
        .expect("insert a device");
    drop(database);

    // `--check` no longer says "ok": it names each record and why.
    let (sound, report) = check(dir.path());
    assert!(!sound, "{report}");
    for id in ["poisoned", "too-deep", "broken"] {
        assert!(report.contains(id), "{report}");
    }
    assert!(report.contains("recursion limit exceeded"), "{report}");

    // The master starts, sets the three aside and serves the rest.
    for _ in 0..2 {
        run_once(dir.path(), |addr| {
            let (mut reader, mut writer) = connect(addr);
            let status = request(&mut reader, &mut writer, r#"{"message_type":"status"}"#);
            assert_eq!(
                status["data"]["result"]["cluster_stats"]["quarantined"], 3,
                "{status}"
            );
            let good = request(
                &mut reader,
                &mut writer,
                r#"{"message_type":"task_status","data":{"task_id":"good"}}"#,
            );
            assert_eq!(good["data"]["result"]["task"]["state"], "queued", "{good}");
            let gone = request(
                &mut reader,
                &mut writer,
                r#"{"message_type":"task_status","data":{"task_id":"poisoned"}}"#,
            );
            assert_eq!(gone["data"]["code"], "not_found", "{gone}");
            let listing = request(&mut reader, &mut writer, r#"{"message_type":"list_tasks"}"#);
            let tasks = listing["data"]["result"]["tasks"].as_array().cloned();
            assert_eq!(tasks.map(|t| t.len()), Some(1), "{listing}");
            let devices = request(
                &mut reader,
                &mut writer,
                r#"{"message_type":"list_devices"}"#,
            );
            assert_eq!(devices["message_type"], "ack", "{devices}");
        });
    }
    // Kept, not lost: the quarantine table holds each record as it was,
    // and `--check` keeps reporting them.
    let database = rusqlite::Connection::open(dir.path().join(master::store::DB_FILE))
        .expect("open the database");
    let kept: i64 = database
        .query_row(
            "SELECT count(*) FROM quarantine WHERE record LIKE '%[[[%' OR record = '{not json'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(kept, 3);
    let (sound, report) = check(dir.path());
    assert!(!sound && report.contains("poisoned"), "{report}");
}

/// The issue's third attack on the master's side, over a socket: a worker's
/// `python_eval` result nested too deep. One past the limit fails the
/// attempt at once and is answered `invalid_message`; one past what
/// serde_json reads is answered `malformed_json`. Both replies name the
/// result's `message_id`, which is what makes a worker drop it from its
/// outbox instead of sending it forever.
#[test]
fn a_result_nested_too_deep_is_refused_by_its_id_and_fails_the_attempt() {
    let master = setup(|_| {});
    let (mut worker_reader, mut worker) = connect(master.addr);
    let answer = request(
        &mut worker_reader,
        &mut worker,
        r#"{"message_type":"register","sender_id":"py-1","message_id":"r1","data":{"task_types":["python_eval"],"slots":1}}"#,
    );
    assert_eq!(answer["message_type"], "ack", "{answer}");
    let (mut reader, mut writer) = connect(master.addr);
    let submit = |reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, id: &str| {
        let answer = request(
            reader,
            writer,
            &format!(
                r#"{{"message_type":"task_submit","data":{{"task":{{"task_id":"{id}","task_type":"python_eval"}}}}}}"#
            ),
        );
        assert_eq!(answer["message_type"], "ack", "{answer}");
    };
    let result = |id: &str, message_id: &str, depth: usize| {
        format!(
            r#"{{"message_type":"task_result","sender_id":"py-1","message_id":"{message_id}","data":{{"task_id":"{id}","attempt":1,"status":"completed","result":{{"output":{}}}}}}}"#,
            nested(depth)
        )
    };
    for (id, depth, code) in [
        ("deep-1", MAX_VALUE_DEPTH + 1, "invalid_message"),
        ("deep-2", 130, "malformed_json"),
    ] {
        submit(&mut reader, &mut writer, id);
        let assign = reply(&mut worker_reader);
        assert_eq!(assign["message_type"], "task_assign", "{assign}");
        assert_eq!(assign["data"]["task"]["task_id"], id);
        let message_id = format!("res-{id}");
        let answer = request(
            &mut worker_reader,
            &mut worker,
            &result(id, &message_id, depth),
        );
        assert_eq!(answer["data"]["code"], code, "{answer}");
        assert_eq!(answer["data"]["original_message_id"], message_id.as_str());
    }
    // The first attempt failed at once, with the reason; nothing of it was
    // stored. (The second, unreadable, waits for its timeout.)
    let status = request(
        &mut reader,
        &mut writer,
        r#"{"message_type":"task_status","data":{"task_id":"deep-1"}}"#,
    );
    let task = &status["data"]["result"]["task"];
    assert_eq!(task["state"], "failed", "{status}");
    assert!(task.get("result").is_none(), "{status}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(error.contains("nests more than 64 levels deep"), "{error}");
}
