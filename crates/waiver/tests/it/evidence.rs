//! Exports of the demo register, built with a pinned clock so the bytes are reproducible:
//! each format is a golden file under `docs/evidence/` (regenerate with
//! `WAIVER_UPDATE_GOLDEN=1` and review the diff). CI validates a fresh OSCAL export with
//! compliance-trestle (`scripts/validate-oscal.sh`).

use std::{path::Path, sync::Arc};

use serde_json::Value;
use waiver::app::App;
use waiver_core::{Actor, ManualClock, Principal, Role};
use waiver_evidence::Format;
use waiver_service::Service;

async fn demo_at(at: &str) -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(waiver_store_sqlite::SqliteStore::open(&dir.path().join("waiver.db")).await.unwrap());
    let baseline =
        waiver_engine::Baseline::parse(waiver::demo::DEMO_POLICIES, None, Some(waiver::demo::DEMO_ENTITIES)).unwrap();
    let clock = Arc::new(ManualClock::new(at.parse().unwrap()));
    let service =
        Service::new(store.clone(), waiver_core::Rules::default(), clock).with_baseline(Ok(Arc::new(baseline)));
    let app = App { service: service.clone(), store, data_dir: dir.path().to_owned() };
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

#[tokio::test(flavor = "multi_thread")]
async fn exports_of_the_demo_match_their_golden_files() {
    let (_dir, service) = demo_at("2026-11-23T12:00:00Z").await;
    let auditor = Actor::new(Principal::parse("p", "ari").unwrap(), &[Role::Auditor]);
    let csv = service.export(&auditor, Format::Csv).await.unwrap();
    let json = service.export(&auditor, Format::Json).await.unwrap();
    let oscal = service.export(&auditor, Format::OscalPoam).await.unwrap();

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

    // The same register renders the same bytes.
    assert_eq!(service.export(&auditor, Format::Csv).await.unwrap(), csv);
    // The demo issues persona tokens (random ids) into the chain: its head hash, and the
    // POA&M's document uuid derived from it, differ from run to run; nothing else may.
    let head = register["chain"]["head_hash"].as_str().unwrap();
    let document = poam["uuid"].as_str().unwrap();
    let stable = |text: &str| text.replace(head, "<AUDIT-CHAIN-HEAD>").replace(document, "<DOCUMENT-UUID>");
    golden("register.csv", &stable(&csv));
    golden("register.json", &stable(&json));
    golden("register.oscal-poam.json", &stable(&oscal));

    // Requesters and PEPs take no evidence out.
    let requester = Actor::new(Principal::parse("p", "chris").unwrap(), &[Role::Requester]);
    assert!(matches!(service.export(&requester, Format::Csv).await, Err(waiver_service::ServiceError::Forbidden(_))));
}
