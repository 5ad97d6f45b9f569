//! Remote mode: the lifecycle, inventory, audit and token commands against a running server
//! (`--server URL --token T`). The token decides who acts; the server's service enforces
//! roles and separation of duties exactly as in local mode. Answers are converted back to
//! domain values so both modes print alike, and every event read is re-sealed locally and
//! checked against the server's hash.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use waiver_core::{
    Exception, ExceptionId, Identity, Principal,
    audit::{BrokenLink, ChainHead, EventDraft, EventRecord},
};
use waiver_store::seal::Tampered;

use crate::{
    cli::{
        AuditCommand, BreakGlassCommand, Cli, Command, ExceptionCommand, IdentityCommand, ListArgs, PersonCommand,
        TokenCommand,
    },
    commands::{CliError, read_document},
    output::Printer,
};

/// A running server and the token to use.
pub struct Remote {
    base: String,
    token: String,
    agent: ureq::Agent,
}

fn failure(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(anyhow::anyhow!("{e}"))
}

impl Remote {
    /// Remote mode if `--server` was given (then `--token` is required).
    pub fn from_cli(cli: &Cli) -> Result<Option<Self>, CliError> {
        let Some(server) = &cli.server else { return Ok(None) };
        let token = cli.token.clone().ok_or_else(|| {
            CliError::Usage("--server needs --token (or WAIVER_TOKEN): the token decides who acts".into())
        })?;
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(CliError::Usage(format!("--server: `{server}` is not an http:// or https:// URL")));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Some(Self { base: server.trim_end_matches('/').to_owned(), token, agent }))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<String>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match method {
            "GET" => {
                let mut request = self.agent.get(&url).header("Authorization", &auth);
                for (k, v) in query {
                    request = request.query(*k, v);
                }
                request.call()
            }
            "PUT" => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default()),
            "PATCH" => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default()),
            _ => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default()),
        };
        let mut response = result.map_err(|e| failure(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(failure)?;
        json_answer(&url, status, &text)
    }

    /// A GET whose success is not JSON (an export); failures are problems as usual.
    fn text(&self, path: &str, query: &[(&str, String)]) -> Result<String, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url).header("Authorization", &format!("Bearer {}", self.token));
        for (k, v) in query {
            request = request.query(*k, v);
        }
        let mut response = request.call().map_err(|e| failure(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().map_err(failure)?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        match serde_json::from_str::<waiver_proto::Problem>(&text) {
            Ok(problem) => Err(CliError::Remote(Box::new(problem))),
            Err(_) => Err(failure(format!("{url} answered {status}: {text}"))),
        }
    }

    /// A POST of CSV text with query parameters (an import).
    fn post_csv(&self, path: &str, query: &[(&str, String)], body: Vec<u8>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "text/csv");
        for (k, v) in query {
            request = request.query(*k, v);
        }
        let mut response = request.send(body).map_err(|e| failure(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(1 << 30).read_to_string().map_err(failure)?;
        json_answer(&url, status, &text)
    }

    fn post_file(&self, path: &str, file: &Path) -> Result<Value, CliError> {
        let (text, format) = read_document(file)?;
        // YAML in, JSON to the server: the server parses (and names fields) as it would JSON.
        let value: Value = waiver_proto::parse(&text, format)?;
        self.call("POST", path, &[], Some(value.to_string()))
    }
}

/// A JSON answer: the value on 2xx, the server's problem (or what it said) otherwise.
fn json_answer(url: &str, status: u16, text: &str) -> Result<Value, CliError> {
    let value: Value = serde_json::from_str(text).map_err(|_| failure(format!("{url} answered {status}: {text}")))?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    match serde_json::from_value::<waiver_proto::Problem>(value) {
        Ok(problem) => Err(CliError::Remote(Box::new(problem))),
        Err(_) => Err(failure(format!("{url} answered {status}: {text}"))),
    }
}

fn exception(value: Value) -> Result<Exception, CliError> {
    let wire: waiver_proto::Exception = serde_json::from_value(value).map_err(failure)?;
    Exception::try_from(wire).map_err(failure)
}

fn identity(value: Value) -> Result<Identity, CliError> {
    let wire: waiver_proto::Identity = serde_json::from_value(value).map_err(failure)?;
    Identity::try_from(wire).map_err(|e| failure(format!("identity: {e}")))
}

/// Re-seals an event from its fields and checks the hash the server sent.
fn event(value: &Value) -> Result<EventRecord, CliError> {
    let wire: waiver_proto::Event = serde_json::from_value(value.clone()).map_err(failure)?;
    let draft = EventDraft {
        at: wire.at.parse().map_err(failure)?,
        actor: Principal::parse("actor", &wire.actor).map_err(failure)?,
        event_type: wire.event_type.clone(),
        exception_id: wire.exception_id.as_deref().map(str::parse).transpose().map_err(failure)?,
        data: wire.data.clone(),
    };
    let seal = match wire.seal.as_deref() {
        None => None,
        Some(text) => Some(
            waiver_core::audit::Seal::parse(text)
                .ok_or_else(|| failure(format!("event {} has a malformed seal", wire.seq)))?,
        ),
    };
    let sealed = draft.seal_with(wire.seq, &wire.prev_hash, seal);
    if sealed.hash != wire.hash {
        return Err(failure(format!("event {} does not match its hash: the server's log may be altered", wire.seq)));
    }
    Ok(sealed)
}

fn items(value: &Value) -> &[Value] {
    value.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn comment(c: &Option<String>) -> String {
    json!({ "comment": c }).to_string()
}

fn list_params(args: &ListArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    for (k, v) in [
        ("state", &args.state),
        ("kind", &args.kind),
        ("subject", &args.subject),
        ("owner", &args.owner),
        ("risk", &args.risk),
        ("waives", &args.waives),
        ("expires_before", &args.expires_before),
        ("q", &args.q),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    q
}

impl Remote {
    /// Every exception matching `query`, following the cursor.
    fn list(&self, mut query: Vec<(&'static str, String)>, limit: Option<usize>) -> Result<Vec<Exception>, CliError> {
        let mut out = Vec::new();
        query.push(("limit", waiver_service::MAX_PAGE.to_string()));
        loop {
            let page = self.call("GET", "/api/v1/exceptions", &query, None)?;
            for item in items(&page) {
                out.push(exception(item.clone())?);
            }
            let next = page.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
            match next {
                Some(cursor) if limit.is_none_or(|l| out.len() < l) => {
                    query.retain(|(k, _)| *k != "cursor");
                    query.push(("cursor", cursor));
                }
                _ => break,
            }
        }
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    }
}

/// Runs a command that has a remote form; `None` for the commands that are local only.
pub fn run(remote: &Remote, command: &Command, out: &Printer) -> Option<Result<u8, CliError>> {
    Some(match command {
        Command::Exception(c) => exception_command(remote, c, out),
        Command::BreakGlass(c) => break_glass(remote, c, out),
        Command::Identity(c) => identity_command(remote, c, out),
        Command::Person(c) => person_command(remote, c, out),
        Command::Inbox { limit } => {
            remote.call("GET", "/api/v1/inbox", &[("limit", limit.to_string())], None).and_then(|v| {
                let inbox: waiver_proto::Inbox = serde_json::from_value(v).map_err(|e| {
                    CliError::Failure(anyhow::anyhow!("the server sent an inbox waiver cannot read: {e}"))
                })?;
                crate::commands::print_inbox(out, &inbox, now());
                Ok(0)
            })
        }
        Command::Audit(c) => audit(remote, c, out),
        Command::Token(c) => token(remote, c, out),
        Command::Import(args) => import(remote, args, out),
        Command::Report(args) => remote
            .call(
                "GET",
                &format!("/api/v1/reports/{}", args.name),
                &[
                    ("weeks", args.weeks.to_string()),
                    ("unused_days", args.unused_days.to_string()),
                    ("min_subjects", args.min_subjects.to_string()),
                    ("limit", args.limit.to_string()),
                ],
                None,
            )
            .map(|value| {
                crate::commands::print_report(out, &value);
                0
            }),
        Command::Export(args) => remote
            .text("/api/v1/export", &[("format", args.format.name().to_owned())])
            .and_then(|text| crate::commands::write_export(args.out.as_deref(), &text)),
        _ => return None,
    })
}

fn now() -> jiff::Timestamp {
    use waiver_core::Clock as _;
    crate::clock::SystemClock.now()
}

fn exception_command(remote: &Remote, command: &ExceptionCommand, out: &Printer) -> Result<u8, CliError> {
    let act = |id: &str, action: &str, c: &Option<String>| {
        remote.call("POST", &format!("/api/v1/exceptions/{id}/{action}"), &[], Some(comment(c))).and_then(exception)
    };
    let e = match command {
        ExceptionCommand::Request { file } => {
            let filed = exception(remote.post_file("/api/v1/exceptions", file)?)?;
            out.filed(&filed, now());
            return Ok(0);
        }
        ExceptionCommand::Approve { id, comment, narrow } => {
            let narrow = narrow.to_wire().map_err(CliError::Usage)?;
            let body = json!({ "comment": comment.comment, "narrow": narrow }).to_string();
            exception(remote.call("POST", &format!("/api/v1/exceptions/{id}/approve"), &[], Some(body))?)?
        }
        ExceptionCommand::Transfer { id, to, comment } => {
            let body = json!({ "to": to, "comment": comment.comment }).to_string();
            exception(remote.call("POST", &format!("/api/v1/exceptions/{id}/transfer"), &[], Some(body))?)?
        }
        ExceptionCommand::AcceptTransfer { id, comment } => act(id, "accept-transfer", &comment.comment)?,
        ExceptionCommand::Reject { id, comment } => act(id, "reject", &comment.comment)?,
        ExceptionCommand::Withdraw { id, comment } => act(id, "withdraw", &comment.comment)?,
        ExceptionCommand::Revoke { id, comment } => act(id, "revoke", &comment.comment)?,
        ExceptionCommand::Attest { id, comment } => act(id, "attest", &comment.comment)?,
        ExceptionCommand::Frameworks { id, set, comment } => {
            let body = json!({ "frameworks": set, "comment": comment.comment }).to_string();
            exception(remote.call("PUT", &format!("/api/v1/exceptions/{id}/frameworks"), &[], Some(body))?)?
        }
        ExceptionCommand::Renew { id, expires_at, comment } => {
            let body = json!({ "expires_at": expires_at, "comment": comment.comment }).to_string();
            exception(remote.call("POST", &format!("/api/v1/exceptions/{id}/renew"), &[], Some(body))?)?
        }
        ExceptionCommand::Show { id } => {
            let e = exception(remote.call("GET", &format!("/api/v1/exceptions/{id}"), &[], None)?)?;
            let history = remote.call("GET", &format!("/api/v1/exceptions/{id}/events"), &[], None)?;
            let history = items(&history).iter().map(event).collect::<Result<Vec<_>, _>>()?;
            out.exception(&e, now(), Some(&history));
            return Ok(0);
        }
        ExceptionCommand::List(args) => {
            let listed = remote.list(list_params(args), args.limit)?;
            out.exception_list(&listed, now());
            return Ok(0);
        }
    };
    out.exception(&e, now(), None);
    Ok(0)
}

fn break_glass(remote: &Remote, command: &BreakGlassCommand, out: &Printer) -> Result<u8, CliError> {
    let e = match command {
        BreakGlassCommand::Activate { file } => exception(remote.post_file("/api/v1/break-glass", file)?)?,
        BreakGlassCommand::End { id, comment: c } => {
            exception(remote.call("POST", &format!("/api/v1/exceptions/{id}/end"), &[], Some(comment(&c.comment)))?)?
        }
        BreakGlassCommand::Review { id, comment: c } => exception(remote.call(
            "POST",
            &format!("/api/v1/exceptions/{id}/post-use-review"),
            &[],
            Some(comment(&c.comment)),
        )?)?,
    };
    out.exception(&e, now(), None);
    Ok(0)
}

fn identity_command(remote: &Remote, command: &IdentityCommand, out: &Printer) -> Result<u8, CliError> {
    match command {
        IdentityCommand::Add { file } => {
            let added = identity(remote.post_file("/api/v1/identities", file)?)?;
            out.identity(&added, None, now());
        }
        IdentityCommand::Update { entity, file, owner, team, kind, credential_type } => {
            let mut patch = match file {
                Some(file) => {
                    let (text, format) = read_document(file)?;
                    waiver_proto::parse::<Value>(&text, format)?
                }
                None => json!({}),
            };
            for (k, v) in [("owner", owner), ("team", team), ("kind", kind), ("credential_type", credential_type)] {
                if let (Some(v), Some(map)) = (v, patch.as_object_mut()) {
                    map.insert(k.to_owned(), json!(v));
                }
            }
            let updated = identity(remote.call(
                "PATCH",
                &format!("/api/v1/identities/{entity}"),
                &[],
                Some(patch.to_string()),
            )?)?;
            out.identity(&updated, None, now());
        }
        IdentityCommand::Offboard { entity, comment: c } => {
            let answer = remote.call(
                "POST",
                &format!("/api/v1/identities/{entity}/offboard"),
                &[],
                Some(comment(&c.comment)),
            )?;
            let offboarded = identity(answer.get("identity").cloned().unwrap_or_default())?;
            let revoked: Vec<ExceptionId> = answer
                .get("revoked")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(|id| id.as_str()?.parse().ok()).collect())
                .unwrap_or_default();
            out.offboarded(&offboarded, &revoked);
        }
        IdentityCommand::Show { entity } => {
            let shown = identity(remote.call("GET", &format!("/api/v1/identities/{entity}"), &[], None)?)?;
            let theirs = remote.list(vec![("subject", entity.clone())], None)?;
            out.identity(&shown, Some(&theirs), now());
        }
        IdentityCommand::List => {
            let all = remote.call("GET", "/api/v1/identities", &[], None)?;
            let all = items(&all).iter().cloned().map(identity).collect::<Result<Vec<_>, _>>()?;
            out.identity_list(&all);
        }
    }
    Ok(0)
}

fn audit(remote: &Remote, command: &AuditCommand, out: &Printer) -> Result<u8, CliError> {
    match command {
        AuditCommand::Verify { .. } => {
            let v = remote.call("GET", "/api/v1/audit/verify", &[], None)?;
            let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
            let chain = match v.get("broken_at").and_then(Value::as_u64) {
                None => Ok(ChainHead {
                    n_events: v.get("events").and_then(Value::as_u64).unwrap_or_default(),
                    head_hash: text("head_hash"),
                }),
                Some(seq) => Err(BrokenLink { seq, reason: text("detail") }),
            };
            let records: Vec<Tampered> = v
                .get("records")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .map(|r| {
                            let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                            Tampered::new(field("record"), field("reason"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.verification(&chain, &records);
            Ok(if v.get("ok") == Some(&Value::Bool(true)) { 0 } else { 1 })
        }
        // The leader keeps the checkpoint fresh; forcing one is an operator's step on the
        // database a restart will load from, so it is not offered over HTTP.
        AuditCommand::Checkpoint => Err(CliError::Usage(
            "`audit checkpoint` runs on the database (--data-dir or --database-url), not against a server".into(),
        )),
        AuditCommand::Events { after, limit } => {
            let mut events = Vec::new();
            let mut cursor = *after;
            while events.len() < *limit as usize {
                let want = (*limit as usize - events.len()).min(1000);
                let page = remote.call(
                    "GET",
                    "/api/v1/audit/events",
                    &[("cursor", cursor.to_string()), ("limit", want.to_string())],
                    None,
                )?;
                let got = items(&page).iter().map(event).collect::<Result<Vec<_>, _>>()?;
                let Some(last) = got.last() else { break };
                cursor = last.seq;
                let full = got.len() == want;
                events.extend(got);
                if !full {
                    break;
                }
            }
            out.events(&events);
            Ok(0)
        }
    }
}

fn token(remote: &Remote, command: &TokenCommand, out: &Printer) -> Result<u8, CliError> {
    let issued = match command {
        TokenCommand::Issue { principal, roles, label, expires_in, scopes } => {
            let body = json!({ "principal": principal, "roles": roles, "label": label, "expires_in": expires_in,
                               "scopes": scopes })
            .to_string();
            remote.call("POST", "/api/v1/tokens", &[], Some(body))?
        }
        TokenCommand::Rotate { id } => remote.call("POST", &format!("/api/v1/tokens/{id}/rotate"), &[], None)?,
    };
    let text = |k: &str| issued.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let record = waiver_store::TokenRecord {
        id: text("id"),
        secret_hash: String::new(),
        principal: text("principal"),
        roles: issued
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        label: text("label"),
        created_at: text("created_at"),
        revoked_at: None,
        issued_by: None,
        expires_at: issued.get("expires_at").and_then(Value::as_str).map(str::to_owned),
        scopes: issued
            .get("scopes")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        last_used_at: None,
    };
    out.token(&waiver_service::IssuedToken { secret: text("token"), record });
    Ok(0)
}

/// `waiver import FILE.csv` against a server: the file goes as it is; the server reads it.
fn import(remote: &Remote, args: &crate::cli::ImportArgs, out: &Printer) -> Result<u8, CliError> {
    let body =
        std::fs::read(&args.file).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.file.display())))?;
    let query = [
        ("dry_run", args.dry_run.to_string()),
        ("skip_invalid", args.skip_invalid.to_string()),
        ("map", args.map.join(";")),
    ];
    let report = remote.post_csv("/api/v1/import", &query, body)?;
    Ok(crate::commands::print_import(out, &report, args.dry_run, args.skip_invalid))
}

fn person_command(remote: &Remote, command: &PersonCommand, out: &Printer) -> Result<u8, CliError> {
    let people = |v: Value| -> Result<Vec<waiver_proto::Person>, CliError> {
        serde_json::from_value(v)
            .map_err(|e| CliError::Failure(anyhow::anyhow!("the server sent a person list waiver cannot read: {e}")))
    };
    match command {
        PersonCommand::List => {
            let listed = remote.call("GET", "/api/v1/people", &[], None)?;
            crate::commands::print_people(out, &people(Value::Array(items(&listed).to_vec()))?);
        }
        PersonCommand::Add { name } => {
            let added = remote.call("POST", "/api/v1/people", &[], Some(json!({ "name": name }).to_string()))?;
            crate::commands::print_people(out, &people(Value::Array(vec![added]))?);
        }
        PersonCommand::Notify { name, channels, digest } => {
            let channels: Option<Vec<&String>> = channels.as_ref().map(|c| c.iter().filter(|c| *c != "none").collect());
            let body = json!({ "channels": channels, "digest": digest }).to_string();
            let set = remote.call("PUT", &format!("/api/v1/people/{name}/notifications"), &[], Some(body))?;
            crate::commands::print_people(out, &people(Value::Array(vec![set]))?);
        }
        PersonCommand::Offboard { name, comment: c } => {
            let done =
                remote.call("POST", &format!("/api/v1/people/{name}/offboard"), &[], Some(comment(&c.comment)))?;
            let strings = |key: &str| -> Vec<String> {
                done.get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            crate::commands::print_offboarded(out, name, &strings("tokens_revoked"), &strings("exceptions"));
        }
    }
    Ok(0)
}
