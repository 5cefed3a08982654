//! What this device is, and how busy it is right now.
//!
//! [`DeviceProfile::collect`] gathers the static facts a worker registers with (platform,
//! architecture, cores, memory, disks, network). It is called once at start-up, so it may
//! take a few milliseconds. [`MetricsSampler::sample`] gathers the live numbers sent with
//! every heartbeat; it runs every few seconds on devices as small as a Raspberry Pi Zero,
//! so it refreshes only the handful of values it reports and keeps the `sysinfo`
//! structures between calls instead of rebuilding them.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

use crate::device::power;
use crate::session::{DeviceProfile, DiskInfo, LiveMetrics};

/// Where systemd (and most other Linux init systems) keep the per-installation machine id.
const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// How many hex characters of the machine id go into the default device id: enough to
/// tell apart two devices that share a hostname (every Pi is called `raspberrypi`),
/// short enough to stay readable in the dashboard.
const MACHINE_ID_PREFIX_LEN: usize = 6;

/// The longest sanitized hostname kept in a default device id, so that an absurdly long
/// hostname cannot produce an id that is unwieldy in logs and on the command line.
const MAX_HOSTNAME_ID_LEN: usize = 48;

/// The device id used when the hostname has nothing usable in it at all.
const FALLBACK_DEVICE_ID: &str = "worker";

/// Interface name prefixes of virtual interfaces (containers, bridges, VPN tunnels) whose
/// address is rarely the one other machines on the network can reach this device at.
const VIRTUAL_INTERFACE_PREFIXES: &[&str] = &[
    "docker",
    "veth",
    "br-",
    "virbr",
    "cni",
    "flannel",
    "cali",
    "kube",
    "tun",
    "tap",
    "wg",
    "zt",
    "tailscale",
    "lxc",
    "lxd",
];

impl DeviceProfile {
    /// Gathers the profile of the device this process runs on.
    ///
    /// Every field that the operating system does not report is left as `None`, empty or
    /// zero rather than failing, because a worker on an unusual device should still be
    /// able to join the cluster with whatever it can tell about itself.
    pub fn collect() -> DeviceProfile {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        // Creating the system with a CPU refresh kind lists the CPUs but a second, explicit
        // refresh of the list is what guarantees their brand strings are filled in.
        system.refresh_cpu_list(CpuRefreshKind::nothing());

        let disks = collect_disks();
        let disk_total_bytes = disks.iter().map(|disk| disk.total_bytes).sum();
        let interfaces = list_interfaces();
        let mut network_interfaces: Vec<String> = interfaces
            .iter()
            .map(|interface| interface.name.clone())
            .collect();
        network_interfaces.dedup();
        network_interfaces.sort();

        DeviceProfile {
            hostname: read_hostname(),
            platform: detect_platform(),
            architecture: std::env::consts::ARCH.to_string(),
            os_version: os_version(),
            kernel_version: System::kernel_version().filter(|version| !version.is_empty()),
            cpu_model: cpu_model(&system),
            cpu_cores: logical_cpu_count(&system),
            memory_total_bytes: system.total_memory(),
            disk_total_bytes,
            disks,
            network_interfaces,
            ip_address: primary_ipv4_address(&interfaces).map(|address| address.to_string()),
            sandbox: None,
            cpu_benchmark: super::benchmark::run(),
        }
    }
}

/// Gathers the profile of the device this process runs on; see [`DeviceProfile::collect`].
pub fn collect() -> DeviceProfile {
    DeviceProfile::collect()
}

/// Returns the id this device registers under unless the user chooses one.
///
/// The id has to stay the same across restarts, so that the master recognises a device
/// that comes back and hands it the tasks it was running. It is the hostname, lowercased
/// and reduced to `[a-z0-9-]`, followed by `-` and the first six hex digits of
/// `/etc/machine-id` when that file exists, so that two devices with the default
/// hostname (every Raspberry Pi is `raspberrypi`) still get different ids. It is never
/// empty.
pub fn default_device_id(profile: &DeviceProfile) -> String {
    let machine_id = std::fs::read_to_string(MACHINE_ID_PATH).ok();
    compose_device_id(&profile.hostname, machine_id.as_deref())
}

