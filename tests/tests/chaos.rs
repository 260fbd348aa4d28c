//! The chaos suite's short seeded run (the long run is `drover-chaos`, see docs/chaos.md):
//! crashes, restarts, pauses and partitions, then every promise checked.

use drover_tests::chaos;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_under_seeded_faults() -> anyhow::Result<()> {
    // A fixed seed so CI is reproducible; DROVER_CHAOS_SEED explores others.
    let seed = std::env::var("DROVER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123);
    let dir = tempfile::Builder::new().prefix("drover-chaos-").tempdir()?;
    let report = chaos::run(&chaos::Config {
        seed,
        jobs: 80,
        chaos: Duration::from_secs(40),
        drain_limit: Duration::from_secs(120),
        dir: Some(dir.path().to_path_buf()),
        netns: false,
    })
    .await?;
    println!("{report}");
    if !report.ok() {
        // Keep the processes' logs, the ledger and the database for a post-mortem.
        let kept = dir.keep();
        panic!("{report}\nevidence kept in {}", kept.display());
    }
    // The run must really have injected faults and run jobs, or it proves nothing.
    assert!(report.faults.values().sum::<u32>() >= 10, "{report}");
    assert!(report.summary.executions >= 80, "{report}");
    // Results were compared over time only if the observer saw some while faults ran.
    assert!(report.summary.observed >= 40, "{report}");
    // The key check had teeth only if keyed jobs contended for the key.
    assert!(report.summary.keyed_jobs >= 10, "{report}");
    assert_eq!(report.summary.key_peak, chaos::KEY_LIMIT, "{report}");
    // The ticks ran through the faults.
    assert!(report.summary.ticks >= 30, "{report}");
    Ok(())
}

/// The same promises with every process on a host of its own on a virtual network
/// (network namespaces): link faults are real link downs, delays and flaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_under_seeded_faults_between_hosts() -> anyhow::Result<()> {
    if let Err(e) = drover_tests::netns::Net::new(&["probe"]) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must be able to create network namespaces: {e:#}"
        );
        eprintln!("SKIPPED: cannot create network namespaces here: {e:#}");
        return Ok(());
    }
    let seed = std::env::var("DROVER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261127);
    let dir = tempfile::Builder::new()
        .prefix("drover-chaos-ns-")
        .tempdir()?;
    let report = chaos::run(&chaos::Config {
        seed,
        jobs: 60,
        chaos: Duration::from_secs(30),
        drain_limit: Duration::from_secs(120),
        dir: Some(dir.path().to_path_buf()),
        netns: true,
    })
    .await?;
    println!("{report}");
    if !report.ok() {
        let kept = dir.keep();
        panic!("{report}\nevidence kept in {}", kept.display());
    }
    assert!(report.faults.values().sum::<u32>() >= 8, "{report}");
    assert!(report.summary.executions >= 60, "{report}");
    assert!(report.summary.observed >= 30, "{report}");
    Ok(())
}
