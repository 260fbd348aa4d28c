//! Artifacts: declared outputs are uploaded with their SHA-256 before the work directory
//! goes, downloaded and verified by droverctl, retried when the upload fails, and removed by
//! retention.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::process::Command;

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn outputs_round_trip_with_checksum_and_expire_with_the_logs() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("retention_interval = \"200ms\"\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;

    // 3 MB of bytes that are not text, made by the test so it knows them.
    let input = cl.path("input.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &content)?;
    let mut s = sh(
        "mkdir -p out && echo a,b > out/a.csv && echo c > out/c.csv && \
                    cp \"$INPUT\" model.bin && echo no > ignored.txt",
    );
    s.env.insert("INPUT".into(), input.display().to_string());
    s.outputs = vec!["out/*.csv".into(), "model.bin".into()];
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;

    let list = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .artifacts;
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["model.bin", "out/a.csv", "out/c.csv"]);
    assert_eq!(list[0].size, 3_000_000);
    // The work directory is emptied (slots' directories are reused) once the attempt is
    // reported.
    let work = cl.path("w1-state").join("work");
    for dir in std::fs::read_dir(&work)? {
        let dir = dir?.path();
        assert!(dir.is_dir(), "{} left in work/", dir.display());
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            0,
            "work directory {} left with files",
            dir.display()
        );
    }

    let dest = cl.path("downloaded.bin");
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["artifacts", &job.id, "--get", "model.bin", "--out"])
        .arg(&dest)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("verified"));
    assert!(std::fs::read(&dest)? == content, "downloaded bytes differ");

    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["artifacts", &job.id, "--get", "nope.txt"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.bin"), "error lists what exists: {err}");

    // Retention takes the files with the logs.
    let db = cl.db.client().await?;
    let job_uuid: uuid::Uuid = job.id.parse()?;
    db.execute(
        "UPDATE attempts SET finished_at = now() - interval '30 days' WHERE job_id = $1",
        &[&job_uuid],
    )
    .await?;
    wait_for(&mut api, &job.id, "logs purged", |_, a| {
        a.first().map(|a| a.logs_purged) == Some(true)
    })
    .await?;
    let left = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .artifacts;
    assert!(left.is_empty());
    // The records go in the purge transaction, the files right after its commit.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let files = files_under(&cl.path("artifacts"));
        if files.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired artifact files left behind: {files:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_upload_fails_the_attempt_as_retryable() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("max_artifact_bytes = 1000\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let mut s = sh(
        r#"if [ "$DROVER_ATTEMPT" = 1 ]; then head -c 2000 /dev/zero > out.bin; else echo small > out.bin; fi"#,
    );
    s.outputs = vec!["out.bin".into()];
    let job = submit(&mut api, s).await?;
    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].state, pb::AttemptState::Failed as i32);
    assert!(
        attempts[0].reason.contains("outputs were not kept")
            && attempts[0].reason.contains("max_artifact_bytes"),
        "{}",
        attempts[0].reason
    );
    let list = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .artifacts;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].size, 6);
    assert_eq!(list[0].attempt_number, 2);
    Ok(())
}
