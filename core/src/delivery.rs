//! Notification delivery: what one send's outcome means (delivered, try again later, or
//! give up), and when to try again. Pure, so the rules are tested as a table below.

use std::time::Duration;

/// What a send observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The peer accepted the message (HTTP 2xx, SMTP 250).
    Accepted,
    /// An HTTP response other than 2xx, with its `Retry-After` header if any.
    Http {
        status: u16,
        retry_after: Option<String>,
    },
    /// An SMTP reply refusing the message.
    Smtp { code: u16, message: String },
    /// No usable answer: connection refused or reset, timeout, TLS or DNS failure.
    Network(String),
    /// The channel's configuration cannot work (bad address, unknown channel, bad URL).
    Config(String),
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again; `at_least` is the peer's `Retry-After`, if it gave one.
    Transient {
        reason: String,
        at_least: Option<Duration>,
    },
    /// Give up: the message is dead.
    Permanent {
        reason: String,
    },
}

/// Longest `Retry-After` honoured; a larger value is capped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Classifies one send.
pub fn classify(o: &Observed) -> Verdict {
    match o {
        Observed::Accepted => Verdict::Delivered,
        Observed::Http {
            status,
            retry_after,
        } => {
            let reason = format!("HTTP {status}");
            match status {
                200..=299 => Verdict::Delivered,
                408 | 429 | 500..=599 => Verdict::Transient {
                    reason,
                    at_least: retry_after.as_deref().and_then(parse_retry_after),
                },
                _ => Verdict::Permanent { reason },
            }
        }
        Observed::Smtp { code, message } => {
            let reason = format!("SMTP {code} {}", message.trim());
            if (400..500).contains(code) {
                Verdict::Transient {
                    reason,
                    at_least: None,
                }
            } else {
                Verdict::Permanent { reason }
            }
        }
        Observed::Network(e) => Verdict::Transient {
            reason: e.clone(),
            at_least: None,
        },
        Observed::Config(e) => Verdict::Permanent {
            reason: format!("bad channel configuration: {e}"),
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: the backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Backoff settings for deliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

/// Wait before try number `tries + 1` after `tries` failed ones: `initial ×
/// multiplier^(tries-1)`, capped at `max`, of which up to half is removed at random
/// (`random` in 0..1), never less than `at_least` (the peer's Retry-After).
pub fn next_wait(b: &Backoff, tries: u32, random: f64, at_least: Option<Duration>) -> Duration {
    let exp = b
        .multiplier
        .max(1.0)
        .powi(tries.saturating_sub(1).min(60) as i32);
    let full = (b.initial.as_secs_f64() * exp).min(b.max.as_secs_f64());
    let wait = Duration::from_secs_f64(full * (1.0 - 0.5 * random.clamp(0.0, 1.0)));
    match at_least {
        Some(floor) if floor > wait => floor,
        _ => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(v: &Verdict) -> bool {
        matches!(v, Verdict::Transient { .. })
    }

    #[test]
    fn outcome_table() {
        let http = |status, ra: Option<&str>| Observed::Http {
            status,
            retry_after: ra.map(str::to_string),
        };
        let smtp = |code| Observed::Smtp {
            code,
            message: "x".into(),
        };
        assert_eq!(classify(&Observed::Accepted), Verdict::Delivered);
        assert_eq!(classify(&http(204, None)), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(transient(&classify(&http(s, None))), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 301] {
            assert!(
                matches!(classify(&http(s, None)), Verdict::Permanent { .. }),
                "{s}"
            );
        }
        assert!(transient(&classify(&smtp(421))));
        assert!(transient(&classify(&smtp(451))));
        assert_eq!(
            classify(&Observed::Smtp {
                code: 550,
                message: "5.1.1 unknown mailbox ".into()
            }),
            Verdict::Permanent {
                reason: "SMTP 550 5.1.1 unknown mailbox".into()
            }
        );
        assert!(transient(&classify(&Observed::Network(
            "connection refused".into()
        ))));
        assert!(matches!(
            classify(&Observed::Config("no such channel".into())),
            Verdict::Permanent { .. }
        ));
        assert_eq!(
            classify(&http(429, Some("7"))),
            Verdict::Transient {
                reason: "HTTP 429".into(),
                at_least: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn backoff_grows_caps_jitters_and_honours_retry_after() {
        let b = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        };
        assert_eq!(next_wait(&b, 1, 0.0, None), Duration::from_secs(2));
        assert_eq!(next_wait(&b, 3, 0.0, None), Duration::from_secs(8));
        assert_eq!(next_wait(&b, 30, 0.0, None), Duration::from_secs(60));
        assert_eq!(next_wait(&b, 3, 1.0, None), Duration::from_secs(4));
        assert_eq!(
            next_wait(&b, 1, 0.0, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_wait(&b, 10, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(60)
        );
    }
}
