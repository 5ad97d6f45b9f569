//! `waiver bench rest` and `waiver bench scheduler`: the governance server measured end to
//! end — real HTTP on loopback, the real SQLite store with production durability.

use std::{sync::Arc, time::Instant};

use serde_json::{Value, json};
use waiver_core::{Actor, Clock, Principal, Role, Rules};
use waiver_engine::{Baseline, Snapshot};
use waiver_http::{ApiState, DecisionAuth, DecisionState};
use waiver_service::Service;
use waiver_store::{Commit, ExceptionFilter, Store, StoreRead, Write};
use waiver_store_sqlite::SqliteStore;

use crate::{bench::percentile, clock::SystemClock, commands::CliError, output::Printer};

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(anyhow::anyhow!("{e}"))
}

fn request_body(subject: &str) -> String {
    json!({
        "subject": {"type": "ServiceAccount", "id": subject},
        "waives": ["default-deny"],
        "scope": {"actions": ["read"], "resources": [{"type": "Bucket", "id": "bench"}]},
        "compensating_controls": [{"kind": "extra_logging", "description": "logged"}],
        "justification": "benchmark", "normal_path_unavailable": "benchmark", "risk": "low", "owner": "sam",
        "expires_at": (SystemClock.now() + jiff::SignedDuration::from_hours(24 * 30)).to_string(),
        "remediation": {"plan": "none"}
    })
    .to_string()
}

struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn post(&self, path: &str, token: &str, body: &str) -> Result<(u16, Value), String> {
        let mut response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn created(&self, path: &str, token: &str, body: &str) -> Result<String, String> {
        match self.post(path, token, body)? {
            (201, v) => v.get("id").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| "no id".to_owned()),
            (s, v) => Err(format!("{path}: {s} {v}")),
        }
    }

    fn ok(&self, path: &str, token: &str) -> Result<(), String> {
        match self.post(path, token, "{}")? {
            (200, _) => Ok(()),
            (s, v) => Err(format!("{path}: {s} {v}")),
        }
    }

    fn allowed(&self, token: &str, subject: &str) -> Result<bool, String> {
        let body = json!({"subject": {"type": "ServiceAccount", "id": subject}, "action": {"name": "read"},
                          "resource": {"type": "Bucket", "id": "bench"}});
        let (_, v) = self.post("/access/v1/evaluation", token, &body.to_string())?;
        Ok(v.get("decision") == Some(&Value::Bool(true)))
    }
}

