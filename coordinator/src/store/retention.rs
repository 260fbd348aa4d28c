//! SQL of retention: finished jobs, departed workers, samples, schedule runs, and the time
//! partitions of `log_chunks` (created ahead, dropped whole once every attempt in them is
//! past log retention). Every delete is bounded by a batch size so no statement holds
//! locks for long; the leader calls these (see `crate::retention`).
//!
//! Built at run time here (not in `sql/`), because PostgreSQL takes no parameters in DDL:
//! - `CREATE TABLE … PARTITION OF log_chunks`: name and bounds computed per partition;
//! - `SET LOCAL lock_timeout = …; LOCK TABLE log_chunks`: the timeout is configured;
//! - `DROP TABLE "<partition>"`: the name comes from the catalog.

use super::artifacts::{delete_for_attempts, delete_for_jobs};
use super::logs::MARK_PURGED;
use super::{measured, millis, parse_state, ArtifactRow, Cached, Store, NOW};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use drover_core::retention::{self, JobHorizons, Range};
use drover_core::JobState;
use std::time::Duration;
use uuid::Uuid;

/// The partitioned table of log chunks (partition key: the attempt's `log_part`).
pub const LOG_TABLE: &str = "log_chunks";
/// Advisory lock taken (per transaction) while creating log partitions, so coordinators
/// creating the same one at once wait for each other instead of failing.
const PARTITION_LOCK: i64 = 0x4452_4f56_4c50; // "DROVLP"

/// One partition of `log_chunks`.
#[derive(Debug, Clone)]
pub struct LogPartition {
    pub name: String,
    pub range: Range,
}

/// What one pass of job retention deleted.
#[derive(Debug, Default)]
pub struct PurgedJobs {
    pub jobs: u64,
    /// Artifact records deleted with the jobs: the caller deletes their files.
    pub artifacts: Vec<ArtifactRow>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// Deletes up to `limit` finished jobs of `state` past their horizon, with their
    /// attempts, logs, artifact records, dependency edges and schedule runs. Never a job
    /// that is not finished, one that something kept refers to (a retry or rerun of it, a
    /// job depending on it), or one whose own predecessor in a retry chain is unfinished.
    pub async fn purge_jobs(
        &self,
        h: &JobHorizons,
        state: JobState,
        limit: i64,
    ) -> Result<PurgedJobs> {
        const PURGEABLE_JOBS: &str = include_str!("sql/retention/purgeable_jobs.sql");
        const DELETE_DEPS: &str = include_str!("sql/retention/delete_deps.sql");
        const DELETE_RUNS: &str = include_str!("sql/retention/delete_runs.sql");
        const DELETE_ATTEMPTS: &str = include_str!("sql/retention/delete_attempts.sql");
        const DELETE_JOBS: &str = include_str!("sql/retention/delete_jobs.sql");
        measured("purge_jobs", async {
            let Some(horizon) = h.of(state) else {
                return Ok(PurgedJobs::default());
            };
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let rows = tx
                .query_cached(PURGEABLE_JOBS, &[&state.as_str(), &secs(horizon), &limit])
                .await?;
            let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
            for r in &rows {
                let s: JobState = parse_state(&r.try_get::<_, String>(1)?)?;
                let finished: Option<DateTime<Utc>> = r.try_get(2)?;
                let now: DateTime<Utc> = r.try_get(3)?;
                // The domain rule decides; the query only found the candidates.
                if retention::job_expired(h, s, finished, false, now) {
                    ids.push(r.try_get(0)?);
                }
            }
            if ids.is_empty() {
                return Ok(PurgedJobs::default());
            }
            let artifacts = delete_for_jobs(&tx, &ids).await?;
            tx.execute_cached(DELETE_DEPS, &[&ids]).await?;
            tx.execute_cached(DELETE_RUNS, &[&ids]).await?;
            // Log chunks go with their attempts (ON DELETE CASCADE), if retention left any.
            tx.execute_cached(DELETE_ATTEMPTS, &[&ids]).await?;
            // The state guard again: a job is deleted only as it was selected (locked).
            let n = tx.execute_cached(DELETE_JOBS, &[&ids]).await?;
            if n != ids.len() as u64 {
                return Err(Error::Internal(format!(
                    "job retention: {n} of {} selected jobs deletable; rolled back",
                    ids.len()
                )));
            }
            tx.commit().await?;
            Ok(PurgedJobs { jobs: n, artifacts })
        })
        .await
    }

