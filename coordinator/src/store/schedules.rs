//! SQL for schedules: their definitions, the ticks they fired, and the scheduling pass.
//!
//! Exactly one job per tick: a tick becomes a `schedule_runs` row (primary key schedule +
//! fire time) and its job is inserted in the same transaction as the row turns `fired`.
//! The pass also locks the schedule row (FOR UPDATE SKIP LOCKED) so two coordinators do
//! not work on one schedule at once, but duplicates are impossible even without that lock.

use super::flow::{set_job_flow, Flow};
use super::jobs::insert_job;
use super::{measured, Cached, JobRow, NOW};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use drover_core::schedule::{due_ticks, CatchUp, CronSchedule, Overlap, MAX_CATCH_UP};
use drover_core::{JobSpec, JobState, ResourceLimits, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

/// The job a schedule fires, as stored (the idempotency key is never set). Limits, secret
/// references and flow control came later: schedules stored before them read as none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub queue: String,
    pub labels: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub timeout_ms: i64,
    pub outputs: Vec<String>,
    /// Resource limits, the queue's defaults already applied when the schedule was made.
    #[serde(default)]
    pub limits: ResourceLimits,
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    /// Concurrency keys (with their limits and rates) and priority, resolved from the
    /// configuration when the schedule was made.
    #[serde(default)]
    pub flow: Flow,
}

impl StoredSpec {
    pub fn new(s: &JobSpec, flow: Flow) -> Self {
        StoredSpec {
            argv: s.argv.clone(),
            env: s.env.clone(),
            queue: s.queue.clone(),
            labels: s.labels.clone(),
            params: s.params.clone(),
            timeout_ms: s.timeout_ms,
            outputs: s.outputs.clone(),
            limits: s.limits,
            secret_env: s.secret_env.clone(),
            flow: Flow {
                after: Vec::new(),
                ..flow
            },
        }
    }
}

impl StoredSpec {
    pub fn to_job_spec(&self) -> JobSpec {
        JobSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            queue: self.queue.clone(),
            labels: self.labels.clone(),
            params: self.params.clone(),
            timeout_ms: self.timeout_ms,
            idempotency_key: None,
            outputs: self.outputs.clone(),
            limits: self.limits,
            secret_env: self.secret_env.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub spec: StoredSpec,
    pub policy: RetryPolicy,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    pub paused: bool,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub dropped_ticks: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub fire_time: DateTime<Utc>,
    pub status: String,
    pub manual: bool,
    pub job_id: Option<Uuid>,
    pub job_state: Option<JobState>,
    pub reason: String,
}

/// What one scheduling pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassReport {
    pub fired: usize,
    pub skipped: usize,
    pub dropped: usize,
}

fn schedule_from_row(r: &Row) -> Result<ScheduleRow> {
    let Json(spec): Json<StoredSpec> = r.try_get("spec")?;
    let Json(policy): Json<RetryPolicy> = r.try_get("retry_policy")?;
    let bad = |what: &str| Error::Internal(format!("unknown {what} in database"));
    Ok(ScheduleRow {
        name: r.try_get("name")?,
        cron: r.try_get("cron")?,
        timezone: r.try_get("timezone")?,
        spec,
        policy,
        catch_up: r
            .try_get::<_, String>("catch_up")?
            .parse()
            .map_err(|_| bad("catch_up"))?,
        overlap: r
            .try_get::<_, String>("overlap")?
            .parse()
            .map_err(|_| bad("overlap"))?,
        paused: r.try_get("paused")?,
        next_fire_at: r.try_get("next_fire_at")?,
        dropped_ticks: r.try_get("dropped_ticks")?,
        created_at: r.try_get("created_at")?,
    })
}

fn parsed(s: &ScheduleRow) -> Result<CronSchedule> {
    CronSchedule::parse(&s.cron, &s.timezone)
        .map_err(|e| Error::Internal(format!("stored schedule {}: {e}", s.name)))
}

