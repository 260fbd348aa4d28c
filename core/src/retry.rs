//! The retry policy: how an attempt ended ([`classify`]) and what happens next ([`decide`]).
//!
//! Both are pure functions of their inputs, so every rule is unit-tested here and the
//! coordinator only has to store the result.

use crate::state::AttemptState;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Exit codes the shell convention reserves for "cannot execute" (126) and
/// "command not found" (127): retrying cannot help.
pub const PERMANENT_EXIT_CODES: [i32; 2] = [126, 127];

/// Lost attempts (worker died, lease expired) do not use up retries, but a job that keeps
/// killing its workers must not loop forever.
pub const MAX_LOST_ATTEMPTS: u32 = 10;

/// Longest wait between attempts (30 days): submit refuses more, and the arithmetic never
/// produces more, so a start time can always be stored.
pub const MAX_BACKOFF_MS: u64 = 30 * 24 * 3600 * 1000;

/// A fully resolved retry policy (defaults applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Retries after the first attempt: 3 means up to 4 attempts.
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub multiplier: f64,
    pub max_backoff_ms: u64,
    /// Fraction of each wait removed at random (0 = exact waits).
    pub jitter: f64,
    pub retryable_exit_codes: Vec<i32>,
    pub permanent_exit_codes: Vec<i32>,
    pub retryable_patterns: Vec<String>,
    pub permanent_patterns: Vec<String>,
    /// An attempt killed by its memory limit is retried only if this is set.
    pub retry_out_of_memory: bool,
}

impl Default for RetryPolicy {
    /// The operators' existing settings: 3 retries, 5 s first wait, doubling, capped at 1 h.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff_ms: 5_000,
            multiplier: 2.0,
            max_backoff_ms: 3_600_000,
            jitter: 0.2,
            retryable_exit_codes: Vec::new(),
            permanent_exit_codes: Vec::new(),
            retryable_patterns: Vec::new(),
            permanent_patterns: Vec::new(),
            retry_out_of_memory: false,
        }
    }
}

/// A partial policy: the fields a queue's config or a submitted job set. Unset fields keep
/// the value of the policy it is applied to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyOverrides {
    pub max_retries: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub multiplier: Option<f64>,
    pub max_backoff_ms: Option<u64>,
    pub jitter: Option<f64>,
    pub retryable_exit_codes: Option<Vec<i32>>,
    pub permanent_exit_codes: Option<Vec<i32>>,
    pub retryable_patterns: Option<Vec<String>>,
    pub permanent_patterns: Option<Vec<String>>,
    pub retry_out_of_memory: Option<bool>,
}

impl PolicyOverrides {
    pub fn apply(&self, base: &RetryPolicy) -> RetryPolicy {
        let mut p = base.clone();
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        set(&mut p.max_retries, &self.max_retries);
        set(&mut p.initial_backoff_ms, &self.initial_backoff_ms);
        set(&mut p.multiplier, &self.multiplier);
        set(&mut p.max_backoff_ms, &self.max_backoff_ms);
        set(&mut p.jitter, &self.jitter);
        set(&mut p.retryable_exit_codes, &self.retryable_exit_codes);
        set(&mut p.permanent_exit_codes, &self.permanent_exit_codes);
        set(&mut p.retryable_patterns, &self.retryable_patterns);
        set(&mut p.permanent_patterns, &self.permanent_patterns);
        set(&mut p.retry_out_of_memory, &self.retry_out_of_memory);
        // A cap below the first wait would be an error for a value nobody chose.
        if self.max_backoff_ms.is_none() && p.max_backoff_ms < p.initial_backoff_ms {
            p.max_backoff_ms = p.initial_backoff_ms;
        }
        p
    }
}

impl RetryPolicy {
    /// Wait before retry number `failures` (1 = the first retry), before jitter.
    ///
    /// Saturating: whatever the stored values (even ones validation would refuse now), the
    /// wait is finite and at most [`MAX_BACKOFF_MS`], so the next start time can always be
    /// computed.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let mult = if self.multiplier.is_finite() {
            self.multiplier
        } else {
            1.0
        };
        let ms = (self.initial_backoff_ms as f64) * mult.powi(exp);
        let cap = self.max_backoff_ms.min(MAX_BACKOFF_MS) as f64;
        // NaN (0 × inf) and negatives become 0; `as u64` saturates.
        let capped = if ms.is_nan() { 0.0 } else { ms.clamp(0.0, cap) };
        Duration::from_millis(capped as u64)
    }
}

