//! Every SQL statement the coordinator runs, in one place.
//!
//! State changes follow one pattern: lock the rows, ask the pure domain function
//! (`drover_core::transition`) what happens next, write the attempt, the job and
//! the outbox event, and commit — all in one transaction (invariant 3).

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use drover_core::logcap::{self, CapState};
use drover_core::{AttemptState, Counts, JobSpec, JobState, RawResult, RetryPolicy};
use serde_json::json;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;
use uuid::Uuid;

mod access;
pub use access::{AuditRow, NewToken, TokenRow};
pub use dashboard::SessionRow;

/// Statements prepared once per pooled connection (deadpool's statement cache) and reused:
/// a repeated query then skips PostgreSQL's parse and plan and one network round trip,
/// which the benchmark showed to be most of the database's work per job.
pub(crate) trait Cached: GenericClient {
    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a
    {
        async move { self.query(&self.prepare_cached(sql).await?, params).await }
    }

    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Row, tokio_postgres::Error>> + Send + 'a {
        async move {
            self.query_one(&self.prepare_cached(sql).await?, params)
                .await
        }
    }

    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Option<Row>, tokio_postgres::Error>> + Send + 'a
    {
        async move {
            self.query_opt(&self.prepare_cached(sql).await?, params)
                .await
        }
    }

    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        async move { self.execute(&self.prepare_cached(sql).await?, params).await }
    }
}

impl<T: GenericClient> Cached for T {}

/// Runs one store operation, measured: its latency in `drover_store_operation_seconds`
/// and, when it fails, `drover_store_operation_errors_total` (labels `op`, and `kind` for
/// errors), as Neon's storage controller labels every database operation. Every public
/// store method that runs SQL wraps its body in this.
pub(crate) async fn measured<T>(
    op: &'static str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let start = std::time::Instant::now();
    let r = f.await;
    crate::metrics::store_op(op, start.elapsed(), r.as_ref().err().map(Error::kind));
    r
}

/// NOTIFY channel: a job became ready to lease (payload: queue).
pub const JOBS_CHANNEL: &str = "drover_jobs";
/// NOTIFY channel: orders for whichever coordinator holds a worker's session
/// (payload: `cancel <attempt_id> <worker_id>`).
pub const CONTROL_CHANNEL: &str = "drover_control";

const JOB_COLUMNS: &str = "j.id, j.queue, j.state, j.argv, j.env, j.labels, j.params, \
    j.timeout_ms, j.retry_policy, j.idempotency_key, j.original_job_id, j.retry_of, \
    j.attempt_count, j.current_attempt_id, j.not_before, j.reason, j.created_at, \
    j.updated_at, j.finished_at, j.cancel_requested_at, j.outputs, j.limits, j.secret_env, \
    j.concurrency_keys, j.priority";

const ATTEMPT_COLUMNS: &str = "a.id, a.job_id, a.number, a.worker_id, a.state, a.started_at, \
    a.lease_expires_at, a.finished_at, a.exit_code, a.signal, a.reason, a.log_bytes, \
    a.log_dropped_bytes, a.logs_purged_at, a.peak_rss_bytes, a.cpu_time_ms";

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub spec: JobSpec,
    pub state: JobState,
    pub policy: RetryPolicy,
    pub original_job_id: Option<Uuid>,
    pub retry_of: Option<Uuid>,
    pub attempt_count: i32,
    pub current_attempt_id: Option<Uuid>,
    pub not_before: DateTime<Utc>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    /// Concurrency keys the job holds while it runs.
    pub concurrency_keys: Vec<String>,
    pub priority: i32,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub id: Uuid,
    pub job_id: Uuid,
    pub number: i32,
    pub worker_id: String,
    pub state: AttemptState,
    pub started_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    /// Bytes of output received, and how many of them the size cap dropped.
    pub log_bytes: i64,
    pub log_dropped_bytes: i64,
    pub logs_purged: bool,
    pub peak_rss_bytes: Option<i64>,
    pub cpu_time_ms: Option<i64>,
}

/// A job just leased to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub attempt_id: Uuid,
    pub job_id: Uuid,
    pub number: i32,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub timeout_ms: i64,
    pub outputs: Vec<String>,
    /// Secret references (never values).
    pub secret_env: BTreeMap<String, String>,
    /// How long the job waited between becoming due and this lease.
    pub waited: Duration,
    /// Trace context of the submit, to continue.
    pub trace_parent: Option<String>,
    pub limits: drover_core::ResourceLimits,
}

const ARTIFACT_COLUMNS: &str =
    "a.attempt_id, a.job_id, t.number, a.name, a.size, a.sha256, a.created_at";

#[derive(Debug, Clone)]
pub struct ArtifactRow {
    pub attempt_id: Uuid,
    pub job_id: Uuid,
    pub attempt_number: i32,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

fn artifact_from_row(r: &Row) -> Result<ArtifactRow> {
    Ok(ArtifactRow {
        attempt_id: r.try_get("attempt_id")?,
        job_id: r.try_get("job_id")?,
        attempt_number: r.try_get("number")?,
        name: r.try_get("name")?,
        size: r.try_get("size")?,
        sha256: r.try_get("sha256")?,
        created_at: r.try_get("created_at")?,
    })
}

/// What a worker reports about itself with a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// An encoded drover.v1.HostResources.
    pub resources: Vec<u8>,
    pub paused_reason: String,
    pub draining: bool,
}

