//! Failure fingerprints: the same cause of failure gives the same fingerprint, whatever
//! ids, numbers, times, addresses or parameter values the output happens to carry.
//!
//! [`normalise`] turns an attempt's classification reason and the last lines of its output
//! into a text with placeholders (`{n}`, `{uuid}`, `{ts}`, `{hex}`, `{id}`, `{addr}`,
//! `{tmp}`, `?{query}`, `{<param name>}`); [`fingerprint`] is a short hash of that text.
//! Both are pure, so they are tested on realistic outputs below.

use sha2::{Digest, Sha256};
use std::sync::LazyLock;

use regex::Regex;

/// Output lines (the last non-empty ones) that go into a fingerprint: the error message
/// and a little context (e.g. the failing frame of a traceback).
pub const TAIL_LINES: usize = 3;
/// Characters kept of each line, so a huge line cannot make a huge group key.
pub const MAX_LINE_CHARS: usize = 240;
/// Parameter values shorter than this are not replaced: "1" or "a" would hit everywhere.
pub const MIN_PARAM_LEN: usize = 3;

/// A normalised failure: the text people read, and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// 16 hex digits of the SHA-256 of `text`.
    pub id: String,
    /// Reason and output tail, normalised, one line each.
    pub text: String,
    /// The line that best names the cause: the last normalised output line (or the reason).
    pub sample: String,
}

/// Whether an attempt that ended this way gets a fingerprint: a failure of the job's own
/// (not success, cancellation or a hand-back) that left some output to read.
pub fn applies(outcome: crate::AttemptState, output_tail: &str) -> bool {
    use crate::AttemptState as A;
    matches!(outcome, A::Failed | A::FailedPermanent | A::TimedOut)
        && !output_tail.trim().is_empty()
}

/// Fingerprint of a failure from its classification `reason`, its output tail and the
/// job's own parameters (name, value).
pub fn fingerprint(reason: &str, output_tail: &str, params: &[(&str, &str)]) -> Fingerprint {
    let text = normalise(reason, output_tail, params);
    let sample = text.lines().last().unwrap_or_default().to_string();
    let digest = Sha256::digest(text.as_bytes());
    let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Fingerprint { id, text, sample }
}

/// The reason line, then the last [`TAIL_LINES`] non-empty output lines, each normalised.
pub fn normalise(reason: &str, output_tail: &str, params: &[(&str, &str)]) -> String {
    // Longest values first, so a value containing another is replaced whole.
    let mut params: Vec<(&str, &str)> = params
        .iter()
        .filter(|(_, v)| v.trim().chars().count() >= MIN_PARAM_LEN)
        .map(|(k, v)| (*k, v.trim()))
        .collect();
    params.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut tail: Vec<&str> = output_tail
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(TAIL_LINES)
        .collect();
    tail.reverse();
    std::iter::once(reason.trim())
        .chain(tail)
        .map(|l| normalise_line(l, &params))
        .collect::<Vec<_>>()
        .join("\n")
}

macro_rules! re {
    ($name:ident, $pat:expr) => {
        static $name: LazyLock<Regex> =
            LazyLock::new(|| Regex::new($pat).expect("fingerprint pattern compiles"));
    };
}

