//! Cron schedules: parsing, fire times in a time zone, and which due ticks to run after a
//! pause in scheduling (catch-up). Pure functions; the coordinator stores the results.
//!
//! Cron expressions have five fields (minute hour day-of-month month day-of-week) or six
//! with a leading seconds field. Fire times are computed by croner in the schedule's IANA
//! time zone, so daylight-saving changes follow croner's rules: a wall-clock time skipped
//! by a spring-forward fires once just after the gap (02:30 on a day that jumps from 02:00
//! to 03:00 fires at 03:00); a daily time repeated by a fall-back fires once, at its first
//! occurrence, while an hourly schedule fires in both repeated hours (each is a real hour).

use crate::validate::{check_name, ValidationError};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use std::str::FromStr;

pub const MAX_CRON_LEN: usize = 256;
pub const MAX_TIMEZONE_LEN: usize = 64;
/// Upper bound on ticks created for one schedule in one pass with catch-up `all`; older
/// missed ticks are dropped (and counted).
pub const MAX_CATCH_UP: usize = 100;
/// Param names filled from the tick.
pub const PARAM_SCHEDULED_AT: &str = "scheduled_at";
pub const PARAM_SCHEDULED_DATE: &str = "scheduled_date";

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

/// What to do with ticks that came due while nobody was scheduling (coordinators down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Missed ticks are not run; only a tick no older than the grace period runs.
    Skip,
    /// Only the latest missed tick runs (besides ticks that are on time).
    Once,
    /// Every missed tick runs, oldest first, at most [`MAX_CATCH_UP`] of them (the latest).
    All,
}

/// What to do with a tick while the schedule's previous run is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Run it anyway.
    Allow,
    /// Record it as skipped.
    Skip,
    /// Hold it until the previous run finishes, then run it.
    Queue,
}

macro_rules! str_enum {
    ($t:ty, $field:literal, $($v:ident = $s:literal),+) => {
        impl $t {
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl FromStr for $t {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, ValidationError> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(err($field, format!(
                        "{other:?} is not one of {}", [$($s),+].join(", ")))),
                }
            }
        }
    };
}
str_enum!(
    CatchUp,
    "catch_up",
    Skip = "skip",
    Once = "once",
    All = "all"
);
str_enum!(
    Overlap,
    "overlap",
    Allow = "allow",
    Skip = "skip",
    Queue = "queue"
);

impl CronSchedule {
    /// Parses `expr` (5 or 6 fields) in time zone `timezone` (IANA name, e.g. Asia/Tokyo;
    /// empty means UTC).
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSchedule, ValidationError> {
        if expr.len() > MAX_CRON_LEN {
            return Err(err("cron", format!("at most {MAX_CRON_LEN} bytes")));
        }
        let fields = expr.split_whitespace().count();
        let seconds = match fields {
            5 => Seconds::Disallowed,
            6 => Seconds::Required,
            n => {
                return Err(err(
                    "cron",
                    format!(
                        "{expr:?} has {n} fields; use 5 (minute hour day month weekday) \
                         or 6 (seconds first)"
                    ),
                ))
            }
        };
        let cron = CronParser::builder()
            .seconds(seconds)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| err("cron", format!("{expr:?}: {e}")))?;
        Ok(CronSchedule {
            cron,
            tz: parse_timezone(timezone)?,
        })
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first `n` fire times strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The params a job fired at `tick` gets: the tick in the schedule's zone as RFC 3339
    /// (`scheduled_at`) and its calendar date (`scheduled_date`, YYYY-MM-DD).
    pub fn tick_params(&self, tick: DateTime<Utc>) -> [(String, String); 2] {
        let local = tick.with_timezone(&self.tz);
        [
            (
                PARAM_SCHEDULED_AT.into(),
                local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            ),
            (
                PARAM_SCHEDULED_DATE.into(),
                local.format("%Y-%m-%d").to_string(),
            ),
        ]
    }
}

pub fn parse_timezone(timezone: &str) -> Result<Tz, ValidationError> {
    if timezone.is_empty() {
        return Ok(Tz::UTC);
    }
    if timezone.len() > MAX_TIMEZONE_LEN {
        return Err(err("timezone", format!("at most {MAX_TIMEZONE_LEN} bytes")));
    }
    timezone.parse::<Tz>().map_err(|_| {
        err(
            "timezone",
            format!("{timezone:?} is not an IANA time zone name (e.g. Asia/Tokyo, UTC)"),
        )
    })
}

/// A schedule name: same rules as a queue name.
pub fn check_schedule_name(name: &str) -> Result<(), ValidationError> {
    check_name("name", name)
}

