//! `waiver init` and `waiver demo`: a starter data dir, and a realistic small company.
//!
//! The demo organisation is built by replaying a scripted history through the service with
//! a [`ManualClock`], in time order, so every exception got where it is the way a real one
//! would: the same rules, the same separation of duties, the same events in the chain.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use waiver_core::{Actor, EntityRef, ExceptionId, ManualClock, Principal, Role};
use waiver_proto as proto;
use waiver_service::{Action, Service};

use waiver_store_sqlite::SqliteStore;

use crate::{
    app::{self, App, DATABASE_FILE, RULES_FILE},
    cli::{Cli, DemoArgs},
    clock::SystemClock,
    commands::CliError,
    output::Printer,
};

/// The demo baseline, also the starter baseline `waiver init` writes.
pub const DEMO_POLICIES: &str = include_str!("../../../examples/demo/baseline/policies.cedar");
pub const DEMO_ENTITIES: &str = include_str!("../../../examples/demo/baseline/entities.json");
pub const TOKENS_FILE: &str = "demo-tokens.json";

fn write_if_absent(path: &Path, text: &str) -> Result<bool, CliError> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

fn principal(name: &str) -> Result<Principal, CliError> {
    Principal::parse("principal", name).map_err(|e| CliError::Usage(e.to_string()))
}

async fn is_empty(app: &App) -> Result<bool, CliError> {
    Ok(app.store.events(0, 1).await?.is_empty())
}

/// `waiver init`: rules, baseline and one admin token, printed once.
pub async fn init(app: &App, cli: &Cli, admin: &str, out: &Printer) -> Result<u8, CliError> {
    if !is_empty(app).await? {
        return Err(CliError::Usage(format!(
            "{} is already initialised; issue more tokens with `waiver token issue`",
            app.data_dir.display()
        )));
    }
    let _ = cli;
    write_if_absent(&app.data_dir.join(RULES_FILE), waiver_core::rules::DEFAULT_RULES_TOML)?;
    write_if_absent(&app.data_dir.join("baseline/policies.cedar"), DEMO_POLICIES)?;
    write_if_absent(&app.data_dir.join("baseline/entities.json"), DEMO_ENTITIES)?;
    // The files are the log's first baseline and rules; from here on `baseline set` and
    // `rules set` change them.
    app::adopt_artifacts(&app.service, &app.data_dir).await?;
    let bootstrap = Actor::new(Principal::system(), &[Role::Admin]);
    let issued = app.service.issue_token(&bootstrap, principal(admin)?, &[Role::Admin], "initial admin token").await?;
    out.json(&json!({
        "data_dir": app.data_dir, "rules": app.data_dir.join(RULES_FILE),
        "baseline": app.data_dir.join("baseline"), "admin_token": issued.secret, "token_id": issued.record.id,
    }));
    out.say(format!("initialised {}", app.data_dir.display()));
    out.say(format!(
        "  governance rules  {} (recorded in the audit log; change them with `waiver rules set FILE`)",
        app.data_dir.join(RULES_FILE).display()
    ));
    out.say(format!(
        "  baseline          {} (recorded in the audit log; change it with `waiver baseline set DIR`)",
        app.data_dir.join("baseline").display()
    ));
    out.say(format!("  admin token       {}   (shown once; stored hashed)", issued.secret));
    Ok(0)
}

/// Builds the demo organisation if the data dir has no database yet. The build goes to a
/// scratch file renamed into place only when complete, so a failed build leaves nothing
/// behind and the next run starts over. Returns whether it built.
pub async fn ensure_built(cli: &Cli) -> Result<bool, CliError> {
    let data_dir = &cli.data_dir;
    if cli.database_url.is_some() {
        let app = app::open(cli, true).await?;
        if !is_empty(&app).await? {
            return Ok(false);
        }
        write_if_absent(&data_dir.join(RULES_FILE), waiver_core::rules::DEFAULT_RULES_TOML)?;
        write_if_absent(&data_dir.join("baseline/policies.cedar"), DEMO_POLICIES)?;
        write_if_absent(&data_dir.join("baseline/entities.json"), DEMO_ENTITIES)?;
        build(&app).await?;
        return Ok(true);
    }
    let path = data_dir.join(DATABASE_FILE);
    if path.exists() {
        return Ok(false);
    }
    let fail = |what: &str, e: std::io::Error| CliError::Failure(anyhow::anyhow!("cannot {what}: {e}"));
    crate::app::create_private_dir(data_dir).map_err(|e| fail("create the data dir", e))?;
    let scratch = data_dir.join(format!("{DATABASE_FILE}.building"));
    for leftover in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("{DATABASE_FILE}.building{leftover}")));
    }
    write_if_absent(&data_dir.join(RULES_FILE), waiver_core::rules::DEFAULT_RULES_TOML)?;
    write_if_absent(&data_dir.join("baseline/policies.cedar"), DEMO_POLICIES)?;
    write_if_absent(&data_dir.join("baseline/entities.json"), DEMO_ENTITIES)?;
    let store = Arc::new(SqliteStore::open(&scratch).await?);
    let rules = app::load_rules(data_dir)?;
    let baseline = waiver_engine::Baseline::parse(DEMO_POLICIES, None, Some(DEMO_ENTITIES))
        .map_err(|e| CliError::Failure(anyhow::anyhow!("the demo baseline is invalid: {e}")))?;
    let app = App {
        service: Service::new(store.clone(), rules, Arc::new(SystemClock)).with_baseline(Ok(Arc::new(baseline))),
        store: store.clone(),
        data_dir: data_dir.clone(),
        baseline: None,
    };
    build(&app).await?;
    // The rename moves the database file only: everything must be in it, not in the WAL.
    store.checkpoint().await?;
    store.close().await;
    std::fs::rename(&scratch, &path).map_err(|e| fail("move the demo database into place", e))?;
    Ok(true)
}

