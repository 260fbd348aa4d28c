//! Months in minutes: the soak rows (many jobs with logs through a stack whose retention
//! horizons are short; the database must stop growing, and throughput and pickup at the
//! end must be within 20 % of the start) and the backlog rows (pickup and throughput with
//! a large number of jobs already pending).

use crate::latency;
use crate::report::{Ratio, Row};
use crate::stack::{Bins, Server, Stack};
use crate::throughput::{raw_spawn_best, RAW_CONCURRENCY};
use crate::util;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Concurrent SubmitJob calls, as in the throughput row.
const SUBMIT_IN_FLIGHT: usize = 32;
/// Short horizons: logs are deleted a minute after their attempt finished (partitioned by
/// the minute, so whole partitions go), finished jobs after five (as in the defaults,
/// logs go before their jobs), and the leader runs retention every 2 s.
pub const SOAK_HORIZON: &str = "5m";
const SOAK_LOG_HORIZON: &str = "60s";
const SOAK_PARTITION: &str = "1m";
const SOAK_RETENTION_INTERVAL_MS: u64 = 2_000;

pub struct SoakParams {
    pub jobs: usize,
    pub waves: usize,
    /// Output of each job (a stamp line and 4 KiB lines).
    pub log_bytes: u64,
    /// Pickup samples after each wave, on the then idle stack.
    pub probes: usize,
}

/// One wave's figures.
struct Wave {
    rate: f64,
    pickup_p50: f64,
    pickup_p99: f64,
    /// The pickup samples themselves (ms), pooled across waves for the p99 row.
    pickups: Vec<f64>,
    db_bytes: i64,
    jobs_rows: i64,
    log_partitions: i64,
    at_s: f64,
}

