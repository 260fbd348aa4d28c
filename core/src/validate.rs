//! Checks on what clients submit. Every error names the offending field so the operator
//! knows what to fix; nothing invalid ever reaches the database.

use crate::limits::{self, ResourceLimits};
use crate::params::expanded_argv_len;
use crate::retry::{RetryPolicy, MAX_BACKOFF_MS};
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
/// An output glob or artifact name.
pub const MAX_PATH_BYTES: usize = 1024;
/// argv after `{name}` substitution (with a NUL per argument, as `execve` counts it). Linux
/// refuses more than about 2 MiB of argv and environment together.
pub const MAX_EXPANDED_ARGV_BYTES: u64 = 1024 * 1024;
pub const MAX_ARGV_COUNT: usize = 4096;
pub const MAX_ENV_COUNT: usize = 1024;
pub const MAX_PARAMS_COUNT: usize = 1024;
/// Output patterns per list, and bytes per pattern.
pub const MAX_PATTERNS: usize = 64;
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Exit codes per list.
pub const MAX_EXIT_CODES: usize = 256;
/// Largest compiled regex (bytes of program), so a small pattern cannot blow up memory.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

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
    /// Per-attempt resource limits (queue defaults already applied).
    pub limits: ResourceLimits,
    /// Secret references (NAME -> `file:`/`env:`), resolved on the worker.
    pub secret_env: BTreeMap<String, String>,
}

