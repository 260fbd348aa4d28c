//! The worker protocol version a worker states in its `Hello`, and which versions a
//! coordinator accepts. A rolling upgrade runs releases N and N-1 side by side, so a
//! coordinator accepts its own version and the one before it, except across a change of
//! the wire shape that the older side cannot read (then `MIN_SUPPORTED` moves up with it).
//!
//! - 1: workers from before the field existed (they send 0, read as 1).
//! - 2: `Hello.protocol_version`; workers fail over between several coordinators.
//! - 3: the stable v1 wire shape (docs/api.md): durations are `google.protobuf.Duration`
//!   (`Welcome.heartbeat_interval`, `Assignment.timeout`, ...) and FinishAttempt's
//!   outcomes are messages, not bools. Versions 1 and 2 cannot read it: refused.

/// The version this build speaks.
pub const CURRENT: u32 = 3;
/// The oldest version this build's coordinator still serves: the first of the current
/// wire shape. From here on the rule is N and N-1 (docs/api.md).
pub const MIN_SUPPORTED: u32 = 3;

/// The version a `Hello` stated, with 0 (field absent: a worker older than the field)
/// read as 1.
pub fn stated(raw: u32) -> u32 {
    raw.max(1)
}

/// Accepts a worker's stated version, or says why not, naming both sides' versions.
pub fn check_worker(raw: u32) -> Result<u32, String> {
    let v = stated(raw);
    if (MIN_SUPPORTED..=CURRENT).contains(&v) {
        Ok(v)
    } else {
        let what = if v > CURRENT {
            "upgrade the coordinators first (coordinators before workers)"
        } else {
            "upgrade the worker"
        };
        Err(format!(
            "worker protocol version {v} is not supported: this coordinator speaks version \
             {CURRENT} and accepts {MIN_SUPPORTED} to {CURRENT}; {what}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_accepted_and_older_wire_shapes_refused() {
        assert_eq!(check_worker(CURRENT), Ok(CURRENT));
        assert_eq!(stated(0), 1, "a worker without the field is version 1");
        // 1 and 2 predate the Duration/oneof wire shape of version 3.
        for old in [0, 1, 2] {
            let e = check_worker(old).unwrap_err();
            assert!(e.contains("upgrade the worker"), "{e}");
            assert!(
                e.contains(&format!("accepts {MIN_SUPPORTED} to {CURRENT}")),
                "{e}"
            );
        }
    }

    #[test]
    fn others_are_refused_naming_both_versions() {
        let e = check_worker(CURRENT + 1).unwrap_err();
        assert!(e.contains(&format!("version {}", CURRENT + 1)), "{e}");
        assert!(e.contains(&format!("speaks version {CURRENT}")), "{e}");
        assert!(e.contains("coordinators first"), "{e}");
    }
}
