//! What the owner of a device decides about the tasks it runs: which types it accepts,
//! where custom handlers live, how the sandbox is set up, and the resource limits, by
//! default and per task type.
//!
//! It comes from a TOML file (`retire-worker --config PATH`, or `RETIRE_CONFIG`),
//! which also holds the worker's other settings under the names of their flags
//! ([`crate::settings::WorkerSettings`]): a flag wins over its environment variable, which wins over
//! the file, which wins over the default, and `retire-worker config` prints what is
//! in effect and where each value came from (the join token redacted). An unknown
//! key or a value of the wrong type stops the worker with the key and its line. An
//! example, with every key (all are optional, `join` given here or as a flag):
//!
//! ```toml
//! join = "nas.local:8080"                   # the master (--join)
//! id = "pi-kitchen"                         # default: host name + machine id
//! slots = 4                                 # default: one per CPU
//! role = "worker"
//! tags = ["gpio", "camera"]
//! state_dir = "/var/lib/retire-worker"      # default: $XDG_STATE_HOME/retire-worker
//! drain_timeout = "1m"                      # seconds or a duration like "1m30s"; default 30
//! token_file = "/etc/retire-worker/join.token"  # the join token itself only in the environment
//! allow_types = ["echo", "shell", "python_eval", "resize"]  # default: everything it can run
//! deny_types = ["http_request"]
//! handlers = "/home/pi/retire-handlers"
//!
//! [sandbox]
//! work_dir = "/var/tmp/retire-worker"   # where private task directories are made
//! landlock = true                       # false turns filesystem confinement off
//! task_uid = 65534                      # the user tasks run as when the worker is root
//! task_gid = 65534
//! pass_env = ["HTTP_PROXY"]             # more variables tasks may see
//! read = ["/opt/models"]                # more paths tasks may read (with Landlock)
//! write = ["/mnt/usb/results"]          # more paths tasks may read and write
//! network = true                        # false: no TCP connect or listen (Landlock ABI 4)
//!
//! [limits]                              # every type; 0 means no limit
//! timeout_secs = 3600                   # the longest a task may run, whatever it asks
//! cpu_secs = 600
//! memory_mb = 1024
//! file_size_mb = 512
//! open_files = 256
//! processes = 32
//! output_kb = 1024
//!
//! [types.python_eval]                   # one type; overrides [limits]
//! memory_mb = 256
//! timeout_secs = 60
//! network = false                       # this type only; overrides [sandbox] network
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use daemon::settings::Seconds;
use serde::Deserialize;

use crate::tasks::limits::TaskLimits;
use crate::tasks::sandbox::SandboxConfig;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {key} {message}")]
    Invalid {
        /// The key, dotted (`types.shell.timeout_secs`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The `[limits]` and `[types.NAME]` tables. Sizes are in MiB (KiB for output);
/// 0 means no limit. A table is laid over the defaults of
/// [`TaskLimits`] (a key left out keeps what is there), so it is a type of its
/// own: every field may be missing, in the owner's units.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// The longest a task may run, in seconds; a task asking for more (or for no
    /// timeout) gets this.
    pub timeout_secs: Option<f64>,
    /// CPU seconds per process.
    pub cpu_secs: Option<u64>,
    /// Address space per process, MiB.
    pub memory_mb: Option<u64>,
    /// Largest file a task may write, MiB.
    pub file_size_mb: Option<u64>,
    /// Open files per process.
    pub open_files: Option<u64>,
    /// Processes and threads of one task at once.
    pub processes: Option<u64>,
    /// Captured bytes per output stream, KiB.
    pub output_kb: Option<u64>,
    /// Whether tasks of this type may use TCP; only in `[types.NAME]`, over
    /// `[sandbox] network`.
    pub network: Option<bool>,
}

impl LimitsSection {
    fn apply_to(&self, limits: &mut TaskLimits) {
        let some_unless_zero = |value: u64| (value > 0).then_some(value);
        if let Some(secs) = self.cpu_secs {
            limits.cpu_secs = some_unless_zero(secs);
        }
        if let Some(mb) = self.memory_mb {
            limits.memory_bytes = some_unless_zero(mb.saturating_mul(1 << 20));
        }
        if let Some(mb) = self.file_size_mb {
            limits.file_size_bytes = some_unless_zero(mb.saturating_mul(1 << 20));
        }
        if let Some(files) = self.open_files {
            limits.open_files = some_unless_zero(files);
        }
        if let Some(processes) = self.processes {
            limits.processes = some_unless_zero(processes);
        }
        if let Some(kb) = self.output_kb {
            limits.max_output_bytes =
                usize::try_from(kb.saturating_mul(1024)).unwrap_or(usize::MAX);
        }
    }

