//! Row 5: pickup latency with 1 k versus many finished jobs in the table, and the
//! coordinator's CPU with 200 simulated workers heartbeating. Runs on a stack of its own
//! so the small table really is small.

use crate::latency;
use crate::report::{no_limit, Ratio, Row};
use crate::stack::{Bins, Server, Stack};
use crate::util::{self, Dist};
use anyhow::{anyhow, Context, Result};
use drover_proto::v1 as pb;
use drover_proto::v1::session_request::Msg as Out;
use drover_proto::v1::session_response::Msg as In;
use drover_proto::v1::worker_service_client::WorkerServiceClient;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

const BATCH_JOBS: i64 = 50_000;
/// Real jobs are spread over this much history when they are copied to fill the table.
const HISTORY_DAYS: f64 = 90.0;
/// Logs older than this are deleted, as the coordinator's retention would (7 days).
const RETENTION_DAYS: i64 = 7;
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;
/// Queue of the jobs the simulated workers hold while they heartbeat.
const HB_QUEUE: &str = "bench-heartbeat";

pub struct Params {
    /// Real jobs run through the stack first (the small table).
    pub real: usize,
    pub big: i64,
    pub samples: usize,
    pub sessions: usize,
    pub window: Duration,
    pub repeats: usize,
}

/// A job like the operators': a few dozen lines of output; some fail once on a transient
/// error and are retried, some fail permanently.
fn real_spec(i: usize) -> pb::JobSpec {
    let script = match i % 10 {
        0 => r#"echo "usage: fetch DATE TYPES" >&2; exit 127"#,
        1 | 2 => {
            r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo "fetching"; echo "connection reset by peer" >&2; exit 1; fi
i=0; while [ $i -lt 20 ]; do echo "$i: stored 1234 rows for 2026-11-23 racecards, odds, results"; i=$((i+1)); done"#
        }
        _ => {
            r#"i=0; while [ $i -lt 20 ]; do echo "$i: stored 1234 rows for 2026-11-23 racecards, odds, results"; i=$((i+1)); done"#
        }
    };
    let mut s = util::spec(vec!["sh".into(), "-c".into(), script.into()], "");
    s.params.insert("date".into(), "2026-11-23".into());
    s.retry = Some(pb::RetryPolicy {
        initial_backoff: Some(drover_proto::durations::from_millis(100)),
        jitter: Some(0.0),
        ..Default::default()
    });
    s
}

