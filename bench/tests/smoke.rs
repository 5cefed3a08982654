//! CI's smoke run of the benchmark harness: every scenario at a tiny size,
//! against the binaries of this build (`cargo test --workspace` builds
//! `retire-master` and `retire-worker` next to `bench`). It checks that
//! each scenario runs and reports; it times nothing.

use std::process::Command;

#[test]
fn every_scenario_runs_at_a_small_size() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--smoke"])
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench all --smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let scenarios: Vec<String> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).expect("each JSON line parses");
            value["scenario"]
                .as_str()
                .expect("each JSON line names its scenario")
                .to_string()
        })
        .collect();
    assert_eq!(
        scenarios,
        [
            "throughput",
            "latency",
            "connections",
            "connections-ramp",
            "footprint",
            "scheduling",
            "listing",
            "attack",
            "history",
            "soak",
            "http",
            "prune"
        ],
        "{stdout}"
    );
}
