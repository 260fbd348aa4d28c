//! The lower-case names of the API's worker states and health verdicts, as JSON and
//! droverctl show them: the one conversion each way between the enums and text.

use crate::v1::{HealthStatus, WorkerState};

impl WorkerState {
    pub const ALL: [WorkerState; 5] = [
        WorkerState::Alive,
        WorkerState::Stale,
        WorkerState::Draining,
        WorkerState::Paused,
        WorkerState::Offline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Unspecified => "unknown",
            WorkerState::Alive => "alive",
            WorkerState::Stale => "stale",
            WorkerState::Draining => "draining",
            WorkerState::Paused => "paused",
            WorkerState::Offline => "offline",
        }
    }

    pub fn from_name(s: &str) -> Option<WorkerState> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The name of a state as carried on the wire (an unknown number is "unknown").
    pub fn name_of(v: i32) -> &'static str {
        WorkerState::try_from(v)
            .unwrap_or(WorkerState::Unspecified)
            .name()
    }
}

impl HealthStatus {
    pub const ALL: [HealthStatus; 3] = [
        HealthStatus::Ok,
        HealthStatus::Degraded,
        HealthStatus::Failing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HealthStatus::Unspecified => "unknown",
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Failing => "failing",
        }
    }

    pub fn from_name(s: &str) -> Option<HealthStatus> {
        Self::ALL.into_iter().find(|h| h.name() == s)
    }

    pub fn name_of(v: i32) -> &'static str {
        HealthStatus::try_from(v)
            .unwrap_or(HealthStatus::Unspecified)
            .name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in WorkerState::ALL {
            assert_eq!(WorkerState::from_name(w.name()), Some(w));
            assert_eq!(WorkerState::name_of(w as i32), w.name());
        }
        for h in HealthStatus::ALL {
            assert_eq!(HealthStatus::from_name(h.name()), Some(h));
            assert_eq!(HealthStatus::name_of(h as i32), h.name());
        }
        assert_eq!(WorkerState::name_of(99), "unknown");
        assert_eq!(HealthStatus::from_name("unknown"), None);
    }
}
