//! Leader duty: retention of everything that accumulates. Log partitions are created ahead
//! and dropped whole once every attempt in them is past log retention; finished jobs (per
//! final state), departed workers, resource samples, skipped schedule ticks and old request
//! ids are deleted
//! in batches. A pass stops after a time budget, so the lease reaper that shares the
//! leader's loop is never held up for long; the rest is done in the next pass.

use crate::artifacts::{key, BlobStore};
use crate::config::Retention;
use crate::error::Result;
use crate::store::{ArtifactRow, Store};
use std::time::Duration;
use tokio::time::Instant;

/// What one pass did, for the log line and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub partitions_created: usize,
    pub partitions_dropped: usize,
    /// Attempts whose logs were deleted row by row (partition held back by a long run).
    pub attempts_purged: u64,
    pub jobs: u64,
    pub workers: u64,
    pub samples: u64,
    pub runs: u64,
    /// Request ids past `retention.request_ids`.
    pub request_ids: u64,
    /// Concurrency keys unused for [`CONCURRENCY_KEY_IDLE`].
    pub concurrency_keys: u64,
    /// The budget ran out with work left.
    pub more: bool,
}

impl Pass {
    pub fn is_empty(&self) -> bool {
        *self == Pass::default()
    }
}

/// A concurrency key no job has used for this long is deleted (a submit naming it again
/// recreates it). Not a setting: the row holds nothing a later submit does not restore.
pub const CONCURRENCY_KEY_IDLE: Duration = Duration::from_secs(24 * 3600);

/// How far ahead log partitions exist: three periods, and at least three retention
/// intervals (the leader may skip passes while it is busy).
pub fn partitions_ahead(r: &Retention, interval: Duration) -> Duration {
    (r.log_partition * 3).max(interval * 3)
}

/// How long the DROP of a log partition waits for its table lock before trying again in
/// the next pass: log writes queue behind a waiting DROP, so the wait is kept short.
const DROP_LOCK_TIMEOUT: Duration = Duration::from_millis(200);

pub async fn run_pass(
    store: &Store,
    blobs: &dyn BlobStore,
    r: &Retention,
    interval: Duration,
    budget: Duration,
) -> Result<Pass> {
    let deadline = Instant::now() + budget;
    let mut pass = Pass {
        partitions_created: store
            .ensure_log_partitions(r.log_partition, partitions_ahead(r, interval), None)
            .await?
            .len(),
        ..Pass::default()
    };
    let batch = r.batch_size;

    // Logs: whole partitions first.
    let now = chrono::Utc::now();
    for p in store.log_partitions().await? {
        if Instant::now() >= deadline {
            pass.more = true;
            return Ok(pass);
        }
        if p.range.hi > now || !store.log_partition_expired(&p.range, r.logs).await? {
            continue;
        }
        loop {
            let (n, artifacts) = store.mark_partition_purged(&p.range, batch).await?;
            delete_files(blobs, artifacts).await;
            if n < batch as u64 {
                break;
            }
            if Instant::now() >= deadline {
                pass.more = true;
                return Ok(pass);
            }
        }
        match store
            .drop_log_partition(&p, r.logs, DROP_LOCK_TIMEOUT)
            .await
        {
            Ok(true) => {
                tracing::info!(partition = %p.name, "dropped log partition past retention");
                pass.partitions_dropped += 1;
            }
            Ok(false) => {}
            // Most likely the lock timeout; the next pass tries again.
            Err(e) => {
                tracing::warn!(partition = %p.name, error = %e, "could not drop log partition")
            }
        }
    }
    // A partition is held back while any attempt in it is unfinished or recent. So that a
    // long run never keeps anyone else's log, attempts past retention by more than one
    // partition period (their partition would have been dropped by now) are purged row by
    // row. In the steady state this finds nothing: partitions go first.
    loop {
        let (n, artifacts) = store.purge_logs(r.logs + r.log_partition, batch).await?;
        delete_files(blobs, artifacts).await;
        pass.attempts_purged += n;
        if n < batch as u64 {
            break;
        }
        if Instant::now() >= deadline {
            pass.more = true;
            return Ok(pass);
        }
    }

    // Finished jobs, per final state.
    for (state, _) in r.jobs.all() {
        loop {
            let purged = store.purge_jobs(&r.jobs, state, batch).await?;
            let n = purged.jobs;
            delete_files(blobs, purged.artifacts).await;
            pass.jobs += n;
            if n < batch as u64 {
                break;
            }
            if Instant::now() >= deadline {
                pass.more = true;
                return Ok(pass);
            }
        }
    }

    // Departed workers, samples, skipped schedule ticks.
    macro_rules! drain {
        ($field:ident, $call:expr) => {
            loop {
                let n = $call.await?;
                pass.$field += n;
                if n < batch as u64 {
                    break;
                }
                if Instant::now() >= deadline {
                    pass.more = true;
                    return Ok(pass);
                }
            }
        };
    }
    drain!(workers, store.purge_workers(r.workers, batch));
    drain!(samples, store.prune_samples(r.samples, batch));
    drain!(runs, store.purge_skipped_runs(r.jobs.cancelled, batch));
    drain!(
        request_ids,
        store.delete_old_request_ids(r.request_ids, batch)
    );
    drain!(
        concurrency_keys,
        store.purge_concurrency_keys(CONCURRENCY_KEY_IDLE, batch)
    );
    Ok(pass)
}

async fn delete_files(blobs: &dyn BlobStore, artifacts: Vec<ArtifactRow>) {
    for a in artifacts {
        // The record is gone; a file left behind by a failed delete is only disk space.
        if let Err(e) = blobs.delete(&key(a.job_id, a.attempt_id, &a.name)).await {
            tracing::warn!(error = %e, "could not delete an expired artifact");
        }
    }
}
