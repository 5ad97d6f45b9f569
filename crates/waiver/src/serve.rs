//! `waiver serve`, `waiver check` and `waiver baseline`: the decision side of the binary.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use waiver_engine::{Baseline, DecisionRequest, Snapshot, Target};
use waiver_http::{DecisionAuth, DecisionState};
use waiver_store::ExceptionFilter;

use crate::{
    app::{self, DATABASE_FILE},
    cli::{CheckArgs, Cli, DecisionAuthArg, ServeArgs},
    clock::SystemClock,
    commands::CliError,
    output::Printer,
};

/// The data dir's baseline directory.
pub fn baseline_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("baseline")
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Loads a baseline from `DIR/*.cedar` (in name order), `DIR/*.cedarschema` and
/// `DIR/entities.json`, refusing it with Cedar's diagnostics if invalid.
pub fn load_baseline_dir(dir: &Path) -> Result<Baseline, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("cannot read the baseline directory {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut policies = String::new();
    let mut schema = None;
    for path in &paths {
        match path.extension().and_then(|e| e.to_str()) {
            Some("cedar") => {
                policies.push_str(&read(path)?);
                policies.push('\n');
            }
            Some("cedarschema") if schema.is_none() => schema = Some(read(path)?),
            Some("cedarschema") => {
                return Err(CliError::Usage(format!("{} holds more than one .cedarschema file", dir.display())));
            }
            _ => {}
        }
    }
    if policies.trim().is_empty() {
        return Err(CliError::Usage(format!("{} holds no .cedar policy files", dir.display())));
    }
    let entities_path = dir.join("entities.json");
    let entities = if entities_path.exists() { Some(read(&entities_path)?) } else { None };
    Baseline::parse(&policies, schema.as_deref(), entities.as_deref())
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))
}

/// The snapshot for the current store contents: compiled from every record's terms, each
/// checked against its seal. The whole records (reports, the UI's register) are loaded
/// after the node is ready ([`load_records`]); changes applied meanwhile are kept for it.
async fn load_snapshot(
    service: Option<&waiver_service::Service>,
    baseline: &Arc<Baseline>,
) -> Result<Snapshot, CliError> {
    let Some(service) = service else {
        return Ok(Snapshot::new(baseline.clone(), std::iter::empty::<waiver_core::Exception>()));
    };
    service.records().begin_loading();
    let snapshot = compile_from_store(service.store().as_ref(), baseline).await?;
    // Offboarded identities are denied whatever the baseline says: the inventory is part of
    // the snapshot.
    let identities = service.store().identities().await?;
    let tampered = waiver_http::tampered_identities(service.store().as_ref());
    Ok(snapshot.with_inventory(&identities, &tampered))
}

/// The store's exceptions compiled against `baseline` from their terms: each page is
/// compiled on a thread of its own as it arrives, while the store reads the next.
pub(crate) async fn compile_from_store(
    store: &dyn waiver_store::StoreRead,
    baseline: &Arc<Baseline>,
) -> Result<Snapshot, CliError> {
    // From the newest checkpoint and the records changed since, if there is one that
    // matches its seal; otherwise (or if it does not) from every record.
    let (pages, compiling) = compile_pages(baseline);
    let mut send = |page| {
        // Only fails once the compiling thread is gone, which the join reports.
        let _ = pages.send(page);
    };
    match waiver_store::checkpoint::load_each(store, &mut send).await {
        Ok(Some(loaded)) => {
            drop(pages);
            let snapshot = joined(compiling).await?;
            tracing::info!(
                exceptions = loaded.count,
                checkpoint = loaded.sealed_by,
                changed_since = loaded.changed,
                "loaded the register from its checkpoint"
            );
            return Ok(snapshot);
        }
        Ok(None) => {}
        Err(waiver_store::StoreError::Tampered(t)) => {
            tracing::error!(reason = %t, "the register checkpoint does not match the audit log; loading every record instead");
        }
        Err(e) => return Err(e.into()),
    }
    drop(pages);
    // What a refused checkpoint handed over is dropped with its builder.
    let _ = compiling.await;
    compile_from_records(store, baseline).await
}

/// The store's exceptions compiled from every record's terms, each checked against its seal.
pub(crate) async fn compile_from_records(
    store: &dyn waiver_store::StoreRead,
    baseline: &Arc<Baseline>,
) -> Result<Snapshot, CliError> {
    let (pages, compiling) = compile_pages(baseline);
    let read = store
        .exception_terms_each(&mut |page| {
            let _ = pages.send(page);
        })
        .await;
    drop(pages);
    let snapshot = joined(compiling).await?;
    read?;
    Ok(snapshot)
}