/// A worker as the health report shows it.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub slots: i32,
    pub running: i64,
    pub version: String,
    pub last_seen_at: DateTime<Utc>,
    pub seen_ago_ms: i64,
    pub resources: Option<Vec<u8>>,
    pub paused_reason: String,
    pub draining: bool,
    pub containment: String,
    pub protocol_version: i32,
}

/// Per-queue counts for the health report.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub queue: String,
    pub pending: i64,
    pub running: i64,
    /// Age of the oldest pending job that is due now.
    pub oldest_due_ms: Option<i64>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Attempts that are not (or no longer) current: the worker must stop them.
    pub stale: Vec<Uuid>,
    /// Attempts whose job was cancelled: the worker must stop them and report cancelled.
    pub cancel: Vec<Uuid>,
}

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

#[derive(Debug, Clone)]
pub struct WorkerHello {
    pub id: String,
    pub hostname: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub slots: i32,
    pub version: String,
    pub running: Vec<Uuid>,
    pub containment: String,
    pub protocol_version: i32,
}

#[derive(Debug, Clone)]
pub struct ChunkIn {
    pub seq: i64,
    pub stream: i16,
    pub time: DateTime<Utc>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub seq: i64,
    pub stream: i16,
    pub time: DateTime<Utc>,
    pub data: Vec<u8>,
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

fn parse_state<T: FromStr>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| Error::Internal(format!("unknown state {s:?} in database")))
}

fn job_from_row(r: &Row) -> Result<JobRow> {
    let Json(env): Json<BTreeMap<String, String>> = r.try_get("env")?;
    let Json(params): Json<BTreeMap<String, String>> = r.try_get("params")?;
    let Json(secret_env): Json<BTreeMap<String, String>> = r.try_get("secret_env")?;
    let Json(policy): Json<RetryPolicy> = r.try_get("retry_policy")?;
    let state: String = r.try_get("state")?;
    Ok(JobRow {
        id: r.try_get("id")?,
        spec: JobSpec {
            argv: r.try_get("argv")?,
            env,
            queue: r.try_get("queue")?,
            labels: r.try_get("labels")?,
            params,
            timeout_ms: r.try_get("timeout_ms")?,
            idempotency_key: r.try_get("idempotency_key")?,
            outputs: r.try_get("outputs")?,
            limits: {
                let Json(l): Json<drover_core::ResourceLimits> = r.try_get("limits")?;
                l
            },
            secret_env,
        },
        state: parse_state(&state)?,
        policy,
        original_job_id: r.try_get("original_job_id")?,
        retry_of: r.try_get("retry_of")?,
        attempt_count: r.try_get("attempt_count")?,
        current_attempt_id: r.try_get("current_attempt_id")?,
        not_before: r.try_get("not_before")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
        cancel_requested: r
            .try_get::<_, Option<DateTime<Utc>>>("cancel_requested_at")?
            .is_some(),
        concurrency_keys: r.try_get("concurrency_keys")?,
        priority: r.try_get("priority")?,
    })
}

