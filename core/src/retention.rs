//! Retention: how long finished things are kept, and the time partitions of the log store.
//!
//! Pure functions only; the leader applies them with SQL (coordinator `store/retention.rs`).

use crate::JobState;
use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;

/// How long finished jobs are kept, per final state, after they finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHorizons {
    pub succeeded: Duration,
    pub permanent_failed: Duration,
    pub cancelled: Duration,
}

impl Default for JobHorizons {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        JobHorizons {
            succeeded: Duration::from_secs(30 * DAY),
            permanent_failed: Duration::from_secs(90 * DAY),
            cancelled: Duration::from_secs(30 * DAY),
        }
    }
}

impl JobHorizons {
    /// The horizon of a job in `state`; `None` for a job that is not finished (never deleted).
    pub fn of(&self, state: JobState) -> Option<Duration> {
        match state {
            JobState::Succeeded => Some(self.succeeded),
            JobState::PermanentFailed => Some(self.permanent_failed),
            JobState::Cancelled => Some(self.cancelled),
            JobState::Pending | JobState::Running => None,
        }
    }

    /// Every final state with its horizon.
    pub fn all(&self) -> [(JobState, Duration); 3] {
        [
            (JobState::Succeeded, self.succeeded),
            (JobState::PermanentFailed, self.permanent_failed),
            (JobState::Cancelled, self.cancelled),
        ]
    }
}

/// Whether a job may be deleted by retention: finished longer than its state's horizon ago,
/// and nothing that is kept refers to it (a retry or rerun of it, a job that depends on it,
/// which is how an unfinished retry chain or dependency keeps its ancestors).
pub fn job_expired(
    h: &JobHorizons,
    state: JobState,
    finished_at: Option<DateTime<Utc>>,
    referenced: bool,
    now: DateTime<Utc>,
) -> bool {
    let (Some(horizon), Some(finished)) = (h.of(state), finished_at) else {
        return false;
    };
    if referenced {
        return false;
    }
    match chrono::Duration::from_std(horizon) {
        Ok(h) => finished < now - h,
        Err(_) => false,
    }
}

/// A time range `[lo, hi)` of one log partition; `lo` is `None` for the partition that holds
/// logs stored before partitioning (it starts at MINVALUE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: Option<DateTime<Utc>>,
    pub hi: DateTime<Utc>,
}

impl Range {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.lo.is_none_or(|lo| lo <= t) && t < self.hi
    }
}

/// Start of the period of length `period` (aligned to the Unix epoch, UTC) that holds `t`.
pub fn period_start(t: DateTime<Utc>, period: Duration) -> DateTime<Utc> {
    let p = period.as_secs().max(1) as i64;
    let s = t.timestamp().div_euclid(p) * p;
    Utc.timestamp_opt(s, 0).single().unwrap_or(t)
}

/// The range of a new partition for time `t`, which no existing partition holds: the period
/// of `t`, shortened where it would overlap an existing partition (the period may have
/// been changed since those were made).
pub fn partition_for(t: DateTime<Utc>, period: Duration, existing: &[Range]) -> Range {
    let step = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::days(1));
    let mut lo = period_start(t, period);
    let mut hi = lo + step;
    for r in existing {
        if r.hi <= t && r.hi > lo {
            lo = r.hi;
        }
        if let Some(rlo) = r.lo {
            if rlo > t && rlo < hi {
                hi = rlo;
            }
        }
    }
    Range { lo: Some(lo), hi }
}

/// The partitions to create so that every time from `now` until `now + ahead` has one.
pub fn partitions_to_create(
    now: DateTime<Utc>,
    period: Duration,
    ahead: Duration,
    existing: &[Range],
) -> Vec<Range> {
    let end = now + chrono::Duration::from_std(ahead).unwrap_or(chrono::Duration::days(1));
    let mut all = existing.to_vec();
    let mut out = Vec::new();
    let mut t = now;
    // Bounded: each step moves past one partition; a period is at least a second.
    while t < end && out.len() < 10_000 {
        match all.iter().find(|r| r.contains(t)) {
            Some(r) => t = r.hi,
            None => {
                let r = partition_for(t, period, &all);
                out.push(r);
                all.push(r);
                t = r.hi;
            }
        }
    }
    out
}

