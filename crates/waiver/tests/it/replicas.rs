//! Several `waiver serve` replicas on one PostgreSQL database, as real processes: a change
//! on one reaches the decisions of the others, and when the scheduler's leader dies another
//! replica takes over. The server is `WAIVER_TEST_PG_URL` (default: the local one); these
//! tests fail, never skip, without it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    interop::Server,
    support::{Waiver, in_hours},
};

fn pg_url() -> String {
    let server =
        std::env::var("WAIVER_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime
        .block_on(waiver_store_postgres::scratch_database(&server))
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server}: {e}"))
}

fn call(base: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{base}{path}");
    let auth = format!("Bearer {token}");
    let mut response = match body {
        None if method == "GET" => agent.get(&url).header("Authorization", &auth).call().unwrap(),
        body => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.map(Value::to_string).unwrap_or_default())
            .unwrap(),
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn allowed(base: &str, pep: &str, subject: &str) -> bool {
    let body = json!({"subject": {"type": "ServiceAccount", "id": subject}, "action": {"name": "connect"},
                      "resource": {"type": "Database", "id": "orders-prod"}});
    let (status, answer) = call(base, pep, "POST", "/access/v1/evaluation", Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer["decision"] == true
}

fn put(base: &str, token: &str, path: &str, body: String) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .put(&format!("{base}{path}"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn decides(base: &str, pep: &str, resource: &str) -> bool {
    let body = json!({"subject": {"type": "ServiceAccount", "id": "backup-runner"}, "action": {"name": "connect"},
                      "resource": {"type": "Database", "id": resource}});
    let (status, answer) = call(base, pep, "POST", "/access/v1/evaluation", Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer["decision"] == true
}

/// Issue 17: baseline and rules are artifacts of the log. A replica started with nothing but
/// `--database-url` (an empty data dir) serves the same baseline and rules; a `baseline set`
/// or `rules set` on one replica governs the other within the follower's bound; what was in
/// force at an event can be fetched; a replica that cannot load what the log put in force
/// reports not ready.
#[test]
fn a_replica_needs_only_the_database_url_and_follows_baseline_and_rules() {
    let url = pg_url();
    let w = Waiver::new();
    w.run("admin", &["--database-url", &url, "demo", "--no-serve"]).ok();
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(w.data_dir().join("demo-tokens.json")).unwrap()).unwrap();
    let token = |p: &str| tokens[p]["token"].as_str().unwrap().to_owned();
    let (admin, pep, requester) = (token("admin"), token("pep"), token("requester"));
    let a = Server::start_in(tempfile::tempdir().unwrap(), &w.data_dir(), &["--database-url", &url]);
    let empty = tempfile::tempdir().unwrap();
    let b = Server::start_in(tempfile::tempdir().unwrap(), &empty.path().join("data"), &["--database-url", &url]);

    // The same baseline and rules, from the log.
    for kind in ["baseline", "rules"] {
        let (sa, on_a) = call(&a.base, &admin, "GET", &format!("/api/v1/artifacts/{kind}"), None);
        let (sb, on_b) = call(&b.base, &admin, "GET", &format!("/api/v1/artifacts/{kind}"), None);
        assert_eq!((sa, sb), (200, 200), "{on_a} {on_b}");
        assert_eq!(on_a["sha256"], on_b["sha256"], "{kind}");
    }
    assert!(decides(&a.base, &pep, "reporting-replica") && decides(&b.base, &pep, "reporting-replica"));
    // B was given no data dir: it makes its own for its break-glass spool (without one,
    // every break-glass use on B would be refused).
    let spool = empty.path().join("data").join("break-glass.spool");
    let made = (0..50).any(|_| {
        let exists = spool.exists();
        if !exists {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        exists
    });
    assert!(made, "{} was not created", spool.display());
    let first_set =
        call(&a.base, &admin, "GET", "/api/v1/artifacts/baseline", None).1["set_by_event"].as_u64().unwrap();

    // A new baseline through A governs B.
    let (_, current) = call(&a.base, &admin, "GET", "/api/v1/baseline", None);
    let mut source = current["source"].clone();
    let extra = "\n@id(\"forbid-replica-during-test\")\nforbid(principal, action, resource == Database::\"reporting-replica\");\n";
    source["policies"] = json!(format!("{}{extra}", source["policies"].as_str().unwrap()));
    let (status, applied) = put(&a.base, &admin, "/api/v1/baseline", source.to_string());
    assert_eq!(status, 200, "{applied}");
    let took = until("B to take the new baseline", || !decides(&b.base, &pep, "reporting-replica"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // What was in force before it can still be shown.
    let (_, then) = call(&b.base, &admin, "GET", &format!("/api/v1/artifacts/baseline?at={first_set}"), None);
    assert!(!then["body"].as_str().unwrap().contains("forbid-replica-during-test"), "{then}");
    let shown = w.run(
        "admin",
        &["--database-url", &url, "--output", "json", "baseline", "show", "--at", &first_set.to_string()],
    );
    assert!(!shown.ok().json()["policies"].as_str().unwrap().contains("forbid-replica-during-test"));

    // New rules through B govern A, without a restart: no request may wait any more.
    let (_, rules) = call(&b.base, &admin, "GET", "/api/v1/artifacts/rules", None);
    let strict = rules["body"]
        .as_str()
        .unwrap()
        .replace("max_open_requests_per_subject = 20", "max_open_requests_per_subject = 0");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let status = agent
        .put(&format!("{}/api/v1/rules", b.base))
        .header("Authorization", &format!("Bearer {admin}"))
        .header("Content-Type", "text/plain")
        .send(strict)
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    until("A to govern by the new rules", || {
        let (status, problem) =
            call(&a.base, &requester, "POST", "/api/v1/exceptions", Some(&request("backup-runner", in_hours(24))));
        status == 422 && problem.to_string().contains("max_open_requests_per_subject")
    });

    // A baseline whose stored text is not what its event sealed: B cannot load it and says so.
    let mut poisoned = current["source"].clone();
    poisoned["policies"] = json!(format!(
        "{}\n@id(\"forbid-poisoned\")\nforbid(principal, action, resource == Database::\"orders-prod\");\n",
        current["source"]["policies"].as_str().unwrap()
    ));
    let entities = poisoned["entities"].to_string();
    let parsed = waiver_engine::Baseline::parse(poisoned["policies"].as_str().unwrap(), None, Some(&entities)).unwrap();
    let digest = waiver_store::seal::digest(&waiver_service::baseline_artifact(&parsed));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO artifacts (digest, kind, body) VALUES ($1, 'baseline', '{\"policies\":\"permit(principal, action, resource);\"}')")
            .bind(&digest)
            .execute(&pool)
            .await
            .unwrap();
    });
    let (status, applied) = put(&a.base, &admin, "/api/v1/baseline", poisoned.to_string());
    assert_eq!(status, 200, "{applied}");
    until("B to report not ready", || {
        let (status, ready) = b.get("/readyz");
        status == 503 && ready.to_string().contains("cannot be loaded")
    });
    assert!(!decides(&b.base, &pep, "reporting-replica"), "B still decides on the baseline it had");
}

/// Polls until `check` holds, returning how long it took.
fn until(what: &str, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

fn request(subject: &str, expires_at: String) -> Value {
    json!({
        "subject": {"type": "ServiceAccount", "id": subject},
        "waives": ["forbid-prod-db-direct-access"],
        "scope": {"actions": ["connect"], "resources": [{"type": "Database", "id": "orders-prod"}]},
        "compensating_controls": [{"kind": "extra_logging", "description": "logged"}, {"kind": "read_only", "description": "ro"}],
        "justification": "replica test", "normal_path_unavailable": "test", "risk": "high", "owner": "sam",
        "expires_at": expires_at, "remediation": {"plan": "none"}
    })
}

#[test]
fn replicas_on_postgres_share_changes_and_fail_over_the_scheduler() {
    let url = pg_url();
    let w = Waiver::new();
    let data = w.data_dir();
    let with_db = |args: &[&str]| {
        let mut all = vec!["--database-url", url.as_str()];
        all.extend_from_slice(args);
        w.run("admin", &all)
    };
    with_db(&["demo", "--no-serve"]).ok();
    // The rules in force are the log's: set them through any node (here the CLI on the database).
    let rules_path = data.join("rules.toml");
    let rules = with_db(&["rules", "show"]).ok().stdout;
    std::fs::write(&rules_path, rules.replace("allow_internal = []", "allow_internal = [\"127.0.0.1\"]")).unwrap();
    with_db(&["rules", "set", rules_path.to_str().unwrap()]).ok();
    let tokens: Value = serde_json::from_str(&std::fs::read_to_string(data.join("demo-tokens.json")).unwrap()).unwrap();
    let token = |p: &str| tokens[p]["token"].as_str().unwrap().to_owned();
    let (requester, approver, owner, pep, auditor) =
        (token("requester"), token("approver"), token("owner"), token("pep"), token("auditor"));

    let start = || Server::start_in(tempfile::tempdir().unwrap(), &data, &["--database-url", &url]);
    let leader = start();
    std::thread::sleep(Duration::from_millis(500)); // the first one takes the leadership
    let (b, c) = (start(), start());

    // A change on one replica reaches the decisions of the others.
    let (status, filed) =
        call(&b.base, &requester, "POST", "/api/v1/exceptions", Some(&request("backup-runner", in_hours(24))));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let (status, approved) =
        call(&b.base, &approver, "POST", &format!("/api/v1/exceptions/{id}/approve"), Some(&json!({})));
    assert_eq!(status, 200, "{approved}");
    let on_c = until("the approval on C", || allowed(&c.base, &pep, "backup-runner"));
    let on_a = until("the approval on A", || allowed(&leader.base, &pep, "backup-runner"));
    let (status, _) = call(&c.base, &owner, "POST", &format!("/api/v1/exceptions/{id}/revoke"), Some(&json!({})));
    assert_eq!(status, 200);
    assert!(!allowed(&c.base, &pep, "backup-runner"), "denied at once where it was revoked");
    let denied_b = until("the revocation on B", || !allowed(&b.base, &pep, "backup-runner"));
    let denied_a = until("the revocation on A", || !allowed(&leader.base, &pep, "backup-runner"));
    assert!(
        on_c.max(on_a).max(denied_b).max(denied_a) < Duration::from_secs(2),
        "{on_c:?} {on_a:?} {denied_b:?} {denied_a:?}"
    );

    // Webhooks: every replica runs delivery, each subscription claimed by one at a time, so
    // each event reaches the receiver once (no failures here, so no retries either).
    let receiver = crate::rest::Receiver::start(0);
    let (status, hook) =
        call(&c.base, &token("admin"), "POST", "/api/v1/webhooks", Some(&json!({"url": receiver.url})));
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let first_seq = hook["delivered_seq"].as_u64().unwrap() + 1;
    for subject in ["ledger-sync", "backup-runner", "ledger-sync"] {
        let (status, _) =
            call(&b.base, &requester, "POST", "/api/v1/exceptions", Some(&request(subject, in_hours(24))));
        assert_eq!(status, 201);
    }
    let head = || {
        let (_, verified) = call(&b.base, &auditor, "GET", "/api/v1/audit/verify", None);
        verified["events"].as_u64().unwrap()
    };
    let last = head();
    until("every event delivered", || {
        let delivered: Vec<u64> =
            receiver.verified(&secret).iter().map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
        (first_seq..=last).all(|seq| delivered.contains(&seq))
    });
    std::thread::sleep(Duration::from_secs(1)); // time for a duplicate to show, were there one
    let delivered: Vec<u64> = receiver.verified(&secret).iter().map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(unique, delivered, "each event delivered once, in order, by one replica");

    // The leader dies; an exception expires; another replica records it.
    let (status, soon) =
        call(&b.base, &requester, "POST", "/api/v1/exceptions", Some(&request("ledger-sync", in_seconds(6))));
    assert_eq!(status, 201, "{soon}");
    let soon_id = soon["id"].as_str().unwrap().to_owned();
    call(&b.base, &approver, "POST", &format!("/api/v1/exceptions/{soon_id}/approve"), Some(&json!({})));
    drop(leader);
    until("another replica to record the expiry", || {
        let (_, events) = call(&c.base, &auditor, "GET", &format!("/api/v1/exceptions/{soon_id}/events"), None);
        events["items"].as_array().is_some_and(|items| items.iter().any(|e| e["type"] == "exception.expired"))
    });
    let (_, verified) = call(&b.base, &auditor, "GET", "/api/v1/audit/verify", None);
    assert_eq!(verified["ok"], true, "one linear chain across replicas: {verified}");
    drop((b, c));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(waiver_store_postgres::drop_scratch_database(&url)).unwrap();
}

#[expect(clippy::disallowed_methods, reason = "the servers read the real clock")]
fn in_seconds(s: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(s)).to_string()
}

/// `kill -9` the server while a client drives writes: every write the client saw
/// acknowledged is there after a restart, and the chain verifies.
fn crash_test(database_url: Option<&str>) {
    let w = Waiver::new();
    let data = w.data_dir();
    let mut demo = vec!["demo", "--no-serve"];
    let db_args: Vec<&str> = database_url.map(|u| vec!["--database-url", u]).unwrap_or_default();
    demo.splice(0..0, db_args.iter().copied());
    w.run("admin", &demo).ok();
    let tokens: Value = serde_json::from_str(&std::fs::read_to_string(data.join("demo-tokens.json")).unwrap()).unwrap();
    let (requester, auditor) = (
        tokens["requester"]["token"].as_str().unwrap().to_owned(),
        tokens["auditor"]["token"].as_str().unwrap().to_owned(),
    );
    let server = Server::start_in(tempfile::tempdir().unwrap(), &data, &db_args);
    let base = server.base.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (base, token, stop) = (base.clone(), requester.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut acknowledged = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = agent
                    .post(&format!("{base}/api/v1/exceptions"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .header("Content-Type", "application/json")
                    .send(request("backup-runner", in_hours(24)).to_string());
                let Ok(mut response) = sent else { break };
                if response.status().as_u16() == 201 {
                    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                    acknowledged.push(body["id"].as_str().unwrap().to_owned());
                }
            }
            acknowledged
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    drop(server); // SIGKILL, mid-stream
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acknowledged: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(acknowledged.len() > 10, "the clients got writes through: {}", acknowledged.len());

    let server = Server::start_in(tempfile::tempdir().unwrap(), &data, &db_args);
    for id in &acknowledged {
        let (status, e) = call(&server.base, &auditor, "GET", &format!("/api/v1/exceptions/{id}"), None);
        assert_eq!(status, 200, "acknowledged {id} survived the crash: {e}");
    }
    let (_, verified) = call(&server.base, &auditor, "GET", "/api/v1/audit/verify", None);
    assert_eq!(verified["ok"], true, "the chain verifies after the crash: {verified}");
}

#[test]
fn acknowledged_writes_survive_kill_9_on_sqlite() {
    crash_test(None);
}

#[test]
fn acknowledged_writes_survive_kill_9_on_postgres() {
    let url = pg_url();
    crash_test(Some(&url));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(waiver_store_postgres::drop_scratch_database(&url)).unwrap();
}

/// A TCP forwarder to PostgreSQL that the test can cut (refusing and dropping connections)
/// and restore: a database outage without touching the shared server.
struct Cuttable {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Cuttable {
    fn to(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up_c, gen_c) = (up.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up_c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let born = gen_c.load(Ordering::SeqCst);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let (up, generation) = (up_c.clone(), gen_c.clone());
                    from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        loop {
                            if !up.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Self { port, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_database_outage_keeps_decisions_fails_writes_clearly_and_recovers_without_restart() {
    let url = pg_url();
    let w = Waiver::new();
    let data = w.data_dir();
    w.run("admin", &["--database-url", &url, "demo", "--no-serve"]).ok();
    let tokens: Value = serde_json::from_str(&std::fs::read_to_string(data.join("demo-tokens.json")).unwrap()).unwrap();
    let token = |p: &str| tokens[p]["token"].as_str().unwrap().to_owned();
    let (requester, approver, pep) = (token("requester"), token("approver"), token("pep"));
    // Both replicas reach the database through the cuttable link; the CLI goes direct.
    let (host_port, db) = url.trim_start_matches("postgres://").split_once('/').unwrap();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    let user = url.trim_start_matches("postgres://").split_once('@').map(|(u, _)| u).unwrap_or("postgres");
    let link = Cuttable::to(host_port.to_owned());
    let via_link = format!("postgres://{user}@127.0.0.1:{}/{db}", link.port);
    let a = Server::start_in(tempfile::tempdir().unwrap(), &data, &["--database-url", &via_link]);
    let b = Server::start_in(tempfile::tempdir().unwrap(), &data, &["--database-url", &via_link]);
    assert!(allowed(&a.base, &pep, "billing-etl"), "the demo grants billing-etl");

    link.cut();
    assert!(allowed(&a.base, &pep, "billing-etl"), "decisions go on from the snapshot");
    let (status, problem) =
        call(&a.base, &requester, "POST", "/api/v1/exceptions", Some(&request("backup-runner", in_hours(24))));
    assert_eq!(status, 503, "a write fails clearly: {problem}");
    let (status, ready) = call(&a.base, "", "GET", "/readyz", None);
    assert_eq!(status, 503, "{ready}");
    assert!(ready["detail"].as_str().unwrap().contains("store"), "{ready}");

    // While the replicas are cut off, the CLI (direct) changes the register.
    let path = w.dir.path().join("r.json");
    std::fs::write(&path, request("backup-runner", in_hours(24)).to_string()).unwrap();
    let filed = w
        .run(
            "dana",
            &["--database-url", &url, "--output", "json", "exception", "request", "--file", path.to_str().unwrap()],
        )
        .ok()
        .json();
    let id = filed["id"].as_str().unwrap().to_owned();
    w.run("lee", &["--database-url", &url, "exception", "approve", &id]).ok();

    link.restore();
    until("readiness after the outage", || call(&a.base, "", "GET", "/readyz", None).0 == 200);
    until("replica A to catch up", || allowed(&a.base, &pep, "backup-runner"));
    until("replica B to catch up", || allowed(&b.base, &pep, "backup-runner"));
    let (status, _) = call(&b.base, &approver, "GET", &format!("/api/v1/exceptions/{id}"), None);
    assert_eq!(status, 200, "writes and reads work again without a restart");
    drop((a, b));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(waiver_store_postgres::drop_scratch_database(&url)).unwrap();
}
