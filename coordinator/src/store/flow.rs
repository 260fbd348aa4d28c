//! SQL for concurrency keys: setting a job's keys at submit and the keyed claim.
//!
//! A key's `running` count is taken here, in the claim transaction, with
//! `UPDATE ... WHERE running < max_running`: the row lock serialises claims on one key
//! across coordinators, and PostgreSQL re-checks the condition on the latest row version,
//! so two claims can never both take the last slot. The count is given back by a trigger
//! when the job leaves `running` (V17), whatever made it leave.

use super::{claimed_from_row, measured, millis, Cached, Claimed, Store};
use crate::error::Result;
use deadpool_postgres::Transaction;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Keyed jobs were last seen to be absent at this time (ms since the epoch; 0: unknown).
/// While none exist, the keyed claim is skipped for a second at a time, so a system that
/// does not use concurrency keys claims exactly as before.
#[derive(Default)]
pub struct KeyedHint {
    none_since_ms: AtomicI64,
    /// When a rate-limited key that blocked a job next has a token (ms; 0: none).
    token_at_ms: AtomicI64,
}

const RECHECK_MS: i64 = 1000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Flow-control settings of a job being submitted (and, without `after`, of the jobs a
/// schedule fires: stored with the schedule).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Flow {
    /// Keys with the limit each gets.
    pub keys: Vec<(String, u32)>,
    /// Keys' rate limits (tokens per second, burst), same order as `keys`.
    pub rates: Vec<Option<(f64, f64)>>,
    pub priority: i32,
    /// How far the job's ready time moves into the past for its priority.
    pub priority_shift_ms: i64,
    /// Jobs it runs after.
    pub after: Vec<Uuid>,
}

pub(super) async fn set_job_flow(tx: &Transaction<'_>, job_id: Uuid, flow: &Flow) -> Result<()> {
    const SET_PRIORITY: &str = include_str!("sql/flow/set_priority.sql");
    if flow.priority != 0 {
        tx.execute_cached(
            SET_PRIORITY,
            &[&job_id, &flow.priority, &(flow.priority_shift_ms as f64)],
        )
        .await?;
    }
    if !flow.keys.is_empty() {
        set_job_keys(tx, job_id, &flow.keys, &flow.rates).await?;
    }
    if !flow.after.is_empty() {
        set_job_deps(tx, job_id, &flow.after).await?;
    }
    Ok(())
}

async fn set_job_keys(
    tx: &Transaction<'_>,
    job_id: Uuid,
    keys: &[(String, u32)],
    rates: &[Option<(f64, f64)>],
) -> Result<()> {
    const SET_KEYS: &str = include_str!("sql/flow/set_keys.sql");
    let per_sec: Vec<Option<f64>> = (0..keys.len())
        .map(|i| rates.get(i).copied().flatten().map(|r| r.0))
        .collect();
    let burst: Vec<Option<f64>> = (0..keys.len())
        .map(|i| rates.get(i).copied().flatten().map(|r| r.1))
        .collect();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let limits: Vec<i32> = keys
        .iter()
        .map(|(_, l)| i32::try_from(*l).unwrap_or(i32::MAX))
        .collect();
    tx.execute_cached(SET_KEYS, &[&job_id, &names]).await?;
    upsert_keys(tx, &names, &limits, &per_sec, &burst).await
}

/// Creates or updates concurrency keys (names unique within one call).
pub(super) async fn upsert_keys(
    tx: &Transaction<'_>,
    names: &[&str],
    limits: &[i32],
    per_sec: &[Option<f64>],
    burst: &[Option<f64>],
) -> Result<()> {
    const UPSERT_KEYS: &str = include_str!("sql/flow/upsert_keys.sql");
    // A new key's bucket starts full. The rate is the coordinator's configuration: a
    // submit sets (or clears) it, keeping the current token count.
    tx.execute_cached(UPSERT_KEYS, &[&names, &limits, &per_sec, &burst])
        .await?;
    Ok(())
}

impl Store {
    pub(super) fn keyed_jobs_may_wait(&self) -> bool {
        let since = self.keyed.none_since_ms.load(Ordering::Relaxed);
        since == 0 || now_ms() - since > RECHECK_MS
    }

