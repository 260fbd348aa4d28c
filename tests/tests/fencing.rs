//! Lease fencing, log idempotency and transactional state changes, checked by speaking
//! the WorkerService protocol directly as a worker that misbehaves on purpose.

use drover_tests::v1 as pb;
use drover_tests::*;
use pb::session_request::Msg as Out;
use pb::session_response::Msg as In;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

/// A coordinator whose leases outlive any test: a fake worker that heartbeats once keeps
/// its attempt running until it reports.
fn long_lease() -> CoordinatorOpts {
    CoordinatorOpts {
        lease_ttl_ms: 600_000,
        ..Default::default()
    }
}

/// Makes every insert into the outbox fail, until [`mend_outbox`].
async fn break_outbox(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    db.batch_execute(
        "CREATE OR REPLACE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$; \
         CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox \
           FOR EACH ROW EXECUTE FUNCTION fail_outbox();",
    )
    .await?;
    Ok(())
}

async fn mend_outbox(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    db.batch_execute("DROP TRIGGER fail_outbox ON outbox")
        .await?;
    Ok(())
}

/// A hand-driven worker session.
struct FakeWorker {
    tx: mpsc::UnboundedSender<pb::SessionRequest>,
    inbound: tonic::Streaming<pb::SessionResponse>,
    api: WorkersClient,
}

