//! Hostile input and faults against a real `waiver serve` (issue 15): what an attacker or a
//! bad day in production sends must never crash the process, lose audit, half-store a write
//! or fail silently.

use serde_json::{Value, json};

use crate::{
    rest::{Demo, db_request},
    support::Waiver,
};

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// The shapes that overflowed the stack, as conditions `depth` deep.
fn deep_conditions(depth: usize) -> Vec<String> {
    vec![
        nested("(", "true", ")", depth),
        format!("{} == []", nested("[", "1", "]", depth)),
        format!("{} == {{}}", nested("{a: ", "1", "}", depth)),
        format!("{}true{}", "if true then ".repeat(depth), " else false".repeat(depth)),
    ]
}

fn alive(demo: &Demo) {
    let (status, _) = demo.server.get("/healthz");
    assert_eq!(status, 200, "the server is still up");
    let answer = demo.decide("ServiceAccount:billing-etl", "connect", "Database:orders-prod");
    assert_eq!(answer["decision"], true, "and still decides: {answer}");
}

#[test]
fn deeply_nested_cedar_through_every_entry_point_is_refused_and_the_server_lives() {
    // No scheduler: its records would change the event count this test watches.
    let demo = Demo::start_with(&["--no-scheduler"]);
    let before = demo.n_events();
    for depth in [150, 1_000, 10_000] {
        for condition in deep_conditions(depth) {
            let policies = format!("@id(\"p\") permit(principal, action, resource) when {{ {condition} }};");
            let baseline = json!({ "policies": policies }).to_string();
            // The weakest token: refused on its role, before the body is read.
            let (status, problem) = demo.call("PUT", "/api/v1/baseline?dry_run=true", "pep", Some(&baseline));
            assert_eq!(status, 403, "{problem}");
            let (status, problem) = demo.call("PUT", "/api/v1/baseline", "auditor", Some(&baseline));
            assert_eq!(status, 403, "{problem}");
            // An admin's is parsed, and refused before Cedar sees it.
            let (status, problem) = demo.call("PUT", "/api/v1/baseline?dry_run=true", "admin", Some(&baseline));
            assert_eq!(status, 400, "{problem}");
            assert!(problem["detail"].as_str().unwrap().contains("levels deep"), "{problem}");

            let mut request = db_request("backup-runner", 48);
            request["condition"] = json!(condition);
            let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
            assert_eq!(status, 400, "{problem}");
            let fields: Vec<&Value> = problem["errors"].as_array().unwrap().iter().map(|e| &e["field"]).collect();
            assert_eq!(fields, [&json!("condition")], "{problem}");

            let csv = format!(
                "subject,waives,actions,resources,justification,normal_path_unavailable,risk,owner,expires_at,condition\n\
                 ServiceAccount:billing-etl,forbid-prod-db-direct-access,connect,Database:orders-prod,j,n,high,sam,{},\"{}\"\n",
                crate::support::in_days(3),
                condition.replace('"', "\"\"")
            );
            let auth = format!("Bearer {}", demo.token("requester"));
            let (status, _, problem) =
                demo.server.send("/api/v1/import", &[("Authorization", &auth), ("Content-Type", "text/csv")], csv);
            assert_eq!(status, 422, "{problem}");
        }
        // A schema nested through `Set<…>`.
        let schema = format!("entity User {{ tags: {} }};", nested("Set<", "Long", ">", depth));
        let baseline = json!({ "policies": "@id(\"p\") permit(principal, action, resource);", "schema": schema });
        let (status, problem) = demo.call("PUT", "/api/v1/baseline?dry_run=true", "admin", Some(&baseline.to_string()));
        assert_eq!(status, 400, "{problem}");
        // AuthZEN bodies nested past serde_json's limit: a 400, not a crash.
        let body = format!(
            r#"{{"subject": {{"type": "ServiceAccount", "id": "a"}}, "action": {{"name": "connect"}},
                "resource": {{"type": "Database", "id": "b"}}, "context": {{"x": {}}}}}"#,
            nested("[", "1", "]", depth)
        );
        let auth = format!("Bearer {}", demo.token("pep"));
        let (status, _, problem) = demo.server.send("/access/v1/evaluation", &[("Authorization", &auth)], body);
        assert_eq!(status, 400, "{problem}");
    }
    // A context nested within serde_json's limit but past Cedar's: refused by name.
    let body = json!({"subject": {"type": "ServiceAccount", "id": "a"}, "action": {"name": "connect"},
        "resource": {"type": "Database", "id": "b"}, "context": {"x": serde_json::from_str::<Value>(&nested("[", "1", "]", 100)).unwrap()}});
    let auth = format!("Bearer {}", demo.token("pep"));
    let (status, _, problem) = demo.server.send("/access/v1/evaluation", &[("Authorization", &auth)], body.to_string());
    assert_eq!(status, 400, "{problem}");
    alive(&demo);
    assert_eq!(before, demo.n_events(), "nothing was stored");
}

