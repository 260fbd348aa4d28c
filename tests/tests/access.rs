//! Access control end to end: every RPC and HTTP route for every role (from the API's own
//! descriptors, so a new RPC without a rule fails here), revoked and expired tokens, worker
//! tokens bound to their worker id, forged worker reports, operator queue scopes, the
//! audit log, the offline bootstrap and the refusal to serve a network unprotected.

use drover_tests::v1 as pb;
use drover_tests::*;
use pb::session_request::Msg as Out;
use prost::Message;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(30);

/// What each gRPC method needs, written out independently of the coordinator's table.
/// "open" methods need no token.
const EXPECTED: &[(&str, &str)] = &[
    ("/drover.v1.JobService/SubmitJob", "submit"),
    ("/drover.v1.JobService/GetJob", "read"),
    ("/drover.v1.JobService/ListJobs", "read"),
    ("/drover.v1.JobService/StreamLogs", "read"),
    ("/drover.v1.JobService/RetryJob", "operate"),
    ("/drover.v1.JobService/RetryJobs", "operate"),
    ("/drover.v1.JobService/CancelJob", "operate"),
    ("/drover.v1.JobService/ListArtifacts", "read"),
    ("/drover.v1.JobService/GetArtifact", "read"),
    ("/drover.v1.JobService/SubmitJobs", "submit"),
    ("/drover.v1.JobService/WatchJobs", "read"),
    ("/drover.v1.JobService/WaitJob", "read"),
    ("/drover.v1.WorkerService/Session", "worker"),
    ("/drover.v1.WorkerService/AppendLogs", "worker"),
    ("/drover.v1.WorkerService/FinishAttempt", "worker"),
    ("/drover.v1.WorkerService/UploadArtifact", "worker"),
    ("/drover.v1.AdminService/GetHealth", "read"),
    ("/drover.v1.AdminService/ListWorkers", "read"),
    ("/drover.v1.AdminService/CreateToken", "admin"),
    ("/drover.v1.AdminService/ListTokens", "admin"),
    ("/drover.v1.AdminService/RevokeToken", "admin"),
    ("/drover.v1.AdminService/ListAudit", "admin"),
    ("/drover.v1.AlertService/ListFailureGroups", "read"),
    ("/drover.v1.AlertService/ListFailureGroupJobs", "read"),
    ("/drover.v1.AlertService/ListAlertRules", "read"),
    ("/drover.v1.AlertService/ListNotifications", "read"),
    ("/drover.v1.AlertService/RedeliverNotification", "operate"),
    ("/drover.v1.AlertService/TestAlertChannel", "admin"),
    ("/drover.v1.ScheduleService/ListSchedules", "read"),
    ("/drover.v1.ScheduleService/GetSchedule", "read"),
    ("/drover.v1.ScheduleService/CreateSchedule", "submit"),
    ("/drover.v1.ScheduleService/PauseSchedule", "operate"),
    ("/drover.v1.ScheduleService/ResumeSchedule", "operate"),
    ("/drover.v1.ScheduleService/DeleteSchedule", "operate"),
    ("/drover.v1.ScheduleService/TriggerSchedule", "submit"),
    ("/drover.v1.QueueService/ListQueues", "read"),
    ("/drover.v1.QueueService/PauseQueue", "operate"),
    ("/drover.v1.QueueService/ResumeQueue", "operate"),
    ("/grpc.health.v1.Health/Check", "open"),
    ("/grpc.health.v1.Health/Watch", "open"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "read",
    ),
];

/// Rights of each role, as docs/security.md states them.
fn role_has(role: &str, right: &str) -> bool {
    match role {
        "viewer" => right == "read",
        "operator" => matches!(right, "read" | "submit" | "operate"),
        "admin" => matches!(right, "read" | "submit" | "operate" | "admin"),
        "worker" => right == "worker",
        _ => false,
    }
}

/// Every method the coordinator serves, from the compiled descriptors.
fn served_methods() -> Vec<String> {
    let mut out = Vec::new();
    for fds in [
        drover_proto::v1::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(fds).expect("descriptor set");
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    out.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                }
            }
        }
    }
    // Reflection is served too (tonic-reflection registers its own descriptor).
    out.push("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
    out
}

