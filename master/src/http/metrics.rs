//! `GET /metrics`: the Prometheus text exposition (version 0.0.4), which
//! `promtool check metrics` accepts: counters end in `_total`, durations
//! are histograms in seconds, and every label is bounded (task states,
//! at most [`crate::core::observe::MAX_METRIC_TYPES`] task types, at most
//! [`MAX_METRIC_DEVICES`] devices; never a task id).

use super::render::metric;
use crate::core::observe::{Histogram, Observed, BUCKETS};
use protocol::{DevicePage, DeviceStatus, Reply, StatusReply, TaskState};
use std::fmt::Write as _;

/// The most devices with a label of their own in the per-device gauges:
/// 256 (the first ones of the device listing, newest registered first);
/// `retire_devices_unlabelled` counts the others.
pub const MAX_METRIC_DEVICES: usize = 256;

/// What the event loop counts itself.
#[derive(Debug, Clone, Default)]
pub struct LoopStats {
    /// Connections open now, by protocol (`http`, `lines`, `unknown`).
    pub connections: [(&'static str, u64); 3],
    /// Connections accepted since the start.
    pub accepted: u64,
    /// HTTP requests answered since the start.
    pub http_requests: u64,
    /// Seconds from handing a batch to the store to its commit.
    pub commit_latency: Histogram,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value, escaped as the exposition format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += h.counts[BUCKETS.len()];
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
    );
    let braces = |labels: &str| {
        if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
}

/// The exposition, from `status` and a device page (the replies of the
/// plan), the core's observations, the loop's counters and whether the
/// store takes writes; `None` if the replies are not those.
pub fn render(
    replies: &[Reply],
    observed: &Observed,
    stats: &LoopStats,
    auth_failures: u64,
) -> Option<String> {
    let status: StatusReply = replies.first()?.parse().ok()?;
    let page: DevicePage = replies.get(1)?.parse().ok()?;
    let stats_c = &status.cluster_stats;
    let mut out = String::new();

    family(
        &mut out,
        "retire_tasks",
        "gauge",
        "Tasks known to the master, by state.",
    );
    for state in TaskState::ALL {
        let n = stats_c.tasks.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(out, "retire_tasks{{state=\"{state}\"}} {n}");
    }

    family(
        &mut out,
        "retire_tasks_finished_total",
        "counter",
        "Tasks that reached a final state since the master started, by outcome.",
    );
    for state in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
        let n = observed.outcomes.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "retire_tasks_finished_total{{outcome=\"{state}\"}} {n}"
        );
    }

    family(
        &mut out,
        "retire_task_queue_wait_seconds",
        "histogram",
        "Seconds from a task's submission to the start of its last attempt, by task type.",
    );
    for (task_type, h) in &observed.queue_wait {
        let labels = format!("type=\"{}\"", label(task_type));
        histogram(&mut out, "retire_task_queue_wait_seconds", &labels, h);
    }
    family(
        &mut out,
        "retire_task_run_seconds",
        "histogram",
        "Seconds a task's last attempt ran, by task type.",
    );
    for (task_type, h) in &observed.run_time {
        let labels = format!("type=\"{}\"", label(task_type));
        histogram(&mut out, "retire_task_run_seconds", &labels, h);
    }

    family(&mut out, "retire_devices", "gauge", "Devices by status.");
    let mut by_status = [0u64; 3];
    for device in &page.devices {
        by_status[device.status as usize] += 1;
    }
    // The page holds up to 1,000 devices; the totals say how many there are.
    let offline = u64::from(stats_c.total_devices.saturating_sub(stats_c.online_devices));
    let draining = by_status[DeviceStatus::Draining as usize];
    let online = u64::from(stats_c.online_devices).saturating_sub(draining);
    for (status, n) in [
        ("online", online),
        ("draining", draining),
        ("offline", offline),
    ] {
        let _ = writeln!(out, "retire_devices{{status=\"{status}\"}} {n}");
    }

    let labelled: Vec<_> = page.devices.iter().take(MAX_METRIC_DEVICES).collect();
    let per_device: [(&str, &str, &str); 7] = [
        ("retire_device_slots", "Task slots of a device.", "slots"),
        ("retire_device_active_tasks", "Tasks a device holds now.", "active"),
        ("retire_device_cpu_usage_percent", "A device's CPU usage at its last heartbeat, in percent.", "cpu_usage"),
        ("retire_device_memory_usage_percent", "A device's memory usage at its last heartbeat, in percent.", "memory_usage"),
        ("retire_device_disk_usage_percent", "A device's disk usage at its last heartbeat, in percent.", "disk_usage"),
        ("retire_device_battery_percent", "A device's battery charge at its last heartbeat, in percent, where it has one.", "battery_percent"),
        ("retire_device_temperature_celsius", "A device's temperature at its last heartbeat, in degrees Celsius, where it has a sensor.", "temperature"),
    ];
    for (name, help, key) in per_device {
        family(&mut out, name, "gauge", help);
        for device in &labelled {
            let value = match key {
                "slots" => Some(f64::from(device.slots)),
                "active" => Some(f64::from(device.active_tasks)),
                "battery_percent" => {
                    metric(device, "battery_percent").or_else(|| metric(device, "battery"))
                }
                "temperature" => {
                    metric(device, "temperature").or_else(|| metric(device, "temperature_celsius"))
                }
                other => metric(device, other),
            };
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "{name}{{device=\"{}\"}} {value}",
                    label(&device.device_id)
                );
            }
        }
    }
    family(
        &mut out,
        "retire_devices_unlabelled",
        "gauge",
        "Devices left out of the per-device gauges (past the label bound).",
    );
    let unlabelled = u64::from(stats_c.total_devices).saturating_sub(labelled.len() as u64);
    let _ = writeln!(out, "retire_devices_unlabelled {unlabelled}");

    family(
        &mut out,
        "retire_store_commit_seconds",
        "histogram",
        "Seconds from handing a batch of changes to the store to its commit.",
    );
    histogram(
        &mut out,
        "retire_store_commit_seconds",
        "",
        &stats.commit_latency,
    );
    family(
        &mut out,
        "retire_store_writable",
        "gauge",
        "1 while the store takes writes, 0 while it fails.",
    );
    let writable = u8::from(stats_c.storage.is_empty() || stats_c.storage == "ok");
    let _ = writeln!(out, "retire_store_writable {writable}");

    family(
        &mut out,
        "retire_connections",
        "gauge",
        "Open connections, by protocol.",
    );
    for (protocol, n) in stats.connections {
        let _ = writeln!(out, "retire_connections{{protocol=\"{protocol}\"}} {n}");
    }
    family(
        &mut out,
        "retire_connections_accepted_total",
        "counter",
        "Connections accepted since the master started.",
    );
    let _ = writeln!(out, "retire_connections_accepted_total {}", stats.accepted);
    family(
        &mut out,
        "retire_http_requests_total",
        "counter",
        "HTTP requests answered since the master started.",
    );
    let _ = writeln!(out, "retire_http_requests_total {}", stats.http_requests);
    family(
        &mut out,
        "retire_auth_failures_total",
        "counter",
        "Failed authentications since the master started (wrong proofs and tokens).",
    );
    let _ = writeln!(out, "retire_auth_failures_total {auth_failures}");
    Some(out)
}
