//! One function per subcommand: send the request, then print the reply as a
//! table for people or, for scripts, as the master's reply document (a type
//! of `protocol::reply`, the same document the HTTP API serves).

use crate::args::SubmitArgs;
use crate::client::{Client, ClientError};
use crate::require::requirements_from;
use crate::table::{ago, clean, gigabytes, or_dash, Table};
use crate::{exit, Error};
use protocol::text::TASK_COLUMNS;
use protocol::{
    DevicePage, DeviceRef, DeviceReply, DeviceView, Draining, Event, ListDevices, ListTasks,
    Message, Revoked, StatusReply, Submitted, Success, TaskCancel, TaskChanged, TaskPage,
    TaskProgress, TaskRef, TaskReply, TaskSpec, TaskState, TaskSubmit, TaskView,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Instant, SystemTime};

/// Where and how a command prints.
pub struct Output<'a> {
    /// Results: tables, ids, task output.
    pub out: &'a mut dyn Write,
    /// Progress, the task's stderr, notes for the person at the terminal.
    pub err: &'a mut dyn Write,
    /// Print the master's JSON result instead of tables.
    pub json: bool,
    /// The moment ages (`5m ago`) are measured from.
    pub now: SystemTime,
}

impl Output<'_> {
    fn print(&mut self, text: &str) -> Result<(), Error> {
        self.out.write_all(text.as_bytes()).map_err(Error::Output)?;
        self.out.flush().map_err(Error::Output)
    }

    fn note(&mut self, text: &str) -> Result<(), Error> {
        self.err.write_all(text.as_bytes()).map_err(Error::Output)
    }

    /// Prints a reply document, pretty.
    fn print_json(&mut self, value: &impl Serialize) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|err| ClientError::Protocol(err.to_string()))?;
        self.print(&format!("{text}\n"))
    }
}

/// Sends `message` and waits for its reply. With `--json` the reply
/// document is printed as the master sent it (newer fields included) and
/// `None` is returned; otherwise the document is returned read as `R`, the
/// type the request is answered with.
fn reply<R: DeserializeOwned>(
    client: &mut Client,
    message: Message,
    output: &mut Output,
) -> Result<Option<R>, Error> {
    let ack = client.request(message)?;
    if output.json {
        output.print_json(&ack.result)?;
        return Ok(None);
    }
    let document = ack
        .result
        .parse()
        .map_err(|err| ClientError::Protocol(err.detail))?;
    Ok(Some(document))
}

/// Builds the task `retire submit` queues, without its id.
///
/// A command after `--` becomes the payload `{"argv": [...]}` of a `shell`
/// task (or of the `--type` given); otherwise the payload is `--payload`,
/// or `{}`.
pub fn build_task(args: &SubmitArgs) -> TaskSpec {
    let task_type = args
        .task_type
        .clone()
        .unwrap_or_else(|| "shell".to_string());
    let payload = if args.command.is_empty() {
        args.payload.clone().unwrap_or_else(|| json!({}))
    } else {
        json!({ "argv": args.command })
    };
    let mut task = TaskSpec::new(task_type, payload);
    task.priority = args.priority;
    task.timeout = args.task_timeout.map(|timeout| timeout.as_secs_f64());
    task.requirements = requirements_from(args.requirements.iter().cloned());
    task.max_retries = args.max_retries;
    task.strategy = args.strategy;
    task.task_id = args.task_id.clone();
    task
}

/// A fresh client-side task id: `cli-` and 16 random hex digits.
pub fn random_task_id() -> String {
    format!("cli-{:016x}", fastrand::u64(..))
}

