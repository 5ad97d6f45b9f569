//! `waiver bench ui`: every UI page timed over real HTTP against `waiver serve` (this very
//! binary, as a child process) on the demo data scaled up to N exceptions.
//!
//! Scaling copies the demo's exceptions (every state and kind, with their times) under new
//! ids, each with one event in the audit chain, so the register, the dashboard and the
//! audit log are as large as the figure says.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Instant,
};

use serde_json::{Value, json};
use waiver_core::{Principal, audit::EventDraft};
use waiver_store::{Commit, ExceptionFilter, Store, StoreRead, Write};
use waiver_store_sqlite::SqliteStore;

use crate::{app::DATABASE_FILE, bench::percentile, commands::CliError, output::Printer};

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(anyhow::anyhow!("{e}"))
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies the demo's exceptions until the register holds `n`.
async fn scale(store: &Arc<SqliteStore>, n: usize) -> Result<usize, CliError> {
    let templates = store.exceptions(&ExceptionFilter::default()).await?;
    let mut held = templates.len();
    if templates.is_empty() {
        return Err(fail("the demo has no exceptions to copy"));
    }
    let now = jiff::Timestamp::from_second(templates.iter().map(|e| e.created_at.as_second()).max().unwrap_or(0))
        .map_err(fail)?;
    while held < n {
        let batch: Vec<waiver_core::Exception> =
            templates.iter().cycle().skip(held).take((n - held).min(5_000)).cloned().collect();
        let count = batch.len();
        store
            .commit(Box::new(move |alloc| {
                let mut commit = Commit::default();
                for mut e in batch {
                    e.id = alloc.exception_id();
                    e.version = 1;
                    commit.events.push(EventDraft {
                        at: now,
                        actor: Principal::system(),
                        event_type: "exception.imported".into(),
                        exception_id: Some(e.id),
                        data: json!({"bench": "a copy of a demo exception, to scale the register"}),
                    });
                    commit.exceptions.push(Write::insert(e));
                }
                commit
            }))
            .await?;
        held += count;
    }
    Ok(held)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into()
}

/// Signs in with `token` as a browser would; returns the session cookie.
fn sign_in(base: &str, token: &str) -> Result<String, CliError> {
    let agent = agent();
    let mut page = agent.get(&format!("{base}/ui/login")).call().map_err(fail)?;
    let login_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("waiver_login=").and_then(|c| c.split(';').next()))
        .ok_or_else(|| fail("no sign-in cookie"))?
        .to_owned();
    let html = page.body_mut().read_to_string().map_err(fail)?;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| fail("no CSRF field on the sign-in page"))?;
    let form = serde_urlencoded::to_string([("csrf", csrf), ("token", token), ("next", "/ui/")]).map_err(fail)?;
    let answer = agent
        .post(&format!("{base}/ui/login"))
        .header("Cookie", &format!("waiver_login={login_cookie}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(&form)
        .map_err(fail)?;
    answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("waiver_session=").and_then(|c| c.split(';').next()))
        .map(|id| format!("waiver_session={id}"))
        .ok_or_else(|| fail(format!("sign-in refused ({})", answer.status())))
}

