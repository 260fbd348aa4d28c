//! Per-job resource limits (memory, CPUs, processes) and the sizes used to write them.

use serde::{Deserialize, Serialize};

/// Largest memory limit accepted (1 TiB) and smallest (a limit below a few MiB only makes
/// the job fail to start).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// CPUs in thousandths: 0.01 to 1024 CPUs.
pub const MIN_CPU_MILLIS: u32 = 10;
pub const MAX_CPU_MILLIS: u32 = 1024 * 1000;
pub const MAX_PIDS: u32 = 1 << 22;

/// Limits for each attempt of a job. None: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u32>,
    pub pids: Option<u32>,
}

impl ResourceLimits {
    /// `self`, with unset limits taken from `defaults` (a queue's).
    pub fn or(self, defaults: &ResourceLimits) -> ResourceLimits {
        ResourceLimits {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            cpu_millis: self.cpu_millis.or(defaults.cpu_millis),
            pids: self.pids.or(defaults.pids),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size: use a number with an optional K, M, G or T suffix (e.g. 512M, 4G)")]
pub struct SizeError(pub String);

/// Parses "4G", "512M", "100k", "1048576" (binary units; an optional trailing "B"/"iB").
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) || num.len() > 20 {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A size the way an operator writes it: "4G", "100M", "1536K", else bytes.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a CPU count like "2", "0.5", "1.25" into thousandths.
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a CPU count: use e.g. 2 or 0.5");
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 3
        || int.len() > 7
    {
        return Err(bad());
    }
    let whole: u32 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_millis: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac_millis))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, n) in [
            ("4G", 4u64 << 30),
            ("100M", 100 << 20),
            ("100MiB", 100 << 20),
            ("512k", 512 << 10),
            ("1048576", 1 << 20),
            ("2T", 2 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in ["", "G", "4.5G", "-1M", "4X", "99999999999999999999T", "1 G"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(100 << 20), "100M");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("1.25"), Ok(1250));
        assert_eq!(parse_cpus(".1"), Ok(100));
        for s in ["", ".", "1.2345", "-1", "two", "99999999"] {
            assert!(parse_cpus(s).is_err(), "{s}");
        }
    }

    #[test]
    fn queue_defaults_fill_only_unset_limits() {
        let job = ResourceLimits {
            memory_bytes: Some(1 << 30),
            ..Default::default()
        };
        let q = ResourceLimits {
            memory_bytes: Some(4 << 30),
            pids: Some(512),
            cpu_millis: None,
        };
        assert_eq!(
            job.or(&q),
            ResourceLimits {
                memory_bytes: Some(1 << 30),
                pids: Some(512),
                cpu_millis: None
            }
        );
    }
}