impl super::Store {
    pub async fn create_schedule(&self, s: &ScheduleRow) -> Result<ScheduleRow> {
        const INSERT_SCHEDULE: &str = include_str!("sql/schedules/insert_schedule.sql");
        measured("create_schedule", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(
                    INSERT_SCHEDULE,
                    &[
                        &s.name,
                        &s.cron,
                        &s.timezone,
                        &Json(&s.spec),
                        &Json(&s.policy),
                        &s.catch_up.as_str(),
                        &s.overlap.as_str(),
                        &s.paused,
                        &s.next_fire_at,
                        &s.created_at,
                    ],
                )
                .await?
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "name: schedule {:?} already exists (delete it first)",
                        s.name
                    ))
                })?;
            schedule_from_row(&row)
        })
        .await
    }

    pub async fn list_schedules(&self, limit: i64) -> Result<Vec<ScheduleRow>> {
        const LIST_SCHEDULES: &str = include_str!("sql/schedules/list_schedules.sql");
        measured("list_schedules", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_SCHEDULES, &[&limit]).await?;
            rows.iter().map(schedule_from_row).collect()
        })
        .await
    }

    pub async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        const GET_SCHEDULE: &str = include_str!("sql/schedules/get_schedule.sql");
        measured("get_schedule", async {
            let c = self.pool.get().await?;
            let row = c.query_opt_cached(GET_SCHEDULE, &[&name]).await?;
            row.as_ref().map(schedule_from_row).transpose()
        })
        .await
    }

    /// The most recent runs of a schedule, newest first, with their jobs' states.
    pub async fn schedule_runs(&self, name: &str, limit: i64) -> Result<Vec<RunRow>> {
        const LIST_RUNS: &str = include_str!("sql/schedules/list_runs.sql");
        measured("schedule_runs", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_RUNS, &[&name, &limit]).await?;
            rows.iter()
                .map(|r| {
                    let state: Option<String> = r.try_get(4)?;
                    Ok(RunRow {
                        fire_time: r.try_get(0)?,
                        status: r.try_get(1)?,
                        manual: r.try_get(2)?,
                        job_id: r.try_get(3)?,
                        job_state: state.as_deref().map(super::parse_state).transpose()?,
                        reason: r.try_get(5)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Pauses or resumes a schedule. On resume the next tick is the first after now: ticks
    /// that came due while paused are not run.
    pub async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<ScheduleRow> {
        const SET_PAUSED: &str = include_str!("sql/schedules/set_paused.sql");
        measured("set_schedule_paused", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let s = lock_schedule(&tx, name).await?;
            let next = if paused {
                s.next_fire_at
            } else {
                let now = db_now(&tx).await?;
                parsed(&s)?.next_after(now)
            };
            let row = tx
                .query_one_cached(SET_PAUSED, &[&name, &paused, &next])
                .await?;
            let out = schedule_from_row(&row)?;
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        const DELETE_SCHEDULE: &str = include_str!("sql/schedules/delete_schedule.sql");
        measured("delete_schedule", async {
            let c = self.pool.get().await?;
            let n = c.execute_cached(DELETE_SCHEDULE, &[&name]).await?;
            if n == 0 {
                return Err(Error::NotFound(format!("schedule {name:?} not found")));
            }
            Ok(())
        })
        .await
    }

    /// Fires a schedule now, whatever its overlap policy and even while paused.
    pub async fn trigger_schedule(&self, name: &str) -> Result<JobRow> {
        const INSERT_MANUAL_RUN: &str = include_str!("sql/schedules/insert_manual_run.sql");
        measured("trigger_schedule", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let s = lock_schedule(&tx, name).await?;
            let now = db_now(&tx).await?;
            let cs = parsed(&s)?;
            let inserted = tx.execute_cached(INSERT_MANUAL_RUN, &[&name, &now]).await?;
            if inserted == 0 {
                return Err(Error::Aborted(format!(
                    "schedule {name:?} already has a run at {now}; retry"
                )));
            }
            let job = fire(&tx, &s, &cs, now).await?;
            tx.commit().await?;
            if !s.spec.flow.keys.is_empty() {
                self.keyed_job_submitted();
            }
            Ok(job)
        })
        .await
    }

    /// Names of schedules with work to do: a tick due, or a held tick waiting.
    pub async fn schedules_due(&self, limit: i64) -> Result<Vec<String>> {
        const SCHEDULES_DUE: &str = include_str!("sql/schedules/schedules_due.sql");
        measured("schedules_due", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(SCHEDULES_DUE, &[&limit]).await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<_, String>(0)?))
                .collect()
        })
        .await
    }

    /// One scheduling pass over one schedule: records its due ticks (as the catch-up policy
    /// keeps them) and fires held ticks as its overlap policy allows. `grace`: how late a
    /// tick may be handled and still count as on time.
    pub async fn run_schedule(&self, name: &str, grace: chrono::Duration) -> Result<PassReport> {
        const LOCK_UNPAUSED: &str = include_str!("sql/schedules/lock_unpaused.sql");
        const INSERT_RUN: &str = include_str!("sql/schedules/insert_run.sql");
        const ADVANCE: &str = include_str!("sql/schedules/advance.sql");
        measured("run_schedule", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx.query_opt_cached(LOCK_UNPAUSED, &[&name]).await?;
            // Paused, deleted, or another coordinator is on it.
            let Some(row) = row else {
                return Ok(PassReport::default());
            };
            let s = schedule_from_row(&row)?;
            let cs = parsed(&s)?;
            let now = db_now(&tx).await?;
            let mut report = PassReport::default();
            if let Some(from) = s.next_fire_at.filter(|t| *t <= now) {
                let due = due_ticks(&cs, from, now, s.catch_up, grace);
                for tick in &due.fire {
                    tx.execute_cached(INSERT_RUN, &[&name, tick]).await?;
                }
                report.dropped = due.dropped;
                // Dropped ticks are remembered for the schedule_missed alert rule.
                let missed = format!(
                    "{} tick(s) not run (catch-up {})",
                    due.dropped,
                    s.catch_up.as_str()
                );
                tx.execute_cached(ADVANCE, &[&name, &due.next, &(due.dropped as i64), &missed])
                    .await?;
            }
            release_held(&tx, &s, &cs, &mut report).await?;
            tx.commit().await?;
            if report.fired > 0 && !s.spec.flow.keys.is_empty() {
                self.keyed_job_submitted();
            }
            Ok(report)
        })
        .await
    }
}