/// Builds a device id from a hostname and the contents of a machine-id file, if any.
fn compose_device_id(hostname: &str, machine_id: Option<&str>) -> String {
    let mut device_id = sanitize_hostname(hostname);
    if device_id.is_empty() {
        device_id = FALLBACK_DEVICE_ID.to_string();
    }
    if let Some(suffix) = machine_id.and_then(machine_id_prefix) {
        device_id.push('-');
        device_id.push_str(&suffix);
    }
    device_id
}

/// Lowercases a hostname and keeps only `[a-z0-9-]`: every run of other characters
/// (dots, underscores, spaces, non-ASCII letters) becomes a single `-`, and dashes at
/// either end are dropped. The result may be empty; the caller supplies a fallback.
fn sanitize_hostname(hostname: &str) -> String {
    let mut sanitized = String::with_capacity(hostname.len());
    for character in hostname.trim().chars() {
        let character = character.to_ascii_lowercase();
        if character.is_ascii_lowercase() || character.is_ascii_digit() {
            sanitized.push(character);
        } else if !sanitized.is_empty() && !sanitized.ends_with('-') {
            sanitized.push('-');
        }
    }
    // Cutting at a byte index is safe here because the string is pure ASCII by now.
    sanitized.truncate(MAX_HOSTNAME_ID_LEN);
    let trimmed_len = sanitized.trim_end_matches('-').len();
    sanitized.truncate(trimmed_len);
    sanitized
}

/// Returns the first few hex digits of a machine id, or `None` when the file does not
/// hold a machine id (too short, or not hex), so that garbage never ends up in an id.
fn machine_id_prefix(machine_id: &str) -> Option<String> {
    let prefix: String = machine_id
        .trim()
        .chars()
        .take(MACHINE_ID_PREFIX_LEN)
        .collect::<String>()
        .to_ascii_lowercase();
    let is_hex_prefix = prefix.len() == MACHINE_ID_PREFIX_LEN
        && prefix
            .chars()
            .all(|character| character.is_ascii_hexdigit());
    is_hex_prefix.then_some(prefix)
}

