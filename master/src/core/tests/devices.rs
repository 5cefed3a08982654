//! Device listings and `status` cost what they show, not what devices
//! registered: a registration is capped at `MAX_PROFILE_BYTES`, a listing
//! is a page of summaries (without the profile) newest registered first,
//! and `status` reads totals kept as devices connect and leave. (The
//! property tests in `prop.rs` check every listing against a scan of every
//! device and `status` against a recomputation, after every step.)

use super::sim::{gib, register, Sim};
use crate::core::{DEFAULT_DEVICE_LIST, MAX_DEVICE_LIST};
use protocol::limits::{json_len, MAX_PROFILE_BYTES};
use protocol::{DevicePage, ErrorCode, ListDevices, Message, Register};
use serde_json::{json, Value};
use std::time::Duration;

fn page(sim: &mut Sim, list: ListDevices) -> (DevicePage, Value, usize) {
    let conn = sim.client();
    let reply = sim.request(conn, Message::ListDevices(list));
    let result = Value::Object(reply.ack().result.fields().into_owned());
    let size = json_len(&result);
    let page = serde_json::from_value(result.clone()).expect("a page of devices");
    (page, result, size)
}

fn ids(page: &DevicePage) -> Vec<&str> {
    page.devices
        .iter()
        .map(|device| device.device_id.as_str())
        .collect()
}

/// A registration whose capabilities make its stored profile about
/// `bytes` long as JSON.
fn padded(bytes: usize) -> Register {
    let mut register = register(1);
    let base = json_len(&crate::core::records::profile_value(&register));
    // `"capabilities":["…"]` adds 19 bytes around the string.
    let fill = bytes.saturating_sub(base + 20);
    register.capabilities = Some(json!(["x".repeat(fill)]));
    register
}

#[test]
fn a_device_listing_pages_newest_registered_first_with_its_cursor() {
    let mut sim = Sim::new();
    let d: Vec<String> = (0..5).map(|n| format!("dev-{}", 4 - n)).collect();
    for id in &d {
        sim.add_worker(id, 1);
        sim.advance(Duration::from_millis(10));
    }
    // Registering again keeps a device's place.
    sim.add_worker(&d[0], 2);
    let limit = |n: usize, before: Option<&String>| ListDevices {
        limit: Some(n),
        before: before.cloned(),
        ..ListDevices::default()
    };
    let (first, raw, _) = page(&mut sim, limit(2, None));
    assert_eq!(ids(&first), [&d[4], &d[3]]);
    assert_eq!(raw["count"], json!(2));
    assert_eq!(raw["next_cursor"], json!(d[3]));
    assert!(first.devices.iter().all(|device| device.profile.is_none()));
    let (second, _, _) = page(&mut sim, limit(2, first.next_cursor.as_ref()));
    assert_eq!(ids(&second), [&d[2], &d[1]]);
    let (last, raw, _) = page(&mut sim, limit(2, second.next_cursor.as_ref()));
    assert_eq!(ids(&last), [&d[0]]);
    assert!(
        raw.get("next_cursor").is_none(),
        "absent on the last page: {raw}"
    );
    // An older client's request gets every device, with `count`.
    let (all, raw, _) = page(&mut sim, ListDevices::default());
    assert_eq!(all.count, 5);
    assert_eq!(raw["success"], json!(true));
    // The full view is one request away.
    let conn = sim.client();
    let full = sim.request(
        conn,
        Message::DeviceInfo(protocol::DeviceRef {
            device_id: d[0].clone(),
        }),
    );
    assert!(full.field("device")["profile"].is_object());
    let unknown = sim.request(
        conn,
        Message::ListDevices(ListDevices {
            before: Some("nope".into()),
            ..ListDevices::default()
        }),
    );
    assert_eq!(unknown.code(), ErrorCode::NotFound);
    assert!(unknown.error().error.contains("no device nope"));
}