    /// Deletes up to `limit` workers not seen for `older_than` that run nothing, with
    /// their resource samples.
    pub async fn purge_workers(&self, older_than: Duration, limit: i64) -> Result<u64> {
        const PURGE_WORKERS: &str = include_str!("sql/retention/purge_workers.sql");
        measured("purge_workers", async {
            let c = self.pool.get().await?;
            Ok(
                c.execute_cached(PURGE_WORKERS, &[&secs(older_than), &limit])
                    .await?,
            )
        })
        .await
    }

    /// Deletes up to `limit` concurrency keys unused for `older_than` that no pending or
    /// running job carries.
    pub async fn purge_concurrency_keys(&self, older_than: Duration, limit: i64) -> Result<u64> {
        const PURGE_KEYS: &str = include_str!("sql/retention/purge_concurrency_keys.sql");
        measured("purge_concurrency_keys", async {
            let c = self.pool.get().await?;
            Ok(c.execute_cached(PURGE_KEYS, &[&secs(older_than), &limit])
                .await?)
        })
        .await
    }

    /// Deletes up to `limit` worker resource samples older than `older_than`.
    pub async fn prune_samples(&self, older_than: Duration, limit: i64) -> Result<u64> {
        const PRUNE_SAMPLES: &str = include_str!("sql/retention/prune_samples.sql");
        measured("prune_samples", async {
            let c = self.pool.get().await?;
            Ok(
                c.execute_cached(PRUNE_SAMPLES, &[&secs(older_than), &limit])
                    .await?,
            )
        })
        .await
    }

    /// Deletes up to `limit` schedule ticks that were skipped (so never had a job) longer
    /// than `older_than` ago; ticks that fired go with their jobs.
    pub async fn purge_skipped_runs(&self, older_than: Duration, limit: i64) -> Result<u64> {
        const PURGE_SKIPPED_RUNS: &str = include_str!("sql/retention/purge_skipped_runs.sql");
        measured("purge_skipped_runs", async {
            let c = self.pool.get().await?;
            Ok(
                c.execute_cached(PURGE_SKIPPED_RUNS, &[&secs(older_than), &limit])
                    .await?,
            )
        })
        .await
    }

    // ------------------------------------------------------------ log partitions

    /// The partitions of `log_chunks`, oldest first.
    pub async fn log_partitions(&self) -> Result<Vec<LogPartition>> {
        measured("log_partitions", async {
            let c = self.pool.get().await?;
            list_partitions(&c).await
        })
        .await
    }

    /// Creates the partitions missing between `now` (the database's clock) and
    /// `now + ahead`, and the one that holds `at` if given. Returns the names created.
    pub async fn ensure_log_partitions(
        &self,
        period: Duration,
        ahead: Duration,
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<String>> {
        const LOCK_PARTITIONS: &str = include_str!("sql/retention/lock_partitions.sql");
        const SET_LOCK_TIMEOUT: &str = include_str!("sql/retention/set_lock_timeout.sql");
        measured("ensure_log_partitions", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            tx.execute_cached(LOCK_PARTITIONS, &[&PARTITION_LOCK])
                .await?;
            // Creating a partition locks the parent table; log writes queue behind a waiting
            // DDL, so it gives up after a moment (the next pass, or the writer, tries again).
            tx.batch_execute(SET_LOCK_TIMEOUT).await?;
            let now: DateTime<Utc> = tx.query_one_cached(NOW, &[]).await?.try_get(0)?;
            let existing: Vec<Range> = list_partitions(&tx)
                .await?
                .into_iter()
                .map(|p| p.range)
                .collect();
            let mut create = retention::partitions_to_create(now, period, ahead, &existing);
            if let Some(t) = at {
                if !existing.iter().chain(&create).any(|r| r.contains(t)) {
                    let mut all = existing.clone();
                    all.extend(create.iter().copied());
                    create.push(retention::partition_for(t, period, &all));
                }
            }
            let mut names = Vec::new();
            for r in create {
                let Some(lo) = r.lo else { continue };
                let name = retention::partition_name(LOG_TABLE, lo);
                // Names and bounds are computed here, never taken from a request.
                tx.batch_execute(&format!(
                    "CREATE TABLE {name} PARTITION OF {LOG_TABLE} FOR VALUES FROM ('{}') TO ('{}')",
                    lo.to_rfc3339(),
                    r.hi.to_rfc3339()
                ))
                .await?;
                names.push(name);
            }
            tx.commit().await?;
            Ok(names)
        })
        .await
    }

