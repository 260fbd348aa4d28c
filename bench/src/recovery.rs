//! Row 3: a dead worker's job runs again elsewhere (lease expiry), and a restarted worker's
//! orphaned attempt runs again at once (its hello says it runs nothing).

use crate::helpers::now_ns;
use crate::report::{no_limit, Ratio, Row};
use crate::stack::Stack;
use crate::util::{self, Dist};
use anyhow::{anyhow, bail, Result};
use drover_proto::v1 as pb;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const QUEUE: &str = "bench-recovery";
/// The coordinator's default lease settings (the bench sets them explicitly).
pub const LEASE_TTL_MS: u64 = 8_000;
pub const REAPER_INTERVAL_MS: u64 = 1_000;

/// Attempt 1 says it started and then sleeps for ever; attempt 2 stamps its start.
fn spec(bench: &str) -> pb::JobSpec {
    let script =
        r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo started; exec sleep 1000; fi; exec "$0" stamp"#;
    util::spec(
        vec!["sh".into(), "-c".into(), script.into(), bench.into()],
        QUEUE,
    )
}

/// Submits the job and waits until attempt 1's process has printed "started".
async fn start_sleeper(stack: &mut Stack) -> Result<(String, String)> {
    let job = util::submit(
        &mut stack.jobs,
        spec(&stack.bins.bench.display().to_string()),
    )
    .await?;
    let t0 = Instant::now();
    loop {
        // NOT_FOUND until the job is leased: a worker that just reconnected may not have
        // taken it yet.
        let out = match util::first_log_chunk(&mut stack.jobs, &job.id, 1).await {
            Ok(out) => out,
            Err(e)
                if e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::NotFound) =>
            {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if out.starts_with(b"started") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("recovery job {} did not start within 60 s", job.id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, attempts) = util::get(&mut stack.jobs, &job.id).await?;
    let worker = attempts
        .first()
        .map(|a| a.worker_id.clone())
        .ok_or_else(|| anyhow!("job {} runs but has no attempt", job.id))?;
    Ok((job.id, worker))
}

fn attempt(attempts: &[pb::Attempt], n: u32) -> Result<&pb::Attempt> {
    attempts
        .iter()
        .find(|a| a.number == n)
        .ok_or_else(|| anyhow!("attempt {n} missing"))
}

/// Runs the recovery measurements `repeats` times: one set of rows per run.
pub async fn run(
    stack: &mut Stack,
    raw_spawn: Dist,
    repeats: usize,
) -> Result<(Vec<Vec<Row>>, Value)> {
    stack.add_worker("r1", 1, &[QUEUE])?;
    stack.add_worker("r2", 1, &[QUEUE])?;
    stack.wait_workers(&["r1", "r2"]).await?;
    // A new leader waits one lease period before its first reap; measure after that.
    let ready = Duration::from_millis(LEASE_TTL_MS + REAPER_INTERVAL_MS + 1_000);
    if let Some(wait) = ready.checked_sub(stack.started.elapsed()) {
        say!(
            "[recovery] waiting {:.1} s for the leader's first reap",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
    }
    let (mut runs, mut details) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        say!("[recovery] run {} of {repeats}", i + 1);
        let (rows, d) = once(stack, &raw_spawn).await?;
        runs.push(rows);
        details.push(d);
    }
    Ok((runs, Value::Array(details)))
}

async fn once(stack: &mut Stack, raw_spawn: &Dist) -> Result<(Vec<Row>, Value)> {
    // 3a: SIGKILL the worker; the other one is idle and ready.
    let (job, victim) = start_sleeper(stack).await?;
    say!("[recovery] SIGKILL worker {victim} running job {job}; waiting for attempt 2");
    let t_kill = now_ns();
    stack.kill_worker(&victim)?;
    let (_, attempts) = util::wait_succeeded(
        &mut stack.jobs,
        &job,
        Duration::from_millis(500),
        Duration::from_millis(20),
        Duration::from_secs(60),
    )
    .await?;
    let started2 = util::stamp_of(&mut stack.jobs, &job, 2).await?;
    let lost_at = util::ts_ns(&attempt(&attempts, 1)?.finished_at)?;
    let dead_s = (started2 - t_kill) as f64 / 1e9;
    let dead_lost_s = (lost_at - t_kill) as f64 / 1e9;
    say!("[recovery]   kill → lost {dead_lost_s:.2} s, kill → attempt 2 started {dead_s:.2} s");
    // Its restart kills the sleeper it left behind.
    stack.restart_worker(&victim)?;
    stack.wait_workers(&["r1", "r2"]).await?;

    // 3b: SIGKILL and restart at once with the same id and state directory.
    let (job, victim) = start_sleeper(stack).await?;
    say!("[recovery] SIGKILL and restart worker {victim} running job {job}");
    stack.kill_worker(&victim)?;
    let t_restart = now_ns();
    stack.restart_worker(&victim)?;
    let (_, attempts) = util::wait_succeeded(
        &mut stack.jobs,
        &job,
        Duration::from_millis(20),
        Duration::from_millis(10),
        Duration::from_secs(60),
    )
    .await?;
    let started2 = util::stamp_of(&mut stack.jobs, &job, 2).await?;
    let a1 = attempt(&attempts, 1)?;
    let lost_at = util::ts_ns(&a1.finished_at)?;
    let restart_ms = util::ns_to_ms(started2 - t_restart);
    let reconnect_ms = util::ns_to_ms(started2 - lost_at);
    let restart_lost_ms = util::ns_to_ms(lost_at - t_restart);
    say!(
        "[recovery]   restart → orphan lost {restart_lost_ms:.1} ms, \
         lost → attempt 2 started {reconnect_ms:.1} ms ({})",
        a1.reason
    );
    let a2_worker = attempt(&attempts, 2)?.worker_id.clone();
    // Both workers ready for the next run.
    stack.wait_workers(&["r1", "r2"]).await?;
    let ttl_bound = no_limit(&format!(
        "bounded below by the lease TTL ({} s), a setting, not a machine limit",
        LEASE_TTL_MS / 1000
    ));

    let rows = vec![
        Row {
            key: "dead_worker",
            metric: "dead worker (SIGKILL): kill → attempt 2 started elsewhere".into(),
            drover: dead_s,
            unit: "s",
            machine: ttl_bound.0,
            machine_what: ttl_bound.1,
            ratio: Ratio::Times,
            target: "≤ 10 s".into(),
            ok: Some(dead_s <= 10.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "restarted_worker",
            metric: "restarted worker: reconnect (orphan lost) → attempt 2 started".into(),
            drover: reconnect_ms,
            unit: "ms",
            machine: raw_spawn.p50,
            machine_what: "raw spawn → started (p50)".into(),
            ratio: Ratio::Times,
            target: "< 1000 ms".into(),
            ok: Some(reconnect_ms < 1000.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "restarted_worker_total",
            metric: "restarted worker: process restart → attempt 2 started".into(),
            drover: restart_ms,
            unit: "ms",
            machine: raw_spawn.p50,
            machine_what: "raw spawn → started (p50)".into(),
            ratio: Ratio::Times,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
    ];
    let details = json!({
        "lease_ttl_ms": LEASE_TTL_MS,
        "dead_worker_kill_to_lost_s": dead_lost_s,
        "dead_worker_kill_to_started_s": dead_s,
        "restart_to_orphan_lost_ms": restart_lost_ms,
        "orphan_lost_to_started_ms": reconnect_ms,
        "restart_to_started_ms": restart_ms,
        "restarted_attempt2_worker": a2_worker,
    });
    Ok((rows, details))
}
