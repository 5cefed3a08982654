//! The task types every worker runs without any configuration.
//!
//! Each built-in type is a plain function from the task's payload, its timeout and its
//! [`CancelToken`] to a [`TaskOutcome`]. A handler never panics on a bad payload: a
//! missing or mistyped field means the task ran and failed, with an `error` that says
//! which field was wrong, because the master records that as the task's result and a
//! person reads it there.
//!
//! Every outcome's `result` object holds at least `output` and `exit_code` (either may be
//! `null` when there is nothing to report), so that tools reading results need no
//! per-type knowledge to show the essentials. Types that run an external process
//! (`shell`, `python_eval`, handlers from the handlers folder) run it in the
//! [`Sandbox`], and their result also says how much CPU time and memory it used and
//! what the sandbox enforced.
//!
//! The [`Executor`] is what a worker runs tasks with: the built-in types, the handlers
//! folder, Rust handlers, the owner's policy and the per-type limits in one place.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use protocol::{ResultStatus, TaskSpec};
use serde_json::{json, Map, Value};

use crate::device::profile::{self, MetricsSampler};
use crate::state::running::Ledger;
use crate::tasks::config::ExecutionConfig;
use crate::tasks::exec::{self, CancelToken};
use crate::tasks::handlers;
use crate::tasks::limits::TaskLimits;
use crate::tasks::sandbox::{Sandbox, SandboxCommand, SandboxError, SandboxOutcome};
use crate::tasks::task::{base_result, Handler, Progress, TaskContext, TaskOutcome};

/// The task types this crate implements, in the order they are advertised.
/// `python_eval` is advertised only where `python3` runs in the sandbox, and
/// `http_request` only where it is compiled in.
pub const BUILTIN_TYPES: &[&str] = &[
    "echo",
    "sleep",
    "system_info",
    "shell",
    "python_eval",
    "http_request",
];

/// Tells whether `task_type` is one of [`BUILTIN_TYPES`].
pub fn is_builtin(task_type: &str) -> bool {
    BUILTIN_TYPES.contains(&task_type)
}

/// Runs `task` with the built-in handlers, the default sandbox and no policy: what a
/// worker with no configuration does.
///
/// A task whose type is not built in fails rather than panics, although the session
/// refuses such tasks before they get this far.
pub fn run_builtin(task: &TaskSpec, cancel: &CancelToken) -> TaskOutcome {
    static DEFAULT: OnceLock<Result<Executor, String>> = OnceLock::new();
    let executor = DEFAULT.get_or_init(|| {
        Executor::new(ExecutionConfig::default(), BTreeMap::new()).map_err(|e| e.to_string())
    });
    match executor {
        Ok(executor) => executor.run(task, &TaskContext::detached(cancel.clone())),
        Err(error) => TaskOutcome::failed(format!("the sandbox is not available: {error}")),
    }
}

/// Why an [`Executor`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The sandbox could not be prepared.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The handlers folder could not be read.
    #[error("could not read the handlers folder {path}: {source}")]
    HandlersFolder {
        /// The folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A Rust handler has the name of a built-in type.
    #[error("a handler cannot replace the built-in task type {0:?}")]
    ShadowsBuiltin(String),
}

/// Where a task type is implemented.
#[derive(Clone)]
enum Implementation {
    Builtin,
    Folder(PathBuf),
    Rust(Handler),
}

