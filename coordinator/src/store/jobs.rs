//! Jobs: submitting, reading and listing them, manual retries, cancelling, and the plain
//! claim (jobs without concurrency keys; keyed ones are claimed in `flow`).

use super::flow;
use super::outbox::{insert_event, NOTIFY};
use super::{
    attempt_from_row, claimed_from_row, job_from_row, measured, millis, AttemptRow, Cached, Claim,
    JobRow, Store, CONTROL_CHANNEL, JOBS_CHANNEL,
};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use drover_core::{JobSpec, JobState, RetryPolicy};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

/// One job by id.
pub(super) const GET_JOB: &str = include_str!("sql/jobs/get_job.sql");

/// Jobs created by manually retrying a job.
const RETRIED_BY: &str = include_str!("sql/jobs/retried_by.sql");

/// A job as `GetJob` shows it ([`Store::job_detail`]).
pub struct JobDetail {
    pub job: JobRow,
    /// Oldest first.
    pub attempts: Vec<AttemptRow>,
    /// Jobs created by manually retrying this one.
    pub retried_by: Vec<Uuid>,
    /// Dependencies that have not succeeded yet.
    pub waiting_for: Vec<Uuid>,
}

/// Leases due jobs without concurrency keys to several workers at once. MATERIALIZED keeps
/// the planner from re-running the locking subquery (which could claim more than asked
/// for). One index scan per queue (LATERAL): with `queue = ANY($1)` the planner could not
/// use the pending index for the order and sorted every pending job on each claim — 4.7 ms
/// a claim with 7 000 pending, most of PostgreSQL's time in the throughput benchmark. That
/// index (jobs_pending_plain_idx, V30) holds only jobs without concurrency keys, so keyed
/// ones waiting are never read here. Rows locked beyond those kept are released at
/// commit. Paused queues (queue_settings) are left out: one primary-key probe per queue.
/// started_at is when the lease is taken (clock_timestamp), not when the statement began,
/// like the keyed claim's (store/flow.rs).
pub(super) const CLAIM: &str = include_str!("sql/jobs/claim.sql");

/// The parameters of one [`CLAIM`] and the reading of its rows: run alone by
/// [`Store::claim_for`], or inside a group of results (store/group.rs).
pub(super) struct PlainClaim<'a> {
    queues: &'a [String],
    labels: &'a [String],
    ids: Vec<&'a str>,
    wants: Vec<i64>,
    slots: Vec<i64>,
    ahead: Vec<i64>,
    ttl_ms: f64,
}

impl<'a> PlainClaim<'a> {
    /// `workers`: (id, jobs it asks for, its slots, jobs it may hold ahead), ids distinct.
    pub(super) fn new<S: AsRef<str>>(
        workers: &'a [(S, i64, i64, i64)],
        queues: &'a [String],
        labels: &'a [String],
        lease_ttl: Duration,
    ) -> Self {
        PlainClaim {
            queues,
            labels,
            ids: workers.iter().map(|w| w.0.as_ref()).collect(),
            wants: workers.iter().map(|w| w.1).collect(),
            slots: workers.iter().map(|w| w.2).collect(),
            ahead: workers.iter().map(|w| w.3).collect(),
            ttl_ms: millis(lease_ttl),
        }
    }

    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.queues,
            &self.labels,
            &self.ids,
            &self.wants,
            &self.slots,
            &self.ttl_ms,
            &self.ahead,
        ]
    }

    /// One [`Claim`] per worker, in the order given.
    pub(super) fn claims(&self, rows: &[tokio_postgres::Row]) -> Result<Vec<Claim>> {
        let mut claims: Vec<Claim> = self
            .wants
            .iter()
            .map(|&want| Claim {
                jobs: Vec::new(),
                room: want,
            })
            .collect();
        for r in rows {
            let worker: &str = r.try_get("for_worker")?;
            let Some(i) = self.ids.iter().position(|w| *w == worker) else {
                continue;
            };
            claims[i].room = claims[i].room.min(r.try_get::<_, i64>("room")?);
            // The one row of a worker that got nothing has only `room`.
            if r.try_get::<_, Option<Uuid>>("attempt_id")?.is_some() {
                claims[i].jobs.push(claimed_from_row(r)?);
            }
        }
        Ok(claims)
    }
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub label: Option<String>,
    /// Only jobs whose params contain this one.
    pub param: Option<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset cursor: (created_at, id) of the last job on the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
    /// Stop before the jobs' variable-size fields (argv, env, params, labels, outputs,
    /// reason, policy) add up to more than this; at least one job is always returned.
    pub max_bytes: i64,
}

