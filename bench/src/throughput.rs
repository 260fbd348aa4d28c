//! Row 1: end-to-end throughput of `/bin/true` jobs beside the machine's raw
//! spawn-and-wait rate.

use crate::helpers::now_ns;
use crate::report::{Ratio, Row};
use crate::stack::Stack;
use crate::util;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::cell::Cell;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Concurrent SubmitJob calls.
const SUBMIT_IN_FLIGHT: usize = 32;
/// Concurrency of the raw spawn loop: the stack's total slots (2 workers × 8).
pub const RAW_CONCURRENCY: usize = 16;

/// Spawn-and-wait of `/bin/true` from `conc` OS threads, each spawning and waiting in a
/// loop (blocking calls, so the kernel runs the spawners on every core): jobs/s.
fn raw_spawn_rate_threads(n: usize, conc: usize) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let spawners: Vec<_> = (0..conc)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let st = std::process::Command::new("/bin/true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .context("spawning /bin/true")?;
                        if !st.success() {
                            bail!("/bin/true exited with {st}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for s in spawners {
            s.join()
                .map_err(|_| anyhow::anyhow!("a spawner thread panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// The machine's best spawn-and-wait rate for `/bin/true`, `conc` at a time: the faster
/// of a thread per spawner and async spawns on the bench's runtime. Returns (best,
/// threads, async) in jobs/s.
pub async fn raw_spawn_best(n: usize, conc: usize) -> Result<(f64, f64, f64)> {
    let threads = tokio::task::spawn_blocking(move || raw_spawn_rate_threads(n, conc)).await??;
    let on_runtime = raw_spawn_rate(n, conc).await?;
    Ok((threads.max(on_runtime), threads, on_runtime))
}

/// Spawn-and-wait of `/bin/true` from a plain tokio loop, `conc` at a time: jobs/s.
pub async fn raw_spawn_rate(n: usize, conc: usize) -> Result<f64> {
    let next = Cell::new(0usize);
    let t0 = Instant::now();
    let loops = (0..conc).map(|_| async {
        while next.get() < n {
            next.set(next.get() + 1);
            let st = tokio::process::Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .context("spawning /bin/true")?;
            if !st.success() {
                bail!("/bin/true exited with {st}");
            }
        }
        Ok(())
    });
    futures::future::try_join_all(loops).await?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// The limit each concurrency key gets in the keyed run: with more keys than slots it
/// rarely binds, so the row measures what the keys' bookkeeping costs the claim.
const KEY_LIMIT: u32 = 2;

/// Jobs each worker of the lease-ahead row may hold beyond its 8 slots.
pub const LEASE_AHEAD: u32 = 8;

/// `keys` = 0: plain jobs. Otherwise job i carries concurrency key `site:{i % keys}`.
pub async fn run(stack: &mut Stack, n: usize, keys: usize) -> Result<(Vec<Row>, Value)> {
    run_with(stack, n, keys, 0).await
}

/// [`run`] on a stack whose workers were started with `lease_ahead` (for the row's name).
pub async fn run_with(
    stack: &mut Stack,
    n: usize,
    keys: usize,
    lease_ahead: u32,
) -> Result<(Vec<Row>, Value)> {
    say!("[throughput] raw spawn-and-wait of /bin/true, {n} × at {RAW_CONCURRENCY} concurrent");
    let (raw, raw_threads, raw_async) = raw_spawn_best(n, RAW_CONCURRENCY).await?;
    say!(
        "[throughput]   {raw_threads:.0}/s from {RAW_CONCURRENCY} threads, {raw_async:.0}/s async"
    );

    // Earlier runs' jobs stay in the table (as they would in use); count only this run's.
    let since: f64 = stack
        .sql
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await?
        .try_get(0)?;

    say!(
        "[throughput] submitting {n} /bin/true jobs, {SUBMIT_IN_FLIGHT} in flight, {keys} concurrency keys"
    );
    let spec = util::spec(vec!["/bin/true".into()], "");
    let cpu0 = stack.cpu()?;
    let start_ns = now_ns();
    let t0 = Instant::now();
    let client = stack.jobs.clone();
    futures::stream::iter(0..n)
        .map(|i| {
            let mut c = client.clone();
            let mut s = spec.clone();
            if keys > 0 {
                s.concurrency_keys = vec![format!("site:{}", i % keys)];
                s.concurrency_limit = KEY_LIMIT;
            }
            async move { util::submit(&mut c, s).await }
        })
        .buffer_unordered(SUBMIT_IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let submit_secs = t0.elapsed().as_secs_f64();
    say!(
        "[throughput]   submitted in {submit_secs:.2} s ({:.0}/s); waiting for all to succeed",
        n as f64 / submit_secs
    );

    let mut last = (0i64, Instant::now());
    let end_epoch = loop {
        let r = stack
            .sql
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'), \
                        count(*) FILTER (WHERE state IN ('permanent_failed', 'cancelled')), \
                        extract(epoch FROM max(finished_at))::float8 \
                   FROM jobs WHERE created_at >= to_timestamp($1)",
                &[&since],
            )
            .await
            .context("counting finished jobs")?;
        let (ok, failed): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        if failed > 0 {
            let reason: String = stack
                .sql
                .query_one(
                    "SELECT reason FROM jobs WHERE state IN ('permanent_failed', 'cancelled') \
                        AND created_at >= to_timestamp($1) LIMIT 1",
                    &[&since],
                )
                .await?
                .try_get(0)?;
            bail!("{failed} throughput jobs failed, e.g.: {reason}");
        }
        if ok as usize >= n {
            break r.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN);
        }
        if ok != last.0 {
            last = (ok, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            bail!("throughput stalled at {ok} of {n} jobs succeeded for 120 s");
        }
        // The end time comes from max(finished_at), so polling seldom loses no precision;
        // each poll counts this run's rows, which PostgreSQL would otherwise spend the
        // stack's CPU on (every 100 ms it was ~15 % of one core).
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let cpu = util::cpu_delta(&cpu0, &stack.cpu()?, t0.elapsed().as_secs_f64());
    let elapsed = end_epoch - start_ns as f64 / 1e9;
    let rate = n as f64 / elapsed;
    // How busy the CPUs were from the first submit to the last job's end (the window the
    // CPU figures cover runs to the next poll, up to a second later, and is mostly idle
    // there): a run well short of 100 % lacked jobs in flight rather than CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let busy = cpu["machine"]
        .as_f64()
        .map(|m| (m / (elapsed * cpus)).min(1.0));
    let busy_text = busy.map_or(String::new(), |b| format!(", CPUs {:.0} % busy", b * 100.0));
    say!("[throughput]   {n} jobs in {elapsed:.2} s: {rate:.0} jobs/s{busy_text}");
    // Attempts handed back unstarted (a job leased ahead that found no slot in time, or
    // any other release): each is a second lease of the same job, so they are shown.
    let released: i64 = stack
        .sql
        .query_one(
            "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id \
              WHERE a.state = 'released' AND j.created_at >= to_timestamp($1)",
            &[&since],
        )
        .await?
        .try_get(0)?;
    if released > 0 {
        say!("[throughput]   {released} attempts were handed back unstarted (released)");
    }

    let row = Row {
        key: if keys > 0 {
            "throughput_keys"
        } else if lease_ahead > 0 {
            "throughput_ahead"
        } else {
            "throughput"
        },
        metric: if keys > 0 {
            format!(
                "throughput with {keys} concurrency keys (limit {KEY_LIMIT} each): {n} /bin/true jobs"
            )
        } else if lease_ahead > 0 {
            format!(
                "throughput, workers leasing ahead (lease_ahead {lease_ahead}): {n} /bin/true jobs (2 workers × 8 slots)"
            )
        } else {
            format!("throughput: {n} /bin/true jobs, submit → succeeded (2 workers × 8 slots)")
        },
        drover: rate,
        unit: "jobs/s",
        machine: raw,
        machine_what: format!("raw spawn+wait ({RAW_CONCURRENCY} at once, best of threads/async)"),
        ratio: Ratio::Percent,
        target: "≥ 50 %".into(),
        ok: Some(rate / raw >= 0.5),
        median_by_ratio: true,
        runs: Vec::new(),
    };
    let details = json!({
        "jobs": n,
        "concurrency_keys": keys,
        "lease_ahead": lease_ahead,
        "elapsed_s": elapsed,
        "jobs_per_s": rate,
        "raw_spawn_per_s": raw,
        "raw_spawn_threads_per_s": raw_threads,
        "raw_spawn_async_per_s": raw_async,
        "submit_s": submit_secs,
        "submit_per_s": n as f64 / submit_secs,
        "cpu_seconds": cpu,
        "cpus_busy_share": busy,
        "released_attempts": released,
    });
    Ok((vec![row], details))
}
