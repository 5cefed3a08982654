//! Finished tasks live in the store, not in the master's memory: after a
//! restart the master loads only the live tasks, and answers for finished
//! ones by reading the real database (`task_status`, listings, text mode,
//! idempotent submit, retry, cancel, `status`'s counts).

use super::nesting::run_once;
use super::{connect, reply};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next: u64,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let (reader, writer) = connect(addr);
        Client {
            reader,
            writer,
            next: 0,
        }
    }

    /// Sends `message_type` with `data`; returns the reply.
    fn ask(&mut self, message_type: &str, data: Value) -> Value {
        self.next += 1;
        let id = format!("m{}", self.next);
        let line = serde_json::json!({
            "message_type": message_type,
            "message_id": id,
            "data": data,
        });
        writeln!(self.writer, "{line}").expect("send");
        let answer = reply(&mut self.reader);
        assert_eq!(answer["data"]["original_message_id"], id, "{answer}");
        answer
    }

    fn text(&mut self, command: &str) -> String {
        writeln!(self.writer, "{command}").expect("send");
        let mut body = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read");
            if line == ".\n" || line.is_empty() {
                return body;
            }
            body.push_str(&line);
        }
    }
}

fn state(answer: &Value) -> &Value {
    &answer["data"]["result"]["task"]["state"]
}

fn listed(answer: &Value) -> Vec<String> {
    answer["data"]["result"]["tasks"]
        .as_array()
        .expect("a page")
        .iter()
        .map(|task| task["task_id"].as_str().expect("an id").to_string())
        .collect()
}

#[test]
fn finished_tasks_are_read_from_the_store_before_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let submit = |id: &str| serde_json::json!({"task": {"task_id": id, "task_type": "echo"}});
    run_once(dir.path(), |addr| {
        let mut client = Client::new(addr);
        for id in ["h1", "h2", "h3"] {
            let answer = client.ask("task_submit", submit(id));
            assert_eq!(answer["data"]["result"]["created"], true, "{answer}");
        }
        for id in ["h1", "h2"] {
            let answer = client.ask("task_cancel", serde_json::json!({"task_id": id}));
            assert_eq!(state(&answer), "cancelled", "{answer}");
        }
        // The cancels have committed (their acks waited for it), so both
        // are read from the store now.
        let answer = client.ask("task_status", serde_json::json!({"task_id": "h1"}));
        assert_eq!(state(&answer), "cancelled", "{answer}");
        let answer = client.ask("task_cancel", serde_json::json!({"task_id": "h1"}));
        assert_eq!(answer["data"]["code"], "invalid_state", "{answer}");
        let page = client.ask("list_tasks", serde_json::json!({}));
        assert_eq!(listed(&page), ["h3", "h2", "h1"], "{page}");
    });
    run_once(dir.path(), |addr| {
        let mut client = Client::new(addr);
        let answer = client.ask("task_status", serde_json::json!({"task_id": "h2"}));
        assert_eq!(state(&answer), "cancelled", "{answer}");
        let status = client.ask("status", serde_json::json!({}));
        let tasks = &status["data"]["result"]["cluster_stats"]["tasks"];
        assert_eq!(
            (&tasks["cancelled"], &tasks["queued"]),
            (&2.into(), &1.into())
        );
        let page = client.ask(
            "list_tasks",
            serde_json::json!({"state": "cancelled", "limit": 1}),
        );
        assert_eq!(listed(&page), ["h2"], "{page}");
        let cursor = page["data"]["result"]["next_cursor"].clone();
        assert_eq!(cursor, "h2", "{page}");
        let page = client.ask(
            "list_tasks",
            serde_json::json!({"state": "cancelled", "limit": 1, "before": cursor}),
        );
        assert_eq!(listed(&page), ["h1"], "{page}");
        let page = client.ask("list_tasks", serde_json::json!({"limit": 2}));
        assert_eq!(listed(&page), ["h3", "h2"], "{page}");
        // An idempotent submit of a finished task's id.
        let again = client.ask("task_submit", submit("h1"));
        assert_eq!(again["data"]["result"]["created"], false, "{again}");
        let text = client.text("task h1");
        assert!(text.contains("cancelled"), "{text}");
        let retried = client.ask("task_retry", serde_json::json!({"task_id": "h1"}));
        assert_eq!(state(&retried), "queued", "{retried}");
        let status = client.ask("status", serde_json::json!({}));
        let tasks = &status["data"]["result"]["cluster_stats"]["tasks"];
        assert_eq!(
            (&tasks["cancelled"], &tasks["queued"]),
            (&1.into(), &2.into())
        );
    });
}

/// A listing page reads at most `PAGE_READ_BYTES` of records from the
/// store: finished tasks of 300 KiB come three to a page whatever the
/// `limit`, each page ends with a cursor, and paging on shows every task
/// once, newest first.
#[test]
fn a_page_of_large_finished_tasks_is_cut_by_bytes_and_paging_shows_them_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = "x".repeat(300 * 1024);
    let ids: Vec<String> = (0..7).map(|i| format!("big-{i}")).collect();
    run_once(dir.path(), |addr| {
        let mut client = Client::new(addr);
        for id in &ids {
            let task = serde_json::json!({"task": {
                "task_id": id, "task_type": "nobody-runs-this", "payload": {"pad": big}
            }});
            let answer = client.ask("task_submit", task);
            assert_eq!(answer["data"]["result"]["created"], true, "{answer}");
            let answer = client.ask("task_cancel", serde_json::json!({"task_id": id}));
            assert_eq!(state(&answer), "cancelled", "{answer}");
        }
    });
    // After a restart every one of them is in the store only.
    run_once(dir.path(), |addr| {
        let mut client = Client::new(addr);
        let per_page = (master::store::PAGE_READ_BYTES / (300 * 1024 + 1)) as usize;
        assert_eq!(per_page, 3);
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut before = Value::Null;
        loop {
            let mut request = serde_json::json!({"state": "cancelled", "limit": 100});
            if !before.is_null() {
                request["before"] = before.clone();
            }
            let page = client.ask("list_tasks", request);
            let listed = listed(&page);
            assert!(listed.len() <= per_page, "{listed:?}");
            pages.push(listed.len());
            seen.extend(listed);
            before = page["data"]["result"]["next_cursor"].clone();
            if before.is_null() {
                break;
            }
            assert_eq!(
                Some(&before),
                seen.last().map(|id| Value::from(id.clone())).as_ref()
            );
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first, "pages of {pages:?}");
        assert_eq!(pages, [3, 3, 1]);
    });
}