/// Returns the hostname, falling back to the `HOSTNAME` variable and then to
/// `"localhost"`, because some minimal containers and Android builds do not report one.
fn read_hostname() -> String {
    System::host_name()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Returns the platform family, telling Android apart from ordinary Linux.
///
/// A worker built for `*-linux-musl` runs unchanged on Android under Termux, so the
/// compile-time OS says `linux` there; Android is recognised at run time by the
/// `ANDROID_ROOT` variable its init sets for every process, or by the system properties
/// file every Android image has.
fn detect_platform() -> String {
    if is_android() {
        "android".to_string()
    } else {
        std::env::consts::OS.to_string()
    }
}

/// Where Termux keeps its programs and configuration when `PREFIX` does not say.
pub const TERMUX_PREFIX: &str = "/data/data/com.termux/files/usr";

/// Termux's prefix: `$PREFIX` when set to an absolute path (Termux sets it for every
/// program it starts), else [`TERMUX_PREFIX`]. Its `bin/sh`, `tmp`, `etc/hosts` and
/// `etc/resolv.conf` stand in for the `/bin/sh`, `/tmp` and `/etc` files Android lacks.
pub fn termux_prefix() -> PathBuf {
    std::env::var_os("PREFIX")
        .map(PathBuf::from)
        .filter(|prefix| prefix.is_absolute())
        .unwrap_or_else(|| PathBuf::from(TERMUX_PREFIX))
}

/// Tells whether this is Android (Termux included), whatever the build target says; see
/// [`detect_platform`].
pub(crate) fn is_android() -> bool {
    cfg!(target_os = "android")
        || std::env::var_os("ANDROID_ROOT").is_some()
        || Path::new("/system/build.prop").exists()
}

/// Returns a human-readable OS name and version, such as `"Debian GNU/Linux 12"`.
fn os_version() -> Option<String> {
    let name = System::name().filter(|name| !name.is_empty());
    let version = System::os_version().filter(|version| !version.is_empty());
    match (name, version) {
        (Some(name), Some(version)) if name.contains(&version) => Some(name),
        (Some(name), Some(version)) => Some(format!("{name} {version}")),
        (Some(name), None) => Some(name),
        (None, version) => version,
    }
}

/// Returns the CPU's brand string, or `None` when the CPU does not report one.
fn cpu_model(system: &System) -> Option<String> {
    system
        .cpus()
        .iter()
        .map(|cpu| cpu.brand().trim())
        .find(|brand| !brand.is_empty())
        .map(str::to_string)
}

/// Returns the number of logical CPUs, never less than one, so that the scheduler never
/// sees a device with no capacity just because the CPU list could not be read.
fn logical_cpu_count(system: &System) -> u32 {
    let listed = system.cpus().len();
    let count = if listed > 0 {
        listed
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    };
    u32::try_from(count).unwrap_or(u32::MAX).max(1)
}

/// Lists the mounted file systems worth reporting: one entry per underlying device (bind
/// mounts of the same device would otherwise be counted twice in the total), skipping
/// file systems of size zero, with `/` first and the rest by mount point.
fn collect_disks() -> Vec<DiskInfo> {
    let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
    let mut candidates: Vec<&sysinfo::Disk> = disks
        .list()
        .iter()
        .filter(|disk| disk.total_space() > 0)
        .collect();
    // Visiting `/` first (then shorter mount points) makes it the representative of its
    // device, so that the root file system is always the one reported for it.
    candidates.sort_by_key(|disk| {
        let mount_point = disk.mount_point();
        (mount_point != Path::new("/"), mount_point.as_os_str().len())
    });

    let mut seen_devices = std::collections::HashSet::new();
    let mut reported: Vec<DiskInfo> = Vec::new();
    for disk in candidates {
        if !seen_devices.insert(disk.name().to_os_string()) {
            continue;
        }
        reported.push(DiskInfo {
            mount_point: disk.mount_point().to_string_lossy().into_owned(),
            total_bytes: disk.total_space(),
            available_bytes: disk.available_space(),
        });
    }
    reported.sort_by(|left, right| {
        (left.mount_point != "/", &left.mount_point)
            .cmp(&(right.mount_point != "/", &right.mount_point))
    });
    reported
}

/// Picks the IPv4 address other machines are most likely to reach this device at: the
/// first non-loopback, non-link-local address, looking at physical-looking interfaces
/// (by sorted name) before virtual ones such as `docker0`.
fn primary_ipv4_address(interfaces: &[InterfaceAddress]) -> Option<Ipv4Addr> {
    let mut candidates: Vec<&InterfaceAddress> = interfaces.iter().collect();
    candidates.sort_by_key(|interface| {
        (
            is_virtual_interface(&interface.name),
            interface.name.as_str(),
        )
    });
    candidates
        .into_iter()
        .filter_map(|interface| interface.ipv4)
        .find(|v4| !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified())
}

/// One entry of the interface list: an interface name and, when the entry is an IPv4
/// address, that address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InterfaceAddress {
    name: String,
    ipv4: Option<Ipv4Addr>,
}

