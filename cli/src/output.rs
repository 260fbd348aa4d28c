//! How droverctl prints jobs and attempts: aligned text for people, JSON for scripts.

use chrono::{DateTime, Utc};
use drover_proto::v1 as pb;
use drover_proto::Timestamp;
use serde_json::{json, Value};

pub fn time(t: &Option<Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn time_str(t: &Option<Timestamp>) -> String {
    time(t)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A timestamp in `-o json`: RFC 3339, the one way every JSON output prints times.
pub fn rfc3339(t: &Option<Timestamp>) -> Value {
    drover_proto::json::time(t)
}

pub fn job_state(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Pending) => "pending",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::PermanentFailed) => "permanent_failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

pub fn attempt_state(s: i32) -> &'static str {
    match pb::AttemptState::try_from(s) {
        Ok(pb::AttemptState::Running) => "running",
        Ok(pb::AttemptState::Succeeded) => "succeeded",
        Ok(pb::AttemptState::Failed) => "failed",
        Ok(pb::AttemptState::FailedPermanent) => "failed_permanent",
        Ok(pb::AttemptState::TimedOut) => "timed_out",
        Ok(pb::AttemptState::Lost) => "lost",
        Ok(pb::AttemptState::Cancelled) => "cancelled",
        Ok(pb::AttemptState::Released) => "released",
        _ => "unknown",
    }
}

pub fn job_json(j: &pb::Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    let retry = spec.retry.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "state": job_state(j.state),
        "queue": spec.queue,
        "argv": spec.argv,
        "params": spec.params,
        "env": spec.env,
        "secret_env": spec.secret_env,
        "labels": spec.labels,
        "waiting": j.waiting,
        "concurrency_keys": spec.concurrency_keys,
        "priority": spec.priority,
        "timeout": drover_proto::json::duration(&spec.timeout),
        "idempotency_key": spec.idempotency_key,
        "outputs": spec.outputs,
        "memory_limit_bytes": spec.memory_limit_bytes,
        "cpu_millis": spec.cpu_millis,
        "pids_limit": spec.pids_limit,
        "retry": {
            "max_retries": retry.max_retries,
            "initial_backoff": drover_proto::json::duration(&retry.initial_backoff),
            "multiplier": retry.multiplier,
            "max_backoff": drover_proto::json::duration(&retry.max_backoff),
            "jitter": retry.jitter,
            "retryable_exit_codes": retry.retryable_exit_codes,
            "permanent_exit_codes": retry.permanent_exit_codes,
            "retryable_patterns": retry.retryable_patterns,
            "permanent_patterns": retry.permanent_patterns,
        },
        "attempt_count": j.attempt_count,
        "current_attempt_id": j.current_attempt_id,
        "reason": j.reason,
        "original_job_id": j.original_job_id,
        "retry_of": j.retry_of,
        "cancel_requested": j.cancel_requested,
        "created_at": rfc3339(&j.created_at),
        "updated_at": rfc3339(&j.updated_at),
        "not_before": rfc3339(&j.not_before),
        "finished_at": rfc3339(&j.finished_at),
    })
}

pub fn attempt_json(a: &pb::Attempt) -> Value {
    json!({
        "id": a.id,
        "number": a.number,
        "worker_id": a.worker_id,
        "state": attempt_state(a.state),
        "exit_code": a.exit_code,
        "signal": a.signal,
        "reason": a.reason,
        "started_at": rfc3339(&a.started_at),
        "finished_at": rfc3339(&a.finished_at),
        "lease_expires_at": rfc3339(&a.lease_expires_at),
    })
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,{}@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn job_table(jobs: &[pb::Job]) -> String {
    let mut out = format!(
        "{:<36}  {:<16}  {:<12}  {:>3}  {:<23}  {}\n",
        "ID", "STATE", "QUEUE", "ATT", "CREATED", "COMMAND"
    );
    for j in jobs {
        let spec = j.spec.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<36}  {:<16}  {:<12}  {:>3}  {:<23}  {}\n",
            j.id,
            job_state(j.state),
            spec.queue,
            j.attempt_count,
            time_str(&j.created_at),
            shell_words(&spec.argv)
        ));
        if !j.waiting.is_empty() {
            out.push_str(&format!("{:<36}  waiting: {}\n", "", j.waiting));
        }
    }
    out
}