/// Submits `specs`, waits until none of them is pending or running (retention may
/// already have deleted the first ones: only finished jobs are deleted), and fails if
/// any did not succeed. Returns the jobs per second from the first submit to the last end.
async fn run_wave(stack: &mut Stack, spec: &drover_proto::v1::JobSpec, n: usize) -> Result<f64> {
    // The stack runs nothing but the wave's jobs: those not yet succeeded are found through
    // the (state, created_at) index, without reading the wave's finished rows every poll.
    let since: f64 = stack
        .sql
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .await?
        .try_get(0)?;
    let t0 = Instant::now();
    let client = stack.jobs.clone();
    futures::stream::iter(0..n)
        .map(|_| {
            let mut c = client.clone();
            let s = spec.clone();
            async move { util::submit(&mut c, s).await.map(|_| ()) }
        })
        .buffer_unordered(SUBMIT_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let mut last = (usize::MAX, Instant::now());
    loop {
        let r = stack
            .sql
            .query_one(
                "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), \
                        count(*) FILTER (WHERE state IN ('permanent_failed', 'cancelled')) \
                   FROM jobs WHERE state IN ('pending', 'running', 'permanent_failed', 'cancelled') \
                    AND created_at >= to_timestamp($1)",
                &[&since],
            )
            .await
            .context("counting the wave's unfinished jobs")?;
        let (open, failed): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        if failed > 0 {
            bail!("{failed} soak jobs did not succeed");
        }
        if open == 0 {
            break;
        }
        let open = open as usize;
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            bail!("soak stalled with {open} of {n} jobs unfinished for 120 s");
        }
        // A wave lasts minutes: 200 ms between polls is well under 1 % of it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

async fn db_figures(stack: &Stack) -> Result<(i64, i64, i64)> {
    let r = stack
        .sql
        .query_one(
            "SELECT pg_database_size(current_database()), (SELECT count(*) FROM jobs), \
                    (SELECT count(*) FROM pg_inherits WHERE inhparent = 'log_chunks'::regclass)",
            &[],
        )
        .await
        .context("reading the database size")?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}

pub async fn soak(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    base_env: &[(&'static str, String)],
    p: &SoakParams,
) -> Result<(Vec<Row>, Value)> {
    let mut env = base_env.to_vec();
    for key in [
        "DROVER_RETENTION__SUCCEEDED",
        "DROVER_RETENTION__PERMANENT_FAILED",
        "DROVER_RETENTION__CANCELLED",
    ] {
        env.push((key, SOAK_HORIZON.into()));
    }
    env.push(("DROVER_RETENTION__LOGS", SOAK_LOG_HORIZON.into()));
    env.push(("DROVER_RETENTION__LOG_PARTITION", SOAK_PARTITION.into()));
    env.push((
        "DROVER_RETENTION_INTERVAL",
        format!("{SOAK_RETENTION_INTERVAL_MS}ms"),
    ));
    // As an operator running for months would: an event rule, so the outbox is read (and
    // its rows deleted) as it fills, and the audit log kept no longer than the jobs. The
    // rule's channel is never used: every soak job succeeds.
    let config = tmp.join("soak-coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "audit_retention = \"{SOAK_HORIZON}\"\n\
             [alerts.channels.soak]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/soak\"\n\
             secret = \"unused-soak-webhook-secret\"\n\
             [[alerts.rules]]\nname = \"soak-failed\"\nkind = \"permanent_failed\"\n\
             channel = \"soak\"\n"
        ),
    )
    .context("writing the soak's coordinator config")?;
    env.push(("DROVER_CONFIG", config.display().to_string()));
    let mut stack = Stack::start(server, bins, tmp, "soak", &env).await?;
    stack.add_worker("w1", 8, &[])?;
    stack.add_worker("w2", 8, &[])?;
    stack.wait_workers(&["w1", "w2"]).await?;

    let argv = vec![
        stack.bins.bench.display().to_string(),
        "spew".into(),
        p.log_bytes.to_string(),
    ];
    let spec = util::spec(argv, "");
    let waves = p.waves.max(2);
    let per_wave = (p.jobs / waves).max(1);
    say!(
        "[soak] {} jobs of {} B of output in {waves} waves; jobs and audit entries kept \
         {SOAK_HORIZON}, logs {SOAK_LOG_HORIZON} in partitions of {SOAK_PARTITION}; one \
         event rule",
        per_wave * waves,
        p.log_bytes
    );
    let t0 = Instant::now();
    let mut out: Vec<Wave> = Vec::with_capacity(waves);
    for i in 0..waves {
        let rate = run_wave(&mut stack, &spec, per_wave).await?;
        let (pickups, _) = latency::pickup_samples(&mut stack, p.probes, "soak", "").await?;
        let d = util::Dist::of(pickups.clone());
        let (db_bytes, jobs_rows, log_partitions) = db_figures(&stack).await?;
        say!(
            "[soak]   wave {} of {waves}: {rate:.0} jobs/s, pickup p50 {:.2} ms p99 {:.2} ms; \
             database {:.1} MiB, {jobs_rows} job rows, {log_partitions} log partitions",
            i + 1,
            d.p50,
            d.p99,
            db_bytes as f64 / 1048576.0
        );
        out.push(Wave {
            rate,
            pickup_p50: d.p50,
            pickup_p99: d.p99,
            pickups,
            db_bytes,
            jobs_rows,
            log_partitions,
            at_s: t0.elapsed().as_secs_f64(),
        });
    }
    stack.stop();
    let (first, last) = (&out[0], &out[out.len() - 1]);
    // Retention drops a log partition a minute, so the size after any one wave is a point
    // on a sawtooth (a million-job soak: 347, 518, 440 MiB after waves 2–4). A plateau means the
    // peaks stop rising: the largest size in the second half against the first half's.
    let half = out.len() / 2;
    let peak = |ws: &[Wave]| ws.iter().map(|w| w.db_bytes).max().unwrap_or(0);
    let (early_peak, late_peak) = (peak(&out[..half]), peak(&out[half..]));
    let max_size = early_peak.max(late_peak);
    // One wave's p99 is its fifth-largest sample, and moved between 5.4 and 9.5 ms from
    // wave to wave with no trend (retention and autovacuum run beside some probes): the
    // samples of the first and last quarter of the waves are pooled.
    let quarter = (out.len() / 4).max(1);
    let pooled = |ws: &[Wave]| {
        util::Dist::of(ws.iter().flat_map(|w| w.pickups.iter().copied()).collect()).p99
    };
    let (early_p99, late_p99) = (pooled(&out[..quarter]), pooled(&out[out.len() - quarter..]));
    let mib = |b: i64| b as f64 / 1048576.0;
    let rows = vec![
        Row {
            key: "soak_throughput",
            metric: format!(
                "soak: throughput of the last wave vs the first ({} jobs with logs; kept \
                 {SOAK_HORIZON}, logs {SOAK_LOG_HORIZON})",
                per_wave * waves
            ),
            drover: last.rate,
            unit: "jobs/s",
            machine: first.rate,
            machine_what: "first wave".into(),
            ratio: Ratio::Percent,
            target: "≥ 80 %".into(),
            ok: Some(last.rate >= 0.8 * first.rate),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "soak_pickup_p99",
            metric: format!(
                "soak: pickup p99 after the last {quarter} waves vs after the first {quarter} \
                 ({} samples each)",
                quarter * p.probes
            ),
            drover: late_p99,
            unit: "ms",
            machine: early_p99,
            machine_what: format!("after the first {quarter} waves"),
            ratio: Ratio::Times,
            target: "≤ 1.2×".into(),
            ok: Some(late_p99 <= 1.2 * early_p99),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "soak_db_size",
            metric: "soak: largest database size in the second half of the waves vs the first \
                     (plateau)"
                .into(),
            drover: mib(late_peak),
            unit: "MiB",
            machine: mib(early_peak),
            machine_what: "largest in the first half".into(),
            ratio: Ratio::Times,
            target: "≤ 1.2×".into(),
            ok: Some(late_peak as f64 <= 1.2 * early_peak as f64),
            median_by_ratio: false,
            runs: Vec::new(),
        },
    ];
    let details = json!({
        "jobs": per_wave * waves,
        "waves": waves,
        "log_bytes_per_job": p.log_bytes,
        "job_horizon": SOAK_HORIZON,
        "log_horizon": SOAK_LOG_HORIZON,
        "log_partition": SOAK_PARTITION,
        "max_db_bytes": max_size,
        "series": out.iter().map(|w| json!({
            "at_s": w.at_s,
            "jobs_per_s": w.rate,
            "pickup_p50_ms": w.pickup_p50,
            "pickup_p99_ms": w.pickup_p99,
            "db_bytes": w.db_bytes,
            "job_rows": w.jobs_rows,
            "log_partitions": w.log_partitions,
        })).collect::<Vec<_>>(),
    });
    Ok((rows, details))
}

/// Adds `n` pending `/bin/true` jobs to `queue` in bulk (SQL, as many submits would leave
/// them), copying one submitted job.
async fn add_backlog(stack: &mut Stack, queue: &str, n: i64) -> Result<()> {
    let template = util::submit(
        &mut stack.jobs,
        util::spec(vec!["/bin/true".into()], "backlog-template"),
    )
    .await?;
    let id: uuid::Uuid = template.id.parse().context("template job id")?;
    let mut done = 0i64;
    while done < n {
        let k = (n - done).min(50_000);
        stack
            .sql
            .execute(
                "INSERT INTO jobs SELECT r.* FROM jobs t, \
                   (SELECT gen_random_uuid() AS id FROM generate_series(1, $3::int8)) n, \
                   LATERAL jsonb_populate_record(NULL::jobs, to_jsonb(t) || jsonb_build_object( \
                     'id', n.id, 'queue', $2::text, 'created_at', now(), \
                     'updated_at', now(), 'not_before', now(), 'idempotency_key', NULL)) r \
                  WHERE t.id = $1",
                &[&id, &queue, &k],
            )
            .await
            .context("adding the backlog")?;
        done += k;
    }
    stack
        .sql
        .execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    stack.sql.batch_execute("ANALYZE jobs").await?;
    Ok(())
}

pub async fn backlog(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    base_env: &[(&'static str, String)],
    n: i64,
    probes: usize,
) -> Result<(Vec<Row>, Value)> {
    let mut stack = Stack::start(server, bins, tmp, "backlog", base_env).await?;
    say!("[backlog] adding {n} pending jobs to queue 'backlog'");
    add_backlog(&mut stack, "backlog", n).await?;
    stack.add_worker("w1", 8, &[])?;
    stack.add_worker("w2", 8, &[])?;
    stack.wait_workers(&["w1", "w2"]).await?;
    say!("[backlog] machine: spawn latency, {probes} samples");
    let raw = latency::raw_spawn_latency(&stack.bins.bench, probes).await?;
    say!("[backlog] pickup on another queue, {n} jobs pending, {probes} samples");
    let (pick, _) = latency::pickup(&mut stack, probes, "backlog").await?;
    say!("[backlog]   p50 {:.2} ms, p99 {:.2} ms", pick.p50, pick.p99);
    let spawn_n = (n as usize).clamp(500, 5_000);
    let (raw_rate, _, _) = raw_spawn_best(spawn_n, RAW_CONCURRENCY).await?;
    say!("[backlog] draining: 2 workers × 8 slots on queue 'backlog'");
    let t0_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    stack.add_worker("b1", 8, &["backlog"])?;
    stack.add_worker("b2", 8, &["backlog"])?;
    let mut last = (i64::MAX, Instant::now());
    let end_epoch = loop {
        let r = stack
            .sql
            .query_one(
                "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), \
                        count(*) FILTER (WHERE state IN ('permanent_failed', 'cancelled')), \
                        extract(epoch FROM max(finished_at))::float8 \
                   FROM jobs WHERE queue = 'backlog'",
                &[],
            )
            .await?;
        let (open, failed): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        if failed > 0 {
            bail!("{failed} backlog jobs did not succeed");
        }
        if open == 0 {
            break r.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN);
        }
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            bail!("backlog stalled with {open} of {n} jobs unfinished for 120 s");
        }
        // Seldom: each poll counts the whole backlog, CPU the drain itself would use.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // From the workers' start (their start-up is in the figure: a few hundred ms against
    // minutes) to the last job's end as stored, so the poll interval adds nothing.
    let rate = n as f64 / (end_epoch - t0_epoch);
    say!("[backlog]   {n} jobs drained at {rate:.0} jobs/s");
    stack.stop();
    let rows = vec![
        Row {
            key: "backlog_throughput",
            metric: format!("backlog: {n} pending /bin/true jobs drained (2 workers × 8 slots)"),
            drover: rate,
            unit: "jobs/s",
            machine: raw_rate,
            machine_what: format!("raw spawn+wait ({RAW_CONCURRENCY} at once)"),
            ratio: Ratio::Percent,
            target: "≥ 50 %".into(),
            ok: Some(rate / raw_rate >= 0.5),
            median_by_ratio: true,
            runs: Vec::new(),
        },
        Row {
            key: "backlog_pickup_p50",
            metric: format!("backlog: pickup p50 with {n} jobs pending (another queue)"),
            drover: pick.p50,
            unit: "ms",
            machine: raw.p50,
            machine_what: "raw spawn → started".into(),
            ratio: Ratio::Times,
            target: "< 5 ms".into(),
            ok: Some(pick.p50 < 5.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "backlog_pickup_p99",
            metric: format!("backlog: pickup p99 with {n} jobs pending (another queue)"),
            drover: pick.p99,
            unit: "ms",
            machine: raw.p99,
            machine_what: "raw spawn → started".into(),
            ratio: Ratio::Times,
            target: "< 25 ms".into(),
            ok: Some(pick.p99 < 25.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
    ];
    let details = json!({
        "pending": n,
        "drain_jobs_per_s": rate,
        "raw_spawn_per_s": raw_rate,
        "pickup_ms": pick.json(),
        "raw_spawn_to_started_ms": raw.json(),
    });
    Ok((rows, details))
}