#[test]
fn baseline_set_on_the_cli_refuses_deep_policies_and_schemas() {
    let w = Waiver::ready();
    let dir = tempfile::tempdir().unwrap();
    for depth in [150, 1_000, 10_000] {
        std::fs::write(
            dir.path().join("policies.cedar"),
            format!("@id(\"p\") permit(principal, action, resource) when {{ {} }};", nested("(", "true", ")", depth)),
        )
        .unwrap();
        let run = w.run("admin", &["baseline", "set", dir.path().to_str().unwrap()]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains("levels deep"), "{}", run.stderr);
    }
}

/// A small tmpfs mounted for one test (CI runs as root, as the README says; no skipping).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root (the full-disk test runs as CI does)");
        Self { dir }
    }

    /// Fills what is left of it; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while file.write_all(&small).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_with_503_and_they_recover_when_space_returns() {
    let disk = Tmpfs::mount("24m");
    let w = Waiver { dir: tempfile::tempdir_in(disk.dir.path()).unwrap() };
    let demo = Demo::start_on(w, &["--no-scheduler"]);
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let events = demo.n_events();

    let filler = disk.fill();
    let mut refused = 0;
    for _ in 0..3 {
        let (status, problem) =
            demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["code"], "store_unavailable", "{problem}");
        refused += 1;
    }
    let withdraw = format!("/api/v1/exceptions/{id}/withdraw");
    let (status, problem) = demo.call("POST", &withdraw, "requester", Some("{}"));
    assert_eq!(status, 503, "a withdrawal too: {problem}");
    let (status, ready) = demo.server.get("/readyz");
    assert_eq!(status, 503, "{ready}");
    assert!(ready["detail"].as_str().unwrap().contains("writes are failing"), "{ready}");
    let (status, _) = demo.server.get("/healthz");
    assert_eq!(status, 200, "alive");
    assert_eq!(demo.decide("ServiceAccount:billing-etl", "connect", "Database:orders-prod")["decision"], true);

    // Space returns: writes work again without a restart, and readiness comes back.
    std::fs::remove_file(filler).unwrap();
    let (status, ready) = demo.server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    let (status, withdrawn) = demo.call("POST", &withdraw, "requester", Some("{}"));
    assert_eq!(status, 200, "{withdrawn}");
    assert_eq!(withdrawn["state"], "withdrawn");
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    assert_eq!(demo.n_events(), events + 2, "{refused} refused writes stored nothing; two landed");
}

#[test]
fn store_errors_carry_retry_after() {
    let disk = Tmpfs::mount("24m");
    let w = Waiver { dir: tempfile::tempdir_in(disk.dir.path()).unwrap() };
    let demo = Demo::start_on(w, &["--no-scheduler"]);
    let filler = disk.fill();
    let auth = format!("Bearer {}", demo.token("requester"));
    let (status, headers, problem) = demo.server.send(
        "/api/v1/exceptions",
        &[("Authorization", &auth)],
        db_request("backup-runner", 48).to_string(),
    );
    assert_eq!(status, 503, "{problem}");
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    std::fs::remove_file(filler).unwrap();
}

#[test]
fn owner_powers_need_a_person_and_an_issued_token_does_not_dodge_separation_of_duties() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let file = |owner: &str| {
        let mut request = db_request("backup-runner", 48);
        request["owner"] = json!(owner);
        let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
        assert_eq!(status, 201, "{filed}");
        let id = filed["id"].as_str().unwrap().to_owned();
        (id.clone(), move |action: &str| format!("/api/v1/exceptions/{id}/{action}"))
    };
    // The auditor named as owner neither withdraws nor revokes.
    let (_, at) = file("avery");
    for action in ["withdraw", "revoke"] {
        let (status, problem) = demo.call("POST", &at(action), "auditor", Some("{}"));
        assert_eq!(status, 403, "{action}: {problem}");
    }
    // The pep principal is no person: it is never named owner (the lifecycle's own test
    // shows its token could not act as one either), nor is a name waiver does not know.
    for owner in ["gateway", "zz-nobody-999"] {
        let mut request = db_request("backup-runner", 48);
        request["owner"] = json!(owner);
        let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["errors"][0]["field"], "owner", "{problem}");
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains("not a person waiver knows"), "{problem}");
    }

    // An admin (alex) issues `Alex` and `bob` approver tokens and files a request of their own.
    let mut mine = db_request("backup-runner", 48);
    mine["owner"] = json!("sam");
    // Not routed (the demo routes direct database access to its DBAs), so separation of
    // duties is what refuses.
    mine["waives"] = json!(["default-deny"]);
    mine["scope"] = json!({"actions": ["read"], "resources": [{"type": "Dataset", "id": "invoices"}]});
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "admin", Some(&mine.to_string()));
    assert_eq!(status, 201, "{filed}");
    let approve = format!("/api/v1/exceptions/{}/approve", filed["id"].as_str().unwrap());
    for principal in ["Alex", "bob"] {
        let body = json!({"principal": principal, "roles": ["approver"], "label": "mine"}).to_string();
        let (status, issued) = demo.call("POST", "/api/v1/tokens", "admin", Some(&body));
        assert_eq!(status, 201, "{issued}");
        let secret = issued["token"].as_str().unwrap();
        let (status, _, problem) =
            demo.server.send(&approve, &[("Authorization", &format!("Bearer {secret}"))], "{}".into());
        assert_eq!(status, 403, "{principal}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("separation of duties"), "{problem}");
    }
    let (status, approved) = demo.call("POST", &approve, "approver", Some("{}"));
    assert_eq!(status, 200, "someone else still can: {approved}");
}

