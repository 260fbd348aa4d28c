//! Durations as people write them in configuration: `"500ms"`, `"8s"`, `"7d"`, `"1h 30m"`
//! (humantime's syntax). A bare number is refused: `8` could mean seconds or milliseconds.

use std::time::Duration;

/// Parses a duration with its unit; the error quotes the value and shows the form wanted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?}: a duration must not be negative"));
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{s:?}: a duration needs a unit, e.g. \"{t}s\" or \"{t}ms\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{s:?}: {e}; write a number and a unit, e.g. \"500ms\", \"8s\", \"7d\", \"1h 30m\"")
    })
}

/// The form [`parse`] reads back, in days at most (no months or years, whose length
/// varies): `8s`, `1m 30s`, `31d`, `500ms`, `0s`.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1000 % 1000), "us"),
        (u64::from(nanos % 1000), "ns"),
    ];
    let out: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if out.is_empty() {
        "0s".into()
    } else {
        out.join(" ")
    }
}

/// `#[serde(with = "drover_core::duration::human")]` for a `Duration` field.
pub mod human {
    use serde::{de, Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Human)
    }

    pub(super) struct Human;

    fn bare<E: de::Error>(n: impl fmt::Display) -> E {
        E::custom(format!(
            "{n}: a duration needs a unit and quotes, e.g. \"{n}s\" or \"{n}ms\""
        ))
    }

    impl de::Visitor<'_> for Human {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"500ms\", \"8s\", \"7d\" or \"1h 30m\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(bare(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            if v < 0 {
                return Err(E::custom(format!("{v}: a duration must not be negative")));
            }
            Err(bare(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(bare(v))
        }
    }
}

/// `#[serde(with = "drover_core::duration::human_opt")]` for an `Option<Duration>` field.
pub mod human_opt {
    use serde::{de, Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(Opt)
    }

    struct Opt;

    impl<'de> de::Visitor<'de> for Opt {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"500ms\", \"8s\", \"7d\" or \"1h 30m\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(super::human::Human).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_forms_parse_and_round_trip() {
        for (s, d) in [
            ("500ms", Duration::from_millis(500)),
            ("8s", Duration::from_secs(8)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 2m ", Duration::from_secs(120)),
            ("0s", Duration::ZERO),
            ("31d", Duration::from_secs(31 * 86_400)),
            ("1d 2h 3m 4s 5ms 6us 7ns", Duration::new(93_784, 5_006_007)),
        ] {
            assert_eq!(parse(s), Ok(d), "{s}");
            assert_eq!(parse(&format(d)), Ok(d), "{s}");
            if !s.contains(' ') && s != "0s" {
                assert_eq!(format(d), s);
            }
        }
    }

    #[test]
    fn bare_numbers_and_negatives_are_refused_clearly() {
        let e = parse("8").unwrap_err();
        assert!(e.contains("needs a unit") && e.contains("\"8s\""), "{e}");
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("").is_err());
        let e = parse("8 parsecs").unwrap_err();
        assert!(e.contains("8 parsecs") && e.contains("e.g."), "{e}");
    }
}