/// `waiver demo`: summarises the demo organisation's register (see [`ensure_built`]).
pub async fn run(app: &App, built: bool, args: &DemoArgs, out: &Printer) -> Result<u8, CliError> {
    let admin = Actor::new(Principal::system(), &[Role::Admin]);
    let now = app.service.now();
    let exceptions = app.service.list(&admin, &waiver_service::ListQuery::default()).await?;
    let identities = app.service.identities(&admin).await?;
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &exceptions {
        *by_state.entry(e.effective_state(now).as_str()).or_default() += 1;
    }
    let overdue = exceptions.iter().filter(|e| e.review_overdue(now)).count();
    let expiring = exceptions
        .iter()
        .filter(|e| e.grants(now) && e.expires_at.duration_since(now) < SignedDuration::from_hours(24))
        .count();
    let verified = app.store.verify_chain().await?;
    let tokens = app.data_dir.join(TOKENS_FILE);
    out.json(&json!({
        "data_dir": app.data_dir, "built": built, "identities": identities.len(), "exceptions": exceptions.len(),
        "by_state": by_state, "reviews_overdue": overdue, "expiring_within_24h": expiring,
        "audit_events": verified.as_ref().map(|h| h.n_events).unwrap_or(0), "tokens": tokens,
        "listen": args.listen,
    }));
    if !out.is_json() {
        let verb = if built { "built" } else { "found" };
        let dir = app.data_dir.display();
        let tokens_path = tokens.display();
        if !args.no_serve {
            let base = format!("http://{}", args.listen);
            outln!("waiver demo: serving on {base}  (Ctrl-C stops it)");
            outln!("  open {base}/ui/ in a browser and sign in as any persona (listed on the sign-in page)");
            outln!("  tokens for each persona: {tokens_path}");
            outln!("  OpenAPI: {base}/api/v1/openapi.json   metrics: {base}/metrics");
            outln!();
            outln!("try, in another terminal (the README walks the whole tour):");
            outln!("  T={tokens_path}; tok() {{ jq -r .$1.token $T; }}");
            outln!(
                "  curl -s {base}/api/v1/exceptions?state=active -H \"Authorization: Bearer $(tok auditor)\" | jq '.items[].id'"
            );
            outln!(
                "  curl -s {base}/access/v1/evaluation -H \"Authorization: Bearer $(tok pep)\" \\\n       -d '{{\"subject\":{{\"type\":\"ServiceAccount\",\"id\":\"billing-etl\"}},\"action\":{{\"name\":\"connect\"}},\"resource\":{{\"type\":\"Database\",\"id\":\"orders-prod\"}}}}'"
            );
            outln!();
        }
        outln!("the demo organisation ({verb} in {dir}):");
        outln!("  {} identities, {} exceptions", identities.len(), exceptions.len());
        let states: Vec<_> = by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
        outln!("  by state: {}", states.join(", "));
        outln!("  reviews overdue: {overdue}; expiring within 24h: {expiring}");
        match &verified {
            Ok(head) => outln!("  audit chain: {} events, verified, head {}", head.n_events, head.head_hash),
            Err(broken) => outln!("  audit chain: BROKEN at event {}: {}", broken.seq, broken.reason),
        }
        outln!(
            "  personas: admin alex, requester dana, approver lee, owner sam, responder riley, auditor avery, pep gateway"
        );
        outln!("  the CLI works on the same data: waiver --data-dir {dir} exception list --state active");
        outln!();
    }
    Ok(0)
}

