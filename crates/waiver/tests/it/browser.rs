//! The web UI driven in a real browser: Debian's `chromium` through `chromedriver`
//! (WebDriver, via fantoccini), against `waiver serve` on the demo data. The README tour as
//! a person does it: sign in as each persona, request, be refused self-approval, approve as
//! the approver, see the decision flip in the exception's usage, revoke, break glass and
//! review it. Screenshots of the main pages land in `target/screenshots/` (and in
//! `docs/screenshots/` with `WAIVER_UPDATE_SCREENSHOTS=1`).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`); fails, never skips, without them. Nothing is downloaded.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::rest::Demo;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Self {
        for binary in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: the browser tests need Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver); .ci/run installs them"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        self.browser_with(&[]).await
    }

    /// A browser with more command-line switches (`--force-dark-mode`).
    async fn browser_with(&self, extra: &[&str]) -> Client {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1366,900",
            "--lang=en-US",
        ];
        args.extend_from_slice(extra);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({"binary": CHROMIUM, "args": args}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(caps).connect(&self.url).await.unwrap()
    }
}

/// A person at the browser.
struct Person<'a> {
    c: Client,
    base: &'a str,
    shots: Vec<PathBuf>,
}

impl Person<'_> {
    async fn open(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap(),
            Err(e) => {
                let page = self.c.find(Locator::Css("body")).await.unwrap().text().await.unwrap_or_default();
                panic!("no `{css}` on {} ({e}); the page says:\n{page}", self.path().await)
            }
        }
    }

    async fn has(&self, css: &str) -> bool {
        !self.c.find_all(Locator::Css(css)).await.unwrap().is_empty()
    }

    /// Clicks something that loads a new page, and waits for that page.
    async fn click(&self, css: &str) {
        let element = self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no `{css}` to click: {e}"));
        self.c.execute("window.__waiver_old_page = true;", vec![]).await.unwrap();
        element.click().await.unwrap();
        self.settle().await;
    }

    /// Clicks something on the page (a checkbox, an option): no new page.
    async fn tick(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Runs a script that submits a form, and waits for the answer's page.
    async fn run_and_wait(&self, script: &str) {
        self.c.execute("window.__waiver_old_page = true;", vec![]).await.unwrap();
        self.c.execute(script, vec![]).await.unwrap();
        self.settle().await;
    }

    /// Waits until the marked page has been replaced and the new one has loaded.
    async fn settle(&self) {
        let started = Instant::now();
        loop {
            let fresh = self
                .c
                .execute("return !window.__waiver_old_page && document.readyState === 'complete';", vec![])
                .await
                .map(|v| v == json!(true))
                .unwrap_or(false);
            if fresh {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no new page after 20 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no field `{css}`: {e}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Sets a value a keyboard cannot type portably (datetime-local follows the locale).
    async fn set(&self, id: &str, value: &str) {
        self.c
            .execute("document.getElementById(arguments[0]).value = arguments[1];", vec![json!(id), json!(value)])
            .await
            .unwrap();
    }

    /// The names of the page's fields that have no label.
    async fn unlabelled(&self) -> Value {
        let script = "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)";
        self.c.execute(script, vec![]).await.unwrap()
    }

    async fn path(&self) -> String {
        self.c.current_url().await.unwrap().path().to_owned()
    }

    async fn sign_in_as(&self, persona: &str) {
        self.open("/ui/login").await;
        self.click(&format!("#persona-{persona}")).await;
        assert_eq!(self.path().await, "/ui/", "{persona} lands on the dashboard");
    }

    async fn sign_out(&self) {
        self.click("header.top form button").await;
        assert_eq!(self.path().await, "/ui/login");
    }

    /// Saves the whole page as `name.png`.
    async fn shot(&mut self, name: &str) {
        // Twice: the page reflows once the window is as tall as it.
        for _ in 0..2 {
            let height = self.c.execute("return document.documentElement.scrollHeight", vec![]).await.unwrap();
            let height = height.as_u64().unwrap_or(900).clamp(600, 4000) as u32;
            self.c.set_window_size(1366, height + 120).await.unwrap();
        }
        let png = self.c.screenshot().await.unwrap();
        self.c.set_window_size(1366, 900).await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        self.shots.push(path);
    }
}

fn utc_local(hours: i64) -> String {
    crate::support::in_hours(hours)
        .parse::<jiff::Timestamp>()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M")
        .to_string()
}

fn decision(demo: &Demo, subject: &str) -> Value {
    demo.decide(&format!("ServiceAccount:{subject}"), "connect", "Database:orders-prod")
}

/// Fills the request form for `subject` (leaving out what `skip` names).
async fn fill_request(p: &Person<'_>, subject: &str, hours: i64, skip: &str) {
    p.fill("#subject", subject).await;
    p.tick("input[name=waives][value=forbid-prod-db-direct-access]").await;
    p.fill("#actions", "connect").await;
    p.fill("#resources", "Database:orders-prod").await;
    p.tick("#ctl-read_only").await;
    p.fill("#ctl-read_only-d", "read-only role").await;
    p.tick("#ctl-extra_logging").await;
    p.fill("#ctl-extra_logging-d", "every query logged").await;
    if skip != "justification" {
        p.fill("#justification", "restore test after INC-7").await;
    }
    p.fill("#normal_path_unavailable", "the replica is down").await;
    p.tick("#risk option[value=high]").await;
    p.fill("#owner", "sam").await;
    p.set("expires_at", &utc_local(hours)).await;
    if p.has("#remediation_plan").await {
        p.fill("#remediation_plan", "restore the replica").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_in_a_real_browser() {
    let demo = Demo::start_with(&["--demo-logins"]);
    let driver = Driver::start();
    let base = demo.server.base.clone();
    let mut p = Person { c: driver.browser().await, base: &base, shots: Vec::new() };

    // Signed out, every page sends you to sign in, and back afterwards.
    p.open("/ui/exceptions?state=active").await;
    assert_eq!(p.path().await, "/ui/login");
    p.shot("login").await;
    assert!(!p.has("#persona-pep").await, "the decision-only token is not offered");
    // A decision-only token is refused with a reason; a wrong token too.
    p.fill("#token", &demo.token("pep")).await;
    p.click("main form.card button").await;
    assert!(p.text(".flash.bad").await.contains("decision-only"), "pep refused");
    p.fill("#token", "wvr_not_a_token").await;
    p.click("main form.card button").await;
    assert!(p.text(".flash.bad").await.contains("unknown or revoked"));

    // Every persona signs in, sees who they are, and signs out.
    for (persona, name) in [
        ("admin", "alex"),
        ("requester", "dana"),
        ("approver", "lee"),
        ("owner", "sam"),
        ("responder", "riley"),
        ("auditor", "avery"),
    ] {
        p.sign_in_as(persona).await;
        assert_eq!(p.text("#who").await, name);
        assert!(p.has("svg[role=img]").await, "{persona} sees the dashboard's charts");
        p.sign_out().await;
    }
    p.open("/ui/").await;
    assert_eq!(p.path().await, "/ui/login", "signed out means signed out");

    // Before: the baseline forbids backup-runner.
    assert_eq!(decision(&demo, "backup-runner")["decision"], false);

    // dana requests; a missing justification is named beside its field, nothing filed.
    p.sign_in_as("requester").await;
    p.shot("dashboard").await;
    p.open("/ui/request").await;
    fill_request(&p, "ServiceAccount:backup-runner", 48, "justification").await;
    p.click("#submit").await;
    assert_eq!(p.path().await, "/ui/request", "refused, the form comes back");
    assert!(p.text("#justification-error").await.contains("justification") || p.has("#justification-error").await);
    assert!(p.text("#form-errors").await.contains("Nothing was filed"));
    assert_eq!(
        p.c.find(Locator::Css("#subject")).await.unwrap().prop("value").await.unwrap().as_deref(),
        Some("ServiceAccount:backup-runner"),
        "what was typed is kept"
    );
    p.shot("request-errors").await;
    p.fill("#justification", "restore test after INC-7").await;
    p.set("expires_at", &utc_local(48)).await;
    p.click("#submit").await;
    let path = p.path().await;
    let id = path.strip_prefix("/ui/exceptions/").unwrap_or_else(|| panic!("filed, then shown: {path}")).to_owned();
    assert_eq!(p.text("#state").await, "requested");
    assert!(p.text("#flash").await.contains("cannot approve it yourself"));

    // Self-approval: no button, the reason shown, and a forged form refused by the service.
    assert!(!p.has("#do-approve").await, "dana is offered no approve button");
    assert!(p.text("#approve-refused").await.contains("approve"), "and is told why");
    p.run_and_wait(&format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/exceptions/{id}/approve';
         const c = document.createElement('input'); c.name = 'csrf'; c.value = document.querySelector('input[name=csrf]').value;
         f.appendChild(c); document.body.appendChild(f); f.submit();"
    ))
    .await;
    let refusal = p.text("#flash").await;
    assert!(refusal.contains("may not approve") || refusal.contains("separation of duties"), "{refusal}");
    assert_eq!(p.text("#state").await, "requested", "still requested");
    // A form without the session's CSRF token is refused.
    p.run_and_wait(&format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/exceptions/{id}/withdraw';
         document.body.appendChild(f); f.submit();"
    ))
    .await;
    assert!(p.text(".flash.bad").await.contains("CSRF"));
    p.open(&format!("/ui/exceptions/{id}")).await;
    assert_eq!(p.text("#state").await, "requested");
    p.sign_out().await;

    // lee approves from the inbox.
    p.sign_in_as("approver").await;
    p.open("/ui/approvals").await;
    p.shot("approvals").await;
    p.click(&format!("#inbox a[href='/ui/exceptions/{id}']")).await;
    assert!(p.text("#eligible").await.contains("lee"), "the page says who may approve (the DBAs)");
    p.fill("#c-act", "ok for the restore test").await;
    // Narrowed as it is approved: a day instead of the two asked for.
    p.set("narrow-at", &utc_local(24)).await;
    p.click("#do-approve").await;
    assert_eq!(p.text("#state").await, "active");
    let timeline = p.text("#timeline").await;
    assert!(timeline.contains("ok for the restore test"), "the comment is in the timeline");
    assert!(timeline.contains("narrowed"), "the narrowing is its own event: {timeline}");
    for not_now in ["#do-approve", "#do-reject", "#do-post-use-review", "#do-end", "#do-attest"] {
        assert!(!p.has(not_now).await, "an active planned exception offers lee no `{not_now}`");
    }
    assert!(p.has("#do-revoke").await, "an approver may revoke");

    // The decision flips, and the exception's usage shows it.
    let answer = decision(&demo, "backup-runner");
    assert_eq!(answer["decision"], true, "{answer}");
    assert_eq!(answer["context"]["exception"]["id"], id.as_str());
    p.open(&format!("/ui/exceptions/{id}")).await;
    assert_eq!(p.text("#uses").await, "1", "one decision granted");
    assert!(p.text("#recent").await.contains("connect"), "and it is among the recent decisions");
    p.shot("exception").await;
    p.sign_out().await;

    // sam, the owner, revokes: denied from the next decision.
    p.sign_in_as("owner").await;
    p.open(&format!("/ui/exceptions/{id}")).await;
    assert!(!p.has("#do-approve").await, "the owner may not approve");
    // Revoking asks for a reason and a confirmation, behind its own disclosure.
    p.tick("#confirm-revoke > summary").await;
    p.fill("#c-revoke", "restore done").await;
    p.tick("#confirm-revoke-box").await;
    p.click("#do-revoke").await;
    assert_eq!(p.text("#state").await, "revoked");
    assert_eq!(decision(&demo, "backup-runner")["decision"], false);
    p.sign_out().await;

    // riley breaks glass for ledger-sync: active at once.
    p.sign_in_as("responder").await;
    p.open("/ui/break-glass").await;
    fill_request(&p, "ServiceAccount:ledger-sync", 2, "").await;
    p.shot("break-glass").await;
    p.click("#submit").await;
    let path = p.path().await;
    let glass = path.strip_prefix("/ui/exceptions/").unwrap_or_else(|| panic!("activated: {path}")).to_owned();
    assert_eq!(p.text("#state").await, "active");
    assert_eq!(decision(&demo, "ledger-sync")["decision"], true);
    let banner = |text: String| -> usize { text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0) };
    let active_now = banner(p.text("#break-glass-banner").await);
    assert!(active_now >= 1, "every page says a break-glass is active");
    p.tick("#confirm-end > summary").await;
    p.fill("#c-end", "incident over").await;
    p.tick("#confirm-end-box").await;
    p.click("#do-end").await;
    assert_eq!(p.text("#state").await, "awaiting post use review");
    assert!(!p.has("#do-post-use-review").await, "the activator does not review their own use");
    let after = if p.has("#break-glass-banner").await { banner(p.text("#break-glass-banner").await) } else { 0 };
    assert_eq!(after, active_now - 1, "ended, it leaves the banner");
    p.sign_out().await;

    // lee files the post-use review.
    p.sign_in_as("approver").await;
    p.open(&format!("/ui/exceptions/{glass}")).await;
    p.fill("#c-act", "access matched the incident").await;
    p.click("#do-post-use-review").await;
    assert_eq!(p.text("#state").await, "closed");
    p.sign_out().await;

    // avery reads everything and changes nothing; the chain verifies.
    p.sign_in_as("auditor").await;
    p.open(&format!("/ui/exceptions/{id}")).await;
    assert!(p.has("#no-actions").await, "an auditor is offered no action");
    p.open("/ui/exceptions").await;
    p.shot("register").await;
    p.fill("#f-q", "backup-runner").await;
    p.click("form.filters button").await;
    assert!(p.text("#count").await.contains("of"), "search finds it");
    assert!(p.has(&format!("a[href='/ui/exceptions/{id}']")).await);
    p.open("/ui/identities/ServiceAccount:billing-etl").await;
    p.shot("identity").await;
    p.open("/ui/baseline").await;
    assert!(p.text("#policies").await.contains("forbid-prod-db-direct-access"));
    p.shot("baseline").await;
    p.open("/ui/audit").await;
    p.click("#verify").await;
    assert!(p.text("#verified").await.contains("The chain verifies"));
    p.shot("audit").await;

    // The pages are real: keyboard users can skip to content; every input has a label.
    let unlabelled = p.unlabelled().await;
    assert_eq!(unlabelled, json!([]), "unlabelled fields on the audit page");
    // The auditor's menu offers no form they could never file, and the form refuses them
    // before anything is typed.
    assert!(!p.has("nav a[href='/ui/request']").await, "no Request in an auditor's menu");
    assert!(!p.has("nav a[href='/ui/break-glass']").await, "no Break-glass either");
    p.open("/ui/request").await;
    assert!(p.text("body").await.contains("may not file requests"), "refused up front");
    assert!(!p.has("#subject").await, "no form to fill");
    p.open("/ui/").await;
    p.sign_out().await;
    p.sign_in_as("requester").await;
    p.open("/ui/request").await;
    let unlabelled = p.unlabelled().await;
    assert_eq!(unlabelled, json!([]), "unlabelled fields on the request form");

    if std::env::var_os("WAIVER_UPDATE_SCREENSHOTS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        for shot in &p.shots {
            std::fs::copy(shot, docs.join(shot.file_name().unwrap())).unwrap();
        }
    }
    p.c.close().await.unwrap();
}

/// Sign-in through a real OpenID provider (issue 19): a person in no mapped group is refused;
/// lee is mapped to `approver` by the provider's group claim; approving needs a sign-in
/// with MFA (the rules' `[step_up]`), is refused without it, and goes through after lee
/// signs in again with the second factor; signing out offers the provider's logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_the_identity_provider_with_step_up() {
    use crate::people::{CLIENT_SECRET, Idp, free_port, node_config};
    let idp_port = free_port();
    let config_dir = tempfile::tempdir().unwrap();
    let config = node_config(config_dir.path(), idp_port, "");
    let demo = Demo::start_prepared_env(
        crate::support::Waiver::new(),
        &["--no-scheduler", "--config", &config],
        &[("WAIVER_OIDC_CLIENT_SECRET", CLIENT_SECRET)],
        |w| {
            w.edit_rules(|rules| {
                assert!(rules.contains("[step_up]\nactions = []"), "step-up is off by default");
                rules.replace(
                    "[step_up]\nactions = []",
                    "[step_up]\nactions = [\"approve\"]\nacr = [\"urn:waiver:mfa\"]",
                )
            })
        },
    );
    let idp = Idp::start(idp_port, &demo.server.base, 60);
    let (status, filed) = demo.call(
        "POST",
        "/api/v1/exceptions",
        "requester",
        Some(&crate::rest::db_request("backup-runner", 48).to_string()),
    );
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let driver = Driver::start();
    let base = demo.server.base.clone();

    // Someone the provider knows, in no group waiver maps, gets no session.
    let stranger = Person { c: driver.browser().await, base: &base, shots: Vec::new() };
    stranger.open("/ui/approvals").await;
    assert_eq!(stranger.path().await, "/ui/login");
    assert!(!stranger.has("#token").await, "people sign in through the provider here, not with tokens");
    stranger.click("#sign-in-provider").await;
    stranger.fill("#login", "nobody").await;
    stranger.fill("#password", "pw").await;
    stranger.click("#submit").await;
    assert!(stranger.has("#sign-in-provider").await, "back at the sign-in page");
    assert!(stranger.text(".flash.bad").await.contains("no group that maps"), "told why");
    stranger.c.close().await.unwrap();

    // lee signs in with a password only: an approver, from the group claim.
    let mut p = Person { c: driver.browser().await, base: &base, shots: Vec::new() };
    p.open(&format!("/ui/exceptions/{id}")).await;
    p.click("#sign-in-provider").await;
    assert!(p.has("#mfa").await, "at the provider's sign-in form");
    p.fill("#login", "lee").await;
    p.fill("#password", "pw").await;
    p.click("#submit").await;
    assert_eq!(p.path().await, format!("/ui/exceptions/{id}"), "back where lee was going");
    assert_eq!(p.text("#who").await, "lee");
    assert!(p.text("header.top").await.contains("approver"), "{}", p.text("header.top").await);
    let waiting: usize = p.text("#work-count").await.split_whitespace().next().unwrap().parse().unwrap();
    assert!(waiting >= 1, "the menu counts what waits for lee");

    // Approve needs MFA: refused, and lee is offered to sign in again.
    p.click("#do-approve").await;
    let refusal = p.text("#flash").await;
    assert!(refusal.contains("urn:waiver:mfa"), "{refusal}");
    assert_eq!(p.text("#state").await, "requested");
    p.shot("step-up-required").await;
    p.click("#step-up").await;
    assert!(p.text("body").await.contains("urn:waiver:mfa"), "the provider is asked for MFA");
    p.fill("#login", "lee").await;
    p.fill("#password", "pw").await;
    p.tick("#mfa").await;
    p.click("#submit").await;
    assert_eq!(p.path().await, format!("/ui/exceptions/{id}"));
    p.click("#do-approve").await;
    assert!(!p.has("#step-up").await, "{}", p.text("main").await);
    let (_, events) = demo.call("GET", &format!("/api/v1/exceptions/{id}/events"), "auditor", None);
    let approved = events["items"].as_array().unwrap().iter().find(|e| e["type"] == "exception.approved");
    assert_eq!(approved.map(|e| e["actor"].clone()), Some(json!("lee")), "{events}");

    // Signing out at the provider ends the session here too (back-channel logout).
    p.c.goto(&format!("{}/session/end", idp.url)).await.unwrap();
    p.click("#logout-yes").await;
    let started = Instant::now();
    loop {
        p.open("/ui/").await;
        if p.path().await == "/ui/login" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the provider's logout did not end the session here");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Signing in again (the provider asks again: its session ended too), then signing out
    // here ends the session and offers the provider's own logout.
    p.click("#sign-in-provider").await;
    p.fill("#login", "lee").await;
    p.fill("#password", "pw").await;
    p.click("#submit").await;
    assert_eq!(p.text("#who").await, "lee");
    p.click("header.top form button").await;
    assert!(p.has("#provider-logout").await, "{}", p.text("main").await);
    p.open("/ui/").await;
    assert_eq!(p.path().await, "/ui/login", "the session has ended");
    p.c.close().await.unwrap();
}

/// The approver's panel (issue 20): before deciding, an approver sees what a request would
/// newly allow (computed with the engine), the rules it waives with their Cedar text, that
/// a second identical request duplicates the first, and the identity's and requester's
/// history, on a desktop and a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvers_panel_previews_what_a_request_allows_and_warns() {
    let demo = Demo::start_with(&["--demo-logins", "--no-scheduler"]);
    let file = |body: Value| {
        let (status, filed) = demo.call("POST", "/api/v1/exceptions", "requester", Some(&body.to_string()));
        assert_eq!(status, 201, "{filed}");
        filed["id"].as_str().unwrap().to_owned()
    };
    let first = file(crate::rest::db_request("backup-runner", 48));
    let second = file(crate::rest::db_request("backup-runner", 48));
    let driver = Driver::start();
    let base = demo.server.base.clone();
    let p = Person { c: driver.browser().await, base: &base, shots: Vec::new() };
    p.sign_in_as("approver").await;
    // On a desktop and on a phone alike.
    for (width, height) in [(1366u32, 768u32), (390, 844)] {
        p.c.set_window_size(width, height).await.unwrap();
        p.open(&format!("/ui/exceptions/{second}")).await;
        let preview = p.text("#preview").await;
        assert_eq!(
            preview, "backup-runner may connect Database:orders-prod — today denied by forbid-prod-db-direct-access",
            "what it would newly allow, in words, from the engine"
        );
        assert!(p.text("#panel").await.contains(&format!("Duplicate of {first}")));
        assert!(p.text("#panel").await.contains("@approvers(\"dba\")"), "the rule's governance annotations");
        assert!(p.text("#identity-history").await.contains("1 requested"), "{}", p.text("#identity-history").await);
        assert!(!p.text("#requester-history").await.is_empty());
        assert!(p.text("main").await.contains("your time"), "UTC times carry the viewer's local time beside them");
        assert!(p.text("#overlaps").await.contains(&first));
        let precedent = p.text("#precedent").await;
        assert!(precedent.starts_with("It joins") || precedent.starts_with("None live"), "{precedent}");
        assert!(p.text("#panel pre.cedar").await.contains("forbid"), "the waived rule's Cedar text");
    }
    p.c.close().await.unwrap();
}