/// Activates a break-glass for `backup-runner` as riley; returns its id.
fn break_glass(demo: &Demo) -> String {
    let (status, activated) =
        demo.call("POST", "/api/v1/break-glass", "responder", Some(&db_request("backup-runner", 4).to_string()));
    assert_eq!(status, 201, "{activated}");
    activated["id"].as_str().unwrap().to_owned()
}

const USE: &str = r#"{"subject": {"type": "ServiceAccount", "id": "backup-runner"}, "action": {"name": "connect"},
    "resource": {"type": "Database", "id": "orders-prod"}}"#;

/// The uses of `id` the audit log holds (events carry a count).
fn recorded_uses(demo: &Demo, id: &str) -> u64 {
    let (status, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    assert_eq!(status, 200, "{events}");
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "break_glass.used")
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum()
}

fn wait_for_uses(demo: &Demo, id: &str, expected: u64) {
    let started = std::time::Instant::now();
    loop {
        let n = recorded_uses(demo, id);
        if n == expected {
            return;
        }
        assert!(n < expected, "{n} uses recorded, {expected} granted");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{n} of {expected} uses recorded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn every_break_glass_use_survives_sigterm_and_sigkill_right_after_it_is_granted() {
    let mut demo = Demo::start_with(&["--no-scheduler"]);
    let id = break_glass(&demo);
    let pep = format!("Bearer {}", demo.token("pep"));
    let mut granted = 0;
    for (round, signal) in ["TERM", "KILL"].into_iter().enumerate() {
        for _ in 0..50 {
            let (status, _, answer) = demo.server.send("/access/v1/evaluation", &[("Authorization", &pep)], USE.into());
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["context"]["exception"]["id"], json!(id), "{answer}");
            granted += 1;
        }
        // At once: the uses were acknowledged, but not necessarily recorded in the log yet.
        demo.server.stop(signal);
        demo.restart_with(&["--no-scheduler"]);
        wait_for_uses(&demo, &id, granted);
        assert_eq!(granted, 50 * (round as u64 + 1));
    }
}

#[test]
fn a_flood_of_break_glass_uses_in_batches_is_counted_exactly() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let id = break_glass(&demo);
    let pep = format!("Bearer {}", demo.token("pep"));
    let item: Value = serde_json::from_str(USE).unwrap();
    let batch = json!({ "evaluations": vec![item; 200] }).to_string();
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let (status, _, answer) =
                        demo.server.send("/access/v1/evaluations", &[("Authorization", &pep)], batch.clone());
                    assert_eq!(status, 200, "{answer}");
                    let n = answer["evaluations"].as_array().unwrap().iter().filter(|e| e["decision"] == true).count();
                    granted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let granted = granted.into_inner();
    assert!(granted > 0, "some were granted");
    wait_for_uses(&demo, &id, granted);
    let (_, metrics) = demo.server.get("/metrics");
    let refused: u64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("waiver_break_glass_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(granted + refused, 20_000, "every use was either granted and recorded, or refused and counted");
}

#[test]
fn break_glass_is_refused_when_its_use_cannot_be_recorded() {
    let disk = Tmpfs::mount("24m");
    let w = Waiver { dir: tempfile::tempdir_in(disk.dir.path()).unwrap() };
    let demo = Demo::start_on(w, &["--no-scheduler"]);
    let id = break_glass(&demo);
    let pep = format!("Bearer {}", demo.token("pep"));
    let filler = disk.fill();
    let (status, _, answer) = demo.server.send("/access/v1/evaluation", &[("Authorization", &pep)], USE.into());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], false, "no trail, no emergency access: {answer}");
    let (_, metrics) = demo.server.get("/metrics");
    assert!(metrics.as_str().unwrap().contains("waiver_break_glass_refused_total 1"), "{metrics}");
    // Planned exceptions are not affected: billing-etl's still grants.
    assert_eq!(demo.decide("ServiceAccount:billing-etl", "connect", "Database:orders-prod")["decision"], true);
    std::fs::remove_file(filler).unwrap();
    let (_, _, answer) = demo.server.send("/access/v1/evaluation", &[("Authorization", &pep)], USE.into());
    assert_eq!(answer["context"]["exception"]["id"], json!(id), "granted again once it can be recorded: {answer}");
    wait_for_uses(&demo, &id, 1);
}