/// Runs tasks: built-in types, the handlers folder and Rust handlers, under the owner's
/// policy, with external processes in the sandbox.
pub struct Executor {
    config: ExecutionConfig,
    sandbox: Arc<Sandbox>,
    /// Every type this worker can run and is allowed to, by name.
    types: BTreeMap<String, Implementation>,
    /// Where external runs are recorded while they run (see [`crate::state::running`]).
    ledger: Option<Arc<Ledger>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

/// The Python program behind `python_eval`: it reads the payload on stdin, evaluates
/// `expression` with `variables` as its globals, and prints the value as JSON (its
/// `repr` when it is not JSON).
const PYTHON_EVAL: &str = r#"
import json, sys
payload = json.load(sys.stdin)
scope = dict(payload.get("variables") or payload.get("environment") or {})
value = eval(compile(payload["expression"], "<expression>", "eval"), scope)
try:
    text = json.dumps(value)
except (TypeError, ValueError):
    text = json.dumps(repr(value))
sys.stdout.write(text)
"#;

impl Executor {
    /// Prepares the sandbox, finds the handlers, checks for `python3`, and applies the
    /// owner's policy to decide which types the worker runs.
    pub fn new(
        config: ExecutionConfig,
        rust_handlers: BTreeMap<String, Handler>,
    ) -> Result<Executor, ExecutorError> {
        // The handlers' executables must be readable inside the sandbox.
        let mut sandbox_config = config.sandbox.clone();
        if let Some(dir) = &config.handlers_dir {
            sandbox_config.read.push(dir.clone());
        }
        let sandbox = if sandbox_config == crate::tasks::sandbox::SandboxConfig::default() {
            Sandbox::shared_default().map_err(SandboxError::Unavailable)?
        } else {
            Arc::new(Sandbox::new(sandbox_config)?)
        };
        let mut types = BTreeMap::new();
        for name in ["echo", "sleep", "system_info", "shell"] {
            types.insert(name.to_string(), Implementation::Builtin);
        }
        if crate::tasks::http::AVAILABLE {
            types.insert("http_request".to_string(), Implementation::Builtin);
        }
        if let Some(dir) = &config.handlers_dir {
            let found =
                handlers::scan_folder(dir).map_err(|source| ExecutorError::HandlersFolder {
                    path: dir.clone(),
                    source,
                })?;
            for (name, path) in found {
                if is_builtin(&name) {
                    log::warn!(
                        "handlers folder: {} has the name of a built-in type; skipped",
                        path.display()
                    );
                } else {
                    types.insert(name, Implementation::Folder(path));
                }
            }
        }
        for (name, handler) in rust_handlers {
            if is_builtin(&name) {
                return Err(ExecutorError::ShadowsBuiltin(name));
            }
            types.insert(name, Implementation::Rust(handler));
        }
        let mut executor = Executor {
            config,
            sandbox,
            types,
            ledger: None,
        };
        // python_eval is offered only if python3 really runs in the sandbox, as the
        // task's user, with the task's PATH.
        if executor.config.allows("python_eval") && executor.python_works() {
            executor
                .types
                .insert("python_eval".to_string(), Implementation::Builtin);
        }
        let config = &executor.config;
        executor.types.retain(|name, _| config.allows(name));
        // `http_request` runs inside the worker, where no sandbox applies: a type
        // whose network the owner turned off is not offered at all.
        if executor.types.contains_key("http_request")
            && !config.limits_for("http_request", None).network
        {
            executor.types.remove("http_request");
            log::info!("http_request is not offered: the configuration turns its network off");
        }
        if !executor.sandbox.can_deny_network() {
            let offline: Vec<&str> = executor
                .types
                .keys()
                .filter(|name| !config.limits_for(name, None).network)
                .map(String::as_str)
                .collect();
            if !offline.is_empty() {
                log::warn!(
                    "the configuration turns the network off for {}, but this kernel cannot \
                     enforce it (Landlock's TCP rules need ABI {} or later): those tasks have \
                     the network",
                    offline.join(", "),
                    crate::tasks::sandbox::LANDLOCK_NETWORK_ABI
                );
            }
        }
        if let Some(allowed) = &config.allow_types {
            for name in allowed
                .iter()
                .filter(|name| !executor.types.contains_key(*name))
            {
                log::warn!("--allow-types names {name:?}, which this worker cannot run");
            }
        }
        Ok(executor)
    }

    /// Records every external run in `ledger` while it runs, so that the next start
    /// of a worker killed meanwhile kills what it left running.
    pub fn record_runs_in(&mut self, ledger: Arc<Ledger>) {
        self.ledger = Some(ledger);
    }

    /// The task types this worker advertises: those it can run and its owner allows.
    pub fn task_types(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    /// The sandbox external processes run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn python_works(&self) -> bool {
        let command = SandboxCommand::new(
            "python3",
            vec!["-I".into(), "-c".into(), "print(6 * 7)".into()],
        );
        let limits = TaskLimits {
            timeout: Some(Duration::from_secs(20)),
            ..self.config.limits_for("python_eval", None)
        };
        match self.sandbox.run(command, &limits, &CancelToken::new()) {
            Ok(outcome) if outcome.exec.stdout.trim() == "42" => true,
            Ok(outcome) => {
                log::info!(
                    "python_eval is not offered: python3 did not run in the sandbox ({})",
                    outcome.exec.stderr.trim()
                );
                false
            }
            Err(error) => {
                log::info!("python_eval is not offered: {error}");
                false
            }
        }
    }

