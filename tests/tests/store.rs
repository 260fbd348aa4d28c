//! The store's operations one by one, against a real PostgreSQL database of their own
//! (migrated from scratch), with no coordinator or worker around them.

use drover_coordinator::error::{Error, ErrorKind};
use drover_coordinator::store::{ChunkIn, Claim, EndRequest, Store, WorkerHello};
use drover_coordinator::{db, store::JobFilter};
use drover_core::{AttemptState, JobSpec, JobState, RawResult, RetryPolicy};
use drover_tests::TestDb;
use std::time::Duration;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

async fn store() -> anyhow::Result<(TestDb, Store)> {
    let tdb = TestDb::new().await?;
    db::migrate(&tdb.url).await?;
    let store = Store::with_hot_pool(db::pool(&tdb.url, 4)?, db::hot_pool(&tdb.url)?);
    Ok((tdb, store))
}

fn spec(argv: &[&str]) -> JobSpec {
    JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        queue: "default".into(),
        ..Default::default()
    }
}

/// Exact waits, so a retry's start time is known.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 1,
        initial_backoff_ms: 60_000,
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

fn end(raw: RawResult) -> EndRequest {
    EndRequest::bare(raw)
}

fn chunk(seq: i64, data: &str) -> ChunkIn {
    ChunkIn {
        seq,
        stream: 1,
        time: chrono::Utc::now(),
        data: data.as_bytes().to_vec(),
    }
}

/// Claims up to `n` jobs of the default queue for `worker`, which has `slots` slots.
async fn claim(store: &Store, worker: &str, n: i64, slots: i64) -> anyhow::Result<Claim> {
    Ok(store
        .claim(worker, &["default".into()], &[], n, LEASE, slots)
        .await?)
}

async fn claim_one(store: &Store, worker: &str, lease: Duration) -> anyhow::Result<Uuid> {
    let c = store
        .claim(worker, &["default".into()], &[], 1, lease, 1)
        .await?
        .jobs;
    anyhow::ensure!(c.len() == 1, "claimed {} jobs", c.len());
    Ok(c[0].attempt_id)
}

fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

async fn events(tdb: &TestDb, job: Uuid) -> anyhow::Result<Vec<String>> {
    Ok(tdb
        .client()
        .await?
        .query(
            "SELECT event FROM outbox WHERE job_id = $1 ORDER BY id",
            &[&job],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[tokio::test]
async fn submit_get_and_idempotency_key() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut s = spec(&["true"]);
    s.idempotency_key = Some("once".into());
    let (job, created) = store.submit(&s, &policy(), None).await?;
    assert!(created);
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.spec.argv, vec!["true"]);
    assert_eq!(job.policy, policy());
    // The same key again: the first job, not a second one.
    let (again, created) = store.submit(&s, &policy(), None).await?;
    assert!(!created);
    assert_eq!(again.id, job.id);
    let got = store.get_job(job.id).await?.expect("stored");
    assert_eq!(got.spec, job.spec);
    assert!(store.get_job(Uuid::new_v4()).await?.is_none());
    assert_eq!(
        store.jobs_by_state().await?,
        vec![("pending".to_string(), 1)]
    );
    let (page, more) = store
        .list_jobs(&JobFilter {
            limit: 10,
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await?;
    assert_eq!((page.len(), more), (1, false));
    Ok(())
}

#[tokio::test]
async fn keyed_jobs_are_claimed_only_within_the_workers_room() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let flow = drover_coordinator::store::flow::Flow {
        keys: vec![("site:a".into(), 10)],
        ..Default::default()
    };
    for _ in 0..3 {
        store
            .submit_with_flow(&spec(&["true"]), &policy(), None, &flow)
            .await?;
    }
    // 2 slots: both go to keyed jobs (the plain claim found none).
    let first = claim(&store, "w1", 2, 2).await?;
    assert_eq!((first.jobs.len(), first.room), (2, 2));
    // Credit for 2 more while both still run: no room, so the keyed path takes nothing
    // either (it once asked for credit minus the plain claim's jobs).
    let full = claim(&store, "w1", 2, 2).await?;
    assert_eq!((full.jobs.len(), full.room), (0, 0));
    // One result stored: room for one, and one keyed job left.
    store
        .end_attempt(first.jobs[0].attempt_id, &end(RawResult::Exited(0)))
        .await?;
    let again = claim(&store, "w1", 2, 2).await?;
    assert_eq!((again.jobs.len(), again.room), (1, 1));
    Ok(())
}

#[tokio::test]
async fn claim_says_how_much_room_the_worker_had() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    for _ in 0..5 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    // 3 slots, asking for 2: room 2, both leased.
    let first = claim(&store, "w1", 2, 3).await?;
    assert_eq!((first.jobs.len(), first.room), (2, 2));
    // Two running of 3 slots: asking for 3 leaves room for 1 (a result on its way).
    let second = claim(&store, "w1", 3, 3).await?;
    assert_eq!((second.jobs.len(), second.room), (1, 1));
    // Full: no room, nothing leased, and the answer still says so.
    let full = claim(&store, "w1", 1, 3).await?;
    assert_eq!((full.jobs.len(), full.room), (0, 0));
    // One result stored: room again, and fewer due jobs (2) than room (3) for another worker.
    store
        .end_attempt(first.jobs[0].attempt_id, &end(RawResult::Exited(0)))
        .await?;
    let again = claim(&store, "w1", 1, 3).await?;
    assert_eq!((again.jobs.len(), again.room), (1, 1));
    let other = claim(&store, "w2", 3, 3).await?;
    assert_eq!((other.jobs.len(), other.room), (1, 3));
    Ok(())
}

#[tokio::test]
async fn claim_leases_each_due_job_once() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    for _ in 0..2 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    let claimed = claim(&store, "w1", 5, 5).await?.jobs;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.number == 1));
    let again = claim(&store, "w2", 5, 5).await?.jobs;
    assert!(again.is_empty(), "{again:?}");
    for c in &claimed {
        let job = store.get_job(c.job_id).await?.expect("job");
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.current_attempt_id, Some(c.attempt_id));
        let attempts = store.list_attempts(c.job_id).await?;
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].state, AttemptState::Running);
        assert_eq!(attempts[0].worker_id, "w1");
    }
    let q = store.queue_stats().await?;
    let default = q.iter().find(|q| q.queue == "default").expect("queue row");
    assert_eq!((default.pending, default.running), (0, 2));
    Ok(())
}