/// How an attempt's process ended, as the worker (or the lease reaper) saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawResult {
    Exited(i32),
    Signaled(i32),
    SpawnError(String),
    TimedOut,
    Cancelled,
    Released,
    Lost(String),
    /// The process succeeded but its declared outputs could not be kept.
    OutputError(String),
    /// The attempt's cgroup killed a process for going over the job's memory limit.
    OutOfMemory {
        limit_bytes: u64,
    },
}

/// The attempt's recorded outcome and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub outcome: AttemptState,
    pub reason: String,
}

/// A policy's output patterns, compiled once: when the policy is submitted or loaded, not
/// on every attempt's end while its rows are locked.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    permanent: Vec<Compiled>,
    retryable: Vec<Compiled>,
}

/// A pattern's text and its compiled form (`None`: it did not compile).
type Compiled = (String, Option<Regex>);

/// A pattern that did not compile: its list's field name, its index, and why.
pub type PatternError = (&'static str, usize, regex::Error);

fn compile_one(p: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(p)
        .size_limit(crate::validate::MAX_REGEX_SIZE)
        .build()
}

fn compile_list(patterns: &[String]) -> Vec<Compiled> {
    patterns
        .iter()
        // Patterns are validated at submit; one that no longer compiles (a policy stored
        // before a limit changed) simply never matches.
        .map(|p| (p.clone(), compile_one(p).ok()))
        .collect()
}

fn try_compile_list(
    field: &'static str,
    patterns: &[String],
) -> Result<Vec<Compiled>, PatternError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            compile_one(p)
                .map(|re| (p.clone(), Some(re)))
                .map_err(|e| (field, i, e))
        })
        .collect()
}

fn first_match<'a>(patterns: &'a [Compiled], text: &str) -> Option<&'a str> {
    patterns
        .iter()
        .find(|(_, re)| re.as_ref().is_some_and(|re| re.is_match(text)))
        .map(|(p, _)| p.as_str())
}

impl Patterns {
    pub fn compile(policy: &RetryPolicy) -> Patterns {
        Patterns {
            permanent: compile_list(&policy.permanent_patterns),
            retryable: compile_list(&policy.retryable_patterns),
        }
    }

    /// Like [`Patterns::compile`], but a pattern that does not compile is an error naming
    /// its list (`retry.…_patterns`) and index.
    pub fn try_compile(policy: &RetryPolicy) -> Result<Patterns, PatternError> {
        // Retryable first: the order submit has always reported errors in.
        let retryable = try_compile_list("retry.retryable_patterns", &policy.retryable_patterns)?;
        let permanent = try_compile_list("retry.permanent_patterns", &policy.permanent_patterns)?;
        Ok(Patterns {
            permanent,
            retryable,
        })
    }

    /// Whether these were compiled from `policy`'s pattern lists.
    pub fn matches_policy(&self, policy: &RetryPolicy) -> bool {
        self.permanent.len() == policy.permanent_patterns.len()
            && self.retryable.len() == policy.retryable_patterns.len()
            && self
                .permanent
                .iter()
                .zip(&policy.permanent_patterns)
                .chain(self.retryable.iter().zip(&policy.retryable_patterns))
                .all(|((a, _), b)| a == b)
    }
}

