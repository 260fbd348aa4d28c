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
    if flow.priority != 0 {
        tx.execute_cached(
            "UPDATE jobs SET priority = $2, \
                    not_before = not_before - $3 * interval '1 millisecond' WHERE id = $1",
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
    tx.execute_cached(
        "UPDATE jobs SET concurrency_keys = $2 WHERE id = $1",
        &[&job_id, &names],
    )
    .await?;
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
    // A new key's bucket starts full. The rate is the coordinator's configuration: a
    // submit sets (or clears) it, keeping the current token count.
    tx.execute_cached(
        "INSERT INTO concurrency_keys AS k (key, max_running, rate_per_sec, burst, tokens) \
         SELECT u.k, u.l, u.r, u.b, coalesce(u.b, 0) \
           FROM unnest($1::text[], $2::int4[], $3::float8[], $4::float8[]) u(k, l, r, b) \
         ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running, \
                rate_per_sec = EXCLUDED.rate_per_sec, burst = EXCLUDED.burst, \
                tokens = least(k.tokens, coalesce(EXCLUDED.burst, k.tokens)), updated_at = now() \
          WHERE k.max_running <> EXCLUDED.max_running \
             OR k.rate_per_sec IS DISTINCT FROM EXCLUDED.rate_per_sec \
             OR k.burst IS DISTINCT FROM EXCLUDED.burst",
        &[&names, &limits, &per_sec, &burst],
    )
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
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        // Look a little past n: the first candidates may be blocked by their keys.
        let scan = (n * 4).max(32);
        let candidates = tx
            .query_cached(
                "SELECT p.id, p.concurrency_keys FROM ( \
                    SELECT u.name FROM unnest($1::text[]) u(name) \
                     WHERE NOT EXISTS (SELECT 1 FROM queue_settings qs \
                                        WHERE qs.queue = u.name AND qs.paused)) q \
                 CROSS JOIN LATERAL ( \
                    SELECT id, concurrency_keys, not_before FROM jobs \
                     WHERE state = 'pending' AND queue = q.name AND not_before <= now() \
                       AND labels <@ $2 AND concurrency_keys <> '{}' \
                     ORDER BY not_before, id LIMIT $3 FOR UPDATE SKIP LOCKED) p \
                 ORDER BY p.not_before, p.id LIMIT $3",
                &[&queues, &labels, &scan],
            )
            .await?;
        if candidates.is_empty() {
            let any: bool = tx
                .query_one_cached(
                    "SELECT EXISTS (SELECT 1 FROM jobs \
                      WHERE state = 'pending' AND concurrency_keys <> '{}')",
                    &[],
                )
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
            let got = tx
                .query_cached(
                    "UPDATE concurrency_keys SET running = running + 1, updated_at = now(), \
                            tokens = CASE WHEN rate_per_sec IS NULL THEN tokens ELSE \
                              least(burst, tokens + extract(epoch FROM now() - refilled_at) \
                                                    * rate_per_sec) - 1 END, \
                            refilled_at = CASE WHEN rate_per_sec IS NULL THEN refilled_at \
                                          ELSE now() END \
                      WHERE key = ANY ($1) AND running < max_running \
                        AND (rate_per_sec IS NULL OR least(burst, tokens + \
                             extract(epoch FROM now() - refilled_at) * rate_per_sec) >= 1) \
                      RETURNING key",
                    &[&keys],
                )
                .await?;
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
                    tx.execute_cached(
                        "UPDATE concurrency_keys SET running = running - 1, \
                                tokens = CASE WHEN rate_per_sec IS NULL THEN tokens \
                                         ELSE tokens + 1 END \
                          WHERE key = ANY ($1)",
                        &[&taken],
                    )
                    .await?;
                }
            }
        }
        // When a blocked key's bucket has its next token, so the dispatcher wakes then (a
        // finishing job gives no event for a token).
        if !blocked.is_empty() {
            let next: Option<chrono::DateTime<chrono::Utc>> = tx
                .query_one_cached(
                    "SELECT min(refilled_at + (1 - tokens) / rate_per_sec * interval '1 second') \
                       FROM concurrency_keys \
                      WHERE key = ANY ($1) AND rate_per_sec IS NOT NULL AND tokens < 1",
                    &[&blocked],
                )
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
            .query_cached(
                "WITH c AS (SELECT id, not_before AS due FROM jobs WHERE id = ANY ($1)), \
                 a AS ( \
                    INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at, \
                                          started_at) \
                    SELECT gen_random_uuid(), j.id, j.attempt_count + 1, $2, 'running', \
                           now() + $3 * interval '1 millisecond', \
                           clock_timestamp() \
                      FROM jobs j JOIN c ON c.id = j.id \
                    RETURNING id, job_id, number) \
                 UPDATE jobs j SET state = 'running', current_attempt_id = a.id, \
                        attempt_count = a.number, reason = '', updated_at = now() \
                   FROM a JOIN c ON c.id = a.job_id WHERE j.id = a.job_id \
                 RETURNING a.id AS attempt_id, j.id AS job_id, a.number, j.argv, j.env, \
                           j.params, j.timeout_ms, j.outputs, j.trace_parent, j.limits, \
                           j.secret_env, extract(epoch FROM now() - c.due)::float8 AS waited",
                &[&chosen, &worker_id, &millis(lease_ttl)],
            )
            .await?;
        let out = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(out)
    }
}

