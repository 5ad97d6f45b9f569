//! Runs one command: parse its arguments into domain values, call one service function,
//! print the result. Errors map once, here, to exit codes and messages.

use std::{io::Read, path::Path};

use jiff::Timestamp;
use waiver_core::{EntityRef, ExceptionId, Kind, Principal, Risk, Role, State, Waived};
use waiver_proto::Format;
use waiver_service::{Action, ListQuery, ServiceError};
use waiver_store::StoreError;

use crate::{
    app::{self, App},
    cli::{
        AuditCommand, BenchCommand, BreakGlassCommand, Cli, Command, ExceptionCommand, IdentityCommand, ListArgs,
        Output, PersonCommand, TokenCommand,
    },
    output::Printer,
};

/// Why a command failed, by exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service refused or found the input invalid (exit 2, or 3 for store failures).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The command line or a file is unusable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A server refused (remote mode): its problem document (exit 2, or 3 for a 5xx).
    #[error("{}", remote_message(.0))]
    Remote(Box<waiver_proto::Problem>),
    /// Anything else (exit 3).
    #[error(transparent)]
    Failure(#[from] anyhow::Error),
}

fn remote_message(p: &waiver_proto::Problem) -> String {
    let mut text = p.detail.clone();
    for field in &p.errors {
        if !text.contains(&field.message) {
            text.push_str(&format!("\n  - {}: {}", field.field, field.message));
        }
    }
    text
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Service(e.into())
    }
}

impl From<waiver_core::ValidationError> for CliError {
    fn from(e: waiver_core::ValidationError) -> Self {
        CliError::Service(e.into())
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Service(ServiceError::Store(_)) | CliError::Failure(_) => 3,
            CliError::Remote(p) if p.status >= 500 => 3,
            CliError::Remote(_) => 2,
            CliError::Service(_) | CliError::Usage(_) => 2,
        }
    }
}

/// Prints an error as text on stderr, or as a problem document on stdout with `--output json`
/// (so a script always reads one JSON document), and returns the exit code.
pub fn report(error: &CliError, output: Output) -> u8 {
    match output {
        Output::Json => {
            let problem = match error {
                CliError::Service(e) => e.problem(),
                CliError::Remote(p) => (**p).clone(),
                CliError::Usage(detail) => waiver_proto::Problem {
                    problem_type: "https://waiver.dev/problems/usage".into(),
                    title: "Invalid usage".into(),
                    status: 400,
                    detail: detail.clone(),
                    code: "usage".into(),
                    errors: vec![],
                },
                CliError::Failure(e) => waiver_proto::Problem {
                    problem_type: "https://waiver.dev/problems/internal".into(),
                    title: "Internal error".into(),
                    status: 500,
                    detail: format!("{e:#}"),
                    code: "internal".into(),
                    errors: vec![],
                },
            };
            outln!("{}", serde_json::to_string_pretty(&problem).unwrap_or_default());
        }
        Output::Text => eprintln!("error: {error}"),
    }
    error.exit_code()
}

pub(crate) fn read_document(path: &Path) -> Result<(String, Format), CliError> {
    let mut text = String::new();
    let limit = waiver_proto::MAX_DOCUMENT_BYTES as u64 + 1;
    let result = if path == Path::new("-") {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_string(&mut text))
    };
    result.map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let format = if yaml || !text.trim_start().starts_with(['{', '[']) { Format::Yaml } else { Format::Json };
    Ok((text, format))
}

fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CliError> {
    let (text, format) = read_document(path)?;
    Ok(waiver_proto::parse(&text, format)?)
}

fn exception_id(id: &str) -> Result<ExceptionId, CliError> {
    id.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))
}

fn entity(s: &str) -> Result<EntityRef, CliError> {
    s.parse().map_err(|e: waiver_core::id::IdError| CliError::Usage(e.to_string()))
}

