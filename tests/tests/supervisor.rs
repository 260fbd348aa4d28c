//! What a supervisor (systemd) sees: `Type=notify` datagrams on a real NOTIFY_SOCKET
//! (READY=1, WATCHDOG=1, STOPPING=1), exit codes and signals as docs/deploy.md states
//! them, and the shipped units accepted by `systemd-analyze verify`.

use drover_tests::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A NOTIFY_SOCKET listener: the datagrams a service sent, in order.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> anyhow::Result<NotifySocket> {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        })
    }

    /// Waits (up to PATIENCE) for a datagram equal to `want`; keeps all it read.
    fn wait_for(&mut self, want: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while !self.seen.iter().any(|s| s == want) {
            anyhow::ensure!(
                start.elapsed() < PATIENCE,
                "no {want} on NOTIFY_SOCKET; got {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
        }
        Ok(())
    }

    fn position(&self, what: &str) -> Option<usize> {
        self.seen.iter().position(|s| s == what)
    }
}

#[tokio::test]
async fn coordinator_notifies_ready_watchdog_and_stopping_and_exits_0_on_sigterm(
) -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let mut notify = NotifySocket::bind(cl.dir.path())?;
    let opts = CoordinatorOpts {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            // 200 ms: a keep-alive every 100 ms.
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..Default::default()
    };
    // spawn_coordinator returns once the coordinator printed its addresses, i.e. after it
    // listens: READY=1 must be there by then or very soon.
    let (mut c, addr) = cl.coordinator("coord", &opts)?;
    notify.wait_for("READY=1")?;
    // It answers once it said it is ready.
    let mut api = jobs(&addr).await?;
    api.list_jobs(drover_tests::v1::ListJobsRequest::default())
        .await?;
    notify.wait_for("WATCHDOG=1")?;
    // An open client connection would hold up the graceful shutdown.
    drop(api);
    c.signal(nix::sys::signal::Signal::SIGTERM);
    notify.wait_for("STOPPING=1")?;
    assert_eq!(
        c.wait_exit(PATIENCE)?,
        Some(0),
        "SIGTERM must end it with 0"
    );
    assert!(notify.position("READY=1") < notify.position("STOPPING=1"));
    Ok(())
}

#[tokio::test]
async fn worker_notifies_ready_while_retrying_then_drains_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut notify = NotifySocket::bind(dir.path())?;
    // Nothing listens on this port: the worker is up and retrying.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut w = spawn_worker(
        dir.path(),
        "w1",
        &nowhere,
        1,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap_or_default()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )?;
    notify.wait_for("READY=1")?;
    notify.wait_for("WATCHDOG=1")?;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    notify.wait_for("STOPPING=1")?;
    assert_eq!(w.wait_exit(PATIENCE)?, Some(0), "a drained worker exits 0");
    Ok(())
}

#[tokio::test]
async fn worker_notifies_ready_once_connected() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut notify = NotifySocket::bind(cl.dir.path())?;
    let path = notify.path.display().to_string();
    let mut w = cl.worker_with_env("w1", &addr, 1, &[], &[("NOTIFY_SOCKET", &path)])?;
    notify.wait_for("READY=1")?;
    // READY comes with the first session, or with its first failure (a connect on a
    // loaded machine can time out): then the worker connects on a later try.
    let start = std::time::Instant::now();
    while !w.log_text().contains("connected to coordinator") {
        assert!(
            start.elapsed() < PATIENCE,
            "never connected:\n{}",
            w.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SIGINT drains the same way as SIGTERM.
    w.signal(nix::sys::signal::Signal::SIGINT);
    notify.wait_for("STOPPING=1")?;
    assert_eq!(w.wait_exit(PATIENCE)?, Some(0));
    Ok(())
}

#[test]
fn bad_configuration_exits_78_for_both_daemons() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "this is = = not toml")?;
    for (name, args) in [
        (
            "drover-coordinator",
            vec!["--config", bad.to_str().unwrap_or_default(), "serve"],
        ),
        (
            "drover-worker",
            vec!["--config", bad.to_str().unwrap_or_default()],
        ),
        ("drover-worker", vec!["--coordinator", "127.0.0.1:50051"]),
    ] {
        let out = Command::new(bin(name))
            .args(&args)
            .stdin(Stdio::null())
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name} {args:?}: {err}");
        // The first line says what is wrong (a TOML error goes on to show where).
        assert!(
            err.starts_with(&format!("{name}: bad configuration: ")),
            "{name}: {err}"
        );
    }
    Ok(())
}

#[test]
fn shipped_units_pass_systemd_analyze_verify() -> anyhow::Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed on this machine");
        return Ok(());
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = tempfile::tempdir()?;
    let mut units = Vec::new();
    for (unit, binary) in [
        ("drover-coordinator.service", "drover-coordinator"),
        ("drover-worker.service", "drover-worker"),
    ] {
        let text = std::fs::read_to_string(deploy.join(unit))?;
        assert!(text.contains("Type=notify"), "{unit}: not Type=notify");
        assert!(text.contains("WatchdogSec="), "{unit}: no WatchdogSec");
        assert!(text.contains("RestartPreventExitStatus=78"), "{unit}");
        // The units name the packaged path; verify checks that the binary exists.
        let text = text.replace(
            &format!("/usr/bin/{binary}"),
            &bin(binary).display().to_string(),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, text)?;
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings: any output is a failure.
    let problems: Vec<&str> = err.lines().filter(|l| l.contains(".service")).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {err}"
    );
    Ok(())
}