/// `retire submit`: prints the task id, or with `--wait` the task's output,
/// and returns the exit code.
pub fn submit(client: &mut Client, args: &SubmitArgs, output: &mut Output) -> Result<u8, Error> {
    let mut task = build_task(args);
    // The CLI always names the task itself, so a submit that is retried
    // after a lost reply finds the same task instead of queuing a second.
    task.task_id.get_or_insert_with(random_task_id);
    if !args.wait {
        if let Some(submitted) = reply::<Submitted>(client, submit_message(task), output)? {
            output.print(&format!("{}\n", submitted.task_id))?;
        }
        return Ok(exit::OK);
    }

    // The id is chosen here so that the subscription can name it before
    // the task exists: subscribing first means its `task_finished` event
    // cannot slip past between the submit and the subscribe.
    let task_id = task.task_id.get_or_insert_with(random_task_id).clone();
    client.subscribe(vec![task_id.clone()])?;
    let submitted: Submitted = client.ask(submit_message(task))?;
    let task_id = submitted.task_id;
    output.note(&format!("waiting for task {task_id}\n"))?;

    let started = Instant::now();
    let deadline = args.wait_timeout.map(|timeout| started + timeout);
    // An id submitted before (the submit is idempotent) may already be
    // finished, and then no event will ever come.
    let current = client.task_status(&task_id)?;
    let finished = if current.state.is_terminal() {
        Some(current)
    } else {
        let err = &mut *output.err;
        client.wait_for_task(&task_id, deadline, |progress| {
            // Progress is a courtesy: a closed stderr must not stop the wait.
            let _ = writeln!(err, "{}", progress_line(progress));
        })?
    };
    match finished {
        Some(task) => report_finished(&task, output),
        None => Err(Error::WaitTimedOut {
            task_id,
            after: started.elapsed(),
        }),
    }
}

fn submit_message(task: TaskSpec) -> Message {
    Message::TaskSubmit(TaskSubmit {
        tasks: vec![task],
        batch: false,
    })
}

/// One progress report as `progress ID: 40% 4/10 message`.
pub fn progress_line(progress: &TaskProgress) -> String {
    let mut parts = Vec::new();
    if let Some(fraction) = progress.fraction {
        parts.push(format!("{:.0}%", fraction * 100.0));
    }
    match (progress.done, progress.total) {
        (Some(done), Some(total)) => parts.push(format!("{done}/{total}")),
        (Some(done), None) => parts.push(done.to_string()),
        _ => {}
    }
    if let Some(message) = &progress.message {
        parts.push(clean(message).into_owned());
    }
    format!("progress {}: {}", progress.task_id, parts.join(" "))
}

/// Prints a finished task's output (stdout) and stderr, and returns the
/// exit code `retire submit --wait` ends with.
fn report_finished(task: &TaskView, output: &mut Output) -> Result<u8, Error> {
    if output.json {
        // The document `retire task ID --json` prints for the task.
        output.print_json(&TaskReply {
            success: Success,
            task: task.clone(),
        })?;
        return Ok(task_exit_code(task));
    }
    let result = task.result.as_ref();
    let printed = match result
        .and_then(|result| result.get("output"))
        .or(result.filter(|r| r.is_string()))
    {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => Some(
            serde_json::to_string_pretty(other)
                .map_err(|err| ClientError::Protocol(err.to_string()))?,
        ),
    };
    if let Some(text) = printed {
        output.print(&with_final_newline(text))?;
    }
    if let Some(stderr) = result
        .and_then(|result| result.get("stderr"))
        .and_then(Value::as_str)
    {
        output.note(&with_final_newline(stderr.to_string()))?;
    }
    if task.state != TaskState::Completed {
        let reason = task
            .error
            .as_deref()
            .map(|error| format!(": {}", clean(error)));
        output.note(&format!(
            "task {} {}{}\n",
            task.task_id,
            task.state,
            reason.unwrap_or_default()
        ))?;
    }
    Ok(task_exit_code(task))
}

/// Adds a newline to text that does not end in one, so that the shell
/// prompt does not land behind the output; empty text stays empty.
fn with_final_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The exit code for a finished task: the code the task reported
/// (`result.exit_code`, else the view's `exit_code`); without one, 0 for
/// completed, 1 for failed, 124 for timed out and 130 for cancelled. A task
/// that did not complete never exits 0, even if it reported 0, so that a
/// script cannot mistake it for success.
pub fn task_exit_code(task: &TaskView) -> u8 {
    let reported = task
        .result
        .as_ref()
        .and_then(|result| result.get("exit_code"))
        .and_then(Value::as_i64)
        .or(task.exit_code.map(i64::from));
    let by_state = match task.state {
        TaskState::Completed => exit::OK,
        TaskState::TimedOut => exit::TASK_TIMED_OUT,
        TaskState::Cancelled => exit::TASK_CANCELLED,
        _ => exit::TASK_FAILED,
    };
    match reported {
        Some(code) if task.state == TaskState::Completed || code != 0 => process_code(code),
        _ => by_state,
    }
}

