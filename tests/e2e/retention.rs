//! `retire prune --before DATE|AGE` on a real master: the finished tasks
//! that finished before the cutoff are deleted and counted per state, live
//! ones stay, and `status` follows.

use super::{setup, start_workers, stdout_of, submitted_id};
use tests::{retire, MasterProcess};

#[test]
fn retire_prune_deletes_finished_tasks_before_the_cutoff_and_keeps_live_ones() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let workers = start_workers(master.addr, &[("solo", 2)]);
    for code in [0, 0, 3] {
        let script = format!("exit {code}");
        let output = retire(
            master.addr,
            &["submit", "--json", "--wait", "--", "sh", "-c", &script],
        );
        assert_eq!(output.status.code(), Some(code), "{output:?}");
    }
    drop(workers);
    // Nobody runs this type: it stays queued.
    let live = submitted_id(&retire(
        master.addr,
        &["submit", "--json", "--type", "nobody-runs-this"],
    ));

    // Nothing finished more than an hour ago.
    let none = stdout_of(&retire(master.addr, &["prune", "--before", "1h"]));
    assert_eq!(none, "pruned 0 finished tasks\n");
    let all = stdout_of(&retire(master.addr, &["prune", "--before", "2100-01-01"]));
    assert_eq!(all, "pruned 3 finished tasks (completed 2, failed 1)\n");

    let status = stdout_of(&retire(master.addr, &["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON status");
    let tasks = &status["cluster_stats"]["tasks"];
    assert_eq!(
        (&tasks["completed"], &tasks["failed"], &tasks["queued"]),
        (&0.into(), &0.into(), &1.into()),
        "{status}"
    );
    let listed = stdout_of(&retire(master.addr, &["tasks"]));
    assert!(listed.contains(&live), "{listed}");
    assert_eq!(
        listed.lines().count(),
        2,
        "the header and the live task: {listed}"
    );
}
