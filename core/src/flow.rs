//! Flow control settings on a job: concurrency keys and their limit.

use crate::validate::ValidationError;

pub const MAX_KEYS: usize = 16;
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_CONCURRENCY_LIMIT: u32 = 10_000;
pub const MAX_PRIORITY: i32 = 1000;

pub fn check_priority(field: &str, p: i32) -> Result<(), ValidationError> {
    // Not negative: a negative rank shift would move the job's ready time into the future,
    // delaying it even on an idle system.
    if !(0..=MAX_PRIORITY).contains(&p) {
        return Err(err(field, format!("must be 0 to {MAX_PRIORITY}, got {p}")));
    }
    Ok(())
}

/// How far into the past a job of `priority` has its ready time moved: it ranks as if it
/// had been waiting `priority x aging_ms` longer.
pub fn priority_shift_ms(priority: i32, aging_ms: u64) -> i64 {
    i64::from(priority).saturating_mul(i64::try_from(aging_ms).unwrap_or(i64::MAX))
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a job's concurrency keys (e.g. `site:netkeiba`) and returns them sorted without
/// duplicates: 1 to 128 bytes of printable ASCII without spaces, at most 16 per job.
pub fn check_keys(keys: &[String]) -> Result<Vec<String>, ValidationError> {
    if keys.len() > MAX_KEYS {
        return Err(err(
            "concurrency_keys",
            format!("{} keys; the limit is {MAX_KEYS}", keys.len()),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(err(
                format!("concurrency_keys[{i}]"),
                format!("must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
        if let Some(c) = k.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(err(
                format!("concurrency_keys[{i}]"),
                format!("{k:?} contains {c:?}; use printable ASCII without spaces"),
            ));
        }
    }
    let mut out = keys.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The limit for `key`: the one given at submit (non-zero), else that of the longest
/// configured pattern (glob, e.g. `site:*`) that matches, else 1.
pub fn limit_for(key: &str, given: u32, patterns: &[(String, u32)]) -> u32 {
    if given > 0 {
        return given;
    }
    patterns
        .iter()
        .filter(|(p, _)| {
            glob::Pattern::new(p)
                .map(|p| p.matches(key))
                .unwrap_or(false)
        })
        .max_by_key(|(p, _)| p.len())
        .map(|(_, l)| *l)
        .unwrap_or(1)
}

pub fn check_limit(field: &str, limit: u32) -> Result<(), ValidationError> {
    if limit > MAX_CONCURRENCY_LIMIT {
        return Err(err(
            field,
            format!("must be at most {MAX_CONCURRENCY_LIMIT}, got {limit}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_sorted_and_deduplicated() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_keys(&k(&["site:b", "site:a", "site:b"])).unwrap(),
            k(&["site:a", "site:b"])
        );
        let cases: &[(Vec<String>, &str)] = &[
            (k(&[""]), "concurrency_keys[0]"),
            (k(&["ok", "has space"]), "concurrency_keys[1]"),
            (vec!["x".repeat(129)], "concurrency_keys[0]"),
            (vec!["k".to_string(); 17], "concurrency_keys"),
        ];
        for (keys, field) in cases {
            assert_eq!(check_keys(keys).unwrap_err().field, *field);
        }
    }

    #[test]
    fn limit_comes_from_submit_then_pattern_then_one() {
        let pats = vec![("*".to_string(), 5), ("site:*".to_string(), 2)];
        assert_eq!(limit_for("site:netkeiba", 3, &pats), 3);
        assert_eq!(limit_for("site:netkeiba", 0, &pats), 2);
        assert_eq!(limit_for("db:main", 0, &pats), 5);
        assert_eq!(limit_for("db:main", 0, &[]), 1);
        assert!(check_limit("concurrency_limit", 10_001).is_err());
        assert!(check_priority("priority", 1001).is_err());
        assert!(check_priority("priority", -1).is_err());
        assert!(check_priority("priority", 1000).is_ok());
        assert_eq!(priority_shift_ms(3, 60_000), 180_000);
    }
}

/// A token bucket: `per_sec` tokens added each second, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

pub const MAX_RATE_COUNT: u32 = 100_000;

/// Parses `N/s`, `N/min` or `N/h` (N from 1 to 100000): at most N starts per period, with a
/// bucket of N (so up to N may start at once after an idle period).
pub fn parse_rate(field: &str, s: &str) -> Result<Rate, ValidationError> {
    let bad = || err(field, format!("{s:?}: use N/s, N/min or N/h, e.g. 30/min"));
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || n > MAX_RATE_COUNT {
        return Err(err(
            field,
            format!("{s:?}: N must be 1 to {MAX_RATE_COUNT}"),
        ));
    }
    let secs = match unit.trim() {
        "s" | "sec" => 1.0,
        "min" | "m" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    Ok(Rate {
        per_sec: f64::from(n) / secs,
        burst: f64::from(n),
    })
}

/// The value of the longest glob pattern that matches `key`, if any.
fn longest_match<T: Copy>(key: &str, patterns: &[(String, T)]) -> Option<T> {
    patterns
        .iter()
        .filter(|(p, _)| {
            glob::Pattern::new(p)
                .map(|p| p.matches(key))
                .unwrap_or(false)
        })
        .max_by_key(|(p, _)| p.len())
        .map(|(_, v)| *v)
}

/// The rate of the longest matching pattern, if any.
pub fn rate_for(key: &str, patterns: &[(String, Rate)]) -> Option<Rate> {
    longest_match(key, patterns)
}

/// The concurrency limit of the longest matching pattern, if any.
pub fn pattern_limit(key: &str, patterns: &[(String, u32)]) -> Option<u32> {
    longest_match(key, patterns)
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn rates_parse_and_match() {
        let r = parse_rate("r", "30/min").unwrap();
        assert!((r.per_sec - 0.5).abs() < 1e-9 && r.burst == 30.0);
        assert_eq!(parse_rate("r", "10/s").unwrap().per_sec, 10.0);
        for bad in ["", "30", "0/s", "x/s", "5/day", "100001/s"] {
            assert_eq!(
                parse_rate("rate_limits", bad).unwrap_err().field,
                "rate_limits"
            );
        }
        let pats = vec![("site:*".to_string(), r)];
        assert_eq!(rate_for("site:a", &pats), Some(r));
        assert_eq!(rate_for("db", &pats), None);
        assert_eq!(pattern_limit("db", &[("d*".into(), 3)]), Some(3));
    }
}