type Compiling = tokio::task::JoinHandle<Snapshot>;

/// A thread compiling each page of terms sent to it, in order, into a snapshot.
fn compile_pages(baseline: &Arc<Baseline>) -> (std::sync::mpsc::Sender<Vec<waiver_core::Terms>>, Compiling) {
    let (pages, arriving) = std::sync::mpsc::channel::<Vec<waiver_core::Terms>>();
    let mut builder = Snapshot::builder(baseline.clone());
    let compiling = tokio::task::spawn_blocking(move || {
        for page in arriving {
            for terms in &page {
                builder.add(terms);
            }
        }
        builder.finish()
    });
    (pages, compiling)
}

async fn joined(compiling: Compiling) -> Result<Snapshot, CliError> {
    compiling.await.map_err(|e| CliError::Failure(anyhow::anyhow!("compiling the register: {e}")))
}

/// Loads the node's in-memory register once it is ready to decide: until it lands, readers
/// read the store.
fn load_records(service: waiver_service::Service) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match service.store().exceptions(&ExceptionFilter::default()).await {
            Ok(all) => {
                let n = all.len();
                let records = service.records().clone();
                match tokio::task::spawn_blocking(move || records.fill(all)).await {
                    Ok(true) => tracing::info!(
                        records = n,
                        ms = started.elapsed().as_millis() as u64,
                        "the register is held in memory"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("cannot hold the register in memory: {e}; reads go to the store");
                        service.records().abandon_loading();
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot load the register into memory: {e}; reads go to the store");
                service.records().abandon_loading();
            }
        }
    });
}

/// Serves the decision API — and, with a store, the REST API, the scheduler and webhooks —
/// until Ctrl-C or SIGTERM, then drains in-flight requests.
/// The node configuration file (`--config`): who may sign in and call the API with an
/// identity provider's tokens, and where notifications go. Secrets come from the environment.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    #[serde(default)]
    issuer: Vec<waiver_http::oidc::IssuerConfig>,
    sign_in: Option<waiver_http::oidc::SignInConfig>,
    notify: Option<waiver_service::notify::NotifyConfig>,
}

