//! Job lifecycle end to end: real PostgreSQL, coordinator and worker processes, real
//! child processes. Each test has its own database.

use drover_tests::v1 as pb;
use drover_tests::*;

#[tokio::test]
async fn job_succeeds_and_log_is_exactly_what_the_process_wrote() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // Interleaved stdout/stderr, bytes that are not UTF-8, no trailing newline, and a
    // placeholder filled from params.
    let mut s = sh(
        r#"printf 'fetching %s\n' "$1"; printf 'warn 1\n' >&2; printf '\377\000bin'; printf 'warn 2' >&2; printf '\nend'"#,
    );
    s.argv.push("scraper".into());
    s.argv.push("{date}".into());
    s.params.insert("date".into(), "2026-11-22".into());
    let job = submit(&mut api, s).await?;
    let (job, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;

    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::Succeeded as i32);
    assert_eq!(attempts[0].exit_code, Some(0));
    assert_eq!(attempts[0].worker_id, "w1");
    let (out, err, _) = logs(&mut api, &job.id, 0).await?;
    assert_eq!(out, b"fetching 2026-11-22\n\xff\x00bin\nend".to_vec());
    assert_eq!(err, b"warn 1\nwarn 2".to_vec());
    Ok(())
}

#[tokio::test]
async fn failing_job_is_retried_with_growing_waits_then_parked() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    let mut s = sh("echo attempt $DROVER_ATTEMPT; exit 1");
    s.retry = Some(pb::RetryPolicy {
        max_retries: Some(2),
        initial_backoff: ms(300),
        multiplier: Some(2.0),
        jitter: Some(0.0),
        ..Default::default()
    });
    let job = submit(&mut api, s).await?;
    let (job, attempts) = wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;

    assert_eq!(attempts.len(), 3, "max_retries 2 means 3 attempts");
    for a in &attempts {
        assert_eq!(a.state, pb::AttemptState::Failed as i32);
        assert_eq!(a.exit_code, Some(1));
    }
    // Each retry waited at least its backoff: 300 ms, then 600 ms.
    for (i, want_ms) in [(1usize, 300i64), (2, 600)] {
        let prev_end = output_time(&attempts[i - 1].finished_at);
        let next_start = output_time(&attempts[i].started_at);
        let gap = next_start - prev_end;
        assert!(
            gap >= want_ms - 5,
            "retry {i} started {gap} ms after the previous attempt; policy says {want_ms} ms"
        );
    }
    assert!(job.reason.contains("max_retries"), "{}", job.reason);
    let (out, _, _) = logs(&mut api, &job.id, 3).await?;
    assert_eq!(out, b"attempt 3\n");
    Ok(())
}

fn output_time(t: &Option<drover_proto::Timestamp>) -> i64 {
    let t = t.expect("timestamp");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test]
async fn exit_127_and_spawn_errors_are_permanent_at_once() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    let j127 = submit(&mut api, sh("exit 127")).await?;
    let missing = submit(&mut api, spec(&["/nonexistent/program", "x"])).await?;
    let (job, attempts) = wait_state(&mut api, &j127.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::FailedPermanent as i32);
    assert!(job.reason.contains("127"), "{}", job.reason);

    let (job, attempts) = wait_state(&mut api, &missing.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::FailedPermanent as i32);
    assert!(job.reason.contains("could not start"), "{}", job.reason);
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // A grandchild in the background, and a parent that ignores SIGTERM.
    let mut s = sh("sleep 1000 & echo $!; trap '' TERM; sleep 1000; wait");
    s.timeout = ms(1_000);
    s.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    let job = submit(&mut api, s).await?;
    let (job, attempts) = wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::TimedOut as i32);
    assert!(job.reason.contains("timeout"), "{}", job.reason);

    let pid = pid_from_log(&mut api, &job.id, 1).await?;
    assert!(
        wait_dead(pid).await,
        "grandchild {pid} survived the timeout"
    );
    Ok(())
}

#[tokio::test]
async fn sigkilled_worker_loses_its_attempt_and_another_worker_finishes() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut w1 = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;

    let job = submit(
        &mut api,
        sh(r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo first; sleep 1000; fi; echo second"#),
    )
    .await?;
    wait_state(&mut api, &job.id, pb::JobState::Running).await?;
    let _w2 = cl.worker("w2", &addr, 1, &[])?;
    w1.kill();

    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].state, pb::AttemptState::Lost as i32);
    assert_eq!(attempts[0].worker_id, "w1");
    assert_eq!(attempts[1].state, pb::AttemptState::Succeeded as i32);
    assert_eq!(attempts[1].worker_id, "w2");
    let (out, _, _) = logs(&mut api, &job.id, 2).await?;
    assert_eq!(out, b"second\n");
    Ok(())
}

