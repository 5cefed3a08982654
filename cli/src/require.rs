//! Parsing `--require KEY=VALUE` into task [`Requirements`].
//!
//! Each flag is parsed on its own (so that clap reports a bad one as a
//! usage error naming the flag), and the parsed items are then folded into
//! one [`Requirements`] value.

use protocol::Requirements;

/// The keys `--require` accepts, as the help and error messages list them.
pub const KEYS: &str = "min_cpu_cores, min_memory_gb, min_storage_gb, platform, \
architecture (arch), role, tag (repeatable), device_id (device), sandbox (full, partial or none)";

/// The sandbox levels `--require sandbox=LEVEL` accepts, strongest first; a
/// device meets its own level and every weaker one asked for.
pub const SANDBOX_LEVELS: &[&str] = &["full", "partial", "none"];

/// One parsed `--require KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// `min_cpu_cores=N`.
    MinCpuCores(u32),
    /// `min_memory_gb=X`.
    MinMemoryGb(f64),
    /// `min_storage_gb=X`.
    MinStorageGb(f64),
    /// `platform=NAME`.
    Platform(String),
    /// `architecture=NAME` or `arch=NAME`.
    Architecture(String),
    /// `role=NAME`.
    Role(String),
    /// `tag=NAME` (or `tags=A,B`): every tag must be present.
    Tags(Vec<String>),
    /// `device_id=ID` or `device=ID`: pin the task to one device.
    DeviceId(String),
    /// `sandbox=LEVEL`: only on devices whose task sandbox is at least this good
    /// (`full`, `partial`, `none`).
    Sandbox(String),
}

impl Requirement {
    /// Adds this requirement to `requirements`. A later value of a
    /// single-valued key replaces an earlier one, as later flags usually do;
    /// tags accumulate.
    pub fn apply(self, requirements: &mut Requirements) {
        match self {
            Requirement::MinCpuCores(cores) => requirements.min_cpu_cores = Some(cores),
            Requirement::MinMemoryGb(gb) => requirements.min_memory_gb = Some(gb),
            Requirement::MinStorageGb(gb) => requirements.min_storage_gb = Some(gb),
            Requirement::Platform(name) => requirements.platform = Some(name),
            Requirement::Architecture(name) => requirements.architecture = Some(name),
            Requirement::Role(name) => requirements.role = Some(name),
            Requirement::Tags(tags) => {
                for tag in tags {
                    if !requirements.tags.contains(&tag) {
                        requirements.tags.push(tag);
                    }
                }
            }
            Requirement::DeviceId(id) => requirements.device_id = Some(id),
            Requirement::Sandbox(level) => requirements.sandbox = Some(level),
        }
    }
}

/// Parses one `KEY=VALUE`. Keys are case-insensitive and `-` may stand for
/// `_`, so `--require min-cpu-cores=2` works too.
pub fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {text:?} (keys: {KEYS})"));
    };
    let key = key.trim().to_ascii_lowercase().replace('-', "_");
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{key} needs a value"));
    }
    let word = || value.to_string();
    let requirement = match key.as_str() {
        "min_cpu_cores" => Requirement::MinCpuCores(
            value
                .parse()
                .map_err(|_| format!("min_cpu_cores must be a whole number, got {value:?}"))?,
        ),
        "min_memory_gb" => Requirement::MinMemoryGb(gigabytes(&key, value)?),
        "min_storage_gb" => Requirement::MinStorageGb(gigabytes(&key, value)?),
        "platform" => Requirement::Platform(word()),
        "architecture" | "arch" => Requirement::Architecture(word()),
        "role" => Requirement::Role(word()),
        "tag" | "tags" => {
            let tags: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(str::to_string)
                .collect();
            if tags.is_empty() {
                return Err(format!("{key} needs at least one tag"));
            }
            Requirement::Tags(tags)
        }
        "device_id" | "device" => Requirement::DeviceId(word()),
        "sandbox" => {
            let level = value.to_ascii_lowercase();
            if !SANDBOX_LEVELS.contains(&level.as_str()) {
                return Err(format!(
                    "sandbox must be one of {}, got {value:?}",
                    SANDBOX_LEVELS.join(", ")
                ));
            }
            Requirement::Sandbox(level)
        }
        _ => return Err(format!("unknown requirement {key:?} (keys: {KEYS})")),
    };
    Ok(requirement)
}

