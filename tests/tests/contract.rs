//! The API contract of issue 10 against a real coordinator: invalid requests name their
//! field in `google.rpc.BadRequest` details (and in JSON error bodies), database failures
//! reach the client only as a reference that the coordinator's log explains, request ids
//! make retry/cancel safe to repeat, and page tokens are bound to the filters they were
//! made for.

use drover_tests::v1 as pb;
use drover_tests::*;
use serde_json::Value;
use tonic::Code;
use tonic_types::StatusExt;

/// Polls `f` until it gives a value, or fails after PATIENCE.
async fn poll<T, F, Fut>(mut f: F, what: &str) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > PATIENCE {
            anyhow::bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The field violations of a status, as (field, description).
fn violations(s: &tonic::Status) -> Vec<(String, String)> {
    s.get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn invalid_fields_are_named_in_details_and_json_bodies() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;

    let mut s = sh("true");
    s.queue = "bad queue!".into();
    let e = api
        .submit_job(pb::SubmitJobRequest { spec: Some(s) })
        .await
        .expect_err("bad queue refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    let v = violations(&e);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "queue");
    assert_eq!(e.message(), format!("queue: {}", v[0].1));

    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: "not-a-uuid".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad id refused");
    assert_eq!(violations(&e)[0].0, "id");

    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
            request_id: "has space".into(),
        })
        .await
        .expect_err("bad request id refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e)[0].0, "request_id");

    // The JSON API gives the same fields in its error body.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/jobs?page_size=5000", c.http))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&r.text().await?)?;
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert_eq!(body["fields"][0]["field"], "page_size", "{body}");
    assert!(body["fields"][0]["description"]
        .as_str()
        .is_some_and(|d| d.contains("at most")));

    // droverctl prints `field: problem` and fails.
    let out = std::process::Command::new(bin("droverctl"))
        .args(["--addr", &addr, "--token", ADMIN_TOKEN, "cancel", "nope"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("id: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    Ok(())
}

#[tokio::test]
async fn database_errors_reach_the_client_as_a_reference_in_the_log() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("true")).await?;

    // Break this test's own database under the coordinator.
    let db = cl.db.client().await?;
    db.batch_execute("ALTER TABLE artifacts RENAME TO artifacts_moved")
        .await?;
    let e = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("missing table fails");
    assert_eq!(e.code(), Code::Internal);
    let msg = e.message();
    assert!(msg.starts_with("internal error (ref "), "{msg}");
    assert!(
        !msg.contains("artifacts") && !msg.contains("relation"),
        "{msg}"
    );
    let reference = msg
        .trim_start_matches("internal error (ref ")
        .trim_end_matches(')');
    assert!(!reference.is_empty());
    // The log has the reference with the real cause.
    let found = poll(
        || {
            let log = c.log_text();
            async move {
                Ok(log
                    .lines()
                    .find(|l| l.contains(reference) && l.contains("artifacts"))
                    .map(str::to_string))
            }
        },
        "reference in the coordinator log",
    )
    .await?;
    assert!(found.contains("internal error"), "{found}");

    // The JSON API gives the same kind of reference.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/jobs/{}/artifacts", c.http, job.id))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = serde_json::from_str(&r.text().await?)?;
    let m = body["message"].as_str().unwrap_or_default();
    assert!(m.starts_with("internal error (ref "), "{body}");
    assert!(!m.contains("relation"), "{body}");
    Ok(())
}

/// How many jobs the test database holds.
async fn job_count(cl: &Cluster) -> anyhow::Result<i64> {
    let db = cl.db.client().await?;
    Ok(db.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0))
}

#[tokio::test]
async fn request_ids_make_cancel_and_retry_safe_to_repeat() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    // No worker: the job stays pending until cancelled.
    let mut s = sh("true");
    s.params.insert("day".into(), "mon".into());
    let job = submit(&mut api, s).await?;

    let cancel = pb::CancelJobRequest {
        id: job.id.clone(),
        request_id: "cancel-1".into(),
    };
    let first = api.cancel_job(cancel.clone()).await?.into_inner();
    let again = api.cancel_job(cancel.clone()).await?.into_inner();
    assert_eq!(first, again, "a repeat returns the first result");
    assert_eq!(
        first.job.as_ref().map(|j| j.state),
        Some(pb::JobState::Cancelled as i32)
    );
    // Without the id the same call is refused: the job is finished (nothing was redone).
    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("cancelling a cancelled job");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The same id for another request is refused, naming the field.
    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
            request_id: "cancel-1".into(),
        })
        .await
        .expect_err("id reused for another job");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(violations(&e)[0].0, "request_id");

    // RetryJob: the repeat returns the same new job; there is no second one.
    let retry = pb::RetryJobRequest {
        id: job.id.clone(),
        set_params: [("day".to_string(), "tue".to_string())].into(),
        request_id: "retry-1".into(),
    };
    let a = api
        .retry_job(retry.clone())
        .await?
        .into_inner()
        .job
        .unwrap();
    let before = job_count(&cl).await?;
    let b = api
        .retry_job(retry.clone())
        .await?
        .into_inner()
        .job
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(job_count(&cl).await?, before, "no second job");
    assert_eq!(before, 2);
    let e = api
        .retry_job(pb::RetryJobRequest {
            set_params: [("day".to_string(), "wed".to_string())].into(),
            ..retry.clone()
        })
        .await
        .expect_err("same id, other params");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().starts_with("request_id:"), "{}", e.message());

    // A refused call gives its id up: the retry with the same id acts once it can.
    let other = submit(&mut api, sh("true")).await?;
    let early = pb::RetryJobRequest {
        id: other.id.clone(),
        request_id: "retry-2".into(),
        ..Default::default()
    };
    let e = api
        .retry_job(early.clone())
        .await
        .expect_err("a pending job cannot be retried");
    assert_eq!(e.code(), Code::FailedPrecondition);
    api.cancel_job(pb::CancelJobRequest {
        id: other.id.clone(),
        ..Default::default()
    })
    .await?;
    let n = api.retry_job(early).await?.into_inner().job.unwrap();
    assert_ne!(n.id, other.id);

    // Ids belong to their caller: another token's call with the same id acts on its own.
    let mut op = jobs_as(&addr, Some(OPERATOR_TOKEN)).await?;
    let e = op
        .cancel_job(pb::CancelJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
            request_id: "cancel-1".into(),
        })
        .await
        .expect_err("unknown job");
    assert_eq!(e.code(), Code::NotFound);

    // Stored with the caller and method; retention removes them after the horizon.
    let db = cl.db.client().await?;
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM request_ids WHERE response IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(rows, 3, "cancel-1, retry-1, retry-2");
    Ok(())
}

