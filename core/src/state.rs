//! Job and attempt states, as stored in PostgreSQL (text columns) and shown to operators.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    PermanentFailed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Succeeded,
        JobState::PermanentFailed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::PermanentFailed => "permanent_failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Terminal states never change again (manual retry creates a new job).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::PermanentFailed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    Running,
    Succeeded,
    Failed,
    FailedPermanent,
    TimedOut,
    Lost,
    Cancelled,
    Released,
}

impl AttemptState {
    pub const ALL: [AttemptState; 8] = [
        AttemptState::Running,
        AttemptState::Succeeded,
        AttemptState::Failed,
        AttemptState::FailedPermanent,
        AttemptState::TimedOut,
        AttemptState::Lost,
        AttemptState::Cancelled,
        AttemptState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::FailedPermanent => "failed_permanent",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Lost => "lost",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Released => "released",
        }
    }

    /// Whether an attempt that ended this way uses up one of the job's retries.
    /// Lost and released attempts are the infrastructure's fault, not the job's.
    pub fn counts_as_failure(self) -> bool {
        matches!(self, AttemptState::Failed | AttemptState::TimedOut)
    }
}

/// A worker as the coordinator sees it. Never stored: it follows from when the worker was
/// last heard from ([`worker_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Heard from within a lease TTL and taking work.
    Alive,
    /// No heartbeat for a lease TTL: it may have died.
    Stale,
    /// Finishing its attempts, taking no new ones.
    Draining,
    /// Taking no new work until its host recovers.
    Paused,
    /// Left: not heard from for [`WORKER_OFFLINE_AFTER_MS`].
    Offline,
}

/// A worker not heard from for this long has left (offline): still listed, but no longer
/// holding the health verdict at degraded.
pub const WORKER_OFFLINE_AFTER_MS: i64 = 3600 * 1000;

/// A worker's state from how long ago it was heard from and what it last reported.
pub fn worker_state(
    seen_ago_ms: i64,
    lease_ttl_ms: i64,
    draining: bool,
    paused: bool,
) -> WorkerState {
    if seen_ago_ms > WORKER_OFFLINE_AFTER_MS.max(lease_ttl_ms) {
        WorkerState::Offline
    } else if seen_ago_ms > lease_ttl_ms {
        WorkerState::Stale
    } else if draining {
        WorkerState::Draining
    } else if paused {
        WorkerState::Paused
    } else {
        WorkerState::Alive
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl FromStr for AttemptState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttemptState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_states() {
        let ttl = 8_000;
        let state = |ago, draining, paused| worker_state(ago, ttl, draining, paused);
        assert_eq!(state(100, false, false), WorkerState::Alive);
        assert_eq!(state(100, true, false), WorkerState::Draining);
        assert_eq!(state(100, false, true), WorkerState::Paused);
        assert_eq!(state(ttl, false, false), WorkerState::Alive);
        assert_eq!(state(ttl + 1, true, true), WorkerState::Stale);
        assert_eq!(
            state(WORKER_OFFLINE_AFTER_MS, false, false),
            WorkerState::Stale
        );
        assert_eq!(
            state(WORKER_OFFLINE_AFTER_MS + 1, false, false),
            WorkerState::Offline
        );
        // A lease TTL longer than the offline bound: stale first, never offline early.
        let long = 2 * WORKER_OFFLINE_AFTER_MS;
        assert_eq!(
            worker_state(WORKER_OFFLINE_AFTER_MS + 1, long, false, false),
            WorkerState::Alive
        );
        assert_eq!(
            worker_state(long + 1, long, false, false),
            WorkerState::Offline
        );
    }

    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
        for s in AttemptState::ALL {
            assert_eq!(s.as_str().parse::<AttemptState>(), Ok(s));
        }
        assert!("done".parse::<JobState>().is_err());
    }

    #[test]
    fn only_final_states_are_terminal() {
        assert!(!JobState::Pending.is_terminal());
        assert!(!JobState::Running.is_terminal());
        assert!(JobState::Succeeded.is_terminal());
        assert!(JobState::PermanentFailed.is_terminal());
        assert!(JobState::Cancelled.is_terminal());
    }
}
