//! The walks of issue 3's "done when", through the real binary.

use crate::support::{IDENTITY, Waiver, in_days, in_hours, request};

#[test]
fn planned_exception_walks_request_approve_attest_renew_revoke() {
    let w = Waiver::ready();
    let filed = w.file_request("dana", &request(10)).ok().json();
    let id = filed["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "EXC-000001");
    assert_eq!(filed["state"], "requested");
    assert_eq!(filed["requester"], "dana");
    assert_eq!(filed["credential_type"], "workload_token", "taken from the inventory");

    let refused = w.run("dana", &["exception", "approve", &id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("separation of duties: `dana` requested `EXC-000001`"), "{refused:?}");
    let refused = w.run("sam", &["exception", "approve", &id]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("`sam` owns `EXC-000001` and may not approve it"), "{refused:?}");
    assert_eq!(w.state(&id), "requested", "nothing changed");

    w.run("lee", &["exception", "approve", &id, "-m", "ok for the release train"]).ok();
    assert_eq!(w.state(&id), "active");

    let refused = w.run("lee", &["exception", "attest", &id]);
    assert_eq!(refused.code, 2, "only the owner attests: {refused:?}");
    w.run("sam", &["exception", "attest", &id, "-m", "still needed"]).ok();

    let new_expiry = in_days(20);
    w.run("sam", &["exception", "renew", &id, "--expires-at", &new_expiry]).ok();
    let shown = w.run("admin", &["--output", "json", "exception", "show", &id]).ok().json();
    assert_eq!(shown["renewals"], 0, "a renewal needs approval first");
    assert_eq!(shown["pending_renewal"]["requested_by"], "sam");
    w.run("lee", &["exception", "approve", &id]).ok();
    let shown = w.run("admin", &["--output", "json", "exception", "show", &id]).ok().json();
    assert_eq!(shown["renewals"], 1);
    assert!(shown["pending_renewal"].is_null());

    w.run("sam", &["exception", "revoke", &id, "-m", "merge queue is live"]).ok();
    let shown = w.run("admin", &["--output", "json", "exception", "show", &id]).ok().json();
    assert_eq!(shown["state"], "revoked");
    let types: Vec<_> = shown["history"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "exception.requested",
            "exception.approved",
            "exception.attested",
            "exception.renewal_requested",
            "exception.renewal_approved",
            "exception.revoked"
        ]
    );
    let refused = w.run("sam", &["exception", "revoke", &id]);
    assert_eq!(refused.code, 2, "a revoked exception stays revoked");
    assert!(refused.stderr.contains("it is revoked"), "{refused:?}");
    // rules.set + baseline.set + token.issued + person.added + identity.added + person.added
    // + the six above.
    assert_eq!(w.n_events(), 12);
}

#[test]
fn break_glass_walks_activate_end_review() {
    let w = Waiver::ready();
    // YAML this time; the expiry is four hours out, within the break-glass cap.
    let yaml_until = |expires_at: String| {
        format!(
            "subject: {{type: ServiceAccount, id: ci-deployer}}
waives: [forbid-prod-db-direct-access]
scope:
  actions: [connect]
  resources: [{{type: Database, id: payments-prod}}]
compensating_controls:
  - {{kind: extra_logging, description: full session recording}}
justification: payments outage
normal_path_unavailable: incident in progress
risk: high
owner: sam
expires_at: \"{expires_at}\"
"
        )
    };
    let yaml = yaml_until(in_hours(4));
    let activated = w.run_file("riley", &["--output", "json", "break-glass", "activate"], "bg.yaml", &yaml).ok().json();
    let id = activated["id"].as_str().unwrap().to_owned();
    assert_eq!((activated["kind"].as_str(), activated["state"].as_str()), (Some("break_glass"), Some("active")));
    w.run("riley", &["break-glass", "end", &id, "-m", "incident over"]).ok();
    assert_eq!(w.state(&id), "awaiting_post_use_review");
    let refused = w.run("riley", &["break-glass", "review", &id, "-m", "all fine"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("`riley` activated"), "{refused:?}");
    let refused = w.run("lee", &["break-glass", "review", &id]);
    assert_eq!(refused.code, 2, "a review needs a comment: {refused:?}");
    w.run("lee", &["break-glass", "review", &id, "-m", "use matched the incident timeline"]).ok();
    assert_eq!(w.state(&id), "closed");

    let too_long = yaml_until(in_hours(9));
    let refused = w.run_file("riley", &["break-glass", "activate"], "bg2.yaml", &too_long);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("rule `max_duration.break_glass`"), "{refused:?}");
}

#[test]
fn editing_any_stored_event_breaks_verify_at_that_event() {
    let w = Waiver::ready();
    let id = w.file_request("dana", &request(5)).ok().json()["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &id]).ok();
    w.run("sam", &["exception", "attest", &id]).ok();
    // rules.set, baseline.set (init records the files), token.issued and person.added (the
    // admin), identity.added and person.added (its owner, sam), then 7-9.
    assert_eq!(w.n_events(), 9);

    // The application cannot rewrite its log ...
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refused = runtime.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", w.data_dir().join("waiver.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE events SET body = replace(body, 'dana', 'mallory') WHERE seq = 5").execute(&mut conn).await
    });
    assert!(refused.unwrap_err().to_string().contains("append-only"));

    // ... and whoever edits the file anyway is caught at the event they changed.
    w.tamper(&["DROP TRIGGER events_no_update", "UPDATE events SET body = replace(body, 'lee', 'lea') WHERE seq = 8"]);
    let broken = w.run("admin", &["audit", "verify"]);
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stdout.contains("broken at event 8"), "{broken:?}");
    let json = w.run("admin", &["--output", "json", "audit", "verify"]);
    assert_eq!((json.code, json.json()["first_bad_seq"].as_u64()), (1, Some(8)));
    // No evidence is exported from a log that does not verify.
    let export = w.run("admin", &["export", "--format", "oscal-poam"]);
    assert_eq!(export.code, 2, "{export:?}");
    assert!(export.stderr.contains("does not verify") && export.stdout.is_empty(), "{export:?}");

    // Moving an event to another exception's history, without touching what was hashed.
    let w = Waiver::ready();
    w.file_request("dana", &request(5)).ok();
    w.file_request("dana", &request(5)).ok();
    w.tamper(&["DROP TRIGGER events_no_update", "UPDATE events SET exception_id = 'EXC-000002' WHERE seq = 5"]);
    let broken = w.run("admin", &["audit", "verify"]);
    assert_eq!(broken.code, 1);
    assert!(
        broken.stdout.contains("broken at event 5: its stored sequence number, exception id or seal"),
        "{broken:?}"
    );

    let w = Waiver::ready();
    w.file_request("dana", &request(5)).ok();
    w.tamper(&["DROP TRIGGER events_no_delete", "DELETE FROM events WHERE seq = 2"]);
    let broken = w.run("admin", &["audit", "verify"]);
    assert_eq!(broken.code, 1);
    assert!(broken.stdout.contains("broken at event 2: event 2 is missing"), "{broken:?}");
}

