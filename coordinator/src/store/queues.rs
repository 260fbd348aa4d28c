//! SQL for per-queue flow control: pausing and resuming a queue.

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
        measured("set_queue_paused", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            tx.execute_cached(
                "INSERT INTO queue_settings AS s (queue, paused, paused_at, updated_at) \
                 VALUES ($1, $2, CASE WHEN $2 THEN now() END, now()) \
                 ON CONFLICT (queue) DO UPDATE SET paused = $2, \
                     paused_at = CASE WHEN $2 THEN coalesce(s.paused_at, now()) END, \
                     updated_at = now()",
                &[&queue, &paused],
            )
            .await?;
            if !paused {
                tx.execute_cached("SELECT pg_notify($1, $2)", &[&JOBS_CHANNEL, &queue])
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Every queue that has settings or unfinished jobs, by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueState>> {
        measured("list_queues", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "WITH counts AS ( \
                        SELECT queue, count(*) FILTER (WHERE state = 'pending') AS pending, \
                               count(*) FILTER (WHERE state = 'running') AS running \
                          FROM jobs WHERE state IN ('pending', 'running') GROUP BY queue) \
                     SELECT coalesce(s.queue, c.queue), coalesce(s.paused, false), \
                            coalesce(c.pending, 0), coalesce(c.running, 0) \
                       FROM queue_settings s FULL JOIN counts c ON c.queue = s.queue \
                      ORDER BY 1 LIMIT 1000",
                    &[],
                )
                .await?;
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