/// The people of the demo company; `persona` is the key in demo-tokens.json.
const PERSONAS: &[(&str, &str, &[Role])] = &[
    ("admin", "alex", &[Role::Admin]),
    ("requester", "dana", &[Role::Requester]),
    ("approver", "lee", &[Role::Approver]),
    ("owner", "sam", &[Role::Requester]),
    ("responder", "riley", &[Role::Responder, Role::Requester]),
    ("auditor", "avery", &[Role::Auditor]),
    ("pep", "gateway", &[Role::Pep]),
];

/// What each persona is for, on the UI's sign-in page.
fn blurb(persona: &str) -> &'static str {
    match persona {
        "admin" => "runs waiver: tokens, identities, baseline",
        "requester" => "an engineer who files requests",
        "approver" => "approves or rejects; never their own",
        "owner" => "owns exceptions: attests, renews, revokes",
        "responder" => "on call: may break glass",
        "auditor" => "reads everything, changes nothing",
        _ => "",
    }
}

/// The personas of `demo-tokens.json` for the UI's sign-in page (not the decision-only `pep`).
pub fn ui_personas(data_dir: &Path) -> Result<Vec<waiver_http::ui::DemoPersona>, String> {
    let path = data_dir.join(TOKENS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    Ok(PERSONAS
        .iter()
        .filter(|(_, _, roles)| *roles != [Role::Pep])
        .filter_map(|(persona, name, roles)| {
            let token = tokens.get(*persona)?.get("token")?.as_str()?.to_owned();
            Some(waiver_http::ui::DemoPersona {
                persona: (*persona).to_owned(),
                principal: (*name).to_owned(),
                roles: roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                blurb: blurb(persona).to_owned(),
                token,
            })
        })
        .collect())
}

/// (entity type, id, kind, credential type, team, attributes) for the inventory.
fn inventory() -> Vec<(&'static str, String, &'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    let groups: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "ServiceAccount",
            "service_account",
            &["long_lived_secret", "workload_token"],
            &[
                "ci-deployer",
                "billing-etl",
                "payments-api",
                "ledger-sync",
                "backup-runner",
                "metrics-exporter",
                "search-indexer",
                "email-sender",
                "invoice-renderer",
                "fraud-scorer",
                "kyc-checker",
                "report-builder",
                "analytics-loader",
                "cache-warmer",
                "cert-rotator",
                "dns-updater",
                "log-shipper",
                "queue-drainer",
                "image-builder",
                "vuln-scanner",
            ],
        ),
        (
            "Pipeline",
            "pipeline",
            &["jit_credential"],
            &[
                "github-actions-web",
                "gitlab-ci-infra",
                "jenkins-legacy",
                "argo-workflows",
                "terraform-cloud",
                "release-train",
                "db-migrations",
                "docs-publisher",
            ],
        ),
        (
            "Agent",
            "agent",
            &["agent_token"],
            &[
                "support-copilot",
                "code-review-agent",
                "incident-triage-agent",
                "sales-research-agent",
                "data-analyst-agent",
                "oncall-summariser",
                "security-scanner-agent",
                "finance-reconciler-agent",
            ],
        ),
        (
            "Workload",
            "workload",
            &["workload_token", "certificate"],
            &[
                "spiffe://prod/ns/pay/sa/api",
                "spiffe://prod/ns/pay/sa/worker",
                "spiffe://prod/ns/ledger/sa/api",
                "spiffe://prod/ns/search/sa/query",
                "spiffe://staging/ns/pay/sa/api",
                "spiffe://prod/ns/auth/sa/token-service",
                "spiffe://prod/ns/edge/sa/gateway",
                "spiffe://prod/ns/ml/sa/trainer",
            ],
        ),
        (
            "ApiKey",
            "api_key",
            &["api_key"],
            &[
                "stripe-webhooks",
                "datadog-ingest",
                "pagerduty-events",
                "slack-notifier",
                "twilio-sms",
                "sendgrid-mail",
                "segment-track",
                "s3-uploader",
            ],
        ),
        (
            "Bot",
            "bot",
            &["api_key", "long_lived_secret"],
            &["dependabot", "renovate", "release-notes-bot", "triage-bot", "backport-bot", "stale-bot"],
        ),
        (
            "ServiceAccount",
            "other",
            &["long_lived_secret", "other"],
            &["legacy-ftp", "hr-sync", "vendor-bridge-acme", "vendor-bridge-globex", "partner-sftp", "old-crm-export"],
        ),
    ];
    let teams = ["platform", "payments", "data", "ml", "security", "support", "ops"];
    let mut n = 0usize;
    for (entity_type, kind, credentials, names) in groups {
        for (idx, name) in names.iter().enumerate() {
            let credential = credentials.get(idx % credentials.len()).copied().unwrap_or("other");
            let team = teams.get(n % teams.len()).copied().unwrap_or("platform");
            out.push((*entity_type, (*name).to_owned(), *kind, credential, team));
            n += 1;
        }
    }
    out
}