/// Fits a reported exit code into a process exit status: negative codes
/// (death by signal N, as some runtimes report it) become 128 + N, as in a
/// shell, and anything else out of range becomes 1.
fn process_code(code: i64) -> u8 {
    let code = if (-127..0).contains(&code) {
        128 - code
    } else {
        code
    };
    u8::try_from(code).unwrap_or(exit::TASK_FAILED)
}

/// `retire status`.
pub fn status(client: &mut Client, output: &mut Output) -> Result<u8, Error> {
    let Some(reply) = reply::<StatusReply>(client, Message::Status, output)? else {
        return Ok(exit::OK);
    };
    let stats = reply.cluster_stats;
    let counts = |map: &std::collections::BTreeMap<String, u32>| join_counts(map.iter());
    let table = Table::pairs(
        [
            (
                "devices",
                format!(
                    "{} online of {} ({:.0}%)",
                    stats.online_devices, stats.total_devices, stats.health_percentage
                ),
            ),
            ("cpu cores", stats.total_resources.cpu_cores.to_string()),
            ("memory", gigabytes(stats.total_resources.memory_gb)),
            ("storage", gigabytes(stats.total_resources.storage_gb)),
            ("roles", counts(&stats.by_role)),
            ("platforms", counts(&stats.by_platform)),
            ("tasks", join_counts(stats.tasks.iter())),
        ]
        .into_iter()
        // Records the master set aside at start: shown only when there are
        // some, with where to look.
        .chain((stats.quarantined > 0).then(|| {
            (
                "quarantined",
                format!(
                    "{} records (retire-master --check lists them)",
                    stats.quarantined
                ),
            )
        })),
    );
    output.print(&table.render())?;
    Ok(exit::OK)
}

