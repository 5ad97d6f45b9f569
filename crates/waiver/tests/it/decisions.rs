//! The decision API over real HTTP: tokens and roles, exceptions named in the answer,
//! explanations, the snapshot following the log, and bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    interop::{Server, scenario},
    support::Waiver,
};

fn request(subject: &str, action: &str, resource: &str) -> Value {
    let (st, sid) = subject.split_once(':').unwrap();
    let (rt, rid) = resource.split_once(':').unwrap();
    json!({"subject": {"type": st, "id": sid}, "action": {"name": action}, "resource": {"type": rt, "id": rid}})
}

#[test]
fn the_demo_answers_with_the_exception_that_granted_and_follows_revocations() {
    let w = Waiver::new();
    w.run("admin", &["demo", "--no-serve"]).ok();
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(w.data_dir().join("demo-tokens.json")).unwrap()).unwrap();
    let token = |persona: &str| format!("Bearer {}", tokens[persona]["token"].as_str().unwrap());
    let listed = w
        .run("admin", &["--output", "json", "exception", "list", "--subject", "ServiceAccount:billing-etl"])
        .ok()
        .json();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let data_dir = w.data_dir();
    let server = Server::start_in(tempfile::tempdir().unwrap(), &data_dir, &[]);
    let body = request("ServiceAccount:billing-etl", "connect", "Database:orders-prod").to_string();

    let pep = token("pep");
    let (status, headers, answer) =
        server.send("/access/v1/evaluation", &[("Authorization", &pep), ("X-Request-ID", "req-42")], body.clone());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers.get("x-request-id").unwrap(), "req-42", "the request id is echoed");
    assert_eq!(answer["decision"], true);
    assert_eq!(answer["context"]["exception"]["id"], id.as_str());
    assert_eq!(answer["context"]["exception"]["owner"], "sam");
    assert_eq!(answer["context"]["exception"]["obligations"], json!(["extra_logging", "read_only"]));

    let (status, _, problem) = server.send("/access/v1/evaluation", &[], body.clone());
    assert_eq!((status, problem["code"].as_str()), (401, Some("unauthorized")));
    let requester = token("requester");
    let (status, _, problem) = server.send("/access/v1/evaluation", &[("Authorization", &requester)], body.clone());
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));

    // Explanations: for the auditor, not for the PEP unless the server allows it.
    let denied = request("ServiceAccount:kyc-checker", "connect", "Database:customers-prod").to_string();
    let auditor = token("auditor");
    let (_, _, explained) = server.send(
        "/access/v1/evaluation",
        &[("Authorization", &auditor), ("Waiver-Explain", "true")],
        denied.clone(),
    );
    assert_eq!(explained["decision"], false);
    let reasons = explained["context"]["reasons"].as_array().unwrap();
    assert!(reasons.contains(&json!({"policy": "forbid-prod-db-direct-access"})), "{explained}");
    assert!(reasons.iter().any(|r| r["exception"].is_string() && r["why"] == "expired"), "{explained}");
    let (_, _, plain) =
        server.send("/access/v1/evaluation", &[("Authorization", &pep), ("Waiver-Explain", "true")], denied);
    assert_eq!(plain, json!({"decision": false}), "a PEP gets no explanation");

    // A revocation through the CLI reaches the running server's next decisions.
    w.run("sam", &["exception", "revoke", &id, "-m", "moved to the read replica"]).ok();
    let started = Instant::now();
    loop {
        let (_, _, answer) = server.send("/access/v1/evaluation", &[("Authorization", &pep)], body.clone());
        if answer == json!({"decision": false}) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the revocation never reached the server: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_gets_problems_never_a_500() {
    let server = Server::start(&["--baseline", &scenario("todo"), "--decision-auth", "none"]);
    let rick = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
    let ok = json!({"subject": {"type": "user", "id": rick}, "action": {"name": "can_read_todos"}, "resource": {"type": "todo", "id": "1"}});
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let huge = format!("{{\"subject\": {{\"type\": \"user\", \"id\": \"{}\"}}}}", "x".repeat(10 << 20));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("missing subject.type", json!({"subject": {"id": rick}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}}).to_string(), 400, "`subject.type` is required"),
        ("missing action", json!({"subject": {"type": "user", "id": rick}, "resource": {"type": "t", "id": "1"}}).to_string(), 400, "`action.name` is required"),
        ("wrong type", json!({"subject": "rick", "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}}).to_string(), 400, "subject"),
        ("not JSON", "{subject".to_owned(), 400, "not a valid request"),
        ("deep nesting", deep, 400, "not a valid request"),
        ("invalid entity type", json!({"subject": {"type": "no spaces allowed", "id": "x"}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}}).to_string(), 400, "not a valid Cedar entity type"),
        ("context not an object", json!({"subject": {"type": "user", "id": rick}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}, "context": [1]}).to_string(), 400, "context"),
    ];
    for (name, body, status, expect) in cases {
        let (got, headers, problem) = server.send("/access/v1/evaluation", &[], body);
        assert_eq!(got, status, "{name}: {problem}");
        assert_eq!(headers.get("content-type").unwrap(), "application/problem+json", "{name}");
        assert!(problem.to_string().contains(expect), "{name}: {problem}");
    }

    // A 10 MB body is refused with 413 before it is read whole; the server may close the
    // connection while the client is still sending, which is fine, as long as it lives on.
    match server.try_send("/access/v1/evaluation", &[], huge) {
        Ok((status, _, problem)) => assert_eq!((status, problem["code"].as_str()), (413, Some("body_too_large"))),
        Err(e) => assert!(e.to_string().to_lowercase().contains("pipe") || e.to_string().contains("reset"), "{e}"),
    }
    assert_eq!(server.get("/healthz").0, 200, "the server survives a huge body");

    let many: Vec<Value> = (0..10_000).map(|_| json!({})).collect();
    let (status, _, problem) = server.send(
        "/access/v1/evaluations",
        &[],
        json!({"subject": ok["subject"], "action": ok["action"], "resource": ok["resource"], "evaluations": many})
            .to_string(),
    );
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("10000 evaluations"));

    // One bad item is denied with its error; the others are answered.
    let batch = json!({
        "subject": ok["subject"], "action": ok["action"],
        "evaluations": [{"resource": {"type": "todo", "id": "1"}}, {"resource": {"type": "todo"}}, {"resource": {"type": "todo", "id": "2"}}]
    });
    let (status, _, answer) = server.send("/access/v1/evaluations", &[], batch.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["evaluations"][0], json!({"decision": true}));
    assert_eq!(answer["evaluations"][1], json!({"decision": false, "context": {"error": "`resource.id` is required"}}));
    assert_eq!(answer["evaluations"][2], json!({"decision": true}));

    // The three semantics.
    let mixed = json!({
        "subject": ok["subject"], "resource": ok["resource"],
        "evaluations": [{"action": {"name": "can_read_todos"}}, {"action": {"name": "nope"}}, {"action": {"name": "can_read_user"}}],
    });
    for (semantic, expected) in [
        ("execute_all", json!([{"decision": true}, {"decision": false}, {"decision": true}])),
        ("deny_on_first_deny", json!([{"decision": true}, {"decision": false}])),
        ("permit_on_first_permit", json!([{"decision": true}])),
    ] {
        let mut body = mixed.clone();
        body["options"] = json!({"evaluations_semantic": semantic});
        let (_, _, answer) = server.send("/access/v1/evaluations", &[], body.to_string());
        assert_eq!(answer["evaluations"], expected, "{semantic}");
    }
    let mut body = mixed.clone();
    body["options"] = json!({"evaluations_semantic": "whatever"});
    assert_eq!(server.send("/access/v1/evaluations", &[], body.to_string()).0, 400);

    let (status, config) = server.get("/.well-known/authzen-configuration");
    assert_eq!(status, 200);
    assert!(config["access_evaluation_endpoint"].as_str().unwrap().ends_with("/access/v1/evaluation"));
    assert_eq!(server.get("/healthz"), (200, json!({"status": "ok"})));
    assert_eq!(server.get("/nowhere").0, 404);
}