fn timestamp(flag: &str, s: &str) -> Result<Timestamp, CliError> {
    s.parse().map_err(|e| CliError::Usage(format!("{flag}: `{s}` is not an RFC 3339 time with an offset: {e}")))
}

fn list_query(args: ListArgs) -> Result<ListQuery, CliError> {
    fn usage(flag: &'static str) -> impl Fn(String) -> CliError {
        move |e| CliError::Usage(format!("{flag}: {e}"))
    }
    Ok(ListQuery {
        state: args.state.as_deref().map(State::parse).transpose().map_err(usage("--state"))?,
        kind: args.kind.as_deref().map(Kind::parse).transpose().map_err(usage("--kind"))?,
        subject: args.subject.as_deref().map(entity).transpose()?,
        owner: args.owner,
        risk: args.risk.as_deref().map(Risk::parse).transpose().map_err(usage("--risk"))?,
        waives: args.waives.as_deref().map(Waived::parse).transpose().map_err(usage("--waives"))?,
        expires_before: args.expires_before.as_deref().map(|t| timestamp("--expires-before", t)).transpose()?,
        open: None,
        review_overdue: None,
        q: args.q,
        after: None,
        limit: args.limit,
    })
}

/// `waiver import FILE.csv`: a per-row report; files the valid rows unless refused.
async fn import(
    app: &app::App,
    actor: &waiver_core::Actor,
    args: &crate::cli::ImportArgs,
    out: &Printer,
) -> Result<u8, CliError> {
    let file = std::fs::File::open(&args.file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.file.display())))?;
    let rows = waiver_evidence::csv_import::requests(std::io::BufReader::new(file), &args.map)
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?;
    let total = rows.len() as u64;
    // Drawn on standard error, and only when it is a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = {
        let bar = bar.clone();
        move |phase: &'static str, n: usize| {
            if bar.message() != phase {
                bar.set_message(phase);
                bar.reset();
            }
            bar.set_position(n as u64);
        }
    };
    let mode = waiver_service::import::ImportMode { dry_run: args.dry_run, skip_invalid: args.skip_invalid };
    let report = app.service.import(actor, rows, mode, &progress).await?;
    bar.finish_and_clear();
    Ok(print_import(out, &report.to_json(args.dry_run), args.dry_run, args.skip_invalid))
}