/// Which ticks to create in one scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTicks {
    /// Ticks to record and run, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Due ticks dropped by the catch-up policy or its bound (a lower bound when an outage
    /// held more than [`MAX_CATCH_UP`] missed ticks: those are not counted one by one).
    pub dropped: usize,
    /// Where the next pass starts: the first tick after `now`.
    pub next: Option<DateTime<Utc>>,
}

/// The ticks due in `[from, now]` (`from` is the schedule's stored next fire time, itself a
/// tick) and what the catch-up policy keeps of them. A tick older than `grace` is "missed"
/// (nobody scheduled it in time); ticks within `grace` always run. The work is bounded
/// after any outage: only the last `MAX_CATCH_UP` missed ticks are ever looked at.
pub fn due_ticks(
    s: &CronSchedule,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: CatchUp,
    grace: chrono::Duration,
) -> DueTicks {
    let mut missed: Vec<DateTime<Utc>> = Vec::new();
    let mut on_time: Vec<DateTime<Utc>> = Vec::new();
    let mut dropped = 0usize;
    let late_before = now - grace;
    // `from` is normally a tick (it came from next_after); check rather than assume.
    let mut t = if s.cron.is_time_matching(&from.with_timezone(&s.tz)).ok() == Some(true) {
        Some(from)
    } else {
        s.next_after(from)
    };
    // After a long outage, jump to the last MAX_CATCH_UP missed ticks instead of walking
    // every tick in between (a year of one-second ticks): walk back from `late_before`.
    if let Some(first) = t.filter(|f| *f < late_before) {
        let mut back = Vec::with_capacity(MAX_CATCH_UP);
        let mut cursor = late_before;
        while back.len() < MAX_CATCH_UP {
            match s.previous_before(cursor) {
                Some(p) if p > first => {
                    back.push(p);
                    cursor = p;
                }
                _ => break,
            }
        }
        if back.len() == MAX_CATCH_UP {
            // At least `first` itself lies before the kept window.
            dropped += 1;
            t = back.last().copied();
        }
    }
    while let Some(tick) = t {
        if tick > now {
            break;
        }
        if tick < late_before {
            missed.push(tick);
            if missed.len() > MAX_CATCH_UP {
                missed.remove(0);
                dropped += 1;
            }
        } else {
            on_time.push(tick);
        }
        t = s.next_after(tick);
    }
    let kept_missed: Vec<DateTime<Utc>> = match policy {
        CatchUp::Skip => {
            dropped += missed.len();
            Vec::new()
        }
        CatchUp::Once => {
            let last = missed.pop();
            dropped += missed.len();
            last.into_iter().collect()
        }
        CatchUp::All => missed,
    };
    let mut fire = kept_missed;
    fire.extend(on_time);
    DueTicks {
        fire,
        dropped,
        next: s.next_after(now),
    }
}

impl CronSchedule {
    fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|x| x.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(s: &CronSchedule, t: DateTime<Utc>) -> String {
        t.with_timezone(&s.timezone())
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    #[test]
    fn next_fire_times_table() {
        // (cron, zone, after (UTC), expected next 3 in local time)
        let cases: &[(&str, &str, &str, [&str; 3])] = &[
            (
                "0 6 * * *",
                "Asia/Tokyo",
                "2026-11-26T20:59:59Z",
                [
                    "2026-11-27 06:00:00 JST",
                    "2026-11-28 06:00:00 JST",
                    "2026-11-29 06:00:00 JST",
                ],
            ),
            (
                "*/10 * * * * *",
                "UTC",
                "2026-11-27T00:00:05Z",
                [
                    "2026-11-27 00:00:10 UTC",
                    "2026-11-27 00:00:20 UTC",
                    "2026-11-27 00:00:30 UTC",
                ],
            ),
            // Spring forward in New York on 2026-03-08: 02:00 EST jumps to 03:00 EDT.
            // 02:30 does not exist that day; croner fires once just after the gap.
            (
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T05:00:00Z",
                [
                    "2026-03-07 02:30:00 EST",
                    "2026-03-08 03:00:00 EDT",
                    "2026-03-09 02:30:00 EDT",
                ],
            ),
            // Fall back on 2026-11-01: 01:30 happens twice (EDT, then EST); fires once.
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T04:00:00Z",
                [
                    "2026-10-31 01:30:00 EDT",
                    "2026-11-01 01:30:00 EDT",
                    "2026-11-02 01:30:00 EST",
                ],
            ),
            // An hourly schedule across the fall-back keeps firing every real hour, so the
            // repeated 01:00 runs in both offsets (croner matches the wall clock per instant).
            (
                "0 * * * *",
                "America/New_York",
                "2026-11-01T04:30:00Z",
                [
                    "2026-11-01 01:00:00 EDT",
                    "2026-11-01 01:00:00 EST",
                    "2026-11-01 02:00:00 EST",
                ],
            ),
            // Tokyo has no DST: the same wall-clock time every day.
            (
                "0 0 6 1 * *",
                "Asia/Tokyo",
                "2026-01-01T00:00:00Z",
                [
                    "2026-02-01 06:00:00 JST",
                    "2026-03-01 06:00:00 JST",
                    "2026-04-01 06:00:00 JST",
                ],
            ),
        ];
        for (cron, tz, after, want) in cases {
            let s = CronSchedule::parse(cron, tz).unwrap();
            let got: Vec<String> = s
                .upcoming(utc(after), 3)
                .into_iter()
                .map(|t| local(&s, t))
                .collect();
            assert_eq!(got, want.to_vec(), "{cron} in {tz} after {after}");
        }
    }