/// How an exception's story goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Story {
    Pending,
    Rejected,
    Withdrawn,
    Active,
    Future,
    Expired,
    Revoked,
    Renewed,
    RenewalPending,
    Attested,
    Suspended,
    Offboarded,
    BreakGlassActive,
    BreakGlassAwaiting,
    BreakGlassClosed,
    /// Approved narrowed: a shorter expiry and one action fewer than asked.
    Narrowed,
    /// Approved, then its owner handed it to another person, who accepted.
    Transferred,
}

/// One scripted exception: subject, waives, action, resource, risk, owner, story, filed
/// `ago` days before now, lasting `days`.
struct Script {
    subject: &'static str,
    waives: &'static str,
    action: &'static str,
    resource: &'static str,
    risk: &'static str,
    owner: &'static str,
    requester: &'static str,
    story: Story,
    ago: f64,
    days: f64,
}

#[expect(clippy::too_many_arguments, reason = "a table row constructor: one argument per column")]
const fn s(
    subject: &'static str,
    waives: &'static str,
    action: &'static str,
    resource: &'static str,
    risk: &'static str,
    owner: &'static str,
    requester: &'static str,
    story: Story,
    ago: f64,
    days: f64,
) -> Script {
    Script { subject, waives, action, resource, risk, owner, requester, story, ago, days }
}

use Story::*;