    /// When the dispatcher should look again because a rate-limited key gets a token.
    pub(super) fn next_token_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let ms = self.keyed.token_at_ms.swap(0, Ordering::Relaxed);
        (ms > 0)
            .then(|| chrono::DateTime::from_timestamp_millis(ms))
            .flatten()
    }

    /// A keyed job was submitted through this coordinator: look for keyed jobs again.
    pub fn keyed_job_submitted(&self) {
        self.keyed.none_since_ms.store(0, Ordering::Relaxed);
    }

    /// Leases up to `n` due keyed jobs whose every key is below its limit.
    pub(super) async fn claim_keyed(
        &self,
        worker_id: &str,
        queues: &[String],
        labels: &[String],
        n: i64,
        lease_ttl: Duration,
    ) -> Result<Vec<Claimed>> {
        const KEYED_CANDIDATES: &str = include_str!("sql/flow/keyed_candidates.sql");
        const ANY_KEYED_PENDING: &str = include_str!("sql/flow/any_keyed_pending.sql");
        const TAKE_KEYS: &str = include_str!("sql/flow/take_keys.sql");
        const GIVE_BACK_KEYS: &str = include_str!("sql/flow/give_back_keys.sql");
        const NEXT_TOKEN_AT: &str = include_str!("sql/flow/next_token_at.sql");
        const CLAIM_KEYED: &str = include_str!("sql/flow/claim_keyed.sql");
        // On the per-job pool, whose plans do not depend on the statistics: planned on the
        // main pool from a table analyzed while small, the candidate scan read every row
        // of `jobs` and sorted the pending keyed ones (12–25 ms a claim in the benchmark).
        let mut c = self.hot.get().await?;
        let tx = c.transaction().await?;
        // Look a little past n: the first candidates may be blocked by their keys.
        let scan = (n * 4).max(32);
        let candidates = tx
            .query_cached(KEYED_CANDIDATES, &[&queues, &labels, &scan])
            .await?;
        if candidates.is_empty() {
            let any: bool = tx
                .query_one_cached(ANY_KEYED_PENDING, &[])
                .await?
                .try_get(0)?;
            if !any {
                self.keyed.none_since_ms.store(now_ms(), Ordering::Relaxed);
            }
            tx.commit().await?;
            return Ok(Vec::new());
        }
        self.keyed.none_since_ms.store(0, Ordering::Relaxed);
        let mut chosen: Vec<Uuid> = Vec::new();
        let mut blocked: Vec<String> = Vec::new();
        for r in &candidates {
            if chosen.len() as i64 >= n {
                break;
            }
            let id: Uuid = r.try_get(0)?;
            let keys: Vec<String> = r.try_get(1)?;
            // All of the job's keys or none: take what is free, give it back if not all.
            // A rate-limited key also takes a token from its bucket (refilled to now first).
            let got = tx.query_cached(TAKE_KEYS, &[&keys]).await?;
            if got.len() == keys.len() {
                chosen.push(id);
            } else {
                blocked.extend(keys.iter().cloned());
                if !got.is_empty() {
                    // Undo exactly: refilled_at is now() for the whole transaction.
                    let taken: Vec<String> = got
                        .iter()
                        .map(|g| g.try_get(0))
                        .collect::<std::result::Result<_, _>>()?;
                    tx.execute_cached(GIVE_BACK_KEYS, &[&taken]).await?;
                }
            }
        }
        // When a blocked key's bucket has its next token, so the dispatcher wakes then (a
        // finishing job gives no event for a token).
        if !blocked.is_empty() {
            let next: Option<chrono::DateTime<chrono::Utc>> = tx
                .query_one_cached(NEXT_TOKEN_AT, &[&blocked])
                .await?
                .try_get(0)?;
            if let Some(t) = next {
                self.keyed
                    .token_at_ms
                    .store(t.timestamp_millis(), Ordering::Relaxed);
            }
        }
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // started_at is when the lease is taken (clock_timestamp), not when this
        // transaction began: a key slot it waited for was freed before that instant, so the
        // attempts' recorded times never show more holders of a key than its limit.
        let rows = tx
            .query_cached(CLAIM_KEYED, &[&chosen, &worker_id, &millis(lease_ttl)])
            .await?;
        let out = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(out)
    }
}

// A job waiting for its dependencies has the far-future ready time
// '3000-01-01 00:00:00+00' (sql/flow/wait_for_deps.sql); the trigger in V17 makes it due
// when the last one succeeded.
pub const MAX_AFTER: usize = 32;

/// Records `job_id`'s dependencies, resolving each to the newest job of its retry chain.
/// Locks the dependencies' rows (marking them as having dependants), so none can finish
/// between this check and the commit unseen by the trigger. Refuses a dependency that
/// has already failed or been cancelled (with no newer retry).
pub(super) async fn set_job_deps(
    tx: &Transaction<'_>,
    job_id: Uuid,
    after: &[Uuid],
) -> Result<Vec<Uuid>> {
    const NEWEST_OF_CHAIN: &str = include_str!("sql/flow/newest_of_chain.sql");
    const MARK_HAS_DEPENDANTS: &str = include_str!("sql/flow/mark_has_dependants.sql");
    const INSERT_DEPS: &str = include_str!("sql/flow/insert_deps.sql");
    const WAIT_FOR_DEPS: &str = include_str!("sql/flow/wait_for_deps.sql");
    let mut resolved = Vec::with_capacity(after.len());
    for (i, dep) in after.iter().enumerate() {
        let row = tx
            .query_opt_cached(NEWEST_OF_CHAIN, &[dep])
            .await?
            .ok_or_else(|| {
                crate::error::Error::Invalid(format!("after[{i}]: job {dep} not found"))
            })?;
        let newest: Uuid = row.try_get(0)?;
        let state: String = tx
            .query_one_cached(MARK_HAS_DEPENDANTS, &[&newest])
            .await?
            .try_get(0)?;
        if state == "permanent_failed" || state == "cancelled" {
            return Err(crate::error::Error::FailedPrecondition(format!(
                "after[{i}]: job {newest} ended {state}; retry it first"
            )));
        }
        resolved.push(newest);
    }
    resolved.sort();
    resolved.dedup();
    tx.execute_cached(INSERT_DEPS, &[&job_id, &resolved])
        .await?;
    // Wait unless every dependency already succeeded.
    tx.execute_cached(WAIT_FOR_DEPS, &[&job_id, &resolved])
        .await?;
    Ok(resolved)
}

/// Dependencies of a job that have not succeeded yet.
pub(super) const WAITING_FOR: &str = include_str!("sql/flow/waiting_for.sql");

impl Store {
    /// Why each pending job of `ids` waits (see `Job.waiting` in the proto); jobs that are
    /// not pending, or ready, get an empty string.
    pub async fn waiting_reasons(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>> {
        const WAITING_REASONS: &str = include_str!("sql/flow/waiting_reasons.sql");
        measured("waiting_reasons", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(WAITING_REASONS, &[&ids]).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }
}
