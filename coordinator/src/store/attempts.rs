//! Attempts: ending one (the result, the transition, the job moved on, in one
//! transaction), expired leases, and an attempt list.

use super::outbox::{insert_event, NOTIFY};
use super::{
    attempt_from_row, measured, millis, parse_state, stale, AttemptRow, Cached, Store, JOBS_CHANNEL,
};
use crate::error::{Error, Result};
use drover_core::{AttemptState, Counts, JobState, RawResult, RetryPolicy};
use serde_json::json;
use std::time::Duration;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

/// What ending an attempt did.
#[derive(Debug, Clone)]
pub struct Ended {
    pub job_id: Uuid,
    /// How long the attempt ran.
    pub duration: Option<Duration>,
    pub attempt_state: AttemptState,
    pub job_state: JobState,
    pub reason: String,
}

/// How an attempt is being ended, and by whom.
#[derive(Debug, Clone)]
pub struct EndRequest {
    pub raw: RawResult,
    pub output_tail: String,
    /// Chunks the worker says it sent; the log must be complete before the result is taken.
    pub log_chunk_count: Option<i64>,
    /// Only end it if its lease has expired (the reaper), so a heartbeat that just
    /// arrived wins.
    pub only_if_expired: bool,
    /// Peak RSS and CPU time of the attempt's processes, when the worker measured them.
    pub usage: Option<(i64, i64)>,
}

