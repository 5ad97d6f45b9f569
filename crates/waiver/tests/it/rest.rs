//! The governance REST API over real HTTP against `waiver serve` on the demo data: the
//! README tour, roles and separation of duties, bad input storing nothing, and webhooks
//! delivered to a real receiver that verifies every signature, across a restart.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    interop::Server,
    support::{Waiver, in_hours},
};

/// A demo data dir and a server on it, with the personas' tokens.
pub(crate) struct Demo {
    pub(crate) server: Server,
    tokens: Value,
    pub(crate) w: Waiver,
}

impl Demo {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    pub(crate) fn start_with(args: &[&str]) -> Self {
        Self::start_on(Waiver::new(), args)
    }

    /// The demo in `w`'s data dir (which may sit on a filesystem of the test's choosing).
    pub(crate) fn start_on(w: Waiver, args: &[&str]) -> Self {
        Self::start_prepared(w, args, |_| {})
    }

    /// The demo, with webhooks to loopback receivers allowed (the tests' receivers listen there).
    pub(crate) fn start_with_loopback_webhooks(args: &[&str]) -> Self {
        Self::start_prepared(Waiver::new(), args, allow_loopback_webhooks)
    }

    /// The demo, with `prepare` run on its data dir before the server starts.
    pub(crate) fn start_prepared(w: Waiver, args: &[&str], prepare: impl FnOnce(&Waiver)) -> Self {
        Self::start_prepared_env(w, args, &[], prepare)
    }

    /// [`Demo::start_prepared`], with variables added to the server's environment.
    pub(crate) fn start_prepared_env(
        w: Waiver,
        args: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Waiver),
    ) -> Self {
        w.run("admin", &["demo", "--no-serve"]).ok();
        prepare(&w);
        let tokens: Value =
            serde_json::from_str(&std::fs::read_to_string(w.data_dir().join("demo-tokens.json")).unwrap()).unwrap();
        let server = Server::start_in_env(tempfile::tempdir().unwrap(), &w.data_dir(), args, env);
        Self { server, tokens, w }
    }

    pub(crate) fn restart(&mut self) {
        self.restart_with(&[]);
    }

    pub(crate) fn restart_with(&mut self, args: &[&str]) {
        let server = Server::start_in(tempfile::tempdir().unwrap(), &self.w.data_dir(), args);
        self.server = server;
    }

    pub(crate) fn data_dir(&self) -> std::path::PathBuf {
        self.w.data_dir()
    }

    pub(crate) fn token(&self, persona: &str) -> String {
        self.tokens[persona]["token"].as_str().unwrap().to_owned()
    }

    /// Calls the API as `persona` (or anonymously with `""`).
    pub(crate) fn call(&self, method: &str, path: &str, persona: &str, body: Option<&str>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}{path}", self.server.base);
        let auth = format!("Bearer {}", if persona.is_empty() { String::new() } else { self.token(persona) });
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (m, b) => {
                let request = match m {
                    "PUT" => agent.put(&url),
                    "PATCH" => agent.patch(&url),
                    _ => agent.post(&url),
                };
                request.header("Authorization", &auth).header("Content-Type", "application/json").send(b.unwrap_or(""))
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) fn decide(&self, subject: &str, action: &str, resource: &str) -> Value {
        let (st, sid) = subject.split_once(':').unwrap();
        let (rt, rid) = resource.split_once(':').unwrap();
        let body = json!({"subject": {"type": st, "id": sid}, "action": {"name": action}, "resource": {"type": rt, "id": rid}});
        let (status, answer) = self.call("POST", "/access/v1/evaluation", "pep", Some(&body.to_string()));
        assert_eq!(status, 200, "{answer}");
        answer
    }

    pub(crate) fn n_events(&self) -> u64 {
        let (status, verified) = self.call("GET", "/api/v1/audit/verify", "auditor", None);
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["ok"], true);
        verified["events"].as_u64().unwrap()
    }
}

/// Lets webhooks reach 127.0.0.1 (any port) in `w`'s rules.
pub(crate) fn allow_loopback_webhooks(w: &Waiver) {
    w.edit_rules(|rules| {
        assert!(rules.contains("allow_internal = []"), "the rules file has the default allow-list");
        rules.replace("allow_internal = []", "allow_internal = [\"127.0.0.1\"]")
    });
}