    /// Runs one task to its end and returns its outcome, cut to fit the master's line.
    pub fn run(&self, task: &TaskSpec, context: &TaskContext) -> TaskOutcome {
        let mut outcome = self.run_uncut(task, context);
        if let Err(reason) = protocol::limits::check_fields_depth("the result's", &outcome.result) {
            // The master refuses a result nested deeper than it can store and send
            // back (`protocol::MAX_VALUE_DEPTH`), so the task ends here, clearly,
            // keeping the exit code.
            let exit_code = outcome.result.get("exit_code").cloned();
            outcome = TaskOutcome::failed(format!("the result cannot be sent: {reason}"));
            if let Some(code) = exit_code {
                outcome.result.insert("exit_code".into(), code);
            }
        }
        fit_result(&mut outcome.result, MAX_RESULT_BYTES);
        if let Some(error) = &mut outcome.error {
            // The error sits beside the result in the same line, and can
            // quote user input (a program name), so it is bounded too.
            if error.len() > MAX_ERROR_BYTES {
                let mut cut = MAX_ERROR_BYTES;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push_str(" …");
            }
        }
        outcome
    }

    fn run_uncut(&self, task: &TaskSpec, context: &TaskContext) -> TaskOutcome {
        let timeout = match task_timeout(task.timeout) {
            Ok(timeout) => timeout,
            Err(error) => return TaskOutcome::failed(error),
        };
        let task_type = task.task_type.as_str();
        let Some(implementation) = self.types.get(task_type) else {
            return if is_builtin(task_type) || self.config.allows(task_type) {
                TaskOutcome::failed(format!("unsupported task type {task_type:?}"))
            } else {
                TaskOutcome::failed(format!(
                    "task type {task_type:?} is refused by this device's owner"
                ))
            };
        };
        let limits = self.config.limits_for(task_type, timeout);
        let payload = &task.payload;
        let cancel = &context.cancel;
        match implementation {
            Implementation::Rust(handler) => handler(task, context),
            Implementation::Folder(path) => self.run_folder_handler(path, task, context, &limits),
            Implementation::Builtin => match task_type {
                "echo" => echo(payload, limits.timeout, cancel),
                "sleep" => sleep(payload, limits.timeout, cancel),
                "system_info" => system_info(payload, limits.timeout, cancel),
                "shell" => match shell_command(payload) {
                    Ok(command) => self.run_sandboxed(command, task, &limits, cancel, false),
                    Err(error) => TaskOutcome::failed(error),
                },
                "python_eval" => match python_command(payload) {
                    Ok(command) => self.run_sandboxed(command, task, &limits, cancel, true),
                    Err(error) => TaskOutcome::failed(error),
                },
                "http_request" => crate::tasks::http::request(payload, limits.timeout, cancel),
                other => TaskOutcome::failed(format!("unsupported task type {other:?}")),
            },
        }
    }

    fn run_folder_handler(
        &self,
        path: &std::path::Path,
        task: &TaskSpec,
        context: &TaskContext,
        limits: &TaskLimits,
    ) -> TaskOutcome {
        let mut command = SandboxCommand::new(path.as_os_str(), Vec::new());
        command.stdin = Some(serde_json::to_vec(&task.payload).unwrap_or_default());
        command.env = vec![
            ("RETIRE_TASK_ID".into(), context.task_id.clone()),
            ("RETIRE_TASK_TYPE".into(), task.task_type.clone()),
            ("RETIRE_ATTEMPT".into(), context.attempt.to_string()),
        ];
        let reporter = context.progress_reporter();
        command.progress = Some(Box::new(move |line: String| {
            reporter.report(Progress::parse_line(&line));
        }));
        self.finish_sandboxed(command, task, limits, &context.cancel, true)
    }

    fn run_sandboxed(
        &self,
        command: exec::Command,
        task: &TaskSpec,
        limits: &TaskLimits,
        cancel: &CancelToken,
        parse_json: bool,
    ) -> TaskOutcome {
        let command = match command {
            exec::Command::Shell(script) => SandboxCommand::new(
                exec::shell_program(),
                vec!["-c".into(), OsString::from(script)],
            ),
            exec::Command::Argv(argv) => {
                let mut argv = argv.into_iter().map(OsString::from);
                let Some(program) = argv.next() else {
                    return TaskOutcome::failed("payload.argv must not be empty");
                };
                SandboxCommand::new(program, argv.collect())
            }
        };
        let mut command = command;
        if parse_json {
            // python_eval: the payload goes to the interpreter on stdin.
            command.stdin = Some(serde_json::to_vec(&task.payload).unwrap_or_default());
        }
        self.finish_sandboxed(command, task, limits, cancel, parse_json)
    }