fn gigabytes(key: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(gb) if gb.is_finite() && gb >= 0.0 => Ok(gb),
        _ => Err(format!(
            "{key} must be a non-negative number of GiB, got {value:?}"
        )),
    }
}

/// Folds parsed requirements into one value, in the order given.
pub fn requirements_from(items: impl IntoIterator<Item = Requirement>) -> Requirements {
    let mut requirements = Requirements::default();
    for item in items {
        item.apply(&mut requirements);
    }
    requirements
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses every flag value, folds them, and compares with `expect`
    /// (an error text must contain the expected text).
    fn check(input: &[&str], expect: Result<Requirements, &str>) {
        let parsed: Result<Vec<Requirement>, String> =
            input.iter().map(|text| parse_requirement(text)).collect();
        match (parsed.map(requirements_from), expect) {
            (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "input: {input:?}"),
            (Err(actual), Err(expected)) => assert!(
                actual.contains(expected),
                "input: {input:?}: error {actual:?} lacks {expected:?}"
            ),
            (actual, expected) => panic!("input: {input:?}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn requirements() {
        check(&[], Ok(Requirements::default()));
        check(
            &["min_cpu_cores=4", "min_memory_gb=1.5", "min_storage_gb=10"],
            Ok(Requirements {
                min_cpu_cores: Some(4),
                min_memory_gb: Some(1.5),
                min_storage_gb: Some(10.0),
                ..Requirements::default()
            }),
        );
        check(
            &[
                "platform=linux",
                "arch=aarch64",
                "role=compute",
                "device=pi-kitchen",
            ],
            Ok(Requirements {
                platform: Some("linux".into()),
                architecture: Some("aarch64".into()),
                role: Some("compute".into()),
                device_id: Some("pi-kitchen".into()),
                ..Requirements::default()
            }),
        );
        check(
            &["architecture=x86_64", "device_id=nas", "MIN-CPU-CORES = 2"],
            Ok(Requirements {
                architecture: Some("x86_64".into()),
                device_id: Some("nas".into()),
                min_cpu_cores: Some(2),
                ..Requirements::default()
            }),
        );
        check(
            &["tag=gpu", "tag=fast", "tags=gpu,ssd"],
            Ok(Requirements {
                tags: vec!["gpu".into(), "fast".into(), "ssd".into()],
                ..Requirements::default()
            }),
        );
        // A later value of a single-valued key wins.
        check(
            &["role=a", "role=b"],
            Ok(Requirements {
                role: Some("b".into()),
                ..Requirements::default()
            }),
        );
        // The sandbox level, any case; only the three levels.
        check(
            &["sandbox=Full"],
            Ok(Requirements {
                sandbox: Some("full".into()),
                ..Requirements::default()
            }),
        );
        check(
            &["sandbox=strong"],
            Err("sandbox must be one of full, partial, none"),
        );
        // A value may itself contain `=`.
        check(
            &["device=a=b"],
            Ok(Requirements {
                device_id: Some("a=b".into()),
                ..Requirements::default()
            }),
        );

        check(
            &["min_cpu_cores=two"],
            Err("min_cpu_cores must be a whole number"),
        );
        check(
            &["min_cpu_cores=-1"],
            Err("min_cpu_cores must be a whole number"),
        );
        check(
            &["min_memory_gb=lots"],
            Err("min_memory_gb must be a non-negative number"),
        );
        check(
            &["min_storage_gb=-3"],
            Err("min_storage_gb must be a non-negative number"),
        );
        check(
            &["min_memory_gb=inf"],
            Err("min_memory_gb must be a non-negative number"),
        );
        check(
            &["gpu=yes"],
            Err("unknown requirement \"gpu\" (keys: min_cpu_cores"),
        );
        check(&["platform"], Err("expected KEY=VALUE"));
        check(&["platform="], Err("platform needs a value"));
        check(&["tag=,"], Err("tag needs at least one tag"));
    }
}