/// axe-core's source (from the npm registry, `tests/web`), injected into pages under test.
fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/web/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `npm ci` in tests/web (.ci/run does)", path.display()))
}

impl Person<'_> {
    /// axe-core's violations on the page, as `rule: targets`.
    async fn axe(&self, source: &str) -> Vec<String> {
        self.c.execute(source, vec![]).await.unwrap();
        let script = "const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] })
              .then(r => done(r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
              .catch(e => done(['axe failed: ' + e]));";
        let found = self.c.execute_async(script, vec![]).await.unwrap();
        serde_json::from_value(found).unwrap()
    }

    /// How much wider than the window the page is, in CSS pixels (0: no sideways scroll).
    async fn overflow(&self) -> i64 {
        let v =
            self.c.execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![]).await.unwrap();
        v.as_i64().unwrap_or(0)
    }
}

/// Every page, as the people who use it, on a desktop (1366×768) and a phone (390×844):
/// axe-core finds no violation (in dark mode too), and no page scrolls sideways on the phone
/// (issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_is_accessible_and_fits_a_phone() {
    let demo = Demo::start_with(&["--demo-logins", "--no-scheduler"]);
    let (status, filed) = demo.call(
        "POST",
        "/api/v1/exceptions",
        "requester",
        Some(&crate::rest::db_request("backup-runner", 48).to_string()),
    );
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let axe = axe_source();
    let driver = Driver::start();
    let base = demo.server.base.clone();
    let p = Person { c: driver.browser().await, base: &base, shots: Vec::new() };
    let mut problems = Vec::new();
    let pages: Vec<(&str, Vec<String>)> = vec![
        (
            "approver",
            vec![
                "/ui/".into(),
                "/ui/exceptions".into(),
                format!("/ui/exceptions/{id}"),
                "/ui/approvals".into(),
                "/ui/identities".into(),
                "/ui/identities/ServiceAccount:backup-runner".into(),
                "/ui/baseline".into(),
                "/ui/audit".into(),
                "/ui/exceptions?state=active&sort=expires_at".into(),
            ],
        ),
        ("requester", vec!["/ui/request".into()]),
        ("responder", vec!["/ui/break-glass".into()]),
    ];
    for (width, height) in [(1366u32, 768u32), (390, 844)] {
        p.c.set_window_size(width, height).await.unwrap();
        p.open("/ui/login").await;
        for v in p.axe(&axe).await {
            problems.push(format!("{width}px /ui/login: {v}"));
        }
        for (persona, paths) in &pages {
            p.sign_in_as(persona).await;
            for path in paths {
                p.open(path).await;
                for v in p.axe(&axe).await {
                    problems.push(format!("{width}px {path} as {persona}: {v}"));
                }
                if width == 390 {
                    let over = p.overflow().await;
                    if over > 0 {
                        let culprits = p
                            .c
                            .execute(
                                "const w = window.innerWidth; return [...document.querySelectorAll('body *')]
                                   .filter(e => e.getBoundingClientRect().right > w + 1 && ![...e.children].some(c => c.getBoundingClientRect().right > w + 1))
                                   .slice(0, 4).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className && e.className.baseVal === undefined ? '.' + String(e.className).split(' ').join('.') : '') + ' ' + Math.round(e.getBoundingClientRect().right));",
                                vec![],
                            )
                            .await
                            .unwrap();
                        problems
                            .push(format!("{width}px {path} as {persona}: {over}px wider than the screen: {culprits}"));
                    }
                }
            }
            p.sign_out().await;
        }
    }
    p.c.close().await.unwrap();

    // The same pages in dark mode (the system setting), on the desktop.
    let dark = Person {
        c: driver.browser_with(&["--force-dark-mode", "--blink-settings=preferredColorScheme=0"]).await,
        base: &base,
        shots: Vec::new(),
    };
    dark.open("/ui/login").await;
    let scheme = dark.c.execute("return matchMedia('(prefers-color-scheme: dark)').matches", vec![]).await.unwrap();
    assert_eq!(scheme, json!(true), "the browser prefers dark");
    for (persona, paths) in &pages {
        dark.sign_in_as(persona).await;
        for path in paths {
            dark.open(path).await;
            for v in dark.axe(&axe).await {
                problems.push(format!("dark {path} as {persona}: {v}"));
            }
        }
        dark.sign_out().await;
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    dark.c.close().await.unwrap();
}

