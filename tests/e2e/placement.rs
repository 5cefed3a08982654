//! `retire strategy` on a real master: it shows the strategy in force (the
//! configured one at first), switches it with the admin token only, and
//! the switch outlives a restart of the master in the real store, over
//! the configuration. A real worker reports its CPU benchmark score.

use super::{setup, start_workers, stdout_of};
use tests::{bin, retire, MasterProcess};

#[test]
fn retire_strategy_switches_the_placement_and_the_switch_outlives_a_restart() {
    let dir = setup();
    let configured = ["--strategy", "weighted"];
    let master = MasterProcess::start_with(dir.path(), "127.0.0.1:0", &configured);
    let shown = stdout_of(&retire(master.addr, &["strategy"]));
    assert_eq!(shown, "placement strategy weighted\n");

    // Without the admin token (a reader from loopback) it may look, not switch.
    let anonymous = |args: &[&str]| {
        std::process::Command::new(bin("retire"))
            .env_remove("RETIRE_TOKEN")
            .arg("--master")
            .arg(master.addr.to_string())
            .args(args)
            .output()
            .expect("run retire")
    };
    let read = anonymous(&["strategy"]);
    assert_eq!(stdout_of(&read), "placement strategy weighted\n");
    let refused = anonymous(&["strategy", "random"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("(auth_required)"),
        "{refused:?}"
    );
    // A name that is no strategy is a usage error, sent nowhere.
    let wrong = retire(master.addr, &["strategy", "fastest"]);
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");

    let switched = stdout_of(&retire(master.addr, &["strategy", "round_robin"]));
    assert_eq!(switched, "placement strategy round_robin (was weighted)\n");
    let json = stdout_of(&retire(master.addr, &["--json", "strategy"]));
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["strategy"], "round_robin", "{json}");

    // A real worker measured its CPU and said so.
    let workers = start_workers(master.addr, &[("bench-pi", 1)]);
    let device = stdout_of(&retire(master.addr, &["--json", "device", "bench-pi"]));
    let device: serde_json::Value = serde_json::from_str(&device).expect("JSON");
    let score = &device["device"]["profile"]["hardware_specs"]["cpu_benchmark"];
    assert!(score.as_f64().is_some_and(|score| score > 0.0), "{device}");
    drop(workers);

    // The switch is in the database: a restart keeps it, over the flag.
    drop(master);
    let master = MasterProcess::start_with(dir.path(), "127.0.0.1:0", &configured);
    let shown = stdout_of(&retire(master.addr, &["strategy"]));
    assert_eq!(shown, "placement strategy round_robin\n");
}