pub(crate) fn db_request(subject: &str, hours: i64) -> Value {
    json!({
        "subject": {"type": "ServiceAccount", "id": subject},
        "waives": ["forbid-prod-db-direct-access"],
        "scope": {"actions": ["connect"], "resources": [{"type": "Database", "id": "orders-prod"}]},
        "compensating_controls": [
            {"kind": "extra_logging", "description": "every query logged", "enforced": true},
            {"kind": "read_only", "description": "read-only role", "enforced": true}
        ],
        "justification": "reconcile the ledger after incident INC-7",
        "normal_path_unavailable": "the replica is down",
        "risk": "high",
        "owner": "sam",
        "expires_at": in_hours(hours),
        "remediation": {"plan": "restore the replica", "ticket": "INC-7"}
    })
}

#[test]
fn the_readme_tour_request_refuse_self_approval_approve_decide_revoke_break_glass() {
    let demo = Demo::start();
    let subject = "ServiceAccount:backup-runner";
    let before = demo.decide(subject, "connect", "Database:orders-prod");
    assert_eq!(before, json!({"decision": false}), "denied by the baseline at first");

    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    assert_eq!(filed["state"], "requested");
    assert_eq!(filed["requester"], "dana");
    let id = filed["id"].as_str().unwrap().to_owned();

    // The requester cannot approve; the owner neither.
    let (status, problem) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "requester", Some("{}"));
    assert_eq!(status, 403, "{problem}");
    let (status, problem) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "owner", None);
    assert_eq!(status, 403, "{problem}");
    assert_eq!(demo.decide(subject, "connect", "Database:orders-prod")["decision"], false);

    let (status, approved) = demo.call(
        "POST",
        &format!("/api/v1/exceptions/{id}/approve"),
        "approver",
        Some(r#"{"comment": "ok for 48h"}"#),
    );
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "active");
    let allowed = demo.decide(subject, "connect", "Database:orders-prod");
    assert_eq!(allowed["decision"], true, "{allowed}");
    assert_eq!(allowed["context"]["exception"]["id"], id.as_str(), "the answer names the exception");
    assert_eq!(allowed["context"]["exception"]["owner"], "sam");

    // Approving twice is a state error; the auditor cannot revoke; the owner can.
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", None);
    assert_eq!(status, 409);
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/revoke"), "auditor", None);
    assert_eq!(status, 403);
    let (status, revoked) =
        demo.call("POST", &format!("/api/v1/exceptions/{id}/revoke"), "owner", Some(r#"{"comment": "replica back"}"#));
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    // Denied from the very next decision: the write applied to this node's snapshot.
    assert_eq!(demo.decide(subject, "connect", "Database:orders-prod"), json!({"decision": false}));

    // Break-glass: active at once for the responder; ended; reviewed by someone else.
    let mut emergency = db_request("ledger-sync", 2);
    emergency.as_object_mut().unwrap().remove("remediation");
    let (status, glass) = demo.call("POST", "/api/v1/break-glass", "responder", Some(&emergency.to_string()));
    assert_eq!(status, 201, "{glass}");
    assert_eq!((glass["kind"].as_str(), glass["state"].as_str()), (Some("break_glass"), Some("active")));
    let glass_id = glass["id"].as_str().unwrap().to_owned();
    let granted = demo.decide("ServiceAccount:ledger-sync", "connect", "Database:orders-prod");
    assert_eq!(granted["context"]["exception"]["id"], glass_id.as_str(), "{granted}");
    let (status, ended) = demo.call("POST", &format!("/api/v1/exceptions/{glass_id}/end"), "responder", None);
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["state"], "awaiting_post_use_review");
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{glass_id}/post-use-review"), "responder", None);
    assert_eq!(status, 403, "the activator does not review their own emergency");
    let (status, reviewed) = demo.call(
        "POST",
        &format!("/api/v1/exceptions/{glass_id}/post-use-review"),
        "approver",
        Some(r#"{"comment": "access matched the incident"}"#),
    );
    assert_eq!(status, 200, "{reviewed}");
    assert_eq!(reviewed["state"], "closed");

    // The story is in the log, and the chain verifies.
    let (status, history) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    assert_eq!(status, 200);
    let types: Vec<&str> = history["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["exception.requested", "exception.approved", "exception.revoked"]);
    demo.n_events();

    // Lists filter and page with a cursor until the end.
    let (status, page) = demo.call("GET", "/api/v1/exceptions?state=active&limit=5", "auditor", None);
    assert_eq!(status, 200, "{page}");
    assert!(page["items"].as_array().unwrap().iter().all(|e| e["state"] == "active"));
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    let mut seen = page["items"].as_array().unwrap().len();
    while let Some(c) = cursor {
        let (_, next) =
            demo.call("GET", &format!("/api/v1/exceptions?state=active&limit=5&cursor={c}"), "auditor", None);
        seen += next["items"].as_array().unwrap().len();
        cursor = next["next_cursor"].as_str().map(str::to_owned);
    }
    let (_, all) = demo.call("GET", "/api/v1/exceptions?state=active&limit=500", "auditor", None);
    assert_eq!(seen, all["items"].as_array().unwrap().len(), "paging sees every item once");
}

#[test]
fn roles_are_checked_on_every_endpoint_and_bad_input_stores_nothing() {
    // No scheduler: its reminders would add events while we count them.
    let demo = Demo::start_with(&["--no-scheduler"]);
    let before = demo.n_events();
    let (status, problem) = demo.call("GET", "/api/v1/exceptions", "", None);
    assert_eq!((status, problem["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = demo.call("GET", "/api/v1/exceptions", "pep", None);
    assert_eq!(status, 403, "pep tokens are for decisions only");
    for (method, path) in [
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/webhooks"),
        ("PUT", "/api/v1/baseline"),
        ("POST", "/api/v1/identities"),
        ("POST", "/api/v1/exceptions"),
        ("POST", "/api/v1/break-glass"),
    ] {
        let body = match path {
            "/api/v1/tokens" => json!({"principal": "mallory", "roles": ["admin"], "label": "x"}).to_string(),
            "/api/v1/webhooks" => json!({"url": "http://127.0.0.1:9/x"}).to_string(),
            "/api/v1/baseline" => json!({"policies": "@id(\"p\") permit (principal, action, resource);"}).to_string(),
            "/api/v1/identities" => {
                json!({"type": "ServiceAccount", "id": "x", "kind": "bot", "owner": "a", "credential_type": "api_key"})
                    .to_string()
            }
            _ => db_request("backup-runner", 24).to_string(),
        };
        let (status, problem) = demo.call(method, path, "auditor", Some(&body));
        assert_eq!(status, 403, "the auditor changes nothing: {method} {path}: {problem}");
        assert_eq!(problem["status"], 403);
    }

    let cases: Vec<(String, u16, &str)> = vec![
        ("{".into(), 400, "(document)"),
        (r#"{"subject": 5}"#.into(), 400, "subject"),
        (
            {
                let mut r = db_request("backup-runner", 24);
                r["colour"] = json!("blue");
                r.to_string()
            },
            400,
            "colour",
        ),
        (
            {
                let mut r = db_request("backup-runner", 24);
                r["expires_at"] = json!("2026-13-45");
                r.to_string()
            },
            400,
            "expires_at",
        ),
        (
            {
                let mut r = db_request("backup-runner", 24);
                r["expires_at"] = json!("2030-01-01T00:00:00");
                r.to_string()
            },
            400,
            "expires_at",
        ),
        (
            {
                let mut r = db_request("backup-runner", 24);
                r["condition"] = json!("context.x.nope(");
                r.to_string()
            },
            400,
            "condition",
        ),
        (
            {
                let mut r = db_request("backup-runner", 24);
                r["waives"] = json!(["no-such-policy"]);
                r.to_string()
            },
            400,
            "waives[0]",
        ),
        (db_request("backup-runner", 24 * 400).to_string(), 422, "expires_at"),
    ];
    // Over the 1 MiB limit: 413. Sent raw, because the server answers once it has read past
    // the limit and closes, and a client still writing the rest may see a broken pipe first.
    assert_eq!(oversized(&demo.server.base, &demo.token("requester")), 413);
    for (body, expect, field) in cases {
        let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&body));
        assert_eq!(status, expect, "{}: {problem}", body.chars().take(80).collect::<String>());
        assert!(problem["type"].as_str().is_some() && problem["title"].as_str().is_some(), "a problem: {problem}");
        if !field.is_empty() {
            let fields: Vec<&str> =
                problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
            assert!(fields.iter().any(|f| f.contains(field)), "names {field}: {problem}");
        }
    }
    let (status, _) = demo.call("GET", "/api/v1/exceptions/EXC-999999", "auditor", None);
    assert_eq!(status, 404);
    let (status, _) = demo.call("GET", "/api/v1/exceptions/not-an-id", "auditor", None);
    assert_eq!(status, 404);
    let (status, problem) = demo.call("GET", "/api/v1/exceptions?state=bogus", "auditor", None);
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (400, Some("state")));
    let (status, _) = demo.call("GET", "/api/v1/exceptions?colour=blue", "auditor", None);
    assert_eq!(status, 400);
    let (status, _) = demo.call("GET", "/api/v1/exceptions?cursor=%00%FF", "auditor", None);
    assert_eq!(status, 400);
    let (status, _) = demo.call("DELETE", "/api/v1/exceptions", "admin", None);
    assert_eq!(status, 405);
    let (status, problem) =
        demo.call("POST", "/api/v1/exceptions/EXC-000001/renew", "owner", Some(r#"{"expires_at": "tomorrow"}"#));
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (400, Some("expires_at")), "{problem}");
    assert_eq!(demo.n_events(), before, "nothing was stored by any refused request");

    // Tokens: issued once, usable at once, revoked at once.
    let (status, issued) = demo.call(
        "POST",
        "/api/v1/tokens",
        "admin",
        Some(&json!({"principal": "kim", "roles": ["auditor"], "label": "kim's laptop"}).to_string()),
    );
    assert_eq!(status, 201, "{issued}");
    let secret = issued["token"].as_str().unwrap().to_owned();
    let (_, listed) = demo.call("GET", "/api/v1/tokens", "admin", None);
    assert!(!listed.to_string().contains(&secret), "the secret is never listed");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |token: &str| {
        agent
            .get(&format!("{}/api/v1/exceptions?limit=1", demo.server.base))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(&secret), 200);
    let (status, _) = demo.call("DELETE", &format!("/api/v1/tokens/{}", issued["id"].as_str().unwrap()), "admin", None);
    assert_eq!(status, 200);
    assert_eq!(get(&secret), 401, "a revoked token authenticates nobody");

    // An AI agent asks for itself only, within the agent limits; a human approves.
    let (status, agent) = demo.call(
        "POST",
        "/api/v1/tokens",
        "admin",
        Some(&json!({"principal": "ServiceAccount:backup-runner", "roles": ["agent"], "label": "agent"}).to_string()),
    );
    assert_eq!(status, 201, "{agent}");
    let agent_token = agent["token"].as_str().unwrap().to_owned();
    let as_agent = |body: &Value| {
        let mut response = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .post(&format!("{}/api/v1/exceptions", demo.server.base))
            .header("Authorization", &format!("Bearer {agent_token}"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let text = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), serde_json::from_str::<Value>(&text).unwrap())
    };
    let mut own = db_request("backup-runner", 12);
    own["risk"] = json!("medium");
    // The demo's DBAs set `@risk("high")` on direct database access, above an agent's limit.
    own["waives"] = json!(["default-deny"]);
    own["scope"] = json!({"actions": ["read"], "resources": [{"type": "Dataset", "id": "invoices"}]});
    let (status, filed) = as_agent(&own);
    assert_eq!(status, 201, "{filed}");
    let (status, _) =
        demo.call("POST", &format!("/api/v1/exceptions/{}/approve", filed["id"].as_str().unwrap()), "approver", None);
    assert_eq!(status, 200, "a human approves");
    let mut other = own.clone();
    other["subject"]["id"] = json!("ledger-sync");
    assert_eq!(as_agent(&other).0, 403, "not for another identity");
    let mut long = own.clone();
    long["expires_at"] = json!(in_hours(72));
    let (status, problem) = as_agent(&long);
    assert_eq!((status, problem["errors"][0]["rule"].as_str()), (422, Some("agent.max_duration")), "{problem}");

    // Operations endpoints.
    let (status, _) = demo.call("GET", "/readyz", "", None);
    assert_eq!(status, 200);
    let (status, metrics) = demo.call("GET", "/metrics", "", None);
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("waiver_decisions_total{outcome=\"allow\",path=\"exception\"}"));
}

#[test]
fn baseline_replacement_shows_its_diff_and_refuses_to_strand_exceptions() {
    let demo = Demo::start();
    let (status, current) = demo.call("GET", "/api/v1/baseline", "auditor", None);
    assert_eq!(status, 200, "{current}");
    let policies = current["source"]["policies"].as_str().unwrap().to_owned();
    let waived =
        current["policies"].as_array().unwrap().iter().find(|p| p["id"] == "forbid-prod-db-direct-access").unwrap();
    assert!(waived["waived_by"].as_u64().unwrap() >= 1, "{waived}");
    let entities = current["source"]["entities"].clone();

    // Dropping a waived policy is refused, naming the exceptions it would strand.
    let without = policies.replace("@id(\"forbid-prod-db-direct-access\")", "@id(\"forbid-prod-db-direct-access-v2\")");
    let body = json!({"policies": without, "entities": entities}).to_string();
    let (status, diff) = demo.call("PUT", "/api/v1/baseline?dry_run=true", "admin", Some(&body));
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["applied"], false);
    assert_eq!(diff["removed"], json!(["forbid-prod-db-direct-access"]));
    assert!(!diff["refusals"].as_array().unwrap().is_empty());
    let (status, problem) = demo.call("PUT", "/api/v1/baseline", "admin", Some(&body));
    assert_eq!(status, 409, "{problem}");

    // Adding a policy applies, is recorded, and reaches decisions at once.
    let added = format!(
        "{policies}\n@id(\"forbid-backup-runner-everything\")\nforbid (principal == ServiceAccount::\"backup-runner\", action, resource);\n"
    );
    let body = json!({"policies": added, "entities": entities}).to_string();
    let (status, diff) = demo.call("PUT", "/api/v1/baseline", "admin", Some(&body));
    assert_eq!(status, 200, "{diff}");
    assert_eq!(
        (diff["applied"].as_bool(), diff["added"].clone()),
        (Some(true), json!(["forbid-backup-runner-everything"]))
    );
    let (status, problem) =
        demo.call("PUT", "/api/v1/baseline", "admin", Some(r#"{"policies": "permit (principal, action, resource);"}"#));
    assert_eq!(status, 400, "a policy without @id is refused: {problem}");
    let (_, events) = demo.call("GET", "/api/v1/audit/events?limit=1000", "auditor", None);
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["type"] == "baseline.set"));
}

/// POSTs a 2 MiB body (announced; 1 MiB and a bit actually sent) and returns the status.
fn oversized(base: &str, token: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        stream,
        "POST /api/v1/exceptions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let _ = stream.write_all(&vec![b'x'; 1024 * 1024 + 4096]);
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    status.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// A loopback HTTP receiver: answers 503 to the first `fail_first` requests, then 204,
/// recording each request's headers and body.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) got: Arc<Mutex<Vec<Received>>>,
}

/// One request the receiver got: headers (lowercase names), body, the status it answered.
pub(crate) type Received = (Vec<(String, String)>, String, u16);

impl Receiver {
    pub(crate) fn start(fail_first: usize) -> Self {
        Self::start_with(fail_first, Duration::ZERO)
    }

    /// A receiver that fails the first `fail_first` messages and takes `delay` to answer each.
    pub(crate) fn start_with(fail_first: usize, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/waiver", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (name, value) = h.split_once(':').unwrap();
                    let (name, value) = (name.trim().to_lowercase(), value.trim().to_owned());
                    if name == "content-length" {
                        length = value.parse().unwrap();
                    }
                    headers.push((name, value));
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if n < fail_first { 503 } else { 204 };
                record.lock().unwrap().push((headers, String::from_utf8(body).unwrap(), status));
                std::thread::sleep(delay);
                let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Self { url, got }
    }

    /// Every acknowledged message, checked against the Standard Webhooks signature.
    pub(crate) fn verified(&self, secret: &str) -> Vec<Value> {
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        for (headers, body, status) in got.iter() {
            let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
            let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            assert!(header("webhook-signature").split(' ').any(|s| s == expected), "signature of {id} verifies");
            let ts: i64 = timestamp.parse().unwrap();
            #[expect(clippy::disallowed_methods, reason = "the receiver checks freshness against its own clock")]
            let now = jiff::Timestamp::now().as_second();
            assert!((now - ts).abs() < 300, "timestamp is fresh");
            let event: Value = serde_json::from_str(body).unwrap();
            assert_eq!(event["specversion"], "1.0");
            assert!(event["type"].as_str().unwrap().starts_with("dev.waiver."));
            if *status == 204 {
                out.push(event);
            }
        }
        out
    }
}

#[test]
fn webhooks_are_signed_retried_and_delivered_at_least_once_across_a_restart() {
    let mut demo = Demo::start_with_loopback_webhooks(&[]);
    let receiver = Receiver::start(2);
    let (status, created) =
        demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": receiver.url}).to_string()));
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let (_, listed) = demo.call("GET", "/api/v1/webhooks", "auditor", None);
    assert!(!listed.to_string().contains(&secret), "the secret is shown once");
    let first_seq = created["delivered_seq"].as_u64().unwrap() + 1;

    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 24).to_string()));
    assert_eq!(status, 201);
    let id = filed["id"].as_str().unwrap().to_owned();
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", None);
    assert_eq!(status, 200);

    let wait_for = |n: u64, demo: &Demo| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = demo.n_events();
            let delivered: Vec<u64> =
                receiver.verified(&secret).iter().map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
            if delivered.contains(&last) && last >= n {
                return delivered;
            }
            assert!(Instant::now() < deadline, "not delivered in time: {delivered:?}, head {last}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(first_seq + 2, &demo);

    // Stop the server, change things with the CLI meanwhile, start again: the events written
    // while it was down are delivered after the restart.
    // (A `--no-scheduler` server delivers nothing; replacing the server kills the old one.)
    demo.server = Server::start_in(tempfile::tempdir().unwrap(), &demo.w.data_dir(), &["--no-scheduler"]);
    demo.w.run("lee", &["exception", "revoke", &id, "--comment", "while the server was down"]).ok();
    demo.restart();
    let delivered = wait_for(first_seq + 3, &demo);

    let head = demo.n_events();
    for seq in first_seq..=head {
        assert!(delivered.contains(&seq), "event {seq} delivered (got {delivered:?})");
    }
    // At least once: a server killed between a delivery and recording it sends that event
    // again after the restart. First deliveries come in log order.
    let mut first = Vec::new();
    for seq in &delivered {
        if !first.contains(seq) {
            first.push(*seq);
        }
    }
    assert!(first.windows(2).all(|w| w[0] < w[1]), "in order: {delivered:?}");
    let got = receiver.got.lock().unwrap();
    assert!(got.iter().take(2).all(|(_, _, status)| *status == 503), "the first attempts failed and were retried");
    let retried = &got[0].0.iter().find(|(n, _)| n == "webhook-id").unwrap().1;
    assert_eq!(&got[2].0.iter().find(|(n, _)| n == "webhook-id").unwrap().1, retried, "a retry keeps its webhook-id");
}

