//! More cases of the text command parser than its unit tests hold.

use protocol::text::{parse, TextCommand, HELP};
use protocol::{Frame, LineCodec};
use serde_json::json;

fn check(line: &str, expect: Result<TextCommand, &str>) {
    assert_eq!(
        parse(line),
        expect.map_err(str::to_string),
        "line: {line:?}"
    );
}

#[test]
fn aliases_case_and_separators() {
    check("?", Ok(TextCommand::Help));
    check("HELP", Ok(TextCommand::Help));
    check("exit", Ok(TextCommand::Quit));
    check("Quit", Ok(TextCommand::Quit));
    check("\tdevices\t", Ok(TextCommand::Devices { before: None }));
    // The command word is case-blind; its arguments keep their case.
    check(
        "TASK Task-ABC",
        Ok(TextCommand::Task {
            task_id: "Task-ABC".into(),
        }),
    );
    check(
        "Tasks Running",
        Ok(TextCommand::Tasks {
            state: Some("Running".into()),
            before: None,
        }),
    );
    // Tabs and runs of blanks separate words.
    check(
        "cancel\tt-9",
        Ok(TextCommand::Cancel {
            task_id: "t-9".into(),
        }),
    );
    check(
        "drain    pi-kitchen   ",
        Ok(TextCommand::Drain {
            device_id: "pi-kitchen".into(),
        }),
    );
    check(
        "tasks   queued  ",
        Ok(TextCommand::Tasks {
            state: Some("queued".into()),
            before: None,
        }),
    );
    check(
        "auth \t tok=en/+",
        Ok(TextCommand::Auth {
            token: "tok=en/+".into(),
        }),
    );
}

#[test]
fn submit_payloads() {
    let submit = |task_type: &str, payload| {
        Ok(TextCommand::Submit {
            task_type: task_type.into(),
            payload,
        })
    };
    check("submit  echo", submit("echo", json!({})));
    check("SUBMIT echo   ", submit("echo", json!({})));
    check("submit\techo\t{\"a\":1}", submit("echo", json!({"a": 1})));
    check(
        "submit shell {\"command\": \"ls -l  /tmp\", \"env\": {\"A\": [1, 2.5, null]}}",
        submit(
            "shell",
            json!({"command": "ls -l  /tmp", "env": {"A": [1, 2.5, null]}}),
        ),
    );
    // Any JSON value is a payload, not only an object.
    check("submit sum [1, 2, 3]", submit("sum", json!([1, 2, 3])));
    check(
        "submit echo \"hi there\"",
        submit("echo", json!("hi there")),
    );
    check("submit sleep 5", submit("sleep", json!(5)));
    check(
        "submit unicode {\"msg\":\"héllo ✓\"}",
        submit("unicode", json!({"msg": "héllo ✓"})),
    );
    // A payload that is not JSON is refused with the reason.
    for line in [
        "submit echo hi",
        "submit echo {\"a\":1} extra",
        "submit echo {\"a\":}",
        "submit echo [1,",
    ] {
        let err = parse(line).expect_err(line);
        assert!(
            err.starts_with("payload is not valid JSON"),
            "{line}: {err}"
        );
    }
}

#[test]
fn more_mistakes() {
    check("", Err("empty command; type help"));
    check("   \t ", Err("empty command; type help"));
    check("help me", Err("help takes no arguments"));
    check("devices all", Err("usage: devices [before ID]"));
    check("quit now", Err("quit takes no arguments"));
    check("exit 1", Err("quit takes no arguments"));
    check("cancel", Err("usage: cancel ID"));
    check("cancel a b", Err("usage: cancel ID"));
    check("drain", Err("usage: drain DEVICE"));
    check("auth", Err("usage: auth TOKEN"));
    check("auth two words", Err("usage: auth TOKEN"));
    // The unknown word is quoted lower-cased, as it was matched.
    check("FROB it", Err("unknown command \"frob\"; type help"));
    // A line that is JSON but not an object reaches the text parser too.
    check("[1,2]", Err("unknown command \"[1,2]\"; type help"));
    // Every mistake is one line, as the contract asks.
    for line in [
        "",
        "x",
        "task",
        "tasks a b",
        "submit",
        "submit echo {",
        "help me",
    ] {
        let err = parse(line).expect_err(line);
        assert!(!err.contains('\n'), "{line:?}: {err:?}");
    }
}

#[test]
fn every_command_in_the_help_parses() {
    // Each line of the help after the first names a command and its
    // arguments; with example arguments filled in, each one parses.
    let mut commands = 0;
    for line in HELP.lines().skip(1) {
        let mut words = line.split_whitespace();
        let word = words.next().expect("a help line names a command");
        let example = match words.next() {
            Some("ID") => format!("{word} t-1"),
            Some("DEVICE") => format!("{word} pi"),
            Some("TOKEN") => format!("{word} s3cret"),
            Some("TYPE") => format!("{word} echo {{\"message\":\"hi\"}}"),
            Some("[STATE]") => format!("{word} running"),
            _ => word.to_string(),
        };
        assert!(
            parse(&example).is_ok(),
            "{example:?} from help line {line:?}: {:?}",
            parse(&example)
        );
        commands += 1;
    }
    // The eleven commands are help, status, devices, tasks, task, submit,
    // cancel, retry, drain, auth and quit.
    assert_eq!(commands, 11);
    // The states the help offers are the task states.
    for state in protocol::TaskState::ALL {
        assert!(HELP.contains(state.as_str()), "help does not list {state}");
    }
}

#[test]
fn text_frames_from_the_codec_parse() {
    let mut codec = LineCodec::new(256);
    let mut frames = Vec::new();
    codec
        .decode(
            b"  Task t-7 \r\nsubmit echo {\"a\": \"{\"}\r\n\r\nquit",
            &mut frames,
        )
        .expect("short lines fit");
    codec.decode(b"\n", &mut frames).expect("short lines fit");
    let commands: Vec<_> = frames
        .iter()
        .map(|frame| match frame {
            Frame::Text(line) => parse(line),
            Frame::Json(bytes) => panic!("not a text frame: {}", String::from_utf8_lossy(bytes)),
        })
        .collect();
    assert_eq!(
        commands,
        vec![
            Ok(TextCommand::Task {
                task_id: "t-7".into()
            }),
            Ok(TextCommand::Submit {
                task_type: "echo".into(),
                payload: json!({"a": "{"}),
            }),
            Ok(TextCommand::Quit),
        ]
    );
}
