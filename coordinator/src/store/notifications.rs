//! Notifications: queueing a message, claiming a due one for delivery and recording the
//! try (both inside the deliverer's transaction), listing, redelivering, counting and
//! pruning them. Delivery itself is `crate::notify`.

use super::outbox::PRUNE_OUTBOX;
use super::{measured, Cached, Store};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use std::time::Duration;
use uuid::Uuid;

/// Longest subject and body stored (characters); longer texts are cut.
pub const MAX_SUBJECT: usize = 300;
pub const MAX_BODY: usize = 16 * 1024;
/// Rows deleted per retention statement.
pub const PRUNE_BATCH: u64 = 10_000;

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

/// Reads a row of the statements that return a notification's columns, in their order.
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

/// The first `n` characters of `s`.
pub(crate) fn cut(s: &str, n: usize) -> String {
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
    const INSERT: &str = include_str!("sql/notifications/insert.sql");
    let row = c
        .query_one_cached(
            INSERT,
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

/// Locks the notification due first (skipping ones another coordinator is sending).
pub(crate) async fn claim_due(tx: &Transaction<'_>) -> Result<Option<NotificationRow>> {
    const CLAIM_DUE: &str = include_str!("sql/notifications/claim_due.sql");
    Ok(tx
        .query_opt_cached(CLAIM_DUE, &[])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()?)
}

/// One try's outcome, and the notification's state after it.
pub(crate) struct Try<'a> {
    pub id: i64,
    pub coordinator_id: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub state: &'a str,
    pub tries: i32,
    /// When to try again (pending only).
    pub wait: Option<Duration>,
}

/// Records a try and moves the notification on, in the deliverer's transaction.
pub(crate) async fn record_try(tx: &Transaction<'_>, t: &Try<'_>) -> Result<()> {
    const INSERT_TRY: &str = include_str!("sql/notifications/insert_try.sql");
    const RECORD_TRY: &str = include_str!("sql/notifications/record_try.sql");
    tx.execute_cached(
        INSERT_TRY,
        &[&t.id, &t.coordinator_id, &t.outcome, &t.detail],
    )
    .await?;
    tx.execute_cached(
        RECORD_TRY,
        &[
            &t.id,
            &t.state,
            &t.tries,
            &t.detail,
            &t.wait.map(|w: Duration| w.as_secs_f64() * 1000.0),
        ],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Queues a message for `channel` on its own (not in a caller's transaction).
    pub async fn enqueue_notification(
        &self,
        channel: &str,
        rule: &str,
        subject: &str,
        body: &str,
    ) -> Result<NotificationRow> {
        measured("enqueue_notification", async {
            let c = self.pool.get().await?;
            enqueue(&c, channel, rule, subject, body).await
        })
        .await
    }

    /// Newest first; `before` is the keyset cursor (an id).
    pub async fn list_notifications(
        &self,
        failed_only: bool,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<NotificationRow>> {
        const LIST: &str = include_str!("sql/notifications/list.sql");
        const LIST_TRIES: &str = include_str!("sql/notifications/list_tries.sql");
        measured("list_notifications", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(LIST, &[&failed_only, &before, &limit])
                .await?;
            let mut out: Vec<NotificationRow> = rows
                .iter()
                .map(from_row)
                .collect::<std::result::Result<_, _>>()?;
            let ids: Vec<i64> = out.iter().map(|n| n.id).collect();
            // At most the last 20 tries of each are shown.
            let tries = c.query_cached(LIST_TRIES, &[&ids]).await?;
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
        })
        .await
    }

    /// Puts a dead notification back in the queue (same idempotency key: it was never
    /// accepted).
    pub async fn redeliver_notification(&self, id: i64) -> Result<NotificationRow> {
        const REDELIVER: &str = include_str!("sql/notifications/redeliver.sql");
        const GET_STATE: &str = include_str!("sql/notifications/get_state.sql");
        measured("redeliver_notification", async {
            let c = self.pool.get().await?;
            let row = c.query_opt_cached(REDELIVER, &[&id]).await?;
            match row {
                Some(r) => Ok(from_row(&r)?),
                None => {
                    let state = c.query_opt_cached(GET_STATE, &[&id]).await?;
                    match state {
                        None => Err(Error::NotFound(format!("notification {id} does not exist"))),
                        Some(s) => Err(Error::FailedPrecondition(format!(
                            "notification {id} is {}; only dead notifications can be redelivered",
                            s.try_get::<_, String>(0)?
                        ))),
                    }
                }
            }
        })
        .await
    }

    /// (dead, pending) counts for health.
    pub async fn notification_counts(&self) -> Result<(i64, i64)> {
        const COUNTS: &str = include_str!("sql/notifications/counts.sql");
        measured("notification_counts", async {
            let c = self.pool.get().await?;
            let r = c.query_one_cached(COUNTS, &[]).await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
        .await
    }

    /// Retention: finished notifications and outbox rows older than `older_than`, in
    /// batches of [`PRUNE_BATCH`] so no statement holds locks for long, until none are left
    /// (at most 100 batches a pass).
    pub async fn prune_notifications(&self, older_than: Duration) -> Result<u64> {
        const PRUNE: &str = include_str!("sql/notifications/prune.sql");
        measured("prune_notifications", async {
            let c = self.pool.get().await?;
            let secs = older_than.as_secs_f64();
            let mut total = 0;
            for _ in 0..100 {
                let n = c.execute_cached(PRUNE, &[&secs]).await?;
                // By age, read or not: an event older than the retention is too old to
                // alert on.
                let o = c.execute_cached(PRUNE_OUTBOX, &[&secs]).await?;
                total += n + o;
                if n < PRUNE_BATCH && o < PRUNE_BATCH {
                    break;
                }
            }
            Ok(total)
        })
        .await
    }
}
