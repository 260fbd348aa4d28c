//! The worker protocol version a worker states in its `Hello`, and which versions a
//! coordinator accepts. A rolling upgrade runs releases N and N-1 side by side, so a
//! coordinator accepts its own version and the one before it.
//!
//! - 1: workers from before the field existed (they send 0, read as 1).
//! - 2: `Hello.protocol_version`; workers fail over between several coordinators.

/// The version this build speaks.
pub const CURRENT: u32 = 2;
/// The oldest version this build's coordinator still serves.
pub const MIN_SUPPORTED: u32 = 1;

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
    fn current_and_previous_are_accepted() {
        assert_eq!(check_worker(CURRENT), Ok(CURRENT));
        assert_eq!(check_worker(CURRENT - 1), Ok(CURRENT - 1));
        assert_eq!(
            check_worker(0),
            Ok(1),
            "a worker without the field is version 1"
        );
    }

    #[test]
    fn others_are_refused_naming_both_versions() {
        let e = check_worker(CURRENT + 1).unwrap_err();
        assert!(e.contains(&format!("version {}", CURRENT + 1)), "{e}");
        assert!(e.contains(&format!("speaks version {CURRENT}")), "{e}");
        assert!(e.contains("coordinators first"), "{e}");
    }
}