/// Prints an import report (local or from the server); the exit code: 2 if rows were invalid
/// and not skipped, or in a dry run with invalid rows.
#[allow(clippy::indexing_slicing, reason = "serde_json::Value indexing yields Null; it never panics")]
pub(crate) fn print_import(out: &Printer, report: &serde_json::Value, dry_run: bool, skip_invalid: bool) -> u8 {
    out.json(report);
    let n = |key: &str| report[key].as_u64().unwrap_or(0);
    let rows = report["rows"].as_array().map_or(&[][..], Vec::as_slice);
    for row in rows {
        for e in row["errors"].as_array().map_or(&[][..], Vec::as_slice) {
            out.say(format!(
                "line {}: {}: {}",
                row["line"],
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
    }
    let (valid, invalid, filed) = (n("valid"), n("invalid"), n("filed"));
    out.say(format!(
        "{} rows: {valid} valid, {invalid} invalid; {filed} filed{}",
        rows.len(),
        if dry_run {
            " (dry run)"
        } else if invalid > 0 && filed == 0 && valid > 0 {
            " (nothing stored: fix the rows above, or pass --skip-invalid)"
        } else {
            ""
        }
    ));
    if invalid > 0 && (!skip_invalid || dry_run) { 2 } else { 0 }
}

/// Reads a GitOps document: one file, or every `*.yaml`, `*.yml` and `*.json` of a
/// directory in name order, merged. Errors name the file and the field.
fn read_documents(path: &std::path::Path) -> Result<waiver_proto::gitops::Document, CliError> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut merged = waiver_proto::gitops::Document::default();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
        let format = if file.extension().is_some_and(|x| x == "json") {
            waiver_proto::Format::Json
        } else {
            waiver_proto::Format::Yaml
        };
        let document: waiver_proto::gitops::Document = waiver_proto::parse(&text, format).map_err(|e| {
            CliError::Usage(format!(
                "{}: {}",
                file.display(),
                e.errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ")
            ))
        })?;
        merged.merge(document).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    }
    Ok(merged)
}

/// `waiver apply PATH [--dry-run]`: prints the plan; applies it unless dry-run or refused.
async fn apply(
    app: &app::App,
    actor: &waiver_core::Actor,
    args: &crate::cli::ApplyArgs,
    out: &Printer,
) -> Result<u8, CliError> {
    use waiver_service::gitops::Step;
    let document = read_documents(&args.path)?;
    let plan = app.service.plan(actor, &document).await?;
    let lines: Vec<String> = plan.steps.iter().map(Step::describe).collect();
    out.json(&serde_json::json!({
        "dry_run": args.dry_run, "changes": lines, "unchanged": plan.unchanged,
        "refusals": plan.refusals, "only_in_register": plan.only_in_register,
    }));
    for line in &lines {
        out.say(line);
    }
    for refusal in &plan.refusals {
        out.say(format!("! {refusal}"));
    }
    if !plan.only_in_register.is_empty() {
        out.say(format!("  ({} in the register and in no file, left alone)", plan.only_in_register.len()));
    }
    out.say(format!("{} to change, {} unchanged, {} refused", lines.len(), plan.unchanged, plan.refusals.len()));
    if !plan.refusals.is_empty() {
        return Err(CliError::Usage(format!(
            "nothing applied: the files ask for what the register or the rules refuse ({} refusal(s))",
            plan.refusals.len()
        )));
    }
    if args.dry_run || plan.steps.is_empty() {
        return Ok(0);
    }
    // Inventory first, then the baseline, then exceptions; offboarding last (it revokes).
    let rank = |s: &Step| match s {
        Step::AddIdentity(_) | Step::UpdateIdentity { .. } => 0,
        Step::SetBaseline { .. } => 1,
        Step::File(_) | Step::Renew { .. } => 2,
        Step::OffboardIdentity(_) => 3,
    };
    let mut steps = plan.steps;
    steps.sort_by_key(|s| rank(s));
    for step in steps {
        let done = match &step {
            Step::AddIdentity(input) => app.service.identity_add(actor, input.clone()).await.map(|_| String::new()),
            Step::UpdateIdentity { entity, patch, .. } => {
                app.service.identity_update(actor, entity, patch.clone()).await.map(|_| String::new())
            }
            Step::OffboardIdentity(entity) => app
                .service
                .identity_offboard(actor, entity, Some("offboarded by `waiver apply`".into()))
                .await
                .map(|_| String::new()),
            Step::SetBaseline { baseline, .. } => {
                let summary = app.service.check_baseline(actor, baseline).await?;
                app.service.record_baseline(actor, baseline, &summary).await.map(|seq| format!(" (event {seq})"))
            }
            Step::File(request) => {
                app.service.request(actor, (**request).clone()).await.map(|e| format!(" → {}", e.id))
            }
            Step::Renew { id, expires_at } => app
                .service
                .renew(actor, *id, *expires_at, Some("renewed by `waiver apply`".into()))
                .await
                .map(|_| String::new()),
        };
        match done {
            Ok(note) => out.say(format!("applied: {}{note}", step.describe())),
            Err(e) => {
                out.say(format!("failed: {}: {e}", step.describe()));
                return Err(e.into());
            }
        }
    }
    Ok(0)
}

/// A report: JSON as is with `--output json`; otherwise each field on a line, lists with
/// one line per item.
pub fn print_report(out: &Printer, value: &serde_json::Value) {
    use serde_json::Value;
    if out.is_json() {
        return out.json(value);
    }
    fn line(v: &Value) -> String {
        match v {
            Value::Object(fields) => fields
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join("  "),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let Value::Object(fields) = value else { return out.say(line(value)) };
    for (key, v) in fields {
        match v {
            Value::Array(items) => {
                out.say(format!("{key} ({})", items.len()));
                for item in items {
                    out.say(format!("  {}", line(item)));
                    // One level deeper for nested lists (framework controls, proposals).
                    if let Value::Object(inner) = item {
                        for (k, nested) in inner {
                            match nested {
                                Value::Array(list) if list.iter().any(Value::is_object) => {
                                    for entry in list.iter().filter(|e| e.get("exceptions").is_none_or(|n| n != 0)) {
                                        out.say(format!("    {k}: {}", line(entry)));
                                    }
                                }
                                Value::Object(_) => out.say(format!("    {k}: {}", line(nested))),
                                _ => {}
                            }
                        }
                    }
                }
            }
            Value::Object(_) => out.say(format!("{key}: {}", line(v))),
            other => out.say(format!("{key}: {}", other.as_str().map_or_else(|| other.to_string(), str::to_owned))),
        }
    }
}

/// Writes an export to `out` (beside, then renamed into place) or to standard output.
pub fn write_export(out: Option<&std::path::Path>, text: &str) -> Result<u8, CliError> {
    match out {
        Some(path) => {
            let staging = path.with_extension("partial");
            std::fs::write(&staging, text)
                .and_then(|()| std::fs::rename(&staging, path))
                .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
        }
        None => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
        }
    }
    Ok(0)
}

/// Runs the command; `Ok` carries the exit code (0, or 1 when a check said no).
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let out = Printer::new(cli.output);
    // Verifying an export needs nothing but the file: not the data dir, not a server.
    if let Command::Audit(AuditCommand::Verify { file: Some(path) }) = &cli.command {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        return Ok(match waiver_evidence::verify_export(&text) {
            Ok(verified) => {
                out.export_verified(&verified);
                0
            }
            Err(why) => {
                out.export_refused(&why);
                1
            }
        });
    }
    if let Some(remote) = crate::remote::Remote::from_cli(&cli)? {
        // The HTTP client blocks; keep it off the runtime's worker threads.
        let answer = tokio::task::block_in_place(|| crate::remote::run(&remote, &cli.command, &out));
        if let Some(answer) = answer {
            return answer;
        }
        return Err(CliError::Usage("this command runs on the local data dir only; leave out --server".into()));
    }
    match &cli.command {
        Command::Init { admin } => {
            let app = app::open(&cli, true).await?;
            crate::demo::init(&app, &cli, admin, &out).await
        }
        Command::Demo(args) => {
            let built = crate::demo::ensure_built(&cli).await?;
            let app = app::open(&cli, false).await?;
            crate::demo::run(&app, built, args, &out).await?;
            if args.no_serve {
                return Ok(0);
            }
            let serve = crate::cli::ServeArgs {
                listen: args.listen.clone(),
                baseline: None,
                decision_auth: crate::cli::DecisionAuthArg::Token,
                explain: false,
                no_scheduler: false,
                demo_logins: true,
                public_url: None,
                max_connections: 1024,
                header_timeout: 10,
                config: None,
            };
            crate::serve::serve(&cli, &serve, &out).await
        }
        Command::Serve(args) => crate::serve::serve(&cli, args, &out).await,
        Command::Check(args) => crate::serve::check(&cli, args, &out).await,
        Command::Baseline(command) => crate::serve::baseline(&cli, command, &out).await,
        Command::Rules(command) => crate::serve::rules(&cli, command, &out).await,
        Command::Bench(bench) => match bench {
            BenchCommand::Rest { exceptions, concurrency, revocations } => {
                crate::bench_server::rest(*exceptions, *concurrency, *revocations, &out).await
            }
            BenchCommand::Scheduler { exceptions, spread } => {
                crate::bench_server::scheduler(*exceptions, *spread, &out).await
            }
            BenchCommand::Lifecycle { exceptions, concurrency } => {
                crate::bench::lifecycle(*exceptions, *concurrency, &out).await
            }
            BenchCommand::Reports { exceptions, subjects, policies } => {
                crate::bench::reports(*exceptions, *subjects, *policies, &out).await
            }
            BenchCommand::Ui { exceptions, requests } => crate::bench_ui::ui(*exceptions, *requests, &out).await,
            BenchCommand::Ceiling { listen } => crate::bench_server::ceiling(listen).await,
            BenchCommand::Verify { events, reuse } => crate::bench::verify(*events, reuse.as_deref(), &out).await,
            BenchCommand::Decisions { exceptions, subjects, policies, seconds, through_store, reuse } => {
                let shape = crate::bench::Shape { exceptions: *exceptions, subjects: *subjects, policies: *policies };
                crate::bench::decisions_through(&cli, shape, *seconds, *through_store, reuse.as_deref(), &out).await
            }
        },
        Command::Exception(command) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            exception(&app, &actor, command, &out).await
        }
        Command::BreakGlass(command) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let service = &app.service;
            let exception = match command {
                BreakGlassCommand::Activate { file } => service.activate_break_glass(&actor, parse_file(file)?).await?,
                BreakGlassCommand::End { id, comment } => {
                    service.act(&actor, exception_id(id)?, Action::EndBreakGlass, comment.comment.clone()).await?
                }
                BreakGlassCommand::Review { id, comment } => {
                    service.act(&actor, exception_id(id)?, Action::PostUseReview, comment.comment.clone()).await?
                }
            };
            out.exception(&exception, service.now(), None);
            Ok(0)
        }
        Command::Identity(command) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            identity(&app, &actor, command, &out).await
        }
        Command::Inbox { limit } => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let work = app.service.my_work(&actor, usize::try_from(*limit).unwrap_or(100)).await?;
            print_inbox(&out, &work.view(app.service.now()), app.service.now());
            Ok(0)
        }
        Command::Person(command) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let service = &app.service;
            match command {
                PersonCommand::List => print_people(&out, &service.people(&actor).await?),
                PersonCommand::Add { name } => print_people(&out, &[service.person_add(&actor, name).await?]),
                PersonCommand::Offboard { name, comment } => {
                    let done = service.person_offboard(&actor, name, comment.comment.clone()).await?;
                    let ids: Vec<String> = done.exceptions.iter().map(ToString::to_string).collect();
                    print_offboarded(&out, name, &done.tokens_revoked, &ids);
                }
                PersonCommand::Notify { name, channels, digest } => {
                    let channels = channels.clone().map(|c| c.into_iter().filter(|c| c != "none").collect());
                    print_people(&out, &[service.person_notifications(&actor, name, channels, *digest).await?]);
                }
            }
            Ok(0)
        }
        Command::Export(args) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let format =
                waiver_evidence::Format::parse(args.format.name()).map_err(|e| CliError::Usage(e.to_string()))?;
            let text = app.service.export(&actor, format).await?;
            write_export(args.out.as_deref(), &text)
        }
        Command::Report(args) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let report = waiver_evidence::reports::Report::parse(&args.name).map_err(CliError::Usage)?;
            let value = app.service.report(&actor, report, args.options()).await?;
            print_report(&out, &value);
            Ok(0)
        }
        Command::Import(args) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            import(&app, &actor, args, &out).await
        }
        Command::Apply(args) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            apply(&app, &actor, args, &out).await
        }
        Command::Audit(command) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            match command {
                AuditCommand::Verify { .. } => {
                    let verification = app.service.audit_verify(&actor).await?;
                    out.verification(&verification.chain, &verification.records);
                    Ok(if verification.is_ok() { 0 } else { 1 })
                }
                AuditCommand::Checkpoint => {
                    let n = app.service.checkpoint_now(&actor).await?;
                    out.say(format!("checkpointed the register: {n} exceptions"));
                    Ok(0)
                }
                AuditCommand::Events { after, limit } => {
                    let events = app.service.audit_events(&actor, *after, *limit).await?;
                    out.events(&events);
                    Ok(0)
                }
            }
        }
        Command::Token(TokenCommand::Rotate { id }) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            out.token(&app.service.rotate_token(&actor, id).await?);
            Ok(0)
        }
        Command::Token(TokenCommand::Issue { principal, roles, label, expires_in, scopes }) => {
            let app = app::open(&cli, false).await?;
            let actor = app::local_actor(&cli)?;
            let principal = Principal::parse("--principal", principal).map_err(|e| CliError::Usage(e.to_string()))?;
            let roles = roles
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        CliError::Usage(format!(
                            "--roles: `{r}` is not a role; expected requester, approver, responder, admin, auditor, pep or agent"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let lifetime = expires_in
                .as_deref()
                .map(|p| p.parse::<waiver_core::Period>().map_err(|e| CliError::Usage(format!("--expires-in: {e}"))))
                .transpose()?;
            let issued = app.service.issue_token_for(&actor, principal, &roles, label, lifetime, scopes).await?;
            out.token(&issued);
            Ok(0)
        }
    }
}