/// Classifies how an attempt ended. `output_tail` is the last few KiB of its output.
///
/// Order of rules for a non-zero exit: explicit exit-code lists, then output patterns
/// (permanent before retryable), then the built-in permanent codes 126/127, then retryable.
/// `patterns` are `policy`'s output patterns, compiled ([`Patterns::compile`]).
pub fn classify(
    policy: &RetryPolicy,
    patterns: &Patterns,
    raw: &RawResult,
    output_tail: &str,
) -> Classification {
    let c = |outcome, reason: String| Classification { outcome, reason };
    match raw {
        RawResult::Exited(0) => c(AttemptState::Succeeded, "exit code 0".into()),
        RawResult::Exited(code) => {
            let code = *code;
            if policy.permanent_exit_codes.contains(&code) {
                c(
                    AttemptState::FailedPermanent,
                    format!("exit code {code} is in permanent_exit_codes"),
                )
            } else if policy.retryable_exit_codes.contains(&code) {
                c(
                    AttemptState::Failed,
                    format!("exit code {code} is in retryable_exit_codes"),
                )
            } else if let Some(p) = first_match(&patterns.permanent, output_tail) {
                c(
                    AttemptState::FailedPermanent,
                    format!("exit code {code}; output matched permanent pattern {p:?}"),
                )
            } else if let Some(p) = first_match(&patterns.retryable, output_tail) {
                c(
                    AttemptState::Failed,
                    format!("exit code {code}; output matched retryable pattern {p:?}"),
                )
            } else if PERMANENT_EXIT_CODES.contains(&code) {
                let what = if code == 127 {
                    "command not found"
                } else {
                    "command cannot execute"
                };
                c(
                    AttemptState::FailedPermanent,
                    format!("exit code {code} ({what}) is permanent"),
                )
            } else {
                c(AttemptState::Failed, format!("exit code {code}"))
            }
        }
        // A signal usually comes from outside (OOM killer, operator): worth another try.
        RawResult::Signaled(sig) => c(AttemptState::Failed, format!("killed by signal {sig}")),
        RawResult::SpawnError(e) => c(
            AttemptState::FailedPermanent,
            format!("could not start process: {e}"),
        ),
        RawResult::TimedOut => c(AttemptState::TimedOut, "exceeded its timeout".into()),
        RawResult::Cancelled => c(AttemptState::Cancelled, "cancelled".into()),
        RawResult::Released => c(
            AttemptState::Released,
            // Draining, paused or full workers hand attempts back, and so does the
            // dispatcher when it cannot deliver one: name no single cause.
            "handed back before it ran to a result (worker draining, paused, full or \
             unreachable); not counted as a retry"
                .into(),
        ),
        RawResult::Lost(why) => c(AttemptState::Lost, why.clone()),
        RawResult::OutputError(e) => c(
            AttemptState::Failed,
            format!("exit code 0, but outputs were not kept: {e}"),
        ),
        RawResult::OutOfMemory { limit_bytes } => {
            let reason = format!(
                "out of memory (limit {})",
                crate::limits::format_size(*limit_bytes)
            );
            if policy.retry_out_of_memory {
                c(AttemptState::Failed, reason)
            } else {
                c(AttemptState::FailedPermanent, reason)
            }
        }
    }
}

/// What the job does after an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Succeeded,
    /// Back to pending, to be leased after `wait`.
    Retry {
        wait: Duration,
    },
    PermanentFailed {
        reason: String,
    },
    Cancelled,
}

/// Decides the job's next step.
///
/// - `failures`: attempts of this job that counted as failures, including this one.
/// - `lost`: attempts of this job that were lost, including this one.
/// - `rand01`: a uniform random number in [0, 1), for jitter.
pub fn decide(
    policy: &RetryPolicy,
    outcome: AttemptState,
    failures: u32,
    lost: u32,
    rand01: f64,
) -> Next {
    match outcome {
        AttemptState::Succeeded => Next::Succeeded,
        AttemptState::Cancelled => Next::Cancelled,
        AttemptState::FailedPermanent => Next::PermanentFailed {
            reason: "attempt failed permanently".into(),
        },
        // Released before it started: run it again at once, nothing was used up.
        AttemptState::Released | AttemptState::Running => Next::Retry {
            wait: Duration::ZERO,
        },
        AttemptState::Lost if lost > MAX_LOST_ATTEMPTS => Next::PermanentFailed {
            reason: format!("lost {lost} times (limit {MAX_LOST_ATTEMPTS})"),
        },
        AttemptState::Lost => Next::Retry {
            wait: Duration::ZERO,
        },
        AttemptState::Failed | AttemptState::TimedOut => {
            if failures > policy.max_retries {
                Next::PermanentFailed {
                    reason: format!(
                        "failed {failures} times; max_retries is {}",
                        policy.max_retries
                    ),
                }
            } else {
                let base = policy.backoff(failures);
                let jitter = policy.jitter.clamp(0.0, 1.0) * rand01.clamp(0.0, 1.0);
                Next::Retry {
                    wait: base.mul_f64(1.0 - jitter),
                }
            }
        }
    }
}