/// Calls `path` with one empty message and returns the status (Ok for a stream that
/// opened). Empty requests are refused by validation, so an allowed call changes nothing.
async fn call_raw(
    addr: &str,
    token: Option<&str>,
    path: &str,
) -> anyhow::Result<Result<(), tonic::Status>> {
    let ch = channel_as(addr, token).await?;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let req = tonic::Request::new(tokio_stream::iter(vec![()]));
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        grpc.streaming(req, path.parse()?, codec),
    )
    .await;
    Ok(match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(s),
        // A stream that opened and waits (e.g. Health/Watch) was let through.
        Err(_) => Ok(()),
    })
}

#[tokio::test]
async fn every_rpc_and_route_allows_exactly_the_roles_the_table_says() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let served = served_methods();
    for m in &served {
        assert!(
            EXPECTED.iter().any(|(p, _)| p == m),
            "{m} is served but has no expectation here: add it to EXPECTED (and a rule to \
             coordinator/src/auth.rs)"
        );
    }
    assert_eq!(
        served.len(),
        EXPECTED.len(),
        "EXPECTED lists a method that is not served"
    );

    let roles: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("viewer", Some(VIEWER_TOKEN)),
        ("operator", Some(OPERATOR_TOKEN)),
        ("admin", Some(ADMIN_TOKEN)),
        ("worker", Some(WORKER_TOKEN)),
    ];
    let mut failures = Vec::new();
    for (path, right) in EXPECTED {
        for (role, token) in roles {
            let allowed = *right == "open" || role_has(role, right);
            let got = call_raw(&addr, token, path).await?;
            let refused_code = match (&got, token) {
                (Err(s), None) if s.code() == Code::Unauthenticated => true,
                (Err(s), Some(_)) if s.code() == Code::PermissionDenied => {
                    // The refusal names the missing right.
                    if !s.message().contains(&format!("\"{right}\"")) {
                        failures.push(format!("{path} as {role}: message {:?}", s.message()));
                    }
                    true
                }
                _ => false,
            };
            if allowed == refused_code {
                failures.push(format!(
                    "{path} as {role}: expected {}, got {got:?}",
                    if allowed { "allowed" } else { "refused" }
                ));
            }
        }
    }

    // HTTP routes, each with the method it is served for.
    let job = uuid::Uuid::new_v4();
    let routes: &[(&str, &str, &str)] = &[
        ("GET", "/healthz", "open"),
        ("GET", "/readyz", "open"),
        ("GET", "/metrics", "open"),
        ("GET", "/health", "read"),
        ("GET", "/jobs/{id}/logs", "read"),
        ("GET", "/api/v1/openapi.json", "read"),
        ("GET", "/api/v1/health", "read"),
        ("GET", "/api/v1/workers", "read"),
        ("GET", "/api/v1/jobs", "read"),
        ("POST", "/api/v1/jobs", "submit"),
        ("POST", "/api/v1/jobs/retry", "operate"),
        ("GET", "/api/v1/jobs/{id}", "read"),
        ("POST", "/api/v1/jobs/{id}/retry", "operate"),
        ("POST", "/api/v1/jobs/{id}/cancel", "operate"),
        ("GET", "/api/v1/jobs/{id}/artifacts", "read"),
        ("GET", "/api/v1/jobs/{id}/artifacts/out/a.txt", "read"),
        ("GET", "/api/v1/jobs/{id}/log", "read"),
        ("GET", "/api/v1/jobs/{id}/log/follow", "read"),
        ("GET", "/api/v1/queues", "read"),
        ("POST", "/api/v1/queues/q/pause", "operate"),
        ("POST", "/api/v1/queues/q/resume", "operate"),
        ("GET", "/api/v1/failure-groups", "read"),
        ("GET", "/api/v1/schedules", "read"),
        ("GET", "/ui", "read"),
        ("GET", "/ui/jobs", "read"),
        ("GET", "/ui/jobs/{id}", "read"),
        ("GET", "/ui/jobs/{id}/log", "read"),
        ("GET", "/ui/workers", "read"),
        ("GET", "/ui/queues", "read"),
        ("GET", "/ui/failures", "read"),
        ("GET", "/ui/events", "read"),
        ("POST", "/ui/logout", "read"),
        ("GET", "/", "public"),
        ("GET", "/ui/login", "public"),
        ("GET", "/ui/static/dashboard.js", "public"),
        ("GET", "/ui/static/dashboard.css", "public"),
    ];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    for (method, route, right) in routes {
        let url = format!("{}{}", c.http, route.replace("{id}", &job.to_string()));
        for (role, token) in roles {
            // Workers may not use the dashboard or the API (they have no read right).
            let allowed = matches!(*right, "open" | "public") || role_has(role, right);
            let mut req = match *method {
                "POST" => http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}"),
                _ => http.get(&url),
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let refused = match token {
                // A person without a session is sent to the login form.
                None => status == 401 || (status == 303 && location == "/ui/login"),
                Some(_) => status == 403,
            };
            if allowed == refused {
                failures.push(format!("{method} {route} as {role}: status {status}"));
            }
        }
    }
    // Every route in the coordinator's table is exercised above.
    for (route, _) in drover_coordinator::auth::HTTP_RULES {
        let covered = routes.iter().any(|(m, r, _)| {
            r == route
                || format!("{m} {r}") == *route
                || (route.contains("{*name}") && r.starts_with("/api/v1/jobs/{id}/artifacts/"))
                || (route.contains("{queue}") && *r == route.replace("{queue}", "q"))
        });
        assert!(
            covered,
            "HTTP route {route} has no expectation in this test"
        );
    }
    // A route that does not exist is not served to anyone.
    assert_eq!(
        http_get_as(&format!("{}/admin", c.http), Some(ADMIN_TOKEN))
            .await?
            .status(),
        404
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Garbage and unknown tokens are UNAUTHENTICATED, never an error or a lookup crash.
    for bad in [
        "nonsense".to_string(),
        format!("drover_{}", "0".repeat(64)),
        format!("drover_{}'; DROP TABLE api_tokens; --", "0".repeat(30)),
    ] {
        let s = call_raw(&addr, Some(&bad), "/drover.v1.JobService/ListJobs")
            .await?
            .expect_err("bad token let through");
        assert_eq!(s.code(), Code::Unauthenticated, "{bad}: {s:?}");
    }
    Ok(())
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_at_once() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let list = pb::ListJobsRequest::default();

    // Revoked through the API: refused on the very next call (it was cached before).
    let t = create_token(&cl.db.url, "soon-revoked", "viewer", &[], "", None).await?;
    let mut api = jobs_as(&addr, Some(&t)).await?;
    api.list_jobs(list.clone()).await?;
    api.list_jobs(list.clone()).await?;
    let mut admin = admin_api(&addr).await?;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token: "soon-revoked".into(),
        })
        .await?;
    let s = api
        .list_jobs(list.clone())
        .await
        .expect_err("revoked token let through");
    assert_eq!(s.code(), Code::Unauthenticated);

    // Revoked offline (no coordinator involved): the NOTIFY reaches the cache.
    let t2 = create_token(&cl.db.url, "revoked-offline", "viewer", &[], "", None).await?;
    let mut api2 = jobs_as(&addr, Some(&t2)).await?;
    api2.list_jobs(list.clone()).await?;
    let out = std::process::Command::new(bin("drover-coordinator"))
        .args([
            "--database-url",
            &cl.db.url,
            "token",
            "revoke",
            "revoked-offline",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    loop {
        match api2.list_jobs(list.clone()).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            _ if start.elapsed() > PATIENCE => panic!("offline revocation never took effect"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }

    // Expired already: refused.
    let old = create_token(
        &cl.db.url,
        "expired",
        "viewer",
        &[],
        "",
        Some(Duration::ZERO),
    )
    .await?;
    let s = jobs_as(&addr, Some(&old))
        .await?
        .list_jobs(list.clone())
        .await
        .expect_err("expired token let through");
    assert_eq!(s.code(), Code::Unauthenticated);

    // Expiring while cached: refused once its time has passed.
    let short = create_token(
        &cl.db.url,
        "short-lived",
        "viewer",
        &[],
        "",
        Some(Duration::from_secs(2)),
    )
    .await?;
    let expires = Instant::now() + Duration::from_secs(2);
    let mut api3 = jobs_as(&addr, Some(&short)).await?;
    api3.list_jobs(list.clone()).await?;
    tokio::time::sleep_until((expires + Duration::from_millis(200)).into()).await;
    let s = api3
        .list_jobs(list)
        .await
        .expect_err("expired token let through");
    assert_eq!(s.code(), Code::Unauthenticated);
    Ok(())
}

/// Opens a session saying hello as `id`; returns the first reply's status.
async fn hello_as(addr: &str, token: &str, id: &str) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut api = workers_as(addr, Some(token)).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::SessionRequest {
        msg: Some(Out::Hello(pb::Hello {
            worker_id: id.into(),
            hostname: "test".into(),
            queues: vec!["nobody-uses-this".into()],
            slots: 1,
            free_slots: 1,
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        })),
    })?;
    let r = match api.session(UnboundedReceiverStream::new(rx)).await {
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            inbound.message().await.map(|_| ())
        }
        Err(s) => Err(s),
    };
    drop(tx);
    Ok(r)
}

