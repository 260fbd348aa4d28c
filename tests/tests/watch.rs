//! WatchJobs and WaitJob: state changes pushed from PostgreSQL's NOTIFY through the
//! coordinator's fan-out, against real coordinators, workers and child processes.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

fn state_of(u: &pb::WatchJobsResponse) -> i32 {
    u.job.as_ref().map(|j| j.state).unwrap_or(-1)
}

async fn next(
    s: &mut tonic::Streaming<pb::WatchJobsResponse>,
) -> anyhow::Result<Option<pb::WatchJobsResponse>> {
    Ok(tokio::time::timeout(PATIENCE, s.next())
        .await
        .map_err(|_| anyhow::anyhow!("no update within {PATIENCE:?}"))?
        .transpose()?)
}

#[tokio::test]
async fn watching_given_jobs_sees_each_state_and_ends_when_they_finish() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let ok = submit(&mut api, sh("sleep 0.5; echo done")).await?;
    let bad = submit(&mut api, spec(&["sh", "-c", "exit 3"])).await?;
    let mut bad_spec = spec(&["sh", "-c", "exit 3"]);
    bad_spec.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    let bad2 = submit(&mut api, bad_spec).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: bad.id.clone(),
        ..Default::default()
    })
    .await?;
    let mut s = api
        .watch_jobs(pb::WatchJobsRequest {
            ids: vec![ok.id.clone(), bad.id.clone(), bad2.id.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    // First: the current state of each, marked initial.
    let mut initial = Vec::new();
    for _ in 0..3 {
        let u = next(&mut s)
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert!(u.initial);
        initial.push((u.job.clone().unwrap_or_default().id, state_of(&u)));
    }
    assert!(initial.contains(&(ok.id.clone(), pb::JobState::Pending as i32)));
    assert!(initial.contains(&(bad.id.clone(), pb::JobState::Cancelled as i32)));
    // A worker comes: every later state arrives, and the stream ends when all finished.
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut seen: Vec<(String, i32)> = Vec::new();
    while let Some(u) = next(&mut s).await? {
        assert!(!u.initial);
        let st = state_of(&u);
        seen.push((u.job.unwrap_or_default().id, st));
    }
    assert!(
        seen.contains(&(ok.id.clone(), pb::JobState::Succeeded as i32)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(bad2.id.clone(), pb::JobState::PermanentFailed as i32)),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(id, _)| *id == bad.id),
        "a finished job has no later change"
    );
    Ok(())
}

#[tokio::test]
async fn a_filter_watch_sees_changes_made_through_another_coordinator() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c1, a1) = cl.coordinator("c1", &CoordinatorOpts::default())?;
    let (_c2, a2) = cl.coordinator("c2", &CoordinatorOpts::default())?;
    let mut watch_api = jobs(&a1).await?;
    let mut s = watch_api
        .watch_jobs(pb::WatchJobsRequest {
            queue: "wq".into(),
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    // Submitted and run through the other coordinator only.
    let _w = cl.worker_with_env("w1", &a2, 4, &["--queue", "wq", "--queue", "default"], &[])?;
    let mut api2 = jobs(&a2).await?;
    let mut want = HashSet::new();
    for i in 0..3 {
        let mut sp = sh(&format!("echo {i}"));
        sp.queue = "wq".into();
        want.insert(submit(&mut api2, sp).await?.id);
    }
    let other = submit(&mut api2, sh("echo other queue")).await?;
    let mut got = HashSet::new();
    while got.len() < want.len() {
        let u = next(&mut s)
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(state_of(&u), pb::JobState::Succeeded as i32);
        let j = u.job.unwrap_or_default();
        assert_eq!(j.spec.unwrap_or_default().queue, "wq");
        got.insert(j.id);
    }
    assert_eq!(got, want);
    wait_state(&mut api2, &other.id, pb::JobState::Succeeded).await?;
    Ok(())
}

/// A LISTEN connection of the test's own on the state channel: notifications arrive in
/// commit order, so everything sent before a marker the test NOTIFYs arrives before it.
struct Listener {
    client: tokio_postgres::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    channel: &'static str,
}

impl Listener {
    /// Listens on `channel` (the drain marker goes there too).
    async fn new(url: &str, channel: &'static str) -> anyhow::Result<Listener> {
        let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut m = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = m.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Listener {
            client,
            rx,
            channel,
        })
    }

    /// Every payload sent on the channel since the last call.
    async fn drain(&mut self, marker: &str) -> anyhow::Result<Vec<String>> {
        self.client
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &marker])
            .await?;
        let mut got = Vec::new();
        loop {
            let p = tokio::time::timeout(PATIENCE, self.rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("marker {marker} not heard"))?
                .ok_or_else(|| anyhow::anyhow!("LISTEN connection closed"))?;
            if p == marker {
                return Ok(got);
            }
            got.push(p);
        }
    }
}

