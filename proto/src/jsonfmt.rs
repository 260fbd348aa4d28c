//! How the JSON API (`/api/v1`) writes the fields serde would get wrong: enums by their
//! proto names (numbers are accepted too), timestamps as RFC 3339 strings, durations as
//! proto3 JSON has them ("1.5s"), bytes as base64. The build script puts
//! `#[serde(with = ...)]` on every such field.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! enum_format {
    ($module:ident, $ty:ident) => {
        pub mod $module {
            use super::*;
            use crate::v1::$ty;

            fn name(v: i32) -> String {
                $ty::try_from(v)
                    .map(|e| e.as_str_name().to_string())
                    .unwrap_or_else(|_| v.to_string())
            }

            fn parse<E: serde::de::Error>(v: &serde_json::Value) -> Result<i32, E> {
                match v {
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| E::custom(format!("{n} is not a {}", stringify!($ty)))),
                    serde_json::Value::String(s) => {
                        let upper = s.to_ascii_uppercase();
                        $ty::from_str_name(&upper)
                            .or_else(|| {
                                // Short names too: "succeeded" for JOB_STATE_SUCCEEDED.
                                $ty::from_str_name(&format!("{}_{upper}", prefix()))
                            })
                            .map(|e| e as i32)
                            .ok_or_else(|| E::custom(format!("{s:?} is not a {}", stringify!($ty))))
                    }
                    serde_json::Value::Null => Ok(0),
                    other => Err(E::custom(format!(
                        "expected a {} name, got {other}",
                        stringify!($ty)
                    ))),
                }
            }

            /// JOB_STATE_UNSPECIFIED -> JOB_STATE
            fn prefix() -> &'static str {
                let s = $ty::Unspecified.as_str_name();
                s.strip_suffix("_UNSPECIFIED").unwrap_or(s)
            }

            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&name(*v))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                parse(&serde_json::Value::deserialize(d)?)
            }

            pub mod repeated {
                use super::*;
                pub fn serialize<S: Serializer>(v: &[i32], s: S) -> Result<S::Ok, S::Error> {
                    v.iter().map(|x| name(*x)).collect::<Vec<_>>().serialize(s)
                }
                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
                    Vec::<serde_json::Value>::deserialize(d)?
                        .iter()
                        .map(parse)
                        .collect()
                }
            }
        }
    };
}

enum_format!(job_state, JobState);
enum_format!(attempt_state, AttemptState);
enum_format!(log_stream, LogStream);
enum_format!(worker_state, WorkerState);
enum_format!(health_status, HealthStatus);

/// `google.protobuf.Timestamp` as an RFC 3339 string in UTC.
pub mod timestamp {
    use super::*;
    use prost_types::Timestamp;

    pub fn format(t: &Timestamp) -> String {
        match chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32) {
            Some(d) => d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            None => t.seconds.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let d = chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
        Ok(Timestamp {
            seconds: d.timestamp(),
            nanos: d.timestamp_subsec_nanos() as i32,
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

pub mod timestamps {
    use super::*;
    use prost_types::Timestamp;

    pub fn serialize<S: Serializer>(v: &[Timestamp], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(timestamp::format)
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Timestamp>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| timestamp::parse(s).map_err(D::Error::custom))
            .collect()
    }
}

/// `google.protobuf.Duration` as proto3 JSON writes it: seconds with an "s" suffix and
/// 0, 3, 6 or 9 fractional digits ("8s", "0.250s", "-1.5s").
pub mod duration {
    use super::*;
    use prost_types::Duration;

    pub fn format(d: &Duration) -> String {
        let negative = d.seconds < 0 || d.nanos < 0;
        let secs = d.seconds.unsigned_abs();
        let nanos = d.nanos.unsigned_abs();
        let sign = if negative { "-" } else { "" };
        if nanos == 0 {
            format!("{sign}{secs}s")
        } else if nanos.is_multiple_of(1_000_000) {
            format!("{sign}{secs}.{:03}s", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{sign}{secs}.{:06}s", nanos / 1_000)
        } else {
            format!("{sign}{secs}.{nanos:09}s")
        }
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "{s:?} is not a duration (seconds with an \"s\" suffix, e.g. \"8s\" or \"0.5s\")"
            )
        };
        let body = s.strip_suffix('s').ok_or_else(bad)?;
        let (negative, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (body.contains('.') && !digits(frac)) || frac.len() > 9 {
            return Err(bad());
        }
        // proto3 bounds a Duration to +-315,576,000,000 s (10,000 years).
        let seconds: i64 = whole
            .parse()
            .ok()
            .filter(|n| *n <= 315_576_000_000)
            .ok_or_else(bad)?;
        let nanos: i32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        Ok(if negative {
            Duration {
                seconds: -seconds,
                nanos: -nanos,
            }
        } else {
            Duration { seconds, nanos }
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// `bytes` as standard base64 with padding, as proto3 JSON has it.
pub mod bytes {
    use super::*;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        let s = s.trim_end_matches('=');
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for ch in s.bytes() {
            let v = match ch {
                b'A'..=b'Z' => ch - b'A',
                b'a'..=b'z' => ch - b'a' + 26,
                b'0'..=b'9' => ch - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return Err(format!("{:?} is not a base64 character", ch as char)),
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        decode(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;

    #[test]
    fn base64_round_trips() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(bytes::decode(&bytes::encode(&data)).unwrap(), data);
        }
        assert_eq!(bytes::encode(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn durations_read_and_write_like_proto3_json() {
        use prost_types::Duration;
        let d = |seconds, nanos| Duration { seconds, nanos };
        for (v, text) in [
            (d(8, 0), "8s"),
            (d(0, 250_000_000), "0.250s"),
            (d(1, 500_000), "1.000500s"),
            (d(0, 1), "0.000000001s"),
            (d(-1, -500_000_000), "-1.500s"),
        ] {
            assert_eq!(duration::format(&v), text);
            assert_eq!(duration::parse(text), Ok(v));
        }
        assert_eq!(duration::parse("1.5s"), Ok(d(1, 500_000_000)));
        for bad in [
            "8",
            "8ms",
            "s",
            ".5s",
            "1.s",
            "1.0000000001s",
            "+1s",
            "1e3s",
            "",
        ] {
            assert!(duration::parse(bad).is_err(), "{bad}");
        }
        let spec: pb::JobSpec = serde_json::from_str(r#"{"timeout": "90s"}"#).unwrap();
        assert_eq!(spec.timeout, Some(d(90, 0)));
        assert_eq!(serde_json::to_value(&spec).unwrap()["timeout"], "90s");
        assert!(serde_json::from_str::<pb::JobSpec>(r#"{"timeout": 90}"#).is_err());
    }

    #[test]
    fn jobs_read_and_write_like_proto3_json() {
        let j = pb::Job {
            id: "x".into(),
            state: pb::JobState::Succeeded as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20Z");
        let back: pb::Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, j);
        let r: pb::ListJobsRequest = serde_json::from_str(r#"{"state": "running"}"#).unwrap();
        assert_eq!(r.state, pb::JobState::Running as i32);
        assert!(serde_json::from_str::<pb::ListJobsRequest>(r#"{"state": "nope"}"#).is_err());
    }
}