#[tokio::test]
async fn one_claim_serves_several_workers_within_each_ones_room() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    for _ in 0..10 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    // w1 already runs one of its two slots' worth; w2 has three free.
    assert_eq!(claim(&store, "w1", 1, 2).await?.jobs.len(), 1);
    let q = ["default".to_string()];
    let claims = store
        .claim_for(&[("w1", 3, 2, 0), ("w2", 3, 3, 0)], &q, &[], LEASE)
        .await?;
    let got: Vec<(i64, usize)> = claims.iter().map(|c| (c.room, c.jobs.len())).collect();
    assert_eq!(
        got,
        vec![(1, 1), (3, 3)],
        "room is the ask capped by free slots"
    );
    // The attempts went to the worker each claim was for.
    let per_worker: Vec<(String, i64)> = tdb
        .client()
        .await?
        .query(
            "SELECT worker_id, count(*) FROM attempts WHERE state = 'running' \
             GROUP BY worker_id ORDER BY worker_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_worker, vec![("w1".into(), 2), ("w2".into(), 3)]);
    // Five jobs left, asks for eight: they are shared out in turns, and each claim says
    // there were fewer due jobs than room.
    let claims = store
        .claim_for(&[("w3", 4, 4, 0), ("w4", 4, 4, 0)], &q, &[], LEASE)
        .await?;
    let got: Vec<(i64, usize)> = claims.iter().map(|c| (c.room, c.jobs.len())).collect();
    assert_eq!(got, vec![(4, 3), (4, 2)]);
    let mut leased: Vec<Uuid> = claims
        .iter()
        .flat_map(|c| c.jobs.iter().map(|j| j.job_id))
        .collect();
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 5, "no job leased twice");
    Ok(())
}

#[tokio::test]
async fn a_claim_fills_free_slots_before_room_to_hold_ahead() -> anyhow::Result<()> {
    let (_tdb, store) = store().await?;
    for _ in 0..4 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    // w1's one slot is busy (it may hold two more ahead); w2 has two free slots.
    assert_eq!(claim(&store, "w1", 1, 1).await?.jobs.len(), 1);
    let q = ["default".to_string()];
    let claims = store
        .claim_for(&[("w1", 2, 1, 2), ("w2", 2, 2, 0)], &q, &[], LEASE)
        .await?;
    let got: Vec<(i64, usize)> = claims.iter().map(|c| (c.room, c.jobs.len())).collect();
    assert_eq!(
        got,
        vec![(2, 1), (2, 2)],
        "w2's free slots first, then one of w1's room ahead"
    );
    // Nothing left: room to hold ahead is capped like slots (1 running + 1 held of 3).
    let claims = store.claim_for(&[("w1", 5, 1, 2)], &q, &[], LEASE).await?;
    assert_eq!((claims[0].room, claims[0].jobs.len()), (1, 0));
    Ok(())
}

