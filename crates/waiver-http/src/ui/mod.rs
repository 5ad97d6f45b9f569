//! The web UI: server-rendered pages (askama) over the same service and roles as the REST
//! API. No logic of its own: what a viewer may do is what the service says (each action is
//! tried on the record), and every change goes through the same use case as `/api/v1`.
//!
//! Sessions are cookies naming server-side sessions (see [`session`]); every form carries
//! the session's CSRF token; pages send a CSP that allows only this origin's CSS and script.
#![allow(
    clippy::result_large_err,
    reason = "a refused form or page is itself the response, built once per request, never carried far"
)]

mod charts;
mod forms;
mod pages;
pub mod session;
mod signin;
mod view;

use std::sync::Arc;

use askama::Template;
use axum::{
    Router,
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use waiver_core::{Actor, Role};

use crate::ApiState;
pub use session::Sessions;

/// One demo persona offered on the sign-in page (demo mode only).
#[derive(Debug, Clone)]
pub struct DemoPersona {
    pub persona: String,
    pub principal: String,
    pub roles: String,
    pub blurb: String,
    pub token: String,
}

/// What the UI needs beyond the REST API's state.
#[derive(Debug, Clone, Default)]
pub struct UiOptions {
    pub sessions: Sessions,
    /// The demo's personas, listed on the sign-in page; `None` outside demo mode.
    pub demo_personas: Option<Arc<Vec<DemoPersona>>>,
    /// Sign-in through an identity provider, and the issuers whose JWTs the API accepts.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// What waits for each person, counted for the menu and kept a few seconds (a count
    /// reads the whole register; pages must stay cheap at any size).
    pub work_counts: WorkCounts,
    /// Forms submitted, by session and the form's one-time `submission` value: a second
    /// submit of the same form (a double click, a resubmit after "back") files nothing new.
    pub submissions: Submissions,
}

/// What became of a submitted form.
#[derive(Debug, Clone)]
enum Submitted {
    /// Being filed now.
    InFlight,
    /// Filed as this exception.
    Filed(String),
}

/// Submitted forms, kept an hour.
#[derive(Debug, Clone, Default)]
pub struct Submissions(Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Submitted)>>>);

/// What a submit should do.
pub(crate) enum Submission {
    /// The first submit of this form: file it, then call [`Submissions::done`].
    First(String),
    /// Filed before: show it.
    Filed(String),
}

impl Submissions {
    const KEEP: std::time::Duration = std::time::Duration::from_secs(3600);
    const MAX: usize = 50_000;

