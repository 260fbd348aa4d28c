//! Failure fingerprints, alert rules and notification delivery, against real peers: a real
//! HTTP receiver (axum, in this process) that checks signatures and idempotency keys, and a
//! real SMTP server (Python aiosmtpd) that the test starts, stops and restarts.

use anyhow::{bail, Context, Result};
use drover_tests::v1 as pb;
use drover_tests::*;
use hmac::{KeyInit, Mac};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const SECRET: &str = "test-secret-0123456789";

// ------------------------------------------------------------------ HTTP receiver

#[derive(Default)]
struct HookState {
    /// Every request: (idempotency key, signature valid, JSON body).
    requests: Vec<(String, bool, serde_json::Value)>,
    /// Accepted messages by idempotency key: a repeated key is a duplicate, dropped.
    accepted: BTreeMap<String, serde_json::Value>,
    duplicates: u32,
    /// Answer this many requests with 503 + Retry-After: 1 first.
    fail_next: u32,
    /// Hold the next request open without answering (the sender dies meanwhile).
    hold_next: bool,
    held: u32,
    /// Bodies posted to /slack.
    slack: Vec<serde_json::Value>,
}

#[derive(Clone, Default)]
struct Hook(Arc<Mutex<HookState>>);

impl Hook {
    fn with<T>(&self, f: impl FnOnce(&mut HookState) -> T) -> T {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

fn verify(sig: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2_11::Sha256>::new_from_slice(SECRET.as_bytes()) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn hook_handler(
    axum::extract::State(hook): axum::extract::State<Hook>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let sig = headers
        .get("drover-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ok = verify(sig, &body);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    enum Act {
        Fail,
        Hold,
        Accept,
        Reject,
    }
    let act = hook.with(|s| {
        s.requests.push((key.clone(), ok, json.clone()));
        if !ok || key.is_empty() {
            Act::Reject
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            Act::Fail
        } else if s.hold_next {
            s.hold_next = false;
            s.held += 1;
            Act::Hold
        } else {
            if s.accepted.contains_key(&key) {
                s.duplicates += 1;
            } else {
                s.accepted.insert(key.clone(), json.clone());
            }
            Act::Accept
        }
    });
    match act {
        Act::Reject => (axum::http::StatusCode::UNAUTHORIZED, "bad signature").into_response(),
        Act::Fail => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        Act::Hold => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            (axum::http::StatusCode::OK, "late").into_response()
        }
        Act::Accept => (axum::http::StatusCode::OK, "ok").into_response(),
    }
}

async fn slack_handler(
    axum::extract::State(hook): axum::extract::State<Hook>,
    body: axum::body::Bytes,
) -> &'static str {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    hook.with(|s| s.slack.push(json));
    "ok"
}

/// Starts the receiver; returns it and its base URL.
async fn start_hook() -> Result<(Hook, String)> {
    let hook = Hook::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook_handler))
        .route("/slack", axum::routing::post(slack_handler))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((hook, format!("http://{addr}")))
}

async fn until<F: FnMut() -> bool>(what: &str, f: F) -> Result<()> {
    until_within(PATIENCE, what, f).await
}

async fn until_within<F: FnMut() -> bool>(limit: Duration, what: &str, mut f: F) -> Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn alerts_toml(hook_url: &str, rules: &str, extra_channels: &str) -> String {
    format!(
        r#"
[alerts]
evaluate_interval = "200ms"
dispatch_interval = "100ms"
send_timeout = "3s"
backoff_initial = "200ms"
backoff_max = "1s"

[alerts.channels.hook]
kind = "webhook"
url = "{hook_url}/hook"
secret = "{SECRET}"

[alerts.channels.chat]
kind = "slack"
url = "{hook_url}/slack"
{extra_channels}
{rules}
"#
    )
}

fn failing(script: &str) -> pb::JobSpec {
    let mut s = sh(script);
    if let Some(r) = s.retry.as_mut() {
        r.max_retries = Some(0);
    }
    s
}

async fn notifications(api: &mut AlertsClient) -> Result<Vec<pb::Notification>> {
    Ok(api
        .list_notifications(pb::ListNotificationsRequest {
            page_size: 200,
            ..Default::default()
        })
        .await?
        .into_inner()
        .notifications)
}

