//! Settings that come from four places, and where each one came from.
//!
//! Both daemons read a TOML file (`--config PATH`, `RETIRE_CONFIG`) whose keys are
//! named like their flags, and lay the environment and the flags over it:
//! flag > environment > file > default. [`Given`] holds what the flags and the
//! environment set (collected from clap's matches, which know which of the two a
//! value came from), [`SettingsFile`] the file with the line of every key, and
//! [`pick`] chooses one setting's value and [`Source`]. `retire-master config` and
//! `retire-worker config` print the outcome with [`render`], secrets redacted.
//!
//! A file that cannot be read and a file with an unknown key, a value of the wrong
//! type or a value out of range are different mistakes with different exit codes
//! ([`EXIT_UNREADABLE`], [`EXIT_INVALID`]; [`EXIT_MISSING`] for a required setting
//! given nowhere); both messages name the file, and the
//! second also the key and its line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::text::{parse_duration, Shortest};
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// Exit code of a daemon whose config file cannot be read (missing, unreadable,
/// not UTF-8): 66, `EX_NOINPUT` of sysexits.h.
pub const EXIT_UNREADABLE: u8 = 66;

/// Exit code of a daemon whose configuration is wrong: a file that is not TOML, an
/// unknown key, a value of the wrong type or out of range, whether it came from the
/// file, a flag or the environment: 78, `EX_CONFIG` of sysexits.h.
pub const EXIT_INVALID: u8 = 78;

/// Exit code of a daemon missing a setting that has no default (the worker's
/// `join`): 2, what clap gives for a required flag that is missing, since the
/// setting is one.
pub const EXIT_MISSING: u8 = 2;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (its name, with the dashes).
    Flag(String),
    /// An environment variable (its name).
    Env(String),
    /// The config file, with the line of the key when it is known.
    File {
        /// The file as it was named.
        path: PathBuf,
        /// The key's line, from 1.
        line: Option<usize>,
    },
    /// Nobody set it.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(variable) => write!(f, "env {variable}"),
            Source::File {
                path,
                line: Some(line),
            } => write!(f, "file {}:{line}", path.display()),
            Source::File { path, line: None } => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("cannot read the config file {}", path.display())]
    Unreadable {
        /// The file as it was named.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML, or has an unknown key or a value of the wrong
    /// type or out of range.
    #[error("{}{}: {}{message}", path.display(), line.map(|line| format!(":{line}")).unwrap_or_default(), key.as_ref().map(|key| format!("{key}: ")).unwrap_or_default())]
    File {
        /// The file as it was named.
        path: PathBuf,
        /// The line of the mistake, from 1, when TOML's parser could say.
        line: Option<usize>,
        /// The key (dotted for a nested one) when it is known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A value from a flag or the environment is wrong.
    #[error("{from}: {message}")]
    Value {
        /// The flag or variable that gave it.
        from: Source,
        /// What is wrong.
        message: String,
    },
    /// A setting that has no default was not given anywhere.
    #[error("{key} is not set: give {how}")]
    Missing {
        /// The key in the file.
        key: String,
        /// The ways to give it, for the message.
        how: String,
    },
}

impl SettingsError {
    /// The exit code for this mistake: [`EXIT_UNREADABLE`], [`EXIT_INVALID`] or
    /// [`EXIT_MISSING`].
    pub fn exit_code(&self) -> u8 {
        match self {
            SettingsError::Unreadable { .. } => EXIT_UNREADABLE,
            SettingsError::File { .. } | SettingsError::Value { .. } => EXIT_INVALID,
            SettingsError::Missing { .. } => EXIT_MISSING,
        }
    }

    /// The error for a value that was read but makes no sense (a zero interval, an
    /// unknown mode), wherever it came from; `key` is its name in the file.
    pub fn invalid(key: &str, source: &Source, message: impl Into<String>) -> SettingsError {
        let message = message.into();
        match source {
            Source::File { path, line } => SettingsError::File {
                path: path.clone(),
                line: *line,
                key: Some(key.to_string()),
                message,
            },
            other => SettingsError::Value {
                from: other.clone(),
                message,
            },
        }
    }
}

/// The exit status for `error`: a [`SettingsError`]'s own when it is one or was
/// caused by one (anywhere in its `source` chain), else `otherwise`.
pub fn exit_code(error: &(dyn std::error::Error + 'static), otherwise: u8) -> u8 {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(settings) = error.downcast_ref::<SettingsError>() {
            return settings.exit_code();
        }
        cause = error.source();
    }
    otherwise
}

