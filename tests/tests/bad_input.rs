//! Bad input gets a clear error naming what to fix, over gRPC and from droverctl, and
//! stores nothing.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::process::Command;
use tonic::Code;

#[tokio::test]
async fn invalid_specs_are_rejected_with_the_field_named() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;

    let cases: Vec<(&str, pb::JobSpec)> = vec![
        ("argv", spec(&[])),
        ("queue", {
            let mut s = sh("true");
            s.queue = "racing data!".into();
            s
        }),
        ("timeout", {
            let mut s = sh("true");
            s.timeout = Some(drover_proto::Duration {
                seconds: -5,
                nanos: 0,
            });
            s
        }),
        ("argv", {
            let big = "x".repeat(200 * 1024);
            spec(&["echo", &big])
        }),
        ("env", {
            let mut s = sh("true");
            s.env.insert("BIG".into(), "v".repeat(200 * 1024));
            s
        }),
        ("argv[1]", spec(&["echo", "{date}"])),
        ("labels[0]", {
            let mut s = sh("true");
            s.labels = vec!["has space".into()];
            s
        }),
        ("retry.multiplier", {
            let mut s = sh("true");
            s.retry = Some(pb::RetryPolicy {
                multiplier: Some(0.0),
                ..Default::default()
            });
            s
        }),
        ("retry.permanent_patterns[0]", {
            let mut s = sh("true");
            s.retry = Some(pb::RetryPolicy {
                permanent_patterns: vec!["(unclosed".into()],
                ..Default::default()
            });
            s
        }),
    ];
    for (field, s) in cases {
        let e = api
            .submit_job(pb::SubmitJobRequest { spec: Some(s) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "message should name {field}: {}",
            e.message()
        );
    }
    let e = api
        .submit_job(pb::SubmitJobRequest { spec: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("spec"));

    let e = api
        .get_job(pb::GetJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = api
        .get_job(pb::GetJobRequest {
            id: "not-a-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("id:"), "{}", e.message());
    let e = api
        .list_jobs(pb::ListJobsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let n: i64 = cl
        .db
        .client()
        .await?
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "nothing invalid may be stored");
    Ok(())
}

/// Runs droverctl; returns (exit code, stdout, stderr).
fn droverctl(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", addr)
        .args(args)
        .output()
        .expect("running droverctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn droverctl_prints_one_line_and_fails_on_bad_input() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;

    let unknown = uuid::Uuid::new_v4().to_string();
    for (args, needle) in [
        (
            vec!["submit", "--queue", "bad queue", "--", "echo"],
            "queue",
        ),
        (vec!["submit", "--timeout", "-5s", "--", "echo"], "timeout"),
        (vec!["submit", "--", "echo", "{date}"], "argv[1]"),
        (vec!["submit", "--param", "novalue", "--", "echo"], "param"),
        (vec!["show", unknown.as_str()], "not found"),
        (vec!["show", "xyz"], "id"),
        (vec!["logs", unknown.as_str()], "not found"),
        (vec!["list", "--state", "done"], "state"),
    ] {
        let (code, _, err) = droverctl(&addr, &args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = droverctl("http://127.0.0.1:1", &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach coordinator"), "{err}");

    // And the happy path: submit, wait, show as JSON, read the log.
    let (code, out, err) = droverctl(
        &addr,
        &[
            "submit",
            "--wait",
            "--param",
            "date=2026-11-22",
            "--",
            "echo",
            "fetch",
            "{date}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, out, _) = droverctl(&addr, &["-o", "json", "show", &id]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["attempts"][0]["exit_code"], 0);
    let (code, out, _) = droverctl(&addr, &["logs", &id]);
    assert_eq!(code, 0);
    assert_eq!(out, "fetch 2026-11-22\n");
    let (code, out, _) = droverctl(&addr, &["logs", "--timestamps", &id]);
    assert_eq!(code, 0);
    let (time, rest) = out.split_once(' ').unwrap_or_default();
    assert!(time.starts_with("20") && time.ends_with('Z'), "{out}");
    assert_eq!(rest, "out fetch 2026-11-22\n");
    Ok(())
}
