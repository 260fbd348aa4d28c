//! The benchmark's quick mode as a smoke test: it must start its own stack, measure every
//! row and print the table. Its numbers are not checked here (no timing assertions in
//! tests); BENCHMARKS.md records a full run.

use drover_tests::bin;
use std::process::Command;

#[test]
fn quick_benchmark_completes_and_prints_every_row() {
    let out = Command::new(bin("drover-bench"))
        .arg("--quick")
        .output()
        .expect("running drover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drover-bench failed:\n{stderr}");
    for row in [
        "throughput",
        "pickup p50",
        "dead worker",
        "log rate",
        "finished jobs in the table",
        "heartbeating",
    ] {
        assert!(stdout.contains(row), "no {row:?} row in:\n{stdout}");
    }
}