    fn finish_sandboxed(
        &self,
        mut command: SandboxCommand,
        task: &TaskSpec,
        limits: &TaskLimits,
        cancel: &CancelToken,
        parse_json: bool,
    ) -> TaskOutcome {
        command.label = task
            .task_id
            .clone()
            .unwrap_or_else(|| task.task_type.clone());
        command.ledger = self.ledger.clone();
        match self.sandbox.run(command, limits, cancel) {
            Ok(outcome) => sandboxed_outcome(outcome, parse_json),
            Err(error) => TaskOutcome::failed(error.to_string()),
        }
    }
}

/// The longest `error` text a result carries.
pub const MAX_ERROR_BYTES: usize = 4096;

/// The most bytes a task's `result` object may take as JSON.
///
/// The master refuses lines over its limit (1 MiB by default) and closes the
/// connection; a result that never fits would then be resent forever. This
/// budget leaves room for the envelope under that default.
pub const MAX_RESULT_BYTES: usize = 900 * 1024;

/// Shortens the longest string fields of `result` (cutting at a character
/// boundary and flagging `<field>_truncated`) until its JSON fits `budget`.
/// Output made of control characters can grow six-fold when escaped, which
/// is why the capture cap alone is not enough.
pub fn fit_result(result: &mut Map<String, Value>, budget: usize) {
    let size =
        |result: &Map<String, Value>| serde_json::to_vec(result).map_or(0, |json| json.len());
    while size(result) > budget {
        let longest = result
            .iter()
            .filter_map(|(key, value)| value.as_str().map(|text| (key.clone(), text.len())))
            .max_by_key(|(_, len)| *len);
        let Some((key, len)) = longest.filter(|(_, len)| *len > 0) else {
            // Nothing left to shorten: replace the whole result, keeping
            // the exit code, which is small and what callers act on.
            let exit_code = result.get("exit_code").cloned().unwrap_or(Value::Null);
            result.clear();
            result.insert("output".into(), Value::Null);
            result.insert("exit_code".into(), exit_code);
            result.insert("result_truncated".into(), Value::Bool(true));
            return;
        };
        if let Some(Value::String(text)) = result.get_mut(&key) {
            let mut cut = len / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let flag = if key == "output" {
            "output_truncated".to_string()
        } else {
            format!("{key}_truncated")
        };
        result.insert(flag, Value::Bool(true));
    }
}

/// Converts a task's `timeout` in seconds into a duration; a missing timeout means none.
fn task_timeout(seconds: Option<f64>) -> Result<Option<Duration>, String> {
    match seconds {
        None => Ok(None),
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds)
                .map(Some)
                .map_err(|_| format!("timeout {seconds} is too large"))
        }
        Some(seconds) => Err(format!(
            "timeout must be a positive number of seconds, got {seconds}"
        )),
    }
}

/// `echo`: the output is `payload.message` when there is one, else the whole payload.
pub fn echo(payload: &Value, _timeout: Option<Duration>, _cancel: &CancelToken) -> TaskOutcome {
    let output = payload
        .get("message")
        .cloned()
        .unwrap_or_else(|| payload.clone());
    TaskOutcome::completed(output)
}

/// `sleep`: waits `payload.seconds` (or `payload.duration`) seconds.
///
/// It waits on the cancel token rather than sleeping, so a cancel ends it at once, and
/// it gives up at the task's timeout with status `timeout`.
pub fn sleep(payload: &Value, timeout: Option<Duration>, cancel: &CancelToken) -> TaskOutcome {
    let seconds = match payload.get("seconds").or_else(|| payload.get("duration")) {
        Some(Value::Number(number)) => number.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return TaskOutcome::failed(format!(
                "payload.seconds must be a number, got {}",
                json_type_name(other)
            ))
        }
        None => return TaskOutcome::failed("payload.seconds is missing (a number of seconds)"),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return TaskOutcome::failed(format!(
            "payload.seconds must be a number >= 0, got {seconds}"
        ));
    }
    let Ok(requested) = Duration::try_from_secs_f64(seconds) else {
        return TaskOutcome::failed(format!("payload.seconds {seconds} is too large"));
    };
    let (wait, cut_short_by_timeout) = match timeout {
        Some(timeout) if timeout < requested => (timeout, true),
        _ => (requested, false),
    };
    if cancel.wait_timeout(wait) {
        return TaskOutcome::unsuccessful(ResultStatus::Cancelled, "cancelled");
    }
    if cut_short_by_timeout {
        return TaskOutcome::unsuccessful(
            ResultStatus::Timeout,
            format!("timed out after {} s", wait.as_secs_f64()),
        );
    }
    TaskOutcome::completed(json!(format!("slept {seconds} s")))
        .with_field("seconds", json!(seconds))
}

