//! Reads for WatchJobs and WaitJob: several jobs by id, and the jobs of a filter that
//! changed lately (after a watcher may have missed notifications), and the gate that turns
//! state notifications on while someone watches (V31).

use super::{job_from_row, measured, Cached, JobRow, Store};
use crate::error::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// At most this many jobs are re-read for a filter watch that fell behind.
pub const RESYNC_LIMIT: i64 = 1000;

/// The jobs with these ids (any order).
pub(super) const GET_JOBS: &str = include_str!("sql/watch/get_jobs.sql");

impl Store {
    /// The jobs among `ids` that exist.
    pub async fn get_jobs(&self, ids: &[Uuid]) -> Result<Vec<JobRow>> {
        measured("get_jobs", async {
            let c = self.pool.get().await?;
            c.query_cached(GET_JOBS, &[&ids])
                .await?
                .iter()
                .map(job_from_row)
                .collect()
        })
        .await
    }

    /// Jobs matching a watch filter whose last change is after `(since, after_id)`, in
    /// change order, one page of at most [`RESYNC_LIMIT`] (continue from the last one).
    pub async fn changed_jobs(
        &self,
        queue: &str,
        state: Option<&str>,
        label: &str,
        since: DateTime<Utc>,
        after_id: Uuid,
    ) -> Result<Vec<JobRow>> {
        const CHANGED_JOBS: &str = include_str!("sql/watch/changed_jobs.sql");
        measured("changed_jobs", async {
            let c = self.pool.get().await?;
            c.query_cached(
                CHANGED_JOBS,
                &[&since, &queue, &state, &label, &RESYNC_LIMIT, &after_id],
            )
            .await?
            .iter()
            .map(job_from_row)
            .collect()
        })
        .await
    }

    /// An id above every transaction running now (see [`Store::horizon_passed`]).
    pub async fn xact_horizon(&self) -> Result<i64> {
        const XACT_HORIZON: &str = include_str!("sql/watch/xact_horizon.sql");
        measured("xact_horizon", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(XACT_HORIZON, &[]).await?.try_get(0)?)
        })
        .await
    }

    /// Whether every transaction that was running when `horizon` was read has ended.
    pub async fn horizon_passed(&self, horizon: i64) -> Result<bool> {
        const HORIZON_PASSED: &str = include_str!("sql/watch/horizon_passed.sql");
        measured("horizon_passed", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(HORIZON_PASSED, &[&horizon])
                .await?
                .try_get(0)?)
        })
        .await
    }
}