#[test]
fn a_search_is_an_evaluation_not_a_use() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let id = break_glass(&demo);
    let pep = format!("Bearer {}", demo.token("pep"));
    let search = r#"{"subject": {"type": "ServiceAccount", "id": "backup-runner"}, "action": {"name": "connect"},
        "resource": {"type": "Database"}}"#;
    for _ in 0..5 {
        let (status, _, found) =
            demo.server.send("/access/v1/search/resource", &[("Authorization", &pep)], search.into());
        assert_eq!(status, 200, "{found}");
        let results = found["results"].as_array().unwrap();
        assert!(results.contains(&json!({"type": "Database", "id": "orders-prod"})), "{found}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    assert_eq!(recorded_uses(&demo, &id), 0, "no break-glass use was recorded for a search");
    let (_, shown) = demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None);
    assert_eq!(shown["usage"]["count"], 0, "{shown}");
}

#[test]
fn slow_and_idle_connections_are_closed_and_connections_are_capped() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let demo = Demo::start_with(&["--no-scheduler", "--header-timeout", "1", "--max-connections", "16"]);
    let addr = demo.server.base.strip_prefix("http://").unwrap().to_owned();
    let closed_within = |mut stream: TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        assert!(started.elapsed() < limit, "still open after {:?}", started.elapsed());
        buf
    };
    // Half a request line: closed once the header timeout passes.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HT").unwrap();
    closed_within(slow, Duration::from_secs(5));
    // A kept-alive connection that goes quiet after one request: closed too.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let answered = closed_within(idle, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"), "answered first");

    // The cap: 16 held open, the 17th is refused with a clear answer and closed.
    let held: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let refused = String::from_utf8_lossy(&closed_within(extra, Duration::from_secs(5))).into_owned();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many open connections"), "{refused}");
    // Idle ones time out, and the server is reachable again without anyone closing them.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(demo.server.get("/healthz").0, 200);
    drop(held);
}

#[test]
fn webhooks_refuse_internal_targets_and_keep_urls_and_errors_to_admins() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    for url in [
        "http://127.0.0.1:5432/",
        "http://localhost:5432/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://10.0.0.7/hook",
        "http://user:pw@192.168.1.1/hook",
    ] {
        let (status, problem) = demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": url}).to_string()));
        assert_eq!(status, 400, "{url}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("internal address"), "{problem}");
    }
    // A public receiver with credentials and a secret path: created; the log and the
    // auditor see neither.
    let url = "https://svc:s3cret@hooks.example.com:8443/T0K3N/path?sig=abc";
    let (status, created) = demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": url}).to_string()));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["url"], url, "the admin who made it sees it whole");
    let (_, listed) = demo.call("GET", "/api/v1/webhooks", "auditor", None);
    assert_eq!(listed["items"][0]["url"], "https://hooks.example.com:8443/…", "{listed}");
    assert!(listed["items"][0]["last_error"].is_null());
    let (_, events) = demo.call("GET", "/api/v1/audit/events?cursor=0&limit=1000", "auditor", None);
    let text = events.to_string();
    assert!(text.contains("webhook.created") && !text.contains("s3cret") && !text.contains("T0K3N"), "{text}");
}

#[test]
fn an_allow_listed_internal_receiver_is_accepted() {
    let demo = Demo::start_with_loopback_webhooks(&["--no-scheduler"]);
    let (status, created) =
        demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": "http://127.0.0.1:9/x"}).to_string()));
    assert_eq!(status, 201, "{created}");
    let (status, problem) =
        demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": "http://10.0.0.7/x"}).to_string()));
    assert_eq!(status, 400, "only what the list names: {problem}");
}

