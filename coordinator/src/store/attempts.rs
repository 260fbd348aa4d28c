//! Attempts: ending one (the result, the transition, the job moved on, in one
//! transaction), expired leases, and an attempt list.

use super::outbox::insert_event;
use super::{attempt_from_row, measured, AttemptRow, Cached, Store};
use crate::error::{Error, Result};
use drover_core::{AttemptState, JobState, RawResult};
use serde_json::json;
use std::time::Duration;
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
    /// The worker the attempt ran on, where the path that ended it read it.
    pub worker_id: Option<String>,
    /// The request's `return_slot` was honoured where the result was stored: the slot is
    /// in the worker session's credit, or already refilled (store/group.rs).
    pub slot_returned: bool,
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
    /// The worker counts the slot free once it sends the result: offer it again (claim
    /// for it with the result, or credit the worker's session).
    pub return_slot: bool,
}

impl EndRequest {
    /// A result with nothing but its outcome (no output, log count, usage or slot), as
    /// the coordinator itself ends attempts.
    pub fn bare(raw: RawResult) -> Self {
        EndRequest {
            raw,
            output_tail: String::new(),
            log_chunk_count: None,
            only_if_expired: false,
            usage: None,
            return_slot: false,
        }
    }
}

/// A job's attempts, oldest first.
pub(super) const LIST_ATTEMPTS: &str = include_str!("sql/attempts/list_attempts.sql");

impl Store {
    pub async fn list_attempts(&self, job_id: Uuid) -> Result<Vec<AttemptRow>> {
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
        measured(
            "end_attempt",
            self.end_attempt_grouped(attempt_id, worker, req),
        )
        .await
    }

    /// Fails the attempt and its job when its result could not be applied.
    pub(super) async fn end_attempt_unapplied(&self, attempt_id: Uuid, why: &str) -> Result<Ended> {
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
            worker_id: None,
            slot_returned: false,
        })
    }
}