/// The table name of the partition starting at `lo` (UTC, to the second).
pub fn partition_name(prefix: &str, lo: DateTime<Utc>) -> String {
    format!("{prefix}_p{}", lo.format("%Y%m%d_%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn job_expiry_per_state_and_references() {
        let h = JobHorizons::default();
        let now = t("2026-06-01T00:00:00Z");
        let ago = |d: i64| Some(now - chrono::Duration::days(d));
        assert!(job_expired(&h, JobState::Succeeded, ago(31), false, now));
        assert!(!job_expired(&h, JobState::Succeeded, ago(29), false, now));
        assert!(!job_expired(
            &h,
            JobState::PermanentFailed,
            ago(31),
            false,
            now
        ));
        assert!(job_expired(
            &h,
            JobState::PermanentFailed,
            ago(91),
            false,
            now
        ));
        assert!(job_expired(&h, JobState::Cancelled, ago(31), false, now));
        // Never a job that is not finished, and never one something kept refers to.
        assert!(!job_expired(&h, JobState::Pending, ago(1000), false, now));
        assert!(!job_expired(&h, JobState::Running, ago(1000), false, now));
        assert!(!job_expired(&h, JobState::Succeeded, None, false, now));
        assert!(!job_expired(&h, JobState::Succeeded, ago(1000), true, now));
    }

    #[test]
    fn partitions_cover_ahead_without_overlap() {
        let now = t("2026-11-27T05:30:00Z");
        let made = partitions_to_create(now, DAY, 3 * DAY, &[]);
        assert_eq!(made.len(), 4);
        assert_eq!(made[0].lo, Some(t("2026-11-27T00:00:00Z")));
        assert_eq!(made[3].hi, t("2026-12-01T00:00:00Z"));
        for w in made.windows(2) {
            assert_eq!(Some(w[0].hi), w[1].lo);
        }
        // Nothing more to make a minute later.
        let later = now + chrono::Duration::minutes(1);
        assert!(partitions_to_create(later, DAY, 3 * DAY, &made).is_empty());
    }

    #[test]
    fn a_changed_period_fills_gaps_and_never_overlaps() {
        let legacy = Range {
            lo: None,
            hi: t("1970-01-01T00:00:00Z"),
        };
        let day = Range {
            lo: Some(t("2026-11-27T00:00:00Z")),
            hi: t("2026-11-28T00:00:00Z"),
        };
        // Hourly now; a gap before the daily partition and after it.
        let now = t("2026-11-26T22:30:00Z");
        let made = partitions_to_create(now, Duration::from_secs(3600), 3 * DAY, &[legacy, day]);
        let mut all = vec![legacy, day];
        all.extend(made.iter().copied());
        all.sort_by_key(|r| r.lo);
        for w in all.windows(2) {
            assert!(w[0].hi <= w[1].lo.unwrap(), "{w:?} overlap");
        }
        assert_eq!(made[0].lo, Some(t("2026-11-26T22:00:00Z")));
        assert_eq!(made[1].hi, t("2026-11-27T00:00:00Z"));
        assert!(made.iter().any(|r| r.lo == Some(t("2026-11-28T00:00:00Z"))));
    }

    #[test]
    fn gaps_are_filled_up_to_the_next_partition() {
        let day = Range {
            lo: Some(t("2026-11-28T00:00:00Z")),
            hi: t("2026-11-29T00:00:00Z"),
        };
        let p = partition_for(t("2026-11-27T12:00:00Z"), 7 * DAY, &[day]);
        assert!(p.contains(t("2026-11-27T12:00:00Z")));
        assert_eq!(p.hi, t("2026-11-28T00:00:00Z"));
    }

    #[test]
    fn names_sort_by_time() {
        assert_eq!(
            partition_name("log_chunks", t("2026-11-27T05:01:02Z")),
            "log_chunks_p20261127_050102"
        );
    }
}