    /// Claims the form `value` of session `session`, waiting (briefly) for a submit of the
    /// same form already under way to finish.
    pub(crate) async fn claim(&self, session: &str, value: &str) -> Submission {
        let key = format!("{session}|{value}");
        for _ in 0..100 {
            {
                let Ok(mut held) = self.0.lock() else { return Submission::First(key) };
                let now = std::time::Instant::now();
                match held.get(&key) {
                    Some((_, Submitted::Filed(id))) => return Submission::Filed(id.clone()),
                    Some((_, Submitted::InFlight)) => {}
                    None => {
                        held.retain(|_, (at, _)| now.duration_since(*at) < Self::KEEP);
                        if held.len() >= Self::MAX {
                            held.clear();
                        }
                        held.insert(key.clone(), (now, Submitted::InFlight));
                        return Submission::First(key);
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Still under way after 5 s: let this one try (the first may have died).
        Submission::First(key)
    }

    /// Records how a first submit ended: filed as `id`, or not at all (the form may be sent again).
    pub(crate) fn done(&self, key: &str, filed: Option<&str>) {
        if let Ok(mut held) = self.0.lock() {
            match filed {
                Some(id) => {
                    held.insert(key.to_owned(), (std::time::Instant::now(), Submitted::Filed(id.to_owned())));
                }
                None => {
                    held.remove(key);
                }
            }
        }
    }
}

/// Menu counts by principal and roles, each kept for [`WorkCounts::FRESH`].
#[derive(Debug, Clone, Default)]
pub struct WorkCounts(Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, usize)>>>);

impl WorkCounts {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(10);
    /// Most people counted at once; beyond it the cache starts over.
    const MAX: usize = 10_000;

    /// How many break-glass exceptions are active now (the app-wide banner), counted at most
    /// every [`WorkCounts::FRESH`].
    async fn break_glass_active(&self, api: &ApiState) -> usize {
        const KEY: &str = "\u{0}break-glass";
        if let Ok(held) = self.0.lock()
            && let Some((at, n)) = held.get(KEY)
            && at.elapsed() < Self::FRESH
        {
            return *n;
        }
        let now = api.service.now();
        let n = api
            .service
            .records()
            .all()
            .map(|all| {
                all.iter()
                    .filter(|e| {
                        e.kind == waiver_core::Kind::BreakGlass && e.effective_state(now) == waiver_core::State::Active
                    })
                    .count()
            })
            .unwrap_or(0);
        if let Ok(mut held) = self.0.lock() {
            held.insert(KEY.to_owned(), (std::time::Instant::now(), n));
        }
        n
    }

    /// Drops the viewer's count after they acted: the next page counts again.
    pub(crate) fn forget(&self, actor: &Actor) {
        if let Ok(mut held) = self.0.lock() {
            held.remove(&format!("{}|{:?}", actor.principal, actor.roles));
            held.remove("\u{0}break-glass");
        }
    }

    async fn count(&self, api: &ApiState, actor: &Actor) -> usize {
        let key = format!("{}|{:?}", actor.principal, actor.roles);
        if let Ok(held) = self.0.lock()
            && let Some((at, n)) = held.get(&key)
            && at.elapsed() < Self::FRESH
        {
            return *n;
        }
        // A count that cannot be made shows none; the page itself still works.
        let n = api.service.my_work(actor, 1).await.map(|w| w.total()).unwrap_or(0);
        if let Ok(mut held) = self.0.lock() {
            if held.len() >= Self::MAX {
                held.clear();
            }
            held.insert(key, (std::time::Instant::now(), n));
        }
        n
    }
}

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The UI's routes, under `/ui` (and `/` redirecting there).
pub(crate) fn routes(api: ApiState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/static/waiver.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("../../static/waiver.css")) }),
        )
        .route(
            "/ui/static/waiver.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("../../static/waiver.js")) }),
        )
        .route("/ui/login", get(pages::login_page).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/oidc/start", get(signin::start))
        .route("/ui/oidc/callback", get(signin::callback))
        .route("/ui/oidc/backchannel-logout", post(signin::backchannel_logout))
        .route("/ui/", get(pages::dashboard))
        .route("/ui/exceptions", get(pages::register))
        .route("/ui/exceptions.csv", get(pages::register_csv))
        .route("/ui/exceptions/bulk", post(pages::bulk))
        .route("/ui/exceptions/{id}", get(pages::exception))
        .route("/ui/exceptions/{id}/{action}", post(pages::act))
        .route("/ui/approvals", get(pages::approvals))
        .route("/ui/request", get(forms::request_form).post(forms::request_submit))
        .route("/ui/break-glass", get(forms::break_glass_form).post(forms::break_glass_submit))
        .route("/ui/identities", get(pages::identities))
        .route("/ui/identities/{entity}", get(pages::identity))
        .route("/ui/identities/{entity}/changes", post(pages::identity_change))
        .route("/ui/baseline", get(pages::baseline))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/{*rest}", get(pages::not_found))
        .with_state(api)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// A rendered page with the UI's security headers.
pub(crate) fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => {
            let mut response = (status, body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            response
        }
        Err(e) => {
            tracing::error!("a page did not render: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

/// What every page's frame shows: who is signed in, the CSRF token for its forms, and where
/// we are. (No per-page counts: every page stays a cheap read at any register size.)
#[derive(Debug, Clone)]
pub(crate) struct Chrome {
    pub who: String,
    pub roles: String,
    pub csrf: String,
    pub active: &'static str,
    /// Records that do not match the audit log (they grant nothing): how many, and the first.
    pub tampered: usize,
    pub first_tampered: String,
    /// The menu offers only what the viewer's roles may use.
    pub may_file: bool,
    pub may_break_glass: bool,
    /// How many things wait for the viewer (the menu's "My work" count).
    pub work: usize,
    /// Break-glass exceptions active now, for the banner on every page.
    pub break_glass_active: usize,
}

/// The signed-in person: their actor (from the token, resolved on every request) and session.
pub(crate) struct Viewer {
    pub actor: Actor,
    pub csrf: String,
    pub session: String,
    /// What this node's reads found not matching the audit log, for the banner.
    pub tampered: Vec<waiver_store::seal::Tampered>,
    /// The provider's sign-in behind this session, if it came through one.
    pub signed_in: Option<Arc<session::SignedIn>>,
    /// What waits for them, for the menu.
    pub work: usize,
    pub break_glass_active: usize,
}

impl Viewer {
    pub(crate) fn chrome(&self, active: &'static str) -> Chrome {
        Chrome {
            who: self.actor.principal.to_string(),
            roles: self.actor.roles.iter().map(Role::as_str).collect::<Vec<_>>().join(", "),
            csrf: self.csrf.clone(),
            active,
            tampered: self.tampered.len(),
            first_tampered: self.tampered.first().map(ToString::to_string).unwrap_or_default(),
            may_file: self.actor.roles.any(waiver_core::actor::may::FILE),
            may_break_glass: self.actor.roles.any(waiver_core::actor::may::BREAK_GLASS),
            work: self.work,
            break_glass_active: self.break_glass_active,
        }
    }
}

/// Where a request for `path` goes to sign in first.
fn to_login(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/ui/");
    let next = if parts.method == axum::http::Method::GET { next } else { "/ui/" };
    let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
    Redirect::to(&format!("/ui/login?{query}")).into_response()
}

impl FromRequestParts<ApiState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &ApiState) -> Result<Self, Response> {
        let Some(id) = session::cookie(&parts.headers, session::COOKIE) else { return Err(to_login(parts)) };
        let Some(held) = api.ui.sessions.get(id) else { return Err(to_login(parts)) };
        let (actor, signed_in) = match &held.auth {
            session::SessionAuth::Token(hash) => match api.service.authenticate_scoped(hash).await {
                // Only unscoped tokens sign in to the UI (its pages are not scope-checked).
                Ok(found) => (found.filter(|(_, scopes)| scopes.is_empty()).map(|(actor, _)| actor), None),
                Err(e) => return Err(pages::failure(e.into())),
            },
            session::SessionAuth::Provider(person) => match api
                .service
                .signed_in_actor(&person.verified.principal, &person.verified.roles, &person.verified.authentication)
                .await
            {
                Ok(actor) => (actor, Some(person.clone())),
                Err(e) => return Err(pages::failure(e.into())),
            },
        };
        match actor {
            Some(actor) => Ok(Viewer {
                work: api.ui.work_counts.count(api, &actor).await,
                break_glass_active: api.ui.work_counts.break_glass_active(api).await,
                actor,
                csrf: held.csrf,
                session: id.to_owned(),
                tampered: api.service.quarantined(),
                signed_in,
            }),
            None => {
                // The token was revoked, or the person offboarded: the session ends with it.
                api.ui.sessions.end(id);
                Err(to_login(parts))
            }
        }
    }
}

/// `next` after sign-in: only a path of this UI, never another origin.
pub(crate) fn safe_next(next: &str) -> &str {
    // Visible ASCII only: a CR or LF would split the `Location` header.
    let printable = next.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if printable && next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\') { next } else { "/ui/" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_ui() {
        assert_eq!(safe_next("/ui/exceptions?state=active"), "/ui/exceptions?state=active");
        assert_eq!(safe_next("https://evil.example/"), "/ui/");
        assert_eq!(safe_next("//evil.example/ui/"), "/ui/");
        assert_eq!(safe_next("/api/v1/tokens"), "/ui/");
        assert_eq!(safe_next("/ui/\r\nSet-Cookie: x=y"), "/ui/");
        assert_eq!(safe_next("/ui/ a"), "/ui/");
    }
}
