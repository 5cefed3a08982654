//! The route table: what each request needs from the core, and how its
//! answer is rendered. A request that mirrors a CLI command becomes that
//! command's message, so it is authorized, held until its commit and
//! answered like the CLI's.

use super::render::{CommandKind, Format, Render, TaskFilter};
use super::request::{Head, Method};
use super::{dashboard, HttpError, Response, Status};
use protocol::{
    DeviceRef, Envelope, ListDevices, ListTasks, Message, Subscribe, TaskCancel, TaskRef, TaskState,
};
use serde_json::{json, Value};

/// What a request needs.
#[derive(Debug)]
pub enum Plan {
    /// A response that needs nothing of the cluster (the dashboard's
    /// files, `/healthz`, errors).
    Respond(Response),
    /// Messages for the core, as a CLI would send them; the replies are
    /// rendered with `render`. `change`: they change the cluster, so the
    /// request must carry the admin's proof itself.
    Ask {
        /// The messages, in order.
        messages: Vec<Message>,
        /// How the replies become the body.
        render: Render,
        /// Whether they change the cluster.
        change: bool,
    },
    /// `/readyz`: whether the store takes writes.
    Ready,
    /// `POST /api/v1/dead/retry`: this listing of dead letters (one page),
    /// then a `task_retry` for each, as `retire retry ID` sends.
    RetryDead(Box<Message>),
    /// A Server-Sent Events stream.
    Stream(Stream),
}

/// The streams.
#[derive(Debug, Clone, PartialEq)]
pub enum Stream {
    /// `/api/v1/events`: every event `retire watch` shows; `last_event_id`
    /// is the `Last-Event-ID` of a reconnecting client.
    Events {
        /// The id of the last event the client saw, if it says.
        last_event_id: Option<String>,
    },
    /// `/stream/logs`: events as log lines, of one device when given.
    Logs {
        /// Only lines about this device.
        device: Option<String>,
    },
    /// `/stream/devices`: the device list every
    /// [`super::STREAM_DEVICES_INTERVAL`].
    Devices,
}

impl Stream {
    /// The message that opens it.
    pub fn message(&self) -> Message {
        match self {
            Stream::Events { .. } | Stream::Logs { .. } => Message::Subscribe(Subscribe::default()),
            Stream::Devices => Message::ListDevices(ListDevices {
                limit: Some(crate::core::MAX_DEVICE_LIST),
                ..ListDevices::default()
            }),
        }
    }
}

fn method_not_allowed(allow: &'static str, head: &Head) -> HttpError {
    let message = format!(
        "{} is not allowed on {}; use {allow}",
        head.method_name, head.path
    );
    HttpError {
        allow: Some(allow),
        ..HttpError::new(Status::MethodNotAllowed, message)
    }
}

fn get(head: &Head) -> Result<(), HttpError> {
    match head.method {
        Method::Get | Method::Head => Ok(()),
        _ => Err(method_not_allowed("GET, HEAD", head)),
    }
}

fn post(head: &Head) -> Result<(), HttpError> {
    match head.method {
        Method::Post => Ok(()),
        _ => Err(method_not_allowed("POST", head)),
    }
}

/// Whether a request changes the cluster by its method alone: every
/// `POST` but the console's (whose command says), and the `DELETE` of a
/// dead letter. Its
/// credential is checked before its body is read for meaning, so a
/// stranger learns nothing from the errors of a body it may not send.
pub fn changes(head: &Head) -> bool {
    match head.method {
        Method::Post => head.path != "/api/v1/command",
        Method::Delete => head.path.starts_with("/api/v1/dead/"),
        _ => false,
    }
}