#[tokio::test]
async fn end_attempt_succeeds_retries_and_refuses_stale_results() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    tdb.want_outbox_events().await?;
    let (ok, _) = store.submit(&spec(&["true"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let e = store.end_attempt(a, &end(RawResult::Exited(0))).await?;
    assert_eq!(
        (e.job_id, e.attempt_state, e.job_state),
        (ok.id, AttemptState::Succeeded, JobState::Succeeded)
    );
    assert_eq!(
        events(&tdb, ok.id).await?.last().map(String::as_str),
        Some("job.succeeded")
    );
    let job = store.get_job(ok.id).await?.expect("job");
    assert!(job.finished_at.is_some());
    // A second result for the same attempt changes nothing.
    assert_eq!(
        kind(store.end_attempt(a, &end(RawResult::Exited(1))).await),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(
            store
                .end_attempt(Uuid::new_v4(), &end(RawResult::Exited(0)))
                .await
        ),
        ErrorKind::NotFound
    );

    // A failure is retried after the policy's exact backoff.
    let (bad, _) = store.submit(&spec(&["false"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let e = store.end_attempt(a, &end(RawResult::Exited(3))).await?;
    assert_eq!(e.job_state, JobState::Pending);
    assert_eq!(e.reason, "exit code 3; retrying in 60.0s");
    let job = store.get_job(bad.id).await?.expect("job");
    let wait = job.not_before - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(50) && wait <= chrono::Duration::seconds(60),
        "{wait:?}"
    );
    assert_eq!(job.current_attempt_id, None);
    let attempts = store.list_attempts(bad.id).await?;
    assert_eq!(attempts[0].state, AttemptState::Failed);
    assert_eq!(attempts[0].exit_code, Some(3));
    assert_eq!(
        events(&tdb, bad.id).await?.last().map(String::as_str),
        Some("job.retry_scheduled")
    );
    // Not due yet: nothing to claim (with room for one), and the dispatcher's timer
    // points at it.
    assert!(claim(&store, "w1", 1, 1).await?.jobs.is_empty());
    assert_eq!(
        store.next_due(&["default".into()]).await?,
        Some(job.not_before)
    );
    // Only the starved workers' queues count: none is due later in another queue.
    assert_eq!(store.next_due(&["other".into()]).await?, None);
    Ok(())
}

#[tokio::test]
async fn end_attempt_waits_for_the_whole_log_and_classifies_the_output() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let p = RetryPolicy {
        permanent_patterns: vec!["disk (is )?full".into()],
        ..policy()
    };
    let (job, _) = store.submit(&spec(&["x"]), &p, None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let mut req = end(RawResult::Exited(1));
    req.log_chunk_count = Some(2);
    req.output_tail = "error: disk is full".into();
    assert_eq!(kind(store.end_attempt(a, &req).await), ErrorKind::Aborted);
    store
        .append_logs(
            a,
            &[chunk(0, "one\n"), chunk(1, "error: disk is full\n")],
            1 << 20,
        )
        .await?;
    let e = store.end_attempt(a, &req).await?;
    assert_eq!(e.attempt_state, AttemptState::FailedPermanent);
    assert_eq!(e.job_state, JobState::PermanentFailed);
    assert!(e.reason.contains("permanent pattern"), "{}", e.reason);
    let attempts = store.list_attempts(job.id).await?;
    assert_eq!(attempts[0].log_bytes, 24);
    Ok(())
}

#[tokio::test]
async fn expired_leases_are_found_and_a_renewed_one_wins() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let (job, _) = store
        .submit(&spec(&["sleep", "9"]), &policy(), None)
        .await?;
    let a = claim_one(&store, "w1", Duration::ZERO).await?;
    // The reaper's request: only if the lease is still expired when the row is locked.
    let mut reap = end(RawResult::Lost("lease expired".into()));
    reap.only_if_expired = true;
    // A heartbeat renews the lease first: the reaper loses.
    let hb = store.heartbeat("w1", &[a], LEASE, None).await?;
    assert!(hb.stale.is_empty() && hb.cancel.is_empty(), "{hb:?}");
    assert!(store.expired_attempts(10).await?.is_empty());
    assert_eq!(
        kind(store.end_attempt(a, &reap).await),
        ErrorKind::FailedPrecondition
    );
    // Expired again (a zero lease): found, and lost.
    store.heartbeat("w1", &[a], Duration::ZERO, None).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.expired_attempts(10).await?, vec![a]);
    let e = store.end_attempt(a, &reap).await?;
    assert_eq!(
        (e.attempt_state, e.job_state),
        (AttemptState::Lost, JobState::Pending)
    );
    let retried = store.get_job(job.id).await?.expect("job");
    assert_eq!(retried.state, JobState::Pending);
    // A heartbeat for an attempt that is no longer current tells the worker to stop it.
    let hb = store.heartbeat("w1", &[a], LEASE, None).await?;
    assert_eq!(hb.stale, vec![a]);
    Ok(())
}

#[tokio::test]
async fn cancel_job_pending_running_and_missing() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let (running, _) = store
        .submit(&spec(&["sleep", "9"]), &policy(), None)
        .await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let (pending, _) = store.submit(&spec(&["true"]), &policy(), None).await?;

    let (job, stop) = store.cancel_job(pending.id).await?;
    assert_eq!((job.state, stop), (JobState::Cancelled, None));

    let (job, stop) = store.cancel_job(running.id).await?;
    assert_eq!(job.state, JobState::Running);
    assert!(job.cancel_requested);
    assert_eq!(stop, Some((a, "w1".to_string())));
    // The worker hears it with its next heartbeat, and its failure does not retry.
    let hb = store.heartbeat("w1", &[a], LEASE, None).await?;
    assert_eq!(hb.cancel, vec![a]);
    let e = store.end_attempt(a, &end(RawResult::Exited(1))).await?;
    assert_eq!(e.job_state, JobState::Cancelled);

    assert_eq!(
        kind(store.cancel_job(Uuid::new_v4()).await),
        ErrorKind::NotFound
    );
    Ok(())
}

#[tokio::test]
async fn a_reconnecting_worker_loses_the_attempts_it_no_longer_runs() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let hello = |running: Vec<Uuid>| WorkerHello {
        id: "w1".into(),
        hostname: "h".into(),
        labels: vec![],
        queues: vec!["default".into()],
        slots: 2,
        version: "test".into(),
        running,
        containment: String::new(),
        protocol_version: drover_core::protocol::CURRENT as i32,
    };
    store.register_worker(&hello(vec![]), "c1", LEASE).await?;
    let (job, _) = store
        .submit(&spec(&["sleep", "9"]), &policy(), None)
        .await?;
    claim_one(&store, "w1", LEASE).await?;
    let workers = store.list_workers().await?;
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].id.as_str(), workers[0].running), ("w1", 1));

    // It restarted and runs nothing: its attempt is lost at once and the job pending.
    let (ended, hb) = store.register_worker(&hello(vec![]), "c1", LEASE).await?;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].job_id, job.id);
    assert_eq!(ended[0].attempt_state, AttemptState::Lost);
    assert!(hb.stale.is_empty());
    assert_eq!(
        store.list_attempts(job.id).await?[0].state,
        AttemptState::Lost
    );

    store.worker_disconnected("w1", "c1").await?;
    let workers = store.list_workers().await?;
    assert_eq!(workers[0].running, 0);
    Ok(())
}