    fn check(&self, name: &str) -> Result<(), ConfigError> {
        if name == "limits" && self.network.is_some() {
            return Err(ConfigError::Invalid {
                key: "limits.network".into(),
                message: "is set in [sandbox] (every type) or [types.NAME] (one type)".into(),
            });
        }
        if let Some(secs) = self.timeout_secs {
            if !(secs.is_finite() && secs > 0.0 && Duration::try_from_secs_f64(secs).is_ok()) {
                return Err(ConfigError::Invalid {
                    key: format!("{name}.timeout_secs"),
                    message: format!("must be a positive number of seconds, got {secs}"),
                });
            }
        }
        Ok(())
    }
}

/// The `[sandbox]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Where private task directories are made.
    pub work_dir: Option<PathBuf>,
    /// Whether to use Landlock where the kernel offers it (default true).
    pub landlock: Option<bool>,
    /// The user tasks run as when the worker runs as root.
    pub task_uid: Option<u32>,
    /// The group tasks run as when the worker runs as root.
    pub task_gid: Option<u32>,
    /// More environment variables tasks may see.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// More paths tasks may read, beyond the system directories (with Landlock).
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// More paths tasks may read and write, beyond their own directory (with Landlock).
    #[serde(default)]
    pub write: Vec<PathBuf>,
    /// Whether tasks may use TCP (default true); `[types.NAME] network` overrides it.
    pub network: Option<bool>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The master to join (`--join`).
    pub join: Option<String>,
    /// The device id (`--id`).
    pub id: Option<String>,
    /// Tasks at once (`--slots`).
    pub slots: Option<usize>,
    /// The role (`--role`).
    pub role: Option<String>,
    /// The tags (`--tag`).
    pub tags: Option<Vec<String>>,
    /// The state dir (`--state-dir`).
    pub state_dir: Option<PathBuf>,
    /// The graceful stop's wait (`--drain-timeout`).
    pub drain_timeout: Option<Seconds>,
    /// The file with the join token (`--token-file`). The token itself is never
    /// a key: a config file is read by more people than the worker's environment.
    pub token_file: Option<PathBuf>,
    /// Task types accepted; absent means every type the worker can run.
    pub allow_types: Option<Vec<String>>,
    /// Task types refused, even when allowed above.
    pub deny_types: Option<Vec<String>>,
    /// The custom handlers folder.
    pub handlers: Option<PathBuf>,
    /// Sandbox set-up.
    #[serde(default)]
    pub sandbox: SandboxSection,
    /// Limits for every type.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Limits for one type, over `limits`.
    #[serde(default)]
    pub types: BTreeMap<String, LimitsSection>,
}

/// How a worker runs tasks: policy, handlers, sandbox and limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionConfig {
    /// Task types accepted; `None` accepts every type the worker can run.
    pub allow_types: Option<BTreeSet<String>>,
    /// Task types refused whatever `allow_types` says.
    pub deny_types: BTreeSet<String>,
    /// The folder of custom handlers (an executable per task type).
    pub handlers_dir: Option<PathBuf>,
    /// The sandbox set-up.
    pub sandbox: SandboxConfig,
    /// Limits for every type.
    pub limits: LimitsSection,
    /// Limits per type, over `limits`.
    pub type_limits: BTreeMap<String, LimitsSection>,
}