/// The plan for a request (its head and body), or why it is refused.
pub fn plan(head: &Head, body: &[u8]) -> Result<Plan, HttpError> {
    let path = head.path.as_str();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let ask = |message: Message, render: Render| Plan::Ask {
        messages: vec![message],
        render,
        change: false,
    };
    let change = |message: Message| Plan::Ask {
        messages: vec![message],
        render: Render::Document,
        change: true,
    };
    let status_and_devices = || {
        vec![
            Message::Status,
            Message::ListDevices(ListDevices {
                limit: Some(crate::core::MAX_DEVICE_LIST),
                ..ListDevices::default()
            }),
        ]
    };
    let plan = match segments.as_slice() {
        ["healthz"] => {
            get(head)?;
            Plan::Respond(Response::text(Status::Ok, "ok\n"))
        }
        ["readyz"] => {
            get(head)?;
            Plan::Ready
        }
        ["metrics"] => {
            get(head)?;
            Plan::Ask {
                messages: status_and_devices(),
                render: Render::Metrics,
                change: false,
            }
        }
        ["text", "devices"] => {
            get(head)?;
            let format = Format::from_accept(head.header("accept"));
            ask(list_devices(head)?, Render::TextDevices(format))
        }
        ["text", "status"] => {
            get(head)?;
            Plan::Ask {
                messages: status_and_devices(),
                render: Render::TextStatus,
                change: false,
            }
        }
        ["text", "metrics"] => {
            get(head)?;
            Plan::Ask {
                messages: status_and_devices(),
                render: Render::TextMetrics,
                change: false,
            }
        }
        ["text", "logs"] => {
            get(head)?;
            Plan::Ask {
                messages: vec![Message::Status],
                render: Render::TextLogs {
                    device: head.query("device").map(str::to_string),
                },
                change: false,
            }
        }
        ["stream", "devices"] => {
            get(head)?;
            Plan::Stream(Stream::Devices)
        }
        ["stream", "logs"] => {
            get(head)?;
            Plan::Stream(Stream::Logs {
                device: head.query("device").map(str::to_string),
            })
        }
        ["api", "v1", "events"] => {
            get(head)?;
            Plan::Stream(Stream::Events {
                last_event_id: head.header("last-event-id").map(str::to_string),
            })
        }
        ["api", "v1", "cluster", "status"] => {
            get(head)?;
            Plan::Ask {
                messages: status_and_devices(),
                render: Render::ClusterStatus,
                change: false,
            }
        }
        ["api", "v1", "status"] => {
            get(head)?;
            ask(Message::Status, Render::Document)
        }
        ["api", "v1", "devices"] => {
            get(head)?;
            ask(list_devices(head)?, Render::CompatDevices)
        }
        ["api", "v1", "devices", id] => {
            get(head)?;
            ask(
                Message::DeviceInfo(DeviceRef {
                    device_id: id.to_string(),
                }),
                Render::Document,
            )
        }
        ["api", "v1", "devices", id, "drain"] => {
            post(head)?;
            change(Message::DrainDevice(DeviceRef {
                device_id: id.to_string(),
            }))
        }
        ["api", "v1", "devices", id, "revoke"] => {
            post(head)?;
            change(Message::RevokeDevice(DeviceRef {
                device_id: id.to_string(),
            }))
        }
        ["api", "v1", "tasks"] => match head.method {
            Method::Get | Method::Head => list_tasks(head, None)?,
            Method::Post => change(submit(body)?),
            _ => return Err(method_not_allowed("GET, HEAD, POST", head)),
        },
        ["api", "v1", "tasks", id] => {
            get(head)?;
            ask(
                Message::TaskStatus(TaskRef {
                    task_id: id.to_string(),
                }),
                Render::Document,
            )
        }
        ["api", "v1", "tasks", id, "cancel"] => {
            post(head)?;
            change(Message::TaskCancel(TaskCancel {
                attempt: None,
                task_id: id.to_string(),
            }))
        }
        ["api", "v1", "tasks", id, "retry"] => {
            post(head)?;
            change(Message::TaskRetry(TaskRef {
                task_id: id.to_string(),
            }))
        }
        ["api", "v1", "dead"] => {
            get(head)?;
            list_tasks(head, Some(TaskState::DeadLetter))?
        }
        ["api", "v1", "dead", id] if head.method == Method::Delete => {
            change(Message::TaskDelete(TaskRef {
                task_id: id.to_string(),
            }))
        }
        ["api", "v1", "dead", "retry"] => {
            post(head)?;
            Plan::RetryDead(Box::new(Message::ListTasks(ListTasks {
                before: None,
                limit: Some(limit(head, crate::core::MAX_LIST)?.min(crate::core::MAX_LIST)),
                state: Some(TaskState::DeadLetter),
            })))
        }
        ["api", "v1", "dead", _] => return Err(method_not_allowed("DELETE", head)),
        ["api", "v1", "command"] => {
            post(head)?;
            command(body)?
        }
        ["api", ..] => {
            return Err(HttpError::new(
                Status::NotFound,
                format!("no route {path}; see docs/http.md"),
            ))
        }
        _ => {
            get(head)?;
            match dashboard::asset(path) {
                Some((content_type, bytes)) => Plan::Respond(Response {
                    status: Status::Ok,
                    content_type,
                    headers: dashboard::HEADERS
                        .iter()
                        .map(|(name, value)| (*name, value.to_string()))
                        .collect(),
                    body: bytes.to_vec(),
                }),
                None => {
                    return Err(HttpError::new(
                        Status::NotFound,
                        format!("nothing at {path}"),
                    ))
                }
            }
        }
    };
    Ok(plan)
}