/// `system_info`: the output is this device's profile and a live metrics sample.
pub fn system_info(
    _payload: &Value,
    _timeout: Option<Duration>,
    _cancel: &CancelToken,
) -> TaskOutcome {
    let device_profile = profile::collect();
    let metrics = MetricsSampler::new().sample();
    match (
        serde_json::to_value(device_profile),
        serde_json::to_value(metrics),
    ) {
        (Ok(device_profile), Ok(metrics)) => {
            TaskOutcome::completed(json!({ "profile": device_profile, "metrics": metrics }))
        }
        (Err(error), _) | (_, Err(error)) => {
            TaskOutcome::failed(format!("could not encode the system information: {error}"))
        }
    }
}

fn shell_command(payload: &Value) -> Result<exec::Command, String> {
    match (payload.get("command"), payload.get("argv")) {
        (Some(_), Some(_)) => Err("give payload.command or payload.argv, not both".into()),
        (Some(Value::String(script)), None) => {
            if script.trim().is_empty() {
                Err("payload.command must not be empty".into())
            } else {
                Ok(exec::Command::Shell(script.clone()))
            }
        }
        (Some(other), None) => Err(format!(
            "payload.command must be a string, got {}",
            json_type_name(other)
        )),
        (None, Some(Value::Array(items))) => {
            let argv: Option<Vec<String>> = items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect();
            match argv {
                Some(argv) if !argv.is_empty() => Ok(exec::Command::Argv(argv)),
                Some(_) => Err("payload.argv must not be empty".into()),
                None => Err("payload.argv must be a list of strings".into()),
            }
        }
        (None, Some(other)) => Err(format!(
            "payload.argv must be a list of strings, got {}",
            json_type_name(other)
        )),
        (None, None) => {
            Err("payload.command (a string) or payload.argv (a list) is missing".into())
        }
    }
}

/// Checks a `python_eval` payload and makes its command: the interpreter reads the
/// payload itself, on stdin.
fn python_command(payload: &Value) -> Result<exec::Command, String> {
    match payload.get("expression") {
        Some(Value::String(expression)) if !expression.trim().is_empty() => {}
        Some(Value::String(_)) => return Err("payload.expression must not be empty".into()),
        Some(other) => {
            return Err(format!(
                "payload.expression must be a string, got {}",
                json_type_name(other)
            ))
        }
        None => return Err("payload.expression (a Python expression) is missing".into()),
    }
    match payload
        .get("variables")
        .or_else(|| payload.get("environment"))
    {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(format!(
                "payload.variables must be an object, got {}",
                json_type_name(other)
            ))
        }
    }
    Ok(exec::Command::Argv(vec![
        "python3".into(),
        "-I".into(),
        "-c".into(),
        PYTHON_EVAL.into(),
    ]))
}

