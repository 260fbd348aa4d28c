//! `google.protobuf.Duration` fields to and from what the code computes with
//! (`std::time::Duration`, whole milliseconds). Reading refuses what the API never means:
//! negative and malformed durations (the error says why; callers prefix the field name).

use prost_types::Duration as Wire;
use std::time::Duration;

/// The largest duration proto3 allows (10,000 years).
const MAX_SECONDS: i64 = 315_576_000_000;

/// A duration on the wire (saturating at proto3's bound).
pub fn from_std(d: Duration) -> Wire {
    Wire::try_from(d).unwrap_or(Wire {
        seconds: MAX_SECONDS,
        nanos: 0,
    })
}

/// Milliseconds on the wire, always set.
pub fn from_millis(ms: u64) -> Wire {
    from_std(Duration::from_millis(ms))
}

/// Milliseconds on the wire, unset for 0 (fields where unset means "none").
pub fn nonzero_millis(ms: u64) -> Option<Wire> {
    (ms > 0).then(|| from_millis(ms))
}

/// A duration field as read: unset stays `None`; negative or malformed is an error.
pub fn to_std(d: &Option<Wire>) -> Result<Option<Duration>, String> {
    let Some(d) = d else { return Ok(None) };
    if !(-999_999_999..=999_999_999).contains(&d.nanos)
        || (d.seconds > 0 && d.nanos < 0)
        || (d.seconds < 0 && d.nanos > 0)
        || d.seconds.abs() > MAX_SECONDS
    {
        return Err(format!(
            "{}s {}ns is not a valid duration",
            d.seconds, d.nanos
        ));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(format!(
            "must not be negative, got {}",
            crate::jsonfmt::duration::format(d)
        ));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

/// A duration field in whole milliseconds (finer parts dropped; unset is 0).
pub fn to_millis(d: &Option<Wire>) -> Result<u64, String> {
    Ok(to_std(d)?.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// As [`to_millis`], for fields stored as a signed count of milliseconds.
pub fn to_millis_i64(d: &Option<Wire>) -> Result<i64, String> {
    Ok(i64::try_from(to_millis(d)?).unwrap_or(i64::MAX))
}

/// A duration read by a client from the coordinator: unset or invalid is zero.
pub fn or_zero(d: &Option<Wire>) -> Duration {
    to_std(d).ok().flatten().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_negatives() {
        assert_eq!(to_millis(&Some(from_millis(1500))), Ok(1500));
        assert_eq!(to_millis(&None), Ok(0));
        assert_eq!(nonzero_millis(0), None);
        assert_eq!(
            to_std(&Some(Wire {
                seconds: 1,
                nanos: 2
            })),
            Ok(Some(Duration::new(1, 2)))
        );
        let e = to_millis(&Some(Wire {
            seconds: -1,
            nanos: 0,
        }))
        .unwrap_err();
        assert!(e.contains("negative") && e.contains("-1s"), "{e}");
        assert!(to_std(&Some(Wire {
            seconds: 1,
            nanos: -5
        }))
        .is_err());
        assert!(to_std(&Some(Wire {
            seconds: 0,
            nanos: 1_000_000_000
        }))
        .is_err());
        assert_eq!(or_zero(&None), Duration::ZERO);
    }
}
