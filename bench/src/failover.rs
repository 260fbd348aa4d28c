//! Coordinator failover: two coordinators on one database, a worker given both addresses
//! (its session on A), a job running on it. A is SIGKILLed for good; the next job,
//! submitted through B at once, starts on the worker through B. The running job must
//! finish with its one attempt (a failover that re-ran it is an error, not a figure).

use crate::helpers::now_ns;
use crate::report::{no_limit, Ratio, Row};
use crate::stack::{Bins, Server, Stack};
use crate::util;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub const QUEUE: &str = "bench-failover";

pub async fn run(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    env: &[(&'static str, String)],
    repeats: usize,
) -> Result<(Vec<Vec<Row>>, Value)> {
    let (mut runs, mut details) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        say!("[failover] run {} of {repeats}", i + 1);
        let (rows, d) = once(server, bins, tmp, env, i).await?;
        runs.push(rows);
        details.push(d);
    }
    Ok((runs, Value::Array(details)))
}

async fn once(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    env: &[(&'static str, String)],
    i: usize,
) -> Result<(Vec<Row>, Value)> {
    let mut stack = Stack::start(server, bins, tmp, &format!("failover{i}"), env).await?;
    let (_b, addr_b) = stack.add_coordinator("coordinator-b").await?;
    // A first: the worker's session starts there.
    stack.worker_addrs = vec![stack.addr.clone(), addr_b.clone()];
    stack.add_worker("f1", 2, &[QUEUE])?;
    stack.wait_workers(&["f1"]).await?;
    let bench = stack.bins.bench.display().to_string();
    let stamp = || util::spec(vec![bench.clone(), "stamp".into()], QUEUE);

    // Warm up through A (the session is there, the path is hot).
    let warm = util::submit(&mut stack.jobs, stamp()).await?;
    wait(&mut stack.jobs, &warm.id).await?;

    // A job running when A dies.
    let running = util::submit(
        &mut stack.jobs,
        util::spec(vec!["sleep".into(), "2".into()], QUEUE),
    )
    .await?;
    loop {
        let (job, _) = util::get(&mut stack.jobs, &running.id).await?;
        if job.state == drover_proto::v1::JobState::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut via_b = stack.jobs_at(&addr_b).await?;
    let t_kill = now_ns();
    stack.coordinator.kill();
    let next = util::submit(&mut via_b, stamp()).await?;
    wait(&mut via_b, &next.id).await?;
    let started = util::stamp_of(&mut via_b, &next.id, 1).await?;
    let failover_ms = util::ns_to_ms(started - t_kill);
    let (_, attempts) = wait(&mut via_b, &running.id).await?;
    if attempts.len() != 1 {
        bail!(
            "failover re-ran job {}: {} attempts",
            running.id,
            attempts.len()
        );
    }
    say!("[failover]   coordinator SIGKILLed → next job started through B: {failover_ms:.1} ms");
    let bound = no_limit("bounded by noticing the lost connection (a reset: at once)");
    let rows = vec![Row {
        key: "coordinator_failover",
        metric: "coordinator SIGKILLed → worker's next job started through another".into(),
        drover: failover_ms,
        unit: "ms",
        machine: bound.0,
        machine_what: bound.1,
        ratio: Ratio::Times,
        target: "≤ 5000 ms".into(),
        ok: Some(failover_ms <= 5000.0),
        median_by_ratio: false,
        runs: Vec::new(),
    }];
    stack.stop();
    Ok((rows, json!({ "kill_to_next_started_ms": failover_ms })))
}

async fn wait(
    c: &mut util::Jobs,
    id: &str,
) -> Result<(drover_proto::v1::Job, Vec<drover_proto::v1::Attempt>)> {
    util::wait_succeeded(
        c,
        id,
        Duration::from_millis(5),
        Duration::from_millis(5),
        Duration::from_secs(60),
    )
    .await
}

/// Database failover: a primary and a synchronous streaming replica (private servers with
/// the default durability), the coordinator given both hosts with
/// `target_session_attrs=read-write`. The primary crashes (immediate stop) and the
/// replica is promoted; from the promotion's end to the stamp of the first job submitted
/// (retried until acknowledged) and run through the new primary.
pub async fn promotion(
    bins: &Bins,
    tmp: &Path,
    env: &[(&'static str, String)],
    repeats: usize,
) -> Result<(Vec<Vec<Row>>, Value)> {
    let (mut runs, mut details) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        say!("[promotion] run {} of {repeats}", i + 1);
        let (rows, d) = promote_once(bins, tmp, env, i).await?;
        runs.push(rows);
        details.push(d);
    }
    Ok((runs, Value::Array(details)))
}

async fn promote_once(
    bins: &Bins,
    tmp: &Path,
    env: &[(&'static str, String)],
    i: usize,
) -> Result<(Vec<Row>, Value)> {
    use drover_pgserver::{PgServer, PgServerConfig};
    let dir = tmp.join(format!("promotion{i}"));
    let mut primary = PgServer::start(PgServerConfig {
        data_dir: dir.join("primary"),
        ..Default::default()
    })
    .await?;
    let replica = PgServer::start_replica(
        PgServerConfig {
            data_dir: dir.join("replica"),
            ..Default::default()
        },
        &primary,
    )
    .await?;
    {
        let c = crate::stack::sql(&primary.url("postgres")).await?;
        c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await?;
        c.batch_execute("SELECT pg_reload_conf()").await?;
        let t0 = std::time::Instant::now();
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                    &[],
                )
                .await?
                .try_get(0)?;
            if n > 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the replica did not become synchronous within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let server = Server::External {
        admin_url: format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
            primary.port(),
            replica.port()
        ),
    };
    let mut stack = Stack::start(&server, bins, tmp, &format!("promotion{i}"), env).await?;
    stack.add_worker("p1", 2, &[QUEUE])?;
    stack.wait_workers(&["p1"]).await?;
    let bench = stack.bins.bench.display().to_string();
    let stamp = || util::spec(vec![bench.clone(), "stamp".into()], QUEUE);
    let warm = util::submit(&mut stack.jobs, stamp()).await?;
    wait(&mut stack.jobs, &warm.id).await?;

    let t_crash = now_ns();
    primary.stop_immediate().await?;
    replica.promote().await?;
    let t_promoted = now_ns();
    let t0 = std::time::Instant::now();
    let job = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            util::submit(&mut stack.jobs, stamp()),
        )
        .await
        {
            Ok(Ok(j)) => break j,
            _ if t0.elapsed() > Duration::from_secs(120) => {
                bail!("no submit acknowledged within 120 s of the promotion")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    wait(&mut stack.jobs, &job.id).await?;
    let started = util::stamp_of(&mut stack.jobs, &job.id, 1).await?;
    let promoted_ms = util::ns_to_ms(started - t_promoted);
    let crash_to_promoted_ms = util::ns_to_ms(t_promoted - t_crash);
    say!(
        "[promotion]   primary crash → replica promoted {crash_to_promoted_ms:.0} ms; \
         promoted → next job started {promoted_ms:.0} ms"
    );
    let bound =
        no_limit("bounded by the coordinator's reconnect (pool checks, LISTEN, leader lock)");
    let rows = vec![Row {
        key: "primary_promotion",
        metric: "PostgreSQL replica promoted → next job started through the new primary".into(),
        drover: promoted_ms,
        unit: "ms",
        machine: bound.0,
        machine_what: bound.1,
        ratio: Ratio::Times,
        target: "≤ 10000 ms".into(),
        ok: Some(promoted_ms <= 10_000.0),
        median_by_ratio: false,
        runs: Vec::new(),
    }];
    stack.stop();
    drop(stack);
    Ok((
        rows,
        json!({
            "crash_to_promoted_ms": crash_to_promoted_ms,
            "promoted_to_next_started_ms": promoted_ms,
        }),
    ))
}