/// Turns a sandboxed run into a task outcome. `output` is stdout, parsed as JSON when
/// `parse_json` is set and it is JSON.
fn sandboxed_outcome(outcome: SandboxOutcome, parse_json: bool) -> TaskOutcome {
    let SandboxOutcome {
        exec: run,
        enforcement,
        limits_hit,
    } = outcome;
    let limit_note = if limits_hit.is_empty() {
        String::new()
    } else {
        format!(" (stopped by the {} limit)", limits_hit.join(" and "))
    };
    let (status, error) = if run.timed_out {
        let limit = enforcement.limits.timeout_secs.unwrap_or(0.0);
        (
            ResultStatus::Timeout,
            Some(format!("timed out after {limit} s")),
        )
    } else if run.cancelled {
        (ResultStatus::Cancelled, Some("cancelled".to_string()))
    } else {
        match (run.exit_code, run.signal) {
            (Some(0), _) => (ResultStatus::Completed, None),
            (Some(code), _) => {
                let last_line = run
                    .stderr
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty());
                let detail = last_line.map_or(String::new(), |line| {
                    format!(": {}", line.trim().chars().take(200).collect::<String>())
                });
                (
                    ResultStatus::Failed,
                    Some(format!("exit code {code}{limit_note}{detail}")),
                )
            }
            (None, Some(signal)) => (
                ResultStatus::Failed,
                Some(format!("killed by signal {signal}{limit_note}")),
            ),
            (None, None) => (
                ResultStatus::Failed,
                Some("ended without an exit code".into()),
            ),
        }
    };
    let output = if parse_json {
        serde_json::from_str::<Value>(run.stdout.trim())
            .unwrap_or_else(|_| Value::String(run.stdout.clone()))
    } else {
        json!(run.stdout)
    };
    // `output` is stdout; it is not repeated under a second name, so a big
    // output does not count twice against the line limit.
    let mut result = base_result(output, run.exit_code);
    result.insert("stderr".into(), json!(run.stderr));
    result.insert("output_truncated".into(), json!(run.stdout_truncated));
    result.insert("stderr_truncated".into(), json!(run.stderr_truncated));
    if let Some(signal) = run.signal {
        result.insert("signal".into(), json!(signal));
    }
    result.insert(
        "cpu_time".into(),
        json!(run.cpu_time.map(|time| time.as_secs_f64())),
    );
    result.insert("peak_memory_bytes".into(), json!(run.peak_memory_bytes));
    if !limits_hit.is_empty() {
        result.insert("limits_hit".into(), json!(limits_hit));
    }
    let mut sandbox = serde_json::to_value(&enforcement).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut sandbox {
        fields.insert("orphans_killed".into(), json!(run.orphans_killed));
    }
    result.insert("sandbox".into(), sandbox);
    TaskOutcome {
        status,
        result,
        error,
    }
}

