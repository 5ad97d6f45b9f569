//! The guided request and break-glass forms. The form is turned into the API's JSON request
//! and filed through the same use case; the service's field errors come back beside the
//! fields they name. The governance rules that apply are shown from the rules in force.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    body::Body,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde_json::{Value, json};
use waiver_core::{ControlKind, CredentialType, Kind, Risk, Rules};
use waiver_proto::ExceptionRequest;

use super::{
    Chrome, Viewer, html,
    pages::{checked_form, field, parse_local},
};
use crate::{ApiState, rest};

/// One governance rule row: what a risk level asks of a request.
struct RuleRow {
    risk: &'static str,
    max_duration: String,
    approvals: String,
    controls: String,
    review: String,
}

struct ControlInput {
    kind: &'static str,
    checked: bool,
    description: String,
    enforced: bool,
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    chrome: Chrome,
    /// This form's one-time value: submitting it twice files once.
    submission: String,
    /// Current people, offered for the owner (the service refuses anyone else).
    people: Vec<String>,
    /// The inventory's active identities, offered for the subject (at most 500).
    identities: Vec<String>,
    break_glass: bool,
    /// Refused for want of a recent or stronger sign-in: offer one.
    step_up: bool,
    action: &'static str,
    rules: Vec<RuleRow>,
    credential_caps: Vec<(String, String)>,
    general: Vec<String>,
    /// Each forbid (and `default-deny`): its id, whether ticked, and what it says, in brief.
    policies: Vec<(String, bool, String)>,
    controls: Vec<ControlInput>,
    v: BTreeMap<&'static str, String>,
    errors: BTreeMap<&'static str, String>,
    other_errors: Vec<String>,
    risks: &'static [Risk],
}

impl RequestPage {
    fn value(&self, name: &str) -> &str {
        self.v.get(name).map(String::as_str).unwrap_or("")
    }

    fn error(&self, name: &str) -> &str {
        self.errors.get(name).map(String::as_str).unwrap_or("")
    }

    fn invalid(&self, name: &str) -> bool {
        self.errors.contains_key(name)
    }
}

const TEXT_FIELDS: &[&str] = &[
    "subject",
    "actions",
    "resources",
    "condition",
    "justification",
    "normal_path_unavailable",
    "risk",
    "owner",
    "expires_at",
    "lasts",
    "remediation_plan",
    "remediation_ticket",
    "affected_systems",
    "references",
    "descendants",
];

fn rule_rows(rules: &Rules, kind: Kind) -> Vec<RuleRow> {
    Risk::ALL
        .iter()
        .map(|&risk| {
            let cap = match kind {
                Kind::Planned => rules.max_planned,
                Kind::BreakGlass => rules.max_break_glass,
            };
            let by_risk = *rules.max_by_risk.get(risk);
            let max = if by_risk.duration() < cap.duration() { by_risk } else { cap };
            let required = rules.controls_required.get(risk);
            let controls = if required.is_empty() {
                format!("at least {}", rules.controls_min.get(risk))
            } else {
                let kinds: Vec<String> = required.iter().map(ToString::to_string).collect();
                format!("at least {}, including {}", rules.controls_min.get(risk), kinds.join(", "))
            };
            RuleRow {
                risk: risk.as_str(),
                max_duration: super::view::human(max),
                approvals: match kind {
                    Kind::Planned => {
                        format!("{} distinct approver(s), neither you nor the owner", rules.approvals.get(risk))
                    }
                    Kind::BreakGlass => "none before use; a post-use review after".to_owned(),
                },
                controls,
                review: format!("every {}", super::view::human(*rules.review_every.get(risk))),
            }
        })
        .collect()
}

fn general_rules(rules: &Rules, kind: Kind) -> Vec<String> {
    let mut out = vec![];
    match kind {
        Kind::Planned => {
            out.push(format!("A request not decided within {} times out.", super::view::human(rules.pending_timeout)));
            if rules.remediation_plan_required {
                out.push("A remediation plan is required: how the need goes away.".into());
            }
            out.push(format!("At most {} renewal(s); each is approved again.", rules.renewal_limit));
        }
        Kind::BreakGlass => {
            out.push(format!("Active at once, for at most {}.", super::view::human(rules.max_break_glass)));
            out.push(format!(
                "Every decision it grants is recorded; someone other than you reviews it within {} of its end.",
                super::view::human(rules.post_use_review_within)
            ));
        }
    }
    if !rules.wildcard_actions {
        out.push("Scope names actions one by one: `*` is not allowed.".into());
    }
    out
}