#[tokio::test]
async fn logs_are_stored_once_per_chunk_and_read_in_order() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let (job, _) = store.submit(&spec(&["echo"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    store
        .append_logs(a, &[chunk(0, "hello\n"), chunk(1, "world\n")], 1 << 20)
        .await?;
    // A re-sent chunk (same seq) is ignored.
    store
        .append_logs(a, &[chunk(1, "again\n")], 1 << 20)
        .await?;
    let got = store.read_logs(a, -1, 100).await?;
    let text: Vec<u8> = got.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(String::from_utf8(text)?, "hello\nworld\n");
    assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(store.list_attempts(job.id).await?[0].log_bytes, 12);
    // Once the attempt has ended, its log is closed.
    store.end_attempt(a, &end(RawResult::Exited(0))).await?;
    assert_eq!(
        kind(store.append_logs(a, &[chunk(2, "late\n")], 1 << 20).await),
        ErrorKind::FailedPrecondition
    );
    Ok(())
}

/// A worker keeps two log batches in flight, so the second can reach the store first. It
/// waits for the first: stored the other way round, the cap would take the second batch
/// for the log's head and later trim the first (the log's real head) as the oldest tail.
#[tokio::test]
async fn a_log_batch_that_arrives_early_waits_for_the_one_before() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    store.submit(&spec(&["echo"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    // Cap 100 bytes: a head of 50 (seqs 0-4) and a tail of 50.
    let batch = |from: i64, tag: char| -> Vec<ChunkIn> {
        (from..from + 5)
            .map(|seq| chunk(seq, &format!("{tag}{seq:02}......\n")))
            .collect()
    };
    let second = tokio::spawn({
        let store = store.clone();
        let b = batch(5, 'b');
        async move { store.append_logs(a, &b, 100).await }
    });
    let mut polls = 0;
    while store.early_log_batches() == 0 {
        anyhow::ensure!(
            polls < 1000 && !second.is_finished(),
            "the second batch did not wait for the first"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store.append_logs(a, &batch(0, 'a'), 100).await?;
    second.await??;
    assert_eq!(store.early_log_batches(), 0);
    // A third batch pushes the second out of the tail; the head stays.
    store.append_logs(a, &batch(10, 'c'), 100).await?;
    let seqs: Vec<i64> = store
        .read_logs(a, -1, 100)
        .await?
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
    Ok(())
}

/// `job_detail` pipelines its reads on one connection: the job row must be read first, or
/// a job that ends between the reads comes back finished with its attempt still running.
/// Each job here is read in a loop while its attempt ends; with the attempts read before
/// the job (tried), some of the 100 came back that way.
#[tokio::test]
async fn a_job_read_with_its_attempts_is_never_newer_than_they_are() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    for _ in 0..100 {
        let (job, _) = store.submit(&spec(&["true"]), &policy(), None).await?;
        let a = claim_one(&store, "w1", LEASE).await?;
        let ending = tokio::spawn({
            let store = store.clone();
            async move { store.end_attempt(a, &end(RawResult::Exited(0))).await }
        });
        loop {
            let d = store
                .job_detail(job.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("job {} not found", job.id))?;
            let running = d.attempts.iter().any(|a| a.state == AttemptState::Running);
            assert!(
                !(d.job.state == JobState::Succeeded && running),
                "job {} read as succeeded with its attempt running",
                job.id
            );
            if d.job.state == JobState::Succeeded {
                break;
            }
        }
        ending.await??;
    }
    Ok(())
}

#[tokio::test]
async fn retry_job_makes_a_new_job_linked_to_the_old() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let (job, _) = store.submit(&spec(&["false"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let e = store
        .end_attempt(a, &end(RawResult::SpawnError("no such file".into())))
        .await?;
    assert_eq!(e.job_state, JobState::PermanentFailed);
    let new = store.retry_job(job.id, &Default::default()).await?;
    assert_ne!(new.id, job.id);
    assert_eq!(new.state, JobState::Pending);
    assert_eq!(new.retry_of, Some(job.id));
    let old = store
        .job_detail(job.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {} not found", job.id))?;
    assert_eq!(old.retried_by, vec![new.id]);
    assert!(store.job_detail(Uuid::new_v4()).await?.is_none());
    assert_eq!(
        kind(store.retry_job(Uuid::new_v4(), &Default::default()).await),
        ErrorKind::NotFound
    );
    Ok(())
}

/// Stored states are guarded by the database itself (V1, V13, V24), not only by the code
/// that writes them.
#[tokio::test]
async fn the_database_refuses_states_outside_their_set() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    let (job, _) = store.submit(&spec(&["true"]), &policy(), None).await?;
    let a = claim_one(&store, "w1", LEASE).await?;
    let db = tdb.client().await?;
    let refused = |r: Result<u64, tokio_postgres::Error>| {
        let e = r.expect_err("a value outside the set was stored");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{e}"
        );
    };
    refused(
        db.execute(
            "UPDATE jobs SET state = 'offline' WHERE id = $1",
            &[&job.id],
        )
        .await,
    );
    refused(
        db.execute("UPDATE attempts SET state = 'done' WHERE id = $1", &[&a])
            .await,
    );
    refused(
        db.execute(
            "INSERT INTO api_tokens (id, name, role, token_hash) \
             VALUES ($1, 'x', 'root', '\\x00')",
            &[&Uuid::new_v4()],
        )
        .await,
    );
    refused(
        db.execute(
            "INSERT INTO log_chunks (attempt_id, seq, stream, time, data) \
             VALUES ($1, 0, 3, now(), '\\x00')",
            &[&a],
        )
        .await,
    );
    // Nothing changed.
    assert_eq!(
        store.get_job(job.id).await?.map(|j| j.state),
        Some(JobState::Running)
    );
    Ok(())
}

/// The coordinator's source files under `coordinator/src`, `store` included or not.
fn coordinator_sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read coordinator/src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            coordinator_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs" || x == "sql") {
            out.push(p);
        }
    }
}

/// Every statement file parses and plans against the migrated schema (PREPARE), and each
/// is used: named by an `include_str!` in the store.
#[tokio::test]
async fn every_sql_file_prepares_and_is_used() -> anyhow::Result<()> {
    let (tdb, _store) = store().await?;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/src");
    let mut files = Vec::new();
    coordinator_sources(&src.join("store"), &mut files);
    let code: String = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .chain(std::iter::once(&src.join("store.rs")))
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    let sql_dir = src.join("store/sql");
    let db = tdb.client().await?;
    let mut n = 0;
    for p in files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
    {
        let name = p.strip_prefix(&sql_dir)?.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(p)?;
        db.prepare(&text)
            .await
            .map_err(|e| anyhow::anyhow!("sql/{name} does not prepare: {e:?}"))?;
        anyhow::ensure!(
            code.contains(&format!("sql/{name}\")")),
            "sql/{name} is not included by any store module"
        );
        n += 1;
    }
    anyhow::ensure!(n > 100, "only {n} statement files found");
    Ok(())
}

/// SQL text appears only in the store; outside it, only the advisory locks taken on
/// dedicated connections (db.rs, leader.rs, alerts.rs) and LISTEN commands.
#[test]
fn no_sql_outside_the_store() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/src");
    let mut files = Vec::new();
    coordinator_sources(&src, &mut files);
    let mut found = Vec::new();
    for p in files.iter().filter(|p| {
        p.extension().is_some_and(|x| x == "rs")
            && !p.starts_with(src.join("store"))
            && *p != &src.join("store.rs")
    }) {
        let text = std::fs::read_to_string(p).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let hit = [
                "\"SELECT ",
                "\"INSERT ",
                "\"UPDATE ",
                "\"DELETE ",
                "\"WITH ",
            ]
            .iter()
            .any(|k| line.contains(k));
            if hit && !line.contains("advisory_") {
                found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside the store:\n{}",
        found.join("\n")
    );
}
/// Reads a counter from the process's metrics exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn results_arriving_together_share_a_transaction_and_are_judged_alone() -> anyhow::Result<()>
{
    let metrics = drover_coordinator::metrics::install()
        .ok_or_else(|| anyhow::anyhow!("no metrics recorder"))?;
    let (tdb, store) = store().await?;
    tdb.want_outbox_events().await?;
    for _ in 0..24 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    let claimed = claim(&store, "w1", 24, 24).await?.jobs;
    assert_eq!(claimed.len(), 24);
    // One result already taken: sending it again is stale.
    let stale = claimed[0].attempt_id;
    store.end_attempt(stale, &end(RawResult::Exited(0))).await?;
    let groups_before = counter(&metrics.render(), "drover_finish_groups_total");

    // Every other result at once (queued before the group writer runs: this test's
    // runtime has one thread), with the stale one, and one result sent twice. Every third
    // job fails and is retried (max_retries 1).
    let outcome = |i: usize| if i % 3 == 1 { 1 } else { 0 };
    let mut sends: Vec<(Uuid, i32)> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| (c.attempt_id, outcome(i)))
        .collect();
    let twice = claimed[5].attempt_id;
    sends.push((twice, 1));
    let requests: Vec<EndRequest> = sends
        .iter()
        .map(|&(_, code)| end(RawResult::Exited(code)))
        .collect();
    let results = futures::future::join_all(
        sends
            .iter()
            .zip(&requests)
            .map(|(&(a, _), req)| store.end_attempt(a, req)),
    )
    .await;

    let text = metrics.render();
    let groups = counter(&text, "drover_finish_groups_total") - groups_before;
    assert!(
        groups < sends.len() as f64,
        "{} results took {groups} transactions: no group formed",
        sends.len()
    );
    for (i, ((attempt, code), r)) in sends.iter().zip(&results).enumerate() {
        let c = claimed
            .iter()
            .find(|c| c.attempt_id == *attempt)
            .expect("claimed");
        if *attempt == stale {
            assert!(
                matches!(r, Err(e) if e.kind() == ErrorKind::FailedPrecondition),
                "{r:?}"
            );
        } else if *attempt == twice && i == sends.len() - 1 {
            // The repeat is judged after the first result was applied.
            assert!(
                matches!(r, Err(e) if e.kind() == ErrorKind::FailedPrecondition),
                "{r:?}"
            );
        } else {
            let e = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            let want = if *code == 0 {
                JobState::Succeeded
            } else {
                JobState::Pending
            };
            assert_eq!((e.job_id, e.job_state), (c.job_id, want));
            let job = store.get_job(c.job_id).await?.expect("job");
            assert_eq!(job.state, want);
            assert_eq!(job.current_attempt_id, None);
            let attempts = store.list_attempts(c.job_id).await?;
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].exit_code, Some(*code));
        }
        // Exactly one end event per job: none for the refused results.
        let ev = events(&tdb, c.job_id).await?;
        assert_eq!(ev.len(), 2, "{ev:?}");
    }
    Ok(())
}

