//! Jobs leased ahead (`lease_ahead`): a worker may hold jobs beyond its slots and start
//! each the moment a slot frees. Held jobs never run beside the slots' own, a held job
//! that finds no slot within `lease_ahead_hold` goes back uncounted for another worker,
//! and a held job can be cancelled or handed back by a draining worker without running.
//! Real PostgreSQL, coordinator and worker processes, real child processes.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::path::Path;

/// A job that claims its worker's one slot with `mkdir` of a directory in the worker's
/// state directory (exit 3 if another job of that worker holds it), writes `<name>.ran`,
/// waits for `<name>.go` when `wait` is set, then lets go.
fn marked(dir: &Path, name: &str, wait: bool) -> pb::JobSpec {
    let wait = if wait {
        format!("while [ ! -e {name}.go ]; do sleep 0.02; done; ")
    } else {
        String::new()
    };
    let mut s = sh(&format!(
        "busy=\"$DROVER_WORK_DIR/../../busy\"; cd \"$MARKS\" && mkdir \"$busy\" || exit 3; \
         touch {name}.ran; {wait}rmdir \"$busy\""
    ));
    s.env.insert("MARKS".into(), dir.display().to_string());
    s
}

async fn wait_file(path: &Path) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !path.exists() {
        anyhow::ensure!(
            start.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

fn attempt_is(a: &pb::Attempt, s: pb::AttemptState) -> bool {
    a.state == s as i32
}

/// A coordinator and worker `w1` with one slot and `lease_ahead = 1`, whose slot is taken
/// by job `a`, which runs until `a.go` appears.
struct OneSlotBusy {
    marks: tempfile::TempDir,
    cl: Cluster,
    addr: String,
    _coordinator: Proc,
    w1: Proc,
    api: JobsClient,
    a: pb::Job,
}

async fn one_slot_busy(env: &[(&str, &str)]) -> anyhow::Result<OneSlotBusy> {
    let marks = tempfile::tempdir()?;
    let cl = Cluster::new().await?;
    let (coordinator, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let w1 = cl.worker_with_env("w1", &addr, 1, &["--lease-ahead", "1"], env)?;
    let mut api = jobs(&addr).await?;
    let a = submit(&mut api, marked(marks.path(), "a", true)).await?;
    wait_file(&marks.path().join("a.ran")).await?;
    Ok(OneSlotBusy {
        marks,
        cl,
        addr,
        _coordinator: coordinator,
        w1,
        api,
        a,
    })
}

#[tokio::test]
async fn a_job_leased_ahead_is_held_until_the_slot_frees_then_runs_at_once() -> anyhow::Result<()> {
    // Every field bound (`..` would drop the processes at once).
    let OneSlotBusy {
        marks,
        cl: _cl,
        addr: _addr,
        _coordinator,
        w1: _w1,
        mut api,
        a,
    } = one_slot_busy(&[("DROVER_WORKER_LEASE_AHEAD_HOLD", "1m")]).await?;
    let b = submit(&mut api, marked(marks.path(), "b", false)).await?;
    // B is leased to the worker while A still runs in its one slot...
    let (_, held) = wait_for(&mut api, &b.id, "leased to w1", |j, at| {
        is_state(j, pb::JobState::Running) && at.iter().any(|x| x.worker_id == "w1")
    })
    .await?;
    assert_eq!(held.len(), 1);
    // ...but not started: A has not let go of the slot.
    let (ja, _) = get(&mut api, &a.id).await?;
    assert!(is_state(&ja, pb::JobState::Running));
    assert!(
        !marks.path().join("b.ran").exists(),
        "the held job ran beside the slot's own"
    );

    std::fs::write(marks.path().join("a.go"), b"")?;
    let (_, at) = wait_state(&mut api, &b.id, pb::JobState::Succeeded).await?;
    assert_eq!(at.len(), 1, "held once, run once: {at:?}");
    assert_eq!(
        at[0].exit_code,
        Some(0),
        "exit 3: it ran while A held the slot"
    );
    wait_state(&mut api, &a.id, pb::JobState::Succeeded).await?;
    Ok(())
}

#[tokio::test]
async fn a_held_job_that_finds_no_slot_in_time_goes_back_uncounted_to_another_worker(
) -> anyhow::Result<()> {
    let OneSlotBusy {
        marks,
        cl,
        addr,
        _coordinator,
        w1: _w1,
        mut api,
        a,
    } = one_slot_busy(&[("DROVER_WORKER_LEASE_AHEAD_HOLD", "300ms")]).await?;
    // No retries to spend: a release that counted would park it.
    let mut spec = marked(marks.path(), "b", false);
    spec.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    let b = submit(&mut api, spec).await?;
    wait_for(&mut api, &b.id, "handed back by w1", |_, at| {
        at.iter()
            .any(|x| x.worker_id == "w1" && attempt_is(x, pb::AttemptState::Released))
    })
    .await?;
    // w1's room for it is withheld while A (longer than the hold) runs: B waits for
    // another worker instead of going back and forth to w1.
    let _w2 = cl.worker("w2", &addr, 1, &[])?;
    let (_, at) = wait_state(&mut api, &b.id, pb::JobState::Succeeded).await?;
    assert_eq!(at.len(), 2, "released once, then run: {at:?}");
    assert!(attempt_is(&at[0], pb::AttemptState::Released) && at[0].worker_id == "w1");
    assert!(attempt_is(&at[1], pb::AttemptState::Succeeded) && at[1].worker_id == "w2");
    let (ja, _) = get(&mut api, &a.id).await?;
    assert!(is_state(&ja, pb::JobState::Running), "A ran on meanwhile");

    std::fs::write(marks.path().join("a.go"), b"")?;
    wait_state(&mut api, &a.id, pb::JobState::Succeeded).await?;
    Ok(())
}

#[tokio::test]
async fn a_held_job_is_cancelled_without_running_and_a_draining_worker_hands_held_jobs_back_at_once(
) -> anyhow::Result<()> {
    let OneSlotBusy {
        marks,
        cl: _cl,
        addr: _addr,
        _coordinator,
        w1: w,
        mut api,
        a,
    } = one_slot_busy(&[
        ("DROVER_WORKER_LEASE_AHEAD_HOLD", "1m"),
        ("DROVER_WORKER_DRAIN_TIMEOUT", "10m"),
    ])
    .await?;
    let b = submit(&mut api, marked(marks.path(), "b", false)).await?;
    wait_for(&mut api, &b.id, "held by w1", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    api.cancel_job(pb::CancelJobRequest {
        id: b.id.clone(),
        ..Default::default()
    })
    .await?;
    let (_, at) = wait_for(&mut api, &b.id, "cancelled", |j, at| {
        is_state(j, pb::JobState::Cancelled)
            && at
                .iter()
                .all(|x| attempt_is(x, pb::AttemptState::Cancelled))
    })
    .await?;
    assert_eq!(at.len(), 1);

    // The cancelled job's room comes back: the next job is held in its place.
    let c = submit(&mut api, marked(marks.path(), "c", false)).await?;
    wait_for(&mut api, &c.id, "held by w1", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    // Draining (and A far from done): the held job goes back now, not after A.
    w.signal(nix::sys::signal::Signal::SIGTERM);
    // (GetJob reads the job and its attempts apart, so the job may show running for a
    // moment after its attempt was released: wait for both.)
    let (_, at) = wait_for(&mut api, &c.id, "handed back", |j, at| {
        !is_state(j, pb::JobState::Running)
            && at.iter().any(|x| attempt_is(x, pb::AttemptState::Released))
    })
    .await?;
    assert_eq!(at.len(), 1, "leased again to the draining worker: {at:?}");
    let (ja, _) = get(&mut api, &a.id).await?;
    assert!(is_state(&ja, pb::JobState::Running), "A is still running");

    std::fs::write(marks.path().join("a.go"), b"")?;
    wait_state(&mut api, &a.id, pb::JobState::Succeeded).await?;
    for name in ["b", "c"] {
        assert!(
            !marks.path().join(format!("{name}.ran")).exists(),
            "{name} ran though it never got a slot"
        );
    }
    Ok(())
}