#[rustfmt::skip]
const SCRIPTS: &[Script] = &[
    // Change windows: the freeze that keeps needing exceptions.
    s("ServiceAccount:ci-deployer", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "high", "sam", "dana", Active, 5.0, 21.0),
    s("Pipeline:release-train", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "high", "sam", "dana", Renewed, 25.0, 20.0),
    s("Pipeline:github-actions-web", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "medium", "kim", "chris", Expired, 80.0, 30.0),
    s("Pipeline:terraform-cloud", "forbid-prod-writes-outside-change-window", "write", "Environment:prod", "critical", "jo", "robin", Active, 2.0, 6.0),
    s("Pipeline:db-migrations", "forbid-prod-writes-outside-change-window", "write", "Environment:prod", "high", "sam", "dana", ReviewOverdue, 20.0, 28.0),
    s("Pipeline:argo-workflows", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "medium", "pat", "chris", Pending, 1.0, 14.0),
    s("Pipeline:gitlab-ci-infra", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "medium", "kim", "robin", Rejected, 12.0, 14.0),
    // Precedent: direct production database access, again and again.
    s("ServiceAccount:billing-etl", "forbid-prod-db-direct-access", "connect", "Database:orders-prod", "high", "sam", "dana", Active, 10.0, 28.0),
    s("ServiceAccount:ledger-sync", "forbid-prod-db-direct-access", "connect", "Database:ledger-prod", "high", "kim", "chris", Active, 8.0, 28.0),
    s("ServiceAccount:report-builder", "forbid-prod-db-direct-access", "connect", "Database:orders-prod", "high", "jo", "robin", Active, 6.0, 28.0),
    s("ServiceAccount:analytics-loader", "forbid-prod-db-direct-access", "connect", "Database:orders-prod", "high", "pat", "dana", Active, 4.0, 28.0),
    s("ServiceAccount:fraud-scorer", "forbid-prod-db-direct-access", "connect", "Database:payments-prod", "high", "sam", "chris", Attested, 18.0, 29.0),
    s("ServiceAccount:kyc-checker", "forbid-prod-db-direct-access", "connect", "Database:customers-prod", "high", "kim", "robin", Expired, 70.0, 30.0),
    // Secrets and long-lived credentials.
    s("ServiceAccount:backup-runner", "forbid-secrets-to-long-lived-credentials", "read_secret", "Secret:backup-encryption-key", "high", "sam", "dana", Active, 3.0, 14.0),
    s("Bot:release-notes-bot", "forbid-secrets-to-long-lived-credentials", "read_secret", "Secret:github-app-key", "medium", "jo", "chris", Withdrawn, 9.0, 20.0),
    s("ServiceAccount:legacy-ftp", "forbid-secrets-to-long-lived-credentials", "read_secret", "Secret:partner-sftp-password", "critical", "pat", "robin", Revoked, 15.0, 6.0),
    s("ServiceAccount:hr-sync", "default-deny", "read_secret", "Secret:workday-api-key", "medium", "kim", "dana", Suspended, 11.0, 25.0),
    s("ApiKey:stripe-webhooks", "default-deny", "read_secret", "Secret:stripe-signing-secret", "low", "sam", "chris", ExpiringSoon, 6.0, 6.8),
    s("ApiKey:datadog-ingest", "default-deny", "write", "Environment:prod", "low", "jo", "dana", Active, 30.0, 29.0),
    // Data egress and PII.
    s("ServiceAccount:email-sender", "forbid-data-egress-external", "export", "Dataset:marketing-optins", "medium", "pat", "chris", Active, 14.0, 60.0),
    s("Workload:spiffe://prod/ns/ml/sa/trainer", "forbid-pii-without-purpose", "read", "Dataset:customer-events", "high", "kim", "robin", Future, 1.0, 20.0),
    s("ServiceAccount:search-indexer", "forbid-pii-without-purpose", "read", "Dataset:customer-profiles", "medium", "sam", "dana", RenewalPending, 24.0, 28.0),
    s("ApiKey:segment-track", "forbid-data-egress-external", "export", "Dataset:product-analytics", "medium", "jo", "chris", Expired, 100.0, 28.0),
    s("ServiceAccount:vendor-bridge-acme", "forbid-data-egress-external", "export", "Dataset:invoices", "high", "pat", "robin", Offboarded, 20.0, 25.0),
    s("ServiceAccount:vendor-bridge-acme", "default-deny", "read", "Dataset:invoices", "medium", "pat", "robin", Offboarded, 19.0, 25.0),
    // AI agents and their tools.
    s("Agent:support-copilot", "forbid-agent-payments-tools", "invoke_tool", "Tool:refund", "high", "sam", "dana", Active, 2.0, 10.0),
    s("Agent:incident-triage-agent", "forbid-agent-shell", "invoke_tool", "Tool:shell", "critical", "jo", "chris", Revoked, 9.0, 5.0),
    s("Agent:code-review-agent", "forbid-agent-write-prod", "write", "Environment:prod", "high", "kim", "robin", Rejected, 7.0, 7.0),
    s("Agent:data-analyst-agent", "forbid-pii-without-purpose", "read", "Dataset:customer-profiles", "medium", "pat", "dana", Pending, 0.5, 1.0),
    s("Agent:finance-reconciler-agent", "forbid-agent-payments-tools", "invoke_tool", "Tool:ledger-adjust", "critical", "sam", "chris", Active, 1.0, 5.0),
    // Administration and keys.
    s("Workload:spiffe://prod/ns/edge/sa/gateway", "forbid-admin-from-outside", "admin", "Service:edge-config", "high", "kim", "robin", Expired, 50.0, 14.0),
    s("Workload:spiffe://prod/ns/auth/sa/token-service", "forbid-kms-key-deletion", "delete_key", "KmsKey:legacy-signing", "critical", "jo", "dana", Expired, 35.0, 3.0),
    s("ServiceAccount:cert-rotator", "forbid-cross-region-replication", "replicate", "Bucket:certs-eu", "medium", "pat", "chris", Active, 10.0, 28.0),
    s("Workload:spiffe://prod/ns/pay/sa/worker", "default-deny", "connect", "Database:payments-replica", "low", "sam", "robin", Attested, 45.0, 85.0),
    s("Bot:renovate", "default-deny", "write", "Repository:infra", "medium", "kim", "dana", Withdrawn, 3.0, 30.0),
    s("Pipeline:jenkins-legacy", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "medium", "jo", "chris", Offboarded, 16.0, 30.0),
    s("Pipeline:docs-publisher", "default-deny", "write", "Bucket:docs-site", "low", "pat", "robin", Revoked, 25.0, 60.0),
    // Break-glass: incidents.
    s("ServiceAccount:payments-api", "forbid-prod-db-direct-access", "connect", "Database:payments-prod", "critical", "sam", "riley", BreakGlassAwaiting, 1.5, 0.25),
    s("Workload:spiffe://prod/ns/pay/sa/api", "forbid-prod-writes-outside-change-window", "write", "Environment:prod", "high", "kim", "riley", BreakGlassClosed, 12.0, 0.2),
    s("ServiceAccount:queue-drainer", "forbid-prod-writes-outside-change-window", "write", "Environment:prod", "high", "jo", "riley", BreakGlassActive, 0.04, 0.25),
    s("Agent:oncall-summariser", "forbid-agent-shell", "invoke_tool", "Tool:shell", "medium", "pat", "riley", BreakGlassClosed, 30.0, 0.1),
    s("ServiceAccount:dns-updater", "forbid-admin-from-outside", "admin", "Service:dns", "high", "sam", "riley", BreakGlassAwaiting, 5.0, 0.3),
    // Governance at work: a narrowed approval, a handed-over owner, a control outside Cedar.
    s("ServiceAccount:image-builder", "forbid-prod-writes-outside-change-window", "deploy", "Environment:prod", "high", "sam", "dana", Narrowed, 3.0, 14.0),
    s("ServiceAccount:metrics-exporter", "forbid-cross-region-replication", "replicate", "Bucket:metrics-eu", "medium", "sam", "chris", Transferred, 20.0, 60.0),
    s("ServiceAccount:partner-sftp", "control:secret-rotation", "rotate_secret", "Secret:partner-sftp-key", "medium", "pat", "robin", Active, 9.0, 28.0),
];