fn page(
    api: &ApiState,
    chrome: Chrome,
    kind: Kind,
    values: BTreeMap<&'static str, String>,
    fields: &[(String, String)],
    errors: BTreeMap<&'static str, String>,
    other_errors: Vec<String>,
) -> RequestPage {
    let rules = api.service.rules();
    let chosen: Vec<&str> = fields.iter().filter(|(k, _)| k == "waives").map(|(_, v)| v.as_str()).collect();
    let snapshot = api.decisions.snapshot.load();
    let baseline = snapshot.baseline();
    // What a rule says, in brief: its Cedar text without annotations, on one line.
    let brief = |id: &str| -> String {
        let text = baseline.policy_text(id).unwrap_or_default();
        let body: String = text.lines().filter(|l| !l.trim_start().starts_with('@')).collect::<Vec<_>>().join(" ");
        let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
        if body.chars().count() > 140 { format!("{}…", body.chars().take(139).collect::<String>()) } else { body }
    };
    let mut policies: Vec<(String, bool, String)> = baseline
        .policies()
        .into_iter()
        .filter(|(_, effect)| *effect == "forbid")
        .map(|(id, _)| {
            let on = chosen.contains(&id.as_str());
            let said = brief(&id);
            (id, on, said)
        })
        .collect();
    policies.push((
        "default-deny".to_owned(),
        chosen.contains(&"default-deny"),
        "what no permit allows is denied; waiving it allows what no policy does".to_owned(),
    ));
    let controls = ControlKind::ALL
        .iter()
        .map(|k| {
            let name = k.as_str();
            ControlInput {
                kind: name,
                checked: field(fields, &format!("control_{name}")).is_some(),
                description: field(fields, &format!("control_{name}_description")).unwrap_or_default().to_owned(),
                enforced: fields.is_empty() || field(fields, &format!("control_{name}_enforced")).is_some(),
            }
        })
        .collect();
    RequestPage {
        // The same value again when the form comes back with errors: it was not filed.
        submission: field(fields, "submission")
            .filter(|v| !v.is_empty())
            .map_or_else(super::session::random_token, |v| v.chars().take(64).collect()),
        chrome,
        people: Vec::new(),
        identities: Vec::new(),
        break_glass: kind == Kind::BreakGlass,
        step_up: false,
        action: if kind == Kind::BreakGlass { "/ui/break-glass" } else { "/ui/request" },
        rules: rule_rows(&rules, kind),
        credential_caps: rules
            .max_by_credential_type
            .iter()
            .map(|(t, p): (&CredentialType, _)| (t.to_string(), super::view::human(*p)))
            .collect(),
        general: general_rules(&rules, kind),
        policies,
        controls,
        v: values,
        errors,
        other_errors,
        risks: Risk::ALL,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Prefill {
    subject: Option<String>,
}

async fn show(viewer: Viewer, api: ApiState, kind: Kind, prefill: Prefill) -> Response {
    // Refused before anything is typed: a form the viewer's roles could never file.
    let (needs, what) = match kind {
        Kind::Planned => (waiver_core::actor::may::FILE, "file requests"),
        Kind::BreakGlass => (waiver_core::actor::may::BREAK_GLASS, "break glass"),
    };
    if let Err(e) = waiver_service::require(&viewer.actor, what, needs) {
        return super::pages::failure(e.into());
    }
    let active = if kind == Kind::BreakGlass { "break-glass" } else { "request" };
    let chrome = viewer.chrome(active);
    let mut values = BTreeMap::new();
    values.insert("subject", prefill.subject.unwrap_or_default());
    values.insert("risk", "medium".to_owned());
    values.insert("owner", viewer.actor.principal.to_string());
    if kind == Kind::BreakGlass {
        // An emergency: an hour unless said otherwise, so there is one field less to fill.
        values.insert("lasts", "PT1H".to_owned());
    }
    let mut shown = page(&api, chrome, kind, values, &[], BTreeMap::new(), Vec::new());
    shown.people = current_people(&api).await;
    shown.identities = known_identities(&api, &viewer).await;
    html(StatusCode::OK, &shown)
}

/// Most identities offered in the subject picker.
const MAX_PICKER: usize = 500;

/// The inventory's active identities, as `TYPE:ID`, for the subject picker.
async fn known_identities(api: &ApiState, viewer: &Viewer) -> Vec<String> {
    api.service
        .identities(&viewer.actor)
        .await
        .map(|all| {
            all.iter()
                .filter(|i| i.status == waiver_core::IdentityStatus::Active)
                .take(MAX_PICKER)
                .map(|i| i.entity.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the directory's current people (empty when it cannot be read: the field
/// still takes a name, and the service checks it).
async fn current_people(api: &ApiState) -> Vec<String> {
    api.service
        .directory()
        .await
        .map(|held| held.directory.people.values().filter(|p| p.is_active()).map(|p| p.name.clone()).collect())
        .unwrap_or_default()
}

pub(crate) async fn request_form(viewer: Viewer, State(api): State<ApiState>, Query(p): Query<Prefill>) -> Response {
    show(viewer, api, Kind::Planned, p).await
}

pub(crate) async fn break_glass_form(
    viewer: Viewer,
    State(api): State<ApiState>,
    Query(p): Query<Prefill>,
) -> Response {
    show(viewer, api, Kind::BreakGlass, p).await
}

pub(crate) async fn request_submit(viewer: Viewer, State(api): State<ApiState>, body: Body) -> Response {
    submit(viewer, api, Kind::Planned, body).await
}

pub(crate) async fn break_glass_submit(viewer: Viewer, State(api): State<ApiState>, body: Body) -> Response {
    submit(viewer, api, Kind::BreakGlass, body).await
}

/// Which form field an API error path belongs beside.
fn form_field(path: &str) -> Option<&'static str> {
    let head = path.split(['.', '[']).next().unwrap_or(path);
    Some(match head {
        "subject" => "subject",
        "waives" => "waives",
        "scope" if path.contains("resources") => "resources",
        "scope" => "actions",
        "condition" => "condition",
        "compensating_controls" => "controls",
        "justification" => "justification",
        "normal_path_unavailable" => "normal_path_unavailable",
        "risk" => "risk",
        "credential_type" => "risk",
        "owner" => "owner",
        "expires_at" | "starts_at" => "expires_at",
        "remediation" => "remediation_plan",
        "affected_systems" => "affected_systems",
        "references" => "references",
        _ => return None,
    })
}

fn list(text: &str, split: &[char]) -> Vec<String> {
    text.split(split).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The form as the API's JSON request; or the fields that could not be read, with the
/// request as it would be with stand-ins for them (so the rest can still be checked).
fn to_request(
    fields: &[(String, String)],
    kind: Kind,
    now: jiff::Timestamp,
) -> Result<Value, (Value, BTreeMap<&'static str, String>)> {
    let get = |name: &str| field(fields, name).unwrap_or_default().trim().to_owned();
    let mut errors = BTreeMap::new();
    let subject = get("subject");
    let subject = match subject.parse::<waiver_core::EntityRef>() {
        Ok(s) => json!({"type": s.entity_type().to_string(), "id": s.id()}),
        Err(e) => {
            errors.insert(
                "subject",
                if subject.is_empty() {
                    "required: TYPE:ID, e.g. ServiceAccount:backup-runner".into()
                } else {
                    e.to_string()
                },
            );
            json!({"type": "ServiceAccount", "id": "form-stand-in"})
        }
    };
    let descendants = field(fields, "descendants").is_some();
    let mut resources = Vec::new();
    for line in list(&get("resources"), &['\n', ',']) {
        match line.parse::<waiver_core::EntityRef>() {
            Ok(r) => {
                resources.push(json!({"type": r.entity_type().to_string(), "id": r.id(), "descendants": descendants}))
            }
            Err(e) => {
                errors.insert("resources", format!("`{}`: {e}", waiver_core::id::clip(&line)));
            }
        }
    }
    let expires = get("expires_at");
    // A preset (`lasts`) when no exact end is given: "8 hours", "7 days" from now.
    let preset = get("lasts");
    let expires_at = match (expires.is_empty(), preset.parse::<waiver_core::Period>()) {
        (true, Ok(lasts)) if !preset.is_empty() => now.checked_add(lasts.duration()).unwrap_or(now).to_string(),
        _ => match parse_local(&expires) {
            Ok(t) => t.to_string(),
            Err(why) => {
                let why =
                    if expires.is_empty() { "required: pick how long it lasts, or when it ends".into() } else { why };
                errors.insert("expires_at", why);
                (now + jiff::SignedDuration::from_hours(1)).to_string()
            }
        },
    };
    if errors.contains_key("resources") && resources.is_empty() {
        resources.push(json!({"type": "Resource", "id": "form-stand-in", "descendants": false}));
    }
    let controls: Vec<Value> = ControlKind::ALL
        .iter()
        .map(|k| k.as_str())
        .filter(|k| field(fields, &format!("control_{k}")).is_some())
        .map(|k| {
            json!({"kind": k, "description": get(&format!("control_{k}_description")),
                   "enforced": field(fields, &format!("control_{k}_enforced")).is_some()})
        })
        .collect();
    let condition = get("condition");
    let plan = get("remediation_plan");
    let ticket = get("remediation_ticket");
    let remediation = match (kind, plan.is_empty() && ticket.is_empty()) {
        (Kind::BreakGlass, _) | (_, true) => Value::Null,
        _ => json!({"plan": plan, "ticket": (!ticket.is_empty()).then_some(ticket)}),
    };
    let request = json!({
        "subject": subject,
        "waives": fields.iter().filter(|(k, _)| k == "waives").map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        "scope": {"actions": list(&get("actions"), &[',', ' ', '\n']), "resources": resources},
        "condition": (!condition.is_empty()).then_some(condition),
        "compensating_controls": controls,
        "justification": get("justification"),
        "normal_path_unavailable": get("normal_path_unavailable"),
        "affected_systems": list(&get("affected_systems"), &[',', '\n']),
        "references": list(&get("references"), &[',', '\n']),
        "risk": get("risk"),
        "owner": get("owner"),
        "expires_at": expires_at,
        "remediation": remediation,
    });
    if errors.is_empty() { Ok(request) } else { Err((request, errors)) }
}

async fn submit(viewer: Viewer, api: ApiState, kind: Kind, body: Body) -> Response {
    let fields = match checked_form(&viewer, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let values: BTreeMap<&'static str, String> =
        TEXT_FIELDS.iter().map(|name| (*name, field(&fields, name).unwrap_or_default().to_owned())).collect();
    let active = if kind == Kind::BreakGlass { "break-glass" } else { "request" };
    // Refused: the form again, with what was typed and the errors beside the fields.
    let refuse = |errors: BTreeMap<&'static str, String>, other: Vec<String>, status: StatusCode| {
        let mut shown = page(&api, viewer.chrome(active), kind, values.clone(), &fields, errors, other);
        shown.step_up = status == StatusCode::UNAUTHORIZED;
        shown
    };
    let people = current_people(&api).await;
    let identities = known_identities(&api, &viewer).await;
    let refuse = |errors: BTreeMap<&'static str, String>, other: Vec<String>, status: StatusCode| {
        let mut shown = refuse(errors, other, status);
        shown.people.clone_from(&people);
        shown.identities.clone_from(&identities);
        html(status, &shown)
    };
    let request = match to_request(&fields, kind, api.service.now()) {
        Ok(r) => r,
        Err((stand_in, mut errors)) => {
            // One pass: what the rest of the form breaks too, checked with stand-ins for the
            // fields that could not be read (their own errors are already said).
            if let Ok(request) =
                waiver_proto::parse::<ExceptionRequest>(&stand_in.to_string(), waiver_proto::Format::Json)
                && let Ok(more) = api.service.filing_errors(&viewer.actor, request, kind).await
            {
                for e in more {
                    if let Some(name) = form_field(&e.field)
                        && !errors.contains_key(name)
                    {
                        errors.insert(name, e.message);
                    }
                }
            }
            return refuse(errors, vec![], StatusCode::BAD_REQUEST);
        }
    };
    let parsed: Result<ExceptionRequest, _> = waiver_proto::parse(&request.to_string(), waiver_proto::Format::Json);
    // Filed once per form, however often it is submitted.
    let submission = field(&fields, "submission").filter(|v| !v.is_empty() && v.len() <= 64).unwrap_or_default();
    let claim = if submission.is_empty() {
        None
    } else {
        match api.ui.submissions.claim(&viewer.session, submission).await {
            super::Submission::Filed(id) => {
                return Redirect::to(&format!("/ui/exceptions/{id}?done=already-filed")).into_response();
            }
            super::Submission::First(key) => Some(key),
        }
    };
    let filed = match parsed {
        Err(e) => Err(waiver_service::ServiceError::Invalid(e)),
        Ok(request) => match kind {
            Kind::Planned => api.service.request(&viewer.actor, request).await,
            Kind::BreakGlass => api.service.activate_break_glass(&viewer.actor, request).await,
        },
    };
    if let Some(key) = &claim {
        api.ui.submissions.done(key, filed.as_ref().ok().map(|e| e.id.to_string()).as_deref());
    }
    match filed {
        Ok(e) => {
            let _ = rest::applied(&api, &e);
            api.ui.work_counts.forget(&viewer.actor);
            let done = if kind == Kind::BreakGlass { "activated" } else { "requested" };
            Redirect::to(&format!("/ui/exceptions/{}?done={done}", e.id)).into_response()
        }
        Err(e) => {
            let problem = e.problem();
            let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut errors: BTreeMap<&'static str, String> = BTreeMap::new();
            let mut other = Vec::new();
            for f in &problem.errors {
                match form_field(&f.field) {
                    Some(name) => {
                        let entry = errors.entry(name).or_default();
                        if !entry.is_empty() {
                            entry.push_str("; ");
                        }
                        entry.push_str(&f.message);
                    }
                    None => other.push(format!("{}: {}", f.field, f.message)),
                }
            }
            if problem.errors.is_empty() {
                other.push(problem.detail);
            }
            refuse(errors, other, status)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_form_becomes_the_api_request() {
        let fields = form(&[
            ("subject", "ServiceAccount:backup-runner"),
            ("waives", "forbid-prod-db-direct-access"),
            ("actions", "connect, read"),
            ("resources", "Database:orders-prod\nDatabase:orders-replica"),
            ("control_read_only", "on"),
            ("control_read_only_description", "read-only role"),
            ("risk", "high"),
            ("owner", "sam"),
            ("expires_at", "2026-12-01T10:30"),
            ("remediation_plan", "fix the replica"),
        ]);
        let v = to_request(&fields, Kind::Planned, jiff::Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(v["subject"], json!({"type": "ServiceAccount", "id": "backup-runner"}));
        assert_eq!(v["scope"]["actions"], json!(["connect", "read"]));
        assert_eq!(v["scope"]["resources"][1]["id"], "orders-replica");
        assert_eq!(
            v["compensating_controls"],
            json!([{"kind": "read_only", "description": "read-only role", "enforced": false}])
        );
        assert_eq!(v["expires_at"], "2026-12-01T10:30:00Z", "a datetime-local value is read as UTC");
        assert_eq!(v["remediation"]["plan"], "fix the replica");
        let parsed: Result<ExceptionRequest, _> = waiver_proto::parse(&v.to_string(), waiver_proto::Format::Json);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn unreadable_fields_are_named() {
        let errors = to_request(
            &form(&[("subject", "nope"), ("resources", "x"), ("expires_at", "soon")]),
            Kind::Planned,
            jiff::Timestamp::UNIX_EPOCH,
        )
        .unwrap_err()
        .1;
        assert_eq!(errors.keys().copied().collect::<Vec<_>>(), ["expires_at", "resources", "subject"]);
        assert_eq!(form_field("scope.resources[0].id"), Some("resources"));
        assert_eq!(form_field("compensating_controls"), Some("controls"));
        assert_eq!(form_field("mystery"), None);
    }
}