/// A job list's param filter, `name=value`: the name as params are named, the value at
/// most [`MAX_PATH_BYTES`] bytes.
pub fn parse_param_filter(field: &str, s: &str) -> Result<(String, String), ValidationError> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(err(field, format!("expected name=value, got {s:?}")));
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(err(
            field,
            format!(
                "the name must be 1 to {MAX_NAME_LEN} bytes, got {}",
                name.len()
            ),
        ));
    }
    if value.len() > MAX_PATH_BYTES {
        return Err(err(
            field,
            format!(
                "the value may be at most {MAX_PATH_BYTES} bytes, got {}",
                value.len()
            ),
        ));
    }
    Ok((name.to_string(), value.to_string()))
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
    if spec.argv.len() > MAX_ARGV_COUNT {
        return Err(err(
            "argv",
            format!(
                "{} arguments; the limit is {MAX_ARGV_COUNT}",
                spec.argv.len()
            ),
        ));
    }
    if spec.env.len() > MAX_ENV_COUNT {
        return Err(err(
            "env",
            format!("{} variables; the limit is {MAX_ENV_COUNT}", spec.env.len()),
        ));
    }
    if spec.params.len() > MAX_PARAMS_COUNT {
        return Err(err(
            "params",
            format!(
                "{} params; the limit is {MAX_PARAMS_COUNT}",
                spec.params.len()
            ),
        ));
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
    for (k, v) in &spec.params {
        if v.contains('\0') {
            return Err(err(format!("params[{k:?}]"), "value contains a NUL byte"));
        }
    }
    // Computed, not built: the expansion of a small request can be huge.
    match expanded_argv_len(&spec.argv, &spec.params) {
        Err((i, e)) => return Err(err(format!("argv[{i}]"), e.to_string())),
        Ok(n) if n > MAX_EXPANDED_ARGV_BYTES => {
            return Err(err(
                "argv",
                format!(
                    "expands to {n} bytes after placeholder substitution; the limit is \
                     {MAX_EXPANDED_ARGV_BYTES} (max expanded argv bytes)"
                ),
            ))
        }
        Ok(_) => {}
    }
    validate_limits(&spec.limits)?;
    if spec.timeout_ms < 0 {
        return Err(err(
            "timeout",
            format!("must be 0 (none) or positive, got {} ms", spec.timeout_ms),
        ));
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(err(
            "timeout",
            format!("must be at most 30 days ({MAX_TIMEOUT_MS} ms)"),
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

/// Text a worker (or a job) reported, made safe to store, show and log: control characters
/// (newlines included) are escaped as `\n`, `\u{1b}`…, and the result is cut to at most
/// `max` bytes on a character boundary, with "…" marking a cut.
pub fn sanitize_reported(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max.saturating_sub('…'.len_utf8()) {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// A path (or glob) inside the work directory: relative, no `..`, no NUL.
pub fn check_relative_path(field: &str, p: &str) -> Result<(), ValidationError> {
    if p.len() > MAX_PATH_BYTES {
        return Err(err(
            field,
            format!("is {} bytes; the limit is {MAX_PATH_BYTES}", p.len()),
        ));
    }
    if p.is_empty() || p.starts_with('/') || p.contains('\0') {
        return Err(err(
            field,
            format!("{p:?} must be a non-empty path relative to the work directory"),
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(err(
            field,
            format!("{p:?} must not contain control characters"),
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(err(field, format!("{p:?} must not contain '..'")));
    }
    Ok(())
}

/// Resource limits within what a cgroup can be given.
pub fn validate_limits(l: &ResourceLimits) -> Result<(), ValidationError> {
    if let Some(m) = l.memory_bytes {
        if !(limits::MIN_MEMORY_BYTES..=limits::MAX_MEMORY_BYTES).contains(&m) {
            return Err(err(
                "memory_limit_bytes",
                format!(
                    "must be between {} and {} bytes (4M to 1T), got {m}",
                    limits::MIN_MEMORY_BYTES,
                    limits::MAX_MEMORY_BYTES
                ),
            ));
        }
    }
    if let Some(c) = l.cpu_millis {
        if !(limits::MIN_CPU_MILLIS..=limits::MAX_CPU_MILLIS).contains(&c) {
            return Err(err(
                "cpu_millis",
                format!(
                    "must be between {} and {} (0.01 to 1024 CPUs), got {c}",
                    limits::MIN_CPU_MILLIS,
                    limits::MAX_CPU_MILLIS
                ),
            ));
        }
    }
    if let Some(p) = l.pids {
        if !(1..=limits::MAX_PIDS).contains(&p) {
            return Err(err(
                "pids_limit",
                format!("must be between 1 and {}, got {p}", limits::MAX_PIDS),
            ));
        }
    }
    Ok(())
}

pub fn validate_policy(p: &RetryPolicy) -> Result<(), ValidationError> {
    compile_policy(p).map(|_| ())
}

/// Validates a policy and returns its output patterns compiled, so a submitted or loaded
/// policy is compiled once (a bad regex is refused here, naming the field).
pub fn compile_policy(p: &RetryPolicy) -> Result<crate::retry::Patterns, ValidationError> {
    if p.initial_backoff_ms > MAX_BACKOFF_MS {
        return Err(err(
            "retry.initial_backoff",
            format!(
                "must be between 0 and 30 days ({MAX_BACKOFF_MS} ms), got {} ms",
                p.initial_backoff_ms
            ),
        ));
    }
    if p.max_backoff_ms > MAX_BACKOFF_MS {
        return Err(err(
            "retry.max_backoff",
            format!(
                "must be between 0 and 30 days ({MAX_BACKOFF_MS} ms), got {} ms",
                p.max_backoff_ms
            ),
        ));
    }
    for (field, codes) in [
        ("retry.retryable_exit_codes", &p.retryable_exit_codes),
        ("retry.permanent_exit_codes", &p.permanent_exit_codes),
    ] {
        if codes.len() > MAX_EXIT_CODES {
            return Err(err(
                field,
                format!("{} codes; the limit is {MAX_EXIT_CODES}", codes.len()),
            ));
        }
    }
    for (field, pats) in [
        ("retry.retryable_patterns", &p.retryable_patterns),
        ("retry.permanent_patterns", &p.permanent_patterns),
    ] {
        if pats.len() > MAX_PATTERNS {
            return Err(err(
                field,
                format!("{} patterns; the limit is {MAX_PATTERNS}", pats.len()),
            ));
        }
        for (i, pat) in pats.iter().enumerate() {
            if pat.len() > MAX_PATTERN_BYTES {
                return Err(err(
                    format!("{field}[{i}]"),
                    format!("is {} bytes; the limit is {MAX_PATTERN_BYTES}", pat.len()),
                ));
            }
        }
    }
    if p.max_retries > MAX_RETRIES {
        return Err(err(
            "retry.max_retries",
            format!("must be at most {MAX_RETRIES}"),
        ));
    }
    if !(1.0..=100.0).contains(&p.multiplier) {
        return Err(err(
            "retry.multiplier",
            format!("must be between 1 and 100, got {}", p.multiplier),
        ));
    }
    if !(0.0..=1.0).contains(&p.jitter) {
        return Err(err("retry.jitter", "must be between 0 and 1"));
    }
    if p.max_backoff_ms < p.initial_backoff_ms {
        return Err(err("retry.max_backoff", "must be at least initial_backoff"));
    }
    crate::retry::Patterns::try_compile(p)
        .map_err(|(field, i, e)| err(format!("{field}[{i}]"), format!("bad regex: {e}")))
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
            "timeout"
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
    fn expanded_argv_is_bounded_without_being_built() {
        let spec = JobSpec {
            argv: std::iter::once("echo".to_string())
                .chain(std::iter::repeat_n("{p}".to_string(), 4000))
                .collect(),
            params: [("p".to_string(), "x".repeat(60_000))].into(),
            ..ok_spec()
        };
        let e = validate_spec(&spec).unwrap_err();
        assert_eq!(e.field, "argv");
        assert!(e.message.contains("1048576"), "{e}");
        // Just under the limit is fine.
        let spec = JobSpec {
            argv: vec!["echo".into(), "{p}".into(), "{p}".into()],
            params: [("p".to_string(), "x".repeat(60_000))].into(),
            ..ok_spec()
        };
        assert_eq!(validate_spec(&spec), Ok(()));
    }

    #[test]
    fn counts_and_limits_name_the_field() {
        let table: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    argv: vec!["x".to_string(); MAX_ARGV_COUNT + 1],
                    ..ok_spec()
                },
                "argv",
            ),
            (
                JobSpec {
                    params: (0..MAX_PARAMS_COUNT + 1)
                        .map(|i| (format!("p{i}"), String::new()))
                        .collect(),
                    ..ok_spec()
                },
                "params",
            ),
            (
                JobSpec {
                    env: (0..MAX_ENV_COUNT + 1)
                        .map(|i| (format!("E{i}"), String::new()))
                        .collect(),
                    ..ok_spec()
                },
                "env",
            ),
            (
                JobSpec {
                    limits: ResourceLimits {
                        memory_bytes: Some(1),
                        ..Default::default()
                    },
                    ..ok_spec()
                },
                "memory_limit_bytes",
            ),
            (
                JobSpec {
                    limits: ResourceLimits {
                        cpu_millis: Some(u32::MAX),
                        ..Default::default()
                    },
                    ..ok_spec()
                },
                "cpu_millis",
            ),
            (
                JobSpec {
                    limits: ResourceLimits {
                        pids: Some(0),
                        ..Default::default()
                    },
                    ..ok_spec()
                },
                "pids_limit",
            ),
        ];
        for (spec, field) in table {
            assert_eq!(field_of(spec), field);
        }
    }

    #[test]
    fn policy_ranges_are_checked() {
        let table = [
            (
                RetryPolicy {
                    initial_backoff_ms: u64::MAX,
                    max_backoff_ms: u64::MAX,
                    ..RetryPolicy::default()
                },
                "retry.initial_backoff",
            ),
            (
                RetryPolicy {
                    max_backoff_ms: u64::MAX,
                    ..RetryPolicy::default()
                },
                "retry.max_backoff",
            ),
            (
                RetryPolicy {
                    multiplier: f64::NAN,
                    ..RetryPolicy::default()
                },
                "retry.multiplier",
            ),
            (
                RetryPolicy {
                    multiplier: f64::INFINITY,
                    ..RetryPolicy::default()
                },
                "retry.multiplier",
            ),
            (
                RetryPolicy {
                    jitter: f64::NAN,
                    ..RetryPolicy::default()
                },
                "retry.jitter",
            ),
            (
                RetryPolicy {
                    retryable_patterns: vec!["a".into(); MAX_PATTERNS + 1],
                    ..RetryPolicy::default()
                },
                "retry.retryable_patterns",
            ),
            (
                RetryPolicy {
                    permanent_patterns: vec!["a".repeat(MAX_PATTERN_BYTES + 1)],
                    ..RetryPolicy::default()
                },
                "retry.permanent_patterns[0]",
            ),
            (
                RetryPolicy {
                    // Small text, huge compiled program.
                    permanent_patterns: vec!["(\\w{100}){100}".into()],
                    ..RetryPolicy::default()
                },
                "retry.permanent_patterns[0]",
            ),
            (
                RetryPolicy {
                    permanent_exit_codes: vec![1; MAX_EXIT_CODES + 1],
                    ..RetryPolicy::default()
                },
                "retry.permanent_exit_codes",
            ),
        ];
        for (p, field) in table {
            let e = validate_policy(&p).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let e = validate_policy(&RetryPolicy {
            initial_backoff_ms: u64::MAX,
            ..RetryPolicy::default()
        })
        .unwrap_err();
        assert!(e.message.contains("2592000000"), "names the range: {e}");
    }

    #[test]
    fn reported_text_is_escaped_and_bounded() {
        assert_eq!(sanitize_reported("host-1", 255), "host-1");
        assert_eq!(
            sanitize_reported("evil\nINFO forged line\r", 255),
            "evil\\nINFO forged line\\r"
        );
        assert_eq!(sanitize_reported("\u{1b}[31m", 255), "\\u{1b}[31m");
        let long = sanitize_reported(&"é".repeat(3_000_000), 255);
        assert!(long.len() <= 255 && long.ends_with('…'), "{}", long.len());
        for max in 0..8 {
            assert!(sanitize_reported("abcdefghij", max).len() <= max.max(3));
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

#[cfg(test)]
mod param_filter_tests {
    use super::parse_param_filter;

    #[test]
    fn param_filters_are_name_equals_value() {
        assert_eq!(
            parse_param_filter("param", "date=2024-01-01").unwrap(),
            ("date".to_string(), "2024-01-01".to_string())
        );
        assert_eq!(
            parse_param_filter("param", "k=a=b").unwrap(),
            ("k".to_string(), "a=b".to_string())
        );
        assert!(parse_param_filter("param", "novalue").is_err());
        assert!(parse_param_filter("param", "=x").is_err());
        assert!(parse_param_filter("param", &format!("k={}", "x".repeat(2000))).is_err());
    }
}
