//! Queues: pausing and resuming one (flow control), and per-queue counts.

use super::outbox::NOTIFY;
use super::{measured, Cached, JOBS_CHANNEL};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct QueueState {
    pub queue: String,
    pub paused: bool,
    pub pending: i64,
    pub running: i64,
}

impl super::Store {
    /// Pauses or resumes a queue. A claim that starts after this commits leases nothing
    /// from a paused queue; running jobs are not touched. Resuming notifies every
    /// coordinator so waiting jobs are dispatched at once.
    pub async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        const SET_PAUSED: &str = include_str!("sql/queues/set_paused.sql");
        measured("set_queue_paused", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            tx.execute_cached(SET_PAUSED, &[&queue, &paused]).await?;
            if !paused {
                tx.execute_cached(NOTIFY, &[&JOBS_CHANNEL, &queue]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Every queue that has settings or unfinished jobs, by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueState>> {
        const LIST_QUEUES: &str = include_str!("sql/queues/list_queues.sql");
        measured("list_queues", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_QUEUES, &[]).await?;
            rows.iter()
                .map(|r| {
                    Ok(QueueState {
                        queue: r.try_get(0)?,
                        paused: r.try_get(1)?,
                        pending: r.try_get(2)?,
                        running: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }
}

/// Per-queue counts for the health report.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub queue: String,
    pub pending: i64,
    pub running: i64,
    /// Age of the oldest pending job that is due now.
    pub oldest_due_ms: Option<i64>,
}

impl super::Store {
    pub async fn queue_stats(&self) -> Result<Vec<QueueRow>> {
        const QUEUE_STATS: &str = include_str!("sql/queues/queue_stats.sql");
        measured("queue_stats", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(QUEUE_STATS, &[]).await?;
            rows.iter()
                .map(|r| {
                    Ok(QueueRow {
                        queue: r.try_get(0)?,
                        pending: r.try_get(1)?,
                        running: r.try_get(2)?,
                        oldest_due_ms: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }
}