async fn exception(
    app: &App,
    actor: &waiver_core::Actor,
    command: &ExceptionCommand,
    out: &Printer,
) -> Result<u8, CliError> {
    let service = &app.service;
    let act = |id: &str, action: Action, comment: &Option<String>| {
        let comment = comment.clone();
        let id = exception_id(id);
        async move { Ok::<_, CliError>(service.act(actor, id?, action, comment).await?) }
    };
    let exception = match command {
        ExceptionCommand::Request { file } => {
            let exception = service.request(actor, parse_file(file)?).await?;
            out.filed(&exception, service.now());
            return Ok(0);
        }
        ExceptionCommand::Approve { id, comment, narrow } => {
            let narrowing = narrow
                .to_wire()
                .map_err(CliError::Usage)?
                .map(waiver_proto::Narrowing::into_core)
                .transpose()
                .map_err(|e| CliError::Service(waiver_service::ServiceError::Invalid(e)))?;
            service.approve(actor, exception_id(id)?, comment.comment.clone(), narrowing).await?
        }
        ExceptionCommand::Transfer { id, to, comment } => {
            service.propose_transfer(actor, exception_id(id)?, to, comment.comment.clone()).await?
        }
        ExceptionCommand::AcceptTransfer { id, comment } => {
            service.accept_transfer(actor, exception_id(id)?, comment.comment.clone()).await?
        }
        ExceptionCommand::Reject { id, comment } => act(id, Action::Reject, &comment.comment).await?,
        ExceptionCommand::Withdraw { id, comment } => act(id, Action::Withdraw, &comment.comment).await?,
        ExceptionCommand::Revoke { id, comment } => act(id, Action::Revoke, &comment.comment).await?,
        ExceptionCommand::Attest { id, comment } => act(id, Action::Attest, &comment.comment).await?,
        ExceptionCommand::Frameworks { id, set, comment } => {
            service.set_frameworks(actor, exception_id(id)?, set.clone(), comment.comment.clone()).await?
        }
        ExceptionCommand::Renew { id, expires_at, comment } => {
            let expires_at = timestamp("--expires-at", expires_at)?;
            service.renew(actor, exception_id(id)?, expires_at, comment.comment.clone()).await?
        }
        ExceptionCommand::Show { id } => {
            let id = exception_id(id)?;
            let exception = service.get(actor, id).await?;
            let history = service.history(actor, id).await?;
            out.exception(&exception, service.now(), Some(&history));
            return Ok(0);
        }
        ExceptionCommand::List(args) => {
            let query = list_query(args.clone())?;
            let exceptions = service.list(actor, &query).await?;
            out.exception_list(&exceptions, service.now());
            return Ok(0);
        }
    };
    out.exception(&exception, service.now(), None);
    Ok(0)
}