// ------------------------------------------------------------------ fingerprints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_failures_form_the_groups_a_person_would_make() -> Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 4, &["--queue", "scrape"])?;
    let mut api = jobs(&addr).await?;

    // Three causes, each with ids, numbers, addresses and params that vary per job.
    let mut by_cause: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..5 {
        let mut s = failing(
            "echo fetching {date}; echo \"GET https://racing.example/api/races?date={date}&page=$$ failed\"; \
             echo \"HTTP 503 Service Unavailable (request id $(cat /proc/sys/kernel/random/uuid))\"; exit 1",
        );
        s.queue = "scrape".into();
        s.params
            .insert("date".into(), format!("2024-05-0{}", i + 1));
        by_cause
            .entry("http503")
            .or_default()
            .push(submit(&mut api, s).await?.id);
    }
    for i in 0..4 {
        let mut s = failing(&format!(
            "echo 'Traceback (most recent call last):'; \
             echo '  File \"/srv/scraper/parse.py\", line {}, in parse'; \
             echo \"KeyError: 'race_$$'\"; exit 2",
            100 + i
        ));
        s.queue = "scrape".into();
        by_cause
            .entry("keyerror")
            .or_default()
            .push(submit(&mut api, s).await?.id);
    }
    for i in 0..3 {
        let mut s = failing(&format!(
            "echo \"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) ConnectionResetError: [Errno 104] \
             Connection reset by peer ('10.0.{i}.$(($$ % 250))', {})\"; exit 1",
            40000 + i
        ));
        s.queue = "scrape".into();
        by_cause
            .entry("reset")
            .or_default()
            .push(submit(&mut api, s).await?.id);
    }
    for ids in by_cause.values() {
        for id in ids {
            wait_state(&mut api, id, pb::JobState::PermanentFailed).await?;
        }
    }

    let mut alerts = alerts_api(&addr).await?;
    let groups = alerts
        .list_failure_groups(pb::ListFailureGroupsRequest {
            queue: "scrape".into(),
            since: ms(3_600_000),
            ..Default::default()
        })
        .await?
        .into_inner()
        .groups;
    let summary: Vec<(u64, String)> = groups.iter().map(|g| (g.count, g.sample.clone())).collect();
    assert_eq!(groups.len(), 3, "groups: {summary:#?}");
    assert_eq!(
        groups.iter().map(|g| g.count).collect::<Vec<_>>(),
        vec![5, 4, 3],
        "{summary:#?}"
    );
    assert_eq!(
        groups[0].sample,
        "HTTP 503 Service Unavailable (request id {uuid})"
    );
    assert!(
        groups[0].normalised.contains("fetching {date}"),
        "{}",
        groups[0].normalised
    );
    assert!(
        groups[0].normalised.contains("races?{query}"),
        "{}",
        groups[0].normalised
    );
    assert_eq!(groups[1].sample, "KeyError: 'race_{n}'");
    assert_eq!(groups[1].exit_codes, vec![2]);
    assert!(groups[2]
        .sample
        .contains("Connection reset by peer ('{addr}', {n})"));

    // The jobs of a group are exactly that cause's jobs.
    for (g, cause) in groups.iter().zip(["http503", "keyerror", "reset"]) {
        let listed = alerts
            .list_failure_group_jobs(pb::ListFailureGroupJobsRequest {
                fingerprint: g.fingerprint.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs;
        let mut got: Vec<String> = listed.into_iter().map(|j| j.id).collect();
        let mut want = by_cause[cause].clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "jobs of {cause}");
    }

    // retry --fingerprint retries exactly the group's jobs, once.
    let fp = groups[1].fingerprint.clone();
    let r = api
        .retry_jobs(pb::RetryJobsRequest {
            fingerprint: fp.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut retried: Vec<String> = r.matched.iter().map(|j| j.id.clone()).collect();
    retried.sort();
    let mut want = by_cause["keyerror"].clone();
    want.sort();
    assert_eq!(retried, want);
    assert_eq!(r.created.len(), 4);
    assert!(r.created.iter().all(|j| want.contains(&j.retry_of)));
    let again = api
        .retry_jobs(pb::RetryJobsRequest {
            fingerprint: fp.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // An original is never retried twice. (A retry that has itself failed since may be
    // matched: it is a new failure of its own.)
    assert!(
        again.matched.iter().all(|j| !want.contains(&j.id)),
        "retried twice: {:?}",
        again.matched
    );

    // Health shows the top groups of the last 24 h.
    let h = admin_api(&addr)
        .await?
        .get_health(pb::GetHealthRequest {})
        .await?
        .into_inner();
    // (The retried jobs fail again, so the KeyError group may now lead.)
    let top: Vec<&str> = h
        .top_failure_groups
        .iter()
        .map(|g| g.fingerprint.as_str())
        .collect();
    assert_eq!(top.len(), 3, "{top:?}");
    assert!(
        groups.iter().all(|g| top.contains(&g.fingerprint.as_str())),
        "{top:?}"
    );

    // The CLI ranks the same groups and lists a group's jobs.
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args([
            "--addr", &addr, "failures", "--queue", "scrape", "--since", "24h",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains(&groups[0].fingerprint) && text.contains("HTTP 503"),
        "{text}"
    );
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "failures", "show", &groups[2].fingerprint])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for id in &by_cause["reset"] {
        assert!(text.contains(id.as_str()), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_field_named() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    let _ = hook;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, "", "")),
            ..Default::default()
        },
    )?;
    let mut a = alerts_api(&addr).await?;
    let bad = [
        a.list_failure_groups(pb::ListFailureGroupsRequest {
            page_size: 101,
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "page_size")),
        a.list_failure_groups(pb::ListFailureGroupsRequest {
            fingerprint: "XYZ".into(),
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "fingerprint")),
        a.list_failure_groups(pb::ListFailureGroupsRequest {
            page_token: "-5".into(),
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "page_token")),
        a.list_failure_group_jobs(pb::ListFailureGroupJobsRequest {
            fingerprint: String::new(),
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "fingerprint")),
        a.list_notifications(pb::ListNotificationsRequest {
            page_size: 201,
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "page_size")),
        a.redeliver_notification(pb::RedeliverNotificationRequest { id: 0 })
            .await
            .err()
            .map(|e| (e.code(), e.message().to_string(), "id")),
        a.test_alert_channel(pb::TestAlertChannelRequest {
            channel: "nope".into(),
            ..Default::default()
        })
        .await
        .err()
        .map(|e| (e.code(), e.message().to_string(), "channel")),
    ];
    for b in bad {
        let (code, msg, field) = b.context("a bad request was accepted")?;
        assert_eq!(code, Code::InvalidArgument, "{msg}");
        assert!(msg.starts_with(field), "{field}: {msg}");
    }
    let mut j = jobs(&addr).await?;
    let e = j
        .retry_jobs(pb::RetryJobsRequest {
            fingerprint: "not-hex".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad fingerprint accepted");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("fingerprint"), "{}", e.message());
    let e = j
        .retry_jobs(pb::RetryJobsRequest {
            fingerprint: "0123456789abcdef".into(),
            finished_within: ms(1000),
            ..Default::default()
        })
        .await
        .expect_err("fingerprint with finished_within accepted");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("finished_within"),
        "{}",
        e.message()
    );

    // Redelivering a message that is not dead, or does not exist.
    let e = a
        .redeliver_notification(pb::RedeliverNotificationRequest { id: 999_999 })
        .await
        .expect_err("unknown id");
    assert_eq!(e.code(), Code::NotFound);
    let n = a
        .test_alert_channel(pb::TestAlertChannelRequest {
            channel: "hook".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .notification
        .context("no notification")?;
    let mut api = alerts_api(&addr).await?;
    until_async(|| {
        let mut api = api.clone();
        async move {
            notifications(&mut api)
                .await
                .map(|ns| ns.iter().any(|x| x.id == n.id && x.state == "delivered"))
                .unwrap_or(false)
        }
    })
    .await?;
    let e = api
        .redeliver_notification(pb::RedeliverNotificationRequest { id: n.id })
        .await
        .expect_err("delivered message redelivered");
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The CLI says why in one line and exits non-zero.
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "alerts", "test", "nope"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("channel"), "{err}");
    Ok(())
}

async fn until_async<F, Fut>(mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > PATIENCE {
            bail!("gave up waiting");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_alerts_config_stops_the_coordinator_with_the_key_named() -> Result<()> {
    let cl = Cluster::new().await?;
    let toml =
        "[[alerts.rules]]\nname = \"r\"\nkind = \"permanent_failed\"\nchannel = \"missing\"\n";
    let r = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(toml.into()),
            ..Default::default()
        },
    );
    let Err(e) = r else {
        bail!("coordinator started with a rule naming an unknown channel");
    };
    let _ = e;
    let log = std::fs::read_to_string(cl.path("coord.log")).unwrap_or_default();
    assert!(log.contains("alerts.rules[r].channel"), "{log}");
    Ok(())
}

// ------------------------------------------------------------------ the outbox gate

#[tokio::test]
async fn outbox_rows_are_written_only_while_an_event_rule_wants_them() -> Result<()> {
    let cl = Cluster::new().await?;
    let (_c1, addr) = cl.coordinator("plain", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let db = cl.db.client().await?;
    // A copy of every outbox row, as the alert evaluator deletes the rows it reads.
    db.batch_execute(
        "CREATE TABLE outbox_seen (job_id uuid, event text); \
         CREATE FUNCTION copy_outbox() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO outbox_seen VALUES (NEW.job_id, NEW.event); RETURN NULL; END $$; \
         CREATE TRIGGER copy_outbox AFTER INSERT ON outbox \
           FOR EACH ROW EXECUTE FUNCTION copy_outbox();",
    )
    .await?;
    let seen = |id: String| {
        let db = &db;
        async move {
            let id: uuid::Uuid = id.parse()?;
            let rows = db
                .query(
                    "SELECT event FROM outbox_seen WHERE job_id = $1 ORDER BY event",
                    &[&id],
                )
                .await?;
            Ok::<Vec<String>, anyhow::Error>(rows.iter().map(|r| r.get(0)).collect())
        }
    };
    let mut api = jobs(&addr).await?;
    let before = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &before.id, pb::JobState::Succeeded).await?;
    assert_eq!(
        seen(before.id.clone()).await?,
        Vec::<String>::new(),
        "no coordinator has an event rule: nothing reads the outbox, so nothing is written"
    );
    // A coordinator with an event rule opens the gate before it serves; from then on
    // every coordinator's changes write their events.
    let rules = "[[alerts.rules]]\nname = \"failed\"\nkind = \"permanent_failed\"\n\
                 channel = \"hook\"\n";
    let (_c2, _) = cl.coordinator(
        "with-rules",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml("http://127.0.0.1:9", rules, "")),
            ..Default::default()
        },
    )?;
    let after = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &after.id, pb::JobState::Succeeded).await?;
    assert_eq!(
        seen(after.id.clone()).await?,
        vec!["job.submitted".to_string(), "job.succeeded".to_string()]
    );
    Ok(())
}

