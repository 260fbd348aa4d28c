//! `droverctl dev`, the README's first command: a private PostgreSQL, a coordinator and a
//! worker; Ctrl-C stops all of it and leaves no process behind.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Pids of postgres processes whose command line mentions `dir`.
fn postgres_under(dir: &std::path::Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .map(|c| c.contains("postgres") && c.contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

#[tokio::test]
async fn dev_stack_runs_a_job_and_ctrl_c_stops_everything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("dev");
    let mut child = Command::new(bin("droverctl"))
        .args([
            "dev",
            "--no-sample",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("dev.log"))?)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Access control is on: the stack prints an admin token beside its address.
    let (mut addr, mut token) = (None, None);
    while addr.is_none() || token.is_none() {
        let Some(line) = lines.next() else {
            let log = std::fs::read_to_string(dir.path().join("dev.log"))?;
            anyhow::bail!("droverctl dev exited before listening: {log}");
        };
        let line = line?;
        if let Some(a) = line.trim().strip_prefix("DROVER_ADDR=") {
            addr = Some(a.to_string());
        }
        if let Some(t) = line.trim().strip_prefix("DROVER_TOKEN=") {
            token = Some(t.to_string());
        }
    }
    let (addr, token) = (addr.unwrap_or_default(), token.unwrap_or_default());
    // Without the token nothing is answered.
    let err = jobs_as(&addr, None)
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect_err("no token must be refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        !postgres_under(&data).is_empty(),
        "no private PostgreSQL started"
    );

    let mut api = jobs_as(&addr, Some(&token)).await?;
    let job = submit(&mut api, sh("echo hello from dev")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let (out, _, _) = logs(&mut api, &job.id, 0).await?;
    assert_eq!(out, b"hello from dev\n");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        anyhow::bail!("droverctl dev did not stop after Ctrl-C");
    };
    assert!(status.success(), "{status:?}");
    for pid in postgres_under(&data) {
        assert!(wait_dead(pid).await, "postgres {pid} left running");
    }
    Ok(())
}
