//! The values the session exchanges with the code around it. They are plain data: the
//! shells produce them ([`crate::device::profile`] reads the device, and
//! [`crate::state::outbox`] reads saved results back), so the session itself never
//! depends on a module that does I/O.

use protocol::{Power, TaskResult};
use serde::{Deserialize, Serialize};

/// A result saved by an earlier run (loaded from the outbox on disk): send it again
/// under the same message id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// The `message_id` it was (or would have been) sent with.
    pub message_id: String,
    /// The result.
    pub result: TaskResult,
}

/// One mounted file system, as reported in the device profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Where the file system is mounted, for example `/` or `/mnt/usb`.
    pub mount_point: String,
    /// Size of the file system in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users when the profile was collected.
    pub available_bytes: u64,
}

/// The static description of a device that a worker registers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// The device's hostname, as the operating system reports it.
    pub hostname: String,
    /// The platform family: `"linux"`, `"android"` (also under Termux), `"macos"`,
    /// `"windows"`, `"freebsd"`, ... (the values of `std::env::consts::OS`, except that
    /// Android is detected at run time because a Linux binary runs there too).
    pub platform: String,
    /// The CPU architecture the worker was built for, as in `std::env::consts::ARCH`
    /// (`"x86_64"`, `"aarch64"`, `"arm"`, ...).
    pub architecture: String,
    /// The operating system's name and version, for example `"Debian GNU/Linux 12"`.
    pub os_version: Option<String>,
    /// The kernel version, for example `"6.1.0-18-arm64"`.
    pub kernel_version: Option<String>,
    /// The CPU model as the CPU reports it, when it reports one (many ARM boards do not).
    pub cpu_model: Option<String>,
    /// The number of logical CPUs; never less than one.
    pub cpu_cores: u32,
    /// Physical memory in bytes.
    pub memory_total_bytes: u64,
    /// The total size of all distinct file systems in `disks`, in bytes.
    pub disk_total_bytes: u64,
    /// The mounted file systems, one per underlying device.
    pub disks: Vec<DiskInfo>,
    /// The names of the network interfaces, sorted.
    pub network_interfaces: Vec<String>,
    /// The first IPv4 address of a physical-looking interface that is neither loopback
    /// nor link-local, if there is one. The network client may know better (the local
    /// address of its socket to the master) and should prefer that when it has it.
    pub ip_address: Option<String>,
    /// How well the task sandbox guards the owner here (`full`, `partial`, `none`);
    /// the worker fills it in once its sandbox has probed the kernel.
    pub sandbox: Option<String>,
    /// The score of the CPU benchmark run at start (millions of rounds per
    /// second on one core, see `device::benchmark`), when it could run.
    pub cpu_benchmark: Option<f64>,
}

/// The live numbers a worker reports with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveMetrics {
    /// CPU usage across all CPUs since the previous sample, in percent (0 to 100).
    pub cpu_usage: f64,
    /// Memory in use (total minus available), in percent of physical memory.
    pub memory_usage: f64,
    /// Space in use on the root file system (or the largest one, when there is no root
    /// file system to be seen), in percent of its size.
    pub disk_usage: f64,
    /// The 1, 5 and 15 minute load averages (zeros where the OS has none).
    pub load_average: [f64; 3],
    /// Seconds since the device booted.
    pub uptime_secs: u64,
    /// The battery, mains supply and temperature, already debounced (see
    /// `device::power`); all `None` when the device has no such sensors or too few
    /// samples have come in yet, and then left out when serialized.
    #[serde(default, skip_serializing_if = "power_unknown")]
    pub power: Power,
}

/// Whether nothing at all is known about the power and heat.
fn power_unknown(power: &Power) -> bool {
    *power == Power::default()
}
