//! The master's settings: a TOML file (`retire-master --config PATH`, or
//! `RETIRE_CONFIG`) whose keys are named like the flags, under the environment and
//! the flags: flag > environment > file > default.
//!
//! [`Settings::resolve`] lays them over each other and keeps where each value came
//! from (`retire-master config` prints it), and [`Settings::config`] checks the
//! values and turns them into the [`Config`] the master runs with. A key the master
//! does not know, a value of the wrong type or out of range is an error naming the
//! key and its line ([`daemon::settings`]). Every key with its default (the README
//! shows the same file):
//!
//! ```toml
//! listen = "0.0.0.0:8080"                   # --dev: 127.0.0.1:8080
//! data_dir = "/var/lib/retire-cluster"      # --dev: ./.retire-dev
//! heartbeat_interval = 5                    # seconds, or a duration like "1m30s"
//! heartbeat_timeout = 15
//! max_line = 1048576                        # bytes
//! max_connections = 10000
//! synchronous = "normal"                    # or "full"
//! default_max_retries = 0
//! timeout_grace = 10
//! lease_grace = 60
//! # dev_slots = 4                           # --dev only; default: the number of cores
//! no_auth = false
//! allow_legacy_workers = false
//! read_only_from = ["127.0.0.0/8", "::1"]   # [] or ["none"] for nobody
//! auth_deadline = 5
//! max_unauthenticated = 128
//! pre_auth_max_line = 4096
//! max_pending_output = 67108864
//! max_total_output = 268435456
//! drain_timeout = 30
//! reader_idle_timeout = 600
//! sse_keep_alive = 15                       # seconds a Server-Sent Events stream may stay silent
//! retention = "30d"                         # finished tasks are deleted after this
//! retention_failed = "90d"                  # failed, timed_out, dead_letter ones after this
//! strategy = "least_loaded"                 # placement until `retire strategy` sets one
//! no_announce = false                       # true: no `_retire._tcp` on the LAN (`--join auto`)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use daemon::settings::{pick, Given, Line, Seconds, Setting, SettingsError, SettingsFile, Source};

use crate::core::{parse_network, AuthPolicy, CoreConfig, DEFAULT_MAX_UNAUTHENTICATED};
use crate::{Config, Synchronous};

/// Where the database lives when neither `--data-dir` nor the file says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/retire-cluster";

/// Where `--dev` keeps its database when neither `--data-dir` nor the file says.
pub const DEV_DATA_DIR: &str = ".retire-dev";

