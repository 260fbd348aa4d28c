//! Every command in the README's "Using it" block runs, as written, against `droverctl dev`
//! (the README's first command): a command that stops working fails here, not in an
//! operator's shell. The block's placeholders stand for real ids: `JOB_ID` for a finished
//! job (a pending or running one on `cancel` lines) and `FP` for a failure group's
//! fingerprint; the default addresses become the ones this stack listens on.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The commands of the first ```sh block after "## Using it", continuation lines joined.
fn readme_commands(readme: &str) -> anyhow::Result<Vec<String>> {
    let section = readme
        .split("## Using it")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("README has no \"## Using it\" section"))?;
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .ok_or_else(|| anyhow::anyhow!("no ```sh block under \"## Using it\""))?;
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        let cmd = std::mem::take(&mut pending);
        let t = cmd.trim();
        if !t.is_empty() && !t.starts_with('#') {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

#[test]
fn the_block_is_found_and_parsed() -> anyhow::Result<()> {
    let text = "x\n## Using it\n\n```sh\nexport A=1\n# c\na \\\n  b\n\nc # d\n```\n";
    assert_eq!(readme_commands(text)?, vec!["export A=1", "a   b", "c # d"]);
    Ok(())
}

/// Reads `droverctl dev`'s stdout until it has printed its addresses and token.
fn dev_addresses(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    log: &Path,
) -> anyhow::Result<(String, String, String)> {
    let (mut addr, mut http, mut token) = (None, None, None);
    while addr.is_none() || http.is_none() || token.is_none() {
        let Some(line) = lines.next() else {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("droverctl dev exited before listening: {log}");
        };
        let line = line?;
        let t = line.trim();
        if let Some(a) = t.strip_prefix("DROVER_ADDR=") {
            addr = Some(a.to_string());
        } else if let Some(t) = t.strip_prefix("DROVER_TOKEN=") {
            token = Some(t.to_string());
        } else if let Some(h) = t.strip_prefix("HTTP:") {
            let url = h.split_whitespace().next().unwrap_or_default();
            http = url.strip_prefix("http://").map(str::to_string);
        }
    }
    Ok((
        addr.unwrap_or_default(),
        http.unwrap_or_default(),
        token.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn every_readme_command_runs_against_the_dev_stack() -> anyhow::Result<()> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let commands = readme_commands(&readme)?;
    assert!(commands.len() > 10, "too few commands found: {commands:?}");

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("dev");
    let log = dir.path().join("dev.log");
    let mut dev = Command::new(bin("droverctl"))
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
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdout = dev
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let result = run_commands(&commands, &mut lines, &log, dir.path()).await;

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    for _ in 0..600 {
        if dev.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = dev.kill();
    let _ = dev.wait();
    result
}

async fn run_commands(
    commands: &[String],
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    log: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    let (addr, http, token) = dev_addresses(lines, log)?;
    let mut api = jobs_as(&addr, Some(&token)).await?;

    // A finished job for JOB_ID: with the params the rerun line replaces and a kept file.
    let mut finished =
        sh("mkdir -p out && echo 1,2 > out/result.csv && echo fetching {data_types} for {date}");
    finished.queue = "scrape".into();
    finished.params = [("date", "2026-11-22"), ("data_types", "entries")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    finished.outputs = vec!["out/*.csv".into()];
    let finished = submit(&mut api, finished).await?;
    wait_state(&mut api, &finished.id, pb::JobState::Succeeded).await?;

    // A failure group for FP.
    let mut failing = sh("echo 'HTTP 503 from races.example'; exit 3");
    failing.queue = "scrape".into();
    if let Some(r) = failing.retry.as_mut() {
        r.max_retries = Some(0);
    }
    let failing = submit(&mut api, failing).await?;
    wait_state(&mut api, &failing.id, pb::JobState::PermanentFailed).await?;
    let mut alerts = drover_proto::v1::alert_service_client::AlertServiceClient::new(
        channel_as(&addr, Some(&token)).await?,
    );
    let groups = alerts
        .list_failure_groups(pb::ListFailureGroupsRequest {
            queue: "scrape".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .groups;
    let fp = groups
        .first()
        .map(|g| g.fingerprint.clone())
        .ok_or_else(|| anyhow::anyhow!("the failing job made no failure group"))?;

    // A running job for the cancel line.
    let running = submit(&mut api, sh("sleep 600")).await?;
    wait_state(&mut api, &running.id, pb::JobState::Running).await?;

    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cwd = dir.join("shell");
    std::fs::create_dir_all(&cwd)?;
    let mut ran = 0;
    for cmd in commands {
        if cmd.starts_with("export ") {
            // The environment below is what these lines set.
            continue;
        }
        let job = if cmd.starts_with("droverctl cancel") {
            &running.id
        } else {
            &finished.id
        };
        let line = cmd
            .replace("http://127.0.0.1:50051", &addr)
            .replace("127.0.0.1:50052", &http)
            .replace("JOB_ID", job)
            .replace(" FP", &format!(" {fp}"));
        let out = Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", &line])
            .current_dir(&cwd)
            .env("PATH", &path)
            .env("DROVER_ADDR", &addr)
            .env("DROVER_TOKEN", &token)
            .env_remove("DROVER_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()?;
        assert!(
            out.status.success(),
            "README command failed ({}): {cmd}\nran: {line}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran > 10, "only {ran} commands ran");
    // What some of them did, seen from outside.
    assert_eq!(
        std::fs::read_to_string(cwd.join("out/result.csv"))
            .or_else(|_| { std::fs::read_to_string(cwd.join("result.csv")) })?,
        "1,2\n",
        "artifacts --get did not fetch the kept file"
    );
    let (j, _) = get(&mut api, &running.id).await?;
    assert!(
        j.cancel_requested || is_state(&j, pb::JobState::Cancelled),
        "the cancel line did not cancel: {j:?}"
    );
    Ok(())
}
