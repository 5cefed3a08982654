//! The plain-text commands a person types into `nc master 8080`.
//!
//! A line whose first non-blank character is not `{` is a text command.
//! Replies to text commands are plain text that ends in a line holding a
//! single `.`, so scripts can read them as well as people.

use serde_json::Value;

mod duration;
mod table;

pub use duration::{parse_duration, seconds_to_duration, DurationError, Shortest};
pub use table::{clean, render_table, Align, Table, TASK_COLUMNS};

/// One parsed text command.
#[derive(Debug, Clone, PartialEq)]
pub enum TextCommand {
    /// `help`: list the commands.
    Help,
    /// `status`: cluster totals.
    Status,
    /// `devices [before ID]`: one line per device, newest registered
    /// first, a page at a time.
    Devices {
        /// Only devices registered before this one (the previous page's
        /// last).
        before: Option<String>,
    },
    /// `tasks [STATE] [before ID]`: one line per task, newest first, a
    /// page at a time.
    Tasks {
        /// Only tasks in this state.
        state: Option<String>,
        /// Only tasks older than this one (the previous page's last).
        before: Option<String>,
    },
    /// `task ID`: one task in full.
    Task {
        /// The task's id.
        task_id: String,
    },
    /// `submit TYPE [JSON-PAYLOAD]`: queue a task.
    Submit {
        /// The task type.
        task_type: String,
        /// The payload; `{}` when none is given.
        payload: Value,
    },
    /// `cancel ID`: cancel a task.
    Cancel {
        /// The task's id.
        task_id: String,
    },
    /// `retry ID`: queue a failed, timed-out, cancelled or dead-lettered
    /// task again.
    Retry {
        /// The task's id.
        task_id: String,
    },
    /// `drain DEVICE`: give a device no new work.
    Drain {
        /// The device's id.
        device_id: String,
    },
    /// `auth TOKEN`: authenticate this connection.
    Auth {
        /// The token.
        token: String,
    },
    /// `quit`: close the connection.
    Quit,
}

