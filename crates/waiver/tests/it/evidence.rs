//! Exports of the demo register, built with a pinned clock so the bytes are reproducible:
//! each format is a golden file under `docs/evidence/` (regenerate with
//! `WAIVER_UPDATE_GOLDEN=1` and review the diff). CI validates a fresh OSCAL export with
//! compliance-trestle (`scripts/validate-oscal.sh`).

use std::{path::Path, sync::Arc};

use serde_json::{Value, json};
use waiver::app::App;
use waiver_core::{Actor, ManualClock, Principal, Role};
use waiver_evidence::Format;
use waiver_service::Service;

async fn demo_at(at: &str) -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    // The demo's files, which its build records as the log's first baseline and rules.
    std::fs::create_dir_all(dir.path().join("baseline")).unwrap();
    std::fs::write(dir.path().join("baseline/policies.cedar"), waiver::demo::DEMO_POLICIES).unwrap();
    std::fs::write(dir.path().join("baseline/entities.json"), waiver::demo::DEMO_ENTITIES).unwrap();
    std::fs::write(dir.path().join("rules.toml"), waiver_core::rules::DEFAULT_RULES_TOML).unwrap();
    let store = Arc::new(waiver_store_sqlite::SqliteStore::open(&dir.path().join("waiver.db")).await.unwrap());
    let baseline =
        waiver_engine::Baseline::parse(waiver::demo::DEMO_POLICIES, None, Some(waiver::demo::DEMO_ENTITIES)).unwrap();
    let clock = Arc::new(ManualClock::new(at.parse().unwrap()));
    let service =
        Service::new(store.clone(), waiver_core::Rules::default(), clock).with_baseline(Ok(Arc::new(baseline)));
    let app = App { service: service.clone(), store, data_dir: dir.path().to_owned(), baseline: None };
    waiver::demo::build(&app).await.unwrap();
    (dir, service)
}

fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/evidence").join(name);
    if std::env::var_os("WAIVER_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(expected == text, "docs/evidence/{name} is stale; rerun with WAIVER_UPDATE_GOLDEN=1 and review the diff");
}

