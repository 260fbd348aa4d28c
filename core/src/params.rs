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

/// Walks `arg`, handing each piece of the result to `emit` in order: literal text and
/// parameter values. Shared by [`substitute`] and [`expanded_len`], so the size check and
/// the substitution can never disagree.
fn walk<'a>(
    arg: &'a str,
    params: &'a BTreeMap<String, String>,
    mut emit: impl FnMut(&'a str),
) -> Result<(), ParamError> {
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}', '$']) {
        emit(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            emit(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with("${") {
            // Shell parameter expansion: copy through to its closing brace.
            let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
            emit(&tail[..end]);
            rest = &tail[end..];
        } else if let (true, Some(close)) = (tail.starts_with('{'), tail.find('}')) {
            let name = &tail[1..close];
            if is_identifier(name) {
                match params.get(name) {
                    Some(v) => emit(v),
                    None => return Err(ParamError::Missing(name.to_string())),
                }
            } else {
                emit(&tail[..=close]);
            }
            rest = &tail[close + 1..];
        } else {
            emit(&tail[..1]);
            rest = &tail[1..];
        }
    }
    emit(rest);
    Ok(())
}

/// Replaces every `{name}` in `arg` with `params[name]`.
pub fn substitute(arg: &str, params: &BTreeMap<String, String>) -> Result<String, ParamError> {
    let mut out = String::with_capacity(arg.len());
    walk(arg, params, |piece| out.push_str(piece))?;
    Ok(out)
}

/// The length in bytes `substitute(arg, params)` would have, computed without building it
/// (a 50 KB request can expand to gigabytes). Saturates at `u64::MAX`.
pub fn expanded_len(arg: &str, params: &BTreeMap<String, String>) -> Result<u64, ParamError> {
    let mut n: u64 = 0;
    walk(arg, params, |piece| {
        n = n.saturating_add(piece.len() as u64)
    })?;
    Ok(n)
}

/// Bytes of the whole argv after substitution, counting a NUL after each argument as
/// `execve` does. Err names the argument with a missing placeholder.
pub fn expanded_argv_len(
    argv: &[String],
    params: &BTreeMap<String, String>,
) -> Result<u64, (usize, ParamError)> {
    let mut total: u64 = 0;
    for (i, a) in argv.iter().enumerate() {
        let n = expanded_len(a, params).map_err(|e| (i, e))?;
        total = total.saturating_add(n).saturating_add(1);
    }
    Ok(total)
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
    fn expanded_len_matches_substitute() {
        let params = p(&[("a", "1"), ("long", &"x".repeat(1000))]);
        for arg in [
            "",
            "plain",
            "{a}",
            "{{a}} {a}",
            "x=${a} y={a} {long}{long}",
            "{not a name} {1x} {",
            "}}}{{{",
            "${unterminated",
        ] {
            assert_eq!(
                expanded_len(arg, &params).unwrap(),
                substitute(arg, &params).unwrap().len() as u64,
                "{arg}"
            );
        }
        assert!(expanded_len("{b}", &params).is_err());
    }

    #[test]
    fn expanded_len_of_a_huge_expansion_is_computed_without_building_it() {
        // 16 700 placeholders of a 60 000-byte value: about 1 GB if it were built.
        let params = p(&[("p", &"x".repeat(60_000))]);
        let argv: Vec<String> = std::iter::once("echo".to_string())
            .chain(std::iter::repeat_n("{p}".to_string(), 16_700))
            .collect();
        let n = expanded_argv_len(&argv, &params).unwrap();
        assert_eq!(n, 5 + 16_700 * 60_001);
    }

    #[test]
    fn argv_errors_name_the_index() {
        let argv = vec!["x".to_string(), "{missing}".to_string()];
        assert_eq!(substitute_argv(&argv, &BTreeMap::new()).unwrap_err().0, 1);
    }
}