async fn identity(
    app: &App,
    actor: &waiver_core::Actor,
    command: &IdentityCommand,
    out: &Printer,
) -> Result<u8, CliError> {
    let service = &app.service;
    match command {
        IdentityCommand::Add { file } => {
            let identity = service.identity_add(actor, parse_file(file)?).await?;
            out.identity(&identity, None, service.now());
        }
        IdentityCommand::Update { entity: e, file, owner, team, kind, credential_type } => {
            let mut patch: waiver_proto::IdentityPatchInput = match file {
                Some(file) => parse_file(file)?,
                None => waiver_proto::IdentityPatchInput::default(),
            };
            patch.owner = owner.clone().or(patch.owner);
            patch.team = team.clone().or(patch.team);
            patch.kind = kind.clone().or(patch.kind);
            patch.credential_type = credential_type.clone().or(patch.credential_type);
            let identity = service.identity_update(actor, &entity(e)?, patch).await?;
            out.identity(&identity, None, service.now());
        }
        IdentityCommand::Offboard { entity: e, comment } => {
            let (identity, revoked) = service.identity_offboard(actor, &entity(e)?, comment.comment.clone()).await?;
            out.offboarded(&identity, &revoked);
        }
        IdentityCommand::Show { entity: e } => {
            let entity = entity(e)?;
            let identity = service.identity_get(actor, &entity).await?;
            let query = ListQuery { subject: Some(entity), ..ListQuery::default() };
            let exceptions = service.list(actor, &query).await?;
            out.identity(&identity, Some(&exceptions), service.now());
        }
        IdentityCommand::List => {
            let identities = service.identities(actor).await?;
            out.identity_list(&identities);
        }
    }
    Ok(0)
}

