//! Integration tests of the master library: `master::run` on
//! `127.0.0.1:0` in a thread, spoken to over real sockets, and the
//! `retire-master` binary where the files on disk are the subject.

#[path = "master/files.rs"]
mod files;

use master::core::AuthPolicy;
use master::{Config, Shutdown};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

#[path = "master/history.rs"]
mod history;
#[path = "master/layout.rs"]
mod layout;
#[path = "master/nesting.rs"]
mod nesting;
#[path = "master/retention.rs"]
mod retention;
#[path = "master/schema.rs"]
mod schema;

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn setup(configure: impl FnOnce(&mut Config)) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut config = Config::new(dir.path());
    // These tests are about everything but authentication (see the
    // `secured` tests for that): every connection may do everything.
    config.core.auth = AuthPolicy::off();
    configure(&mut config);
    let shutdown = Shutdown::new();
    let handle = shutdown.clone();
    let thread = std::thread::spawn(move || {
        master::run(listener, config, handle).expect("the master runs");
    });
    Running {
        addr,
        shutdown,
        thread: Some(thread),
        _dir: dir,
    }
}

fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    (BufReader::new(stream.try_clone().expect("clone")), stream)
}

fn reply(reader: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a reply");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON reply, got {line:?}"))
}

fn check(input: &str, expect_type: &str, expect_code: Option<&str>) {
    let master = setup(|_| {});
    let (mut reader, mut writer) = connect(master.addr);
    writer.write_all(input.as_bytes()).expect("send");
    writer.write_all(b"\n").expect("send");
    let answer = reply(&mut reader);
    assert_eq!(answer["message_type"], expect_type, "{input} → {answer}");
    assert_eq!(
        answer["data"]["code"].as_str(),
        expect_code,
        "{input} → {answer}"
    );
    // The connection stays usable after any of these.
    writer
        .write_all(b"{\"message_type\":\"status\"}\n")
        .expect("send");
    assert_eq!(reply(&mut reader)["message_type"], "ack");
}

#[test]
fn bad_messages_get_a_coded_error_and_the_connection_stays_open() {
    check("{nope", "error", Some("malformed_json"));
    check("{\"data\":{}}", "error", Some("invalid_message"));
    check(
        "{\"message_type\":\"teleport\"}",
        "error",
        Some("unknown_message_type"),
    );
    check(
        "{\"message_type\":\"heartbeat\",\"sender_id\":\"ghost\"}",
        "error",
        Some("not_registered"),
    );
    check(
        "{\"message_type\":\"task_status\",\"data\":{\"task_id\":\"nope\"}}",
        "error",
        Some("not_found"),
    );
    check(
        "{\"message_type\":\"task_submit\",\"data\":{\"task\":{\"task_type\":\"echo\",\"requirements\":{\"gpu\":true}}}}",
        "error",
        Some("invalid_message"),
    );
    check("{\"message_type\":\"list_tasks\"}", "ack", None);
}

#[test]
fn an_overlong_line_closes_only_its_own_connection() {
    let master = setup(|config| config.max_line = 4096);
    let (mut other_reader, mut other) = connect(master.addr);
    let (mut reader, mut writer) = connect(master.addr);
    let junk = vec![b'x'; 10_000];
    // The master may close before it has read everything we send.
    let _ = writer.write_all(&junk);
    let answer = reply(&mut reader);
    assert_eq!(answer["data"]["code"], "line_too_long", "{answer}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    other
        .write_all(b"{\"message_type\":\"status\"}\n")
        .expect("the other connection still works");
    assert_eq!(reply(&mut other_reader)["message_type"], "ack");
}

#[test]
fn submits_are_acknowledged_and_survive_a_restart_of_the_library() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run_once = |body: &dyn Fn(SocketAddr)| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut config = Config::new(dir.path());
        config.core.auth = AuthPolicy::off();
        let shutdown = Shutdown::new();
        let handle = shutdown.clone();
        let thread =
            std::thread::spawn(move || master::run(listener, config, handle).expect("run"));
        body(addr);
        shutdown.trigger();
        thread.join().expect("the master thread ends");
    };
    run_once(&|addr| {
        let (mut reader, mut writer) = connect(addr);
        writer
            .write_all(b"{\"message_type\":\"task_submit\",\"message_id\":\"a\",\"data\":{\"task\":{\"task_id\":\"keep-me\",\"task_type\":\"echo\",\"priority\":\"high\"}}}\n")
            .expect("send");
        let answer = reply(&mut reader);
        assert_eq!(answer["data"]["result"]["task_id"], "keep-me", "{answer}");
    });
    run_once(&|addr| {
        let (mut reader, mut writer) = connect(addr);
        writer
            .write_all(b"{\"message_type\":\"task_status\",\"data\":{\"task_id\":\"keep-me\"}}\n")
            .expect("send");
        let answer = reply(&mut reader);
        let task = &answer["data"]["result"]["task"];
        assert_eq!(task["state"], "queued", "{answer}");
        assert_eq!(task["priority"], "high");
    });
}