impl Store {
    /// Stores a new job, or returns the existing one with the same idempotency key.
    pub async fn submit(
        &self,
        spec: &JobSpec,
        policy: &RetryPolicy,
        trace_parent: Option<&str>,
    ) -> Result<(JobRow, bool)> {
        self.submit_with_flow(spec, policy, trace_parent, &flow::Flow::default())
            .await
    }

    /// Submit with flow-control settings (keys, priority), set in the same transaction.
    pub async fn submit_with_flow(
        &self,
        spec: &JobSpec,
        policy: &RetryPolicy,
        trace_parent: Option<&str>,
        flow: &flow::Flow,
    ) -> Result<(JobRow, bool)> {
        const GET_JOB_BY_KEY: &str = include_str!("sql/jobs/get_job_by_key.sql");
        measured("submit", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let result = match insert_job(&tx, spec, policy, None, None, trace_parent).await? {
                Some(job) => {
                    if flow.priority != 0 || !flow.keys.is_empty() || !flow.after.is_empty() {
                        flow::set_job_flow(&tx, job.id, flow).await?;
                        let row = tx.query_one_cached(GET_JOB, &[&job.id]).await?;
                        (job_from_row(&row)?, true)
                    } else {
                        (job, true)
                    }
                }
                None => {
                    let row = tx
                        .query_one_cached(GET_JOB_BY_KEY, &[&spec.idempotency_key])
                        .await?;
                    let existing = job_from_row(&row)?;
                    check_same_submission(&tx, &existing, spec, policy, flow).await?;
                    (existing, false)
                }
            };
            tx.commit().await?;
            Ok(result)
        })
        .await
    }

    /// Manual retry: a new job with the original's spec (params replaced by `set_params`),
    /// linked to it. The original is only read.
    pub async fn retry_job(
        &self,
        id: Uuid,
        set_params: &BTreeMap<String, String>,
    ) -> Result<JobRow> {
        const LOCK_JOB_KEY_SHARE: &str = include_str!("sql/jobs/lock_job_key_share.sql");
        const SET_KEYS_AND_PRIORITY: &str = include_str!("sql/jobs/set_keys_and_priority.sql");
        measured("retry_job", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            // Key-share locked: retention (which takes FOR UPDATE SKIP LOCKED) cannot delete
            // the original under the new job's reference; if it won the race, this finds none.
            let row = tx
                .query_opt_cached(LOCK_JOB_KEY_SHARE, &[&id])
                .await?
                .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
            let orig = job_from_row(&row)?;
            if !orig.state.is_terminal() {
                return Err(Error::FailedPrecondition(format!(
                    "job {id} is {}; only finished jobs can be retried (cancel it first)",
                    orig.state
                )));
            }
            let mut spec = orig.spec.clone();
            for (k, v) in set_params {
                match spec.params.get_mut(k) {
                    Some(slot) => *slot = v.clone(),
                    None => {
                        let known: Vec<&str> =
                            orig.spec.params.keys().map(String::as_str).collect();
                        return Err(Error::Invalid(format!(
                            "set_params[{k:?}]: job {id} has no param {k:?} (its params: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )));
                    }
                }
            }
            spec.idempotency_key = None;
            drover_core::validate::validate_spec(&spec)?;
            let root = orig.original_job_id.unwrap_or(orig.id);
            let mut job = insert_job(&tx, &spec, &orig.policy, Some(root), Some(orig.id), None)
                .await?
                .ok_or_else(|| Error::Internal("retry insert returned nothing".into()))?;
            // The new job holds the same concurrency keys (their limits are already stored).
            // ... and records the same priority (its rank is not shifted: see architecture.md).
            if !orig.concurrency_keys.is_empty() || orig.priority != 0 {
                tx.execute_cached(
                    SET_KEYS_AND_PRIORITY,
                    &[&job.id, &orig.concurrency_keys, &orig.priority],
                )
                .await?;
                job.concurrency_keys = orig.concurrency_keys.clone();
                job.priority = orig.priority;
            }
            tx.commit().await?;
            Ok(job)
        })
        .await
    }

    /// Finished jobs matching a bulk-retry filter, most recently finished first.
    pub async fn finished_jobs(
        &self,
        state: JobState,
        queue: Option<&str>,
        finished_within: Option<Duration>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        const FINISHED_JOBS: &str = include_str!("sql/jobs/finished_jobs.sql");
        measured("finished_jobs", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    FINISHED_JOBS,
                    &[
                        &state.as_str(),
                        &queue,
                        &finished_within.map(millis),
                        &limit,
                    ],
                )
                .await?;
            rows.iter().map(job_from_row).collect()
        })
        .await
    }

    /// Jobs with an attempt that failed with fingerprint `fp`, newest first (keyset on
    /// created_at, id). `state` narrows to one job state; `unretried` drops jobs already
    /// retried by hand, so `retry --fingerprint` twice does not retry them twice.
    pub async fn jobs_with_fingerprint(
        &self,
        fp: &str,
        queue: Option<&str>,
        state: Option<JobState>,
        unretried: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        const JOBS_WITH_FINGERPRINT: &str = include_str!("sql/jobs/jobs_with_fingerprint.sql");
        measured("jobs_with_fingerprint", async {
            let c = self.pool.get().await?;
            let (after_t, after_id) = after.unzip();
            let rows = c
                .query_cached(
                    JOBS_WITH_FINGERPRINT,
                    &[
                        &fp,
                        &queue,
                        &state.map(|s| s.as_str()),
                        &unretried,
                        &after_t,
                        &after_id,
                        &limit,
                    ],
                )
                .await?;
            rows.iter().map(job_from_row).collect()
        })
        .await
    }

    /// A job with what is shown beside it ([`JobDetail`]), in one round trip: the four
    /// statements go pipelined on one connection, the job's first. PostgreSQL runs them in
    /// order, each in a snapshot taken after the one before, so the rest is never older
    /// than the job row: a succeeded job never comes back with its attempt still running.
    /// (Run on separate connections, or each awaited in turn, they took two round trips or
    /// more; in one transaction, BEGIN and COMMIT add two.)
    pub async fn job_detail(&self, id: Uuid) -> Result<Option<JobDetail>> {
        use super::attempts::LIST_ATTEMPTS;
        use super::flow::WAITING_FOR;
        measured("job_detail", async {
            let c = self.pool.get().await?;
            // Prepared first (once per connection; no round trip after), so that each
            // query below is sent when first polled, and `biased` polls them in order.
            let (s_job, s_attempts, s_retried, s_waits) = tokio::try_join!(
                c.prepare_cached(GET_JOB),
                c.prepare_cached(LIST_ATTEMPTS),
                c.prepare_cached(RETRIED_BY),
                c.prepare_cached(WAITING_FOR),
            )?;
            let by_id: [&(dyn ToSql + Sync); 1] = [&id];
            let (job, attempts, retried, waits) = tokio::try_join!(
                biased;
                c.query_opt(&s_job, &by_id),
                c.query(&s_attempts, &by_id),
                c.query(&s_retried, &by_id),
                c.query(&s_waits, &by_id),
            )?;
            let Some(job) = job else {
                return Ok(None);
            };
            let ids = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<Uuid>> {
                rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
            };
            Ok(Some(JobDetail {
                job: job_from_row(&job)?,
                attempts: attempts
                    .iter()
                    .map(attempt_from_row)
                    .collect::<Result<_>>()?,
                retried_by: ids(retried)?,
                waiting_for: ids(waits)?,
            }))
        })
        .await
    }

    /// Cancels a job. Pending: cancelled now. Running: marked, and the attempt and worker
    /// that must be stopped are returned; the attempt's end then makes the job cancelled.
    pub async fn cancel_job(&self, id: Uuid) -> Result<(JobRow, Option<(Uuid, String)>)> {
        const LOCK_JOB: &str = include_str!("sql/jobs/lock_job.sql");
        const CANCEL_PENDING: &str = include_str!("sql/jobs/cancel_pending.sql");
        const REQUEST_CANCEL: &str = include_str!("sql/jobs/request_cancel.sql");
        const GET_ATTEMPT_WORKER: &str = include_str!("sql/jobs/get_attempt_worker.sql");
        measured("cancel_job", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx
                .query_opt_cached(LOCK_JOB, &[&id])
                .await?
                .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
            let job = job_from_row(&row)?;
            let stop = match job.state {
                JobState::Pending => {
                    tx.execute_cached(CANCEL_PENDING, &[&id]).await?;
                    insert_event(&tx, id, "job.cancelled", json!({"while": "pending"})).await?;
                    None
                }
                JobState::Running => {
                    tx.execute_cached(REQUEST_CANCEL, &[&id]).await?;
                    let attempt = job.current_attempt_id.ok_or_else(|| {
                        Error::Internal(format!("running job {id} has no current attempt"))
                    })?;
                    let worker: String = tx
                        .query_one_cached(GET_ATTEMPT_WORKER, &[&attempt])
                        .await?
                        .try_get(0)?;
                    tx.execute_cached(
                        NOTIFY,
                        &[&CONTROL_CHANNEL, &format!("cancel {attempt} {worker}")],
                    )
                    .await?;
                    Some((attempt, worker))
                }
                s => {
                    return Err(Error::FailedPrecondition(format!(
                        "job {id} already finished as {s}; nothing to cancel"
                    )))
                }
            };
            let row = tx.query_one_cached(GET_JOB, &[&id]).await?;
            tx.commit().await?;
            Ok((job_from_row(&row)?, stop))
        })
        .await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Option<JobRow>> {
        measured("get_job", async {
            let c = self.pool.get().await?;
            let row = c.query_opt_cached(GET_JOB, &[&id]).await?;
            row.as_ref().map(job_from_row).transpose()
        })
        .await
    }

    /// Newest first, keyset-paginated on (created_at, id).
    /// Jobs matching `f`, newest first, and whether the byte budget cut the page short.
    pub async fn list_jobs(&self, f: &JobFilter) -> Result<(Vec<JobRow>, bool)> {
        const LIST_JOB_SIZES: &str = include_str!("sql/jobs/list_job_sizes.sql");
        const LIST_JOBS_BY_ID: &str = include_str!("sql/jobs/list_jobs_by_id.sql");
        measured("list_jobs", async {
            let c = self.pool.get().await?;
            let state = f.state.map(|s| s.as_str().to_string());
            let param = f
                .param
                .as_ref()
                .map(|(k, v)| serde_json::json!({ k.as_str(): v }));
            let (after_ts, after_id) = match f.after {
                Some((ts, id)) => (Some(ts), Some(id)),
                None => (None, None),
            };
            // First the sizes only, so a page of big jobs is never loaded whole: then the
            // rows that fit in the byte budget.
            let sized = c
                .query_cached(
                    LIST_JOB_SIZES,
                    &[
                        &state,
                        &f.queue,
                        &after_ts,
                        &after_id,
                        &f.limit,
                        &f.label,
                        &param,
                        &f.created_after,
                        &f.created_before,
                    ],
                )
                .await?;
            let sizes: Vec<(Uuid, i64)> = sized
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get::<_, Option<i32>>(1)?.unwrap_or(0).into(),
                    ))
                })
                .collect::<Result<_>>()?;
            let ids = drover_core::paging::fit_in_budget(&sizes, f.max_bytes);
            let cut = ids.len() < sizes.len();
            let rows = c.query_cached(LIST_JOBS_BY_ID, &[&ids]).await?;
            Ok((rows.iter().map(job_from_row).collect::<Result<_>>()?, cut))
        })
        .await
    }

    /// Earliest time a pending job becomes due, if any is waiting out a backoff.
    pub async fn next_due(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>> {
        const NEXT_DUE: &str = include_str!("sql/jobs/next_due.sql");
        measured("next_due", async {
            // On the per-job pool: its plans probe the pending indexes whatever the
            // statistics say.
            let c = self.hot.get().await?;
            let row = c.query_one_cached(NEXT_DUE, &[&queues]).await?;
            let due: Option<DateTime<Utc>> = row.try_get(0)?;
            // A rate-limited key's next token is a due time too.
            Ok(match (due, self.next_token_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        })
        .await
    }

    // ---------------------------------------------------------------- leasing

    /// Leases up to `n` due jobs to one worker (see [`Store::claim_for`]).
    pub async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        labels: &[String],
        n: i64,
        lease_ttl: Duration,
        slots: i64,
    ) -> Result<Claim> {
        let mut claims = self
            .claim_for(&[(worker_id, n, slots, 0)], queues, labels, lease_ttl)
            .await?;
        Ok(claims.pop().unwrap_or(Claim {
            jobs: Vec::new(),
            room: 0,
        }))
    }

    /// Leases due pending jobs to several workers that take the same `queues` and
    /// `labels`, each given as (id, jobs it asks for, its slots, jobs it may hold ahead),
    /// creating one attempt each, and never so many that a worker holds more than its
    /// slots plus its lease-ahead in running attempts (its credits are its word; its
    /// running attempts are the truth). Free slots are served before room to hold ahead.
    /// One statement and one commit for all of them; no row lock is held while jobs run.
    /// Returns one [`Claim`] per worker, in the order given; worker ids must be distinct.
    pub async fn claim_for<S: AsRef<str>>(
        &self,
        workers: &[(S, i64, i64, i64)],
        queues: &[String],
        labels: &[String],
        lease_ttl: Duration,
    ) -> Result<Vec<Claim>> {
        measured("claim", async {
            let c = self.hot.get().await?;
            let ask = PlainClaim::new(workers, queues, labels, lease_ttl);
            let rows = c.query_cached(CLAIM, &ask.params()).await?;
            let ids: Vec<&str> = workers.iter().map(|w| w.0.as_ref()).collect();
            let mut claims = ask.claims(&rows)?;
            // Jobs with concurrency keys take their own path (a transaction that also counts
            // the keys), only when the plain claim left room and keyed jobs may be waiting.
            // One that comes back short found all there was for these queues and labels:
            // the workers after it are not asked for again.
            let mut keyed_left = true;
            for (i, claim) in claims.iter_mut().enumerate() {
                let left = claim.room - claim.jobs.len() as i64;
                if left > 0 && keyed_left && self.keyed_jobs_may_wait() {
                    let more = self
                        .claim_keyed(ids[i], queues, labels, left, lease_ttl)
                        .await?;
                    keyed_left = more.len() as i64 == left;
                    claim.jobs.extend(more);
                }
            }
            Ok(claims)
        })
        .await
    }

    pub async fn jobs_by_state(&self) -> Result<Vec<(String, i64)>> {
        const COUNT_BY_STATE: &str = include_str!("sql/jobs/count_by_state.sql");
        measured("jobs_by_state", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(COUNT_BY_STATE, &[]).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }

    pub async fn failed_since(&self, within: Duration) -> Result<i64> {
        const COUNT_FAILED_SINCE: &str = include_str!("sql/jobs/count_failed_since.sql");
        measured("failed_since", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(COUNT_FAILED_SINCE, &[&millis(within)])
                .await?
                .try_get(0)?)
        })
        .await
    }
}

