//! Transport security with real processes and real TLS: the coordinator's listeners on
//! TLS, clients verifying them with a CA file, mTLS binding a worker's id to its
//! certificate, and certificates renewed while the coordinator runs. Every certificate is
//! made by the test in its own directory.

use drover_tests::tls::*;
use drover_tests::v1 as pb;
use drover_tests::*;
use drover_transport::ClientTls;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn droverctl(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_CA_FILE")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running droverctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_opts(toml: String) -> CoordinatorOpts {
    CoordinatorOpts {
        config_toml: Some(toml),
        ..CoordinatorOpts::default()
    }
}

/// Waits until a new connection to `addr` is served the certificate `want`.
async fn wait_served(addr: &str, ca: &std::path::Path, want: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let (got, _) = served_cert(addr, ca, &[b"h2"]).await?;
        if got == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("still served {got}, want {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tls_listeners_serve_jobs_to_a_tls_worker_and_droverctl() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // The deploy docs' recipe: `droverctl certs init`.
    let pki = cl.path("pki");
    let (code, out, err) = droverctl(
        &[],
        &[
            "certs",
            "init",
            pki.to_str().unwrap_or_default(),
            "--hosts",
            "localhost,127.0.0.1",
            "--workers",
            "w1",
        ],
    );
    assert_eq!(code, 0, "certs init: {err}");
    assert!(out.contains("server-key.pem"), "{out}");
    let ca = pki.join("ca.pem");
    let (_c, addr) = cl.coordinator(
        "coord",
        &tls_opts(coordinator_toml(
            &pki.join("server.pem"),
            &pki.join("server-key.pem"),
            None,
        )),
    )?;
    assert!(addr.starts_with("https://"), "{addr}");
    let ca_s = ca.to_str().unwrap_or_default();
    let _w = cl.worker("w1", &addr, 2, &["--ca-file", ca_s])?;

    let tls = ClientTls {
        ca_file: Some(ca.clone()),
        ..Default::default()
    };
    let mut api = jobs_tls(&addr, &tls).await?;
    let job = submit(&mut api, sh("echo over-tls")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert_eq!(logs(&mut api, &job.id, 1).await?.0, b"over-tls\n");

    // droverctl over https with the CA file.
    let (code, out, err) = droverctl(
        &[("DROVER_ADDR", &addr), ("DROVER_CA_FILE", ca_s)],
        &["submit", "--wait", "--", "echo", "from-droverctl"],
    );
    assert_eq!(code, 0, "droverctl submit over TLS: {out} {err}");

    // The served certificate is the configured one, on gRPC and on HTTP.
    let want = file_fingerprint(&pki.join("server.pem"))?;
    let (got, _) = served_cert(&addr, &ca, &[b"h2"]).await?;
    assert_eq!(got, want);
    let http = _c.http.clone();
    assert!(http.starts_with("https://"), "{http}");
    let (got, mut s) = served_cert(&http, &ca, &[b"http/1.1"]).await?;
    assert_eq!(got, want);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // Plaintext to the TLS port gets nothing served.
    let plain = addr.replace("https://", "http://");
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        let mut c = pb::job_service_client::JobServiceClient::new(
            tonic::transport::Endpoint::from_shared(plain)?
                .connect()
                .await?,
        );
        c.list_jobs(pb::ListJobsRequest::default()).await?;
        anyhow::Ok(())
    })
    .await;
    assert!(
        !matches!(r, Ok(Ok(()))),
        "plaintext call to a TLS listener succeeded"
    );
    Ok(())
}