fn attempt_from_row(r: &Row) -> Result<AttemptRow> {
    let state: String = r.try_get("state")?;
    Ok(AttemptRow {
        id: r.try_get("id")?,
        job_id: r.try_get("job_id")?,
        number: r.try_get("number")?,
        worker_id: r.try_get("worker_id")?,
        state: parse_state(&state)?,
        started_at: r.try_get("started_at")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        signal: r.try_get("signal")?,
        reason: r.try_get("reason")?,
        log_bytes: r.try_get("log_bytes")?,
        log_dropped_bytes: r.try_get("log_dropped_bytes")?,
        logs_purged: r
            .try_get::<_, Option<DateTime<Utc>>>("logs_purged_at")?
            .is_some(),
        peak_rss_bytes: r.try_get("peak_rss_bytes")?,
        cpu_time_ms: r.try_get("cpu_time_ms")?,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keyed: std::sync::Arc<flow::KeyedHint>,
    /// Length of a log partition made on demand (seconds; 0: a day).
    log_partition_secs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Store {
            pool,
            keyed: Default::default(),
            log_partition_secs: Default::default(),
        }
    }

    /// The length of log partitions this coordinator creates (`retention.log_partition`).
    pub fn set_log_partition(&self, period: Duration) {
        self.log_partition_secs
            .store(period.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn log_partition(&self) -> Duration {
        match self
            .log_partition_secs
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => Duration::from_secs(86_400),
            s => Duration::from_secs(s),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        measured("ping", async {
            let c = self.pool.get().await?;
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    // ---------------------------------------------------------------- jobs

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
        measured("submit", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let result = match insert_job(&tx, spec, policy, None, None, trace_parent).await? {
                Some(job) => {
                    if flow.priority != 0 || !flow.keys.is_empty() || !flow.after.is_empty() {
                        flow::set_job_flow(&tx, job.id, flow).await?;
                        let row = tx
                            .query_one_cached(
                                &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"),
                                &[&job.id],
                            )
                            .await?;
                        (job_from_row(&row)?, true)
                    } else {
                        (job, true)
                    }
                }
                None => {
                    let row = tx
                        .query_one_cached(
                            &format!(
                                "SELECT {JOB_COLUMNS} FROM jobs j WHERE j.idempotency_key = $1"
                            ),
                            &[&spec.idempotency_key],
                        )
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
        measured("retry_job", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            // Key-share locked: retention (which takes FOR UPDATE SKIP LOCKED) cannot delete
            // the original under the new job's reference; if it won the race, this finds none.
            let row = tx
                .query_opt_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1 FOR KEY SHARE"),
                    &[&id],
                )
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
                    "UPDATE jobs SET concurrency_keys = $2, priority = $3 WHERE id = $1",
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
        measured("finished_jobs", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs j \
                     WHERE j.state = $1 AND ($2::text IS NULL OR j.queue = $2) \
                       AND ($3::float8 IS NULL \
                            OR j.finished_at >= now() - $3 * interval '1 millisecond') \
                     ORDER BY j.finished_at DESC LIMIT $4"
                    ),
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
        measured("jobs_with_fingerprint", async {
            let c = self.pool.get().await?;
            let (after_t, after_id) = after.unzip();
            let rows = c
                .query_cached(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs j \
                     WHERE j.id IN (SELECT a.job_id FROM attempts a WHERE a.fingerprint = $1) \
                       AND ($2::text IS NULL OR j.queue = $2) \
                       AND ($3::text IS NULL OR j.state = $3) \
                       AND (NOT $4 OR NOT EXISTS (SELECT 1 FROM jobs r WHERE r.retry_of = j.id)) \
                       AND ($5::timestamptz IS NULL OR (j.created_at, j.id) < ($5, $6::uuid)) \
                     ORDER BY j.created_at DESC, j.id DESC LIMIT $7"
                    ),
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

    /// Jobs created by manually retrying `id`.
    pub async fn retried_by(&self, id: Uuid) -> Result<Vec<Uuid>> {
        measured("retried_by", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT id FROM jobs WHERE retry_of = $1 ORDER BY created_at",
                    &[&id],
                )
                .await?;
            rows.iter()
                .map(|r| r.try_get(0).map_err(Error::from))
                .collect()
        })
        .await
    }

    /// Cancels a job. Pending: cancelled now. Running: marked, and the attempt and worker
    /// that must be stopped are returned; the attempt's end then makes the job cancelled.
    pub async fn cancel_job(&self, id: Uuid) -> Result<(JobRow, Option<(Uuid, String)>)> {
        measured("cancel_job", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx
                .query_opt_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await?
                .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
            let job = job_from_row(&row)?;
            let stop = match job.state {
                JobState::Pending => {
                    tx.execute_cached(
                        "UPDATE jobs SET state = 'cancelled', reason = 'cancelled while pending', \
                            finished_at = now(), updated_at = now() WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                    insert_event(&tx, id, "job.cancelled", json!({"while": "pending"})).await?;
                    None
                }
                JobState::Running => {
                    tx.execute_cached(
                    "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), \
                            updated_at = now() WHERE id = $1",
                    &[&id],
                )
                .await?;
                    let attempt = job.current_attempt_id.ok_or_else(|| {
                        Error::Internal(format!("running job {id} has no current attempt"))
                    })?;
                    let worker: String = tx
                        .query_one_cached(
                            "SELECT worker_id FROM attempts WHERE id = $1",
                            &[&attempt],
                        )
                        .await?
                        .try_get(0)?;
                    tx.execute_cached(
                        "SELECT pg_notify($1, $2)",
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
            let row = tx
                .query_one_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"),
                    &[&id],
                )
                .await?;
            tx.commit().await?;
            Ok((job_from_row(&row)?, stop))
        })
        .await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Option<JobRow>> {
        measured("get_job", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = $1"),
                    &[&id],
                )
                .await?;
            row.as_ref().map(job_from_row).transpose()
        })
        .await
    }

    pub async fn list_attempts(&self, job_id: Uuid) -> Result<Vec<AttemptRow>> {
        measured("list_attempts", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    &format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts a WHERE a.job_id = $1 ORDER BY a.number"
                ),
                    &[&job_id],
                )
                .await?;
            rows.iter().map(attempt_from_row).collect()
        })
        .await
    }

    /// Newest first, keyset-paginated on (created_at, id).
    /// Jobs matching `f`, newest first, and whether the byte budget cut the page short.
    pub async fn list_jobs(&self, f: &JobFilter) -> Result<(Vec<JobRow>, bool)> {
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
                    "SELECT j.id, octet_length(j.argv::text) + octet_length(j.env::text) \
                          + octet_length(j.params::text) + octet_length(j.labels::text) \
                          + octet_length(j.outputs::text) + octet_length(j.reason) \
                          + octet_length(j.retry_policy::text) \
                          + coalesce(octet_length(j.idempotency_key), 0) AS size \
                   FROM jobs j \
                  WHERE ($1::text IS NULL OR j.state = $1) \
                    AND ($2::text IS NULL OR j.queue = $2) \
                    AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4::uuid)) \
                    AND ($6::text IS NULL OR j.labels @> ARRAY[$6::text]) \
                    AND ($7::jsonb IS NULL OR j.params @> $7) \
                    AND ($8::timestamptz IS NULL OR j.created_at >= $8) \
                    AND ($9::timestamptz IS NULL OR j.created_at < $9) \
                  ORDER BY j.created_at DESC, j.id DESC LIMIT $5",
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
            let rows = c
                .query_cached(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = ANY($1) \
                     ORDER BY j.created_at DESC, j.id DESC"
                    ),
                    &[&ids],
                )
                .await?;
            Ok((rows.iter().map(job_from_row).collect::<Result<_>>()?, cut))
        })
        .await
    }

    /// Earliest time a pending job becomes due, if any is waiting out a backoff.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        measured("next_due", async {
            let c = self.pool.get().await?;
            // Jobs waiting for dependencies have a far-future not_before: no timer for those.
            let row = c
            .query_one_cached(
                "SELECT min(not_before) FROM jobs WHERE state = 'pending' AND not_before > now() \
                    AND not_before < '3000-01-01'",
                &[],
            )
            .await?;
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

    /// Leases up to `n` due pending jobs that this worker can run, creating one attempt
    /// each, and never so many that the worker holds more than `slots` running attempts
    /// (its credits are its word; its running attempts are the truth). Committed at once;
    /// no row lock is held while jobs run.
    pub async fn claim(
        &self,
        worker_id: &str,
        queues: &[String],
        labels: &[String],
        n: i64,
        lease_ttl: Duration,
        slots: i64,
    ) -> Result<Vec<Claimed>> {
        measured("claim", async {
        let c = self.pool.get().await?;
        // MATERIALIZED keeps the planner from re-running the locking subquery (which could
        // claim more than n rows). One index scan per queue (LATERAL): with `queue = ANY($1)`
        // the planner could not use jobs_pending_idx for the order and sorted every pending
        // job on each claim — 4.7 ms a claim with 7 000 pending, most of PostgreSQL's time in
        // the throughput benchmark. Rows locked beyond the n kept are released at commit.
        // Paused queues (queue_settings) are left out: one primary-key probe per queue.
        // started_at is when the lease is taken (clock_timestamp), not when the statement
        // began, like the keyed claim's (store/flow.rs).
        let rows = c
            .query_cached(
                "WITH c AS MATERIALIZED ( \
                    SELECT p.id, p.due FROM ( \
                        SELECT u.name FROM unnest($1::text[]) u(name) \
                         WHERE NOT EXISTS (SELECT 1 FROM queue_settings qs \
                                            WHERE qs.queue = u.name AND qs.paused)) q \
                    CROSS JOIN LATERAL ( \
                        SELECT id, not_before AS due FROM jobs \
                         WHERE state = 'pending' AND queue = q.name AND not_before <= now() \
                           AND labels <@ $2 AND concurrency_keys = '{}' \
                         ORDER BY not_before, id LIMIT $3 FOR UPDATE SKIP LOCKED) p \
                     ORDER BY p.due, p.id \
                     LIMIT least($3, greatest(0, $6 - (SELECT count(*) FROM attempts r \
                                   WHERE r.worker_id = $4 AND r.state = 'running')))), \
                 a AS ( \
                    INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at, \
                                          started_at) \
                    SELECT gen_random_uuid(), j.id, j.attempt_count + 1, $4, 'running', \
                           now() + $5 * interval '1 millisecond', \
                           clock_timestamp() \
                      FROM jobs j JOIN c ON c.id = j.id \
                    RETURNING id, job_id, number) \
                 UPDATE jobs j SET state = 'running', current_attempt_id = a.id, \
                        attempt_count = a.number, reason = '', updated_at = now() \
                   FROM a JOIN c ON c.id = a.job_id WHERE j.id = a.job_id \
                 RETURNING a.id AS attempt_id, j.id AS job_id, a.number, j.argv, j.env, \
                           j.params, j.timeout_ms, j.outputs, j.trace_parent, j.limits, j.secret_env, \
                           extract(epoch FROM now() - c.due)::float8 AS waited",
                &[&queues, &labels, &n, &worker_id, &millis(lease_ttl), &slots],
            )
            .await?;
        let mut claimed = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>>>()?;
        // Jobs with concurrency keys take their own path (a transaction that also counts the
        // keys), only when the plain claim left slots free and keyed jobs may be waiting.
        if (claimed.len() as i64) < n && self.keyed_jobs_may_wait() {
            let more = self
                .claim_keyed(
                    worker_id,
                    queues,
                    labels,
                    n - claimed.len() as i64,
                    lease_ttl,
                )
                .await?;
            claimed.extend(more);
        }
        Ok(claimed)
        })
        .await
    }
}

fn claimed_from_row(r: &Row) -> Result<Claimed> {
    let Json(env): Json<BTreeMap<String, String>> = r.try_get("env")?;
    let Json(params): Json<BTreeMap<String, String>> = r.try_get("params")?;
    let Json(secret_env): Json<BTreeMap<String, String>> = r.try_get("secret_env")?;
    let Json(limits): Json<drover_core::ResourceLimits> = r.try_get("limits")?;
    Ok(Claimed {
        attempt_id: r.try_get("attempt_id")?,
        job_id: r.try_get("job_id")?,
        number: r.try_get("number")?,
        argv: r.try_get("argv")?,
        env,
        params,
        timeout_ms: r.try_get("timeout_ms")?,
        outputs: r.try_get("outputs")?,
        secret_env,
        waited: Duration::from_secs_f64(r.try_get::<_, f64>("waited")?.max(0.0)),
        trace_parent: r.try_get("trace_parent")?,
        limits,
    })
}

impl Store {
    /// Records a (re)connecting worker. Attempts the coordinator believes this worker holds
    /// but which the worker no longer runs are marked lost at once (it restarted), instead
    /// of waiting for their leases to expire. Returns those, and the attempts the worker
    /// still runs that are no longer current (it must stop them).
    pub async fn register_worker(
        &self,
        w: &WorkerHello,
        coordinator_id: &str,
        lease_ttl: Duration,
    ) -> Result<(Vec<Ended>, Heartbeat)> {
        measured("register_worker", async {
            {
                let c = self.pool.get().await?;
                c.execute_cached(
                    "INSERT INTO workers (id, hostname, labels, queues, slots, version, \
                    coordinator_id, connected, last_seen_at, containment, protocol_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, true, now(), $8, $9) \
                 ON CONFLICT (id) DO UPDATE SET hostname = $2, labels = $3, queues = $4, \
                    slots = $5, version = $6, coordinator_id = $7, connected = true, \
                    last_seen_at = now(), containment = $8, protocol_version = $9",
                    &[
                        &w.id,
                        &w.hostname,
                        &w.labels,
                        &w.queues,
                        &w.slots,
                        &w.version,
                        &coordinator_id,
                        &w.containment,
                        &w.protocol_version,
                    ],
                )
                .await?;
            }
            let orphans: Vec<Uuid> = {
                let c = self.pool.get().await?;
                c.query_cached(
                    "SELECT id FROM attempts WHERE worker_id = $1 AND state = 'running' \
                   AND NOT (id = ANY($2))",
                    &[&w.id, &w.running],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
            };
            let mut ended = Vec::new();
            for id in orphans {
                let req = EndRequest {
                    raw: RawResult::Lost(format!("worker {} restarted without it", w.id)),
                    output_tail: String::new(),
                    log_chunk_count: None,
                    only_if_expired: false,
                    usage: None,
                };
                match self.end_attempt(id, &req).await {
                    Ok(e) => ended.push(e),
                    // Someone else ended it meanwhile: nothing to do.
                    Err(Error::FailedPrecondition(_)) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let hb = self.heartbeat(&w.id, &w.running, lease_ttl, None).await?;
            Ok((ended, hb))
        })
        .await
    }

    /// Records that a worker's session ended. `connected` says whether a coordinator holds
    /// a session with it (the benchmark waits on it); the worker's state in the API
    /// follows from `last_seen_at` alone.
    pub async fn worker_disconnected(&self, worker_id: &str, coordinator_id: &str) -> Result<()> {
        measured("worker_disconnected", async {
            let c = self.pool.get().await?;
            c.execute_cached(
                "UPDATE workers SET connected = false, last_seen_at = now() \
              WHERE id = $1 AND coordinator_id = $2",
                &[&worker_id, &coordinator_id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Extends the leases of the attempts this worker runs, and records its health.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        attempts: &[Uuid],
        lease_ttl: Duration,
        report: Option<&WorkerReport>,
    ) -> Result<Heartbeat> {
        measured("heartbeat", async {
            let c = self.pool.get().await?;
            let rows = c
            .query_cached(
                "UPDATE attempts a SET lease_expires_at = now() + $3 * interval '1 millisecond' \
                   FROM jobs j \
                  WHERE a.id = ANY($1) AND a.worker_id = $2 AND a.state = 'running' \
                    AND j.id = a.job_id \
                 RETURNING a.id, j.cancel_requested_at IS NOT NULL",
                &[&attempts, &worker_id, &millis(lease_ttl)],
            )
            .await?;
            match report {
                None => {
                    c.execute_cached(
                        "UPDATE workers SET last_seen_at = now() WHERE id = $1",
                        &[&worker_id],
                    )
                    .await?;
                }
                Some(r) => {
                    // The latest sample on the worker's row; one a minute into the history.
                    c.execute_cached(
                        "WITH w AS (UPDATE workers SET last_seen_at = now(), resources = $2, \
                                       paused_reason = $3, draining = $4 WHERE id = $1) \
                     INSERT INTO worker_samples (worker_id, resources) \
                     SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM worker_samples \
                        WHERE worker_id = $1 AND at > now() - interval '60 seconds')",
                        &[&worker_id, &r.resources, &r.paused_reason, &r.draining],
                    )
                    .await?;
                }
            }
            let mut extended = Vec::with_capacity(rows.len());
            let mut cancel = Vec::new();
            for r in &rows {
                let id: Uuid = r.try_get(0)?;
                if r.try_get::<_, bool>(1)? {
                    cancel.push(id);
                }
                extended.push(id);
            }
            Ok(Heartbeat {
                stale: attempts
                    .iter()
                    .filter(|a| !extended.contains(a))
                    .copied()
                    .collect(),
                cancel,
            })
        })
        .await
    }

    /// Attempts whose lease has expired, oldest first.
    pub async fn expired_attempts(&self, limit: i64) -> Result<Vec<Uuid>> {
        measured("expired_attempts", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT id FROM attempts WHERE state = 'running' AND lease_expires_at < now() \
                  ORDER BY lease_expires_at LIMIT $1",
                    &[&limit],
                )
                .await?;
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
        let reason = drover_core::validate::sanitize_reported(
            &format!("the attempt's result could not be applied: {why}"),
            1024,
        );
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let Some(row) = tx
            .query_opt_cached(
                "UPDATE attempts SET state = 'failed_permanent', finished_at = now(), reason = $2 \
                  WHERE id = $1 AND state = 'running' RETURNING job_id",
                &[&attempt_id, &reason],
            )
            .await?
        else {
            return Err(Error::FailedPrecondition(format!(
                "attempt {attempt_id} is not running"
            )));
        };
        let job_id: Uuid = row.try_get(0)?;
        tx.execute_cached(
            "UPDATE jobs SET state = 'permanent_failed', current_attempt_id = NULL, reason = $2, \
                    updated_at = now(), finished_at = now() \
              WHERE id = $1 AND current_attempt_id = $3",
            &[&job_id, &reason, &attempt_id],
        )
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

    async fn end_attempt_tx(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        req: &EndRequest,
    ) -> Result<Ended> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt_cached(
                "SELECT a.state, a.job_id, a.lease_expires_at < now() AS expired, \
                        extract(epoch FROM now() - a.started_at)::float8 AS ran, \
                        j.retry_policy, j.failure_count, j.lost_count, j.queue, \
                        j.cancel_requested_at IS NOT NULL AS cancel_requested, a.log_chunks, \
                        a.worker_id \
                   FROM attempts a JOIN jobs j ON j.id = a.job_id \
                  WHERE a.id = $1 FOR UPDATE OF a, j",
                &[&attempt_id],
            )
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
                crate::failures::record(
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
                "UPDATE attempts SET state = $2, finished_at = now(), exit_code = $3, signal = $4, \
                        reason = $5, peak_rss_bytes = $6, cpu_time_ms = $7, fingerprint = $8 \
                  WHERE id = $1"
            } else {
                "UPDATE attempts SET state = $2, finished_at = now(), exit_code = $3, signal = $4, \
                        reason = $5, peak_rss_bytes = $6, cpu_time_ms = $7 WHERE id = $1"
            },
            &attempt_params[..if failure.is_some() { 8 } else { 7 }],
        )
        .await?;
        tx.execute_cached(
            "UPDATE jobs SET state = $2, current_attempt_id = NULL, failure_count = $3, \
                    lost_count = $4, reason = $5, updated_at = now(), \
                    not_before = CASE WHEN $6::float8 IS NULL THEN not_before \
                                      ELSE now() + $6 * interval '1 millisecond' END, \
                    finished_at = CASE WHEN $7 THEN now() END \
              WHERE id = $1",
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
            tx.execute_cached("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &queue])
                .await?;
        }
        // Log followers learn that the attempt (and maybe the job) ended.
        tx.execute_cached(
            "SELECT pg_notify($1, $2)",
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

    // ---------------------------------------------------------------- logs

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
            match self.append_logs_tx(attempt_id, worker, chunks, cap).await {
                // The leader makes partitions ahead of time; if it has not (it was down, or
                // the attempt's partition was dropped while it ran long), make it now.
                Err(AppendError::NoPartition(at)) => {
                    self.ensure_log_partitions(self.log_partition(), Duration::ZERO, Some(at))
                        .await?;
                    self.append_logs_tx(attempt_id, worker, chunks, cap)
                        .await
                        .map_err(AppendError::into_error)
                }
                r => r.map_err(AppendError::into_error),
            }
        })
        .await
    }

    async fn append_logs_tx(
        &self,
        attempt_id: Uuid,
        worker: Option<&crate::auth::Principal>,
        chunks: &[ChunkIn],
        cap: u64,
    ) -> std::result::Result<(), AppendError> {
        let mut c = self.pool.get().await.map_err(Error::from)?;
        let tx = c.transaction().await.map_err(Error::from)?;
        // The row lock also keeps the reaper from marking the attempt lost mid-append.
        let row = tx
            .query_opt_cached(
                "SELECT state, log_kept_bytes, log_head_end, log_head_bytes, log_dropped_bytes, \
                        worker_id, log_part \
                   FROM attempts WHERE id = $1 FOR UPDATE",
                &[&attempt_id],
            )
            .await?
            .ok_or_else(|| Error::NotFound(format!("attempt {attempt_id} does not exist")))?;
        if let Some(p) = worker {
            p.check_worker(&row.try_get::<_, String>(5)?)?;
        }
        let state: String = row.try_get(0)?;
        if state != "running" {
            return Err(stale(attempt_id, parse_state(&state)?).into());
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
                "INSERT INTO log_chunks (attempt_id, seq, stream, time, data, log_part) \
                 SELECT $1, u.*, $6 \
                   FROM unnest($2::int8[], $3::int2[], $4::timestamptz[], $5::bytea[]) u \
                 ON CONFLICT (attempt_id, seq, log_part) DO NOTHING \
                 RETURNING seq, octet_length(data)",
                &[&attempt_id, &seqs, &streams, &times, &data, &log_part],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) if retention::is_missing_partition(&e) => {
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
                    "WITH t AS ( \
                        SELECT seq, octet_length(data) AS len, \
                               sum(octet_length(data)) OVER (ORDER BY seq) AS cum \
                          FROM log_chunks WHERE attempt_id = $1 AND seq > $2 AND log_part = $4), \
                     d AS ( \
                        DELETE FROM log_chunks l USING t \
                         WHERE l.attempt_id = $1 AND l.seq = t.seq AND l.log_part = $4 \
                           AND t.cum - t.len < $3 \
                        RETURNING t.len) \
                     SELECT coalesce(sum(len), 0)::int8 FROM d",
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
            "UPDATE attempts SET log_chunks = log_chunks + $2, log_bytes = log_bytes + $3, \
                    log_kept_bytes = $4, log_head_end = $5, log_head_bytes = $6, \
                    log_dropped_bytes = $7 WHERE id = $1",
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
            "SELECT pg_notify($1, job_id::text) FROM attempts WHERE id = $2",
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
        measured("purge_logs", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let ids: Vec<Uuid> = tx
                .query_cached(
                    "SELECT id FROM attempts \
                  WHERE logs_purged_at IS NULL AND finished_at IS NOT NULL \
                    AND finished_at < now() - $1 * interval '1 millisecond' \
                  ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&millis(older_than), &limit],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok((0, Vec::new()));
            }
            tx.execute_cached("DELETE FROM log_chunks WHERE attempt_id = ANY($1)", &[&ids])
                .await?;
            let artifacts = tx
                .query_cached(
                    &format!(
                        "DELETE FROM artifacts a USING attempts t WHERE a.attempt_id = ANY($1) \
                       AND t.id = a.attempt_id RETURNING {ARTIFACT_COLUMNS}"
                    ),
                    &[&ids],
                )
                .await?
                .iter()
                .map(artifact_from_row)
                .collect::<Result<Vec<_>>>()?;
            tx.execute_cached(
                "UPDATE attempts SET logs_purged_at = now(), log_kept_bytes = 0 WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
            tx.commit().await?;
            Ok((ids.len() as u64, artifacts))
        })
        .await
    }

    // ---------------------------------------------------------------- health

    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    pub async fn jobs_by_state(&self) -> Result<Vec<(String, i64)>> {
        measured("jobs_by_state", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached("SELECT state, count(*) FROM jobs GROUP BY state", &[])
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }

    pub async fn failed_since(&self, within: Duration) -> Result<i64> {
        measured("failed_since", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(
                "SELECT count(*) FROM jobs WHERE state = 'permanent_failed' \
               AND finished_at > now() - $1 * interval '1 millisecond'",
                &[&millis(within)],
            )
            .await?
            .try_get(0)?)
        })
        .await
    }

    pub async fn queue_stats(&self) -> Result<Vec<QueueRow>> {
        measured("queue_stats", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT queue, count(*) FILTER (WHERE state = 'pending'), \
                        count(*) FILTER (WHERE state = 'running'), \
                        (extract(epoch FROM now() - min(not_before) \
                            FILTER (WHERE state = 'pending' AND not_before <= now())) \
                            * 1000)::int8 \
                   FROM jobs WHERE state IN ('pending', 'running') \
                  GROUP BY queue ORDER BY queue",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(QueueRow {
                        queue: r.try_get(0)?,
                        pending: r.try_get(1)?,
                        running: r.try_get(2)?,
                        oldest_due_ms: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Workers seen in the last week, with their running attempt counts.
    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>> {
        measured("list_workers", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT w.id, w.hostname, w.labels, w.queues, w.slots, w.version, \
                        w.last_seen_at, \
                        (extract(epoch FROM now() - w.last_seen_at) * 1000)::int8 AS ago, \
                        w.resources, w.paused_reason, w.draining, w.containment, \
                        w.protocol_version, \
                        (SELECT count(*) FROM attempts a \
                          WHERE a.worker_id = w.id AND a.state = 'running') AS running \
                   FROM workers w WHERE w.last_seen_at > now() - interval '7 days' \
                  ORDER BY w.id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(WorkerRow {
                        id: r.try_get("id")?,
                        hostname: r.try_get("hostname")?,
                        labels: r.try_get("labels")?,
                        queues: r.try_get("queues")?,
                        slots: r.try_get("slots")?,
                        running: r.try_get("running")?,
                        version: r.try_get("version")?,
                        last_seen_at: r.try_get("last_seen_at")?,
                        seen_ago_ms: r.try_get("ago")?,
                        resources: r.try_get("resources")?,
                        paused_reason: r.try_get("paused_reason")?,
                        draining: r.try_get("draining")?,
                        containment: r.try_get("containment")?,
                        protocol_version: r.try_get("protocol_version")?,
                    })
                })
                .collect()
        })
        .await
    }

    // ---------------------------------------------------------------- artifacts

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
        measured("running_attempt_job", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(
                    "SELECT job_id, number, state, worker_id FROM attempts WHERE id = $1",
                    &[&attempt_id],
                )
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
        measured("record_artifact", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx
                .query_one_cached(
                    "SELECT state, worker_id FROM attempts WHERE id = $1 FOR SHARE",
                    &[&a.attempt_id],
                )
                .await?;
            if let Some(p) = worker {
                p.check_worker(&row.try_get::<_, String>(1)?)?;
            }
            let state: String = row.try_get(0)?;
            if state != "running" {
                return Err(stale(a.attempt_id, parse_state(&state)?));
            }
            tx.execute_cached(
                "INSERT INTO artifacts (attempt_id, job_id, name, size, sha256) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (attempt_id, name) DO UPDATE SET size = $4, sha256 = $5, \
                created_at = now()",
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
        measured("list_artifacts", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    &format!(
                        "SELECT {ARTIFACT_COLUMNS} FROM artifacts a \
                       JOIN attempts t ON t.id = a.attempt_id \
                      WHERE a.job_id = $1 AND t.state = 'succeeded' ORDER BY a.name"
                    ),
                    &[&job_id],
                )
                .await?;
            rows.iter().map(artifact_from_row).collect()
        })
        .await
    }

    /// Bytes PostgreSQL uses for stored logs (table, TOAST and indexes).
    pub async fn log_storage_bytes(&self) -> Result<i64> {
        measured("log_storage_bytes", async {
            let c = self.pool.get().await?;
            Ok(c.query_one_cached(
                "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8 \
                   FROM pg_partition_tree('log_chunks')",
                &[],
            )
            .await?
            .try_get(0)?)
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
        measured("read_logs", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT seq, stream, time, data FROM log_chunks \
                  WHERE attempt_id = $1 AND seq > $2 \
                    AND log_part = (SELECT log_part FROM attempts WHERE id = $1) \
                  ORDER BY seq LIMIT $3",
                    &[&attempt_id, &after, &limit],
                )
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
enum AppendError {
    NoPartition(DateTime<Utc>),
    Other(Error),
}

impl AppendError {
    fn into_error(self) -> Error {
        match self {
            AppendError::NoPartition(at) => {
                Error::Internal(format!("no log partition for {at} after creating it"))
            }
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

fn stale(attempt_id: Uuid, state: AttemptState) -> Error {
    Error::FailedPrecondition(format!(
        "attempt {attempt_id} is no longer the job's current attempt (it ended as {state}); \
         stop its process"
    ))
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
    use drover_core::idempotency::{first_difference, reused_key_message, Submission};
    let stored_roots: Vec<String> = tx
        .query_cached(
            "SELECT coalesce(o.original_job_id, o.id)::text FROM job_deps d \
               JOIN jobs o ON o.id = d.depends_on WHERE d.job_id = $1",
            &[&existing.id],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let given_roots: Vec<String> = if flow.after.is_empty() {
        Vec::new()
    } else {
        // An id that names no job stays as given (and so differs from any stored one).
        tx.query_cached(
            "SELECT coalesce(o.original_job_id, u.id)::text \
               FROM unnest($1::uuid[]) u(id) LEFT JOIN jobs o ON o.id = u.id",
            &[&flow.after],
        )
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
async fn insert_job(
    tx: &Transaction<'_>,
    spec: &JobSpec,
    policy: &RetryPolicy,
    original_job_id: Option<Uuid>,
    retry_of: Option<Uuid>,
    trace_parent: Option<&str>,
) -> Result<Option<JobRow>> {
    let row = tx
        .query_opt_cached(
            &format!(
                "INSERT INTO jobs AS j (id, queue, state, argv, env, labels, params, \
                 timeout_ms, retry_policy, idempotency_key, original_job_id, retry_of, outputs, \
                 trace_parent, limits, secret_env) \
                 VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
            ),
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
    tx.execute_cached(
        "SELECT pg_notify($1, $2)",
        &[&JOBS_CHANNEL, &job.spec.queue],
    )
    .await?;
    Ok(Some(job))
}

async fn insert_event(
    tx: &Transaction<'_>,
    job_id: Uuid,
    event: &str,
    payload: serde_json::Value,
) -> Result<()> {
    tx.execute_cached(
        "INSERT INTO outbox (job_id, event, payload) VALUES ($1, $2, $3)",
        &[&job_id, &event, &Json(payload)],
    )
    .await?;
    Ok(())
}

pub mod batch;
pub mod dashboard;
pub mod flow;
pub mod queues;
pub mod requests;
pub mod retention;
pub mod schedules;
pub mod watch;
