//! The JSON API (`/api/v1`) against a real coordinator: the same validation, error kinds,
//! idempotency, access rules and audit as the gRPC services it calls in-process.

use drover_tests::v1 as pb;
use drover_tests::*;
use serde_json::{json, Value};
use tonic::Code;

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let c = reqwest::Client::new();
    let mut req = match method {
        "POST" => c.post(url),
        _ => c.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test]
async fn json_api_has_the_grpc_semantics() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let api = format!("{}/api/v1", c.http);
    let mut grpc = jobs(&addr).await?;

    // Submit: 201, enums by name, times as RFC 3339.
    let spec = json!({"spec": {"argv": ["sh", "-c", "echo hi"], "idempotency_key": "k1",
                               "retry": {"max_retries": 0}}});
    let (status, body) = call(
        "POST",
        &format!("{api}/jobs"),
        Some(ADMIN_TOKEN),
        Some(spec.clone()),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    assert_eq!(body["job"]["state"], "JOB_STATE_PENDING");
    let id = body["job"]["id"].as_str().unwrap_or_default().to_string();
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["job"]["created_at"].as_str().unwrap_or(""))
            .is_ok(),
        "{body}"
    );
    // Idempotency as in gRPC: the same key gives the same job, 200, created false.
    let (status, again) = call(
        "POST",
        &format!("{api}/jobs"),
        Some(ADMIN_TOKEN),
        Some(spec),
    )
    .await?;
    assert_eq!((status, again["created"].clone()), (200, json!(false)));
    assert_eq!(again["job"]["id"], body["job"]["id"]);
    wait_state(&mut grpc, &id, pb::JobState::Succeeded).await?;
    let (status, got) = call("GET", &format!("{api}/jobs/{id}"), Some(VIEWER_TOKEN), None).await?;
    assert_eq!(status, 200);
    assert_eq!(got["job"]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(got["attempts"][0]["state"], "ATTEMPT_STATE_SUCCEEDED");
    assert_eq!(got["attempts"][0]["exit_code"], 0);

    // Validation: the gRPC message, with INVALID_ARGUMENT as 400.
    let bad = json!({"spec": {"argv": []}});
    let (status, err) = call(
        "POST",
        &format!("{api}/jobs"),
        Some(ADMIN_TOKEN),
        Some(bad.clone()),
    )
    .await?;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "INVALID_ARGUMENT");
    let grpc_err = grpc
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec::default()),
        })
        .await
        .expect_err("empty argv is refused");
    assert_eq!(grpc_err.code(), Code::InvalidArgument);
    assert_eq!(
        err["message"],
        grpc_err.message(),
        "one validation, two transports"
    );
    // Malformed JSON, unknown fields and bad enum names are refused with a reason.
    for (body, needle) in [
        (json!({"spec": {"argv": ["x"], "colour": 1}}), "colour"),
        (json!({"spec": {"argv": "x"}}), "argv"),
    ] {
        let (status, err) = call(
            "POST",
            &format!("{api}/jobs"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await?;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["message"].as_str().unwrap_or("").contains(needle),
            "{err}"
        );
    }
    let (status, err) = call(
        "GET",
        &format!("{api}/jobs?state=nope"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, 400, "{err}");
    // Not found and failed precondition keep their kinds.
    let missing = uuid::Uuid::new_v4();
    let (status, err) = call(
        "GET",
        &format!("{api}/jobs/{missing}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await?;
    assert_eq!((status, err["code"].clone()), (404, json!("NOT_FOUND")));
    let (status, err) = call(
        "POST",
        &format!("{api}/jobs/{id}/cancel"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await?;
    assert_eq!(
        (status, err["code"].clone()),
        (409, json!("FAILED_PRECONDITION")),
        "{err}"
    );

    // Lists: filters by short state names, keyset pages.
    for _ in 0..3 {
        submit(&mut grpc, spec_in("q2")).await?;
    }
    let (status, page1) = call(
        "GET",
        &format!("{api}/jobs?queue=q2&page_size=2&state=pending"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(page1["jobs"].as_array().map(Vec::len), Some(2));
    let token = page1["next_page_token"].as_str().unwrap_or_default();
    assert!(!token.is_empty());
    let (_, page2) = call(
        "GET",
        &format!(
            "{api}/jobs?queue=q2&page_size=2&state=pending&page_token={}",
            urlenc(token)
        ),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(page2["jobs"].as_array().map(Vec::len), Some(1), "{page2}");

    // Filters by label, param and creation time.
    let before_all = chrono::Utc::now();
    let mut tagged = Vec::new();
    for (label, date) in [
        ("gpu", "2024-01-01"),
        ("gpu", "2024-01-02"),
        ("cpu", "2024-01-01"),
    ] {
        let mut s = spec_in("q3");
        s.labels = vec![label.into()];
        s.params.insert("date".into(), date.into());
        s.argv = vec!["echo".into(), "{date}".into()];
        tagged.push(submit(&mut grpc, s).await?.id);
    }
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|j| j["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, gpu) = call(
        "GET",
        &format!("{api}/jobs?queue=q3&label=gpu"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(
        ids(&gpu),
        vec![tagged[1].clone(), tagged[0].clone()],
        "{gpu}"
    );
    let (_, day1) = call(
        "GET",
        &format!("{api}/jobs?queue=q3&param=date%3D2024-01-01"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(
        ids(&day1),
        vec![tagged[2].clone(), tagged[0].clone()],
        "{day1}"
    );
    let (_, both) = call(
        "GET",
        &format!("{api}/jobs?queue=q3&label=gpu&param=date%3D2024-01-02"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(ids(&both), vec![tagged[1].clone()], "{both}");
    let since = urlenc(&before_all.to_rfc3339());
    let (_, recent) = call(
        "GET",
        &format!("{api}/jobs?created_after={since}"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(ids(&recent).len(), 3, "{recent}");
    let (_, old) = call(
        "GET",
        &format!("{api}/jobs?queue=q3&created_before={since}"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(ids(&old).len(), 0, "{old}");
    let (status, err) = call(
        "GET",
        &format!("{api}/jobs?param=nodate"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        err["message"].as_str().unwrap_or("").contains("name=value"),
        "{err}"
    );
    let (status, _) = call(
        "GET",
        &format!("{api}/jobs?label=bad%20label"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, 400);

    // Retry with params and bulk retry preview.
    let (status, retried) = call(
        "POST",
        &format!("{api}/jobs/{id}/retry"),
        Some(OPERATOR_TOKEN),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["job"]["retry_of"], id.as_str());
    let (status, preview) = call(
        "POST",
        &format!("{api}/jobs/retry"),
        Some(OPERATOR_TOKEN),
        Some(json!({"state": "succeeded", "dry_run": true})),
    )
    .await?;
    assert_eq!(status, 200, "{preview}");
    assert!(preview["matched"]
        .as_array()
        .is_some_and(|m| m.iter().any(|j| j["id"] == id.as_str())));
    assert_eq!(preview["created"], json!([]));

    // Access: the gRPC rules. Viewers read but may not act; no token is 401.
    let (status, err) = call(
        "POST",
        &format!("{api}/jobs/{id}/retry"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(
        (status, err["code"].clone()),
        (403, json!("PERMISSION_DENIED")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap_or("").contains("operate"),
        "{err}"
    );
    let (status, _) = call("GET", &format!("{api}/jobs"), None, None).await?;
    assert_eq!(status, 401);
    let (status, _) = call(
        "POST",
        &format!("{api}/jobs"),
        Some(VIEWER_TOKEN),
        Some(json!({"spec": {"argv": ["true"]}})),
    )
    .await?;
    assert_eq!(status, 403);

    // The API's actions are audited like gRPC's, under the gRPC method.
    // The audit write is off the request's path: poll for it.
    let mut admin = admin_api(&addr).await?;
    let started = std::time::Instant::now();
    let entry = loop {
        let r = admin
            .list_audit(pb::ListAuditRequest::default())
            .await?
            .into_inner();
        if let Some(e) = r.entries.into_iter().find(|e| {
            e.method == "/drover.v1.JobService/RetryJob"
                && e.actor == "harness-operator"
                && e.outcome == "ok"
        }) {
            break e;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no audit entry for the API's retry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(entry.target.contains(&id), "target {:?}", entry.target);
    // The viewer's refused retry is audited too (refused before any handler ran).
    let started = std::time::Instant::now();
    loop {
        let r = admin
            .list_audit(pb::ListAuditRequest::default())
            .await?
            .into_inner();
        if r.entries.iter().any(|e| {
            e.method == "/api/v1/jobs/{id}/retry"
                && e.actor == "harness-viewer"
                && e.outcome.starts_with("PermissionDenied")
                && e.peer.starts_with("127.0.0.1:")
        }) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no audit entry for the refused retry: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        entry.peer.starts_with("127.0.0.1:"),
        "peer {:?}",
        entry.peer
    );

    // Other routes answer with their messages.
    for route in [
        "health",
        "workers",
        "queues",
        "failure-groups",
        "schedules",
        "openapi.json",
    ] {
        let (status, body) =
            call("GET", &format!("{api}/{route}"), Some(VIEWER_TOKEN), None).await?;
        assert_eq!(status, 200, "{route}: {body}");
    }
    let (_, doc) = call(
        "GET",
        &format!("{api}/openapi.json"),
        Some(VIEWER_TOKEN),
        None,
    )
    .await?;
    assert_eq!(doc["openapi"], "3.0.3");
    Ok(())
}

fn spec_in(queue: &str) -> pb::JobSpec {
    let mut s = sh("true");
    s.queue = queue.into();
    s
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Dashboard sessions: the cookie's flags, only a hash stored, CSRF on mutating requests,
/// a revoked token ends its sessions, logout ends one.
#[tokio::test]
async fn dashboard_sessions_are_hashed_csrf_checked_and_end_with_their_token() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let token = create_token(&cl.db.url, "browser", "operator", &[], "", None).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // A wrong token gets the form back with the reason, and no cookie.
    let r = http
        .post(format!("{}/ui/login", c.http))
        .form(&[("token", format!("drover_{}", "1".repeat(64)))])
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // A body over the login form's bound is refused.
    let r = http
        .post(format!("{}/ui/login", c.http))
        .form(&[("token", "x".repeat(300))])
        .send()
        .await?;
    assert_eq!(r.status(), 400);

    let r = http
        .post(format!("{}/ui/login", c.http))
        .form(&[("token", token.as_str())])
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "cookie lacks {flag}: {set}");
    }
    let secret = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("drover_session="))
        .unwrap_or("")
        .to_string();
    assert!(secret.len() > 32, "{set}");
    let cookie = format!("drover_session={secret}");

    // Only the secret's SHA-256 is stored.
    let db = cl.db.client().await?;
    let rows = db
        .query(
            "SELECT secret_hash = sha256($1::text::bytea), csrf FROM dashboard_sessions",
            &[&secret],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, bool>(0));
    let csrf: String = rows[0].get(1);

    // The page carries the CSRF token; mutating calls need it.
    let page = http
        .get(format!("{}/ui/jobs", c.http))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains(&format!("content=\"{csrf}\"")));
    let missing = uuid::Uuid::new_v4();
    let cancel = format!("{}/api/v1/jobs/{missing}/cancel", c.http);
    for (header, want) in [
        (None, 403),
        (Some("wrong"), 403),
        (Some(csrf.as_str()), 404),
    ] {
        let mut req = http.post(&cancel).header("cookie", &cookie);
        if let Some(h) = header {
            req = req.header("x-csrf-token", h);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), want, "csrf {header:?}");
    }

    // Revoking the token ends the session at once.
    let mut admin = admin_api(&addr).await?;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "browser".into(),
        })
        .await?;
    let r = http
        .get(format!("{}/ui/jobs", c.http))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/ui/login")
    );
    let r = http
        .get(format!("{}/api/v1/jobs", c.http))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // Logout deletes the session row.
    let token2 = create_token(&cl.db.url, "browser2", "viewer", &[], "", None).await?;
    let r = http
        .post(format!("{}/ui/login", c.http))
        .form(&[("token", token2.as_str())])
        .send()
        .await?;
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let cookie2 = set.split(';').next().unwrap_or("").to_string();
    let csrf2: String = db
        .query_one(
            "SELECT csrf FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id \
              WHERE t.name = 'browser2'",
            &[],
        )
        .await?
        .get(0);
    let r = http
        .post(format!("{}/ui/logout", c.http))
        .header("cookie", &cookie2)
        .header("x-csrf-token", &csrf2)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id \
              WHERE t.name = 'browser2'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);

    // An oversized JSON body is refused before any handler reads it.
    let big = format!("{{\"spec\": {{\"argv\": [\"{}\"]}}}}", "x".repeat(2 << 20));
    let r = http
        .post(format!("{}/api/v1/jobs", c.http))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let text = r.text().await?;
    assert!(text.contains("length limit"), "{text}");
    Ok(())
}