/// Each UI page's time to a full answer at N exceptions.
pub async fn ui(n: usize, requests: usize, out: &Printer) -> Result<u8, CliError> {
    let exe = std::env::current_exe().map_err(fail)?;
    let dir = tempfile::tempdir().map_err(fail)?;
    let data = dir.path().join("data");
    let built = Command::new(&exe)
        .arg("--data-dir")
        .arg(&data)
        .args(["demo", "--no-serve"])
        .stdout(Stdio::null())
        .status()
        .map_err(fail)?;
    if !built.success() {
        return Err(fail("the demo could not be built"));
    }
    let started = Instant::now();
    let store = Arc::new(SqliteStore::open(&data.join(DATABASE_FILE)).await?);
    let held = scale(&store, n).await?;
    let events = store.last_seq().await?;
    drop(store);
    out.say(format!(
        "scaled the demo to {held} exceptions, {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut child = Command::new(&exe)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-scheduler"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(fail)?;
    let stdout = child.stdout.take().ok_or_else(|| fail("no stdout from serve"))?;
    let served = Served(child);
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    lines.read_line(&mut line).map_err(fail)?;
    let base =
        line.trim().strip_prefix("waiver listening on ").ok_or_else(|| fail(format!("serve said: {line}")))?.to_owned();
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));

    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join(crate::demo::TOKENS_FILE)).map_err(fail)?)
            .map_err(fail)?;
    let token = |persona: &str| {
        tokens.get(persona).and_then(|p| p.get("token")).and_then(Value::as_str).unwrap_or("").to_owned()
    };
    let (auditor, approver) = (token("auditor"), token("approver"));
    let base2 = base.clone();
    let (auditor, approver) = tokio::task::spawn_blocking(move || {
        Ok::<_, CliError>((sign_in(&base2, &auditor)?, sign_in(&base2, &approver)?))
    })
    .await
    .map_err(fail)??;
    let last = format!("/ui/exceptions/EXC-{held:06}");
    let pages: Vec<(&str, String, &String)> = vec![
        ("dashboard", "/ui/".into(), &auditor),
        ("register, first page", "/ui/exceptions".into(), &auditor),
        ("register, search + sort", "/ui/exceptions?q=billing&sort=expires_at".into(), &auditor),
        ("register, state filter, page 50", "/ui/exceptions?state=active&page=50".into(), &auditor),
        ("exception", last, &auditor),
        ("approvals inbox", "/ui/approvals".into(), &approver),
        ("identities", "/ui/identities".into(), &auditor),
        ("identity", "/ui/identities/ServiceAccount:billing-etl".into(), &auditor),
        ("baseline", "/ui/baseline".into(), &auditor),
        ("audit log", "/ui/audit".into(), &auditor),
        ("request form", "/ui/request".into(), &approver),
    ];
    let base3 = base.clone();
    let owned: Vec<(String, String, String)> =
        pages.into_iter().map(|(name, path, cookie)| (name.to_owned(), path, cookie.clone())).collect();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, CliError> {
        let agent = agent();
        let mut rows = Vec::new();
        for (name, path, cookie) in owned {
            let mut times = Vec::new();
            let mut bytes = 0;
            for round in 0..requests + 2 {
                let t = Instant::now();
                let mut answer =
                    agent.get(&format!("{base3}{path}")).header("Cookie", &cookie).call().map_err(fail)?;
                let status = answer.status().as_u16();
                let body = answer.body_mut().with_config().limit(64 << 20).read_to_string().map_err(fail)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if status != 200 {
                    return Err(fail(format!("{path}: {status}")));
                }
                bytes = body.len();
                if round >= 2 {
                    times.push(ms); // two warm-up rounds
                }
            }
            times.sort_by(f64::total_cmp);
            rows.push(json!({"page": name, "path": path, "median_ms": percentile(&times, 0.5),
                             "p95_ms": percentile(&times, 0.95), "max_ms": times.last().copied().unwrap_or(0.0), "bytes": bytes}));
        }
        Ok(rows)
    })
    .await
    .map_err(fail)??;
    drop(served);
    out.json(&json!({"exceptions": held, "events": events, "requests_per_page": requests, "pages": rows}));
    if !out.is_json() {
        out.say(format!("{:<34} {:>10} {:>10} {:>10} {:>10}", "page", "median ms", "p95 ms", "max ms", "KiB"));
        for r in &rows {
            let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            out.say(format!(
                "{:<34} {:>10.1} {:>10.1} {:>10.1} {:>10.0}",
                r.get("page").and_then(Value::as_str).unwrap_or(""),
                f("median_ms"),
                f("p95_ms"),
                f("max_ms"),
                f("bytes") / 1024.0
            ));
        }
    }
    Ok(0)
}
