//! Failure groups: recording a failing attempt's fingerprint (inside `end_attempt`'s
//! transaction) and reading the groups back. The normaliser itself is
//! `drover_core::fingerprint`.

use super::{measured, Cached, Store};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// What `record` stored.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub fingerprint: String,
    pub sample: String,
    /// This failure created its group (a new cause in this queue).
    pub new_group: bool,
}

/// Computes the fingerprint of a failed attempt and upserts its queue's group.
pub(super) async fn record(
    tx: &impl GenericClient,
    job_id: Uuid,
    attempt_id: Uuid,
    queue: &str,
    reason: &str,
    output_tail: &str,
    exit_code: Option<i32>,
) -> Result<Recorded> {
    const JOB_PARAMS: &str = include_str!("sql/failures/job_params.sql");
    const UPSERT_GROUP: &str = include_str!("sql/failures/upsert_group.sql");
    // The job's own parameter values become placeholders; read only on this failure path.
    let Json(params): Json<BTreeMap<String, String>> = tx
        .query_one_cached(JOB_PARAMS, &[&job_id])
        .await?
        .try_get(0)?;
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let fp = drover_core::fingerprint::fingerprint(reason, output_tail, &pairs);
    let row = tx
        .query_one_cached(
            UPSERT_GROUP,
            &[
                &queue,
                &fp.id,
                &fp.text,
                &fp.sample,
                &job_id,
                &attempt_id,
                &exit_code,
            ],
        )
        .await?;
    Ok(Recorded {
        fingerprint: fp.id,
        sample: fp.sample,
        new_group: row.try_get("inserted")?,
    })
}

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub queue: String,
    pub fingerprint: String,
    pub normalised: String,
    pub sample: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub count: i64,
    pub last_job_id: Uuid,
    pub last_attempt_id: Uuid,
    pub exit_codes: Vec<i32>,
}

/// Filter for [`Store::list_failure_groups`].
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub queue: Option<String>,
    pub fingerprint: Option<String>,
    /// Only groups seen within this long.
    pub since: Option<Duration>,
    pub offset: i64,
    pub limit: i64,
}

impl Store {
    /// Groups ranked by count (most frequent first).
    pub async fn list_failure_groups(&self, f: &GroupFilter) -> Result<Vec<GroupRow>> {
        const LIST_GROUPS: &str = include_str!("sql/failures/list_groups.sql");
        measured("list_failure_groups", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    LIST_GROUPS,
                    &[
                        &f.queue,
                        &f.fingerprint,
                        &f.since.map(|d| d.as_secs_f64()),
                        &f.offset,
                        &f.limit,
                    ],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(GroupRow {
                        queue: r.try_get(0)?,
                        fingerprint: r.try_get(1)?,
                        normalised: r.try_get(2)?,
                        sample: r.try_get(3)?,
                        first_seen_at: r.try_get(4)?,
                        last_seen_at: r.try_get(5)?,
                        count: r.try_get(6)?,
                        last_job_id: r.try_get(7)?,
                        last_attempt_id: r.try_get(8)?,
                        exit_codes: r.try_get(9)?,
                    })
                })
                .collect::<std::result::Result<_, tokio_postgres::Error>>()
                .map_err(Error::from)
        })
        .await
    }

    /// Failures per (queue, fingerprint, sample) within `window`: what a spike rule counts.
    pub async fn recent_failure_counts(
        &self,
        window: Duration,
    ) -> Result<Vec<(String, String, String, i64)>> {
        const RECENT_COUNTS: &str = include_str!("sql/failures/recent_counts.sql");
        measured("recent_failure_counts", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(RECENT_COUNTS, &[&window.as_secs_f64()])
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, tokio_postgres::Error>>()
                .map_err(Error::from)
        })
        .await
    }

    /// Deletes groups not seen for `older_than` (retention).
    pub async fn prune_failure_groups(&self, older_than: Duration) -> Result<u64> {
        const PRUNE_GROUPS: &str = include_str!("sql/failures/prune_groups.sql");
        measured("prune_failure_groups", async {
            let c = self.pool.get().await?;
            Ok(c.execute_cached(PRUNE_GROUPS, &[&older_than.as_secs_f64()])
                .await?)
        })
        .await
    }
}
