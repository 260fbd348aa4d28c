//! Jobs leased ahead (`lease_ahead`): a worker may hold jobs beyond its slots and start
//! each the moment a slot frees. Held jobs never run beside the slots' own, a held job
//! that finds no slot within `lease_ahead_hold` goes back uncounted for another worker,
//! and a held job can be cancelled or handed back by a draining worker without running.
//! A worker holds nothing until one of its jobs has run shorter than the hold (slow start).
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
/// by job `a`, which runs until `a.go` appears. Warmed up: a short job ran first, so `w1`
/// leases ahead.
struct OneSlotBusy {
    marks: tempfile::TempDir,
    cl: Cluster,
    addr: String,
    _coordinator: Proc,
    w1: Proc,
    api: JobsClient,
    a: pb::Job,
}

impl OneSlotBusy {
    async fn start(env: &[(&str, &str)]) -> anyhow::Result<OneSlotBusy> {
        Self::with(env, true).await
    }

    /// `warm`: run a short job first (w1 then leases ahead); else `a` is w1's first job.
    async fn with(env: &[(&str, &str)], warm: bool) -> anyhow::Result<OneSlotBusy> {
        let marks = tempfile::tempdir()?;
        let cl = Cluster::new().await?;
        let (coordinator, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
        let w1 = cl.worker_with_env("w1", &addr, 1, &["--lease-ahead", "1"], env)?;
        let mut api = jobs(&addr).await?;
        if warm {
            let w = submit(&mut api, marked(marks.path(), "warm", false)).await?;
            wait_state(&mut api, &w.id, pb::JobState::Succeeded).await?;
        }
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

    /// Submits job `name` (it does not wait).
    async fn submit(&mut self, name: &str) -> anyhow::Result<pb::Job> {
        submit(&mut self.api, marked(self.marks.path(), name, false)).await
    }

    fn ran(&self, name: &str) -> bool {
        self.marks.path().join(format!("{name}.ran")).exists()
    }

    async fn a_is_running(&mut self) -> anyhow::Result<bool> {
        let (ja, _) = get(&mut self.api, &self.a.id).await?;
        Ok(is_state(&ja, pb::JobState::Running))
    }

    /// Lets `a` end and waits until it succeeded.
    async fn finish_a(&mut self) -> anyhow::Result<()> {
        std::fs::write(self.marks.path().join("a.go"), b"")?;
        wait_state(&mut self.api, &self.a.id, pb::JobState::Succeeded).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_job_leased_ahead_is_held_until_the_slot_frees_then_runs_at_once() -> anyhow::Result<()> {
    let mut t = OneSlotBusy::start(&[("DROVER_WORKER_LEASE_AHEAD_HOLD", "1m")]).await?;
    let b = t.submit("b").await?;
    // B is leased to the worker while A still runs in its one slot...
    let (_, held) = wait_for(&mut t.api, &b.id, "leased to w1", |j, at| {
        is_state(j, pb::JobState::Running) && at.iter().any(|x| x.worker_id == "w1")
    })
    .await?;
    assert_eq!(held.len(), 1);
    // ...but not started: A has not let go of the slot.
    assert!(t.a_is_running().await?);
    assert!(!t.ran("b"), "the held job ran beside the slot's own");

    std::fs::write(t.marks.path().join("a.go"), b"")?;
    let (_, at) = wait_state(&mut t.api, &b.id, pb::JobState::Succeeded).await?;
    assert_eq!(at.len(), 1, "held once, run once: {at:?}");
    assert_eq!(
        at[0].exit_code,
        Some(0),
        "exit 3: it ran while A held the slot"
    );
    t.finish_a().await
}

#[tokio::test]
async fn a_worker_holds_nothing_before_one_of_its_jobs_ran_shorter_than_the_hold(
) -> anyhow::Result<()> {
    // A is w1's first job, and it runs on: w1 has not seen a short job.
    let mut t = OneSlotBusy::with(&[("DROVER_WORKER_LEASE_AHEAD_HOLD", "1m")], false).await?;
    let b = t.submit("b").await?;
    // Held by w1, B would wait there for A (the hold is a minute).
    let _w2 = t.cl.worker("w2", &t.addr, 1, &[])?;
    let (_, at) = wait_state(&mut t.api, &b.id, pb::JobState::Succeeded).await?;
    assert_eq!(at.len(), 1, "leased once: {at:?}");
    assert_eq!(at[0].worker_id, "w2");
    assert!(t.a_is_running().await?, "A ran on meanwhile");
    t.finish_a().await
}

#[tokio::test]
async fn a_held_job_that_finds_no_slot_in_time_goes_back_uncounted_to_another_worker(
) -> anyhow::Result<()> {
    let mut t = OneSlotBusy::start(&[("DROVER_WORKER_LEASE_AHEAD_HOLD", "300ms")]).await?;
    // No retries to spend: a release that counted would park it.
    let mut spec = marked(t.marks.path(), "b", false);
    spec.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    let b = submit(&mut t.api, spec).await?;
    wait_for(&mut t.api, &b.id, "handed back by w1", |_, at| {
        at.iter()
            .any(|x| x.worker_id == "w1" && attempt_is(x, pb::AttemptState::Released))
    })
    .await?;
    // w1's room for it is withheld while A (longer than the hold) runs: B waits for
    // another worker instead of going back and forth to w1.
    let _w2 = t.cl.worker("w2", &t.addr, 1, &[])?;
    let (_, at) = wait_state(&mut t.api, &b.id, pb::JobState::Succeeded).await?;
    assert_eq!(at.len(), 2, "released once, then run: {at:?}");
    assert!(attempt_is(&at[0], pb::AttemptState::Released) && at[0].worker_id == "w1");
    assert!(attempt_is(&at[1], pb::AttemptState::Succeeded) && at[1].worker_id == "w2");
    assert!(t.a_is_running().await?, "A ran on meanwhile");
    t.finish_a().await
}

#[tokio::test]
async fn a_held_job_is_cancelled_without_running_and_a_draining_worker_hands_held_jobs_back_at_once(
) -> anyhow::Result<()> {
    let mut t = OneSlotBusy::start(&[
        ("DROVER_WORKER_LEASE_AHEAD_HOLD", "1m"),
        ("DROVER_WORKER_DRAIN_TIMEOUT", "10m"),
    ])
    .await?;
    let b = t.submit("b").await?;
    wait_for(&mut t.api, &b.id, "held by w1", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    t.api
        .cancel_job(pb::CancelJobRequest {
            id: b.id.clone(),
            ..Default::default()
        })
        .await?;
    let (_, at) = wait_for(&mut t.api, &b.id, "cancelled", |j, at| {
        is_state(j, pb::JobState::Cancelled)
            && at
                .iter()
                .all(|x| attempt_is(x, pb::AttemptState::Cancelled))
    })
    .await?;
    assert_eq!(at.len(), 1);

    // The cancelled job's room comes back: the next job is held in its place.
    let c = t.submit("c").await?;
    wait_for(&mut t.api, &c.id, "held by w1", |j, _| {
        is_state(j, pb::JobState::Running)
    })
    .await?;
    // Draining (and A far from done): the held job goes back now, not after A.
    t.w1.signal(nix::sys::signal::Signal::SIGTERM);
    // (GetJob reads the job and its attempts apart, so the job may show running for a
    // moment after its attempt was released: wait for both.)
    let (_, at) = wait_for(&mut t.api, &c.id, "handed back", |j, at| {
        !is_state(j, pb::JobState::Running)
            && at.iter().any(|x| attempt_is(x, pb::AttemptState::Released))
    })
    .await?;
    assert_eq!(at.len(), 1, "leased again to the draining worker: {at:?}");
    assert!(t.a_is_running().await?, "A is still running");

    t.finish_a().await?;
    for name in ["b", "c"] {
        assert!(!t.ran(name), "{name} ran though it never got a slot");
    }
    Ok(())
}