#[test]
fn sigterm_during_a_webhook_delivery_records_it_so_nothing_is_sent_twice() {
    use std::time::{Duration, Instant};
    let mut demo = Demo::start_with_loopback_webhooks(&[]);
    let receiver = crate::rest::Receiver::start_with(0, Duration::from_millis(600));
    let (status, created) =
        demo.call("POST", "/api/v1/webhooks", "admin", Some(&json!({"url": receiver.url}).to_string()));
    assert_eq!(status, 201, "{created}");
    for _ in 0..6 {
        let (status, filed) =
            demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
        assert_eq!(status, 201, "{filed}");
    }
    let head = demo.n_events();
    let ids = || -> Vec<String> {
        let got = receiver.got.lock().unwrap();
        got.iter().map(|(h, _, _)| h.iter().find(|(n, _)| n == "webhook-id").unwrap().1.clone()).collect()
    };
    for _ in 0..3 {
        // Wait for a delivery to be in flight, then stop the server in the middle of it.
        let seen = ids().len();
        let started = Instant::now();
        while ids().len() == seen {
            assert!(started.elapsed() < Duration::from_secs(20), "no delivery started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = demo.server.stop("TERM");
        assert!(status.success(), "a clean exit: {status:?}");
        demo.restart();
    }
    let started = Instant::now();
    let wanted: Vec<String> = (created["delivered_seq"].as_u64().unwrap() + 1..=head)
        .map(|seq| format!("msg_{}_{seq}", created["id"].as_str().unwrap()))
        .collect();
    while !wanted.iter().all(|id| ids().contains(id)) {
        assert!(started.elapsed() < Duration::from_secs(30), "not all delivered: {:?}", ids());
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = ids();
    for id in &wanted {
        assert_eq!(all.iter().filter(|i| *i == id).count(), 1, "{id} delivered once: {all:?}");
    }
}

/// `n` distinct rows for backup-runner, as the import endpoint reads them.
fn import_csv(n: usize) -> String {
    let mut csv = String::from(
        "subject,waives,actions,resources,justification,normal_path_unavailable,risk,owner,expires_at,compensating_controls,remediation\n",
    );
    let expires = crate::support::in_days(3);
    for i in 0..n {
        csv.push_str(&format!(
            "ServiceAccount:backup-runner,forbid-prod-db-direct-access,connect,Database:orders-prod,restore drill {i},\
             replica down,high,sam,{expires},extra_logging:every query logged;read_only:read-only role,restore the replica\n"
        ));
    }
    csv
}

fn raise_open_request_cap(w: &Waiver) {
    w.edit_rules(|rules| rules.replace("max_open_requests_per_subject = 20", "max_open_requests_per_subject = 100000"));
}

#[test]
fn an_import_cut_short_is_filed_whole_or_not_at_all_and_a_retry_files_nothing_twice() {
    use std::time::{Duration, Instant};
    let demo = Demo::start_prepared(Waiver::new(), &["--no-scheduler"], raise_open_request_cap);
    let rows = 4_000;
    let csv = import_csv(rows);
    let auth = format!("Bearer {}", demo.token("requester"));
    let before = demo.n_events();
    // The client gives up almost at once.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(300)))
        .http_status_as_error(false)
        .build()
        .into();
    let cut = agent
        .post(&format!("{}/api/v1/import", demo.server.base))
        .header("Authorization", &auth)
        .header("Content-Type", "text/csv")
        .send(csv.as_bytes());
    assert!(cut.is_err(), "the client timed out");
    // Whatever the server made of it settles: nothing, or every row.
    let mut last = demo.n_events();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(250));
        let now = demo.n_events();
        if now != last {
            (last, stable_since) = (now, Instant::now());
        }
    }
    let filed_first = last - before;
    assert!(filed_first == 0 || filed_first == rows as u64, "half stored: {filed_first} of {rows}");

    // The retry: it completes, and files only what the first did not.
    let (status, _, report) =
        demo.server.send("/api/v1/import", &[("Authorization", &auth), ("Content-Type", "text/csv")], csv.clone());
    assert_eq!(status, 200, "{}", report.to_string().chars().take(500).collect::<String>());
    assert_eq!(report["filed"].as_u64().unwrap() + report["already_filed"].as_u64().unwrap(), rows as u64);
    assert_eq!(demo.n_events() - before, rows as u64, "every row filed exactly once");
    // And once more: all already filed, nothing new.
    let (status, _, report) =
        demo.server.send("/api/v1/import", &[("Authorization", &auth), ("Content-Type", "text/csv")], csv);
    assert_eq!((status, report["filed"].as_u64(), report["already_filed"].as_u64()), (200, Some(0), Some(rows as u64)));
    assert_eq!(demo.n_events() - before, rows as u64);
}

#[test]
fn open_requests_per_subject_are_capped() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let mut filed = 0;
    let mut refused = None;
    for i in 0..25 {
        let mut request = db_request("backup-runner", 48);
        request["justification"] = json!(format!("request {i}"));
        let (status, answer) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
        match status {
            201 => filed += 1,
            _ => {
                refused = Some((status, answer));
                break;
            }
        }
    }
    let (status, problem) = refused.expect("the cap refuses");
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["rule"], "max_open_requests_per_subject", "{problem}");
    assert!(filed <= 20, "{filed}");
    // An import of more for the same subject is refused by row, naming the rule.
    let auth = format!("Bearer {}", demo.token("requester"));
    let (status, _, problem) =
        demo.server.send("/api/v1/import", &[("Authorization", &auth), ("Content-Type", "text/csv")], import_csv(3));
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("max_open_requests_per_subject"), "{problem}");
}

