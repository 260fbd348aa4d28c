//! Conversions between stored rows / domain types and the drover.v1 protobuf messages.

use crate::error::Error;
use crate::store::{AttemptRow, JobRow};
use chrono::{DateTime, Utc};
use drover_core::{AttemptState, JobState, PolicyOverrides, RetryPolicy, WorkerState};
use drover_proto::durations;
use drover_proto::v1 as pb;
use drover_proto::Timestamp;
use uuid::Uuid;

pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_ts(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

/// A request's duration field in whole milliseconds (unset: 0); the error names the field.
pub fn millis(field: &str, d: &Option<drover_proto::Duration>) -> Result<u64, Error> {
    durations::to_millis(d).map_err(|e| Error::Invalid(format!("{field}: {e}")))
}

/// [`millis`] for values kept as a signed count of milliseconds.
pub fn millis_i64(field: &str, d: &Option<drover_proto::Duration>) -> Result<i64, Error> {
    durations::to_millis_i64(d).map_err(|e| Error::Invalid(format!("{field}: {e}")))
}

/// Parses an id sent by a client; the error names the field.
pub fn parse_id(field: &str, s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s.trim()).map_err(|_| {
        Error::Invalid(format!(
            "{field}: {s:?} is not a valid id (expected a UUID like 0191c1a2-...)"
        ))
    })
}

