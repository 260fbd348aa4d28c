//! Artifacts: checking an uploader's attempt, recording uploaded files, listing a job's,
//! and deleting records (with logs or jobs) so their files can go.

use super::{artifact_from_row, measured, parse_state, stale, ArtifactRow, Cached, Store};
use crate::error::{Error, Result};
use uuid::Uuid;

/// Deletes the artifact records of these attempts, returning them (the caller deletes the
/// files).
pub(super) async fn delete_for_attempts<C: Cached>(
    c: &C,
    ids: &[Uuid],
) -> Result<Vec<ArtifactRow>> {
    const DELETE_FOR_ATTEMPTS: &str = include_str!("sql/artifacts/delete_for_attempts.sql");
    c.query_cached(DELETE_FOR_ATTEMPTS, &[&ids])
        .await?
        .iter()
        .map(artifact_from_row)
        .collect()
}

/// Deletes the artifact records of these jobs, returning them.
pub(super) async fn delete_for_jobs<C: Cached>(c: &C, ids: &[Uuid]) -> Result<Vec<ArtifactRow>> {
    const DELETE_FOR_JOBS: &str = include_str!("sql/artifacts/delete_for_jobs.sql");
    c.query_cached(DELETE_FOR_JOBS, &[&ids])
        .await?
        .iter()
        .map(artifact_from_row)
        .collect()
}

impl Store {
    /// The job of a running attempt; FAILED_PRECONDITION if it is not (or no longer)
    /// running: only the current attempt may add files.
    pub async fn running_attempt_job(&self, attempt_id: Uuid) -> Result<(Uuid, i32)> {
        self.running_attempt_job_as(attempt_id, None).await
    }

    /// [`Store::running_attempt_job`], refused unless the attempt is leased to a worker id
    /// the principal may act as.
    pub async fn running_attempt_job_as(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
    ) -> Result<(Uuid, i32)> {
        const GET_ATTEMPT: &str = include_str!("sql/artifacts/get_attempt.sql");
        measured("running_attempt_job", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(GET_ATTEMPT, &[&attempt_id])
                .await?
                .ok_or_else(|| Error::NotFound(format!("attempt {attempt_id} does not exist")))?;
            if let Some(p) = worker {
                p.check_worker(&row.try_get::<_, String>(3)?)?;
            }
            let state: String = row.try_get(2)?;
            if state != "running" {
                return Err(stale(attempt_id, parse_state(&state)?));
            }
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
        .await
    }

    /// Records an uploaded file, if its attempt still holds the lease.
    pub async fn record_artifact(&self, a: &ArtifactRow) -> Result<()> {
        self.record_artifact_as(a, None).await
    }

    /// [`Store::record_artifact`], refused unless the attempt is leased to a worker id the
    /// principal may act as (checked on the locked row).
    pub async fn record_artifact_as(
        &self,
        a: &ArtifactRow,
        worker: Option<&crate::auth::Principal>,
    ) -> Result<()> {
        const LOCK_ATTEMPT: &str = include_str!("sql/artifacts/lock_attempt.sql");
        const UPSERT_ARTIFACT: &str = include_str!("sql/artifacts/upsert_artifact.sql");
        measured("record_artifact", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx.query_one_cached(LOCK_ATTEMPT, &[&a.attempt_id]).await?;
            if let Some(p) = worker {
                p.check_worker(&row.try_get::<_, String>(1)?)?;
            }
            let state: String = row.try_get(0)?;
            if state != "running" {
                return Err(stale(a.attempt_id, parse_state(&state)?));
            }
            tx.execute_cached(
                UPSERT_ARTIFACT,
                &[&a.attempt_id, &a.job_id, &a.name, &a.size, &a.sha256],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Files kept from the job's succeeded attempt.
    pub async fn list_artifacts(&self, job_id: Uuid) -> Result<Vec<ArtifactRow>> {
        const LIST_ARTIFACTS: &str = include_str!("sql/artifacts/list_artifacts.sql");
        measured("list_artifacts", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_ARTIFACTS, &[&job_id]).await?;
            rows.iter().map(artifact_from_row).collect()
        })
        .await
    }
}
