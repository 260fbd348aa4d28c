//! Is the system healthy? `AdminService` (GetHealth, ListWorkers), the same report as JSON on
//! `/health`, and the gRPC health status that follows the database.
//!
//! The verdict is a pure function of what was observed ([`assess`]), unit-tested here.

use crate::config::Config;
use crate::convert;
use crate::error::Error;
use crate::store::{QueueRow, Store, WorkerRow};
use drover_core::WorkerState;
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_server::AdminService;
use drover_proto::v1::HealthStatus;
use prost::Message;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A worker's state from how long ago it was heard from (the rule is
/// [`drover_core::worker_state`]).
pub fn worker_state(w: &WorkerRow, lease_ttl_ms: i64) -> WorkerState {
    drover_core::worker_state(
        w.seen_ago_ms,
        lease_ttl_ms,
        w.draining,
        !w.paused_reason.is_empty(),
    )
}

/// The verdict (ok, degraded or failing), with the reasons.
pub fn assess(
    database: Result<(), String>,
    workers: &[(WorkerRow, WorkerState)],
    queues: &[QueueRow],
) -> (HealthStatus, Vec<String>) {
    if let Err(e) = database {
        return (
            HealthStatus::Failing,
            vec![format!("database unreachable: {e}")],
        );
    }
    let mut reasons = Vec::new();
    for (w, state) in workers {
        match state {
            WorkerState::Stale => reasons.push(format!(
                "worker {}: no heartbeat for {}s",
                w.id,
                w.seen_ago_ms / 1000
            )),
            WorkerState::Paused => {
                reasons.push(format!("worker {} paused: {}", w.id, w.paused_reason))
            }
            _ => {}
        }
    }
    for q in queues {
        if q.oldest_due_ms.is_none() {
            continue;
        }
        let served = workers
            .iter()
            .any(|(w, state)| *state == WorkerState::Alive && w.queues.contains(&q.queue));
        if !served {
            reasons.push(format!(
                "queue {}: {} job(s) waiting and no available worker takes this queue",
                q.queue, q.pending
            ));
        }
    }
    let status = if reasons.is_empty() {
        HealthStatus::Ok
    } else {
        HealthStatus::Degraded
    };
    (status, reasons)
}

/// database_url with any password replaced, for showing the configuration.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.to_string(),
    }
}

/// The effective configuration as GetHealth reports it: what operators check, never a
/// secret (the database password is redacted; channel credentials are not included).
pub fn config_to_pb(c: &Config) -> pb::CoordinatorConfig {
    use drover_proto::durations::from_std;
    let retention = c.retention();
    let retain = |f: fn(&crate::config::Retention) -> Duration| Some(from_std(f(&retention)));
    pb::CoordinatorConfig {
        listen: c.listen.to_string(),
        http_listen: c.http_listen.to_string(),
        database_url: redact_url(&c.database_url),
        db_pool_size: u32::try_from(c.db_pool_size).unwrap_or(u32::MAX),
        lease_ttl: Some(from_std(c.lease_ttl)),
        heartbeat_interval: Some(from_std(c.heartbeat_interval)),
        reaper_interval: Some(from_std(c.reaper_interval)),
        dispatch_sweep: Some(from_std(c.dispatch_sweep)),
        retry: Some(convert::policy_to_pb(&c.retry)),
        queues: c
            .queues
            .keys()
            .map(|name| {
                let (policy, timeout_ms) = c.queue_defaults(name);
                let limits = c.queue_limits(name);
                let q = &c.queues[name];
                let defaults = pb::QueueDefaults {
                    timeout: drover_proto::durations::nonzero_millis(timeout_ms.max(0) as u64),
                    retry: Some(convert::policy_to_pb(&policy)),
                    memory_limit_bytes: limits.memory_bytes.unwrap_or(0),
                    cpu_millis: limits.cpu_millis.unwrap_or(0),
                    pids_limit: limits.pids.unwrap_or(0),
                    max_running: q.max_running.unwrap_or(0),
                    priority: q.priority,
                };
                (name.clone(), defaults)
            })
            .collect(),
        log_cap_bytes: c.log_cap_bytes,
        log_retention: Some(from_std(c.log_retention)),
        artifact_dir: c.artifact_dir.display().to_string(),
        max_artifact_bytes: c.max_artifact_bytes,
        access_control: c.access_control,
        open_routes: c.open_routes.clone(),
        tls: c.tls_cert_file.is_some(),
        client_ca: c.tls_client_ca_file.is_some(),
        client_cert_required: c.tls_client_ca_file.is_some() && c.tls_client_cert_required,
        concurrency_limits: c
            .concurrency_limits
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        rate_limits: c
            .rate_limits
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        priority_aging: Some(from_std(c.priority_aging)),
        retain_succeeded: retain(|r| r.jobs.succeeded),
        retain_permanent_failed: retain(|r| r.jobs.permanent_failed),
        retain_cancelled: retain(|r| r.jobs.cancelled),
        alert_rules: c.alerts.rules.iter().map(|r| r.name.clone()).collect(),
        alert_channels: c.alerts.channels.keys().cloned().collect(),
        log_format: c.log_format.clone(),
    }
}

