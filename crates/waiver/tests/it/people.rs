//! People (issue 19) with the real parts: a real OpenID provider on loopback
//! (node-oidc-provider, `tests/web/provider.mjs`), a real SMTP server (Python's aiosmtpd)
//! and a loopback chat receiver. Sign-in and step-up in chromium, JWTs on the REST API,
//! and notifications reaching each eligible approver.
//!
//! Needs `node` with `tests/web/node_modules` (`npm ci` there; .ci/run does it) and
//! `python3 -m aiosmtpd` (`pip install aiosmtpd`; .ci/run does it). Fails, never skips.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    rest::{Demo, db_request},
    support::Waiver,
};

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The test OpenID provider, killed on drop.
pub(crate) struct Idp {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) const CLIENT_SECRET: &str = "waiver-test-client-secret";

impl Idp {
    pub(crate) fn start(port: u16, waiver_url: &str, access_ttl: u32) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/web");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test OpenID provider is not installed: run `npm ci` in tests/web (.ci/run does)"
        );
        let child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("WAIVER_URL", waiver_url)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("ACCESS_TTL", access_ttl.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the test OpenID provider");
        wait_for_port(port, "the OpenID provider");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// An access token (a JWT for `https://waiver.test`) for the `ci-deployer` client.
    pub(crate) fn client_credentials(&self) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("ci-deployer:ci-deployer-secret");
        let mut response = agent
            .post(&format!("{}/token", self.url))
            .header("Authorization", &format!("Basic {basic}"))
            .send_form([("grant_type", "client_credentials"), ("resource", "https://waiver.test"), ("scope", "api")])
            .unwrap();
        let answer: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        answer["access_token"].as_str().unwrap_or_else(|| panic!("no access token: {answer}")).to_owned()
    }
}

