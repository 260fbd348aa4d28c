//! Property tests for the parsers and validators that take client input: whatever the
//! input, they answer (never panic), and what they accept obeys the documented bounds.

use drover_core::limits::{format_size, parse_cpus, parse_size};
use drover_core::params::{expanded_argv_len, expanded_len, substitute};
use drover_core::validate::{
    check_name, check_relative_path, sanitize_reported, validate_policy, validate_spec,
    MAX_EXPANDED_ARGV_BYTES,
};
use drover_core::{JobSpec, RetryPolicy};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Text heavy in the characters the placeholder syntax cares about.
fn template() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("$".to_string()),
            Just("{a}".to_string()),
            Just("{b_1}".to_string()),
            Just("${a}".to_string()),
            "[a-z_0-9 ]{0,4}",
            any::<char>().prop_map(|c| c.to_string()),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![Just("a".to_string()), Just("b_1".to_string()), "[a-z]{1,3}"],
        ".{0,40}",
        0..4,
    )
}

proptest! {
    #[test]
    fn expanded_len_is_the_substituted_length(t in template(), p in params()) {
        match (substitute(&t, &p), expanded_len(&t, &p)) {
            (Ok(s), Ok(n)) => prop_assert_eq!(s.len() as u64, n),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "disagree: {:?} {:?}", a, b),
        }
    }

    #[test]
    fn a_placeholder_free_template_is_unchanged(t in "[^{}$]{0,64}", p in params()) {
        prop_assert_eq!(substitute(&t, &p).unwrap(), t);
    }

    #[test]
    fn accepted_specs_expand_within_the_bound(
        argv in proptest::collection::vec(template(), 1..8),
        p in params(),
        env in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..3),
        labels in proptest::collection::vec(".{0,8}", 0..3),
        queue in ".{0,10}",
        timeout_ms in any::<i64>(),
    ) {
        let spec = JobSpec {
            argv: argv.clone(),
            env,
            queue,
            labels,
            params: p.clone(),
            timeout_ms,
            ..JobSpec::default()
        };
        if validate_spec(&spec).is_ok() {
            let n = expanded_argv_len(&argv, &p).unwrap();
            prop_assert!(n <= MAX_EXPANDED_ARGV_BYTES);
            prop_assert!(check_name("queue", &spec.queue).is_ok());
            prop_assert!((0..=drover_core::validate::MAX_TIMEOUT_MS).contains(&timeout_ms));
            prop_assert!(argv.iter().all(|a| !a.contains('\0')));
        }
    }

    #[test]
    fn names_accept_exactly_the_documented_alphabet(s in ".{0,80}") {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        prop_assert_eq!(check_name("f", &s).is_ok(), ok);
    }

    #[test]
    fn relative_paths_never_escape(s in "[a-z./\\\\\0\n]{0,24}") {
        if check_relative_path("f", &s).is_ok() {
            prop_assert!(!s.starts_with('/'));
            prop_assert!(!s.split('/').any(|c| c == ".."));
            prop_assert!(!s.chars().any(char::is_control));
        }
    }

    #[test]
    fn policies_with_any_numbers_validate_or_name_a_field(
        initial in any::<u64>(),
        max in any::<u64>(),
        mult in any::<f64>(),
        jitter in any::<f64>(),
        retries in any::<u32>(),
        pattern in ".{0,30}",
    ) {
        let p = RetryPolicy {
            initial_backoff_ms: initial,
            max_backoff_ms: max,
            multiplier: mult,
            jitter,
            max_retries: retries,
            permanent_patterns: vec![pattern],
            ..RetryPolicy::default()
        };
        match validate_policy(&p) {
            Ok(()) => {
                prop_assert!(initial <= max && max <= drover_core::retry::MAX_BACKOFF_MS);
                prop_assert!((1.0..=100.0).contains(&mult));
            }
            Err(e) => prop_assert!(e.field.starts_with("retry.")),
        }
        // Whatever was stored, the wait is finite and bounded.
        for f in [1u32, 7, 1000] {
            prop_assert!(p.backoff(f).as_millis() <= u128::from(drover_core::retry::MAX_BACKOFF_MS));
        }
    }

    #[test]
    fn sizes_round_trip(n in 0u64..(1 << 40)) {
        prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
    }

    #[test]
    fn size_and_cpu_parsers_never_panic(s in ".{0,24}") {
        let _ = parse_size(&s);
        let _ = parse_cpus(&s);
    }

    #[test]
    fn reported_text_is_bounded_and_single_line(s in ".{0,300}", max in 3usize..300) {
        let out = sanitize_reported(&s, max);
        prop_assert!(out.len() <= max);
        prop_assert!(!out.chars().any(char::is_control));
    }
}