/// Declares the settings once: the file's keys (a struct that refuses unknown
/// ones), [`Settings`] with a value and a source per key, how they are picked,
/// and the lines `config` prints, all in the same order.
macro_rules! settings {
    ($dev:ident; $( $(#[doc = $doc:literal])* $key:ident : $type:ty = $default:expr ),* $(,)?) => {
        /// The keys of the config file; every one may be left out.
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileKeys {
            $( $key: Option<$type>, )*
        }

        /// Every setting of `retire-master` with the value in effect and where it
        /// came from. Durations are as typed (zero allowed); [`Settings::config`]
        /// checks them.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $key: Setting<$type>, )*
        }

        impl Settings {
            /// Lays the flags and environment (`given`) over the file over the
            /// defaults; `dev` changes the defaults of `listen` and `data_dir`.
            pub fn resolve(
                given: &Given,
                file: Option<&SettingsFile>,
                $dev: bool,
            ) -> Result<Settings, SettingsError> {
                let keys: FileKeys = match file {
                    Some(file) => file.parse()?,
                    None => FileKeys::default(),
                };
                Ok(Settings {
                    $( $key: pick(stringify!($key), given, keys.$key, file, $default)?, )*
                })
            }

            /// What `retire-master config` prints, one line per key. The master
            /// has no secret among its settings (the tokens and its key are
            /// files in the data dir), so nothing here is redacted.
            pub fn lines(&self) -> Vec<Line> {
                vec![ $( Line::shown(stringify!($key), &self.$key), )* ]
            }
        }
    };
}

settings! { dev;
    /// Address to listen on.
    listen: SocketAddr = SocketAddr::from((
        if dev { [127, 0, 0, 1] } else { [0, 0, 0, 0] },
        protocol::DEFAULT_PORT,
    )),
    /// Directory of the database and the tokens.
    data_dir: PathBuf = PathBuf::from(if dev { DEV_DATA_DIR } else { DEFAULT_DATA_DIR }),
    /// Time between worker heartbeats.
    heartbeat_interval: Seconds = Seconds(CoreConfig::default().heartbeat_interval),
    /// Silence after which a worker is gone.
    heartbeat_timeout: Seconds = Seconds(CoreConfig::default().heartbeat_timeout),
    /// Longest line a peer may send.
    max_line: usize = crate::DEFAULT_MAX_LINE,
    /// Most connections at once.
    max_connections: usize = crate::DEFAULT_MAX_CONNECTIONS,
    /// SQLite's `synchronous`: `normal` or `full`.
    synchronous: String = "normal".to_string(),
    /// Retries of a task that does not say.
    default_max_retries: u32 = CoreConfig::default().default_max_retries,
    /// Time past a task's timeout before the master gives up on it.
    timeout_grace: Seconds = Seconds(CoreConfig::default().timeout_grace),
    /// Time the tasks of a lost worker are held before they are requeued.
    lease_grace: Seconds = Seconds(CoreConfig::default().lease_grace),
    /// Slots of the `--dev` worker (`None`: one per core).
    dev_slots: Option<usize> = None,
    /// Authentication off (loopback only).
    no_auth: bool = false,
    /// Accept workers that cannot authenticate.
    allow_legacy_workers: bool = false,
    /// Networks that may read without a token.
    read_only_from: Vec<String> = vec!["127.0.0.0/8".to_string(), "::1".to_string()],
    /// Time a new connection has to authenticate.
    auth_deadline: Seconds = Seconds(crate::core::DEFAULT_AUTH_DEADLINE),
    /// Most connections waiting to authenticate.
    max_unauthenticated: usize = DEFAULT_MAX_UNAUTHENTICATED,
    /// Longest line before authentication.
    pre_auth_max_line: usize = crate::DEFAULT_PRE_AUTH_MAX_LINE,
    /// Most bytes queued for one authenticated peer.
    max_pending_output: usize = crate::DEFAULT_MAX_PENDING_OUTPUT,
    /// Most bytes queued for all peers.
    max_total_output: usize = crate::DEFAULT_MAX_TOTAL_OUTPUT,
    /// Time a half-closed connection has to take its replies.
    drain_timeout: Seconds = Seconds(crate::DEFAULT_DRAIN_TIMEOUT),
    /// Time an anonymous reader may stay idle.
    reader_idle_timeout: Seconds = Seconds(crate::DEFAULT_READER_IDLE_TIMEOUT),
    /// Time a Server-Sent Events stream may stay silent before a keep-alive comment.
    sse_keep_alive: Seconds = Seconds(crate::http::SSE_KEEP_ALIVE_INTERVAL),
    /// Age after which a completed or cancelled task is deleted.
    retention: Seconds = Seconds(crate::store::retention::DEFAULT_RETENTION),
    /// Age after which a failed, timed-out or dead-lettered task is deleted.
    retention_failed: Seconds = Seconds(crate::store::retention::DEFAULT_RETENTION_FAILED),
    /// The placement strategy until one is set with `retire strategy`.
    strategy: String = protocol::PlacementStrategy::default().as_str().to_string(),
    /// Do not announce `_retire._tcp` over mDNS (see [`crate::announce`]).
    no_announce: bool = false,
}

impl Settings {
    /// Checks the values and builds what the master runs with. A mistake names
    /// the key and where its value came from (the flag, the variable, or the
    /// file and line).
    pub fn config(&self) -> Result<Config, SettingsError> {
        let synchronous = Synchronous::parse(&self.synchronous.value).ok_or_else(|| {
            invalid(
                "synchronous",
                &self.synchronous,
                format!("must be normal or full, got {:?}", self.synchronous.value),
            )
        })?;
        let listen = self.listen.value;
        if self.no_auth.value && !listen.ip().is_loopback() {
            return Err(invalid(
                "no_auth",
                &self.no_auth,
                // The words of the flag's refusal before the file existed.
                format!(
                    "--no-auth is refused on {listen}: without authentication anyone who \
                     reaches the port runs code on every worker; listen on 127.0.0.1 or keep \
                     authentication on"
                ),
            ));
        }
        let read_only_from = self
            .read_only_from
            .value
            .iter()
            .map(|text| text.trim())
            .filter(|text| !text.is_empty() && *text != "none")
            .map(|text| {
                parse_network(text)
                    .map_err(|message| invalid("read_only_from", &self.read_only_from, message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = AuthPolicy {
            required: !self.no_auth.value,
            allow_legacy_workers: self.allow_legacy_workers.value,
            read_only_from,
            deadline: above_zero("auth_deadline", &self.auth_deadline)?,
            max_unauthenticated: self.max_unauthenticated.value.max(1),
        };
        let core = CoreConfig {
            heartbeat_interval: above_zero("heartbeat_interval", &self.heartbeat_interval)?,
            heartbeat_timeout: above_zero("heartbeat_timeout", &self.heartbeat_timeout)?,
            default_max_retries: self.default_max_retries.value,
            timeout_grace: above_zero("timeout_grace", &self.timeout_grace)?,
            lease_grace: above_zero("lease_grace", &self.lease_grace)?,
            auth,
            strategy: self.strategy.value.parse().map_err(
                |why: protocol::types::UnknownStrategy| {
                    invalid("strategy", &self.strategy, why.to_string())
                },
            )?,
            ..CoreConfig::default()
        };
        if core.heartbeat_timeout <= core.heartbeat_interval {
            // Blame the one that was set: a default is never the mistake.
            let (key, blamed) = if self.heartbeat_timeout.source == Source::Default {
                ("heartbeat_interval", &self.heartbeat_interval)
            } else {
                ("heartbeat_timeout", &self.heartbeat_timeout)
            };
            return Err(invalid(
                key,
                blamed,
                format!(
                    "heartbeat_timeout ({}s, {}) must be longer than heartbeat_interval ({}s, {})",
                    core.heartbeat_timeout.as_secs_f64(),
                    self.heartbeat_timeout.source,
                    core.heartbeat_interval.as_secs_f64(),
                    self.heartbeat_interval.source
                ),
            ));
        }
        Ok(Config {
            data_dir: self.data_dir.value.clone(),
            core,
            max_line: at_least("max_line", &self.max_line, 1024)?,
            max_connections: at_least("max_connections", &self.max_connections, 1)?,
            pre_auth_max_line: at_least("pre_auth_max_line", &self.pre_auth_max_line, 256)?,
            max_pending_output: at_least(
                "max_pending_output",
                &self.max_pending_output,
                64 * 1024,
            )?,
            max_total_output: at_least("max_total_output", &self.max_total_output, 1024 * 1024)?,
            synchronous,
            drain_timeout: above_zero("drain_timeout", &self.drain_timeout)?,
            reader_idle_timeout: above_zero("reader_idle_timeout", &self.reader_idle_timeout)?,
            sse_keep_alive: above_zero("sse_keep_alive", &self.sse_keep_alive)?,
            retention: crate::store::retention::Retention {
                retention: above_zero("retention", &self.retention)?,
                retention_failed: above_zero("retention_failed", &self.retention_failed)?,
            },
        })
    }
}

fn invalid<T>(key: &str, setting: &Setting<T>, message: String) -> SettingsError {
    SettingsError::invalid(key, &setting.source, message)
}

/// A duration that must be longer than zero (an interval, a deadline).
fn above_zero(key: &str, setting: &Setting<Seconds>) -> Result<Duration, SettingsError> {
    if setting.value.0.is_zero() {
        return Err(invalid(key, setting, "must be longer than zero".into()));
    }
    Ok(setting.value.0)
}

/// Refuses a limit below the smallest the master can work with, naming the
/// key, rather than raising it behind the user's back.
fn at_least(key: &str, setting: &Setting<usize>, minimum: usize) -> Result<usize, SettingsError> {
    if setting.value < minimum {
        return Err(invalid(
            key,
            setting,
            format!("must be at least {minimum}, got {}", setting.value),
        ));
    }
    Ok(setting.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(text: &str) -> SettingsFile {
        SettingsFile::from_text(Path::new("m.toml"), text.to_string()).expect("TOML")
    }

    /// The line `config` prints for `key`, without the padding.
    fn shown(settings: &Settings, key: &str) -> String {
        let line = settings
            .lines()
            .into_iter()
            .find(|line| line.key == key)
            .expect("a known key");
        format!("{} # {}", line.value.unwrap_or_default(), line.source)
    }

    /// Each of the four levels wins over the ones below it.
    #[test]
    fn flag_over_env_over_file_over_default() {
        fn check(given: Given, text: Option<&str>, dev: bool, key: &str, expect: &str) {
            let file = text.map(file);
            let settings = Settings::resolve(&given, file.as_ref(), dev).expect("valid");
            assert_eq!(
                shown(&settings, key),
                expect,
                "{key} from {given:?} {text:?}"
            );
            settings.config().expect("a config the master can run with");
        }
        let text = Some("listen = \"127.0.0.1:9000\"\nheartbeat_interval = \"1m\"\nheartbeat_timeout = 300\nread_only_from = [\"10.0.0.0/8\"]\n");
        let flag = || Given::new().flag("heartbeat_interval", &["2"]);
        let env = || {
            Given::new().env(
                "heartbeat_interval",
                "RETIRE_HEARTBEAT_INTERVAL",
                &["1m30s"],
            )
        };
        check(
            flag(),
            text,
            false,
            "heartbeat_interval",
            "2 # flag --heartbeat-interval",
        );
        check(
            env().flag("listen", &["127.0.0.1:1"]),
            text,
            false,
            "heartbeat_interval",
            "90 # env RETIRE_HEARTBEAT_INTERVAL",
        );
        check(
            Given::new(),
            text,
            false,
            "heartbeat_interval",
            "60 # file m.toml:2",
        );
        check(
            Given::new(),
            None,
            false,
            "heartbeat_interval",
            "5 # default",
        );
        check(
            Given::new(),
            text,
            false,
            "listen",
            "\"127.0.0.1:9000\" # file m.toml:1",
        );
        check(
            Given::new(),
            None,
            false,
            "listen",
            "\"0.0.0.0:8080\" # default",
        );
        check(
            Given::new(),
            None,
            true,
            "listen",
            "\"127.0.0.1:8080\" # default",
        );
        check(
            Given::new(),
            None,
            true,
            "data_dir",
            "\".retire-dev\" # default",
        );
        check(
            Given::new().env("read_only_from", "RETIRE_READ_ONLY_FROM", &["none"]),
            text,
            false,
            "read_only_from",
            "[\"none\"] # env RETIRE_READ_ONLY_FROM",
        );
        check(
            Given::new(),
            text,
            false,
            "read_only_from",
            "[\"10.0.0.0/8\"] # file m.toml:4",
        );
        check(Given::new(), None, false, "dev_slots", "none # default");
        check(
            Given::new(),
            Some("dev_slots = 3"),
            false,
            "dev_slots",
            "3 # file m.toml:1",
        );
    }

    /// A mistake names the key and the line (the file's) or the flag or
    /// variable, and tells a bad file from a missing one by its exit code.
    #[test]
    fn mistakes_name_the_key_and_where_it_was_set() {
        fn check(given: Given, text: &str, expect: &str) {
            let file = SettingsFile::from_text(Path::new("m.toml"), text.to_string());
            let error = file
                .and_then(|file| Settings::resolve(&given, Some(&file), false))
                .and_then(|settings| settings.config())
                .expect_err(text);
            assert_eq!(error.exit_code(), daemon::settings::EXIT_INVALID);
            let message = error.to_string();
            assert!(message.starts_with(expect), "{text:?}: {message}");
        }
        let none = Given::new;
        check(
            none(),
            "listen = \"[::1]:1\"\nlisten_on = 1\n",
            "m.toml:2: listen_on: unknown field `listen_on`",
        );
        check(
            none(),
            "max_line = \"big\"\n",
            "m.toml:1: max_line: invalid type: string \"big\", expected usize",
        );
        check(
            none(),
            "read_only_from = \"10.0.0.0/8\"\n",
            "m.toml:1: read_only_from: invalid type: string",
        );
        check(
            none(),
            "no_auth = 1\n",
            "m.toml:1: no_auth: invalid type: integer `1`, expected a boolean",
        );
        check(
            none(),
            "listen = \"nowhere\"\n",
            "m.toml:1: listen: invalid socket address syntax",
        );
        check(
            none(),
            "lease_grace = \"soon\"\n",
            "m.toml:1: lease_grace: expected seconds or a duration",
        );
        check(
            none(),
            "\n\nlease_grace = 0\n",
            "m.toml:3: lease_grace: must be longer than zero",
        );
        check(
            none(),
            "synchronous = \"off\"\n",
            "m.toml:1: synchronous: must be normal or full, got \"off\"",
        );
        check(
            none(),
            "max_line = 10\n",
            "m.toml:1: max_line: must be at least 1024, got 10",
        );
        check(
            none(),
            "read_only_from = [\"10.0.0.0/33\"]\n",
            "m.toml:1: read_only_from: ",
        );
        check(
            none(),
            "no_auth = true\n",
            "m.toml:1: no_auth: --no-auth is refused on 0.0.0.0:8080",
        );
        check(
            none(),
            "heartbeat_interval = 20\n",
            "m.toml:1: heartbeat_interval: heartbeat_timeout (15s, default) must be longer than heartbeat_interval (20s, file m.toml:1)",
        );
        check(
            none(),
            "[listen]\nport = 1\n",
            "m.toml:1: listen: invalid type: map",
        );
        check(none(), "listen = ", "m.toml:1: ");
        check(
            none().flag("max_connections", &["0"]),
            "max_connections = 5\n",
            "flag --max-connections: must be at least 1, got 0",
        );
        check(
            none().env("drain_timeout", "RETIRE_DRAIN_TIMEOUT", &["later"]),
            "",
            "env RETIRE_DRAIN_TIMEOUT: expected seconds or a duration",
        );
        check(
            none(),
            "retention = 0\n",
            "m.toml:1: retention: must be longer than zero",
        );
        check(
            none(),
            "retention_failed = -5\n",
            "m.toml:1: retention_failed: ",
        );
        check(
            none(),
            "retention = \"a month\"\n",
            "m.toml:1: retention: expected seconds or a duration",
        );
        check(
            none().flag("retention", &["0s"]),
            "",
            "flag --retention: must be longer than zero",
        );
        check(
            none().env("retention_failed", "RETIRE_RETENTION_FAILED", &["-1d"]),
            "",
            "env RETIRE_RETENTION_FAILED: ",
        );
        check(
            none(),
            "strategy = \"fastest\"\n",
            "m.toml:1: strategy: unknown placement strategy \"fastest\"",
        );
        check(
            none().flag("listen", &["0.0.0.0:1"]),
            "no_auth = true\n",
            "m.toml:1: no_auth: --no-auth is refused on 0.0.0.0:1: without authentication",
        );
    }

    /// The example in this module's documentation (and the README) has every
    /// key, each set to its default.
    #[test]
    fn the_documented_example_lists_every_key_with_its_default() {
        let raw = daemon::settings::doc_example(include_str!("config.rs"));
        // The commented-out keys too.
        let example = raw.replace("\n# ", "\n");
        let file = file(&example);
        let from_file = Settings::resolve(&Given::new(), Some(&file), false).expect("valid");
        let defaults = Settings::resolve(&Given::new(), None, false).expect("defaults");
        for (line, default) in from_file.lines().into_iter().zip(defaults.lines()) {
            assert!(
                matches!(line.source, Source::File { line: Some(_), .. }),
                "{} is missing from the example",
                line.key
            );
            if line.key != "dev_slots" {
                assert_eq!(line.value, default.value, "{}", line.key);
            }
        }
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&format!("```toml\n{raw}```")),
            "the README shows another example"
        );
    }
}
