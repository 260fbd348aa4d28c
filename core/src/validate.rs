//! Checks on what clients submit. Every error names the offending field so the operator
//! knows what to fix; nothing invalid ever reaches the database.

use crate::params::substitute_argv;
use crate::retry::RetryPolicy;
use regex::Regex;
use std::collections::BTreeMap;

/// Upper bounds on a job spec. Generous for real CLIs, small enough to keep rows cheap.
pub const MAX_ARGV_BYTES: usize = 128 * 1024;
pub const MAX_ENV_BYTES: usize = 128 * 1024;
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
pub const MAX_LABELS: usize = 64;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
pub const MAX_TIMEOUT_MS: i64 = 30 * 24 * 3600 * 1000;
pub const MAX_RETRIES: u32 = 1000;
pub const MAX_OUTPUTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// A job as submitted, before it is stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub queue: String,
    pub labels: Vec<String>,
    pub params: BTreeMap<String, String>,
    pub timeout_ms: i64,
    pub idempotency_key: Option<String>,
    /// Globs of files to keep, relative to the work directory.
    pub outputs: Vec<String>,
    /// Secret references (NAME -> `file:`/`env:`), resolved on the worker.
    pub secret_env: BTreeMap<String, String>,
}

/// A queue or label name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(err(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters, got {}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(err(
            field,
            format!("{name:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

pub fn validate_spec(spec: &JobSpec) -> Result<(), ValidationError> {
    if spec.argv.is_empty() {
        return Err(err("argv", "must name a program to run (argv is empty)"));
    }
    if spec.argv[0].is_empty() {
        return Err(err("argv[0]", "program name is empty"));
    }
    for (i, a) in spec.argv.iter().enumerate() {
        if a.contains('\0') {
            return Err(err(format!("argv[{i}]"), "contains a NUL byte"));
        }
    }
    let argv_bytes: usize = spec.argv.iter().map(|a| a.len() + 1).sum();
    if argv_bytes > MAX_ARGV_BYTES {
        return Err(err(
            "argv",
            format!("is {argv_bytes} bytes; the limit is {MAX_ARGV_BYTES}"),
        ));
    }
    let mut env_bytes = 0;
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err(
                format!("env[{k:?}]"),
                "variable names must be non-empty without '=' or NUL",
            ));
        }
        if v.contains('\0') {
            return Err(err(format!("env[{k:?}]"), "value contains a NUL byte"));
        }
        env_bytes += k.len() + v.len() + 2;
    }
    if env_bytes > MAX_ENV_BYTES {
        return Err(err(
            "env",
            format!("is {env_bytes} bytes; the limit is {MAX_ENV_BYTES}"),
        ));
    }
    if spec.secret_env.len() > crate::jobguard::MAX_SECRETS {
        return Err(err(
            "secret_env",
            format!(
                "{} references; the limit is {}",
                spec.secret_env.len(),
                crate::jobguard::MAX_SECRETS
            ),
        ));
    }
    for (k, v) in &spec.secret_env {
        if !crate::jobguard::is_env_name(k) {
            return Err(err(
                format!("secret_env[{k:?}]"),
                "names must be 1-256 of [A-Za-z0-9_], not starting with a digit",
            ));
        }
        crate::jobguard::SecretRef::parse(v).map_err(|e| err(format!("secret_env[{k:?}]"), e))?;
    }
    check_name("queue", &spec.queue)?;
    if spec.labels.len() > MAX_LABELS {
        return Err(err(
            "labels",
            format!("{} labels; the limit is {MAX_LABELS}", spec.labels.len()),
        ));
    }
    for (i, l) in spec.labels.iter().enumerate() {
        check_name(&format!("labels[{i}]"), l)?;
    }
    let mut params_bytes = 0;
    for (k, v) in &spec.params {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(
                format!("params[{k:?}]"),
                "names use only letters, digits and '_'",
            ));
        }
        params_bytes += k.len() + v.len();
    }
    if params_bytes > MAX_PARAMS_BYTES {
        return Err(err(
            "params",
            format!("is {params_bytes} bytes; the limit is {MAX_PARAMS_BYTES}"),
        ));
    }
    if let Err((i, e)) = substitute_argv(&spec.argv, &spec.params) {
        return Err(err(format!("argv[{i}]"), e.to_string()));
    }
    if spec.timeout_ms < 0 {
        return Err(err(
            "timeout_ms",
            format!("must be 0 (none) or positive, got {}", spec.timeout_ms),
        ));
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(err(
            "timeout_ms",
            format!("must be at most {MAX_TIMEOUT_MS} (30 days)"),
        ));
    }
    if spec.outputs.len() > MAX_OUTPUTS {
        return Err(err(
            "outputs",
            format!("{} globs; the limit is {MAX_OUTPUTS}", spec.outputs.len()),
        ));
    }
    for (i, o) in spec.outputs.iter().enumerate() {
        check_relative_path(&format!("outputs[{i}]"), o)?;
        if let Err(e) = glob::Pattern::new(o) {
            return Err(err(format!("outputs[{i}]"), format!("bad glob: {e}")));
        }
    }
    if let Some(key) = &spec.idempotency_key {
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(err(
                "idempotency_key",
                format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// A path (or glob) inside the work directory: relative, no `..`, no NUL.
pub fn check_relative_path(field: &str, p: &str) -> Result<(), ValidationError> {
    if p.is_empty() || p.starts_with('/') || p.contains('\0') {
        return Err(err(
            field,
            format!("{p:?} must be a non-empty path relative to the work directory"),
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(err(field, format!("{p:?} must not contain '..'")));
    }
    Ok(())
}

pub fn validate_policy(p: &RetryPolicy) -> Result<(), ValidationError> {
    if p.max_retries > MAX_RETRIES {
        return Err(err(
            "retry.max_retries",
            format!("must be at most {MAX_RETRIES}"),
        ));
    }
    if !(1.0..=100.0).contains(&p.multiplier) {
        return Err(err("retry.multiplier", "must be between 1 and 100"));
    }
    if !(0.0..=1.0).contains(&p.jitter) {
        return Err(err("retry.jitter", "must be between 0 and 1"));
    }
    if p.max_backoff_ms < p.initial_backoff_ms {
        return Err(err(
            "retry.max_backoff_ms",
            "must be at least initial_backoff_ms",
        ));
    }
    for (field, pats) in [
        ("retry.retryable_patterns", &p.retryable_patterns),
        ("retry.permanent_patterns", &p.permanent_patterns),
    ] {
        for (i, pat) in pats.iter().enumerate() {
            if let Err(e) = Regex::new(pat) {
                return Err(err(format!("{field}[{i}]"), format!("bad regex: {e}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_spec() -> JobSpec {
        JobSpec {
            argv: vec!["scraper".into(), "--date".into(), "{date}".into()],
            queue: "default".into(),
            params: [("date".to_string(), "2026-11-22".to_string())].into(),
            ..Default::default()
        }
    }

    fn field_of(spec: JobSpec) -> String {
        validate_spec(&spec).unwrap_err().field
    }

    #[test]
    fn accepts_a_normal_spec() {
        assert_eq!(validate_spec(&ok_spec()), Ok(()));
    }

    #[test]
    fn secret_references_are_checked() {
        let with = |k: &str, v: &str| JobSpec {
            secret_env: [(k.to_string(), v.to_string())].into(),
            ..ok_spec()
        };
        assert_eq!(validate_spec(&with("API_KEY", "env:API_KEY")), Ok(()));
        assert_eq!(validate_spec(&with("API_KEY", "file:/run/k")), Ok(()));
        assert_eq!(
            field_of(with("API_KEY", "hunter2")),
            "secret_env[\"API_KEY\"]"
        );
        assert_eq!(
            field_of(with("BAD NAME", "env:A")),
            "secret_env[\"BAD NAME\"]"
        );
        let many = JobSpec {
            secret_env: (0..33)
                .map(|i| (format!("S{i}"), "env:A".to_string()))
                .collect(),
            ..ok_spec()
        };
        assert_eq!(field_of(many), "secret_env");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(JobSpec {
                argv: vec![],
                ..ok_spec()
            }),
            "argv"
        );
        assert_eq!(
            field_of(JobSpec {
                queue: "my queue!".into(),
                ..ok_spec()
            }),
            "queue"
        );
        assert_eq!(
            field_of(JobSpec {
                timeout_ms: -5,
                ..ok_spec()
            }),
            "timeout_ms"
        );
        assert_eq!(
            field_of(JobSpec {
                argv: vec!["x".repeat(MAX_ARGV_BYTES + 1)],
                ..ok_spec()
            }),
            "argv"
        );
        assert_eq!(
            field_of(JobSpec {
                env: [("A".to_string(), "v".repeat(MAX_ENV_BYTES))].into(),
                ..ok_spec()
            }),
            "env"
        );
        assert_eq!(
            field_of(JobSpec {
                params: BTreeMap::new(),
                ..ok_spec()
            }),
            "argv[2]"
        );
        assert_eq!(
            field_of(JobSpec {
                labels: vec!["gpu".into(), "".into()],
                ..ok_spec()
            }),
            "labels[1]"
        );
        for bad in ["/etc/passwd", "../up/*.csv", "a/[", ""] {
            assert_eq!(
                field_of(JobSpec {
                    outputs: vec!["ok/*.csv".into(), bad.into()],
                    ..ok_spec()
                }),
                "outputs[1]",
                "{bad}"
            );
        }
    }

    #[test]
    fn policy_checks() {
        assert_eq!(validate_policy(&RetryPolicy::default()), Ok(()));
        let bad = RetryPolicy {
            permanent_patterns: vec!["(".into()],
            ..RetryPolicy::default()
        };
        assert_eq!(
            validate_policy(&bad).unwrap_err().field,
            "retry.permanent_patterns[0]"
        );
        let bad = RetryPolicy {
            multiplier: 0.5,
            ..RetryPolicy::default()
        };
        assert_eq!(validate_policy(&bad).unwrap_err().field, "retry.multiplier");
    }
}