impl Store {
    pub async fn list_attempts(&self, job_id: Uuid) -> Result<Vec<AttemptRow>> {
        const LIST_ATTEMPTS: &str = include_str!("sql/attempts/list_attempts.sql");
        measured("list_attempts", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_ATTEMPTS, &[&job_id]).await?;
            rows.iter().map(attempt_from_row).collect()
        })
        .await
    }

    /// Attempts whose lease has expired, oldest first.
    pub async fn expired_attempts(&self, limit: i64) -> Result<Vec<Uuid>> {
        const EXPIRED_ATTEMPTS: &str = include_str!("sql/attempts/expired_attempts.sql");
        measured("expired_attempts", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(EXPIRED_ATTEMPTS, &[&limit]).await?;
            rows.iter()
                .map(|r| r.try_get(0).map_err(Error::from))
                .collect()
        })
        .await
    }

    // ---------------------------------------------------------------- results

    /// Ends a running attempt and moves its job on, in one transaction. Refuses with
    /// FAILED_PRECONDITION if the attempt is not the job's current running attempt.
    ///
    /// A result whose transition cannot be computed or stored (an internal error, e.g. an
    /// unreadable stored policy or a value out of the database's range) does not leave the
    /// job running: the attempt ends `failed_permanent` and the job `permanent_failed`,
    /// with the error as the reason.
    pub async fn end_attempt(&self, attempt_id: Uuid, req: &EndRequest) -> Result<Ended> {
        self.end_attempt_as(attempt_id, None, req).await
    }

    /// [`Store::end_attempt`] for a worker whose token allows the worker ids in `worker`
    /// (a pattern; `None`: any): checked on the locked row, so a worker can only finish
    /// attempts leased to it.
    pub async fn end_attempt_as(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        req: &EndRequest,
    ) -> Result<Ended> {
        measured("end_attempt", async {
        match self.end_attempt_tx(attempt_id, worker, req).await {
                Err(e) if e.kind() == crate::error::ErrorKind::Internal => {
                    tracing::error!(%attempt_id, error = ?e, "attempt result could not be applied; failing the job");
                    let why = match e {
                        Error::Internal(why) => why,
                        e => e.to_string(),
                    };
                self.end_attempt_unapplied(attempt_id, &why).await
            }
            other => other,
        }
        })
        .await
    }

    async fn end_attempt_unapplied(&self, attempt_id: Uuid, why: &str) -> Result<Ended> {
        const FAIL_UNAPPLIED_ATTEMPT: &str =
            include_str!("sql/attempts/fail_unapplied_attempt.sql");
        const FAIL_UNAPPLIED_JOB: &str = include_str!("sql/attempts/fail_unapplied_job.sql");
        let reason = drover_core::validate::sanitize_reported(
            &format!("the attempt's result could not be applied: {why}"),
            1024,
        );
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some(row) = tx
            .query_opt_cached(FAIL_UNAPPLIED_ATTEMPT, &[&attempt_id, &reason])
            .await?
        else {
            return Err(Error::FailedPrecondition(format!(
                "attempt {attempt_id} is not running"
            )));
        };
        let job_id: Uuid = row.try_get(0)?;
        tx.execute_cached(FAIL_UNAPPLIED_JOB, &[&job_id, &reason, &attempt_id])
            .await?;
        insert_event(
            &tx,
            job_id,
            "job.permanent_failed",
            json!({"attempt_id": attempt_id, "attempt_state": "failed_permanent", "reason": reason}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ended {
            job_id,
            duration: None,
            attempt_state: AttemptState::FailedPermanent,
            job_state: JobState::PermanentFailed,
            reason,
        })
    }

    pub(super) async fn end_attempt_tx(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        req: &EndRequest,
    ) -> Result<Ended> {
        const LOCK_ATTEMPT_AND_JOB: &str = include_str!("sql/attempts/lock_attempt_and_job.sql");
        const END_ATTEMPT_WITH_FINGERPRINT: &str =
            include_str!("sql/attempts/end_attempt_with_fingerprint.sql");
        const END_ATTEMPT: &str = include_str!("sql/attempts/end_attempt.sql");
        const UPDATE_JOB: &str = include_str!("sql/attempts/update_job.sql");
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt_cached(LOCK_ATTEMPT_AND_JOB, &[&attempt_id])
            .await?
            .ok_or_else(|| Error::NotFound(format!("attempt {attempt_id} does not exist")))?;
        if let Some(p) = worker {
            p.check_worker(&row.try_get::<_, String>("worker_id")?)?;
        }
        let state: AttemptState = parse_state(&row.try_get::<_, String>("state")?)?;
        let job_id: Uuid = row.try_get("job_id")?;
        if state != AttemptState::Running {
            return Err(stale(attempt_id, state));
        }
        if req.only_if_expired && !row.try_get::<_, bool>("expired")? {
            return Err(Error::FailedPrecondition(format!(
                "attempt {attempt_id}'s lease was renewed"
            )));
        }
        if let Some(expected) = req.log_chunk_count {
            let have: i64 = row.try_get("log_chunks")?;
            if have < expected {
                return Err(Error::Aborted(format!(
                    "log of attempt {attempt_id} is incomplete: {have} of {expected} chunks \
                     stored; send the rest first"
                )));
            }
        }
        let Json(policy): Json<serde_json::Value> = row.try_get("retry_policy")?;
        let policy: RetryPolicy = serde_json::from_value(policy)
            .map_err(|e| Error::Internal(format!("stored retry policy is unreadable: {e}")))?;
        let queue: String = row.try_get("queue")?;
        // The decision is pure (drover_core::transition); this only reads and writes.
        let t = drover_core::transition(
            &policy,
            &crate::patterns::get(&policy),
            Counts {
                failures: row.try_get("failure_count")?,
                lost: row.try_get("lost_count")?,
            },
            &req.raw,
            &req.output_tail,
            row.try_get("cancel_requested")?,
            rand::random::<f64>(),
        );
        let (peak_rss, cpu_ms) = match req.usage {
            Some((rss, cpu)) => (Some(rss), Some(cpu)),
            None => (None, None),
        };
        // Failures with output get a fingerprint (and their group is updated) in this same
        // transaction; the success path runs no extra statement.
        let failure = if drover_core::fingerprint::applies(t.attempt_state, &req.output_tail) {
            Some(
                super::failures::record(
                    &tx,
                    job_id,
                    attempt_id,
                    &queue,
                    &t.cause,
                    &req.output_tail,
                    t.exit_code,
                )
                .await?,
            )
        } else {
            None
        };
        let fp = failure.as_ref().map(|f| f.fingerprint.as_str());
        let outcome = t.attempt_state.as_str();
        let attempt_params: [&(dyn ToSql + Sync); 8] = [
            &attempt_id,
            &outcome,
            &t.exit_code,
            &t.signal,
            &t.reason,
            &peak_rss,
            &cpu_ms,
            &fp,
        ];
        tx.execute_cached(
            if failure.is_some() {
                END_ATTEMPT_WITH_FINGERPRINT
            } else {
                END_ATTEMPT
            },
            &attempt_params[..if failure.is_some() { 8 } else { 7 }],
        )
        .await?;
        tx.execute_cached(
            UPDATE_JOB,
            &[
                &job_id,
                &t.job_state.as_str(),
                &t.counts.failures,
                &t.counts.lost,
                &t.reason,
                &t.not_before.map(millis),
                &t.job_state.is_terminal(),
            ],
        )
        .await?;
        insert_event(
            &tx,
            job_id,
            t.event,
            match &failure {
                None => json!({
                    "attempt_id": attempt_id,
                    "attempt_state": t.attempt_state.as_str(),
                    "reason": t.reason,
                }),
                Some(f) => json!({
                    "attempt_id": attempt_id,
                    "attempt_state": t.attempt_state.as_str(),
                    "reason": t.reason,
                    "fingerprint": f.fingerprint,
                    "sample": f.sample,
                    "new_fingerprint": f.new_group,
                }),
            },
        )
        .await?;
        // Wakes every coordinator's dispatcher: at once for an immediate retry, or to
        // re-arm its timer for a backoff.
        if t.job_state == JobState::Pending {
            tx.execute_cached(NOTIFY, &[&JOBS_CHANNEL, &queue]).await?;
        }
        // Log followers learn that the attempt (and maybe the job) ended.
        tx.execute_cached(
            NOTIFY,
            &[&crate::log_watch::LOGS_CHANNEL, &job_id.to_string()],
        )
        .await?;
        tx.commit().await?;
        Ok(Ended {
            job_id,
            duration: Some(Duration::from_secs_f64(
                row.try_get::<_, f64>("ran")?.max(0.0),
            )),
            attempt_state: t.attempt_state,
            job_state: t.job_state,
            reason: t.reason,
        })
    }
}