/// A UI session for `persona`, signed in with their token as the sign-in form does.
fn ui_session(demo: &Demo, persona: &str) -> (ureq::Agent, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let base = &demo.server.base;
    let mut page = agent.get(&format!("{base}/ui/login")).call().unwrap();
    let cookie = page.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = page.body_mut().read_to_string().unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let token = demo.token(persona);
    let signed = agent
        .post(&format!("{base}/ui/login"))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str()), ("next", "/ui/"), ("token", token.as_str())])
        .unwrap();
    let session = signed.headers().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    (agent, session)
}

/// A form submitted twice, 5 ms apart or after "back", files once (issue 20): both answers
/// lead to the same exception.
#[test]
fn a_request_form_submitted_twice_files_once() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let base = demo.server.base.clone();
    let (agent, session) = ui_session(&demo, "requester");
    let value = |html: &str, name: &str| -> String {
        html.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let form = agent
        .get(&format!("{base}/ui/request"))
        .header("Cookie", &session)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let (csrf, submission) = (value(&form, "csrf"), value(&form, "submission"));
    assert_eq!(submission.len(), 64, "a one-time value per form");
    let expires = crate::support::in_hours(24)
        .parse::<jiff::Timestamp>()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M")
        .to_string();
    let fields: Vec<(&str, String)> = vec![
        ("csrf", csrf),
        ("submission", submission),
        ("subject", "ServiceAccount:backup-runner".into()),
        ("waives", "forbid-prod-db-direct-access".into()),
        ("actions", "connect".into()),
        ("resources", "Database:orders-prod".into()),
        ("control_read_only", "on".into()),
        ("control_read_only_description", "read-only role".into()),
        ("control_extra_logging", "on".into()),
        ("control_extra_logging_description", "every query logged".into()),
        ("justification", "restore test".into()),
        ("normal_path_unavailable", "the replica is down".into()),
        ("risk", "high".into()),
        ("owner", "sam".into()),
        ("expires_at", expires),
        ("remediation_plan", "restore the replica".into()),
    ];
    let before = demo.call("GET", "/api/v1/exceptions?limit=500", "auditor", None).1["items"].as_array().unwrap().len();
    let submit = || {
        let (agent, base, session, fields) = (agent.clone(), base.clone(), session.clone(), fields.clone());
        std::thread::spawn(move || {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = agent.post(&format!("{base}/ui/request")).header("Cookie", &session).send_form(pairs).unwrap();
            assert_eq!(answer.status().as_u16(), 303, "filed, or shown as filed");
            answer.headers().get("location").unwrap().to_str().unwrap().to_owned()
        })
    };
    let first = submit();
    std::thread::sleep(Duration::from_millis(5));
    let second = submit();
    let (a, b) = (first.join().unwrap(), second.join().unwrap());
    let id = |loc: &str| loc.split('?').next().unwrap().to_owned();
    assert_eq!(id(&a), id(&b), "both answers lead to one exception: {a} {b}");
    // …and once more later, as after "back" and submit.
    assert_eq!(id(&submit().join().unwrap()), id(&a));
    let after = demo.call("GET", "/api/v1/exceptions?limit=500", "auditor", None).1["items"].as_array().unwrap().len();
    assert_eq!(after, before + 1, "filed once");

    // A preset instead of an exact end: "1 day from now".
    let form = agent
        .get(&format!("{base}/ui/request"))
        .header("Cookie", &session)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(form.contains("1 day from now") && form.contains("UTC, 24-hour"), "presets and a UTC label");
    let mut preset = fields.clone();
    preset.retain(|(k, _)| *k != "expires_at" && *k != "submission" && *k != "csrf");
    preset.push(("csrf", value(&form, "csrf")));
    preset.push(("submission", value(&form, "submission")));
    preset.push(("lasts", "P1D".into()));
    preset.push(("expires_at", String::new()));
    let pairs: Vec<(&str, &str)> = preset.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = agent.post(&format!("{base}/ui/request")).header("Cookie", &session).send_form(pairs).unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let location = answer.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let filed = location.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned();
    let (_, e) = demo.call("GET", &format!("/api/v1/exceptions/{filed}"), "auditor", None);
    let ends: jiff::Timestamp = e["expires_at"].as_str().unwrap().parse().unwrap();
    let created: jiff::Timestamp = e["created_at"].as_str().unwrap().parse().unwrap();
    let lasts = ends.duration_since(created);
    assert!((lasts.as_secs() - 86_400).abs() < 60, "a day from filing: {lasts:?}");
}

