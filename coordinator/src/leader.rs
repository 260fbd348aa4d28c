//! Duties only one coordinator performs at a time, chosen by a PostgreSQL advisory lock
//! held on a dedicated connection (if that connection dies, the lock is released and
//! another coordinator takes over): the lease reaper, retention and the scheduler.

use crate::db::{self, LEADER_LOCK};
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::store::{EndRequest, Store};
use drover_core::{JobState, RawResult};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct LeaderConfig {
    pub database_url: String,
    pub lease_ttl: Duration,
    pub reaper_interval: Duration,
    pub retention: crate::config::Retention,
    pub retention_interval: Duration,
    pub blobs: std::sync::Arc<dyn crate::artifacts::BlobStore>,
    /// Audit entries older than this are deleted.
    pub audit_retention: Duration,
    pub schedule_interval: Duration,
    pub schedule_grace: Duration,
}

pub async fn run(
    cfg: LeaderConfig,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    shutdown: CancellationToken,
) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match db::connect(&cfg.database_url).await {
            Ok(client) => {
                let got = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await
                    .and_then(|r| r.try_get::<_, bool>(0));
                if let Ok(true) = got {
                    tracing::info!("became leader");
                    lead(&cfg, &client, &store, &dispatcher, &shutdown).await;
                    tracing::info!("stopped being leader");
                }
            }
            Err(e) => tracing::debug!(error = %e, "leader election: database unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.reaper_interval.max(Duration::from_secs(1))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn lead(
    cfg: &LeaderConfig,
    client: &tokio_postgres::Client,
    store: &Store,
    dispatcher: &Arc<Dispatcher>,
    shutdown: &CancellationToken,
) {
    // Schedules need no grace period (a tick fires at most once whoever fires it); they
    // stop when leadership ends (the guard cancels on every return).
    let sched_stop = shutdown.child_token();
    let _sched_guard = sched_stop.clone().drop_guard();
    tokio::spawn(crate::scheduler::run(
        store.clone(),
        dispatcher.clone(),
        cfg.schedule_interval,
        cfg.schedule_grace,
        sched_stop,
    ));
    // A new leader may follow a database outage during which no heartbeat could be
    // recorded: give every live worker one lease period to renew before reaping anything.
    tokio::select! {
        _ = tokio::time::sleep(cfg.lease_ttl) => {}
        _ = shutdown.cancelled() => return,
    }
    let mut next_retention = tokio::time::Instant::now();
    while !client.is_closed() && !shutdown.is_cancelled() {
        if let Err(e) = reap(store, dispatcher).await {
            tracing::warn!(error = %e, "lease reaper failed");
        }
        if tokio::time::Instant::now() >= next_retention {
            next_retention += cfg.retention_interval;
            // A pass is bounded; with work left, the next one follows the next reap.
            let budget = cfg.reaper_interval.max(Duration::from_millis(500));
            match crate::retention::run_pass(
                store,
                cfg.blobs.as_ref(),
                &cfg.retention,
                cfg.retention_interval,
                budget,
            )
            .await
            {
                Ok(p) if p.is_empty() => {}
                Ok(p) => {
                    if p.more {
                        next_retention = tokio::time::Instant::now();
                    }
                    tracing::info!(
                        jobs = p.jobs,
                        partitions_dropped = p.partitions_dropped,
                        partitions_created = p.partitions_created,
                        attempt_logs = p.attempts_purged,
                        workers = p.workers,
                        samples = p.samples,
                        schedule_runs = p.runs,
                        request_ids = p.request_ids,
                        concurrency_keys = p.concurrency_keys,
                        more = p.more,
                        "retention pass"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
            match store.purge_audit(cfg.audit_retention, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "deleted audit entries past retention"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.reaper_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Marks attempts whose lease expired as lost and applies the retry policy.
pub async fn reap(store: &Store, dispatcher: &Dispatcher) -> Result<usize, Error> {
    let mut n = 0;
    for id in store.expired_attempts(500).await? {
        let req = EndRequest {
            only_if_expired: true,
            ..EndRequest::bare(RawResult::Lost(
                "lease expired: no heartbeat from its worker".into(),
            ))
        };
        match store.end_attempt(id, &req).await {
            Ok(ended) => {
                n += 1;
                crate::metrics::ended(&ended);
                tracing::info!(attempt_id = %id, job_id = %ended.job_id,
                    job_state = %ended.job_state, "lease expired; attempt lost");
                if ended.job_state == JobState::Pending {
                    dispatcher.wake();
                }
            }
            // Renewed or finished since we looked.
            Err(Error::FailedPrecondition(_)) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