#[tokio::test]
async fn restarted_worker_gets_its_orphans_marked_lost_on_reconnect() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // A lease far longer than the test: only the reconnect can mark the attempt lost.
    let opts = CoordinatorOpts {
        lease_ttl_ms: 600_000,
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let mut w1 = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let job = submit(
        &mut api,
        sh(r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo $$; sleep 1000; fi; echo ok"#),
    )
    .await?;
    wait_state(&mut api, &job.id, pb::JobState::Running).await?;
    let orphan = pid_from_log(&mut api, &job.id, 1).await?;
    w1.kill();
    assert!(
        process_alive(orphan),
        "a SIGKILLed worker's job outlives it"
    );
    // Same id, same state directory: the worker restarted.
    let _w1 = cl.worker("w1", &addr, 1, &[])?;
    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].state, pb::AttemptState::Lost as i32);
    assert!(
        attempts[0].reason.contains("restarted"),
        "{}",
        attempts[0].reason
    );
    // ...and the restarted worker killed what its predecessor left running.
    assert!(
        wait_dead(orphan).await,
        "orphaned job {orphan} still running"
    );
    Ok(())
}

#[tokio::test]
async fn idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let mut s = sh("echo once");
    s.idempotency_key = "scrape-2026-11-22-odds".into();
    let first = api
        .submit_job(pb::SubmitJobRequest {
            spec: Some(s.clone()),
        })
        .await?
        .into_inner();
    let second = api
        .submit_job(pb::SubmitJobRequest { spec: Some(s) })
        .await?
        .into_inner();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job.map(|j| j.id), second.job.map(|j| j.id));
    let n: i64 = cl
        .db
        .client()
        .await?
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_pagination() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut s = sh("true");
        s.queue = if i % 2 == 0 { "even" } else { "odd" }.into();
        ids.push(submit(&mut api, s).await?.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = api
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        seen.extend(r.jobs.into_iter().map(|j| j.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let even = api
        .list_jobs(pb::ListJobsRequest {
            queue: "even".into(),
            state: pb::JobState::Pending as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(even.jobs.len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_job_submitted_to_one_coordinator_runs_on_a_worker_of_another() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // B's safety sweep is far longer than the wait below, so only A's NOTIFY can make B
    // dispatch the job in time.
    let no_sweep = CoordinatorOpts {
        env: vec![("DROVER_DISPATCH_SWEEP".into(), "1h".into())],
        ..Default::default()
    };
    let (_a, addr_a) = cl.coordinator("coord-a", &no_sweep)?;
    let (_b, addr_b) = cl.coordinator("coord-b", &no_sweep)?;
    let _w = cl.worker("w1", &addr_b, 1, &[])?;
    let mut api_a = jobs(&addr_a).await?;
    // Let the worker connect to B before the submit, so only a NOTIFY can wake B.
    let mut api_b = jobs(&addr_b).await?;
    let warm = submit(&mut api_b, sh("true")).await?;
    wait_state(&mut api_b, &warm.id, pb::JobState::Succeeded).await?;

    let job = submit(&mut api_a, sh("echo via b")).await?;
    let (_, attempts) = wait_state(&mut api_a, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts[0].worker_id, "w1");
    Ok(())
}

#[tokio::test]
async fn a_dispatch_sweep_out_of_bounds_is_refused_at_start() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    for (i, (bad, needle)) in [
        ("0s", "must be 100ms to 1d"),
        ("99ms", "must be 100ms to 1d"),
        ("1d 1ms", "must be 100ms to 1d"),
        // A bare number is refused too, naming the variable it came from.
        (
            "5000",
            "needs a unit and quotes, e.g. \"5000s\" or \"5000ms\" (from DROVER_DISPATCH_SWEEP)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let opts = CoordinatorOpts {
            env: vec![("DROVER_DISPATCH_SWEEP".into(), bad.into())],
            ..Default::default()
        };
        let e = match cl.coordinator(&format!("coord-{i}"), &opts) {
            Ok(_) => anyhow::bail!("dispatch_sweep = {bad} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("dispatch_sweep: ") && e.contains(needle),
            "{bad}: {e}"
        );
    }
    Ok(())
}

/// A slot's work directory is reused, emptied in between: each attempt starts in an empty
/// directory it can write, whatever the one before left there (files, a nested directory,
/// its own directory made read-only).
#[tokio::test]
async fn every_attempt_starts_in_an_empty_work_directory() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let messy = submit(
        &mut api,
        sh("pwd; mkdir -p d/e && echo x > d/e/f && echo y > .hidden && chmod 500 ."),
    )
    .await?;
    wait_state(&mut api, &messy.id, pb::JobState::Succeeded).await?;
    let check = submit(
        &mut api,
        sh("pwd; test -z \"$(ls -A)\" || { ls -A >&2; exit 3; }; echo ok > written"),
    )
    .await?;
    let (job, _) = wait_for(&mut api, &check.id, "finished", |j, _| {
        is_state(j, pb::JobState::Succeeded) || is_state(j, pb::JobState::PermanentFailed)
    })
    .await?;
    let (out, err, _) = logs(&mut api, &check.id, 0).await?;
    assert!(
        is_state(&job, pb::JobState::Succeeded),
        "second job found: {}",
        String::from_utf8_lossy(&err)
    );
    let (first, _, _) = logs(&mut api, &messy.id, 0).await?;
    assert_eq!(first, out, "both ran in the slot's one directory");
    Ok(())
}