fn node_config(
    path: Option<&std::path::Path>,
) -> Result<(Option<Arc<waiver_http::oidc::Oidc>>, Option<waiver_service::notify::NotifyConfig>), CliError> {
    let Some(path) = path else { return Ok((None, None)) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the configuration {}: {e}", path.display())))?;
    let config: NodeConfig =
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {}", path.display(), e.message())))?;
    let secret = config.sign_in.as_ref().and_then(|s| std::env::var(&s.client_secret_env).ok());
    let oidc = if config.issuer.is_empty() && config.sign_in.is_none() {
        None
    } else {
        let auth = waiver_http::oidc::AuthConfig { issuers: config.issuer, sign_in: config.sign_in };
        Some(Arc::new(
            waiver_http::oidc::Oidc::new(auth, secret)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
        ))
    };
    if let Some(notify) = &config.notify {
        notify.check().map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    }
    Ok((oidc, config.notify))
}

pub async fn serve(cli: &Cli, args: &ServeArgs, out: &Printer) -> Result<u8, CliError> {
    let (oidc, notify) = node_config(args.config.as_deref())?;
    let has_store = cli.database_url.is_some() || cli.data_dir.join(DATABASE_FILE).exists();
    // With a store, the baseline is the one the log holds in force (a replica needs nothing
    // but `--database-url`); `--baseline DIR` pins another (and the service checks requests
    // against it too). Without a store, the files are all there is.
    let (service, baseline, baseline_source) = if has_store {
        let app = app::open(cli, false).await?;
        let (baseline, source) = match (&args.baseline, app.baseline) {
            (Some(dir), _) => (Arc::new(load_baseline_dir(dir)?), dir.display().to_string()),
            (None, Some(baseline)) => (baseline, "the audit log".to_owned()),
            (None, None) => {
                return Err(CliError::Usage(
                    "the store holds no baseline and the data dir has none: run `waiver baseline set DIR`".into(),
                ));
            }
        };
        (Some(app.service.with_baseline(Ok(baseline.clone()))), baseline, source)
    } else {
        let dir = args.baseline.clone().unwrap_or_else(|| baseline_dir(&cli.data_dir));
        (None, Arc::new(load_baseline_dir(&dir)?), dir.display().to_string())
    };
    let store: Option<Arc<dyn waiver_store::Store>> = service.as_ref().map(|s| s.store().clone());
    // Where the log stands before loading, so the follower misses nothing written meanwhile.
    let start_after = match &store {
        Some(store) => store.last_seq().await?,
        None => 0,
    };
    let snapshot = load_snapshot(service.as_ref(), &baseline).await?;
    let tokens = match &store {
        Some(store) => waiver_http::token_table(store.as_ref()).await?,
        None => HashMap::new(),
    };
    let auth = match args.decision_auth {
        DecisionAuthArg::None => DecisionAuth::None,
        DecisionAuthArg::Token => DecisionAuth::Tokens(Arc::new(ArcSwap::from_pointee(tokens))),
    };
    let mut decisions = DecisionState::new(snapshot, Arc::new(SystemClock), auth);
    decisions.explain = args.explain;
    if let Some(service) = &service {
        decisions.records = service.records().clone();
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Failure(e.into()))?;
    decisions.public_url = Arc::from(args.public_url.clone().unwrap_or_else(|| format!("http://{addr}")));
    // Turned true once HTTP has drained: the tasks that hold what was acknowledged finish.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut draining: Vec<(&str, tokio::task::JoinHandle<()>)> = Vec::new();
    let router = match &service {
        Some(service) => {
            let (recorder, queue) = waiver_http::BreakGlassRecorder::new(65_536);
            decisions.break_glass = Some(recorder);
            decisions.granted = Some(decisions.recent.start());
            // A replica started with only `--database-url` has no data dir yet: the spool
            // (this node's own, never shared) needs one, or break-glass would be refused.
            if let Err(e) = crate::app::create_private_dir(&cli.data_dir) {
                tracing::error!("cannot create the data dir {} for the break-glass spool: {e}", cli.data_dir.display());
            }
            let spool_path = cli.data_dir.join(crate::spool::SPOOL_FILE);
            let spool = crate::spool::run(spool_path, service.clone(), queue, stopping.clone());
            draining.push(("break-glass spool", tokio::spawn(spool)));
            let usage =
                record_usage(service.clone(), decisions.snapshot.clone(), decisions.auth.clone(), stopping.clone());
            draining.push(("usage", tokio::spawn(usage)));
            // A `baseline.set` puts the log's new baseline in force, unless `--baseline` pinned one.
            let follow_baseline = args.baseline.is_none();
            crate::background::follow_log(service.clone(), decisions.clone(), follow_baseline, start_after);
            if args.no_scheduler {
                tracing::info!("scheduler off (--no-scheduler)");
            } else {
                draining.extend(crate::background::start_scheduler(service, &decisions, &stopping));
            }
            let notifier = crate::notify::Notifier::new(notify.unwrap_or_default(), decisions.public_url.clone());
            notifier.set_up(service).await.map_err(|e| CliError::Usage(format!("notifications: {e}")))?;
            if !args.no_scheduler {
                draining.extend(crate::background::start_notifications(service, notifier, &stopping));
            }
            waiver_http::app(waiver_http::ApiState {
                service: service.clone(),
                decisions: decisions.clone(),
                baseline_pinned: args.baseline.is_some(),
                ui: waiver_http::ui::UiOptions {
                    sessions: Default::default(),
                    demo_personas: demo_personas(cli, args),
                    oidc: oidc.clone(),
                    work_counts: Default::default(),
                    submissions: Default::default(),
                },
            })
        }
        None => waiver_http::router(decisions.clone()),
    };
    decisions.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(service) = &service {
        load_records(service.clone());
    }

    let n_exceptions = decisions.snapshot.load().n_exceptions();
    out.json(
        &json!({ "listening": format!("http://{addr}"), "baseline": baseline_source, "policies": baseline.n_policies(),
                      "exceptions": n_exceptions, "rest": service.is_some() }),
    );
    out.say(format!("waiver listening on http://{addr}"));
    out.say(format!(
        "  baseline from {} ({} policies), {} exceptions, decision auth {:?}{}",
        baseline_source,
        baseline.n_policies(),
        n_exceptions,
        args.decision_auth,
        if service.is_some() { ", REST API at /api/v1 (OpenAPI: /api/v1/openapi.json)" } else { "" }
    ));
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let limits = waiver_http::ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_timeout: Duration::from_secs(u64::from(args.header_timeout)),
        ..waiver_http::ConnectionLimits::default()
    };
    waiver_http::serve_limited(listener, router, limits, shutdown_signal())
        .await
        .map_err(|e| CliError::Failure(e.into()))?;
    tracing::info!("in-flight requests drained");
    // Then what they left behind: break-glass uses and usage counts reach the store.
    let _ = stop.send(true);
    for (what, task) in draining {
        match tokio::time::timeout(DRAIN_WITHIN, task).await {
            Ok(_) => tracing::info!("{what} drained"),
            Err(_) => tracing::warn!("{what} did not drain within {DRAIN_WITHIN:?}"),
        }
    }
    Ok(0)
}

