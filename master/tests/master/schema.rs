//! A database written by the master of schema version 1 (the committed
//! fixture `tests/fixtures/schema-v1.db`: an enrolled device and tasks in
//! several states) opens with today's code, is migrated to the current
//! version and keeps its tasks, devices and device keys.

use master::store::{Store, StoreError, Synchronous, DB_FILE, SCHEMA_VERSION};
use protocol::TaskState;
use std::path::{Path, PathBuf};

/// A data dir holding a copy of the fixture (the committed file is never
/// opened in place: opening migrates it).
fn data_dir_with_fixture(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema-v1.db");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::copy(&fixture, data.join(DB_FILE)).expect("copy the fixture");
    data
}

fn auto_vacuum(data: &Path) -> i64 {
    rusqlite::Connection::open(data.join(DB_FILE))
        .and_then(|c| c.pragma_query_value(None, "auto_vacuum", |row| row.get(0)))
        .expect("read auto_vacuum")
}

#[test]
fn a_database_of_schema_1_opens_migrated_with_its_tasks_and_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir_with_fixture(dir.path());
    assert_eq!(
        auto_vacuum(&data),
        0,
        "the fixture predates incremental vacuum"
    );
    for open in ["first open, migrating", "second open"] {
        let store = Store::open(&data, Synchronous::Normal).expect(open);
        assert!(!store.created(), "{open}");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
        let (devices, tasks) = store.load().expect("load");
        let states: Vec<(&str, TaskState)> = tasks
            .iter()
            .map(|task| (task.task_id.as_str(), task.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("done-1", TaskState::Completed),
                ("done-2", TaskState::Completed),
                ("failed-1", TaskState::Failed),
                ("queued-1", TaskState::Queued),
                ("cancelled-1", TaskState::Cancelled),
                ("queued-2", TaskState::Queued),
            ],
            "{open}"
        );
        let done = &tasks[0];
        assert_eq!(
            done.result.as_ref().map(|result| &result["output"]),
            Some(&serde_json::json!("one")),
            "{open}"
        );
        assert_eq!(done.spec.task_type, "echo");
        let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, vec!["fixture-pi"], "{open}");
        let keys = store.load_device_keys().expect("keys");
        assert_eq!(keys.len(), 1, "{open}");
        assert_eq!(keys[0].device_id, "fixture-pi");
        assert!(keys[0].public_key.is_some() && keys[0].revoked_unix_ms.is_none());
        assert_eq!(store.quarantined().expect("quarantine"), Vec::new());
        assert_eq!(store.integrity_check().expect("check"), Ok(()));
    }
    assert_eq!(auto_vacuum(&data), 2, "migrated to incremental vacuum");
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir_with_fixture(dir.path());
    rusqlite::Connection::open(data.join(DB_FILE))
        .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
        .expect("a newer version");
    match Store::open(&data, Synchronous::Normal) {
        Err(StoreError::TooNew { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    assert_eq!(auto_vacuum(&data), 0, "nothing was migrated");
}

/// Schema 4 fills the finish time of the fixture's finished tasks from
/// their records: retention finds them by age (a task that finished
/// before the cutoff goes, one after stays), and never its live ones.
#[test]
fn the_finished_tasks_of_a_schema_1_database_are_pruned_by_their_age() {
    use master::store::retention::{Retention, PRUNE_BATCH};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir_with_fixture(dir.path());
    let mut store = Store::open(&data, Synchronous::Normal).expect("open");
    let (_, tasks) = store.load().expect("load");
    let finished: Vec<(String, TaskState, i64)> = tasks
        .iter()
        .filter(|task| task.state.is_terminal())
        .map(|task| {
            let at = task.finished_unix_ms.unwrap_or(task.submitted_unix_ms);
            (task.task_id.clone(), task.state, at)
        })
        .collect();
    assert_eq!(finished.len(), 4);
    let day = std::time::Duration::from_secs(24 * 3600);
    let retention = Retention {
        retention: day,
        retention_failed: day,
    };
    // A day after the first finished: nothing is a day old yet.
    let first = finished.iter().map(|(_, _, at)| *at).min().expect("one");
    let pruned = store
        .prune_batch(&retention, first + 86_400_000, PRUNE_BATCH)
        .expect("prune");
    assert_eq!(pruned.tasks, []);
    // Long after: every finished one goes, the queued ones stay.
    let last = finished.iter().map(|(_, _, at)| *at).max().expect("one");
    let pruned = store
        .prune_batch(&retention, last + 86_400_001, PRUNE_BATCH)
        .expect("prune");
    let mut expected: Vec<(String, TaskState)> = finished
        .into_iter()
        .map(|(id, state, _)| (id, state))
        .collect();
    let mut got = pruned.tasks;
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected);
    let (_, left) = store.load().expect("load");
    let left: Vec<&str> = left.iter().map(|task| task.task_id.as_str()).collect();
    assert_eq!(left, ["queued-1", "queued-2"]);
}
