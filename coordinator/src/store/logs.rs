//! Logs: appending chunks (with the size cap), reading them, the space they take, and
//! purging finished attempts' logs.

use super::artifacts::delete_for_attempts;
use super::{measured, millis, parse_state, stale, ArtifactRow, Cached, Store, StoredChunk};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use drover_core::logcap::{self, CapState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// How long a log batch that arrived before an earlier one of its attempt waits for it,
/// in all, before it is stored anyway (the earlier one was lost, or went to another
/// coordinator). Stored out of order, the cap's head and tail are approximate.
const EARLY_WAIT: Duration = Duration::from_secs(5);

/// How often an early batch looks again without being told: a commit on another
/// coordinator is not announced here.
const EARLY_RECHECK: Duration = Duration::from_millis(100);

/// Attempts with a log batch waiting for an earlier one. The waiter subscribes while it
/// still holds the attempt's row lock, so no commit of that attempt can come between its
/// look and its subscription; a commit then drops the sender, which wakes every waiter.
pub(super) type Turns = Arc<Mutex<HashMap<Uuid, watch::Sender<()>>>>;

/// Marks attempts' logs purged.
pub(super) const MARK_PURGED: &str = include_str!("sql/logs/mark_purged.sql");

#[derive(Debug, Clone)]
pub struct ChunkIn {
    pub seq: i64,
    pub stream: i16,
    pub time: DateTime<Utc>,
    pub data: Vec<u8>,
}

impl Store {
    /// Stores log chunks of a running attempt. Re-sent chunks (same seq) are ignored. Past
    /// `cap` bytes the oldest tail chunks are trimmed so the head and the tail are kept.
    pub async fn append_logs(&self, attempt_id: Uuid, chunks: &[ChunkIn], cap: u64) -> Result<()> {
        self.append_logs_as(attempt_id, None, chunks, cap).await
    }

    /// [`Store::append_logs`] for a worker: refused unless the attempt is leased to a
    /// worker id the principal may act as (checked on the locked row).
    pub async fn append_logs_as(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        chunks: &[ChunkIn],
        cap: u64,
    ) -> Result<()> {
        measured("append_logs", async {
            // A worker keeps two batches in flight; the second can get here first. It waits
            // for the first, so the cap counts chunks in order (up to EARLY_WAIT).
            let deadline = Instant::now() + EARLY_WAIT;
            let mut made_partition = false;
            loop {
                let late = Instant::now() >= deadline;
                match self
                    .append_logs_tx(attempt_id, worker, chunks, cap, late)
                    .await
                {
                    Err(AppendError::Early(mut turn)) => {
                        let _ = tokio::time::timeout(EARLY_RECHECK, turn.changed()).await;
                    }
                    // The leader makes partitions ahead of time; if it has not (it was down,
                    // or the attempt's partition was dropped while it ran long), make it now.
                    Err(AppendError::NoPartition(at)) if !made_partition => {
                        self.ensure_log_partitions(self.log_partition(), Duration::ZERO, Some(at))
                            .await?;
                        made_partition = true;
                    }
                    r => {
                        self.announce_turn(attempt_id);
                        return r.map_err(AppendError::into_error);
                    }
                }
            }
        })
        .await
    }

    /// A receiver told when the attempt's next log batch commits (or dropped: look again).
    fn await_turn(&self, attempt_id: Uuid) -> watch::Receiver<()> {
        let mut turns = self
            .log_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Entries nobody waits on any more (a wait timed out, or its call was cancelled)
        // go here; a commit of their attempt would also drop them.
        turns.retain(|_, t| t.receiver_count() > 0);
        turns
            .entry(attempt_id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes the batches waiting for this attempt's log to move on.
    fn announce_turn(&self, attempt_id: Uuid) {
        let mut turns = self
            .log_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        turns.remove(&attempt_id);
    }

    /// Log batches now waiting for an earlier batch of their attempt (for tests).
    pub fn early_log_batches(&self) -> usize {
        let turns = self
            .log_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        turns.values().map(|t| t.receiver_count()).sum()
    }

    pub(super) async fn append_logs_tx(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        chunks: &[ChunkIn],
        cap: u64,
        out_of_order: bool,
    ) -> std::result::Result<(), AppendError> {
        const LOCK_ATTEMPT: &str = include_str!("sql/logs/lock_attempt.sql");
        const INSERT_CHUNKS: &str = include_str!("sql/logs/insert_chunks.sql");
        const TRIM_TAIL: &str = include_str!("sql/logs/trim_tail.sql");
        const UPDATE_COUNTS: &str = include_str!("sql/logs/update_counts.sql");
        const NOTIFY_FOLLOWERS: &str = include_str!("sql/logs/notify_followers.sql");
        let mut c = self.pool.get().await.map_err(Error::from)?;
        let tx = c.transaction().await.map_err(Error::from)?;
        // The row lock also keeps the reaper from marking the attempt lost mid-append.
        let row = tx
            .query_opt_cached(LOCK_ATTEMPT, &[&attempt_id])
            .await?
            .ok_or_else(|| Error::NotFound(format!("attempt {attempt_id} does not exist")))?;
        if let Some(p) = worker {
            p.check_worker(&row.try_get::<_, String>(5)?)?;
        }
        let state: String = row.try_get(0)?;
        if state != "running" {
            return Err(stale(attempt_id, parse_state(&state)?).into());
        }
        // Seqs count from 0 without gaps, so the chunks received so far are the next seq
        // due. A batch beyond it waits for the one before (subscribed while the row lock
        // is held, released when `tx` is dropped).
        let received: i64 = row.try_get(7)?;
        let first = chunks.iter().map(|c| c.seq).min().unwrap_or(0);
        if first > received && !out_of_order {
            return Err(AppendError::Early(self.await_turn(attempt_id)));
        }
        let before = CapState {
            kept: row.try_get::<_, i64>(1)?.max(0) as u64,
            head_end: row.try_get(2)?,
            head_bytes: row.try_get::<_, i64>(3)?.max(0) as u64,
            dropped: row.try_get::<_, i64>(4)?.max(0) as u64,
        };
        let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
        let streams: Vec<i16> = chunks.iter().map(|c| c.stream).collect();
        let times: Vec<DateTime<Utc>> = chunks.iter().map(|c| c.time).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        let log_part: DateTime<Utc> = row.try_get(6).map_err(Error::from)?;
        let inserted = match tx
            .query_cached(
                INSERT_CHUNKS,
                &[&attempt_id, &seqs, &streams, &times, &data, &log_part],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) if super::retention::is_missing_partition(&e) => {
                return Err(AppendError::NoPartition(log_part))
            }
            Err(e) => return Err(Error::from(e).into()),
        };
        let mut new: Vec<(i64, u64)> = inserted
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i32>(1)?.max(0) as u64)))
            .collect::<Result<_>>()?;
        new.sort_unstable();
        let (mut after, excess) = logcap::account(before, cap, &new);
        if excess > 0 {
            // Delete the oldest tail chunks until at least `excess` bytes are gone.
            let removed: i64 = tx
                .query_one_cached(
                    TRIM_TAIL,
                    &[
                        &attempt_id,
                        &after.head_end.unwrap_or(i64::MAX),
                        &(excess as i64),
                        &log_part,
                    ],
                )
                .await?
                .try_get(0)?;
            after = logcap::trimmed(after, removed.max(0) as u64);
        }
        let received: i64 = new.iter().map(|(_, l)| *l as i64).sum();
        tx.execute_cached(
            UPDATE_COUNTS,
            &[
                &attempt_id,
                &(new.len() as i64),
                &received,
                &(after.kept as i64),
                &after.head_end,
                &(after.head_bytes as i64),
                &(after.dropped as i64),
            ],
        )
        .await?;
        // Log followers on every coordinator read on from here.
        tx.execute_cached(
            NOTIFY_FOLLOWERS,
            &[&crate::log_watch::LOGS_CHANNEL, &attempt_id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the stored logs and artifact records of up to `limit` attempts that finished
    /// more than `older_than` ago. Returns the purged attempts' artifact keys, whose files
    /// the caller removes, and how many attempts were purged.
    pub async fn purge_logs(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<(u64, Vec<ArtifactRow>)> {
        const LOCK_PURGEABLE_ATTEMPTS: &str = include_str!("sql/logs/lock_purgeable_attempts.sql");
        const DELETE_CHUNKS: &str = include_str!("sql/logs/delete_chunks.sql");
        measured("purge_logs", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let ids: Vec<Uuid> = tx
                .query_cached(LOCK_PURGEABLE_ATTEMPTS, &[&millis(older_than), &limit])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok((0, Vec::new()));
            }
            tx.execute_cached(DELETE_CHUNKS, &[&ids]).await?;
            let artifacts = delete_for_attempts(&tx, &ids).await?;
            tx.execute_cached(MARK_PURGED, &[&ids]).await?;
            tx.commit().await?;
            Ok((ids.len() as u64, artifacts))
        })
        .await
    }

    /// Bytes PostgreSQL uses for stored logs (table, TOAST and indexes).
    pub async fn log_storage_bytes(&self) -> Result<i64> {
        const STORAGE_BYTES: &str = include_str!("sql/logs/storage_bytes.sql");
        measured("log_storage_bytes", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(STORAGE_BYTES, &[]).await?.try_get(0)?)
        })
        .await
    }

    /// Chunks of one attempt with seq > `after`, in order.
    pub async fn read_logs(
        &self,
        attempt_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredChunk>> {
        const READ_LOGS: &str = include_str!("sql/logs/read_logs.sql");
        measured("read_logs", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(READ_LOGS, &[&attempt_id, &after, &limit])
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredChunk {
                        seq: r.try_get(0)?,
                        stream: r.try_get(1)?,
                        time: r.try_get(2)?,
                        data: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }
}

/// Why a log append failed: its partition is missing (made, then retried), or anything else.
pub(super) enum AppendError {
    NoPartition(DateTime<Utc>),
    /// An earlier batch of the attempt is not stored yet: wait on this, then try again.
    Early(watch::Receiver<()>),
    Other(Error),
}

impl AppendError {
    fn into_error(self) -> Error {
        match self {
            AppendError::NoPartition(at) => {
                Error::Internal(format!("no log partition for {at} after creating it"))
            }
            AppendError::Early(_) => Error::Internal("log batch waited for its turn".into()),
            AppendError::Other(e) => e,
        }
    }
}

impl From<Error> for AppendError {
    fn from(e: Error) -> Self {
        AppendError::Other(e)
    }
}

impl From<tokio_postgres::Error> for AppendError {
    fn from(e: tokio_postgres::Error) -> Self {
        AppendError::Other(e.into())
    }
}
