//! Governance that cannot be gamed (issue 18), over real HTTP and the CLI: narrowing at
//! approval, ownership transfer, the people directory and a person leaving, controls
//! outside Cedar, and a credential type's risk floor.

use serde_json::{Value, json};

use crate::{
    rest::{Demo, db_request},
    support::{Waiver, in_days, in_hours},
};

/// A request for `ServiceAccount:ci-deployer` to deploy and write in prod during the freeze.
fn freeze_request(days: i64) -> Value {
    json!({
        "subject": {"type": "ServiceAccount", "id": "ci-deployer"},
        "waives": ["forbid-prod-writes-outside-change-window", "default-deny"],
        "scope": {"actions": ["deploy", "write"], "resources": [{"type": "Environment", "id": "prod", "descendants": true}]},
        "compensating_controls": [{"kind": "extra_logging", "description": "every deploy logged", "enforced": true}],
        "justification": "release 42 during the freeze",
        "normal_path_unavailable": "the change window is closed",
        "risk": "high",
        "owner": "sam",
        "expires_at": in_days(days),
        "remediation": {"plan": "ship through the merge queue", "ticket": "CHG-42"}
    })
}

fn types(events: &Value) -> Vec<String> {
    events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

/// A token for `principal` with `roles`, issued by the admin; returns the secret.
fn token_for(demo: &Demo, principal: &str, roles: &[&str]) -> String {
    let body = json!({"principal": principal, "roles": roles, "label": "test"}).to_string();
    let (status, issued) = demo.call("POST", "/api/v1/tokens", "admin", Some(&body));
    assert_eq!(status, 201, "{issued}");
    issued["token"].as_str().unwrap().to_owned()
}

fn send_as(demo: &Demo, secret: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, _, answer) =
        demo.server.send(path, &[("Authorization", &format!("Bearer {secret}"))], body.to_string());
    (status, answer)
}