/// Runs `n` real jobs through the stack until all are finished: real attempts (retries
/// included), log chunks and outbox events, written the way the coordinator writes them.
pub async fn run_real_jobs(stack: &mut Stack, n: usize) -> Result<()> {
    let client = stack.jobs.clone();
    futures::stream::iter(0..n)
        .map(|i| {
            let mut c = client.clone();
            async move { util::submit(&mut c, real_spec(i)).await }
        })
        .buffer_unordered(32)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let t0 = Instant::now();
    loop {
        let open: i64 = stack
            .sql
            .query_one(
                "SELECT count(*) FROM jobs WHERE queue = 'default' \
                    AND state NOT IN ('succeeded', 'permanent_failed', 'cancelled')",
                &[],
            )
            .await?
            .try_get(0)?;
        if open == 0 {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(anyhow!("{open} history jobs not finished after 30 min"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fills the table to `target` jobs with copies of the real history (every column of the
/// jobs, attempts, log chunks and outbox events, times moved back so the copies spread
/// over HISTORY_DAYS), then deletes the logs retention would have deleted and leaves the
/// dead tuples all this makes to autovacuum, as months of use would.
pub async fn copy_history(sql: &tokio_postgres::Client, target: i64) -> Result<()> {
    sql.batch_execute(
        "DROP TABLE IF EXISTS bench_template; \
         CREATE TEMP TABLE bench_template AS \
           SELECT id FROM jobs WHERE queue = 'default' \
              AND state IN ('succeeded', 'permanent_failed', 'cancelled')",
    )
    .await
    .context("choosing the history to copy")?;
    let template: i64 = sql
        .query_one("SELECT count(*) FROM bench_template", &[])
        .await?
        .try_get(0)?;
    let have = job_count(sql).await?;
    if template == 0 || have >= target {
        return Ok(());
    }
    let copies = (target - have + template - 1) / template;
    let step_s = HISTORY_DAYS * 86_400.0 / copies as f64;
    let per = (BATCH_JOBS / template).max(1);
    let mut lo = 1;
    while lo <= copies {
        let hi = (lo + per - 1).min(copies);
        let shift = "make_interval(secs => m.copy * $1::float8)";
        // Old id → new id for each copy, kept for the statements below. One transaction per
        // batch: the leader's retention deletes finished jobs older than its horizon, and
        // could otherwise delete a copied job before its attempts are copied.
        sql.batch_execute(&format!(
            "BEGIN; DROP TABLE IF EXISTS jm, am; \
             CREATE TEMP TABLE jm AS \
               SELECT t.id AS old, c AS copy, gen_random_uuid() AS new \
                 FROM bench_template t CROSS JOIN generate_series({lo}, {hi}) c; \
             CREATE TEMP TABLE am AS \
               SELECT a.id AS old, jm.copy, gen_random_uuid() AS new, jm.new AS job \
                 FROM attempts a JOIN jm ON a.job_id = jm.old;"
        ))
        .await
        .context("mapping copied ids")?;
        for (what, stmt) in [
            (
                "jobs",
                format!(
                    "INSERT INTO jobs SELECT r.* FROM jobs j JOIN jm m ON m.old = j.id, \
                     LATERAL jsonb_populate_record(NULL::jobs, to_jsonb(j) || jsonb_build_object( \
                       'id', m.new, 'idempotency_key', NULL, 'current_attempt_id', NULL, \
                       'original_job_id', NULL, 'retry_of', NULL, \
                       'created_at', j.created_at - {shift}, 'updated_at', j.updated_at - {shift}, \
                       'finished_at', j.finished_at - {shift}, 'not_before', j.not_before - {shift})) r"
                ),
            ),
            (
                "attempts",
                format!(
                    "INSERT INTO attempts SELECT r.* FROM attempts a JOIN am m ON m.old = a.id, \
                     LATERAL jsonb_populate_record(NULL::attempts, to_jsonb(a) || jsonb_build_object( \
                       'id', m.new, 'job_id', m.job, \
                       'started_at', a.started_at - {shift}, 'finished_at', a.finished_at - {shift}, \
                       'lease_expires_at', a.lease_expires_at - {shift})) r"
                ),
            ),
            (
                "current attempts",
                "UPDATE jobs j SET current_attempt_id = am.new, \
                        updated_at = o.updated_at - make_interval(secs => jm.copy * $1::float8) \
                   FROM jm, jobs o, am \
                  WHERE j.id = jm.new AND o.id = jm.old \
                    AND am.old = o.current_attempt_id AND am.copy = jm.copy"
                    .to_string(),
            ),
            (
                "log chunks",
                format!(
                    "INSERT INTO log_chunks (attempt_id, seq, stream, time, data, log_part) \
                     SELECT m.new, l.seq, l.stream, l.time - {shift}, l.data, l.log_part \
                       FROM log_chunks l JOIN am m ON m.old = l.attempt_id"
                ),
            ),
            (
                "outbox",
                format!(
                    "INSERT INTO outbox (job_id, event, payload, created_at) \
                     SELECT m.new, o.event, o.payload, o.created_at - {shift} \
                       FROM outbox o JOIN jm m ON m.old = o.job_id"
                ),
            ),
        ] {
            sql.execute(stmt.as_str(), &[&step_s])
                .await
                .with_context(|| format!("copying history: {what}"))?;
        }
        sql.batch_execute("COMMIT").await?;
        say!("[scale]   {} of {target} jobs", job_count(sql).await?);
        lo = hi + 1;
    }
    sql.batch_execute("DROP TABLE IF EXISTS jm, am, bench_template")
        .await?;
    // Retention, as the leader runs it: logs of attempts finished over 7 days ago go.
    let purged = sql
        .execute(
            &format!(
                "WITH old AS ( \
                   UPDATE attempts SET logs_purged_at = now(), log_kept_bytes = 0 \
                    WHERE logs_purged_at IS NULL AND finished_at IS NOT NULL \
                      AND finished_at < now() - interval '{RETENTION_DAYS} days' \
                   RETURNING id) \
                 DELETE FROM log_chunks l USING old WHERE l.attempt_id = old.id"
            ),
            &[],
        )
        .await
        .context("deleting expired logs")?;
    say!("[scale]   retention deleted {purged} log chunks; no VACUUM (autovacuum as configured)");
    Ok(())
}

pub async fn job_count(sql: &tokio_postgres::Client) -> Result<i64> {
    Ok(sql
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .try_get(0)?)
}

/// A host's resource report, as a real worker sends it with each heartbeat.
fn resources(attempt: Option<&str>, beat: u64) -> pb::HostResources {
    let jobs: Vec<pb::JobResources> = attempt
        .map(|a| pb::JobResources {
            attempt_id: a.to_string(),
            cpu_percent: 37.5,
            rss_bytes: 180 << 20,
            peak_rss_bytes: 240 << 20,
        })
        .into_iter()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::HostResources {
        sampled_at: Some(drover_proto::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        cpu_percent: 20.0 + (beat % 50) as f64,
        load1: 1.25,
        memory_used_bytes: 6 << 30,
        memory_total_bytes: 16 << 30,
        swap_used_bytes: 0,
        swap_total_bytes: 2 << 30,
        disk_free_bytes: 120 << 30,
        disk_total_bytes: 500 << 30,
        running_jobs: jobs.len() as u32,
        jobs,
    }
}

/// One simulated worker: a session with one slot on HB_QUEUE that takes one job, never
/// runs it, and heartbeats at the interval the coordinator asks for, naming that running
/// attempt and carrying a full resource report — as a busy real worker does.
async fn sim_worker(
    addr: String,
    token: String,
    id: String,
    beats: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    welcomed: tokio::sync::mpsc::Sender<Result<()>>,
) {
    let r = async {
        let ch = tonic::transport::Endpoint::from_shared(addr)?
            .connect()
            .await
            .context("connecting a simulated worker")?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hello = pb::Hello {
            worker_id: id,
            hostname: "bench".into(),
            queues: vec![HB_QUEUE.into()],
            slots: 1,
            free_slots: 1,
            version: "bench".into(),
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        };
        tx.send(pb::SessionRequest {
            msg: Some(Out::Hello(hello)),
        })
        .await
        .map_err(|_| anyhow!("session closed"))?;
        let bearer = drover_proto::auth::BearerToken::new(Some(&token)).map_err(|e| anyhow!(e))?;
        let mut inbound = WorkerServiceClient::with_interceptor(ch, bearer)
            .session(ReceiverStream::new(rx))
            .await
            .context("opening a simulated session")?
            .into_inner();
        let every = match inbound.message().await? {
            Some(pb::SessionResponse {
                msg: Some(In::Welcome(w)),
            }) => drover_proto::durations::or_zero(&w.heartbeat_interval)
                .max(Duration::from_millis(100)),
            other => return Err(anyhow!("expected a welcome, got {other:?}")),
        };
        Ok((tx, inbound, every))
    }
    .await;
    let (tx, mut inbound, every) = match r {
        Ok(x) => {
            let _ = welcomed.send(Ok(())).await;
            x
        }
        Err(e) => {
            let _ = welcomed.send(Err(e)).await;
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    let mut attempt: Option<String> = None;
    let mut n = 0u64;
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(pb::SessionResponse { msg: Some(In::Assign(a)) })) => {
                    if attempt.is_none() {
                        held.fetch_add(1, Ordering::Relaxed);
                    }
                    attempt = Some(a.attempt_id);
                }
                Ok(Some(_)) => {}
                _ => return,
            },
            _ = tick.tick() => {
                n += 1;
                let hb = pb::SessionRequest {
                    msg: Some(Out::Heartbeat(pb::Heartbeat {
                        running_attempts: attempt.iter().cloned().collect(),
                        resources: Some(resources(attempt.as_deref(), n)),
                        ..Default::default()
                    })),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
                beats.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Coordinator CPU (% of one core) while `n` simulated workers, each holding a running
/// attempt, heartbeat: one figure per `window`, `repeats` windows.
async fn heartbeat_cpu(
    stack: &mut Stack,
    n: usize,
    window: Duration,
    repeats: usize,
) -> Result<(Vec<f64>, Value)> {
    let beats = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    let (wtx, mut wrx) = tokio::sync::mpsc::channel(n);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(sim_worker(
                stack.addr.clone(),
                stack.worker_token.clone(),
                format!("bench-sim-{i:03}"),
                beats.clone(),
                held.clone(),
                wtx.clone(),
            ))
        })
        .collect();
    let _abort = AbortOnDrop(tasks);
    let t0 = Instant::now();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(60), wrx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(anyhow!("simulated workers ended early")),
            Err(_) => return Err(anyhow!("simulated workers not welcomed within 60 s")),
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    // One job per simulated worker: each holds a running attempt it heartbeats for.
    let spec = util::spec(vec!["sleep".into(), "1000".into()], HB_QUEUE);
    for _ in 0..n {
        util::submit(&mut stack.jobs, spec.clone()).await?;
    }
    let t1 = Instant::now();
    while (held.load(Ordering::Relaxed) as usize) < n {
        if t1.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!(
                "only {} of {n} simulated workers got a job within 60 s",
                held.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the connect and lease burst: measure the steady state.
    tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS)).await;
    let pid = stack.coordinator.pid();
    let (mut pcts, mut rates) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let (c0, b0, t0) = (
            util::cpu_seconds(pid)?,
            beats.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (c1, b1, secs) = (
            util::cpu_seconds(pid)?,
            beats.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        pcts.push((c1 - c0) / secs * 100.0);
        rates.push((b1 - b0) as f64 / secs);
    }
    let details = json!({
        "sessions": n,
        "running_attempts_held": held.load(Ordering::Relaxed),
        "connect_s": connect_s,
        "window_s": window.as_secs_f64(),
        "heartbeats_per_s": rates,
        "coordinator_cpu_percent": pcts,
    });
    Ok((pcts, details))
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Pickup p50 (ms) measured `repeats` times.
async fn pickup_runs(stack: &mut Stack, samples: usize, repeats: usize) -> Result<Vec<Dist>> {
    let mut out = Vec::new();
    for _ in 0..repeats {
        out.push(latency::pickup(stack, samples, "scale").await?.0);
    }
    Ok(out)
}

/// Returns one set of rows per repeat.
pub async fn run(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    env: &[(&'static str, String)],
    p: &Params,
) -> Result<(Vec<Vec<Row>>, Value)> {
    let mut stack = Stack::start(server, bins, tmp, "scale", env).await?;
    stack.add_worker("s1", 2, &[])?;
    stack.add_worker("s2", 8, &[])?;
    stack.wait_workers(&["s1", "s2"]).await?;

    say!(
        "[scale] {} real jobs (logs, retries, permanent failures)",
        p.real
    );
    run_real_jobs(&mut stack, p.real).await?;
    let small_rows = job_count(&stack.sql).await?;
    let small = pickup_runs(&mut stack, p.samples, p.repeats).await?;
    say!(
        "[scale]   pickup p50 {:?} ms at {small_rows} rows",
        small.iter().map(|d| d.p50).collect::<Vec<_>>()
    );

    say!("[scale] copying that history up to {} jobs", p.big);
    copy_history(&stack.sql, p.big).await?;
    let big_rows = job_count(&stack.sql).await?;
    let big = pickup_runs(&mut stack, p.samples, p.repeats).await?;
    say!(
        "[scale]   pickup p50 {:?} ms at {big_rows} rows",
        big.iter().map(|d| d.p50).collect::<Vec<_>>()
    );

    say!(
        "[scale] {} simulated workers, each with a running attempt, heartbeating every {} ms, \
         {} windows of {:.0} s",
        p.sessions,
        HEARTBEAT_INTERVAL_MS,
        p.repeats,
        p.window.as_secs_f64()
    );
    let (cpu, hb) = heartbeat_cpu(&mut stack, p.sessions, p.window, p.repeats).await?;
    say!("[scale]   coordinator CPU {cpu:.1?} % of one core");

    let one_core = no_limit("one core is 100 %");
    let runs = (0..p.repeats)
        .map(|i| {
            vec![
                Row {
                    key: "scale_pickup",
                    metric: format!(
                        "pickup p50 with {} jobs of real history in the table (vs {})",
                        short(big_rows),
                        short(small_rows)
                    ),
                    drover: big[i].p50,
                    unit: "ms",
                    machine: small[i].p50,
                    machine_what: format!(
                        "Drover at {} rows (not a machine limit)",
                        short(small_rows)
                    ),
                    ratio: Ratio::Times,
                    target: "≤ 2×".into(),
                    ok: Some(big[i].p50 <= 2.0 * small[i].p50),
                    median_by_ratio: true,
                    runs: Vec::new(),
                },
                Row {
                    key: "heartbeat_cpu",
                    metric: format!(
                        "coordinator CPU, {} workers with a running attempt each, heartbeating \
                         every {} s with resources",
                        p.sessions,
                        HEARTBEAT_INTERVAL_MS / 1000
                    ),
                    drover: cpu[i],
                    unit: "%",
                    machine: one_core.0,
                    machine_what: one_core.1.clone(),
                    ratio: Ratio::Percent,
                    target: "< 100 %".into(),
                    ok: Some(cpu[i] < 100.0),
                    median_by_ratio: false,
                    runs: Vec::new(),
                },
            ]
        })
        .collect();
    let details = json!({
        "real_jobs": p.real,
        "small_rows": small_rows,
        "big_rows": big_rows,
        "pickup_small_ms": small.iter().map(Dist::json).collect::<Vec<_>>(),
        "pickup_big_ms": big.iter().map(Dist::json).collect::<Vec<_>>(),
        "heartbeats": hb,
    });
    stack.stop();
    Ok((runs, details))
}

pub fn short(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