pub struct AdminApi {
    pub store: Store,
    pub config: std::sync::Arc<Config>,
    pub coordinator_id: String,
    pub auth: std::sync::Arc<crate::auth::Auth>,
}

fn worker_to_pb(w: &WorkerRow, state: WorkerState) -> pb::Worker {
    pb::Worker {
        id: w.id.clone(),
        hostname: w.hostname.clone(),
        labels: w.labels.clone(),
        queues: w.queues.clone(),
        slots: w.slots.max(0) as u32,
        running: w.running.max(0) as u32,
        state: convert::worker_state_to_pb(state) as i32,
        paused_reason: w.paused_reason.clone(),
        last_seen_at: Some(convert::ts(w.last_seen_at)),
        resources: w
            .resources
            .as_deref()
            .and_then(|b| pb::HostResources::decode(b).ok()),
        version: w.version.clone(),
        containment: w.containment.clone(),
        protocol_version: w.protocol_version.max(0) as u32,
    }
}

impl AdminApi {
    fn ttl_ms(&self) -> i64 {
        self.config.lease_ttl.as_millis() as i64
    }

    async fn workers(&self) -> Result<Vec<(WorkerRow, WorkerState)>, Error> {
        let ttl = self.ttl_ms();
        Ok(self
            .store
            .list_workers()
            .await?
            .into_iter()
            .map(|w| {
                let s = worker_state(&w, ttl);
                (w, s)
            })
            .collect())
    }

