//! Integration tests of the `retire-worker` binary against a scripted
//! master on `127.0.0.1:0`.

use protocol::{Envelope, Frame, LineCodec, Message};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_retire-worker")
}

/// Reads messages from `stream` until `want` accepts one.
fn next_message(
    stream: &mut TcpStream,
    codec: &mut LineCodec,
    want: impl Fn(&Message) -> bool,
) -> Envelope {
    let mut buf = [0u8; 65536];
    let mut frames = Vec::new();
    loop {
        for frame in frames.drain(..) {
            if let Frame::Json(bytes) = frame {
                let envelope = Envelope::decode(&bytes).expect("the worker sends valid messages");
                if want(&envelope.message) {
                    return envelope;
                }
            }
        }
        let n = stream.read(&mut buf).expect("read from the worker");
        assert!(n > 0, "the worker closed the connection");
        codec.decode(&buf[..n], &mut frames).expect("short lines");
    }
}

#[test]
fn the_binary_registers_and_says_goodbye_on_sigterm() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut child = Command::new(worker_bin())
        .args([
            "--join",
            &addr.to_string(),
            "--id",
            "bin-test",
            "--slots",
            "3",
            "--role",
            "compute",
        ])
        .args(["--tag", "pi", "--tag", "attic"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start retire-worker");
    let (mut stream, _) = listener.accept().expect("the worker connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut codec = LineCodec::new(protocol::DEFAULT_MAX_LINE);
    let register = next_message(&mut stream, &mut codec, |m| {
        matches!(m, Message::Register(_))
    });
    assert_eq!(register.sender_id.as_deref(), Some("bin-test"));
    let Message::Register(profile) = &register.message else {
        unreachable!("filtered above")
    };
    assert_eq!(profile.slots, Some(3));
    assert_eq!(profile.role.as_deref(), Some("compute"));
    assert_eq!(profile.tags, ["pi", "attic"]);
    let types = profile
        .task_types
        .clone()
        .expect("the worker lists its task types");
    for builtin in ["echo", "sleep", "system_info", "shell"] {
        assert!(types.iter().any(|t| t == builtin), "{types:?}");
    }
    assert!(profile.cpu_cores.unwrap_or(0) >= 1 && profile.memory_total_bytes.unwrap_or(0) > 0);
    let ack = Envelope::new(Message::Ack(protocol::Ack::new(
        register.message_id.clone(),
        serde_json::json!({ "heartbeat_interval": 30.0 }),
    )));
    stream.write_all(&ack.to_line()).expect("ack the register");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let goodbye = next_message(&mut stream, &mut codec, |m| {
        matches!(m, Message::Goodbye(_))
    });
    let ack = Envelope::new(Message::Ack(protocol::Ack::new(
        goodbye.message_id,
        serde_json::json!({}),
    )));
    let _ = stream.write_all(&ack.to_line());
    let exit = child.wait().expect("the worker exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let output = Command::new(worker_bin())
        .args(["--join", "not-an-address"])
        .output()
        .expect("run retire-worker");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not-an-address"), "{stderr}");
    let output = Command::new(worker_bin())
        .output()
        .expect("run retire-worker");
    assert_eq!(output.status.code(), Some(2), "--join is required");
}
