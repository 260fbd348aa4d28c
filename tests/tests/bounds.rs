//! Hostile or careless clients and workers cannot exhaust, stall or corrupt the
//! coordinator (issue 12): placeholder expansion is bounded, retry policies are range
//! checked and a result that cannot be applied never leaves a job running, a worker's
//! credits never exceed its declared slots, and what a worker reports about itself is
//! bounded and sanitised.

use drover_tests::v1 as pb;
use drover_tests::*;
use pb::session_request::Msg as Out;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn job_count(cl: &Cluster) -> anyhow::Result<i64> {
    Ok(cl
        .db
        .client()
        .await?
        .query_one("SELECT count(*) FROM jobs", &[])
        .await?
        .get(0))
}

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
async fn placeholder_expansion_is_bounded_at_submit_and_rerun() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;

    // 4 000 placeholders × a 60 000-byte value: a 60 KB request that would expand to 240 MB.
    let mut argv = vec!["echo"];
    argv.extend(std::iter::repeat_n("{p}", 4000));
    let mut s = spec(&argv);
    s.params.insert("p".into(), "x".repeat(60_000));
    let e = api
        .submit_job(pb::SubmitJobRequest { spec: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("argv:") && e.message().contains("1048576"),
        "{}",
        e.message()
    );
    assert_eq!(job_count(&cl).await?, 0);

    // A rerun whose new value would blow the expansion up is refused the same way.
    let mut argv = vec!["echo"];
    argv.extend(std::iter::repeat_n("{p}", 100));
    let mut s = spec(&argv);
    s.params.insert("p".into(), "small".into());
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let e = api
        .retry_job(pb::RetryJobRequest {
            id: job.id.clone(),
            set_params: [("p".to_string(), "y".repeat(60_000))].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("argv:") && e.message().contains("1048576"),
        "{}",
        e.message()
    );
    assert_eq!(job_count(&cl).await?, 1, "the refused rerun stored nothing");

    // The coordinator never built the expansion: it is still small.
    let rss = vm_rss_kib(c.pid()).unwrap_or(0);
    assert!(rss < 300 * 1024, "coordinator RSS {rss} KiB");
    Ok(())
}

/// A process's resident memory in KiB (VmRSS in /proc/PID/status).
fn vm_rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::test]
async fn huge_backoffs_are_refused_and_never_leave_a_job_running() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    for (policy, field) in [
        (
            pb::RetryPolicy {
                initial_backoff: ms(u64::MAX),
                max_backoff: ms(u64::MAX),
                ..Default::default()
            },
            "retry.initial_backoff",
        ),
        (
            pb::RetryPolicy {
                max_backoff: ms(u64::MAX),
                ..Default::default()
            },
            "retry.max_backoff",
        ),
        (
            // Beyond what a Duration may hold at all.
            pb::RetryPolicy {
                initial_backoff: Some(drover_proto::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "retry.initial_backoff",
        ),
        (
            pb::RetryPolicy {
                multiplier: Some(f64::INFINITY),
                ..Default::default()
            },
            "retry.multiplier",
        ),
    ] {
        let mut s = sh("exit 1");
        s.retry = Some(policy);
        let e = api
            .submit_job(pb::SubmitJobRequest { spec: Some(s) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    assert_eq!(job_count(&cl).await?, 0);

    // A row stored before these checks existed (written here straight into the database)
    // with 2^64-1 backoffs: the failure is still applied, the wait saturates.
    let db = cl.db.client().await?;
    let job = submit(&mut api, sh("sleep 1; exit 1")).await?;
    db.execute(
        "UPDATE jobs SET retry_policy = retry_policy || \
           '{\"initial_backoff_ms\": 18446744073709551615, \"max_backoff_ms\": 18446744073709551615}'::jsonb \
         WHERE id = $1",
        &[&uuid::Uuid::parse_str(&job.id)?],
    )
    .await?;
    // The attempt must have ended: GetJob reads the job and its attempts one after the
    // other, so a just-leased job can show as pending with its running attempt.
    let (j, a) = wait_for(&mut api, &job.id, "pending again with a backoff", |j, a| {
        is_state(j, pb::JobState::Pending)
            && a.first()
                .is_some_and(|x| x.state == pb::AttemptState::Failed as i32)
    })
    .await?;
    assert!(j.reason.contains("retrying in"), "{}", j.reason);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let wait_s = j.not_before.as_ref().map(|t| t.seconds).unwrap_or(0) - now;
    assert!(wait_s <= 30 * 24 * 3600 + 60, "wait {wait_s}s");
    assert_eq!(a[0].state, pb::AttemptState::Failed as i32);

    // A stored policy that cannot be read at all: the attempt still ends, with the reason
    // (read from the database: the API cannot show a job whose policy is unreadable).
    let job = submit(&mut api, sh("sleep 1; exit 1")).await?;
    let id = uuid::Uuid::parse_str(&job.id)?;
    db.execute(
        "UPDATE jobs SET retry_policy = '{\"max_retries\": \"lots\"}'::jsonb WHERE id = $1",
        &[&id],
    )
    .await?;
    let start = Instant::now();
    loop {
        let r = db
            .query_one(
                // Not leased yet: no attempt row, the job still pending.
                "SELECT j.state, j.reason, a.state FROM jobs j \
                   LEFT JOIN attempts a ON a.job_id = j.id WHERE j.id = $1",
                &[&id],
            )
            .await?;
        let (job_state, reason, attempt_state): (String, String, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        if job_state != "running" && job_state != "pending" {
            assert_eq!(job_state, "permanent_failed");
            assert_eq!(attempt_state.as_deref(), Some("failed_permanent"));
            assert!(reason.contains("could not be applied"), "{reason}");
            break;
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "job stuck {job_state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Opens a raw worker session; returns the sender for our messages and the stream of the
/// coordinator's.
async fn raw_session(
    addr: &str,
    hello: pb::Hello,
) -> anyhow::Result<(
    mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionResponse>,
)> {
    let mut client = workers(addr).await?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::SessionRequest {
        msg: Some(Out::Hello(hello)),
    })
    .await?;
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// Opens a session with `hello`, which the coordinator must refuse: its status.
async fn refused_hello(addr: &str, hello: pb::Hello) -> anyhow::Result<tonic::Status> {
    let mut client = workers(addr).await?;
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::SessionRequest {
        msg: Some(Out::Hello(hello)),
    })
    .await?;
    match client.session(ReceiverStream::new(rx)).await {
        Ok(_) => anyhow::bail!("the hello was accepted"),
        Err(e) => Ok(e),
    }
}

#[tokio::test]
async fn credits_never_exceed_declared_slots() -> anyhow::Result<()> {
    assert_eq!(greedy_worker_gets(1, 0).await?, 1, "more than its one slot");
    Ok(())
}

#[tokio::test]
async fn credits_never_exceed_slots_plus_lease_ahead() -> anyhow::Result<()> {
    assert_eq!(
        greedy_worker_gets(1, 1).await?,
        2,
        "not exactly its slot and the job it may hold ahead"
    );
    Ok(())
}

#[tokio::test]
async fn lease_ahead_beyond_the_slots_is_refused() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let e = refused_hello(
        &addr,
        pb::Hello {
            worker_id: "hoarder".into(),
            slots: 2,
            lease_ahead: 3,
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("hello.lease_ahead: must be 0 to hello.slots (2), got 3"),
        "{}",
        e.message()
    );
    Ok(())
}

/// A session that declares `slots` and `lease_ahead`, asks for a billion credits again
/// and again and never finishes a job, beside an honest worker that runs the rest of six
/// jobs: how many attempts the greedy one got.
async fn greedy_worker_gets(slots: u32, lease_ahead: u32) -> anyhow::Result<i64> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&mut api, sh("sleep 0.2")).await?.id);
    }
    let (tx, mut inbound) = raw_session(
        &addr,
        pb::Hello {
            worker_id: "greedy".into(),
            hostname: "greedy".into(),
            slots,
            lease_ahead,
            free_slots: slots + lease_ahead,
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        },
    )
    .await?;
    let credit = || pb::SessionRequest {
        msg: Some(Out::Credit(pb::Credit {
            slots: 1_000_000_000,
        })),
    };
    tx.send(credit()).await?;
    // Keeps asking for more, and heartbeats what it holds so its lease never expires.
    let counter = tokio::spawn(async move {
        let mut held: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(pb::SessionResponse { msg: Some(pb::session_response::Msg::Assign(a)) })) => {
                        held.push(a.attempt_id);
                        let _ = tx.send(credit()).await;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                },
                _ = tick.tick() => {
                    let _ = tx.send(pb::SessionRequest {
                        msg: Some(Out::Heartbeat(pb::Heartbeat {
                            running_attempts: held.clone(),
                            ..Default::default()
                        })),
                    }).await;
                    let _ = tx.send(credit()).await;
                }
            }
        }
    });
    // An honest worker takes the rest: once all but the greedy session's due share have
    // succeeded, the dispatcher had every chance to hand it more (had it, fewer would
    // succeed and this would time out).
    let _w = cl.worker("honest", &addr, 4, &[])?;
    let start = Instant::now();
    let share = (slots + lease_ahead) as usize;
    loop {
        let mut done = 0;
        for id in &ids {
            let (j, _) = get(&mut api, id).await?;
            done += usize::from(is_state(&j, pb::JobState::Succeeded));
        }
        if done >= ids.len() - share {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "jobs not run: {done} done (the greedy session held more than {share}?)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: i64 = cl
        .db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM attempts WHERE worker_id = 'greedy'",
            &[],
        )
        .await?
        .get(0);
    counter.abort();
    Ok(got)
}

#[tokio::test]
async fn worker_reports_are_bounded_and_cannot_forge_log_lines() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;

    // A 5 MiB hostname.
    let (tx, _in1) = raw_session(
        &addr,
        pb::Hello {
            worker_id: "huge".into(),
            hostname: "h".repeat(5 << 20),
            slots: 1,
            version: "v".repeat(1 << 20),
            containment: "c".repeat(1 << 20),
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        },
    )
    .await?;
    // A 6 MB resource report: 100 000 per-job entries.
    let jobs_list: Vec<pb::JobResources> = (0..100_000)
        .map(|i| pb::JobResources {
            attempt_id: format!("{i:060}"),
            ..Default::default()
        })
        .collect();
    tx.send(pb::SessionRequest {
        msg: Some(Out::Heartbeat(pb::Heartbeat {
            resources: Some(pb::HostResources {
                jobs: jobs_list,
                ..Default::default()
            }),
            paused_reason: "p".repeat(1 << 20),
            ..Default::default()
        })),
    })
    .await?;
    // A newline in a hostname must not start a line of its own in the coordinator's log.
    let (_tx2, _in2) = raw_session(
        &addr,
        pb::Hello {
            worker_id: "newline".into(),
            hostname: "evil\nFORGED-LINE ERROR coordinator compromised".into(),
            slots: 1,
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        },
    )
    .await?;

    let mut admin = admin_api(&addr).await?;
    let start = Instant::now();
    let listed = loop {
        let ws = admin
            .list_workers(pb::ListWorkersRequest {
                ..Default::default()
            })
            .await?
            .into_inner()
            .workers;
        let reported = ws
            .iter()
            .any(|w| w.id == "huge" && w.resources.is_some() && !w.paused_reason.is_empty());
        if reported && ws.iter().any(|w| w.id == "newline") {
            break ws;
        }
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "workers not registered: {}",
            ws.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let huge = listed.iter().find(|w| w.id == "huge").unwrap();
    assert!(
        huge.hostname.len() <= 255,
        "hostname {} bytes",
        huge.hostname.len()
    );
    assert!(huge.version.len() <= 64 && huge.containment.len() <= 256);
    assert!(huge.paused_reason.len() <= 1024);
    let jobs_kept = huge.resources.as_ref().map_or(0, |r| r.jobs.len());
    assert!(jobs_kept <= 1024, "{jobs_kept} per-job entries stored");
    let nl = listed.iter().find(|w| w.id == "newline").unwrap();
    assert!(!nl.hostname.contains('\n'), "{:?}", nl.hostname);

    // The operator's views keep working.
    for args in [["workers"], ["health"]] {
        let (code, out, err) = droverctl(&addr, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.len() < 1 << 20, "{args:?}: {} bytes", out.len());
    }
    let log = c.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a forged line reached the log"
    );
    assert!(
        log.contains("FORGED-LINE"),
        "the hostname is logged, escaped"
    );

    // Lists beyond their bounds are refused, naming the field.
    let e = refused_hello(
        &addr,
        pb::Hello {
            worker_id: "many".into(),
            slots: 1,
            running_attempts: vec![uuid::Uuid::nil().to_string(); 5000],
            protocol_version: drover_core::protocol::CURRENT,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("hello.running_attempts"),
        "{}",
        e.message()
    );
    Ok(())
}

#[tokio::test]
async fn list_pages_are_bounded_by_bytes() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    // No worker: twelve pending jobs of about 300 KB each (3.6 MB together).
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..12 {
        let mut s = spec(&["echo", &format!("{i}{}", "a".repeat(120_000))]);
        s.env.insert("BIG".into(), "e".repeat(120_000));
        s.params.insert("p".into(), "p".repeat(60_000));
        ids.insert(submit(&mut api, s).await?.id);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = api
            .list_jobs(pb::ListJobsRequest {
                page_size: 200,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        let bytes = prost::Message::encoded_len(&r);
        assert!(bytes <= 3 << 20, "page of {bytes} bytes");
        assert!(!r.jobs.is_empty());
        for j in r.jobs {
            assert!(seen.insert(j.id), "a job listed twice");
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
        anyhow::ensure!(pages < 20, "paging does not end");
    }
    assert_eq!(seen, ids, "every job listed once");
    assert!(
        pages >= 2,
        "fewer jobs than asked per page, with a next token"
    );
    Ok(())
}
