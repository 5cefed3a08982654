//! Netcat mode: text commands in, aligned plain text out, each reply
//! ending in a line holding a single `.`.

use super::records::TaskRecord;
use super::rfc3339;
use super::{ConnId, Core, Now};
use protocol::text::{self, render_table, TextCommand, TASK_COLUMNS};
use protocol::{
    ListDevices, ListTasks, Reply, TaskCancel, TaskSpec, TaskState, TaskSubmit, TaskView,
};

impl Core {
    /// A text command arrived on `conn`.
    pub fn handle_text(&mut self, now: Now, conn: ConnId, line: &str) {
        let command = match text::parse(line) {
            Ok(command) => command,
            Err(explanation) => {
                self.reply_text(conn, format!("error: {explanation}"));
                return;
            }
        };
        if self.registry.is_closing(conn) {
            return;
        }
        let changes = match &command {
            TextCommand::Help | TextCommand::Quit | TextCommand::Auth { .. } => None,
            TextCommand::Status
            | TextCommand::Devices { .. }
            | TextCommand::Tasks { .. }
            | TextCommand::Task { .. } => Some(false),
            TextCommand::Submit { .. }
            | TextCommand::Cancel { .. }
            | TextCommand::Retry { .. }
            | TextCommand::Drain { .. } => Some(true),
        };
        if let Some(changes) = changes {
            if let Err(why) = self.authorize_text(conn, changes) {
                self.reply_text(conn, format!("error: {why}"));
                return;
            }
        }
        match command {
            TextCommand::Help => self.reply_text(conn, text::HELP.to_string()),
            TextCommand::Status => {
                let body = self.status_text();
                self.reply_text(conn, body);
            }
            TextCommand::Devices { before } => {
                let body = self.devices_text(before);
                self.reply_text(conn, body);
            }
            TextCommand::Tasks { state, before } => {
                let state = match state.map(|name| name.parse::<TaskState>()).transpose() {
                    Ok(state) => state,
                    Err(unknown) => {
                        self.reply_text(conn, format!("error: {unknown}"));
                        return;
                    }
                };
                let list = ListTasks {
                    state,
                    limit: None,
                    before,
                };
                if self.route_text_list(conn, &list).is_some() {
                    return;
                }
                let body = match self.task_page(&list) {
                    Ok((records, next)) => {
                        tasks_text(&records, next, list.state.map(TaskState::as_str))
                    }
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
            }
            TextCommand::Task { task_id } => {
                if self.route_text_task(conn, &task_id).is_some() {
                    return;
                }
                let body = match self.task_view(&task_id) {
                    Ok(task) => task_text(&task),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
            }
            TextCommand::Submit { task_type, payload } => {
                let submit = TaskSubmit {
                    tasks: vec![TaskSpec::new(task_type, payload)],
                    batch: false,
                };
                if self.route_text_submit(conn, &submit).is_some() {
                    return;
                }
                let body = submitted_text(self.on_submit(now, submit, &Default::default()));
                self.reply_text(conn, body);
            }
            TextCommand::Cancel { task_id } => {
                if self.route_text_cancel(conn, &task_id).is_some() {
                    return;
                }
                let body = match self.on_cancel(
                    now,
                    TaskCancel {
                        task_id: task_id.clone(),
                        attempt: None,
                    },
                ) {
                    Ok(_) => format!("cancelled {task_id}"),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
            }
            TextCommand::Retry { task_id } => {
                if self.route_text_retry(conn, &task_id).is_some() {
                    return;
                }
                let body = match self.on_retry(now, &task_id) {
                    Ok(_) => format!("queued {task_id} again"),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
            }
            TextCommand::Drain { device_id } => {
                let body = match self.on_drain(&device_id) {
                    Ok(_) => format!("draining {device_id}"),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
            }
            TextCommand::Auth { token } => {
                if !self.config.auth.required {
                    self.reply_text(
                        conn,
                        "ok: this master does not require authentication".to_string(),
                    );
                } else if self.text_auth(conn, &token) {
                    self.reply_text(conn, "ok: authenticated as admin".to_string());
                } else {
                    self.reply_text(
                        conn,
                        "error: authentication failed; closing the connection".to_string(),
                    );
                    if let Some(auth) = self.registry.auth_mut(conn) {
                        auth.mark_closing();
                    }
                    self.out.close(conn);
                }
            }
            TextCommand::Quit => {
                self.reply_text(conn, "bye".to_string());
                self.out.close(conn);
            }
        }
    }

    pub(super) fn reply_text(&mut self, conn: ConnId, body: String) {
        // A body line holding a lone `.` would end the reply early, so
        // every line that starts with `.` gets one more, as in SMTP;
        // readers drop the first `.` of any line that starts with `..`.
        let mut text = String::with_capacity(body.len() + 3);
        for line in body.trim_end().lines() {
            if line.starts_with('.') {
                text.push('.');
            }
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(".\n");
        // Text replies, like JSON ones, wait for everything changed so far
        // to be on disk.
        self.out
            .send_text(conn, text, Some(self.changes.last_write_batch()));
    }

    /// `status` as text. Counts nothing: the device and task totals are
    /// kept as they change (see `cluster_stats`) and the queue knows its
    /// length.
    fn status_text(&self) -> String {
        let stats = self.cluster_stats();
        let tasks: Vec<String> = stats
            .tasks
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        let quarantined = if stats.quarantined > 0 {
            format!(
                "\nquarantined: {} records (retire-master --check lists them)",
                stats.quarantined
            )
        } else {
            String::new()
        };
        format!(
            "devices: {} online of {} ({:.0}%)\ncores: {}\nmemory: {:.1} GiB\nstorage: {:.1} GiB\nqueued: {}\ntasks: {}{quarantined}",
            stats.online_devices,
            stats.total_devices,
            stats.health_percentage,
            stats.total_resources.cpu_cores,
            stats.total_resources.memory_gb,
            stats.total_resources.storage_gb,
            self.tasks.queue.len(),
            if tasks.is_empty() { "none".to_string() } else { tasks.join(", ") },
        )
    }

    /// `devices [before ID]` as text: one page of summaries, newest
    /// registered first, like `list_devices`, and when more follow, the
    /// command that shows them (`more: devices before ID`).
    fn devices_text(&self, before: Option<String>) -> String {
        let list = ListDevices {
            before,
            ..ListDevices::default()
        };
        let (devices, next) = match self.device_page(&list) {
            Ok(page) => page,
            Err(error) => return format!("error: {}", error.message),
        };
        let devices: Vec<_> = devices
            .into_iter()
            .map(|device| self.view_of(device, false))
            .collect();
        if devices.is_empty() {
            return "no devices".into();
        }
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|d| {
                vec![
                    d.device_id.clone(),
                    d.status.to_string(),
                    d.role.clone(),
                    d.platform.clone(),
                    d.architecture.clone(),
                    d.hardware.cpu_count.to_string(),
                    format!("{:.1}", d.hardware.memory_total_gb),
                    format!("{}/{}", d.active_tasks, d.slots),
                    d.enrolled_at.clone().unwrap_or_else(|| "-".into()),
                    d.enrolled_from.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut text = render_table(
            &[
                "ID", "STATUS", "ROLE", "PLATFORM", "ARCH", "CORES", "MEM_GB", "ACTIVE",
                "ENROLLED", "FROM",
            ],
            &rows,
        );
        if let Some(cursor) = next {
            text.push_str(&format!("more: devices before {cursor}\n"));
        }
        text
    }
}

/// A page of tasks as a table, and, when older tasks follow, the command
/// that shows the next page (`more: tasks [STATE] before ID`). Made from
/// the records, with only the columns shown (a reader may send `tasks` on
/// every line).
pub(super) fn tasks_text(
    tasks: &[&TaskRecord],
    next: Option<String>,
    state: Option<&str>,
) -> String {
    if tasks.is_empty() {
        return "no tasks".into();
    }
    // The cells that are not in the record as text already.
    let made: Vec<[String; 3]> = tasks
        .iter()
        .map(|t| {
            [
                t.spec.priority.to_string(),
                t.attempt.to_string(),
                rfc3339(t.submitted_unix_ms),
            ]
        })
        .collect();
    let rows: Vec<[&str; 7]> = tasks
        .iter()
        .zip(&made)
        .map(|(t, [priority, attempt, submitted])| {
            [
                t.task_id.as_str(),
                t.spec.task_type.as_str(),
                t.state.as_str(),
                priority.as_str(),
                attempt.as_str(),
                t.device_id.as_deref().unwrap_or("-"),
                submitted.as_str(),
            ]
        })
        .collect();
    let mut text = render_table(&TASK_COLUMNS, &rows);
    if let Some(cursor) = next {
        let state = state.map(|s| format!("{s} ")).unwrap_or_default();
        text.push_str(&format!("more: tasks {state}before {cursor}\n"));
    }
    text
}

pub(super) fn task_text(task: &TaskView) -> String {
    let mut lines = vec![
        format!("id:        {}", task.task_id),
        format!("type:      {}", task.task_type),
        format!("state:     {}", task.state),
        format!("priority:  {}", task.priority),
        format!("attempt:   {}", task.attempt),
        format!("device:    {}", task.device_id.as_deref().unwrap_or("-")),
        format!("submitted: {}", task.submitted_at),
        format!("payload:   {}", task.payload),
    ];
    if let Some(finished) = &task.finished_at {
        lines.push(format!("finished:  {finished}"));
    }
    if let Some(code) = task.exit_code {
        lines.push(format!("exit code: {code}"));
    }
    if let Some(error) = &task.error {
        lines.push(format!("error:     {error}"));
    }
    if let Some(result) = &task.result {
        match result.get("output") {
            Some(serde_json::Value::String(output)) => {
                lines.push(format!("output:\n{}", output.trim_end()))
            }
            Some(output) => lines.push(format!("output:    {output}")),
            None => lines.push(format!("result:    {result}")),
        }
    }
    lines.join("\n")
}

/// The text reply to `submit`.
pub(super) fn submitted_text(result: Result<Reply, super::ReplyError>) -> String {
    match result {
        Ok(Reply::Submitted(submitted)) => format!("submitted {}", submitted.task_id),
        Ok(_) => "submitted ?".into(),
        Err(error) => format!("error: {}", error.message),
    }
}
