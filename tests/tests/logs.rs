//! Job output: size cap, live follow (also through another coordinator), spooling while
//! the coordinator is unreachable, retention and the HTTP download.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::Duration;

/// A job that prints "first", waits until `flag` exists, then prints "second".
fn gated_job(flag: &std::path::Path) -> pb::JobSpec {
    let mut s = sh("echo first; while [ ! -f \"$FLAG\" ]; do sleep 0.05; done; echo second");
    s.env.insert("FLAG".into(), flag.display().to_string());
    s
}

/// Follows the job's log on `addr`; the job can only finish after we saw its first line,
/// so the follower is shown to be live, not replaying afterwards.
async fn follow_gated(
    follower_addr: &str,
    job: &str,
    flag: &std::path::Path,
) -> anyhow::Result<()> {
    let mut api = jobs(follower_addr).await?;
    let mut stream = api
        .stream_logs(pb::StreamLogsRequest {
            job_id: job.to_string(),
            attempt: 0,
            follow: true,
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(c) = tokio::time::timeout(PATIENCE, stream.message())
        .await??
        .and_then(|r| r.chunk)
    {
        seen.extend_from_slice(&c.data);
        if seen == b"first\n" {
            std::fs::write(flag, b"go")?;
        }
    }
    assert_eq!(seen, b"first\nsecond\n");
    let (j, _) = get(&mut api, job).await?;
    assert_eq!(
        j.state,
        pb::JobState::Succeeded as i32,
        "follow ends when the job ends"
    );
    Ok(())
}

#[tokio::test]
async fn follow_shows_output_while_the_job_runs() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let flag = cl.path("flag");
    let job = submit(&mut api, gated_job(&flag)).await?;
    follow_gated(&addr, &job.id, &flag).await
}

#[tokio::test]
async fn follow_through_a_coordinator_other_than_the_workers() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_a, addr_a) = cl.coordinator("coord-a", &CoordinatorOpts::default())?;
    let (_b, addr_b) = cl.coordinator("coord-b", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr_a, 1, &[])?;
    let mut api = jobs(&addr_a).await?;
    let flag = cl.path("flag");
    let job = submit(&mut api, gated_job(&flag)).await?;
    follow_gated(&addr_b, &job.id, &flag).await
}

#[tokio::test]
async fn output_beyond_the_cap_keeps_head_and_tail_with_a_marker() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let cap = 1024 * 1024;
    let opts = CoordinatorOpts {
        config_toml: Some(format!("log_cap_bytes = {cap}\n")),
        ..Default::default()
    };
    let (c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    // About 4.8 MB of numbered lines.
    let job = submit(&mut api, spec(&["seq", "1", "700000"])).await?;
    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let total: usize = (1..=700000).map(|i: u32| i.to_string().len() + 1).sum();
    assert_eq!(attempts[0].log_bytes as usize, total);
    let dropped = attempts[0].log_dropped_bytes as usize;
    assert!(dropped > 0);

    let (out, err, _) = logs(&mut api, &job.id, 1).await?;
    let text = String::from_utf8(out.clone())?;
    assert!(text.starts_with("1\n2\n3\n"), "head kept");
    assert!(text.ends_with("699999\n700000\n"), "tail kept");
    assert_eq!(out.len() + dropped, total, "kept + dropped = written");
    assert!(
        out.len() <= cap && out.len() >= cap - 2 * 64 * 1024,
        "{} kept",
        out.len()
    );
    let marker = String::from_utf8(err)?;
    assert!(
        marker.contains(&format!("{dropped} bytes of output dropped")),
        "{marker}"
    );

    // The HTTP download is the same file, marker included, under a useful name.
    let url = format!("{}/jobs/{}/logs?attempt=1", c.http, job.id);
    let resp = http_get(&url).await?;
    assert_eq!(resp.status(), 200);
    let disposition = resp
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        disposition.contains(&format!("job-{}-attempt-1.log", job.id)),
        "{disposition}"
    );
    let body = resp.bytes().await?;
    assert_eq!(body.len(), out.len() + marker.len());
    assert!(body.starts_with(b"1\n2\n3\n") && body.ends_with(b"700000\n"));
    Ok(())
}

#[tokio::test]
async fn http_download_errors_are_clear() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, _addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let r = http_get(&format!("{}/jobs/nope/logs", c.http)).await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.starts_with("id:"));
    let unknown = uuid::Uuid::new_v4();
    let r = http_get(&format!("{}/jobs/{unknown}/logs", c.http)).await?;
    assert_eq!(r.status(), 404);
    assert_eq!(
        reqwest::get(format!("{}/healthz", c.http)).await?.status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", c.http)).await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn chatty_job_finishes_while_the_coordinator_is_unreachable() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // A lease longer than the outage: this test is about the log, not about leases.
    let opts = CoordinatorOpts {
        lease_ttl_ms: 120_000,
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let proxy = Proxy::start(&addr).await?;
    let _w = cl.worker("w1", &proxy.addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let done = cl.path("done");
    let gate = cl.path("gate");
    // ~21 MB of output, far more than pipes and in-memory buffers hold.
    let mut s = sh(
        "echo start; while [ ! -f \"$GATE\" ]; do sleep 0.05; done; seq 1 3000000; touch \"$DONE\"",
    );
    s.env.insert("GATE".into(), gate.display().to_string());
    s.env.insert("DONE".into(), done.display().to_string());
    let job = submit(&mut api, s).await?;
    wait_for(&mut api, &job.id, "start printed", |_, a| {
        a.first().map(|a| a.log_bytes) == Some(6)
    })
    .await?;

    proxy.cut();
    std::fs::write(&gate, b"go")?;
    // The child runs to its end with nobody to send output to.
    let start = std::time::Instant::now();
    while !done.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "child blocked while the coordinator was away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (j, _) = get(&mut api, &job.id).await?;
    assert_eq!(
        j.state,
        pb::JobState::Running as i32,
        "result not delivered yet"
    );
    proxy.restore();

    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 1);
    let (out, _, _) = logs(&mut api, &job.id, 1).await?;
    let mut expected = b"start\n".to_vec();
    for i in 1..=3_000_000u32 {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
    }
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "log differs from the output");
    Ok(())
}

#[tokio::test]
async fn retention_deletes_only_old_logs() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("log_retention = \"7d\"\nretention_interval = \"200ms\"\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;
    let old = submit(&mut api, sh("echo old")).await?;
    let recent = submit(&mut api, sh("echo recent")).await?;
    wait_state(&mut api, &old.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &recent.id, pb::JobState::Succeeded).await?;
    // Age one job's attempt past the 7-day retention.
    let db = cl.db.client().await?;
    let old_id: uuid::Uuid = old.id.parse()?;
    db.execute(
        "UPDATE attempts SET finished_at = now() - interval '8 days' WHERE job_id = $1",
        &[&old_id],
    )
    .await?;

    let (_, attempts) = wait_for(&mut api, &old.id, "log purged", |_, a| {
        a.first().map(|a| a.logs_purged) == Some(true)
    })
    .await?;
    assert_eq!(attempts[0].state, pb::AttemptState::Succeeded as i32);
    let (out, _, _) = logs(&mut api, &old.id, 0).await?;
    assert!(out.is_empty());
    let (_, attempts) = get(&mut api, &recent.id).await?;
    assert!(!attempts[0].logs_purged);
    let (out, _, _) = logs(&mut api, &recent.id, 0).await?;
    assert_eq!(out, b"recent\n");
    Ok(())
}