#[test]
fn reports_refuse_a_broken_chain_with_409() {
    let tampered = |w: &Waiver| {
        w.tamper(&["DROP TRIGGER events_no_update", "UPDATE events SET body = body || ' ' WHERE seq = 40"]);
    };
    let demo = Demo::start_prepared(Waiver::new(), &["--no-scheduler"], tampered);
    let (status, problem) = demo.call("GET", "/api/v1/reports/sprawl", "auditor", None);
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("does not verify"), "{problem}");
    let (status, problem) = demo.call("GET", "/api/v1/export?format=json", "auditor", None);
    assert_eq!(status, 409, "{problem}");
    // An intact chain reports, and keeps reporting as it grows (checked incrementally).
    let demo = Demo::start_with(&["--no-scheduler"]);
    assert_eq!(demo.call("GET", "/api/v1/reports/sprawl", "auditor", None).0, 200);
    let (status, _) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201);
    assert_eq!(demo.call("GET", "/api/v1/reports/hygiene", "auditor", None).0, 200);
}

#[test]
fn the_smaller_ones_comments_host_header_file_modes_crlf_allow_and_bearer_case() {
    use std::io::{Read, Write};
    let demo = Demo::start_with(&["--no-scheduler"]);
    // A `//` comment in a condition would hide what follows it from approvers.
    let mut request = db_request("backup-runner", 48);
    request["condition"] = json!("true // && context.source_ip.isInRange(ip(\"10.20.0.0/16\"))");
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert!(problem.to_string().contains("comment"), "{problem}");

    // The discovery document names this server, whatever `Host` a client sends.
    let addr = demo.server.base.strip_prefix("http://").unwrap().to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /.well-known/authzen-configuration HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(!answer.contains("evil.example"), "{answer}");
    assert!(answer.contains(&format!("http://{addr}/access/v1/evaluation")), "{answer}");

    // Files that hold the register and tokens are the owner's alone.
    #[cfg(unix)]
    for name in ["waiver.db", "demo-tokens.json", "break-glass.spool"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(demo.data_dir().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is {mode:o}");
    }

    // A `next` with CR LF after sign-in: a redirect into the UI, never a 500.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let page =
        agent.get(&format!("{}/ui/login?next=%2Fui%2F%0D%0ASet-Cookie:%20x=y", demo.server.base)).call().unwrap();
    assert!(page.status().as_u16() < 500, "{}", page.status());

    // 405 says what is allowed.
    for (method, path, allowed) in
        [("DELETE", "/api/v1/exceptions", "GET,HEAD,POST"), ("GET", "/access/v1/evaluation", "POST")]
    {
        let response = agent
            .run(
                ureq::http::Request::builder()
                    .method(method)
                    .uri(format!("{}{path}", demo.server.base))
                    .body(())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(response.headers().get("allow").unwrap(), allowed, "{method} {path}");
    }

    // The `bearer` scheme in any case (RFC 6750 / RFC 9110).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", demo.token("pep"));
        let body = r#"{"subject": {"type": "ServiceAccount", "id": "billing-etl"}, "action": {"name": "connect"},
            "resource": {"type": "Database", "id": "orders-prod"}}"#;
        let (status, _, answer) = demo.server.send("/access/v1/evaluation", &[("Authorization", &auth)], body.into());
        assert_eq!(status, 200, "{scheme}: {answer}");
        let auth = format!("{scheme} {}", demo.token("auditor"));
        let verified =
            agent.get(&format!("{}/api/v1/audit/verify", demo.server.base)).header("Authorization", &auth).call();
        assert_eq!(verified.unwrap().status().as_u16(), 200, "{scheme} on the REST API");
    }
}

