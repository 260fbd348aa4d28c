//! When is a second submit with the same idempotency key "the same job"?
//!
//! A key names one submission. Re-sending it (a client retrying after a lost answer) must
//! return the job the first submit created; sending it with something else is a client bug
//! that must not be hidden by quietly returning a job that runs a different command.
//!
//! Two submissions are equal when their *stored* forms are equal: each side is compared
//! after the coordinator's defaults (server, then queue) were applied, so a field left
//! unset equals the default it resolved to. Fields that are sets by meaning are compared
//! as sets (order and repeats ignored): labels, outputs, concurrency keys, dependencies,
//! and the retry policy's exit-code and pattern lists. Everything else is compared exactly
//! (argv order matters; maps compare by key and value). The key itself is not compared.

use crate::{JobSpec, RetryPolicy};
use std::collections::BTreeSet;

/// One submission in its stored form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    /// The spec with defaults applied (queue, timeout, limits).
    pub spec: JobSpec,
    /// The resolved retry policy.
    pub policy: RetryPolicy,
    /// The priority the job got (its own, else the queue's default).
    pub priority: i32,
    /// Concurrency keys the job holds (including the queue's own key, if any).
    pub concurrency_keys: Vec<String>,
    /// Dependencies, each named by the first job of its retry chain: a dependency given as
    /// any job of a chain resolves to the chain's newest job, so the root is what stays the
    /// same between two submits.
    pub after_roots: Vec<String>,
}

fn set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
    v.iter().cloned().collect()
}

/// The first field (by name, as in the API) in which `a` and `b` differ, or None when they
/// are the same submission.
pub fn first_difference(a: &Submission, b: &Submission) -> Option<&'static str> {
    let (s, t) = (&a.spec, &b.spec);
    let (p, q) = (&a.policy, &b.policy);
    let checks: [(&'static str, bool); 21] = [
        ("argv", s.argv == t.argv),
        ("env", s.env == t.env),
        ("queue", s.queue == t.queue),
        ("labels", set(&s.labels) == set(&t.labels)),
        ("params", s.params == t.params),
        ("timeout", s.timeout_ms == t.timeout_ms),
        ("outputs", set(&s.outputs) == set(&t.outputs)),
        (
            "memory_limit_bytes",
            s.limits.memory_bytes == t.limits.memory_bytes,
        ),
        ("cpu_millis", s.limits.cpu_millis == t.limits.cpu_millis),
        ("pids_limit", s.limits.pids == t.limits.pids),
        ("secret_env", s.secret_env == t.secret_env),
        ("retry.max_retries", p.max_retries == q.max_retries),
        (
            "retry.initial_backoff",
            p.initial_backoff_ms == q.initial_backoff_ms,
        ),
        // Bit equality: both come from the same decimal text or the same default.
        (
            "retry.multiplier",
            p.multiplier.to_bits() == q.multiplier.to_bits(),
        ),
        ("retry.max_backoff", p.max_backoff_ms == q.max_backoff_ms),
        ("retry.jitter", p.jitter.to_bits() == q.jitter.to_bits()),
        (
            "retry.exit_codes",
            set(&p.retryable_exit_codes) == set(&q.retryable_exit_codes)
                && set(&p.permanent_exit_codes) == set(&q.permanent_exit_codes),
        ),
        (
            "retry.patterns",
            set(&p.retryable_patterns) == set(&q.retryable_patterns)
                && set(&p.permanent_patterns) == set(&q.permanent_patterns)
                && p.retry_out_of_memory == q.retry_out_of_memory,
        ),
        ("priority", a.priority == b.priority),
        (
            "concurrency_keys",
            set(&a.concurrency_keys) == set(&b.concurrency_keys),
        ),
        ("after", set(&a.after_roots) == set(&b.after_roots)),
    ];
    checks.iter().find(|(_, same)| !same).map(|(f, _)| *f)
}