impl FakeWorker {
    async fn connect(addr: &str, id: &str) -> anyhow::Result<FakeWorker> {
        let mut api = workers(addr).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::SessionRequest {
            msg: Some(Out::Hello(pb::Hello {
                worker_id: id.into(),
                hostname: "test".into(),
                queues: vec!["default".into()],
                slots: 1,
                free_slots: 1,
                protocol_version: drover_core::protocol::CURRENT,
                ..Default::default()
            })),
        })?;
        let mut inbound = api
            .session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await?.and_then(|m| m.msg) {
            Some(In::Welcome(_)) => {}
            other => anyhow::bail!("expected welcome, got {other:?}"),
        }
        Ok(FakeWorker { tx, inbound, api })
    }

    async fn next(&mut self) -> anyhow::Result<In> {
        tokio::time::timeout(PATIENCE, self.inbound.message())
            .await??
            .and_then(|m| m.msg)
            .ok_or_else(|| anyhow::anyhow!("session ended"))
    }

    async fn assignment(&mut self) -> anyhow::Result<pb::Assignment> {
        loop {
            if let In::Assign(a) = self.next().await? {
                return Ok(a);
            }
        }
    }

    fn heartbeat(&self, attempts: &[&str]) -> anyhow::Result<()> {
        self.tx.send(pb::SessionRequest {
            msg: Some(Out::Heartbeat(pb::Heartbeat {
                running_attempts: attempts.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
        })?;
        Ok(())
    }

    async fn append(&mut self, attempt: &str, seq: u64, data: &[u8]) -> Result<(), tonic::Status> {
        self.api
            .append_logs(pb::AppendLogsRequest {
                attempt_id: attempt.into(),
                chunks: vec![pb::LogChunk {
                    seq,
                    stream: pb::LogStream::Stdout as i32,
                    data: data.to_vec(),
                    ..Default::default()
                }],
            })
            .await
            .map(|_| ())
    }

    async fn finish(
        &mut self,
        attempt: &str,
        code: i32,
        chunks: u64,
    ) -> Result<pb::FinishAttemptResponse, tonic::Status> {
        self.api
            .finish_attempt(pb::FinishAttemptRequest {
                attempt_id: attempt.into(),
                result: Some(pb::finish_attempt_request::Result::Exited(pb::ExitStatus {
                    code: Some(code),
                    signal: None,
                })),
                output_tail: Vec::new(),
                log_chunk_count: chunks,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Offers one more free slot, as a worker does after a job ends.
    fn credit(&self) -> anyhow::Result<()> {
        self.tx.send(pb::SessionRequest {
            msg: Some(Out::Credit(pb::Credit { slots: 1 })),
        })?;
        Ok(())
    }

    /// Uploads `data` as artifact `name` of `attempt`, with the header's size and digest.
    async fn upload(
        &mut self,
        attempt: &str,
        name: &str,
        size: u64,
        sha256: &str,
        data: &[u8],
    ) -> Result<(), tonic::Status> {
        use pb::upload_artifact_request::Part;
        let parts = vec![
            pb::UploadArtifactRequest {
                part: Some(Part::Header(pb::ArtifactHeader {
                    attempt_id: attempt.into(),
                    name: name.into(),
                    size,
                    sha256: sha256.into(),
                })),
            },
            pb::UploadArtifactRequest {
                part: Some(Part::Data(data.to_vec())),
            },
        ];
        self.api
            .upload_artifact(tokio_stream::iter(parts))
            .await
            .map(|_| ())
    }
}

#[tokio::test]
async fn stale_lease_reports_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        lease_ttl_ms: 1_500,
        heartbeat_interval_ms: 300,
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let mut api = jobs(&addr).await?;
    let mut old = FakeWorker::connect(&addr, "partitioned").await?;
    let job = submit(&mut api, sh("echo real")).await?;
    let a1 = old.assignment().await?;

    // The old worker goes silent; its lease expires and the attempt is lost.
    wait_for(&mut api, &job.id, "attempt 1 lost", |_, a| {
        a.first().map(|a| a.state) == Some(pb::AttemptState::Lost as i32)
    })
    .await?;
    let mut new = FakeWorker::connect(&addr, "replacement").await?;
    let a2 = new.assignment().await?;
    assert_ne!(a1.attempt_id, a2.attempt_id);
    let keepalive = {
        let tx = new.tx.clone();
        let id = a2.attempt_id.clone();
        tokio::spawn(async move {
            loop {
                let _ = tx.send(pb::SessionRequest {
                    msg: Some(Out::Heartbeat(pb::Heartbeat {
                        running_attempts: vec![id.clone()],
                        ..Default::default()
                    })),
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The partitioned worker comes back and reports with its stale token.
    let e = old
        .append(&a1.attempt_id, 0, b"late output")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = old.finish(&a1.attempt_id, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no longer"), "{}", e.message());
    // Its heartbeat for the stale attempt is answered with an order to stop.
    old.heartbeat(&[&a1.attempt_id])?;
    loop {
        if let In::Stop(s) = old.next().await? {
            assert_eq!(s.attempt_id, a1.attempt_id);
            assert_eq!(s.code, Code::FailedPrecondition as i32);
            break;
        }
    }

    let (job_now, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(job_now.state, pb::JobState::Running as i32);
    assert_eq!(job_now.current_attempt_id, a2.attempt_id);
    assert_eq!(attempts[0].state, pb::AttemptState::Lost as i32);
    let db = cl.db.client().await?;
    let a1_id: uuid::Uuid = a1.attempt_id.parse()?;
    let stale_chunks: i64 = db
        .query_one(
            "SELECT count(*) FROM log_chunks WHERE attempt_id = $1",
            &[&a1_id],
        )
        .await?
        .get(0);
    assert_eq!(stale_chunks, 0);

    // The current attempt: a re-sent chunk is stored once.
    new.append(&a2.attempt_id, 0, b"hello ").await?;
    new.append(&a2.attempt_id, 0, b"hello ").await?;
    new.append(&a2.attempt_id, 1, b"world").await?;
    // A result claiming more chunks than were stored is refused until they arrive.
    let e = new.finish(&a2.attempt_id, 0, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let r = new.finish(&a2.attempt_id, 0, 2).await?;
    assert_eq!(r.state, pb::AttemptState::Succeeded as i32);
    keepalive.abort();

    let (out, _, chunks) = logs(&mut api, &job.id, 0).await?;
    assert_eq!(out, b"hello world");
    assert_eq!(chunks.len(), 2);

    // Nothing can overwrite a finished result: not the old worker, not a repeat.
    let e = old.finish(&a1.attempt_id, 1, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = new.finish(&a2.attempt_id, 1, 2).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (job_now, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(job_now.state, pb::JobState::Succeeded as i32);
    assert_eq!(attempts[1].state, pb::AttemptState::Succeeded as i32);
    Ok(())
}

#[tokio::test]
async fn a_state_change_and_what_it_implies_commit_together_or_not_at_all() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    cl.db.want_outbox_events().await?;
    // The fake worker heartbeats once: a lease far longer than the test keeps the attempt
    // running until the finish, however slow the machine.
    let (_c, addr) = cl.coordinator("coord", &long_lease())?;
    let mut api = jobs(&addr).await?;
    let mut w = FakeWorker::connect(&addr, "fake").await?;
    let job = submit(&mut api, sh("exit 1")).await?;
    let a = w.assignment().await?;
    w.heartbeat(&[&a.attempt_id])?;

    let db = cl.db.client().await?;
    let events_before: i64 = db
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    // Make the outbox insert fail: the whole transition must roll back.
    break_outbox(&db).await?;
    let e = w.finish(&a.attempt_id, 1, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");

    let (j, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(j.state, pb::JobState::Running as i32);
    assert_eq!(attempts[0].state, pb::AttemptState::Running as i32);
    let failures: i32 = db
        .query_one("SELECT failure_count FROM jobs", &[])
        .await?
        .get(0);
    assert_eq!(failures, 0);

    mend_outbox(&db).await?;
    let r = w.finish(&a.attempt_id, 1, 0).await?;
    assert_eq!(r.state, pb::AttemptState::Failed as i32);
    let (j, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(attempts[0].state, pb::AttemptState::Failed as i32);
    assert!(
        j.state == pb::JobState::Pending as i32 || j.state == pb::JobState::Running as i32,
        "job should be scheduled for a retry: {j:?}"
    );
    let row = db
        .query_one(
            "SELECT failure_count, (SELECT count(*) FROM outbox) FROM jobs",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, i64>(1), events_before + 1);
    Ok(())
}

/// Jobs, attempts and outbox events, to show a refused change left no trace.
async fn counts(db: &tokio_postgres::Client) -> anyhow::Result<(i64, i64, i64)> {
    let r = db
        .query_one(
            "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM attempts), \
                    (SELECT count(*) FROM outbox)",
            &[],
        )
        .await?;
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}

#[tokio::test]
async fn submit_cancel_retry_and_rerun_commit_with_their_event_or_not_at_all() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    cl.db.want_outbox_events().await?;
    // No worker: the job stays pending until cancelled.
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let mut api = jobs(&addr).await?;
    let db = cl.db.client().await?;
    let mut s = spec(&["echo", "{x}"]);
    s.params.insert("x".into(), "1".into());
    let job = submit(&mut api, s.clone()).await?;

    // Submit.
    break_outbox(&db).await?;
    let before = counts(&db).await?;
    let e = submit(&mut api, s.clone()).await.unwrap_err();
    let e = e.downcast_ref::<tonic::Status>().map(|s| s.code());
    assert_eq!(e, Some(Code::Internal));
    assert_eq!(counts(&db).await?, before, "a refused submit left a trace");

    // Cancel of a pending job.
    let e = api
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert_eq!(counts(&db).await?, before);
    let (j, _) = get(&mut api, &job.id).await?;
    assert_eq!(j.state, pb::JobState::Pending as i32, "{j:?}");
    mend_outbox(&db).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: job.id.clone(),
        ..Default::default()
    })
    .await?;
    let (j, _) = get(&mut api, &job.id).await?;
    assert_eq!(j.state, pb::JobState::Cancelled as i32, "{j:?}");
    let (jobs_n, attempts_n, events) = counts(&db).await?;
    assert_eq!(
        (jobs_n, attempts_n, events),
        (before.0, before.1, before.2 + 1)
    );

    // Retry, rerun with a param replaced, and bulk retry of the cancelled job.
    break_outbox(&db).await?;
    let before = counts(&db).await?;
    let retry = |set: Option<&str>| pb::RetryJobRequest {
        id: job.id.clone(),
        set_params: set
            .map(|v| [("x".to_string(), v.to_string())].into())
            .unwrap_or_default(),
        ..Default::default()
    };
    let e = api.retry_job(retry(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "retry: {e:?}");
    let e = api.retry_job(retry(Some("2"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "rerun: {e:?}");
    let e = api
        .retry_jobs(pb::RetryJobsRequest {
            state: pb::JobState::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "bulk retry: {e:?}");
    assert_eq!(counts(&db).await?, before, "a refused retry left a trace");
    assert!(
        db.query_opt(
            "SELECT 1 FROM jobs WHERE original_job_id IS NOT NULL OR retry_of IS NOT NULL",
            &[]
        )
        .await?
        .is_none(),
        "a refused retry stored a job"
    );

    // The same calls succeed once the outbox works, each with its event.
    mend_outbox(&db).await?;
    api.retry_job(retry(None)).await?;
    api.retry_job(retry(Some("2"))).await?;
    let after = counts(&db).await?;
    assert_eq!(after, (before.0 + 2, before.1, before.2 + 2));
    Ok(())
}

#[tokio::test]
async fn the_database_refuses_a_second_running_attempt_of_a_job() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &long_lease())?;
    let mut api = jobs(&addr).await?;
    let mut w = FakeWorker::connect(&addr, "fake").await?;
    let job = submit(&mut api, sh("true")).await?;
    let a = w.assignment().await?;
    w.heartbeat(&[&a.attempt_id])?;

    let mut db = cl.db.client().await?;
    let insert = "INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at) \
                  VALUES (gen_random_uuid(), $1::text::uuid, 2, 'other', $2, \
                          now() + interval '1 minute')";
    let e = db
        .execute(insert, &[&job.id, &"running"])
        .await
        .expect_err("a second running attempt was stored");
    let dbe = e.as_db_error().expect("a database error");
    assert_eq!(
        *dbe.code(),
        tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
        "{dbe:?}"
    );
    assert_eq!(
        dbe.constraint(),
        Some("attempts_one_running_per_job"),
        "{dbe:?}"
    );
    // The same row in a finished state is accepted (then rolled back): the refusal above
    // is the index's, not a malformed row's.
    let tx = db.transaction().await?;
    tx.execute(insert, &[&job.id, &"lost"]).await?;
    tx.rollback().await?;

    let (j, attempts) = get(&mut api, &job.id).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(j.current_attempt_id, a.attempt_id);
    Ok(())
}

/// Files (not directories) under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn uploads_for_a_stale_attempt_or_with_a_wrong_size_or_digest_store_nothing(
) -> anyhow::Result<()> {
    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &long_lease())?;
    let mut api = jobs(&addr).await?;
    let mut w = FakeWorker::connect(&addr, "fake").await?;
    let job = submit(&mut api, sh("exit 1")).await?;
    let a1 = w.assignment().await?;
    w.heartbeat(&[&a1.attempt_id])?;
    w.finish(&a1.attempt_id, 1, 0).await?;
    w.credit()?;
    let a2 = w.assignment().await?;
    assert_eq!(a2.job_id, job.id);
    w.heartbeat(&[&a2.attempt_id])?;

    let db = cl.db.client().await?;
    let store = cl.path("artifacts");
    // The attempt that ended: its token no longer holds the lease.
    let e = w
        .upload(&a1.attempt_id, "out.txt", 5, HELLO_SHA256, b"hello")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The current attempt, with a header that does not match the content.
    let e = w
        .upload(&a2.attempt_id, "out.txt", 6, HELLO_SHA256, b"hello")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("received 5 bytes"), "{}", e.message());
    let e = w
        .upload(&a2.attempt_id, "out.txt", 5, &"0".repeat(64), b"hello")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(HELLO_SHA256), "{}", e.message());
    assert_eq!(artifact_rows(&db).await?, 0);
    assert_eq!(files_under(&store), Vec::<std::path::PathBuf>::new());

    // The matching upload from the current attempt is kept: the refusals were the checks'.
    w.upload(&a2.attempt_id, "out.txt", 5, HELLO_SHA256, b"hello")
        .await?;
    assert_eq!(artifact_rows(&db).await?, 1);
    let files = files_under(&store);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0])?, b"hello");
    Ok(())
}

async fn artifact_rows(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM artifacts", &[])
        .await?
        .try_get(0)?)
}

fn exited_ok(attempt: &str, return_slot: bool) -> pb::FinishAttemptRequest {
    pb::FinishAttemptRequest {
        attempt_id: attempt.into(),
        result: Some(pb::finish_attempt_request::Result::Exited(pb::ExitStatus {
            code: Some(0),
            signal: None,
        })),
        return_slot,
        ..Default::default()
    }
}

/// Whether the rows of attempts `ended` (its result) and `claimed` (its creation) were
/// written by the same transaction.
async fn written_together(
    db: &tokio_postgres::Client,
    ended: &str,
    claimed: &str,
) -> anyhow::Result<bool> {
    let r = db
        .query_one(
            "SELECT e.xmin::text = c.xmin::text FROM attempts e, attempts c \
              WHERE e.id::text = $1 AND c.id::text = $2",
            &[&ended, &claimed],
        )
        .await?;
    Ok(r.try_get(0)?)
}

/// A result sent with `return_slot` gives its slot back: the next job is claimed for it in
/// the result's own transaction and arrives without a Credit message. The response says
/// whether that happened: not when it was not asked for, nor from a coordinator that holds
/// no session of the worker (the worker then sends the Credit itself).
#[tokio::test]
async fn a_result_can_return_its_slot_in_place_of_a_credit() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &long_lease())?;
    let (_other, other_addr) = cl.coordinator("other", &long_lease())?;
    let mut api = jobs(&addr).await?;
    let mut w = FakeWorker::connect(&addr, "returns-slots").await?;

    let first = submit(&mut api, sh("true")).await?;
    let a1 = w.assignment().await?;
    assert_eq!(a1.job_id, first.id);
    let second = submit(&mut api, sh("true")).await?;
    let r = w
        .api
        .finish_attempt(exited_ok(&a1.attempt_id, true))
        .await?
        .into_inner();
    assert!(r.slot_returned, "{r:?}");
    // No Credit was sent: the worker's one slot came back with the result, and the next
    // job was claimed for it in the result's own transaction (one commit for both).
    let a2 = w.assignment().await?;
    assert_eq!(a2.job_id, second.id);
    let db = cl.db.client().await?;
    assert!(
        written_together(&db, &a1.attempt_id, &a2.attempt_id).await?,
        "the freed slot was claimed for in a transaction of its own"
    );

    // Not asked for: not returned, and the worker's Credit brings the next job.
    let third = submit(&mut api, sh("true")).await?;
    let r = w
        .api
        .finish_attempt(exited_ok(&a2.attempt_id, false))
        .await?
        .into_inner();
    assert!(!r.slot_returned, "{r:?}");
    w.credit()?;
    let a3 = w.assignment().await?;
    assert_eq!(a3.job_id, third.id);
    assert!(
        !written_together(&db, &a2.attempt_id, &a3.attempt_id).await?,
        "a slot not given back was claimed for with the result"
    );

    // Asked of a coordinator without the worker's session: stored, but not returned.
    let mut elsewhere = workers(&other_addr).await?;
    let r = elsewhere
        .finish_attempt(exited_ok(&a3.attempt_id, true))
        .await?
        .into_inner();
    assert!(!r.slot_returned, "{r:?}");
    let (job, _) = get(&mut api, &third.id).await?;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);

    // The same result sent again, asking for the slot again: refused as stale, so a worker
    // cannot mint credit by repeating results.
    let s = w
        .api
        .finish_attempt(exited_ok(&a1.attempt_id, true))
        .await
        .expect_err("a repeated result was taken");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    Ok(())
}