/// A browser's sign-in, without the browser: the login form's CSRF cookie, then the session.
fn ui_session(demo: &Demo, persona: &str) -> (ureq::Agent, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let cookie_of = |response: &ureq::http::Response<ureq::Body>, name: &str| {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap().to_owned()))
            .unwrap()
    };
    let page = agent.get(&format!("{}/ui/login", demo.server.base)).call().unwrap();
    let csrf = cookie_of(&page, "waiver_login");
    let form =
        serde_urlencoded::to_string([("csrf", csrf.as_str()), ("token", &demo.token(persona)), ("next", "/ui/")])
            .unwrap();
    let signed_in = agent
        .post(&format!("{}/ui/login", demo.server.base))
        .header("Cookie", &format!("waiver_login={csrf}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form)
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let session = cookie_of(&signed_in, "waiver_session");
    (agent, format!("waiver_session={session}"))
}

#[test]
fn deep_conditions_through_the_ui_request_form_are_refused_beside_the_field() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let before = demo.n_events();
    let (agent, cookie) = ui_session(&demo, "requester");
    let mut page = agent.get(&format!("{}/ui/request", demo.server.base)).header("Cookie", &cookie).call().unwrap();
    let html = page.body_mut().read_to_string().unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    for depth in [150, 1_000, 10_000] {
        for condition in deep_conditions(depth) {
            let form = serde_urlencoded::to_string([
                ("csrf", csrf.as_str()),
                ("subject", "ServiceAccount:backup-runner"),
                ("waives", "forbid-prod-db-direct-access"),
                ("actions", "connect"),
                ("resources", "Database:orders-prod"),
                ("condition", condition.as_str()),
                ("control_extra_logging", "on"),
                ("control_extra_logging_description", "logged"),
                ("justification", "restore"),
                ("normal_path_unavailable", "replica down"),
                ("risk", "high"),
                ("owner", "sam"),
                ("expires_at", "2099-01-01T00:00"),
                ("remediation_plan", "fix"),
            ])
            .unwrap();
            let mut answer = agent
                .post(&format!("{}/ui/request", demo.server.base))
                .header("Cookie", &cookie)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(form)
                .unwrap();
            let status = answer.status().as_u16();
            let html = answer.body_mut().read_to_string().unwrap_or_default();
            assert!((400..500).contains(&status), "depth {depth}: {status}");
            // Refused on its depth, or (at 10,000) on its length first; said beside the field.
            let said = html.contains("levels deep") || html.contains("bytes long");
            assert!(said && html.contains("id=\"condition-error\""), "depth {depth}: the condition's error is shown");
        }
    }
    alive(&demo);
    assert_eq!(before, demo.n_events(), "nothing was stored");
}

#[test]
fn a_permit_cannot_be_waived() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let mut request = db_request("backup-runner", 48);
    request["waives"] = json!(["permit-db-connect"]);
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "waives[0]", "{problem}");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("is a permit"), "{problem}");
}

#[test]
fn an_offboarded_identity_is_denied_whatever_the_baseline_says() {
    let mut demo = Demo::start_with(&["--no-scheduler"]);
    let (subject, resource) = ("ServiceAccount:backup-runner", "Database:reporting-replica");
    assert_eq!(demo.decide(subject, "connect", resource)["decision"], true, "the baseline allows it");
    let (status, done) = demo.call(
        "POST",
        &format!("/api/v1/identities/{subject}/offboard"),
        "admin",
        Some(r#"{"comment": "retired"}"#),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(demo.decide(subject, "connect", resource), json!({"decision": false}), "denied from the next decision");
    // With an explanation: a reason of its own, which no exception can waive.
    let auth = format!("Bearer {}", demo.token("auditor"));
    let body = json!({"subject": {"type": "ServiceAccount", "id": "backup-runner"}, "action": {"name": "connect"},
        "resource": {"type": "Database", "id": "reporting-replica"}});
    let (_, _, explained) = demo.server.send(
        "/access/v1/evaluation",
        &[("Authorization", &auth), ("Waiver-Explain", "true")],
        body.to_string(),
    );
    assert_eq!(explained["context"]["reasons"], json!([{"policy": "identity-offboarded"}]), "{explained}");
    // After a restart (the inventory is loaded with the snapshot), and on the CLI.
    demo.restart_with(&["--no-scheduler"]);
    assert_eq!(demo.decide(subject, "connect", resource)["decision"], false);
    let checked = demo.w.run("admin", &["check", "--subject", subject, "--action", "connect", "--resource", resource]);
    assert_eq!(checked.code, 1, "{checked:?}");
    assert!(checked.stdout.contains("identity-offboarded"), "{checked:?}");
}

#[test]
fn a_request_cannot_contradict_the_inventorys_credential_type() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (_, identity) = demo.call("GET", "/api/v1/identities/ServiceAccount:backup-runner", "auditor", None);
    let held = identity["credential_type"].as_str().unwrap().to_owned();
    let other = if held == "jit_credential" { "api_key" } else { "jit_credential" };
    let mut request = db_request("backup-runner", 48);
    request["credential_type"] = json!(other);
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert!(status == 400 || status == 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "credential_type", "{problem}");
    request["credential_type"] = json!(held);
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 201, "repeating the inventory is fine: {filed}");
}

