//! Idempotency keys reused with another spec, SubmitJobs (many jobs in one call) and
//! `droverctl submit --from-file`, against a real coordinator, worker and PostgreSQL.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::io::Write;
use std::process::{Command, Stdio};
use tonic::Code;

async fn count(cl: &Cluster, sql: &str) -> anyhow::Result<i64> {
    Ok(cl.db.client().await?.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn a_reused_idempotency_key_with_another_spec_is_already_exists() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let mut s = sh("echo once");
    s.idempotency_key = "nightly-2026-11-22".into();
    s.labels = vec!["a".into(), "b".into()];
    let first = submit(&mut api, s.clone()).await?;

    // The same spec (labels are a set: another order is the same) returns the first job.
    let mut same = s.clone();
    same.labels.reverse();
    let again = api
        .submit_job(pb::SubmitJobRequest { spec: Some(same) })
        .await?
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.job.map(|j| j.id), Some(first.id.clone()));

    // Another command, param or queue under the same key is refused, naming the job.
    let mut other = s.clone();
    other.argv = vec!["sh".into(), "-c".into(), "echo twice".into()];
    let mut other_param = s.clone();
    other_param.params.insert("day".into(), "1".into());
    let mut other_queue = s.clone();
    other_queue.queue = "elsewhere".into();
    for (spec, field) in [
        (other, "argv"),
        (other_param, "params"),
        (other_queue, "queue"),
    ] {
        let e = api
            .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err("a different spec under a used key must be refused");
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(e.message().contains(&first.id), "{}", e.message());
        assert!(e.message().contains("different spec"), "{}", e.message());
        assert!(
            e.message().contains(&format!("{field} differs")),
            "{}",
            e.message()
        );
    }
    assert_eq!(count(&cl, "SELECT count(*) FROM jobs").await?, 1);
    Ok(())
}

fn results_of(r: pb::SubmitJobsResponse) -> Vec<pb::SubmitJobResult> {
    r.results
}

#[tokio::test]
async fn submit_jobs_stores_a_batch_with_one_result_per_spec() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    cl.db.want_outbox_events().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    // A job submitted before, whose key the batch reuses once the same way and once not.
    let mut held = sh("echo held");
    held.idempotency_key = "held".into();
    let held_job = submit(&mut api, held.clone()).await?;
    let dep = submit(&mut api, sh("echo dep")).await?;

    let mut keyed = sh("echo keyed");
    keyed.idempotency_key = "in-batch".into();
    let mut keyed_other = keyed.clone();
    keyed_other.argv[2] = "echo not the same".into();
    let mut held_other = held.clone();
    held_other.env.insert("X".into(), "1".into());
    let mut prio = sh("echo prio");
    prio.priority = 7;
    prio.concurrency_keys = vec!["site:batch".into()];
    prio.concurrency_limit = 3;
    let mut after = sh("echo after");
    after.after = vec![dep.id.clone()];
    let mut after_missing = sh("echo never");
    after_missing.after = vec![uuid::Uuid::now_v7().to_string()];
    let specs = vec![
        sh("echo plain"), // 0 created
        spec(&[]),        // 1 invalid: no argv
        keyed.clone(),    // 2 created
        keyed.clone(),    // 3 same as 2
        keyed_other,      // 4 refused: key of 2, other argv
        held.clone(),     // 5 the held job
        held_other,       // 6 refused: key held, other env
        prio,             // 7 created with priority and key
        after,            // 8 created, waits for dep
        after_missing,    // 9 refused: dependency not found
    ];
    let n = specs.len();
    let r = results_of(
        api.submit_jobs(pb::SubmitJobsRequest { specs })
            .await?
            .into_inner(),
    );
    assert_eq!(r.len(), n);
    for (i, x) in r.iter().enumerate() {
        assert_eq!(x.index as usize, i);
    }
    let id = |i: usize| r[i].job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
    assert!(r[0].created && r[0].code == 0);
    assert_eq!(r[1].code, Code::InvalidArgument as i32);
    assert!(r[1].error.starts_with("specs[1]: argv"), "{}", r[1].error);
    assert!(r[1].job.is_none());
    assert!(r[2].created);
    assert!(!r[3].created);
    assert_eq!(id(3), id(2));
    assert_eq!(r[4].code, Code::AlreadyExists as i32);
    assert!(r[4].error.contains(&id(2)), "{}", r[4].error);
    assert!(r[4].error.contains("argv differs"), "{}", r[4].error);
    assert!(!r[5].created);
    assert_eq!(id(5), held_job.id);
    assert_eq!(r[6].code, Code::AlreadyExists as i32);
    assert!(r[6].error.contains(&held_job.id), "{}", r[6].error);
    assert!(r[7].created);
    assert_eq!(
        r[7].job
            .as_ref()
            .map(|j| j.spec.as_ref().map(|s| s.priority)),
        Some(Some(7))
    );
    assert!(r[8].created);
    assert_eq!(r[9].code, Code::InvalidArgument as i32);
    assert!(
        r[9].error.contains("after[0]") && r[9].error.contains("not found"),
        "{}",
        r[9].error
    );

    // Stored as a single submit stores: outbox rows, keys, dependencies, priority.
    let created = r.iter().filter(|x| x.created).count() as i64;
    assert_eq!(created, 4);
    assert_eq!(count(&cl, "SELECT count(*) FROM jobs").await?, 2 + created);
    assert_eq!(
        count(
            &cl,
            "SELECT count(*) FROM outbox WHERE event = 'job.submitted'"
        )
        .await?,
        2 + created
    );
    assert_eq!(
        count(
            &cl,
            "SELECT max_running::int8 FROM concurrency_keys WHERE key = 'site:batch'"
        )
        .await?,
        3
    );
    let db = cl.db.client().await?;
    let row = db
        .query_one(
            "SELECT priority, concurrency_keys FROM jobs WHERE id = $1",
            &[&uuid::Uuid::parse_str(&id(7))?],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(row.get::<_, Vec<String>>(1), vec!["site:batch".to_string()]);
    let deps: i64 = db
        .query_one(
            "SELECT count(*) FROM job_deps WHERE job_id = $1 AND depends_on = $2",
            &[
                &uuid::Uuid::parse_str(&id(8))?,
                &uuid::Uuid::parse_str(&dep.id)?,
            ],
        )
        .await?
        .get(0);
    assert_eq!(deps, 1);
    // The audit entry is written off the request's path: wait for it.
    let start = std::time::Instant::now();
    loop {
        let audit: i64 = db
            .query_one(
                "SELECT count(*) FROM audit_log WHERE method = '/drover.v1.JobService/SubmitJobs' \
                   AND target LIKE '10 specs: 4 created, 2 existing, 4 refused%' AND outcome = 'ok'",
                &[],
            )
            .await?
            .get(0);
        if audit == 1 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no audit entry for the SubmitJobs call"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A worker runs them all, the dependant after its dependency.
    let _w = cl.worker("w1", &addr, 4, &[])?;
    for i in [0, 2, 7, 8] {
        wait_state(&mut api, &id(i), pb::JobState::Succeeded).await?;
    }
    Ok(())
}

#[tokio::test]
async fn submit_jobs_refuses_empty_oversized_and_out_of_scope_batches() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let e = api
        .submit_jobs(pb::SubmitJobsRequest { specs: vec![] })
        .await
        .expect_err("empty batch");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("specs"), "{}", e.message());
    let e = api
        .submit_jobs(pb::SubmitJobsRequest {
            specs: vec![sh("true"); 1001],
        })
        .await
        .expect_err("too many specs");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 1000"), "{}", e.message());
    // Past the 4 MiB message limit: refused before anything is read.
    let big = "x".repeat(60_000);
    let e = api
        .submit_jobs(pb::SubmitJobsRequest {
            specs: vec![sh(&format!("echo {big}")); 80],
        })
        .await
        .expect_err("over 4 MiB");
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(count(&cl, "SELECT count(*) FROM jobs").await?, 0);

    // A token limited to one queue: items of other queues are refused one by one.
    let t = create_token(&cl.db.url, "etl-bot", "operator", &["etl"], "", None).await?;
    let mut scoped = jobs_as(&addr, Some(&t)).await?;
    let mut etl = sh("true");
    etl.queue = "etl".into();
    let mut other = sh("true");
    other.queue = "billing".into();
    let r = scoped
        .submit_jobs(pb::SubmitJobsRequest {
            specs: vec![etl, other],
        })
        .await?
        .into_inner()
        .results;
    assert!(r[0].created);
    assert_eq!(r[1].code, Code::PermissionDenied as i32);
    assert!(r[1].error.contains("billing"), "{}", r[1].error);
    // A viewer may not submit at all.
    let mut viewer = jobs_as(&addr, Some(VIEWER_TOKEN)).await?;
    let e = viewer
        .submit_jobs(pb::SubmitJobsRequest {
            specs: vec![sh("true")],
        })
        .await
        .expect_err("viewer");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(count(&cl, "SELECT count(*) FROM jobs").await?, 1);
    Ok(())
}

