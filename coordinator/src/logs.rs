//! Reading stored logs (for StreamLogs and the HTTP download) and deleting old ones.

use crate::artifacts::{key, BlobStore};
use crate::convert;
use crate::error::Error;
use crate::store::{AttemptRow, Store};
use drover_core::logcap;
use drover_proto::v1 as pb;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

/// How often a follower looks for new output. Reads hit the primary key; followers are few.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const PAGE: i64 = 256;

/// Chunks of one attempt after `cursor`, with a marker where the size cap dropped output.
/// Advances `cursor` to the last seq returned.
pub async fn next_chunks(
    store: &Store,
    attempt: &AttemptRow,
    cursor: &mut i64,
    cap: u64,
) -> Result<Vec<pb::LogChunk>, Error> {
    let stored = store.read_logs(attempt.id, *cursor, PAGE).await?;
    let mut out = Vec::with_capacity(stored.len() + 1);
    for c in stored {
        if c.seq > *cursor + 1 {
            out.push(pb::LogChunk {
                attempt_id: attempt.id.to_string(),
                attempt_number: attempt.number as u32,
                seq: (c.seq - 1) as u64,
                stream: pb::LogStream::Stderr as i32,
                data: logcap::marker(attempt.log_dropped_bytes.max(0) as u64, cap).into_bytes(),
                time: Some(convert::ts(c.time)),
            });
        }
        *cursor = c.seq;
        out.push(pb::LogChunk {
            attempt_id: attempt.id.to_string(),
            attempt_number: attempt.number as u32,
            seq: c.seq as u64,
            stream: i32::from(c.stream),
            data: c.data,
            time: Some(convert::ts(c.time)),
        });
    }
    Ok(out)
}

/// Sends a job's stored log in order; when following, keeps going until the job is
/// terminal. The job's state is read *before* each pass over the chunks: a worker finishes
/// an attempt only after its whole log is stored, so a pass that started after the job
/// was terminal has seen everything.
pub async fn follow(
    store: Store,
    job_id: Uuid,
    attempt: u32,
    follow: bool,
    cap: u64,
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) -> Result<(), Error> {
    let mut cursors: HashMap<Uuid, i64> = HashMap::new();
    loop {
        let terminal = store
            .get_job(job_id)
            .await?
            .map(|j| j.state.is_terminal())
            .unwrap_or(true);
        let attempts = store.list_attempts(job_id).await?;
        for a in attempts
            .iter()
            .filter(|a| attempt == 0 || a.number as u32 == attempt)
        {
            let cursor = cursors.entry(a.id).or_insert(-1);
            loop {
                let chunks = next_chunks(&store, a, cursor, cap).await?;
                if chunks.is_empty() {
                    break;
                }
                for c in chunks {
                    if tx.send(Ok(c)).await.is_err() {
                        return Ok(()); // client went away
                    }
                }
            }
        }
        if !follow || terminal {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Leader duty: deletes logs and artifacts of attempts that finished before the retention
/// period, a bounded batch at a time so it never holds long locks.
pub async fn purge_expired(
    store: &Store,
    blobs: &dyn BlobStore,
    retention: Duration,
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let (n, artifacts) = store.purge_logs(retention, 100).await?;
        for a in artifacts {
            // The record is gone; a file left behind by a failed delete is only disk space.
            if let Err(e) = blobs.delete(&key(a.job_id, a.attempt_id, &a.name)).await {
                tracing::warn!(error = %e, "could not delete expired artifact");
            }
        }
        total += n;
        if n < 100 {
            return Ok(total);
        }
    }
}
