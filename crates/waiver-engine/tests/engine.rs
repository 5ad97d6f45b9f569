//! The decision corpus (tests/corpus/*.json) and the slicing property test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests")]

use std::{path::Path, sync::Arc};

use jiff::Timestamp;
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use waiver_core::{EntityRef, Exception, Kind, ResourceScope, Scope, State, Waived};
use waiver_engine::{Baseline, DecisionRequest, Snapshot, Target};

mod common;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    description: String,
    policies: String,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    entities: Option<Value>,
    now: Timestamp,
    #[serde(default)]
    exceptions: Vec<CorpusException>,
    requests: Vec<CorpusRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusException {
    id: String,
    #[serde(default = "planned")]
    kind: String,
    state: String,
    subject: String,
    waives: Vec<String>,
    actions: Vec<String>,
    resources: Vec<CorpusResource>,
    #[serde(default)]
    condition: Option<String>,
    starts_at: Timestamp,
    expires_at: Timestamp,
}

fn planned() -> String {
    "planned".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusResource {
    #[serde(rename = "type")]
    entity_type: String,
    id: String,
    #[serde(default)]
    descendants: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusRequest {
    name: String,
    subject: Entity,
    action: String,
    resource: Entity,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    now: Option<Timestamp>,
    decision: bool,
    reasons: Vec<String>,
    #[serde(default)]
    exception_id: Option<String>,
    /// Expected near miss text for the subject's exceptions, in order, when denied.
    #[serde(default)]
    near_misses: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entity {
    #[serde(rename = "type")]
    entity_type: String,
    id: String,
    #[serde(default)]
    properties: Option<serde_json::Map<String, Value>>,
}

fn exception(c: &CorpusException) -> Exception {
    common::exception(common::Parts {
        id: c.id.parse().unwrap(),
        kind: Kind::parse(&c.kind).unwrap(),
        state: State::parse(&c.state).unwrap(),
        subject: c.subject.parse().unwrap(),
        waives: c.waives.iter().map(|w| Waived::parse(w).unwrap()).collect(),
        scope: Scope {
            actions: c.actions.clone(),
            resources: c
                .resources
                .iter()
                .map(|r| ResourceScope {
                    entity: EntityRef::parse_parts("r", &r.entity_type, &r.id).unwrap(),
                    descendants: r.descendants,
                })
                .collect(),
        },
        condition: c.condition.clone(),
        starts_at: c.starts_at,
        expires_at: c.expires_at,
    })
}

fn run_corpus(path: &Path) -> usize {
    let corpus: Corpus = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entities = corpus.entities.as_ref().map(Value::to_string);
    let baseline = Baseline::parse(&corpus.policies, corpus.schema.as_deref(), entities.as_deref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let exceptions: Vec<Exception> = corpus.exceptions.iter().map(exception).collect();
    let snapshot = Snapshot::new(Arc::new(baseline), exceptions.iter());
    for case in &corpus.requests {
        let request = DecisionRequest {
            subject: Target {
                entity_type: case.subject.entity_type.clone(),
                id: case.subject.id.clone(),
                properties: case.subject.properties.clone(),
            },
            action: case.action.clone(),
            resource: Target {
                entity_type: case.resource.entity_type.clone(),
                id: case.resource.id.clone(),
                properties: case.resource.properties.clone(),
            },
            context: case.context.clone(),
        };
        let now = case.now.unwrap_or(corpus.now);
        let what = format!("{} / {}", corpus.description, case.name);
        let decision = snapshot.decide(&request, now, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(decision.allowed, case.decision, "{what}: {decision:?}");
        assert_eq!(decision.reasons, case.reasons, "{what}");
        assert_eq!(decision.exception.as_ref().map(|g| g.id.to_string()), case.exception_id, "{what}");
        if let Some(expected) = &case.near_misses {
            let got: Vec<String> = decision.near_misses.iter().map(|m| format!("{}: {}", m.exception, m.why)).collect();
            assert_eq!(&got, expected, "{what}");
        }
        // Slicing never changes an answer.
        let unsliced = snapshot.decide_with(&request, now, true, false).unwrap();
        assert_eq!(unsliced, decision, "{what}: sliced and unsliced disagree");
    }
    corpus.requests.len()
}

#[test]
fn decision_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let n: usize = files.iter().filter(|p| p.extension().is_some_and(|e| e == "json")).map(|p| run_corpus(p)).sum();
    assert!(n >= 20, "the corpus has {n} requests");
}

#[test]
fn baselines_are_checked_when_written() {
    let err = Baseline::parse("permit(principal, action, resource);", None, None).unwrap_err();
    assert_eq!(err.to_string(), "policy 1 has no `@id(\"…\")` annotation; every baseline policy needs one");
    let twice = "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") forbid(principal, action, resource);";
    assert!(Baseline::parse(twice, None, None).unwrap_err().to_string().contains("`a` is used twice"));
    let reserved = "@id(\"default-deny\") permit(principal, action, resource);";
    assert!(Baseline::parse(reserved, None, None).is_err());
    assert!(Baseline::parse("@id(\"x\") permit(principal, action, resource) when { principal.", None, None).is_err());
    // A forbid that would error at run time is refused up front when there is a schema.
    let schema =
        "entity User = { team: String }; entity Doc; action read appliesTo { principal: User, resource: Doc };";
    let erroring =
        "@id(\"f\") forbid(principal, action == Action::\"read\", resource) when { principal.tema == \"x\" };";
    let err = Baseline::parse(erroring, Some(schema), None).unwrap_err().to_string();
    assert!(err.contains("policy `f`"), "{err}");
    let good = "@id(\"f\") forbid(principal, action == Action::\"read\", resource) when { principal.team == \"x\" };";
    let baseline = Baseline::parse(good, Some(schema), None).unwrap();
    assert!(baseline.compile_condition("principal.team == \"ops\"").is_ok());
    assert!(baseline.compile_condition("principal.tema == \"ops\"").is_err());
    assert!(baseline.compile_condition("true }; permit(principal, action, resource) when { true").is_err());
}

// --- Slicing agrees with evaluating the whole baseline ------------------------------------

const ACTIONS: [&str; 4] = ["read", "write", "deploy", "admin"];

fn policy() -> impl Strategy<Value = String> {
    let effect = prop_oneof![Just("permit"), Just("forbid")];
    let action = prop_oneof![
        Just("action".to_owned()),
        (0..4usize).prop_map(|a| format!("action == Action::\"{}\"", ACTIONS[a])),
        (0..4usize, 0..4usize)
            .prop_map(|(a, b)| format!("action in [Action::\"{}\", Action::\"{}\"]", ACTIONS[a], ACTIONS[b])),
    ];
    let principal =
        prop_oneof![Just("principal".to_owned()), (0..3u8).prop_map(|u| format!("principal == User::\"u{u}\""))];
    let condition = prop_oneof![
        Just(""),
        Just(" when { context has flag && context.flag }"),
        Just(" unless { resource == Doc::\"d0\" }")
    ];
    (effect, principal, action, condition).prop_map(|(e, p, a, c)| format!("{e}({p}, {a}, resource){c};"))
}

proptest! {
    #[test]
    fn sliced_and_unsliced_evaluation_agree(
        policies in prop::collection::vec(policy(), 1..12),
        requests in prop::collection::vec((0..3u8, 0..6usize, 0..2u8, any::<bool>()), 1..16),
    ) {
        let text: String = policies.iter().enumerate().map(|(idx, p)| format!("@id(\"p{idx}\") {p}\n")).collect();
        let snapshot = Snapshot::new(Arc::new(Baseline::parse(&text, None, None).unwrap()), std::iter::empty::<Exception>());
        let now = Timestamp::UNIX_EPOCH;
        for (user, action, doc, flag) in requests {
            let request = DecisionRequest {
                subject: Target { entity_type: "User".into(), id: format!("u{user}"), properties: None },
                // Indexes 4 and 5 name actions no policy mentions.
                action: ACTIONS.get(action).map_or_else(|| format!("other{action}"), |a| (*a).to_owned()),
                resource: Target { entity_type: "Doc".into(), id: format!("d{doc}"), properties: None },
                context: serde_json::json!({ "flag": flag }),
            };
            let sliced = snapshot.decide_with(&request, now, true, true).unwrap();
            let whole = snapshot.decide_with(&request, now, true, false).unwrap();
            prop_assert_eq!(sliced, whole, "{}\n{:?}", text, request);
        }
    }
}

#[test]
fn incremental_changes_apply_at_once_and_never_go_back_a_version() {
    let baseline = Arc::new(
        Baseline::parse(r#"@id("deny-deploys") forbid (principal, action == Action::"deploy", resource);"#, None, None)
            .unwrap(),
    );
    let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
    let active = exception(&CorpusException {
        id: "EXC-000001".into(),
        kind: "planned".into(),
        state: "active".into(),
        subject: "ServiceAccount:ci".into(),
        waives: vec!["deny-deploys".into(), "default-deny".into()],
        actions: vec!["deploy".into()],
        resources: vec![CorpusResource { entity_type: "Environment".into(), id: "prod".into(), descendants: false }],
        condition: None,
        starts_at: "2026-11-23T09:00:00Z".parse().unwrap(),
        expires_at: "2026-11-24T09:00:00Z".parse().unwrap(),
    });
    let request = DecisionRequest {
        subject: Target { entity_type: "ServiceAccount".into(), id: "ci".into(), properties: None },
        action: "deploy".into(),
        resource: Target { entity_type: "Environment".into(), id: "prod".into(), properties: None },
        context: Value::Null,
    };
    let empty = Snapshot::new(baseline.clone(), Vec::<Exception>::new());
    assert!(!empty.decide(&request, now, false).unwrap().allowed);
    let granted = empty.with_changes(std::slice::from_ref(&active));
    assert!(granted.decide(&request, now, false).unwrap().allowed, "an added exception grants at once");
    assert_eq!(granted.n_exceptions(), 1);
    let mut revoked = active.clone();
    revoked.state = State::Revoked;
    revoked.version += 1;
    let denied = granted.with_changes(std::slice::from_ref(&revoked));
    assert!(!denied.decide(&request, now, false).unwrap().allowed, "a revocation denies at once");
    assert_eq!(denied.n_exceptions(), 1, "replaced, not added");
    // A grant queues its exception for the usage flush once; the flush takes only what
    // was used (an idle node visits nothing), and a grant after it queues it again.
    let fresh = Snapshot::new(baseline.clone(), [&active]);
    assert!(fresh.take_used().is_empty(), "nothing granted, nothing to flush");
    for _ in 0..3 {
        assert!(fresh.decide(&request, now, false).unwrap().allowed);
    }
    let used = fresh.take_used();
    assert_eq!(
        used.iter()
            .map(|(id, c)| (id.to_string(), c.count.load(std::sync::atomic::Ordering::Relaxed)))
            .collect::<Vec<_>>(),
        [("EXC-000001".to_owned(), 3)]
    );
    assert!(fresh.take_used().is_empty(), "taken once");
    let next = fresh.with_changes::<Exception>(&[]);
    assert!(next.decide(&request, now, false).unwrap().allowed);
    assert_eq!(fresh.take_used().len(), 1, "the queue follows the snapshots that succeed it");
    fresh.mark_used(active.id);
    assert_eq!(next.take_used().len(), 1, "a failed flush queues it again");
    let stale = denied.with_changes(std::slice::from_ref(&active));
    assert!(!stale.decide(&request, now, false).unwrap().allowed, "an older version is ignored");
    assert!(granted.decide(&request, now, false).unwrap().allowed, "snapshots are immutable");
    let explained = denied.decide(&request, now, true).unwrap();
    let misses: Vec<String> = explained.near_misses.iter().map(|m| format!("{}: {}", m.exception, m.why)).collect();
    assert_eq!(misses, ["EXC-000001: revoked"], "an ended exception still explains itself");

    // A request nobody decided is held for explanations only, and grants once approved.
    let mut requested = active.clone();
    requested.state = State::Requested;
    requested.version = 1;
    let pending = empty.with_changes(std::slice::from_ref(&requested));
    assert!(!pending.decide(&request, now, false).unwrap().allowed);
    assert_eq!(pending.counters().count(), 0, "no counter, no compiled condition for a request");
    let approved = pending.with_changes(std::slice::from_ref(&active));
    assert!(approved.decide(&request, now, false).unwrap().allowed, "moved into the deciding index");
    assert_eq!(approved.n_exceptions(), 1);
    let rebuilt = Snapshot::new(baseline.clone(), [&requested]);
    assert_eq!(rebuilt.n_exceptions(), 1);
    assert_eq!(rebuilt.counters().count(), 0);

    // 10,000 requests nobody approved for one subject cost its decisions nothing.
    let flood: Vec<Exception> = (2..10_002u64)
        .map(|n| {
            let mut e = requested.clone();
            e.id = waiver_core::ExceptionId::new(n);
            e
        })
        .collect();
    let flooded = Snapshot::new(baseline.clone(), flood.iter().chain([&active]));
    assert_eq!((flooded.n_exceptions(), flooded.n_deciding()), (10_001, 1));
    assert!(flooded.decide(&request, now, false).unwrap().allowed);
}

#[test]
fn a_proposed_change_replaces_adds_and_groups_without_touching_the_original() {
    let entities = r#"[{"uid": {"type": "Database", "id": "orders"}, "attrs": {}, "parents": []},
                       {"uid": {"type": "ServiceAccount", "id": "etl"}, "attrs": {"tier": 2}, "parents": []}]"#;
    let baseline = Baseline::parse(
        "@id(\"forbid-db\") forbid (principal, action == Action::\"connect\", resource is Database);\n\
         @id(\"permit-all\") permit (principal, action, resource);",
        None,
        Some(entities),
    )
    .unwrap();
    let ask = |snapshot: &Snapshot, who: &str| {
        snapshot
            .baseline_only(&DecisionRequest {
                subject: Target { entity_type: "ServiceAccount".into(), id: who.into(), properties: None },
                action: "connect".into(),
                resource: Target { entity_type: "Database".into(), id: "orders".into(), properties: None },
                context: serde_json::json!({}),
            })
            .unwrap()
    };
    let carved = "@id(\"forbid-db\") forbid (principal, action == Action::\"connect\", resource is Database)\n\
                  unless { principal in WaiverPrecedent::\"forbid-db-1\" };";
    let group = waiver_engine::GroupChange {
        group: ("WaiverPrecedent", "forbid-db-1"),
        // One stored entity (its attributes are kept) and one the baseline never named.
        members: vec![("ServiceAccount", "etl"), ("ServiceAccount", "loader")],
    };
    let proposed = baseline.with_changes(&[("forbid-db", carved)], &[], Some(&group)).unwrap();
    let (original, changed) = (Snapshot::new(Arc::new(baseline), std::iter::empty::<Exception>()), {
        Snapshot::new(Arc::new(proposed), std::iter::empty::<Exception>())
    });
    assert!(ask(&changed, "etl") && ask(&changed, "loader"), "members are carved out");
    assert!(!ask(&changed, "backup"), "a non-member is still forbidden");
    assert!(!ask(&original, "etl"), "the baseline it came from is unchanged");
    assert!(changed.baseline().policy_text("forbid-db").unwrap().contains("unless"));
    // An added policy must carry a unique @id, like any baseline policy.
    let duplicate =
        original.baseline().with_changes(&[], &["@id(\"permit-all\") permit (principal, action, resource);"], None);
    assert!(duplicate.is_err());
}

/// Cedar's own answer: the whole entity store parsed with the schema, the request as given.
fn cedar_says(
    policies: &str,
    schema: Option<&str>,
    entities: &str,
    principal: &str,
    action: &str,
    resource: &str,
) -> bool {
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Schema};
    let schema = schema.map(|s| Schema::from_cedarschema_str(s).unwrap().0);
    let set: PolicySet = policies.parse().unwrap();
    let entities = Entities::from_json_str(entities, schema.as_ref()).unwrap();
    let uid = |s: &str| s.parse::<EntityUid>().unwrap();
    let request = Request::new(uid(principal), uid(action), uid(resource), Context::empty(), None).unwrap();
    Authorizer::new().is_authorized(&request, &set, &entities).decision() == cedar_policy::Decision::Allow
}

fn waiver_says(
    baseline: &Baseline,
    subject: (&str, &str),
    action: &str,
    resource: (&str, &str),
    props: Option<Value>,
) -> bool {
    let snapshot = Snapshot::new(
        Arc::new(Baseline::parse(baseline.sources().0, baseline.sources().1, baseline.sources().2).unwrap()),
        Vec::<Exception>::new(),
    );
    let request = DecisionRequest {
        subject: Target { entity_type: subject.0.into(), id: subject.1.into(), properties: None },
        action: action.into(),
        resource: Target {
            entity_type: resource.0.into(),
            id: resource.1.into(),
            properties: props.and_then(|p| p.as_object().cloned()),
        },
        context: Value::Null,
    };
    snapshot.decide(&request, "2026-11-23T12:00:00Z".parse().unwrap(), false).unwrap().allowed
}

#[test]
fn the_reported_divergences_from_cedar_answer_as_cedar_does() {
    // 1. An action group in entities.json, principal and resource the same entity.
    let policies = r#"@id("all") permit(principal, action, resource);
@id("no-writes") forbid(principal, action in Action::"writes", resource);"#;
    let entities = r#"[{"uid": {"type": "Action", "id": "delete"}, "attrs": {}, "parents": [{"type": "Action", "id": "writes"}]},
                       {"uid": {"type": "Action", "id": "writes"}, "attrs": {}, "parents": []},
                       {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]"#;
    let baseline = Baseline::parse(policies, None, Some(entities)).unwrap();
    let cedar = cedar_says(policies, None, entities, r#"User::"alice""#, r#"Action::"delete""#, r#"User::"alice""#);
    assert!(!cedar, "Cedar denies");
    assert_eq!(waiver_says(&baseline, ("User", "alice"), "delete", ("User", "alice"), None), cedar);

    // 2. The same group declared only in the schema.
    let schema = "entity User; action writes; action delete in [writes] appliesTo { principal: User, resource: User };\n\
                  action read appliesTo { principal: User, resource: User };";
    let entities = r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]"#;
    let baseline = Baseline::parse(policies, Some(schema), Some(entities)).unwrap();
    let cedar =
        cedar_says(policies, Some(schema), entities, r#"User::"alice""#, r#"Action::"delete""#, r#"User::"alice""#);
    assert!(!cedar, "Cedar denies");
    assert_eq!(waiver_says(&baseline, ("User", "alice"), "delete", ("User", "alice"), None), cedar);
    assert!(waiver_says(&baseline, ("User", "alice"), "read", ("User", "alice"), None), "outside the group: allowed");

    // 3. A namespaced schema: `delete` is `App::Action::"delete"`.
    let schema = "namespace App { entity User; action delete, read appliesTo { principal: User, resource: User }; }";
    let policies = r#"@id("all") permit(principal, action, resource);
@id("no-delete") forbid(principal, action == App::Action::"delete", resource);"#;
    let entities = r#"[{"uid": {"type": "App::User", "id": "alice"}, "attrs": {}, "parents": []}]"#;
    let baseline = Baseline::parse(policies, Some(schema), Some(entities)).unwrap();
    let cedar = cedar_says(
        policies,
        Some(schema),
        entities,
        r#"App::User::"alice""#,
        r#"App::Action::"delete""#,
        r#"App::User::"alice""#,
    );
    assert!(!cedar, "Cedar denies");
    assert_eq!(waiver_says(&baseline, ("App::User", "alice"), "delete", ("App::User", "alice"), None), cedar);
    let full = r#"App::Action::"delete""#;
    assert_eq!(
        waiver_says(&baseline, ("App::User", "alice"), full, ("App::User", "alice"), None),
        cedar,
        "by full uid"
    );
    assert!(waiver_says(&baseline, ("App::User", "alice"), "read", ("App::User", "alice"), None));
    // A name two namespaces share cannot be mapped: refused when the baseline is set.
    let two = "namespace A { entity U; action read appliesTo { principal: U, resource: U }; }
               namespace B { entity U; action read appliesTo { principal: U, resource: U }; }";
    let refused = Baseline::parse(r#"@id("all") permit(principal, action, resource);"#, Some(two), None).unwrap_err();
    assert!(refused.to_string().contains("the action name `read` means both"), "{refused}");

    // 5. A condition reading an attribute of another stored entity.
    let policies = r#"@id("owners") permit(principal, action, resource) when { resource.folder.owner == principal };"#;
    let entities = r#"[{"uid": {"type": "Folder", "id": "f"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "ann"}}}, "parents": []},
                       {"uid": {"type": "Doc", "id": "d"}, "attrs": {"folder": {"__entity": {"type": "Folder", "id": "f"}}}, "parents": []},
                       {"uid": {"type": "User", "id": "ann"}, "attrs": {}, "parents": []}]"#;
    let baseline = Baseline::parse(policies, None, Some(entities)).unwrap();
    let cedar = cedar_says(policies, None, entities, r#"User::"ann""#, r#"Action::"read""#, r#"Doc::"d""#);
    assert!(cedar, "Cedar allows");
    assert_eq!(waiver_says(&baseline, ("User", "ann"), "read", ("Doc", "d"), None), cedar);
    // Still the whole store when the request adds attributes the store lacks.
    let props = Some(serde_json::json!({"label": "x"}));
    assert_eq!(waiver_says(&baseline, ("User", "ann"), "read", ("Doc", "d"), props), cedar);

    // 4. Request properties never replace a stored attribute.
    let policies = r#"@id("all") permit(principal, action, resource);
@id("no-prod") forbid(principal, action, resource) when { resource has env && resource.env == "prod" };"#;
    let entities = r#"[{"uid": {"type": "Db", "id": "orders"}, "attrs": {"env": "prod"}, "parents": []}]"#;
    let baseline = Baseline::parse(policies, None, Some(entities)).unwrap();
    let cedar = cedar_says(policies, None, entities, r#"User::"bob""#, r#"Action::"read""#, r#"Db::"orders""#);
    assert!(!cedar, "Cedar denies");
    let props = Some(serde_json::json!({"env": "dev"}));
    assert_eq!(waiver_says(&baseline, ("User", "bob"), "read", ("Db", "orders"), props), cedar, "the stored env wins");
    // …but may supply one the store lacks.
    let props = Some(serde_json::json!({"env": "prod"}));
    assert!(!waiver_says(&baseline, ("User", "bob"), "read", ("Db", "unknown"), props));
}

#[test]
fn contexts_are_typed_by_the_schema_as_cedar_types_them() {
    use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Schema};
    let schema_text = "entity User; entity Db;\n\
        action connect appliesTo { principal: User, resource: Db, context: { source_ip: ipaddr } };";
    let policies = r#"@id("all") permit(principal, action, resource);
@id("office-only") forbid(principal, action, resource) unless { context.source_ip.isInRange(ip("10.20.0.0/16")) };"#;
    let baseline = Arc::new(Baseline::parse(policies, Some(schema_text), None).unwrap());
    let snapshot = Snapshot::new(baseline, Vec::<Exception>::new());
    let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
    let schema = Schema::from_cedarschema_str(schema_text).unwrap().0;
    let set: PolicySet = policies.parse().unwrap();
    let uid = |s: &str| s.parse::<EntityUid>().unwrap();
    for (ip, expected) in [("10.20.3.4", true), ("192.168.1.1", false)] {
        let json = serde_json::json!({"source_ip": ip});
        let action = uid(r#"Action::"connect""#);
        let context = Context::from_json_value(json.clone(), Some((&schema, &action))).unwrap();
        let request = Request::new(uid(r#"User::"a""#), action, uid(r#"Db::"d""#), context, Some(&schema)).unwrap();
        let cedar = Authorizer::new().is_authorized(&request, &set, &Entities::empty()).decision()
            == cedar_policy::Decision::Allow;
        assert_eq!(cedar, expected, "Cedar, from {ip}");
        let ours = DecisionRequest {
            subject: Target { entity_type: "User".into(), id: "a".into(), properties: None },
            action: "connect".into(),
            resource: Target { entity_type: "Db".into(), id: "d".into(), properties: None },
            context: json,
        };
        assert_eq!(snapshot.decide(&ours, now, false).unwrap().allowed, cedar, "waiver, from {ip}");
    }
    // A context the schema refuses is a bad request, as Cedar would have it.
    let bad = DecisionRequest {
        subject: Target { entity_type: "User".into(), id: "a".into(), properties: None },
        action: "connect".into(),
        resource: Target { entity_type: "Db".into(), id: "d".into(), properties: None },
        context: serde_json::json!({"source_ip": 7}),
    };
    assert!(snapshot.decide(&bad, now, false).is_err());
    // So is an action the schema does not declare, or a resource it does not apply to: an
    // unconstrained permit must not answer what Cedar would refuse to evaluate.
    for (action, resource_type) in [("drop", "Db"), ("connect", "User")] {
        let refused = DecisionRequest {
            subject: Target { entity_type: "User".into(), id: "a".into(), properties: None },
            action: action.into(),
            resource: Target { entity_type: resource_type.into(), id: "d".into(), properties: None },
            context: serde_json::json!({"source_ip": "10.20.3.4"}),
        };
        assert!(snapshot.decide(&refused, now, false).is_err(), "{action} on {resource_type}");
    }
}