    /// Whether every attempt whose log is in `range` finished more than `retention` ago (an
    /// attempt whose log is purged already did: purging waits at least that long).
    pub async fn log_partition_expired(&self, range: &Range, retention: Duration) -> Result<bool> {
        measured("log_partition_expired", async {
            let c = self.pool.get().await?;
            partition_expired(&c, range, retention).await
        })
        .await
    }

    /// Marks up to `limit` attempts of an expired partition's range as purged and deletes
    /// their artifact records (returned: the caller deletes the files). The chunks go when
    /// the partition is dropped. Returns how many attempts were marked.
    pub async fn mark_partition_purged(
        &self,
        range: &Range,
        limit: i64,
    ) -> Result<(u64, Vec<ArtifactRow>)> {
        const LOCK_PARTITION_ATTEMPTS: &str =
            include_str!("sql/retention/lock_partition_attempts.sql");
        measured("mark_partition_purged", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let ids: Vec<Uuid> = tx
                .query_cached(LOCK_PARTITION_ATTEMPTS, &[&range.lo, &range.hi, &limit])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok((0, Vec::new()));
            }
            let artifacts = delete_for_attempts(&tx, &ids).await?;
            tx.execute_cached(MARK_PURGED, &[&ids]).await?;
            tx.commit().await?;
            Ok((ids.len() as u64, artifacts))
        })
        .await
    }

    /// Drops a partition whose attempts are all past retention and marked purged. The
    /// check is repeated under the table lock (waited for at most `lock_timeout`), so no
    /// chunk can be written into it meanwhile. Returns false if it was not droppable.
    pub async fn drop_log_partition(
        &self,
        p: &LogPartition,
        retention: Duration,
        lock_timeout: Duration,
    ) -> Result<bool> {
        const ANY_UNPURGED: &str = include_str!("sql/retention/any_unpurged.sql");
        measured("drop_log_partition", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {LOG_TABLE} IN ACCESS EXCLUSIVE MODE",
                lock_timeout.as_millis().max(1)
            ))
            .await?;
            let unpurged: bool = tx
                .query_one_cached(ANY_UNPURGED, &[&p.range.lo, &p.range.hi])
                .await?
                .try_get(0)?;
            if unpurged || !partition_expired(&tx, &p.range, retention).await? {
                return Ok(false);
            }
            // The name comes from the catalog (one of our partitions), quoted anyway.
            tx.batch_execute(&format!("DROP TABLE \"{}\"", p.name.replace('"', "\"\"")))
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}

async fn partition_expired<C: Cached>(c: &C, range: &Range, retention: Duration) -> Result<bool> {
    const PARTITION_LIVE: &str = include_str!("sql/retention/partition_live.sql");
    let live: bool = c
        .query_one_cached(PARTITION_LIVE, &[&range.lo, &range.hi, &millis(retention)])
        .await?
        .try_get(0)?;
    Ok(!live)
}

/// The partitions of `log_chunks` and their bounds (read back from the catalog), oldest
/// first. A bound that is MINVALUE reads as `None`.
async fn list_partitions<C: Cached>(c: &C) -> Result<Vec<LogPartition>> {
    const LIST_PARTITIONS: &str = include_str!("sql/retention/list_partitions.sql");
    let rows = c.query_cached(LIST_PARTITIONS, &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let hi: Option<DateTime<Utc>> = r.try_get(2)?;
        let Some(hi) = hi else {
            return Err(Error::Internal(format!(
                "log partition {} has no upper time bound",
                r.try_get::<_, String>(0)?
            )));
        };
        out.push(LogPartition {
            name: r.try_get(0)?,
            range: Range {
                lo: r.try_get(1)?,
                hi,
            },
        });
    }
    out.sort_by_key(|p| p.range.hi);
    Ok(out)
}

/// Whether a database error says a row had no partition to go to.
pub fn is_missing_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::CHECK_VIOLATION
            && d.message().starts_with("no partition of relation")
    })
}
