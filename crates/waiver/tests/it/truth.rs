//! The log is the only truth (issue 17): a record edited behind the log's back is named by
//! `audit verify` and grants nothing, on the CLI and on a server started over it.

use serde_json::{Value, json};

use crate::{
    rest::{Demo, db_request},
    support::Waiver,
};

fn file_and_approve(w: &Waiver) -> String {
    let filed = w.file_request("dana", &db_request("backup-runner", 48)).ok().json();
    let id = filed["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &id]).ok();
    id
}

fn check(w: &Waiver, subject: &str, resource: &str) -> crate::support::Run {
    w.run("admin", &["check", "--subject", subject, "--action", "connect", "--resource", resource])
}

#[test]
fn an_edited_record_is_named_by_verify_and_grants_nothing() {
    let mut revoked_id = String::new();
    let demo = Demo::start_prepared(Waiver::new(), &["--no-scheduler"], |w| {
        // An exception that grants, then is revoked: the log ends in `exception.revoked`.
        let id = file_and_approve(w);
        let allowed = check(w, "ServiceAccount:backup-runner", "Database:orders-prod");
        assert!(allowed.code == 0 && allowed.stdout.contains(&format!("granted by {id}")), "{allowed:?}");
        w.run("lee", &["exception", "revoke", &id, "--comment", "drill over"]).ok();
        assert_eq!(check(w, "ServiceAccount:backup-runner", "Database:orders-prod").code, 1);

        // Someone with the file puts it back to approved (row and index column alike).
        w.tamper(&[&format!(
            "UPDATE exceptions SET state = 'approved', \
             record = replace(record, '\"state\":\"revoked\"', '\"state\":\"approved\"') WHERE id = '{id}'"
        )]);
        let verified = w.run("admin", &["audit", "verify"]);
        assert_eq!(verified.code, 1, "{verified:?}");
        assert!(
            verified.stdout.contains(&format!("record exception:{id} does not match the audit log")),
            "{verified:?}"
        );
        let json = w.run("admin", &["--output", "json", "audit", "verify"]).json();
        assert_eq!(
            (json["ok"].clone(), json["records"][0]["record"].clone()),
            (json!(false), json!(format!("exception:{id}")))
        );
        // It grants nothing, and nothing shows it as if it were true.
        let denied = check(w, "ServiceAccount:backup-runner", "Database:orders-prod");
        assert!(denied.code == 1 && !denied.stdout.contains("granted by"), "{denied:?}");
        let shown = w.run("admin", &["exception", "show", &id]);
        assert!(shown.code != 0 && shown.stderr.contains("does not match the audit log"), "{shown:?}");
        let listed = w.run("admin", &["--output", "json", "exception", "list"]).ok().json();
        assert!(listed["items"].as_array().unwrap().iter().all(|e| e["id"] != json!(id)), "left out of the list");

        // An offboarded identity edited back to active stays denied.
        w.run("admin", &["identity", "offboard", "ServiceAccount:backup-runner"]).ok();
        w.tamper(&["UPDATE identities SET status = 'active', \
             record = replace(record, '\"status\":\"offboarded\"', '\"status\":\"active\"') \
             WHERE entity = 'ServiceAccount:backup-runner'"]);
        let denied = check(w, "ServiceAccount:backup-runner", "Database:reporting-replica");
        assert!(denied.code == 1 && denied.stdout.contains("identity-record-tampered"), "{denied:?}");

        // A token given more roles than it was issued with no longer authenticates.
        w.tamper(&["UPDATE tokens SET roles = 'auditor,admin' WHERE roles = 'auditor'"]);
        revoked_id = id;
    });

    // A server started over that register: the same answers, and it says so.
    let identity = json!({"subject": {"type": "ServiceAccount", "id": "backup-runner"}, "action": {"name": "connect"},
        "resource": {"type": "Database", "id": "reporting-replica"}});
    let auth = format!("Bearer {}", demo.token("admin"));
    let (_, _, explained) = demo.server.send(
        "/access/v1/evaluation",
        &[("Authorization", &auth), ("Waiver-Explain", "true")],
        identity.to_string(),
    );
    assert_eq!(explained["decision"], false, "{explained}");
    assert_eq!(explained["context"]["reasons"], json!([{"policy": "identity-record-tampered"}]), "{explained}");
    let (_, _, waived) = demo.server.send(
        "/access/v1/evaluation",
        &[("Authorization", &auth), ("Waiver-Explain", "true")],
        identity.to_string().replace("reporting-replica", "orders-prod"),
    );
    assert_eq!(waived["decision"], false, "{waived}");

    let (status, ready) = demo.server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "degraded", "{ready}");
    let named: Vec<&str> = ready["tampered"].as_array().unwrap().iter().filter_map(|t| t["record"].as_str()).collect();
    assert!(named.contains(&format!("exception:{revoked_id}").as_str()), "{ready}");
    assert!(named.contains(&"identity:ServiceAccount:backup-runner"), "{ready}");
    let (_, metrics) = demo.server.get("/metrics");
    let metrics = match metrics {
        Value::String(text) => text,
        other => other.to_string(),
    };
    assert!(metrics.lines().any(|l| l.starts_with("waiver_records_tampered ") && !l.ends_with(" 0")), "{metrics}");

    let (status, _) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!(status, 401, "the edited token is refused");
    let (status, verified) = demo.call("GET", "/api/v1/audit/verify", "admin", None);
    assert_eq!((status, verified["ok"].clone()), (200, json!(false)), "{verified}");
    let (status, problem) = demo.call("GET", &format!("/api/v1/exceptions/{revoked_id}"), "admin", None);
    assert_eq!((status, problem["code"].clone()), (409, json!("record_tampered")), "{problem}");
}

