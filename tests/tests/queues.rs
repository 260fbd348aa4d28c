//! Queue pause/resume with real workers: a paused queue leases nothing new, its running
//! jobs finish, other queues are unaffected, and resume dispatches the waiting jobs.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn paused_queue_leases_nothing_running_jobs_finish_resume_releases() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        port: free_port(),
        ..Default::default()
    };
    let (_c1, addr) = cl.coordinator("c1", &opts)?;
    // A second coordinator: pausing through one must hold for workers of the other.
    let (_c2, addr2) = cl.coordinator("c2", &CoordinatorOpts::default())?;
    let _w1 = cl.worker("w1", &addr, 4, &["--queue", "scrape", "--queue", "other"])?;
    let _w2 = cl.worker("w2", &addr2, 4, &["--queue", "scrape", "--queue", "other"])?;
    let mut api = jobs(&addr).await?;
    let mut qs = queues(&addr).await?;
    let in_scrape = |script: &str| pb::JobSpec {
        queue: "scrape".into(),
        ..sh(script)
    };
    let running = submit(&mut api, in_scrape("sleep 2")).await?;
    wait_state(&mut api, &running.id, pb::JobState::Running).await?;

    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "queue", "pause", "scrape"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(out.stdout)?.starts_with("scrape: paused"));
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(submit(&mut api, in_scrape("true")).await?.id);
    }
    let other = submit(
        &mut api,
        pb::JobSpec {
            queue: "other".into(),
            ..sh("true")
        },
    )
    .await?;
    // The running job finishes; a job of another queue runs; the paused queue's jobs stay
    // pending all the while (checked after both finished, with free slots on both workers).
    wait_state(&mut api, &running.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &other.id, pb::JobState::Succeeded).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &waiting {
        let (j, a) = get(&mut api, id).await?;
        assert!(
            is_state(&j, pb::JobState::Pending) && a.is_empty(),
            "{j:?} {a:?}"
        );
        assert_eq!(j.waiting, "queue paused");
    }
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "list", "--state", "pending"])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.matches("waiting: queue paused").count(), 4, "{text}");
    let list = qs
        .list_queues(pb::ListQueuesRequest {
            ..Default::default()
        })
        .await?
        .into_inner();
    let scrape = list
        .queues
        .iter()
        .find(|q| q.queue == "scrape")
        .cloned()
        .unwrap_or_default();
    assert!(scrape.paused && scrape.pending == 4, "{list:?}");

    // Resume through the other coordinator: everything waiting runs.
    let mut qs2 = queues(&addr2).await?;
    qs2.resume_queue(pb::ResumeQueueRequest {
        queue: "scrape".into(),
    })
    .await?;
    for id in &waiting {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }

    // Bad names are refused, naming the field.
    for bad in ["", "has space", &"q".repeat(65)] {
        let e = qs
            .pause_queue(pb::PauseQueueRequest { queue: bad.into() })
            .await
            .expect_err("bad queue name");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("queue:"), "{}", e.message());
    }
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "queue", "pause", "bad name"])
        .output()?;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stderr)?.lines().count(), 1);
    Ok(())
}
