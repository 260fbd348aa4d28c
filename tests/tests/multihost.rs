//! Drover across hosts on a real network: every host is a Linux network namespace with
//! its own address on a bridge (tests/src/netns.rs), and everything between hosts is TLS
//! (a private CA from `droverctl certs init`; workers present client certificates).
//!
//! - h1: PostgreSQL and coordinator A · h2: coordinator B · h3: worker w1 · h4: worker w2
//! - h5: the operator (the test's own gRPC calls and droverctl run there).
//!
//! Jobs run across both workers; then real network faults: delay, loss and reordering on a
//! worker's link (tc netem; a bandwidth limit where the kernel lacks netem), a worker host
//! partitioned away and back, and a coordinator host gone for good.
//!
//! Skipped, with the reason printed, where namespaces cannot be made (not root, no
//! iproute2); under CI=true that is a failure instead.

use drover_pgserver::{PgServer, PgServerConfig};
use drover_tests::netns::{Host, Net};
use drover_tests::tls::*;
use drover_tests::v1 as pb;
use drover_tests::*;
use drover_transport::ClientTls;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const LEASE_TTL_MS: u64 = 15_000;

struct Leftovers(std::path::PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        stop_leftover_jobs(&self.0);
    }
}

fn net_or_skip(names: &[&str]) -> Option<Net> {
    match Net::new(names) {
        Ok(n) => Some(n),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must be able to create network namespaces: {e:#}"
            );
            eprintln!("SKIPPED: cannot create network namespaces here: {e:#}");
            None
        }
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?)
}

/// A coordinator on `host`, listening on the host's address; returns it and its address.
fn coordinator_on(
    host: &Host,
    dir: &Path,
    name: &str,
    db_url: &str,
    pki: &Path,
) -> anyhow::Result<(Proc, String)> {
    let toml = format!(
        "{}tls_client_cert_required = false\n",
        coordinator_toml(
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            Some(&pki.join("ca.pem")),
        )
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml)?;
    let mut child = host
        .command(bin("drover-coordinator"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("{}:50051", host.ip)])
        .args(["--http-listen", &format!("{}:50052", host.ip)])
        .args(["--database-url", db_url])
        .env("DROVER_LEASE_TTL", format!("{LEASE_TTL_MS}ms"))
        .env("DROVER_HEARTBEAT_INTERVAL", "1s")
        .env("DROVER_REAPER_INTERVAL", "500ms")
        .env("DROVER_ARTIFACT_DIR", dir.join(format!("{name}-artifacts")))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(dir, name)?)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut proc = Proc::new(name, child, dir.join(format!("{name}.log")));
    // Both lines (DROVER_ADDR, DROVER_HTTP) are read before the pipe is closed: a print
    // to a closed stdout would end the coordinator.
    let (mut line, mut http) = (String::new(), String::new());
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line)?;
    reader.read_line(&mut http)?;
    let Some(addr) = line.trim().strip_prefix("DROVER_ADDR=") else {
        proc.kill();
        anyhow::bail!("{name} did not start: {}", proc.log_text());
    };
    Ok((proc, addr.to_string()))
}

