//! The benchmark's quick mode as a smoke test: it must start its own stack, measure every
//! row (each repeated) and print the table. Its numbers are not compared with targets here
//! (no timing assertions in tests); BENCHMARKS.md records a full run.

use drover_tests::bin;
use std::process::Command;

/// Every row the bench publishes, by key.
const ROWS: [&str; 18] = [
    "throughput",
    "throughput_ahead",
    "throughput_keys",
    "pickup_p50",
    "pickup_p99",
    "pickup_max",
    "pickup_sent_p50",
    "pickup_sent_p99",
    "dead_worker",
    "restarted_worker",
    "restarted_worker_total",
    "coordinator_failover",
    "primary_promotion",
    "log_rate",
    "log_rate_pg",
    "worker_peak_rss",
    "scale_pickup",
    "heartbeat_cpu",
];

/// Rows measured by the Python grpcio client, when python3 has it.
const PYTHON_ROWS: [&str; 4] = [
    "python_getjob_p50",
    "python_getjob_p99",
    "python_pickup_p50",
    "python_pickup_p99",
];

#[test]
fn quick_benchmark_completes_and_prints_every_row() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("bench.json");
    let out = Command::new(bin("drover-bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running drover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drover-bench failed:\n{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file"))
            .expect("valid JSON");
    let rows = doc["rows"].as_array().expect("rows");
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    let mut want: Vec<&str> = ROWS.to_vec();
    want.push("submit_batch_rate");
    // The Python client's rows need python3 with grpcio and grpcio-tools; without them
    // the bench says it skipped them.
    let python = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if python {
        want.extend(PYTHON_ROWS);
    } else {
        assert!(
            stderr.contains("[python] skipped: python3 cannot import grpc"),
            "no word of the skipped Python rows:\n{stderr}"
        );
    }
    assert_eq!(keys, want, "rows in the JSON");
    for r in rows {
        let key = r["key"].as_str().unwrap_or_default();
        let metric = r["metric"].as_str().unwrap_or_default();
        // Printed in the table.
        assert!(
            stdout.contains(metric),
            "{key}: {metric:?} not in:\n{stdout}"
        );
        // A finite figure (null is how a NaN or infinity is written).
        let drover = r["drover"].as_f64();
        assert!(drover.is_some_and(f64::is_finite), "{key}: drover {r}");
        // Repeated at least 3 times, each run finite, the median one of them.
        let runs: Vec<f64> = r["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        assert!(
            runs.len() >= 3 && runs.len() == r["runs"].as_array().map_or(0, Vec::len),
            "{key}: runs {r}"
        );
        assert!(runs.contains(&drover.unwrap_or(f64::NAN)), "{key}: {r}");
        // Beside a limit measured in the same run, or saying plainly there is none.
        let what = r["machine_what"].as_str().unwrap_or_default();
        match r["machine"].as_f64() {
            Some(m) => assert!(m.is_finite() && m > 0.0, "{key}: machine {r}"),
            None => assert!(
                what.starts_with("none: "),
                "{key}: no limit, unexplained: {r}"
            ),
        }
    }
}

/// The rows run only when named: the backlog and the soak, at a small size.
#[test]
fn backlog_and_soak_rows_complete_at_a_small_size() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("bench.json");
    let out = Command::new(bin("drover-bench"))
        .args(["--quick", "--only", "backlog,soak"])
        .args(["--backlog-jobs", "300", "--soak-jobs", "400"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running drover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drover-bench failed:\n{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file"))
            .expect("valid JSON");
    let rows = doc["rows"].as_array().expect("rows");
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(
        keys,
        [
            "backlog_throughput",
            "backlog_pickup_p50",
            "backlog_pickup_p99",
            "soak_throughput",
            "soak_pickup_p99",
            "soak_db_size"
        ]
    );
    for r in rows {
        let metric = r["metric"].as_str().unwrap_or_default();
        assert!(stdout.contains(metric), "{metric:?} not in:\n{stdout}");
        assert!(r["drover"].as_f64().is_some_and(f64::is_finite), "{r}");
        assert!(
            r["machine"]
                .as_f64()
                .is_some_and(|m| m.is_finite() && m > 0.0),
            "{r}"
        );
    }
    // The soak's series: a figure after every wave.
    let series = doc["details"]["soak"]["series"].as_array().expect("series");
    assert_eq!(series.len(), 4);
    assert!(series
        .iter()
        .all(|w| w["db_bytes"].as_i64().is_some_and(|b| b > 0)));
}