impl ExecutionConfig {
    /// Parses the text of a TOML config file.
    pub fn from_toml(text: &str) -> Result<ExecutionConfig, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: PathBuf::new(),
            message: error.to_string(),
        })?;
        ExecutionConfig::from_keys(file)
    }

    /// The policy, sandbox and limits from the keys of a config file (the
    /// worker's other settings in it are [`crate::settings::WorkerSettings`]'s).
    pub fn from_keys(file: ConfigFile) -> Result<ExecutionConfig, ConfigError> {
        file.limits.check("limits")?;
        for (name, section) in &file.types {
            section.check(&format!("types.{name}"))?;
        }
        for (key, paths) in [
            ("sandbox.read", &file.sandbox.read),
            ("sandbox.write", &file.sandbox.write),
        ] {
            if let Some(path) = paths.iter().find(|path| !path.is_absolute()) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!("needs absolute paths, got {}", path.display()),
                });
            }
        }
        let defaults = SandboxConfig::default();
        let sandbox = SandboxConfig {
            work_dir: file.sandbox.work_dir.unwrap_or(defaults.work_dir),
            landlock: file.sandbox.landlock.unwrap_or(defaults.landlock),
            task_user: (
                file.sandbox.task_uid.unwrap_or(defaults.task_user.0),
                file.sandbox.task_gid.unwrap_or(defaults.task_user.1),
            ),
            pass_env: file.sandbox.pass_env,
            read: file.sandbox.read,
            write: file.sandbox.write,
            network: file.sandbox.network.unwrap_or(defaults.network),
        };
        Ok(ExecutionConfig {
            allow_types: file.allow_types.map(|types| names(&types)),
            deny_types: names(&file.deny_types.unwrap_or_default()),
            handlers_dir: file.handlers,
            sandbox,
            limits: file.limits,
            type_limits: file.types,
        })
    }

    /// Whether the owner's policy accepts `task_type`.
    pub fn allows(&self, task_type: &str) -> bool {
        self.allow_types
            .as_ref()
            .is_none_or(|allowed| allowed.contains(task_type))
            && !self.deny_types.contains(task_type)
    }

    /// The limits for one task of `task_type` that asked for `task_timeout`.
    pub fn limits_for(&self, task_type: &str, task_timeout: Option<Duration>) -> TaskLimits {
        let mut limits = TaskLimits::default();
        self.limits.apply_to(&mut limits);
        let type_limits = self.type_limits.get(task_type);
        if let Some(section) = type_limits {
            section.apply_to(&mut limits);
        }
        let most = type_limits
            .and_then(|section| section.timeout_secs)
            .or(self.limits.timeout_secs)
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok());
        limits.network = type_limits
            .and_then(|section| section.network)
            .unwrap_or(self.sandbox.network);
        limits.timeout = match (task_timeout, most) {
            (Some(asked), Some(most)) => Some(asked.min(most)),
            (asked, most) => asked.or(most),
        };
        limits
    }
}

/// Task type names as a set, blanks dropped.
pub(crate) fn names(types: &[String]) -> BTreeSet<String> {
    types
        .iter()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let example = daemon::settings::doc_example(include_str!("config.rs"));
        let config = ExecutionConfig::from_toml(&example).expect("the example parses");
        assert!(config.allows("python_eval"));
        assert!(!config.allows("http_request"));
        assert!(!config.allows("sleep"));
        assert_eq!(config.sandbox.pass_env, ["HTTP_PROXY"]);
        assert_eq!(config.sandbox.task_user, (65534, 65534));
        let limits = config.limits_for("python_eval", None);
        assert_eq!(limits.memory_bytes, Some(256 << 20));
        assert_eq!(limits.timeout, Some(Duration::from_secs(60)));
        assert_eq!(limits.processes, Some(32));
        let limits = config.limits_for("shell", Some(Duration::from_secs(5)));
        assert_eq!(limits.memory_bytes, Some(1024 << 20));
        assert_eq!(limits.timeout, Some(Duration::from_secs(5)));
        assert_eq!(limits.max_output_bytes, 1024 * 1024);
        assert!(limits.network, "[sandbox] network = true");
        assert!(!config.limits_for("python_eval", None).network);
        assert_eq!(config.sandbox.read, [PathBuf::from("/opt/models")]);
        assert_eq!(config.sandbox.write, [PathBuf::from("/mnt/usb/results")]);
    }

    #[test]
    fn zero_means_no_limit_and_defaults_fill_the_rest() {
        let config = ExecutionConfig::from_toml("[limits]\nmemory_mb = 0\n").expect("parses");
        let limits = config.limits_for("shell", None);
        assert_eq!(limits.memory_bytes, None);
        assert_eq!(limits.open_files, TaskLimits::default().open_files);
        assert_eq!(limits.timeout, None);
        assert!(config.allows("anything"));
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let error = ExecutionConfig::from_toml("[limits]\nmemory = 5\n").expect_err("unknown key");
        assert!(error.to_string().contains("memory"), "{error}");
        let error = ExecutionConfig::from_toml("allow_types = \"shell\"\n").expect_err("a string");
        assert!(error.to_string().contains("allow_types"), "{error}");
        let error =
            ExecutionConfig::from_toml("[types.shell]\ntimeout_secs = -1\n").expect_err("negative");
        assert!(error.to_string().contains("types.shell"), "{error}");
        let error =
            ExecutionConfig::from_toml("[sandbox]\nread = [\"data\"]\n").expect_err("relative");
        assert!(error.to_string().contains("sandbox.read"), "{error}");
        let error = ExecutionConfig::from_toml("[limits]\nnetwork = false\n").expect_err("limits");
        assert!(error.to_string().contains("[sandbox]"), "{error}");
    }
}
