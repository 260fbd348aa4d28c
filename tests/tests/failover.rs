//! Coordinator high availability with the real stack: two coordinators on one database,
//! workers and droverctl given both addresses. When the coordinator a worker talks to dies
//! for good, the worker moves to the other one and keeps its running attempts (its Hello
//! re-attaches them): nothing is marked lost or run again. Also the worker protocol
//! version check of the Hello.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::Duration;

/// Production's default lease TTL: the promise is that failover happens well within it.
fn opts() -> CoordinatorOpts {
    CoordinatorOpts {
        lease_ttl_ms: 8_000,
        heartbeat_interval_ms: 500,
        ..Default::default()
    }
}

fn runs_in(marker: &std::path::Path) -> usize {
    std::fs::read_to_string(marker)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn worker_fails_over_to_the_next_coordinator_keeping_its_running_job() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (mut a, addr_a) = cl.coordinator("coord-a", &opts())?;
    let (_b, addr_b) = cl.coordinator("coord-b", &opts())?;
    // A first: the worker starts its session there.
    let both = format!("{addr_a},{addr_b}");
    let w = cl.worker("w1", &both, 1, &[])?;
    let mut via_a = jobs(&addr_a).await?;
    let mut via_b = jobs(&addr_b).await?;

    // The child notes each start in a file: it must start exactly once. It runs until the
    // test lets it finish, so the coordinator dies while it runs.
    let marker = cl.path("runs");
    let release = cl.path("release");
    let script = format!(
        "echo started >> {m}; while [ ! -e {r} ]; do sleep 0.05; done; echo finished",
        m = marker.display(),
        r = release.display()
    );
    let job = submit(&mut via_a, sh(&script)).await?;
    wait_for(&mut via_a, &job.id, "running", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    while runs_in(&marker) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Coordinator A is gone for good.
    a.kill();

    // The worker reaches B, and B sees the attempt still held by it: its lease is kept by
    // the worker's heartbeats through B (no reaping as lost).
    let start = std::time::Instant::now();
    loop {
        let w = admin_api(&addr_b)
            .await?
            .list_workers(pb::ListWorkersRequest {
                ..Default::default()
            })
            .await?
            .into_inner()
            .workers;
        if w.iter()
            .any(|w| w.id == "w1" && w.state == pb::WorkerState::Alive as i32)
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "worker never reached coordinator B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = w.log_text();
    assert!(
        log.contains("trying the next coordinator"),
        "worker did not move on: {log}"
    );
    // Let the job finish well after the lease TTL since A died: a worker that had not
    // re-attached its attempt would have it reaped as lost by now.
    tokio::time::sleep(Duration::from_millis(opts().lease_ttl_ms + 1_000)).await;
    std::fs::write(&release, b"")?;
    let (done, attempts) = wait_state(&mut via_b, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 1, "re-run after failover: {attempts:?}");
    assert_eq!(attempts[0].state, pb::AttemptState::Succeeded as i32);
    assert_eq!(done.attempt_count, 1);
    assert_eq!(runs_in(&marker), 1, "the child ran more than once");
    let (out, _, _) = logs(&mut via_b, &job.id, 0).await?;
    assert_eq!(out, b"finished\n");

    // The next job starts through B.
    let next = submit(&mut via_b, sh("echo next")).await?;
    let (_, attempts) = wait_state(&mut via_b, &next.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].worker_id, "w1");

    // droverctl with both addresses uses the first that answers.
    let out = std::process::Command::new(bin("droverctl"))
        .args(["--addr", &both, "show", &next.id])
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .output()?;
    assert!(
        out.status.success(),
        "droverctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    // With only the dead address it fails with a one-line reason naming it.
    let out = std::process::Command::new(bin("droverctl"))
        .args(["--addr", &addr_a, "list"])
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach coordinator"), "{err}");
    drop(via_a);
    Ok(())
}

/// A coordinator that stops answering without closing connections (its host vanished
/// behind a partition) is given up by the HTTP/2 keep-alive, and the worker moves on.
#[tokio::test]
async fn worker_leaves_a_coordinator_that_stops_answering() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_a, addr_a) = cl.coordinator("coord-a", &opts())?;
    let (_b, addr_b) = cl.coordinator("coord-b", &opts())?;
    let proxy = Proxy::start(&addr_a).await?;
    let w = cl.worker("w1", &format!("{},{addr_b}", proxy.addr), 1, &[])?;
    let mut via_b = jobs(&addr_b).await?;
    let marker = cl.path("runs");
    let script = format!(
        "echo started >> {}; sleep 4; echo finished",
        marker.display()
    );
    let job = submit(&mut via_b, sh(&script)).await?;
    wait_for(&mut via_b, &job.id, "running", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    // Packets to A are dropped from now on; nothing is reset.
    proxy.cut();
    let (_, attempts) = wait_state(&mut via_b, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 1, "re-run after failover: {attempts:?}");
    assert_eq!(runs_in(&marker), 1);
    assert!(w.log_text().contains("trying the next coordinator"));
    let next = submit(&mut via_b, sh("echo next")).await?;
    wait_state(&mut via_b, &next.id, pb::JobState::Succeeded).await?;
    Ok(())
}

#[tokio::test]
async fn hello_with_an_unsupported_protocol_version_is_refused_naming_both() -> anyhow::Result<()> {
    use pb::session_request::Msg as Out;
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let current = drover_core::protocol::CURRENT;
    let hello = |v: u32| pb::SessionRequest {
        msg: Some(Out::Hello(pb::Hello {
            worker_id: "future".into(),
            hostname: "h".into(),
            slots: 1,
            free_slots: 1,
            protocol_version: v,
            ..Default::default()
        })),
    };
    let mut client = workers(&addr).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(current + 7)).await?;
    let r = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let status = match r {
        Err(s) => s,
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            match inbound.message().await {
                Err(s) => s,
                Ok(m) => anyhow::bail!("session accepted: {m:?}"),
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let m = status.message();
    assert!(m.contains(&format!("version {}", current + 7)), "{m}");
    assert!(m.contains(&format!("speaks version {current}")), "{m}");
    // Nothing was recorded for the refused worker.
    let listed = admin_api(&addr)
        .await?
        .list_workers(pb::ListWorkersRequest {
            ..Default::default()
        })
        .await?
        .into_inner()
        .workers;
    assert!(listed.iter().all(|w| w.id != "future"), "{listed:?}");

    // Workers of versions 1 (no field: 0) and 2 speak an older wire shape: refused too,
    // telling the worker to upgrade.
    for v in [0, 2] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello(v)).await?;
        let status = match client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Err(s) => s,
            Ok(resp) => match resp.into_inner().message().await {
                Err(s) => s,
                Ok(m) => anyhow::bail!("version {v} accepted: {m:?}"),
            },
        };
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("upgrade the worker"),
            "{status:?}"
        );
    }

    // The minimum supported and the current version are served, and `droverctl workers`
    // shows each worker's version.
    let min = drover_core::protocol::MIN_SUPPORTED;
    let mut held = Vec::new();
    for (id, v) in [("old", min), ("new", current)] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut m = hello(v);
        if let Some(Out::Hello(h)) = &mut m.msg {
            h.worker_id = id.into();
            h.version = format!("test-{id}");
        }
        tx.send(m).await?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = inbound.message().await?;
        assert!(
            matches!(
                first,
                Some(pb::SessionResponse {
                    msg: Some(pb::session_response::Msg::Welcome(_))
                })
            ),
            "{first:?}"
        );
        // Kept open until the end, so both stay listed as alive.
        held.push((tx, inbound));
    }
    let out = std::process::Command::new(bin("droverctl"))
        .args(["--addr", &addr, "workers"])
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("version: test-old (protocol {min})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("version: test-new (protocol {current})")),
        "{text}"
    );
    Ok(())
}
