//! The worker's settings: its flags, their environment variables and the config
//! file (`--config PATH`, `RETIRE_CONFIG`), laid over each other: flag >
//! environment > file > default, each value with where it came from, for
//! `retire-worker config`. The file's keys, with an example of every one, are in
//! [`crate::tasks::config`]; the same file holds the owner's policy, sandbox and
//! limits, which [`WorkerSettings::resolve`] returns beside the settings.

use std::path::PathBuf;

use daemon::settings::{
    pick, Given, Line, Seconds, Setting, SettingValue, SettingsError, SettingsFile, Source,
};

use crate::tasks::config::{names, ConfigError, ConfigFile, ExecutionConfig};

/// The worker's settings that have a flag, each with its value and where it came
/// from: the flag, its environment variable, the config file or the default.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// The master to join; required, from one of the three.
    pub join: Setting<Option<String>>,
    /// The device id (`None`: derived from the host).
    pub id: Setting<Option<String>>,
    /// Tasks at once (`None`: one per CPU).
    pub slots: Setting<Option<usize>>,
    /// The role.
    pub role: Setting<String>,
    /// The tags.
    pub tags: Setting<Vec<String>>,
    /// The state dir (`None`: the default one).
    pub state_dir: Setting<Option<PathBuf>>,
    /// How long a graceful stop waits.
    pub drain_timeout: Setting<Seconds>,
    /// Where the join token comes from: the flag or variable that gave it, if
    /// one did. Its value is never kept here.
    pub token: Option<Source>,
    /// The file with the join token.
    pub token_file: Setting<Option<PathBuf>>,
    /// Task types accepted (`None`: every type it can run).
    pub allow_types: Setting<Option<Vec<String>>>,
    /// Task types refused.
    pub deny_types: Setting<Vec<String>>,
    /// The custom handlers folder.
    pub handlers: Setting<Option<PathBuf>>,
}

impl WorkerSettings {
    /// Lays the flags and environment (`given`) over the config file over the
    /// defaults, and returns the settings with the owner's policy, sandbox and
    /// limits (the file's, with `allow_types`, `deny_types` and `handlers` as
    /// picked). A mistake in the file names the key and its line.
    pub fn resolve(
        given: &Given,
        file: Option<&SettingsFile>,
    ) -> Result<(WorkerSettings, ExecutionConfig), SettingsError> {
        let mut keys: ConfigFile = match file {
            Some(file) => file.parse()?,
            None => ConfigFile::default(),
        };
        let settings = WorkerSettings {
            join: pick("join", given, keys.join.take().map(Some), file, None)?,
            id: pick("id", given, keys.id.take().map(Some), file, None)?,
            slots: pick("slots", given, keys.slots.take().map(Some), file, None)?,
            role: pick("role", given, keys.role.take(), file, "worker".to_string())?,
            tags: pick("tags", given, keys.tags.take(), file, Vec::new())?,
            state_dir: pick(
                "state_dir",
                given,
                keys.state_dir.take().map(Some),
                file,
                None,
            )?,
            drain_timeout: pick(
                "drain_timeout",
                given,
                keys.drain_timeout.take(),
                file,
                Seconds(crate::DEFAULT_DRAIN_TIMEOUT),
            )?,
            token: given.get("token").map(|(_, source)| source.clone()),
            token_file: pick(
                "token_file",
                given,
                keys.token_file.take().map(Some),
                file,
                None,
            )?,
            allow_types: pick(
                "allow_types",
                given,
                keys.allow_types.take().map(Some),
                file,
                None,
            )?,
            deny_types: pick(
                "deny_types",
                given,
                keys.deny_types.take(),
                file,
                Vec::new(),
            )?,
            handlers: pick(
                "handlers",
                given,
                keys.handlers.take().map(Some),
                file,
                None,
            )?,
        };
        let mut execution =
            ExecutionConfig::from_keys(keys).map_err(|error| match (error, file) {
                (ConfigError::Invalid { key, message }, Some(file)) => {
                    SettingsError::invalid(&key, &file.source(&key), message)
                }
                (other, _) => SettingsError::Value {
                    from: Source::Default,
                    message: other.to_string(),
                },
            })?;
        execution.allow_types = settings.allow_types.value.as_deref().map(names);
        execution.deny_types = names(&settings.deny_types.value);
        execution.handlers_dir = settings.handlers.value.clone();
        Ok((settings, execution))
    }