/// A worker on `host` with a client certificate for `id`, given `coordinators` in order.
fn worker_on(
    host: &Host,
    dir: &Path,
    id: &str,
    coordinators: &[&str],
    pki: &Path,
) -> anyhow::Result<Proc> {
    let child = host
        .command(bin("drover-worker"))
        .args(["--coordinator", &coordinators.join(",")])
        .args(["--worker-id", id, "--slots", "2"])
        .args(["--label", &format!("on-{}", host.name)])
        .arg("--state-dir")
        .arg(dir.join(format!("{id}-state")))
        .arg("--ca-file")
        .arg(pki.join("ca.pem"))
        .env(
            "DROVER_WORKER_TLS_CERT_FILE",
            pki.join(format!("worker-{id}.pem")),
        )
        .env(
            "DROVER_WORKER_TLS_KEY_FILE",
            pki.join(format!("worker-{id}-key.pem")),
        )
        .env("DROVER_WORKER_TOKEN", WORKER_TOKEN)
        .env("DROVER_WORKER_KILL_GRACE", "1s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir, id)?)
        .spawn()?;
    Ok(Proc::new(id, child, dir.join(format!("{id}.log"))))
}

fn pinned(host: &str, script: &str) -> pb::JobSpec {
    let mut s = sh(script);
    s.labels = vec![format!("on-{host}")];
    s
}

async fn wait_workers_alive(addr: &str, tls: &ClientTls, ids: &[&str]) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(authed(channel_tls(addr, tls).await?, ADMIN_TOKEN)?);
    let start = Instant::now();
    loop {
        if let Ok(r) = admin
            .list_workers(pb::ListWorkersRequest {
                ..Default::default()
            })
            .await
        {
            let w = r.into_inner().workers;
            if ids.iter().all(|id| {
                w.iter()
                    .any(|w| w.id == *id && w.state == pb::WorkerState::Alive as i32)
            }) {
                return Ok(());
            }
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "workers {ids:?} never alive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On failure, the tail of every process log, so a CI run says what happened.
fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last 40 lines) ----", p.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

#[test]
fn jobs_run_across_hosts_over_tls_through_network_faults() -> anyhow::Result<()> {
    let Some(net) = net_or_skip(&["h1", "h2", "h3", "h4", "h5"]) else {
        return Ok(());
    };
    let tmp = tempfile::Builder::new()
        .prefix("drover-multihost-")
        .tempdir()?;
    let r = across_hosts(&net, tmp.path());
    if r.is_err() {
        dump_logs(tmp.path());
    }
    r
}

fn across_hosts(net: &Net, dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    // Dropped after the workers (declared before them): stops jobs a killed worker left.
    let _leftovers = Leftovers(dir.clone());
    let (h1, h2, h3, h4, h5) = (
        net.host("h1").clone(),
        net.host("h2").clone(),
        net.host("h3").clone(),
        net.host("h4").clone(),
        net.host("h5").clone(),
    );

    // The docs' recipe for certificates: one CA, a server certificate naming both
    // coordinators' addresses, a client certificate per worker.
    let pki = dir.join("pki");
    let out = std::process::Command::new(bin("droverctl"))
        .args(["certs", "init"])
        .arg(&pki)
        .args(["--hosts", &format!("{},{}", h1.ip, h2.ip)])
        .args(["--workers", "w1,w2"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // PostgreSQL on h1, reachable from the other hosts.
    let pg_dir = dir.join("pg");
    let pg = h1.run(move || async move {
        let pg = PgServer::start(PgServerConfig {
            data_dir: pg_dir,
            settings: vec![
                ("listen_addresses".into(), "*".into()),
                ("fsync".into(), "off".into()),
            ],
            ..Default::default()
        })
        .await?;
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data_dir().join("pg_hba.conf"))?
            .write_all(b"host all all 10.213.0.0/24 trust\n")?;
        let c = connect(&pg.url("postgres")).await?;
        c.execute("SELECT pg_reload_conf()", &[]).await?;
        pg.create_database("drover").await?;
        drover_coordinator::db::migrate(&pg.url("drover")).await?;
        ensure_harness_tokens(&pg.url("drover")).await?;
        Ok(pg)
    })?;
    let db_url = format!("postgres://postgres@{}:{}/drover", h1.ip, pg.port());

    let (_a, addr_a) = coordinator_on(&h1, &dir, "coord-a", &db_url, &pki)?;
    let (mut b, addr_b) = coordinator_on(&h2, &dir, "coord-b", &db_url, &pki)?;
    assert!(addr_a.starts_with("https://10.213.0.1"), "{addr_a}");
    // w1 prefers B, w2 prefers A: both coordinators serve workers.
    let w1 = worker_on(&h3, &dir, "w1", &[&addr_b, &addr_a], &pki)?;
    let _w2 = worker_on(&h4, &dir, "w2", &[&addr_a, &addr_b], &pki)?;
    let tls = ClientTls {
        ca_file: Some(pki.join("ca.pem")),
        ..Default::default()
    };

    // 1. Jobs run on both worker hosts, submitted through either coordinator.
    {
        let (addr_a, addr_b, tls) = (addr_a.clone(), addr_b.clone(), tls.clone());
        h5.run(move || async move {
            wait_workers_alive(&addr_a, &tls, &["w1", "w2"]).await?;
            let mut via_a = jobs_tls(&addr_a, &tls).await?;
            let mut via_b = jobs_tls(&addr_b, &tls).await?;
            let mut ids = Vec::new();
            for i in 0..6 {
                let api = if i % 2 == 0 { &mut via_a } else { &mut via_b };
                ids.push(submit(api, sh("sleep 1; echo ran")).await?.id);
            }
            let mut ran_on = std::collections::BTreeSet::new();
            for id in &ids {
                let (_, attempts) = wait_state(&mut via_a, id, pb::JobState::Succeeded).await?;
                assert_eq!(attempts.len(), 1);
                ran_on.insert(attempts[0].worker_id.clone());
                assert_eq!(logs(&mut via_b, id, 0).await?.0, b"ran\n");
            }
            assert_eq!(
                ran_on.into_iter().collect::<Vec<_>>(),
                ["w1", "w2"],
                "4 slots, 6 one-second jobs: both hosts must take some"
            );
            Ok(())
        })?;
    }

    // 2. Delay, loss and reordering on w1's link: output arrives whole and in order.
    if h3.netem(80, 20, 3, 10)? {
        eprintln!("h3: netem delay 80ms±20ms, loss 3%, reorder 10%");
    } else {
        eprintln!(
            "NOTE: this kernel has no tc netem (CONFIG_NET_SCH_NETEM); using a tbf \
             bandwidth limit (512kbit, 400ms queue) on h3 instead of delay/loss/reordering"
        );
        h3.throttle("512kbit", 400)?;
    }
    {
        let (addr_a, tls) = (addr_a.clone(), tls.clone());
        h5.run(move || async move {
            let mut api = jobs_tls(&addr_a, &tls).await?;
            let job = submit(&mut api, pinned("h3", "seq 1 20000")).await?;
            let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
            assert_eq!(attempts.len(), 1, "{attempts:?}");
            assert_eq!(attempts[0].worker_id, "w1");
            let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
            assert_eq!(logs(&mut api, &job.id, 0).await?.0, want.as_bytes());
            Ok(())
        })?;
    }
    h3.clear_qdisc()?;

    // 3. w2's host partitioned away while it runs a job: the lease runs out, the job is
    //    retried; back on the network, w2 is told its attempt is stale and stops it, and
    //    the job's retry runs there (only w2 has its label). Meanwhile w1 runs others.
    {
        let (addr_a, tls, h4) = (addr_a.clone(), tls.clone(), h4.clone());
        h5.run(move || async move {
            let mut api = jobs_tls(&addr_a, &tls).await?;
            let job = submit(
                &mut api,
                pinned(
                    "h4",
                    r#"if [ "$DROVER_ATTEMPT" = 1 ]; then echo $$; exec sleep 1000; fi; echo second"#,
                ),
            )
            .await?;
            let pid = pid_from_log(&mut api, &job.id, 1).await?;
            h4.link_down()?;
            wait_for(&mut api, &job.id, "attempt 1 lost", |_, a| {
                a.first().map(|a| a.state) == Some(pb::AttemptState::Lost as i32)
            })
            .await?;
            let other = submit(&mut api, pinned("h3", "echo meanwhile")).await?;
            let (_, a) = wait_state(&mut api, &other.id, pb::JobState::Succeeded).await?;
            assert_eq!(a[0].worker_id, "w1");
            h4.link_up()?;
            let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
            // Attempt 1 lost; a retry the coordinator pushed into w2's dead session before
            // it noticed is lost too (w2's hello does not list it); the last one succeeded.
            let last = attempts.last().expect("attempts");
            assert_eq!(attempts[0].state, pb::AttemptState::Lost as i32);
            assert_eq!(last.state, pb::AttemptState::Succeeded as i32);
            assert_eq!(last.worker_id, "w2");
            for a in &attempts[1..attempts.len() - 1] {
                assert_eq!(a.state, pb::AttemptState::Lost as i32, "{attempts:?}");
            }
            assert_eq!(logs(&mut api, &job.id, last.number).await?.0, b"second\n");
            // The partitioned attempt's process was stopped once its host was back.
            assert!(wait_dead(pid).await, "attempt 1's process {pid} still runs");
            Ok(())
        })?;
    }

    // 4. Coordinator B's host goes away for good while w1 (whose session is on B) runs a
    //    job: w1 moves to A and the job finishes there, run once.
    {
        let (addr_a, addr_b, tls) = (addr_a.clone(), addr_b.clone(), tls.clone());
        let marker = dir.join("runs");
        let script = format!(
            "echo started >> {}; sleep 4; echo survived",
            marker.display()
        );
        let job_id = {
            let tls = tls.clone();
            let addr_a = addr_a.clone();
            h5.run(move || async move {
                let mut api = jobs_tls(&addr_a, &tls).await?;
                let job = submit(&mut api, pinned("h3", &script)).await?;
                wait_state(&mut api, &job.id, pb::JobState::Running).await?;
                Ok(job.id)
            })?
        };
        h2.link_down()?;
        b.kill();
        let marker2 = marker.clone();
        h5.run(move || async move {
            let mut api = jobs_tls(&addr_a, &tls).await?;
            let (_, attempts) = wait_state(&mut api, &job_id, pb::JobState::Succeeded).await?;
            assert_eq!(
                attempts.len(),
                1,
                "re-run after the coordinator host went: {attempts:?}"
            );
            assert_eq!(logs(&mut api, &job_id, 0).await?.0, b"survived\n");
            let n = std::fs::read_to_string(&marker2)?.lines().count();
            assert_eq!(n, 1, "the child started {n} times");
            let next = submit(&mut api, pinned("h3", "echo next")).await?;
            wait_state(&mut api, &next.id, pb::JobState::Succeeded).await?;
            let _ = addr_b;
            Ok(())
        })?;
        let log = w1.log_text();
        assert!(
            log.contains("trying the next coordinator"),
            "w1 never left B: {log}"
        );
    }

    // 5. droverctl on the operator host, given both addresses, uses the one that answers.
    let out = h5
        .command(bin("droverctl"))
        .args(["--addr", &format!("{addr_b},{addr_a}"), "list"])
        .arg("--ca-file")
        .arg(pki.join("ca.pem"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "droverctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("succeeded"), "{text}");

    // Every job ended succeeded, each with exactly one succeeded attempt.
    h5.run(move || async move {
        let mut api = jobs_tls(&addr_a, &tls).await?;
        let all = api
            .list_jobs(pb::ListJobsRequest {
                page_size: 500,
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        assert!(all.len() >= 11, "{}", all.len());
        for j in &all {
            let (job, attempts) = get(&mut api, &j.id).await?;
            assert!(is_state(&job, pb::JobState::Succeeded), "{job:?}");
            let ok = attempts
                .iter()
                .filter(|a| a.state == pb::AttemptState::Succeeded as i32)
                .count();
            assert_eq!(ok, 1, "{attempts:?}");
        }
        Ok(())
    })?;
    drop(pg);
    Ok(())
}