async fn db_now(tx: &Transaction<'_>) -> Result<DateTime<Utc>> {
    Ok(tx.query_one_cached(NOW, &[]).await?.try_get(0)?)
}

async fn lock_schedule(tx: &Transaction<'_>, name: &str) -> Result<ScheduleRow> {
    const LOCK_SCHEDULE: &str = include_str!("sql/schedules/lock_schedule.sql");
    let row = tx
        .query_opt_cached(LOCK_SCHEDULE, &[&name])
        .await?
        .ok_or_else(|| Error::NotFound(format!("schedule {name:?} not found")))?;
    schedule_from_row(&row)
}

/// Fires held ticks oldest first, as the overlap policy allows.
async fn release_held(
    tx: &Transaction<'_>,
    s: &ScheduleRow,
    cs: &CronSchedule,
    report: &mut PassReport,
) -> Result<()> {
    const HELD_RUNS: &str = include_str!("sql/schedules/held_runs.sql");
    let held: Vec<DateTime<Utc>> = tx
        .query_cached(HELD_RUNS, &[&s.name])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    // Bound the queue: beyond MAX_CATCH_UP held ticks, the oldest are skipped.
    let excess = held.len().saturating_sub(MAX_CATCH_UP);
    for tick in &held[..excess] {
        mark_skipped(tx, &s.name, *tick, "more than 100 ticks held").await?;
        report.skipped += 1;
    }
    let mut unfinished = unfinished_run(tx, &s.name).await?;
    for tick in &held[excess..] {
        match (s.overlap, unfinished) {
            (Overlap::Queue, Some(_)) => break,
            (Overlap::Skip, Some(prev)) => {
                mark_skipped(
                    tx,
                    &s.name,
                    *tick,
                    &format!("previous run {prev} was unfinished"),
                )
                .await?;
                report.skipped += 1;
            }
            _ => {
                let job = fire(tx, s, cs, *tick).await?;
                unfinished = Some(job.id);
                report.fired += 1;
            }
        }
    }
    Ok(())
}