/// What the flags and the environment set, by key (the flag's name with `_` for
/// `-`), as the text that was typed.
#[derive(Debug, Clone, Default)]
pub struct Given {
    values: BTreeMap<String, (Vec<String>, Source)>,
}

impl Given {
    /// Nothing given.
    pub fn new() -> Given {
        Given::default()
    }

    /// Everything in `matches` that a flag or a variable set (not clap's defaults),
    /// for the arguments of `command` other than `skip` (`config` itself, say).
    /// The raw text is kept: each daemon reads it with the same function as the
    /// file's value, so a flag and a key accept the same forms.
    pub fn from_matches(
        command: &clap::Command,
        matches: &clap::ArgMatches,
        skip: &[&str],
    ) -> Given {
        let mut given = Given::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if skip.contains(&id) {
                continue;
            }
            let source = match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag(format!(
                    "--{}",
                    arg.get_long().unwrap_or(id).replace('_', "-")
                )),
                Some(clap::parser::ValueSource::EnvVariable) => Source::Env(
                    arg.get_env()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => continue,
            };
            let raw = matches
                .get_raw(id)
                .map(|values| {
                    values
                        .map(|value| value.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            given.values.insert(id.replace('-', "_"), (raw, source));
        }
        given
    }

    /// clap's defaults in `command` (what `--help` shows) as if they were flags,
    /// but for the arguments in `skip`: a daemon's test resolves them and checks
    /// that they are the defaults it uses.
    pub fn clap_defaults(command: &clap::Command, skip: &[&str]) -> Given {
        let mut given = Given::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let defaults: Vec<&str> = arg
                .get_default_values()
                .iter()
                .filter_map(|value| value.to_str())
                .collect();
            if !defaults.is_empty() && !skip.contains(&id) {
                given = given.flag(id, &defaults);
            }
        }
        given
    }

    /// `key` set by the flag `--KEY` (with dashes) to `values`.
    pub fn flag(mut self, key: &str, values: &[&str]) -> Given {
        let source = Source::Flag(format!("--{}", key.replace('_', "-")));
        self.values.insert(key.to_string(), (owned(values), source));
        self
    }

    /// `key` set by the environment variable `variable` to `values`.
    pub fn env(mut self, key: &str, variable: &str, values: &[&str]) -> Given {
        let source = Source::Env(variable.to_string());
        self.values.insert(key.to_string(), (owned(values), source));
        self
    }

    /// The text given for `key` and who gave it.
    pub fn get(&self, key: &str) -> Option<(&[String], &Source)> {
        self.values
            .get(key)
            .map(|(values, source)| (values.as_slice(), source))
    }
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

/// The value and the source on the line that [`render`] printed for `key`, as
/// text: the inverse of [`render`], for whoever reads `config`'s output (the
/// tests of both daemons). `None` when no line sets `key`.
pub fn printed(output: &str, key: &str) -> Option<(String, String)> {
    let line = output
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))?;
    let (value, source) = line.split_once("  # ")?;
    Some((
        value[key.len() + 3..].trim().to_string(),
        source.trim().to_string(),
    ))
}

/// A config file that was read: its text and the line of every key.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    path: PathBuf,
    text: String,
    lines: BTreeMap<String, usize>,
}

