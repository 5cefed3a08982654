//! Power and heat sensing: the battery, the mains supply and the temperatures Linux
//! shows under `/sys` ([`read_sysfs`]), and the [`Debouncer`] that keeps one odd
//! sample from changing what the worker reports. A sensor that is missing or unreadable
//! is `None`, which means "no constraint", never 0 % or 0 °C.
//!
//! Reading touches files only; the debouncer is sans-IO (`now` is a parameter), so the
//! session can be fed readings taken by the link side and be tested on simulated time.

use protocol::types::Power;
use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where Linux shows its sensors; tests pass a fake tree in a temp dir instead.
pub const SYSFS_ROOT: &str = "/sys";

/// How many recent samples vote on each reported value. With three, a single odd
/// sample (a spurious 0 %, a sensor that fails to read once) is always outvoted.
pub const DEBOUNCE_SAMPLES: usize = 3;

/// How old a sample may be and still vote. After a longer gap (the device slept, the
/// worker was stopped) the old samples say nothing about now and are dropped.
pub const SAMPLE_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// The lowest temperature taken as a real reading, in °C. Some drivers report
/// -273 °C or large negative values for a sensor that is off.
pub const MIN_PLAUSIBLE_C: f64 = -40.0;

/// The highest temperature taken as a real reading, in °C. Some drivers report
/// garbage such as 255 °C or more for a sensor that is not wired.
pub const MAX_PLAUSIBLE_C: f64 = 150.0;

/// Reads the battery, the mains supply and the hottest temperature under `root`
/// (normally [`SYSFS_ROOT`]):
/// - every `class/power_supply/*` whose `type` is `Battery` gives `capacity` (percent)
///   and `status` (`Charging` is charging; `Discharging`, `Not charging` and `Full` are
///   not), and its `temp` in tenths of a degree where the driver has one;
/// - every supply of type `Mains` or `USB*` gives `online`; the device is on AC when any
///   of them is online. Without such a supply, a battery that is `Charging` or `Full`
///   means on AC and one that is `Discharging` means on battery;
/// - every `class/thermal/thermal_zone*/temp` (millidegrees) and the battery's own
///   temperature count towards the hottest temperature.
///
/// With several batteries, the lowest charge counts. Anything missing or unparsable is
/// `None`.
pub fn read_sysfs(root: &Path) -> Power {
    let mut power = Power::default();
    let mut hottest: Option<f64> = None;
    let mut mains_online: Option<bool> = None;
    // What the batteries' statuses say about the supply, for when no mains supply is listed.
    let mut status_says_ac: Option<bool> = None;
    for supply in entries(&root.join("class/power_supply")) {
        let Some(kind) = read_trimmed(&supply.join("type")) else {
            continue;
        };
        if kind == "Battery" {
            // A battery that says it is absent (`present` 0) is an empty bay.
            if read_trimmed(&supply.join("present")).as_deref() == Some("0") {
                continue;
            }
            if let Some(percent) = read_number(&supply.join("capacity")) {
                if (0.0..=100.0).contains(&percent) {
                    power.battery_percent =
                        Some(power.battery_percent.map_or(percent, |p| p.min(percent)));
                }
            }
            if let Some(status) = read_trimmed(&supply.join("status")) {
                let charging = match status.as_str() {
                    "Charging" => Some(true),
                    "Discharging" | "Not charging" | "Full" => Some(false),
                    _ => None,
                };
                if charging.is_some() {
                    power.charging =
                        Some(power.charging.unwrap_or(false) || charging == Some(true));
                }
                match status.as_str() {
                    "Charging" | "Full" => status_says_ac = Some(true),
                    "Discharging" => status_says_ac = Some(status_says_ac.unwrap_or(false)),
                    _ => {}
                }
            }
            if let Some(tenths) = read_number(&supply.join("temp")) {
                hottest = hotter(hottest, tenths / 10.0);
            }
        } else if kind == "Mains" || kind.starts_with("USB") {
            if let Some(online) = read_trimmed(&supply.join("online")) {
                let online = online != "0";
                mains_online = Some(mains_online.unwrap_or(false) || online);
            }
        }
    }
    power.on_ac = mains_online.or(status_says_ac);
    for zone in entries(&root.join("class/thermal")) {
        let is_zone = zone
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("thermal_zone"));
        if !is_zone {
            continue;
        }
        if let Some(millidegrees) = read_number(&zone.join("temp")) {
            hottest = hotter(hottest, millidegrees / 1000.0);
        }
    }
    power.temperature_c = hottest;
    power
}

/// The hotter of a known temperature and a new reading, ignoring readings outside
/// [`MIN_PLAUSIBLE_C`]..=[`MAX_PLAUSIBLE_C`].
fn hotter(known: Option<f64>, reading: f64) -> Option<f64> {
    if !(MIN_PLAUSIBLE_C..=MAX_PLAUSIBLE_C).contains(&reading) {
        return known;
    }
    Some(known.map_or(reading, |k| k.max(reading)))
}