#[tokio::test]
async fn a_worker_token_is_bound_to_its_worker_id_and_reads_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let t = create_token(&cl.db.url, "w-bound", "worker", &[], "w-bound", None).await?;
    let s = jobs_as(&addr, Some(&t))
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect_err("worker token read jobs");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("\"read\""), "{s:?}");

    let s = hello_as(&addr, &t, "someone-else")
        .await?
        .expect_err("hello as another worker let through");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("someone-else"), "{s:?}");
    let db = cl.db.client().await?;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM workers WHERE id = 'someone-else'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 0, "a refused hello registered a worker");

    hello_as(&addr, &t, "w-bound")
        .await?
        .expect("own id refused");

    // A pattern binds a family of ids.
    let p = create_token(&cl.db.url, "gpu-hosts", "worker", &[], "gpu-*", None).await?;
    hello_as(&addr, &p, "gpu-7")
        .await?
        .expect("matching id refused");
    assert_eq!(
        hello_as(&addr, &p, "cpu-1")
            .await?
            .expect_err("pattern")
            .code(),
        Code::PermissionDenied
    );
    Ok(())
}

/// Everything stored about an attempt, to compare before and after forged reports.
async fn snapshot(db: &tokio_postgres::Client, attempt: uuid::Uuid) -> anyhow::Result<String> {
    let a = db
        .query_one(
            "SELECT state, worker_id, log_chunks, log_bytes, exit_code, finished_at::text \
               FROM attempts WHERE id = $1",
            &[&attempt],
        )
        .await?;
    let chunks = db
        .query(
            "SELECT seq, encode(data, 'hex') FROM log_chunks WHERE attempt_id = $1 ORDER BY seq",
            &[&attempt],
        )
        .await?;
    let arts: i64 = db
        .query_one(
            "SELECT count(*) FROM artifacts WHERE attempt_id = $1",
            &[&attempt],
        )
        .await?
        .get(0);
    let job = db
        .query_one(
            "SELECT j.state, j.reason FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE a.id = $1",
            &[&attempt],
        )
        .await?;
    Ok(format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} | {:?} | arts {arts} | {:?} {:?}",
        a.get::<_, String>(0),
        a.get::<_, String>(1),
        a.get::<_, i64>(2),
        a.get::<_, i64>(3),
        a.get::<_, Option<i32>>(4),
        a.get::<_, Option<String>>(5),
        chunks
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>(),
        job.get::<_, String>(0),
        job.get::<_, String>(1),
    ))
}