#[test]
fn an_export_verifies_offline_with_the_cli_alone() {
    let w = Waiver::ready();
    let id = file_and_approve_ci(&w);
    let export = w.run("admin", &["export", "--format", "json"]).ok();
    let path = w.data_dir().with_file_name("export.json");
    std::fs::write(&path, &export.stdout).unwrap();
    let elsewhere = Waiver::new(); // no data dir: the file is all it has
    let verified = elsewhere.run("auditor", &["audit", "verify", "--file", path.to_str().unwrap()]);
    assert_eq!(verified.code, 0, "{verified:?}");
    assert!(verified.stdout.contains("the export verifies"), "{verified:?}");
    std::fs::write(&path, export.stdout.replacen(&format!("\"id\": \"{id}\""), "\"id\": \"EXC-999999\"", 1)).unwrap();
    let refused = elsewhere.run("auditor", &["--output", "json", "audit", "verify", "--file", path.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert_eq!(refused.json()["ok"], false);
}

fn file_and_approve_ci(w: &Waiver) -> String {
    let filed = w.file_request("dana", &crate::support::request(5)).ok().json();
    let id = filed["id"].as_str().unwrap().to_owned();
    w.run("lee", &["exception", "approve", &id]).ok();
    id
}

/// A node loads the register from its checkpoint and the records sealed since: a change
/// after the checkpoint decides, and a checkpoint edited in the database is refused whole
/// (named by `audit verify`; the node loads every record instead).
#[test]
fn a_register_checkpoint_decides_only_as_the_log_sealed_it() {
    let mut revoked = String::new();
    let demo = Demo::start_prepared(Waiver::new(), &["--no-scheduler"], |w| {
        let granted_by_demo = |w: &Waiver| check(w, "ServiceAccount:billing-etl", "Database:orders-prod");
        assert_eq!(granted_by_demo(w).code, 0, "{:?}", granted_by_demo(w));
        let id = file_and_approve(w);
        let made = w.run("admin", &["audit", "checkpoint"]).ok();
        assert!(made.stdout.contains("checkpointed the register"), "{made:?}");
        // Revoked after the checkpoint: the checkpoint still says approved, the log does not.
        w.run("lee", &["exception", "revoke", &id, "--comment", "drill over"]).ok();
        let denied = check(w, "ServiceAccount:backup-runner", "Database:orders-prod");
        assert!(denied.code == 1 && !denied.stdout.contains("granted by"), "{denied:?}");
        assert_eq!(granted_by_demo(w).code, 0, "the rest comes from the checkpoint");
        let lone = w.run("admin", &["audit", "checkpoint"]).ok();
        assert!(lone.stdout.contains("checkpointed"), "{lone:?}");
        assert_eq!(w.run("admin", &["audit", "verify"]).code, 0, "a checkpoint that matches its records");

        // Someone with the file edits the checkpoint itself back to approved.
        w.tamper(&["UPDATE artifacts SET body = replace(body, '\"state\":\"revoked\"', '\"state\":\"approved\"') \
             WHERE kind = 'register.part'"]);
        let verified = w.run("admin", &["audit", "verify"]);
        assert_eq!(verified.code, 1, "{verified:?}");
        assert!(verified.stdout.contains("record register does not match the audit log"), "{verified:?}");
        let denied = check(w, "ServiceAccount:backup-runner", "Database:orders-prod");
        assert!(denied.code == 1 && !denied.stdout.contains("granted by"), "{denied:?}");
        assert_eq!(granted_by_demo(w).code, 0, "every record loaded instead");
        revoked = id;
    });
    let evaluate = |subject: &str| {
        let body = json!({"subject": {"type": "ServiceAccount", "id": subject}, "action": {"name": "connect"},
            "resource": {"type": "Database", "id": "orders-prod"}});
        let auth = format!("Bearer {}", demo.token("admin"));
        demo.server.send("/access/v1/evaluation", &[("Authorization", &auth)], body.to_string()).2
    };
    assert_eq!(evaluate("backup-runner")["decision"], false, "{revoked} grants nothing");
    assert_eq!(evaluate("billing-etl")["decision"], true);
    // The server says what it found, as for a record.
    let (status, ready) = demo.server.get("/readyz");
    assert_eq!((status, ready["status"].clone()), (200, json!("degraded")), "{ready}");
    let named: Vec<&str> = ready["tampered"].as_array().unwrap().iter().filter_map(|t| t["record"].as_str()).collect();
    assert_eq!(named, ["register"], "{ready}");
}
