//! Lease fencing, log idempotency and transactional state changes, checked by speaking
//! the WorkerService protocol directly as a worker that misbehaves on purpose.

use drover_tests::v1 as pb;
use drover_tests::*;
use pb::coordinator_message::Msg as In;
use pb::worker_message::Msg as Out;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;

/// A hand-driven worker session.
struct FakeWorker {
    tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
    api: WorkersClient,
}

impl FakeWorker {
    async fn connect(addr: &str, id: &str) -> anyhow::Result<FakeWorker> {
        let mut api = workers(addr).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::WorkerMessage {
            msg: Some(Out::Hello(pb::Hello {
                worker_id: id.into(),
                hostname: "test".into(),
                queues: vec!["default".into()],
                slots: 1,
                free_slots: 1,
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
        self.tx.send(pb::WorkerMessage {
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
                let _ = tx.send(pb::WorkerMessage {
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
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
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
    db.batch_execute(
        "CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$; \
         CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox \
           FOR EACH ROW EXECUTE FUNCTION fail_outbox();",
    )
    .await?;
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

    db.batch_execute("DROP TRIGGER fail_outbox ON outbox")
        .await?;
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