/// `name=count` pairs, or `-` when there are none.
fn join_counts<'a, N: std::fmt::Display + 'a>(
    counts: impl Iterator<Item = (&'a String, N)>,
) -> String {
    let parts: Vec<String> = counts
        .map(|(name, count)| format!("{name}={count}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// `retire devices`.
pub fn devices(client: &mut Client, filter: ListDevices, output: &mut Output) -> Result<u8, Error> {
    let Some(page) = reply::<DevicePage>(client, Message::ListDevices(filter.clone()), output)?
    else {
        return Ok(exit::OK);
    };
    output.print(&device_table(&page.devices, output.now).render())?;
    // Absent from older masters' replies (and on the last page).
    if let Some(cursor) = &page.next_cursor {
        output.note(&format!(
            "more: {}\n",
            next_devices_command(&filter, cursor)
        ))?;
    }
    Ok(exit::OK)
}

/// The `retire devices` command line that shows the page after `cursor`
/// with the same filter and limit.
pub fn next_devices_command(filter: &ListDevices, cursor: &str) -> String {
    next_page_line(
        "devices",
        &[
            ("--role", filter.role.clone()),
            ("--status", filter.status.clone()),
            ("--limit", filter.limit.map(|limit| limit.to_string())),
        ],
        cursor,
    )
}

/// `retire COMMAND` with the flags that are set, then `--before CURSOR`:
/// the command line for the next page of a listing.
fn next_page_line(command: &str, flags: &[(&str, Option<String>)], cursor: &str) -> String {
    let mut line = format!("retire {command}");
    for (flag, value) in flags {
        if let Some(value) = value {
            line.push_str(&format!(" {flag} {value}"));
        }
    }
    line.push_str(&format!(" --before {cursor}"));
    line
}

/// Devices as a table, one row each.
pub fn device_table(devices: &[DeviceView], now: SystemTime) -> Table {
    let mut table = Table::new(&[
        "ID",
        "STATUS",
        "ROLE",
        "PLATFORM",
        "ARCH",
        "SANDBOX",
        "CORES",
        "MEM",
        "SLOTS",
        "ACTIVE",
        "LAST-SEEN",
        "ENROLLED",
        "FROM",
    ])
    .align_right(&["CORES", "MEM", "SLOTS", "ACTIVE"]);
    for device in devices {
        table.push(vec![
            device.device_id.clone(),
            device.status.to_string(),
            device.role.clone(),
            device.platform.clone(),
            device.architecture.clone(),
            or_dash(device.sandbox.as_deref().map(clean)),
            device.hardware.cpu_count.to_string(),
            gigabytes(device.hardware.memory_total_gb),
            device.slots.to_string(),
            device.active_tasks.to_string(),
            or_dash(device.last_heartbeat.as_deref().map(|at| ago(at, now))),
            or_dash(device.enrolled_at.as_deref().map(|at| ago(at, now))),
            or_dash(device.enrolled_from.as_deref().map(clean)),
        ]);
    }
    table
}

/// `retire device ID`.
pub fn device(client: &mut Client, device_id: &str, output: &mut Output) -> Result<u8, Error> {
    let Some(reply) = reply::<DeviceReply>(
        client,
        Message::DeviceInfo(DeviceRef {
            device_id: device_id.to_string(),
        }),
        output,
    )?
    else {
        return Ok(exit::OK);
    };
    let device = reply.device;
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let table = Table::pairs([
        ("id", device.device_id.clone()),
        ("status", device.status.to_string()),
        ("role", device.role.clone()),
        ("platform", device.platform.clone()),
        ("architecture", device.architecture.clone()),
        ("sandbox", or_dash(device.sandbox.as_deref().map(clean))),
        ("hostname", device.hostname.clone()),
        ("address", device.ip_address.clone()),
        (
            "last seen",
            or_dash(
                device
                    .last_heartbeat
                    .as_deref()
                    .map(|at| format!("{at} ({})", ago(at, output.now))),
            ),
        ),
        (
            "enrolled",
            or_dash(
                device
                    .enrolled_at
                    .as_deref()
                    .map(|at| format!("{at} ({})", ago(at, output.now))),
            ),
        ),
        (
            "enrolled from",
            or_dash(device.enrolled_from.as_deref().map(clean)),
        ),
        ("tags", list(&device.tags)),
        ("cpu cores", device.hardware.cpu_count.to_string()),
        ("memory", gigabytes(device.hardware.memory_total_gb)),
        ("storage", gigabytes(device.hardware.storage_total_gb)),
        ("slots", device.slots.to_string()),
        ("active tasks", device.active_tasks.to_string()),
        ("task types", list(&device.task_types)),
        ("metrics", or_dash(device.metrics.as_ref())),
    ]);
    output.print(&table.render())?;
    Ok(exit::OK)
}

/// `retire tasks`: one page, newest first. When older tasks follow, a note
/// on stderr gives the command for the next page (stdout keeps the table
/// alone, for scripts; `--json` has the master's `next_cursor`).
pub fn tasks(client: &mut Client, filter: ListTasks, output: &mut Output) -> Result<u8, Error> {
    let Some(page) = reply::<TaskPage>(client, Message::ListTasks(filter.clone()), output)? else {
        return Ok(exit::OK);
    };
    output.print(&task_table(&page.tasks, output.now).render())?;
    // Absent from older masters' replies (and on the last page).
    if let Some(cursor) = &page.next_cursor {
        output.note(&format!("more: {}\n", next_page_command(&filter, cursor)))?;
    }
    Ok(exit::OK)
}

/// The `retire tasks` command line that shows the page after `cursor`
/// with the same filter and limit.
pub fn next_page_command(filter: &ListTasks, cursor: &str) -> String {
    next_page_line(
        "tasks",
        &[
            (
                "--state",
                filter.state.map(|state| state.as_str().to_string()),
            ),
            ("--limit", filter.limit.map(|limit| limit.to_string())),
        ],
        cursor,
    )
}

/// Tasks as a table, one row each.
pub fn task_table(tasks: &[TaskView], now: SystemTime) -> Table {
    let mut table = Table::new(&TASK_COLUMNS).align_right(&["ATTEMPT"]);
    for task in tasks {
        table.push(vec![
            task.task_id.clone(),
            task.task_type.clone(),
            task.state.to_string(),
            task.priority.to_string(),
            task.attempt.to_string(),
            or_dash(task.device_id.as_deref()),
            ago(&task.submitted_at, now),
        ]);
    }
    table
}

/// `retire task ID`.
pub fn task(client: &mut Client, task_id: &str, output: &mut Output) -> Result<u8, Error> {
    let Some(reply) = reply::<TaskReply>(
        client,
        Message::TaskStatus(TaskRef {
            task_id: task_id.to_string(),
        }),
        output,
    )?
    else {
        return Ok(exit::OK);
    };
    let task = reply.task;
    let at = |timestamp: &Option<String>| {
        or_dash(
            timestamp
                .as_deref()
                .map(|at| format!("{at} ({})", ago(at, output.now))),
        )
    };
    let requirements = serde_json::to_value(&task.requirements).unwrap_or(Value::Null);
    let mut text = Table::pairs([
        ("id", task.task_id.clone()),
        ("type", task.task_type.clone()),
        ("state", task.state.to_string()),
        ("priority", task.priority.to_string()),
        ("attempt", task.attempt.to_string()),
        ("device", or_dash(task.device_id.as_deref())),
        ("submitted", at(&Some(task.submitted_at.clone()))),
        ("started", at(&task.started_at)),
        ("finished", at(&task.finished_at)),
        (
            "timeout",
            or_dash(task.timeout.map(|seconds| format!("{seconds}s"))),
        ),
        (
            "ran for",
            or_dash(task.execution_time.map(|seconds| format!("{seconds:.3}s"))),
        ),
        ("exit code", or_dash(task.exit_code)),
        ("error", or_dash(task.error.as_deref())),
        ("requirements", requirements.to_string()),
        ("payload", task.payload.to_string()),
    ])
    .render();
    if let Some(result) = &task.result {
        let pretty = serde_json::to_string_pretty(result)
            .map_err(|err| ClientError::Protocol(err.to_string()))?;
        text.push_str(&format!("result:\n{pretty}\n"));
    }
    output.print(&text)?;
    Ok(exit::OK)
}

/// `retire cancel ID`: prints the task as it is after the cancel.
pub fn cancel(client: &mut Client, task_id: &str, output: &mut Output) -> Result<u8, Error> {
    let message = Message::TaskCancel(TaskCancel {
        task_id: task_id.to_string(),
        attempt: None,
    });
    print_task_of(client, message, output)
}

/// Sends a cancel or retry and prints the task it changed, as the reply
/// document or as a one-row table.
fn print_task_of(client: &mut Client, message: Message, output: &mut Output) -> Result<u8, Error> {
    if let Some(reply) = reply::<TaskChanged>(client, message, output)? {
        output.print(&task_table(&[reply.task], output.now).render())?;
    }
    Ok(exit::OK)
}

/// `retire retry ID`: prints the task as it is after being queued again.
pub fn retry(client: &mut Client, task_id: &str, output: &mut Output) -> Result<u8, Error> {
    let message = Message::TaskRetry(TaskRef {
        task_id: task_id.to_string(),
    });
    print_task_of(client, message, output)
}

/// `retire delete ID`: deletes one dead letter and says so.
pub fn delete(client: &mut Client, task_id: &str, output: &mut Output) -> Result<u8, Error> {
    let message = Message::TaskDelete(TaskRef {
        task_id: task_id.to_string(),
    });
    if let Some(reply) = reply::<protocol::TaskDeleted>(client, message, output)? {
        output.print(&format!("{}\n", reply.message))?;
    }
    Ok(exit::OK)
}

/// `retire drain DEVICE`: prints the device as it is after the drain.
pub fn drain(client: &mut Client, device_id: &str, output: &mut Output) -> Result<u8, Error> {
    let Some(reply) = reply::<Draining>(
        client,
        Message::DrainDevice(DeviceRef {
            device_id: device_id.to_string(),
        }),
        output,
    )?
    else {
        return Ok(exit::OK);
    };
    output.print(&device_table(&[reply.device], output.now).render())?;
    Ok(exit::OK)
}

/// `retire devices revoke ID`: the device's credential stops working for good.
pub fn revoke(client: &mut Client, device_id: &str, output: &mut Output) -> Result<u8, Error> {
    let message = Message::RevokeDevice(DeviceRef {
        device_id: device_id.to_string(),
    });
    if reply::<Revoked>(client, message, output)?.is_some() {
        output.print(&format!(
            "revoked {device_id}: it cannot connect again under this id\n"
        ))?;
    }
    Ok(exit::OK)
}

/// `retire prune --before DATE|AGE`: deletes the finished tasks that
/// finished before the cutoff and says how many, per state.
pub fn prune(
    client: &mut Client,
    before: crate::args::Cutoff,
    output: &mut Output,
) -> Result<u8, Error> {
    let message = Message::Prune(protocol::Prune {
        before_unix_ms: before.unix_ms(SystemTime::now()),
    });
    if let Some(reply) = reply::<protocol::Pruned>(client, message, output)? {
        let per_state: Vec<String> = reply
            .pruned
            .iter()
            .map(|(state, count)| format!("{state} {count}"))
            .collect();
        let detail = if per_state.is_empty() {
            String::new()
        } else {
            format!(" ({})", per_state.join(", "))
        };
        output.print(&format!("pruned {} finished tasks{detail}\n", reply.total))?;
    }
    Ok(exit::OK)
}

/// `retire strategy [NAME]`: shows the master's placement strategy, or
/// switches it and says which it replaced.
pub fn strategy(
    client: &mut Client,
    name: Option<protocol::PlacementStrategy>,
    output: &mut Output,
) -> Result<u8, Error> {
    let message = Message::Strategy(protocol::StrategyRequest { strategy: name });
    if let Some(reply) = reply::<protocol::StrategyReply>(client, message, output)? {
        let line = match reply.previous {
            Some(previous) if previous != reply.strategy => {
                format!("placement strategy {} (was {previous})\n", reply.strategy)
            }
            _ => format!("placement strategy {}\n", reply.strategy),
        };
        output.print(&line)?;
    }
    Ok(exit::OK)
}

/// `retire watch`: one line per event until the connection ends, which
/// is always an error since only the master can end it.
pub fn watch(client: &mut Client, output: &mut Output) -> Result<u8, Error> {
    // Only the subscribe is bounded by `--timeout`; the events that follow
    // may be hours apart.
    client.subscribe(Vec::new())?;
    loop {
        let Some(event) = client.next_event(None)? else {
            continue;
        };
        let line = if output.json {
            serde_json::to_string(&event).map_err(|err| ClientError::Protocol(err.to_string()))?
        } else {
            let now = humantime::format_rfc3339_seconds(SystemTime::now());
            format!("{now}  {}", event_line(&event))
        };
        output.print(&format!("{line}\n"))?;
    }
}

/// One event as text: its kind, the task or device, and the details.
pub fn event_line(event: &Event) -> String {
    match event {
        Event::TaskSubmitted { task_id, task_type } => {
            format!("task_submitted   {task_id}  type={}", clean(task_type))
        }
        Event::TaskAssigned {
            task_id,
            device_id,
            attempt,
        } => format!(
            "task_assigned    {task_id}  device={} attempt={attempt}",
            clean(device_id)
        ),
        Event::TaskProgress(progress) => {
            let line = progress_line(progress);
            let details = line
                .split_once(": ")
                .map_or("", |(_, details)| details)
                .to_string();
            format!("task_progress    {}  {details}", progress.task_id)
        }
        Event::TaskFinished { task } => {
            let mut line = format!("task_finished    {}  state={}", task.task_id, task.state);
            if let Some(code) = task.exit_code {
                line.push_str(&format!(" exit_code={code}"));
            }
            if let Some(error) = &task.error {
                line.push_str(&format!(" error={}", clean(error)));
            }
            line
        }
        Event::DeviceEnrolled {
            device_id,
            enrolled_from,
        } => format!(
            "device_enrolled  {}  from={}",
            clean(device_id),
            enrolled_from.as_deref().map_or_else(|| "-".into(), clean)
        ),
        Event::DeviceJoined { device_id } => format!("device_joined    {}", clean(device_id)),
        Event::DeviceLeft { device_id, reason } => {
            format!(
                "device_left      {}  reason={}",
                clean(device_id),
                clean(reason)
            )
        }
        Event::DeviceDraining { device_id } => format!("device_draining  {}", clean(device_id)),
        Event::StorageFailing => {
            "storage_failing  changes are refused until the disk recovers".into()
        }
        Event::StorageRecovered => "storage_recovered".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn view(state: &str, exit_code: Option<i32>, result: Option<Value>) -> TaskView {
        let mut value = json!({
            "task_id": "t-1", "task_type": "shell", "state": state, "priority": "normal",
            "payload": {}, "attempt": 1, "submitted_at": "2024-01-15T10:30:00Z",
        });
        if let Some(code) = exit_code {
            value["exit_code"] = json!(code);
        }
        if let Some(result) = result {
            value["result"] = result;
        }
        serde_json::from_value(value).expect("a valid task view")
    }

    #[test]
    fn exit_codes() {
        let check = |state: &str, exit_code: Option<i32>, result: Option<Value>, expect: u8| {
            let task = view(state, exit_code, result.clone());
            assert_eq!(
                task_exit_code(&task),
                expect,
                "{state} {exit_code:?} {result:?}"
            );
        };
        check("completed", None, None, 0);
        check("failed", None, None, 1);
        check("timed_out", None, None, 124);
        check("cancelled", None, None, 130);
        check("completed", Some(0), None, 0);
        check("failed", Some(3), None, 3);
        check("failed", None, Some(json!({"exit_code": 7})), 7);
        // The result's own code wins over the view's.
        check("failed", Some(3), Some(json!({"exit_code": 7})), 7);
        // A task that did not complete never exits 0.
        check("failed", Some(0), None, 1);
        check("timed_out", None, Some(json!({"exit_code": 0})), 124);
        check("cancelled", Some(-9), None, 137);
        check("failed", Some(1000), None, 1);
        check("completed", Some(2), None, 2);
    }

    #[test]
    fn tables() {
        let now = humantime::parse_rfc3339("2024-01-15T10:31:00Z").expect("a valid timestamp");
        let mut long = view("running", None, None);
        long.task_id = "cli-0123456789abcdef".into();
        long.device_id = Some("pi-kitchen".into());
        long.attempt = 12;
        assert_eq!(
            task_table(&[view("queued", None, None), long], now).render(),
            "ID                    TYPE   STATE    PRIORITY  ATTEMPT  DEVICE      SUBMITTED\n\
             t-1                   shell  queued   normal          1  -           1m ago\n\
             cli-0123456789abcdef  shell  running  normal         12  pi-kitchen  1m ago\n"
        );

        let device: DeviceView = serde_json::from_value(json!({
            "device_id": "nas", "role": "storage", "status": "draining", "platform": "linux",
            "architecture": "x86_64", "hardware": {"cpu_count": 16, "memory_total_gb": 31.25,
            "storage_total_gb": 4000.0}, "slots": 4, "active_tasks": 2,
            "last_heartbeat": "2024-01-15T10:30:55Z", "enrolled_at": "2024-01-13T10:31:00Z",
            "enrolled_from": "192.168.1.20", "sandbox": "full",
        }))
        .expect("a valid device view");
        let pi: DeviceView = serde_json::from_value(json!({
            "device_id": "pi", "role": "worker", "status": "online", "platform": "linux",
            "architecture": "aarch64", "hardware": {"cpu_count": 4, "memory_total_gb": 3.7,
            "storage_total_gb": 29.0}, "slots": 1, "active_tasks": 0,
        }))
        .expect("a valid device view");
        assert_eq!(
            device_table(&[device, pi], now).render(),
            "ID   STATUS    ROLE     PLATFORM  ARCH     SANDBOX  CORES    MEM  SLOTS  ACTIVE  LAST-SEEN  ENROLLED  FROM\n\
             nas  draining  storage  linux     x86_64   full        16  31.2G      4       2  5s ago     2d ago    192.168.1.20\n\
             pi   online    worker   linux     aarch64  -            4   3.7G      1       0  -          -         -\n"
        );
    }

    #[test]
    fn event_lines() {
        let check = |event: Value, expect: &str| {
            let event: Event = serde_json::from_value(event).expect("a valid event");
            assert_eq!(event_line(&event), expect);
        };
        check(
            json!({"event": "task_submitted", "task_id": "t-1", "task_type": "echo"}),
            "task_submitted   t-1  type=echo",
        );
        check(
            json!({"event": "task_assigned", "task_id": "t-1", "device_id": "pi", "attempt": 2}),
            "task_assigned    t-1  device=pi attempt=2",
        );
        check(
            json!({"event": "task_progress", "task_id": "t-1", "fraction": 0.4, "done": 4,
                   "total": 10, "message": "copying\nfiles"}),
            "task_progress    t-1  40% 4/10 copying files",
        );
        check(
            json!({"event": "task_finished", "task": {"task_id": "t-1", "task_type": "shell",
                   "state": "failed", "priority": 50, "payload": {}, "attempt": 1,
                   "submitted_at": "2024-01-15T10:30:00Z", "exit_code": 2, "error": "exit status 2"}}),
            "task_finished    t-1  state=failed exit_code=2 error=exit status 2",
        );
        check(
            json!({"event": "device_joined", "device_id": "pi"}),
            "device_joined    pi",
        );
        check(
            json!({"event": "device_enrolled", "device_id": "pi", "enrolled_from": "10.0.0.7"}),
            "device_enrolled  pi  from=10.0.0.7",
        );
        check(
            json!({"event": "device_enrolled", "device_id": "pi"}),
            "device_enrolled  pi  from=-",
        );
        check(
            json!({"event": "device_left", "device_id": "pi", "reason": "heartbeat timeout"}),
            "device_left      pi  reason=heartbeat timeout",
        );
        check(
            json!({"event": "device_draining", "device_id": "pi"}),
            "device_draining  pi",
        );
    }

    fn submit_args(argv: &[&str]) -> SubmitArgs {
        let argv = ["retire", "submit"].iter().chain(argv);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Submit(args) => args,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn tasks_from_flags() {
        let task = build_task(&submit_args(&["--", "sh", "-c", "echo hi"]));
        assert_eq!(task.task_type, "shell");
        assert_eq!(task.payload, json!({"argv": ["sh", "-c", "echo hi"]}));
        assert_eq!(task.task_id, None);

        let task = build_task(&submit_args(&[
            "--type",
            "python",
            "--priority",
            "7",
            "--timeout",
            "1.5",
            "--max-retries",
            "2",
            "--id",
            "job-9",
            "--require",
            "tag=gpu",
            "--require",
            "min_cpu_cores=2",
            "--",
            "script.py",
        ]));
        assert_eq!(task.task_type, "python");
        assert_eq!(task.payload, json!({"argv": ["script.py"]}));
        assert_eq!(task.priority, protocol::Priority(7));
        assert_eq!(task.timeout, Some(1.5));
        assert_eq!(task.max_retries, Some(2));
        assert_eq!(task.task_id.as_deref(), Some("job-9"));
        assert_eq!(task.requirements.tags, ["gpu"]);
        assert_eq!(task.requirements.min_cpu_cores, Some(2));

        let task = build_task(&submit_args(&["--type", "echo"]));
        assert_eq!(task.payload, json!({}));
        assert!(task.requirements.is_empty());

        let id = random_task_id();
        assert!(id.len() == 20 && id.starts_with("cli-"), "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
