//! A table of hostile requests (issue 11, "Input limits"): NUL bytes, invalid UTF-8, a
//! 10 MB argv, 100 000 params, SQL-looking ids, path traversal in artifact names and log
//! URLs, and every other documented bound. Each gets the right status naming the field or
//! the limit, and no stored row changes.

use drover_tests::v1 as pb;
use drover_tests::*;
use tonic::Code;

/// A digest of everything a request could have changed.
async fn snapshot(cl: &Cluster) -> anyhow::Result<Vec<String>> {
    let db = cl.db.client().await?;
    let mut out = Vec::new();
    for q in [
        "SELECT coalesce(md5(string_agg(j::text, '|' ORDER BY j.id)), '') FROM jobs j",
        "SELECT coalesce(md5(string_agg(a::text, '|' ORDER BY a.id)), '') FROM attempts a",
        "SELECT count(*)::text FROM log_chunks",
        "SELECT count(*)::text FROM artifacts",
        "SELECT count(*)::text FROM outbox",
        "SELECT coalesce(md5(string_agg(w.id || w.hostname, '|' ORDER BY w.id)), '') FROM workers w",
    ] {
        out.push(db.query_one(q, &[]).await?.get(0));
    }
    Ok(out)
}

/// JobSpec with `argv` as raw bytes (the API says string), to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSpec {
    #[prost(bytes = "vec", repeated, tag = "1")]
    argv: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawSubmit {
    #[prost(message, optional, tag = "1")]
    spec: Option<RawSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawGetJob {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
}

fn check(what: &str, r: Result<(), tonic::Status>, code: Code, needle: &str) {
    let e = match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{what}: {e:?}");
    assert!(
        e.message().contains(needle),
        "{what}: message {:?} should name {needle:?}",
        e.message()
    );
}

#[tokio::test]
async fn hostile_requests_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // So that a request that got as far as the outbox would show in its row count.
    cl.db.want_outbox_events().await?;
    let (coord, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;

    // Something stored to protect: a finished job with a log and an artifact.
    let mut s = sh("echo hello; mkdir -p out; echo data > out/a.txt");
    s.outputs = vec!["out/*.txt".into()];
    let done = submit(&mut api, s).await?;
    wait_state(&mut api, &done.id, pb::JobState::Succeeded).await?;
    let before = snapshot(&cl).await?;

    let with = |f: &dyn Fn(&mut pb::JobSpec)| {
        let mut s = sh("true");
        f(&mut s);
        s
    };
    let big_params: std::collections::HashMap<String, String> = (0..100_000)
        .map(|i| (format!("p{i}"), "v".into()))
        .collect();
    let submits: Vec<(&str, pb::JobSpec, Code, &str)> = vec![
        (
            "NUL in argv",
            spec(&["echo", "a\0b"]),
            Code::InvalidArgument,
            "argv[1]",
        ),
        (
            "NUL in program",
            spec(&["ec\0ho"]),
            Code::InvalidArgument,
            "argv[0]",
        ),
        (
            "NUL in env",
            with(&|s| {
                s.env.insert("A".into(), "x\0y".into());
            }),
            Code::InvalidArgument,
            "env[",
        ),
        (
            "NUL in env name",
            with(&|s| {
                s.env.insert("A\0B".into(), "x".into());
            }),
            Code::InvalidArgument,
            "env[",
        ),
        (
            "NUL in param",
            with(&|s| {
                s.params.insert("p".into(), "\0".into());
            }),
            Code::InvalidArgument,
            "params[",
        ),
        (
            "NUL in label",
            with(&|s| s.labels = vec!["gpu\0".into()]),
            Code::InvalidArgument,
            "labels[0]",
        ),
        (
            "3 MB argv",
            spec(&["echo", &"x".repeat(3_000_000)]),
            Code::InvalidArgument,
            "131072",
        ),
        (
            "10 MB argv",
            spec(&["echo", &"x".repeat(10_000_000)]),
            Code::OutOfRange,
            "4194304",
        ),
        (
            "100k params",
            with(&|s| s.params = big_params.clone()),
            Code::InvalidArgument,
            "params: 100000 params; the limit is 1024",
        ),
        (
            "5000 arguments",
            spec(&vec!["x"; 5000]),
            Code::InvalidArgument,
            "the limit is 4096",
        ),
        (
            "65 labels",
            with(&|s| s.labels = (0..65).map(|i| format!("l{i}")).collect()),
            Code::InvalidArgument,
            "labels: 65 labels; the limit is 64",
        ),
        (
            "SQL in queue",
            with(&|s| s.queue = "default' OR '1'='1".into()),
            Code::InvalidArgument,
            "queue",
        ),
        (
            "long idempotency key",
            with(&|s| s.idempotency_key = "k".repeat(300)),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "traversal in outputs",
            with(&|s| s.outputs = vec!["../../etc/*".into()]),
            Code::InvalidArgument,
            "outputs[0]",
        ),
        (
            "absolute output",
            with(&|s| s.outputs = vec!["/etc/passwd".into()]),
            Code::InvalidArgument,
            "outputs[0]",
        ),
        (
            "too many patterns",
            with(&|s| {
                s.retry = Some(pb::RetryPolicy {
                    retryable_patterns: vec!["x".into(); 100],
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "retry.retryable_patterns",
        ),
        (
            "exploding regex",
            with(&|s| {
                s.retry = Some(pb::RetryPolicy {
                    permanent_patterns: vec!["(\\w{100}){100}".into()],
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "retry.permanent_patterns[0]",
        ),
        (
            "2^64-1 backoff",
            with(&|s| {
                s.retry = Some(pb::RetryPolicy {
                    initial_backoff: ms(u64::MAX),
                    max_backoff: ms(u64::MAX),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "retry.initial_backoff",
        ),
        (
            "1-byte memory limit",
            with(&|s| s.memory_limit_bytes = 1),
            Code::InvalidArgument,
            "memory_limit_bytes",
        ),
        (
            "absurd cpus",
            with(&|s| s.cpu_millis = u32::MAX),
            Code::InvalidArgument,
            "cpu_millis",
        ),
    ];
    for (what, spec, code, needle) in submits {
        let r = api
            .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
            .await
            .map(|_| ());
        check(what, r, code, needle);
    }

    // Invalid UTF-8 where the API has a string.
    let r = raw_unary::<_, pb::SubmitJobResponse>(
        &addr,
        "/drover.v1.JobService/SubmitJob",
        RawSubmit {
            spec: Some(RawSpec {
                argv: vec![b"echo".to_vec(), vec![0xff, 0xfe, b'x']],
            }),
        },
    )
    .await
    .map(|_| ());
    check("invalid UTF-8 argv", r, Code::InvalidArgument, "UTF-8");
    let r = raw_unary::<_, pb::GetJobResponse>(
        &addr,
        "/drover.v1.JobService/GetJob",
        RawGetJob {
            id: vec![0xc3, 0x28],
        },
    )
    .await
    .map(|_| ());
    check("invalid UTF-8 id", r, Code::InvalidArgument, "UTF-8");

    // SQL-looking and malformed ids, tokens and names.
    let sql = "1'; DROP TABLE jobs; --";
    check(
        "GetJob",
        api.get_job(pb::GetJobRequest { id: sql.into() })
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        "id:",
    );
    check(
        "CancelJob",
        api.cancel_job(pb::CancelJobRequest {
            id: sql.into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "id:",
    );
    check(
        "RetryJob",
        api.retry_job(pb::RetryJobRequest {
            id: sql.into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "id:",
    );
    check(
        "RetryJob with 100k params",
        api.retry_job(pb::RetryJobRequest {
            id: done.id.clone(),
            set_params: big_params.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "set_params",
    );
    check(
        "StreamLogs",
        api.stream_logs(pb::StreamLogsRequest {
            job_id: sql.into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "job_id",
    );
    check(
        "ListJobs token",
        api.list_jobs(pb::ListJobsRequest {
            page_token: format!("1_{sql}"),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "page_token",
    );
    check(
        "ListJobs queue",
        api.list_jobs(pb::ListJobsRequest {
            queue: "x' OR 1=1 --".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "queue",
    );
    check(
        "ListJobs page size",
        api.list_jobs(pb::ListJobsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "page_size",
    );
    check(
        "RetryJobs limit",
        api.retry_jobs(pb::RetryJobsRequest {
            limit: 5000,
            dry_run: false,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "limit",
    );
    for name in ["../../etc/passwd", "/etc/passwd", "out/../../x"] {
        check(
            name,
            api.get_artifact(pb::GetArtifactRequest {
                job_id: done.id.clone(),
                name: name.into(),
            })
            .await
            .map(|_| ()),
            Code::InvalidArgument,
            "name",
        );
    }
    // A worker uploading to a traversing name.
    let mut wc = workers(&addr).await?;
    let (_, attempts) = get(&mut api, &done.id).await?;
    let upload = futures::stream::iter(vec![pb::UploadArtifactRequest {
        part: Some(pb::upload_artifact_request::Part::Header(
            pb::ArtifactHeader {
                attempt_id: attempts[0].id.clone(),
                name: "../../../tmp/owned".into(),
                size: 1,
                sha256: String::new(),
            },
        )),
    }]);
    check(
        "UploadArtifact",
        wc.upload_artifact(upload).await.map(|_| ()),
        Code::InvalidArgument,
        "header.name",
    );

    // Log URLs over HTTP.
    for path in [
        "/jobs/..%2F..%2Fetc%2Fpasswd/logs",
        "/jobs/1'%20OR%20'1'='1/logs",
        "/jobs/%00/logs",
    ] {
        let url = format!("{}{path}", coord.http);
        let r = http_get(&url).await?;
        assert_eq!(r.status().as_u16(), 400, "{path}: {}", r.status());
        let body = r.text().await?;
        assert!(body.contains("id"), "{path}: {body}");
    }

    assert_eq!(
        snapshot(&cl).await?,
        before,
        "a refused request changed stored rows"
    );
    Ok(())
}
