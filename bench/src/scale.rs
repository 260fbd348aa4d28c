//! Row 5: pickup latency with 1 k versus many finished jobs in the table, and the
//! coordinator's CPU with 200 simulated workers heartbeating. Runs on a stack of its own
//! so the small table really is small.

use crate::latency;
use crate::report::{Ratio, Row};
use crate::stack::{Bins, Server, Stack};
use crate::util;
use anyhow::{anyhow, Context, Result};
use drover_proto::v1 as pb;
use drover_proto::v1::coordinator_message::Msg as In;
use drover_proto::v1::worker_message::Msg as Out;
use drover_proto::v1::worker_service_client::WorkerServiceClient;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

const SMALL: i64 = 1_000;
const BATCH: i64 = 100_000;
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;

pub struct Params {
    pub big: i64,
    pub samples: usize,
    pub sessions: usize,
    pub window: Duration,
}

/// Adds `n` finished jobs, each with one succeeded attempt, as months of use would leave.
async fn add_history(sql: &tokio_postgres::Client, n: i64) -> Result<()> {
    let mut done = 0;
    while done < n {
        let k = (n - done).min(BATCH) as i32;
        sql.execute(
            "WITH j AS ( \
                INSERT INTO jobs (id, queue, state, argv, retry_policy, attempt_count, \
                                  not_before, created_at, updated_at, finished_at, reason) \
                SELECT gen_random_uuid(), 'default', 'succeeded', ARRAY['/bin/true'], \
                       '{}'::jsonb, 1, t, t, t, t, 'exit code 0' \
                  FROM (SELECT now() - make_interval(secs => g) AS t \
                          FROM generate_series(1, $1::int) g) s \
                RETURNING id, created_at, finished_at) \
             INSERT INTO attempts (id, job_id, number, worker_id, state, started_at, \
                                   lease_expires_at, finished_at, exit_code) \
             SELECT gen_random_uuid(), id, 1, 'bench-history', 'succeeded', created_at, \
                    created_at, finished_at, 0 FROM j",
            &[&k],
        )
        .await
        .context("inserting finished jobs")?;
        done += i64::from(k);
        if n > BATCH {
            say!("[scale]   {done} of {n} rows");
        }
    }
    // Vacuum now so autovacuum does not start in the middle of the measurement.
    sql.batch_execute("VACUUM (ANALYZE) jobs, attempts")
        .await
        .context("VACUUM ANALYZE")?;
    Ok(())
}

async fn job_count(sql: &tokio_postgres::Client) -> Result<i64> {
    Ok(sql
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .try_get(0)?)
}

/// One simulated worker: a session with no free slot on a queue nobody uses, heartbeating
/// at the interval the coordinator asks for.
async fn sim_worker(
    addr: String,
    token: String,
    id: String,
    beats: Arc<AtomicU64>,
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
            queues: vec!["bench-idle".into()],
            slots: 1,
            free_slots: 1,
            version: "bench".into(),
            ..Default::default()
        };
        tx.send(pb::WorkerMessage {
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
            Some(pb::CoordinatorMessage {
                msg: Some(In::Welcome(w)),
            }) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
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
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(_)) => {}
                _ => return,
            },
            _ = tick.tick() => {
                let hb = pb::WorkerMessage {
                    msg: Some(Out::Heartbeat(pb::Heartbeat { running_attempts: Vec::new(), ..Default::default() })),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
                beats.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Coordinator CPU (% of one core) while `n` simulated workers heartbeat for `window`.
async fn heartbeat_cpu(stack: &Stack, n: usize, window: Duration) -> Result<(f64, Value)> {
    let beats = Arc::new(AtomicU64::new(0));
    let (wtx, mut wrx) = tokio::sync::mpsc::channel(n);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(sim_worker(
                stack.addr.clone(),
                stack.worker_token.clone(),
                format!("bench-sim-{i:03}"),
                beats.clone(),
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
    // Past the connect burst: measure the steady state.
    tokio::time::sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS)).await;
    let pid = stack.coordinator.pid();
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
    let pct = (c1 - c0) / secs * 100.0;
    let details = json!({
        "sessions": n,
        "connect_s": connect_s,
        "window_s": secs,
        "heartbeats_per_s": (b1 - b0) as f64 / secs,
        "coordinator_cpu_percent": pct,
    });
    Ok((pct, details))
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub async fn run(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    env: &[(&str, String)],
    p: &Params,
) -> Result<(Vec<Row>, Value)> {
    let mut stack = Stack::start(server, bins, tmp, "scale", env).await?;
    stack.add_worker("s1", 2, &[])?;
    stack.wait_workers(&["s1"]).await?;

    say!("[scale] {SMALL} finished jobs in the table");
    add_history(&stack.sql, SMALL).await?;
    let (small, _) = latency::pickup(&mut stack, p.samples, "scale").await?;
    let small_rows = job_count(&stack.sql).await?;
    say!(
        "[scale]   pickup p50 {:.2} ms at {small_rows} rows",
        small.p50
    );

    say!("[scale] adding finished jobs up to {}", p.big);
    add_history(&stack.sql, p.big - small_rows).await?;
    let big_rows = job_count(&stack.sql).await?;
    let (big, _) = latency::pickup(&mut stack, p.samples, "scale").await?;
    say!("[scale]   pickup p50 {:.2} ms at {big_rows} rows", big.p50);

    say!(
        "[scale] {} simulated workers heartbeating every {} ms for {:.0} s",
        p.sessions,
        HEARTBEAT_INTERVAL_MS,
        p.window.as_secs_f64()
    );
    let (cpu, hb) = heartbeat_cpu(&stack, p.sessions, p.window).await?;
    say!("[scale]   coordinator CPU {cpu:.1} % of one core");

    let rows = vec![
        Row {
            key: "scale_pickup",
            metric: format!(
                "pickup p50 with {} finished jobs in the table (vs {})",
                short(big_rows),
                short(small_rows)
            ),
            drover: big.p50,
            unit: "ms",
            machine: small.p50,
            machine_what: format!("at {}", short(small_rows)),
            ratio: Ratio::Times,
            target: "≤ 2×".into(),
            ok: Some(big.p50 <= 2.0 * small.p50),
        },
        Row {
            key: "heartbeat_cpu",
            metric: format!(
                "coordinator CPU, {} workers heartbeating every {} s",
                p.sessions,
                HEARTBEAT_INTERVAL_MS / 1000
            ),
            drover: cpu,
            unit: "%",
            machine: 100.0,
            machine_what: "(one core)".into(),
            ratio: Ratio::Percent,
            target: "< 100 %".into(),
            ok: Some(cpu < 100.0),
        },
    ];
    let details = json!({
        "small_rows": small_rows,
        "big_rows": big_rows,
        "pickup_small_ms": small.json(),
        "pickup_big_ms": big.json(),
        "heartbeats": hb,
    });
    stack.stop();
    Ok((rows, details))
}

fn short(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