#[tokio::test]
async fn submits_arriving_together_share_a_transaction_and_keep_their_keys() -> anyhow::Result<()> {
    use drover_coordinator::store::batch::BatchItem;
    let metrics = drover_coordinator::metrics::install()
        .ok_or_else(|| anyhow::anyhow!("no metrics recorder"))?;
    let (_db, store) = store().await?;
    let item = |argv: &[&str], key: Option<&str>| {
        let mut s = spec(argv);
        s.idempotency_key = key.map(String::from);
        BatchItem {
            spec: s,
            policy: policy(),
            flow: Default::default(),
            trace_parent: None,
        }
    };
    let mut items: Vec<BatchItem> = (0..10).map(|_| item(&["true"], None)).collect();
    items.push(item(&["true"], Some("k")));
    items.push(item(&["true"], Some("k")));
    items.push(item(&["false"], Some("k")));
    let groups_before = counter(&metrics.render(), "drover_submit_groups_total");
    let results =
        futures::future::join_all(items.into_iter().map(|i| store.submit_grouped(i))).await;
    let groups = counter(&metrics.render(), "drover_submit_groups_total") - groups_before;
    assert!(groups < 13.0, "13 submits took {groups} transactions");

    let mut ids = std::collections::HashSet::new();
    for r in &results[..10] {
        let (job, created) = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(created);
        assert!(ids.insert(job.id));
    }
    // The key's first submit creates the job; an equal one gets it; a different one is
    // refused, naming the job.
    let (first, created) = results[10].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(created);
    let (again, created) = results[11].as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!((again.id, *created), (first.id, false));
    match &results[12] {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::AlreadyExists);
            assert!(e.to_string().contains(&first.id.to_string()), "{e}");
        }
        Ok(r) => panic!("a different spec under a used key was stored: {r:?}"),
    }
    assert_eq!(
        store.jobs_by_state().await?,
        vec![("pending".to_string(), 11)]
    );
    Ok(())
}