/// The entries of a directory, sorted so that readings do not depend on its order; none
/// when it cannot be read.
fn entries(directory: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(directory)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

/// A sysfs file's text without its trailing newline; `None` when it cannot be read
/// (many attributes return an error instead of a value when the sensor is off).
fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

/// A sysfs file holding one finite number.
fn read_number(path: &Path) -> Option<f64> {
    read_trimmed(path)?
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
}

/// Turns raw readings into the readings the worker reports: each field is decided by a
/// vote of its last [`DEBOUNCE_SAMPLES`] samples not older than [`SAMPLE_MAX_AGE`]. A
/// field is reported only while a strict majority of those samples have it; then a
/// number is the median of the samples that have it, and a yes/no is the majority
/// answer (the latest sample breaks a tie). Until enough samples have come in, nothing
/// is reported, which is "no constraint". So one odd sample, missing value or lone 0 %
/// changes nothing.
#[derive(Debug, Default)]
pub struct Debouncer {
    samples: VecDeque<(Instant, Power)>,
}

impl Debouncer {
    /// A debouncer with no samples yet.
    pub fn new() -> Debouncer {
        Debouncer::default()
    }

    /// Adds a reading taken at `now` and returns what to report.
    pub fn sample(&mut self, now: Instant, reading: Power) -> Power {
        self.samples.push_back((now, reading));
        while self.samples.len() > DEBOUNCE_SAMPLES {
            self.samples.pop_front();
        }
        self.current(now)
    }

    /// What to report at `now`, from the samples that are still recent enough.
    pub fn current(&mut self, now: Instant) -> Power {
        self.samples
            .retain(|(at, _)| now.saturating_duration_since(*at) <= SAMPLE_MAX_AGE);
        if self.samples.len() < DEBOUNCE_SAMPLES {
            return Power::default();
        }
        let window: Vec<&Power> = self.samples.iter().map(|(_, p)| p).collect();
        Power {
            battery_percent: median(window.iter().map(|p| p.battery_percent)),
            charging: majority(window.iter().map(|p| p.charging)),
            on_ac: majority(window.iter().map(|p| p.on_ac)),
            temperature_c: median(window.iter().map(|p| p.temperature_c)),
        }
    }
}

/// The median of the present values, when a strict majority of `values` are present;
/// with an even count, the mean of the two middle ones.
fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let all: Vec<Option<f64>> = values.collect();
    let mut present: Vec<f64> = all.iter().flatten().copied().collect();
    if present.len() * 2 <= all.len() {
        return None;
    }
    present.sort_by(f64::total_cmp);
    let middle = present.len() / 2;
    Some(if present.len() % 2 == 1 {
        present[middle]
    } else {
        (present[middle - 1] + present[middle]) / 2.0
    })
}