pub fn job_detail(j: &pb::Job, attempts: &[pb::Attempt], retried_by: &[String]) -> String {
    let spec = j.spec.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    line("id", j.id.clone());
    line("state", job_state(j.state).to_string());
    if !j.reason.is_empty() {
        line("reason", j.reason.clone());
    }
    line("queue", spec.queue.clone());
    line("command", shell_words(&spec.argv));
    if !spec.params.is_empty() {
        let mut p: Vec<_> = spec
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        p.sort();
        line("params", p.join(" "));
    }
    if !spec.labels.is_empty() {
        line("labels", spec.labels.join(","));
    }
    if !spec.concurrency_keys.is_empty() {
        line("keys", spec.concurrency_keys.join(","));
    }
    if spec.priority != 0 {
        line("priority", spec.priority.to_string());
    }
    let timeout = drover_proto::durations::or_zero(&spec.timeout);
    if !timeout.is_zero() {
        line("timeout", format!("{}s", timeout.as_secs_f64()));
    }
    let mut limits = Vec::new();
    if spec.memory_limit_bytes > 0 {
        limits.push(format!(
            "memory {}",
            drover_core::limits::format_size(spec.memory_limit_bytes)
        ));
    }
    if spec.cpu_millis > 0 {
        limits.push(format!("cpus {}", spec.cpu_millis as f64 / 1000.0));
    }
    if spec.pids_limit > 0 {
        limits.push(format!("pids {}", spec.pids_limit));
    }
    if !limits.is_empty() {
        line("limits", limits.join(", "));
    }
    if let Some(r) = &spec.retry {
        line(
            "retry",
            format!(
                "max {} retries, first wait {}s, x{}",
                r.max_retries.unwrap_or_default(),
                drover_proto::durations::or_zero(&r.initial_backoff).as_secs_f64(),
                r.multiplier.unwrap_or_default()
            ),
        );
    }
    if !spec.idempotency_key.is_empty() {
        line("idempotency", spec.idempotency_key.clone());
    }
    if !j.original_job_id.is_empty() {
        line("original job", j.original_job_id.clone());
    }
    if !j.retry_of.is_empty() {
        line("retry of", j.retry_of.clone());
    }
    if !retried_by.is_empty() {
        line(
            "retried as",
            format!(
                "{} ({} manual retries)",
                retried_by.join(", "),
                retried_by.len()
            ),
        );
    }
    if j.cancel_requested {
        line("cancel", "requested; stopping its running attempt".into());
    }
    line("created", time_str(&j.created_at));
    if pb::JobState::try_from(j.state) == Ok(pb::JobState::Pending) && j.attempt_count > 0 {
        line("next attempt", time_str(&j.not_before));
    }
    if j.finished_at.is_some() {
        line("finished", time_str(&j.finished_at));
    }
    out.push_str(&format!(
        "\n{:>3}  {:<16}  {:<6}  {:<20}  {:<23}  {:>9}  REASON\n",
        "#", "ATTEMPT", "EXIT", "WORKER", "STARTED", "DURATION"
    ));
    for a in attempts {
        let exit = match (a.exit_code, a.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        let dur = match (time(&a.started_at), time(&a.finished_at)) {
            (Some(s), Some(f)) => format!("{:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:>3}  {:<16}  {:<6}  {:<20}  {:<23}  {:>9}  {}\n",
            a.number,
            attempt_state(a.state),
            exit,
            a.worker_id,
            time_str(&a.started_at),
            dur,
            a.reason
        ));
    }
    out
}

pub fn artifact_json(a: &pb::Artifact) -> Value {
    json!({
        "name": a.name,
        "size": a.size,
        "sha256": a.sha256,
        "attempt_id": a.attempt_id,
        "attempt_number": a.attempt_number,
        "created_at": rfc3339(&a.created_at),
    })
}

pub fn artifact_table(artifacts: &[pb::Artifact]) -> String {
    let mut out = format!(
        "{:<40}  {:>12}  {:<64}  {:>3}\n",
        "NAME", "BYTES", "SHA256", "ATT"
    );
    for a in artifacts {
        out.push_str(&format!(
            "{:<40}  {:>12}  {:<64}  {:>3}\n",
            a.name, a.size, a.sha256, a.attempt_number
        ));
    }
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

pub fn worker_table(workers: &[pb::Worker]) -> String {
    let mut out = format!(
        "{:<24}  {:<9}  {:>5}  {:>5}  {:>6}  {:>13}  {:>13}  {:<23}  {}\n",
        "WORKER",
        "STATE",
        "SLOTS",
        "CPU%",
        "LOAD1",
        "MEM USED/ALL",
        "DISK FREE/ALL",
        "LAST SEEN",
        "LABELS"
    );
    for w in workers {
        let r = w.resources.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<24}  {:<9}  {:>5}  {:>5.0}  {:>6.2}  {:>13}  {:>13}  {:<23}  {}\n",
            w.id,
            pb::WorkerState::name_of(w.state),
            format!("{}/{}", w.running, w.slots),
            r.cpu_percent,
            r.load1,
            format!("{}/{}", gib(r.memory_used_bytes), gib(r.memory_total_bytes)),
            format!("{}/{}", gib(r.disk_free_bytes), gib(r.disk_total_bytes)),
            time_str(&w.last_seen_at),
            w.labels.join(","),
        ));
        if !w.paused_reason.is_empty() {
            out.push_str(&format!("  paused: {}\n", w.paused_reason));
        }
        if !w.containment.is_empty() {
            out.push_str(&format!("  containment: {}\n", w.containment));
        }
        if !w.version.is_empty() || w.protocol_version > 0 {
            out.push_str(&format!(
                "  version: {} (protocol {})\n",
                if w.version.is_empty() {
                    "?"
                } else {
                    &w.version
                },
                w.protocol_version
            ));
        }
    }
    out
}