async fn mark_skipped(
    tx: &Transaction<'_>,
    name: &str,
    tick: DateTime<Utc>,
    reason: &str,
) -> Result<()> {
    const SKIP_RUN: &str = include_str!("sql/schedules/skip_run.sql");
    const RECORD_MISS: &str = include_str!("sql/schedules/record_miss.sql");
    tx.execute_cached(SKIP_RUN, &[&name, &tick, &reason])
        .await?;
    tx.execute_cached(
        RECORD_MISS,
        &[
            &name,
            &format!("tick {} skipped: {reason}", tick.to_rfc3339()),
        ],
    )
    .await?;
    Ok(())
}

/// A job of this schedule that has not finished, if any.
async fn unfinished_run(tx: &Transaction<'_>, name: &str) -> Result<Option<Uuid>> {
    const UNFINISHED_RUN: &str = include_str!("sql/schedules/unfinished_run.sql");
    let row = tx.query_opt_cached(UNFINISHED_RUN, &[&name]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Turns a held tick into a job, in the caller's transaction. The run row is claimed first
/// (held -> fired); if another transaction already fired it, nothing is created.
async fn fire(
    tx: &Transaction<'_>,
    s: &ScheduleRow,
    cs: &CronSchedule,
    tick: DateTime<Utc>,
) -> Result<JobRow> {
    const FIRE_RUN: &str = include_str!("sql/schedules/fire_run.sql");
    const SET_RUN_JOB: &str = include_str!("sql/schedules/set_run_job.sql");
    let claimed = tx.execute_cached(FIRE_RUN, &[&s.name, &tick]).await?;
    if claimed != 1 {
        return Err(Error::Aborted(format!(
            "tick {tick} of schedule {} was handled concurrently; retry",
            s.name
        )));
    }
    let mut spec = s.spec.to_job_spec();
    spec.params.extend(cs.tick_params(tick));
    let job = insert_job(tx, &spec, &s.policy, None, None, None)
        .await?
        .ok_or_else(|| Error::Internal("schedule insert returned nothing".into()))?;
    set_job_flow(tx, job.id, &s.spec.flow).await?;
    tx.execute_cached(SET_RUN_JOB, &[&s.name, &tick, &job.id])
        .await?;
    Ok(job)
}

/// A schedule as the `schedule_missed` alert rule reads it.
#[derive(Debug, Clone)]
pub struct MissView {
    pub name: String,
    pub queue: String,
    pub missed_ago_secs: Option<i64>,
    pub missed_reason: String,
    pub overdue_secs: Option<i64>,
}

impl super::Store {
    /// Unpaused schedules with when they last missed a tick and how late their next one is.
    pub async fn schedule_miss_views(&self) -> Result<Vec<MissView>> {
        const MISS_VIEWS: &str = include_str!("sql/schedules/miss_views.sql");
        measured("schedule_miss_views", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(MISS_VIEWS, &[]).await?;
            rows.iter()
                .map(|r| {
                    Ok(MissView {
                        name: r.try_get("name")?,
                        queue: r.try_get::<_, Option<String>>("queue")?.unwrap_or_default(),
                        missed_ago_secs: r.try_get("missed_ago")?,
                        missed_reason: r.try_get("last_missed_reason")?,
                        overdue_secs: r.try_get("overdue")?,
                    })
                })
                .collect()
        })
        .await
    }
}