#[test]
fn an_approver_narrows_a_request_recorded_before_the_approval_and_never_widens_it() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&freeze_request(10).to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let approve = format!("/api/v1/exceptions/{id}/approve");
    let before = demo.n_events();

    // Wider, unknown or empty narrowings are refused, naming the field; nothing is stored.
    for (narrow, field) in [
        (json!({"expires_at": in_days(20)}), "narrow.expires_at"),
        (json!({"drop_actions": ["delete"]}), "narrow.drop_actions[0]"),
        (json!({"drop_actions": ["deploy", "write"]}), "narrow.drop_actions"),
        (json!({"drop_resources": ["Environment:staging"]}), "narrow.drop_resources[0]"),
        (json!({"add_condition": "context.ticket =="}), "narrow.add_condition"),
        (json!({}), "narrow"),
    ] {
        let body = json!({"narrow": narrow}).to_string();
        let (status, problem) = demo.call("POST", &approve, "approver", Some(&body));
        assert_eq!(status, 400, "{narrow}: {problem}");
        assert!(problem["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{field}: {problem}");
    }
    let (status, widened) = demo.call("POST", &approve, "approver", Some(r#"{"narrow": {"add_actions": ["delete"]}}"#));
    assert_eq!(status, 400, "there is no way to add: {widened}");
    assert_eq!(demo.n_events(), before, "a refused narrowing stores nothing");
    // The requester narrows nothing (nor approves).
    let (status, _) = demo.call("POST", &approve, "requester", Some(r#"{"narrow": {"drop_actions": ["write"]}}"#));
    assert_eq!(status, 403);

    let expires = in_days(2);
    let narrow = json!({"comment": "two days, deploys only, with a ticket", "narrow": {
        "expires_at": expires, "drop_actions": ["write"], "add_condition": "context has ticket",
        "add_controls": [{"kind": "rate_limit", "description": "five deploys an hour", "enforced": true}]}});
    let (status, approved) = demo.call("POST", &approve, "approver", Some(&narrow.to_string()));
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "active");
    assert_eq!(approved["scope"]["actions"], json!(["deploy"]));
    assert_eq!(approved["condition"], "context has ticket");
    assert_eq!(approved["compensating_controls"].as_array().unwrap().len(), 2);
    assert!(approved["expires_at"].as_str().unwrap() < filed["expires_at"].as_str().unwrap());
    // Two events of one commit: what was taken out, then the approval the requester and owner see.
    let (_, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "requester", None);
    let types = types(&events);
    assert_eq!(&types[types.len() - 2..], ["exception.narrowed", "exception.approved"], "{types:?}");
    let narrowed = &events["items"][types.len() - 2]["data"];
    assert_eq!(narrowed["narrowing"]["drop_actions"], json!(["write"]), "{narrowed}");
    assert_eq!(narrowed["by"], "lee");
    // It grants what is left, under the added condition; the dropped action is denied.
    let ask = |action: &str, context: Value| {
        let body = json!({"subject": {"type": "ServiceAccount", "id": "ci-deployer"}, "action": {"name": action},
            "resource": {"type": "Environment", "id": "prod"}, "context": context});
        let (status, answer) = demo.call("POST", "/access/v1/evaluation", "pep", Some(&body.to_string()));
        assert_eq!(status, 200, "{answer}");
        answer["decision"].as_bool().unwrap()
    };
    assert!(ask("deploy", json!({"ticket": "CHG-42"})), "deploy with a ticket");
    assert!(!ask("deploy", json!({})), "the approver's condition holds");
    assert!(!ask("write", json!({"ticket": "CHG-42"})), "the dropped action");
    let (status, verified) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!((status, verified["ok"].as_bool()), (200, Some(true)), "{verified}");
}

#[test]
fn the_cli_narrows_an_approval_as_the_api_does() {
    let w = Waiver::ready();
    let mut request = crate::support::request(10);
    request["scope"]["actions"] = json!(["deploy", "write"]);
    let filed = w.file_request("dana", &request).ok().json();
    let id = filed["id"].as_str().unwrap();
    let refused = w.run("lee", &["exception", "approve", id, "--narrow-expires-at", &in_days(30)]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("narrow.expires_at"), "{refused:?}");
    let approved = w
        .run(
            "lee",
            &[
                "--output",
                "json",
                "exception",
                "approve",
                id,
                "--drop-action",
                "write",
                "--add-control",
                "rate_limit=five an hour",
            ],
        )
        .ok()
        .json();
    assert_eq!(approved["scope"]["actions"], json!(["deploy"]));
    let shown = w.run("sam", &["exception", "show", id]).ok().stdout;
    assert!(shown.contains("exception.narrowed") && shown.contains("exception.approved"), "{shown}");
}

#[test]
fn ownership_moves_when_the_new_owner_accepts_and_a_person_leaving_holds_what_they_own() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    // The directory: people from tokens and the inventory's owners, never workloads.
    let (status, people) = demo.call("GET", "/api/v1/people", "auditor", None);
    assert_eq!(status, 200, "{people}");
    let names: Vec<&str> = people["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for name in ["sam", "kim", "lee", "dana"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(!names.contains(&"gateway"), "the pep is no person: {names:?}");
    assert_eq!(demo.call("POST", "/api/v1/people", "requester", Some(r#"{"name": "x"}"#)).0, 403);
    let (status, added) = demo.call("POST", "/api/v1/people", "admin", Some(r#"{"name": "noor"}"#));
    assert_eq!((status, added["via"].as_str()), (201, Some("admin")), "{added}");
    assert_eq!(demo.call("POST", "/api/v1/people", "admin", Some(r#"{"name": "noor"}"#)).0, 409);

    // sam owns a live exception and proposes kim; nothing changes until kim accepts.
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}"));
    assert_eq!(status, 200);
    let transfer = format!("/api/v1/exceptions/{id}/transfer");
    for (to, status_wanted, why) in
        [("zz-nobody-999", 400, "not a person"), ("dana", 400, "requested"), ("lee", 400, "approved")]
    {
        let body = json!({"to": to, "comment": "moving teams"}).to_string();
        let (status, problem) = demo.call("POST", &transfer, "owner", Some(&body));
        assert_eq!(status, status_wanted, "{to}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains(why), "{to}: {problem}");
    }
    assert_eq!(demo.call("POST", &transfer, "owner", Some(r#"{"to": "kim"}"#)).0, 400, "a transfer says why");
    let body = r#"{"to": "kim", "comment": "x"}"#;
    assert_eq!(demo.call("POST", &transfer, "requester", Some(body)).0, 403, "not the owner's");
    let (status, proposed) =
        demo.call("POST", &transfer, "owner", Some(r#"{"to": "kim", "comment": "kim's team runs it now"}"#));
    assert_eq!(status, 200, "{proposed}");
    assert_eq!((proposed["owner"].as_str(), proposed["pending_transfer"]["to"].as_str()), (Some("sam"), Some("kim")));
    let accept = format!("/api/v1/exceptions/{id}/accept-transfer");
    assert_eq!(demo.call("POST", &accept, "requester", Some("{}")).0, 403, "only kim accepts");
    let kim = token_for(&demo, "kim", &["requester"]);
    let (status, accepted) = send_as(&demo, &kim, &accept, &json!({"comment": "mine now"}));
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["owner"], "kim");
    assert!(accepted["pending_transfer"].is_null());
    let (_, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    let types = types(&events);
    assert_eq!(&types[types.len() - 2..], ["exception.transfer_proposed", "exception.owner_transferred"]);
    assert_eq!(
        demo.call("POST", &format!("/api/v1/exceptions/{id}/attest"), "owner", Some("{}")).0,
        403,
        "sam no longer"
    );

    // sam leaves: sam's tokens stop working, sam's live exceptions are held, and nobody may
    // name sam owner any more.
    let grant = demo.decide("ServiceAccount:billing-etl", "connect", "Database:orders-prod");
    assert_eq!(grant["decision"], true, "the demo's billing-etl exception (owner sam) grants: {grant}");
    assert_eq!(demo.call("POST", "/api/v1/people/sam/offboard", "requester", Some("{}")).0, 403);
    let (status, left) = demo.call("POST", "/api/v1/people/sam/offboard", "admin", Some(r#"{"comment": "left"}"#));
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["person"]["status"], "offboarded");
    assert!(!left["tokens_revoked"].as_array().unwrap().is_empty(), "{left}");
    let held: Vec<String> =
        left["exceptions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert!(!held.is_empty() && !held.contains(&id), "kim's exception stays: {left}");
    assert_eq!(demo.call("GET", "/api/v1/exceptions?limit=1", "owner", None).0, 401, "sam's token is revoked");
    let denied = demo.decide("ServiceAccount:billing-etl", "connect", "Database:orders-prod");
    assert_eq!(denied["decision"], false, "held until a new owner accepts: {denied}");
    let (_, one) = demo.call("GET", &format!("/api/v1/exceptions/{}", held[0]), "auditor", None);
    assert_eq!((one["state"].as_str(), one["suspended_by"].as_str()), (Some("suspended"), Some("owner_left")));
    let mut request = db_request("backup-runner", 48);
    request["owner"] = json!("sam");
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("has left"), "{problem}");
    assert_eq!(demo.call("POST", "/api/v1/people/sam/offboard", "admin", Some("{}")).0, 409, "once");

    // An admin hands a held exception to kim; kim accepts and attests, and it grants again.
    let (status, _) = demo.call(
        "POST",
        &format!("/api/v1/exceptions/{}/transfer", held[0]),
        "admin",
        Some(r#"{"to": "kim", "comment": "sam left; kim's team runs it"}"#),
    );
    assert_eq!(status, 200);
    for step in ["accept-transfer", "attest"] {
        let (status, answer) = send_as(&demo, &kim, &format!("/api/v1/exceptions/{}/{step}", held[0]), &json!({}));
        assert_eq!(status, 200, "{step}: {answer}");
    }
    let (_, verified) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn exceptions_to_controls_outside_cedar_are_governed_and_never_decide() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let control = |waives: Value| {
        let mut request = db_request("backup-runner", 24 * 20);
        request["waives"] = waives;
        request["scope"] =
            json!({"actions": ["rotate_secret"], "resources": [{"type": "Secret", "id": "backup-encryption-key"}]});
        request["risk"] = json!("medium");
        request["justification"] = json!("the vendor appliance cannot rotate this key before March");
        request.to_string()
    };
    for (waives, why) in [
        (json!(["control:key-vault"]), "not in the rules' control catalog"),
        (json!(["control:secret-rotation", "forbid-prod-db-direct-access"]), "separate exceptions"),
    ] {
        let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&control(waives)));
        assert_eq!(status, 400, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(why), "{problem}");
    }
    let before = demo.decide("ServiceAccount:backup-runner", "rotate_secret", "Secret:backup-encryption-key");
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&control(json!(["control:secret-rotation"]))));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap();
    let (status, approved) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}"));
    assert_eq!((status, approved["state"].as_str()), (200, Some("active")), "{approved}");
    // The same lifecycle and evidence; the decision is the baseline's, as before.
    let after = demo.decide("ServiceAccount:backup-runner", "rotate_secret", "Secret:backup-encryption-key");
    assert_eq!(after["decision"], before["decision"], "{after}");
    let (_, listed) = demo.call("GET", "/api/v1/exceptions?waives=control:secret-rotation", "auditor", None);
    assert!(listed["items"].as_array().unwrap().iter().any(|e| e["id"] == id), "{listed}");
}

#[test]
fn a_long_lived_secret_is_never_filed_as_low_risk() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    // backup-runner holds a long-lived secret in the demo's inventory.
    let (_, identity) = demo.call("GET", "/api/v1/identities/ServiceAccount:backup-runner", "auditor", None);
    assert_eq!(identity["credential_type"], "long_lived_secret", "{identity}");
    let mut request = db_request("backup-runner", 12);
    request["waives"] = json!(["default-deny"]);
    request["scope"] = json!({"actions": ["read"], "resources": [{"type": "Dataset", "id": "invoices"}]});
    request["risk"] = json!("low");
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["rule"], "min_risk.credential_type.long_lived_secret", "{problem}");
    let _ = in_hours;
}

#[test]
fn usage_records_what_was_used_and_hygiene_proposes_the_narrower_scope() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&freeze_request(10).to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}"));
    assert_eq!(status, 200);
    for _ in 0..3 {
        let grant = demo.decide("ServiceAccount:ci-deployer", "deploy", "Environment:prod");
        assert_eq!(grant["context"]["exception"]["id"], id.as_str(), "{grant}");
    }
    // Flushed each second, off the decision path.
    let started = std::time::Instant::now();
    let usage = loop {
        let (_, shown) = demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None);
        if shown["usage"]["count"].as_u64() == Some(3) {
            break shown["usage"].clone();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "usage not flushed: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(usage["used_actions"], json!(["deploy"]), "{usage}");
    assert_eq!(usage["used_resources"], json!(["Environment:prod"]), "{usage}");
    let (status, hygiene) = demo.call("GET", "/api/v1/reports/hygiene", "auditor", None);
    assert_eq!(status, 200, "{hygiene}");
    let found = hygiene["over_broad"].as_array().unwrap().iter().find(|f| f["id"] == id.as_str()).cloned();
    let found = found.unwrap_or_else(|| panic!("{id} is over-broad: {hygiene}"));
    assert!(found["finding"].as_str().unwrap().contains("used 1 of 2 action(s)"), "{found}");
    assert_eq!(found["narrowed_scope"]["actions"], json!(["deploy"]), "{found}");
    assert_eq!(found["used_pairs"], json!([{"action": "deploy", "resource": "Environment:prod"}]), "{found}");
}

/// Issue 19, in part: API tokens expire (checked at every use, REST and decisions alike),
/// are never issued longer than the rules allow, and rotate in one step.
#[test]
fn tokens_expire_at_their_time_and_rotate_in_one_step() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let issue = |body: Value| demo.call("POST", "/api/v1/tokens", "admin", Some(&body.to_string()));
    let (status, problem) =
        issue(json!({"principal": "gw2", "roles": ["pep"], "label": "long", "expires_in": "P400D"}));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["rule"], "tokens.max_lifetime", "{problem}");
    let (status, default) = issue(json!({"principal": "gw2", "roles": ["pep"], "label": "default"}));
    assert_eq!(status, 201, "{default}");
    assert!(default["expires_at"].is_string() && default["expired"] == false, "every token expires: {default}");

    let (status, short) =
        issue(json!({"principal": "gw3", "roles": ["pep", "auditor"], "label": "short", "expires_in": "PT3S"}));
    assert_eq!(status, 201, "{short}");
    let secret = short["token"].as_str().unwrap().to_owned();
    let body = json!({"subject": {"type": "ServiceAccount", "id": "billing-etl"}, "action": {"name": "connect"},
        "resource": {"type": "Database", "id": "orders-prod"}});
    let decide = |secret: &str| send_as(&demo, secret, "/access/v1/evaluation", &body).0;
    let read = |secret: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}/api/v1/exceptions?limit=1", demo.server.base);
        agent.get(&url).header("Authorization", &format!("Bearer {secret}")).call().unwrap().status().as_u16()
    };
    assert_eq!((decide(&secret), read(&secret)), (200, 200), "live");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!((decide(&secret), read(&secret)), (401, 401), "expired, with no job to record it");
    let (_, listed) = demo.call("GET", "/api/v1/tokens", "admin", None);
    let row = listed["items"].as_array().unwrap().iter().find(|t| t["id"] == short["id"]).cloned().unwrap();
    assert_eq!(row["expired"], true, "{row}");
    assert_eq!(
        demo.call("POST", &format!("/api/v1/tokens/{}/rotate", short["id"].as_str().unwrap()), "admin", None).0,
        409
    );

    // Rotation: a new secret, the old one revoked, one commit; the holder may rotate their own.
    let (status, mine) = issue(json!({"principal": "gw4", "roles": ["pep", "auditor"], "label": "rotating"}));
    assert_eq!(status, 201, "{mine}");
    let old = mine["token"].as_str().unwrap().to_owned();
    let (status, _, rotated) = demo.server.send(
        &format!("/api/v1/tokens/{}/rotate", mine["id"].as_str().unwrap()),
        &[("Authorization", &format!("Bearer {old}"))],
        String::new(),
    );
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!((rotated["principal"].as_str(), rotated["label"].as_str()), (Some("gw4"), Some("rotating")));
    assert_eq!((decide(&old), read(&old)), (401, 401), "the old secret is revoked");
    assert_eq!((decide(&new), read(&new)), (200, 200), "the new one works");
    let other = send_as(&demo, &new, &format!("/api/v1/tokens/{}/rotate", short["id"].as_str().unwrap()), &json!({}));
    assert_eq!(other.0, 403, "nobody rotates another principal's token but an admin: {}", other.1);

    // Admins see each token's last use, decisions and REST calls alike (flushed each second).
    let (status, decider) = issue(json!({"principal": "gw5", "roles": ["pep"], "label": "decides only"}));
    assert_eq!(status, 201, "{decider}");
    assert_eq!(decide(decider["token"].as_str().unwrap()), 200);
    let started = std::time::Instant::now();
    loop {
        let (_, listed) = demo.call("GET", "/api/v1/tokens", "admin", None);
        let last = |id: &Value| {
            listed["items"].as_array().unwrap().iter().find(|t| t["id"] == *id).map(|t| t["last_used_at"].clone())
        };
        let (decided, rested) = (last(&decider["id"]), last(&rotated["id"]));
        if decided.as_ref().is_some_and(Value::is_string) && rested.as_ref().is_some_and(Value::is_string) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "last use not recorded: {listed}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Issue 19, in part: "my work" — what waits for the signed-in person, by kind, with how
/// long it has waited and when it is due; the same through the REST API and the CLI.
#[test]
fn each_person_sees_what_waits_for_them() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let inbox = |persona: &str| {
        let (status, inbox) = demo.call("GET", "/api/v1/inbox", persona, None);
        assert_eq!(status, 200, "{inbox}");
        inbox
    };
    let kinds = |inbox: &Value| -> Vec<String> {
        inbox["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap().to_owned()).collect()
    };
    // lee approves what is routed to lee and reviews break-glass uses.
    let lee = inbox("approver");
    assert!(kinds(&lee).contains(&"approve".to_owned()), "{lee}");
    assert!(kinds(&lee).contains(&"post_use_review".to_owned()), "{lee}");
    for item in lee["items"].as_array().unwrap() {
        assert_ne!(item["requester"], "lee");
        assert_ne!(item["owner"], "lee");
        assert!(item["waiting_since"].is_string(), "{item}");
    }
    // sam owns exceptions whose review is overdue; the requester's undecided requests.
    assert!(kinds(&inbox("owner")).contains(&"attest".to_owned()), "sam attests");
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&freeze_request(5).to_string()));
    assert_eq!(status, 201, "{filed}");
    let dana = inbox("requester");
    let mine = dana["items"].as_array().unwrap().iter().find(|i| i["id"] == filed["id"]).cloned();
    let mine = mine.unwrap_or_else(|| panic!("dana's own request: {dana}"));
    assert_eq!(mine["kind"], "my_request");
    assert!(mine["due_at"].is_string(), "when it times out: {mine}");
    assert!(!kinds(&dana).contains(&"approve".to_owned()), "dana approves nothing");
    // A transfer offered to kim waits in kim's inbox.
    let id = filed["id"].as_str().unwrap();
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}"));
    assert_eq!(status, 200);
    let body = r#"{"to": "kim", "comment": "kim's team runs the deploys now"}"#;
    assert_eq!(demo.call("POST", &format!("/api/v1/exceptions/{id}/transfer"), "owner", Some(body)).0, 200);
    let kim = token_for(&demo, "kim", &["requester"]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut answer = agent
        .get(&format!("{}/api/v1/inbox", demo.server.base))
        .header("Authorization", &format!("Bearer {kim}"))
        .call()
        .unwrap();
    let kims: Value = serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(kims["totals"]["accept_transfer"], 1, "{kims}");
    // The CLI prints the same, by kind.
    let printed = demo.w.run("lee", &["inbox"]).ok().stdout;
    assert!(printed.contains("approve (") && printed.contains("post use review ("), "{printed}");
    let json = demo.w.run("lee", &["--output", "json", "inbox"]).ok().json();
    assert_eq!(json["totals"], lee["totals"], "the CLI and the API agree");
}

/// Issue 20, in part: the dashboard's tiles open exactly the exceptions behind their numbers,
/// through register filters the API has too.
#[test]
fn the_register_filters_open_overdue_and_expiring_as_the_dashboard_counts_them() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let list = |query: &str| {
        let (status, page) = demo.call("GET", &format!("/api/v1/exceptions?limit=500&{query}"), "auditor", None);
        assert_eq!(status, 200, "{query}: {page}");
        page["items"].as_array().unwrap().clone()
    };
    let all = list("");
    let open = list("open=true");
    let closed = list("open=false");
    assert_eq!(open.len() + closed.len(), all.len());
    assert!(
        open.iter().all(|e| ["requested", "approved", "active", "suspended"].contains(&e["state"].as_str().unwrap()))
    );
    let overdue = list("review_overdue=true");
    assert!(!overdue.is_empty() && overdue.iter().all(|e| e["review"]["overdue"] == true), "{overdue:?}");
    assert_eq!(demo.call("GET", "/api/v1/exceptions?open=yes", "auditor", None).0, 400);
}

/// Issue 19, in part: people kept by SCIM 2.0 provisioning, as Entra ID and Okta send it;
/// deprovisioning a person is offboarding them (tokens revoked, what they own held).
#[test]
fn scim_provisions_people_and_deprovisioning_offboards_them() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let scim = |method: &str, path: &str, persona: &str, body: Option<Value>| -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}{path}", demo.server.base);
        let auth = format!("Bearer {}", demo.token(persona));
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (m, b) => {
                let request = match m {
                    "PUT" => agent.put(&url),
                    "PATCH" => agent.patch(&url),
                    _ => agent.post(&url),
                };
                request
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/scim+json")
                    .send(b.unwrap_or(Value::Null).to_string())
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let noor = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Noor",
        "active": true, "displayName": "Noor Haddad", "emails": [{"value": "noor@example.com", "primary": true}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Data"}});
    assert_eq!(scim("POST", "/scim/v2/Users", "requester", Some(noor.clone())).0, 403, "provisioning is an admin's");
    let (status, created) = scim("POST", "/scim/v2/Users", "admin", Some(noor.clone()));
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["id"].as_str(), created["active"].as_bool()), (Some("noor"), Some(true)), "{created}");
    assert_eq!(created["emails"][0]["value"], "noor@example.com");
    let (status, again) = scim("POST", "/scim/v2/Users", "admin", Some(noor));
    assert_eq!((status, again["scimType"].as_str()), (409, Some("uniqueness")), "{again}");
    let (status, found) = scim("GET", "/scim/v2/Users?filter=userName%20eq%20%22noor%22", "admin", None);
    assert_eq!((status, found["totalResults"].as_u64()), (200, Some(1)), "{found}");
    // Noor is a person now: she may own what is filed.
    let mut request = db_request("backup-runner", 48);
    request["owner"] = json!("noor");
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap();
    assert_eq!(demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}")).0, 200);

    // Entra ID deprovisions with a string "False"; the exception she owns is held at once.
    let off = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let (status, patched) = scim("PATCH", "/scim/v2/Users/noor", "admin", Some(off));
    assert_eq!((status, patched["active"].as_bool()), (200, Some(false)), "{patched}");
    let (_, held) = demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None);
    assert_eq!(
        (held["state"].as_str(), held["suspended_by"].as_str()),
        (Some("suspended"), Some("owner_left")),
        "{held}"
    );
    let (_, people) = demo.call("GET", "/api/v1/people", "auditor", None);
    let noor = people["items"].as_array().unwrap().iter().find(|p| p["name"] == "noor").cloned().unwrap();
    assert_eq!(noor["status"], "offboarded", "{noor}");
    // Okta re-activates with a value object; DELETE deprovisions for good.
    let on = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": true}}]});
    assert_eq!(scim("PATCH", "/scim/v2/Users/noor", "admin", Some(on)).1["active"], true);
    assert_eq!(scim("DELETE", "/scim/v2/Users/noor", "admin", None).0, 204);
    assert_eq!(scim("GET", "/scim/v2/Users/noor", "admin", None).1["active"], false);
    assert_eq!(scim("GET", "/scim/v2/Users/nobody", "admin", None).0, 404);
    let (_, verified) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!(verified["ok"], true, "{verified}");
}