/// The demo's personas for the sign-in page, with `--demo-logins` (set by `waiver demo`).
fn demo_personas(cli: &Cli, args: &ServeArgs) -> Option<Arc<Vec<waiver_http::ui::DemoPersona>>> {
    if !args.demo_logins {
        return None;
    }
    match crate::demo::ui_personas(&cli.data_dir) {
        Ok(personas) => Some(Arc::new(personas)),
        Err(e) => {
            tracing::warn!("no demo personas for the sign-in page: {e}");
            None
        }
    }
}

/// How long shutdown waits for each background task to finish what it holds.
const DRAIN_WITHIN: Duration = Duration::from_secs(20);

/// Flushes decision counts to the exceptions' `usage` every second, in the background,
/// never on the decision path; once more when `stop` turns true.
async fn record_usage(
    service: waiver_service::Service,
    snapshot: Arc<ArcSwap<Snapshot>>,
    auth: waiver_http::DecisionAuth,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut since = 0i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                flush_usage(&service, &snapshot).await;
                since = flush_token_uses(&service, &auth, since).await;
            }
            _ = stop.changed() => break,
        }
    }
    flush_usage(&service, &snapshot).await;
    flush_token_uses(&service, &auth, since).await;
}

/// Writes when tokens were last used (REST and UI from the service, decisions from the
/// token table's atomics); returns the next `since`. Uses are re-sent with a few seconds of
/// overlap: the store keeps the latest, so a use racing a flush is never lost.
async fn flush_token_uses(service: &waiver_service::Service, auth: &waiver_http::DecisionAuth, since: i64) -> i64 {
    let started = service.now().as_microsecond();
    let decided = waiver_http::decision_token_uses(auth, since);
    if let Err(e) = service.flush_token_uses(decided).await {
        tracing::warn!("cannot record when tokens were last used: {e}");
        return since;
    }
    started - 5_000_000
}

