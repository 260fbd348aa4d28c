//! Reading stored logs (for StreamLogs and the HTTP download); retention is in
//! [`crate::retention`].

use crate::convert;
use crate::error::Error;
use crate::log_watch::LogWatch;
use crate::store::{AttemptRow, Store};
use drover_core::logcap;
use drover_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;

/// A follower re-checks its job this often even without a notification (one may have been
/// missed while the LISTEN connection reconnected).
const FOLLOW_FALLBACK: Duration = Duration::from_secs(2);
const PAGE: i64 = 256;
/// Chunks (of at most 64 KiB) a stream holds for its client: the next ones are read from
/// the database only once the client has taken these, so an unread stream costs little.
pub const STREAM_BUFFER: usize = 4;

/// Chunks of one attempt after `cursor`, with a marker where the size cap dropped output.
/// Advances `cursor` to the last seq returned.
pub async fn next_chunks(
    store: &Store,
    attempt: &AttemptRow,
    cursor: &mut i64,
    cap: u64,
) -> Result<Vec<pb::LogChunk>, Error> {
    next_chunks_limit(store, attempt, cursor, cap, PAGE).await
}

/// [`next_chunks`], reading at most `limit` stored chunks (plus a possible cap marker).
async fn next_chunks_limit(
    store: &Store,
    attempt: &AttemptRow,
    cursor: &mut i64,
    cap: u64,
    limit: i64,
) -> Result<Vec<pb::LogChunk>, Error> {
    let stored = store.read_logs(attempt.id, *cursor, limit).await?;
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
///
/// `tx` must have a capacity of at least [`STREAM_BUFFER`]: chunks are read only when that
/// many places are free, i.e. when the client has taken what was sent before.
pub async fn follow(
    store: Store,
    watch: &Arc<LogWatch>,
    job_id: Uuid,
    attempt: u32,
    follow: bool,
    cap: u64,
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) -> Result<(), Error> {
    let mut cursors: HashMap<Uuid, i64> = HashMap::new();
    // Subscribed before the first read, so nothing written after it goes unnoticed; a
    // follower keeps the logs gate armed while it waits.
    let (mut news, _following) = if follow {
        let (rx, f) = watch.follow();
        (rx, Some(f))
    } else {
        (watch.subscribe(), None)
    };
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
                // Waits until the client has taken what it was sent (backpressure), or
                // returns if it went away.
                let Ok(permits) = tx.reserve_many(STREAM_BUFFER).await else {
                    return Ok(());
                };
                // One place is kept for a cap marker.
                let chunks =
                    next_chunks_limit(&store, a, cursor, cap, STREAM_BUFFER as i64 - 1).await?;
                if chunks.is_empty() {
                    break;
                }
                for (permit, c) in permits.zip(chunks) {
                    permit.send(Ok(c));
                }
            }
        }
        if !follow || terminal {
            return Ok(());
        }
        // Until this job has news (or the fallback re-check is due).
        let wait = tokio::time::sleep(FOLLOW_FALLBACK);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                n = news.recv() => match n {
                    Ok(id) if id == job_id || id == crate::log_watch::RESYNC => break,
                    Ok(_) => continue,
                    // Missed some: ours may be among them.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut wait).await;
                        break;
                    }
                },
                _ = &mut wait => break,
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
