//! The command line (CONTRACT.md §1).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// waiver: governed, expiring exceptions to access policy for non-human identities.
#[derive(Debug, Parser)]
#[command(name = "waiver", version, about, max_term_width = 100)]
pub struct Cli {
    /// Where waiver keeps its database, rules and baseline.
    #[arg(long, global = true, env = "WAIVER_DATA_DIR", default_value = "./waiver-data")]
    pub data_dir: PathBuf,
    /// Database URL; defaults to SQLite in the data dir (`sqlite://DIR/waiver.db`).
    #[arg(long, global = true, env = "WAIVER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Act as this person (local mode). Defaults to the OS user.
    #[arg(long = "as", global = true, env = "WAIVER_AS", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Run lifecycle, inventory, audit and token commands on this running server instead of
    /// the local data dir (e.g. `http://127.0.0.1:8080`); the token decides who acts.
    #[arg(long, global = true, env = "WAIVER_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The bearer token for `--server`.
    #[arg(long, global = true, env = "WAIVER_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a starter config, governance rules and baseline, and one admin token (printed once).
    Init {
        /// The admin token's principal.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// Build the demo organisation in the data dir (if it has none), summarise it and serve it.
    Demo(DemoArgs),
    /// Serve the decision API (AuthZEN) over the data dir's exceptions and a baseline.
    Serve(ServeArgs),
    /// Explain one decision: exit 0 allow, 1 deny.
    Check(CheckArgs),
    /// The baseline in force (an artifact of the audit log).
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// The governance rules in force (an artifact of the audit log).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// File, decide and follow exceptions.
    #[command(subcommand)]
    Exception(ExceptionCommand),
    /// Emergency access: active at once, reviewed after.
    #[command(subcommand, name = "break-glass")]
    BreakGlass(BreakGlassCommand),
    /// The inventory of non-human identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// The people directory: owners and approvers.
    #[command(subcommand)]
    Person(PersonCommand),
    /// What waits for you (`--as NAME`, or the token's principal): requests to approve,
    /// post-use reviews, exceptions to attest, transfers to accept, your undecided requests.
    Inbox {
        /// Most items of each kind (1 to 500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure waiver on generated data.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Evidence for auditors: the whole register, its events and framework controls.
    Export(ExportArgs),
    /// Reports: sprawl, drift, precedent, hygiene, break-glass, frameworks.
    Report(ReportArgs),
    /// GitOps: make the register match YAML files of identities, exceptions and the baseline.
    Apply(ApplyArgs),
    /// File exception requests from a CSV file (a spreadsheet or ticket export).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file; its header names the columns.
    pub file: PathBuf,
    /// Read a request field from a differently named column: `--map justification="Business reason"`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    pub map: Vec<String>,
    /// Check every row and report; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// File the valid rows even when others are invalid (otherwise a file with any invalid
    /// row stores nothing).
    #[arg(long)]
    pub skip_invalid: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML (or JSON) file, or a directory of them (read in name order).
    pub path: PathBuf,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// `sprawl`, `drift`, `precedent`, `hygiene`, `break-glass` or `frameworks`.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(["sprawl", "drift", "precedent", "hygiene", "break-glass", "frameworks"]))]
    pub name: String,
    /// Weeks of history for time series and precedent clusters (1 to 520).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=520))]
    pub weeks: u32,
    /// A live exception that granted nothing for this many days is unused.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub unused_days: u32,
    /// Distinct subjects that make a cluster of similar exceptions a precedent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub min_subjects: u32,
    /// Most items any one list carries (each list's full length is under `totals`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

impl ReportArgs {
    pub fn options(&self) -> waiver_evidence::reports::Options {
        waiver_evidence::reports::Options {
            weeks: self.weeks,
            unused_days: self.unused_days,
            min_subjects: self.min_subjects as usize,
            limit: self.limit as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One row per exception.
    Csv,
    /// Every exception with its events and controls, and the chain head.
    Json,
    /// An OSCAL 1.1 plan of action and milestones.
    OscalPoam,
    /// Identities, open exceptions and the baseline, as `waiver apply` reads them.
    Yaml,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::OscalPoam => "oscal-poam",
            Self::Yaml => "yaml",
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to serve.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Build and summarise, then exit without serving.
    #[arg(long)]
    pub no_serve: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionAuthArg {
    /// Callers need a bearer token with the `pep` role.
    Token,
    /// No authentication; any `Authorization` header is ignored.
    None,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen (`127.0.0.1:0` picks a free port, printed on start).
    #[arg(long, env = "WAIVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Load the baseline from DIR/*.cedar, DIR/*.cedarschema and DIR/entities.json instead
    /// of the data dir's `baseline/`.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// How decision callers authenticate.
    #[arg(long, value_enum, env = "WAIVER_DECISION_AUTH", default_value = "token")]
    pub decision_auth: DecisionAuthArg,
    /// Let any caller ask for explanations (`Waiver-Explain: true`).
    #[arg(long)]
    pub explain: bool,
    /// Do not run the scheduler's jobs (expiry records, reminders, webhooks) on this node.
    #[arg(long, env = "WAIVER_NO_SCHEDULER")]
    pub no_scheduler: bool,
    /// List the demo personas (from the data dir's demo-tokens.json) on the UI's sign-in
    /// page. `waiver demo` sets it; never use it on a real deployment.
    #[arg(long)]
    pub demo_logins: bool,
    /// The URL clients reach this server at, for the AuthZEN discovery document (default:
    /// `http://` and the address it listens on).
    #[arg(long, env = "WAIVER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Most connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "WAIVER_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers, and a kept-alive connection may
    /// sit idle before its next request.
    #[arg(long, env = "WAIVER_HEADER_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub header_timeout: u32,
    /// This node's configuration (TOML): identity providers (`[[issuer]]`), sign-in to the
    /// UI (`[sign_in]`) and notifications (`[notify]`). See docs/auth.md.
    #[arg(long, env = "WAIVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// `TYPE:ID`.
    #[arg(long)]
    pub subject: String,
    /// The action name.
    #[arg(long)]
    pub action: String,
    /// `TYPE:ID`.
    #[arg(long)]
    pub resource: String,
    /// A JSON object.
    #[arg(long)]
    pub context: Option<String>,
    /// Use this baseline directory instead of the data dir's.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Put the baseline in DIR in force (recorded in the audit log, followed by every node),
    /// after validating it and every live exception's `waives` and condition against it.
    Set { dir: PathBuf },
    /// Print the baseline's policies: the one in force, or the one in force at an event.
    Show {
        /// The event at which to show what was in force.
        #[arg(long, value_name = "SEQ")]
        at: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Put the governance rules in FILE (TOML) in force, checked exactly as at start
    /// (recorded in the audit log, followed by every node without a restart).
    Set { file: PathBuf },
    /// Print the rules in force, or the ones in force at an event.
    Show {
        /// The event at which to show what was in force.
        #[arg(long, value_name = "SEQ")]
        at: Option<u64>,
    },
}

/// An optional comment on an action.
#[derive(Debug, Args)]
pub struct Comment {
    /// Why.
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
}

/// What an approver takes out of a request (each only narrows).
#[derive(Debug, Args, Default, Clone)]
pub struct NarrowArgs {
    /// An earlier expiry, RFC 3339 with an offset.
    #[arg(long = "narrow-expires-at", value_name = "TIME")]
    pub expires_at: Option<String>,
    /// An action to leave out (repeatable).
    #[arg(long = "drop-action", value_name = "ACTION")]
    pub drop_actions: Vec<String>,
    /// A resource to leave out, `TYPE:ID` (repeatable).
    #[arg(long = "drop-resource", value_name = "TYPE:ID")]
    pub drop_resources: Vec<String>,
    /// A Cedar condition that must hold as well.
    #[arg(long = "add-condition", value_name = "CEDAR")]
    pub add_condition: Option<String>,
    /// A compensating control to add, `KIND=DESCRIPTION` (enforced; repeatable).
    #[arg(long = "add-control", value_name = "KIND=DESCRIPTION")]
    pub add_controls: Vec<String>,
}

impl NarrowArgs {
    /// The narrowing asked for, or `None` when no narrowing flag is given.
    pub fn to_wire(&self) -> Result<Option<waiver_proto::Narrowing>, String> {
        let expires_at = self
            .expires_at
            .as_deref()
            .map(|t| waiver_proto::parse_timestamp(t).map_err(|e| format!("--narrow-expires-at: {e}")))
            .transpose()?;
        let add_controls = self
            .add_controls
            .iter()
            .map(|c| {
                let (kind, description) =
                    c.split_once('=').ok_or_else(|| format!("--add-control: `{c}` is not KIND=DESCRIPTION"))?;
                Ok(waiver_proto::CompensatingControl {
                    kind: kind.trim().to_owned(),
                    description: description.trim().to_owned(),
                    enforced: true,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let narrowing = waiver_proto::Narrowing {
            expires_at,
            drop_actions: self.drop_actions.clone(),
            drop_resources: self.drop_resources.clone(),
            add_condition: self.add_condition.clone(),
            add_controls,
        };
        Ok((narrowing != waiver_proto::Narrowing::default()).then_some(narrowing))
    }
}

#[derive(Debug, Subcommand)]
pub enum PersonCommand {
    /// Every person waiver knows.
    List,
    /// Add a person (admin).
    Add { name: String },
    /// A person leaves (admin): their tokens are revoked and what they own is held.
    Offboard {
        name: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// How a person is notified (themselves, or an admin for anyone).
    Notify {
        name: String,
        /// Comma-separated channels: email, chat (absent: every channel set up; `none`: no
        /// channel).
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<String>>,
        /// One daily digest by email instead of a message per event.
        #[arg(long)]
        digest: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExceptionCommand {
    /// File a request from a JSON or YAML file (`-` for stdin).
    Request {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Approve a request or a pending renewal, optionally narrowing a request first.
    Approve {
        id: String,
        #[command(flatten)]
        comment: Comment,
        #[command(flatten)]
        narrow: NarrowArgs,
    },
    /// Propose a new owner (owner or admin; `-m` says why, required); they accept with
    /// `accept-transfer`.
    Transfer {
        id: String,
        /// The new owner: a current person, not the requester nor an approver.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Accept ownership proposed to you.
    #[command(name = "accept-transfer")]
    AcceptTransfer {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Reject a request or a pending renewal (a comment is required).
    Reject {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Take back a request nobody has decided.
    Withdraw {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// End an exception now.
    Revoke {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Ask to extend an exception (owner); approvers approve the renewal.
    Renew {
        id: String,
        /// The new expiry, RFC 3339 with an offset.
        #[arg(long)]
        expires_at: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Replace the framework controls the exception maps to (owner or admin).
    Frameworks {
        id: String,
        /// Catalog keys, comma-separated: `owasp-nhi-2025:NHI7,nist-800-53r5:CA-5`.
        #[arg(long, value_delimiter = ',', required = true)]
        set: Vec<String>,
        #[command(flatten)]
        comment: Comment,
    },
    /// Attest the exception is still needed (owner); lifts a revalidation suspension.
    Attest {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Show one exception and its history.
    Show { id: String },
    /// List exceptions.
    List(ListArgs),
}

#[derive(Debug, Args, Default, Clone)]
pub struct ListArgs {
    /// Effective state, e.g. `active`.
    #[arg(long)]
    pub state: Option<String>,
    /// `planned` or `break_glass`.
    #[arg(long)]
    pub kind: Option<String>,
    /// `TYPE:ID`.
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub risk: Option<String>,
    /// A policy id or `default-deny`.
    #[arg(long)]
    pub waives: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    pub expires_before: Option<String>,
    /// Text search.
    #[arg(long)]
    pub q: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Activate emergency access from a JSON or YAML file (as for a request; `kind` implied).
    Activate {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// End an emergency access early.
    End {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// File the post-use review (never by the activator; a comment is required).
    Review {
        id: String,
        #[command(flatten)]
        comment: Comment,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Add an identity from a JSON or YAML file.
    Add {
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Change an identity: from a file of the fields to change, or with flags.
    Update {
        /// `TYPE:ID`.
        entity: String,
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        credential_type: Option<String>,
    },
    /// Offboard an identity and revoke its exceptions.
    Offboard {
        /// `TYPE:ID`.
        entity: String,
        #[command(flatten)]
        comment: Comment,
    },
    /// Show one identity and its exceptions.
    Show {
        /// `TYPE:ID`.
        entity: String,
    },
    /// List identities.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the event chain and check every record against it; exit 1 naming the first
    /// broken event or each record that does not match. With `--file`, verify a JSON export
    /// offline instead (no data dir or server needed).
    Verify {
        /// A JSON export (`waiver export --format json`) to verify by itself.
        #[arg(long, value_name = "EXPORT")]
        file: Option<PathBuf>,
    },
    /// Checkpoint the register now (admin): the terms of every exception, each checked
    /// against its seal, sealed by a `register.checkpoint` event. Every node loads the newest
    /// at start instead of every record; the leader refreshes it once 2 % of the
    /// register changed, so this is for before a planned restart.
    Checkpoint,
    /// Print events.
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token (admin); the secret is printed once and stored hashed.
    Issue {
        /// Who the token acts as.
        #[arg(long)]
        principal: String,
        /// Comma-separated roles: requester, approver, responder, admin, auditor, pep, agent.
        #[arg(long, value_delimiter = ',', default_value = "requester")]
        roles: Vec<String>,
        #[arg(long, default_value = "issued from the command line")]
        label: String,
        /// How long it lives, ISO 8601 (`P30D`); the rules' `tokens.max_lifetime` (default
        /// P90D) when absent, and never longer.
        #[arg(long, value_name = "PERIOD")]
        expires_in: Option<String>,
        /// Comma-separated scopes it is limited to, within its roles: read, request,
        /// approve, decide, admin (none: everything its roles allow).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Replace a token with a new secret (same principal, roles and label) and revoke the
    /// old one; the new secret is printed once.
    Rotate { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchStore {
    Sqlite,
    Postgres,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Lifecycle writes per second on the configured store (request, approve, revoke).
    Lifecycle {
        /// Exceptions to walk through request, approve and revoke.
        #[arg(long, default_value_t = 2000)]
        exceptions: u64,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The decision path against plain Cedar over the same baseline, on a generated org.
    Decisions {
        #[arg(long, default_value_t = 100_000)]
        exceptions: usize,
        #[arg(long, default_value_t = 10_000)]
        subjects: usize,
        #[arg(long, default_value_t = 200)]
        policies: usize,
        /// How long to measure each of the two paths.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Write the exceptions to a store, then load the snapshot from it as `serve` does:
        /// `sqlite` (a scratch file) or `postgres` (a scratch database beside the one
        /// `--database-url` names). Without it, the snapshot is compiled in memory.
        #[arg(long, value_enum)]
        through_store: Option<BenchStore>,
        /// With `--through-store sqlite`: keep the store in this file and reuse it when it
        /// holds exceptions (so a repeat measures the load, not the writes; and a node can
        /// be started on it).
        #[arg(long, value_name = "FILE", requires = "through_store")]
        reuse: Option<PathBuf>,
    },
    /// REST writes/s (create + approve) over HTTP, and revoke-to-deny on the same node.
    Rest {
        #[arg(long, default_value_t = 2000)]
        exceptions: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        revocations: usize,
    },
    /// Scheduler lag: how late expiry events are recorded for N exceptions expiring together.
    Scheduler {
        #[arg(long, default_value_t = 100_000)]
        exceptions: usize,
        /// Seconds over which their expiries are spread.
        #[arg(long, default_value_t = 10.0)]
        spread: f64,
    },
    /// Every report over a generated register held in memory (as `serve` holds it).
    Reports {
        #[arg(long, default_value_t = 1_000_000)]
        exceptions: usize,
        #[arg(long, default_value_t = 100_000)]
        subjects: usize,
        #[arg(long, default_value_t = 200)]
        policies: usize,
    },
    /// Every UI page over HTTP against `waiver serve` on the demo scaled up to N exceptions.
    Ui {
        #[arg(long, default_value_t = 100_000)]
        exceptions: usize,
        /// Timed requests per page (after two warm-up requests).
        #[arg(long, default_value_t = 20)]
        requests: usize,
    },
    /// The ceiling of an HTTP decision on this machine: a server on waiver's HTTP stack (the
    /// same connection handling and JSON parsing) that parses each AuthZEN evaluation and
    /// answers `{"decision":true}` without deciding anything. `scripts/bench-peers.sh` holds
    /// `waiver serve` against it. Serves until killed.
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:18190")]
        listen: String,
    },
    /// `audit verify` throughput over a generated log.
    Verify {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Keep the generated log in this SQLite file and reuse it when it exists (so a
        /// profile or a repeat measures the verify, not the build).
        #[arg(long, value_name = "FILE")]
        reuse: Option<PathBuf>,
    },
}