#[tokio::test]
async fn old_request_ids_are_deleted_by_retention() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some(
            "retention_interval = \"200ms\"\n[retention]\nrequest_ids = \"1h\"\n".into(),
        ),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let mut api = jobs(&addr).await?;
    for (i, rid) in ["old", "new"].iter().enumerate() {
        let job = submit(&mut api, sh("true")).await?;
        api.cancel_job(pb::CancelJobRequest {
            id: job.id,
            request_id: format!("{rid}-{i}"),
        })
        .await?;
    }
    let db = cl.db.client().await?;
    db.execute(
        "UPDATE request_ids SET created_at = now() - interval '2 hours' \
          WHERE request_id LIKE 'old-%'",
        &[],
    )
    .await?;
    poll(
        || {
            let db = &db;
            async move {
                let left: Vec<String> = db
                    .query("SELECT request_id FROM request_ids ORDER BY 1", &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                Ok((left == ["new-1"]).then_some(()))
            }
        },
        "old request id deleted, new one kept",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn page_tokens_are_bound_to_their_filters_and_list() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    for q in ["a", "a", "a", "b"] {
        let mut s = sh("true");
        s.queue = q.into();
        submit(&mut api, s).await?;
    }
    let list = |queue: &str, token: &str| pb::ListJobsRequest {
        queue: queue.into(),
        page_size: 1,
        page_token: token.into(),
        ..Default::default()
    };
    let first = api.list_jobs(list("a", "")).await?.into_inner();
    assert!(!first.next_page_token.is_empty());
    // The token is opaque: no cursor text in sight.
    assert!(!first.next_page_token.contains(&first.jobs[0].id));

    // Same filters (any page size): fine; all three jobs of queue a, once each.
    let mut seen = vec![first.jobs[0].id.clone()];
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let mut req = list("a", &token);
        req.page_size = 2;
        let page = api.list_jobs(req).await?.into_inner();
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        token = page.next_page_token;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);

    // Other filters: refused, naming page_token.
    let e = api
        .list_jobs(list("b", &first.next_page_token))
        .await
        .expect_err("token with other filters");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e)[0].0, "page_token");
    // Another list's token: refused too.
    let mut admin = admin_api(&addr).await?;
    let e = admin
        .list_workers(pb::ListWorkersRequest {
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("ListJobs token to ListWorkers");
    assert_eq!(violations(&e)[0].0, "page_token");
    let e = admin
        .list_tokens(pb::ListTokensRequest {
            page_token: "MTIz".into(),
            ..Default::default()
        })
        .await
        .expect_err("made-up token");
    assert_eq!(violations(&e)[0].0, "page_token");

    // ListTokens pages walk every token of the harness once.
    let all = admin
        .list_tokens(pb::ListTokensRequest::default())
        .await?
        .into_inner()
        .tokens;
    let mut walked = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_tokens(pb::ListTokensRequest {
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.tokens.len() <= 1);
        walked.extend(page.tokens.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(walked, all.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
    assert!(walked.len() >= 4);
    Ok(())
}

#[tokio::test]
async fn workers_and_artifacts_page_through_every_row() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w: Vec<Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| cl.worker(n, &addr, 1, &[]))
        .collect::<anyhow::Result<_>>()?;
    let mut admin = admin_api(&addr).await?;
    poll(
        || {
            let mut admin = admin.clone();
            async move {
                let n = admin
                    .list_workers(pb::ListWorkersRequest::default())
                    .await?
                    .into_inner()
                    .workers
                    .len();
                Ok((n == 3).then_some(()))
            }
        },
        "three workers",
    )
    .await?;
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_workers(pb::ListWorkersRequest {
                page_size: 1,
                page_token: token,
            })
            .await?
            .into_inner();
        pages += 1;
        ids.extend(page.workers.into_iter().map(|w| w.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "by id, each once");
    assert_eq!(ids.len(), 3);

    let mut api = jobs(&addr).await?;
    let mut s = sh("for f in a b c d e; do echo $f > $f.txt; done");
    s.outputs = vec!["*.txt".into()];
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_artifacts(pb::ListArtifactsRequest {
                job_id: job.id.clone(),
                page_size: 2,
                page_token: token,
            })
            .await?
            .into_inner();
        assert!(page.artifacts.len() <= 2);
        names.extend(page.artifacts.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]);
    // A token of one job's artifacts is not one for another job's.
    let other = submit(&mut api, sh("true")).await?;
    let first = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: job.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    let e = api
        .list_artifacts(pb::ListArtifactsRequest {
            job_id: other.id,
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .expect_err("token for another job");
    assert_eq!(violations(&e)[0].0, "page_token");
    Ok(())
}