    /// What `retire-worker config` prints, one line per setting; the join token
    /// shows only where it came from.
    pub fn lines(&self) -> Vec<Line> {
        let token = match &self.token {
            Some(source) => Line::secret("token", source.clone()),
            None => Line::shown(
                "token",
                &Setting {
                    value: None::<String>,
                    source: Source::Default,
                },
            ),
        };
        vec![
            Line::shown("join", &self.join),
            Line::shown("id", &self.id),
            Line::shown("slots", &self.slots),
            Line::shown("role", &self.role),
            Line::shown("tags", &self.tags),
            Line::shown("state_dir", &self.state_dir),
            Line::shown("drain_timeout", &self.drain_timeout),
            token,
            Line::shown("token_file", &self.token_file),
            Line::shown("allow_types", &self.allow_types),
            Line::shown("deny_types", &self.deny_types),
            Line::shown("handlers", &self.handlers),
        ]
    }
}

/// What `retire-worker config` prints after the settings: the policy's
/// sandbox and limits in effect, as dotted keys in the file's units (`0`: no
/// limit), each from the file (with its line) or the default, and every
/// `[types.NAME]` key the file sets.
pub fn policy_lines(execution: &ExecutionConfig, file: Option<&SettingsFile>) -> Vec<Line> {
    let source = |key: &str| match file {
        Some(file) if file.contains(key) => file.source(key),
        _ => Source::Default,
    };
    let line = |key: &str, value: String| Line {
        key: key.to_string(),
        value: Some(value),
        source: source(key),
    };
    let sandbox = &execution.sandbox;
    let pass_env = Setting {
        value: sandbox.pass_env.clone(),
        source: Source::Default,
    };
    // Paths print as TOML strings, as the file writes them.
    let paths = |paths: &[PathBuf]| -> Vec<String> {
        paths
            .iter()
            .map(|path| path.display().to_string())
            .collect()
    };
    let mut lines = vec![
        line("sandbox.work_dir", sandbox.work_dir.to_toml()),
        line("sandbox.landlock", sandbox.landlock.to_toml()),
        line("sandbox.task_uid", sandbox.task_user.0.to_toml()),
        line("sandbox.task_gid", sandbox.task_user.1.to_toml()),
        line("sandbox.pass_env", pass_env.value.to_toml()),
        line("sandbox.read", paths(&sandbox.read).to_toml()),
        line("sandbox.write", paths(&sandbox.write).to_toml()),
        line("sandbox.network", sandbox.network.to_toml()),
    ];
    // Every type gets these unless its own table says otherwise.
    let limits = execution.limits_for("", None);
    let number = |value: Option<u64>| value.unwrap_or(0).to_string();
    let timeout = execution.limits.timeout_secs;
    lines.extend([
        line(
            "limits.timeout_secs",
            timeout.map_or_else(|| "none".to_string(), |secs| secs.to_string()),
        ),
        line("limits.cpu_secs", number(limits.cpu_secs)),
        line(
            "limits.memory_mb",
            number(limits.memory_bytes.map(|b| b >> 20)),
        ),
        line(
            "limits.file_size_mb",
            number(limits.file_size_bytes.map(|b| b >> 20)),
        ),
        line("limits.open_files", number(limits.open_files)),
        line("limits.processes", number(limits.processes)),
        line(
            "limits.output_kb",
            (limits.max_output_bytes / 1024).to_string(),
        ),
    ]);
    for (name, section) in &execution.type_limits {
        let set = [
            (
                "timeout_secs",
                section.timeout_secs.map(|secs| secs.to_string()),
            ),
            ("cpu_secs", section.cpu_secs.map(|v| v.to_string())),
            ("memory_mb", section.memory_mb.map(|v| v.to_string())),
            ("file_size_mb", section.file_size_mb.map(|v| v.to_string())),
            ("open_files", section.open_files.map(|v| v.to_string())),
            ("processes", section.processes.map(|v| v.to_string())),
            ("output_kb", section.output_kb.map(|v| v.to_string())),
            ("network", section.network.map(|v| v.to_string())),
        ];
        for (key, value) in set {
            if let Some(value) = value {
                // The file's lines are by the name as parsed; the printout
                // quotes it when TOML needs that.
                lines.push(Line {
                    key: format!("types.{}.{key}", toml_key(name)),
                    value: Some(value),
                    source: source(&format!("types.{name}.{key}")),
                });
            }
        }
    }
    lines
}