#[test]
fn the_cli_works_against_a_running_server_where_the_token_decides_who_acts() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let remote = |persona: &str, args: &[&str]| {
        let token = demo.token(persona);
        let mut all = vec!["--server", demo.server.base.as_str(), "--token", token.as_str()];
        all.extend_from_slice(args);
        // `--as` is what local mode would use; remote mode ignores it: the token decides.
        demo.w.run("lee", &all)
    };
    let path = demo.w.dir.path().join("request.yaml");
    let request = db_request("backup-runner", 24);
    std::fs::write(&path, serde_yaml_ng::to_string(&request).unwrap()).unwrap();
    let file = path.to_string_lossy().into_owned();
    let filed = remote("requester", &["--output", "json", "exception", "request", "--file", &file]).ok().json();
    let id = filed["id"].as_str().unwrap().to_owned();
    assert_eq!(filed["requester"], "dana", "the token's principal acted, not --as");

    let refused = remote("requester", &["exception", "approve", &id]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("approver"), "the server's reason: {}", refused.stderr);
    let problem = remote("requester", &["--output", "json", "exception", "approve", &id]).json();
    assert_eq!(problem["status"], 403);

    remote("approver", &["exception", "approve", &id, "--comment", "ok"]).ok();
    let shown = remote("auditor", &["--output", "json", "exception", "show", &id]).ok().json();
    assert_eq!(shown["state"], "active");
    let shown = remote("auditor", &["exception", "show", &id]).ok();
    assert!(shown.stdout.contains("exception.approved"), "history, re-sealed and checked: {}", shown.stdout);
    let listed = remote("auditor", &["--output", "json", "exception", "list", "--state", "active"]).ok().json();
    assert!(listed["items"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str()));
    let verified = remote("auditor", &["--output", "json", "audit", "verify"]).ok().json();
    assert!(verified["events"].as_u64().unwrap() > 100, "{verified}");
    remote("auditor", &["audit", "events", "--limit", "1500"]).ok();
    remote("owner", &["exception", "revoke", &id, "--comment", "done"]).ok();
    let denied = remote("auditor", &["identity", "offboard", "ServiceAccount:backup-runner"]);
    assert_eq!(denied.code, 2, "the auditor changes nothing: {denied:?}");
    let local_only = remote("admin", &["baseline", "show"]);
    assert_eq!(local_only.code, 2);
    let no_token = demo.w.run("lee", &["--server", &demo.server.base, "exception", "list"]);
    assert_eq!(no_token.code, 2);
    assert!(no_token.stderr.contains("--token"), "{no_token:?}");

    // Evidence over HTTP and through the remote CLI: auditors and approvers, not requesters.
    let (status, csv) = demo.call("GET", "/api/v1/export?format=csv", "auditor", None);
    assert_eq!(status, 200);
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("id,kind,state,subject"), "{csv}");
    assert!(csv.contains(&id), "the exception filed above is in the export");
    let (status, poam) = demo.call("GET", "/api/v1/export?format=oscal-poam", "approver", None);
    assert_eq!(status, 200);
    assert_eq!(poam["plan-of-action-and-milestones"]["metadata"]["oscal-version"], "1.1.3");
    let (status, _) = demo.call("GET", "/api/v1/export?format=csv", "requester", None);
    assert_eq!(status, 403);
    for (query, field) in [("", "format"), ("?format=xlsx", "format"), ("?format=csv&all=1", "all")] {
        let (status, problem) = demo.call("GET", &format!("/api/v1/export{query}"), "auditor", None);
        assert_eq!(status, 400, "{query}: {problem}");
        assert!(problem.to_string().contains(field), "{query}: the problem names `{field}`: {problem}");
    }
    let out = demo.w.dir.path().join("register.json");
    remote("auditor", &["export", "--format", "json", "--out", &out.to_string_lossy()]).ok();
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(exported["exceptions"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str()));
    let refused = remote("requester", &["export", "--format", "csv"]);
    assert_eq!(refused.code, 2, "{refused:?}");

    // Reports over HTTP and the remote CLI.
    let (status, precedent) = demo.call("GET", "/api/v1/reports/precedent?min_subjects=3&weeks=26", "auditor", None);
    assert_eq!(status, 200, "{precedent}");
    assert!(precedent["clusters"].as_array().unwrap().iter().any(|c| c["waives"] == "forbid-prod-db-direct-access"));
    for (path, status_wanted) in [
        ("/api/v1/reports/nonsense", 404),
        ("/api/v1/reports/sprawl?weeks=0", 400),
        ("/api/v1/reports/sprawl?weeks=abc", 400),
        ("/api/v1/reports/sprawl?since=1", 400),
    ] {
        let (status, problem) = demo.call("GET", path, "auditor", None);
        assert_eq!(status, status_wanted, "{path}: {problem}");
    }
    let (status, _) = demo.call("GET", "/api/v1/reports/hygiene", "requester", None);
    assert_eq!(status, 403);
    let hygiene = remote("approver", &["--output", "json", "report", "hygiene", "--unused-days", "7"]).ok().json();
    assert_eq!(hygiene["unused_days"], 7);
    let human = remote("auditor", &["report", "frameworks"]).ok();
    assert!(human.stdout.contains("nist-csf-2.0"), "{}", human.stdout);

    // The owner edits the mapping; the auditor may not; the change is an event.
    let set = ["exception", "frameworks", id.as_str(), "--set", "owasp-nhi-2025:NHI7,nist-csf-2.0:ID.RA-07"];
    let refused = remote("auditor", &set);
    assert_eq!(refused.code, 2, "{refused:?}");
    let mut args = vec!["--output", "json"];
    args.extend(set);
    let edited = remote("owner", &args).ok().json();
    assert_eq!(edited["frameworks"], json!(["owasp-nhi-2025:NHI7", "nist-csf-2.0:ID.RA-07"]));
    let (_, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["type"] == "exception.frameworks_changed"));
    let (status, problem) = demo.call(
        "PUT",
        &format!("/api/v1/exceptions/{id}/frameworks"),
        "owner",
        Some(r#"{"frameworks": ["nist-800-53r5:ZZ-1"]}"#),
    );
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("frameworks[0]"), "{problem}");
    // Import over HTTP (the body is the CSV) and through the remote CLI.
    let soon = crate::support::in_hours(48);
    let row = |subject: &str, risk: &str| {
        format!(
            "ServiceAccount:{subject},forbid-prod-db-direct-access,connect,Database:orders-prod,replica reads,no export API,{risk},sam,{soon},read_only: replica user; extra_logging: all,build the export API\n"
        )
    };
    let csv = format!(
        "Service Account,waives,actions,resources,justification,normal_path_unavailable,risk,owner,expires_at,compensating_controls,remediation\n{}{}",
        row("ledger-sync", "high"),
        row("billing-etl", "extreme")
    );
    let before = demo.n_events();
    let map = "map=subject%3DService%20Account";
    let (status, problem) = demo.call("POST", &format!("/api/v1/import?{map}"), "requester", Some(&csv));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "line 3: risk", "{problem}");
    assert_eq!(demo.n_events(), before, "a file with an invalid row stores nothing");
    let (status, dry) = demo.call("POST", &format!("/api/v1/import?{map}&dry_run=true"), "requester", Some(&csv));
    assert_eq!((status, dry["valid"].as_u64(), dry["invalid"].as_u64()), (200, Some(1), Some(1)), "{dry}");
    for (query, field) in
        [("", "subject"), ("?map=nonsense", "map"), ("?dry_run=maybe", "dry_run"), ("?colour=red", "colour")]
    {
        let (status, problem) = demo.call("POST", &format!("/api/v1/import{query}"), "requester", Some(&csv));
        assert_eq!(status, 400, "{query}: {problem}");
        assert!(problem.to_string().contains(field), "{query}: names `{field}`: {problem}");
    }
    let (status, _) = demo.call("POST", "/api/v1/import", "auditor", Some(&csv.replace("Service Account", "subject")));
    assert_eq!(status, 403, "the auditor files nothing");
    assert_eq!(demo.n_events(), before);
    let open_before = demo.call("GET", "/api/v1/reports/sprawl", "auditor", None).1["open"].as_u64().unwrap();
    let path = demo.w.dir.path().join("tickets.csv");
    std::fs::write(&path, &csv).unwrap();
    let file = path.to_string_lossy().into_owned();
    let args = ["--output", "json", "import", &file, "--map", "subject=Service Account", "--skip-invalid"];
    let done = remote("requester", &args).ok().json();
    assert_eq!(done["filed"], 1, "{done}");
    let filed = done["rows"][0]["id"].as_str().unwrap().to_owned();
    let shown = remote("auditor", &["--output", "json", "exception", "show", &filed]).ok().json();
    assert_eq!((shown["state"].as_str(), shown["requester"].as_str()), (Some("requested"), Some("dana")));
    assert_eq!(demo.n_events(), before + 1);
    // Reports read the node's in-memory register, which took the import at once.
    let open_after = demo.call("GET", "/api/v1/reports/sprawl", "auditor", None).1["open"].as_u64().unwrap();
    assert_eq!(open_after, open_before + 1);
}