/// What the demo's security team changed 60 days ago: direct production database access is
/// approved by the DBAs only and filed at `high` or above; KMS key deletion is critical,
/// a week at most, and watched; and the secret-rotation standard joined the control catalog.
fn governed_baseline() -> String {
    DEMO_POLICIES
        .replacen(
            "@id(\"forbid-prod-db-direct-access\")",
            "@id(\"forbid-prod-db-direct-access\")\n@approvers(\"dba\")\n@risk(\"high\")",
            1,
        )
        .replacen(
            "@id(\"forbid-kms-key-deletion\")",
            "@id(\"forbid-kms-key-deletion\")\n@risk(\"critical\")\n@max_duration(\"P7D\")\n@controls(\"monitoring\")",
            1,
        )
}

fn governed_rules() -> String {
    waiver_core::rules::DEFAULT_RULES_TOML
        .replacen("# dba = [\"lee\", \"morgan\"]", "dba = [\"lee\", \"morgan\"]", 1)
        .replacen("# secret-rotation = ", "secret-rotation = ", 1)
}

// Stories used above that are variants of others.
#[allow(non_upper_case_globals)]
const ReviewOverdue: Story = Active;
#[allow(non_upper_case_globals)]
const ExpiringSoon: Story = Active;

/// A scripted step, at an instant.
enum Step {
    File(usize),
    Act(usize, &'static str, Action, &'static str),
    Renew(usize, f64),
    ChangeOwner(&'static str, &'static str),
    Offboard(&'static str),
    /// The security team's baseline and rules change (see [`governed_baseline`]).
    Govern,
    Narrow(usize),
    Transfer(usize, &'static str),
}

fn days(d: f64) -> SignedDuration {
    SignedDuration::from_secs_f64(d * 86_400.0)
}

fn actor(name: &str, roles: &[Role]) -> Result<Actor, CliError> {
    Ok(Actor::new(principal(name)?, roles))
}

fn request_for(script: &Script, starts: Timestamp, break_glass: bool) -> Result<proto::ExceptionRequest, CliError> {
    let subject: EntityRef =
        script.subject.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))?;
    let resource: EntityRef =
        script.resource.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))?;
    let descendants = resource.entity_type().as_str() == "Environment";
    let mut controls = vec![
        proto::CompensatingControl {
            kind: "extra_logging".into(),
            description: "every use logged to the SIEM".into(),
            enforced: true,
        },
        proto::CompensatingControl {
            kind: "monitoring".into(),
            description: "alert on use outside business hours".into(),
            enforced: false,
        },
    ];
    if script.waives == "forbid-prod-db-direct-access" {
        controls.push(proto::CompensatingControl {
            kind: "read_only".into(),
            description: "read-only database role".into(),
            enforced: true,
        });
    }
    let planned = !break_glass;
    Ok(proto::ExceptionRequest {
        kind: None,
        subject: proto::Entity::from(&subject),
        waives: vec![script.waives.to_owned()],
        scope: proto::Scope {
            actions: vec![script.action.to_owned()],
            resources: vec![proto::ResourceScope {
                entity_type: resource.entity_type().to_string(),
                id: resource.id().to_owned(),
                descendants,
            }],
        },
        condition: (script.risk == "critical")
            .then(|| "context has source_ip && context.source_ip.isInRange(ip(\"10.0.0.0/8\"))".to_owned()),
        compensating_controls: controls,
        justification: format!(
            "{} needs `{}` on {} while the platform change lands",
            script.subject, script.action, script.resource
        ),
        normal_path_unavailable: if break_glass {
            "incident in progress; no time for review".into()
        } else {
            "the baseline change is still in review".into()
        },
        affected_systems: vec![resource.id().to_owned()],
        references: vec![format!("INC-{}", 1000 + script.subject.len())],
        risk: script.risk.to_owned(),
        credential_type: None,
        owner: script.owner.to_owned(),
        starts_at: planned.then_some(starts),
        expires_at: starts + days(script.days),
        review: proto::ReviewInput {
            every: None,
            revalidate_on: vec!["owner_change".into(), "code_change".into(), "vendor_change".into()],
        },
        remediation: planned.then(|| proto::Remediation {
            plan: format!("change the baseline so {} no longer needs `{}`", script.subject, script.waives),
            retire_by: None,
            ticket: Some(format!("CHG-{}", 2000 + script.resource.len())),
        }),
        frameworks: vec!["owasp-nhi-2025:NHI5".into(), "nist-800-53r5:CA-5".into()],
    })
}

