//! Worker-side defence as pure rules: which programs a worker may run, which of the
//! worker's own environment variables a job inherits, and masking of secret values in a
//! job's output. The worker resolves paths and reads files; the decisions are here.

use std::path::{Path, PathBuf};

/// Basenames treated as shells by `forbid_shells`.
pub const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "ksh93", "csh", "tcsh", "fish", "ash",
    "yash", "rbash", "busybox", "toybox",
];

/// What a worker may run. An empty `allowed` list allows every program.
#[derive(Debug, Clone, Default)]
pub struct ProgramPolicy {
    /// Absolute paths or globs (e.g. `/usr/bin/*`, `/opt/orca/bin/orca`).
    pub allowed: Vec<glob::Pattern>,
    pub forbid_shells: bool,
}

impl ProgramPolicy {
    /// Parses the configured patterns; each must be absolute.
    pub fn new(allowed: &[String], forbid_shells: bool) -> Result<ProgramPolicy, String> {
        let allowed = allowed
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if !p.starts_with('/') {
                    return Err(format!(
                        "allowed_programs[{i}]: {p:?} must be an absolute path or glob"
                    ));
                }
                glob::Pattern::new(p).map_err(|e| format!("allowed_programs[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ProgramPolicy {
            allowed,
            forbid_shells,
        })
    }

    /// Whether the program found at `resolved` (argv[0] after the PATH search) may run.
    /// `canonical` is the same file with symlinks followed: a pattern may match either
    /// name, but a shell is recognised by either name too (`/bin/sh` -> `dash`).
    pub fn allows(&self, resolved: &Path, canonical: &Path) -> bool {
        if self.forbid_shells && (is_shell(resolved) || is_shell(canonical)) {
            return false;
        }
        self.allowed.is_empty()
            || self.allowed.iter().any(|p| {
                p.matches_path_with(resolved, PATH_MATCH)
                    || p.matches_path_with(canonical, PATH_MATCH)
            })
    }

    /// [`allows`](Self::allows), with the canonical name asked of `canonical` only when a
    /// rule looks at it: with no allowlist and shells allowed, every program may run, and
    /// following the symlinks of its path (a `readlink` per component) is wasted.
    pub fn allows_with(&self, resolved: &Path, canonical: impl FnOnce() -> PathBuf) -> bool {
        (self.allowed.is_empty() && !self.forbid_shells) || self.allows(resolved, &canonical())
    }
}

/// `*` stays within one directory level (`/usr/bin/*` does not match `/usr/bin/x/y`);
/// `**` crosses levels.
pub const PATH_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

fn is_shell(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| SHELLS.contains(&n))
}

/// Default `inherit_env`: what a program needs to behave normally, nothing that is
/// usually secret.
pub const DEFAULT_INHERIT_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
];

/// True if `name` is listed: exactly, or by a `PREFIX*` entry (`*` alone: everything).
pub fn inherits(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Most secret references per job.
pub const MAX_SECRETS: usize = 32;
/// Longest secret reference (`file:...` / `env:...`).
pub const MAX_SECRET_REF_LEN: usize = 1024;
/// Largest secret file a worker reads.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Where a worker finds a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// A file on the worker (absolute path); one trailing newline is dropped.
    File(std::path::PathBuf),
    /// A variable in the worker's own environment.
    Env(String),
}

/// An environment variable name: 1 to 256 of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SecretRef {
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        if s.len() > MAX_SECRET_REF_LEN {
            return Err(format!(
                "is {} bytes; the limit is {MAX_SECRET_REF_LEN}",
                s.len()
            ));
        }
        if s.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        if let Some(p) = s.strip_prefix("file:") {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(format!("file:{p}: must be an absolute path without '..'"));
            }
            return Ok(SecretRef::File(p.into()));
        }
        if let Some(n) = s.strip_prefix("env:") {
            if !is_env_name(n) {
                return Err(format!("env:{n}: not a variable name"));
            }
            return Ok(SecretRef::Env(n.to_string()));
        }
        Err("must be file:/absolute/path or env:NAME (the value itself is never sent)".into())
    }
}

