//! Notification delivery, shared by every coordinator: each claims one due message at a
//! time with `FOR UPDATE SKIP LOCKED`, sends it while holding the row lock, and records
//! the outcome in the same transaction. A coordinator that dies mid-send releases the lock
//! unrecorded, so another sends it again (at-least-once; receivers dedup by idempotency
//! key); once a success is committed the message is never sent again.

use crate::alerts::AlertsConfig;
use crate::channels::{self, Outgoing};
use crate::error::{Error, Result};
use crate::store::{Cached, Store};
use chrono::{DateTime, Utc};
use drover_core::delivery::{self, Backoff, Observed, Verdict};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest subject and body stored (characters); longer texts are cut.
pub const MAX_SUBJECT: usize = 300;
pub const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct NotificationRow {
    pub id: i64,
    pub idempotency_key: Uuid,
    pub channel: String,
    pub rule: String,
    pub subject: String,
    pub body: String,
    pub state: String,
    pub tries: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub try_no: i32,
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub detail: String,
    pub coordinator_id: String,
}

const COLUMNS: &str = "id, idempotency_key, channel, rule, subject, body, state, tries, \
    next_attempt_at, last_error, created_at";

fn from_row(
    r: &tokio_postgres::Row,
) -> std::result::Result<NotificationRow, tokio_postgres::Error> {
    Ok(NotificationRow {
        id: r.try_get(0)?,
        idempotency_key: r.try_get(1)?,
        channel: r.try_get(2)?,
        rule: r.try_get(3)?,
        subject: r.try_get(4)?,
        body: r.try_get(5)?,
        state: r.try_get(6)?,
        tries: r.try_get(7)?,
        next_attempt_at: r.try_get(8)?,
        last_error: r.try_get(9)?,
        created_at: r.try_get(10)?,
        attempts: Vec::new(),
    })
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Queues a message for `channel` (in the caller's transaction or on its own).
pub(crate) async fn enqueue<C: Cached + Sync>(
    c: &C,
    channel: &str,
    rule: &str,
    subject: &str,
    body: &str,
) -> Result<NotificationRow> {
    let row = c
        .query_one_cached(
            &format!(
                "INSERT INTO notifications (idempotency_key, channel, rule, subject, body) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &channel,
                &rule,
                &cut(subject, MAX_SUBJECT),
                &cut(body, MAX_BODY),
            ],
        )
        .await?;
    Ok(from_row(&row)?)
}

/// Newest first; `before` is the keyset cursor (an id).
pub async fn list(
    store: &Store,
    failed_only: bool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<NotificationRow>> {
    let c = store.pool().get().await?;
    let rows = c
        .query_cached(
            &format!(
                "SELECT {COLUMNS} FROM notifications \
                  WHERE (NOT $1 OR state = 'dead') AND ($2::int8 IS NULL OR id < $2) \
                  ORDER BY id DESC LIMIT $3"
            ),
            &[&failed_only, &before, &limit],
        )
        .await?;
    let mut out: Vec<NotificationRow> = rows
        .iter()
        .map(from_row)
        .collect::<std::result::Result<_, _>>()?;
    let ids: Vec<i64> = out.iter().map(|n| n.id).collect();
    // At most the last 20 tries of each are shown.
    let tries = c
        .query_cached(
            "SELECT notification_id, try, at, outcome, detail, coordinator_id \
               FROM notification_attempts WHERE notification_id = ANY($1) \
              ORDER BY notification_id, try",
            &[&ids],
        )
        .await?;
    for t in &tries {
        let id: i64 = t.try_get(0)?;
        if let Some(n) = out.iter_mut().find(|n| n.id == id) {
            n.attempts.push(AttemptRow {
                try_no: t.try_get(1)?,
                at: t.try_get(2)?,
                outcome: t.try_get(3)?,
                detail: t.try_get(4)?,
                coordinator_id: t.try_get(5)?,
            });
            if n.attempts.len() > 20 {
                n.attempts.remove(0);
            }
        }
    }
    Ok(out)
}

/// Puts a dead notification back in the queue (same idempotency key: it was never accepted).
pub async fn redeliver(store: &Store, id: i64) -> Result<NotificationRow> {
    let c = store.pool().get().await?;
    let row = c
        .query_opt_cached(
            &format!(
                "UPDATE notifications SET state = 'pending', tries = 0, next_attempt_at = now(), \
                        finished_at = NULL \
                  WHERE id = $1 AND state = 'dead' RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    match row {
        Some(r) => Ok(from_row(&r)?),
        None => {
            let state = c
                .query_opt_cached("SELECT state FROM notifications WHERE id = $1", &[&id])
                .await?;
            match state {
                None => Err(Error::NotFound(format!("notification {id} does not exist"))),
                Some(s) => Err(Error::FailedPrecondition(format!(
                    "notification {id} is {}; only dead notifications can be redelivered",
                    s.try_get::<_, String>(0)?
                ))),
            }
        }
    }
}

/// (dead, pending) counts for health.
pub async fn counts(store: &Store) -> Result<(i64, i64)> {
    let c = store.pool().get().await?;
    let r = c
        .query_one_cached(
            "SELECT count(*) FILTER (WHERE state = 'dead'), \
                    count(*) FILTER (WHERE state = 'pending') \
               FROM notifications WHERE state <> 'delivered'",
            &[],
        )
        .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// Delivers due notifications until shutdown. Runs on every coordinator.
pub async fn run(
    store: Store,
    cfg: Arc<AlertsConfig>,
    coordinator_id: String,
    shutdown: CancellationToken,
) {
    // reqwest and lettre are built with ring; make it the process default too, so any
    // other rustls user in this process agrees. Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = match reqwest::Client::builder()
        .connect_timeout(cfg.send_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notification delivery disabled: HTTP client");
            return;
        }
    };
    loop {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match deliver_one(&store, &cfg, &http, &coordinator_id).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "notification delivery failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.dispatch_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Claims, sends and records one due notification. False when none is due.
pub async fn deliver_one(
    store: &Store,
    cfg: &AlertsConfig,
    http: &reqwest::Client,
    coordinator_id: &str,
) -> Result<bool> {
    let mut c = store.pool().get().await?;
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt_cached(
            &format!(
                "SELECT {COLUMNS} FROM notifications \
                  WHERE state = 'pending' AND next_attempt_at <= now() \
                  ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            &[],
        )
        .await?
    else {
        return Ok(false);
    };
    let n = from_row(&row)?;
    let key = n.idempotency_key.to_string();
    let observed = match cfg.channels.get(&n.channel) {
        None => Observed::Config(format!(
            "no channel named {:?} in alerts.channels",
            n.channel
        )),
        Some(ch) => {
            let out = Outgoing {
                id: n.id,
                idempotency_key: &key,
                rule: &n.rule,
                subject: &n.subject,
                body: &n.body,
            };
            // The channel's own timeouts apply; this bounds a peer that trickles bytes.
            match tokio::time::timeout(
                cfg.send_timeout * 2,
                channels::send(http, ch, &out, cfg.send_timeout),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => Observed::Network("timed out".into()),
            }
        }
    };
    let verdict = delivery::classify(&observed);
    let tries = n.tries + 1;
    let (state, outcome, detail, wait) = match &verdict {
        Verdict::Delivered => ("delivered", "delivered", String::new(), None),
        Verdict::Permanent { reason } => ("dead", "permanent", reason.clone(), None),
        Verdict::Transient { reason, at_least } => {
            if tries as u32 >= cfg.max_tries {
                (
                    "dead",
                    "transient",
                    format!("gave up after {tries} tries: {reason}"),
                    None,
                )
            } else {
                let w = delivery::next_wait(
                    &cfg.backoff(),
                    tries as u32,
                    rand::random::<f64>(),
                    *at_least,
                );
                ("pending", "transient", reason.clone(), Some(w))
            }
        }
    };
    let detail = cut(&detail, 1000);
    tx.execute_cached(
        "INSERT INTO notification_attempts (notification_id, try, coordinator_id, outcome, detail) \
         VALUES ($1, (SELECT coalesce(max(try), 0) + 1 FROM notification_attempts \
                       WHERE notification_id = $1), $2, $3, $4)",
        &[&n.id, &coordinator_id, &outcome, &detail],
    )
    .await?;
    tx.execute_cached(
        "UPDATE notifications SET state = $2, tries = $3, last_error = $4, \
                next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at \
                                       ELSE now() + $5 * interval '1 millisecond' END, \
                finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END \
          WHERE id = $1",
        &[
            &n.id,
            &state,
            &tries,
            &detail,
            &wait.map(|w: Duration| w.as_secs_f64() * 1000.0),
        ],
    )
    .await?;
    tx.commit().await?;
    match state {
        "delivered" => {
            tracing::info!(id = n.id, channel = %n.channel, tries, "notification delivered")
        }
        "dead" => {
            tracing::warn!(id = n.id, channel = %n.channel, tries, reason = %detail, "notification dead")
        }
        _ => tracing::info!(id = n.id, channel = %n.channel, tries, reason = %detail,
            retry_in_ms = wait.map(|w| w.as_millis() as u64).unwrap_or(0), "notification will be retried"),
    }
    Ok(true)
}

/// Rows deleted per retention statement.
pub const PRUNE_BATCH: u64 = 10_000;

/// Retention: finished notifications and outbox rows older than `older_than`, in batches
/// so no statement holds locks for long, until none are left (at most 100 batches a pass).
pub async fn prune(store: &Store, older_than: Duration) -> Result<u64> {
    let c = store.pool().get().await?;
    let secs = older_than.as_secs_f64();
    let mut total = 0;
    for _ in 0..100 {
        let n = c
            .execute_cached(
                "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
                  WHERE state <> 'pending' AND finished_at < now() - $1 * interval '1 second' \
                  LIMIT 10000)",
                &[&secs],
            )
            .await?;
        // By age, read or not: an event older than the retention is too old to alert on.
        // Outbox ids grow with time, so the rows to delete are those below the first young
        // one; found through the primary key, with no index on created_at to maintain.
        let o = c
            .execute_cached(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id < coalesce( \
                    (SELECT id FROM outbox WHERE created_at >= now() - $1 * interval '1 second' \
                      ORDER BY id LIMIT 1), 9223372036854775807) \
                  ORDER BY id LIMIT 10000)",
                &[&secs],
            )
            .await?;
        total += n + o;
        if n < PRUNE_BATCH && o < PRUNE_BATCH {
            break;
        }
    }
    Ok(total)
}

impl AlertsConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
            multiplier: 2.0,
        }
    }
}