re!(
    TIMESTAMP,
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2}|\s?UTC)?"
);
re!(DATE, r"\b\d{4}[-/]\d{2}[-/]\d{2}\b");
re!(CLOCK, r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b");
re!(
    UUID,
    r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
);
re!(
    URL_QUERY,
    r"((?:https?|wss?|ftp)://[^\s?#'\x22]+)\?[^\s#'\x22)]*"
);
re!(
    TMP_PATH,
    r"(?:/tmp|/var/tmp|/dev/shm|/var/lib/drover/work)/[^\s'\x22:,)]*"
);
re!(IPV6, r"\[[0-9a-fA-F:]*:[0-9a-fA-F:]+\](?::\d+)?");
re!(IPV4, r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?::\d{1,5})?\b");
re!(HEX0X, r"\b0x[0-9a-fA-F]+\b");
re!(HEXRUN, r"\b[0-9a-fA-F]{8,}\b");
// Ids such as the `7Hx9Kq2LmN` of `req_7Hx9Kq2LmN`: runs of 8+ letters and digits with
// both in them (`_` and `-` separate runs, so `race_123` and `race_12345` both become
// `race_{n}`). An id of letters only is not recognised.
re!(TOKEN, r"[A-Za-z0-9]{8,}");
// HTTP status codes name the cause (404 vs 503), so they survive number replacement.
re!(
    HTTP_STATUS,
    r"(?i)\b(HTTP(?:/\d(?:\.\d)?)?|status(?: code)?[:=]?)\s*([1-5]\d\d)\b"
);
re!(NUMBER, r"\d+(?:\.\d+)?");
re!(SPACES, r"\s+");

/// Marks a kept status code so the number pass skips it; never appears in output text
/// (control characters are stripped first).
const KEEP: char = '\u{1}';

fn normalise_line(line: &str, params: &[(&str, &str)]) -> String {
    let mut s: String = line
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .take(MAX_LINE_CHARS)
        .collect();
    for (name, value) in params {
        if s.contains(value) {
            s = s.replace(value, &format!("{{{name}}}"));
        }
    }
    s = URL_QUERY.replace_all(&s, "$1?{query}").into_owned();
    s = TMP_PATH.replace_all(&s, "{tmp}").into_owned();
    s = TIMESTAMP.replace_all(&s, "{ts}").into_owned();
    s = DATE.replace_all(&s, "{date}").into_owned();
    s = CLOCK.replace_all(&s, "{time}").into_owned();
    s = UUID.replace_all(&s, "{uuid}").into_owned();
    s = IPV6.replace_all(&s, "{addr}").into_owned();
    s = IPV4.replace_all(&s, "{addr}").into_owned();
    s = HEX0X.replace_all(&s, "{hex}").into_owned();
    s = HEXRUN
        .replace_all(&s, |c: &regex::Captures| {
            let t = &c[0];
            if t.bytes().any(|b| b.is_ascii_digit()) {
                "{hex}".to_string()
            } else {
                t.to_string()
            }
        })
        .into_owned();
    s = TOKEN
        .replace_all(&s, |c: &regex::Captures| {
            let t = &c[0];
            let digits = t.bytes().filter(u8::is_ascii_digit).count();
            let letters = t.bytes().filter(u8::is_ascii_alphabetic).count();
            if digits >= 1 && letters >= 1 {
                "{id}".to_string()
            } else {
                t.to_string()
            }
        })
        .into_owned();
    s = HTTP_STATUS
        .replace_all(&s, |c: &regex::Captures| {
            let code: String = c[2].chars().flat_map(|d| [KEEP, d]).collect();
            format!("{} {code}", &c[1])
        })
        .into_owned();
    s = NUMBER
        .replace_all(&s, |c: &regex::Captures| {
            // A digit right after KEEP belongs to a kept status code.
            let start = c.get(0).map_or(0, |m| m.start());
            if s[..start].ends_with(KEEP) {
                c[0].to_string()
            } else {
                "{n}".to_string()
            }
        })
        .into_owned();
    // Kept digits are interleaved with KEEP one by one; the number pass saw each as its
    // own number preceded by KEEP, so they are intact.
    s.retain(|c| c != KEEP);
    SPACES.replace_all(s.trim(), " ").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(reason: &str, out: &str) -> String {
        normalise(reason, out, &[])
    }

    /// (reason, output tail, params, expected normalised text)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn table_of_realistic_outputs() {
        let cases: &[Case] = &[
            (
                "exit code 1",
                "Traceback (most recent call last):\n  File \"/tmp/drover-work/8f2c/scrape.py\", line 118, in <module>\n    main()\n  File \"/home/op/scraper/fetch.py\", line 42, in fetch\n    raise KeyError(race_id)\nKeyError: 'R20240501x17'\n",
                &[],
                "exit code {n}\nFile \"/home/op/scraper/fetch.py\", line {n}, in fetch\nraise KeyError(race_id)\nKeyError: '{id}'",
            ),
            (
                "exit code 2",
                "GET https://api.example.com/v2/races?date=2024-05-01&page=3 failed\nrequests.exceptions.HTTPError: 503 Server Error for url https://api.example.com/v2/races?date=2024-05-01\nHTTP 503 Service Unavailable (request id 7d1e4c2a-9b0f-4f7e-a1c3-5e9d2b8f6a10)",
                &[],
                "exit code {n}\nGET https://api.example.com/v{n}/races?{query} failed\nrequests.exceptions.HTTPError: {n} Server Error for url https://api.example.com/v{n}/races?{query}\nHTTP 503 Service Unavailable (request id {uuid})",
            ),
            (
                "killed by signal 6",
                "thread 'main' panicked at src/parse.rs:211:17:\ncalled `Result::unwrap()` on an `Err` value: ParseIntError { kind: InvalidDigit }\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
                &[],
                "killed by signal {n}\nthread 'main' panicked at src/parse.rs:{n}:{n}:\ncalled `Result::unwrap()` on an `Err` value: ParseIntError { kind: InvalidDigit }\nnote: run with `RUST_BACKTRACE={n}` environment variable to display a backtrace",
            ),
            (
                "exit code 1; output matched retryable pattern \"connection reset\"",
                "2026-11-27T03:12:45.123Z ERROR fetch failed: Connection reset by peer (os error 104) peer=10.0.3.7:443",
                &[],
                "exit code {n}; output matched retryable pattern \"connection reset\"\n{ts} ERROR fetch failed: Connection reset by peer (os error {n}) peer={addr}",
            ),
            (
                "exit code 1",
                "Error: segfault at 0x7ffd5a3c in worker 3fa9c2d1e0b4 (pid 4242)",
                &[],
                "exit code {n}\nError: segfault at {hex} in worker {hex} (pid {n})",
            ),
            (
                "exit code 1",
                "scraping odds for 2024-05-01 at sha-tin\nHTTP 404 from sha-tin.example.com",
                &[("date", "2024-05-01"), ("host", "sha-tin.example.com"), ("n", "1")],
                "exit code {n}\nscraping odds for {date} at sha-tin\nHTTP 404 from {host}",
            ),
            (
                "timed out after 30000 ms",
                "[12:01:33] still waiting for SCF convergence, cycle 88\n",
                &[],
                "timed out after {n} ms\n[{time}] still waiting for SCF convergence, cycle {n}",
            ),
        ];
        for (reason, out, params, want) in cases {
            assert_eq!(&normalise(reason, out, params), want, "output: {out}");
        }
    }

    #[test]
    fn same_cause_with_different_ids_gives_one_fingerprint() {
        let a = fingerprint(
            "exit code 1",
            "ConnectionResetError: [Errno 104] Connection reset by peer 10.0.0.5:8080 req=ab12cd34ef",
            &[],
        );
        let b = fingerprint(
            "exit code 3",
            "ConnectionResetError: [Errno 104] Connection reset by peer 192.168.1.20:443 req=99ff00aa11",
            &[],
        );
        assert_eq!(a.id, b.id, "{} vs {}", a.text, b.text);
        assert_eq!(a.id.len(), 16);
        assert!(a.sample.starts_with("ConnectionResetError"));
    }

    #[test]
    fn different_causes_differ() {
        let a = fingerprint("exit code 1", "HTTP 503 from host", &[]);
        let b = fingerprint("exit code 1", "HTTP 404 from host", &[]);
        let c = fingerprint("exit code 1", "KeyError: 'odds'", &[]);
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn only_the_last_lines_count_and_lines_are_bounded() {
        let long_history: String = (0..100).map(|i| format!("progress {i}%\n")).collect();
        let a = norm("r", &format!("{long_history}ValueError: bad input\n"));
        assert_eq!(a.lines().count(), 1 + TAIL_LINES);
        assert!(a.ends_with("ValueError: bad input"));
        let huge = "x".repeat(100_000);
        assert!(norm("r", &huge).len() <= MAX_LINE_CHARS + 2);
        assert_eq!(norm("r", ""), "r");
    }

    #[test]
    fn ids_of_varying_length_group_together() {
        let a = norm("r", "KeyError: 'race_12'");
        let b = norm("r", "KeyError: 'race_1234567'");
        assert_eq!(a, b);
        let c = norm("r", "request req_7Hx9Kq2LmN failed");
        let d = norm("r", "request req_Ab3dEf9hIj failed");
        assert_eq!(c, d);
        assert_eq!(c, "r\nrequest req_{id} failed");
    }

    #[test]
    fn short_param_values_are_not_replaced() {
        assert_eq!(
            normalise("exit code 1", "mode a failed", &[("m", "a")]),
            "exit code {n}\nmode a failed"
        );
    }
}
