//! Dependencies with real workers: chains run in order, a failure cancels the dependants
//! down the chain, and a successful retry of the failed job releases a re-submitted
//! dependant.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::process::Command;
use tonic::Code;

fn after(spec: pb::JobSpec, deps: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        after: deps.iter().map(|d| d.to_string()).collect(),
        ..spec
    }
}

#[tokio::test]
async fn a_chain_runs_in_order_and_show_says_what_it_waits_for() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("c", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let file = cl.path("order.txt");
    let go = cl.path("go");
    let step = |name: &str| sh(&format!("echo {name} >> {}", file.display()));
    let a = submit(
        &mut api,
        sh(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo a >> {}",
            go.display(),
            file.display()
        )),
    )
    .await?;
    let b = submit(&mut api, after(step("b"), &[&a.id])).await?;
    let c = submit(&mut api, after(step("c"), &[&b.id, &a.id])).await?;
    wait_state(&mut api, &a.id, pb::JobState::Running).await?;
    let r = api
        .get_job(pb::GetJobRequest { id: c.id.clone() })
        .await?
        .into_inner();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(r.waiting_for, want);
    assert_eq!(
        r.job.unwrap_or_default().waiting,
        format!("after job {}", want.join(", "))
    );
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .args(["--addr", &addr, "show", &b.id])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains(&format!("waiting: after job {}", a.id)),
        "{text}"
    );
    std::fs::write(&go, "")?;
    wait_state(&mut api, &c.id, pb::JobState::Succeeded).await?;
    assert_eq!(std::fs::read_to_string(&file)?, "a\nb\nc\n");
    let r = api
        .get_job(pb::GetJobRequest { id: c.id.clone() })
        .await?
        .into_inner();
    assert!(r.waiting_for.is_empty());
    // A dependency that already succeeded: runs at once.
    let d = submit(&mut api, after(step("d"), &[&a.id])).await?;
    wait_state(&mut api, &d.id, pb::JobState::Succeeded).await?;
    Ok(())
}

#[tokio::test]
async fn a_failure_cancels_dependants_and_a_successful_retry_releases_a_resubmitted_one(
) -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("c", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let fixed = cl.path("fixed");
    let mut flaky = sh(&format!("test -e {} || exit 3", fixed.display()));
    if let Some(r) = flaky.retry.as_mut() {
        r.max_retries = Some(0);
    }
    let go = cl.path("go");
    // Waits for the file named by the param `gate`, then fails unless `fixed` exists.
    let mut spec = pb::JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "while [ ! -e \"$0\" ]; do sleep 0.05; done; test -e {} || exit 3",
                fixed.display()
            ),
            "{gate}".into(),
        ],
        ..flaky.clone()
    };
    spec.params.insert("gate".into(), go.display().to_string());
    let f = submit(&mut api, spec).await?;
    let g = submit(&mut api, after(sh("true"), &[&f.id])).await?;
    let h = submit(&mut api, after(sh("true"), &[&g.id])).await?;
    std::fs::write(&go, "")?;
    wait_state(&mut api, &f.id, pb::JobState::PermanentFailed).await?;
    let (gj, ga) = wait_state(&mut api, &g.id, pb::JobState::Cancelled).await?;
    let (hj, ha) = wait_state(&mut api, &h.id, pb::JobState::Cancelled).await?;
    assert!(
        ga.is_empty() && ha.is_empty(),
        "cancelled dependants never ran"
    );
    assert_eq!(
        gj.reason,
        format!("dependency {} ended permanent_failed", f.id)
    );
    assert_eq!(hj.reason, format!("dependency {} ended cancelled", g.id));
    // Depending on a failed job is refused...
    let e = api
        .submit_job(pb::SubmitJobRequest {
            spec: Some(after(sh("true"), &[&f.id])),
        })
        .await
        .expect_err("failed dependency");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // ...until it is retried: a dependant submitted with the failed job's id waits for the
    // newest job of its retry chain.
    let go2 = cl.path("go2");
    let retry = api
        .retry_job(pb::RetryJobRequest {
            id: f.id.clone(),
            set_params: [("gate".to_string(), go2.display().to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    let k = submit(&mut api, after(sh("true"), &[&f.id])).await?;
    let r = api
        .get_job(pb::GetJobRequest { id: k.id.clone() })
        .await?
        .into_inner();
    assert_eq!(r.waiting_for, vec![retry.id.clone()]);
    std::fs::write(&fixed, "")?;
    std::fs::write(&go2, "")?;
    wait_state(&mut api, &retry.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &k.id, pb::JobState::Succeeded).await?;

    // Bad ids name the field.
    let bad: Vec<(Vec<String>, Code, &str)> = vec![
        (vec!["nope".into()], Code::InvalidArgument, "after[0]"),
        (
            vec![uuid::Uuid::new_v4().to_string()],
            Code::InvalidArgument,
            "after[0]",
        ),
        (
            (0..33).map(|_| f.id.clone()).collect(),
            Code::InvalidArgument,
            "after",
        ),
    ];
    for (deps, code, field) in bad {
        let e = api
            .submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    after: deps,
                    ..sh("true")
                }),
            })
            .await
            .expect_err(field);
        assert_eq!(e.code(), code, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    Ok(())
}

#[tokio::test]
async fn a_job_in_backoff_says_until_when() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("c", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let mut spec = sh("exit 1");
    if let Some(r) = spec.retry.as_mut() {
        r.initial_backoff = ms(60_000);
    }
    let j = submit(&mut api, spec).await?;
    // attempt_count comes from the same row as the state (the attempts list is read
    // separately and may already show a claim the row read did not).
    let (j, _) = wait_for(&mut api, &j.id, "backoff", |j, _| {
        is_state(j, pb::JobState::Pending) && j.attempt_count > 0
    })
    .await?;
    assert!(j.waiting.starts_with("backoff until 20"), "{:?}", j.waiting);
    api.cancel_job(pb::CancelJobRequest {
        id: j.id.clone(),
        ..Default::default()
    })
    .await?;
    Ok(())
}