/// Replays the scripted history into the data dir's store.
pub async fn build(app: &App) -> Result<(), CliError> {
    let now = app.service.now();
    let clock = Arc::new(ManualClock::new(now - days(200.0)));
    let service = app.service.with_clock(clock.clone());
    let admin = actor("alex", &[Role::Admin])?;
    // The data dir's baseline and rules become the log's first artifacts.
    app::adopt_artifacts(&service, &app.data_dir).await?;

    for (idx, (entity_type, id, kind, credential, team)) in inventory().into_iter().enumerate() {
        let owner = ["sam", "kim", "jo", "pat"].get(idx % 4).copied().unwrap_or("sam");
        let input = proto::IdentityInput {
            entity_type: entity_type.to_owned(),
            id,
            kind: kind.to_owned(),
            owner: owner.to_owned(),
            team: Some(team.to_owned()),
            credential_type: credential.to_owned(),
            attributes: [("team".to_owned(), json!(team)), ("code_version".to_owned(), json!("v1.0.0"))]
                .into_iter()
                .collect(),
        };
        service.identity_add(&admin, input).await?;
        clock.advance(SignedDuration::from_secs(60));
    }

    let mut steps: Vec<(Timestamp, Step)> = vec![(now - days(60.0), Step::Govern)];
    for (idx, script) in SCRIPTS.iter().enumerate() {
        let filed = now - days(script.ago);
        let decided = filed + days(0.02);
        let approvers: &[&str] = if script.risk == "critical" { &["lee", "morgan"] } else { &["lee"] };
        steps.push((filed, Step::File(idx)));
        let approve = |steps: &mut Vec<(Timestamp, Step)>| {
            for (n, by) in approvers.iter().enumerate() {
                steps.push((
                    decided + SignedDuration::from_secs(60 * n as i64),
                    Step::Act(idx, by, Action::Approve, ""),
                ));
            }
        };
        match script.story {
            Pending => {}
            Rejected => steps.push((decided, Step::Act(idx, "lee", Action::Reject, "use the merge queue instead"))),
            Withdrawn => steps.push((decided, Step::Act(idx, script.requester, Action::Withdraw, "no longer needed"))),
            Active | Future | Expired => approve(&mut steps),
            Revoked => {
                approve(&mut steps);
                steps.push((
                    filed + days(script.days * 0.4),
                    Step::Act(idx, script.owner, Action::Revoke, "fixed properly; access no longer needed"),
                ));
            }
            Renewed | RenewalPending => {
                approve(&mut steps);
                let asked = filed + days(script.days * 0.7);
                steps.push((asked, Step::Renew(idx, script.days * 0.6)));
                if script.story == Renewed {
                    steps.push((
                        asked + days(0.1),
                        Step::Act(idx, "morgan", Action::Approve, "one more release; then the baseline change"),
                    ));
                }
            }
            Attested => {
                approve(&mut steps);
                steps.push((
                    now - days(1.0),
                    Step::Act(idx, script.owner, Action::Attest, "still needed until the migration lands"),
                ));
            }
            Suspended => {
                approve(&mut steps);
                steps.push((now - days(2.0), Step::ChangeOwner(script.subject, "jo")));
            }
            Offboarded => {
                approve(&mut steps);
                steps.push((now - days(3.0), Step::Offboard(script.subject)));
            }
            Narrowed => steps.push((decided, Step::Narrow(idx))),
            Transferred => {
                approve(&mut steps);
                steps.push((filed + days(5.0), Step::Transfer(idx, "kim")));
            }
            BreakGlassActive => {}
            BreakGlassAwaiting => {}
            BreakGlassClosed => {
                let ended = filed + days(script.days * 0.5);
                steps.push((ended, Step::Act(idx, "riley", Action::EndBreakGlass, "incident resolved")));
                steps.push((
                    ended + days(1.0),
                    Step::Act(idx, "lee", Action::PostUseReview, "use matched the incident timeline"),
                ));
            }
        }
    }
    steps.sort_by_key(|(at, _)| *at);

    let mut ids: BTreeMap<usize, ExceptionId> = BTreeMap::new();
    let mut offboarded = Vec::new();
    for (at, step) in steps {
        clock.set(at);
        match step {
            Step::File(idx) => {
                let Some(script) = SCRIPTS.get(idx) else { continue };
                let break_glass = matches!(script.story, BreakGlassActive | BreakGlassAwaiting | BreakGlassClosed);
                let starts = if script.story == Future { at + days(3.0) } else { at };
                let request = request_for(script, starts, break_glass)?;
                let exception = if break_glass {
                    service.activate_break_glass(&actor(script.requester, &[Role::Responder])?, request).await?
                } else {
                    service.request(&actor(script.requester, &[Role::Requester])?, request).await?
                };
                ids.insert(idx, exception.id);
            }
            Step::Act(idx, by, action, comment) => {
                let Some(id) = ids.get(&idx).copied() else { continue };
                let roles: &[Role] = match action {
                    Action::Approve | Action::Reject | Action::PostUseReview => &[Role::Approver],
                    Action::EndBreakGlass => &[Role::Responder],
                    _ => &[Role::Requester],
                };
                let comment = (!comment.is_empty()).then(|| comment.to_owned());
                service.act(&actor(by, roles)?, id, action, comment).await?;
            }
            Step::Renew(idx, extra_days) => {
                let (Some(id), Some(script)) = (ids.get(&idx).copied(), SCRIPTS.get(idx)) else { continue };
                let current = service.get(&admin, id).await?;
                let owner = actor(script.owner, &[Role::Requester])?;
                let comment = Some("the baseline change slipped a sprint".to_owned());
                service.renew(&owner, id, current.expires_at + days(extra_days), comment).await?;
            }
            Step::ChangeOwner(subject, owner) => {
                let entity: EntityRef =
                    subject.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))?;
                let patch = proto::IdentityPatchInput { owner: Some(owner.to_owned()), ..Default::default() };
                service.identity_update(&admin, &entity, patch).await?;
            }
            Step::Govern => {
                service.record_rules(&admin, &governed_rules()).await?;
                let text = governed_baseline();
                let next = waiver_engine::Baseline::parse(&text, None, Some(DEMO_ENTITIES))
                    .map_err(|e| CliError::Failure(anyhow::anyhow!("the demo's governed baseline is invalid: {e}")))?;
                let diff = service.check_baseline(&admin, &next).await?;
                service.record_baseline(&admin, &next, &diff).await?;
                service.set_baseline(Arc::new(next));
            }
            Step::Narrow(idx) => {
                let (Some(id), Some(script)) = (ids.get(&idx).copied(), SCRIPTS.get(idx)) else { continue };
                let narrowing = waiver_core::lifecycle::Narrowing {
                    expires_at: Some(at + days(script.days / 2.0)),
                    add_condition: Some("context has ticket".into()),
                    ..Default::default()
                };
                let comment = Some("half the time asked, and only with a change ticket".to_owned());
                service.approve(&actor("lee", &[Role::Approver])?, id, comment, Some(narrowing)).await?;
            }
            Step::Transfer(idx, to) => {
                let (Some(id), Some(script)) = (ids.get(&idx).copied(), SCRIPTS.get(idx)) else { continue };
                let comment = Some(format!("{} moves to the data platform team", script.owner));
                service.propose_transfer(&actor(script.owner, &[Role::Requester])?, id, to, comment).await?;
                clock.advance(days(0.5));
                let accepted = Some("mine now; the replication job runs in my team".to_owned());
                service.accept_transfer(&actor(to, &[Role::Requester])?, id, accepted).await?;
            }
            Step::Offboard(subject) => {
                if offboarded.contains(&subject) {
                    continue;
                }
                offboarded.push(subject);
                let entity: EntityRef =
                    subject.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))?;
                service.identity_offboard(&admin, &entity, Some("vendor contract ended".into())).await?;
            }
        }
    }

    // What the scheduler would have recorded by now; decisions never depended on it.
    clock.set(now);
    service.record_expiries().await?;

    // One token per persona, written where the README says. waiver's bootstrap issues them,
    // as `init` does the first admin's: a token alex issued would stand for alex too in
    // separation of duties, and alex files requests in this history.
    let mut tokens = serde_json::Map::new();
    let bootstrap = Actor::system();
    for (persona, name, roles) in PERSONAS {
        let issued =
            service.issue_token(&bootstrap, principal(name)?, roles, &format!("demo persona {persona}")).await?;
        tokens.insert(
            (*persona).to_owned(),
            json!({ "token": issued.secret, "principal": name, "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>() }),
        );
    }
    let path = app.data_dir.join(TOKENS_FILE);
    let text = serde_json::to_string_pretty(&tokens).map_err(|e| CliError::Failure(e.into()))?;
    crate::app::write_private(&path, &text)
        .map_err(|e| CliError::Failure(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    Ok(())
}