/// Far-future ready time of a job waiting for its dependencies (the trigger in V17 makes
/// it due when the last one succeeded).
pub const WAITING_SQL: &str = "'3000-01-01 00:00:00+00'";
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
    let mut resolved = Vec::with_capacity(after.len());
    for (i, dep) in after.iter().enumerate() {
        let row = tx
            .query_opt_cached(
                "SELECT n.id FROM jobs x JOIN jobs n \
                    ON n.id = x.id OR (n.original_job_id = coalesce(x.original_job_id, x.id) \
                                       AND n.created_at > x.created_at) \
                  WHERE x.id = $1 ORDER BY n.created_at DESC, n.id DESC LIMIT 1",
                &[dep],
            )
            .await?
            .ok_or_else(|| {
                crate::error::Error::Invalid(format!("after[{i}]: job {dep} not found"))
            })?;
        let newest: Uuid = row.try_get(0)?;
        let state: String = tx
            .query_one_cached(
                "UPDATE jobs SET has_dependants = true WHERE id = $1 RETURNING state",
                &[&newest],
            )
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
    tx.execute_cached(
        "INSERT INTO job_deps (job_id, depends_on) SELECT $1, unnest($2::uuid[])",
        &[&job_id, &resolved],
    )
    .await?;
    // Wait unless every dependency already succeeded.
    tx.execute_cached(
        &format!(
            "UPDATE jobs SET not_before = {WAITING_SQL} WHERE id = $1 AND EXISTS ( \
                SELECT 1 FROM jobs o WHERE o.id = ANY ($2) AND o.state <> 'succeeded')"
        ),
        &[&job_id, &resolved],
    )
    .await?;
    Ok(resolved)
}

impl Store {
    /// Dependencies of a job that have not succeeded yet.
    pub async fn waiting_for(&self, job_id: Uuid) -> Result<Vec<Uuid>> {
        measured("waiting_for", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT d.depends_on FROM job_deps d JOIN jobs o ON o.id = d.depends_on \
                  WHERE d.job_id = $1 AND o.state <> 'succeeded' ORDER BY 1",
                    &[&job_id],
                )
                .await?;
            rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
        })
        .await
    }
}

impl Store {
    /// Why each pending job of `ids` waits (see `Job.waiting` in the proto); jobs that are
    /// not pending, or ready, get an empty string.
    pub async fn waiting_reasons(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>> {
        measured("waiting_reasons", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    &format!(
                        "SELECT j.id, CASE \
                       WHEN j.state <> 'pending' THEN '' \
                       WHEN j.not_before >= {WAITING_SQL} THEN 'after job ' || coalesce(( \
                            SELECT string_agg(d.depends_on::text, ', ' ORDER BY d.depends_on) \
                              FROM job_deps d JOIN jobs o ON o.id = d.depends_on \
                             WHERE d.job_id = j.id AND o.state <> 'succeeded'), '?') \
                       WHEN EXISTS (SELECT 1 FROM queue_settings qs \
                                     WHERE qs.queue = j.queue AND qs.paused) THEN 'queue paused' \
                       WHEN j.not_before > now() THEN 'backoff until ' || \
                            to_char(j.not_before AT TIME ZONE 'UTC', \
                                    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                       WHEN EXISTS (SELECT 1 FROM concurrency_keys k \
                                     WHERE k.key = ANY (j.concurrency_keys) \
                                       AND k.running < k.max_running \
                                       AND k.rate_per_sec IS NOT NULL AND least(k.burst, \
                                           k.tokens + extract(epoch FROM now() - k.refilled_at) \
                                           * k.rate_per_sec) < 1) \
                            THEN 'rate limited until ' || ( \
                            SELECT to_char(max(k.refilled_at + (1 - k.tokens) / k.rate_per_sec \
                                               * interval '1 second') AT TIME ZONE 'UTC', \
                                           'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                              FROM concurrency_keys k WHERE k.key = ANY (j.concurrency_keys) \
                               AND k.rate_per_sec IS NOT NULL AND k.tokens < 1) \
                       ELSE coalesce(( \
                            SELECT 'concurrency key ' || k.key || ' ' || k.running || '/' || \
                                   k.max_running FROM concurrency_keys k \
                             WHERE k.key = ANY (j.concurrency_keys) \
                               AND k.running >= k.max_running ORDER BY k.key LIMIT 1), '') \
                     END FROM jobs j WHERE j.id = ANY ($1)"
                    ),
                    &[&ids],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }
}