#[tokio::test]
async fn forged_worker_reports_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _victim = cl.worker("victim", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("echo real output; sleep 60")).await?;
    let (_, attempts) = wait_for(&mut api, &job.id, "output stored", |_, a| {
        a.first().is_some_and(|a| a.log_bytes > 0)
    })
    .await?;
    let attempt = attempts[0].id.clone();
    let attempt_uuid: uuid::Uuid = attempt.parse()?;
    let db = cl.db.client().await?;
    let before = snapshot(&db, attempt_uuid).await?;

    let attacker = create_token(&cl.db.url, "attacker", "worker", &[], "attacker", None).await?;
    // The attacker may be a worker, as itself.
    hello_as(&addr, &attacker, "attacker")
        .await?
        .expect("own id");
    let mut w = workers_as(&addr, Some(&attacker)).await?;

    let s = w
        .finish_attempt(pb::FinishAttemptRequest {
            attempt_id: attempt.clone(),
            result: Some(pb::finish_attempt_request::Result::Exited(pb::ExitStatus {
                code: Some(0),
                signal: None,
            })),
            ..Default::default()
        })
        .await
        .expect_err("forged finish let through");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("victim"), "{s:?}");

    let s = w
        .append_logs(pb::AppendLogsRequest {
            attempt_id: attempt.clone(),
            chunks: vec![pb::LogChunk {
                attempt_id: attempt.clone(),
                seq: 0,
                stream: pb::LogStream::Stdout as i32,
                data: b"forged\n".to_vec(),
                ..Default::default()
            }],
        })
        .await
        .expect_err("forged log let through");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    let content = b"evil".to_vec();
    let header = pb::UploadArtifactRequest {
        part: Some(pb::upload_artifact_request::Part::Header(
            pb::ArtifactHeader {
                attempt_id: attempt.clone(),
                name: "evil.txt".into(),
                size: content.len() as u64,
                sha256: "88ea3e3a9d0c8d3b1ad4f1d2b4b0e1c0b1b2a1d4e3d1f1a4c2b1a0d3e2f1c0b9".into(),
            },
        )),
    };
    let data = pb::UploadArtifactRequest {
        part: Some(pb::upload_artifact_request::Part::Data(content)),
    };
    let s = w
        .upload_artifact(tokio_stream::iter(vec![header, data]))
        .await
        .expect_err("forged artifact let through");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Hello as the victim would mark its running attempt lost: refused first.
    let s = hello_as(&addr, &attacker, "victim")
        .await?
        .expect_err("impersonation let through");
    assert_eq!(s.code(), Code::PermissionDenied);

    // No other role may report for a worker either.
    for t in [ADMIN_TOKEN, OPERATOR_TOKEN] {
        let s = workers_as(&addr, Some(t))
            .await?
            .finish_attempt(pb::FinishAttemptRequest {
                attempt_id: attempt.clone(),
                result: Some(pb::finish_attempt_request::Result::Exited(pb::ExitStatus {
                    code: Some(0),
                    signal: None,
                })),
                ..Default::default()
            })
            .await
            .expect_err("non-worker finish let through");
        assert_eq!(s.code(), Code::PermissionDenied);
    }

    assert_eq!(
        snapshot(&db, attempt_uuid).await?,
        before,
        "stored rows changed"
    );
    let files = std::fs::read_dir(cl.path("artifacts"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0, "a forged upload left a file");
    let (j, a) = get(&mut api, &job.id).await?;
    assert!(is_state(&j, pb::JobState::Running), "{j:?}");
    assert_eq!(a.len(), 1);

    // The real worker still owns it: cancelling works as usual.
    api.cancel_job(pb::CancelJobRequest {
        id: job.id.clone(),
        ..Default::default()
    })
    .await?;
    wait_state(&mut api, &job.id, pb::JobState::Cancelled).await?;
    Ok(())
}