/// `list_devices` from `?status=`, `?role=`, `?cursor=` and `?limit=`.
fn list_devices(head: &Head) -> Result<Message, HttpError> {
    let status = head.query("status").map(str::to_string);
    if let Some(status) = &status {
        if protocol::DeviceStatus::parse(status).is_none() {
            return Err(HttpError::new(
                Status::BadRequest,
                format!("unknown status {status:?}; use online, draining or offline"),
            ));
        }
    }
    Ok(Message::ListDevices(ListDevices {
        before: head.query("cursor").map(str::to_string),
        limit: Some(limit(head, crate::core::DEFAULT_DEVICE_LIST)?),
        role: head.query("role").map(str::to_string),
        status,
    }))
}

fn limit(head: &Head, default: usize) -> Result<usize, HttpError> {
    match head.query("limit") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                HttpError::new(
                    Status::BadRequest,
                    format!("limit {text:?} is not a positive number"),
                )
            }),
    }
}

/// `list_tasks` from `?state=`, `?cursor=` and `?limit=`; `?type=`,
/// `?device=` and `?q=` filter the page (see [`TaskFilter`]).
fn list_tasks(head: &Head, state: Option<TaskState>) -> Result<Plan, HttpError> {
    let state = match (state, head.query("state")) {
        (Some(state), _) => Some(state),
        (None, None | Some("")) => None,
        (None, Some(name)) => Some(
            name.parse::<TaskState>()
                .map_err(|err| HttpError::new(Status::BadRequest, err.to_string()))?,
        ),
    };
    let limit = limit(head, crate::core::DEFAULT_LIST)?.min(crate::core::MAX_LIST);
    let filter = TaskFilter {
        task_type: head
            .query("type")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        device: head
            .query("device")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        text: head
            .query("q")
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase),
        limit,
    };
    // A filtered page reads the most a listing gives and keeps the
    // matches: a request costs one page of the index, as every read.
    let asked = if filter.is_empty() {
        limit
    } else {
        crate::core::MAX_LIST
    };
    Ok(Plan::Ask {
        messages: vec![Message::ListTasks(ListTasks {
            before: head
                .query("cursor")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            limit: Some(asked),
            state,
        })],
        render: Render::TaskPage(filter),
        change: false,
    })
}