fn droverctl(
    addr: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<(i32, String, String)> {
    let mut child = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn droverctl_submits_a_jsonl_file_and_reports_bad_lines() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let file = cl.path("jobs.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"argv": ["echo", "{day}"], "params": {"day": "mon"}, "idempotency_key": "d-mon"}"#,
            "\n",
            r#"{"argv": ["echo"], "qeue": "typo"}"#,
            "\n\n",
            r#"{"argv": ["echo", "tue"], "queue": "bad queue"}"#,
            "\n",
            r#"{"argv": ["echo", "wed"], "timeout": "1m"}"#,
            "\n",
        ),
    )?;
    let path = file.to_string_lossy().to_string();
    let (code, out, err) = droverctl(&addr, &["submit", "--from-file", &path], None)?;
    assert_eq!(code, 1, "{err}");
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(err.contains("line 2: ") && err.contains("qeue"), "{err}");
    assert!(err.contains("line 4: ") && err.contains("queue"), "{err}");
    assert!(err.contains("2 of 4 lines were not submitted"), "{err}");
    let mut api = jobs(&addr).await?;
    for id in &ids {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }
    assert_eq!(logs(&mut api, ids[0], 0).await?.0, b"mon\n");

    // From standard input, waiting: all succeed -> 0; the keyed line is the same job.
    let input = concat!(
        r#"{"argv": ["echo", "{day}"], "params": {"day": "mon"}, "idempotency_key": "d-mon"}"#,
        "\n",
        r#"{"argv": ["sh", "-c", "exit 0"]}"#,
        "\n"
    );
    let (code, out, err) = droverctl(
        &addr,
        &["submit", "--wait", "--from-file", "-"],
        Some(input),
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().next(), Some(ids[0]));
    // One failing job makes the wait exit 3.
    let input = r#"{"argv": ["sh", "-c", "exit 9"], "max_retries": 0}"#;
    let (code, _, err) = droverctl(
        &addr,
        &["submit", "--wait", "--from-file", "-"],
        Some(input),
    )?;
    assert_eq!(code, 3, "{err}");
    Ok(())
}
