//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's
//! `playwright-core` from tests/browser/dashboard.mjs) against a real stack: PostgreSQL, a
//! coordinator and a worker. The script's checks fail the test; what it reports is then
//! checked again here over gRPC and on the host.
//!
//! Needs `node` and tests/browser/node_modules (`npm ci` there; `.ci/run` does both).
//! `DROVER_UPDATE_SCREENSHOTS=1` writes the page screenshots to docs/screenshots.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::path::PathBuf;
use std::process::Command;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

#[tokio::test]
async fn dashboard_in_headless_chromium() -> anyhow::Result<()> {
    let dir = browser_dir();
    anyhow::ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser (.ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    anyhow::ensure!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (.ci/run does)"
    );

    let cl = Cluster::new().await?;
    // A small log cap, so a test job can pass it and the viewer shows the marker.
    let opts = CoordinatorOpts {
        env: vec![("DROVER_LOG_CAP_BYTES".into(), "1048576".into())],
        ..Default::default()
    };
    let (c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker(
        "w1",
        &addr,
        4,
        &[
            "--queue",
            "default",
            "--queue",
            "web",
            "--queue",
            "bulk",
            "--queue",
            "bulk-other",
        ],
    )?;
    let mut jobs = jobs(&addr).await?;

    let shots = if std::env::var("DROVER_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        cl.path("screenshots")
    };
    let out = tokio::task::spawn_blocking({
        let http = c.http.clone();
        let shots = shots.clone();
        move || {
            Command::new("node")
                .arg(dir.join("dashboard.mjs"))
                .current_dir(&dir)
                .env("DROVER_HTTP", http)
                .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
                .env("VIEWER_TOKEN", VIEWER_TOKEN)
                .env("SCREENSHOTS", shots)
                .env("CHROMIUM", chromium)
                .output()
        }
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}\ncoordinator log:\n{}",
        out.status,
        c.log_text()
    );
    let result: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .ok_or_else(|| anyhow::anyhow!("no RESULT line"))?,
    )?;

    // The retry the button made is linked to the failed job, as gRPC sees it.
    let (from, to) = (
        result["retry"]["from"].as_str().unwrap_or_default(),
        result["retry"]["to"].as_str().unwrap_or_default(),
    );
    let (new_job, _) = get(&mut jobs, to).await?;
    assert_eq!(new_job.retry_of, from);
    // The cancelled job's process is gone and the job is cancelled.
    let pid = result["cancelled"]["pid"].as_i64().unwrap_or_default() as i32;
    assert!(pid > 1 && wait_dead(pid).await, "pid {pid} still runs");
    let cancelled = result["cancelled"]["job"].as_str().unwrap_or_default();
    wait_state(&mut jobs, cancelled, pb::JobState::Cancelled).await?;
    // Bulk retry made exactly one new job for each failed job of the queue.
    for id in result["bulk"]["failed"].as_array().into_iter().flatten() {
        let id = id.as_str().unwrap_or_default();
        let r = jobs
            .get_job(pb::GetJobRequest { id: id.into() })
            .await?
            .into_inner();
        assert_eq!(r.retried_by.len(), 1, "job {id} retried {:?}", r.retried_by);
    }
    // The viewer's forged retry created nothing: only the operator's retry exists.
    let r = jobs
        .get_job(pb::GetJobRequest { id: from.into() })
        .await?
        .into_inner();
    assert_eq!(r.retried_by, vec![to.to_string()]);
    for page in [
        "login", "jobs", "job", "log", "workers", "queues", "failures",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
    Ok(())
}
