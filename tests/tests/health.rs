//! Health: the report reflects real state, follows the database, and workers below their
//! resource thresholds take no jobs and say why.

use drover_pgserver::{PgServer, PgServerConfig};
use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health(addr: &str) -> anyhow::Result<pb::GetHealthResponse> {
    Ok(admin_api(addr)
        .await?
        .get_health(pb::GetHealthRequest {})
        .await?
        .into_inner())
}

/// Polls the health report until `pred` holds.
async fn health_until<F: Fn(&pb::GetHealthResponse) -> bool>(
    addr: &str,
    what: &str,
    pred: F,
) -> anyhow::Result<pb::GetHealthResponse> {
    let start = Instant::now();
    loop {
        let h = health(addr).await?;
        if pred(&h) {
            return Ok(h);
        }
        if start.elapsed() > PATIENCE {
            anyhow::bail!("health never showed {what}: {h:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker<'a>(h: &'a pb::GetHealthResponse, id: &str) -> Option<&'a pb::Worker> {
    h.workers.iter().find(|w| w.id == id)
}

#[tokio::test]
async fn health_reflects_jobs_queues_workers_and_resources() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut keeper = cl.worker("keeper", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // Runs until the worker has sampled it (seen in its heartbeat), however long that
    // takes, so its peak memory is recorded whatever the sampler's timing.
    let flag = cl.path("sampled");
    let mut gated = sh(r#"echo fine; while [ ! -f "$FLAG" ]; do sleep 0.05; done"#);
    gated.env.insert("FLAG".into(), flag.display().to_string());
    let ok = submit(&mut api, gated).await?;
    let bad = submit(&mut api, sh("exit 127")).await?;
    let mut orphan = sh("true");
    orphan.queue = "nobody".into();
    submit(&mut api, orphan).await?;
    health_until(&addr, "the job's memory sampled", |h| {
        worker(h, "keeper")
            .and_then(|w| w.resources.as_ref())
            .is_some_and(|r| r.jobs.iter().any(|j| j.peak_rss_bytes > 0))
    })
    .await?;
    std::fs::write(&flag, b"")?;
    let (_, attempts) = wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &bad.id, pb::JobState::PermanentFailed).await?;
    // Sampled while it ran: the attempt records its peak memory.
    assert!(attempts[0].peak_rss_bytes > 0, "{:?}", attempts[0]);

    let h = health_until(&addr, "worker resources", |h| {
        worker(h, "keeper")
            .and_then(|w| w.resources.as_ref())
            .map(|r| r.memory_total_bytes > 0 && r.disk_total_bytes > 0)
            .unwrap_or(false)
    })
    .await?;
    assert_eq!(h.jobs_by_state.get("succeeded"), Some(&1));
    assert_eq!(h.jobs_by_state.get("permanent_failed"), Some(&1));
    assert_eq!(h.jobs_by_state.get("pending"), Some(&1));
    assert_eq!(h.failed_last_24h, 1);
    assert!(h.database_ok);
    assert!(h.log_storage_bytes > 0);
    assert_eq!(h.status(), pb::HealthStatus::Degraded, "{:?}", h.reasons);
    assert!(
        h.reasons.iter().any(|r| r.contains("queue nobody")),
        "{:?}",
        h.reasons
    );
    let q = h
        .queues
        .iter()
        .find(|q| q.queue == "nobody")
        .expect("queue row");
    assert_eq!(q.pending, 1);
    let config = h.config.clone().unwrap_or_default();
    assert_eq!(ms_of(&config.lease_ttl), 3000);
    assert_eq!(config.retry.as_ref().and_then(|r| r.max_retries), Some(3));
    assert!(
        config.listen.contains(':') && !config.database_url.is_empty(),
        "{config:?}"
    );
    assert_eq!(
        worker(&h, "keeper").map(|w| w.state()),
        Some(pb::WorkerState::Alive)
    );

    // The same report over HTTP.
    let body = http_get(&format!("{}/health", c.http))
        .await?
        .bytes()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["jobs_by_state"]["succeeded"], 1);
    // The effective configuration as structured JSON, durations as proto3 writes them.
    assert_eq!(v["config"]["lease_ttl"], "3s", "{}", v["config"]);
    assert_eq!(v["config"]["retry"]["initial_backoff"], "5s");

    // A SIGKILLed worker turns stale once its lease TTL has passed.
    keeper.kill();
    let h = health_until(&addr, "keeper stale", |h| {
        worker(h, "keeper").map(|w| w.state()) == Some(pb::WorkerState::Stale)
    })
    .await?;
    assert_eq!(h.workers_stale, 1);
    assert!(h.reasons.iter().any(|r| r.contains("worker keeper")));

    // droverctl shows it too.
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["-o", "json", "workers"])
        .output()?;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v[0]["state"], "stale");
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .arg("health")
        .output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: degraded"));

    // A worker that left two days ago is offline: listed, but no longer a reason for
    // degraded health (only the unserved queue is).
    cl.db
        .client()
        .await?
        .execute(
            "UPDATE workers SET last_seen_at = now() - interval '2 days' WHERE id = 'keeper'",
            &[],
        )
        .await?;
    let h = health(&addr).await?;
    assert_eq!(
        worker(&h, "keeper").map(|w| w.state()),
        Some(pb::WorkerState::Offline)
    );
    assert_eq!((h.workers_offline, h.workers_stale), (1, 0));
    assert!(
        !h.reasons.iter().any(|r| r.contains("worker keeper")),
        "{:?}",
        h.reasons
    );
    assert_eq!(h.reasons.len(), 1, "{:?}", h.reasons);
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["-o", "json", "workers"])
        .output()?;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v[0]["state"], "offline");
    Ok(())
}