/// Refuses a submit whose idempotency key is held by `existing` unless it asks for the
/// same job (see drover_core::idempotency for what "same" means).
async fn check_same_submission(
    tx: &Transaction<'_>,
    existing: &JobRow,
    spec: &JobSpec,
    policy: &RetryPolicy,
    flow: &flow::Flow,
) -> Result<()> {
    const STORED_DEP_ROOTS: &str = include_str!("sql/jobs/stored_dep_roots.sql");
    const GIVEN_DEP_ROOTS: &str = include_str!("sql/jobs/given_dep_roots.sql");
    use drover_core::idempotency::{first_difference, reused_key_message, Submission};
    let stored_roots: Vec<String> = tx
        .query_cached(STORED_DEP_ROOTS, &[&existing.id])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let given_roots: Vec<String> = if flow.after.is_empty() {
        Vec::new()
    } else {
        // An id that names no job stays as given (and so differs from any stored one).
        tx.query_cached(GIVEN_DEP_ROOTS, &[&flow.after])
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?
    };
    let stored = Submission {
        spec: existing.spec.clone(),
        policy: existing.policy.clone(),
        priority: existing.priority,
        concurrency_keys: existing.concurrency_keys.clone(),
        after_roots: stored_roots,
    };
    let given = Submission {
        spec: spec.clone(),
        policy: policy.clone(),
        priority: flow.priority,
        concurrency_keys: flow.keys.iter().map(|(k, _)| k.clone()).collect(),
        after_roots: given_roots,
    };
    match first_difference(&stored, &given) {
        None => Ok(()),
        Some(field) => Err(Error::AlreadyExists(reused_key_message(
            spec.idempotency_key.as_deref().unwrap_or_default(),
            &existing.id.to_string(),
            field,
        ))),
    }
}

