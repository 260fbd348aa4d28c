//! PostgreSQL failover: a primary and a streaming replica with synchronous replication,
//! the coordinator given both hosts with `target_session_attrs=read-write`. The primary
//! dies while jobs are submitted and run; the replica is promoted. The coordinator finds
//! the new primary by itself, and every job whose submit was acknowledged is there and
//! runs to its end.

use drover_pgserver::{PgServer, PgServerConfig};
use drover_tests::v1 as pb;
use drover_tests::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn promoted_replica_takes_over_and_no_acknowledged_submit_is_lost() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let settings = vec![
        ("synchronous_commit".to_string(), "on".to_string()),
        ("wal_level".to_string(), "replica".to_string()),
    ];
    let mut primary = PgServer::start(PgServerConfig {
        data_dir: cl.path("pg-primary"),
        settings: settings.clone(),
        ..Default::default()
    })
    .await?;
    primary.create_database("drover").await?;
    let replica = PgServer::start_replica(
        PgServerConfig {
            data_dir: cl.path("pg-replica"),
            settings,
            ..Default::default()
        },
        &primary,
    )
    .await?;
    // Synchronous replication from now on (set once the standby exists, or every commit
    // would wait for it): a commit is acknowledged once the standby has it.
    {
        let c = connect(&primary.url("postgres")).await?;
        c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await?;
        c.batch_execute("SELECT pg_reload_conf()").await?;
        let start = std::time::Instant::now();
        loop {
            let rows = c
                .query(
                    "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?;
            if rows.iter().any(|r| r.get::<_, String>(0) == "sync") {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < PATIENCE,
                "replica never became synchronous"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/drover?target_session_attrs=read-write&connect_timeout=2",
        primary.port(),
        replica.port()
    );
    let opts = CoordinatorOpts {
        database_url: Some(url),
        lease_ttl_ms: 8_000,
        ..Default::default()
    };
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;

    // Jobs running when the primary dies.
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(submit(&mut api, sh("sleep 2; echo done")).await?.id);
    }
    for id in &running {
        wait_state(&mut api, id, pb::JobState::Running).await?;
    }

    // A submitter that keeps going through the failover, keeping every id acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let submitter = {
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        let mut api = jobs(&addr).await?;
        tokio::spawn(async move {
            let mut refused = 0u32;
            while !stop.is_cancelled() {
                match submit(&mut api, sh("echo ok")).await {
                    Ok(j) => acknowledged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(j.id),
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The primary crashes; the replica is promoted.
    primary.stop_immediate().await?;
    replica.promote().await?;

    // The coordinator reaches the new primary by itself: new submits are acknowledged.
    let before = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).len();
    let start = std::time::Instant::now();
    while acknowledged.lock().unwrap_or_else(|p| p.into_inner()).len() < before + 5 {
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "no submit acknowledged after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let refused = submitter.await?;
    let acked = acknowledged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    eprintln!(
        "{} submits acknowledged, {refused} refused during the failover",
        acked.len()
    );

    // Every acknowledged job is stored and runs to success; the jobs that were running
    // finish too.
    for id in acked.iter().chain(running.iter()) {
        let (job, _) = wait_state(&mut api, id, pb::JobState::Succeeded).await?;
        assert_eq!(&job.id, id);
    }
    // And the new primary is the replica.
    let c = connect(&replica.url("drover")).await?;
    let n: i64 = c.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0);
    assert!(n as usize >= acked.len() + running.len());
    Ok(())
}
