//! What ending an attempt does, decided in one pure function ([`transition`]): the
//! attempt's recorded state, the job's next state, when it may run again, the reason text
//! and the outbox event's name. The store locks the rows, calls it and writes the result.

use crate::retry::{self, Next, Patterns, RawResult, RetryPolicy};
use crate::state::{AttemptState, JobState};
use std::time::Duration;

/// A job's attempt counters (as stored on the job).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Attempts that counted as failures (failed, timed out, failed permanently).
    pub failures: i32,
    /// Attempts that were lost (worker gone, lease expired).
    pub lost: i32,
}

/// The outcome of one attempt's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub attempt_state: AttemptState,
    pub job_state: JobState,
    /// How long from now until the job may be leased again; `None` leaves the job's
    /// `not_before` as it is (every state but a retry).
    pub not_before: Option<Duration>,
    /// The reason stored on the attempt and the job.
    pub reason: String,
    /// Why the attempt ended, alone (without the retry decision): failure groups use it.
    pub cause: String,
    /// The outbox event's name.
    pub event: &'static str,
    /// The job's counters including this attempt.
    pub counts: Counts,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// The outbox event a job's new state is announced with.
pub fn event_name(job_state: JobState) -> &'static str {
    match job_state {
        JobState::Pending => "job.retry_scheduled",
        JobState::Succeeded => "job.succeeded",
        JobState::PermanentFailed => "job.permanent_failed",
        JobState::Cancelled => "job.cancelled",
        JobState::Running => "job.running",
    }
}