pub fn job_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::PermanentFailed => pb::JobState::PermanentFailed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn job_state_from(s: pb::JobState) -> Option<JobState> {
    match s {
        pb::JobState::Unspecified => None,
        pb::JobState::Pending => Some(JobState::Pending),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::PermanentFailed => Some(JobState::PermanentFailed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

pub fn attempt_state(s: AttemptState) -> pb::AttemptState {
    match s {
        AttemptState::Running => pb::AttemptState::Running,
        AttemptState::Succeeded => pb::AttemptState::Succeeded,
        AttemptState::Failed => pb::AttemptState::Failed,
        AttemptState::FailedPermanent => pb::AttemptState::FailedPermanent,
        AttemptState::TimedOut => pb::AttemptState::TimedOut,
        AttemptState::Lost => pb::AttemptState::Lost,
        AttemptState::Cancelled => pb::AttemptState::Cancelled,
        AttemptState::Released => pb::AttemptState::Released,
    }
}

/// A worker's state on the wire (the only place it is converted; its lower-case name for
/// JSON and droverctl is `pb::WorkerState::name`).
pub fn worker_state_to_pb(s: WorkerState) -> pb::WorkerState {
    match s {
        WorkerState::Alive => pb::WorkerState::Alive,
        WorkerState::Stale => pb::WorkerState::Stale,
        WorkerState::Draining => pb::WorkerState::Draining,
        WorkerState::Paused => pb::WorkerState::Paused,
        WorkerState::Offline => pb::WorkerState::Offline,
    }
}

/// The other way, for clients that filter or compare by state.
pub fn worker_state_from_pb(s: pb::WorkerState) -> Option<WorkerState> {
    Some(match s {
        pb::WorkerState::Unspecified => return None,
        pb::WorkerState::Alive => WorkerState::Alive,
        pb::WorkerState::Stale => WorkerState::Stale,
        pb::WorkerState::Draining => WorkerState::Draining,
        pb::WorkerState::Paused => WorkerState::Paused,
        pb::WorkerState::Offline => WorkerState::Offline,
    })
}

pub fn policy_to_pb(p: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_retries: Some(p.max_retries),
        initial_backoff: Some(durations::from_millis(p.initial_backoff_ms)),
        multiplier: Some(p.multiplier),
        max_backoff: Some(durations::from_millis(p.max_backoff_ms)),
        jitter: Some(p.jitter),
        retryable_exit_codes: p.retryable_exit_codes.clone(),
        permanent_exit_codes: p.permanent_exit_codes.clone(),
        retryable_patterns: p.retryable_patterns.clone(),
        permanent_patterns: p.permanent_patterns.clone(),
        retry_out_of_memory: Some(p.retry_out_of_memory),
    }
}

/// The fields of a submitted policy that the client set (a negative backoff is refused,
/// naming the field).
pub fn overrides_from_pb(p: &pb::RetryPolicy) -> Result<PolicyOverrides, Error> {
    let list = |v: &Vec<i32>| (!v.is_empty()).then(|| v.clone());
    let pats = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let backoff = |field: &str, d: &Option<drover_proto::Duration>| match d {
        Some(_) => millis(field, d).map(Some),
        None => Ok(None),
    };
    Ok(PolicyOverrides {
        max_retries: p.max_retries,
        initial_backoff_ms: backoff("retry.initial_backoff", &p.initial_backoff)?,
        multiplier: p.multiplier,
        max_backoff_ms: backoff("retry.max_backoff", &p.max_backoff)?,
        jitter: p.jitter,
        retryable_exit_codes: list(&p.retryable_exit_codes),
        permanent_exit_codes: list(&p.permanent_exit_codes),
        retryable_patterns: pats(&p.retryable_patterns),
        permanent_patterns: pats(&p.permanent_patterns),
        retry_out_of_memory: p.retry_out_of_memory,
    })
}

pub fn job_to_pb(j: &JobRow) -> pb::Job {
    pb::Job {
        id: j.id.to_string(),
        spec: Some(pb::JobSpec {
            argv: j.spec.argv.clone(),
            env: j.spec.env.clone().into_iter().collect(),
            queue: j.spec.queue.clone(),
            labels: j.spec.labels.clone(),
            params: j.spec.params.clone().into_iter().collect(),
            timeout: durations::nonzero_millis(j.spec.timeout_ms.max(0) as u64),
            retry: Some(policy_to_pb(&j.policy)),
            idempotency_key: j.spec.idempotency_key.clone().unwrap_or_default(),
            outputs: j.spec.outputs.clone(),
            memory_limit_bytes: j.spec.limits.memory_bytes.unwrap_or(0),
            cpu_millis: j.spec.limits.cpu_millis.unwrap_or(0),
            pids_limit: j.spec.limits.pids.unwrap_or(0),
            secret_env: j.spec.secret_env.clone().into_iter().collect(),
            concurrency_keys: j.concurrency_keys.clone(),
            concurrency_limit: 0,
            priority: j.priority,
            after: Vec::new(),
        }),
        state: job_state(j.state) as i32,
        attempt_count: j.attempt_count.max(0) as u32,
        current_attempt_id: j
            .current_attempt_id
            .map(|u| u.to_string())
            .unwrap_or_default(),
        created_at: Some(ts(j.created_at)),
        updated_at: Some(ts(j.updated_at)),
        not_before: Some(ts(j.not_before)),
        finished_at: j.finished_at.map(ts),
        reason: j.reason.clone(),
        original_job_id: j.original_job_id.map(|u| u.to_string()).unwrap_or_default(),
        retry_of: j.retry_of.map(|u| u.to_string()).unwrap_or_default(),
        cancel_requested: j.cancel_requested,
        waiting: String::new(),
    }
}

pub fn attempt_to_pb(a: &AttemptRow) -> pb::Attempt {
    pb::Attempt {
        id: a.id.to_string(),
        job_id: a.job_id.to_string(),
        number: a.number.max(0) as u32,
        worker_id: a.worker_id.clone(),
        state: attempt_state(a.state) as i32,
        started_at: Some(ts(a.started_at)),
        finished_at: a.finished_at.map(ts),
        lease_expires_at: Some(ts(a.lease_expires_at)),
        exit_code: a.exit_code,
        signal: a.signal,
        reason: a.reason.clone(),
        log_bytes: a.log_bytes.max(0) as u64,
        log_dropped_bytes: a.log_dropped_bytes.max(0) as u64,
        logs_purged: a.logs_purged,
        peak_rss_bytes: a.peak_rss_bytes.unwrap_or(0).max(0) as u64,
        cpu_time: a
            .cpu_time_ms
            .map(|ms| durations::from_millis(ms.max(0) as u64)),
    }
}

pub fn artifact_to_pb(a: &crate::store::ArtifactRow) -> pb::Artifact {
    pb::Artifact {
        job_id: a.job_id.to_string(),
        attempt_id: a.attempt_id.to_string(),
        attempt_number: a.attempt_number.max(0) as u32,
        name: a.name.clone(),
        size: a.size.max(0) as u64,
        sha256: a.sha256.clone(),
        created_at: Some(ts(a.created_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_states_round_trip() {
        for s in [
            WorkerState::Alive,
            WorkerState::Stale,
            WorkerState::Draining,
            WorkerState::Paused,
            WorkerState::Offline,
        ] {
            assert_eq!(worker_state_from_pb(worker_state_to_pb(s)), Some(s));
        }
        assert_eq!(worker_state_from_pb(pb::WorkerState::Unspecified), None);
    }
}