/// Directory whose entries are the network interfaces, on Linux and Android.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// Lists the network interfaces and their IPv4 addresses, sorted by name.
///
/// This deliberately does not use `sysinfo::Networks`: sysinfo 0.37 reads every
/// interface address as a whole `sockaddr_storage` (128 bytes) although `getifaddrs`
/// only allocates the 16 or 28 bytes of a `sockaddr_in`/`sockaddr_in6`. Under musl
/// that read runs past the allocation and, depending on the heap layout, off the end
/// of the mapping: the static aarch64 worker crashed with SIGSEGV in `collect()`.
/// Here each address is read at the size its family says it has. When `getifaddrs`
/// fails (Android 11+ forbids the netlink request behind it for apps), the names come
/// from `/sys/class/net` instead, without addresses.
fn list_interfaces() -> Vec<InterfaceAddress> {
    let mut interfaces = read_ifaddrs().unwrap_or_else(|| {
        std::fs::read_dir(SYS_CLASS_NET)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| InterfaceAddress {
                        name: entry.file_name().to_string_lossy().into_owned(),
                        ipv4: None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    interfaces.sort_by(|left, right| left.name.cmp(&right.name).then(left.ipv4.cmp(&right.ipv4)));
    interfaces
}

/// Walks the list `getifaddrs` returns; `None` when the call fails. This stays a libc
/// call (the worker's last hand-written pointer walk besides `wait4`): rustix has no
/// `getifaddrs`, whose Linux version is a netlink conversation the libc does for us.
fn read_ifaddrs() -> Option<Vec<InterfaceAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` only writes the list head through the pointer it is given,
    // which points at a local variable.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut interfaces = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list `getifaddrs` returned, which stays
        // valid and unchanged until `freeifaddrs` below.
        let entry = unsafe { &*cursor };
        if !entry.ifa_name.is_null() {
            // SAFETY: a non-null `ifa_name` is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) };
            // Interface aliases are written `eth0:1`; they belong to `eth0`.
            let name = name.to_string_lossy();
            let name = name.split(':').next().unwrap_or_default().to_string();
            if !name.is_empty() {
                interfaces.push(InterfaceAddress {
                    name,
                    // SAFETY: `ifa_addr` is null or points at an address owned by the list.
                    ipv4: unsafe { ipv4_address(entry.ifa_addr) },
                });
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from a successful `getifaddrs` and is freed exactly once; no
    // reference into the list outlives this point (names and addresses were copied).
    unsafe { libc::freeifaddrs(head) };
    Some(interfaces)
}

/// The IPv4 address behind `address`, if it is one.
///
/// # Safety
///
/// `address` must be null or point at a valid socket address whose size matches its
/// `sa_family` (as every address `getifaddrs` returns does).
unsafe fn ipv4_address(address: *const libc::sockaddr) -> Option<Ipv4Addr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: every socket address starts with its family, so reading the `sockaddr`
    // header's family field stays within the address (the caller guarantees it).
    let family = unsafe { std::ptr::addr_of!((*address).sa_family).read_unaligned() };
    if libc::c_int::from(family) != libc::AF_INET {
        return None;
    }
    // SAFETY: an `AF_INET` address is a whole `sockaddr_in`; it is read unaligned
    // because nothing promises its alignment.
    let ipv4 = unsafe { address.cast::<libc::sockaddr_in>().read_unaligned() };
    Some(Ipv4Addr::from(u32::from_be(ipv4.sin_addr.s_addr)))
}

/// Tells whether an interface name looks like a container bridge, VPN tunnel or other
/// virtual interface rather than the device's own network card.
fn is_virtual_interface(name: &str) -> bool {
    VIRTUAL_INTERFACE_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Samples [`LiveMetrics`] cheaply, again and again.
///
/// It keeps its `sysinfo` state between samples because CPU usage is a difference between
/// two readings, and because rebuilding the CPU and disk lists every few seconds would
/// cost a small device more than the measurement itself.
#[derive(Debug)]
pub struct MetricsSampler {
    system: System,
    disks: Disks,
    /// The index in `disks` of the file system whose usage is reported, if any.
    reported_disk: Option<usize>,
    /// Where the power and heat sensors are read ([`power::SYSFS_ROOT`] but in tests).
    power_root: PathBuf,
    /// Keeps one odd power or heat reading out of the heartbeats.
    power_debouncer: power::Debouncer,
}

impl MetricsSampler {
    /// Creates a sampler and takes the first CPU reading, so that the first call to
    /// [`MetricsSampler::sample`] reports the usage since this moment. (A sample taken
    /// less than `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` later is less accurate.)
    pub fn new() -> MetricsSampler {
        MetricsSampler::with_power_root(Path::new(power::SYSFS_ROOT))
    }

    /// Like [`MetricsSampler::new`], reading the power and heat sensors under `root`
    /// instead of `/sys`, so that tests can give it a fake tree.
    pub fn with_power_root(root: &Path) -> MetricsSampler {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        system.refresh_cpu_usage();
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
        let reported_disk = choose_reported_disk(&disks);
        MetricsSampler {
            system,
            disks,
            reported_disk,
            power_root: root.to_path_buf(),
            power_debouncer: power::Debouncer::new(),
        }
    }

    /// Refreshes CPU usage, RAM and the reported disk's free space, and returns them with
    /// the load average, uptime and the debounced power and heat readings (a few small
    /// sysfs files). Nothing else is read, so this stays cheap enough to call every few
    /// seconds on a Raspberry Pi.
    pub fn sample(&mut self) -> LiveMetrics {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());

        let disk_usage = match self
            .reported_disk
            .and_then(|index| self.disks.list_mut().get_mut(index))
        {
            Some(disk) => {
                disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
                let total = disk.total_space();
                percent(total.saturating_sub(disk.available_space()), total)
            }
            None => 0.0,
        };

        let total_memory = self.system.total_memory();
        let memory_in_use = total_memory.saturating_sub(self.system.available_memory());
        let load = System::load_average();
        LiveMetrics {
            cpu_usage: f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0),
            memory_usage: percent(memory_in_use, total_memory),
            disk_usage,
            load_average: [load.one, load.five, load.fifteen],
            uptime_secs: System::uptime(),
            power: self
                .power_debouncer
                .sample(Instant::now(), power::read_sysfs(&self.power_root)),
        }
    }
}

impl Default for MetricsSampler {
    fn default() -> Self {
        MetricsSampler::new()
    }
}

/// Chooses the file system whose usage heartbeats report: `/` when it is listed (that is
/// where the worker's work directory and temporary files normally live), else the
/// largest one.
fn choose_reported_disk(disks: &Disks) -> Option<usize> {
    let list = disks.list();
    list.iter()
        .position(|disk| disk.mount_point() == Path::new("/") && disk.total_space() > 0)
        .or_else(|| {
            list.iter()
                .enumerate()
                .filter(|(_, disk)| disk.total_space() > 0)
                .max_by_key(|(_, disk)| disk.total_space())
                .map(|(index, _)| index)
        })
}

/// Returns `part` as a percentage of `whole`, or zero when `whole` is zero.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    // Converting to f64 loses precision only above 2^53 bytes, far beyond any device.
    (part as f64 / whole as f64 * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Power;

    #[test]
    fn collected_profile_has_sane_values() {
        let profile = collect();
        assert!(profile.cpu_cores >= 1, "{profile:?}");
        assert!(profile.memory_total_bytes > 0, "{profile:?}");
        assert!(!profile.hostname.is_empty(), "{profile:?}");
        assert_eq!(profile.architecture, std::env::consts::ARCH);
        assert!(!profile.platform.is_empty());
        assert_eq!(
            profile.disk_total_bytes,
            profile
                .disks
                .iter()
                .map(|disk| disk.total_bytes)
                .sum::<u64>()
        );
        for disk in &profile.disks {
            assert!(disk.available_bytes <= disk.total_bytes, "{disk:?}");
        }
        if let Some(address) = &profile.ip_address {
            let parsed: std::net::Ipv4Addr = address.parse().expect("an IPv4 address");
            assert!(!parsed.is_loopback());
        }
    }

    #[test]
    fn profile_round_trips_through_json() {
        let profile = collect();
        let json = serde_json::to_string(&profile).expect("serialize");
        let back: DeviceProfile = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, profile);
    }

    #[test]
    fn default_device_id_is_stable_and_well_formed() {
        let first = default_device_id(&collect());
        let second = default_device_id(&collect());
        assert_eq!(first, second);
        assert!(!first.is_empty());
        assert!(
            first
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{first}"
        );
    }

    #[test]
    fn sanitize_hostname_examples() {
        fn check(input: &str, expect: &str) {
            assert_eq!(sanitize_hostname(input), expect, "input {input:?}");
        }
        check("raspberrypi", "raspberrypi");
        check("My-Laptop", "my-laptop");
        check("nas.local", "nas-local");
        check("under_score__host", "under-score-host");
        check("  spaced name  ", "spaced-name");
        check("-leading-and-trailing-", "leading-and-trailing");
        check("Ünïcödé", "n-c-d");
        check("...", "");
        check("", "");
        check(&"a".repeat(100), &"a".repeat(MAX_HOSTNAME_ID_LEN));
    }

    #[test]
    fn compose_device_id_examples() {
        fn check(hostname: &str, machine_id: Option<&str>, expect: &str) {
            assert_eq!(
                compose_device_id(hostname, machine_id),
                expect,
                "hostname {hostname:?}, machine id {machine_id:?}"
            );
        }
        check("raspberrypi", None, "raspberrypi");
        check(
            "raspberrypi",
            Some("3D1219c7c4c5404aaa1f6d2a48adfda4\n"),
            "raspberrypi-3d1219",
        );
        check("", None, "worker");
        check("___", Some("abcdef0123"), "worker-abcdef");
        check("pi", Some("abc"), "pi");
        check("pi", Some("not-hex-at-all"), "pi");
        check("pi", Some(""), "pi");
    }

    #[test]
    fn interface_list_reads_addresses_by_family() {
        let interfaces = read_ifaddrs().expect("getifaddrs works on a Linux test host");
        assert!(!interfaces.is_empty());
        for interface in &interfaces {
            assert!(
                !interface.name.is_empty() && !interface.name.contains(':'),
                "{interface:?}"
            );
            if interface.name == "lo" {
                assert!(
                    interface.ipv4.is_none_or(|v4| v4.is_loopback()),
                    "{interface:?}"
                );
            }
        }
        let listed = list_interfaces();
        assert!(listed.windows(2).all(|pair| pair[0].name <= pair[1].name));
    }

    #[test]
    fn primary_address_prefers_physical_interfaces() {
        fn entry(name: &str, ipv4: Option<[u8; 4]>) -> InterfaceAddress {
            InterfaceAddress {
                name: name.to_string(),
                ipv4: ipv4.map(Ipv4Addr::from),
            }
        }
        let interfaces = [
            entry("docker0", Some([172, 17, 0, 1])),
            entry("eth0", None),
            entry("lo", Some([127, 0, 0, 1])),
            entry("wlan0", Some([169, 254, 3, 4])),
            entry("wlan0", Some([192, 168, 1, 20])),
        ];
        assert_eq!(
            primary_ipv4_address(&interfaces),
            Some(Ipv4Addr::new(192, 168, 1, 20))
        );
        assert_eq!(
            primary_ipv4_address(&interfaces[..3]),
            Some(Ipv4Addr::new(172, 17, 0, 1))
        );
        assert_eq!(primary_ipv4_address(&interfaces[2..4]), None);
    }

    #[test]
    fn platform_is_a_known_family() {
        let platform = detect_platform();
        assert!(
            platform == "android" || platform == std::env::consts::OS,
            "{platform}"
        );
    }

    #[test]
    fn percent_examples() {
        fn check(part: u64, whole: u64, expect: f64) {
            assert!(
                (percent(part, whole) - expect).abs() < 1e-9,
                "{part}/{whole}"
            );
        }
        check(0, 0, 0.0);
        check(5, 0, 0.0);
        check(1, 4, 25.0);
        check(4, 4, 100.0);
        check(8, 4, 100.0);
    }

    #[test]
    fn samples_carry_debounced_power_readings_from_the_given_root() {
        let root = tempfile::tempdir().expect("temp dir");
        let battery = root.path().join("class/power_supply/battery");
        std::fs::create_dir_all(&battery).expect("mkdir");
        std::fs::write(battery.join("type"), "Battery\n").expect("write");
        std::fs::write(battery.join("capacity"), "42\n").expect("write");
        std::fs::write(battery.join("status"), "Discharging\n").expect("write");
        let mut sampler = MetricsSampler::with_power_root(root.path());
        // Nothing is reported until enough samples agree.
        for _ in 1..power::DEBOUNCE_SAMPLES {
            assert_eq!(sampler.sample().power, Power::default());
        }
        let expect = Power {
            battery_percent: Some(42.0),
            charging: Some(false),
            on_ac: Some(false),
            temperature_c: None,
        };
        assert_eq!(sampler.sample().power, expect);
        // One spurious 0 % changes nothing.
        std::fs::write(battery.join("capacity"), "0\n").expect("write");
        assert_eq!(sampler.sample().power, expect);
    }

    #[test]
    fn sampled_metrics_are_within_range() {
        let mut sampler = MetricsSampler::new();
        for _ in 0..2 {
            let metrics = sampler.sample();
            assert!((0.0..=100.0).contains(&metrics.cpu_usage), "{metrics:?}");
            assert!(
                metrics.memory_usage > 0.0 && metrics.memory_usage <= 100.0,
                "{metrics:?}"
            );
            assert!((0.0..=100.0).contains(&metrics.disk_usage), "{metrics:?}");
            assert!(metrics.load_average.iter().all(|load| *load >= 0.0));
            assert!(metrics.uptime_secs > 0, "{metrics:?}");
        }
    }
}
