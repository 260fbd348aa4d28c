//! Always-on recovery: restarts of the coordinator and of PostgreSQL, network partitions
//! and worker drain are non-events for the jobs.

use drover_pgserver::{PgServer, PgServerConfig};
use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::Duration;
use tonic::Code;

/// A job that prints numbered lines for a while, so a log with a hole would show.
fn counting_job(lines: u32, every: &str) -> pb::JobSpec {
    sh(&format!(
        "i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep {every}; done"
    ))
}

fn expected_lines(lines: u32) -> Vec<u8> {
    (1..=lines)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn coordinator_killed_and_restarted_mid_job_loses_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // The restarted coordinator, as a new leader, reaps nothing for one lease TTL. The
    // worker's reconnect backoff (at most 5 s) must lose to that grace, or the attempt is
    // reaped as lost before the worker is back: a TTL far beyond it makes that certain.
    let opts = CoordinatorOpts {
        port: free_port(),
        lease_ttl_ms: 60_000,
        ..Default::default()
    };
    let (mut coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, counting_job(20, "0.2")).await?;
    wait_for(&mut api, &job.id, "some output", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;

    coord.kill();
    // The job keeps running and writing while nobody listens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_coord, _) = cl.coordinator("coord", &opts)?;

    let mut api = jobs(&addr).await?;
    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(
        attempts.len(),
        1,
        "the job must not be re-run: {attempts:?}"
    );
    let (out, _, _) = logs(&mut api, &job.id, 0).await?;
    assert_eq!(out, expected_lines(20));
    Ok(())
}

#[tokio::test]
async fn postgres_outage_fails_rpcs_as_unavailable_then_jobs_finish() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let mut pg = PgServer::start(PgServerConfig {
        data_dir: cl.path("pg"),
        settings: vec![("fsync".into(), "off".into())],
        ..Default::default()
    })
    .await?;
    pg.create_database("drover").await?;
    let opts = CoordinatorOpts {
        database_url: Some(pg.url("drover")),
        ..Default::default()
    };
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&mut api, counting_job(10, "0.4")).await?.id);
    }
    for id in &ids {
        wait_state(&mut api, id, pb::JobState::Running).await?;
    }

    pg.stop().await?;
    let e = api
        .get_job(pb::GetJobRequest { id: ids[0].clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Longer than the lease TTL: no heartbeat can be recorded meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.restart().await?;

    for id in &ids {
        let (_, attempts) = wait_state(&mut api, id, pb::JobState::Succeeded).await?;
        assert_eq!(attempts.len(), 1, "job {id} was re-run: {attempts:?}");
        let (out, _, _) = logs(&mut api, id, 0).await?;
        assert_eq!(out, expected_lines(10), "job {id}");
    }
    Ok(())
}

#[tokio::test]
async fn partitioned_worker_cannot_overwrite_the_attempt_that_replaced_it() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        lease_ttl_ms: 1_500,
        heartbeat_interval_ms: 300,
        ..Default::default()
    };
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let proxy = Proxy::start(&addr).await?;
    let _a = cl.worker("behind-proxy", &proxy.addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // Runs until killed on attempt 1.
    let stuck = submit(
        &mut api,
        sh(r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo $$; exec sleep 1000; fi; echo second"#),
    )
    .await?;
    // Finishes (failing) during the partition on attempt 1: its late result must be refused.
    let late = submit(
        &mut api,
        sh(r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo $$; sleep 2; exit 1; fi; echo second"#),
    )
    .await?;
    let stuck_pid = pid_from_log(&mut api, &stuck.id, 1).await?;
    pid_from_log(&mut api, &late.id, 1).await?;

    proxy.cut();
    for id in [&stuck.id, &late.id] {
        wait_for(&mut api, id, "attempt 1 lost", |_, a| {
            a.first().map(|a| a.state) == Some(pb::AttemptState::Lost as i32)
        })
        .await?;
    }
    let _b = cl.worker("direct", &addr, 2, &[])?;
    for id in [&stuck.id, &late.id] {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }
    // Let the late attempt finish while still cut off, then heal the partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    // The stale process is stopped once the worker hears its lease is gone.
    assert!(
        wait_dead(stuck_pid).await,
        "stale attempt's process still running"
    );
    // Give the worker's late report every chance to arrive, then check nothing changed.
    let text = std::fs::read_to_string(cl.path("behind-proxy.log"))?;
    let start = std::time::Instant::now();
    let mut refused = text.contains("result refused");
    while !refused && start.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = std::fs::read_to_string(cl.path("behind-proxy.log"))?.contains("result refused");
    }
    assert!(refused, "the late result was never refused");
    for id in [&stuck.id, &late.id] {
        let (job, attempts) = get(&mut api, id).await?;
        assert_eq!(job.state, pb::JobState::Succeeded as i32);
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].state, pb::AttemptState::Lost as i32);
        assert_eq!(attempts[0].exit_code, None, "stale result was recorded");
        assert_eq!(attempts[1].state, pb::AttemptState::Succeeded as i32);
        assert_eq!(attempts[1].worker_id, "direct");
        let (out, _, _) = logs(&mut api, id, 2).await?;
        assert_eq!(out, b"second\n");
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_finishes_short_jobs_and_hands_back_the_rest() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_coord, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut a = cl.worker_with_env(
        "draining",
        &addr,
        2,
        &[],
        &[("DROVER_WORKER_DRAIN_TIMEOUT", "1500ms")],
    )?;
    let mut api = jobs(&addr).await?;
    let long = submit(
        &mut api,
        sh(r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo $$; exec sleep 1000; fi; echo resumed"#),
    )
    .await?;
    let short = submit(&mut api, sh("echo started; sleep 0.5; echo finished")).await?;
    let long_pid = pid_from_log(&mut api, &long.id, 1).await?;
    // Running in the database is not enough: the worker must have started the process
    // (its first line stored), or the drain would hand the job back instead.
    let t0 = std::time::Instant::now();
    while !logs(&mut api, &short.id, 1)
        .await
        .is_ok_and(|(out, _, _)| out.starts_with(b"started"))
    {
        anyhow::ensure!(t0.elapsed() < PATIENCE, "the short job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(a.wait_exit(PATIENCE)?, Some(0), "drained worker exits 0");

    let (_, attempts) = get(&mut api, &short.id).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::Succeeded as i32);
    let (job, attempts) = get(&mut api, &long.id).await?;
    assert_eq!(job.state, pb::JobState::Pending as i32);
    assert_eq!(attempts[0].state, pb::AttemptState::Released as i32);
    assert!(wait_dead(long_pid).await);

    let _b = cl.worker("next", &addr, 1, &[])?;
    let (_, attempts) = wait_state(&mut api, &long.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 2);
    let (out, _, _) = logs(&mut api, &long.id, 2).await?;
    assert_eq!(out, b"resumed\n");
    Ok(())
}

#[tokio::test]
async fn classification_by_output_pattern_and_queue_defaults() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some(
            r#"
[queues.scrape]
timeout = "1m"
retry = { permanent_patterns = ["HTTP 404"], retryable_patterns = ["(?i)connection reset"], initial_backoff = "50ms", jitter = 0.0 }
"#
            .into(),
        ),
        ..Default::default()
    };
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 2, &["--queue", "scrape"])?;
    let mut api = jobs(&addr).await?;

    let mut not_found = pb::JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo 'GET /races: HTTP 404'; exit 1".into(),
        ],
        ..Default::default()
    };
    not_found.queue = "scrape".into();
    let nf = submit(&mut api, not_found).await?;
    assert_eq!(nf.spec.as_ref().map(|s| ms_of(&s.timeout)), Some(60_000));
    let (job, attempts) = wait_state(&mut api, &nf.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0].reason.contains("HTTP 404"),
        "{}",
        attempts[0].reason
    );
    assert!(job.reason.contains("permanent pattern"), "{}", job.reason);

    // Exit 127 is normally permanent, but the queue says this output is transient; the
    // job's own max_retries (1) wins over the queue's default (3).
    let reset = pb::JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo 'Connection reset by peer' >&2; exit 127".into(),
        ],
        queue: "scrape".into(),
        retry: Some(pb::RetryPolicy {
            max_retries: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = submit(&mut api, reset).await?;
    let (_, attempts) = wait_state(&mut api, &r.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(attempts.len(), 2);
    assert!(attempts
        .iter()
        .all(|a| a.state == pb::AttemptState::Failed as i32));
    assert!(
        attempts[0].reason.contains("retryable pattern"),
        "{}",
        attempts[0].reason
    );
    Ok(())
}
