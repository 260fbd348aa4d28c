//! Row 4: rate at which one job's stdout is stored (job start → job succeeded, which the
//! coordinator records only once every chunk is stored), beside the same program writing
//! to /dev/null and beside what PostgreSQL itself can write (a COPY of the same bytes into
//! a table shaped like the log's, in the same run); and the worker's peak memory.

use crate::report::{no_limit, Ratio, Row};
use crate::stack::Stack;
use crate::util;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// Rows of the write-limit COPY: the worker's largest log frame.
const COPY_ROW: usize = 64 << 10;
/// Rows per transaction: one commit per 2 MiB, as the worker's largest AppendLogs batch.
const COPY_ROWS_PER_TX: usize = 32;

/// PostgreSQL's own durable write rate for log-shaped rows: `bytes` of incompressible
/// text in 64 KiB rows, `COPY ... FROM STDIN BINARY` into a scratch table with the log
/// table's columns, indexes and compression, one commit per 2 MiB. MB/s.
async fn pg_write_limit(sql: &mut tokio_postgres::Client, bytes: u64) -> Result<f64> {
    sql.batch_execute(
        "DROP TABLE IF EXISTS bench_copy_limit; \
         CREATE TABLE bench_copy_limit (LIKE log_chunks INCLUDING ALL)",
    )
    .await
    .context("creating the write-limit table")?;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let pool: Vec<u8> = (0..2 * COPY_ROW)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x >> 58) as usize]
        })
        .collect();
    let types = [
        Type::UUID,
        Type::INT8,
        Type::INT2,
        Type::TIMESTAMPTZ,
        Type::BYTEA,
        Type::TIMESTAMPTZ,
    ];
    let attempt = uuid::Uuid::new_v4();
    let part = SystemTime::now();
    let (mut seq, mut left) = (0i64, bytes);
    let t0 = Instant::now();
    while left > 0 {
        let tx = sql.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY bench_copy_limit (attempt_id, seq, stream, time, data, log_part) \
                 FROM STDIN BINARY",
            )
            .await?;
        let mut w = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        for _ in 0..COPY_ROWS_PER_TX {
            if left == 0 {
                break;
            }
            let n = left.min(COPY_ROW as u64) as usize;
            let off = (seq as usize).wrapping_mul(7919) % COPY_ROW;
            let data: &[u8] = &pool[off..off + n];
            w.as_mut()
                .write(&[&attempt, &seq, &1i16, &SystemTime::now(), &data, &part])
                .await?;
            seq += 1;
            left -= n as u64;
        }
        w.finish().await?;
        tx.commit().await?;
    }
    let rate = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();
    sql.batch_execute("DROP TABLE bench_copy_limit").await?;
    Ok(rate)
}

pub async fn run(stack: &mut Stack, bytes: u64) -> Result<(Vec<Row>, Value)> {
    let mb = bytes as f64 / 1e6;
    say!("[logs] machine: the helper writing {mb:.0} MB to /dev/null");
    let t0 = Instant::now();
    let st = tokio::process::Command::new(&stack.bins.bench)
        .arg("spew")
        .arg(bytes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create("/dev/null").context("opening /dev/null")?,
        ))
        .status()
        .await
        .context("running the spew helper")?;
    if !st.success() {
        bail!("spew helper exited with {st}");
    }
    let raw = mb / t0.elapsed().as_secs_f64();
    say!("[logs]   {raw:.0} MB/s");
    say!("[logs] machine: PostgreSQL writing {mb:.0} MB (COPY BINARY, 64 KiB rows, commit per 2 MiB)");
    let pg = pg_write_limit(&mut stack.sql, bytes).await?;
    say!("[logs]   {pg:.0} MB/s");

    let cpu0 = stack.cpu()?;
    let wall0 = Instant::now();
    say!("[logs] drover: one job writing {mb:.0} MB of 4 KiB lines");
    let argv = vec![
        stack.bins.bench.display().to_string(),
        "spew".into(),
        bytes.to_string(),
    ];
    let job = util::submit(&mut stack.jobs, util::spec(argv, "")).await?;
    let (job, attempts) = util::wait_succeeded(
        &mut stack.jobs,
        &job.id,
        Duration::from_millis(100),
        Duration::from_millis(20),
        Duration::from_secs(3600),
    )
    .await?;
    let cpu = util::cpu_delta(&cpu0, &stack.cpu()?, wall0.elapsed().as_secs_f64());
    let a = attempts
        .first()
        .ok_or_else(|| anyhow!("log job {} has no attempt", job.id))?;
    if a.log_bytes != bytes || a.log_dropped_bytes != 0 {
        bail!(
            "log job {}: {} bytes received, {} dropped; expected all {bytes} stored",
            job.id,
            a.log_bytes,
            a.log_dropped_bytes
        );
    }
    let started = util::stamp_of(&mut stack.jobs, &job.id, 1).await?;
    let finished = util::ts_ns(&job.finished_at)?;
    let secs = (finished - started) as f64 / 1e9;
    let rate = mb / secs;
    let worker_pid = stack.worker_pid(&a.worker_id)?;
    let hwm_mib = util::status_kib(worker_pid, "VmHWM")? as f64 / 1024.0;
    let mem_mib = crate::report::Machine::local().mem_gib * 1024.0;
    say!(
        "[logs]   {rate:.0} MB/s ({secs:.2} s); worker {} peak RSS {hwm_mib:.0} MiB",
        a.worker_id
    );

    let rows = vec![
        Row {
            key: "log_rate",
            metric: format!("log rate: one job, {mb:.0} MB of stdout, start → all stored"),
            drover: rate,
            unit: "MB/s",
            machine: raw,
            machine_what: "same program → /dev/null".into(),
            ratio: Ratio::Percent,
            target: "≥ 100 MB/s".into(),
            ok: Some(rate >= 100.0),
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "log_rate_pg",
            metric: "log rate beside PostgreSQL's write limit (same bytes, same run)".into(),
            drover: rate,
            unit: "MB/s",
            machine: pg,
            machine_what: "COPY BINARY, 64 KiB rows, commit per 2 MiB".into(),
            ratio: Ratio::Percent,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
        Row {
            key: "worker_peak_rss",
            metric: "worker peak RSS (VmHWM) after the log job".into(),
            drover: hwm_mib,
            unit: "MiB",
            machine: no_limit(&format!("for scale, the machine has {mem_mib:.0} MiB")).0,
            machine_what: no_limit(&format!("for scale, the machine has {mem_mib:.0} MiB")).1,
            ratio: Ratio::Percent,
            target: "—".into(),
            ok: None,
            median_by_ratio: false,
            runs: Vec::new(),
        },
    ];
    let details = json!({
        "bytes": bytes,
        "seconds": secs,
        "mb_per_s": rate,
        "dev_null_mb_per_s": raw,
        "postgres_copy_mb_per_s": pg,
        "worker": a.worker_id,
        "worker_peak_rss_mib": hwm_mib,
        "cpu_seconds": cpu,
    });
    Ok((rows, details))
}