// ------------------------------------------------------------------ webhook delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_503_then_200_is_one_signed_delivery_and_slack_gets_its_format() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    hook.with(|s| s.fail_next = 2);
    let rules = r#"
[[alerts.rules]]
name = "failed"
kind = "permanent_failed"
channel = "hook"
window = "1s"

[[alerts.rules]]
name = "failed-chat"
kind = "permanent_failed"
channel = "chat"
window = "1s"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    let _w = cl.worker("w1", &addr, 2, &[])?;

    // The rules and channels are listed; a webhook URL shows only its origin.
    let listed = alerts_api(&addr)
        .await?
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await?
        .into_inner();
    let names: Vec<&str> = listed.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["failed", "failed-chat"]);
    assert_eq!(listed.rules[0].kind, "permanent_failed");
    let targets: Vec<(&str, &str)> = listed
        .channels
        .iter()
        .map(|c| (c.name.as_str(), c.kind.as_str()))
        .collect();
    assert_eq!(targets, vec![("chat", "slack"), ("hook", "webhook")]);
    assert!(listed
        .channels
        .iter()
        .all(|c| !c.target.contains("/hook") && !c.target.contains("/slack")));
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "alerts"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("failed-chat") && text.contains("webhook"),
        "{text}"
    );

    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, failing("echo 'HTTP 503 from upstream'; exit 1")).await?;
    wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;

    until("an accepted webhook delivery", || {
        hook.with(|s| !s.accepted.is_empty())
    })
    .await?;
    let mut a = alerts_api(&addr).await?;
    // The receiver answered; the sender records it right after.
    until_async(|| {
        let mut a = a.clone();
        async move {
            notifications(&mut a)
                .await
                .map(|ns| {
                    ns.iter()
                        .any(|n| n.rule == "failed" && n.state == "delivered")
                })
                .unwrap_or(false)
        }
    })
    .await?;
    let ns = notifications(&mut a).await?;
    let n = ns
        .iter()
        .find(|n| n.rule == "failed")
        .context("notification of rule failed")?;
    assert_eq!(n.state, "delivered");
    let outcomes: Vec<&str> = n.attempts.iter().map(|t| t.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["transient", "transient", "delivered"]);
    assert!(n.attempts[0].detail.contains("503"), "{:?}", n.attempts);
    hook.with(|s| {
        assert_eq!(s.accepted.len(), 1);
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.requests.len(), 3, "one message, three tries");
        assert!(s
            .requests
            .iter()
            .all(|(k, ok, _)| *ok && *k == n.idempotency_key));
        let body = &s.accepted[&n.idempotency_key];
        assert_eq!(
            body["subject"],
            "1 job in queue default failed with fingerprint `HTTP 503 from upstream`"
        );
        assert!(body["body"].as_str().unwrap_or("").contains(&job.id));
    });
    until("a Slack message", || hook.with(|s| !s.slack.is_empty())).await?;
    hook.with(|s| {
        let text = s.slack[0]["text"].as_str().unwrap_or_default().to_string();
        assert!(text.contains("1 job in queue default failed"), "{text}");
        assert!(text.contains(&job.id), "{text}");
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_delivery_still_delivers_and_the_key_dedups() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    hook.with(|s| s.hold_next = true);
    let opts = CoordinatorOpts {
        config_toml: Some(alerts_toml(&url, "", "")),
        ..Default::default()
    };
    let (mut c1, addr) = cl.coordinator("coord1", &opts)?;
    let mut a = alerts_api(&addr).await?;
    let n = a
        .test_alert_channel(pb::TestAlertChannelRequest {
            channel: "hook".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .notification
        .context("no notification")?;
    until("the receiver to hold the first try", || {
        hook.with(|s| s.held == 1)
    })
    .await?;
    c1.signal(nix::sys::signal::Signal::SIGKILL);
    c1.wait_exit(Duration::from_secs(10))?;
    let (_c2, addr2) = cl.coordinator("coord2", &opts)?;
    until("delivery by the second coordinator", || {
        hook.with(|s| s.accepted.contains_key(&n.idempotency_key))
    })
    .await?;
    let mut a2 = alerts_api(&addr2).await?;
    until_async(|| {
        let mut a2 = a2.clone();
        async move {
            notifications(&mut a2)
                .await
                .map(|ns| ns.iter().any(|x| x.id == n.id && x.state == "delivered"))
                .unwrap_or(false)
        }
    })
    .await?;
    hook.with(|s| {
        assert_eq!(s.accepted.len(), 1);
        let tries = s
            .requests
            .iter()
            .filter(|(k, _, _)| *k == n.idempotency_key)
            .count();
        assert!(tries >= 2, "the interrupted try and the one after: {tries}");
    });
    let ns = notifications(&mut a2).await?;
    let rec = ns.iter().find(|x| x.id == n.id).context("listed")?;
    // The killed try left no record: only the successful one is recorded.
    assert_eq!(rec.attempts.len(), 1, "{:?}", rec.attempts);
    assert_eq!(rec.attempts[0].outcome, "delivered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_failures_with_one_cause_are_one_folded_alert() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    let rules = r#"
[[alerts.rules]]
name = "storm"
kind = "permanent_failed"
channel = "hook"
queue = "scrape"
window = "1m"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    let mut api = jobs(&addr).await?;
    // Submitted first, run all at once, so all 500 fail within the minute.
    let mut ids = Vec::new();
    for i in 0..500 {
        let mut s = failing("echo \"HTTP 503 from {host} (req $$)\" >&2; exit 1");
        s.queue = "scrape".into();
        s.params
            .insert("host".into(), format!("mirror-{i}.example"));
        ids.push(submit(&mut api, s).await?.id);
    }
    let _w = cl.worker("w1", &addr, 16, &["--queue", "scrape"])?;
    // The message goes out when the rule's 60 s window closes.
    until_within(PATIENCE * 3, "the folded alert", || {
        hook.with(|s| !s.accepted.is_empty())
    })
    .await?;
    for id in &ids {
        let (j, _) = get(&mut api, id).await?;
        assert!(
            is_state(&j, pb::JobState::PermanentFailed),
            "{id} not failed"
        );
    }
    hook.with(|s| {
        assert_eq!(s.accepted.len(), 1, "{:#?}", s.accepted);
        let body = s.accepted.values().next().cloned().unwrap_or_default();
        assert_eq!(
            body["subject"],
            "500 jobs in queue scrape failed with fingerprint `HTTP 503 from {host} (req {n})`"
        );
        assert!(
            body["body"].as_str().unwrap_or("").contains("and 495 more"),
            "{body}"
        );
    });
    let mut a = alerts_api(&addr).await?;
    let ns = notifications(&mut a).await?;
    assert_eq!(ns.iter().filter(|n| n.rule == "storm").count(), 1);
    // Every event was read into the window, and a read event is not kept: the outbox
    // (every event of these 500 jobs) empties instead of holding them for alerts.retention.
    let db = cl.db.client().await?;
    let start = Instant::now();
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await?
            .try_get(0)?;
        if left == 0 {
            break;
        }
        if start.elapsed() > PATIENCE {
            bail!("{left} outbox rows left after the evaluator read them all");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_queue_fires_once_and_resolves_once() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    let rules = r#"
[[alerts.rules]]
name = "unserved"
kind = "queue_unserved"
channel = "hook"
queue = "lonely"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    let mut api = jobs(&addr).await?;
    let mut s = sh("true");
    s.queue = "lonely".into();
    let job = submit(&mut api, s).await?;
    until("the firing message", || {
        hook.with(|s| s.accepted.len() == 1)
    })
    .await?;
    let _w = cl.worker("w1", &addr, 1, &["--queue", "lonely"])?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    until("the resolved message", || {
        hook.with(|s| s.accepted.len() == 2)
    })
    .await?;
    let mut a = alerts_api(&addr).await?;
    let ns = notifications(&mut a).await?;
    let subjects: Vec<&str> = ns.iter().rev().map(|n| n.subject.as_str()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert_eq!(
        subjects[0],
        "[unserved] queue lonely: 1 job(s) due and no available worker takes it"
    );
    assert_eq!(subjects[1], "resolved: [unserved] lonely");
    Ok(())
}

// ------------------------------------------------------------------ SMTP

const SMTP_SERVER: &str = r#"
import asyncio, email, email.policy, json, os, sys, time
from aiosmtpd.controller import Controller
port, outdir, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tls = {}
if mode == "starttls":
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    tls = {"tls_context": ctx, "require_starttls": True}
class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if mode == "550":
            return "550 5.1.1 <%s>: unknown mailbox" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        rec = {"from": envelope.mail_from, "to": envelope.rcpt_tos,
               "subject": str(msg["subject"]), "body": msg.get_content()}
        name = "%d-%d" % (time.time_ns(), os.getpid())
        with open(os.path.join(outdir, name + ".tmp"), "w") as f:
            json.dump(rec, f)
        os.rename(os.path.join(outdir, name + ".tmp"), os.path.join(outdir, name + ".json"))
        return "250 OK"
c = Controller(Handler(), hostname="127.0.0.1", port=port, **tls)
c.start()
print("READY", flush=True)
while True:
    time.sleep(3600)
"#;

struct Smtp {
    child: std::process::Child,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aiosmtpd_available() -> Result<bool> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        bail!("python3 with aiosmtpd is required under CI (see .ci/run)");
    }
    if !ok {
        eprintln!(
            "SKIPPED: python3 -c 'import aiosmtpd' failed (apt-get install python3-aiosmtpd)"
        );
    }
    Ok(ok)
}

fn start_smtp(dir: &Path, port: u16, mode: &str) -> Result<Smtp> {
    let script = dir.join("smtp_server.py");
    std::fs::write(&script, SMTP_SERVER)?;
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail)?;
    let start = Instant::now();
    loop {
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&mail)
            .arg(mode)
            .args([dir.join("server.crt"), dir.join("server.key")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() == "READY" {
            return Ok(Smtp { child });
        }
        let _ = child.kill();
        let _ = child.wait();
        // The port may still be held by the previous server for a moment.
        if start.elapsed() > Duration::from_secs(30) {
            bail!("SMTP server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn received(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_survives_an_smtp_outage_and_a_550_is_dead_after_one_try() -> Result<()> {
    if !aiosmtpd_available()? {
        return Ok(());
    }
    let cl = Cluster::new().await?;
    let dir = cl.path("smtp");
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let mut smtp = Some(start_smtp(&dir, port, "ok")?);
    let (_hook, url) = start_hook().await?;
    let mail_channel = format!(
        r#"
[alerts.channels.mail]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "none"
from = "Drover <drover@example.com>"
to = ["ops@example.com", "oncall@example.com"]
"#
    );
    let rules = r#"
[[alerts.rules]]
name = "mail-failed"
kind = "permanent_failed"
channel = "mail"
queue = "mailq"
window = "1s"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, &mail_channel)),
            ..Default::default()
        },
    )?;
    let _w = cl.worker("w1", &addr, 1, &["--queue", "mailq"])?;
    let mut api = jobs(&addr).await?;
    let mut a = alerts_api(&addr).await?;

    // 1. An alert by mail: subject, body, recipients.
    let mut s = failing("echo 'ValueError: no odds for race 17'; exit 1");
    s.queue = "mailq".into();
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    until("the alert mail", || received(&dir).len() == 1).await?;
    let m = &received(&dir)[0];
    assert_eq!(
        m["subject"],
        "1 job in queue mailq failed with fingerprint `ValueError: no odds for race {n}`"
    );
    assert_eq!(
        m["to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(m["from"], "drover@example.com");
    let body = m["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("[mail-failed]") && body.contains(&job.id),
        "{body}"
    );

    // 2. The server is down for a while: the message is retried and arrives after. First
    // the alert must be recorded as delivered: the mail lands in the server's directory
    // before the sender reads the server's reply, and a server stopped in between makes
    // the sender try again (at least once), which would send the alert a second time.
    until_async(|| {
        let mut a = a.clone();
        async move {
            notifications(&mut a)
                .await
                .map(|ns| ns.iter().any(|x| x.state == "delivered"))
                .unwrap_or(false)
        }
    })
    .await?;
    drop(smtp.take());
    let n = a
        .test_alert_channel(pb::TestAlertChannelRequest {
            channel: "mail".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .notification
        .context("no notification")?;
    until_async(|| {
        let mut a = a.clone();
        async move {
            notifications(&mut a)
                .await
                .map(|ns| ns.iter().any(|x| x.id == n.id && x.tries >= 2))
                .unwrap_or(false)
        }
    })
    .await?;
    let during = notifications(&mut a).await?;
    let rec = during.iter().find(|x| x.id == n.id).context("listed")?;
    assert_eq!(rec.state, "pending");
    assert!(rec.attempts.iter().all(|t| t.outcome == "transient"));
    assert_eq!(received(&dir).len(), 1);
    smtp = Some(start_smtp(&dir, port, "ok")?);
    until("the mail after the outage", || received(&dir).len() == 2).await?;
    assert_eq!(received(&dir)[1]["subject"], "Drover test message");

    // 3. The server refuses the recipient with 550: dead after one try, reason shown.
    drop(smtp.take());
    smtp = Some(start_smtp(&dir, port, "550")?);
    let n = a
        .test_alert_channel(pb::TestAlertChannelRequest {
            channel: "mail".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .notification
        .context("no notification")?;
    until_async(|| {
        let mut a = a.clone();
        async move {
            notifications(&mut a)
                .await
                .map(|ns| ns.iter().any(|x| x.id == n.id && x.state == "dead"))
                .unwrap_or(false)
        }
    })
    .await?;
    let ns = notifications(&mut a).await?;
    let dead = ns.iter().find(|x| x.id == n.id).context("listed")?;
    assert_eq!(dead.tries, 1);
    assert_eq!(dead.attempts.len(), 1);
    assert!(dead.last_error.contains("550"), "{}", dead.last_error);
    let h = admin_api(&addr)
        .await?
        .get_health(pb::GetHealthRequest {})
        .await?
        .into_inner();
    assert_eq!(h.notifications_dead, 1);
    assert!(
        h.reasons
            .iter()
            .any(|r| r.contains("1 notification(s) dead")),
        "{:?}",
        h.reasons
    );

    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "notifications", "--failed"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("dead") && text.contains("550"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("created")).count(),
        1,
        "{text}"
    );

    // 4. Fixed the mailbox; redeliver: it arrives.
    drop(smtp.take());
    smtp = Some(start_smtp(&dir, port, "ok")?);
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args([
            "--addr",
            &addr,
            "notifications",
            "redeliver",
            &n.id.to_string(),
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("the redelivered mail", || received(&dir).len() == 3).await?;
    drop(smtp);
    Ok(())
}

/// A private CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn make_certs(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=drover test CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_is_verified_against_the_configured_ca() -> Result<()> {
    if !aiosmtpd_available()? {
        return Ok(());
    }
    let cl = Cluster::new().await?;
    let dir = cl.path("smtp");
    std::fs::create_dir_all(&dir)?;
    make_certs(&dir)?;
    let port = free_port();
    let _smtp = start_smtp(&dir, port, "starttls")?;
    let (_hook, url) = start_hook().await?;
    let channels = format!(
        r#"
[alerts.channels.tls]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "starttls"
ca_file = "{}"
from = "drover@example.com"
to = ["ops@example.com"]

[alerts.channels.untrusted]
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "starttls"
from = "drover@example.com"
to = ["ops@example.com"]
"#,
        dir.join("ca.crt").display()
    );
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, "", &channels)),
            ..Default::default()
        },
    )?;
    let mut a = alerts_api(&addr).await?;
    for ch in ["tls", "untrusted"] {
        a.test_alert_channel(pb::TestAlertChannelRequest {
            channel: ch.into(),
            ..Default::default()
        })
        .await?;
    }
    until("the mail over STARTTLS", || received(&dir).len() == 1).await?;
    assert_eq!(
        received(&dir)[0]["to"],
        serde_json::json!(["ops@example.com"])
    );
    // Without the CA the server's certificate is not trusted: nothing is sent in clear,
    // and the message waits (a TLS failure is treated as transient).
    until_async(|| {
        let mut a = a.clone();
        async move {
            notifications(&mut a)
                .await
                .map(|ns| ns.iter().any(|n| n.channel == "untrusted" && n.tries >= 1))
                .unwrap_or(false)
        }
    })
    .await?;
    let ns = notifications(&mut a).await?;
    let u = ns
        .iter()
        .find(|n| n.channel == "untrusted")
        .context("listed")?;
    assert_eq!(u.state, "pending");
    assert!(
        u.last_error.to_lowercase().contains("certificate"),
        "{}",
        u.last_error
    );
    assert_eq!(received(&dir).len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_alerts_once_and_its_return_resolves() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    let rules = r#"
[[alerts.rules]]
name = "workers"
kind = "worker"
channel = "hook"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    let mut w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let j = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
    assert!(hook.with(|s| s.accepted.is_empty()));
    w.kill();
    until("the lost-worker message", || {
        hook.with(|s| s.accepted.len() == 1)
    })
    .await?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    until("the resolved message", || {
        hook.with(|s| s.accepted.len() == 2)
    })
    .await?;
    let mut a = alerts_api(&addr).await?;
    let ns = notifications(&mut a).await?;
    let subjects: Vec<&str> = ns.iter().rev().map(|n| n.subject.as_str()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(
        subjects[0].starts_with("[workers] worker w1 lost: no heartbeat for"),
        "{subjects:?}"
    );
    assert_eq!(subjects[1], "resolved: [workers] w1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_notifications_outbox_rows_and_groups() -> Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    // Rows from three hours ago and from now, before the coordinator starts.
    db.batch_execute(
        "INSERT INTO outbox (job_id, event, payload, created_at) VALUES \
           (gen_random_uuid(), 'job.submitted', '{}', now() - interval '3 hours'), \
           (gen_random_uuid(), 'job.submitted', '{}', now()); \
         INSERT INTO notifications (idempotency_key, channel, subject, body, state, created_at, finished_at) VALUES \
           (gen_random_uuid(), 'hook', 'old delivered', '', 'delivered', now() - interval '3 hours', now() - interval '3 hours'), \
           (gen_random_uuid(), 'hook', 'old dead', '', 'dead', now() - interval '3 hours', now() - interval '3 hours'), \
           (gen_random_uuid(), 'hook', 'new delivered', '', 'delivered', now(), now()); \
         INSERT INTO failure_groups (queue, fingerprint, normalised, sample, first_seen_at, last_seen_at, last_job_id, last_attempt_id) VALUES \
           ('q', '0000000000000001', 'x', 'x', now() - interval '3 hours', now() - interval '3 hours', gen_random_uuid(), gen_random_uuid()), \
           ('q', '0000000000000002', 'y', 'y', now(), now(), gen_random_uuid(), gen_random_uuid());",
    )
    .await?;
    let (_hook, url) = start_hook().await?;
    let toml = alerts_toml(&url, "", "").replace("[alerts]\n", "[alerts]\nretention = \"1h\"\n");
    let (_c, _addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(toml),
            ..Default::default()
        },
    )?;
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            db.query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        }
    };
    let start = Instant::now();
    while count("SELECT count(*) FROM notifications").await != 1
        || count("SELECT count(*) FROM outbox").await != 1
        || count("SELECT count(*) FROM failure_groups").await != 1
    {
        if start.elapsed() > PATIENCE {
            bail!("old notifications, outbox rows or failure groups were not deleted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subject: String = db
        .query_one("SELECT subject FROM notifications", &[])
        .await?
        .get(0);
    assert_eq!(subject, "new delivered");
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE created_at > now() - interval '1 hour'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM failure_groups WHERE fingerprint = '0000000000000002'").await,
        1
    );
    Ok(())
}

async fn by_rule(a: &mut AlertsClient, rule: &str) -> Vec<String> {
    notifications(a)
        .await
        .unwrap_or_default()
        .iter()
        .rev()
        .filter(|n| n.rule == rule)
        .map(|n| n.subject.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_cause_attempts_runtime_spike_and_wait_rules_each_speak_once() -> Result<()> {
    let cl = Cluster::new().await?;
    let (_hook, url) = start_hook().await?;
    let rules = r#"
[[alerts.rules]]
name = "new-cause"
kind = "new_fingerprint"
channel = "hook"
window = "1s"

[[alerts.rules]]
name = "many"
kind = "attempts"
channel = "hook"
attempts_over = 1
window = "1s"

[[alerts.rules]]
name = "slow"
kind = "runtime"
channel = "hook"
ran_longer_than = "1s"
window = "1s"

[[alerts.rules]]
name = "spike"
kind = "fingerprint_spike"
channel = "hook"
count = 3
window = "10s"

[[alerts.rules]]
name = "wait"
kind = "queue_wait"
channel = "hook"
queue = "waitq"
waited_longer_than = "1s"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let mut a = alerts_api(&addr).await?;

    // A slow job failing twice with one cause: new cause, more than 1 attempt, slow.
    let mut slow = sh("sleep 1.5; echo 'boom: disk quota exceeded'; exit 1");
    if let Some(r) = slow.retry.as_mut() {
        r.max_retries = Some(1);
    }
    let slow = submit(&mut api, slow).await?;
    // Three quick failures of another cause: a spike (3 within 10 s).
    let mut spiky = Vec::new();
    for _ in 0..3 {
        spiky.push(
            submit(&mut api, failing("echo 'spike cause'; exit 1"))
                .await?
                .id,
        );
    }
    // A job nobody takes: its queue waits.
    let mut w = sh("true");
    w.queue = "waitq".into();
    let waiting = submit(&mut api, w).await?;

    wait_state(&mut api, &slow.id, pb::JobState::PermanentFailed).await?;
    for id in &spiky {
        wait_state(&mut api, id, pb::JobState::PermanentFailed).await?;
    }
    until_async(|| {
        let mut a = a.clone();
        async move { by_rule(&mut a, "wait").await.len() == 1 }
    })
    .await?;
    api.cancel_job(pb::CancelJobRequest {
        id: waiting.id.clone(),
        ..Default::default()
    })
    .await?;
    until_async(|| {
        let mut a = a.clone();
        async move {
            by_rule(&mut a, "wait").await.len() == 2
                && by_rule(&mut a, "spike").await.len() == 2
                && by_rule(&mut a, "many").await.len() == 1
                && by_rule(&mut a, "new-cause").await.len() == 2
                && !by_rule(&mut a, "slow").await.is_empty()
        }
    })
    .await?;

    let wait = by_rule(&mut a, "wait").await;
    assert!(
        wait[0].starts_with("[wait] queue waitq: oldest due job has waited"),
        "{wait:?}"
    );
    assert_eq!(wait[1], "resolved: [wait] waitq");
    let spike = by_rule(&mut a, "spike").await;
    assert!(
        spike[0].starts_with(
            "[spike] 3 failures in queue default within 10s with fingerprint `spike cause`"
        ),
        "{spike:?}"
    );
    assert!(
        spike[1].starts_with("resolved: [spike] default|"),
        "{spike:?}"
    );
    assert_eq!(
        by_rule(&mut a, "many").await,
        vec!["1 job in queue default needed more than 1 attempts".to_string()]
    );
    let mut new = by_rule(&mut a, "new-cause").await;
    new.sort();
    assert_eq!(
        new,
        vec![
            "new failure in queue default: `boom: disk quota exceeded` (1 job so far)".to_string(),
            "new failure in queue default: `spike cause` (1 job so far)".to_string(),
        ]
    );
    let slow_msgs = by_rule(&mut a, "slow").await;
    assert!(
        slow_msgs
            .iter()
            .all(|s| s.ends_with("job in queue default ran longer than 1s")
                || s.ends_with("jobs in queue default ran longer than 1s")),
        "{slow_msgs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_schedule_that_misses_its_runs_alerts_once_and_resolves_when_paused() -> Result<()> {
    let cl = Cluster::new().await?;
    let (hook, url) = start_hook().await?;
    let rules = r#"
[[alerts.rules]]
name = "missed"
kind = "schedule_missed"
channel = "hook"
window = "1h"
"#;
    let (_c, addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            config_toml: Some(alerts_toml(&url, rules, "")),
            ..Default::default()
        },
    )?;
    // Every second, overlap "skip", and no worker: the first tick's job stays pending, so
    // each later tick is skipped — a missed run.
    let mut s = schedules(&addr).await?;
    s.create_schedule(pb::CreateScheduleRequest {
        schedule: Some(pb::Schedule {
            name: "every-second".into(),
            cron: "* * * * * *".into(),
            timezone: "UTC".into(),
            overlap: "skip".into(),
            spec: Some(sh("echo tick")),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    until("the firing message", || {
        hook.with(|s| !s.accepted.is_empty())
    })
    .await?;
    s.pause_schedule(pb::PauseScheduleRequest {
        name: "every-second".into(),
    })
    .await?;
    until("the resolved message", || {
        hook.with(|s| s.accepted.len() >= 2)
    })
    .await?;
    let mut a = alerts_api(&addr).await?;
    let ns = notifications(&mut a).await?;
    let subjects: Vec<&str> = ns.iter().rev().map(|n| n.subject.as_str()).collect();
    assert_eq!(
        subjects.len(),
        2,
        "one firing and one resolved message: {subjects:?}"
    );
    assert!(
        subjects[0].starts_with("[missed] schedule every-second missed a run")
            && subjects[0].contains("skipped: previous run"),
        "{}",
        subjects[0]
    );
    assert_eq!(subjects[1], "resolved: [missed] every-second");
    Ok(())
}
