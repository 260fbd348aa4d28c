//! Concurrency keys with real workers: the limit holds across workers and coordinators,
//! measured from the jobs' own start/end timestamps, not from Drover's bookkeeping.

use drover_tests::v1 as pb;
use drover_tests::*;
use tonic::Code;

/// The highest number of jobs running at once according to their own `start <ns>` /
/// `end <ns>` lines.
fn max_overlap(text: &str) -> usize {
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?;
            let t: u128 = it.next()?.parse().ok()?;
            // An end sorts before a start at the same instant.
            Some((t, if kind == "start" { 1 } else { -1 }))
        })
        .collect();
    events.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

fn keyed(file: &std::path::Path, keys: &[&str], limit: u32) -> pb::JobSpec {
    pb::JobSpec {
        concurrency_keys: keys.iter().map(|k| k.to_string()).collect(),
        concurrency_limit: limit,
        ..sh(&format!(
            "echo start $(date +%s%N) >> {f}; sleep 0.2; echo end $(date +%s%N) >> {f}",
            f = file.display()
        ))
    }
}

#[tokio::test]
async fn key_limit_of_two_holds_for_50_jobs_on_4_workers_and_2_coordinators() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let (_c1, a1) = cl.coordinator("c1", &CoordinatorOpts::default())?;
    let (_c2, a2) = cl.coordinator("c2", &CoordinatorOpts::default())?;
    let _w: Vec<Proc> = (0..4)
        .map(|i| cl.worker(&format!("w{i}"), if i % 2 == 0 { &a1 } else { &a2 }, 4, &[]))
        .collect::<anyhow::Result<_>>()?;
    let site = cl.path("netkeiba.txt");
    let other = cl.path("other.txt");
    let mut api = jobs(&a1).await?;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            submit(&mut api, keyed(&site, &["site:netkeiba"], 2))
                .await?
                .id,
        );
        // Unkeyed and other-key jobs in between run freely.
        if i % 5 == 0 {
            ids.push(
                submit(&mut api, keyed(&other, &["site:other"], 16))
                    .await?
                    .id,
            );
            ids.push(submit(&mut api, sh("true")).await?.id);
        }
    }
    for id in &ids {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }
    let text = std::fs::read_to_string(&site)?;
    assert_eq!(text.lines().filter(|l| l.starts_with("start")).count(), 50);
    let max = max_overlap(&text);
    assert!(max <= 2, "{max} jobs of site:netkeiba ran at once:\n{text}");
    assert_eq!(max, 2, "the limit of 2 was never used in full:\n{text}");
    // The key's count went back to zero.
    let db = cl.db.client().await?;
    let running: i32 = db
        .query_one(
            "SELECT running FROM concurrency_keys WHERE key = 'site:netkeiba'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(running, 0);
    Ok(())
}

#[tokio::test]
async fn a_job_with_two_keys_waits_for_both_and_bad_keys_are_refused() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("c", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 8, &[])?;
    let mut api = jobs(&addr).await?;
    // Holds key a (limit 1) until the file `go` appears.
    let go = cl.path("go");
    let hold = submit(
        &mut api,
        pb::JobSpec {
            concurrency_keys: vec!["a".into()],
            concurrency_limit: 1,
            ..sh(&format!(
                "while [ ! -e {} ]; do sleep 0.05; done",
                go.display()
            ))
        },
    )
    .await?;
    wait_state(&mut api, &hold.id, pb::JobState::Running).await?;
    let both = submit(
        &mut api,
        pb::JobSpec {
            concurrency_keys: vec!["b".into(), "a".into()],
            concurrency_limit: 1,
            ..sh("true")
        },
    )
    .await?;
    // Key b alone is free: a job on b runs while `both` waits for a.
    let only_b = submit(
        &mut api,
        pb::JobSpec {
            concurrency_keys: vec!["b".into()],
            concurrency_limit: 1,
            ..sh("true")
        },
    )
    .await?;
    wait_state(&mut api, &only_b.id, pb::JobState::Succeeded).await?;
    let (j, a) = get(&mut api, &both.id).await?;
    assert!(is_state(&j, pb::JobState::Pending) && a.is_empty(), "{j:?}");
    assert_eq!(j.waiting, "concurrency key a 1/1");
    std::fs::write(&go, "")?;
    wait_state(&mut api, &hold.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &both.id, pb::JobState::Succeeded).await?;

    let bad: Vec<(pb::JobSpec, &str)> = vec![
        (
            pb::JobSpec {
                concurrency_keys: vec!["has space".into()],
                ..sh("true")
            },
            "concurrency_keys[0]",
        ),
        (
            pb::JobSpec {
                concurrency_keys: vec!["k".into(); 17],
                ..sh("true")
            },
            "concurrency_keys",
        ),
        (
            pb::JobSpec {
                concurrency_keys: vec!["k".into()],
                concurrency_limit: 10_001,
                ..sh("true")
            },
            "concurrency_limit",
        ),
    ];
    for (spec, field) in bad {
        let e = api
            .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    Ok(())
}