#[tokio::test]
async fn the_per_job_pool_plans_once_and_keeps_the_urls_own_options() -> anyhow::Result<()> {
    let tdb = TestDb::new().await?;
    let show = |pool: deadpool_postgres::Pool| async move {
        let c = pool.get().await?;
        let mode: String = c.query_one("SHOW plan_cache_mode", &[]).await?.try_get(0)?;
        let tz: String = c.query_one("SHOW TimeZone", &[]).await?.try_get(0)?;
        anyhow::Ok((mode, tz))
    };
    let (mode, _) = show(db::hot_pool(&tdb.url)?).await?;
    assert_eq!(mode, "force_generic_plan");
    // The main pool is left to choose per execution.
    let (mode, _) = show(db::pool(&tdb.url, 2)?).await?;
    assert_eq!(mode, "auto");
    // Options already in the URL are kept beside the added one.
    let sep = if tdb.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20TimeZone%3DAsia%2FTokyo", tdb.url);
    let (mode, tz) = show(db::hot_pool(&url)?).await?;
    assert_eq!(
        (mode.as_str(), tz.as_str()),
        ("force_generic_plan", "Asia/Tokyo")
    );
    Ok(())
}

/// On a new, empty database (no statistics yet) the per-job pool's generic plan for a
/// lookup by a list of ids must still be index probes: a plan made now is kept until an
/// ANALYZE, and a whole-table scan per result group is what a fresh install paid.
#[tokio::test]
async fn the_per_job_pool_plans_lookups_by_index_on_an_empty_database() -> anyhow::Result<()> {
    let tdb = TestDb::new().await?;
    db::migrate(&tdb.url).await?;
    let plan = |pool: deadpool_postgres::Pool| async move {
        let c = pool.get().await?;
        // (Generic plans forced here too, so the main pool's comparison plan is one.)
        c.batch_execute(
            "SET plan_cache_mode = force_generic_plan; \
             PREPARE lookup(uuid[]) AS SELECT a.id, j.queue FROM attempts a \
             JOIN jobs j ON j.id = a.job_id WHERE a.id = ANY($1) ORDER BY a.id \
             FOR UPDATE OF a, j",
        )
        .await?;
        let rows = c
            .query("EXPLAIN EXECUTE lookup('{}')", &[])
            .await?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        anyhow::Ok(rows.join("\n"))
    };
    let hot = plan(db::hot_pool(&tdb.url)?).await?;
    assert!(
        hot.contains("Index") && !hot.contains("Seq Scan") && !hot.contains("Hash Join"),
        "{hot}"
    );
    // The reason for the settings: left to the statistics, the same plan scans whole tables.
    let main = plan(db::pool(&tdb.url, 1)?).await?;
    assert!(main.contains("Seq Scan"), "{main}");
    Ok(())
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of a statement prepared (`prepare`: "name(types) AS
/// sql") and executed (`execute`: "name(args)") on a connection of the per-job pool, so
/// planned as in production; in a transaction rolled back after.
async fn explain_on_hot_pool(
    url: &str,
    prepare: &str,
    execute: &str,
) -> anyhow::Result<serde_json::Value> {
    let hot = db::hot_pool(url)?.get().await?;
    hot.batch_execute(&format!("BEGIN; PREPARE {prepare}"))
        .await?;
    let plan = hot
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {execute}"),
            &[],
        )
        .await?
        .try_get(0)?;
    hot.batch_execute("ROLLBACK").await?;
    Ok(plan)
}

/// Every scan of `jobs` in an explained plan: the index it used and the rows it read and
/// dropped.
fn jobs_scans(plan: &serde_json::Value) -> Vec<(String, i64)> {
    fn walk(node: &serde_json::Value, out: &mut Vec<(String, i64)>) {
        if node["Relation Name"] == "jobs" {
            let index = node["Index Name"].as_str().unwrap_or("(none)").to_string();
            out.push((index, node["Rows Removed by Filter"].as_i64().unwrap_or(0)));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(&plan[0]["Plan"], &mut out);
    out
}

/// The plain claim (jobs without concurrency keys) reads no keyed pending job. Behind a
/// backlog of keyed jobs it used to walk every one of them and keep none: 2.5 ms a claim
/// with 10 000 pending in the benchmark. Its index now holds only jobs it can take.
#[tokio::test]
async fn the_plain_claim_reads_no_keyed_pending_job() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    const KEYED: i64 = 50;
    for _ in 0..KEYED {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    let c = tdb.client().await?;
    c.execute("UPDATE jobs SET concurrency_keys = '{site}'", &[])
        .await?;
    c.execute("ANALYZE jobs", &[]).await?;
    // The claim statement itself, planned as in production, run and rolled back.
    let claim = include_str!("../../coordinator/src/store/sql/jobs/claim.sql");
    let plan = explain_on_hot_pool(
        &tdb.url,
        &format!("plain_claim(text[], text[], text[], int8[], int8[], float8, int8[]) AS {claim}"),
        "plain_claim('{default}', '{}', '{w1}', '{8}', '{8}', 8000, '{0}')",
    )
    .await?;
    let found = jobs_scans(&plan);
    assert!(
        found
            .iter()
            .any(|(index, _)| index == "jobs_pending_plain_idx"),
        "{found:?}"
    );
    let dropped: i64 = found.iter().map(|(_, n)| n).sum();
    assert_eq!(
        dropped, 0,
        "keyed jobs read and dropped by the plain claim: {found:?}"
    );
    let keyed: i64 = c
        .query_one("SELECT count(*) FROM jobs WHERE state = 'pending'", &[])
        .await?
        .try_get(0)?;
    assert_eq!(keyed, KEYED, "the claim was rolled back");
    Ok(())
}

/// The dispatcher's next-due lookup (its timer while workers wait) probes the pending
/// indexes from now on, per queue: the due jobs of a backlog are never read. Over all queues
/// at once it walked every pending job's entry, 1.7 ms a call with 50 000 pending, and an
/// idle worker on another queue made every dispatch round run it.
#[tokio::test]
async fn the_next_due_lookup_reads_no_due_job() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    let (job, _) = store.submit(&spec(&["true"]), &policy(), None).await?;
    let c = tdb.client().await?;
    // 5 000 due jobs (copies of the first), and one due in an hour.
    c.execute(
        "INSERT INTO jobs SELECT r.* FROM jobs t, \
           (SELECT gen_random_uuid() AS id FROM generate_series(1, 5000)) n, \
           LATERAL jsonb_populate_record(t, jsonb_build_object('id', n.id, 'idempotency_key', NULL)) r \
         WHERE t.id = $1",
        &[&job.id],
    )
    .await?;
    let later: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "UPDATE jobs SET not_before = now() + interval '1 hour' WHERE id = $1 \
             RETURNING not_before",
            &[&job.id],
        )
        .await?
        .try_get(0)?;
    c.execute("ANALYZE jobs", &[]).await?;
    assert_eq!(store.next_due(&["default".into()]).await?, Some(later));

    let next_due = include_str!("../../coordinator/src/store/sql/jobs/next_due.sql");
    let plan = explain_on_hot_pool(
        &tdb.url,
        &format!("next_due(text[]) AS {next_due}"),
        "next_due('{default}')",
    )
    .await?;
    let found = jobs_scans(&plan);
    assert!(
        found
            .iter()
            .all(|(index, _)| index.starts_with("jobs_pending_")),
        "{found:?}"
    );
    // Each probe returns at most its one row, reading none it drops.
    let dropped: i64 = found.iter().map(|(_, n)| n).sum();
    assert_eq!(dropped, 0, "{found:?}");
    let blocks = plan[0]["Plan"]["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + plan[0]["Plan"]["Shared Read Blocks"].as_i64().unwrap_or(0);
    assert!(blocks < 20, "{blocks} blocks read for one due time: {plan}");
    Ok(())
}

/// A lease renewal locks its attempts in id order, the order the result group locks them
/// in; in any other order the two could each hold a row the other waits for (a deadlock,
/// seen in the benchmark: both stalled for deadlock_timeout, then one failed). Here the
/// lowest id is held elsewhere: a renewal that waits for it must hold none of the others.
#[tokio::test]
async fn lease_renewal_locks_its_attempts_in_id_order() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    const N: usize = 12;
    for _ in 0..N {
        store
            .submit(&spec(&["sleep", "9"]), &policy(), None)
            .await?;
    }
    let leased = claim(&store, "w1", N as i64, N as i64).await?.jobs;
    let mut ids: Vec<Uuid> = leased.iter().map(|j| j.attempt_id).collect();
    assert_eq!(ids.len(), N);
    // Claimed (and so stored) in job order; the attempt ids are random against it.
    let in_store_order = ids.clone();
    ids.sort();
    let lowest = ids[0];

    let holder = tdb.client().await?;
    holder.batch_execute("BEGIN").await?;
    holder
        .execute(
            "SELECT 1 FROM attempts WHERE id = $1 FOR UPDATE",
            &[&lowest],
        )
        .await?;
    let renewing = {
        let store = store.clone();
        let ids = in_store_order.clone();
        tokio::spawn(async move { store.heartbeat("w1", &ids, LEASE, None).await })
    };
    let probe = tdb.client().await?;
    let mut waiting = false;
    for _ in 0..400 {
        let n: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE '%lease_expires_at%'",
                &[],
            )
            .await?
            .try_get(0)?;
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the renewal never waited for the held attempt");
    for id in &ids[1..] {
        probe.batch_execute("BEGIN").await?;
        let taken = probe
            .query(
                "SELECT 1 FROM attempts WHERE id = $1 FOR UPDATE NOWAIT",
                &[id],
            )
            .await;
        probe.batch_execute("ROLLBACK").await?;
        assert!(
            taken.is_ok(),
            "the renewal held attempt {id} while waiting for {lowest}: {taken:?}"
        );
    }
    holder.batch_execute("ROLLBACK").await?;
    let hb = renewing.await??;
    assert!(hb.stale.is_empty() && hb.cancel.is_empty(), "{hb:?}");
    Ok(())
}

/// Every foreign key has an index that starts with its columns (a partial one only if it
/// leaves out just NULLs). Deleting a referenced row makes PostgreSQL find the rows that
/// point at it; without an index that is a scan of the referencing table per deleted row.
/// `jobs.current_attempt_id` had none: retention deletes attempts by the thousand, each
/// deletion scanned all of `jobs`, and in the soak retention fell behind (a batch took
/// over 40 s with 140 000 jobs) while the database kept growing.
#[tokio::test]
async fn every_foreign_key_has_an_index() -> anyhow::Result<()> {
    let tdb = TestDb::new().await?;
    db::migrate(&tdb.url).await?;
    let c = tdb.client().await?;
    let keys: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0",
            &[],
        )
        .await?
        .try_get(0)?;
    // The check below means something only if there are keys to check.
    assert!(keys >= 10, "only {keys} foreign keys in the schema");
    let missing = c
        .query(
            "SELECT c.conrelid::regclass::text || '.' || c.conname
               FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conparentid = 0
                AND NOT EXISTS (
                    SELECT 1 FROM pg_index i,
                           LATERAL (SELECT (string_to_array(i.indkey::text, ' ')::int2[])
                                           [1:cardinality(c.conkey)] AS lead) k
                     WHERE i.indrelid = c.conrelid
                       AND k.lead @> c.conkey AND c.conkey @> k.lead
                       AND (i.indpred IS NULL
                            OR pg_get_expr(i.indpred, i.indrelid) LIKE '%IS NOT NULL%'))
              ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    assert!(
        missing.is_empty(),
        "foreign keys without an index: {missing:?}"
    );
    Ok(())
}

/// Submitting a job with a concurrency key that exists, with the same settings, leaves the
/// key's row unlocked: claims and results that take the key do not wait for the submit's
/// commit. (The old upsert, `ON CONFLICT DO UPDATE ... WHERE`, locked the row even when it
/// changed nothing, and keyed submits deadlocked with claims and results.) New keys are
/// still made, and changed settings still written.
#[tokio::test]
async fn submitting_an_existing_key_unchanged_does_not_lock_it() -> anyhow::Result<()> {
    let (tdb, _store) = store().await?;
    let upsert = include_str!("../../coordinator/src/store/sql/flow/upsert_keys.sql");
    let a = tdb.client().await?;
    let b = tdb.client().await?;
    let none: Vec<Option<f64>> = vec![None];
    // Made by the first submit.
    a.execute(upsert, &[&vec!["site"], &vec![2i32], &none, &none])
        .await?;
    // Submitted again, unchanged, by a transaction still open...
    a.batch_execute("BEGIN").await?;
    a.execute(
        upsert,
        &[
            &vec!["site", "new"],
            &vec![2i32, 3],
            &vec![None::<f64>; 2],
            &vec![None::<f64>; 2],
        ],
    )
    .await?;
    // ... while a claim takes the key: it must not have to wait.
    let taken = b
        .query(
            "SELECT running FROM concurrency_keys WHERE key = 'site' FOR UPDATE NOWAIT",
            &[],
        )
        .await;
    assert!(
        taken.is_ok(),
        "the key's row is locked by a submit that changed nothing: {taken:?}"
    );
    a.batch_execute("COMMIT").await?;
    let limits: Vec<(String, i32)> = b
        .query(
            "SELECT key, max_running FROM concurrency_keys ORDER BY key",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(limits, vec![("new".into(), 3), ("site".into(), 2)]);
    // A changed limit is written.
    a.execute(upsert, &[&vec!["site"], &vec![5i32], &none, &none])
        .await?;
    let limit: i32 = b
        .query_one(
            "SELECT max_running FROM concurrency_keys WHERE key = 'site'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(limit, 5);
    Ok(())
}

/// The keyed claim's candidate scan, planned as the store runs it (once, generically, on a
/// connection of the per-job pool, from statistics taken while the table was empty), reads
/// pending keyed jobs through their own index and nothing else. On the main pool the
/// benchmark caught it reading all of `jobs` and sorting the pending keyed ones (12–25 ms
/// a claim); the statement and the partial index must keep matching for this plan.
#[tokio::test]
async fn the_keyed_candidate_scan_reads_only_pending_keyed_jobs() -> anyhow::Result<()> {
    let (tdb, store) = store().await?;
    let c = tdb.client().await?;
    // Statistics of an empty table, then 200 jobs: 150 finished, 50 keyed and pending.
    c.execute("ANALYZE jobs", &[]).await?;
    for _ in 0..200 {
        store.submit(&spec(&["true"]), &policy(), None).await?;
    }
    c.batch_execute(
        "UPDATE jobs SET state = 'succeeded' \
          WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 150); \
         UPDATE jobs SET concurrency_keys = '{site}' WHERE state = 'pending'",
    )
    .await?;
    let scan = include_str!("../../coordinator/src/store/sql/flow/keyed_candidates.sql");
    let plan = explain_on_hot_pool(
        &tdb.url,
        &format!("keyed(text[], text[], int8) AS {scan}"),
        "keyed('{default}', '{}', 32)",
    )
    .await?;
    let found = jobs_scans(&plan);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "jobs_pending_keyed_idx", "{found:?}");
    assert_eq!(found[0].1, 0, "rows read and dropped: {found:?}");
    let rows = plan[0]["Plan"]["Actual Rows"].as_i64().unwrap_or(-1);
    assert_eq!(rows, 32, "the 32 oldest of the 50 keyed pending jobs");
    Ok(())
}

/// A pooled connection goes back out without a round trip when it was used a moment
/// ago, and is first checked with an empty query when it sat idle (`db::VERIFY_IDLE_AFTER`;
/// here the two ends, never and always, so nothing depends on timing). The check is seen
/// as the backend's last statement in `pg_stat_activity`. A checked connection whose
/// backend is gone is replaced, not handed out.
#[tokio::test]
async fn a_pooled_connection_is_checked_before_reuse_only_after_sitting_idle() -> anyhow::Result<()>
{
    let tdb = TestDb::new().await?;
    let watcher = tdb.client().await?;
    let last_statement = |pid: i32| {
        let watcher = &watcher;
        async move {
            let row = watcher
                .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        }
    };
    for (idle, checked) in [(Duration::MAX, false), (Duration::ZERO, true)] {
        let pool = db::pool_verifying_after(&tdb.url, 1, idle)?;
        let c = pool.get().await?;
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid() /* first use */", &[])
            .await?
            .get(0);
        drop(c);
        let c = pool.get().await?;
        let again: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        assert_eq!(again, pid, "a pool of one hands out the same connection");
        drop(c);
        // The statement before the last checkout tells whether the checkout ran the check.
        let c = pool.get().await?;
        let seen = last_statement(pid).await?;
        if checked {
            assert_eq!(seen, "", "an idle connection is checked before reuse");
        } else {
            assert_eq!(
                seen, "SELECT pg_backend_pid()",
                "a connection used a moment ago goes out unchecked"
            );
        }
        drop(c);
        if !checked {
            continue;
        }

        // The backend goes away: the next checkout gets a working connection.
        watcher
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await?;
        let gone = async {
            loop {
                let n = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                        &[&pid],
                    )
                    .await?
                    .get::<_, i64>(0);
                if n == 0 {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone).await??;
        let c = pool.get().await?;
        let fresh: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        assert_ne!(
            fresh, pid,
            "a connection whose backend is gone is not reused"
        );
    }
    Ok(())
}
