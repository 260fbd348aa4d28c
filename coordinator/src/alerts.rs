//! Alert evaluation, a leader-only duty (its own advisory lock, so exactly one coordinator
//! evaluates): reads new outbox rows and the state tables, matches them against the rules
//! (`drover_core::alerting`, pure), folds events into per-key windows, and queues one
//! notification per closed window and per condition that fires or resolves.

use crate::channels::ChannelConfig;
use crate::error::Result;
use crate::failures;
use crate::health::worker_state;
use crate::notify;
use crate::store::{Cached, Store};
use drover_core::alerting::{self, JobEvent, QueueView, Rule, WorkerView};
use drover_core::duration::{format as show, human as dur};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::Json;
use tokio_util::sync::CancellationToken;

/// Advisory lock of the alert evaluator (distinct from the reaper's leader lock).
pub const ALERTS_LOCK: i64 = 0x4452_4f56_0010;
/// Outbox rows read per evaluation pass.
pub const OUTBOX_BATCH: i64 = 1000;

/// `[alerts]` in the coordinator's config. See docs/notifications.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Named channels rules send to.
    pub channels: BTreeMap<String, ChannelConfig>,
    pub rules: Vec<Rule>,
    /// How often the leader reads the outbox and checks conditions.
    #[serde(with = "dur")]
    pub evaluate_interval: Duration,
    /// How often each coordinator looks for due notifications.
    #[serde(with = "dur")]
    pub dispatch_interval: Duration,
    /// Timeout of one send (connect, and the whole request).
    #[serde(with = "dur")]
    pub send_timeout: Duration,
    /// Tries before a message that keeps failing transiently is given up (dead).
    pub max_tries: u32,
    /// Wait after the first failed try; doubles per try up to `backoff_max`.
    #[serde(with = "dur")]
    pub backoff_initial: Duration,
    #[serde(with = "dur")]
    pub backoff_max: Duration,
    /// Delivered/dead notifications, processed outbox rows and failure groups not seen
    /// for this long are deleted.
    #[serde(with = "dur")]
    pub retention: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            channels: BTreeMap::new(),
            rules: Vec::new(),
            evaluate_interval: Duration::from_secs(2),
            dispatch_interval: Duration::from_secs(1),
            send_timeout: Duration::from_secs(10),
            max_tries: 20,
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(7 * 86_400),
        }
    }
}

impl AlertsConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels.len() > 50 {
            return Err("alerts.channels: at most 50".into());
        }
        for (name, ch) in &self.channels {
            drover_core::validate::check_name("alerts.channels", name)
                .map_err(|e| e.to_string())?;
            ch.validate(name)?;
        }
        if self.rules.len() > alerting::MAX_RULES {
            return Err(format!("alerts.rules: at most {}", alerting::MAX_RULES));
        }
        let names: BTreeSet<String> = self.channels.keys().cloned().collect();
        let mut seen = BTreeSet::new();
        for r in &self.rules {
            r.validate(&names)?;
            if !seen.insert(&r.name) {
                return Err(format!("alerts.rules: name {:?} used twice", r.name));
            }
        }
        let within = |v: Duration, f: &str, lo: Duration, hi: Duration| {
            if v < lo || v > hi {
                Err(format!(
                    "alerts.{f}: {} must be {} to {}",
                    show(v),
                    show(lo),
                    show(hi)
                ))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        let hour = Duration::from_secs(3600);
        let day = hour * 24;
        within(self.evaluate_interval, "evaluate_interval", ms(100), hour)?;
        within(self.dispatch_interval, "dispatch_interval", ms(100), hour)?;
        within(self.send_timeout, "send_timeout", ms(100), ms(300_000))?;
        within(self.backoff_initial, "backoff_initial", ms(10), day)?;
        within(self.backoff_max, "backoff_max", self.backoff_initial, day)?;
        if !(1..=1000).contains(&self.max_tries) {
            return Err("alerts.max_tries: must be 1 to 1000".into());
        }
        within(self.retention, "retention", hour, day * 366)?;
        Ok(())
    }
}

