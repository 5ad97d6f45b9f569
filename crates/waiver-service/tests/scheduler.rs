//! The scheduler's jobs against a real SQLite store and a manual clock: each finding is
//! recorded once, at the right time, and time-driven transitions land in the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests")]

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use waiver_core::{Actor, FollowUp, ManualClock, Principal, RevalidationTrigger, Role, Rules, State};
use waiver_service::{Action, Service};
use waiver_store_sqlite::SqliteStore;

fn who(name: &str, roles: &[Role]) -> Actor {
    Actor::new(Principal::parse("p", name).unwrap(), roles)
}

fn days(d: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * d)
}

fn t0() -> Timestamp {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

fn request(subject: &str, expires_at: Timestamp, kind: &str) -> waiver_proto::ExceptionRequest {
    let mut body = json!({
        "subject": {"type": "ServiceAccount", "id": subject},
        "waives": ["default-deny"],
        "scope": {"actions": ["read"], "resources": [{"type": "Bucket", "id": "logs"}]},
        "compensating_controls": [{"kind": "extra_logging", "description": "logged"}],
        "justification": "why", "normal_path_unavailable": "because", "risk": "low", "owner": "sam",
        "expires_at": expires_at.to_string(),
        "review": {"revalidate_on": ["code_change"]},
    });
    if kind == "planned" {
        body["remediation"] = json!({"plan": "fix it"});
    }
    serde_json::from_value(body).unwrap()
}

async fn setup(rules: Rules) -> (Service, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("waiver.db")).await.unwrap());
    let clock = Arc::new(ManualClock::new(t0()));
    let service = Service::new(store, rules, clock.clone());
    let admin = who("alex", &[Role::Admin]);
    for id in ["etl", "idle", "pending", "glass"] {
        let input = serde_json::from_value(json!({"type": "ServiceAccount", "id": id, "kind": "service_account",
            "owner": "sam", "credential_type": "workload_token"}))
        .unwrap();
        service.identity_add(&admin, input).await.unwrap();
    }
    (service, clock, dir)
}

async fn types_of(service: &Service, id: waiver_core::ExceptionId) -> Vec<String> {
    let auditor = who("avery", &[Role::Auditor]);
    service.history(&auditor, id).await.unwrap().into_iter().map(|e| e.event_type).collect()
}

#[tokio::test]
async fn jobs_record_expiry_reminders_reviews_and_unused_once_each() {
    let (service, clock, _dir) = setup(Rules::default()).await;
    let (dana, lee, riley) =
        (who("dana", &[Role::Requester]), who("lee", &[Role::Approver]), who("riley", &[Role::Responder]));

    let planned = service.request(&dana, request("etl", t0() + days(40), "planned")).await.unwrap();
    service.act(&lee, planned.id, Action::Approve, None).await.unwrap();
    let pending = service.request(&dana, request("pending", t0() + days(30), "planned")).await.unwrap();
    let glass = service
        .activate_break_glass(&riley, request("glass", t0() + SignedDuration::from_hours(2), "bg"))
        .await
        .unwrap();

    // Nothing is due at the start.
    assert!(service.record_notices().await.unwrap().is_empty());
    assert!(service.record_expiries().await.unwrap().is_empty());

    // Three hours on: the break-glass ended by time and awaits its post-use review.
    clock.advance(SignedDuration::from_hours(3));
    assert_eq!(service.record_expiries().await.unwrap(), vec![glass.id]);
    assert!(service.record_expiries().await.unwrap().is_empty(), "recorded once");
    let auditor = who("avery", &[Role::Auditor]);
    assert_eq!(service.get(&auditor, glass.id).await.unwrap().state, State::AwaitingPostUseReview);

    // Eight days on: the undecided request timed out; the post-use review (due in 3 days) is late.
    clock.set(t0() + days(8));
    assert_eq!(service.record_expiries().await.unwrap(), vec![pending.id]);
    assert_eq!(service.get(&auditor, pending.id).await.unwrap().state, State::Expired);
    assert_eq!(service.record_notices().await.unwrap(), vec![glass.id]);
    assert!(types_of(&service, glass.id).await.contains(&"break_glass.review_overdue".to_owned()));

    // Day 31: unused for 30 days (flagged, not revoked, by default).
    clock.set(t0() + days(31));
    assert_eq!(service.record_notices().await.unwrap(), vec![planned.id]);
    assert!(service.record_notices().await.unwrap().is_empty(), "flagged once");
    // Day 34: seven days before expiry, the reminder.
    clock.set(t0() + days(34));
    assert_eq!(service.record_notices().await.unwrap(), vec![planned.id]);
    // Day 40: expired, recorded by the expiry job (the decision never waited for it).
    clock.set(t0() + days(40));
    assert_eq!(service.record_expiries().await.unwrap(), vec![planned.id]);
    let types = types_of(&service, planned.id).await;
    assert_eq!(
        types,
        ["exception.requested", "exception.approved", "exception.unused", "exception.expiring", "exception.expired"]
    );
    let verified = service.audit_verify(&auditor).await.unwrap();
    assert!(verified.is_ok(), "the chain and the records verify: {verified:?}");
}

#[tokio::test]
async fn rules_can_revoke_unused_exceptions_and_flag_instead_of_suspending() {
    let rules = Rules { unused_action: FollowUp::Revoke, revalidation_action: FollowUp::Flag, ..Rules::default() };
    let (service, clock, _dir) = setup(rules).await;
    let (dana, lee, sam) =
        (who("dana", &[Role::Requester]), who("lee", &[Role::Approver]), who("sam", &[Role::Requester]));
    let idle = service.request(&dana, request("idle", t0() + days(60), "planned")).await.unwrap();
    service.act(&lee, idle.id, Action::Approve, None).await.unwrap();
    let etl = service.request(&dana, request("etl", t0() + days(60), "planned")).await.unwrap();
    service.act(&lee, etl.id, Action::Approve, None).await.unwrap();

    // A code change to etl, reported by its owner: flagged, still active.
    let etl_ref = "ServiceAccount:etl".parse().unwrap();
    let touched =
        service.identity_change(&sam, &etl_ref, RevalidationTrigger::CodeChange, Some("v2".into())).await.unwrap();
    assert_eq!(touched, vec![etl.id]);
    let auditor = who("avery", &[Role::Auditor]);
    assert_eq!(service.get(&auditor, etl.id).await.unwrap().effective_state(t0()), State::Active);
    assert!(types_of(&service, etl.id).await.contains(&"exception.revalidation_required".to_owned()));
    // Someone else's identity: refused.
    let err = service.identity_change(&dana, &etl_ref, RevalidationTrigger::CodeChange, None).await.unwrap_err();
    assert_eq!(err.status(), 403);

    service.record_usage(etl.id, 3, t0() + days(20), 1).await.unwrap();
    clock.set(t0() + days(31));
    assert_eq!(service.record_notices().await.unwrap(), vec![idle.id], "only the unused one");
    assert_eq!(service.get(&auditor, idle.id).await.unwrap().state, State::Revoked);
}
