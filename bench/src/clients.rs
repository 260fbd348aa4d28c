//! Rows from a client's point of view: the SubmitJobs rate beside one SubmitJob per job,
//! and unary (GetJob) and pickup latency seen by a non-Rust client (Python grpcio).

use crate::report::{no_limit, Ratio, Row};
use crate::stack::Stack;
use crate::util::{self, Dist};
use anyhow::{anyhow, bail, Context, Result};
use drover_proto::v1 as pb;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Instant;

/// The Python client, embedded so the bench runs from any directory.
const PY_CLIENT: &str = include_str!("../python/client_latency.py");
/// The API it generates its stubs from, at run time, into a temporary directory.
const PROTO: &str = include_str!("../../proto/drover/v1/drover.proto");
/// Jobs per SubmitJobs call (the coordinator's limit).
const BATCH: usize = 1000;
/// A queue no worker takes: the submitted jobs only wait, and are deleted afterwards.
const PARKED: &str = "bench-parked";

async fn delete_parked(stack: &Stack) -> Result<()> {
    let ids = "SELECT id FROM jobs WHERE queue = 'bench-parked'";
    stack
        .sql
        .batch_execute(&format!(
            "DELETE FROM outbox WHERE job_id IN ({ids}); DELETE FROM jobs WHERE queue = '{PARKED}';"
        ))
        .await
        .context("deleting the parked jobs")?;
    Ok(())
}

/// Jobs per second submitted one SubmitJob at a time, and in SubmitJobs calls of 1000.
pub async fn batch_rate(stack: &mut Stack, n: usize) -> Result<(Vec<Row>, Value)> {
    let argv = vec!["true".to_string()];
    say!("[submit] {n} jobs, one SubmitJob each");
    let t = Instant::now();
    for _ in 0..n {
        util::submit(&mut stack.jobs, util::spec(argv.clone(), PARKED)).await?;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    delete_parked(stack).await?;
    say!("[submit]   {single:.0} jobs/s; now in SubmitJobs calls of {BATCH}");
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let k = BATCH.min(n - done);
        let specs = vec![util::spec(argv.clone(), PARKED); k];
        let r = stack
            .jobs
            .submit_jobs(pb::SubmitJobsRequest { specs })
            .await
            .map_err(|s| anyhow!("SubmitJobs: {}", s.message()))?
            .into_inner();
        if let Some(bad) = r.results.iter().find(|x| x.job.is_none()) {
            bail!("SubmitJobs refused a spec: {}", bad.error);
        }
        done += k;
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();
    delete_parked(stack).await?;
    say!("[submit]   {batched:.0} jobs/s in batches");
    let rows = vec![Row {
        key: "submit_batch_rate",
        metric: format!("SubmitJobs rate ({BATCH} a call) vs one SubmitJob a job"),
        drover: batched,
        unit: "jobs/s",
        machine: single,
        machine_what: "one SubmitJob a job, same run".into(),
        ratio: Ratio::Percent,
        target: "—".into(),
        ok: None,
        median_by_ratio: false,
        runs: Vec::new(),
    }];
    Ok((
        rows,
        json!({"jobs": n, "single_jobs_per_s": single, "batched_jobs_per_s": batched}),
    ))
}

/// Whether `python3` can import grpc and grpc_tools.
fn python_grpc() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools; print(grpc.__version__)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// GetJob and pickup latency from a Python grpcio client; None (with a message) when
/// python3 with grpcio and grpcio-tools is not installed.
pub async fn python_client(stack: &mut Stack, n: usize) -> Result<Option<(Vec<Row>, Value)>> {
    let Some(version) = python_grpc() else {
        say!(
            "[python] skipped: python3 cannot import grpc and grpc_tools \
             (pip install grpcio grpcio-tools to measure a non-Rust client)"
        );
        return Ok(None);
    };
    let dir = stack.dir.join("python-client");
    let proto_dir = dir.join("proto/drover/v1");
    std::fs::create_dir_all(&proto_dir)?;
    std::fs::write(proto_dir.join("drover.proto"), PROTO)?;
    let script = dir.join("client_latency.py");
    std::fs::write(&script, PY_CLIENT)?;
    let addr = stack
        .addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let stamp = serde_json::to_string(&[stack.bins.bench.display().to_string(), "stamp".into()])?;
    say!("[python] grpcio {version}: {n} submits (pickup) and {n} GetJob calls");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg("--proto-root")
        .arg(dir.join("proto"))
        .args(["--addr", &addr, "--stamp-argv", &stamp])
        .args(["--samples", &n.to_string()])
        .env("DROVER_TOKEN", &stack.admin_token)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running the Python client")?;
    if !out.status.success() {
        bail!(
            "the Python client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("the Python client's output")?;
    let list = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (get, pick) = (Dist::of(list("getjob_ms")), Dist::of(list("pickup_ms")));
    say!(
        "[python]   GetJob p50 {:.2} ms p99 {:.2} ms; pickup p50 {:.2} ms p99 {:.2} ms",
        get.p50,
        get.p99,
        pick.p50,
        pick.p99
    );
    let (nan, none) = no_limit("no machine figure for a client call");
    let row = |key, metric: &str, d: f64, target: &str, ok: Option<bool>| Row {
        key,
        metric: metric.into(),
        drover: d,
        unit: "ms",
        machine: nan,
        machine_what: none.clone(),
        ratio: Ratio::Times,
        target: target.into(),
        ok,
        median_by_ratio: false,
        runs: Vec::new(),
    };
    let rows = vec![
        row(
            "python_getjob_p50",
            "Python grpcio client: GetJob p50 (idle)",
            get.p50,
            "—",
            None,
        ),
        row(
            "python_getjob_p99",
            "Python grpcio client: GetJob p99 (idle)",
            get.p99,
            "< 5 ms",
            Some(get.p99 < 5.0),
        ),
        row(
            "python_pickup_p50",
            "Python grpcio client: pickup p50, submit returned → child started",
            pick.p50,
            "—",
            None,
        ),
        row(
            "python_pickup_p99",
            "Python grpcio client: pickup p99, submit returned → child started",
            pick.p99,
            "—",
            None,
        ),
    ];
    Ok(Some((
        rows,
        json!({"grpcio": version, "samples": n, "getjob_ms": get.json(), "pickup_ms": pick.json()}),
    )))
}
