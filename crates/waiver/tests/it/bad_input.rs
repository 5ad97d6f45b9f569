//! Bad input: every malformed or rule-breaking request is refused with the field and rule
//! named, exit code 2, and nothing stored.

use serde_json::{Value, json};

use crate::support::{Waiver, in_days, request};

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut target = &mut base;
    for (idx, key) in path.iter().enumerate() {
        if idx + 1 == path.len() {
            if value.is_null() {
                target.as_object_mut().unwrap().remove(*key);
            } else {
                target[*key] = value.clone();
            }
        } else {
            target = &mut target[*key];
        }
    }
    base
}

#[test]
fn bad_requests_name_the_field_and_store_nothing() {
    let w = Waiver::ready();
    let before = w.n_events();
    let ok = request(10);
    let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        ("missing owner", with(ok.clone(), &["owner"], Value::Null), "missing field `owner`", None),
        ("expiry in the past", with(ok.clone(), &["expires_at"], json!(in_days(-1))), "expires_at", None),
        (
            "beyond the cap",
            with(ok.clone(), &["expires_at"], json!(in_days(45))),
            "expires_at",
            Some("max_duration.risk.high"),
        ),
        ("empty scope", with(ok.clone(), &["scope", "actions"], json!([])), "scope.actions", None),
        (
            "wildcard action",
            with(ok.clone(), &["scope", "actions"], json!(["*"])),
            "scope.actions[0]",
            Some("wildcard_actions"),
        ),
        (
            "unknown control kind",
            with(ok.clone(), &["compensating_controls"], json!([{"kind": "firewall", "description": "x"}])),
            "compensating_controls[0].kind",
            None,
        ),
        ("invalid timestamp", with(ok.clone(), &["expires_at"], json!("next tuesday")), "expires_at", None),
        (
            "timestamp without offset",
            with(ok.clone(), &["expires_at"], json!("2027-01-01T00:00:00")),
            "expires_at",
            None,
        ),
        ("1 MB justification", with(ok.clone(), &["justification"], json!("x".repeat(1 << 20))), "justification", None),
        (
            "4 KiB + 1 justification",
            with(ok.clone(), &["justification"], json!("x".repeat(4097))),
            "justification",
            None,
        ),
        (
            "control characters",
            with(ok.clone(), &["justification"], json!("ok\u{0}then\u{202e}evil")),
            "justification",
            None,
        ),
        ("unknown field", with(ok.clone(), &["approved_by"], json!("me")), "unknown field `approved_by`", None),
        ("nested unknown field", with(ok.clone(), &["scope", "verbs"], json!(["x"])), "scope", None),
        ("wrong type", with(ok.clone(), &["waives"], json!("default-deny")), "waives", None),
        ("bad entity type", with(ok.clone(), &["subject", "type"], json!("Service Account")), "subject.type", None),
        (
            "unknown subject",
            with(ok.clone(), &["subject", "id"], json!("ghost")),
            "not in the identity inventory",
            None,
        ),
        ("bad risk", with(ok.clone(), &["risk"], json!("extreme")), "risk", None),
        ("duplicate waiver", with(ok.clone(), &["waives"], json!(["a", "a"])), "waives[1]", None),
        (
            "review slower than the rules",
            with(ok.clone(), &["review", "every"], json!("P30D")),
            "review.every",
            Some("review_every.high"),
        ),
        ("calendar period", with(ok.clone(), &["review", "every"], json!("P1M")), "review.every", None),
        (
            "missing controls for high risk",
            with(ok.clone(), &["compensating_controls"], json!([])),
            "compensating_controls",
            Some("controls.min.high"),
        ),
        (
            "no remediation",
            with(ok.clone(), &["remediation"], Value::Null),
            "remediation",
            Some("remediation_plan_required"),
        ),
        ("break_glass kind on request", with(ok.clone(), &["kind"], json!("break_glass")), "kind", None),
        ("not an object", json!(["x"]), "(document)", None),
    ];
    for (name, body, expect, rule) in cases {
        let run = w.file_request("dana", &body);
        assert_eq!(run.code, 2, "{name}: {run:?}");
        let problem = run.json();
        let text = problem.to_string();
        assert!(text.contains(expect), "{name}: expected `{expect}` in {text}");
        if let Some(rule) = rule {
            assert_eq!(problem["status"], 422, "{name}: {text}");
            let named = problem["errors"].as_array().unwrap().iter().any(|e| e["rule"] == rule);
            assert!(named, "{name}: rule `{rule}` not named in {text}");
        } else {
            assert!(problem["status"] == 400 || problem["status"] == 422, "{name}: {text}");
        }
        assert!(text.len() < 8192, "{name}: the error does not echo huge input ({} bytes)", text.len());
    }
    assert_eq!(w.n_events(), before, "nothing was stored");
    assert_eq!(w.run("admin", &["--output", "json", "exception", "list"]).ok().json()["items"], json!([]));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let w = Waiver::ready();
    for args in [
        &["exception", "approve", "EXC-0"][..],
        &["exception", "approve", "42"],
        &["exception", "show", "EXC-999999"],
        &["exception", "renew", "EXC-000001", "--expires-at", "tomorrow"],
        &["exception", "list", "--state", "sleeping"],
        &["identity", "show", "no-colon"],
        &["identity", "offboard", "ServiceAccount:nobody"],
        &["token", "issue", "--principal", "x", "--roles", "root"],
        &["no-such-command"],
    ] {
        let run = w.run("dana", args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?} explains itself");
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    }
    let missing = w.run("dana", &["--output", "json", "exception", "show", "EXC-000077"]);
    assert_eq!(missing.json()["status"], 404);
}