/// The JSON type of `value`, for error messages about mistyped payload fields.
fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Instant;

    fn run(task_type: &str, payload: Value, timeout: Option<f64>) -> TaskOutcome {
        let mut task = TaskSpec::new(task_type, payload);
        task.timeout = timeout;
        run_builtin(&task, &CancelToken::new())
    }

    fn assert_failed_with(outcome: &TaskOutcome, needle: &str) {
        assert_eq!(outcome.status, ResultStatus::Failed, "{outcome:?}");
        let error = outcome.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(needle),
            "error {error:?} should mention {needle:?}"
        );
        assert!(outcome.result.contains_key("output"), "{outcome:?}");
        assert!(outcome.result.contains_key("exit_code"), "{outcome:?}");
    }

    #[test]
    fn echo_returns_the_message_or_the_whole_payload() {
        let outcome = run("echo", json!({"message": "hello"}), None);
        assert_eq!(outcome.status, ResultStatus::Completed);
        assert_eq!(outcome.result["output"], json!("hello"));
        assert_eq!(outcome.result["exit_code"], json!(0));
        assert_eq!(outcome.error, None);

        let outcome = run("echo", json!({"a": [1, 2]}), None);
        assert_eq!(outcome.result["output"], json!({"a": [1, 2]}));
    }

    #[test]
    fn sleep_completes_after_the_requested_time() {
        let before = Instant::now();
        let outcome = run("sleep", json!({"seconds": 0.05}), None);
        assert!(before.elapsed() >= Duration::from_millis(50));
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        assert_eq!(outcome.result["exit_code"], json!(0));
        let outcome = run("sleep", json!({"duration": 0}), None);
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
    }

    #[test]
    fn sleep_honours_the_task_timeout() {
        let before = Instant::now();
        let outcome = run("sleep", json!({"seconds": 30}), Some(0.05));
        assert!(before.elapsed() < Duration::from_secs(10));
        assert_eq!(outcome.status, ResultStatus::Timeout, "{outcome:?}");
        assert!(outcome.error.is_some());
    }

    #[test]
    fn sleep_stops_at_once_when_cancelled() {
        let cancel = CancelToken::new();
        let task = TaskSpec::new("sleep", json!({"seconds": 30}));
        let sleeper = {
            let cancel = cancel.clone();
            thread::spawn(move || run_builtin(&task, &cancel))
        };
        let before = Instant::now();
        cancel.cancel();
        let outcome = sleeper.join().expect("sleep thread");
        assert!(before.elapsed() < Duration::from_secs(10));
        assert_eq!(outcome.status, ResultStatus::Cancelled, "{outcome:?}");
    }

    #[test]
    fn sleep_refuses_bad_payloads() {
        assert_failed_with(&run("sleep", json!({}), None), "payload.seconds");
        assert_failed_with(&run("sleep", json!({"seconds": "5"}), None), "a string");
        assert_failed_with(&run("sleep", json!({"seconds": -1}), None), ">= 0");
        assert_failed_with(&run("sleep", json!({"seconds": 1e300}), None), "too large");
        assert_failed_with(
            &run("sleep", json!("not an object"), None),
            "payload.seconds",
        );
    }

    #[test]
    fn system_info_reports_profile_and_metrics() {
        let outcome = run("system_info", json!({}), None);
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        let output = &outcome.result["output"];
        assert!(
            output["profile"]["cpu_cores"].as_u64().unwrap_or(0) >= 1,
            "{output}"
        );
        assert_eq!(
            output["profile"]["architecture"],
            json!(std::env::consts::ARCH)
        );
        assert!(output["metrics"]["memory_usage"].is_number(), "{output}");
    }

    #[test]
    fn results_larger_than_the_budget_are_cut_to_fit() {
        // Control characters grow six-fold when escaped: 400 kB becomes 2.4 MB.
        let mut result = base_result(json!("\u{1}".repeat(400_000)), Some(0));
        result.insert("stderr".into(), json!("é".repeat(200_000)));
        fit_result(&mut result, MAX_RESULT_BYTES);
        let size = serde_json::to_vec(&result).expect("JSON").len();
        assert!(size <= MAX_RESULT_BYTES, "{size}");
        assert_eq!(result["output_truncated"], json!(true));
        assert_eq!(result["exit_code"], json!(0));
        let mut small = base_result(json!("fine"), Some(0));
        fit_result(&mut small, MAX_RESULT_BYTES);
        assert_eq!(small, base_result(json!("fine"), Some(0)));
    }

    #[test]
    fn shell_command_captures_stdout_stderr_and_exit_code() {
        let outcome = run("shell", json!({"command": "echo out; echo err >&2"}), None);
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        assert_eq!(outcome.result["output"], json!("out\n"));
        assert_eq!(outcome.result["stderr"], json!("err\n"));
        assert_eq!(outcome.result["exit_code"], json!(0));
        assert_eq!(outcome.result["output_truncated"], json!(false));
        assert_eq!(outcome.result["stderr_truncated"], json!(false));
        assert_eq!(outcome.error, None);
    }

    #[test]
    fn shell_argv_runs_without_a_shell() {
        let outcome = run("shell", json!({"argv": ["printf", "%s", "a b"]}), None);
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        assert_eq!(outcome.result["output"], json!("a b"));
    }

    #[test]
    fn shell_failures_say_why() {
        let outcome = run("shell", json!({"command": "exit 3"}), None);
        assert_eq!(outcome.status, ResultStatus::Failed);
        assert_eq!(outcome.result["exit_code"], json!(3));
        assert_eq!(outcome.error.as_deref(), Some("exit code 3"));

        let outcome = run("shell", json!({"command": "kill -9 $$"}), None);
        assert_eq!(outcome.status, ResultStatus::Failed);
        assert_eq!(outcome.result["exit_code"], Value::Null);
        assert_eq!(outcome.result["signal"], json!(9));
        assert_eq!(outcome.error.as_deref(), Some("killed by signal 9"));

        let outcome = run(
            "shell",
            json!({"argv": ["/nonexistent/retire-no-such-program"]}),
            None,
        );
        assert_failed_with(&outcome, "could not start");
    }

    #[test]
    fn shell_timeout_is_status_timeout() {
        let before = Instant::now();
        let outcome = run("shell", json!({"command": "sleep 30"}), Some(0.2));
        assert!(before.elapsed() < Duration::from_secs(10));
        assert_eq!(outcome.status, ResultStatus::Timeout, "{outcome:?}");
        assert!(outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"));
        assert_eq!(outcome.result["exit_code"], Value::Null);
    }

    #[test]
    fn shell_refuses_bad_payloads() {
        assert_failed_with(&run("shell", json!({}), None), "missing");
        assert_failed_with(&run("shell", json!({"command": 5}), None), "a number");
        assert_failed_with(&run("shell", json!({"command": "  "}), None), "empty");
        assert_failed_with(&run("shell", json!({"argv": []}), None), "empty");
        assert_failed_with(
            &run("shell", json!({"argv": ["ls", 1]}), None),
            "list of strings",
        );
        assert_failed_with(
            &run("shell", json!({"argv": "ls"}), None),
            "list of strings",
        );
        assert_failed_with(
            &run("shell", json!({"command": "true", "argv": ["true"]}), None),
            "not both",
        );
    }

    #[test]
    fn python_eval_returns_the_value_as_json() {
        let outcome = run(
            "python_eval",
            json!({"expression": "{'sum': sum(range(n)), 'words': s.split()}", "variables": {"n": 100, "s": "a b"}}),
            Some(30.0),
        );
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        assert_eq!(
            outcome.result["output"],
            json!({"sum": 4950, "words": ["a", "b"]})
        );
        let outcome = run("python_eval", json!({"expression": "{1, 2}"}), Some(30.0));
        assert_eq!(
            outcome.result["output"],
            json!("{1, 2}"),
            "not JSON: its repr"
        );
        let outcome = run("python_eval", json!({"expression": "1/0"}), Some(30.0));
        assert_failed_with(&outcome, "ZeroDivisionError");
        assert_failed_with(&run("python_eval", json!({}), None), "payload.expression");
        assert_failed_with(
            &run(
                "python_eval",
                json!({"expression": "1", "variables": [1]}),
                None,
            ),
            "payload.variables",
        );
    }

    /// A Python expression that builds a list `depth` levels deep.
    fn nested_expression(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// The issue's third attack on the worker's side: a `python_eval` whose value nests
    /// 126 deep. The master could not take it; the worker now ends the task as failed,
    /// saying why, instead of sending it. A value at the limit is sent as it is.
    #[test]
    fn a_python_eval_result_nested_too_deep_becomes_a_failed_result() {
        let outcome = run(
            "python_eval",
            json!({ "expression": nested_expression(126) }),
            Some(30.0),
        );
        assert_failed_with(&outcome, "nests more than 64 levels deep");
        assert_eq!(outcome.result["output"], Value::Null, "{outcome:?}");
        assert_eq!(outcome.result["exit_code"], json!(0), "{outcome:?}");
        let limit = protocol::MAX_VALUE_DEPTH;
        let outcome = run(
            "python_eval",
            json!({ "expression": nested_expression(limit) }),
            Some(30.0),
        );
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        assert_eq!(
            outcome.result["output"].to_string(),
            nested_expression(limit)
        );
    }

    #[test]
    fn sandboxed_results_report_usage_and_what_was_enforced() {
        let outcome = run("shell", json!({"command": "echo hi"}), Some(30.0));
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        let result = &outcome.result;
        assert!(result["cpu_time"].is_number(), "{result:?}");
        assert!(
            result["peak_memory_bytes"].as_u64().unwrap_or(0) > 0,
            "{result:?}"
        );
        let sandbox = &result["sandbox"];
        assert_eq!(sandbox["process_group"], json!(true), "{sandbox}");
        assert_eq!(sandbox["clean_env"], json!(true), "{sandbox}");
        assert_eq!(sandbox["limits"]["core_dumps"], json!(false), "{sandbox}");
        assert_eq!(sandbox["limits"]["timeout_secs"], json!(30.0), "{sandbox}");
        assert!(sandbox["landlock"]["state"].is_string(), "{sandbox}");
    }

    #[test]
    fn unknown_types_and_bad_timeouts_fail_cleanly() {
        assert_failed_with(&run("teleport", json!({}), None), "unsupported");
        assert_failed_with(&run("echo", json!({}), Some(-1.0)), "timeout");
    }

    #[test]
    fn outcome_becomes_a_task_result_with_its_attempt() {
        let result = TaskOutcome::completed(json!("hi")).into_task_result(
            "t-1".into(),
            3,
            Duration::from_millis(1500),
        );
        assert_eq!(result.task_id, "t-1");
        assert_eq!(result.attempt, Some(3));
        assert_eq!(result.status, ResultStatus::Completed);
        assert_eq!(result.execution_time, Some(1.5));
        assert_eq!(result.result, json!({"output": "hi", "exit_code": 0}));
    }

    #[test]
    fn builtin_types_are_all_dispatched() {
        for task_type in BUILTIN_TYPES {
            assert!(is_builtin(task_type));
            let outcome = run(task_type, json!({}), None);
            let error = outcome.error.unwrap_or_default();
            assert!(!error.contains("unsupported"), "{task_type}: {error}");
        }
    }
}