/// The help text, one command a line.
pub const HELP: &str = "\
commands:
  help                      this list
  status                    cluster totals
  devices [before ID]       the 500 newest devices, or those registered before device ID
  tasks [STATE] [before ID] the 100 newest tasks, or those older than task ID (STATE: queued, assigned, running, retrying, completed, failed, timed_out, cancelled, dead_letter)
  task ID                   one task in full
  submit TYPE [JSON]        queue a task, e.g. submit echo {\"message\":\"hi\"}
  cancel ID                 cancel a task
  retry ID                  queue a failed or dead-lettered task again
  drain DEVICE              give a device no new work
  auth TOKEN                authenticate this connection
  quit                      close the connection";

/// Parses one line. The error is a one-line explanation for the person.
pub fn parse(line: &str) -> Result<TextCommand, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    };
    let word = word.to_ascii_lowercase();
    let one_arg = |name: &str, what: &str| -> Result<String, String> {
        let mut args = rest.split_whitespace();
        match (args.next(), args.next()) {
            (Some(arg), None) => Ok(arg.to_string()),
            _ => Err(format!("usage: {name} {what}")),
        }
    };
    let no_args = |command: TextCommand, name: &str| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(format!("{name} takes no arguments"))
        }
    };
    match word.as_str() {
        "help" | "?" => no_args(TextCommand::Help, "help"),
        "status" => no_args(TextCommand::Status, "status"),
        "devices" => {
            let args: Vec<&str> = rest.split_whitespace().collect();
            match args.as_slice() {
                [] => Ok(TextCommand::Devices { before: None }),
                [word, id] if word.eq_ignore_ascii_case("before") => Ok(TextCommand::Devices {
                    before: Some(id.to_string()),
                }),
                _ => Err("usage: devices [before ID]".into()),
            }
        }
        "tasks" => {
            let args: Vec<&str> = rest.split_whitespace().collect();
            let keyword = |word: &str| word.eq_ignore_ascii_case("before");
            let (state, before) = match args.as_slice() {
                [] => (None, None),
                [word, id] if keyword(word) => (None, Some(*id)),
                [state] if !keyword(state) => (Some(*state), None),
                [state, word, id] if keyword(word) && !keyword(state) => (Some(*state), Some(*id)),
                _ => return Err("usage: tasks [STATE] [before ID]".into()),
            };
            Ok(TextCommand::Tasks {
                state: state.map(str::to_string),
                before: before.map(str::to_string),
            })
        }
        "task" => one_arg("task", "ID").map(|task_id| TextCommand::Task { task_id }),
        "cancel" => one_arg("cancel", "ID").map(|task_id| TextCommand::Cancel { task_id }),
        "retry" => one_arg("retry", "ID").map(|task_id| TextCommand::Retry { task_id }),
        "drain" => one_arg("drain", "DEVICE").map(|device_id| TextCommand::Drain { device_id }),
        "auth" => one_arg("auth", "TOKEN").map(|token| TextCommand::Auth { token }),
        "quit" | "exit" => no_args(TextCommand::Quit, "quit"),
        "submit" => {
            let (task_type, payload) = match rest.split_once(char::is_whitespace) {
                Some((task_type, payload)) => (task_type, payload.trim()),
                None => (rest, ""),
            };
            if task_type.is_empty() {
                return Err("usage: submit TYPE [JSON-PAYLOAD]".into());
            }
            let payload = if payload.is_empty() {
                Value::Object(Default::default())
            } else {
                let payload: Value = serde_json::from_str(payload)
                    .map_err(|err| format!("payload is not valid JSON: {err}"))?;
                // The same limit as a JSON `task_submit`'s payload.
                crate::limits::check_depth("payload", &payload)?;
                payload
            };
            Ok(TextCommand::Submit {
                task_type: task_type.to_string(),
                payload,
            })
        }
        "" => Err("empty command; type help".into()),
        other => Err(format!("unknown command {other:?}; type help")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(line: &str, expect: Result<TextCommand, &str>) {
        assert_eq!(
            parse(line),
            expect.map_err(str::to_string),
            "line: {line:?}"
        );
    }

    #[test]
    fn commands() {
        check("help", Ok(TextCommand::Help));
        check("  STATUS ", Ok(TextCommand::Status));
        check("devices", Ok(TextCommand::Devices { before: None }));
        check(
            "devices BEFORE pi-1",
            Ok(TextCommand::Devices {
                before: Some("pi-1".into()),
            }),
        );
        check("devices pi-1", Err("usage: devices [before ID]"));
        check("devices before", Err("usage: devices [before ID]"));
        let tasks = |state: Option<&str>, before: Option<&str>| {
            Ok(TextCommand::Tasks {
                state: state.map(str::to_string),
                before: before.map(str::to_string),
            })
        };
        check("tasks", tasks(None, None));
        check("tasks running", tasks(Some("running"), None));
        check("tasks before t-9", tasks(None, Some("t-9")));
        check(
            "tasks  failed  Before  t-9 ",
            tasks(Some("failed"), Some("t-9")),
        );
        check(
            "task t-1",
            Ok(TextCommand::Task {
                task_id: "t-1".into(),
            }),
        );
        check(
            "cancel t-1",
            Ok(TextCommand::Cancel {
                task_id: "t-1".into(),
            }),
        );
        check(
            "drain pi",
            Ok(TextCommand::Drain {
                device_id: "pi".into(),
            }),
        );
        check(
            "auth s3cret",
            Ok(TextCommand::Auth {
                token: "s3cret".into(),
            }),
        );
        check("quit", Ok(TextCommand::Quit));
        check(
            "submit echo {\"message\": \"hi there\"}",
            Ok(TextCommand::Submit {
                task_type: "echo".into(),
                payload: json!({"message": "hi there"}),
            }),
        );
        check(
            "submit system_info",
            Ok(TextCommand::Submit {
                task_type: "system_info".into(),
                payload: json!({}),
            }),
        );
    }

    #[test]
    fn mistakes() {
        check("task", Err("usage: task ID"));
        check("task a b", Err("usage: task ID"));
        check("status now", Err("status takes no arguments"));
        for line in [
            "tasks a b",
            "tasks before",
            "tasks BEFORE",
            "tasks running before",
            "tasks before t-1 t-2",
            "tasks running after t-1",
        ] {
            check(line, Err("usage: tasks [STATE] [before ID]"));
        }
        check("submit", Err("usage: submit TYPE [JSON-PAYLOAD]"));
        check(
            "frobnicate",
            Err("unknown command \"frobnicate\"; type help"),
        );
        assert!(
            parse("submit echo {nope").is_err_and(|e| e.starts_with("payload is not valid JSON"))
        );
    }
}
