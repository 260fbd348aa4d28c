//! Log streams cannot exhaust the coordinator (issue 12, finding 4): an unread stream
//! holds only a few chunks (the next are read when the client takes these), followers wait
//! for a shared notification instead of polling the database with a pooled connection
//! each, and one client address can hold only so many streams.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::{Duration, Instant};
use tonic::Code;

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

async fn open(
    c: &mut JobsClient,
    job: &str,
    follow: bool,
) -> Result<tonic::Streaming<pb::StreamLogsResponse>, tonic::Status> {
    Ok(c.stream_logs(pb::StreamLogsRequest {
        job_id: job.to_string(),
        attempt: 0,
        follow,
    })
    .await?
    .into_inner())
}

#[tokio::test]
async fn five_hundred_unread_streams_keep_the_coordinator_bounded() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        env: vec![("DROVER_MAX_LOG_STREAMS_PER_CLIENT".into(), "520".into())],
        ..CoordinatorOpts::default()
    };
    let (c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // 8 MB of stored output, and a job that stays running (for followers).
    let big = submit(&mut api, sh("yes 0123456789abcdef | head -c 8000000")).await?;
    wait_state(&mut api, &big.id, pb::JobState::Succeeded).await?;
    let running = submit(&mut api, sh("echo started; sleep 1000")).await?;
    wait_state(&mut api, &running.id, pb::JobState::Running).await?;
    let baseline = vm_rss_kib(c.pid());

    // 250 unread streams of the big log and 250 idle followers of the running job, over
    // 50 connections.
    let mut held = Vec::new();
    for i in 0..50 {
        let mut client = jobs(&addr).await?;
        for j in 0..10 {
            let s = if (i * 10 + j) % 2 == 0 {
                open(&mut client, &big.id, true).await?
            } else {
                open(&mut client, &running.id, true).await?
            };
            held.push(s);
        }
    }
    assert_eq!(held.len(), 500);

    // A trivial job still runs promptly: followers do not hold the database pool.
    let t = submit(&mut api, sh("echo trivial")).await?;
    wait_state(&mut api, &t.id, pb::JobState::Succeeded).await?;

    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(vm_rss_kib(c.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "coordinator RSS: {} MiB before, {} MiB peak with 500 streams open",
        baseline / 1024,
        peak / 1024
    );
    // 250 streams × 8 MB would be 2 GB if each loaded its log; a few chunks each is far less.
    assert!(
        grown_mib < 300,
        "coordinator grew by {grown_mib} MiB with 500 open streams (from {} MiB)",
        baseline / 1024
    );

    // One more than the cap is refused with a clear message.
    let mut extra = Vec::new();
    let mut client = jobs(&addr).await?;
    let refused = loop {
        match open(&mut client, &big.id, true).await {
            Ok(s) => extra.push(s),
            Err(e) => break e,
        }
        anyhow::ensure!(extra.len() <= 20, "the cap was not applied");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_log_streams_per_client"),
        "{}",
        refused.message()
    );
    assert_eq!(extra.len() + held.len(), 520);

    // Dropping streams gives their places back.
    drop(held);
    drop(extra);
    let start = Instant::now();
    loop {
        if open(&mut client, &big.id, false).await.is_ok() {
            break;
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "closed streams never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_follower_sees_new_output_and_the_end_promptly() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let marker = cl.path("go");
    let job = submit(
        &mut api,
        sh(&format!(
            "echo one; while [ ! -e {} ]; do sleep 0.05; done; echo two",
            marker.display()
        )),
    )
    .await?;
    let mut s = open(&mut api, &job.id, true).await?;
    let mut text = Vec::new();
    while !text.ends_with(b"one\n") {
        let c = s
            .message()
            .await?
            .and_then(|r| r.chunk)
            .ok_or_else(|| anyhow::anyhow!("ended early"))?;
        text.extend(c.data);
    }
    std::fs::write(&marker, "")?;
    // The rest arrives and the stream ends when the job does.
    while let Some(c) = s.message().await?.and_then(|r| r.chunk) {
        text.extend(c.data);
    }
    assert_eq!(text, b"one\ntwo\n");
    Ok(())
}