#[tokio::test]
async fn https_to_a_plaintext_coordinator_or_with_a_wrong_ca_fails_clearly() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let pki = Pki::new(&cl.path("pki"))?;
    let other = Pki::new(&cl.path("other"))?;
    let (plain, plain_addr) = cl.coordinator("plain", &CoordinatorOpts::default())?;
    // SIGHUP (systemctl reload) is harmless without TLS: nothing to reload, still serving.
    plain.signal(nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    while !plain.log_text().contains("nothing to reload") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            plain.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    jobs(&plain_addr)
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?;
    let (cert, key) = pki.server("server")?;
    let (_tls, tls_addr) = cl.coordinator("tls", &tls_opts(coordinator_toml(&cert, &key, None)))?;

    // https:// against plaintext: a TLS error, never a plaintext conversation.
    let https_to_plain = plain_addr.replace("http://", "https://");
    let e = try_channel_tls(&https_to_plain, &pki.client_tls())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!e.is_empty(), "https:// to a plaintext server connected");
    let ca = pki.ca_file();
    let ca_s = ca.to_str().unwrap_or_default();
    let (code, out, err) = droverctl(
        &[("DROVER_ADDR", &https_to_plain), ("DROVER_CA_FILE", ca_s)],
        &["list"],
    );
    assert_ne!(code, 0, "droverctl https:// to plaintext succeeded: {out}");
    assert!(err.contains("cannot reach coordinator"), "{err}");
    assert!(err.contains("TLS"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // https:// without a CA file is refused before connecting.
    let (code, _, err) = droverctl(&[("DROVER_ADDR", &tls_addr)], &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("CA file"), "{err}");

    // A CA that did not sign the server's certificate.
    let e = try_channel_tls(&tls_addr, &other.client_tls()).await;
    assert!(
        e.is_err(),
        "a server certificate from another CA was accepted"
    );
    let other_ca = other.ca_file();
    let (code, _, err) = droverctl(
        &[
            ("DROVER_ADDR", &tls_addr),
            ("DROVER_CA_FILE", other_ca.to_str().unwrap_or_default()),
        ],
        &["list"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach coordinator"), "{err}");
    // And the right one works.
    let (code, _, err) = droverctl(
        &[("DROVER_ADDR", &tls_addr), ("DROVER_CA_FILE", ca_s)],
        &["list"],
    );
    assert_eq!(code, 0, "{err}");

    // A worker with an https:// address but no CA file does not start: a config error.
    let mut no_ca = cl.worker("noca", &tls_addr, 1, &[])?;
    assert_eq!(no_ca.wait_exit(Duration::from_secs(30))?, Some(78));
    assert!(no_ca.log_text().contains("CA file"), "{}", no_ca.log_text());

    // A worker given https:// to the plaintext coordinator never registers there.
    let w = cl.worker("wx", &https_to_plain, 1, &["--ca-file", ca_s])?;
    let mut admin = admin_api(&plain_addr).await?;
    let start = Instant::now();
    loop {
        let text = w.log_text();
        if text.contains("reconnecting") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker never reported a failed session: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ws = admin
        .list_workers(pb::ListWorkersRequest::default())
        .await?
        .into_inner();
    assert!(ws.workers.iter().all(|w| w.id != "wx"), "{ws:?}");
    Ok(())
}

fn hello(id: &str) -> pb::SessionRequest {
    pb::SessionRequest {
        msg: Some(pb::session_request::Msg::Hello(pb::Hello {
            worker_id: id.into(),
            hostname: "h".into(),
            queues: vec!["default".into()],
            slots: 1,
            free_slots: 1,
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn mtls_binds_a_worker_id_to_its_certificate() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let pki = Pki::new(&cl.path("pki"))?;
    let (cert, key) = pki.server("server")?;
    let ca = pki.ca_file();
    let (_c, addr) =
        cl.coordinator("coord", &tls_opts(coordinator_toml(&cert, &key, Some(&ca))))?;
    let (w1_cert, w1_key) = pki.client("w1", "w1")?;
    let (ops_cert, ops_key) = pki.client("ops", "ops")?;

    // A worker with its own certificate takes and runs jobs.
    let env = [
        ("DROVER_WORKER_CA_FILE", ca.to_str().unwrap_or_default()),
        (
            "DROVER_WORKER_TLS_CERT_FILE",
            w1_cert.to_str().unwrap_or_default(),
        ),
        (
            "DROVER_WORKER_TLS_KEY_FILE",
            w1_key.to_str().unwrap_or_default(),
        ),
    ];
    let _w = cl.worker_with_env("w1", &addr, 1, &[], &env)?;
    let ops = ClientTls {
        ca_file: Some(ca.clone()),
        cert_file: Some(ops_cert.clone()),
        key_file: Some(ops_key.clone()),
    };
    let mut api = jobs_tls(&addr, &ops).await?;
    let job = submit(&mut api, sh("echo mtls")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;

    // The w1 certificate cannot say hello as w2.
    let w1_tls = ClientTls {
        ca_file: Some(ca.clone()),
        cert_file: Some(w1_cert.clone()),
        key_file: Some(w1_key.clone()),
    };
    let mut wc = workers_tls(&addr, &w1_tls).await?;
    let r = wc.session(futures::stream::iter([hello("w2")])).await;
    let Err(e) = r else {
        panic!("hello as w2 with w1's certificate was accepted");
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("w2"), "{e}");
    // Neither can a certificate of a non-worker.
    let mut oc = workers_tls(&addr, &ops).await?;
    let Err(e) = oc.session(futures::stream::iter([hello("w1")])).await else {
        panic!("hello as w1 with ops's certificate was accepted");
    };
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut admin =
        drover_tests::AdminClient::new(authed(channel_tls(&addr, &ops).await?, ADMIN_TOKEN)?);
    let ws = admin
        .list_workers(pb::ListWorkersRequest::default())
        .await?
        .into_inner();
    assert!(ws.workers.iter().all(|w| w.id != "w2"), "{ws:?}");

    // A real worker process with a certificate for another id is refused too.
    let bad = cl.worker_with_env("w3", &addr, 1, &[], &env)?;
    let start = Instant::now();
    while !bad.log_text().contains("PermissionDenied") && !bad.log_text().contains("not named") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            bad.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without a client certificate the handshake is refused, and droverctl says so.
    let e = try_channel_tls(&addr, &pki.client_tls()).await;
    let refused = match e {
        Err(_) => true,
        // rustls may finish the client side before the server's alert arrives.
        Ok(ch) => drover_tests::JobsClient::new(authed(ch, ADMIN_TOKEN)?)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let (code, _, err) = droverctl(
        &[
            ("DROVER_ADDR", &addr),
            ("DROVER_CA_FILE", ca.to_str().unwrap_or_default()),
        ],
        &["list"],
    );
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = droverctl(
        &[
            ("DROVER_ADDR", &addr),
            ("DROVER_CA_FILE", ca.to_str().unwrap_or_default()),
            ("DROVER_CLIENT_CERT", ops_cert.to_str().unwrap_or_default()),
            ("DROVER_CLIENT_KEY", ops_key.to_str().unwrap_or_default()),
        ],
        &["list"],
    );
    assert_eq!(code, 0, "{err}");
    Ok(())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let pki = Pki::new(&cl.path("pki"))?;
    let ca = pki.ca_file();
    let (cert, key) = pki.server("server")?;
    let first = file_fingerprint(&cert)?;
    // Polling is off in effect (an hour): only SIGHUP reloads this one.
    let mut toml = coordinator_toml(&cert, &key, None);
    toml.push_str("tls_reload_interval = \"1h\"\n");
    let (c, addr) = cl.coordinator("coord", &tls_opts(toml))?;
    let mut api = jobs_tls(&addr, &pki.client_tls()).await?;
    api.list_jobs(pb::ListJobsRequest::default()).await?;
    assert_eq!(served_cert(&addr, &ca, &[b"h2"]).await?.0, first);

    let (cert2, _) = pki.server("server")?;
    let second = file_fingerprint(&cert2)?;
    assert_ne!(first, second);
    // Not reloaded yet: the interval is an hour away.
    assert_eq!(served_cert(&addr, &ca, &[b"h2"]).await?.0, first);
    c.signal(nix::sys::signal::Signal::SIGHUP);
    wait_served(&addr, &ca, &second).await?;
    assert_eq!(served_cert(&c.http, &ca, &[b"h2"]).await?.0, second);
    // The connection made before the renewal still works.
    api.list_jobs(pb::ListJobsRequest::default()).await?;

    // A broken renewal (a key that does not belong to the certificate) keeps the old pair.
    let (cert3, _) = pki.server("other")?;
    std::fs::copy(&cert3, &cert)?;
    c.signal(nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    while !c.log_text().contains("TLS reload failed") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_cert(&addr, &ca, &[b"h2"]).await?.0, second);
    jobs_tls(&addr, &pki.client_tls())
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?;

    // A second coordinator that polls: replacing the files is enough.
    let (cert_b, key_b) = pki.server("server-b")?;
    let mut toml = coordinator_toml(&cert_b, &key_b, None);
    toml.push_str("tls_reload_interval = \"200ms\"\n");
    let (_c2, addr2) = cl.coordinator("coord2", &tls_opts(toml))?;
    assert_eq!(
        served_cert(&addr2, &ca, &[b"h2"]).await?.0,
        file_fingerprint(&cert_b)?
    );
    let (cert_b2, _) = pki.server("server-b")?;
    wait_served(&addr2, &ca, &file_fingerprint(&cert_b2)?).await?;
    Ok(())
}

#[tokio::test]
async fn optional_client_certificates_and_silent_clients_hold_up_no_one() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let pki = Pki::new(&cl.path("pki"))?;
    let (cert, key) = pki.server("server")?;
    let ca = pki.ca_file();
    let mut toml = coordinator_toml(&cert, &key, Some(&ca));
    toml.push_str("tls_client_cert_required = false\n");
    let (_c, addr) = cl.coordinator("coord", &tls_opts(toml))?;

    // Clients that connect and never speak TLS, on both listeners.
    let hostport = addr.trim_start_matches("https://").to_string();
    let http_hostport = _c.http.trim_start_matches("https://").to_string();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&hostport).await?);
        silent.push(tokio::net::TcpStream::connect(&http_hostport).await?);
    }
    // Still served: without a certificate (optional here) ...
    jobs_tls(&addr, &pki.client_tls())
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?;
    served_cert(&_c.http, &ca, &[b"http/1.1"]).await?;
    // ... and a certificate presented is still bound to its worker id.
    let (w1_cert, w1_key) = pki.client("w1", "w1")?;
    let w1 = ClientTls {
        ca_file: Some(ca.clone()),
        cert_file: Some(w1_cert),
        key_file: Some(w1_key),
    };
    let mut wc = workers_tls(&addr, &w1).await?;
    let Err(e) = wc.session(futures::stream::iter([hello("w2")])).await else {
        panic!("hello as w2 with w1's certificate was accepted");
    };
    assert_eq!(e.code(), Code::PermissionDenied);
    // A certificate from another CA is refused even though certificates are optional.
    let other = Pki::new(&cl.path("other"))?;
    let (o_cert, o_key) = other.client("w1", "w1")?;
    let forged = ClientTls {
        ca_file: Some(ca.clone()),
        cert_file: Some(o_cert),
        key_file: Some(o_key),
    };
    let refused = match try_channel_tls(&addr, &forged).await {
        Err(_) => true,
        Ok(ch) => drover_tests::WorkersClient::new(authed(ch, WORKER_TOKEN)?)
            .session(futures::stream::iter([hello("w1")]))
            .await
            .is_err(),
    };
    assert!(refused, "a client certificate from another CA was accepted");
    drop(silent);
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_a_coordinator_with_connected_workers_plain_or_tls() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let pki = Pki::new(&cl.path("pki"))?;
    let (cert, key) = pki.server("server")?;
    let ca = pki.ca_file();
    let ca_s = ca.to_str().unwrap_or_default().to_string();
    for (name, opts) in [
        ("plain", CoordinatorOpts::default()),
        ("tls", tls_opts(coordinator_toml(&cert, &key, None))),
    ] {
        let (mut c, addr) = cl.coordinator(name, &opts)?;
        let _w = cl.worker(&format!("{name}-w"), &addr, 1, &["--ca-file", &ca_s])?;
        let mut admin = if name == "tls" {
            drover_tests::AdminClient::new(authed(
                channel_tls(&addr, &pki.client_tls()).await?,
                ADMIN_TOKEN,
            )?)
        } else {
            admin_api(&addr).await?
        };
        // Wait until the worker's session is open: that stream must not hold up shutdown.
        // (Signalled while a session was still being opened, the coordinator used to wait
        // for that session forever.)
        let start = Instant::now();
        loop {
            let ws = admin
                .list_workers(pb::ListWorkersRequest::default())
                .await?
                .into_inner();
            let me = format!("{name}-w");
            if ws
                .workers
                .iter()
                .any(|w| w.id == me && w.state() == pb::WorkerState::Alive)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name}: no worker"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.signal(nix::sys::signal::Signal::SIGTERM);
        // Waited for without blocking this runtime, which must still answer the
        // coordinator's GOAWAY on our own connection.
        let start = Instant::now();
        let code = loop {
            if let Some(s) = c.child.try_wait()? {
                break s.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(code, Some(0), "{name}");
        drop(admin);

        // SIGTERM while workers are still connecting: sessions that open after shutdown
        // began are closed too, so the coordinator still exits.
        let (mut c, addr) = cl.coordinator(&format!("{name}-2"), &opts)?;
        let _ws: Vec<Proc> = (0..4)
            .map(|i| cl.worker(&format!("{name}-2-w{i}"), &addr, 1, &["--ca-file", &ca_s]))
            .collect::<anyhow::Result<_>>()?;
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.signal(nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        let code = loop {
            if let Some(s) = c.child.try_wait()? {
                break s.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name}-2 did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(code, Some(0), "{name}-2");
    }
    Ok(())
}