#[test]
fn a_text_command_without_a_newline_is_answered_when_the_peer_half_closes() {
    let master = setup(|_| {});
    let (mut reader, writer) = connect(master.addr);
    (&writer).write_all(b"status").expect("send");
    writer
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut reply = String::new();
    reader.read_to_string(&mut reply).expect("read to the end");
    assert!(reply.starts_with("devices: 0 online of 0"), "{reply:?}");
    assert!(reply.ends_with("\n.\n"), "{reply:?}");
}

#[test]
fn a_peer_that_floods_without_reading_does_not_starve_the_others() {
    let master = setup(|config| config.max_pending_output = 256 * 1024);
    // The flooder sends requests as fast as it can and never reads a reply;
    // the master stops reading it once its replies back up.
    let flooder = TcpStream::connect(master.addr).expect("connect");
    flooder
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let flood = std::thread::spawn(move || {
        let line = b"{\"message_type\":\"status\"}\n".repeat(1000);
        let mut sent = 0usize;
        while (&flooder).write_all(&line).is_ok() && sent < 64 * 1024 * 1024 {
            sent += line.len();
        }
        sent
    });
    // Meanwhile another client is served, again and again.
    let (mut reader, mut writer) = connect(master.addr);
    for _ in 0..20 {
        writer
            .write_all(b"{\"message_type\":\"status\"}\n")
            .expect("send");
        assert_eq!(reply(&mut reader)["message_type"], "ack");
    }
    let sent = flood.join().expect("the flooder ends");
    assert!(sent > 0);
}

#[test]
fn past_the_total_output_budget_the_largest_non_readers_are_closed() {
    let master = setup(|config| {
        config.max_pending_output = 512 * 1024;
        config.max_total_output = 1024 * 1024;
    });
    // Eight peers ask for statuses and never read: each is throttled at
    // half its cap (256 KiB queued), 2 MiB or more in all, twice the total
    // budget, so the master closes the largest backlogs, though none of
    // these peers ever becomes writable.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let flooders: Vec<_> = (0..8)
        .map(|_| {
            let stream = TcpStream::connect(master.addr).expect("connect");
            let stop = stop.clone();
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let line = b"{\"message_type\":\"status\"}\n".repeat(1000);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match (&stream).write(&line) {
                        Ok(_) => {}
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => {
                            let _ = closed_tx.send(());
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let first_closed = closed_rx.recv_timeout(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for flooder in flooders {
        flooder.join().expect("a flooder");
    }
    assert!(first_closed.is_ok(), "no non-reader was closed");
    // The others are served all along.
    let (mut reader, mut writer) = connect(master.addr);
    writer
        .write_all(b"{\"message_type\":\"status\"}\n")
        .expect("send");
    assert_eq!(reply(&mut reader)["message_type"], "ack");
}

#[test]
fn lines_that_arrive_in_pieces_are_all_answered() {
    let master = setup(|_| {});
    let (mut reader, mut writer) = connect(master.addr);
    let line = |id: usize| format!("{{\"message_type\":\"status\",\"message_id\":\"s{id}\"}}\n");
    // Each write ends the line before it and stops in the middle of the
    // next one, and the next write is sent only once the reply came back:
    // the master has read everything that arrived (a short read) and must
    // come back for the rest of the line when it arrives, not wait for more
    // in vain, nor lose the piece it holds.
    let mut rest = line(0);
    for id in 0..20 {
        let next = line(id + 1);
        let cut = 1 + id % (next.len() - 2);
        writer
            .write_all(format!("{rest}{}", &next[..cut]).as_bytes())
            .expect("send a piece");
        rest = next[cut..].to_string();
        let answer = reply(&mut reader);
        assert_eq!(answer["message_type"], "ack", "{answer}");
        assert_eq!(answer["data"]["original_message_id"], format!("s{id}"));
    }
    writer.write_all(rest.as_bytes()).expect("send the rest");
    assert_eq!(reply(&mut reader)["data"]["original_message_id"], "s20");
}

#[test]
fn lines_followed_at_once_by_a_close_are_all_answered_before_the_master_closes() {
    let master = setup(|_| {});
    // One line, then several reads' worth (more than the master reads at a
    // time), each followed at once by the half-close, so the lines and the
    // end of the stream reach the master together.
    for count in [1usize, 5_000] {
        let (mut reader, writer) = connect(master.addr);
        let mut burst = String::new();
        for id in 0..count {
            burst.push_str(&format!(
                "{{\"message_type\":\"status\",\"message_id\":\"s{id}\"}}\n"
            ));
        }
        (&writer).write_all(burst.as_bytes()).expect("send");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let mut replies = String::new();
        reader
            .read_to_string(&mut replies)
            .expect("read until the master closes");
        let ids: Vec<String> = replies
            .lines()
            .map(|line| {
                let answer: Value = serde_json::from_str(line).expect("a JSON reply");
                answer["data"]["original_message_id"]
                    .as_str()
                    .expect("an id")
                    .to_string()
            })
            .collect();
        let expected: Vec<String> = (0..count).map(|id| format!("s{id}")).collect();
        assert_eq!(ids, expected);
    }
}