/// Takes the alert lock and evaluates while holding it.
pub async fn run(
    database_url: String,
    store: Store,
    cfg: Arc<AlertsConfig>,
    lease_ttl_ms: i64,
    shutdown: CancellationToken,
) {
    let interval = cfg.evaluate_interval;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Ok(client) = crate::db::connect(&database_url).await {
            let got = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&ALERTS_LOCK])
                .await
                .and_then(|r| r.try_get::<_, bool>(0));
            if let Ok(true) = got {
                tracing::info!("evaluating alerts");
                let mut next_prune = tokio::time::Instant::now();
                while !client.is_closed() && !shutdown.is_cancelled() {
                    if let Err(e) = evaluate(&store, &cfg, lease_ttl_ms).await {
                        tracing::warn!(error = %e, "alert evaluation failed");
                    }
                    if tokio::time::Instant::now() >= next_prune {
                        next_prune += Duration::from_secs(60);
                        prune(&store, &cfg).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn prune(store: &Store, cfg: &AlertsConfig) {
    match notify::prune(store, cfg.retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "pruned notifications and outbox rows"),
        Err(e) => tracing::warn!(error = %e, "notification retention failed"),
    }
    if let Err(e) = failures::prune_groups(store, cfg.retention).await {
        tracing::warn!(error = %e, "failure group retention failed");
    }
}

/// One pass: outbox → windows, closed windows → notifications, conditions → notifications.
pub async fn evaluate(store: &Store, cfg: &AlertsConfig, lease_ttl_ms: i64) -> Result<()> {
    // Without event rules nothing reads the outbox (no work per job at all); retention
    // still deletes its rows by age.
    if cfg.rules.iter().any(|r| !r.kind.is_condition()) {
        while read_outbox(store, cfg).await? == OUTBOX_BATCH as usize {}
    }
    close_windows(store, cfg).await?;
    check_conditions(store, cfg, lease_ttl_ms).await
}

/// Reads a batch of unprocessed outbox rows, adds them to the open windows and marks them
/// processed, in one transaction. Returns how many rows it read.
async fn read_outbox(store: &Store, cfg: &AlertsConfig) -> Result<usize> {
    let mut c = store.pool().get().await?;
    let tx = c.transaction().await?;
    let rows = tx
        .query_cached(
            "SELECT o.id, o.event, o.job_id::text, o.payload, j.queue, j.labels, j.attempt_count, \
                    extract(epoch FROM a.finished_at - a.started_at)::float8 \
               FROM outbox o JOIN jobs j ON j.id = o.job_id \
               LEFT JOIN attempts a ON a.id = (o.payload->>'attempt_id')::uuid \
              WHERE o.delivered_at IS NULL \
              ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
            &[&OUTBOX_BATCH],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get(0)?;
        ids.push(id);
        let Json(payload): Json<serde_json::Value> = r.try_get(3)?;
        let text = |k: &str| payload[k].as_str().unwrap_or_default().to_string();
        events.push(JobEvent {
            outbox_id: id,
            event: r.try_get(1)?,
            job_id: r.try_get(2)?,
            queue: r.try_get(4)?,
            labels: r.try_get(5)?,
            attempts: r.try_get(6)?,
            ran_secs: r.try_get(7)?,
            reason: text("reason"),
            fingerprint: payload["fingerprint"].as_str().map(str::to_string),
            sample: text("sample"),
            new_fingerprint: payload["new_fingerprint"].as_bool().unwrap_or(false),
        });
    }
    for ((rule, key), (count, sample, examples)) in alerting::fold(&cfg.rules, &events) {
        let window = cfg
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map_or(300, |r| r.window_secs);
        tx.execute_cached(
            "INSERT INTO alert_windows AS w (rule, key, closes_at, count, sample, examples) \
             VALUES ($1, $2, now() + $3 * interval '1 second', $4, $5, $6) \
             ON CONFLICT (rule, key) DO UPDATE SET count = w.count + EXCLUDED.count, \
                    examples = CASE WHEN jsonb_array_length(w.examples) >= $7 THEN w.examples \
                                    ELSE w.examples || EXCLUDED.examples END",
            &[
                &rule,
                &key,
                &(window as f64),
                &count,
                &sample,
                &Json(&examples),
                &(alerting::MAX_EXAMPLES as i32),
            ],
        )
        .await?;
    }
    tx.execute_cached(
        "UPDATE outbox SET delivered_at = now() WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Each window whose time is up becomes one notification.
async fn close_windows(store: &Store, cfg: &AlertsConfig) -> Result<()> {
    let mut c = store.pool().get().await?;
    let tx = c.transaction().await?;
    let rows = tx
        .query_cached(
            "DELETE FROM alert_windows WHERE (rule, key) IN \
               (SELECT rule, key FROM alert_windows WHERE closes_at <= now() LIMIT 500 \
                FOR UPDATE SKIP LOCKED) \
             RETURNING rule, key, count, sample, examples",
            &[],
        )
        .await?;
    for r in &rows {
        let name: String = r.try_get(0)?;
        // A rule removed from the config since: its window is dropped.
        let Some(rule) = cfg.rules.iter().find(|x| x.name == name) else {
            continue;
        };
        let key: String = r.try_get(1)?;
        let Json(examples): Json<Vec<String>> = r.try_get(4)?;
        let m = alerting::folded_message(
            rule,
            &key,
            r.try_get(2)?,
            &r.try_get::<_, String>(3)?,
            &examples,
        );
        notify::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Compares each condition rule's firing keys with those stored; new ones and resolved
/// ones each queue one message.
async fn check_conditions(store: &Store, cfg: &AlertsConfig, lease_ttl_ms: i64) -> Result<()> {
    let rules: Vec<&Rule> = cfg.rules.iter().filter(|r| r.kind.is_condition()).collect();
    // Conditions of rules no longer configured are forgotten (no resolved message: the
    // rule that would send it is gone).
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    store
        .pool()
        .get()
        .await?
        .execute_cached(
            "DELETE FROM alert_conditions WHERE NOT (rule = ANY($1))",
            &[&names],
        )
        .await?;
    if rules.is_empty() {
        return Ok(());
    }
    let workers: Vec<WorkerView> = store
        .list_workers()
        .await?
        .into_iter()
        .map(|w| WorkerView {
            state: worker_state(&w, lease_ttl_ms),
            id: w.id,
            labels: w.labels,
            queues: w.queues,
            paused_reason: w.paused_reason,
            seen_ago_secs: w.seen_ago_ms / 1000,
        })
        .collect();
    let queues: Vec<QueueView> = store
        .queue_stats()
        .await?
        .into_iter()
        .map(|q| QueueView {
            queue: q.queue,
            pending: q.pending,
            oldest_due_secs: q.oldest_due_ms.map(|ms| ms / 1000),
        })
        .collect();
    for rule in rules {
        let spikes = if rule.kind == alerting::RuleKind::FingerprintSpike {
            failures::recent_counts(store, Duration::from_secs(rule.window_secs)).await?
        } else {
            Vec::new()
        };
        let now = if rule.kind == alerting::RuleKind::ScheduleMissed {
            let schedules: Vec<alerting::ScheduleView> = store
                .schedule_miss_views()
                .await?
                .into_iter()
                .map(|v| alerting::ScheduleView {
                    name: v.name,
                    queue: v.queue,
                    missed_ago_secs: v.missed_ago_secs,
                    missed_reason: v.missed_reason,
                    overdue_secs: v.overdue_secs,
                })
                .collect();
            alerting::schedule_conditions(rule, &schedules)
        } else {
            alerting::conditions(rule, &workers, &queues, &spikes)
        };
        let mut c = store.pool().get().await?;
        let tx = c.transaction().await?;
        let stored: BTreeMap<String, String> = tx
            .query_cached(
                "SELECT key, detail FROM alert_conditions WHERE rule = $1 FOR UPDATE",
                &[&rule.name],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, tokio_postgres::Error>>()?;
        let before: BTreeSet<String> = stored.keys().cloned().collect();
        let (fired, resolved) = alerting::transitions(&before, &now);
        for key in fired {
            let detail = &now[&key];
            tx.execute_cached(
                "INSERT INTO alert_conditions (rule, key, detail) VALUES ($1, $2, $3) \
                 ON CONFLICT (rule, key) DO NOTHING",
                &[&rule.name, &key, detail],
            )
            .await?;
            let m = alerting::condition_message(rule, &key, detail, false);
            notify::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
        }
        for key in resolved {
            tx.execute_cached(
                "DELETE FROM alert_conditions WHERE rule = $1 AND key = $2",
                &[&rule.name, &key],
            )
            .await?;
            let m = alerting::condition_message(rule, &key, &stored[&key], true);
            notify::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