/// Serves the full app on loopback over a scratch store with `n_subjects` identities.
/// Returns the base URL and the tokens of dana (requester), lee (approver), sam (owner), the PEP.
async fn server(n_subjects: usize) -> Result<(tempfile::TempDir, String, [String; 4]), CliError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).await?);
    let baseline =
        Arc::new(Baseline::parse(crate::demo::DEMO_POLICIES, None, Some(crate::demo::DEMO_ENTITIES)).map_err(fail)?);
    let service =
        Service::new(store.clone(), Rules::default(), Arc::new(SystemClock)).with_baseline(Ok(baseline.clone()));
    let admin = Actor::new(Principal::system(), &[Role::Admin]);
    for i in 0..n_subjects {
        let input = serde_json::from_value(json!({"type": "ServiceAccount", "id": format!("bench-{i}"),
            "kind": "service_account", "owner": "sam", "credential_type": "workload_token"}))
        .map_err(fail)?;
        service.identity_add(&admin, input).await?;
    }
    let mut tokens = Vec::new();
    for (name, role) in
        [("dana", Role::Requester), ("lee", Role::Approver), ("sam", Role::Requester), ("gateway", Role::Pep)]
    {
        let p = Principal::parse("p", name).map_err(fail)?;
        tokens.push(service.issue_token(&admin, p, &[role], name).await?.secret);
    }
    let table = waiver_http::token_table(store.as_ref()).await?;
    let decisions = DecisionState::new(
        Snapshot::new(baseline, std::iter::empty::<waiver_core::Exception>()),
        Arc::new(SystemClock),
        DecisionAuth::Tokens(Arc::new(arc_swap::ArcSwap::from_pointee(table))),
    );
    decisions.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let app = waiver_http::app(ApiState { service, decisions, baseline_pinned: false, ui: Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
    let base = format!("http://{}", listener.local_addr().map_err(fail)?);
    tokio::spawn(waiver_http::serve_with_listener(listener, app, std::future::pending()));
    let [dana, lee, sam, pep]: [String; 4] = tokens.try_into().map_err(|_| fail("tokens"))?;
    Ok((dir, base, [dana, lee, sam, pep]))
}

fn client(base: &str) -> Client {
    Client { agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(), base: base.to_owned() }
}

/// REST writes per second (create + approve, each its own request and commit) with
/// `concurrency` clients, then revoke-to-deny on the same node over `revocations` rounds.
pub async fn rest(n: usize, concurrency: usize, revocations: usize, out: &Printer) -> Result<u8, CliError> {
    let concurrency = concurrency.max(1);
    let (_dir, base, [dana, lee, sam, pep]) = server(concurrency + revocations).await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (c, dana, lee) = (client(&base), dana.clone(), lee.clone());
        let per = n / concurrency + usize::from(w < n % concurrency);
        workers.push(tokio::task::spawn_blocking(move || -> Result<usize, String> {
            for _ in 0..per {
                let id = c.created("/api/v1/exceptions", &dana, &request_body(&format!("bench-{w}")))?;
                c.ok(&format!("/api/v1/exceptions/{id}/approve"), &lee)?;
            }
            Ok(per)
        }));
    }
    let mut done = 0;
    for w in workers {
        done += w.await.map_err(fail)?.map_err(fail)?;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let c = client(&base);
    let (dana, lee, sam, pep) = (dana.clone(), lee.clone(), sam.clone(), pep.clone());
    let rounds = tokio::task::spawn_blocking(move || -> Result<(Vec<f64>, Vec<f64>, usize), String> {
        let (mut revoke_ms, mut deny_ms, mut stale) = (Vec::new(), Vec::new(), 0);
        for i in 0..revocations {
            let subject = format!("bench-{}", concurrency + i);
            let id = c.created("/api/v1/exceptions", &dana, &request_body(&subject))?;
            c.ok(&format!("/api/v1/exceptions/{id}/approve"), &lee)?;
            if !c.allowed(&pep, &subject)? {
                return Err(format!("{id} did not grant after approval"));
            }
            let t0 = Instant::now();
            c.ok(&format!("/api/v1/exceptions/{id}/revoke"), &sam)?;
            let t1 = Instant::now();
            let mut denied = !c.allowed(&pep, &subject)?;
            while !denied {
                stale += 1;
                denied = !c.allowed(&pep, &subject)?;
            }
            revoke_ms.push(t1.duration_since(t0).as_secs_f64() * 1e3);
            deny_ms.push(t1.elapsed().as_secs_f64() * 1e3);
        }
        Ok((revoke_ms, deny_ms, stale))
    });
    let (mut revoke_ms, mut deny_ms, stale) = rounds.await.map_err(fail)?.map_err(fail)?;
    revoke_ms.sort_by(f64::total_cmp);
    deny_ms.sort_by(f64::total_cmp);
    let result = json!({
        "exceptions": done, "concurrency": concurrency, "seconds": elapsed,
        "writes_per_second": 2.0 * done as f64 / elapsed, "create_approve_pairs_per_second": done as f64 / elapsed,
        "revocations": revocations, "stale_allows_after_revoke_ack": stale,
        "revoke_ack_p50_ms": percentile(&revoke_ms, 0.5), "revoke_ack_p99_ms": percentile(&revoke_ms, 0.99),
        "ack_to_denied_decision_p50_ms": percentile(&deny_ms, 0.5), "ack_to_denied_decision_p99_ms": percentile(&deny_ms, 0.99),
    });
    out.json(&result);
    out.say(format!(
        "{done} create+approve pairs with {concurrency} clients in {elapsed:.1} s: {:.0} REST writes/s; revoke acknowledged p50 {:.2} ms p99 {:.2} ms; the next decision denied in p50 {:.3} ms p99 {:.3} ms ({stale} stale allows after {revocations} revocations)",
        2.0 * done as f64 / elapsed,
        percentile(&revoke_ms, 0.5),
        percentile(&revoke_ms, 0.99),
        percentile(&deny_ms, 0.5),
        percentile(&deny_ms, 0.99),
    ));
    Ok(if stale == 0 { 0 } else { 1 })
}

/// Scheduler lag: `n` active exceptions expiring over the next `spread` seconds; the
/// expiry job runs as `serve` runs it (every 250 ms); lag is each `exception.expired`
/// event's time minus the exception's `expires_at`.
pub async fn scheduler(n: usize, spread: f64, out: &Printer) -> Result<u8, CliError> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).await?);
    let service = Service::new(store.clone(), Rules::default(), Arc::new(SystemClock));
    let now = SystemClock.now();
    let lead = jiff::SignedDuration::from_secs_f64(5.0 + n as f64 / 50_000.0);
    let mut template = crate::bench::template_exception(now)?;
    template.waives = vec![waiver_core::Waived::DefaultDeny];
    template.scope = waiver_core::Scope {
        actions: vec!["read".into()],
        resources: vec![waiver_core::ResourceScope {
            entity: "Bucket:logs".parse().map_err(fail)?,
            descendants: false,
        }],
    };
    let load_started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let mut batch = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let mut e = template.clone();
            e.subject = format!("ServiceAccount:sa{i}").parse().map_err(fail)?;
            e.starts_at = now;
            e.expires_at = now + lead + jiff::SignedDuration::from_secs_f64(spread * i as f64 / n.max(1) as f64);
            e.review.next_due = e.expires_at + jiff::SignedDuration::from_hours(24);
            batch.push(e);
        }
        store
            .commit(Box::new(move |alloc| {
                let mut commit = Commit::default();
                for mut e in batch {
                    e.id = alloc.exception_id();
                    // Every write is sealed by an event, as the service writes them.
                    commit.events.push(waiver_core::audit::EventDraft {
                        at: e.created_at,
                        actor: waiver_core::Principal::system(),
                        event_type: "exception.imported".into(),
                        exception_id: Some(e.id),
                        data: serde_json::json!({"bench": "an exception coming due"}),
                    });
                    commit.exceptions.push(Write::insert(e));
                }
                commit
            }))
            .await?;
    }
    let load_s = load_started.elapsed().as_secs_f64();
    let deadline = Instant::now() + std::time::Duration::from_secs_f64(lead.as_secs_f64() + spread + 5.0);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut recorded = 0;
    let mut slowest_run = 0.0f64;
    while Instant::now() < deadline && recorded < n {
        tick.tick().await;
        let t = Instant::now();
        recorded += service.record_expiries().await?.len();
        slowest_run = slowest_run.max(t.elapsed().as_secs_f64());
    }
    let mut lags = Vec::with_capacity(n);
    let mut after = 0;
    loop {
        let events = store.events(after, 10_000).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        for e in events.iter().filter(|e| e.event_type == "exception.expired") {
            let Some(id) = e.exception_id.as_deref().and_then(|id| id.parse().ok()) else { continue };
            if let Some(x) = store.exception(id).await? {
                let Ok(at) = e.at.parse::<jiff::Timestamp>() else { continue };
                lags.push(at.duration_since(x.expires_at).as_secs_f64());
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    let open = store
        .exceptions(&ExceptionFilter { states: Some(vec![waiver_core::State::Approved]), ..Default::default() })
        .await?
        .len();
    let result = json!({
        "exceptions": n, "spread_seconds": spread, "recorded": lags.len(), "unrecorded": open,
        "lag_p50_s": percentile(&lags, 0.5), "lag_p99_s": percentile(&lags, 0.99), "lag_max_s": lags.last().copied().unwrap_or(0.0),
        "slowest_run_s": slowest_run, "load_s": load_s,
    });
    out.json(&result);
    out.say(format!(
        "{n} exceptions expiring over {spread:.0} s: {} expiry events recorded, lag p50 {:.3} s, p99 {:.3} s, max {:.3} s (slowest job run {:.3} s; {open} left unrecorded)",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0),
        slowest_run,
    ));
    Ok(if open == 0 && lags.last().is_some_and(|m| *m <= 1.0) { 0 } else { 1 })
}

/// `waiver bench ceiling`: the most an HTTP decision can be on this machine and stack. It
/// reads and parses each AuthZEN evaluation as waiver does and answers `{"decision":true}`,
/// deciding nothing (no layers, no engine, no authentication).
pub async fn ceiling(listen: &str) -> Result<u8, CliError> {
    use axum::{body::Body, http::StatusCode, response::IntoResponse, routing::post};
    async fn evaluation(body: Body) -> axum::response::Response {
        let Ok(bytes) = axum::body::to_bytes(body, waiver_http::MAX_BODY_BYTES).await else {
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        };
        match serde_json::from_slice::<waiver_proto::authzen::EvaluationRequest>(&bytes) {
            Ok(_) => ([(axum::http::header::CONTENT_TYPE, "application/json")], "{\"decision\":true}").into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    let router = axum::Router::new().route("/access/v1/evaluation", post(evaluation));
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(fail)?;
    eprintln!("ceiling server on http://{}", listener.local_addr().map_err(fail)?);
    waiver_http::serve_with_listener(listener, router, std::future::pending()).await.map_err(fail)?;
    Ok(0)
}