/// A table name as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        daemon::settings::toml_string(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_file(text: &str) -> SettingsFile {
        SettingsFile::from_text(std::path::Path::new("w.toml"), text.to_string()).expect("TOML")
    }

    /// The line `config` prints for `key`: its value (or `(redacted)`) and source.
    fn shown(settings: &WorkerSettings, key: &str) -> String {
        let line = settings
            .lines()
            .into_iter()
            .find(|line| line.key == key)
            .expect("a known key");
        let value = line.value.unwrap_or_else(|| "(redacted)".into());
        format!("{value} # {}", line.source)
    }

    /// Each of the four levels wins over the ones below it, for the worker's
    /// settings and its policy alike.
    #[test]
    fn flag_over_env_over_file_over_default() {
        fn check(given: Given, text: Option<&str>, key: &str, expect: &str) {
            let file = text.map(settings_file);
            let (settings, _) = WorkerSettings::resolve(&given, file.as_ref()).expect("valid");
            assert_eq!(
                shown(&settings, key),
                expect,
                "{key} from {given:?} {text:?}"
            );
        }
        let text = Some(
            "join = \"nas:8080\"\nslots = 2\n\ndeny_types = [\"shell\"]\ndrain_timeout = \"2m\"\n",
        );
        check(
            Given::new().flag("join", &["a:1"]),
            text,
            "join",
            "\"a:1\" # flag --join",
        );
        check(
            Given::new().env("join", "RETIRE_JOIN", &["b:2"]),
            text,
            "join",
            "\"b:2\" # env RETIRE_JOIN",
        );
        check(Given::new(), text, "join", "\"nas:8080\" # file w.toml:1");
        check(Given::new(), None, "join", "none # default");
        check(Given::new(), text, "drain_timeout", "120 # file w.toml:5");
        check(Given::new(), None, "drain_timeout", "30 # default");
        check(Given::new(), None, "role", "\"worker\" # default");
        check(
            Given::new().env("deny_types", "RETIRE_DENY_TYPES", &["http_request,sleep"]),
            text,
            "deny_types",
            "[\"http_request\", \"sleep\"] # env RETIRE_DENY_TYPES",
        );
        check(
            Given::new(),
            text,
            "deny_types",
            "[\"shell\"] # file w.toml:4",
        );
        check(
            Given::new().flag("tags", &["a", "b"]),
            Some("tags = [\"c\"]"),
            "tags",
            "[\"a\", \"b\"] # flag --tags",
        );
    }

    /// The policy the worker runs with is the one `config` shows.
    #[test]
    fn the_picked_policy_is_the_one_applied() {
        let file = settings_file("allow_types = [\"echo\", \"shell\"]\ndeny_types = [\"echo\"]\n[limits]\nmemory_mb = 64\n");
        let given = Given::new().env("allow_types", "RETIRE_ALLOW_TYPES", &["echo", "sleep"]);
        let (_, execution) = WorkerSettings::resolve(&given, Some(&file)).expect("valid");
        assert!(execution.allows("sleep"));
        assert!(
            !execution.allows("shell"),
            "the variable replaces the file's list"
        );
        assert!(
            !execution.allows("echo"),
            "the file's deny_types still applies"
        );
        assert_eq!(
            execution.limits_for("sleep", None).memory_bytes,
            Some(64 << 20)
        );
    }

    /// The join token never shows, only where it came from.
    #[test]
    fn the_join_token_is_redacted() {
        let token = "rc_join_0123456789abcdef";
        for given in [
            Given::new().env("token", "RETIRE_JOIN_TOKEN", &[token]),
            Given::new().flag("token", &[token]),
        ] {
            let (settings, _) = WorkerSettings::resolve(&given, None).expect("valid");
            let printed = daemon::settings::render(&settings.lines());
            assert!(!printed.contains(token), "{printed}");
            let source = given.get("token").expect("given").1;
            assert!(
                printed.contains(&format!("# token = \"(redacted)\"  # {source}")),
                "{printed}"
            );
        }
        let (settings, _) = WorkerSettings::resolve(&Given::new(), None).expect("valid");
        assert_eq!(shown(&settings, "token"), "none # default");
    }

    /// A mistake names the key and its line, or the flag or variable.
    #[test]
    fn mistakes_name_the_key_and_the_line() {
        fn check(given: Given, text: &str, expect: &str) {
            let file = SettingsFile::from_text(std::path::Path::new("w.toml"), text.to_string());
            let error = file
                .and_then(|file| WorkerSettings::resolve(&given, Some(&file)).map(|_| ()))
                .expect_err(text);
            assert_eq!(error.exit_code(), daemon::settings::EXIT_INVALID);
            let message = error.to_string();
            assert!(message.starts_with(expect), "{text:?}: {message}");
        }
        let none = Given::new;
        check(
            none(),
            "join = \"a:1\"\ntoken = \"x\"\n",
            "w.toml:2: token: unknown field `token`",
        );
        check(
            none(),
            "slots = \"four\"\n",
            "w.toml:1: slots: invalid type: string \"four\"",
        );
        check(
            none(),
            "tags = \"a\"\n",
            "w.toml:1: tags: invalid type: string \"a\", expected a sequence",
        );
        check(
            none(),
            "drain_timeout = \"later\"\n",
            "w.toml:1: drain_timeout: expected seconds or a duration",
        );
        check(
            none(),
            "[sandbox]\n\nlandlok = false\n",
            "w.toml:3: sandbox.landlok: unknown field `landlok`",
        );
        check(
            none(),
            "[types.shell]\ntimeout_secs = -1\n",
            "w.toml:2: types.shell.timeout_secs: must be a positive number of seconds, got -1",
        );
        check(
            none().env("slots", "RETIRE_SLOTS", &["many"]),
            "",
            "env RETIRE_SLOTS: invalid digit",
        );
    }

    /// The sandbox and limits in effect show in the file's units, each from the
    /// file (with its line) or the default, and a printout reads back as TOML.
    #[test]
    fn the_policy_in_effect_is_shown_with_its_sources() {
        let file = settings_file(
            "[sandbox]\nlandlock = false\n[limits]\nmemory_mb = 512\n[types.\"my type\"]\ntimeout_secs = 2.5\n",
        );
        let (_, execution) = WorkerSettings::resolve(&Given::new(), Some(&file)).expect("valid");
        let printed = daemon::settings::render(&policy_lines(&execution, Some(&file)));
        let read = |key| daemon::settings::printed(&printed, key).expect(key);
        assert_eq!(
            read("sandbox.landlock"),
            ("false".into(), "file w.toml:2".into())
        );
        assert_eq!(
            read("limits.memory_mb"),
            ("512".into(), "file w.toml:4".into())
        );
        assert_eq!(
            read("limits.processes"),
            (
                crate::tasks::limits::DEFAULT_PROCESSES.to_string(),
                "default".into()
            )
        );
        assert_eq!(
            read("types.\"my type\".timeout_secs"),
            ("2.5".into(), "file w.toml:6".into())
        );
        let again: toml::Table = toml::from_str(&printed).expect("TOML");
        assert_eq!(again["limits"]["memory_mb"].as_integer(), Some(512));
    }

    /// The README's worker.toml is a file the worker takes.
    #[test]
    fn the_readme_example_is_a_valid_worker_file() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("`/etc/retire-worker/worker.toml` for `retire-worker --config`:\n\n```toml\n")
            .expect("the README shows a worker.toml");
        let text = &readme[start..];
        let text = &text[text.find("```toml\n").expect("a block") + 8..];
        let text = &text[..text.find("```").expect("its end")];
        let file = settings_file(text);
        let (settings, execution) =
            WorkerSettings::resolve(&Given::new(), Some(&file)).expect("valid");
        assert_eq!(settings.join.value.as_deref(), Some("nas.local:8080"));
        assert!(!execution.allows("http_request"));
    }
}
