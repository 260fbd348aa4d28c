//! The coordinator's store: every SQL statement it runs, in one place.
//!
//! Each statement is a file under `store/sql/<group>/` (included at build time, prepared
//! once per pooled connection); the modules below run them, by table group. This file
//! holds the [`Store`] handle, the statement cache ([`Cached`]), [`measured`], and the row
//! types and converters the groups share.
//!
//! State changes follow one pattern: lock the rows, ask the pure domain function
//! (`drover_core::transition`) what happens next, write the attempt, the job and
//! the outbox event, and commit — all in one transaction (invariant 3).

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use drover_core::{AttemptState, JobSpec, JobState, RetryPolicy};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;
use uuid::Uuid;

pub mod access;
pub mod alerts;
pub mod artifacts;
pub mod attempts;
mod audit_rows;
pub mod batch;
pub mod dashboard;
pub mod failures;
pub mod flow;
mod group;
pub mod jobs;
pub mod logs;
pub mod notifications;
pub mod outbox;
pub mod queues;
pub mod requests;
pub mod retention;
pub mod schedules;
mod submit_group;
pub mod watch;
pub mod workers;

pub use access::{AuditRow, NewToken, TokenRow};
pub use attempts::{EndRequest, Ended};
pub use audit_rows::AuditEntry;
pub use dashboard::SessionRow;
pub use group::{ClaimAsk, Refill};
pub use jobs::{JobDetail, JobFilter};
pub use logs::ChunkIn;
pub use queues::QueueRow;
pub use workers::{Heartbeat, WorkerHello, WorkerReport, WorkerRow};

/// `SELECT now()`: the database's clock, read inside a transaction.
const NOW: &str = include_str!("store/sql/common/now.sql");

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

/// Gates: sequences whose value is the time (epoch seconds) until which something costly
/// per job is wanted. State notifications for watchers (V31):
pub const WATCH_GATE: &str = "drover_watch_gate";
/// Outbox rows for event rules (V32).
pub const OUTBOX_GATE: &str = "drover_outbox_gate";
/// Log notifications for log followers and the dashboard's live views (V33).
pub const LOGS_GATE: &str = "drover_logs_gate";

/// NOTIFY channel: a job became ready to lease (payload: queue).
pub const JOBS_CHANNEL: &str = "drover_jobs";
/// NOTIFY channel: orders for whichever coordinator holds a worker's session
/// (payload: `cancel <attempt_id> <worker_id>`).
pub const CONTROL_CHANNEL: &str = "drover_control";

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

/// What one claim leased, and how many it could have at most: `room` is the smaller of
/// what was asked and the worker's free slots by its running attempts (a result still on
/// its way holds a slot). Fewer jobs than `room` means no more were due.
#[derive(Debug, Clone)]
pub struct Claim {
    pub jobs: Vec<Claimed>,
    pub room: i64,
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

#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub seq: i64,
    pub stream: i16,
    pub time: DateTime<Utc>,
    pub data: Vec<u8>,
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

fn stale(attempt_id: Uuid, state: AttemptState) -> Error {
    Error::FailedPrecondition(format!(
        "attempt {attempt_id} is no longer the job's current attempt (it ended as {state}); \
         stop its process"
    ))
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// For the statements run per job: planned once per session (see `db::hot_pool`).
    hot: Pool,
    keyed: std::sync::Arc<flow::KeyedHint>,
    /// Length of a log partition made on demand (seconds; 0: a day).
    log_partition_secs: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The group writer that ends attempts (started on first use).
    finishes: std::sync::Arc<std::sync::OnceLock<group::Queue>>,
    /// The audit log's group writer (started on first use).
    audits: std::sync::Arc<std::sync::OnceLock<audit_rows::Queue>>,
    /// The group writer of single submits (started on first use).
    submits: std::sync::Arc<std::sync::OnceLock<submit_group::Queue>>,
    /// Who claims for the slots that results give back (the dispatcher, once it exists).
    refill: std::sync::Arc<std::sync::OnceLock<std::sync::Weak<dyn group::Refill>>>,
    /// Held by whoever claims for connected workers: one claim at a time on their credit.
    claiming: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Log batches that arrived before an earlier batch of their attempt (store/logs.rs).
    log_turns: logs::Turns,
}

impl Store {
    /// A store whose per-job statements share `pool` with everything else (tools, tests).
    pub fn new(pool: Pool) -> Self {
        Self::with_hot_pool(pool.clone(), pool)
    }

    /// A store whose per-job statements (claims, groups of results) use `hot`
    /// ([`crate::db::hot_pool`]).
    pub fn with_hot_pool(pool: Pool, hot: Pool) -> Self {
        Store {
            pool,
            hot,
            keyed: Default::default(),
            log_partition_secs: Default::default(),
            finishes: Default::default(),
            audits: Default::default(),
            submits: Default::default(),
            refill: Default::default(),
            claiming: Default::default(),
            log_turns: Default::default(),
        }
    }

    /// Who claims for the slots that results give back, inside their group's transaction
    /// (the first one set stays).
    pub fn set_refill(&self, refill: std::sync::Weak<dyn group::Refill>) {
        let _ = self.refill.set(refill);
    }

    /// The claim turn: held while claiming on connected workers' credit, by a dispatch
    /// round or a group of results (store/group.rs). Take it before any database lock.
    pub async fn claim_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.claiming.clone().lock_owned().await
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
        const PING: &str = include_str!("store/sql/common/ping.sql");
        measured("ping", async {
            let c = self.pool.get().await?;
            c.simple_query(PING).await?;
            Ok(())
        })
        .await
    }

    /// Keeps a gate open for `secs` more seconds (database clock): [`WATCH_GATE`],
    /// [`OUTBOX_GATE`] or [`LOGS_GATE`].
    pub async fn arm_gate(&self, gate: &'static str, secs: i64) -> Result<()> {
        const ARM_GATE: &str = include_str!("store/sql/common/arm_gate.sql");
        measured("arm_gate", async {
            let c = self.pool.get().await?;
            c.query_one_cached(ARM_GATE, &[&gate, &secs]).await?;
            Ok(())
        })
        .await
    }

    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}