#[tokio::test]
async fn database_outage_turns_health_failing_and_grpc_not_serving() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let mut pg = PgServer::start(PgServerConfig {
        data_dir: cl.path("pg"),
        settings: vec![("fsync".into(), "off".into())],
        ..Default::default()
    })
    .await?;
    pg.create_database("drover").await?;
    let opts = CoordinatorOpts {
        database_url: Some(pg.url("drover")),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let mut grpc_health = HealthClient::new(channel(&addr).await?);
    let serving = |s: i32| s == ServingStatus::Serving as i32;
    let check = HealthCheckRequest {
        service: String::new(),
    };
    assert!(serving(
        grpc_health.check(check.clone()).await?.into_inner().status
    ));
    health_until(&addr, "ok", |h| h.status() == pb::HealthStatus::Ok).await?;

    pg.stop().await?;
    let h = health_until(&addr, "failing", |h| {
        h.status() == pb::HealthStatus::Failing
    })
    .await?;
    assert!(!h.database_ok);
    assert!(h.reasons[0].contains("database"), "{:?}", h.reasons);
    let start = Instant::now();
    while serving(grpc_health.check(check.clone()).await?.into_inner().status) {
        assert!(start.elapsed() < PATIENCE, "grpc health still SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pg.restart().await?;
    health_until(&addr, "ok again", |h| h.status() == pb::HealthStatus::Ok).await?;
    let start = Instant::now();
    while !serving(grpc_health.check(check.clone()).await?.into_inner().status) {
        assert!(
            start.elapsed() < PATIENCE,
            "grpc health never SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn worker_below_its_disk_threshold_takes_no_job_and_says_why() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    // No disk has this much free space.
    let _full = cl.worker_with_env(
        "full-disk",
        &addr,
        2,
        &[],
        &[("DROVER_WORKER_MIN_DISK_FREE_BYTES", "18446744073709551615")],
    )?;
    health_until(&addr, "full-disk paused", |h| {
        worker(h, "full-disk").map(|w| w.state()) == Some(pb::WorkerState::Paused)
    })
    .await?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("echo ran")).await?;
    let h = health_until(&addr, "queue waiting", |h| {
        h.reasons.iter().any(|r| r.contains("queue default"))
    })
    .await?;
    let w = worker(&h, "full-disk").expect("worker listed");
    assert!(
        w.paused_reason.contains("min_disk_free_bytes"),
        "{}",
        w.paused_reason
    );
    let (j, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(j.state, pb::JobState::Pending as i32);
    assert!(attempts.is_empty(), "a paused worker was given the job");

    let _ok = cl.worker("roomy", &addr, 1, &[])?;
    let (_, attempts) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert!(
        attempts.iter().all(|a| a.worker_id == "roomy"),
        "{attempts:?}"
    );
    Ok(())
}

/// Parses Prometheus text exposition: `name{labels} value` per sample line.
fn parse_metrics(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("not a sample line: {line:?}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            anyhow::ensure!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        out.push((series.to_string(), value.parse::<f64>()?));
    }
    Ok(out)
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_and_move_when_jobs_run() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;
    let url = format!("{}/metrics", c.http);
    let before = parse_metrics(&reqwest::get(&url).await?.text().await?)?;

    let ok = submit(&mut api, sh("echo twelve bytes")).await?;
    let bad = submit(&mut api, sh("exit 127")).await?;
    wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &bad.id, pb::JobState::PermanentFailed).await?;
    let mut waiting = sh("true");
    waiting.queue = "later".into();
    submit(&mut api, waiting).await?;
    // A store operation that fails is counted under its op and error kind.
    let missing = api
        .cancel_job(pb::CancelJobRequest {
            id: "00000000-0000-4000-8000-000000000000".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such job");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let after = parse_metrics(&reqwest::get(&url).await?.text().await?)?;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved("drover_jobs_submitted_total{queue=\"default\"}"), 2.0);
    assert_eq!(
        moved("drover_attempts_finished_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        moved("drover_attempts_finished_total{outcome=\"failed_permanent\"}"),
        1.0
    );
    assert_eq!(
        moved("drover_jobs_finished_total{state=\"permanent_failed\"}"),
        1.0
    );
    assert!(moved("drover_log_bytes_ingested_total") >= 13.0);
    assert_eq!(moved("drover_pickup_latency_seconds_count"), 2.0);
    assert_eq!(sample(&after, "drover_queue_pending{queue=\"later\"}"), 1.0);
    assert_eq!(sample(&after, "drover_workers_connected"), 1.0);
    assert_eq!(sample(&after, "drover_database_up"), 1.0);
    assert!(sample(&after, "drover_db_pool_max") >= 2.0);

    // Per-operation store metrics: a latency histogram per op, an error counter per op
    // and kind.
    let store_moved = |name: &str, labels: &[(&str, &str)]| {
        labeled(&after, name, labels) - labeled(&before, name, labels)
    };
    let ops = "drover_store_operation_seconds_count";
    assert_eq!(store_moved(ops, &[("op", "submit")]), 3.0);
    assert_eq!(store_moved(ops, &[("op", "end_attempt")]), 2.0);
    assert!(store_moved(ops, &[("op", "claim")]) >= 2.0);
    assert!(store_moved(ops, &[("op", "append_logs")]) >= 1.0);
    assert_eq!(
        store_moved(
            "drover_store_operation_errors_total",
            &[("op", "cancel_job"), ("kind", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        store_moved(
            "drover_store_operation_errors_total",
            &[("op", "end_attempt"), ("kind", "not_found")]
        ),
        0.0
    );
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("drover_store_operation_seconds_bucket{")));
    Ok(())
}

/// The value of the series `name` whose labels include `labels` (in any order).
fn labeled(samples: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(s, _)| {
            s.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .is_some_and(|rest| {
                    labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                })
        })
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

/// Metric names referenced by the shipped dashboard and alert rules.
fn referenced_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("drover_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.push(text[start..end].to_string());
        i = end;
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn shipped_dashboard_and_alerts_use_real_metrics() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    // Make every kind of series appear at least once.
    let ok = submit(&mut api, sh("echo x")).await?;
    let bad = submit(&mut api, sh("exit 127")).await?;
    wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &bad.id, pb::JobState::PermanentFailed).await?;
    // Queue gauges exist for queues that have jobs.
    let mut waiting = sh("true");
    waiting.queue = "later".into();
    submit(&mut api, waiting).await?;
    let exposed: Vec<String> = parse_metrics(
        &reqwest::get(format!("{}/metrics", c.http))
            .await?
            .text()
            .await?,
    )?
    .into_iter()
    .map(|(s, _)| s.split('{').next().unwrap_or_default().to_string())
    .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json"))?;
    serde_json::from_str::<serde_json::Value>(&dashboard)?;
    let alerts = std::fs::read_to_string(root.join("prometheus-alerts.yml"))?;
    for name in referenced_metrics(&dashboard)
        .into_iter()
        .chain(referenced_metrics(&alerts))
    {
        // Exact names only: a histogram's `_bucket`/`_count`/`_sum` series are exposed
        // under those names, and a reference missing `_total` must not pass.
        assert!(
            exposed.contains(&name),
            "{name} is referenced in deploy/ but not exposed"
        );
    }
    Ok(())
}

/// Every time in a JSON value: `(key, value)` of each field whose name says it holds one.
fn times(v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let timeish =
                    k.ends_with("_at") || k == "at" || k == "not_before" || k == "fire_time";
                if timeish && !v.is_object() && !v.is_array() {
                    out.push((k.clone(), v.clone()));
                }
                times(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| times(v, out)),
        _ => {}
    }
}

/// `-o json` prints every time one way: an RFC 3339 string (or null when unset).
#[tokio::test]
async fn json_output_prints_every_time_as_rfc3339() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    // A failure with output, so a failure group (with its own times) exists too.
    let bad = submit(&mut api, sh("echo no such tool >&2; exit 127")).await?;
    wait_state(&mut api, &bad.id, pb::JobState::PermanentFailed).await?;
    health_until(&addr, "the worker's resources", |h| {
        worker(h, "w1").is_some_and(|w| w.resources.is_some())
    })
    .await?;

    let mut checked = Vec::new();
    for args in [
        vec!["list"],
        vec!["show", bad.id.as_str()],
        vec!["workers"],
        vec!["health"],
        vec!["failures"],
        vec!["audit"],
        vec!["token", "list"],
    ] {
        let run = || {
            std::process::Command::new(bin("droverctl"))
                .env("DROVER_TOKEN", ADMIN_TOKEN)
                .env("DROVER_ADDR", &addr)
                .arg("-o")
                .arg("json")
                .args(&args)
                .output()
        };
        let mut out = run()?;
        // A worker that reconnected (a ping missed on a loaded machine) shows no resources
        // until its next heartbeat: ask again until the sample is back.
        let start = std::time::Instant::now();
        while args == ["workers"]
            && !String::from_utf8_lossy(&out.stdout).contains("sampled_at\": \"")
            && start.elapsed() < PATIENCE
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            out = run()?;
        }
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut found = Vec::new();
        times(&v, &mut found);
        // Nor anywhere else as seconds.nanos (the other way times used to be printed).
        let text = v.to_string();
        assert!(
            !text
                .split('"')
                .any(|s| s.split_once('.').is_some_and(|(a, b)| !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.len() == 9
                    && b.bytes().all(|c| c.is_ascii_digit()))),
            "{args:?}: {text}"
        );
        for (k, t) in &found {
            match t {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|e| anyhow::anyhow!("{args:?} {k}: {s:?} is not RFC 3339: {e}"))?;
                }
                other => anyhow::bail!("{args:?} {k}: {other} is not an RFC 3339 string"),
            }
        }
        checked.extend(
            found
                .into_iter()
                .filter(|(_, t)| !t.is_null())
                .map(|(k, _)| k),
        );
    }
    // The check saw the times that matter: jobs, attempts, workers, resources, groups.
    for key in [
        "created_at",
        "started_at",
        "finished_at",
        "last_seen_at",
        "sampled_at",
        "first_seen_at",
    ] {
        assert!(checked.iter().any(|k| k == key), "no {key} in {checked:?}");
    }
    Ok(())
}
