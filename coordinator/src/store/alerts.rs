//! Alert state: the per-key windows events are folded into, and the conditions that are
//! firing. Read and written by the alert evaluator (`crate::alerts`) inside its
//! transactions.

use super::{measured, Cached, Store};
use crate::error::Result;
use deadpool_postgres::Transaction;
use std::collections::BTreeMap;
use tokio_postgres::types::Json;

/// A window whose time is up, deleted as it was read.
pub struct ClosedWindow {
    pub rule: String,
    pub key: String,
    pub count: i64,
    pub sample: String,
    pub examples: Vec<String>,
}

/// Adds folded events to a rule's window for `key`, opening it (to close `window_secs`
/// from now) if it is not open; examples are kept up to `max_examples`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn add_to_window(
    tx: &Transaction<'_>,
    rule: &str,
    key: &str,
    window_secs: f64,
    count: i64,
    sample: &str,
    examples: &[String],
    max_examples: i32,
) -> Result<()> {
    const UPSERT_WINDOW: &str = include_str!("sql/alerts/upsert_window.sql");
    tx.execute_cached(
        UPSERT_WINDOW,
        &[
            &rule,
            &key,
            &window_secs,
            &count,
            &sample,
            &Json(examples),
            &max_examples,
        ],
    )
    .await?;
    Ok(())
}

/// Deletes and returns up to 500 windows whose time is up.
pub(crate) async fn close_due_windows(tx: &Transaction<'_>) -> Result<Vec<ClosedWindow>> {
    const CLOSE_WINDOWS: &str = include_str!("sql/alerts/close_windows.sql");
    tx.query_cached(CLOSE_WINDOWS, &[])
        .await?
        .iter()
        .map(|r| {
            let Json(examples): Json<Vec<String>> = r.try_get(4)?;
            Ok(ClosedWindow {
                rule: r.try_get(0)?,
                key: r.try_get(1)?,
                count: r.try_get(2)?,
                sample: r.try_get(3)?,
                examples,
            })
        })
        .collect()
}

/// The firing conditions of a rule (key → detail), locked.
pub(crate) async fn lock_conditions(
    tx: &Transaction<'_>,
    rule: &str,
) -> Result<BTreeMap<String, String>> {
    const LOCK_CONDITIONS: &str = include_str!("sql/alerts/lock_conditions.sql");
    Ok(tx
        .query_cached(LOCK_CONDITIONS, &[&rule])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<std::result::Result<_, tokio_postgres::Error>>()?)
}

/// Records that a rule's condition fires for `key`.
pub(crate) async fn insert_condition(
    tx: &Transaction<'_>,
    rule: &str,
    key: &str,
    detail: &str,
) -> Result<()> {
    const INSERT_CONDITION: &str = include_str!("sql/alerts/insert_condition.sql");
    tx.execute_cached(INSERT_CONDITION, &[&rule, &key, &detail])
        .await?;
    Ok(())
}

/// Records that a rule's condition for `key` resolved.
pub(crate) async fn delete_condition(tx: &Transaction<'_>, rule: &str, key: &str) -> Result<()> {
    const DELETE_CONDITION: &str = include_str!("sql/alerts/delete_condition.sql");
    tx.execute_cached(DELETE_CONDITION, &[&rule, &key]).await?;
    Ok(())
}

impl Store {
    /// Forgets the conditions of rules not in `rules` (no longer configured).
    pub async fn forget_alert_conditions(&self, rules: &[&str]) -> Result<u64> {
        const FORGET_CONDITIONS: &str = include_str!("sql/alerts/forget_conditions.sql");
        measured("forget_alert_conditions", async {
            let c = self.pool.get().await?;
            Ok(c.execute_cached(FORGET_CONDITIONS, &[&rules]).await?)
        })
        .await
    }
}
