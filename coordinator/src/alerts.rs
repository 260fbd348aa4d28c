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
use drover_core::duration::{format as show, human as dur};
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
    match store.prune_notifications(cfg.retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "pruned notifications and outbox rows"),
        Err(e) => tracing::warn!(error = %e, "notification retention failed"),
    }
    if let Err(e) = store.prune_failure_groups(cfg.retention).await {
        tracing::warn!(error = %e, "failure group retention failed");
    }
}

/// How long one arming of the outbox gate holds, and how often it is renewed. Long, so a
/// restart of the coordinators with event rules loses no event.
pub const OUTBOX_GATE_TTL: Duration = Duration::from_secs(600);
const OUTBOX_GATE_RENEW: Duration = Duration::from_secs(60);

impl AlertsConfig {
    /// Whether some rule counts job events, i.e. reads the outbox.
    pub fn wants_events(&self) -> bool {
        self.rules.iter().any(|r| !r.kind.is_condition())
    }
}

/// Keeps the outbox gate open while this coordinator runs (it has event rules; the first
/// arming is done before it serves, see `server::start`).
pub async fn keep_outbox_gate(store: Store, shutdown: CancellationToken) {
    loop {
        let pause = match store
            .arm_gate(crate::store::OUTBOX_GATE, OUTBOX_GATE_TTL.as_secs() as i64)
            .await
        {
            Ok(()) => OUTBOX_GATE_RENEW,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the outbox gate; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: outbox → windows, closed windows → notifications, conditions → notifications.
pub async fn evaluate(store: &Store, cfg: &AlertsConfig, lease_ttl_ms: i64) -> Result<()> {
    // Without event rules nothing reads the outbox (and no row is written to it unless
    // another coordinator has event rules); retention deletes unread rows by age.
    if cfg.wants_events() {
        while read_outbox(store, cfg).await? == OUTBOX_BATCH as usize {}
    }
    close_windows(store, cfg).await?;
    check_conditions(store, cfg, lease_ttl_ms).await
}

/// Reads a batch of unprocessed outbox rows, adds them to the open windows and deletes
/// them, in one transaction. Returns how many rows it read.
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
            .map_or(300, |r| r.window.as_secs());
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
    outbox::delete_read(&tx, &ids).await?;
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
            store.recent_failure_counts(rule.window).await?
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
