//! The UI's pages: each reads through the service (as the viewer) and renders a template.

use askama::Template;
use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::Value;
use waiver_core::{EntityRef, Exception, ExceptionId, RevalidationTrigger, Role};
use waiver_service::{Action, ListQuery, Permitted, ServiceError, SortKey, WorkKind};

use super::{
    Chrome, Viewer, charts, html, safe_next,
    session::{self, LOGIN_COOKIE},
    view::{self, Row, relative, when, when_str},
};
use crate::{ApiError, ApiState, MAX_BODY_BYTES, rest};

/// Rows on a page of the register, the identities or the audit log.
const PAGE: usize = 50;

// ---- errors and forms -------------------------------------------------------------------

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    title: String,
    detail: String,
}

/// An error as a page: the same status and words as the API's problem document.
pub(crate) fn failure(e: ApiError) -> Response {
    let problem = e.into_problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut detail = problem.detail.clone();
    for field in &problem.errors {
        detail.push_str(&format!("\n{}: {}", field.field, field.message));
    }
    html(status, &ErrorPage { title: problem.title.clone(), detail })
}

/// A page that does not exist, as a page (not a problem document).
pub(crate) async fn not_found() -> Response {
    failure(ApiError::not_found("there is no such page; the menu lists every page"))
}

fn fail(e: ServiceError) -> Response {
    failure(e.into())
}

/// A form body as its fields, in order (fields may repeat).
pub(crate) async fn form_fields(body: Body) -> Result<Vec<(String, String)>, Response> {
    let bytes =
        axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| failure(ApiError::too_large(MAX_BODY_BYTES)))?;
    serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| failure(ApiError::bad_request("invalid_form", format!("the form does not parse: {e}"), None)))
}

pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A signed-in person's form: its fields, refused without this session's CSRF token.
pub(crate) async fn checked_form(viewer: &Viewer, body: Body) -> Result<Vec<(String, String)>, Response> {
    let fields = form_fields(body).await?;
    match field(&fields, "csrf") {
        Some(sent) if session::same(sent, &viewer.csrf) => Ok(fields),
        _ => Err(failure(ApiError::forbidden(
            "the form's CSRF token is missing or stale; reload the page and submit again",
        ))),
    }
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- sign in and out --------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

struct PersonaView {
    persona: String,
    principal: String,
    roles: String,
    blurb: String,
    token: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    error: Option<String>,
    personas: Vec<PersonaView>,
    /// The provider's name, when people sign in through one.
    provider: Option<String>,
    provider_href: String,
    token_form: bool,
    /// After sign-out: where the provider's own session ends.
    provider_logout: Option<String>,
}

fn login_response(api: &ApiState, status: StatusCode, next: &str, error: Option<String>) -> Response {
    login_page_with(api, status, next, error, None)
}

/// The sign-in page, saying why the last sign-in failed.
pub(crate) fn login_error(api: &ApiState, status: StatusCode, next: &str, why: &str) -> Response {
    login_page_with(api, status, next, Some(why.to_owned()), None)
}

fn login_page_with(
    api: &ApiState,
    status: StatusCode,
    next: &str,
    error: Option<String>,
    provider_logout: Option<String>,
) -> Response {
    // Sign-in CSRF: the form echoes a random value also set as a SameSite=Strict cookie.
    let csrf = session::random_token();
    let personas = api
        .ui
        .demo_personas
        .as_ref()
        .map(|all| {
            all.iter()
                .map(|p| PersonaView {
                    persona: p.persona.clone(),
                    principal: p.principal.clone(),
                    roles: p.roles.clone(),
                    blurb: p.blurb.clone(),
                    token: p.token.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let provider = api.ui.oidc.as_ref().and_then(|o| o.sign_in()).map(|s| s.display_name.clone());
    // With a provider, the token form stays only if the configuration keeps it (and in the demo).
    let token_form = api.ui.oidc.as_ref().and_then(|o| o.sign_in()).is_none_or(|s| s.token_sign_in)
        || api.ui.demo_personas.is_some();
    let next = safe_next(next).to_owned();
    let provider_href =
        format!("/ui/oidc/start?{}", serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default());
    let page =
        LoginPage { csrf: csrf.clone(), next, error, personas, provider, provider_href, token_form, provider_logout };
    let mut response = html(status, &page);
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={csrf}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=3600"
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(crate) async fn login_page(State(api): State<ApiState>, Query(q): Query<LoginQuery>) -> Response {
    login_response(&api, StatusCode::OK, q.next.as_deref().unwrap_or("/ui/"), None)
}

/// Roles that may use the UI: a decision-only token (`pep`) may not.
const UI_ROLES: &[Role] = &[Role::Requester, Role::Approver, Role::Responder, Role::Admin, Role::Auditor, Role::Agent];

pub(crate) async fn login(State(api): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let fields = match form_fields(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = field(&fields, "next").unwrap_or("/ui/").to_owned();
    let sent = field(&fields, "csrf").unwrap_or_default();
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same(sent, expected) {
        let why = "the sign-in form expired or came from another site; try again".to_owned();
        return login_response(&api, StatusCode::FORBIDDEN, &next, Some(why));
    }
    let token = field(&fields, "token").unwrap_or_default().trim();
    let token_form = api.ui.oidc.as_ref().and_then(|o| o.sign_in()).is_none_or(|s| s.token_sign_in)
        || api.ui.demo_personas.is_some();
    if !token_form {
        let why = "people sign in through the identity provider here, not with a token".to_owned();
        return login_response(&api, StatusCode::FORBIDDEN, &next, Some(why));
    }
    if token.is_empty() {
        return login_response(&api, StatusCode::BAD_REQUEST, &next, Some("token: enter an API token".into()));
    }
    let actor = match api.service.authenticate_scoped(&waiver_service::token_hash(token)).await {
        Ok(Some((_, scopes))) if !scopes.is_empty() => {
            let why = format!("token: limited to `{}`; the UI needs a token without scopes", scopes.join("`, `"));
            return login_response(&api, StatusCode::FORBIDDEN, &next, Some(why));
        }
        Ok(Some((actor, _))) => actor,
        Ok(None) => {
            let why = "token: unknown or revoked".to_owned();
            return login_response(&api, StatusCode::UNAUTHORIZED, &next, Some(why));
        }
        Err(e) => return fail(e),
    };
    if !actor.roles.any(UI_ROLES) {
        let why = format!(
            "`{}` holds a decision-only token (pep); the UI needs a token with a person's role",
            actor.principal
        );
        return login_response(&api, StatusCode::FORBIDDEN, &next, Some(why));
    }
    let id = api.ui.sessions.start(waiver_service::token_hash(token));
    tracing::info!(principal = %actor.principal, "signed in to the UI");
    let mut response = see_other(safe_next(&next));
    let cookies = [
        format!("{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=28800", session::COOKIE),
        format!("{LOGIN_COOKIE}=; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=0"),
    ];
    for c in cookies {
        if let Ok(value) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

pub(crate) async fn logout(viewer: Viewer, State(api): State<ApiState>, body: Body) -> Response {
    if let Err(r) = checked_form(&viewer, body).await {
        return r;
    }
    api.ui.sessions.end(&viewer.session);
    // Signed in through the provider: its session ends too (RP-initiated logout).
    let after = format!("{}/ui/login", api.decisions.public_url.trim_end_matches('/'));
    let provider_logout = match (&viewer.signed_in, &api.ui.oidc) {
        (Some(person), Some(oidc)) => oidc.end_session_url(&person.id_token, &after).await,
        _ => None,
    };
    // A page, not a redirect: the sign-out form may only lead to this origin (CSP
    // `form-action`), so the provider's logout is a link the person follows.
    let mut response = match provider_logout {
        Some(url) => login_page_with(&api, StatusCode::OK, "/ui/", None, Some(url)),
        None => see_other("/ui/login"),
    };
    if let Ok(value) =
        HeaderValue::from_str(&format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", session::COOKIE))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

// ---- dashboard --------------------------------------------------------------------------

struct Stat {
    label: &'static str,
    value: u64,
    href: String,
    alert: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    stats: Vec<Stat>,
    charts: Vec<(String, String)>,
    wide: Vec<(String, String, String)>,
    generated: String,
    empty: bool,
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_u64).unwrap_or(0)
}

fn keyed(v: &Value, key: &str) -> Vec<(String, u64)> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter().filter_map(|r| Some((r.get("key")?.as_str()?.to_owned(), r.get("count")?.as_u64()?))).collect()
        })
        .unwrap_or_default()
}

/// Risk bars from the most severe down, whatever their counts.
fn by_severity(mut bars: Vec<(String, u64, Option<String>)>) -> Vec<(String, u64, Option<String>)> {
    bars.sort_by_key(|(risk, _, _)| std::cmp::Reverse(waiver_core::Risk::parse(risk).ok()));
    bars
}

fn query_link(base: &str, pairs: &[(&str, &str)]) -> String {
    format!("{base}?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

pub(crate) async fn dashboard(viewer: Viewer, State(api): State<ApiState>) -> Response {
    // Ten: every state fits the state chart (the other lists are short anyway).
    let board = match api.service.dashboard(&viewer.actor, 10).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let (sprawl, hygiene, glass) = (&board.sprawl, &board.hygiene, &board.break_glass);
    let by_state = keyed(sprawl, "by_state");
    let state_n = |s: &str| by_state.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
    let register = |state: &str| query_link("/ui/exceptions", &[("state", state)]);
    // Each tile opens exactly the exceptions behind its number (as of this render).
    let now = api.service.now();
    let expiring = |hours: i64| {
        let before = (now + jiff::SignedDuration::from_hours(hours)).to_string();
        query_link(
            "/ui/exceptions",
            // Open (requested, approved, active, suspended), as the sprawl report counts them.
            &[("open", "true"), ("expires_before", &before), ("sort", "expires_at"), ("dir", "asc")],
        )
    };
    let stats = vec![
        Stat {
            label: "open",
            value: u(sprawl, &["open"]),
            href: query_link("/ui/exceptions", &[("open", "true")]),
            alert: false,
        },
        Stat { label: "active now", value: u(sprawl, &["active"]), href: register("active"), alert: false },
        Stat { label: "awaiting approval", value: state_n("requested"), href: register("requested"), alert: false },
        Stat {
            label: "expiring within 24 h",
            value: u(sprawl, &["expiring", "within_24h"]),
            href: expiring(24),
            alert: u(sprawl, &["expiring", "within_24h"]) > 0,
        },
        Stat {
            label: "expiring within 7 d",
            value: u(sprawl, &["expiring", "within_7d"]),
            href: expiring(24 * 7),
            alert: false,
        },
        Stat {
            label: "reviews overdue",
            value: u(hygiene, &["totals", "reviews_overdue"]),
            href: query_link("/ui/exceptions", &[("review_overdue", "true")]),
            alert: u(hygiene, &["totals", "reviews_overdue"]) > 0,
        },
        Stat {
            label: "break-glass active",
            value: u(glass, &["active_now"]),
            href: query_link("/ui/exceptions", &[("kind", "break_glass"), ("state", "active")]),
            alert: u(glass, &["active_now"]) > 0,
        },
        Stat {
            label: "awaiting post-use review",
            value: state_n("awaiting_post_use_review"),
            href: register("awaiting_post_use_review"),
            alert: u(hygiene, &["totals", "post_use_reviews_overdue"]) > 0,
        },
    ];
    let weekly: Vec<&Value> =
        sprawl.get("weekly").and_then(Value::as_array).map(|w| w.iter().collect()).unwrap_or_default();
    let label =
        |w: &Value| w.get("week_ending").and_then(Value::as_str).unwrap_or("").get(5..10).unwrap_or("").to_owned();
    let active: Vec<(String, Vec<u64>)> = weekly.iter().map(|w| (label(w), vec![u(w, &["active"])])).collect();
    let flow: Vec<(String, Vec<u64>)> =
        weekly.iter().map(|w| (label(w), vec![u(w, &["opened"]), u(w, &["closed"])])).collect();
    let wide = vec![
        (
            "Active exceptions at the end of each week".to_owned(),
            charts::columns("Active exceptions per week", &["active"], &["#0b5cad"], &active),
            String::new(),
        ),
        (
            "Opened and closed per week".to_owned(),
            charts::columns(
                "Exceptions opened and closed per week",
                &["opened", "closed"],
                &["#1a7f37", "#a40e26"],
                &flow,
            ),
            "opened|#1a7f37;closed|#a40e26".to_owned(),
        ),
    ];
    let linked = |key: &str, param: &str| -> Vec<(String, u64, Option<String>)> {
        keyed(sprawl, key)
            .into_iter()
            .map(|(k, n)| {
                let href = match param {
                    "" => None,
                    "identity" => Some(view::identity_link(&k)),
                    p => Some(query_link("/ui/exceptions", &[(p, &k)])),
                };
                (k, n, href)
            })
            .collect()
    };
    let charts = vec![
        (
            "All exceptions by state".to_owned(),
            charts::bars("All exceptions by state", "#0b5cad", &linked("by_state", "state")),
        ),
        (
            "Open exceptions by risk".to_owned(),
            charts::bars("Open exceptions by risk", "#a40e26", &by_severity(linked("by_risk", "risk"))),
        ),
        (
            "Open exceptions by kind".to_owned(),
            charts::bars("Open exceptions by kind", "#6e2b8f", &linked("by_kind", "kind")),
        ),
        (
            "Open exceptions by credential type".to_owned(),
            charts::bars("Open exceptions by credential type", "#7a4b00", &linked("by_credential_type", "")),
        ),
        (
            "Top waived baseline rules".to_owned(),
            charts::bars("Top waived baseline rules (open exceptions)", "#0b5cad", &linked("by_waived_rule", "waives")),
        ),
        (
            "Top identities by open exceptions".to_owned(),
            charts::bars("Top identities by open exceptions", "#116329", &linked("by_identity", "identity")),
        ),
    ];
    let empty = by_state.is_empty();
    let chrome = viewer.chrome("dashboard");
    html(StatusCode::OK, &DashboardPage { chrome, stats, charts, wide, generated: when(api.service.now()), empty })
}

// ---- register ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RegisterParams {
    q: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    risk: Option<String>,
    owner: Option<String>,
    subject: Option<String>,
    waives: Option<String>,
    expires_before: Option<String>,
    open: Option<String>,
    review_overdue: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<String>,
    /// What a bulk action just did (shown once, after its redirect).
    bulk: Option<String>,
    bulk_ok: Option<String>,
}

impl RegisterParams {
    /// The filters as the REST API's list parameters (empty ones left out).
    fn list_params(&self) -> rest::ListParams {
        rest::ListParams {
            state: nonempty(&self.state),
            kind: nonempty(&self.kind),
            subject: nonempty(&self.subject),
            owner: nonempty(&self.owner),
            risk: nonempty(&self.risk),
            waives: nonempty(&self.waives),
            expires_before: nonempty(&self.expires_before),
            open: nonempty(&self.open),
            review_overdue: nonempty(&self.review_overdue),
            q: nonempty(&self.q),
            ..rest::ListParams::default()
        }
    }
}

struct SortLink {
    label: &'static str,
    href: String,
    /// `ascending`/`descending` on the current sort column, else empty.
    aria: &'static str,
}

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage {
    chrome: Chrome,
    p: RegisterEcho,
    rows: Vec<Row>,
    total: usize,
    from: usize,
    to: usize,
    prev: Option<String>,
    next: Option<String>,
    heads: Vec<SortLink>,
    error: Option<String>,
    states: &'static [&'static str],
    /// The same filters and order, as CSV.
    csv_href: String,
    /// Whether the viewer may attest or revoke (people; each is checked again).
    may_bulk: bool,
    /// This page, to come back to after a bulk action.
    back: String,
    /// What the last bulk action did, and whether all of it went through.
    bulk: Option<(String, bool)>,
}

/// The filters as sent, to refill the form.
#[derive(Default)]
struct RegisterEcho {
    q: String,
    state: String,
    kind: String,
    risk: String,
    owner: String,
    subject: String,
    waives: String,
    /// The dashboard's filters (no form field): kept in links and said above the table.
    expires_before: String,
    open: String,
    review_overdue: String,
}

const STATES: &[&str] = &[
    "requested",
    "approved",
    "active",
    "suspended",
    "awaiting_post_use_review",
    "expired",
    "revoked",
    "rejected",
    "withdrawn",
    "closed",
];

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Most exceptions one bulk action takes.
const MAX_BULK: usize = 200;

/// Attest or revoke many at once: each goes through the same use case as one by one (roles,
/// ownership, separation of duties, state), with the one reason given; refusals are named.
pub(crate) async fn bulk(viewer: Viewer, State(api): State<ApiState>, body: Body) -> Response {
    let fields = match checked_form(&viewer, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let back = safe_next(field(&fields, "back").unwrap_or("/ui/exceptions")).to_owned();
    let back = if back.starts_with("/ui/exceptions") { back } else { "/ui/exceptions".to_owned() };
    let action = match field(&fields, "action") {
        Some("attest") => Action::Attest,
        Some("revoke") => Action::Revoke,
        _ => return failure(ApiError::bad_request("invalid_form", "action: `attest` or `revoke`", Some("action"))),
    };
    let comment = field(&fields, "comment").map(str::trim).unwrap_or_default().to_owned();
    let ids: Vec<&str> = fields.iter().filter(|(k, _)| k == "id").map(|(_, v)| v.as_str()).collect();
    let refuse = |why: &str| {
        let query = serde_urlencoded::to_string([("bulk", why)]).unwrap_or_default();
        let sep = if back.contains('?') { '&' } else { '?' };
        see_other(&format!("{back}{sep}{query}"))
    };
    if comment.is_empty() || field(&fields, "confirm") != Some("yes") {
        return refuse("Nothing was done: give the reason and tick “I mean it”.");
    }
    if ids.is_empty() {
        return refuse("Nothing was done: tick the exceptions to act on.");
    }
    if ids.len() > MAX_BULK {
        return refuse(&format!("Nothing was done: at most {MAX_BULK} at once."));
    }
    let (mut done, mut refused) = (Vec::new(), Vec::new());
    for raw in ids {
        let Ok(id) = raw.parse::<ExceptionId>() else {
            refused.push(format!("{}: no such exception", waiver_core::id::clip(raw)));
            continue;
        };
        match api.service.act(&viewer.actor, id, action, Some(comment.clone())).await {
            Ok(e) => {
                let _ = rest::applied(&api, &e);
                done.push(id.to_string());
            }
            Err(e) => refused.push(format!("{id}: {e}")),
        }
    }
    api.ui.work_counts.forget(&viewer.actor);
    let verb = if action == Action::Attest { "attested" } else { "revoked" };
    let mut summary = format!(
        "{} {verb}{}",
        done.len(),
        if done.is_empty() { String::new() } else { format!(": {}", done.join(", ")) }
    );
    if !refused.is_empty() {
        summary.push_str(&format!("\n{} refused:\n{}", refused.len(), refused.join("\n")));
    }
    if summary.len() > 1500 {
        let cut: String = summary.chars().take(1500).collect();
        summary = format!("{cut}…");
    }
    let ok = if refused.is_empty() { "1" } else { "0" };
    let query = serde_urlencoded::to_string([("bulk", summary.as_str()), ("bulk_ok", ok)]).unwrap_or_default();
    let sep = if back.contains('?') { '&' } else { '?' };
    see_other(&format!("{back}{sep}{query}"))
}

/// A CSV cell: safe from spreadsheet formulas, quoted when it holds a comma, quote or newline.
fn csv_field(text: &str) -> String {
    let safe = waiver_evidence::csv_cell(text);
    if safe.contains([',', '"', '\n', '\r']) { format!("\"{}\"", safe.replace('"', "\"\"")) } else { safe }
}

/// The register as filtered and ordered on the page, every row, as CSV.
pub(crate) async fn register_csv(
    viewer: Viewer,
    State(api): State<ApiState>,
    query: Result<Query<RegisterParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(p)) = query else {
        return failure(ApiError::bad_request("invalid_query", "the register's filters do not parse", None));
    };
    let params = p.list_params();
    let query = match rest::list_query(params) {
        Ok(q) => q,
        Err(e) => return failure(e),
    };
    let sort = match nonempty(&p.sort).map(|s| SortKey::parse(&s)).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return failure(ApiError::bad_request("invalid_query", format!("sort: {e}"), Some("sort"))),
    };
    let descending = p.dir.as_deref().map_or(sort == SortKey::Id, |d| d == "desc");
    let now = api.service.now();
    let mut out = String::from(
        "id,state,kind,risk,subject,waives,owner,requester,created_at,expires_at,review_due,uses,last_used_at,justification\n",
    );
    let mut offset = 0;
    loop {
        let page =
            match api.service.browse(&viewer.actor, &query, sort, descending, offset, waiver_service::MAX_PAGE).await {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
        for e in &page.items {
            let cells = [
                e.id.to_string(),
                e.effective_state(now).as_str().to_owned(),
                e.kind.to_string(),
                e.risk.to_string(),
                e.subject.to_string(),
                e.waives.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                e.owner.to_string(),
                e.requester.to_string(),
                e.created_at.to_string(),
                e.expires_at.to_string(),
                e.review.next_due.to_string(),
                e.usage.count.to_string(),
                e.usage.last_used_at.map(|t| t.to_string()).unwrap_or_default(),
                e.justification.clone(),
            ];
            out.push_str(&cells.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        offset += page.items.len();
        if page.items.is_empty() || offset >= page.total {
            break;
        }
    }
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"waiver-register.csv\""));
    response
}

pub(crate) async fn register(
    viewer: Viewer,
    State(api): State<ApiState>,
    query: Result<Query<RegisterParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(p)) = query else {
        return failure(ApiError::bad_request("invalid_query", "the register's filters do not parse", None));
    };
    let echo = RegisterEcho {
        q: p.q.clone().unwrap_or_default(),
        state: p.state.clone().unwrap_or_default(),
        kind: p.kind.clone().unwrap_or_default(),
        risk: p.risk.clone().unwrap_or_default(),
        owner: p.owner.clone().unwrap_or_default(),
        subject: p.subject.clone().unwrap_or_default(),
        waives: p.waives.clone().unwrap_or_default(),
        expires_before: p.expires_before.clone().unwrap_or_default(),
        open: p.open.clone().unwrap_or_default(),
        review_overdue: p.review_overdue.clone().unwrap_or_default(),
    };
    let params = p.list_params();
    let mut error = None;
    let sort = match nonempty(&p.sort).map(|s| SortKey::parse(&s)).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            error = Some(format!("sort: {e}"));
            SortKey::default()
        }
    };
    // Newest first unless asked otherwise; soonest expiry first.
    let descending = match p.dir.as_deref() {
        Some("asc") => false,
        Some("desc") => true,
        _ => sort == SortKey::Id,
    };
    let page: usize = match nonempty(&p.page).map(|s| s.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            error = Some("page: must be a whole number from 1".into());
            1
        }
    };
    let chrome = viewer.chrome("register");
    let (rows, total, status) = match rest::list_query(params) {
        Err(e) => {
            let problem = e.into_problem();
            let what = problem.errors.first().map(|f| format!("{}: {}", f.field, f.message)).unwrap_or(problem.detail);
            error = Some(what);
            (Vec::new(), 0, StatusCode::BAD_REQUEST)
        }
        Ok(q) => {
            let offset = (page - 1).saturating_mul(PAGE);
            match api.service.browse(&viewer.actor, &q, sort, descending, offset, PAGE).await {
                Ok(b) => {
                    let now = api.service.now();
                    (b.items.iter().map(|e| Row::of(e, now)).collect(), b.total, StatusCode::OK)
                }
                Err(e) => return fail(e),
            }
        }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { status };
    let base: Vec<(&str, String)> = [
        ("q", &echo.q),
        ("state", &echo.state),
        ("kind", &echo.kind),
        ("risk", &echo.risk),
        ("owner", &echo.owner),
        ("subject", &echo.subject),
        ("waives", &echo.waives),
        ("expires_before", &echo.expires_before),
        ("open", &echo.open),
        ("review_overdue", &echo.review_overdue),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k, v.clone()))
    .collect();
    let link = |sort: SortKey, desc: bool, page: usize| {
        let mut pairs = base.clone();
        pairs.push(("sort", sort.as_str().to_owned()));
        pairs.push(("dir", if desc { "desc" } else { "asc" }.to_owned()));
        pairs.push(("page", page.to_string()));
        format!("/ui/exceptions?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    };
    let heads = [
        ("Id", SortKey::Id),
        ("State", SortKey::State),
        ("Risk", SortKey::Risk),
        ("Subject", SortKey::Subject),
        ("Owner", SortKey::Owner),
        ("Expires", SortKey::ExpiresAt),
    ]
    .into_iter()
    .map(|(label, key)| {
        let current = key == sort;
        SortLink {
            label,
            href: link(key, if current { !descending } else { key == SortKey::Id }, 1),
            aria: match (current, descending) {
                (false, _) => "",
                (true, true) => "descending",
                (true, false) => "ascending",
            },
        }
    })
    .collect();
    let from = if total == 0 { 0 } else { (page - 1) * PAGE + 1 };
    let to = ((page - 1) * PAGE + rows.len()).min(total);
    let prev = (page > 1).then(|| link(sort, descending, page - 1));
    let next = (to < total).then(|| link(sort, descending, page + 1));
    let csv_href = {
        let mut pairs = base.clone();
        pairs.push(("sort", sort.as_str().to_owned()));
        pairs.push(("dir", if descending { "desc" } else { "asc" }.to_owned()));
        format!("/ui/exceptions.csv?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    };
    let may_bulk = viewer.actor.roles.any(waiver_core::actor::may::ACT_AS_PERSON);
    let back = {
        let mut pairs = base.clone();
        pairs.push(("sort", sort.as_str().to_owned()));
        pairs.push(("dir", if descending { "desc" } else { "asc" }.to_owned()));
        pairs.push(("page", page.to_string()));
        format!("/ui/exceptions?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    };
    let bulk = nonempty(&p.bulk).map(|summary| (summary, p.bulk_ok.as_deref() == Some("1")));
    let page = RegisterPage {
        chrome,
        p: echo,
        rows,
        total,
        from,
        to,
        prev,
        next,
        heads,
        error,
        states: STATES,
        csv_href,
        may_bulk,
        back,
        bulk,
    };
    html(status, &page)
}

// ---- one exception ----------------------------------------------------------------------

struct TimelineItem {
    seq: u64,
    at: String,
    actor: String,
    what: String,
    comment: String,
    intact: bool,
}

struct RecentItem {
    at: String,
    subject: String,
    action: String,
    resource: String,
}

#[derive(Template)]
#[template(path = "exception.html")]
struct ExceptionPage {
    chrome: Chrome,
    /// A break-glass's every recorded use, from the audit log (all nodes): when, what, how often.
    glass_uses: Vec<(String, String, String, u64)>,
    /// Before deciding a request or a renewal: what it waives, allows and overlaps.
    panel: Option<PanelView>,
    /// Current people, offered for a transfer (the service refuses anyone else).
    people: Vec<String>,
    row: Row,
    e: ExceptionView,
    fields: Vec<(String, String)>,
    timeline: Vec<TimelineItem>,
    all_intact: bool,
    uses: u64,
    last_used: String,
    recent: Vec<RecentItem>,
    /// Actions that move it on, in one form with one comment box.
    actions: Vec<(&'static str, &'static str, &'static str)>,
    /// Actions that end or refuse it: each behind a reason and a confirmation.
    ending: Vec<(&'static str, &'static str, &'static str)>,
    renew: bool,
    approve_refused: Option<String>,
    flash: Option<(String, String)>,
    renew_default: String,
    /// An approver may narrow this request before approving (its scope's actions offered).
    narrowable: bool,
    scope_action_list: Vec<String>,
    /// The owner or an admin may propose a new owner.
    transferable: bool,
    /// A transfer to the viewer waits for their acceptance.
    acceptable: bool,
}

/// The headline facts, as text.
struct ExceptionView {
    scope_actions: String,
    scope_resources: Vec<String>,
    condition: String,
    controls: Vec<(String, String, bool)>,
    justification: String,
    normal_path_unavailable: String,
    approvals: String,
    approvers: Vec<(String, String, String)>,
    starts: String,
    review_due: String,
    remediation: String,
    pending_renewal: String,
    post_use: String,
    suspended_by: String,
    resolution: String,
    credential_type: String,
    /// Who may approve it when the waived rules route it; empty when any approver may.
    eligible: String,
    pending_transfer: String,
    /// It waives a control outside Cedar: it never changes a decision.
    control_only: bool,
    /// The first sentence, after the subject: what it does now, by state.
    lead: String,
}

fn action_name(a: Action) -> (&'static str, &'static str, &'static str) {
    // (path segment, button label, for an ending action what it does; else the button style)
    match a {
        Action::Approve => ("approve", "Approve", ""),
        Action::Reject => ("reject", "Reject", "The request is refused for good; the requester is told why."),
        Action::Withdraw => ("withdraw", "Withdraw the request", "secondary"),
        Action::Revoke => ("revoke", "Revoke", "It grants nothing from the next decision on, on every node."),
        Action::Attest => ("attest", "Attest it is still needed", ""),
        Action::EndBreakGlass => {
            ("end", "End the break-glass now", "It grants nothing from now on; its post-use review falls due.")
        }
        Action::PostUseReview => ("post-use-review", "File the post-use review", ""),
    }
}

/// Whether an action ends or refuses the exception (asked for a reason and a confirmation).
fn ends(a: Action) -> bool {
    matches!(a, Action::Reject | Action::Revoke | Action::EndBreakGlass)
}

/// Flattens the API's JSON view into `(path, value)` pairs: every field, none forgotten.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let text: Vec<String> =
                items.iter().map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string())).collect();
            out.push((prefix.to_owned(), if text.is_empty() { "—".into() } else { text.join(", ") }));
        }
        Value::Array(items) => {
            for (idx, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{idx}]"), item, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), "—".into())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// The next review, only while one can happen: a live exception whose review falls due
/// before it ends.
fn review_due(e: &Exception, now: jiff::Timestamp) -> String {
    use waiver_core::State;
    let live = matches!(e.effective_state(now), State::Approved | State::Active | State::Suspended);
    if !live || e.kind == waiver_core::Kind::BreakGlass {
        "none: no review is owed".into()
    } else if e.review.next_due >= e.expires_at {
        format!("none: it ends first ({})", relative(now, e.expires_at))
    } else {
        format!("{} ({})", when(e.review.next_due), relative(now, e.review.next_due))
    }
}

/// What the exception does now, after its subject's name: the page's first sentence.
fn lead(e: &Exception, now: jiff::Timestamp) -> String {
    use waiver_core::State;
    let waives = e.waives.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let who = format!("owned by {}, requested by {}", e.owner, e.requester);
    let until = format!("{} ({})", when(e.expires_at), relative(now, e.expires_at));
    match e.effective_state(now) {
        State::Requested => format!(" asks to deviate from {waives} — {who}; it would expire {until}."),
        State::Approved => format!(
            " may deviate from {waives} from {} ({}) — {who}; it expires {until}.",
            when(e.starts_at),
            relative(now, e.starts_at)
        ),
        State::Active => format!(" may deviate from {waives} — {who}; it expires {until}."),
        State::Suspended => format!(
            " is suspended ({}): it grants nothing until its owner attests. It waives {waives} — {who}; it expires {until}.",
            e.suspended_by.map_or("revalidation", |t| t.as_str())
        ),
        state => {
            let ended = crate::ui::view::ended_at(e, now)
                .map(|t| format!(" {} ({})", when(t), relative(now, t)))
                .unwrap_or_default();
            format!(" no longer deviates: {}{ended}. It waived {waives} — {who}.", state.as_str().replace('_', " "))
        }
    }
}

fn headline(e: &Exception, now: jiff::Timestamp) -> ExceptionView {
    let approvers =
        e.approvals.iter().map(|a| (a.by.to_string(), when(a.at), a.comment.clone().unwrap_or_default())).collect();
    ExceptionView {
        scope_actions: e.scope.actions.join(", "),
        scope_resources: e
            .scope
            .resources
            .iter()
            .map(|r| format!("{}{}", r.entity, if r.descendants { " and everything under it" } else { "" }))
            .collect(),
        condition: e.condition.clone().unwrap_or_default(),
        controls: e
            .compensating_controls
            .iter()
            .map(|c| (c.kind.to_string(), c.description.clone(), c.enforced))
            .collect(),
        justification: e.justification.clone(),
        normal_path_unavailable: e.normal_path_unavailable.clone(),
        approvals: format!(
            "{} of {} needed",
            e.approvals.iter().filter(|a| a.round == e.renewals).count(),
            e.approvals_required
        ),
        approvers,
        starts: format!("{} ({})", when(e.starts_at), relative(now, e.starts_at)),
        review_due: review_due(e, now),
        remediation: e
            .remediation
            .as_ref()
            .map(|r| match &r.ticket {
                Some(t) => format!("{} (ticket {t})", r.plan),
                None => r.plan.clone(),
            })
            .unwrap_or_default(),
        pending_renewal: e
            .pending_renewal
            .as_ref()
            .map(|p| format!("to {} asked by {} {}", when(p.expires_at), p.requested_by, relative(now, p.requested_at)))
            .unwrap_or_default(),
        post_use: e
            .post_use_review
            .as_ref()
            .map(|p| match (&p.reviewed_by, p.reviewed_at) {
                (Some(by), Some(at)) => format!("reviewed by {by} {}", relative(now, at)),
                _ => match e.post_use_review_due() {
                    Some(due) => format!("due {} ({})", when(due), relative(now, due)),
                    None => "due".into(),
                },
            })
            .unwrap_or_default(),
        suspended_by: e.suspended_by.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        resolution: e
            .resolution
            .as_ref()
            .map(|r| {
                format!(
                    "by {} {}{}",
                    r.by,
                    relative(now, r.at),
                    r.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
                )
            })
            .unwrap_or_default(),
        credential_type: e.credential_type.to_string(),
        eligible: String::new(),
        pending_transfer: e
            .pending_transfer
            .as_ref()
            .map(|t| format!("to {} proposed by {} {}", t.to, t.proposed_by, relative(now, t.proposed_at)))
            .unwrap_or_default(),
        control_only: e.waives.iter().all(waiver_core::Waived::is_control),
        lead: lead(e, now),
    }
}

fn describe(event_type: &str) -> String {
    event_type.strip_prefix("exception.").unwrap_or(event_type).replace(['_', '.'], " ")
}

/// The approver's panel as the page shows it.
struct PanelView {
    rules: Vec<waiver_service::review::WaivedRule>,
    outcomes: Vec<(&'static str, String)>,
    more_pairs: usize,
    overlaps: Vec<(String, String, bool)>,
    warnings: Vec<String>,
    identity_history: String,
    requester_history: String,
    subject: String,
    requester: String,
    /// The precedent it joins: the rule, how many live others, and a link to them.
    precedent: Option<(String, usize, String)>,
}

impl PanelView {
    fn of(p: waiver_service::review::Panel, e: &Exception) -> Self {
        let history = |h: &std::collections::BTreeMap<&'static str, usize>| {
            if h.is_empty() {
                "none before".to_owned()
            } else {
                h.iter().map(|(state, n)| format!("{n} {}", state.replace('_', " "))).collect::<Vec<_>>().join(", ")
            }
        };
        Self {
            outcomes: p.outcomes.into_iter().map(|o| (o.kind, o.text)).collect(),
            more_pairs: p.more_pairs,
            overlaps: p
                .overlaps
                .iter()
                .map(|o| (o.id.to_string(), o.state.as_str().replace('_', " "), o.duplicate))
                .collect(),
            warnings: p.warnings,
            identity_history: history(&p.identity_history),
            requester_history: history(&p.requester_history),
            precedent: p.precedent.map(|(rule, n)| {
                let link = query_link("/ui/exceptions", &[("waives", rule.as_str()), ("open", "true")]);
                (rule, n, link)
            }),
            rules: p.rules,
            subject: e.subject.to_string(),
            requester: e.requester.to_string(),
        }
    }
}

pub(crate) async fn exception_page(
    api: &ApiState,
    viewer: &Viewer,
    id: &str,
    status: StatusCode,
    flash: Option<(String, String)>,
) -> Response {
    let id: ExceptionId = match id.parse() {
        Ok(id) => id,
        Err(_) => return failure(ApiError::not_found(format!("no exception `{}`", waiver_core::id::clip(id)))),
    };
    let e = match api.service.get(&viewer.actor, id).await {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let events = match api.service.history(&viewer.actor, id).await {
        Ok(ev) => ev,
        Err(e) => return fail(e),
    };
    let now = api.service.now();
    let timeline: Vec<TimelineItem> = events
        .iter()
        .map(|ev| {
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            TimelineItem {
                seq: ev.seq,
                at: when_str(&ev.at),
                actor: ev.actor.clone(),
                what: describe(&ev.event_type),
                comment: data.get("comment").and_then(Value::as_str).unwrap_or("").to_owned(),
                intact: ev.view().intact(),
            }
        })
        .collect();
    let all_intact = timeline.iter().all(|t| t.intact);
    // Stored usage plus what this node counted and has not flushed yet.
    let snapshot = api.decisions.snapshot.load();
    let (live, live_last) = snapshot
        .counter(id)
        .map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            let pending = c.count.load(Relaxed).saturating_sub(c.flushed.load(Relaxed));
            let last =
                jiff::Timestamp::from_microsecond(c.last_used_micros.load(Relaxed)).ok().filter(|t| t.as_second() > 0);
            (pending, last)
        })
        .unwrap_or((0, None));
    let last_used = e.usage.last_used_at.max(live_last);
    let Permitted { actions, renew, approve_refused } = api.service.permitted(&viewer.actor, &e);
    let mut proto = serde_json::to_value(waiver_proto::Exception::view(&e, now)).unwrap_or(Value::Null);
    if let Some(map) = proto.as_object_mut() {
        map.remove("id");
    }
    let mut fields = Vec::new();
    flatten("", &proto, &mut fields);
    let recent = api
        .decisions
        .recent
        .of(id)
        .into_iter()
        .map(|g| RecentItem { at: relative(now, g.at), subject: g.subject, action: g.action, resource: g.resource })
        .collect();
    let mut headline = headline(&e, now);
    if let Some(people) = api.service.eligible_approvers(&e) {
        headline.eligible = if people.is_empty() {
            "nobody: the approver groups its rules name are not defined".into()
        } else {
            people.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
    }
    let narrowable = actions.contains(&Action::Approve) && e.effective_state(now) == waiver_core::State::Requested;
    let is_person = viewer.actor.roles.any(waiver_core::actor::may::ACT_AS_PERSON);
    let transferable = e.is_open(now)
        && is_person
        && (viewer.actor.acts_as(&e.owner) || viewer.actor.roles.contains(waiver_core::Role::Admin));
    let acceptable = e.is_open(now) && e.pending_transfer.as_ref().is_some_and(|t| viewer.actor.acts_as(&t.to));
    let people = if transferable {
        api.service
            .directory()
            .await
            .map(|held| held.directory.people.values().filter(|p| p.is_active()).map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let deciding = e.effective_state(now) == waiver_core::State::Requested || e.pending_renewal.is_some();
    let panel = if deciding {
        let all = api.service.records().all().unwrap_or_default();
        Some(PanelView::of(waiver_service::review::panel(&snapshot, &e, &all, now), &e))
    } else {
        None
    };
    let glass_uses: Vec<(String, String, String, u64)> = if e.kind == waiver_core::Kind::BreakGlass {
        events
            .iter()
            .filter(|ev| ev.event_type == "break_glass.used")
            .map(|ev| {
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                let text = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                (
                    when_str(&ev.at),
                    text("action"),
                    text("resource"),
                    data.get("count").and_then(Value::as_u64).unwrap_or(1),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let page = ExceptionPage {
        glass_uses,
        panel,
        people,
        chrome: viewer.chrome("register"),
        row: Row::of(&e, now),
        e: headline,
        narrowable,
        scope_action_list: e.scope.actions.clone(),
        transferable,
        acceptable,
        fields,
        timeline,
        all_intact,
        uses: e.usage.count + live,
        last_used: last_used.map(|t| format!("{} ({})", when(t), relative(now, t))).unwrap_or_else(|| "never".into()),
        recent,
        ending: actions.iter().copied().filter(|a| ends(*a)).map(action_name).collect(),
        actions: actions.into_iter().filter(|a| !ends(*a)).map(action_name).collect(),
        renew,
        approve_refused,
        flash,
        renew_default: (e.expires_at + jiff::SignedDuration::from_hours(24 * 7)).strftime("%Y-%m-%dT%H:%M").to_string(),
    };
    html(status, &page)
}

pub(crate) async fn exception(
    viewer: Viewer,
    State(api): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let flash = q.get("done").map(|done| {
        let what = match done.as_str() {
            "approve" => "Approved.",
            "reject" => "Rejected.",
            "withdraw" => "Withdrawn.",
            "revoke" => "Revoked: it grants nothing from the next decision on.",
            "attest" => "Attested.",
            "end" => "Ended: the break-glass grants nothing from now on; its post-use review is due.",
            "post-use-review" => "Post-use review filed.",
            "renew" => "Renewal requested: approvers must approve it.",
            "transfer" => "Transfer proposed: the new owner must accept it.",
            "accept-transfer" => "You own it now: attest, renew and answer for it.",
            "requested" => "Filed: it waits for approval. You cannot approve it yourself.",
            "activated" => "Break-glass active now. Every use is recorded; a post-use review follows.",
            "already-filed" => "This form was filed already: here is the exception it filed, not a second one.",
            _ => "Done.",
        };
        ("ok".to_owned(), what.to_owned())
    });
    exception_page(&api, &viewer, &id, StatusCode::OK, flash).await
}

/// The approve form's optional narrowing: an earlier expiry, actions left out (checkboxes
/// named `drop_action`), a further condition. `None` when nothing is narrowed.
fn narrowing(fields: &[(String, String)]) -> Result<Option<waiver_core::lifecycle::Narrowing>, String> {
    let expires_at = match field(fields, "narrow_expires_at").map(str::trim).filter(|s| !s.is_empty()) {
        Some(t) => Some(parse_local(t).map_err(|why| format!("narrow.expires_at: {why}"))?),
        None => None,
    };
    let wire = waiver_proto::Narrowing {
        expires_at,
        drop_actions: fields.iter().filter(|(k, _)| k == "drop_action").map(|(_, v)| v.clone()).collect(),
        add_condition: field(fields, "add_condition").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned),
        ..waiver_proto::Narrowing::default()
    };
    if wire == waiver_proto::Narrowing::default() {
        return Ok(None);
    }
    wire.into_core().map(Some).map_err(|e| e.to_string())
}

/// `datetime-local` input (no zone) read as UTC, or RFC 3339 as typed.
pub(crate) fn parse_local(s: &str) -> Result<jiff::Timestamp, String> {
    let s = s.trim();
    if let Ok(t) = waiver_proto::parse_timestamp(s) {
        return Ok(t);
    }
    let civil: jiff::civil::DateTime =
        s.parse().map_err(|_| format!("`{s}` is not a date and time (YYYY-MM-DDTHH:MM, UTC)"))?;
    civil.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|e| e.to_string())
}

pub(crate) async fn act(
    viewer: Viewer,
    State(api): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let fields = match checked_form(&viewer, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(parsed) = id.parse::<ExceptionId>() else {
        return failure(ApiError::not_found(format!("no exception `{}`", waiver_core::id::clip(&id))));
    };
    let comment = field(&fields, "comment").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
    // Ending or refusing takes a reason and a ticked confirmation, whatever the browser sent.
    // A post-use review says what the reviewer found: no one-button sign-off.
    if action == "post-use-review" && comment.is_none() {
        let flash = Some(("bad".into(), "post-use review: say what you checked and found".to_owned()));
        return exception_page(&api, &viewer, &id, StatusCode::BAD_REQUEST, flash).await;
    }
    if matches!(action.as_str(), "reject" | "revoke" | "end")
        && (comment.is_none() || field(&fields, "confirm") != Some("yes"))
    {
        let flash = Some(("bad".into(), format!("{action}: give the reason and tick the confirmation")));
        return exception_page(&api, &viewer, &id, StatusCode::BAD_REQUEST, flash).await;
    }
    let outcome = match action.as_str() {
        "approve" => match narrowing(&fields) {
            Ok(narrowing) => api.service.approve(&viewer.actor, parsed, comment, narrowing).await,
            Err(why) => {
                let flash = Some(("bad".into(), why));
                return exception_page(&api, &viewer, &id, StatusCode::BAD_REQUEST, flash).await;
            }
        },
        "transfer" => {
            let to = field(&fields, "to").unwrap_or_default().trim().to_owned();
            api.service.propose_transfer(&viewer.actor, parsed, &to, comment).await
        }
        "accept-transfer" => api.service.accept_transfer(&viewer.actor, parsed, comment).await,
        "renew" => match parse_local(field(&fields, "expires_at").unwrap_or_default()) {
            Ok(t) => api.service.renew(&viewer.actor, parsed, t, comment).await,
            Err(why) => {
                let flash = Some(("bad".into(), format!("expires_at: {why}")));
                return exception_page(&api, &viewer, &id, StatusCode::BAD_REQUEST, flash).await;
            }
        },
        other => {
            let action = match other {
                "reject" => Action::Reject,
                "withdraw" => Action::Withdraw,
                "revoke" => Action::Revoke,
                "attest" => Action::Attest,
                "end" => Action::EndBreakGlass,
                "post-use-review" => Action::PostUseReview,
                _ => return failure(ApiError::not_found(format!("no action `{}`", waiver_core::id::clip(other)))),
            };
            api.service.act(&viewer.actor, parsed, action, comment).await
        }
    };
    match outcome {
        Ok(e) => {
            let _ = rest::applied(&api, &e);
            api.ui.work_counts.forget(&viewer.actor);
            see_other(&format!("/ui/exceptions/{id}?done={action}"))
        }
        Err(e) => {
            let kind = if matches!(e, ServiceError::StepUp(_)) { "stepup" } else { "bad" };
            let problem = e.problem();
            let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut text = problem.detail;
            for f in &problem.errors {
                text.push_str(&format!(" {}: {}", f.field, f.message));
            }
            exception_page(&api, &viewer, &id, status, Some((kind.into(), text))).await
        }
    }
}

// ---- approvals --------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    chrome: Chrome,
    rows: Vec<(Row, String, String)>,
    can_approve: bool,
    waiting: usize,
    shown_max: usize,
    /// The rest of what waits for the viewer, a section per kind.
    other: Vec<WorkSection>,
}

/// One kind of work on the "My work" page: (kind id, heading, total, rows of (row, since, due)).
type WorkSection = (&'static str, &'static str, usize, Vec<(Row, String, String)>);

/// Most items the inbox lists at once.
const INBOX: usize = 100;

pub(crate) async fn approvals(viewer: Viewer, State(api): State<ApiState>) -> Response {
    let (_, waiting) = match api.service.inbox(&viewer.actor, 0).await {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let work = match api.service.my_work(&viewer.actor, INBOX).await {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let now = api.service.now();
    let due = |t: Option<jiff::Timestamp>| t.map(|t| format!("{} ({})", when(t), relative(now, t))).unwrap_or_default();
    let rows_of = |kind: WorkKind| -> Vec<(Row, String, String)> {
        work.items
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|i| (Row::of(&i.exception, now), relative(now, i.waiting_since), due(i.due_at)))
            .collect()
    };
    let rows = work
        .items
        .get(&WorkKind::Approve)
        .into_iter()
        .flatten()
        .map(|i| {
            let e = &i.exception;
            let what = match &e.pending_renewal {
                Some(p) => format!("renewal to {}", when(p.expires_at)),
                None => format!("new request, {} of {} approvals", e.approvals.len(), e.approvals_required),
            };
            (Row::of(e, now), what, format!("waiting {}; times out {}", relative(now, i.waiting_since), due(i.due_at)))
        })
        .collect();
    let other = [
        (WorkKind::PostUseReview, "Break-glass uses to review"),
        (WorkKind::Attest, "Yours to attest (review overdue or suspended)"),
        (WorkKind::AcceptTransfer, "Ownership offered to you"),
        (WorkKind::MyRequest, "Your requests waiting for a decision"),
    ]
    .into_iter()
    .map(|(kind, heading)| (kind.as_str(), heading, work.totals.get(&kind).copied().unwrap_or_default(), rows_of(kind)))
    .collect();
    let can_approve = viewer.actor.roles.any(&[Role::Approver, Role::Admin]);
    let chrome = viewer.chrome("approvals");
    html(StatusCode::OK, &ApprovalsPage { chrome, rows, can_approve, waiting, shown_max: INBOX, other })
}

// ---- identities -------------------------------------------------------------------------

struct IdentityRow {
    entity: String,
    link: String,
    kind: String,
    owner: String,
    team: String,
    status: String,
    credential_type: String,
}

impl IdentityRow {
    fn of(i: &waiver_core::Identity) -> Self {
        let entity = i.entity.to_string();
        IdentityRow {
            link: view::identity_link(&entity),
            entity,
            kind: i.kind.to_string(),
            owner: i.owner.to_string(),
            team: i.team.clone().unwrap_or_default(),
            status: i.status.to_string(),
            credential_type: i.credential_type.to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "identities.html")]
struct IdentitiesPage {
    chrome: Chrome,
    q: String,
    rows: Vec<IdentityRow>,
    total: usize,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct IdentityParams {
    q: Option<String>,
    page: Option<String>,
}

pub(crate) async fn identities(
    viewer: Viewer,
    State(api): State<ApiState>,
    query: Result<Query<IdentityParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(p)) = query else {
        return failure(ApiError::bad_request("invalid_query", "the filters do not parse", None));
    };
    let all = match api.service.identities(&viewer.actor).await {
        Ok(all) => all,
        Err(e) => return fail(e),
    };
    let q = p.q.clone().unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let matching: Vec<&waiver_core::Identity> = all
        .iter()
        .filter(|i| {
            needle.is_empty()
                || [i.entity.to_string(), i.owner.to_string(), i.team.clone().unwrap_or_default()]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&needle))
        })
        .collect();
    let page = match nonempty(&p.page).map(|s| s.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return failure(ApiError::bad_request(
                "invalid_query",
                "page: must be a whole number from 1",
                Some("page"),
            ));
        }
    };
    let total = matching.len();
    let rows = matching.iter().skip((page - 1).saturating_mul(PAGE)).take(PAGE).map(|i| IdentityRow::of(i)).collect();
    let link = |n: usize| query_link("/ui/identities", &[("q", &q), ("page", &n.to_string())]);
    let prev = (page > 1).then(|| link(page - 1));
    let next = (page * PAGE < total).then(|| link(page + 1));
    let chrome = viewer.chrome("identities");
    html(StatusCode::OK, &IdentitiesPage { chrome, q, rows, total, prev, next })
}

#[derive(Template)]
#[template(path = "identity.html")]
struct IdentityPage {
    chrome: Chrome,
    i: IdentityRow,
    attributes: Vec<(String, String)>,
    created: String,
    updated: String,
    rows: Vec<Row>,
    total: usize,
    flash: Option<(String, String)>,
    may_report: bool,
    register_link: String,
    /// A change reported but not confirmed: its kind, detail and what it would do.
    pending: Option<PendingChange>,
}

/// A reported identity change waiting for confirmation: its kind, its detail, and each
/// exception it would revalidate with the state it would be in.
type PendingChange = (String, String, Vec<(String, String)>);

async fn identity_page(
    api: &ApiState,
    viewer: &Viewer,
    entity: &str,
    status: StatusCode,
    flash: Option<(String, String)>,
) -> Response {
    identity_page_with(api, viewer, entity, status, flash, None).await
}

async fn identity_page_with(
    api: &ApiState,
    viewer: &Viewer,
    entity: &str,
    status: StatusCode,
    flash: Option<(String, String)>,
    pending: Option<PendingChange>,
) -> Response {
    let entity: EntityRef = match entity.parse() {
        Ok(e) => e,
        Err(e) => return failure(ApiError::bad_request("invalid_input", format!("entity: {e}"), Some("entity"))),
    };
    let identity = match api.service.identity_get(&viewer.actor, &entity).await {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let query = ListQuery { subject: Some(entity.clone()), ..ListQuery::default() };
    let browse = match api.service.browse(&viewer.actor, &query, SortKey::Id, true, 0, 200).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let now = api.service.now();
    let may_report = viewer.actor.roles.contains(Role::Admin) || viewer.actor.acts_as(&identity.owner);
    let page = IdentityPage {
        chrome: viewer.chrome("identities"),
        attributes: identity.attributes.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        created: when(identity.created_at),
        updated: when(identity.updated_at),
        i: IdentityRow::of(&identity),
        rows: browse.items.iter().map(|e| Row::of(e, now)).collect(),
        total: browse.total,
        flash,
        may_report,
        register_link: query_link("/ui/exceptions", &[("subject", &entity.to_string())]),
        pending,
    };
    html(status, &page)
}

pub(crate) async fn identity(viewer: Viewer, State(api): State<ApiState>, Path(entity): Path<String>) -> Response {
    identity_page(&api, &viewer, &entity, StatusCode::OK, None).await
}

pub(crate) async fn identity_change(
    viewer: Viewer,
    State(api): State<ApiState>,
    Path(entity): Path<String>,
    body: Body,
) -> Response {
    let fields = match checked_form(&viewer, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(parsed) = entity.parse::<EntityRef>() else {
        return failure(ApiError::bad_request("invalid_input", "entity: not TYPE:ID", Some("entity")));
    };
    let trigger = match RevalidationTrigger::parse(field(&fields, "kind").unwrap_or_default()) {
        Ok(t) => t,
        Err(why) => {
            let flash = Some(("bad".into(), format!("kind: {why}")));
            return identity_page(&api, &viewer, &entity, StatusCode::BAD_REQUEST, flash).await;
        }
    };
    let detail = field(&fields, "detail").map(str::trim).filter(|d| !d.is_empty()).map(str::to_owned);
    // First what it would do; only a confirmed report changes anything.
    if field(&fields, "confirm") != Some("yes") {
        return match api.service.identity_change_preview(&viewer.actor, &parsed, trigger).await {
            Ok(would) => {
                let shown =
                    would.iter().map(|(id, state)| (id.to_string(), state.as_str().replace('_', " "))).collect();
                let pending = Some((trigger.as_str().to_owned(), detail.unwrap_or_default(), shown));
                identity_page_with(&api, &viewer, &entity, StatusCode::OK, None, pending).await
            }
            Err(e) => fail(e),
        };
    }
    match api.service.identity_change(&viewer.actor, &parsed, trigger, detail).await {
        Ok(touched) => {
            rest::reload_subject(&api, &parsed).await;
            let text = if touched.is_empty() {
                format!("{} recorded; no exception names that trigger.", trigger.as_str())
            } else {
                let ids: Vec<String> = touched.iter().map(ToString::to_string).collect();
                format!("{} recorded; revalidation applies to {}.", trigger.as_str(), ids.join(", "))
            };
            identity_page(&api, &viewer, &entity, StatusCode::OK, Some(("ok".into(), text))).await
        }
        Err(e) => {
            let problem = e.problem();
            let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
            identity_page(&api, &viewer, &entity, status, Some(("bad".into(), problem.detail))).await
        }
    }
}

// ---- baseline ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "baseline.html")]
struct BaselinePage {
    chrome: Chrome,
    policies: Vec<(String, &'static str, usize, String, Option<String>)>,
    source: String,
    schema: String,
    loaded: bool,
}

pub(crate) async fn baseline(viewer: Viewer, State(api): State<ApiState>) -> Response {
    let uses = match api.service.policy_uses(&viewer.actor).await {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let baseline = api.decisions.snapshot.load().baseline().clone();
    let (source, schema, _) = baseline.sources();
    let page = BaselinePage {
        chrome: viewer.chrome("baseline"),
        loaded: !uses.is_empty(),
        policies: uses
            .into_iter()
            .map(|p| {
                let link = query_link("/ui/exceptions", &[("waives", &p.id)]);
                let text = baseline.policy_text(&p.id);
                (p.id, p.effect, p.waived_by, link, text)
            })
            .collect(),
        source: source.to_owned(),
        schema: schema.unwrap_or_default().to_owned(),
    };
    html(StatusCode::OK, &page)
}

// ---- audit ------------------------------------------------------------------------------

struct AuditRow {
    seq: u64,
    at: String,
    actor: String,
    event_type: String,
    exception: String,
    data: String,
    hash: String,
    intact: bool,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    last: u64,
    verified: Option<Result<(u64, String), String>>,
    older: Option<String>,
    newer: Option<String>,
    /// The filters as sent.
    f: waiver_service::AuditFilter,
    /// The event types a filter can pick.
    kinds: &'static [&'static str],
}

/// Prefixes and types the audit page's filter offers.
const EVENT_KINDS: &[&str] = &[
    "exception.",
    "exception.requested",
    "exception.approved",
    "exception.rejected",
    "exception.revoked",
    "exception.expired",
    "exception.suspended",
    "exception.narrowed",
    "exception.owner_transferred",
    "break_glass.",
    "identity.",
    "person.",
    "group.",
    "token.",
    "baseline.set",
    "rules.set",
    "webhook.",
];

/// An event's data in words: `key: value` pairs, long values cut at a word, records named.
fn readable(data: &str) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(data) else {
        return data.chars().take(160).collect();
    };
    let mut parts = Vec::new();
    for (key, value) in map.iter().take(8) {
        let shown = match value {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Array(items) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
            }
            Value::Array(items) => format!("{} items", items.len()),
            Value::Object(_) if key == "exception" => "the whole record".to_owned(),
            Value::Object(o) => format!("{} fields", o.len()),
            other => other.to_string(),
        };
        let shown = if shown.chars().count() > 80 {
            format!("{}…", shown.chars().take(79).collect::<String>())
        } else {
            shown
        };
        parts.push(format!("{}: {shown}", key.replace('_', " ")));
    }
    parts.join(" · ")
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditParams {
    upto: Option<String>,
    verify: Option<String>,
    event_type: Option<String>,
    actor: Option<String>,
    exception: Option<String>,
}

pub(crate) async fn audit(
    viewer: Viewer,
    State(api): State<ApiState>,
    query: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(p)) = query else {
        return failure(ApiError::bad_request("invalid_query", "the audit page's parameters do not parse", None));
    };
    let upto = match nonempty(&p.upto).map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return failure(ApiError::bad_request("invalid_query", "upto: must be an event number", Some("upto")));
        }
    };
    let verified = if p.verify.is_some() {
        match api.service.audit_verify(&viewer.actor).await {
            Ok(v) => match (v.chain, v.records.first()) {
                (Ok(head), None) => Some(Ok((head.n_events, head.head_hash))),
                (Ok(_), Some(first)) => Some(Err(format!("{first} ({} records in all)", v.records.len()))),
                (Err(broken), _) => Some(Err(broken.to_string())),
            },
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    let filter = waiver_service::AuditFilter {
        event_type: p.event_type.clone().unwrap_or_default().trim().chars().take(64).collect(),
        actor: p.actor.clone().unwrap_or_default().trim().chars().take(200).collect(),
        exception: p.exception.clone().unwrap_or_default().trim().to_uppercase().chars().take(32).collect(),
    };
    let (events, rest_from, last) = match api.service.audit_search(&viewer.actor, upto, PAGE, &filter).await {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let rows: Vec<AuditRow> = events
        .iter()
        .map(|ev| AuditRow {
            seq: ev.seq,
            at: when_str(&ev.at),
            actor: ev.actor.clone(),
            event_type: ev.event_type.clone(),
            exception: ev.exception_id.clone().unwrap_or_default(),
            data: readable(&ev.data),
            hash: ev.hash.get(..12).unwrap_or(&ev.hash).to_owned(),
            intact: ev.view().intact(),
        })
        .collect();
    let link = |upto: u64| {
        let mut pairs = vec![("upto", upto.to_string())];
        for (k, v) in [("event_type", &filter.event_type), ("actor", &filter.actor), ("exception", &filter.exception)] {
            if !v.is_empty() {
                pairs.push((k, v.clone()));
            }
        }
        format!("/ui/audit?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default())
    };
    let highest = rows.first().map(|r| r.seq).unwrap_or(0);
    let older = rest_from.map(link);
    // Newer: from the top when filtering (a filtered page has no fixed size in events).
    let newer = (upto.is_some() && highest < last)
        .then(|| if filter.is_empty() { link((highest + PAGE as u64).min(last)) } else { link(last) });
    let chrome = viewer.chrome("audit");
    html(StatusCode::OK, &AuditPage { chrome, rows, last, verified, older, newer, f: filter, kinds: EVENT_KINDS })
}