    /// The full report; a database outage makes it "failing", never an error.
    pub async fn health(&self) -> pb::GetHealthResponse {
        let status = self.store.pool_status();
        let mut h = pb::GetHealthResponse {
            coordinator_id: self.coordinator_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            db_pool_size: status.size as u32,
            db_pool_available: status.available as u32,
            db_pool_max: status.max_size as u32,
            config: Some(config_to_pb(&self.config)),
            ..Default::default()
        };
        let gathered = async {
            self.store.ping().await?;
            let by_state = self.store.jobs_by_state().await?;
            let failed = self
                .store
                .failed_since(Duration::from_secs(24 * 3600))
                .await?;
            let queues = self.store.queue_stats().await?;
            let workers = self.workers().await?;
            let logs = self.store.log_storage_bytes().await?;
            let top = self
                .store
                .list_failure_groups(&crate::store::failures::GroupFilter {
                    since: Some(Duration::from_secs(24 * 3600)),
                    limit: 5,
                    ..Default::default()
                })
                .await?;
            let notifications = self.store.notification_counts().await?;
            Ok::<_, Error>((by_state, failed, queues, workers, logs, top, notifications))
        }
        .await;
        let (by_state, failed, queues, workers, logs, top, (dead, pending)) = match gathered {
            Ok(g) => g,
            Err(e) => {
                let (s, reasons) = assess(Err(e.to_string()), &[], &[]);
                h.status = s as i32;
                h.reasons = reasons;
                return h;
            }
        };
        let (s, mut reasons) = assess(Ok(()), &workers, &queues);
        h.status = s as i32;
        if dead > 0 {
            // Undeliverable alerts: someone may be missing news. Degraded, not failing.
            reasons.push(format!(
                "{dead} notification(s) dead (see droverctl notifications --failed)"
            ));
            if s == HealthStatus::Ok {
                h.status = HealthStatus::Degraded as i32;
            }
        }
        h.reasons = reasons;
        h.top_failure_groups = top.iter().map(crate::alerts_api::group_to_pb).collect();
        h.notifications_dead = dead.max(0) as u64;
        h.notifications_pending = pending.max(0) as u64;
        h.database_ok = true;
        h.jobs_by_state = by_state
            .into_iter()
            .map(|(k, v)| (k, v.max(0) as u64))
            .collect();
        h.failed_last_24h = failed.max(0) as u64;
        h.queues = queues
            .iter()
            .map(|q| pb::QueueHealth {
                queue: q.queue.clone(),
                pending: q.pending.max(0) as u64,
                running: q.running.max(0) as u64,
                oldest_pending: q
                    .oldest_due_ms
                    .map(|ms| drover_proto::durations::from_millis(ms.max(0) as u64)),
            })
            .collect();
        for (_, state) in &workers {
            match state {
                WorkerState::Alive | WorkerState::Paused => h.workers_alive += 1,
                WorkerState::Stale => h.workers_stale += 1,
                WorkerState::Draining => h.workers_draining += 1,
                WorkerState::Offline => h.workers_offline += 1,
            }
        }
        h.workers = workers.iter().map(|(w, s)| worker_to_pb(w, *s)).collect();
        h.log_storage_bytes = logs.max(0) as u64;
        h
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_health(
        &self,
        _req: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        Ok(Response::new(self.health().await))
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListWorkers", &r, &r.page_token);
        let size = crate::paging::page_size("page_size", r.page_size, 1000, 1000)?;
        let after = pager.cursor::<String>()?;
        // Every worker row is read anyway (its state depends on the lease TTL); the page
        // is cut by id in memory.
        let mut workers = self.workers().await?;
        workers.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let (workers, next) =
            crate::paging::page_sorted(workers, |(w, _)| w.id.clone(), after.as_ref(), size);
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.iter().map(|(w, s)| worker_to_pb(w, *s)).collect(),
            next_page_token: pager.next(next.as_ref()),
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        crate::tokens_api::create(self, req).await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        crate::tokens_api::list(self, req).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        crate::tokens_api::revoke(self, req).await
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        crate::tokens_api::list_audit(self, req).await
    }
}

/// Keeps `grpc.health.v1` in step with the database: NOT_SERVING while it is unreachable.
pub async fn follow_database(
    store: Store,
    reporter: tonic_health::server::HealthReporter,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use drover_proto::v1::job_service_server::JobServiceServer;
    let mut serving = true;
    loop {
        let ok = store.ping().await.is_ok();
        if ok != serving {
            serving = ok;
            let status = if ok {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <JobServiceServer<crate::jobs_api::JobsApi> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            tracing::warn!(serving = ok, "database reachability changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, ago_ms: i64, paused: &str) -> WorkerRow {
        WorkerRow {
            id: id.into(),
            hostname: "h".into(),
            labels: vec![],
            queues: vec!["default".into()],
            slots: 1,
            running: 0,
            version: String::new(),
            last_seen_at: chrono::Utc::now(),
            seen_ago_ms: ago_ms,
            resources: None,
            paused_reason: paused.into(),
            draining: false,
            containment: String::new(),
            protocol_version: 2,
        }
    }

    fn queue(name: &str, due: bool) -> QueueRow {
        QueueRow {
            queue: name.into(),
            pending: 2,
            running: 0,
            oldest_due_ms: due.then_some(5_000),
        }
    }

    #[test]
    fn verdicts() {
        let alive = worker("a", 100, "");
        let stale = worker("b", 60_000, "");
        let paused = worker("c", 100, "disk free 1 GiB below 2 GiB");
        let with = |w: &WorkerRow| (w.clone(), worker_state(w, 8_000));

        let (s, r) = assess(Ok(()), &[with(&alive)], &[queue("default", true)]);
        assert_eq!((s, r.len()), (HealthStatus::Ok, 0));

        let (s, r) = assess(Ok(()), &[with(&alive), with(&stale)], &[]);
        assert_eq!(s, HealthStatus::Degraded);
        assert!(r[0].contains("worker b"), "{r:?}");

        let (s, r) = assess(Ok(()), &[with(&paused)], &[queue("default", true)]);
        assert_eq!(s, HealthStatus::Degraded);
        assert!(r.iter().any(|r| r.contains("paused: disk")), "{r:?}");
        assert!(r.iter().any(|r| r.contains("queue default")), "{r:?}");

        // Pending but waiting out a backoff is not a problem.
        let (s, _) = assess(Ok(()), &[], &[queue("default", false)]);
        assert_eq!(s, HealthStatus::Ok);

        let (s, r) = assess(Err("connection refused".into()), &[], &[]);
        assert_eq!(s, HealthStatus::Failing);
        assert!(r[0].contains("connection refused"));
    }

    #[test]
    fn a_worker_that_left_does_not_keep_health_degraded() {
        // Gone for two days: listed as offline, health ok (see drover_core::worker_state
        // for every state).
        let gone = worker("gone", 2 * 24 * 3600 * 1000, "");
        let state = worker_state(&gone, 8_000);
        assert_eq!(state, WorkerState::Offline);
        let (s, r) = assess(Ok(()), &[(gone, state)], &[]);
        assert_eq!((s, r), (HealthStatus::Ok, vec![]));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://drover:s3cret@db:5432/drover"),
            "postgres://drover:***@db:5432/drover"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }
}