#[test]
fn revalidation_is_on_by_default_for_every_exception() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let request = db_request("backup-runner", 48);
    assert!(request.get("revalidate_on").is_none(), "the request names no trigger");
    let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let (status, _) = demo.call("POST", &format!("/api/v1/exceptions/{id}/approve"), "approver", Some("{}"));
    assert_eq!(status, 200);
    let change = json!({"kind": "owner_change", "detail": "sam left the team"}).to_string();
    let (status, changed) =
        demo.call("POST", "/api/v1/identities/ServiceAccount:backup-runner/changes", "admin", Some(&change));
    assert_eq!(status, 200, "{changed}");
    let (_, shown) = demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None);
    assert_eq!(shown["state"], "suspended", "the rules' triggers apply to every exception: {shown}");
    assert_eq!(demo.decide("ServiceAccount:backup-runner", "connect", "Database:orders-prod")["decision"], false);
}

#[test]
fn the_owner_is_neither_the_requester_nor_a_workload() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    for (owner, why) in [("dana", "may not also own it"), ("ServiceAccount:backup-runner", "is a workload")] {
        let mut request = db_request("backup-runner", 48);
        request["owner"] = json!(owner);
        let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["errors"][0]["field"], "owner", "{problem}");
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains(why), "{problem}");
    }
}

#[test]
fn the_rule_being_waived_sets_floors_the_request_cannot_go_under() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (_, current) = demo.call("GET", "/api/v1/baseline", "admin", None);
    let mut source = current["source"].clone();
    // The demo's baseline already sets floors on KMS key deletion; these replace them.
    let policies = source["policies"]
        .as_str()
        .unwrap()
        .replace("@controls(\"monitoring\")", "@controls(\"extra_logging, read_only\")");
    assert!(policies.contains("@controls(\"extra_logging, read_only\")"), "{policies}");
    source["policies"] = json!(policies);
    let (status, changed) = demo.call("PUT", "/api/v1/baseline", "admin", Some(&source.to_string()));
    assert_eq!(status, 200, "{changed}");
    // Low risk, 30 days, no read-only control: each floor named.
    let mut request = db_request("backup-runner", 24 * 30);
    request["waives"] = json!(["forbid-kms-key-deletion"]);
    request["risk"] = json!("low");
    request["compensating_controls"] = json!([{"kind": "extra_logging", "description": "logged"}]);
    let (status, problem) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&request.to_string()));
    assert_eq!(status, 422, "{problem}");
    let rules: Vec<&str> = problem["errors"].as_array().unwrap().iter().filter_map(|e| e["rule"].as_str()).collect();
    for rule in ["@risk", "@max_duration", "@controls"] {
        assert!(rules.contains(&rule), "{rule} in {problem}");
    }
    // A bad annotation is refused when the baseline is set, naming the policy.
    let mut bad = source.clone();
    bad["policies"] = json!(policies.replace("@risk(\"critical\")", "@risk(\"severe\")"));
    let (status, problem) = demo.call("PUT", "/api/v1/baseline?dry_run=true", "admin", Some(&bad.to_string()));
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("forbid-kms-key-deletion"), "{problem}");
}

#[test]
fn approvals_are_routed_by_the_rule_being_waived() {
    // The demo's baseline routes direct database access to `@approvers("dba")`; here the DBA
    // group is morgan alone.
    let route = |w: &Waiver| {
        w.edit_rules(|rules| {
            assert!(rules.contains("\ndba = [\"lee\", \"morgan\"]"), "the demo's DBA group: {rules}");
            rules.replace("dba = [\"lee\", \"morgan\"]", "dba = [\"morgan\"]")
        })
    };
    let demo = Demo::start_prepared(Waiver::new(), &["--no-scheduler"], route);
    let (_, current) = demo.call("GET", "/api/v1/baseline", "admin", None);
    assert!(current["source"]["policies"].as_str().unwrap().contains("@approvers(\"dba\")"), "{current}");
    let (status, filed) =
        demo.call("POST", "/api/v1/exceptions", "requester", Some(&db_request("backup-runner", 48).to_string()));
    assert_eq!(status, 201, "{filed}");
    assert_eq!(filed["eligible_approvers"], json!(["morgan"]), "the request shows who may approve it");
    let approve = format!("/api/v1/exceptions/{}/approve", filed["id"].as_str().unwrap());
    let (status, problem) = demo.call("POST", &approve, "approver", Some("{}"));
    assert_eq!(status, 403, "lee is an approver, but not a DBA: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("`morgan`"), "{problem}");
    let body = json!({"principal": "morgan", "roles": ["approver"], "label": "dba"}).to_string();
    let (_, issued) = demo.call("POST", "/api/v1/tokens", "admin", Some(&body));
    let auth = format!("Bearer {}", issued["token"].as_str().unwrap());
    let (status, _, approved) = demo.server.send(&approve, &[("Authorization", &auth)], "{}".into());
    assert_eq!(status, 200, "the DBA approves: {approved}");
}