/// Prints people, a line each (or the JSON list).
pub(crate) fn print_people(out: &Printer, people: &[waiver_proto::Person]) {
    out.json(&people);
    for p in people {
        out.say(format!("{:<24} {:<11} via {} ({}, {})", p.name, p.status, p.via, p.added_by, p.added_at));
    }
}

/// Prints what offboarding a person did.
pub(crate) fn print_offboarded(out: &Printer, name: &str, tokens: &[String], exceptions: &[String]) {
    out.json(&serde_json::json!({ "person": name, "tokens_revoked": tokens, "exceptions": exceptions }));
    out.say(format!("offboarded {name}: {} token(s) revoked", tokens.len()));
    if !exceptions.is_empty() {
        out.say(format!("  held until a new owner accepts: {}", exceptions.join(", ")));
    }
}

/// Prints what waits for someone, by kind, with how long each has waited and when it is due.
pub(crate) fn print_inbox(out: &Printer, inbox: &waiver_proto::Inbox, now: jiff::Timestamp) {
    out.json(inbox);
    if inbox.items.is_empty() {
        out.say("nothing waits for you");
        return;
    }
    let at = |t: &str| t.parse::<jiff::Timestamp>().ok();
    let since = |t: &str| at(t).map(|t| crate::output::relative(t, now)).unwrap_or_default();
    let due = |t: &Option<String>| {
        t.as_deref().and_then(at).map(|t| format!("due {}", crate::output::relative(t, now))).unwrap_or_default()
    };
    let mut kind = "";
    for item in &inbox.items {
        if item.kind != kind {
            kind = &item.kind;
            let total = inbox.totals.get(kind).copied().unwrap_or_default();
            out.say(format!("{} ({total})", kind.replace('_', " ")));
        }
        out.say(format!(
            "  {}  {:<8} {:<40} since {:<10} {}",
            item.id,
            item.risk,
            item.subject,
            since(&item.waiting_since),
            due(&item.due_at)
        ));
    }
}