async fn flush_usage(service: &waiver_service::Service, snapshot: &ArcSwap<Snapshot>) {
    use std::sync::atomic::Ordering;
    let current = snapshot.load_full();
    // Only what was granted through since the last flush (queued by the grant itself): an
    // idle node flushes nothing, at any register size.
    for (id, counter) in current.take_used() {
        let count = counter.count.load(Ordering::SeqCst);
        let flushed = counter.flushed.load(Ordering::Relaxed);
        if count == flushed {
            continue;
        }
        let last = counter.last_used_micros.load(Ordering::SeqCst);
        let Ok(last) = jiff::Timestamp::from_microsecond(last) else { continue };
        // The bitmap is cumulative: OR-ing it again is harmless.
        let scope_used = counter.scope_used.load(Ordering::SeqCst);
        if service.record_usage(id, count - flushed, last, scope_used).await.is_ok() {
            counter.flushed.store(count, Ordering::Relaxed);
        } else {
            current.mark_used(id);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn target(flag: &str, value: &str) -> Result<Target, CliError> {
    let entity: waiver_core::EntityRef =
        value.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(format!("{flag}: {e}")))?;
    Ok(Target { entity_type: entity.entity_type().to_string(), id: entity.id().to_owned(), properties: None })
}

/// `waiver check`: one decision, explained.
pub async fn check(cli: &Cli, args: &CheckArgs, out: &Printer) -> Result<u8, CliError> {
    let baseline_path = args.baseline.clone().unwrap_or_else(|| baseline_dir(&cli.data_dir));
    let baseline = Arc::new(load_baseline_dir(&baseline_path)?);
    let app = app::open(cli, false).await?;
    let snapshot = load_snapshot(Some(&app.service), &baseline).await?;
    let context = match &args.context {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--context: {e}")))?,
    };
    let request = DecisionRequest {
        subject: target("--subject", &args.subject)?,
        action: args.action.clone(),
        resource: target("--resource", &args.resource)?,
        context,
    };
    let decision = snapshot.decide(&request, app.service.now(), true).map_err(|e| CliError::Usage(e.to_string()))?;
    out.json(&json!({
        "decision": decision.allowed,
        "reasons": decision.reasons,
        "exception": decision.exception.as_ref().map(|g| json!({
            "id": g.id.to_string(), "expires_at": g.expires_at.to_string(), "owner": g.owner, "obligations": g.obligations,
        })),
        "near_misses": decision.near_misses.iter().map(|m| json!({ "exception": m.exception.to_string(), "why": m.why })).collect::<Vec<_>>(),
    }));
    if !out.is_json() {
        let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
        outln!("{verdict}  {} {} {}", args.subject, args.action, args.resource);
        match (&decision.exception, decision.allowed) {
            (Some(grant), _) => {
                outln!("  granted by {} (owner {}, expires {})", grant.id, grant.owner, grant.expires_at);
                outln!("  waiving: {}", decision.reasons.join(", "));
                if !grant.obligations.is_empty() {
                    outln!("  obligations: {}", grant.obligations.join(", "));
                }
            }
            (None, true) => outln!("  permitted by: {}", decision.reasons.join(", ")),
            (None, false) => outln!("  denied by: {}", decision.reasons.join(", ")),
        }
        for miss in &decision.near_misses {
            outln!("  near miss {}: {}", miss.exception, miss.why);
        }
    }
    Ok(if decision.allowed { 0 } else { 1 })
}

/// `waiver baseline set|show`: the baseline is an artifact of the log.
pub async fn baseline(cli: &Cli, command: &crate::cli::BaselineCommand, out: &Printer) -> Result<u8, CliError> {
    match command {
        crate::cli::BaselineCommand::Show { at } => {
            let app = app::open(cli, false).await?;
            let actor = app::local_actor(cli)?;
            let held = app.service.artifact_at(&actor, "baseline", *at).await?.ok_or_else(|| {
                CliError::Usage(match at {
                    Some(seq) => format!("no baseline was in force at event {seq}"),
                    None => "the log holds no baseline: run `waiver baseline set DIR`".to_owned(),
                })
            })?;
            let baseline = waiver_service::baseline_from_artifact(&held.body)
                .map_err(|e| CliError::Failure(anyhow::anyhow!("the stored baseline does not parse: {e}")))?;
            let (policies, schema, entities) = baseline.sources();
            out.json(&json!({ "set_by_event": held.seq, "sha256": held.digest, "policy_ids": baseline.policy_ids(),
                              "policies": policies, "schema": schema,
                              "entities": entities.map(|e| serde_json::from_str::<Value>(e).unwrap_or(Value::Null)) }));
            out.say(format!("# in force since event {} (sha256 {})", held.seq, held.digest));
            out.say(policies.trim_end());
            Ok(0)
        }
        crate::cli::BaselineCommand::Set { dir: source } => {
            let next = Arc::new(load_baseline_dir(source)?);
            let app = app::open(cli, false).await?;
            let actor = app::local_actor(cli)?;
            let summary = app.service.check_baseline(&actor, &next).await?;
            let seq = app.service.record_baseline(&actor, &next, &summary).await?;
            out.json(&json!({ "policies": next.n_policies(), "policy_ids": next.policy_ids(), "event": seq }));
            out.say(format!("baseline replaced: {} policies (event {seq})", next.n_policies()));
            Ok(0)
        }
    }
}

/// `waiver rules set|show`: the governance rules are an artifact of the log.
pub async fn rules(cli: &Cli, command: &crate::cli::RulesCommand, out: &Printer) -> Result<u8, CliError> {
    let app = app::open(cli, false).await?;
    let actor = app::local_actor(cli)?;
    match command {
        crate::cli::RulesCommand::Show { at } => {
            let held = app.service.artifact_at(&actor, "rules", *at).await?;
            match held {
                Some(held) => {
                    out.json(&json!({ "set_by_event": held.seq, "sha256": held.digest, "rules": held.body }));
                    out.say(format!("# in force since event {} (sha256 {})", held.seq, held.digest));
                    out.say(held.body.trim_end());
                }
                None => {
                    out.json(&json!({ "set_by_event": null, "rules": null }));
                    out.say("# no rules recorded: the defaults are in force");
                }
            }
            Ok(0)
        }
        crate::cli::RulesCommand::Set { file } => {
            let text = read(file)?;
            let seq = app.service.record_rules(&actor, &text).await?;
            out.json(&json!({ "event": seq }));
            out.say(format!("rules replaced (event {seq}); every node follows within its log poll"));
            Ok(0)
        }
    }
}