/// An operator's cancel wins over any next step but success: a job that was being
/// cancelled is not retried, whatever its last attempt did.
pub fn unless_cancelled(next: Next, cancel_requested: bool) -> Next {
    match next {
        Next::Succeeded => Next::Succeeded,
        _ if cancel_requested => Next::Cancelled,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn defaults_match_operators_settings() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.initial_backoff_ms, 5_000);
        assert_eq!(p.multiplier, 2.0);
    }

    #[test]
    fn waits_grow_exponentially_then_cap() {
        let p = RetryPolicy {
            max_retries: 20,
            max_backoff_ms: 30_000,
            ..exact()
        };
        let waits: Vec<u64> = (1..=5)
            .map(|n| match decide(&p, AttemptState::Failed, n, 0, 0.5) {
                Next::Retry { wait } => wait.as_millis() as u64,
                other => panic!("expected retry, got {other:?}"),
            })
            .collect();
        assert_eq!(waits, vec![5_000, 10_000, 20_000, 30_000, 30_000]);
    }

    #[test]
    fn three_retries_means_four_attempts() {
        let p = exact();
        for n in 1..=3 {
            assert!(matches!(
                decide(&p, AttemptState::Failed, n, 0, 0.0),
                Next::Retry { .. }
            ));
        }
        assert!(matches!(
            decide(&p, AttemptState::Failed, 4, 0, 0.0),
            Next::PermanentFailed { .. }
        ));
        assert!(matches!(
            decide(&p, AttemptState::TimedOut, 4, 0, 0.0),
            Next::PermanentFailed { .. }
        ));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let p = RetryPolicy::default(); // jitter 0.2
        for r in [0.0, 0.3, 0.999] {
            let Next::Retry { wait } = decide(&p, AttemptState::Failed, 1, 0, r) else {
                panic!("expected retry")
            };
            assert!(wait <= Duration::from_millis(5_000), "{wait:?}");
            assert!(wait >= Duration::from_millis(4_000), "{wait:?}");
        }
    }

    #[test]
    fn lost_and_released_do_not_use_retries() {
        let p = exact();
        assert_eq!(
            decide(&p, AttemptState::Lost, 0, 5, 0.0),
            Next::Retry {
                wait: Duration::ZERO
            }
        );
        assert_eq!(
            decide(&p, AttemptState::Released, 3, 0, 0.0),
            Next::Retry {
                wait: Duration::ZERO
            }
        );
        assert!(matches!(
            decide(&p, AttemptState::Lost, 0, MAX_LOST_ATTEMPTS + 1, 0.0),
            Next::PermanentFailed { .. }
        ));
    }

    #[test]
    fn terminal_outcomes() {
        let p = exact();
        assert_eq!(
            decide(&p, AttemptState::Succeeded, 2, 0, 0.0),
            Next::Succeeded
        );
        assert_eq!(
            decide(&p, AttemptState::Cancelled, 0, 0, 0.0),
            Next::Cancelled
        );
        assert!(matches!(
            decide(&p, AttemptState::FailedPermanent, 1, 0, 0.0),
            Next::PermanentFailed { .. }
        ));
    }

    #[test]
    fn cancel_requested_stops_retries_but_not_success() {
        let retry = Next::Retry {
            wait: Duration::ZERO,
        };
        assert_eq!(unless_cancelled(retry.clone(), true), Next::Cancelled);
        assert_eq!(unless_cancelled(retry.clone(), false), retry);
        assert_eq!(unless_cancelled(Next::Succeeded, true), Next::Succeeded);
        let parked = Next::PermanentFailed { reason: "x".into() };
        assert_eq!(unless_cancelled(parked, true), Next::Cancelled);
    }

    #[test]
    fn overrides_change_only_what_they_set() {
        let base = RetryPolicy::default();
        let o = PolicyOverrides {
            max_retries: Some(7),
            initial_backoff_ms: Some(2 * 3_600_000),
            permanent_patterns: Some(vec!["HTTP 404".into()]),
            ..Default::default()
        };
        let p = o.apply(&base);
        assert_eq!(p.max_retries, 7);
        assert_eq!(p.multiplier, base.multiplier);
        assert_eq!(p.permanent_patterns, vec!["HTTP 404".to_string()]);
        assert_eq!(
            p.max_backoff_ms,
            2 * 3_600_000,
            "cap raised to the first wait"
        );
        assert_eq!(PolicyOverrides::default().apply(&base), base);
    }

    #[test]
    fn out_of_memory_is_its_own_case() {
        let oom = RawResult::OutOfMemory {
            limit_bytes: 100 << 20,
        };
        let table = [
            (false, AttemptState::FailedPermanent),
            (true, AttemptState::Failed),
        ];
        for (retry, want) in table {
            let p = RetryPolicy {
                retry_out_of_memory: retry,
                ..RetryPolicy::default()
            };
            let c = classify(&p, &Patterns::compile(&p), &oom, "");
            assert_eq!(c.outcome, want, "retry_out_of_memory={retry}");
            assert_eq!(c.reason, "out of memory (limit 100M)");
        }
        let c = classify(
            &RetryPolicy::default(),
            &Patterns::default(),
            &RawResult::OutOfMemory {
                limit_bytes: 4 << 30,
            },
            "",
        );
        assert_eq!(c.reason, "out of memory (limit 4G)");
    }

    #[test]
    fn backoff_saturates_on_extreme_policies() {
        let table = [
            (u64::MAX, 2.0, u64::MAX),
            (u64::MAX, 100.0, u64::MAX),
            (1, f64::INFINITY, u64::MAX),
            (0, f64::INFINITY, u64::MAX),
            (1, f64::NAN, u64::MAX),
            (5_000, 2.0, u64::MAX),
        ];
        for (initial, mult, max) in table {
            let p = RetryPolicy {
                initial_backoff_ms: initial,
                multiplier: mult,
                max_backoff_ms: max,
                max_retries: 1000,
                ..exact()
            };
            for failures in [1, 2, 64, 1000, u32::MAX] {
                let w = p.backoff(failures);
                assert!(
                    w <= Duration::from_millis(MAX_BACKOFF_MS),
                    "{initial} {mult} {failures}: {w:?}"
                );
                match decide(&p, AttemptState::Failed, failures.min(1000), 0, 0.3) {
                    Next::Retry { wait } => assert!(wait <= Duration::from_millis(MAX_BACKOFF_MS)),
                    Next::PermanentFailed { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn builtin_classification() {
        let p = exact();
        let out = |r: RawResult| classify(&p, &Patterns::compile(&p), &r, "").outcome;
        assert_eq!(out(RawResult::Exited(0)), AttemptState::Succeeded);
        assert_eq!(out(RawResult::Exited(1)), AttemptState::Failed);
        assert_eq!(out(RawResult::Exited(126)), AttemptState::FailedPermanent);
        assert_eq!(out(RawResult::Exited(127)), AttemptState::FailedPermanent);
        assert_eq!(
            out(RawResult::SpawnError("ENOENT".into())),
            AttemptState::FailedPermanent
        );
        assert_eq!(out(RawResult::Signaled(9)), AttemptState::Failed);
        assert_eq!(out(RawResult::TimedOut), AttemptState::TimedOut);
        assert_eq!(out(RawResult::Released), AttemptState::Released);
        let released = classify(&p, &Patterns::compile(&p), &RawResult::Released, "");
        assert!(
            released.reason.contains("not counted as a retry")
                && !released.reason.contains("by a draining worker"),
            "{}",
            released.reason
        );
        assert_eq!(out(RawResult::Lost("x".into())), AttemptState::Lost);
        assert_eq!(
            out(RawResult::OutputError("upload".into())),
            AttemptState::Failed
        );
    }

    #[test]
    fn configured_lists_and_patterns_win_in_order() {
        let p = RetryPolicy {
            retryable_exit_codes: vec![127],
            permanent_exit_codes: vec![2],
            permanent_patterns: vec!["HTTP 404".into()],
            retryable_patterns: vec!["(?i)timed out|connection reset".into()],
            ..exact()
        };
        let cl =
            |code, tail: &str| classify(&p, &Patterns::compile(&p), &RawResult::Exited(code), tail);
        assert_eq!(cl(127, "").outcome, AttemptState::Failed);
        assert_eq!(cl(2, "Timed out").outcome, AttemptState::FailedPermanent);
        let c = cl(1, "GET /x: HTTP 404\n");
        assert_eq!(c.outcome, AttemptState::FailedPermanent);
        assert!(c.reason.contains("HTTP 404"), "{}", c.reason);
        // A retryable pattern overrides the built-in permanence of 126.
        assert_eq!(cl(126, "connection reset").outcome, AttemptState::Failed);
        assert_eq!(cl(3, "boom").outcome, AttemptState::Failed);
    }
}
