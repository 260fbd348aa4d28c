//! Operator actions: manual retry, rerun with overrides (partial re-fetch), bulk retry,
//! cancel. The original job is never changed (invariant 7).

use drover_tests::v1 as pb;
use drover_tests::*;
use tonic::Code;

#[tokio::test]
async fn manual_retry_creates_a_linked_job_and_leaves_the_original_alone() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    let orig = submit(&mut api, sh("echo try $DROVER_JOB_ID; exit 127")).await?;
    let (before, before_attempts) =
        wait_state(&mut api, &orig.id, pb::JobState::PermanentFailed).await?;

    let r1 = api
        .retry_job(pb::RetryJobRequest {
            id: orig.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    assert_ne!(r1.id, orig.id);
    assert_eq!(r1.original_job_id, orig.id);
    assert_eq!(r1.retry_of, orig.id);
    assert_eq!(
        r1.spec.as_ref().map(|s| &s.argv),
        before.spec.as_ref().map(|s| &s.argv)
    );
    wait_state(&mut api, &r1.id, pb::JobState::PermanentFailed).await?;

    // A retry of the retry still points at the root of the chain.
    let r2 = api
        .retry_job(pb::RetryJobRequest {
            id: r1.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    assert_eq!(r2.original_job_id, orig.id);
    assert_eq!(r2.retry_of, r1.id);

    let after = api
        .get_job(pb::GetJobRequest {
            id: orig.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(after.job.as_ref(), Some(&before), "original job changed");
    assert_eq!(after.attempts, before_attempts, "original attempts changed");
    assert_eq!(after.retried_by, vec![r1.id.clone()]);
    Ok(())
}

#[tokio::test]
async fn rerun_replaces_named_params_for_a_partial_refetch() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    let mut s = spec(&["echo", "fetch", "{date}", "{data_types}"]);
    s.params.insert("date".into(), "2026-11-22".into());
    s.params
        .insert("data_types".into(), "racecards,odds,results".into());
    let orig = submit(&mut api, s).await?;
    wait_state(&mut api, &orig.id, pb::JobState::Succeeded).await?;

    let e = api
        .retry_job(pb::RetryJobRequest {
            id: orig.id.clone(),
            set_params: [("data_type".to_string(), "odds".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("data_type"), "{}", e.message());

    let rerun = api
        .retry_job(pb::RetryJobRequest {
            id: orig.id.clone(),
            set_params: [("data_types".to_string(), "odds".to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    wait_state(&mut api, &rerun.id, pb::JobState::Succeeded).await?;
    let (out, _, _) = logs(&mut api, &rerun.id, 0).await?;
    assert_eq!(out, b"fetch 2026-11-22 odds\n");
    let (out, _, _) = logs(&mut api, &orig.id, 0).await?;
    assert_eq!(out, b"fetch 2026-11-22 racecards,odds,results\n");
    Ok(())
}

#[tokio::test]
async fn bulk_retry_dry_run_changes_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 4, &["--queue", "scrape", "--queue", "other"])?;
    let mut api = jobs(&addr).await?;
    let mut failed = Vec::new();
    for q in ["scrape", "scrape", "other"] {
        let mut s = sh("exit 127");
        s.queue = q.into();
        failed.push(submit(&mut api, s).await?.id);
    }
    let mut ok = sh("true");
    ok.queue = "scrape".into();
    let ok = submit(&mut api, ok).await?;
    for id in &failed {
        wait_state(&mut api, id, pb::JobState::PermanentFailed).await?;
    }
    wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;

    let req = pb::RetryJobsRequest {
        queue: "scrape".into(),
        finished_within: ms(3_600_000),
        dry_run: true,
        ..Default::default()
    };
    let dry = api.retry_jobs(req.clone()).await?.into_inner();
    assert_eq!(dry.matched.len(), 2);
    assert!(dry.created.is_empty());
    let total = api
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs
        .len();
    assert_eq!(total, 4, "a dry run must not create jobs");

    let real = api
        .retry_jobs(pb::RetryJobsRequest {
            dry_run: false,
            ..req
        })
        .await?
        .into_inner();
    assert_eq!(real.created.len(), 2);
    for (old, new) in real.matched.iter().zip(&real.created) {
        assert_eq!(new.retry_of, old.id);
    }
    Ok(())
}

#[tokio::test]
async fn cancel_pending_running_and_finished_jobs() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;

    // Pending (no worker serves this queue): cancelled at once.
    let mut p = sh("true");
    p.queue = "nobody".into();
    let p = submit(&mut api, p).await?;
    let r = api
        .cancel_job(pb::CancelJobRequest {
            id: p.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    assert_eq!(r.state, pb::JobState::Cancelled as i32);

    // Running: the process group is stopped and the attempt recorded cancelled.
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let running = submit(&mut api, sh("sleep 1000 & echo $!; sleep 1000; wait")).await?;
    wait_for(&mut api, &running.id, "output", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    // The grandchild's pid, to check that it dies with the cancel.
    let pid = pid_from_log(&mut api, &running.id, 1).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: running.id.clone(),
        ..Default::default()
    })
    .await?;
    let (job, attempts) = wait_state(&mut api, &running.id, pb::JobState::Cancelled).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, pb::AttemptState::Cancelled as i32);
    assert!(job.finished_at.is_some());
    assert!(wait_dead(pid).await, "process {pid} survived the cancel");

    // Finished: a clear refusal.
    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: p.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already finished"), "{}", e.message());
    Ok(())
}