#[test]
fn break_glass_uses_are_logged_and_usage_is_counted() {
    let w = Waiver::ready();
    let yaml = format!(
        "subject: {{type: ServiceAccount, id: ci-deployer}}\nwaives: [forbid-prod-db-direct-access]\n\
         scope:\n  actions: [connect]\n  resources: [{{type: Database, id: payments-prod}}]\n\
         compensating_controls:\n  - {{kind: extra_logging, description: full session recording}}\n\
         justification: payments outage\nnormal_path_unavailable: incident in progress\n\
         risk: high\nowner: sam\nexpires_at: \"{}\"\n",
        crate::support::in_hours(2)
    );
    let activated = w.run_file("riley", &["--output", "json", "break-glass", "activate"], "bg.yaml", &yaml).ok().json();
    let id = activated["id"].as_str().unwrap().to_owned();
    let issued =
        w.run("admin", &["--output", "json", "token", "issue", "--principal", "gateway", "--roles", "pep"]).ok().json();
    let pep = format!("Bearer {}", issued["token"].as_str().unwrap());
    let data_dir = w.data_dir();
    let server = Server::start_in(tempfile::tempdir().unwrap(), &data_dir, &[]);
    let body = request("ServiceAccount:ci-deployer", "connect", "Database:payments-prod").to_string();
    for _ in 0..3 {
        let (status, _, answer) = server.send("/access/v1/evaluation", &[("Authorization", &pep)], body.clone());
        assert_eq!((status, answer["context"]["exception"]["id"].as_str()), (200, Some(id.as_str())), "{answer}");
    }
    let started = Instant::now();
    let use_events;
    loop {
        let shown = w.run("admin", &["--output", "json", "exception", "show", &id]).ok().json();
        let recorded: Vec<&Value> =
            shown["history"].as_array().unwrap().iter().filter(|e| e["type"] == "break_glass.used").collect();
        // Identical uses within a second are one event with a count; none is lost.
        let uses: u64 = recorded.iter().map(|e| e["data"]["count"].as_u64().unwrap()).sum();
        if uses == 3 && shown["usage"]["count"] == 3 {
            use_events = recorded.len() as u64;
            assert_eq!(
                shown["history"].as_array().unwrap().last().unwrap()["data"]["resource"],
                "Database:payments-prod"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "uses not recorded: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        w.n_events(),
        8 + use_events,
        "rules and baseline (init), admin token and person, identity and its owner, activation, pep token, the uses"
    );

    // A baseline change reaches the running server: without the permit, the break-glass
    // (which waives only the forbid) no longer grants.
    let next = w.dir.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::copy(data_dir.join("baseline/entities.json"), next.join("entities.json")).unwrap();
    std::fs::write(
        next.join("policies.cedar"),
        "@id(\"forbid-prod-db-direct-access\")\nforbid (principal, action == Action::\"connect\", resource is Database)\n\
         when { resource has env && resource.env == \"prod\" };\n",
    )
    .unwrap();
    w.run("admin", &["baseline", "set", next.to_str().unwrap()]).ok();
    let started = Instant::now();
    loop {
        let (_, _, answer) = server.send("/access/v1/evaluation", &[("Authorization", &pep)], body.clone());
        if answer == json!({"decision": false}) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new baseline never reached the server: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
