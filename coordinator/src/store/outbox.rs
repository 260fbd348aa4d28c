//! The outbox (one row per job event, written in the transaction that made it) and
//! NOTIFY: events in, events read (and deleted) by the alert evaluator, unread rows pruned
//! by age.

use super::Cached;
use crate::error::Result;
use deadpool_postgres::Transaction;
use drover_core::alerting::JobEvent;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// `pg_notify(channel, payload)`, sent at commit.
pub(super) const NOTIFY: &str = include_str!("sql/outbox/notify.sql");

pub(super) async fn insert_event(
    tx: &Transaction<'_>,
    job_id: Uuid,
    event: &str,
    payload: serde_json::Value,
) -> Result<()> {
    const INSERT_EVENT: &str = include_str!("sql/outbox/insert_event.sql");
    tx.execute_cached(INSERT_EVENT, &[&job_id, &event, &Json(payload)])
        .await?;
    Ok(())
}

/// Deletes up to 10 000 outbox rows older than `$1` seconds. Outbox ids grow with time, so
/// the rows to delete are those below the first young one; found through the primary key,
/// with no index on created_at to maintain.
pub(super) const PRUNE_OUTBOX: &str = include_str!("sql/outbox/prune.sql");

/// Locks up to `limit` unread outbox rows (skipping rows another evaluator holds), oldest
/// first, as the alert rules see them.
pub(crate) async fn read_events(tx: &Transaction<'_>, limit: i64) -> Result<Vec<JobEvent>> {
    const READ_EVENTS: &str = include_str!("sql/outbox/read_events.sql");
    let rows = tx.query_cached(READ_EVENTS, &[&limit]).await?;
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let Json(payload): Json<serde_json::Value> = r.try_get(3)?;
        let text = |k: &str| payload[k].as_str().unwrap_or_default().to_string();
        events.push(JobEvent {
            outbox_id: r.try_get(0)?,
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
    Ok(events)
}

/// Deletes outbox rows the alert evaluator has read (in the transaction that folded them
/// into its windows, so an evaluator that dies mid-batch leaves them for the next).
pub(crate) async fn delete_read(tx: &Transaction<'_>, ids: &[i64]) -> Result<()> {
    const DELETE_READ: &str = include_str!("sql/outbox/delete_read.sql");
    tx.execute_cached(DELETE_READ, &[&ids]).await?;
    Ok(())
}