/// Shown instead of a secret's value.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Replaces every occurrence of any secret value in a byte stream by [`REDACTED`], also
/// when a value is split across reads: the last `longest - 1` bytes are held back until
/// more input (or [`Redactor::finish`]) shows whether they begin a secret.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Longest first, so the longest match at a position wins.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
    keep: usize,
}

impl Redactor {
    /// Empty values are ignored (they would match everywhere).
    pub fn new<I: IntoIterator<Item = Vec<u8>>>(values: I) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = values.into_iter().filter(|v| !v.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let keep = secrets.first().map(|s| s.len() - 1).unwrap_or(0);
        Redactor {
            secrets,
            held: Vec::new(),
            keep,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Masks `buf[..upto]` (a match starting there may run past `upto`); returns the
    /// output and where scanning stopped.
    fn scan(&self, buf: &[u8], upto: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < upto {
            let b = buf[i];
            for s in &self.secrets {
                if s[0] == b && buf[i..].starts_with(s) {
                    out.extend_from_slice(REDACTED);
                    i += s.len();
                    continue 'outer;
                }
            }
            out.push(b);
            i += 1;
        }
        (out, i)
    }

    /// Takes the next bytes of the stream; returns what can be written out now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        // A secret starting before `safe` lies wholly inside `buf`, so it is seen now.
        let safe = buf.len().saturating_sub(self.keep);
        let (out, stopped) = self.scan(&buf, safe);
        self.held = buf[stopped..].to_vec();
        out
    }

    /// The end of the stream: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.held);
        self.scan(&buf, buf.len()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn program_policy() {
        let p = |a: &[&str], shells| {
            ProgramPolicy::new(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), shells)
                .unwrap()
        };
        let path = |s: &str| PathBuf::from(s);
        let cases: &[(ProgramPolicy, &str, &str, bool)] = &[
            (p(&[], false), "/bin/sh", "/usr/bin/dash", true),
            (p(&[], true), "/bin/sh", "/usr/bin/dash", false),
            (p(&[], true), "/usr/bin/mysh", "/usr/bin/bash", false),
            (
                p(&[], true),
                "/usr/bin/python3",
                "/usr/bin/python3.11",
                true,
            ),
            (
                p(&["/usr/bin/*"], false),
                "/usr/bin/echo",
                "/usr/bin/echo",
                true,
            ),
            (p(&["/usr/bin/*"], false), "/tmp/x", "/tmp/x", false),
            (
                p(&["/usr/bin/*"], true),
                "/usr/bin/bash",
                "/usr/bin/bash",
                false,
            ),
            (p(&["/bin/echo"], false), "/bin/echo", "/usr/bin/echo", true),
            (
                p(&["/usr/bin/echo"], false),
                "/bin/echo",
                "/usr/bin/echo",
                true,
            ),
            (
                p(&["/usr/bin/echo"], false),
                "/usr/bin/echo2",
                "/usr/bin/echo2",
                false,
            ),
            (
                p(&["/opt/*/bin/orca"], false),
                "/opt/v6/bin/orca",
                "/opt/v6/bin/orca",
                true,
            ),
            (
                p(&["/usr/bin/*"], false),
                "/usr/bin/x/y",
                "/usr/bin/x/y",
                false,
            ),
            (p(&["/opt/**"], false), "/opt/a/b/c", "/opt/a/b/c", true),
        ];
        for (i, (pol, r, c, want)) in cases.iter().enumerate() {
            assert_eq!(pol.allows(&path(r), &path(c)), *want, "case {i}: {r} {c}");
        }
        assert!(ProgramPolicy::new(&["echo".into()], false)
            .unwrap_err()
            .contains("allowed_programs[0]"));
        assert!(ProgramPolicy::new(&["/a/[".into()], false).is_err());
    }

    #[test]
    fn the_canonical_name_is_asked_for_only_when_a_rule_reads_it() {
        let asked = std::cell::Cell::new(0);
        let canonical = || {
            asked.set(asked.get() + 1);
            PathBuf::from("/usr/bin/dash")
        };
        let open = ProgramPolicy::new(&[], false).unwrap();
        assert!(open.allows_with(Path::new("/bin/sh"), canonical));
        assert_eq!(asked.get(), 0);
        // The shell is recognised by its canonical name only, so that name must be read.
        let no_shells = ProgramPolicy::new(&[], true).unwrap();
        assert!(!no_shells.allows_with(Path::new("/bin/x"), canonical));
        assert_eq!(asked.get(), 1);
        let listed = ProgramPolicy::new(&["/usr/bin/dash".into()], false).unwrap();
        assert!(listed.allows_with(Path::new("/bin/x"), canonical));
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn secret_refs() {
        assert_eq!(
            SecretRef::parse("file:/etc/drover/secrets/api"),
            Ok(SecretRef::File("/etc/drover/secrets/api".into()))
        );
        assert_eq!(
            SecretRef::parse("env:API_KEY"),
            Ok(SecretRef::Env("API_KEY".into()))
        );
        for bad in [
            "s3cret",
            "file:relative",
            "file:/etc/drover/../shadow",
            "env:",
            "env:A-B",
            "env:1A",
            "file:/a\0b",
            "",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SecretRef::parse(&format!("file:/{}", "a".repeat(2000))).is_err());
        assert!(is_env_name("API_KEY_2"));
        assert!(!is_env_name("API KEY"));
    }

    #[test]
    fn inherit_patterns() {
        let pats: Vec<String> = DEFAULT_INHERIT_ENV.iter().map(|s| s.to_string()).collect();
        assert!(inherits(&pats, "PATH"));
        assert!(inherits(&pats, "LC_ALL"));
        assert!(!inherits(&pats, "AWS_SECRET_ACCESS_KEY"));
        assert!(!inherits(&pats, "PATHX"));
        assert!(inherits(&["*".into()], "ANYTHING"));
        assert!(!inherits(&[], "PATH"));
    }

    fn run(secrets: &[&str], pieces: &[&str]) -> String {
        let mut r = Redactor::new(secrets.iter().map(|s| s.as_bytes().to_vec()));
        let mut out = Vec::new();
        for p in pieces {
            out.extend(r.push(p.as_bytes()));
        }
        out.extend(r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn redaction_table() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&[], &["plain text"], "plain text"),
            (&["s3cret"], &["key=s3cret\n"], "key=[REDACTED]\n"),
            (&["s3cret"], &["key=s3", "cret\n"], "key=[REDACTED]\n"),
            (&["s3cret"], &["s", "3", "c", "r", "e", "t"], "[REDACTED]"),
            (&["s3cret"], &["s3cre"], "s3cre"),
            (&["s3cret"], &["s3cret s3cret"], "[REDACTED] [REDACTED]"),
            (
                &["abc", "abcdef"],
                &["xabcdefx abcx"],
                "x[REDACTED]x [REDACTED]x",
            ),
            (&["aa"], &["aaa"], "[REDACTED]a"),
            (&["", "tok"], &["a tok b"], "a [REDACTED] b"),
            (&["tok"], &["to", "", "k", "to"], "[REDACTED]to"),
        ];
        for (i, (secrets, pieces, want)) in cases.iter().enumerate() {
            assert_eq!(run(secrets, pieces), *want, "case {i}");
        }
    }

    #[test]
    fn redaction_at_every_split_point() {
        let text = "before TOPSECRETVALUE middle TOPSECRETVALUE after";
        for a in 0..text.len() {
            for b in a..text.len() {
                let got = run(&["TOPSECRETVALUE"], &[&text[..a], &text[a..b], &text[b..]]);
                assert_eq!(
                    got, "before [REDACTED] middle [REDACTED] after",
                    "split {a} {b}"
                );
            }
        }
    }
}
