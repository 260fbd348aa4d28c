//! `{name}` placeholders in argv, filled from the job's named params when it is leased.
//!
//! A placeholder is `{` + an identifier (`[A-Za-z_][A-Za-z0-9_]*`) + `}`. Anything else in
//! braces is left as it is, and so is shell syntax like `${HOME}` or `${X:-default}`, so
//! `sh -c` scripts need no escaping. `{{` and `}}` stand for literal braces.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("placeholder {{{0}}} has no value in params")]
    Missing(String),
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `{name}` in `arg` with `params[name]`.
pub fn substitute(arg: &str, params: &BTreeMap<String, String>) -> Result<String, ParamError> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}', '$']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with("${") {
            // Shell parameter expansion: copy through to its closing brace.
            let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
            out.push_str(&tail[..end]);
            rest = &tail[end..];
        } else if let (true, Some(close)) = (tail.starts_with('{'), tail.find('}')) {
            let name = &tail[1..close];
            if is_identifier(name) {
                match params.get(name) {
                    Some(v) => out.push_str(v),
                    None => return Err(ParamError::Missing(name.to_string())),
                }
            } else {
                out.push_str(&tail[..=close]);
            }
            rest = &tail[close + 1..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes every element of argv.
pub fn substitute_argv(
    argv: &[String],
    params: &BTreeMap<String, String>,
) -> Result<Vec<String>, (usize, ParamError)> {
    argv.iter()
        .enumerate()
        .map(|(i, a)| substitute(a, params).map_err(|e| (i, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replaces_named_placeholders() {
        let params = p(&[("date", "2026-11-22"), ("data_types", "odds")]);
        assert_eq!(
            substitute("--date={date}", &params).unwrap(),
            "--date=2026-11-22"
        );
        assert_eq!(
            substitute("{data_types},{date}", &params).unwrap(),
            "odds,2026-11-22"
        );
        assert_eq!(substitute("plain", &params).unwrap(), "plain");
    }

    #[test]
    fn escapes_shell_syntax_and_missing_values() {
        let params = p(&[("a", "1")]);
        assert_eq!(substitute("{{a}} {a}", &params).unwrap(), "{a} 1");
        assert_eq!(
            substitute("{b}", &params),
            Err(ParamError::Missing("b".into()))
        );
        // Not placeholders: left exactly as written.
        for literal in [
            "{a",
            "a}",
            "{}",
            "${HOME}",
            "echo ${X:-none} {not a name} {1x}",
            "awk '{print $1}'",
            "$a",
        ] {
            assert_eq!(substitute(literal, &params).unwrap(), literal);
        }
        assert_eq!(
            substitute("x=${a} y={a}", &params).unwrap(),
            "x=${a} y=1",
            "the shell owns ${{a}}"
        );
    }

    #[test]
    fn argv_errors_name_the_index() {
        let argv = vec!["x".to_string(), "{missing}".to_string()];
        assert_eq!(substitute_argv(&argv, &BTreeMap::new()).unwrap_err().0, 1);
    }
}