/// The register exports what it shows as CSV, and many exceptions can be revoked at once,
/// each checked as if done alone, with one reason (issue 20).
#[test]
fn the_register_exports_csv_and_acts_in_bulk() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (agent, session) = ui_session(&demo, "admin");
    let base = demo.server.base.clone();
    let get = |path: &str| -> (u16, String, String) {
        let mut r = agent.get(&format!("{base}{path}")).header("Cookie", &session).call().unwrap();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (r.status().as_u16(), ct, r.body_mut().read_to_string().unwrap())
    };
    let (_, active) = demo.call("GET", "/api/v1/exceptions?state=active&limit=500", "auditor", None);
    let active: Vec<String> =
        active["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert!(active.len() >= 2, "the demo has active exceptions");
    let page = get("/ui/exceptions?state=active").2;
    let href = page.split("id=\"export-csv\" href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let (status, ct, csv) = get(&href);
    assert_eq!((status, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,state,kind,risk,subject"), "{}", lines[0]);
    assert_eq!(lines.len() - 1, active.len(), "every row the filter matches, not one page");
    assert!(lines[1..].iter().all(|l| l.contains(",active,")), "{csv}");

    // Revoke two active ones and one that cannot be (a made-up id) in one go.
    let form = get("/ui/exceptions?state=active").2;
    let csrf = form.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("back", "/ui/exceptions?state=active"),
        ("action", "revoke"),
        ("comment", "incident INC-9: revoke everything on this host"),
        ("confirm", "yes"),
    ];
    fields.push(("id", active[0].as_str()));
    fields.push(("id", active[1].as_str()));
    fields.push(("id", "EXC-999999"));
    let answer =
        agent.post(&format!("{base}/ui/exceptions/bulk")).header("Cookie", &session).send_form(fields.clone()).unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let location = answer.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let shown = get(&location).2;
    assert!(shown.contains("2 revoked") && shown.contains("1 refused") && shown.contains("EXC-999999"), "{shown}");
    for id in &active[..2] {
        let (_, e) = demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None);
        assert_eq!(e["state"], "revoked", "{e}");
    }
    // Without the confirmation nothing happens.
    fields.retain(|(k, _)| *k != "confirm");
    let answer =
        agent.post(&format!("{base}/ui/exceptions/bulk")).header("Cookie", &session).send_form(fields).unwrap();
    let location = answer.headers().get("location").unwrap().to_str().unwrap().to_owned();
    assert!(get(&location).2.contains("Nothing was done"));
}

/// The audit page filters by event, actor and exception and shows each event's data in
/// words; the baseline page lists `default-deny` and each policy's Cedar text (issue 20).
#[test]
fn the_audit_page_filters_and_reads_and_the_baseline_page_shows_every_rule() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (agent, session) = ui_session(&demo, "auditor");
    let base = demo.server.base.clone();
    let get = |path: &str| -> String {
        agent
            .get(&format!("{base}{path}"))
            .header("Cookie", &session)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let page = get("/ui/audit?event_type=token.&actor=waiver");
    let rows: Vec<&str> = page.split("<tr><td class=\"num\"").skip(1).collect();
    assert!(!rows.is_empty(), "{page}");
    assert!(rows.iter().all(|r| r.contains(">token.") && r.contains(">waiver<")), "only token events by waiver");
    assert!(!page.contains("{&quot;"), "data in words, not raw JSON");
    let one = get("/ui/audit?exception=exc-000001");
    let rows: Vec<&str> = one.split("<tr><td class=\"num\"").skip(1).collect();
    assert!(!rows.is_empty() && rows.iter().all(|r| r.contains("EXC-000001")), "one exception's events");
    assert!(one.contains("whole record"), "a filing names the record rather than dumping it");

    let baseline = get("/ui/baseline");
    assert!(baseline.contains(">default-deny<"), "default-deny is listed");
    assert!(baseline.contains("<summary>forbid-prod-db-direct-access</summary>"), "policies open to their text");
    assert!(
        baseline.contains("resource.env == &quot;prod&quot;") || baseline.contains("resource.env == &#34;prod&#34;"),
        "the Cedar text itself"
    );
}

/// A form with several mistakes says all of them at once (issue 20): a subject that does not
/// parse, a missing justification and a duration over the rules' cap, in one answer.
#[test]
fn a_refused_form_names_every_mistake_in_one_pass() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (agent, session) = ui_session(&demo, "requester");
    let base = demo.server.base.clone();
    let form = agent
        .get(&format!("{base}/ui/request"))
        .header("Cookie", &session)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let csrf = form.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let fields = [
        ("csrf", csrf.as_str()),
        ("subject", "not an entity"),
        ("waives", "forbid-prod-db-direct-access"),
        ("actions", "connect"),
        ("resources", "Database:orders-prod"),
        ("control_read_only", "on"),
        ("control_read_only_description", "read-only role"),
        ("normal_path_unavailable", "the replica is down"),
        ("risk", "high"),
        ("owner", "sam"),
        ("lasts", "P90D"),
        ("remediation_plan", "restore the replica"),
    ];
    let mut answer = agent.post(&format!("{base}/ui/request")).header("Cookie", &session).send_form(fields).unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let page = answer.body_mut().read_to_string().unwrap();
    let summary = page.split("id=\"form-errors\"").nth(1).unwrap().split("</div>").next().unwrap();
    for field in ["#subject", "#justification", "#expires_at"] {
        assert!(summary.contains(&format!("href=\"{field}\"")), "{field} is named in the one answer: {summary}");
    }
    let (_, listed) = demo.call("GET", "/api/v1/exceptions?limit=500", "auditor", None);
    assert!(!listed.to_string().contains("form-stand-in"), "nothing was filed");
}

