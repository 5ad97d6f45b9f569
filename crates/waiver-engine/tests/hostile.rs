//! Hostile Cedar-facing input: nested and random text through every parser the engine
//! runs (policies, schemas, entities, conditions, request contexts and properties).
//!
//! Every case runs on a 2 MiB thread, the stack of a tokio worker, so an input that would
//! overflow the stack aborts this test binary, as it would abort the server. The fuzzing
//! part is a proptest generator with a fixed number of cases (see `FUZZ_CASES`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests")]

use std::sync::Arc;

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};
use waiver_core::{EntityRef, Exception, Kind, ResourceScope, Scope, State, Waived};
use waiver_engine::{Baseline, BaselineError, DecisionRequest, Snapshot, Target, limits};

mod common;

/// Generated inputs per proptest below; with four properties, 4 × this many cases.
const FUZZ_CASES: u32 = 1_500;

const POLICIES: &str = r#"@id("allow-reads") permit(principal, action == Action::"read", resource);
@id("forbid-prod") forbid(principal, action, resource) when { resource has env && resource.env == "prod" };"#;

/// Runs `f` on a thread with a tokio worker's 2 MiB stack.
fn on_worker_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
}

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// The nested shapes that broke the parser, at `depth`.
fn nested_conditions(depth: usize) -> Vec<(&'static str, String)> {
    vec![
        ("parentheses", nested("(", "true", ")", depth)),
        ("sets", format!("{} == []", nested("[", "1", "]", depth))),
        ("records", format!("{} == {{}}", nested("{a: ", "1", "}", depth))),
        ("ifs", format!("{}true{}", "if true then ".repeat(depth), " else false".repeat(depth))),
        ("and-chains", vec!["(true"; depth].join(" && ") + &")".repeat(depth)),
    ]
}

fn exception(condition: &str) -> Exception {
    common::exception(common::Parts {
        id: "EXC-000001".parse().unwrap(),
        kind: Kind::Planned,
        state: State::Approved,
        subject: "ServiceAccount:etl".parse().unwrap(),
        waives: vec![Waived::parse("forbid-prod").unwrap()],
        scope: Scope {
            actions: vec!["read".into()],
            resources: vec![ResourceScope {
                entity: EntityRef::parse_parts("r", "Database", "orders").unwrap(),
                descendants: false,
            }],
        },
        condition: Some(condition.to_owned()),
        starts_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires_at: "2027-01-01T00:00:00Z".parse().unwrap(),
    })
}

fn request(context: Value, properties: Option<Value>) -> DecisionRequest {
    DecisionRequest {
        subject: Target { entity_type: "ServiceAccount".into(), id: "etl".into(), properties: None },
        action: "read".into(),
        resource: Target {
            entity_type: "Database".into(),
            id: "orders".into(),
            properties: properties
                .and_then(|p| p.as_object().cloned())
                .or_else(|| Some(serde_json::Map::from_iter([("env".to_owned(), json!("prod"))]))),
        },
        context,
    }
}

fn too_complex(result: Result<impl std::fmt::Debug, BaselineError>) -> bool {
    matches!(result, Err(BaselineError::TooComplex { .. }))
}

#[test]
fn deep_nesting_is_refused_before_any_parser_runs() {
    on_worker_stack(|| {
        let baseline = Baseline::parse(POLICIES, None, None).unwrap();
        for depth in [150, 1_000, 10_000] {
            for (shape, condition) in nested_conditions(depth) {
                let result = baseline.compile_condition(&condition);
                assert!(too_complex(result), "a condition of {shape} {depth} deep");
                let policy = format!("@id(\"p\") permit(principal, action, resource) when {{ {condition} }};");
                assert!(too_complex(Baseline::parse(&policy, None, None)), "a policy of {shape} {depth} deep");
            }
            let schema = format!("entity User {{ tags: {}; }};", nested("Set<", "Long", ">", depth));
            assert!(too_complex(Baseline::parse(POLICIES, Some(&schema), None)), "a schema {depth} deep");
            let entities = format!(
                r#"[{{"uid": {{"type": "User", "id": "a"}}, "attrs": {{"x": {}}}, "parents": []}}]"#,
                nested("[", "1", "]", depth)
            );
            assert!(too_complex(Baseline::parse(POLICIES, None, Some(&entities))), "entities {depth} deep");
            let message = Baseline::parse(POLICIES, None, Some(&entities)).unwrap_err().to_string();
            assert!(message.starts_with("the entities cannot be parsed safely: it nests"), "{message}");
        }
    });
}

#[test]
fn deep_contexts_and_properties_are_refused_or_ignored_at_decision_time() {
    on_worker_stack(|| {
        let baseline = Arc::new(Baseline::parse(POLICIES, None, None).unwrap());
        let snapshot = Snapshot::new(baseline, [exception("context.ok == true")]);
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        for depth in [150, 1_000, 10_000] {
            // A request body this deep never becomes a value: serde_json stops at 128 levels.
            let text = format!(r#"{{"ok": true, "deep": {}}}"#, nested("[", "1", "]", depth));
            assert!(serde_json::from_str::<Value>(&text).is_err(), "serde_json refuses {depth} levels");
        }
        for depth in [limits::MAX_NESTING + 1, 100, 126] {
            let text = format!(r#"{{"ok": true, "deep": {}}}"#, nested("[", "1", "]", depth));
            let context: Value = serde_json::from_str(&text).unwrap();
            let answer = snapshot.decide(&request(context.clone(), None), now, true);
            assert!(answer.is_err(), "a context {depth} deep is refused");
            let mut escaped = context.clone();
            escaped["ip"] = json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}});
            assert!(snapshot.decide(&request(escaped, None), now, true).is_err());
            // Properties deeper than the engine converts are dropped, never a crash.
            let properties = json!({ "env": "prod", "deep": context["deep"].clone() });
            let decision = snapshot.decide(&request(json!({"ok": true}), Some(properties)), now, false).unwrap();
            assert!(decision.allowed, "the exception still grants");
            // Dropping the deep value on this stack must not overflow either.
            drop(context);
        }
    });
}

