//! Compiled output patterns of retry policies, shared by the whole process.
//!
//! A policy is compiled when it is submitted (`jobs_api::spec_from_pb`) or loaded from the
//! configuration, and kept here by its pattern text; ending an attempt (with the job's rows
//! locked) then only looks it up. A policy this process has not seen (a job submitted
//! through another coordinator, or before a restart) is compiled on its first use and kept.

use drover_core::validate::compile_policy;
use drover_core::{Patterns, RetryPolicy, ValidationError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Distinct pattern sets kept; past this the cache starts over (a bound, not an LRU:
/// real deployments have a handful of policies).
const MAX_ENTRIES: usize = 1024;

type Key = (Vec<String>, Vec<String>);

fn cache() -> &'static Mutex<HashMap<Key, Arc<Patterns>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Patterns>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn key(p: &RetryPolicy) -> Key {
    (p.permanent_patterns.clone(), p.retryable_patterns.clone())
}

fn keep(k: Key, compiled: Arc<Patterns>) {
    let mut m = cache().lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= MAX_ENTRIES && !m.contains_key(&k) {
        m.clear();
    }
    m.insert(k, compiled);
}

/// Validates a submitted or configured policy and keeps its compiled patterns.
pub fn admit(policy: &RetryPolicy) -> Result<(), ValidationError> {
    let compiled = compile_policy(policy)?;
    if !(policy.permanent_patterns.is_empty() && policy.retryable_patterns.is_empty()) {
        keep(key(policy), Arc::new(compiled));
    }
    Ok(())
}

/// `policy`'s compiled patterns: kept ones, or compiled now (once) and kept.
pub fn get(policy: &RetryPolicy) -> Arc<Patterns> {
    static EMPTY: OnceLock<Arc<Patterns>> = OnceLock::new();
    if policy.permanent_patterns.is_empty() && policy.retryable_patterns.is_empty() {
        return EMPTY.get_or_init(Default::default).clone();
    }
    let k = key(policy);
    if let Some(p) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
        return p.clone();
    }
    let compiled = Arc::new(Patterns::compile(policy));
    keep(k, compiled.clone());
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_policies_are_compiled_once_and_shared() {
        let p = RetryPolicy {
            permanent_patterns: vec!["unique-admit-test".into()],
            ..RetryPolicy::default()
        };
        admit(&p).unwrap();
        let a = get(&p);
        let b = get(&p);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.matches_policy(&p));
    }

    #[test]
    fn unseen_policies_are_compiled_on_first_use() {
        let p = RetryPolicy {
            retryable_patterns: vec!["unique-unseen-test".into()],
            ..RetryPolicy::default()
        };
        let a = get(&p);
        assert!(a.matches_policy(&p));
        assert!(Arc::ptr_eq(&a, &get(&p)));
    }

    #[test]
    fn a_bad_regex_is_refused_naming_the_field() {
        let p = RetryPolicy {
            retryable_patterns: vec!["ok".into(), "(".into()],
            ..RetryPolicy::default()
        };
        let e = admit(&p).unwrap_err();
        assert_eq!(e.field, "retry.retryable_patterns[1]");
        assert!(e.to_string().contains("bad regex"), "{e}");
    }
}