impl SettingsFile {
    /// Reads and parses the file at `path` (its keys are checked by [`Self::parse`]).
    pub fn read(path: &Path) -> Result<SettingsFile, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        SettingsFile::from_text(path, text)
    }

    /// The file `path` with `text` in it.
    pub fn from_text(path: &Path, text: String) -> Result<SettingsFile, SettingsError> {
        let table = DeTable::parse(&text).map_err(|error| SettingsError::File {
            path: path.to_path_buf(),
            line: error.span().map(|span| line_at(&text, span.start)),
            key: None,
            message: error.message().to_string(),
        })?;
        let mut lines = BTreeMap::new();
        collect_lines(&text, "", table.get_ref(), &mut lines);
        Ok(SettingsFile {
            path: path.to_path_buf(),
            text,
            lines,
        })
    }

    /// The file's name as it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's keys as `T` (a struct with `#[serde(deny_unknown_fields)]`), or
    /// the first mistake with its key and line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        toml::from_str(&self.text).map_err(|error| {
            let span = error.span();
            SettingsError::File {
                path: self.path.clone(),
                line: span.clone().map(|span| line_at(&self.text, span.start)),
                key: span.and_then(|span| self.key_at(span.start)),
                message: error.message().to_string(),
            }
        })
    }

    /// Whether the file sets `key` (dotted for a nested one).
    pub fn contains(&self, key: &str) -> bool {
        self.lines.contains_key(key)
    }

    /// Where a value of `key` (dotted for a nested one) came from: this file, at the
    /// key's line.
    pub fn source(&self, key: &str) -> Source {
        Source::File {
            path: self.path.clone(),
            line: self.lines.get(key).copied(),
        }
    }

    /// The key whose line holds `offset`, the innermost one when several do.
    fn key_at(&self, offset: usize) -> Option<String> {
        let line = line_at(&self.text, offset);
        self.lines
            .iter()
            .filter(|(_, key_line)| **key_line == line)
            .map(|(key, _)| key)
            .max_by_key(|key| key.len())
            .cloned()
    }
}

/// The line (from 1) of the byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|byte| **byte == b'\n')
        .count()
        + 1
}

fn collect_lines(
    text: &str,
    prefix: &str,
    table: &DeTable<'_>,
    lines: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table {
        let name = format!("{prefix}{}", key.get_ref());
        lines.insert(name.clone(), line_at(text, key.span().start));
        if let DeValue::Table(inner) = value.get_ref() {
            collect_lines(text, &format!("{name}."), inner, lines);
        }
    }
}

/// A value a flag, a variable and the file can all give: read from the text of a
/// flag or variable, from TOML in the file (through `Deserialize`), and written
/// back as TOML for `config`.
pub trait SettingValue: Sized {
    /// Reads the text of a flag or a variable (several values for a list).
    fn from_text(values: &[String]) -> Result<Self, String>;
    /// The value as TOML.
    fn to_toml(&self) -> String;
}

fn one(values: &[String]) -> Result<&str, String> {
    match values {
        [value] => Ok(value),
        _ => Err(format!("expected one value, got {}", values.len())),
    }
}