pub fn health_text(h: &pb::GetHealthResponse) -> String {
    let mut out = format!("status: {}\n", pb::HealthStatus::name_of(h.status));
    for r in &h.reasons {
        out.push_str(&format!("  - {r}\n"));
    }
    let mut states: Vec<_> = h.jobs_by_state.iter().collect();
    states.sort();
    let jobs: Vec<String> = states.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!(
        "jobs: {}\n",
        if jobs.is_empty() {
            "none".into()
        } else {
            jobs.join(" ")
        }
    ));
    out.push_str(&format!("failed in the last 24h: {}\n", h.failed_last_24h));
    for q in &h.queues {
        out.push_str(&format!(
            "queue {}: {} pending (oldest due {}s), {} running\n",
            q.queue,
            q.pending,
            drover_proto::durations::or_zero(&q.oldest_pending).as_secs(),
            q.running
        ));
    }
    out.push_str(&format!(
        "workers: {} alive, {} stale, {} draining, {} offline\n",
        h.workers_alive, h.workers_stale, h.workers_draining, h.workers_offline
    ));
    out.push_str(&format!(
        "database: {} (pool {} of {} in use)\n",
        if h.database_ok { "ok" } else { "unreachable" },
        h.db_pool_size.saturating_sub(h.db_pool_available),
        h.db_pool_max
    ));
    out.push_str(&format!(
        "log storage: {:.1} MiB\n",
        h.log_storage_bytes as f64 / 1048576.0
    ));
    out.push_str(&format!(
        "coordinator: {} (v{})\n",
        h.coordinator_id, h.version
    ));
    out.push_str(&format!(
        "notifications: {} pending, {} dead\n",
        h.notifications_pending, h.notifications_dead
    ));
    if !h.top_failure_groups.is_empty() {
        out.push_str("top failure groups (24h):\n");
        for g in &h.top_failure_groups {
            out.push_str(&format!(
                "  {} {:>6}x queue {}: {}\n",
                g.fingerprint,
                g.count,
                g.queue,
                g.sample.chars().take(100).collect::<String>()
            ));
        }
    }
    if !h.workers.is_empty() {
        out.push('\n');
        out.push_str(&worker_table(&h.workers));
    }
    out
}

pub fn token_json(t: &pb::ApiToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "queues": t.queues,
        "worker_pattern": t.worker_pattern,
        "created_at": rfc3339(&t.created_at),
        "expires_at": rfc3339(&t.expires_at),
        "last_used_at": rfc3339(&t.last_used_at),
        "revoked_at": rfc3339(&t.revoked_at),
    })
}

pub fn token_table(tokens: &[pb::ApiToken]) -> String {
    let mut out = format!(
        "{:<36}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  STATE\n",
        "ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "LAST USED"
    );
    for t in tokens {
        let scope = if !t.worker_pattern.is_empty() {
            format!("worker {}", t.worker_pattern)
        } else if t.queues.is_empty() {
            "-".to_string()
        } else {
            t.queues.join(",")
        };
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if time(&t.expires_at).is_some_and(|e| e <= Utc::now()) {
            "expired"
        } else {
            "live"
        };
        out.push_str(&format!(
            "{:<36}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  {state}\n",
            t.id,
            t.name,
            t.role,
            scope,
            if t.expires_at.is_some() {
                time_str(&t.expires_at)
            } else {
                "never".into()
            },
            if t.last_used_at.is_some() {
                time_str(&t.last_used_at)
            } else {
                "never".into()
            },
        ));
    }
    out
}

pub fn audit_json(a: &pb::AuditEntry) -> Value {
    json!({
        "id": a.id,
        "at": rfc3339(&a.at),
        "actor": a.actor,
        "role": a.role,
        "method": a.method,
        "target": a.target,
        "peer": a.peer,
        "outcome": a.outcome,
    })
}

pub fn audit_table(entries: &[pb::AuditEntry]) -> String {
    let mut out = format!(
        "{:<20}  {:<16}  {:<22}  {:<12}  {:<44}  OUTCOME\n",
        "TIME", "WHO", "FROM", "WHAT", "TARGET"
    );
    for a in entries {
        let what = a.method.rsplit('/').next().unwrap_or(&a.method);
        out.push_str(&format!(
            "{:<20}  {:<16}  {:<22}  {:<12}  {:<44}  {}\n",
            time_str(&a.at),
            a.actor,
            a.peer,
            what,
            a.target,
            a.outcome
        ));
    }
    out
}
