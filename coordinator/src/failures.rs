//! Failure groups: the SQL that records a failing attempt's fingerprint (called from
//! `Store::end_attempt`, inside its transaction) and reads the groups back.
//! The normaliser itself is `drover_core::fingerprint`.

use crate::error::{Error, Result};
use crate::store::{Cached, Store};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
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
pub async fn record(
    tx: &Transaction<'_>,
    job_id: Uuid,
    attempt_id: Uuid,
    queue: &str,
    reason: &str,
    output_tail: &str,
    exit_code: Option<i32>,
) -> Result<Recorded> {
    // The job's own parameter values become placeholders; read only on this failure path.
    let Json(params): Json<BTreeMap<String, String>> = tx
        .query_one_cached("SELECT params FROM jobs WHERE id = $1", &[&job_id])
        .await?
        .try_get(0)?;
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let fp = drover_core::fingerprint::fingerprint(reason, output_tail, &pairs);
    let row = tx
        .query_one_cached(
            "INSERT INTO failure_groups AS g (queue, fingerprint, normalised, sample, \
                    last_job_id, last_attempt_id, exit_codes) \
             VALUES ($1, $2, $3, $4, $5, $6, \
                     CASE WHEN $7::int4 IS NULL THEN '{}'::int4[] ELSE ARRAY[$7::int4] END) \
             ON CONFLICT (queue, fingerprint) DO UPDATE SET \
                    last_seen_at = now(), count = g.count + 1, \
                    last_job_id = EXCLUDED.last_job_id, \
                    last_attempt_id = EXCLUDED.last_attempt_id, \
                    exit_codes = CASE WHEN $7::int4 IS NULL OR $7::int4 = ANY(g.exit_codes) \
                                        OR cardinality(g.exit_codes) >= 16 \
                                      THEN g.exit_codes ELSE g.exit_codes || $7::int4 END \
             RETURNING (xmax = 0) AS inserted",
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

/// Filter for [`list_groups`].
#[derive(Debug, Clone, Default)]
pub struct GroupFilter {
    pub queue: Option<String>,
    pub fingerprint: Option<String>,
    /// Only groups seen within this long.
    pub since: Option<Duration>,
    pub offset: i64,
    pub limit: i64,
}

/// Groups ranked by count (most frequent first).
pub async fn list_groups(store: &Store, f: &GroupFilter) -> Result<Vec<GroupRow>> {
    let c = store.pool().get().await?;
    let rows = c
        .query_cached(
            "SELECT queue, fingerprint, normalised, sample, first_seen_at, last_seen_at, count, \
                    last_job_id, last_attempt_id, exit_codes \
               FROM failure_groups \
              WHERE ($1::text IS NULL OR queue = $1) \
                AND ($2::text IS NULL OR fingerprint = $2) \
                AND ($3::float8 IS NULL OR last_seen_at >= now() - $3 * interval '1 second') \
              ORDER BY count DESC, last_seen_at DESC, queue, fingerprint \
              OFFSET $4 LIMIT $5",
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
}

/// Failures per (queue, fingerprint, sample) within `window`: what a spike rule counts.
pub async fn recent_counts(
    store: &Store,
    window: Duration,
) -> Result<Vec<(String, String, String, i64)>> {
    let c = store.pool().get().await?;
    let rows = c
        .query_cached(
            "SELECT j.queue, a.fingerprint, coalesce(min(g.sample), ''), count(*) \
               FROM attempts a JOIN jobs j ON j.id = a.job_id \
               LEFT JOIN failure_groups g ON g.queue = j.queue AND g.fingerprint = a.fingerprint \
              WHERE a.fingerprint IS NOT NULL \
                AND a.finished_at >= now() - $1 * interval '1 second' \
              GROUP BY 1, 2",
            &[&window.as_secs_f64()],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(Error::from)
}

/// Deletes groups not seen for `older_than` (retention).
pub async fn prune_groups(store: &Store, older_than: Duration) -> Result<u64> {
    let c = store.pool().get().await?;
    Ok(c.execute_cached(
        "DELETE FROM failure_groups WHERE last_seen_at < now() - $1 * interval '1 second'",
        &[&older_than.as_secs_f64()],
    )
    .await?)
}
