//! Access control's pure parts: roles, the rights each role holds, worker-id patterns,
//! operator queue scopes, the bearer token's text form and token lifetimes.
//! Which right each RPC needs is decided in one table in the coordinator (`auth.rs`).

use std::fmt;
use std::time::Duration;

/// Prefix of every token, so a leaked one is recognisable (e.g. by secret scanners).
pub const TOKEN_PREFIX: &str = "drover_";
/// Hex characters after the prefix: 32 random bytes.
pub const TOKEN_HEX_LEN: usize = 64;
/// Longest worker-id pattern a worker token may carry (the longest worker id is 128).
pub const MAX_PATTERN_LEN: usize = 128;
/// Most queues an operator token may be limited to.
pub const MAX_SCOPE_QUEUES: usize = 64;

/// What a request needs. Each role holds a fixed set of rights (see [`Role::has`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Read jobs, logs, artifacts, health and workers.
    Read,
    /// Submit jobs.
    Submit,
    /// Retry, rerun and cancel jobs.
    Operate,
    /// Manage tokens and read the audit log.
    Admin,
    /// Connect as a worker: lease jobs and report on them.
    Work,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Submit => "submit",
            Right::Operate => "operate",
            Right::Admin => "admin",
            Right::Work => "worker",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
    Worker,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Admin, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role table. A worker holds only `Work`, so a worker's token read nothing; no
    /// other role holds `Work`, so no operator can forge a worker's report.
    pub fn has(self, right: Right) -> bool {
        use Right::*;
        match self {
            Role::Viewer => matches!(right, Read),
            Role::Operator => matches!(right, Read | Submit | Operate),
            Role::Admin => matches!(right, Read | Submit | Operate | Admin),
            Role::Worker => matches!(right, Work),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `worker_id` fits `pattern`: literal characters, and `*` for any run of
/// characters (including none). An empty pattern matches nothing.
pub fn worker_pattern_matches(pattern: &str, worker_id: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == worker_id;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !worker_id.starts_with(first) || worker_id.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &worker_id[first.len()..worker_id.len()];
    if !rest.ends_with(last) {
        return false;
    }
    rest = &rest[..rest.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Checks a worker-id pattern: 1 to 128 characters of letters, digits, `.`, `_`, `-`
/// and `*`.
pub fn check_worker_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "must be 1 to {MAX_PATTERN_LEN} characters, got {}",
            pattern.len()
        ));
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
    {
        return Err(format!(
            "{pattern:?} contains {c:?}; use letters, digits, '.', '_', '-' and '*'"
        ));
    }
    Ok(())
}

/// Whether an operator limited to `scope` may act on `queue` (an empty scope is every queue).
pub fn queue_allowed(scope: &[String], queue: &str) -> bool {
    scope.is_empty() || scope.iter().any(|q| q == queue)
}

/// Whether `s` has the form of a Drover token (`drover_` and 64 lower-case hex digits).
/// Checked before any lookup so garbage never reaches the database.
pub fn is_token_form(s: &str) -> bool {
    s.strip_prefix(TOKEN_PREFIX).is_some_and(|h| {
        h.len() == TOKEN_HEX_LEN
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The token in an `authorization` header value: `Bearer <token>` (scheme
/// case-insensitive). `None` when the header is not a bearer token of the right form.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    is_token_form(token).then_some(token)
}

/// A lifetime such as `90s`, `30m`, `12h`, `30d` or `2w`.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    if n == 0 {
        return Err(format!("{s:?}: must be positive"));
    }
    // Ten years is plenty; more would overflow timestamp arithmetic sooner or later.
    let total = n.saturating_mul(secs);
    if total > 10 * 366 * 86_400 {
        return Err(format!("{s:?}: at most 10 years"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        use Right::*;
        let table: &[(Role, &[Right])] = &[
            (Role::Viewer, &[Read]),
            (Role::Operator, &[Read, Submit, Operate]),
            (Role::Admin, &[Read, Submit, Operate, Admin]),
            (Role::Worker, &[Work]),
        ];
        for (role, rights) in table {
            for r in [Read, Submit, Operate, Admin, Work] {
                assert_eq!(role.has(r), rights.contains(&r), "{role} {r}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(*role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn worker_patterns() {
        let cases = [
            ("w1", "w1", true),
            ("w1", "w10", false),
            ("w*", "w10", true),
            ("w*", "x1", false),
            ("*", "anything", true),
            ("*", "", true),
            ("host-*-gpu", "host-12-gpu", true),
            ("host-*-gpu", "host-12-cpu", false),
            ("host-*-gpu", "host-gpu", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("", "", false),
            ("", "w1", false),
        ];
        for (p, id, want) in cases {
            assert_eq!(worker_pattern_matches(p, id), want, "{p:?} vs {id:?}");
        }
        assert!(check_worker_pattern("host-*").is_ok());
        assert!(check_worker_pattern("").is_err());
        assert!(check_worker_pattern("a/b").is_err());
        assert!(check_worker_pattern(&"x".repeat(129)).is_err());
    }

    #[test]
    fn queue_scope() {
        assert!(queue_allowed(&[], "any"));
        let s = vec!["a".to_string(), "b".to_string()];
        assert!(queue_allowed(&s, "b"));
        assert!(!queue_allowed(&s, "c"));
    }

    #[test]
    fn bearer_headers() {
        let t = format!("drover_{}", "ab".repeat(32));
        assert_eq!(bearer(&format!("Bearer {t}")), Some(t.as_str()));
        assert_eq!(bearer(&format!("bearer  {t} ")), Some(t.as_str()));
        assert_eq!(bearer(&format!("Basic {t}")), None);
        assert_eq!(bearer(&t), None);
        assert_eq!(bearer("Bearer drover_xyz"), None);
        assert_eq!(bearer(&format!("Bearer {}", t.to_uppercase())), None);
        assert_eq!(bearer(&format!("Bearer {t}0")), None);
        assert!(!is_token_form(&format!("drover_{}", "g".repeat(64))));
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "0d",
            "-1d",
            "99999999999999999999d",
            "4000d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