/// Decides what ending an attempt does.
///
/// - `patterns`: `policy`'s output patterns, compiled once ([`Patterns::compile`]).
/// - `before`: the job's counters before this attempt.
/// - `cancel_requested`: an operator asked to cancel the job; it wins over anything but
///   success.
/// - `rand01`: a uniform random number in [0, 1) for the backoff's jitter.
pub fn transition(
    policy: &RetryPolicy,
    patterns: &Patterns,
    before: Counts,
    raw: &RawResult,
    output_tail: &str,
    cancel_requested: bool,
    rand01: f64,
) -> Transition {
    let cl = retry::classify(policy, patterns, raw, output_tail);
    let counts = Counts {
        failures: before
            .failures
            .saturating_add(i32::from(cl.outcome.counts_as_failure())),
        lost: before
            .lost
            .saturating_add(i32::from(cl.outcome == AttemptState::Lost)),
    };
    let next = retry::unless_cancelled(
        retry::decide(
            policy,
            cl.outcome,
            counts.failures.max(0) as u32,
            counts.lost.max(0) as u32,
            rand01,
        ),
        cancel_requested,
    );
    let (job_state, not_before, reason) = match &next {
        Next::Succeeded => (JobState::Succeeded, None, cl.reason.clone()),
        Next::Cancelled => (JobState::Cancelled, None, cl.reason.clone()),
        Next::PermanentFailed { reason } => (
            JobState::PermanentFailed,
            None,
            if cl.outcome == AttemptState::FailedPermanent {
                cl.reason.clone()
            } else {
                format!("{}; {reason}", cl.reason)
            },
        ),
        Next::Retry { wait } => (
            JobState::Pending,
            Some(*wait),
            format!("{}; retrying in {:.1}s", cl.reason, wait.as_secs_f64()),
        ),
    };
    let (exit_code, signal) = match raw {
        RawResult::Exited(c) => (Some(*c), None),
        RawResult::Signaled(s) => (None, Some(*s)),
        // The process exited 0; its outputs are what failed.
        RawResult::OutputError(_) => (Some(0), None),
        _ => (None, None),
    };
    Transition {
        attempt_state: cl.outcome,
        job_state,
        not_before,
        reason,
        cause: cl.reason,
        event: event_name(job_state),
        counts,
        exit_code,
        signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::MAX_LOST_ATTEMPTS;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            initial_backoff_ms: 1_000,
            multiplier: 2.0,
            max_backoff_ms: 60_000,
            jitter: 0.5,
            permanent_patterns: vec!["disk full".into()],
            retryable_patterns: vec!["try again".into()],
            ..RetryPolicy::default()
        }
    }

    fn counts(failures: i32, lost: i32) -> Counts {
        Counts { failures, lost }
    }

    struct Case {
        name: &'static str,
        raw: RawResult,
        tail: &'static str,
        before: Counts,
        cancel: bool,
        rand01: f64,
        attempt: AttemptState,
        job: JobState,
        wait_ms: Option<u64>,
        reason: &'static str,
        event: &'static str,
        after: Counts,
        exit_signal: (Option<i32>, Option<i32>),
    }

    #[test]
    fn every_branch() {
        use AttemptState as A;
        use JobState as J;
        let p = policy();
        let compiled = Patterns::compile(&p);
        let cases = [
            Case {
                name: "success",
                raw: RawResult::Exited(0),
                tail: "",
                before: counts(1, 1),
                cancel: false,
                rand01: 0.0,
                attempt: A::Succeeded,
                job: J::Succeeded,
                wait_ms: None,
                reason: "exit code 0",
                event: "job.succeeded",
                after: counts(1, 1),
                exit_signal: (Some(0), None),
            },
            Case {
                name: "success wins over a cancel request",
                raw: RawResult::Exited(0),
                tail: "",
                before: counts(0, 0),
                cancel: true,
                rand01: 0.0,
                attempt: A::Succeeded,
                job: J::Succeeded,
                wait_ms: None,
                reason: "exit code 0",
                event: "job.succeeded",
                after: counts(0, 0),
                exit_signal: (Some(0), None),
            },
            Case {
                name: "first failure: retry after the first backoff, no jitter drawn",
                raw: RawResult::Exited(1),
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::Pending,
                wait_ms: Some(1_000),
                reason: "exit code 1; retrying in 1.0s",
                event: "job.retry_scheduled",
                after: counts(1, 0),
                exit_signal: (Some(1), None),
            },
            Case {
                name: "second failure: doubled wait, jitter removes rand01 x jitter of it",
                raw: RawResult::Exited(3),
                tail: "",
                before: counts(1, 0),
                cancel: false,
                rand01: 0.5,
                attempt: A::Failed,
                job: J::Pending,
                wait_ms: Some(1_500),
                reason: "exit code 3; retrying in 1.5s",
                event: "job.retry_scheduled",
                after: counts(2, 0),
                exit_signal: (Some(3), None),
            },
            Case {
                name: "retries used up",
                raw: RawResult::Exited(1),
                tail: "",
                before: counts(2, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::PermanentFailed,
                wait_ms: None,
                reason: "exit code 1; failed 3 times; max_retries is 2",
                event: "job.permanent_failed",
                after: counts(3, 0),
                exit_signal: (Some(1), None),
            },
            Case {
                name: "permanent pattern: the classification is the whole reason",
                raw: RawResult::Exited(1),
                tail: "error: disk full",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::FailedPermanent,
                job: J::PermanentFailed,
                wait_ms: None,
                reason: "exit code 1; output matched permanent pattern \"disk full\"",
                event: "job.permanent_failed",
                after: counts(0, 0),
                exit_signal: (Some(1), None),
            },
            Case {
                name: "retryable pattern overrides the built-in permanent 127",
                raw: RawResult::Exited(127),
                tail: "please try again",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::Pending,
                wait_ms: Some(1_000),
                reason: "exit code 127; output matched retryable pattern \"try again\"; \
                         retrying in 1.0s",
                event: "job.retry_scheduled",
                after: counts(1, 0),
                exit_signal: (Some(127), None),
            },
            Case {
                name: "signal",
                raw: RawResult::Signaled(9),
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::Pending,
                wait_ms: Some(1_000),
                reason: "killed by signal 9; retrying in 1.0s",
                event: "job.retry_scheduled",
                after: counts(1, 0),
                exit_signal: (None, Some(9)),
            },
            Case {
                name: "timeout counts as a failure",
                raw: RawResult::TimedOut,
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::TimedOut,
                job: J::Pending,
                wait_ms: Some(1_000),
                reason: "exceeded its timeout; retrying in 1.0s",
                event: "job.retry_scheduled",
                after: counts(1, 0),
                exit_signal: (None, None),
            },
            Case {
                name: "spawn error is permanent",
                raw: RawResult::SpawnError("no such file".into()),
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::FailedPermanent,
                job: J::PermanentFailed,
                wait_ms: None,
                reason: "could not start process: no such file",
                event: "job.permanent_failed",
                after: counts(0, 0),
                exit_signal: (None, None),
            },
            Case {
                name: "outputs not kept: a failure with exit code 0",
                raw: RawResult::OutputError("out.txt missing".into()),
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::Pending,
                wait_ms: Some(1_000),
                reason: "exit code 0, but outputs were not kept: out.txt missing; \
                         retrying in 1.0s",
                event: "job.retry_scheduled",
                after: counts(1, 0),
                exit_signal: (Some(0), None),
            },
            Case {
                name: "out of memory is permanent unless retry_out_of_memory",
                raw: RawResult::OutOfMemory {
                    limit_bytes: 100 << 20,
                },
                tail: "",
                before: counts(0, 0),
                cancel: false,
                rand01: 0.0,
                attempt: A::FailedPermanent,
                job: J::PermanentFailed,
                wait_ms: None,
                reason: "out of memory (limit 100M)",
                event: "job.permanent_failed",
                after: counts(0, 0),
                exit_signal: (None, None),
            },
            Case {
                name: "lost: retried at once, not a failure",
                raw: RawResult::Lost("lease expired".into()),
                tail: "",
                before: counts(1, 0),
                cancel: false,
                rand01: 0.9,
                attempt: A::Lost,
                job: J::Pending,
                wait_ms: Some(0),
                reason: "lease expired; retrying in 0.0s",
                event: "job.retry_scheduled",
                after: counts(1, 1),
                exit_signal: (None, None),
            },
            Case {
                name: "lost too often",
                raw: RawResult::Lost("lease expired".into()),
                tail: "",
                before: counts(0, MAX_LOST_ATTEMPTS as i32),
                cancel: false,
                rand01: 0.0,
                attempt: A::Lost,
                job: J::PermanentFailed,
                wait_ms: None,
                reason: "lease expired; lost 11 times (limit 10)",
                event: "job.permanent_failed",
                after: counts(0, MAX_LOST_ATTEMPTS as i32 + 1),
                exit_signal: (None, None),
            },
            Case {
                name: "released: retried at once, nothing counted",
                raw: RawResult::Released,
                tail: "",
                before: counts(1, 1),
                cancel: false,
                rand01: 0.0,
                attempt: A::Released,
                job: J::Pending,
                wait_ms: Some(0),
                reason: "handed back before it ran to a result (worker draining, paused, \
                         full or unreachable); not counted as a retry; retrying in 0.0s",
                event: "job.retry_scheduled",
                after: counts(1, 1),
                exit_signal: (None, None),
            },
            Case {
                name: "cancelled by the worker",
                raw: RawResult::Cancelled,
                tail: "",
                before: counts(0, 0),
                cancel: true,
                rand01: 0.0,
                attempt: A::Cancelled,
                job: J::Cancelled,
                wait_ms: None,
                reason: "cancelled",
                event: "job.cancelled",
                after: counts(0, 0),
                exit_signal: (None, None),
            },
            Case {
                name: "a cancel request stops a retry",
                raw: RawResult::Exited(1),
                tail: "",
                before: counts(0, 0),
                cancel: true,
                rand01: 0.0,
                attempt: A::Failed,
                job: J::Cancelled,
                wait_ms: None,
                reason: "exit code 1",
                event: "job.cancelled",
                after: counts(1, 0),
                exit_signal: (Some(1), None),
            },
            Case {
                name: "a cancel request wins over a permanent failure",
                raw: RawResult::Exited(126),
                tail: "",
                before: counts(0, 0),
                cancel: true,
                rand01: 0.0,
                attempt: A::FailedPermanent,
                job: J::Cancelled,
                wait_ms: None,
                reason: "exit code 126 (command cannot execute) is permanent",
                event: "job.cancelled",
                after: counts(0, 0),
                exit_signal: (Some(126), None),
            },
        ];
        for c in cases {
            let t = transition(&p, &compiled, c.before, &c.raw, c.tail, c.cancel, c.rand01);
            assert_eq!(t.attempt_state, c.attempt, "{}", c.name);
            assert_eq!(t.job_state, c.job, "{}", c.name);
            assert_eq!(
                t.not_before,
                c.wait_ms.map(Duration::from_millis),
                "{}",
                c.name
            );
            assert_eq!(t.reason, c.reason, "{}", c.name);
            assert!(t.reason.starts_with(&t.cause), "{}", c.name);
            assert_eq!(t.event, c.event, "{}", c.name);
            assert_eq!(t.counts, c.after, "{}", c.name);
            assert_eq!((t.exit_code, t.signal), c.exit_signal, "{}", c.name);
        }
    }

    #[test]
    fn uncompiled_patterns_never_match() {
        // Patterns that were not compiled for this policy (or failed to) match nothing,
        // so the built-in rules decide.
        let p = policy();
        let t = transition(
            &p,
            &Patterns::default(),
            Counts::default(),
            &RawResult::Exited(1),
            "disk full",
            false,
            0.0,
        );
        assert_eq!(t.attempt_state, AttemptState::Failed);
    }

    #[test]
    fn event_names() {
        assert_eq!(event_name(JobState::Running), "job.running");
        for s in JobState::ALL {
            assert!(event_name(s).starts_with("job."));
        }
    }

    #[test]
    fn counters_saturate() {
        let p = policy();
        let t = transition(
            &p,
            &Patterns::compile(&p),
            counts(i32::MAX, i32::MAX),
            &RawResult::Lost("x".into()),
            "",
            false,
            0.0,
        );
        assert_eq!(t.counts, counts(i32::MAX, i32::MAX));
        assert_eq!(t.job_state, JobState::PermanentFailed);
    }
}
