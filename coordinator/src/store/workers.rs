//! Workers: registering, heartbeats (lease extension and reported health), session end,
//! and the worker list.

use super::attempts::EndRequest;
use super::{measured, millis, Cached, Ended, Store};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use drover_core::RawResult;
use std::time::Duration;
use uuid::Uuid;

/// What a worker reports about itself with a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// An encoded drover.v1.HostResources.
    pub resources: Vec<u8>,
    pub paused_reason: String,
    pub draining: bool,
}

/// A worker as the health report shows it.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub slots: i32,
    pub running: i64,
    pub version: String,
    pub last_seen_at: DateTime<Utc>,
    pub seen_ago_ms: i64,
    pub resources: Option<Vec<u8>>,
    pub paused_reason: String,
    pub draining: bool,
    pub containment: String,
    pub protocol_version: i32,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// Attempts that are not (or no longer) current: the worker must stop them.
    pub stale: Vec<Uuid>,
    /// Attempts whose job was cancelled: the worker must stop them and report cancelled.
    pub cancel: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct WorkerHello {
    pub id: String,
    pub hostname: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub slots: i32,
    pub version: String,
    pub running: Vec<Uuid>,
    pub containment: String,
    pub protocol_version: i32,
}

impl Store {
    /// Records a (re)connecting worker. Attempts the coordinator believes this worker holds
    /// but which the worker no longer runs are marked lost at once (it restarted), instead
    /// of waiting for their leases to expire. Returns those, and the attempts the worker
    /// still runs that are no longer current (it must stop them).
    pub async fn register_worker(
        &self,
        w: &WorkerHello,
        coordinator_id: &str,
        lease_ttl: Duration,
    ) -> Result<(Vec<Ended>, Heartbeat)> {
        const UPSERT_WORKER: &str = include_str!("sql/workers/upsert_worker.sql");
        const ORPHANED_ATTEMPTS: &str = include_str!("sql/workers/orphaned_attempts.sql");
        measured("register_worker", async {
            {
                let c = self.pool.get().await?;
                c.execute_cached(
                    UPSERT_WORKER,
                    &[
                        &w.id,
                        &w.hostname,
                        &w.labels,
                        &w.queues,
                        &w.slots,
                        &w.version,
                        &coordinator_id,
                        &w.containment,
                        &w.protocol_version,
                    ],
                )
                .await?;
            }
            let orphans: Vec<Uuid> = {
                let c = self.pool.get().await?;
                c.query_cached(ORPHANED_ATTEMPTS, &[&w.id, &w.running])
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?
            };
            let mut ended = Vec::new();
            for id in orphans {
                let req = EndRequest::bare(RawResult::Lost(format!(
                    "worker {} restarted without it",
                    w.id
                )));
                match self.end_attempt(id, &req).await {
                    Ok(e) => ended.push(e),
                    // Someone else ended it meanwhile: nothing to do.
                    Err(Error::FailedPrecondition(_)) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let hb = self.heartbeat(&w.id, &w.running, lease_ttl, None).await?;
            Ok((ended, hb))
        })
        .await
    }

    /// Records that a worker's session ended (its last sign of life); the worker's state
    /// in the API follows from `last_seen_at` alone.
    pub async fn worker_disconnected(&self, worker_id: &str, coordinator_id: &str) -> Result<()> {
        const DISCONNECT_WORKER: &str = include_str!("sql/workers/disconnect_worker.sql");
        measured("worker_disconnected", async {
            let c = self.pool.get().await?;
            c.execute_cached(DISCONNECT_WORKER, &[&worker_id, &coordinator_id])
                .await?;
            Ok(())
        })
        .await
    }

    /// Extends the leases of the attempts this worker runs, and records its health.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        attempts: &[Uuid],
        lease_ttl: Duration,
        report: Option<&WorkerReport>,
    ) -> Result<Heartbeat> {
        const EXTEND_LEASES: &str = include_str!("sql/workers/extend_leases.sql");
        const TOUCH_WORKER: &str = include_str!("sql/workers/touch_worker.sql");
        const RECORD_REPORT: &str = include_str!("sql/workers/record_report.sql");
        measured("heartbeat", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(EXTEND_LEASES, &[&attempts, &worker_id, &millis(lease_ttl)])
                .await?;
            match report {
                None => {
                    c.execute_cached(TOUCH_WORKER, &[&worker_id]).await?;
                }
                Some(r) => {
                    // The latest sample on the worker's row; one a minute into the history.
                    c.execute_cached(
                        RECORD_REPORT,
                        &[&worker_id, &r.resources, &r.paused_reason, &r.draining],
                    )
                    .await?;
                }
            }
            let mut extended = Vec::with_capacity(rows.len());
            let mut cancel = Vec::new();
            for r in &rows {
                let id: Uuid = r.try_get(0)?;
                if r.try_get::<_, bool>(1)? {
                    cancel.push(id);
                }
                extended.push(id);
            }
            Ok(Heartbeat {
                stale: attempts
                    .iter()
                    .filter(|a| !extended.contains(a))
                    .copied()
                    .collect(),
                cancel,
            })
        })
        .await
    }

    /// Workers seen in the last week, with their running attempt counts.
    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>> {
        const LIST_WORKERS: &str = include_str!("sql/workers/list_workers.sql");
        measured("list_workers", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_WORKERS, &[]).await?;
            rows.iter()
                .map(|r| {
                    Ok(WorkerRow {
                        id: r.try_get("id")?,
                        hostname: r.try_get("hostname")?,
                        labels: r.try_get("labels")?,
                        queues: r.try_get("queues")?,
                        slots: r.try_get("slots")?,
                        running: r.try_get("running")?,
                        version: r.try_get("version")?,
                        last_seen_at: r.try_get("last_seen_at")?,
                        seen_ago_ms: r.try_get("ago")?,
                        resources: r.try_get("resources")?,
                        paused_reason: r.try_get("paused_reason")?,
                        draining: r.try_get("draining")?,
                        containment: r.try_get("containment")?,
                        protocol_version: r.try_get("protocol_version")?,
                    })
                })
                .collect()
        })
        .await
    }
}