macro_rules! setting_by_from_str {
    ($($type:ty),*) => {$(
        impl SettingValue for $type {
            fn from_text(values: &[String]) -> Result<Self, String> {
                one(values)?.trim().parse().map_err(|error| format!("{error}"))
            }
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
setting_by_from_str!(u32, u64, usize);

impl SettingValue for std::net::SocketAddr {
    fn from_text(values: &[String]) -> Result<Self, String> {
        one(values)?
            .trim()
            .parse()
            .map_err(|error| format!("{error}"))
    }
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}

impl SettingValue for bool {
    /// The forms clap accepts for a switch in the environment.
    fn from_text(values: &[String]) -> Result<Self, String> {
        match one(values)?.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "t" | "true" | "on" | "1" => Ok(true),
            "" | "n" | "no" | "f" | "false" | "off" | "0" => Ok(false),
            other => Err(format!("expected true or false, got {other:?}")),
        }
    }
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for String {
    fn from_text(values: &[String]) -> Result<Self, String> {
        one(values).map(str::to_string)
    }
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}

impl SettingValue for PathBuf {
    fn from_text(values: &[String]) -> Result<Self, String> {
        one(values).map(PathBuf::from)
    }
    fn to_toml(&self) -> String {
        toml_string(&self.to_string_lossy())
    }
}

impl SettingValue for Vec<String> {
    /// Comma-separated values (clap has usually split them already).
    fn from_text(values: &[String]) -> Result<Self, String> {
        Ok(values
            .iter()
            .flat_map(|value| value.split(','))
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
            .collect())
    }
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|item| toml_string(item)).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    fn from_text(values: &[String]) -> Result<Self, String> {
        T::from_text(values).map(Some)
    }
    fn to_toml(&self) -> String {
        match self {
            Some(value) => value.to_toml(),
            None => "none".into(),
        }
    }
}

/// A duration as a flag takes it and the file too: seconds (`90`, `0.5`) or a
/// duration like `"1m30s"` ([`parse_duration`], the one reading of a duration).
/// Zero is allowed here; a setting that must be longer checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl SettingValue for Seconds {
    fn from_text(values: &[String]) -> Result<Self, String> {
        parse_duration(one(values)?, Shortest::Zero)
            .map(Seconds)
            .map_err(|error| error.to_string())
    }
    /// Whole seconds as an integer, else fractional seconds.
    fn to_toml(&self) -> String {
        if self.0.subsec_nanos() == 0 {
            self.0.as_secs().to_string()
        } else {
            self.0.as_secs_f64().to_string()
        }
    }
}

impl<'de> serde::Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration like \"1m30s\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Seconds, E> {
                self.visit_str(&value.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Seconds, E> {
                self.visit_str(&value.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Seconds, E> {
                self.visit_str(&value.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Seconds, E> {
                parse_duration(value, Shortest::Zero)
                    .map(Seconds)
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One setting's value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T> {
    /// The value in effect.
    pub value: T,
    /// Who set it.
    pub source: Source,
}

/// Chooses `key`'s value: the flag or variable in `given`, else the file's
/// (`from_file`, already read from `file`), else `default`.
pub fn pick<T: SettingValue>(
    key: &str,
    given: &Given,
    from_file: Option<T>,
    file: Option<&SettingsFile>,
    default: T,
) -> Result<Setting<T>, SettingsError> {
    if let Some((values, source)) = given.get(key) {
        let value = T::from_text(values).map_err(|message| SettingsError::Value {
            from: source.clone(),
            message,
        })?;
        return Ok(Setting {
            value,
            source: source.clone(),
        });
    }
    match (from_file, file) {
        (Some(value), Some(file)) => Ok(Setting {
            value,
            source: file.source(key),
        }),
        _ => Ok(Setting {
            value: default,
            source: Source::Default,
        }),
    }
}

/// One line of `config`'s output.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The key, as in the file.
    pub key: String,
    /// The value as TOML, or `None` when it is a secret.
    pub value: Option<String>,
    /// Who set it.
    pub source: Source,
}

impl Line {
    /// A setting that may be shown.
    pub fn shown<T: SettingValue>(key: &str, setting: &Setting<T>) -> Line {
        Line {
            key: key.to_string(),
            value: Some(setting.value.to_toml()),
            source: setting.source.clone(),
        }
    }

    /// A secret (a token, key material): only its source is shown.
    pub fn secret(key: &str, source: Source) -> Line {
        Line {
            key: key.to_string(),
            value: None,
            source,
        }
    }
}

/// What `config` prints: a line `key = value  # source` per setting, columns
/// aligned, so that it reads as a TOML file; a secret's value is `"(redacted)"`
/// and a value that is not set reads `none`, both commented out.
pub fn render(lines: &[Line]) -> String {
    let shown: Vec<(String, &Source)> = lines
        .iter()
        .map(|line| {
            let value = match &line.value {
                Some(value) if value == "none" => format!("# {} = none", line.key),
                Some(value) => format!("{} = {value}", line.key),
                // Commented out: a secret is never a key of the file, so the
                // printout still reads back as one.
                None => format!("# {} = \"(redacted)\"", line.key),
            };
            (value, &line.source)
        })
        .collect();
    let width = shown
        .iter()
        .map(|(text, _)| text.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (text, source) in shown {
        let pad = width - text.chars().count();
        out.push_str(&format!("{text}{}  # {source}\n", " ".repeat(pad)));
    }
    out
}

/// `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first ```` ```toml ```` block of a module's `//!` documentation in
/// `source` (its text, say through `include_str!`), as the lines of a file: the
/// tests that check a documented example read it with this.
pub fn doc_example(source: &str) -> String {
    source
        .lines()
        .skip_while(|line| !line.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|line| !line.starts_with("//! ```"))
        .map(|line| {
            line.trim_start_matches("//!")
                .trim_start_matches(' ')
                .to_string()
                + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        port: Option<u32>,
        wait: Option<Seconds>,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: Option<String>,
    }

    fn file(text: &str) -> Result<SettingsFile, SettingsError> {
        SettingsFile::from_text(Path::new("/etc/x.toml"), text.to_string())
    }

    /// Each mistake in a file is reported with the file, the line and the key.
    #[test]
    fn file_mistakes_name_the_file_line_and_key() {
        fn check(text: &str, expect: &str) {
            let error = file(text)
                .and_then(|file| file.parse::<Sample>().map(|_| ()))
                .expect_err(text);
            assert_eq!(error.exit_code(), EXIT_INVALID, "{text}");
            let shown = error.to_string();
            assert!(shown.starts_with(expect), "{text:?}: {shown}");
        }
        check(
            "port = 1\nprot = 2\n",
            "/etc/x.toml:2: prot: unknown field `prot`",
        );
        check(
            "\nport = \"80\"\n",
            "/etc/x.toml:2: port: invalid type: string \"80\"",
        );
        check(
            "wait = true\n",
            "/etc/x.toml:1: wait: invalid type: boolean `true`",
        );
        check(
            "wait = \"soon\"\n",
            "/etc/x.toml:1: wait: expected seconds or a duration",
        );
        check(
            "wait = -1\n",
            "/etc/x.toml:1: wait: must be a non-negative number",
        );
        check(
            "[inner]\n\nname = 5\n",
            "/etc/x.toml:3: inner.name: invalid type: integer",
        );
        check(
            "[inner]\nnick = \"a\"\n",
            "/etc/x.toml:2: inner.nick: unknown field `nick`",
        );
        check("port = \n", "/etc/x.toml:1: ");
    }

    #[test]
    fn a_file_that_cannot_be_read_names_the_path() {
        let dir = tempfile_dir();
        let path = dir.join("missing.toml");
        let error = SettingsFile::read(&path).expect_err("missing");
        assert_eq!(error.exit_code(), EXIT_UNREADABLE);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot read the config file {}", path.display())),
            "{error}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        // A directory of this test's own; nothing is created in it.
        std::env::temp_dir().join(format!("daemon-settings-{}", std::process::id()))
    }

    /// Flag over environment over file over default, and a bad flag or variable
    /// value names the flag or variable.
    #[test]
    fn each_level_wins_over_the_ones_below() {
        fn check(given: Given, text: Option<&str>, expect: Result<(u32, &str), &str>) {
            let file = text.map(|text| file(text).expect("parses"));
            let from_file = file
                .as_ref()
                .and_then(|file| file.parse::<Sample>().expect("valid").port);
            let got = pick("port", &given, from_file, file.as_ref(), 7)
                .map(|setting| (setting.value, setting.source.to_string()))
                .map_err(|error| error.to_string());
            let expect = expect
                .map(|(value, source)| (value, source.to_string()))
                .map_err(str::to_string);
            assert_eq!(got, expect);
        }
        let flag = || Given::new().flag("port", &["1"]);
        let env = || Given::new().env("port", "PORT", &["2"]);
        check(flag(), Some("port = 3"), Ok((1, "flag --port")));
        check(env(), Some("port = 3"), Ok((2, "env PORT")));
        check(
            Given::new(),
            Some("\nport = 3"),
            Ok((3, "file /etc/x.toml:2")),
        );
        check(Given::new(), Some("wait = 1"), Ok((7, "default")));
        check(Given::new(), None, Ok((7, "default")));
        check(
            Given::new().env("port", "PORT", &["x"]),
            None,
            Err("env PORT: invalid digit found in string"),
        );
    }

    #[test]
    fn values_read_and_print_in_the_same_forms() {
        fn check<T: SettingValue + PartialEq + fmt::Debug>(text: &[&str], value: T, toml: &str) {
            assert_eq!(T::from_text(&owned(text)), Ok(value), "{text:?}");
            assert_eq!(
                T::from_text(&owned(text)).map(|v| v.to_toml()),
                Ok(toml.to_string())
            );
        }
        check(&["90"], Seconds(Duration::from_secs(90)), "90");
        check(&["1m30s"], Seconds(Duration::from_secs(90)), "90");
        check(&["0.5"], Seconds(Duration::from_millis(500)), "0.5");
        check(
            &["a,b", "c"],
            vec!["a".to_string(), "b".into(), "c".into()],
            "[\"a\", \"b\", \"c\"]",
        );
        check(&["yes"], true, "true");
        check(&["0"], false, "false");
        check(
            &["say \"hi\"\n"],
            "say \"hi\"\n".to_string(),
            "\"say \\\"hi\\\"\\u000A\"",
        );
        check(&["/var/lib"], PathBuf::from("/var/lib"), "\"/var/lib\"");
    }

    /// `config` prints a TOML file with the sources as comments; a secret shows
    /// only where it came from.
    #[test]
    fn render_aligns_and_redacts() {
        let lines = [
            Line::shown(
                "listen",
                &Setting {
                    value: "0.0.0.0:1".to_string(),
                    source: Source::Default,
                },
            ),
            Line::secret("token", Source::Env("TOKEN".into())),
            Line::shown(
                "slots",
                &Setting {
                    value: None::<u32>,
                    source: Source::Default,
                },
            ),
        ];
        assert_eq!(
            render(&lines),
            "listen = \"0.0.0.0:1\"    # default\n\
             # token = \"(redacted)\"  # env TOKEN\n\
             # slots = none          # default\n"
        );
        let output = render(&lines);
        let read_back = |key| printed(&output, key);
        assert_eq!(
            read_back("listen"),
            Some(("\"0.0.0.0:1\"".into(), "default".into()))
        );
        assert_eq!(read_back("token"), None, "commented out");
        assert_eq!(read_back("slots"), None, "commented out");
    }

    /// A settings mistake keeps its status however deep in the causes it is.
    #[test]
    fn the_exit_code_is_found_among_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("starting")]
        struct Starting(#[source] SettingsError);
        let unreadable = || SettingsError::Unreadable {
            path: "x".into(),
            source: std::io::Error::other("gone"),
        };
        assert_eq!(exit_code(&Starting(unreadable()), 1), EXIT_UNREADABLE);
        assert_eq!(exit_code(&unreadable(), 1), EXIT_UNREADABLE);
        assert_eq!(exit_code(&std::io::Error::other("other"), 1), 1);
    }
}