    #[test]
    fn refuses_bad_expressions_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("0 6 * *", "UTC", "cron"),
            ("0 0 6 * * * 2027", "UTC", "cron"),
            ("61 * * * *", "UTC", "cron"),
            ("* * * * *", "Mars/Olympus", "timezone"),
            ("* * * * *", &"x".repeat(65), "timezone"),
        ];
        for (cron, tz, field) in cases {
            let e = CronSchedule::parse(cron, tz).unwrap_err();
            assert_eq!(e.field, *field, "{cron} {tz}: {e}");
        }
        let long = format!("{} * * * *", "1,".repeat(200));
        assert_eq!(CronSchedule::parse(&long, "UTC").unwrap_err().field, "cron");
    }

    #[test]
    fn tick_params_use_the_tick_in_the_zone() {
        let s = CronSchedule::parse("0 6 * * *", "Asia/Tokyo").unwrap();
        let tick = Utc.with_ymd_and_hms(2026, 11, 26, 21, 0, 0).unwrap();
        let p = s.tick_params(tick);
        assert_eq!(p[0].1, "2026-11-27T06:00:00+09:00");
        assert_eq!(p[1].1, "2026-11-27");
    }

    #[test]
    fn catch_up_policies() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let from = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:00:10Z");
        let grace = chrono::Duration::seconds(2);
        // Ticks 00..10 are due; 08, 09 and 10 are within the grace period.
        let all = due_ticks(&s, from, now, CatchUp::All, grace);
        assert_eq!(all.fire.len(), 11);
        assert_eq!(all.dropped, 0);
        assert_eq!(all.next, Some(utc("2026-01-01T00:00:11Z")));
        let skip = due_ticks(&s, from, now, CatchUp::Skip, grace);
        assert_eq!(
            skip.fire,
            vec![
                utc("2026-01-01T00:00:08Z"),
                utc("2026-01-01T00:00:09Z"),
                utc("2026-01-01T00:00:10Z")
            ]
        );
        assert_eq!(skip.dropped, 8);
        // `once`: the latest missed tick (07) stands for all of them, then the on-time ones.
        let once = due_ticks(&s, from, now, CatchUp::Once, grace);
        assert_eq!(
            once.fire,
            vec![
                utc("2026-01-01T00:00:07Z"),
                utc("2026-01-01T00:00:08Z"),
                utc("2026-01-01T00:00:09Z"),
                utc("2026-01-01T00:00:10Z")
            ]
        );
        assert_eq!(once.dropped, 7);
        let once_late = due_ticks(
            &s,
            from,
            now + chrono::Duration::milliseconds(500),
            CatchUp::Once,
            chrono::Duration::zero(),
        );
        assert_eq!(once_late.fire, vec![now]);
        assert_eq!(once_late.dropped, 10);
        // Nothing due yet.
        let none = due_ticks(
            &s,
            now,
            now - chrono::Duration::seconds(1),
            CatchUp::All,
            grace,
        );
        assert!(none.fire.is_empty());
        assert_eq!(none.next, Some(now));
    }

    #[test]
    fn catch_up_all_is_bounded_after_a_long_outage() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let from = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-02T00:00:00Z"); // a day of one-second ticks behind
        let d = due_ticks(&s, from, now, CatchUp::All, chrono::Duration::seconds(1));
        assert_eq!(
            d.fire.len(),
            MAX_CATCH_UP + 2,
            "bounded missed + on-time ticks"
        );
        assert!(d.dropped > 0);
        assert_eq!(d.fire.last(), Some(&now));
        assert!(d.fire.windows(2).all(|w| w[0] < w[1]));
        // The most recent missed ticks are the ones kept.
        assert_eq!(d.fire[MAX_CATCH_UP - 1], now - chrono::Duration::seconds(2));
    }

    #[test]
    fn policy_names_round_trip() {
        for p in ["skip", "once", "all"] {
            assert_eq!(p.parse::<CatchUp>().unwrap().as_str(), p);
        }
        for p in ["allow", "skip", "queue"] {
            assert_eq!(p.parse::<Overlap>().unwrap().as_str(), p);
        }
        assert_eq!("never".parse::<Overlap>().unwrap_err().field, "overlap");
    }
}