/// Issue 17: an auditor takes the JSON export away and verifies it with nothing else; it
/// fails when any byte of it changes (a fixed budget of 400 positions spread over the
/// document, plus the parts an editor would aim at).
#[tokio::test(flavor = "multi_thread")]
async fn an_export_verifies_offline_and_fails_when_any_byte_changes() {
    let (_dir, service) = demo_at("2026-11-23T12:00:00Z").await;
    let auditor = Actor::new(Principal::parse("p", "ari").unwrap(), &[Role::Auditor]);
    let json = service.export(&auditor, Format::Json).await.unwrap();
    let verified = waiver_evidence::verify_export(&json).unwrap();
    // The demo's two baselines and two rules (the governance change 60 days back) and each
    // version of the people directory.
    assert!(verified.artifacts >= 5, "every baseline, rules and directory version travels along: {verified:?}");
    assert!(verified.exceptions > 20 && verified.identities > 20, "{verified:?}");
    let bytes = json.as_bytes();
    let mut tried = 0;
    for k in 0..400 {
        let at = k * bytes.len() / 400;
        if !bytes[at].is_ascii() {
            continue;
        }
        let mut changed = bytes.to_vec();
        changed[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
        let changed = String::from_utf8(changed).unwrap();
        let refused = waiver_evidence::verify_export(&changed);
        assert!(refused.is_err(), "a change at byte {at} ({:?}) went unnoticed", &json[at.saturating_sub(20)..at + 20]);
        tried += 1;
    }
    assert!(tried > 350);
    // Aimed edits: a state in a view, a record's state, the baseline's text, usage left alone.
    for (from, to) in [
        ("\"state\": \"revoked\"", "\"state\": \"approved\""),
        ("\\\"state\\\":\\\"revoked\\\"", "\\\"state\\\":\\\"approved\\\""),
        ("forbid", "permit"),
    ] {
        assert!(json.contains(from), "{from}");
        let edited = json.replacen(from, to, 1);
        let why = waiver_evidence::verify_export(&edited).unwrap_err();
        assert!(!why.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_of_the_demo_match_their_golden_files() {
    let (_dir, service) = demo_at("2026-11-23T12:00:00Z").await;
    let auditor = Actor::new(Principal::parse("p", "ari").unwrap(), &[Role::Auditor]);
    let csv = service.export(&auditor, Format::Csv).await.unwrap();
    let json = service.export(&auditor, Format::Json).await.unwrap();
    let oscal = service.export(&auditor, Format::OscalPoam).await.unwrap();
    // The streamed JSON (what the API sends) is the same document, byte for byte.
    let mut pieces = service.export_json_stream(&auditor).await.unwrap();
    let mut streamed = String::new();
    while let Some(piece) = pieces.recv().await {
        streamed.push_str(&piece.unwrap());
    }
    assert_eq!(streamed, json, "streamed and whole exports agree");

    // What each format must carry, whatever the golden files say.
    let register: Value = serde_json::from_str(&json).unwrap();
    let exceptions = register["exceptions"].as_array().unwrap();
    assert_eq!(csv.lines().count(), exceptions.len() + 1, "a header and one row per exception");
    assert!(exceptions.iter().all(|e| e["events"].as_array().is_some_and(|ev| !ev.is_empty())), "events travel along");
    assert!(
        exceptions.iter().all(|e| e["controls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"] == "nist-csf-2.0:ID.RA-07"))
    );
    let poam: Value = serde_json::from_str(&oscal).unwrap();
    let poam = &poam["plan-of-action-and-milestones"];
    assert_eq!(poam["metadata"]["oscal-version"], "1.1.3");
    assert_eq!(poam["risks"].as_array().unwrap().len(), exceptions.len());
    assert_eq!(poam["metadata"]["props"][0]["value"], register["chain"]["head_hash"], "the chain head is named");
    let break_glass = poam["risks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["props"].as_array().unwrap().iter().any(|p| p["name"] == "break-glass" && p["value"] == "true"))
        .expect("a break-glass risk");
    assert!(break_glass["risk-log"]["entries"].as_array().unwrap().len() >= 2, "its events are its risk log");
    for risk in poam["risks"].as_array().unwrap() {
        let changes: Vec<&Value> = risk["risk-log"]["entries"]
            .as_array()
            .map(|entries| entries.iter().filter_map(|e| e.get("status-change")).collect())
            .unwrap_or_default();
        assert!(!changes.is_empty() && changes.windows(2).all(|w| w[0] != w[1]), "status changes only where it moved");
    }

    // The same register renders the same bytes.
    assert_eq!(service.export(&auditor, Format::Csv).await.unwrap(), csv);
    // The demo issues persona tokens (random ids) into the chain: its head hash, and the
    // POA&M's document uuid derived from it, differ from run to run; nothing else may.
    let head = register["chain"]["head_hash"].as_str().unwrap();
    let document = poam["uuid"].as_str().unwrap();
    let stable = |text: &str| text.replace(head, "<AUDIT-CHAIN-HEAD>").replace(document, "<DOCUMENT-UUID>");
    golden("register.csv", &stable(&csv));
    // The log and the token digests carry the persona tokens' random ids from the first
    // `token.issued` on: the golden file keeps the log up to there (the offline verification
    // test checks the whole document).
    let mut pinned = register.clone();
    let log = pinned["log"].as_array_mut().unwrap();
    let first_token =
        log.iter().position(|e| e["body"].as_str().unwrap().contains("\"type\":\"token.issued\"")).unwrap();
    log.truncate(first_token);
    pinned["tokens"] = json!([]);
    golden("register.json", &stable(&format!("{}\n", serde_json::to_string_pretty(&pinned).unwrap())));
    golden("register.oscal-poam.json", &stable(&oscal));

    // Requesters and PEPs take no evidence out.
    let requester = Actor::new(Principal::parse("p", "chris").unwrap(), &[Role::Requester]);
    assert!(matches!(service.export(&requester, Format::Csv).await, Err(waiver_service::ServiceError::Forbidden(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_find_the_demo_precedent_and_propose_a_change_cedar_confirms() {
    use waiver_evidence::reports::{Options, Report};
    let (_dir, service) = demo_at("2026-11-23T12:00:00Z").await;
    let auditor = Actor::new(Principal::parse("p", "ari").unwrap(), &[Role::Auditor]);
    let report = |which: Report, options: Options| {
        let (service, auditor) = (service.clone(), auditor.clone());
        async move { service.report(&auditor, which, options).await.unwrap() }
    };

    // Precedent: direct production database access, asked for again and again.
    let precedent = report(Report::Precedent, Options::default()).await;
    let cluster = precedent["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["waives"] == "forbid-prod-db-direct-access")
        .expect("the demo's precedent cluster is found");
    assert!(cluster["subjects"].as_array().unwrap().len() >= 3);
    let members = cluster["exceptions"].as_array().unwrap();
    assert_eq!(cluster["proposal"]["makes_unnecessary"].as_array().unwrap(), members, "the proposal covers them all");
    let changes = cluster["proposal"]["changes"].as_array().unwrap();
    // Check the proposal independently: put it into the baseline, ask Cedar with no
    // exception at all. A member subject is now allowed; anyone else still is not.
    let current = service.baseline().unwrap();
    let mut text = String::new();
    for (id, _) in current.policies() {
        match changes.iter().find(|c| c["change"] == "replace" && c["policy_id"] == id.as_str()) {
            Some(change) => text.push_str(change["policy"].as_str().unwrap()),
            None => text.push_str(&current.policy_text(&id).unwrap()),
        }
        text.push('\n');
    }
    for added in changes.iter().filter(|c| c["change"] == "add") {
        text.push_str(added["policy"].as_str().unwrap());
    }
    // The cluster's principals become members of a group the proposal adds to the entities.
    let (_, schema, entities) = current.sources();
    let mut entities: Vec<Value> = serde_json::from_str(entities.unwrap_or("[]")).unwrap();
    let literal = |cedar: &str| -> Value {
        let (ty, id) = cedar.split_once("::").unwrap();
        serde_json::json!({"type": ty, "id": serde_json::from_str::<String>(id).unwrap()})
    };
    for added in changes.iter().filter(|c| c["change"] == "add_members") {
        let group = literal(added["group"].as_str().unwrap());
        entities.push(serde_json::json!({"uid": group, "attrs": {}, "parents": []}));
        for member in added["members"].as_array().unwrap() {
            entities
                .push(serde_json::json!({"uid": literal(member.as_str().unwrap()), "attrs": {}, "parents": [group]}));
        }
    }
    assert!(changes.iter().any(|c| c["change"] == "add_members"), "keyed on a group, not a list: {changes:?}");
    let entities = Value::Array(entities).to_string();
    let proposed = waiver_engine::Baseline::parse(&text, schema, Some(&entities)).unwrap();
    let snapshot = waiver_engine::Snapshot::new(Arc::new(proposed), std::iter::empty::<waiver_core::Exception>());
    let ask = |subject: &str, database: &str| {
        let request = waiver_engine::DecisionRequest {
            subject: waiver_engine::Target {
                entity_type: "ServiceAccount".into(),
                id: subject.into(),
                properties: None,
            },
            action: "connect".into(),
            resource: waiver_engine::Target { entity_type: "Database".into(), id: database.into(), properties: None },
            context: serde_json::json!({}),
        };
        snapshot.baseline_only(&request).unwrap()
    };
    assert!(ask("billing-etl", "orders-prod"), "a member of the cluster no longer needs its exception");
    assert!(!ask("backup-runner", "orders-prod"), "the carve-out is narrow: others are still denied");
    assert!(!current.policy_text("forbid-prod-db-direct-access").unwrap().contains("unless"), "nothing was applied");

    // Hygiene: the demo has overdue reviews, and no open exception of an offboarded identity.
    let hygiene = report(Report::Hygiene, Options::default()).await;
    assert!(!hygiene["reviews_overdue"].as_array().unwrap().is_empty());
    assert!(!hygiene["post_use_reviews_overdue"].as_array().unwrap().is_empty());
    assert_eq!(hygiene["offboarded_or_ownerless"], serde_json::json!([]), "must be none: offboarding revokes");

    let sprawl = report(Report::Sprawl, Options { weeks: 8, ..Options::default() }).await;
    let weekly = sprawl["weekly"].as_array().unwrap();
    assert_eq!(weekly.len(), 8);
    assert!(weekly.iter().any(|w| w["active"].as_u64().unwrap() > 0));
    let by_rule = sprawl["by_waived_rule"].as_array().unwrap();
    assert!(by_rule.windows(2).all(|w| w[0]["count"].as_u64() >= w[1]["count"].as_u64()), "largest first");

    let drift = report(Report::Drift, Options::default()).await;
    assert!(!drift["renewed"].as_array().unwrap().is_empty(), "the demo renews one");

    let register: Value = serde_json::from_str(&service.export(&auditor, Format::Json).await.unwrap()).unwrap();
    let exceptions = register["exceptions"].as_array().unwrap();
    // The one-pass weekly series against the definition: opened in (end - 7 days, end].
    let at = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    for week in weekly {
        let end = at(&week["week_ending"]);
        let start = end - jiff::SignedDuration::from_hours(24 * 7);
        let opened = exceptions.iter().filter(|e| at(&e["created_at"]) > start && at(&e["created_at"]) <= end).count();
        assert_eq!(week["opened"].as_u64().unwrap() as usize, opened, "{week}");
    }
    assert!(weekly.iter().any(|w| w["opened"].as_u64().unwrap() > 0));
    let break_glass = report(Report::BreakGlass, Options::default()).await;
    let n_break_glass = exceptions.iter().filter(|e| e["kind"] == "break_glass").count();
    assert_eq!(break_glass["activations"].as_u64().unwrap() as usize, n_break_glass);

    let frameworks = report(Report::Frameworks, Options::default()).await;
    let csf = frameworks["frameworks"].as_array().unwrap().iter().find(|f| f["framework"] == "nist-csf-2.0").unwrap();
    let ra07 = csf["controls"].as_array().unwrap().iter().find(|c| c["id"] == "ID.RA-07").unwrap();
    assert_eq!(ra07["exceptions"].as_u64().unwrap() as usize, exceptions.len(), "every exception maps to ID.RA-07");
}
