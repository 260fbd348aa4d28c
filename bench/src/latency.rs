//! Row 2: pickup latency on an idle stack (submit → child process started), beside the
//! machine's own spawn latency for the same helper program.

use crate::helpers::now_ns;
use crate::report::{Ratio, Row};
use crate::stack::Stack;
use crate::util::{self, Dist};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Pause between samples, so each one starts on an idle stack.
const IDLE: Duration = Duration::from_millis(20);

/// Pickup latencies in ms: (submit returned → child started, submit sent → child started).
pub async fn pickup(stack: &mut Stack, n: usize, what: &str) -> Result<(Dist, Dist)> {
    pickup_on(stack, n, what, "").await
}

/// [`pickup`] of jobs in `queue` ("": the default queue).
pub async fn pickup_on(
    stack: &mut Stack,
    n: usize,
    what: &str,
    queue: &str,
) -> Result<(Dist, Dist)> {
    let (returned, sent) = pickup_samples(stack, n, what, queue).await?;
    Ok((Dist::of(returned), Dist::of(sent)))
}

/// The samples of [`pickup_on`] (ms, in the order taken): submit returned → started, and
/// submit sent → started.
pub async fn pickup_samples(
    stack: &mut Stack,
    n: usize,
    what: &str,
    queue: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let argv = vec![stack.bins.bench.display().to_string(), "stamp".into()];
    let spec = util::spec(argv, queue);
    let (mut returned, mut sent) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t_sent = now_ns();
        let job = util::submit(&mut stack.jobs, spec.clone()).await?;
        let t_returned = now_ns();
        // The first look comes after a typical pickup, so polling does not compete with it.
        util::wait_succeeded(
            &mut stack.jobs,
            &job.id,
            Duration::from_millis(10),
            Duration::from_millis(5),
            Duration::from_secs(60),
        )
        .await?;
        let stamp = util::stamp_of(&mut stack.jobs, &job.id, 1).await?;
        returned.push(util::ns_to_ms(stamp - t_returned));
        sent.push(util::ns_to_ms(stamp - t_sent));
        if n >= 10 && (i + 1) % (n / 10) == 0 {
            say!("[{what}]   {} of {n} samples", i + 1);
        }
        tokio::time::sleep(IDLE).await;
    }
    Ok((returned, sent))
}

/// The machine's spawn latency: spawn → the helper's own stamp, in ms.
pub async fn raw_spawn_latency(bench: &Path, n: usize) -> Result<Dist> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = now_ns();
        let mut child = tokio::process::Command::new(bench)
            .arg("stamp")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {} stamp", bench.display()))?;
        let mut out = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_end(&mut out).await?;
        }
        child.wait().await?;
        v.push(util::ns_to_ms(util::parse_stamp(&out)? - t0));
        tokio::time::sleep(IDLE).await;
    }
    Ok(Dist::of(v))
}

pub async fn run(stack: &mut Stack, n: usize) -> Result<(Vec<Row>, Value, Dist)> {
    say!("[latency] machine: spawn → child started, {n} samples");
    let raw = raw_spawn_latency(&stack.bins.bench, n).await?;
    say!("[latency]   p50 {:.2} ms, p99 {:.2} ms", raw.p50, raw.p99);
    say!("[latency] drover: submit → child started, {n} samples, one at a time");
    let (ret, sent) = pickup(stack, n, "latency").await?;
    say!(
        "[latency]   submit returned → started: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ret.p50,
        ret.p99,
        ret.max
    );
    let raw_what = "raw spawn → started".to_string();
    let rows = vec![
        Row {
            key: "pickup_p50",
            metric: "pickup p50: submit returned → child started (idle)".into(),
            drover: ret.p50,
            unit: "ms",
            machine: raw.p50,
            machine_what: raw_what.clone(),
            ratio: Ratio::Times,
            target: "< 5 ms".into(),
            ok: Some(ret.p50 < 5.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "pickup_p99",
            metric: "pickup p99: submit returned → child started (idle)".into(),
            drover: ret.p99,
            unit: "ms",
            machine: raw.p99,
            machine_what: raw_what.clone(),
            ratio: Ratio::Times,
            target: "< 25 ms".into(),
            ok: Some(ret.p99 < 25.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "pickup_max",
            metric: "pickup max: submit returned → child started (idle)".into(),
            drover: ret.max,
            unit: "ms",
            machine: raw.max,
            machine_what: raw_what.clone(),
            ratio: Ratio::Times,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "pickup_sent_p50",
            metric: "pickup p50: submit sent → child started (idle)".into(),
            drover: sent.p50,
            unit: "ms",
            machine: raw.p50,
            machine_what: raw_what.clone(),
            ratio: Ratio::Times,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "pickup_sent_p99",
            metric: "pickup p99: submit sent → child started (idle)".into(),
            drover: sent.p99,
            unit: "ms",
            machine: raw.p99,
            machine_what: raw_what,
            ratio: Ratio::Times,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
    ];
    let details = json!({
        "samples": n,
        "submit_returned_to_started_ms": ret.json(),
        "submit_sent_to_started_ms": sent.json(),
        "raw_spawn_to_started_ms": raw.json(),
    });
    Ok((rows, details, raw))
}