/// Inserts a pending job; None if its idempotency key is taken.
pub(super) async fn insert_job(
    tx: &Transaction<'_>,
    spec: &JobSpec,
    policy: &RetryPolicy,
    original_job_id: Option<Uuid>,
    retry_of: Option<Uuid>,
    trace_parent: Option<&str>,
) -> Result<Option<JobRow>> {
    const INSERT_JOB: &str = include_str!("sql/jobs/insert_job.sql");
    let row = tx
        .query_opt_cached(
            INSERT_JOB,
            &[
                &Uuid::now_v7(),
                &spec.queue,
                &spec.argv,
                &Json(&spec.env),
                &spec.labels,
                &Json(&spec.params),
                &spec.timeout_ms,
                &Json(policy),
                &spec.idempotency_key,
                &original_job_id,
                &retry_of,
                &spec.outputs,
                &trace_parent,
                &Json(&spec.limits),
                &Json(&spec.secret_env),
            ],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let job = job_from_row(&row)?;
    insert_event(
        tx,
        job.id,
        "job.submitted",
        json!({"queue": job.spec.queue, "retry_of": retry_of}),
    )
    .await?;
    tx.execute_cached(NOTIFY, &[&JOBS_CHANNEL, &job.spec.queue])
        .await?;
    Ok(Some(job))
}
