//! JSON renderings of API messages that both the coordinator (`/health`) and droverctl
//! (`-o json`) print, so the two always agree. Every timestamp is RFC 3339 ([`time`]),
//! every duration as proto3 JSON writes it ([`duration`]).

use crate::v1 as pb;
use serde_json::{json, Value};

/// A timestamp as JSON: an RFC 3339 string in UTC, or null when unset (or out of range).
/// The one way `-o json` and `/health` print times.
pub fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| Value::String(t.to_rfc3339()))
        .unwrap_or(Value::Null)
}

/// A duration as JSON: proto3's form ("1.500s"), or null when unset.
pub fn duration(d: &Option<prost_types::Duration>) -> Value {
    d.as_ref()
        .map(|d| Value::String(crate::jsonfmt::duration::format(d)))
        .unwrap_or(Value::Null)
}

pub fn resources(r: &pb::HostResources) -> Value {
    json!({
        "sampled_at": time(&r.sampled_at),
        "cpu_percent": r.cpu_percent,
        "load1": r.load1,
        "memory_used_bytes": r.memory_used_bytes,
        "memory_total_bytes": r.memory_total_bytes,
        "swap_used_bytes": r.swap_used_bytes,
        "swap_total_bytes": r.swap_total_bytes,
        "disk_free_bytes": r.disk_free_bytes,
        "disk_total_bytes": r.disk_total_bytes,
        "running_jobs": r.running_jobs,
        "jobs": r.jobs.iter().map(|j| json!({
            "attempt_id": j.attempt_id,
            "cpu_percent": j.cpu_percent,
            "rss_bytes": j.rss_bytes,
            "peak_rss_bytes": j.peak_rss_bytes,
        })).collect::<Vec<_>>(),
    })
}

pub fn worker(w: &pb::Worker) -> Value {
    json!({
        "id": w.id,
        "hostname": w.hostname,
        "state": pb::WorkerState::name_of(w.state),
        "paused_reason": w.paused_reason,
        "labels": w.labels,
        "queues": w.queues,
        "slots": w.slots,
        "running": w.running,
        "last_seen_at": time(&w.last_seen_at),
        "version": w.version,
        "protocol_version": w.protocol_version,
        "containment": w.containment,
        "resources": w.resources.as_ref().map(resources),
    })
}

pub fn health(h: &pb::GetHealthResponse) -> Value {
    json!({
        "status": pb::HealthStatus::name_of(h.status),
        "reasons": h.reasons,
        "coordinator_id": h.coordinator_id,
        "version": h.version,
        "database_ok": h.database_ok,
        "db_pool": {"size": h.db_pool_size, "available": h.db_pool_available, "max": h.db_pool_max},
        "jobs_by_state": h.jobs_by_state,
        "failed_last_24h": h.failed_last_24h,
        "queues": h.queues.iter().map(|q| json!({
            "queue": q.queue,
            "pending": q.pending,
            "running": q.running,
            "oldest_pending": duration(&q.oldest_pending),
        })).collect::<Vec<_>>(),
        "workers_alive": h.workers_alive,
        "workers_stale": h.workers_stale,
        "workers_draining": h.workers_draining,
        "workers_offline": h.workers_offline,
        "workers": h.workers.iter().map(worker).collect::<Vec<_>>(),
        "log_storage_bytes": h.log_storage_bytes,
        "config": h.config.as_ref().and_then(|c| serde_json::to_value(c).ok()),
        "top_failure_groups": h.top_failure_groups.iter().map(failure_group).collect::<Vec<_>>(),
        "notifications_dead": h.notifications_dead,
        "notifications_pending": h.notifications_pending,
    })
}

pub fn failure_group(g: &pb::FailureGroup) -> Value {
    json!({
        "queue": g.queue,
        "fingerprint": g.fingerprint,
        "count": g.count,
        "first_seen_at": time(&g.first_seen_at),
        "last_seen_at": time(&g.last_seen_at),
        "sample": g.sample,
        "normalised": g.normalised,
        "last_job_id": g.last_job_id,
        "last_attempt_id": g.last_attempt_id,
        "exit_codes": g.exit_codes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000_000,
        });
        assert_eq!(time(&t), json!("2023-11-14T22:13:20.005+00:00"));
        assert_eq!(time(&None), Value::Null);
        let w = worker(&pb::Worker {
            state: pb::WorkerState::Stale as i32,
            last_seen_at: t,
            ..Default::default()
        });
        assert_eq!(w["state"], "stale");
        assert_eq!(w["last_seen_at"], "2023-11-14T22:13:20.005+00:00");
        let h = health(&pb::GetHealthResponse {
            status: pb::HealthStatus::Degraded as i32,
            ..Default::default()
        });
        assert_eq!(h["status"], "degraded");
    }
}