#[test]
fn offboarding_revokes_the_identitys_exceptions() {
    let w = Waiver::ready();
    let first = w.file_request("dana", &request(5)).ok().json()["id"].as_str().unwrap().to_owned();
    let second = w.file_request("dana", &request(6)).ok().json()["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &first]).ok();
    let out = w.run("admin", &["--output", "json", "identity", "offboard", "ServiceAccount:ci-deployer"]).ok().json();
    assert_eq!(out["revoked"], serde_json::json!([first, second]));
    assert_eq!(w.state(&first), "revoked");
    assert_eq!(w.state(&second), "revoked");
    let refused = w.file_request("dana", &request(5));
    assert_eq!(refused.code, 2);
    assert!(refused.stdout.contains("is offboarded"), "{refused:?}");
}

#[test]
fn an_owner_change_suspends_until_the_owner_attests() {
    let w = Waiver::ready();
    let id = w.file_request("dana", &request(5)).ok().json()["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &id]).ok();
    w.run("admin", &["identity", "update", "ServiceAccount:ci-deployer", "--owner", "kim"]).ok();
    assert_eq!(w.state(&id), "suspended");
    w.run("sam", &["exception", "attest", &id, "-m", "still needed under the new owner"]).ok();
    assert_eq!(w.state(&id), "active");
}

#[test]
fn init_once_and_refuse_an_empty_data_dir() {
    let w = Waiver::new();
    let refused = w.run("dana", &["exception", "list"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("holds no waiver data; run `waiver init`"), "{refused:?}");
    assert!(!w.data_dir().join("waiver.db").exists(), "nothing created");
    let init = w.run("admin", &["--output", "json", "init"]).ok().json();
    assert!(init["admin_token"].as_str().unwrap().starts_with("wvr_"));
    assert!(w.data_dir().join("rules.toml").exists());
    let again = w.run("admin", &["init"]);
    assert_eq!(again.code, 2, "{again:?}");
    let listed = w.run_file("admin", &["identity", "add"], "identity.json", IDENTITY).ok();
    assert!(listed.stdout.contains("ServiceAccount:ci-deployer"));
}

#[test]
fn demo_builds_a_realistic_register_once() {
    let w = Waiver::new();
    let summary = w.run("admin", &["--output", "json", "demo", "--no-serve"]).ok().json();
    assert_eq!(summary["built"], true);
    assert!(summary["identities"].as_u64().unwrap() >= 60);
    assert!(summary["exceptions"].as_u64().unwrap() >= 40);
    assert!(summary["reviews_overdue"].as_u64().unwrap() >= 1);
    assert!(summary["expiring_within_24h"].as_u64().unwrap() >= 1);
    for state in [
        "requested",
        "approved",
        "active",
        "rejected",
        "withdrawn",
        "expired",
        "revoked",
        "suspended",
        "awaiting_post_use_review",
        "closed",
    ] {
        assert!(summary["by_state"][state].as_u64().unwrap_or(0) >= 1, "demo has a {state} exception: {summary}");
    }
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.data_dir().join("demo-tokens.json")).unwrap()).unwrap();
    for persona in ["admin", "requester", "approver", "owner", "responder", "auditor", "pep"] {
        assert!(tokens[persona]["token"].as_str().unwrap().starts_with("wvr_"), "{persona}");
    }
    let owned =
        w.run("admin", &["--output", "json", "exception", "list", "--owner", "sam", "--state", "active"]).ok().json();
    assert!(!owned["items"].as_array().unwrap().is_empty(), "the owner persona owns active exceptions");
    let again = w.run("admin", &["--output", "json", "demo", "--no-serve"]).ok().json();
    assert_eq!(again["built"], false);
    assert_eq!(again["audit_events"], summary["audit_events"]);
}

#[test]
fn a_baseline_change_that_orphans_a_live_exception_is_refused() {
    let w = Waiver::ready();
    let id = w.file_request("dana", &request(5)).ok().json()["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &id]).ok();
    let next = w.dir.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(
        next.join("policies.cedar"),
        "@id(\"permit-read\") permit(principal, action == Action::\"read\", resource);\n",
    )
    .unwrap();
    let refused = w.run("admin", &["baseline", "set", next.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("`EXC-000001` waives `forbid-prod-writes-outside-change-window`, which the new baseline removes"),
        "{refused:?}"
    );
    let events = w.n_events();
    // Once the exception is revoked the change is allowed, and recorded.
    w.run("sam", &["exception", "revoke", &id]).ok();
    w.run("admin", &["baseline", "set", next.to_str().unwrap()]).ok();
    let shown = w.run("admin", &["--output", "json", "baseline", "show"]).ok().json();
    assert_eq!(shown["policy_ids"], serde_json::json!(["permit-read"]));
    assert_eq!(w.n_events(), events + 2, "the revocation and `baseline.set`");
    // A request waiving a policy the baseline does not have is refused, naming it.
    let refused = w.file_request("dana", &request(5));
    assert_eq!(refused.code, 2);
    assert!(refused.stdout.contains("is not the `@id` of a baseline forbid"), "{refused:?}");
    // An invalid baseline is refused with Cedar's diagnostics, and nothing changes.
    std::fs::write(next.join("policies.cedar"), "permit(principal, action, resource);\n").unwrap();
    let refused = w.run("admin", &["baseline", "set", next.to_str().unwrap()]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("has no `@id"), "{refused:?}");
}