#[test]
fn what_is_accepted_at_the_limits_evaluates_formats_and_drops_on_a_worker_stack() {
    on_worker_stack(|| {
        let baseline = Arc::new(Baseline::parse(POLICIES, None, None).unwrap());
        let depth = limits::MAX_NESTING - 3; // the condition sits inside `permit(…) when { … }`
        let mut conditions: Vec<String> = nested_conditions(depth).into_iter().map(|(_, c)| c).collect();
        conditions.push(vec!["context.ok"; limits::MAX_OPERATORS / 2].join(" && "));
        conditions.push(vec!["context.ok == true"; limits::MAX_OPERATORS / 3].join(" || "));
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        for condition in conditions {
            let compiled = baseline.compile_condition(&condition);
            let Ok(set) = compiled else { panic!("accepted at the limit: {}: {compiled:?}", &condition[..60]) };
            assert!(!set.to_string().is_empty());
            let snapshot = Snapshot::new(baseline.clone(), [exception(&condition)]);
            // Either answer is fine; what matters is an answer.
            let _ = snapshot.decide(&request(json!({"ok": true}), None), now, true).unwrap();
            drop(snapshot);
            drop(set);
        }
    });
}

/// Text made of Cedar's tokens and brackets, nested at random: what a fuzzer would send.
fn cedar_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("true".to_owned()),
        Just("context.x".to_owned()),
        Just("principal".to_owned()),
        Just("resource.env".to_owned()),
        Just("\"s\"".to_owned()),
        Just("1".to_owned()),
        Just("ip(\"10.0.0.1\")".to_owned()),
        Just("User::\"a\"".to_owned()),
        "[a-z(){}\\[\\]<>.,:;!&|=+*\"-]{0,12}",
    ];
    atom.prop_recursive(64, 2_000, 6, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| format!("({s})")),
            inner.clone().prop_map(|s| format!("[{s}]")),
            inner.clone().prop_map(|s| format!("{{a: {s}}}")),
            inner.clone().prop_map(|s| format!("!{s}")),
            inner.clone().prop_map(|s| format!("Set<{s}>")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} == {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} in {b}")),
            (inner.clone(), inner.clone(), inner).prop_map(|(a, b, c)| format!("if {a} then {b} else {c}")),
        ]
    })
}

/// JSON nested at random, up to 200 levels (past serde_json's own limit of 128).
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![Just("1".to_owned()), Just("\"x\"".to_owned()), Just("null".to_owned())];
    leaf.prop_recursive(200, 400, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| format!("[{s}]")),
            inner.clone().prop_map(|s| format!("{{\"a\": {s}}}")),
            inner.prop_map(|s| format!("{{\"__extn\": {{\"fn\": \"ip\", \"arg\": {s}}}}}")),
        ]
    })
}

fn fuzz_config() -> ProptestConfig {
    ProptestConfig { cases: FUZZ_CASES, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn random_conditions_never_abort(text in cedar_text()) {
        on_worker_stack(move || {
            let baseline = Arc::new(Baseline::parse(POLICIES, None, None).unwrap());
            if baseline.compile_condition(&text).is_ok() {
                let snapshot = Snapshot::new(baseline, [exception(&text)]);
                let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
                let _ = snapshot.decide(&request(json!({"x": 1}), None), now, true);
            }
        });
    }

    #[test]
    fn random_policies_and_schemas_never_abort(text in cedar_text()) {
        on_worker_stack(move || {
            let policy = format!("@id(\"p\") permit(principal, action, resource) when {{ {text} }};");
            let _ = Baseline::parse(&policy, None, None);
            let _ = Baseline::parse(&text, None, None);
            let schema = format!("entity User {{ a: {text} }}; action read appliesTo {{ principal: User, resource: User }};");
            let _ = Baseline::parse(POLICIES, Some(&schema), None);
        });
    }

    #[test]
    fn random_entities_never_abort(text in json_text()) {
        on_worker_stack(move || {
            let entities = format!(r#"[{{"uid": {{"type": "User", "id": "a"}}, "attrs": {{"x": {text}}}, "parents": []}}]"#);
            let _ = Baseline::parse(POLICIES, None, Some(&entities));
        });
    }

    #[test]
    fn random_contexts_and_properties_never_abort(text in json_text()) {
        on_worker_stack(move || {
            let Ok(value) = serde_json::from_str::<Value>(&text) else { return };
            let baseline = Arc::new(Baseline::parse(POLICIES, None, None).unwrap());
            let snapshot = Snapshot::new(baseline, [exception("context.x == 1")]);
            let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
            let _ = snapshot.decide(&request(json!({"x": value.clone()}), None), now, true);
            let _ = snapshot.decide(&request(json!({}), Some(json!({"env": value}))), now, true);
        });
    }
}