#[tokio::test]
async fn queue_max_running_holds_from_the_jobs_own_timestamps() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("[queues.scrape]\nmax_running = 2\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("c", &opts)?;
    let _w1 = cl.worker("w1", &addr, 4, &["--queue", "scrape"])?;
    let _w2 = cl.worker("w2", &addr, 4, &["--queue", "scrape"])?;
    let file = cl.path("scrape.txt");
    let mut api = jobs(&addr).await?;
    let mut ids = Vec::new();
    for _ in 0..12 {
        let spec = pb::JobSpec {
            queue: "scrape".into(),
            ..keyed(&file, &[], 0)
        };
        ids.push(submit(&mut api, spec).await?.id);
    }
    for id in &ids {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }
    let text = std::fs::read_to_string(&file)?;
    assert_eq!(max_overlap(&text), 2, "{text}");
    // The reserved prefix is refused.
    let e = api
        .submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                concurrency_keys: vec!["queue:scrape".into()],
                ..sh("true")
            }),
        })
        .await
        .expect_err("reserved");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("concurrency_keys[0]"),
        "{}",
        e.message()
    );
    Ok(())
}

#[tokio::test]
async fn rate_limit_of_10_per_second_over_200_jobs_from_their_own_start_times() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("[rate_limits]\n\"site:*\" = \"10/s\"\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("c", &opts)?;
    let _w: Vec<Proc> = (0..4)
        .map(|i| cl.worker(&format!("w{i}"), &addr, 8, &[]))
        .collect::<anyhow::Result<_>>()?;
    let file = cl.path("starts.txt");
    let mut api = jobs(&addr).await?;
    let mut ids = Vec::new();
    for _ in 0..200 {
        let spec = pb::JobSpec {
            concurrency_keys: vec!["site:netkeiba".into()],
            ..sh(&format!("echo $(date +%s%N) >> {}", file.display()))
        };
        ids.push(submit(&mut api, spec).await?.id);
    }
    // Jobs beyond the rate wait, and say so (between claims; right after a token came
    // and before the dispatcher took it, a job is ready and says nothing). None fails.
    wait_for(&mut api, &ids[199], "a rate-limit reason", |j, _| {
        j.waiting.starts_with("rate limited until ")
    })
    .await?;
    for id in &ids {
        wait_state(&mut api, id, pb::JobState::Succeeded).await?;
    }
    let mut starts: Vec<u128> = std::fs::read_to_string(&file)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 200);
    // A bucket of 10 refilled at 10/s allows at most 10 + 10 starts in any closed 1 s
    // window (one more than the half-open window below can hold), measured from the
    // processes' own clocks.
    let second = 1_000_000_000u128;
    let mut worst = 0;
    for (i, t) in starts.iter().enumerate() {
        let n = starts[i..].iter().take_while(|s| **s < t + second).count();
        worst = worst.max(n);
    }
    eprintln!("rate limit 10/s: worst 1 s window {worst} starts");
    assert!(worst <= 21, "{worst} jobs started within one second");
    // And the limit was what paced them: 200 starts need at least (200 - 20) / 10 s.
    let span = starts[199] - starts[0];
    assert!(span >= 17 * second, "200 starts within {span} ns");
    Ok(())
}