/// Waits until some coordinator has armed `gate` (V31, V33).
async fn wait_armed(cl: &Cluster, gate: &str) -> anyhow::Result<()> {
    let db = cl.db.client().await?;
    let start = std::time::Instant::now();
    loop {
        let armed: bool = db
            .query_one(
                "SELECT coalesce(pg_sequence_last_value($1::text::regclass) \
                   > extract(epoch FROM now()), false)",
                &[&gate],
            )
            .await?
            .get(0);
        if armed {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "{gate} was never armed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn log_notifications_are_sent_only_while_someone_follows_a_log() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;
    let mut heard = Listener::new(&cl.db.url, "drover_logs").await?;
    let quiet = submit(&mut api, sh("echo quiet")).await?;
    wait_state(&mut api, &quiet.id, pb::JobState::Succeeded).await?;
    assert_eq!(
        heard.drain("marker-1").await?,
        Vec::<String>::new(),
        "nobody follows a log: neither the output nor the end may be announced"
    );
    // A follower of a job that no worker takes (so the stream stays open) arms the gate.
    let mut waiting = sh("true");
    waiting.queue = "nobody-takes-this".into();
    let waiting = submit(&mut api, waiting).await?;
    let _follow = api
        .stream_logs(pb::StreamLogsRequest {
            job_id: waiting.id.clone(),
            attempt: 0,
            follow: true,
        })
        .await?
        .into_inner();
    wait_armed(&cl, "drover_logs_gate").await?;
    let followed = submit(&mut api, sh("echo followed")).await?;
    wait_state(&mut api, &followed.id, pb::JobState::Succeeded).await?;
    let got = heard.drain("marker-2").await?;
    assert!(
        got.contains(&followed.id),
        "{} (its output and its end) not among {got:?}",
        followed.id
    );
    Ok(())
}

#[tokio::test]
async fn state_changes_are_announced_only_while_someone_watches() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;
    let mut heard = Listener::new(&cl.db.url, "drover_job_states").await?;
    let quiet = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &quiet.id, pb::JobState::Succeeded).await?;
    assert_eq!(
        heard.drain("marker-1").await?,
        Vec::<String>::new(),
        "no watch is open: a job's three state changes must not be announced"
    );
    // A watch opens: its coordinator arms the gate, and every change is announced.
    let _s = api
        .watch_jobs(pb::WatchJobsRequest {
            queue: "default".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    wait_armed(&cl, "drover_watch_gate").await?;
    let watched = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &watched.id, pb::JobState::Succeeded).await?;
    let got = heard.drain("marker-2").await?;
    for state in ["pending", "running", "succeeded"] {
        let want = format!("{} {state} default", watched.id);
        assert!(got.contains(&want), "{want:?} not among {got:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_change_written_while_nobody_watched_and_committed_later_still_reaches_a_watch(
) -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    // No worker: the job stays pending until the test's own transaction cancels it.
    let job = submit(&mut api, sh("true")).await?;
    let mut db = cl.db.client().await?;
    let closed: Option<i64> = db
        .query_one("SELECT pg_sequence_last_value('drover_watch_gate')", &[])
        .await?
        .get(0);
    assert_eq!(closed, None, "no watch was ever open: the gate is closed");
    let tx = db.transaction().await?;
    let id: uuid::Uuid = job.id.parse()?;
    let n = tx
        .execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
             reason = 'cancelled by the test' WHERE id = $1",
            &[&id],
        )
        .await?;
    assert_eq!(n, 1);
    // The row was written with the gate closed, so its commit will announce nothing. The
    // watch reads the job before that commit...
    let mut s = api
        .watch_jobs(pb::WatchJobsRequest {
            ids: vec![job.id.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = next(&mut s)
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    assert!(first.initial);
    assert_eq!(state_of(&first), pb::JobState::Pending as i32);
    // ...and must still hear of it: the coordinator re-reads once every transaction that
    // was running when it armed the gate has ended.
    tx.commit().await?;
    let later = next(&mut s)
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    assert!(!later.initial);
    assert_eq!(state_of(&later), pb::JobState::Cancelled as i32);
    Ok(())
}

#[tokio::test]
async fn wait_job_returns_the_finished_job_or_deadline_exceeded() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("echo waited")).await?;
    // No worker yet: the wait runs out.
    let e = api
        .wait_job(pb::WaitJobRequest {
            id: job.id.clone(),
            timeout: ms(300),
        })
        .await
        .expect_err("no worker, no finish");
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("still pending"), "{}", e.message());
    // A waiter parked before the worker comes is woken by the change.
    let mut api2 = api.clone();
    let id = job.id.clone();
    let waiter = tokio::spawn(async move {
        api2.wait_job(pb::WaitJobRequest { id, timeout: None })
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let r = waiter.await??;
    assert_eq!(r.job.map(|j| j.state), Some(pb::JobState::Succeeded as i32));
    // Finished already: answered at once.
    let r = api
        .wait_job(pb::WaitJobRequest {
            id: job.id.clone(),
            timeout: ms(1),
        })
        .await?
        .into_inner();
    assert_eq!(r.job.map(|j| j.id), Some(job.id.clone()));

    // Bounds and bad input.
    for (req, code, needle) in [
        (
            pb::WaitJobRequest {
                id: job.id.clone(),
                timeout: ms(3_600_001),
            },
            Code::InvalidArgument,
            "timeout",
        ),
        (
            pb::WaitJobRequest {
                id: "nope".into(),
                timeout: None,
            },
            Code::InvalidArgument,
            "id",
        ),
        (
            pb::WaitJobRequest {
                id: uuid::Uuid::now_v7().to_string(),
                timeout: None,
            },
            Code::NotFound,
            "not found",
        ),
    ] {
        let e = api.wait_job(req).await.expect_err("refused");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{}", e.message());
    }
    Ok(())
}

#[tokio::test]
async fn watch_requests_are_checked_and_watches_are_bounded() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("max_watches_per_principal = 2\nmax_watches = 3\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("true")).await?;
    for (req, needle) in [
        (pb::WatchJobsRequest::default(), "give job ids"),
        (
            pb::WatchJobsRequest {
                ids: vec![job.id.clone()],
                queue: "q".into(),
                ..Default::default()
            },
            "not both",
        ),
        (
            pb::WatchJobsRequest {
                ids: (0..1001)
                    .map(|_| uuid::Uuid::now_v7().to_string())
                    .collect(),
                ..Default::default()
            },
            "at most 1000",
        ),
        (
            pb::WatchJobsRequest {
                queue: "no spaces".into(),
                ..Default::default()
            },
            "queue",
        ),
    ] {
        let e = api.watch_jobs(req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let e = api
        .watch_jobs(pb::WatchJobsRequest {
            ids: vec![uuid::Uuid::now_v7().to_string()],
            ..Default::default()
        })
        .await
        .expect_err("unknown job");
    assert_eq!(e.code(), Code::NotFound);

    // Two open watches for the admin token; the third is refused, naming the setting.
    let filter = || pb::WatchJobsRequest {
        queue: "default".into(),
        ..Default::default()
    };
    let s1 = api.watch_jobs(filter()).await?.into_inner();
    let _s2 = api.watch_jobs(filter()).await?.into_inner();
    let e = api.watch_jobs(filter()).await.expect_err("third watch");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("max_watches_per_principal"),
        "{}",
        e.message()
    );
    // WaitJob counts too.
    let e = api
        .wait_job(pb::WaitJobRequest {
            id: job.id.clone(),
            timeout: ms(100),
        })
        .await
        .expect_err("wait over the bound");
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Another principal has its own count, up to the total.
    let mut viewer = jobs_as(&addr, Some(VIEWER_TOKEN)).await?;
    let _v1 = viewer.watch_jobs(filter()).await?.into_inner();
    let e = viewer.watch_jobs(filter()).await.expect_err("total");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("max_watches"), "{}", e.message());
    // Closing a watch frees its place.
    drop(s1);
    let start = std::time::Instant::now();
    loop {
        match api.watch_jobs(filter()).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_watcher_that_falls_behind_re_reads_and_misses_no_job() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let mut s = api
        .watch_jobs(pb::WatchJobsRequest {
            queue: "lagq".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // 6000 new jobs while the client reads nothing: more notifications than the
    // fan-out buffers for one watcher.
    let mut want = HashSet::new();
    for b in 0..6 {
        let specs: Vec<pb::JobSpec> = (0..1000)
            .map(|i| {
                let mut sp = sh(&format!("echo {b}-{i}"));
                sp.queue = "lagq".into();
                sp
            })
            .collect();
        for r in api
            .submit_jobs(pb::SubmitJobsRequest { specs })
            .await?
            .into_inner()
            .results
        {
            want.insert(r.job.map(|j| j.id).unwrap_or_default());
        }
    }
    assert_eq!(want.len(), 6000);
    let mut got = HashSet::new();
    while got.len() < want.len() {
        let u = next(&mut s)
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        let j = u.job.unwrap_or_default();
        assert!(want.contains(&j.id), "a job of another queue: {}", j.id);
        got.insert(j.id);
    }
    assert!(
        c.log_text().contains("watch lagged"),
        "the watcher was expected to fall behind and re-read"
    );
    Ok(())
}

fn droverctl(addr: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", addr)
        .args(args)
        .output()
        .expect("running droverctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn droverctl_wait_exit_status_tells_the_outcome() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let pending = submit(&mut api, sh("true")).await?;
    let (code, err) = droverctl(&addr, &["wait", "--timeout", "300ms", &pending.id]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("has not finished"), "{err}");
    let cancelled = submit(&mut api, sh("true")).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: cancelled.id.clone(),
        ..Default::default()
    })
    .await?;
    assert_eq!(droverctl(&addr, &["wait", &cancelled.id]).0, 4);
    let _w = cl.worker("w1", &addr, 2, &[])?;
    assert_eq!(droverctl(&addr, &["wait", &pending.id]).0, 0);
    let (code, err) = droverctl(
        &addr,
        &[
            "submit",
            "--wait",
            "--max-retries",
            "0",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("permanent_failed"), "{err}");
    let (code, err) = droverctl(&addr, &["wait", "not-an-id"]);
    assert_eq!(code, 1);
    assert!(err.contains("id"), "{err}");
    Ok(())
}