/// The majority answer of the present values, when a strict majority of `values` are
/// present; on a tie, the latest present answer.
fn majority(values: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let all: Vec<Option<bool>> = values.collect();
    let present: Vec<bool> = all.iter().flatten().copied().collect();
    if present.len() * 2 <= all.len() {
        return None;
    }
    let yes = present.iter().filter(|&&b| b).count();
    let no = present.len() - yes;
    Some(match yes.cmp(&no) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => *present.last()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Writes `files` (path relative to the root, contents) into a fresh fake sysfs tree.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        for (path, contents) in files {
            let path: PathBuf = root.path().join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, format!("{contents}\n")).expect("write");
        }
        root
    }

    fn check_read(files: &[(&str, &str)], expect: Power) {
        let root = tree(files);
        assert_eq!(read_sysfs(root.path()), expect, "tree {files:?}");
    }

    fn power(
        battery_percent: Option<f64>,
        charging: Option<bool>,
        on_ac: Option<bool>,
        temperature_c: Option<f64>,
    ) -> Power {
        Power {
            battery_percent,
            charging,
            on_ac,
            temperature_c,
        }
    }

    const BAT: &str = "class/power_supply/BAT0";
    const AC: &str = "class/power_supply/AC";

    #[test]
    fn reads_sysfs() {
        // No sensors at all: nothing is a constraint.
        check_read(&[], Power::default());
        // A laptop on its battery.
        check_read(
            &[
                (&format!("{BAT}/type"), "Battery"),
                (&format!("{BAT}/capacity"), "57"),
                (&format!("{BAT}/status"), "Discharging"),
                (&format!("{AC}/type"), "Mains"),
                (&format!("{AC}/online"), "0"),
                ("class/thermal/thermal_zone0/temp", "45000"),
                ("class/thermal/thermal_zone1/temp", "61500"),
                ("class/thermal/cooling_device0/cur_state", "1"),
            ],
            power(Some(57.0), Some(false), Some(false), Some(61.5)),
        );
        // A phone charging over USB, whose battery is the hottest thing it knows.
        check_read(
            &[
                ("class/power_supply/battery/type", "Battery"),
                ("class/power_supply/battery/capacity", "18"),
                ("class/power_supply/battery/status", "Charging"),
                ("class/power_supply/battery/temp", "391"),
                ("class/power_supply/usb/type", "USB"),
                ("class/power_supply/usb/online", "1"),
                ("class/thermal/thermal_zone0/temp", "35000"),
            ],
            power(Some(18.0), Some(true), Some(true), Some(39.1)),
        );
        // A full battery with no mains supply listed: on AC, not charging.
        check_read(
            &[
                (&format!("{BAT}/type"), "Battery"),
                (&format!("{BAT}/capacity"), "100"),
                (&format!("{BAT}/status"), "Full"),
            ],
            power(Some(100.0), Some(false), Some(true), None),
        );
        // A desktop: mains only, and a thermal zone reporting garbage is ignored.
        check_read(
            &[
                (&format!("{AC}/type"), "Mains"),
                (&format!("{AC}/online"), "1"),
                ("class/thermal/thermal_zone0/temp", "-273000"),
                ("class/thermal/thermal_zone1/temp", "255000"),
                ("class/thermal/thermal_zone2/temp", "not a number"),
            ],
            power(None, None, Some(true), None),
        );
        // An empty battery bay and an unreadable capacity are not 0 %.
        check_read(
            &[
                (&format!("{BAT}/type"), "Battery"),
                (&format!("{BAT}/present"), "0"),
                (&format!("{BAT}/capacity"), "0"),
                ("class/power_supply/BAT1/type", "Battery"),
                ("class/power_supply/BAT1/capacity", ""),
            ],
            Power::default(),
        );
        // Two batteries: the emptier one counts, and one charging is charging.
        check_read(
            &[
                (&format!("{BAT}/type"), "Battery"),
                (&format!("{BAT}/capacity"), "80"),
                (&format!("{BAT}/status"), "Not charging"),
                ("class/power_supply/BAT1/type", "Battery"),
                ("class/power_supply/BAT1/capacity", "30"),
                ("class/power_supply/BAT1/status", "Charging"),
            ],
            power(Some(30.0), Some(true), Some(true), None),
        );
    }

    /// Feeds `input` (seconds after the start, reading) to a fresh debouncer and checks
    /// what it reports after each sample.
    fn check(input: &[(u64, Power)], expect: &[Power]) {
        assert_eq!(input.len(), expect.len());
        let start = Instant::now();
        let mut debouncer = Debouncer::new();
        for (i, ((seconds, reading), expected)) in input.iter().zip(expect).enumerate() {
            let got = debouncer.sample(start + Duration::from_secs(*seconds), *reading);
            assert_eq!(got, *expected, "after sample {i} of {input:?}");
        }
    }

    fn battery(percent: f64, charging: bool) -> Power {
        power(Some(percent), Some(charging), Some(charging), None)
    }

    #[test]
    fn debounces() {
        let none = Power::default();
        // No sensors at all gives None everywhere, for ever.
        check(
            &[(0, none), (30, none), (60, none), (90, none)],
            &[none, none, none, none],
        );
        // Nothing is reported until three samples have voted.
        let half = battery(50.0, false);
        check(&[(0, half), (30, half), (60, half)], &[none, none, half]);
        // A single 0 % sample causes no change, nor does one at the start.
        check(
            &[
                (0, battery(0.0, false)),
                (30, half),
                (60, half),
                (90, battery(0.0, false)),
                (120, half),
            ],
            &[none, none, half, half, half],
        );
        // A real drop shows once it holds for two of three samples; the median moves
        // with a steady discharge.
        check(
            &[
                (0, battery(50.0, false)),
                (30, battery(49.0, false)),
                (60, battery(48.0, false)),
                (90, battery(10.0, false)),
                (120, battery(10.0, false)),
            ],
            &[
                none,
                none,
                battery(49.0, false),
                battery(48.0, false),
                battery(10.0, false),
            ],
        );
        // One unplugged sample does not switch to battery; two of the last three do.
        check(
            &[
                (0, battery(60.0, true)),
                (30, battery(60.0, true)),
                (60, battery(60.0, false)),
                (90, battery(60.0, true)),
                (120, battery(60.0, true)),
                (150, battery(60.0, false)),
                (180, battery(60.0, false)),
            ],
            &[
                none,
                none,
                battery(60.0, true),
                battery(60.0, true),
                battery(60.0, true),
                battery(60.0, true),
                battery(60.0, false),
            ],
        );
        // A sensor that fails to read once is still reported; one that is gone for two
        // of the last three samples is not.
        let hot = power(None, None, None, Some(80.0));
        check(
            &[
                (0, hot),
                (30, none),
                (60, hot),
                (90, hot),
                (120, none),
                (150, none),
            ],
            &[none, none, hot, hot, hot, none],
        );
        // After a gap longer than SAMPLE_MAX_AGE the old samples do not vote, so a lone
        // reading after the gap is not reported.
        check(
            &[
                (0, half),
                (30, half),
                (60, half),
                (60 + 301, battery(5.0, false)),
            ],
            &[none, none, half, none],
        );
    }
}