/// Every number on the dashboard links to the exceptions behind it: the list it opens counts
/// exactly as many (issue 20).
#[test]
fn every_dashboard_tile_lands_on_a_list_of_as_many() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (agent, session) = ui_session(&demo, "auditor");
    let base = demo.server.base.clone();
    let get = |path: &str| -> String {
        agent
            .get(&format!("{base}{path}"))
            .header("Cookie", &session)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let dashboard = get("/ui/");
    let stats = dashboard.split("<section class=\"stats\"").nth(1).unwrap().split("</section>").next().unwrap();
    let tiles: Vec<(String, u64, String)> = stats
        .split("<a class=\"stat")
        .skip(1)
        .map(|tile| {
            let href = tile
                .split("href=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .replace("&amp;", "&")
                .replace("&#38;", "&");
            let value = tile.split("<b>").nth(1).unwrap().split("</b>").next().unwrap().parse().unwrap();
            let label = tile.split("<span>").nth(1).unwrap().split("</span>").next().unwrap().to_owned();
            (href, value, label)
        })
        .collect();
    assert!(tiles.len() >= 6, "{stats}");
    for (href, value, label) in tiles {
        let list = get(&href);
        let count = list.split("id=\"count\">").nth(1).unwrap().split("</p>").next().unwrap();
        let total: u64 = if count.starts_with("No exception") {
            0
        } else {
            count.split(" of ").nth(1).unwrap().split('.').next().unwrap().parse().unwrap()
        };
        assert_eq!(total, value, "the tile `{label}` says {value}; its list ({href}) shows {total}");
    }
}

/// Reporting a change to an identity first shows what it would revalidate; only the
/// confirmed report suspends anything (issue 20).
#[test]
fn an_identity_change_is_previewed_before_it_suspends() {
    let demo = Demo::start_with(&["--no-scheduler"]);
    let (agent, session) = ui_session(&demo, "admin");
    let base = demo.server.base.clone();
    let (_, active) = demo.call("GET", "/api/v1/exceptions?state=active&kind=planned&limit=100", "auditor", None);
    // One whose identity is in the inventory (a change is reported against it).
    let (id, subject) = active["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let subject =
                format!("{}:{}", e["subject"]["type"].as_str().unwrap(), e["subject"]["id"].as_str().unwrap());
            (e["id"].as_str().unwrap().to_owned(), subject)
        })
        .find(|(_, subject)| demo.call("GET", &format!("/api/v1/identities/{subject}"), "auditor", None).0 == 200)
        .expect("an active exception of an inventoried identity");
    let page = agent
        .get(&format!("{base}/ui/identities/{subject}"))
        .header("Cookie", &session)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let post = |fields: &[(&str, &str)]| -> String {
        agent
            .post(&format!("{base}/ui/identities/{subject}/changes"))
            .header("Cookie", &session)
            .send_form(fields.iter().copied())
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let preview = post(&[("csrf", &csrf), ("kind", "code_change"), ("detail", "new build")]);
    let pending = preview.split("id=\"chg-pending\"").nth(1).unwrap_or_else(|| panic!("a preview: {preview}"));
    assert!(pending.contains(&id), "it names what it would revalidate");
    let state = |demo: &Demo| demo.call("GET", &format!("/api/v1/exceptions/{id}"), "auditor", None).1["state"].clone();
    assert_eq!(state(&demo), "active", "a preview changes nothing");
    post(&[("csrf", &csrf), ("kind", "code_change"), ("detail", "new build"), ("confirm", "yes")]);
    assert_eq!(state(&demo), "suspended", "the confirmed report does");
}

/// A sign-in that expires mid-action loses nothing typed, and the register keeps named
/// views (issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_survive_a_lost_session_and_views_are_saved() {
    let demo = Demo::start_with(&["--demo-logins", "--no-scheduler"]);
    let (status, filed) = demo.call(
        "POST",
        "/api/v1/exceptions",
        "requester",
        Some(&crate::rest::db_request("backup-runner", 48).to_string()),
    );
    assert_eq!(status, 201, "{filed}");
    let id = filed["id"].as_str().unwrap().to_owned();
    let driver = Driver::start();
    let base = demo.server.base.clone();
    let p = Person { c: driver.browser().await, base: &base, shots: Vec::new() };
    p.sign_in_as("approver").await;
    p.open(&format!("/ui/exceptions/{id}")).await;
    p.fill("#c-act", "checked the replica is down; ok for 48 h").await;
    // The session ends while lee types (as if it timed out).
    p.c.delete_cookie("waiver_session").await.unwrap();
    p.click("#do-approve").await;
    assert_eq!(p.path().await, "/ui/login", "signed out: sign in again");
    p.click("#persona-approver").await;
    assert!(p.text("#draft-note").await.contains("unsent draft"), "offered back after signing in");
    p.click("#draft-link").await;
    let restored = p.c.execute("return document.getElementById('c-act').value", vec![]).await.unwrap();
    assert_eq!(restored, json!("checked the replica is down; ok for 48 h"), "the comment is back");
    assert_eq!(p.text("#state").await, "requested", "nothing was sent while signed out");
    p.click("#do-approve").await;
    assert!(!p.has("#draft-note").await, "sent: the draft is gone");

    // A named view of the register, kept in this browser.
    p.open("/ui/exceptions?state=active&sort=expires_at&dir=asc").await;
    p.tick("#save-view").await;
    p.c.send_alert_text("active, soonest first").await.unwrap();
    p.c.accept_alert().await.unwrap();
    p.open("/ui/exceptions").await;
    let link = p.c.find(Locator::Css("#saved-views a")).await.unwrap();
    assert_eq!(link.text().await.unwrap(), "active, soonest first");
    assert!(link.attr("href").await.unwrap().unwrap().contains("state=active"));
    p.c.close().await.unwrap();
}