/// The refusal for a key reused with a different spec, naming the job that holds it.
pub fn reused_key_message(key: &str, existing_job: &str, field: &str) -> String {
    format!(
        "idempotency_key {key:?} was already used for job {existing_job} with a different spec \
         ({field} differs); submit again with the same spec to get that job, or use a new key"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceLimits;

    fn base() -> Submission {
        Submission {
            spec: JobSpec {
                argv: vec!["fetch".into(), "--day".into(), "{day}".into()],
                env: [("A".to_string(), "1".to_string())].into(),
                queue: "default".into(),
                labels: vec!["linux".into(), "gpu".into()],
                params: [("day".to_string(), "2024-01-01".to_string())].into(),
                timeout_ms: 60_000,
                idempotency_key: Some("k1".into()),
                outputs: vec!["out/*.csv".into(), "log.txt".into()],
                limits: ResourceLimits {
                    memory_bytes: Some(1 << 30),
                    cpu_millis: None,
                    pids: Some(64),
                },
                secret_env: [("TOKEN".to_string(), "env:TOKEN".to_string())].into(),
            },
            policy: RetryPolicy {
                retryable_exit_codes: vec![75, 3],
                permanent_patterns: vec!["denied".into()],
                ..RetryPolicy::default()
            },
            priority: 5,
            concurrency_keys: vec!["site:a".into(), "queue:default".into()],
            after_roots: vec!["j1".into(), "j2".into()],
        }
    }

    #[test]
    fn a_submission_equals_itself() {
        assert_eq!(first_difference(&base(), &base()), None);
    }

    #[test]
    fn sets_ignore_order_and_repeats_and_the_key_is_not_compared() {
        let mut b = base();
        b.spec.labels = vec!["gpu".into(), "linux".into(), "gpu".into()];
        b.spec.outputs.reverse();
        b.concurrency_keys.reverse();
        b.after_roots = vec!["j2".into(), "j1".into(), "j1".into()];
        b.policy.retryable_exit_codes = vec![3, 75];
        b.spec.idempotency_key = Some("other".into());
        assert_eq!(first_difference(&base(), &b), None);
    }

    #[test]
    fn argv_order_matters() {
        let mut b = base();
        b.spec.argv.swap(1, 2);
        assert_eq!(first_difference(&base(), &b), Some("argv"));
    }

    #[test]
    fn each_field_is_named_when_it_differs() {
        type Change = fn(&mut Submission);
        let cases: Vec<(&str, Change)> = vec![
            ("env", |s| {
                s.spec.env.insert("B".into(), "2".into());
            }),
            ("queue", |s| s.spec.queue = "other".into()),
            ("labels", |s| s.spec.labels.pop().map(drop).unwrap_or(())),
            ("params", |s| {
                s.spec.params.insert("day".into(), "2024-01-02".into());
            }),
            ("timeout", |s| s.spec.timeout_ms = 1),
            ("outputs", |s| s.spec.outputs.clear()),
            ("memory_limit_bytes", |s| s.spec.limits.memory_bytes = None),
            ("cpu_millis", |s| s.spec.limits.cpu_millis = Some(500)),
            ("pids_limit", |s| s.spec.limits.pids = Some(65)),
            ("secret_env", |s| s.spec.secret_env.clear()),
            ("retry.max_retries", |s| s.policy.max_retries = 0),
            ("retry.initial_backoff", |s| s.policy.initial_backoff_ms = 1),
            ("retry.multiplier", |s| s.policy.multiplier = 3.0),
            ("retry.max_backoff", |s| s.policy.max_backoff_ms = 1),
            ("retry.jitter", |s| s.policy.jitter = 0.0),
            ("retry.exit_codes", |s| {
                s.policy.permanent_exit_codes = vec![1]
            }),
            ("retry.patterns", |s| s.policy.retry_out_of_memory = true),
            ("priority", |s| s.priority = 0),
            ("concurrency_keys", |s| s.concurrency_keys.clear()),
            ("after", |s| s.after_roots.push("j3".into())),
        ];
        for (field, change) in cases {
            let mut b = base();
            change(&mut b);
            assert_eq!(first_difference(&base(), &b), Some(field), "{field}");
            assert_eq!(
                first_difference(&b, &base()),
                Some(field),
                "{field} (reversed)"
            );
        }
    }

    #[test]
    fn the_message_names_the_job_the_key_and_the_field() {
        let m = reused_key_message("k1", "0190-abc", "argv");
        assert!(m.contains("0190-abc") && m.contains("\"k1\"") && m.contains("argv differs"));
        assert!(m.contains("different spec"));
    }
}
