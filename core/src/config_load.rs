//! Loading layered settings (defaults, TOML file, environment, flags) with figment, shared by
//! the coordinator and the worker. Errors name the key and where it was set (the file's
//! path, or the environment variable); environment variables are read only for keys the
//! settings have, so `DROVER_TOKEN`, `DROVER_ADDR`, `DROVER_SECRET_*` and the like never
//! trip the unknown-key check.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use figment::{Figment, Metadata, Source};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// One line per problem, each naming the key and where it was set.
    #[error("{}", .0.join("\n"))]
    Load(Vec<String>),
    /// The first problem `validate()` found, naming its key.
    #[error("{0}")]
    Invalid(String),
}

/// Layers `T::default()`, `file`, each of `env` (narrowed to `T`'s top-level keys) and
/// `flags` (only the flags actually given), and extracts `T`.
pub fn load<T>(file: Option<&Path>, env: Vec<Env>, flags: Figment) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = T::default();
    let known = top_level_keys(&defaults);
    let mut f = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        f = f.merge(Toml::file_exact(path));
    }
    for e in env {
        let known = known.clone();
        f = f.merge(e.filter(move |k| {
            let first = k.as_str().split('.').next().unwrap_or_default();
            known.contains(&first.to_ascii_lowercase())
        }));
    }
    f = f.merge(flags);
    f.extract()
        .map_err(|e| ConfigError::Load(e.into_iter().map(|e| describe(&f, e)).collect()))
}

/// The keys the serialized defaults have at the top level (`Option`s that are `None` too).
pub fn top_level_keys<T: Serialize>(defaults: &T) -> BTreeSet<String> {
    match Value::serialize(defaults) {
        Ok(Value::Dict(_, d)) => d.into_keys().collect(),
        _ => BTreeSet::new(),
    }
}

/// `key: problem (in <file>)`: figment's own message says where the enclosing table came
/// from, which for an unknown key is the defaults rather than the file that has the typo.
fn describe(f: &Figment, e: figment::Error) -> String {
    let mut path = e.path.clone();
    let problem = match &e.kind {
        figment::error::Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_string()
        }
        kind => kind.to_string(),
    };
    let key = path.join(".");
    let md = f.find_metadata(&key).or(e.metadata.as_ref());
    let place = md.map(|md| where_set(md, &path)).unwrap_or_default();
    if key.is_empty() {
        format!("{problem}{place}")
    } else {
        format!("{key}: {problem}{place}")
    }
}

fn where_set(md: &Metadata, path: &[String]) -> String {
    match &md.source {
        Some(Source::File(p)) => format!(" (in {})", p.display()),
        Some(Source::Custom(s)) => format!(" (in {s})"),
        // An environment provider: its name quotes the prefix; nesting is spelled `__`.
        None if md.name.contains("environment") => {
            let prefix = md.name.split('`').nth(1).unwrap_or_default();
            let var = path.join("__").to_ascii_uppercase();
            format!(" (from {prefix}{var})")
        }
        None => format!(" (from {})", md.name),
        // Defaults and flags are both set in code; defaults are valid, so it was a flag.
        Some(_) => " (from a command-line flag)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        #[serde(with = "crate::duration::human")]
        ttl: Duration,
        name: Option<String>,
        inner: Inner,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        n: u32,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                ttl: Duration::from_secs(8),
                name: None,
                inner: Inner::default(),
            }
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        for (text, key) in [("tll = \"8s\"\n", "tll"), ("[inner]\nm = 1\n", "inner.m")] {
            let (_d, path) = file(text);
            let e = load::<Settings>(Some(&path), vec![], Figment::new()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{key}: unknown key")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn env_is_read_for_known_keys_only_and_errors_name_the_variable() {
        // Names no other test uses: the environment is the process's.
        std::env::set_var("H3ATEST_NAME", "from-env");
        std::env::set_var("H3ATEST_OTHER", "ignored");
        std::env::set_var("H3ATEST_INNER__N", "7");
        let env = || vec![Env::prefixed("H3ATEST_").split("__")];
        let s: Settings = load(None, env(), Figment::new()).expect("loads");
        assert_eq!(s.name.as_deref(), Some("from-env"));
        assert_eq!(s.inner.n, 7);
        std::env::set_var("H3ATEST2_TTL", "8");
        let e = load::<Settings>(None, vec![Env::prefixed("H3ATEST2_")], Figment::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ttl: 8: a duration needs a unit"), "{e}");
        assert!(e.ends_with("(from H3ATEST2_TTL)"), "{e}");
    }

    #[test]
    fn top_level_keys_include_unset_options() {
        let keys = top_level_keys(&Settings::default());
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            ["inner", "name", "ttl"]
        );
    }

    #[test]
    fn missing_file_is_its_own_error() {
        let e = load::<Settings>(Some(Path::new("/nonexistent.toml")), vec![], Figment::new());
        assert_eq!(
            e,
            Err(ConfigError::MissingFile(PathBuf::from("/nonexistent.toml")))
        );
    }
}