#[test]
fn a_registration_over_the_cap_is_refused_with_a_reason_and_stores_nothing() {
    let mut sim = Sim::new();
    let at_limit = padded(MAX_PROFILE_BYTES);
    let size = json_len(&crate::core::records::profile_value(&at_limit));
    assert!(
        size <= MAX_PROFILE_BYTES && size > MAX_PROFILE_BYTES - 64,
        "{size}"
    );
    assert_eq!(sim.join("fits", at_limit).field("success"), json!(true));
    for (id, register) in [
        ("over", padded(MAX_PROFILE_BYTES + 2)),
        ("mib", padded(1 << 20)),
        ("extra", {
            let mut register = register(1);
            register
                .extra
                .insert("junk".into(), json!("y".repeat(MAX_PROFILE_BYTES)));
            register
        }),
    ] {
        let reply = sim.join(id, register);
        assert_eq!(reply.code(), ErrorCode::InvalidMessage, "{id}");
        let error = &reply.error().error;
        assert!(
            error.contains("MAX_PROFILE_BYTES") && error.contains("16384"),
            "{id}: {error}"
        );
        assert!(
            !sim.core.registry.devices.contains_key(id),
            "{id} is not registered"
        );
        assert!(!sim.db.devices.contains_key(id), "{id} is not stored");
    }
    // What a busy worker still runs when it reconnects does not count: it
    // is bounded by its slots, and it must always be able to come back.
    let mut busy = register(1024);
    busy.running_tasks = (0..1024)
        .map(|n| protocol::RunningTask {
            task_id: format!("{n:0>120}"),
            attempt: 1,
        })
        .collect();
    assert!(json_len(&crate::core::records::profile_value(&busy)) > 8 * MAX_PROFILE_BYTES);
    let conn = sim.connect();
    let reply = sim.request_as(conn, Some("busy"), Message::Register(busy));
    assert_eq!(reply.field("success"), json!(true));
}

/// The attack: a holder of the join token enrolls many ids, each with as
/// big a registration as it may send; then an anonymous reader asks for
/// the devices again and again. Each reply is one page of summaries, so it
/// is bounded by the page size times a summary's size, however many
/// devices there are and however big their profiles.
#[test]
fn many_devices_with_big_profiles_cost_a_reader_one_page_of_summaries() {
    const DEVICES: usize = 1200;
    // A summary holds ids, names, figures and two timestamps: well under
    // 1 KiB for our worker's devices (this test's are ~450 bytes).
    const SUMMARY_BYTES: usize = 1024;
    let mut sim = Sim::new();
    // Before the cap, a whole line's worth (1 MiB) was accepted.
    assert_eq!(
        sim.join("huge", padded(1 << 20)).code(),
        ErrorCode::InvalidMessage
    );
    let big = padded(MAX_PROFILE_BYTES);
    for n in 0..DEVICES {
        let reply = sim.join(&format!("enrolled-{n:04}"), big.clone());
        assert_eq!(reply.field("success"), json!(true));
    }
    let (first, _, size) = page(&mut sim, ListDevices::default());
    assert_eq!(first.count, DEFAULT_DEVICE_LIST);
    assert!(
        size <= DEFAULT_DEVICE_LIST * SUMMARY_BYTES,
        "a default page is {size} bytes"
    );
    let (largest, _, size) = page(
        &mut sim,
        ListDevices {
            limit: Some(usize::MAX),
            ..ListDevices::default()
        },
    );
    assert_eq!(largest.count, MAX_DEVICE_LIST);
    assert!(
        size <= MAX_DEVICE_LIST * SUMMARY_BYTES,
        "the largest page is {size} bytes"
    );
    // The text command is a page of the same summaries.
    let conn = sim.client();
    let (text, _) = sim.text(conn, "devices");
    assert!(
        text.len() <= DEFAULT_DEVICE_LIST * 256,
        "{} bytes",
        text.len()
    );
    assert!(text.contains(&format!(
        "more: devices before enrolled-{:04}",
        DEVICES - DEFAULT_DEVICE_LIST
    )));
    let (next, _) = sim.text(
        conn,
        &format!(
            "devices before enrolled-{:04}",
            DEVICES - DEFAULT_DEVICE_LIST
        ),
    );
    assert!(
        next.contains("enrolled-0699") && next.contains("more: devices before enrolled-0200"),
        "{next}"
    );
    let (last, _) = sim.text(conn, "devices before enrolled-0200");
    assert!(last.contains("enrolled-0000") && !last.contains("more:"));
}