/// A real SMTP server (aiosmtpd) keeping what it receives in a Maildir.
struct Smtp {
    child: Child,
    port: u16,
    mailbox: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    fn start() -> Self {
        let port = free_port();
        let mailbox = tempfile::tempdir().unwrap();
        let dir = mailbox.path().join("mail");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd; .ci/run does)");
        wait_for_port(port, "aiosmtpd");
        Self { child, port, mailbox }
    }

    /// Every message received so far, as text.
    fn messages(&self) -> Vec<String> {
        let new = self.mailbox.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(new) else { return Vec::new() };
        entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }

    /// Waits until `until` holds of the messages, and returns them.
    fn wait(&self, what: &str, until: impl Fn(&[String]) -> bool) -> Vec<String> {
        let started = Instant::now();
        loop {
            let messages = self.messages();
            if until(&messages) {
                return messages;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{what}; the mailbox holds {messages:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback chat incoming-webhook receiver keeping the JSON bodies it is posted.
struct Chat {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Chat {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/waiver", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    kept.lock().unwrap().push(v);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            }
        });
        Self { url, bodies }
    }

    fn wait(&self, what: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let bodies = self.bodies.lock().unwrap().clone();
            if until(&bodies) {
                return bodies;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{what}; the receiver holds {bodies:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The node configuration naming the provider on `idp_port`, and notifications if given.
pub(crate) fn node_config(dir: &std::path::Path, idp_port: u16, notify: &str) -> String {
    let path = dir.join("node.toml");
    let text = format!(
        r#"[[issuer]]
url = "http://127.0.0.1:{idp_port}"
audiences = ["https://waiver.test"]
leeway_seconds = 0
[issuer.groups]
waiver-approvers = ["approver"]
waiver-requesters = ["requester"]
deployers = ["requester"]

[sign_in]
issuer = "http://127.0.0.1:{idp_port}"
client_id = "waiver"
display_name = "Test IdP"
{notify}"#
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn bearer_get(base: &str, path: &str, token: &str) -> (u16, String, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response =
        agent.get(&format!("{base}{path}")).header("Authorization", &format!("Bearer {token}")).call().unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn jwts_from_the_provider_call_the_api_until_they_expire() {
    let idp_port = free_port();
    let config_dir = tempfile::tempdir().unwrap();
    let config = node_config(config_dir.path(), idp_port, "");
    let demo = Demo::start_prepared_env(
        Waiver::new(),
        &["--no-scheduler", "--config", &config],
        &[("WAIVER_OIDC_CLIENT_SECRET", CLIENT_SECRET)],
        |_| {},
    );
    let idp = Idp::start(idp_port, &demo.server.base, 3);
    let jwt = idp.client_credentials();

    // A workload's JWT, mapped to `requester` by its `deployers` group, reads the register.
    let (status, _, listed) = bearer_get(&demo.server.base, "/api/v1/exceptions?limit=1", &jwt);
    assert_eq!(status, 200, "{listed}");
    // …but the role decides: it may not issue tokens.
    let (status, _, refused) = bearer_get(&demo.server.base, "/api/v1/tokens", &jwt);
    assert_eq!(status, 403, "{refused}");

    // One changed byte of the signature, and it is nobody.
    let mut forged = jwt.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let (status, challenge, problem) =
        bearer_get(&demo.server.base, "/api/v1/exceptions", &String::from_utf8(forged).unwrap());
    assert_eq!((status, challenge.as_str()), (401, "Bearer"), "{problem}");
    // A token from an issuer nobody configured is refused before any key is fetched.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let stranger = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256", "typ": "JWT"})),
        b64(json!({"iss": "http://127.0.0.1:1", "sub": "x", "aud": "https://waiver.test", "exp": 4_000_000_000u64}))
    );
    let (status, _, problem) = bearer_get(&demo.server.base, "/api/v1/exceptions", &stranger);
    assert_eq!(status, 401);
    assert!(problem["detail"].as_str().unwrap().contains("issuer"), "{problem}");
    // `alg: none` and HMAC are never accepted.
    let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(json!({"iss": idp.url, "sub": "x"})));
    assert_eq!(bearer_get(&demo.server.base, "/api/v1/exceptions", &none).0, 401);

    // Past its expiry (3 s, no skew allowed here), the same token is refused.
    std::thread::sleep(Duration::from_secs(5));
    let (status, _, problem) = bearer_get(&demo.server.base, "/api/v1/exceptions", &jwt);
    assert_eq!(status, 401, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("xpired"), "{problem}");

    // The provider rotates its key (a restart makes a new one): waiver fetches the new keys
    // for the unknown `kid` (at most once every 10 s), and a token signed with a key the
    // provider no longer publishes is refused.
    drop(idp);
    let idp = Idp::start(idp_port, &demo.server.base, 60);
    let old_key_jwt = jwt;
    std::thread::sleep(Duration::from_secs(6));
    let rotated = idp.client_credentials();
    let (status, _, listed) = bearer_get(&demo.server.base, "/api/v1/exceptions?limit=1", &rotated);
    assert_eq!(status, 200, "a token signed with the new key: {listed}");
    let (status, _, problem) = bearer_get(&demo.server.base, "/api/v1/exceptions", &old_key_jwt);
    assert_eq!(status, 401, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("does not publish"), "refused for its key: {problem}");
}

#[test]
fn a_new_request_reaches_each_eligible_approver_by_email_and_chat() {
    let smtp = Smtp::start();
    let chat = Chat::start();
    let idp_port = free_port();
    let config_dir = tempfile::tempdir().unwrap();
    let notify = format!(
        "[notify.smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"waiver <waiver@example.test>\"\ntls = \"none\"\n[notify.chat]\nurl = \"{}\"\n",
        smtp.port, chat.url
    );
    let config = node_config(config_dir.path(), idp_port, &format!("[notify]\n{notify}"));
    let demo = Demo::start_prepared_env(
        Waiver::new(),
        &["--config", &config],
        &[("WAIVER_OIDC_CLIENT_SECRET", CLIENT_SECRET)],
        crate::rest::allow_loopback_webhooks,
    );
    // The approvers' addresses come from provisioning (SCIM), as in production.
    for (name, display) in [("lee", "Lee Park"), ("morgan", "Morgan Diaz")] {
        let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "active": true,
            "displayName": display, "emails": [{"value": format!("{name}@example.test"), "primary": true}]});
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        // lee holds a token (so is in the directory); morgan is new to it.
        let request = if name == "lee" {
            agent.put(&format!("{}/scim/v2/Users/{name}", demo.server.base))
        } else {
            agent.post(&format!("{}/scim/v2/Users", demo.server.base))
        };
        let mut response = request
            .header("Authorization", &format!("Bearer {}", demo.token("admin")))
            .header("Content-Type", "application/scim+json")
            .send(user.to_string())
            .unwrap();
        let status = response.status().as_u16();
        assert!(status == 200 || status == 201, "{status}: {}", response.body_mut().read_to_string().unwrap());
    }
    // Each person chooses their channels: morgan takes chat only; nobody sets another's.
    let chat_only = json!({"channels": ["chat"]}).to_string();
    let (status, refused) = demo.call("PUT", "/api/v1/people/morgan/notifications", "requester", Some(&chat_only));
    assert_eq!(status, 403, "{refused}");
    let (status, bad) =
        demo.call("PUT", "/api/v1/people/morgan/notifications", "admin", Some(r#"{"channels": ["pager"]}"#));
    assert_eq!(status, 400, "{bad}");
    let (status, morgan) = demo.call("PUT", "/api/v1/people/morgan/notifications", "admin", Some(&chat_only));
    assert_eq!((status, morgan["channels"].clone()), (200, json!(["chat"])), "{morgan}");
    // The admin sees the channels beside the webhooks.
    let (status, hooks) = demo.call("GET", "/api/v1/webhooks", "admin", None);
    assert_eq!(status, 200, "{hooks}");
    let ids: Vec<&str> = hooks["items"].as_array().unwrap().iter().filter_map(|h| h["id"].as_str()).collect();
    assert!(ids.contains(&"wh_notify_email") && ids.contains(&"wh_notify_chat"), "{hooks}");

    // A request to waive the DBA-routed rule: the rules route it to lee and morgan.
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let mails = smtp.wait("each eligible approver who takes email is emailed", |m| {
        m.iter().any(|x| x.contains("lee@example.test") && x.contains(&id))
    });
    let to_lee = mails.iter().find(|m| m.contains("lee@example.test") && m.contains(&id)).unwrap();
    assert!(to_lee.contains("Approval needed"), "{to_lee}");
    assert!(to_lee.contains(&format!("{}/ui/exceptions/{id}", demo.server.base)), "with a link: {to_lee}");
    assert!(!mails.iter().any(|m| m.contains(&id) && m.contains("dana@")), "nobody outside the routing is told");
    assert!(!mails.iter().any(|m| m.contains("morgan@example.test")), "morgan chose chat only");
    let posted = chat.wait("the chat receiver gets the request", |b| {
        b.iter().any(|v| v["text"].as_str().is_some_and(|t| t.contains(&id)))
    });
    let text = posted.iter().find_map(|v| v["text"].as_str().filter(|t| t.contains(&id))).unwrap();
    assert!(text.contains("lee") && text.contains("morgan"), "{text}");

    // Delivery is recorded on the channel's cursor: nothing is left behind, nothing failing.
    let started = Instant::now();
    loop {
        let (_, hooks) = demo.call("GET", "/api/v1/webhooks", "admin", None);
        let email = hooks["items"].as_array().unwrap().iter().find(|h| h["id"] == "wh_notify_email").unwrap().clone();
        if email["delivered_seq"].as_u64().unwrap_or(0) >= filed_seq(&demo, &id) && email["attempts"] == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{email}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sequence number of the event that filed `id`.
fn filed_seq(demo: &Demo, id: &str) -> u64 {
    let (_, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    events["items"][0]["seq"].as_u64().unwrap()
}

#[test]
fn scim_groups_are_provisioned_into_the_directory_and_recorded() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let scim = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}{path}", demo.server.base);
        let auth = format!("Bearer {}", demo.token("admin"));
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
                    .send(b.unwrap().to_string())
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let members = |g: &Value| -> Vec<String> {
        g["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().to_owned()).collect()
    };
    let schema = "urn:ietf:params:scim:schemas:core:2.0:Group";
    // Only people waiver knows can be members; the refusal names the member.
    let (status, refused) = scim(
        "POST",
        "/scim/v2/Groups",
        Some(json!({"schemas": [schema], "displayName": "waiver-approvers",
        "members": [{"value": "lee"}, {"value": "ghost"}]})),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("ghost"), "{refused}");
    let (status, created) = scim(
        "POST",
        "/scim/v2/Groups",
        Some(json!({"schemas": [schema], "displayName": "waiver-approvers",
        "members": [{"value": "lee"}]})),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(scim("POST", "/scim/v2/Groups", Some(json!({"displayName": "waiver-approvers"}))).0, 409);
    // Okta adds members with a value list; Entra ID removes one by a filtered path.
    let (status, added) = scim(
        "PATCH",
        &format!("/scim/v2/Groups/{id}"),
        Some(json!({"Operations": [
        {"op": "add", "path": "members", "value": [{"value": "sam"}, {"value": "dana"}]}]})),
    );
    assert_eq!((status, members(&added)), (200, vec!["lee".to_owned(), "sam".into(), "dana".into()]), "{added}");
    let (status, removed) = scim(
        "PATCH",
        &format!("/scim/v2/Groups/{id}"),
        Some(json!({"Operations": [
        {"op": "Remove", "path": "members[value eq \"sam\"]"}]})),
    );
    assert_eq!((status, members(&removed)), (200, vec!["lee".to_owned(), "dana".into()]), "{removed}");
    let (status, listed) = scim("GET", "/scim/v2/Groups?filter=displayName%20eq%20%22waiver-approvers%22", None);
    assert_eq!((status, listed["totalResults"].as_u64()), (200, Some(1)), "{listed}");
    // A requester's token may not provision.
    let (status, _) = demo.call("GET", "/scim/v2/Groups", "requester", None);
    assert_eq!(status, 403);
    // Every change is in the log, and the directory artifact verifies.
    let (_, events) = demo.call("GET", "/api/v1/audit/events?limit=500", "auditor", None);
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"group.created") && kinds.contains(&"group.updated"), "{kinds:?}");
    assert_eq!(scim("DELETE", &format!("/scim/v2/Groups/{id}"), None).0, 204);
    assert_eq!(scim("GET", &format!("/scim/v2/Groups/{id}"), None).0, 404);
    let (status, verified) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!((status, verified["ok"].clone()), (200, json!(true)), "{verified}");
}

fn call_with(demo: &Demo, method: &str, path: &str, secret: &str, body: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{}{path}", demo.server.base);
    let auth = format!("Bearer {secret}");
    let mut response = match method {
        "GET" => agent.get(&url).header("Authorization", &auth).call().unwrap(),
        _ => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("{}"))
            .unwrap(),
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn a_scoped_token_does_only_what_its_scopes_name_within_its_roles() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let issue = |principal: &str, roles: &[&str], scopes: &[&str]| -> (u16, Value) {
        let body = json!({"principal": principal, "roles": roles, "label": "scoped", "scopes": scopes}).to_string();
        demo.call("POST", "/api/v1/tokens", "admin", Some(&body))
    };
    let (status, bad) = issue("lee", &["approver"], &["read", "everything"]);
    assert_eq!(status, 400, "{bad}");
    assert!(bad.to_string().contains("scopes[1]"), "{bad}");
    let (status, read_only) = issue("lee", &["approver"], &["read"]);
    assert_eq!((status, read_only["scopes"].clone()), (201, json!(["read"])), "{read_only}");
    let secret = read_only["token"].as_str().unwrap();

    let (status, listed) = call_with(&demo, "GET", "/api/v1/exceptions?state=requested", secret, None);
    assert_eq!(status, 200, "{listed}");
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    // An approver's token limited to reading may not approve, and is told which scope it lacks.
    let (status, refused) = call_with(&demo, "POST", &format!("/api/v1/exceptions/{id}/approve"), secret, Some("{}"));
    assert_eq!(status, 403, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("`approve`"), "{refused}");
    let body = json!({"subject": {"type": "ServiceAccount", "id": "ci-deployer"}, "action": {"name": "deploy"},
        "resource": {"type": "Environment", "id": "prod"}})
    .to_string();
    assert_eq!(call_with(&demo, "POST", "/access/v1/evaluation", secret, Some(&body)).0, 403, "no `decide`");

    // A decision point's token limited to deciding decides, and reads nothing.
    let (_, pep) = issue("gateway", &["pep"], &["decide"]);
    let pep = pep["token"].as_str().unwrap();
    let (status, decided) = call_with(&demo, "POST", "/access/v1/evaluation", pep, Some(&body));
    assert_eq!(status, 200, "{decided}");
    assert_eq!(call_with(&demo, "GET", "/api/v1/exceptions", pep, None).0, 403);

    // Scopes are part of the sealed record: the log still verifies; the UI takes no scoped token.
    let (status, verified) = demo.call("GET", "/api/v1/audit/verify", "auditor", None);
    assert_eq!((status, verified["ok"].clone()), (200, json!(true)), "{verified}");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let mut page = agent.get(&format!("{}/ui/login", demo.server.base)).call().unwrap();
    let cookie = page.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = page.body_mut().read_to_string().unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut signed = agent
        .post(&format!("{}/ui/login", demo.server.base))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str()), ("next", "/ui/"), ("token", secret)])
        .unwrap();
    assert_eq!(signed.status().as_u16(), 403);
    assert!(signed.body_mut().read_to_string().unwrap().contains("without scopes"));
}

#[test]
fn a_person_who_asks_for_a_digest_gets_one_a_day_listing_what_waits_for_them() {
    let smtp = Smtp::start();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[notify]\ndigest_hour = 0\n[notify.smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"waiver@example.test\"\ntls = \"none\"\n",
            smtp.port
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut demo = Demo::start_with(&["--no-scheduler", "--config", &config]);
    let user = json!({"userName": "lee", "active": true, "emails": [{"value": "lee@example.test", "primary": true}]});
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let status = agent
        .put(&format!("{}/scim/v2/Users/lee", demo.server.base))
        .header("Authorization", &format!("Bearer {}", demo.token("admin")))
        .header("Content-Type", "application/scim+json")
        .send(user.to_string())
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    // lee asks for a digest instead of a message per event (the CLI, as lee's admin).
    demo.w.run("admin", &["person", "notify", "lee", "--digest"]).ok();

    // With the scheduler on, the day's digest goes out (the hour is 0 here: at once).
    demo.restart_with(&["--config", &config]);
    let mails = smtp.wait("lee gets a digest", |m| m.iter().any(|x| x.contains("Your daily digest")));
    let digest = mails.iter().find(|m| m.contains("Your daily digest")).unwrap();
    assert!(digest.contains("lee@example.test") && digest.contains("approve"), "{digest}");
    assert!(digest.contains(&format!("{}/ui/exceptions/", demo.server.base)), "{digest}");

    // Once a day: a restart (or another node) does not send it again.
    demo.restart_with(&["--config", &config]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.messages().iter().filter(|m| m.contains("Your daily digest")).count(), 1);
}
