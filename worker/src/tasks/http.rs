//! `http_request`: a plain-HTTP request made by the worker itself.
//!
//! The client is `ureq` without TLS, which is pure Rust. **`https://` is not
//! supported**: every mature TLS stack for Rust needs C or assembly for its
//! cryptography (`ring`, `aws-lc-rs`), and the worker must cross-build with no C
//! toolchain. A task that needs HTTPS can run `curl` through `shell`.
//!
//! Payload: `{"url": "http://…", "method": "GET", "headers": {"k": "v"}, "body": …}`;
//! `body` is sent as is when it is a string and as JSON otherwise. The output is the
//! response body (parsed when the response says it is JSON), with `http_status` and
//! `headers` beside it. A 2xx status is `completed`; any other is `failed`.

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::tasks::exec::CancelToken;
use crate::tasks::task::TaskOutcome;

/// Whether this build can run `http_request` tasks.
pub const AVAILABLE: bool = true;

/// How long a request may take when the task sets no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of a response body that are kept.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Runs one `http_request` task.
pub fn request(payload: &Value, timeout: Option<Duration>, cancel: &CancelToken) -> TaskOutcome {
    let request = match Request::from_payload(payload) {
        Ok(request) => request,
        Err(error) => return TaskOutcome::failed(error),
    };
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    // ureq blocks until the response or its own timeout; running it on a helper thread
    // lets a cancel end the task at once (the thread then ends at the timeout).
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("http-request".into())
        .spawn(move || {
            let _ = sender.send(request.send(timeout));
        });
    if let Err(error) = spawned {
        return TaskOutcome::failed(format!("could not start the request thread: {error}"));
    }
    crossbeam_channel::select! {
        recv(receiver) -> outcome => outcome.unwrap_or_else(|_| {
            TaskOutcome::failed("the request thread ended without an answer")
        }),
        recv(cancel.cancelled_receiver()) -> _ => {
            TaskOutcome::unsuccessful(protocol::ResultStatus::Cancelled, "cancelled")
        },
    }
}

#[derive(Debug)]
struct Request {
    url: String,
    method: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn from_payload(payload: &Value) -> Result<Request, String> {
        let url = match payload.get("url") {
            Some(Value::String(url)) => url.clone(),
            Some(_) => return Err("payload.url must be a string".into()),
            None => return Err("payload.url (an http:// address) is missing".into()),
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(
                "https is not supported by http_request: the worker has no TLS, \
                        because TLS libraries need C code (use curl in a shell task)"
                    .into(),
            );
        }
        if !lower.starts_with("http://") {
            return Err(format!("payload.url must start with http://, got {url:?}"));
        }
        let method = match payload.get("method") {
            None | Some(Value::Null) => "GET".to_string(),
            Some(Value::String(method)) if !method.is_empty() => method.to_ascii_uppercase(),
            Some(_) => return Err("payload.method must be a string such as \"GET\"".into()),
        };
        let headers = match payload.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(headers)) => headers
                .iter()
                .map(|(name, value)| match value {
                    Value::String(value) => Ok((name.clone(), value.clone())),
                    other => Ok((name.clone(), other.to_string())),
                })
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("payload.headers must be an object".into()),
        };
        let body = match payload.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone().into_bytes()),
            Some(other) => Some(other.to_string().into_bytes()),
        };
        Ok(Request {
            url,
            method,
            headers,
            body,
        })
    }

    fn send(self, timeout: Duration) -> TaskOutcome {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut builder = ureq::http::Request::builder()
            .method(self.method.as_str())
            .uri(self.url.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = match builder.body(self.body.unwrap_or_default()) {
            Ok(request) => request,
            Err(error) => return TaskOutcome::failed(format!("invalid request: {error}")),
        };
        let mut response = match agent.run(request) {
            Ok(response) => response,
            Err(ureq::Error::Timeout(_)) => {
                return TaskOutcome::unsuccessful(
                    protocol::ResultStatus::Timeout,
                    format!("timed out after {} s", timeout.as_secs_f64()),
                )
            }
            Err(error) => return TaskOutcome::failed(format!("request failed: {error}")),
        };
        let status = response.status().as_u16();
        let mut headers = Map::new();
        for (name, value) in response.headers() {
            headers.insert(
                name.as_str().to_string(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            );
        }
        let is_json = response
            .headers()
            .get("content-type")
            .is_some_and(|kind| kind.as_bytes().windows(4).any(|w| w == b"json"));
        let mut body = Vec::new();
        let read = response
            .body_mut()
            .as_reader()
            .take(MAX_BODY_BYTES + 1)
            .read_to_end(&mut body);
        if let Err(error) = read {
            return TaskOutcome::failed(format!("reading the response failed: {error}"));
        }
        let truncated = body.len() as u64 > MAX_BODY_BYTES;
        body.truncate(usize::try_from(MAX_BODY_BYTES).unwrap_or(usize::MAX));
        let text = String::from_utf8_lossy(&body).into_owned();
        let output = if is_json && !truncated {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        let mut outcome = TaskOutcome::completed(output)
            .with_field("exit_code", Value::Null)
            .with_field("http_status", json!(status))
            .with_field("headers", Value::Object(headers))
            .with_field("output_truncated", json!(truncated));
        if !(200..300).contains(&status) {
            outcome.status = protocol::ResultStatus::Failed;
            outcome.error = Some(format!("HTTP status {status}"));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn a_get_reads_status_headers_and_a_json_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if line.trim().is_empty() {
                    break;
                }
            }
            let body = r#"{"hello":"world"}"#;
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("respond");
            request_line
        });
        let outcome = request(
            &json!({"url": format!("http://{address}/path?q=1")}),
            Some(Duration::from_secs(10)),
            &CancelToken::new(),
        );
        assert_eq!(
            outcome.status,
            protocol::ResultStatus::Completed,
            "{outcome:?}"
        );
        assert_eq!(outcome.result["output"], json!({"hello": "world"}));
        assert_eq!(outcome.result["http_status"], json!(200));
        assert_eq!(
            server.join().expect("server").trim(),
            "GET /path?q=1 HTTP/1.1"
        );
    }

    #[test]
    fn https_and_bad_payloads_are_refused_with_a_reason() {
        let refuse = |payload: Value, needle: &str| {
            let outcome = request(&payload, None, &CancelToken::new());
            assert_eq!(outcome.status, protocol::ResultStatus::Failed);
            let error = outcome.error.unwrap_or_default();
            assert!(
                error.contains(needle),
                "{error:?} should mention {needle:?}"
            );
        };
        refuse(
            json!({"url": "https://example.invalid/"}),
            "https is not supported",
        );
        refuse(json!({}), "payload.url");
        refuse(json!({"url": "ftp://x/"}), "http://");
        refuse(json!({"url": "http://x/", "headers": []}), "headers");
    }
}