#[test]
fn status_keeps_its_totals_as_devices_join_change_and_leave() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.add_worker("b", 1);
    let status = |sim: &mut Sim| {
        let conn = sim.client();
        sim.request(conn, Message::Status).field("cluster_stats")
    };
    let stats = status(&mut sim);
    assert_eq!(stats["online_devices"], json!(2));
    assert_eq!(stats["total_resources"]["cpu_cores"], json!(8));
    assert_eq!(stats["by_platform"], json!({"linux": 2}));
    // `b` registers again as something else: it counts once, as it is now.
    let android = Register {
        platform: Some("android".into()),
        role: Some("mobile".into()),
        cpu_cores: Some(2),
        memory_total_bytes: Some(gib(4)),
        ..register(1)
    };
    assert_eq!(sim.join("b", android).field("success"), json!(true));
    let stats = status(&mut sim);
    assert_eq!(stats["online_devices"], json!(2));
    assert_eq!(stats["total_resources"]["cpu_cores"], json!(6));
    assert_eq!(stats["total_resources"]["memory_gb"], json!(12.0));
    assert_eq!(stats["by_platform"], json!({"android": 1, "linux": 1}));
    assert_eq!(stats["by_role"], json!({"mobile": 1, "worker": 1}));
    sim.leave("a");
    let stats = status(&mut sim);
    assert_eq!(stats["online_devices"], json!(1));
    assert_eq!(stats["total_devices"], json!(2));
    assert_eq!(stats["total_resources"]["cpu_cores"], json!(2));
    assert_eq!(stats["by_platform"], json!({"android": 1}));
    assert_eq!(stats["by_role"], json!({"mobile": 1}));
    // Hostile figures saturate instead of overflowing.
    let greedy = Register {
        cpu_cores: Some(u32::MAX),
        memory_total_bytes: Some(u64::MAX),
        ..register(1)
    };
    sim.join("g1", greedy.clone());
    sim.join("g2", greedy);
    let stats = status(&mut sim);
    assert_eq!(stats["total_resources"]["cpu_cores"], json!(u32::MAX));
    // A restart starts with every device offline.
    let mut sim = sim.restart();
    let stats = status(&mut sim);
    assert_eq!(stats["online_devices"], json!(0));
    assert_eq!(stats["by_role"], json!({}));
}

#[test]
fn an_oversized_profile_stored_by_an_older_master_is_kept_without_its_free_form_fields() {
    let mut sim = Sim::new();
    sim.add_worker("old", 3);
    sim.leave("old");
    // As an older master, without the cap, would have stored it.
    let record = sim.db.devices.get_mut("old").expect("stored");
    record.profile.capabilities = Some(json!(["z".repeat(1 << 20)]));
    let stored = json_len(&record.profile);
    let mut sim = sim.restart();
    let device = &sim.core.registry.devices["old"];
    let size = json_len(&device.record.profile);
    assert!(size <= MAX_PROFILE_BYTES, "{size}");
    assert_eq!(
        device.record.profile.extra["profile_truncated_from_bytes"],
        json!(stored),
        "{:?}",
        device.record.profile
    );
    assert_eq!(
        device.record.profile.cpu_cores,
        Some(4),
        "what the master uses stays"
    );
    assert_eq!(device.record.slots, 3);
    // Stored again as shown, and listed like any other device.
    assert!(json_len(&sim.db.devices["old"].profile) <= MAX_PROFILE_BYTES);
    let (listed, _, _) = page(&mut sim, ListDevices::default());
    assert_eq!(ids(&listed), ["old"]);
    assert_eq!(sim.join("old", register(3)).field("success"), json!(true));
}