#[tokio::test]
async fn an_operator_limited_to_queues_acts_only_on_them() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let t = create_token(&cl.db.url, "team-a", "operator", &["team-a"], "", None).await?;
    let mut scoped = jobs_as(&addr, Some(&t)).await?;
    let mut mine = sh("true");
    mine.queue = "team-a".into();
    submit(&mut scoped, mine).await?;
    let mut theirs = sh("true");
    theirs.queue = "team-b".into();
    let s = scoped
        .submit_job(pb::SubmitJobRequest {
            spec: Some(theirs.clone()),
        })
        .await
        .expect_err("submit outside scope");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(s.message().contains("team-b"), "{s:?}");

    // A job of another queue cannot be cancelled or retried by it.
    let mut admin_jobs = jobs(&addr).await?;
    let other = submit(&mut admin_jobs, theirs).await?;
    let s = scoped
        .cancel_job(pb::CancelJobRequest {
            id: other.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("cancel outside scope");
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = scoped
        .retry_jobs(pb::RetryJobsRequest::default())
        .await
        .expect_err("bulk retry over every queue");
    assert_eq!(s.code(), Code::PermissionDenied);
    let (j, _) = get(&mut admin_jobs, &other.id).await?;
    assert!(is_state(&j, pb::JobState::Pending), "{j:?}");
    assert!(!j.cancel_requested);
    Ok(())
}

#[tokio::test]
async fn mutations_are_audited_with_who_what_and_where() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("true")).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: job.id.clone(),
        ..Default::default()
    })
    .await?;
    let mut admin = admin_api(&addr).await?;
    let created = admin
        .create_token(pb::CreateTokenRequest {
            name: "ci".into(),
            role: "viewer".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(drover_core::auth::is_token_form(&created.secret));
    // Only its hash is stored.
    let db = cl.db.client().await?;
    let leaked: i64 = db
        .query_one(
            "SELECT count(*) FROM api_tokens t WHERE position($1::bytea in t::text::bytea) > 0",
            &[&created.secret.as_bytes()],
        )
        .await?
        .get(0);
    assert_eq!(leaked, 0, "the secret is stored");
    // A viewer's attempt to submit is refused and recorded.
    let _ = jobs_as(&addr, Some(&created.secret))
        .await?
        .submit_job(pb::SubmitJobRequest {
            spec: Some(sh("true")),
        })
        .await
        .expect_err("viewer submitted");
    admin
        .revoke_token(pb::RevokeTokenRequest { token: "ci".into() })
        .await?;

    let want = [
        ("SubmitJob", "harness-admin", "ok"),
        ("CancelJob", "harness-admin", "ok"),
        ("CreateToken", "harness-admin", "ok"),
        ("SubmitJob", "ci", "PermissionDenied"),
        ("RevokeToken", "harness-admin", "ok"),
    ];
    let start = Instant::now();
    let entries = loop {
        let e = admin
            .list_audit(pb::ListAuditRequest {
                since: ms(3_600_000),
                ..Default::default()
            })
            .await?
            .into_inner()
            .entries;
        let all = want.iter().all(|(m, who, outcome)| {
            e.iter()
                .any(|x| x.method.ends_with(m) && x.actor == *who && x.outcome.starts_with(outcome))
        });
        if all {
            break e;
        }
        assert!(start.elapsed() < PATIENCE, "audit entries missing: {e:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cancel = entries
        .iter()
        .find(|x| x.method.ends_with("CancelJob"))
        .expect("cancel entry");
    assert!(cancel.target.contains(&job.id), "{cancel:?}");
    assert!(cancel.peer.starts_with("127.0.0.1:"), "{cancel:?}");
    assert_eq!(cancel.role, "admin");
    // Reads are not audited.
    assert!(!entries.iter().any(|x| x.method.ends_with("ListJobs")));

    // Paging is bounded and works.
    let s = admin
        .list_audit(pb::ListAuditRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .expect_err("page too large");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("page_size"));
    let p1 = admin
        .list_audit(pb::ListAuditRequest {
            page_size: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(p1.entries.len(), 2);
    let p2 = admin
        .list_audit(pb::ListAuditRequest {
            page_size: 2,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(p2.entries.iter().all(|e| e.id < p1.entries[1].id));

    // droverctl audit shows them.
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_ADDR", &addr)
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["audit", "--since", "1h"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CancelJob") && text.contains(&job.id),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn token_requests_are_bounded_and_checked() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut admin = admin_api(&addr).await?;
    let bad = [
        (
            pb::CreateTokenRequest {
                name: "x".repeat(65),
                role: "viewer".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            pb::CreateTokenRequest {
                name: "a b".into(),
                role: "viewer".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            pb::CreateTokenRequest {
                name: "r".into(),
                role: "root".into(),
                ..Default::default()
            },
            "role",
        ),
        (
            pb::CreateTokenRequest {
                name: "w".into(),
                role: "worker".into(),
                ..Default::default()
            },
            "worker_pattern",
        ),
        (
            pb::CreateTokenRequest {
                name: "w".into(),
                role: "worker".into(),
                worker_pattern: "a/b".into(),
                ..Default::default()
            },
            "worker_pattern",
        ),
        (
            pb::CreateTokenRequest {
                name: "v".into(),
                role: "viewer".into(),
                worker_pattern: "x".into(),
                ..Default::default()
            },
            "worker_pattern",
        ),
        (
            pb::CreateTokenRequest {
                name: "a".into(),
                role: "admin".into(),
                queues: vec!["q".into()],
                ..Default::default()
            },
            "queues",
        ),
        (
            pb::CreateTokenRequest {
                name: "o".into(),
                role: "operator".into(),
                queues: vec!["q".into(); 65],
                ..Default::default()
            },
            "queues",
        ),
        (
            pb::CreateTokenRequest {
                name: "o".into(),
                role: "operator".into(),
                queues: vec!["bad queue".into()],
                ..Default::default()
            },
            "queues[0]",
        ),
        (
            pb::CreateTokenRequest {
                name: "e".into(),
                role: "viewer".into(),
                expires_in: ms(u64::MAX),
                ..Default::default()
            },
            "expires_in",
        ),
    ];
    for (req, field) in bad {
        let s = admin
            .create_token(req.clone())
            .await
            .expect_err("bad token request");
        assert_eq!(s.code(), Code::InvalidArgument, "{req:?}: {s:?}");
        assert!(s.message().starts_with(field), "{req:?}: {s:?}");
    }
    let s = admin
        .create_token(pb::CreateTokenRequest {
            name: "harness-viewer".into(),
            role: "viewer".into(),
            ..Default::default()
        })
        .await
        .expect_err("duplicate name");
    assert_eq!(s.code(), Code::FailedPrecondition);
    for t in ["", "no such token", &"x".repeat(65)] {
        let s = admin
            .revoke_token(pb::RevokeTokenRequest { token: t.into() })
            .await
            .expect_err("bad revoke");
        assert!(
            matches!(s.code(), Code::InvalidArgument | Code::NotFound),
            "{s:?}"
        );
    }
    let n: i64 = cl
        .db
        .client()
        .await?
        .query_one("SELECT count(*) FROM api_tokens", &[])
        .await?
        .get(0);
    assert_eq!(n, 4, "only the harness's tokens exist");
    // ListTokens never shows secrets and shows the harness's tokens.
    let list = admin
        .list_tokens(pb::ListTokensRequest::default())
        .await?
        .into_inner()
        .tokens;
    assert_eq!(list.len(), 4);
    assert!(format!("{list:?}").find(ADMIN_TOKEN).is_none());
    Ok(())
}

#[tokio::test]
async fn bootstrap_offline_then_manage_tokens_with_droverctl() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let out = std::process::Command::new(bin("drover-coordinator"))
        .args([
            "--database-url",
            &cl.db.url,
            "token",
            "create",
            "--name",
            "ops",
            "--role",
            "admin",
            "--expires",
            "30d",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(drover_core::auth::is_token_form(&ops), "{ops}");

    let ctl = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(bin("droverctl"))
            .env("DROVER_ADDR", &addr)
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_TOKEN_FILE")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("droverctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No token: a one-line reason.
    let (code, _, err) = ctl(&["list"], &[]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not authenticated"), "{err}");

    // Token from a file (which must not be readable by others).
    let file = cl.path("ops.token");
    std::fs::write(&file, format!("{ops}\n"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let (code, _, err) = ctl(
        &["--token-file", file.to_str().unwrap_or_default(), "list"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let file_s = file.to_string_lossy().to_string();
    let (code, out, err) = ctl(
        &[
            "token", "create", "--name", "ci", "--role", "operator", "--queues", "a,b",
        ],
        &[("DROVER_TOKEN_FILE", &file_s)],
    );
    assert_eq!(code, 0, "{err}");
    let ci = out.trim().to_string();
    assert!(drover_core::auth::is_token_form(&ci), "{out}");

    let (code, out, err) = ctl(&["token", "list"], &[("DROVER_TOKEN", &ops)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ci") && out.contains("a,b") && out.contains("ops"),
        "{out}"
    );
    assert!(
        !out.contains(&ci) && !out.contains(&ops),
        "secrets listed: {out}"
    );

    // The operator token may not manage tokens.
    let (code, _, err) = ctl(&["token", "list"], &[("DROVER_TOKEN", &ci)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("PermissionDenied") && err.contains("\"admin\""),
        "{err}"
    );

    let (code, _, err) = ctl(
        &["token", "create", "--name", "x", "--role", "bogus"],
        &[("DROVER_TOKEN", &ops)],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("role") && err.trim().lines().count() == 1,
        "{err}"
    );

    let (code, _, err) = ctl(&["token", "revoke", "ci"], &[("DROVER_TOKEN", &ops)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&["list"], &[("DROVER_TOKEN", &ci)]);
    assert_eq!(code, 1);
    assert!(err.contains("not authenticated"), "{err}");

    // Offline bootstrap refuses bad input with one line and a non-zero exit.
    let out = std::process::Command::new(bin("drover-coordinator"))
        .args([
            "--database-url",
            &cl.db.url,
            "token",
            "create",
            "--name",
            "x",
            "--role",
            "root",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("role"));
    Ok(())
}

#[tokio::test]
async fn no_access_control_on_a_network_address_needs_insecure() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // Refused before anything binds.
    let out = std::process::Command::new(bin("drover-coordinator"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
            "--database-url",
            &cl.db.url,
        ])
        .env("DROVER_ACCESS_CONTROL", "false")
        .env("DROVER_ARTIFACT_DIR", cl.path("artifacts"))
        .output()?;
    assert_eq!(out.status.code(), Some(78), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access_control") && err.contains("--insecure"),
        "{err}"
    );

    // On loopback it starts, warns, and lets anyone in.
    let opts = CoordinatorOpts {
        env: vec![("DROVER_ACCESS_CONTROL".into(), "false".into())],
        ..Default::default()
    };
    let (c, addr) = cl.coordinator("open", &opts)?;
    jobs_as(&addr, None)
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?;
    assert!(c.log_text().contains("access control is OFF"));
    Ok(())
}

#[tokio::test]
async fn the_leader_deletes_audit_entries_past_retention() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    db.batch_execute(
        "INSERT INTO audit_log (at, actor, role, method, outcome) VALUES \
           (now() - interval '11 days', 'old', 'admin', '/x', 'ok'), \
           (now() - interval '9 days', 'recent', 'admin', '/x', 'ok')",
    )
    .await?;
    let opts = CoordinatorOpts {
        config_toml: Some("audit_retention = \"10d\"\nretention_interval = \"200ms\"\n".into()),
        ..Default::default()
    };
    let (_c, _addr) = cl.coordinator("coord", &opts)?;
    let start = Instant::now();
    loop {
        let actors: Vec<String> = db
            .query("SELECT actor FROM audit_log ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if actors == ["recent"] {
            break;
        }
        assert!(
            actors.contains(&"recent".to_string()),
            "a recent entry was deleted: {actors:?}"
        );
        assert!(
            start.elapsed() < PATIENCE,
            "old entry never deleted: {actors:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Polls a process's log until it contains `needle` (after `skip` bytes).
async fn log_until(p: &Proc, needle: &str, skip: usize) -> anyhow::Result<usize> {
    let start = std::time::Instant::now();
    loop {
        let text = p.log_text();
        if let Some(i) = text.get(skip..).and_then(|t| t.find(needle)) {
            return Ok(skip + i + needle.len());
        }
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "{} never logged {needle:?}:\n{text}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_revoked_worker_token_ends_the_open_session_and_gets_no_more_jobs() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let t = create_token(&cl.db.url, "wr-token", "worker", &[], "wr", None).await?;
    let w = cl.worker_with_env("wr", &addr, 1, &[], &[("DROVER_WORKER_TOKEN", &t)])?;
    let mut api = jobs(&addr).await?;
    let first = submit(&mut api, sh("echo before")).await?;
    wait_state(&mut api, &first.id, pb::JobState::Succeeded).await?;

    admin_api(&addr)
        .await?
        .revoke_token(pb::RevokeTokenRequest {
            token: "wr-token".into(),
        })
        .await?;
    // The session authenticated when it opened; its next heartbeat finds the token gone.
    let at = log_until(&c, "its token was revoked or expired", 0).await?;
    log_until(&c, "worker disconnected", at).await?;
    let refused_from = w.log_text().len();
    let after = submit(&mut api, sh("echo after")).await?;
    // The worker tries again and is turned away at the door.
    log_until(&w, "token is unknown, revoked or expired", refused_from).await?;
    let (j, attempts) = get(&mut api, &after.id).await?;
    assert!(
        attempts.is_empty() && is_state(&j, pb::JobState::Pending),
        "a job went to a worker whose token was revoked: {j:?} {attempts:?}"
    );
    Ok(())
}
