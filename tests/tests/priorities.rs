//! Priorities with a real worker: higher first within a queue, and the aging rule that
//! bounds how long a lower priority can be passed over.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::Duration;
use tonic::Code;

/// Submits a job that holds the worker's only slot until the file `go` exists.
async fn blocker(
    cl: &Cluster,
    api: &mut JobsClient,
) -> anyhow::Result<(pb::Job, std::path::PathBuf)> {
    let go = cl.path("go");
    let j = submit(
        api,
        sh(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done",
            go.display()
        )),
    )
    .await?;
    wait_state(api, &j.id, pb::JobState::Running).await?;
    Ok((j, go))
}

async fn named(
    api: &mut JobsClient,
    file: &std::path::Path,
    name: &str,
    priority: i32,
) -> anyhow::Result<String> {
    let spec = pb::JobSpec {
        priority,
        ..sh(&format!("echo {name} >> {}", file.display()))
    };
    Ok(submit(api, spec).await?.id)
}

async fn run_order(
    api: &mut JobsClient,
    go: &std::path::Path,
    file: &std::path::Path,
    ids: &[String],
) -> anyhow::Result<Vec<String>> {
    std::fs::write(go, "")?;
    for id in ids {
        wait_state(api, id, pb::JobState::Succeeded).await?;
    }
    Ok(std::fs::read_to_string(file)?
        .lines()
        .map(String::from)
        .collect())
}

#[tokio::test]
async fn higher_priority_runs_first_within_a_queue() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("c", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let (_b, go) = blocker(&cl, &mut api).await?;
    let file = cl.path("order.txt");
    let mut ids = Vec::new();
    for (name, p) in [("a", 0), ("b", 5), ("c", 0), ("d", 10), ("e", 5)] {
        ids.push(named(&mut api, &file, name, p).await?);
    }
    let (j, _) = get(&mut api, &ids[3]).await?;
    assert_eq!(j.spec.unwrap_or_default().priority, 10);
    assert_eq!(
        run_order(&mut api, &go, &file, &ids).await?,
        ["d", "b", "e", "a", "c"]
    );
    for bad in [1001, -1] {
        let e = api
            .submit_job(pb::SubmitJobRequest {
                spec: Some(pb::JobSpec {
                    priority: bad,
                    ..sh("true")
                }),
            })
            .await
            .expect_err("priority out of range");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("priority:"), "{}", e.message());
    }
    Ok(())
}

#[tokio::test]
async fn aging_bounds_how_long_a_low_priority_job_is_passed_over() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        env: vec![("DROVER_PRIORITY_AGING".into(), "1s".into())],
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("c", &opts)?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let (_b, go) = blocker(&cl, &mut api).await?;
    let file = cl.path("order.txt");
    let low = named(&mut api, &file, "low", 0).await?;
    // low has now waited 3 s: a priority-2 job (worth 2 s) no longer passes it, a
    // priority-5 job (worth 5 s) still does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p2 = named(&mut api, &file, "p2", 2).await?;
    let p5 = named(&mut api, &file, "p5", 5).await?;
    assert_eq!(
        run_order(&mut api, &go, &file, &[low, p2, p5]).await?,
        ["p5", "low", "p2"]
    );
    Ok(())
}
