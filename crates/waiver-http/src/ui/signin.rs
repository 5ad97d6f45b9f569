//! Sign-in through the identity provider: `start` sends the browser there (binding the
//! sign-in to it with a cookie), `callback` finishes it, `backchannel_logout` ends the
//! sessions the provider's logout names.

use axum::{
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    pages::{field, form_fields, login_error},
    safe_next,
    session::{self, SignedIn},
};
use crate::{ApiState, oidc::OidcError};

/// The cookie binding a sign-in under way to this browser (its `state`). `Lax`: the
/// provider's redirect back is a cross-site top-level navigation.
const FLOW_COOKIE: &str = "waiver_oidc";

#[derive(Debug, Deserialize)]
pub(crate) struct StartQuery {
    next: Option<String>,
    /// Set: authenticate again now, as the rules' `[step_up]` asks.
    step_up: Option<String>,
}

fn redirect_uri(api: &ApiState) -> String {
    format!("{}/ui/oidc/callback", api.decisions.public_url.trim_end_matches('/'))
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(crate) async fn start(State(api): State<ApiState>, Query(q): Query<StartQuery>) -> Response {
    let next = safe_next(q.next.as_deref().unwrap_or("/ui/")).to_owned();
    let Some(oidc) = api.ui.oidc.clone().filter(|o| o.sign_in().is_some()) else {
        return login_error(&api, StatusCode::NOT_FOUND, &next, "sign-in through a provider is not set up here");
    };
    let step_up = api.service.rules().step_up.clone();
    let asked = q.step_up.is_some().then_some((step_up.acr.as_slice(), true));
    match oidc.start(&redirect_uri(&api), &next, asked).await {
        Ok((url, state)) => with_cookie(
            Redirect::to(&url).into_response(),
            &format!("{FLOW_COOKIE}={state}; Path=/ui/oidc; HttpOnly; SameSite=Lax; Max-Age=600"),
        ),
        Err(e) => {
            tracing::warn!("sign-in could not start: {e}");
            login_error(&api, StatusCode::SERVICE_UNAVAILABLE, &next, &e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: the issuer that answered, checked against ours (mix-up defence).
    iss: Option<String>,
}

/// Roles that may use the UI: a decision-only role (`pep`) may not.
const UI_ROLES: &[waiver_core::Role] = &[
    waiver_core::Role::Requester,
    waiver_core::Role::Approver,
    waiver_core::Role::Responder,
    waiver_core::Role::Admin,
    waiver_core::Role::Auditor,
];

pub(crate) async fn callback(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let clear = format!("{FLOW_COOKIE}=; Path=/ui/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
    let refuse = |status: StatusCode, why: &str| with_cookie(login_error(&api, status, "/ui/", why), &clear);
    let Some(oidc) = api.ui.oidc.clone().filter(|o| o.sign_in().is_some()) else {
        return refuse(StatusCode::NOT_FOUND, "sign-in through a provider is not set up here");
    };
    if let Some(error) = &q.error {
        let detail = q.error_description.as_deref().unwrap_or_default();
        let why = format!("the identity provider did not sign you in: {error} {detail}");
        return refuse(StatusCode::UNAUTHORIZED, why.trim());
    }
    if let (Some(iss), Some(ours)) = (&q.iss, oidc.sign_in().map(|s| &s.issuer))
        && iss != ours
    {
        return refuse(StatusCode::FORBIDDEN, "the answer came from another identity provider; start again");
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return refuse(StatusCode::BAD_REQUEST, "the provider's answer lacks `code` or `state`; start again");
    };
    // The state must be the one this browser started (login CSRF).
    let bound = session::cookie(&headers, FLOW_COOKIE).unwrap_or_default();
    if bound.is_empty() || !session::same(bound, state) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this sign-in was started in another browser or has expired; start again",
        );
    }
    let (verified, id_token, next) = match oidc.finish(&redirect_uri(&api), state, code).await {
        Ok(done) => done,
        Err(e @ OidcError::Unavailable(_)) => {
            tracing::warn!("sign-in failed: {e}");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let groups = match api.service.directory().await {
        Ok(held) => held.directory.groups_of(verified.principal.as_str()),
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let verified = match oidc.with_directory_groups(verified, &groups) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::FORBIDDEN, &e.to_string()),
    };
    if !verified.roles.iter().any(|r| UI_ROLES.contains(r)) {
        return refuse(StatusCode::FORBIDDEN, &format!("`{}` holds no role that uses the UI", verified.principal));
    }
    if let Err(e) = api
        .service
        .sign_in(
            &verified.principal,
            &verified.roles,
            verified.email.as_deref(),
            verified.name.as_deref(),
            verified.team.as_deref(),
        )
        .await
    {
        return refuse(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN), &e.to_string());
    }
    // A step-up replaces the session it stepped up from.
    if let Some(old) = session::cookie(&headers, session::COOKIE) {
        api.ui.sessions.end(old);
    }
    tracing::info!(principal = %verified.principal, acr = ?verified.authentication.acr, "signed in through the identity provider");
    let id = api.ui.sessions.start_signed_in(SignedIn { verified, id_token });
    let response = with_cookie(Redirect::to(safe_next(&next)).into_response(), &clear);
    // `Lax` here too: the first request after the provider's redirect must carry it.
    with_cookie(response, &format!("{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=28800", session::COOKIE))
}

/// OpenID Connect Back-Channel Logout 1.0: the provider posts a signed logout token when a
/// person signs out there (or is signed out by an admin); their sessions here end.
pub(crate) async fn backchannel_logout(State(api): State<ApiState>, body: Body) -> Response {
    let Some(oidc) = api.ui.oidc.clone().filter(|o| o.sign_in().is_some()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let fields = match form_fields(body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(token) = field(&fields, "logout_token") else {
        return (StatusCode::BAD_REQUEST, "logout_token is missing").into_response();
    };
    match oidc.logout_token(token).await {
        Ok((issuer, sid, sub)) => {
            let ended = api.ui.sessions.end_provider_sessions(&issuer, sid.as_deref(), sub.as_deref());
            tracing::info!(ended, "the identity provider signed a person out");
            StatusCode::OK.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
