//! Alert evaluation, a leader-only duty (its own advisory lock, so exactly one coordinator
//! evaluates): reads new outbox rows and the state tables, matches them against the rules
//! (`drover_core::alerting`, pure), folds events into per-key windows, and queues one
//! notification per closed window and per condition that fires or resolves.

use crate::channels::ChannelConfig;
use crate::error::Result;
use crate::health::worker_state;
use crate::store::alerts as store_alerts;
use crate::store::{notifications, outbox, Store};
use drover_core::alerting::{self, QueueView, Rule, WorkerView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
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
    pub evaluate_interval_ms: u64,
    /// How often each coordinator looks for due notifications.
    pub dispatch_interval_ms: u64,
    /// Timeout of one send (connect, and the whole request).
    pub send_timeout_ms: u64,
    /// Tries before a message that keeps failing transiently is given up (dead).
    pub max_tries: u32,
    /// Wait after the first failed try; doubles per try up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Delivered/dead notifications, processed outbox rows and failure groups not seen
    /// for this long are deleted.
    pub retention_hours: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            channels: BTreeMap::new(),
            rules: Vec::new(),
            evaluate_interval_ms: 2_000,
            dispatch_interval_ms: 1_000,
            send_timeout_ms: 10_000,
            max_tries: 20,
            backoff_initial_ms: 5_000,
            backoff_max_ms: 15 * 60_000,
            retention_hours: 7 * 24,
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
        let ms = |v: u64, f: &str, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(format!("alerts.{f}: must be {lo} to {hi}"))
            } else {
                Ok(())
            }
        };
        ms(
            self.evaluate_interval_ms,
            "evaluate_interval_ms",
            100,
            3_600_000,
        )?;
        ms(
            self.dispatch_interval_ms,
            "dispatch_interval_ms",
            100,
            3_600_000,
        )?;
        ms(self.send_timeout_ms, "send_timeout_ms", 100, 300_000)?;
        ms(
            self.backoff_initial_ms,
            "backoff_initial_ms",
            10,
            86_400_000,
        )?;
        ms(
            self.backoff_max_ms,
            "backoff_max_ms",
            self.backoff_initial_ms,
            86_400_000,
        )?;
        ms(u64::from(self.max_tries), "max_tries", 1, 1000)?;
        ms(self.retention_hours, "retention_hours", 1, 24 * 366)?;
        Ok(())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours.saturating_mul(3600))
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
    let interval = Duration::from_millis(cfg.evaluate_interval_ms);
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
    match store.prune_notifications(cfg.retention()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "pruned notifications and outbox rows"),
        Err(e) => tracing::warn!(error = %e, "notification retention failed"),
    }
    if let Err(e) = store.prune_failure_groups(cfg.retention()).await {
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
    let events = outbox::read_events(&tx, OUTBOX_BATCH).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = events.iter().map(|e| e.outbox_id).collect();
    for ((rule, key), (count, sample, examples)) in alerting::fold(&cfg.rules, &events) {
        let window = cfg
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map_or(300, |r| r.window_secs);
        store_alerts::add_to_window(
            &tx,
            rule,
            &key,
            window as f64,
            count,
            &sample,
            &examples,
            alerting::MAX_EXAMPLES as i32,
        )
        .await?;
    }
    outbox::mark_read(&tx, &ids).await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Each window whose time is up becomes one notification.
async fn close_windows(store: &Store, cfg: &AlertsConfig) -> Result<()> {
    let mut c = store.pool().get().await?;
    let tx = c.transaction().await?;
    for w in store_alerts::close_due_windows(&tx).await? {
        // A rule removed from the config since: its window is dropped.
        let Some(rule) = cfg.rules.iter().find(|x| x.name == w.rule) else {
            continue;
        };
        let m = alerting::folded_message(rule, &w.key, w.count, &w.sample, &w.examples);
        notifications::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
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
    store.forget_alert_conditions(&names).await?;
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
            store
                .recent_failure_counts(Duration::from_secs(rule.window_secs))
                .await?
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
        let stored = store_alerts::lock_conditions(&tx, &rule.name).await?;
        let before: BTreeSet<String> = stored.keys().cloned().collect();
        let (fired, resolved) = alerting::transitions(&before, &now);
        for key in fired {
            let detail = &now[&key];
            store_alerts::insert_condition(&tx, &rule.name, &key, detail).await?;
            let m = alerting::condition_message(rule, &key, detail, false);
            notifications::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
        }
        for key in resolved {
            store_alerts::delete_condition(&tx, &rule.name, &key).await?;
            let m = alerting::condition_message(rule, &key, &stored[&key], true);
            notifications::enqueue(&tx, &rule.channel, &rule.name, &m.subject, &m.body).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