/// Parses a JSON body, or says why it is not one.
fn json_body(body: &[u8]) -> Result<Value, HttpError> {
    serde_json::from_slice(body)
        .map_err(|err| HttpError::new(Status::BadRequest, format!("the body is not JSON: {err}")))
}

/// `POST /api/v1/tasks`: one task object, or an array of them (a batch),
/// decoded by the protocol's own decoder, as the CLI's line would be.
fn submit(body: &[u8]) -> Result<Message, HttpError> {
    let data = match json_body(body)? {
        Value::Array(tasks) => json!({ "tasks": tasks }),
        task @ Value::Object(_) => json!({ "task": task }),
        _ => {
            return Err(HttpError::new(
                Status::BadRequest,
                "the body must be a task object or an array of tasks",
            ))
        }
    };
    decode(json!({ "message_type": "task_submit", "data": data }))
}

/// A message built as JSON, through the protocol's decoder (every check
/// a line gets).
fn decode(value: Value) -> Result<Message, HttpError> {
    Envelope::from_value(value)
        .map(|envelope| envelope.message)
        .map_err(|err| HttpError::new(Status::BadRequest, err.detail).with_code("INVALID_MESSAGE"))
}

/// `POST /api/v1/command`, the older design's console: `{"command":
/// "devices list --status=online", "format": "text"}`.
fn command(body: &[u8]) -> Result<Plan, HttpError> {
    let missing =
        || HttpError::new(Status::BadRequest, "no command given").with_code("MISSING_COMMAND");
    let value = json_body(body)?;
    let text = match value.get("command") {
        None | Some(Value::Null) => return Err(missing()),
        Some(Value::String(text)) if text.trim().is_empty() => return Err(missing()),
        Some(Value::String(text)) => text.trim().to_string(),
        Some(_) => {
            return Err(
                HttpError::new(Status::BadRequest, "command must be a string")
                    .with_code("INVALID_COMMAND"),
            )
        }
    };
    let format = value
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or("text")
        .to_string();
    let invalid =
        |why: String| HttpError::new(Status::BadRequest, why).with_code("INVALID_COMMAND");
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut positional = Vec::new();
    let mut options = Vec::new();
    for word in &words {
        match word.strip_prefix("--") {
            Some(option) => {
                let (key, value) = option.split_once('=').unwrap_or((option, ""));
                options.push((key, value));
            }
            None => positional.push(*word),
        }
    }
    let option = |name: &str| {
        options
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, v)| *v)
    };
    let render = |kind: CommandKind| Render::Command {
        command: text.clone(),
        format: format.clone(),
        kind,
    };
    let status_and_devices = vec![
        Message::Status,
        Message::ListDevices(ListDevices {
            limit: Some(crate::core::MAX_DEVICE_LIST),
            ..ListDevices::default()
        }),
    ];
    let read = |messages: Vec<Message>, kind: CommandKind| Plan::Ask {
        messages,
        render: render(kind),
        change: false,
    };
    let write = |message: Message| Plan::Ask {
        messages: vec![message],
        render: render(CommandKind::Json),
        change: true,
    };
    let plan = match positional.as_slice() {
        ["cluster", "status"] => read(status_and_devices, CommandKind::Status),
        ["cluster", "health"] => read(status_and_devices, CommandKind::Health),
        ["cluster", "metrics"] => read(status_and_devices, CommandKind::Metrics),
        ["devices", "list"] => {
            let status = option("status").filter(|s| !s.is_empty()).map(str::to_string);
            read(
                vec![Message::ListDevices(ListDevices {
                    limit: Some(crate::core::MAX_DEVICE_LIST),
                    status,
                    ..ListDevices::default()
                })],
                CommandKind::Devices,
            )
        }
        ["devices", "show", id] => read(
            vec![Message::DeviceInfo(DeviceRef {
                device_id: id.to_string(),
            })],
            CommandKind::Json,
        ),
        ["tasks", "list"] => {
            let state = match option("status").or(option("state")).filter(|s| !s.is_empty()) {
                None => None,
                Some(name) => Some(name.parse::<TaskState>().map_err(|err| invalid(err.to_string()))?),
            };
            read(
                vec![Message::ListTasks(ListTasks {
                    before: None,
                    limit: Some(crate::core::DEFAULT_LIST),
                    state,
                })],
                CommandKind::Tasks,
            )
        }
        ["tasks", "show", id] => read(
            vec![Message::TaskStatus(TaskRef {
                task_id: id.to_string(),
            })],
            CommandKind::Json,
        ),
        ["tasks", "cancel", id] => write(Message::TaskCancel(TaskCancel {
            attempt: None,
            task_id: id.to_string(),
        })),
        ["tasks", "retry", id] => write(Message::TaskRetry(TaskRef {
            task_id: id.to_string(),
        })),
        ["tasks", "submit", task_type, ..] => {
            // The payload is the rest of the command after the type, as JSON.
            let rest = text
                .split_once(task_type)
                .map(|(_, rest)| rest.trim())
                .unwrap_or("");
            let payload: Value = if rest.is_empty() {
                json!({})
            } else {
                serde_json::from_str(rest).map_err(|err| invalid(format!("the payload is not JSON: {err}")))?
            };
            write(decode(json!({
                "message_type": "task_submit",
                "data": { "task": { "task_type": task_type, "payload": payload } },
            }))?)
        }
        _ => {
            return Err(invalid(format!(
                "unknown command {text:?}; commands: cluster status|health|metrics, devices list|show ID, \
                 tasks list|show ID|submit TYPE [JSON]|cancel ID|retry ID"
            )))
        }
    };
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse_head, Parsed};

    fn head_of(text: &str) -> Head {
        match parse_head(text.as_bytes()) {
            Ok(Parsed::Head(head)) => head,
            other => panic!("a head: {text:?} {other:?}"),
        }
    }

    /// What a request plans, in short: `respond 200`, `ask 2`, `change 1`,
    /// `stream`, `ready`, `retry-dead`, or the refusal's status and code.
    fn outcome(method: &str, target: &str, body: &str) -> String {
        let head = head_of(&format!(
            "{method} {target} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ));
        match plan(&head, body.as_bytes()) {
            Ok(Plan::Respond(response)) => format!("respond {}", response.status.line().0),
            Ok(Plan::Ask {
                messages, change, ..
            }) => format!(
                "{} {}",
                if change { "change" } else { "ask" },
                messages.len()
            ),
            Ok(Plan::Ready) => "ready".into(),
            Ok(Plan::RetryDead(_)) => "retry-dead".into(),
            Ok(Plan::Stream(_)) => "stream".into(),
            Err(error) => format!("{} {}", error.status.line().0, error.code),
        }
    }

    #[test]
    fn the_route_table() {
        let check = |method: &str, target: &str, body: &str, expect: &str| {
            assert_eq!(
                outcome(method, target, body),
                expect,
                "{method} {target} {body}"
            );
        };
        check("GET", "/healthz", "", "respond 200");
        check("HEAD", "/healthz", "", "respond 200");
        check("POST", "/healthz", "", "405 METHOD_NOT_ALLOWED");
        check("GET", "/readyz", "", "ready");
        check("GET", "/", "", "respond 200");
        check("GET", "/assets/none.js", "", "404 NOT_FOUND");
        check("GET", "/nothing", "", "404 NOT_FOUND");
        check("GET", "/api/v1/nothing", "", "404 NOT_FOUND");
        check("GET", "/metrics", "", "ask 2");
        check("GET", "/text/devices", "", "ask 1");
        check("GET", "/text/devices?status=asleep", "", "400 BAD_REQUEST");
        check("GET", "/text/status", "", "ask 2");
        check("GET", "/text/metrics", "", "ask 2");
        check("GET", "/text/logs", "", "ask 1");
        check("GET", "/stream/devices", "", "stream");
        check("GET", "/stream/logs?device=pi", "", "stream");
        check("GET", "/api/v1/events", "", "stream");
        check("GET", "/api/v1/cluster/status", "", "ask 2");
        check("GET", "/api/v1/devices", "", "ask 1");
        check("GET", "/api/v1/devices?limit=0", "", "400 BAD_REQUEST");
        check("GET", "/api/v1/devices/pi", "", "ask 1");
        check("POST", "/api/v1/devices/pi/drain", "", "change 1");
        check(
            "GET",
            "/api/v1/devices/pi/drain",
            "",
            "405 METHOD_NOT_ALLOWED",
        );
        check("POST", "/api/v1/devices/pi/revoke", "", "change 1");
        check(
            "GET",
            "/api/v1/tasks?state=queued&type=echo&q=x",
            "",
            "ask 1",
        );
        check("GET", "/api/v1/tasks?state=sleeping", "", "400 BAD_REQUEST");
        check(
            "POST",
            "/api/v1/tasks",
            r#"{"task_type":"echo","payload":{}}"#,
            "change 1",
        );
        check(
            "POST",
            "/api/v1/tasks",
            r#"[{"task_type":"echo","payload":{}}]"#,
            "change 1",
        );
        check("POST", "/api/v1/tasks", r#"[]"#, "400 INVALID_MESSAGE");
        check(
            "POST",
            "/api/v1/tasks",
            r#"{"payload":{}}"#,
            "400 INVALID_MESSAGE",
        );
        check("POST", "/api/v1/tasks", "not json", "400 BAD_REQUEST");
        check("POST", "/api/v1/tasks", "7", "400 BAD_REQUEST");
        check("DELETE", "/api/v1/tasks", "", "405 METHOD_NOT_ALLOWED");
        check("GET", "/api/v1/tasks/t1", "", "ask 1");
        check("POST", "/api/v1/tasks/t1/cancel", "", "change 1");
        check("POST", "/api/v1/tasks/t1/retry", "", "change 1");
        check("GET", "/api/v1/dead", "", "ask 1");
        check("POST", "/api/v1/dead/retry", "", "retry-dead");
        check("DELETE", "/api/v1/dead/t1", "", "change 1");
        check("DELETE", "/api/v1/dead/retry", "", "change 1");
        check("GET", "/api/v1/dead/t1", "", "405 METHOD_NOT_ALLOWED");
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"cluster status"}"#,
            "ask 2",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"devices list --status=online"}"#,
            "ask 1",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"tasks list --status=bogus"}"#,
            "400 INVALID_COMMAND",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"tasks submit echo {\"a\":1}"}"#,
            "change 1",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"tasks cancel t1"}"#,
            "change 1",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"rm -rf /"}"#,
            "400 INVALID_COMMAND",
        );
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":"  "}"#,
            "400 MISSING_COMMAND",
        );
        check("POST", "/api/v1/command", r#"{}"#, "400 MISSING_COMMAND");
        check(
            "POST",
            "/api/v1/command",
            r#"{"command":7}"#,
            "400 INVALID_COMMAND",
        );
    }

    #[test]
    fn only_posts_but_the_console_change_the_cluster() {
        let changes_for = |text: &str| changes(&head_of(text));
        assert!(changes_for("POST /api/v1/tasks HTTP/1.1\r\n\r\n"));
        assert!(changes_for("POST /healthz HTTP/1.1\r\n\r\n"));
        assert!(!changes_for("POST /api/v1/command HTTP/1.1\r\n\r\n"));
        assert!(!changes_for("GET /api/v1/tasks HTTP/1.1\r\n\r\n"));
        assert!(!changes_for("DELETE /api/v1/tasks HTTP/1.1\r\n\r\n"));
        assert!(changes_for("DELETE /api/v1/dead/t1 HTTP/1.1\r\n\r\n"));
    }
}
