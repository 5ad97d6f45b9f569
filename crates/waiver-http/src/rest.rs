//! The governance REST API under `/api/v1` (CONTRACT.md §3).
//!
//! Handlers parse, authenticate and call the service; the service checks roles and
//! separation of duties. Every error is a problem document; nothing is stored on an error.
//! A write applies its result to this node's decision snapshot before answering, so a
//! revocation denies from the next decision on.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::{FromRequestParts, Path, Query, State},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use waiver_core::{
    Actor, EntityRef, Exception, ExceptionId, Kind, RevalidationTrigger, Risk, Role, State as XState, Waived,
    actor::may,
};
use waiver_engine::Baseline;
use waiver_proto::{ExceptionRequest, IdentityInput, IdentityPatchInput, Problem};
use waiver_service::{Action, ListQuery, Service, ServiceError};

use crate::{ApiError, DecisionState, MAX_BODY_BYTES};

/// What the REST API needs.
#[derive(Clone)]
pub struct ApiState {
    pub service: Service,
    pub decisions: DecisionState,
    /// Persists a replaced baseline; `None` refuses replacement (the baseline is pinned).
    /// `--baseline DIR` pinned this server's baseline: it does not take new ones.
    pub baseline_pinned: bool,
    /// The web UI's sessions and demo personas.
    pub ui: crate::ui::UiOptions,
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        if let ServiceError::Store(inner) = &e {
            tracing::error!("store error: {inner}");
        }
        ApiError::problem(e.problem())
    }
}

/// The authenticated caller.
pub(crate) struct Caller(pub Actor);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = crate::bearer(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <token>`"))?;
        // A JWT (three dot-separated parts) from a configured issuer; waiver's own tokens
        // are hex and never contain a dot.
        if token.bytes().filter(|b| *b == b'.').count() == 2
            && let Some(oidc) = state.ui.oidc.as_ref().filter(|o| o.accepts_bearer_jwts())
        {
            let verified = oidc.bearer(token).await.map_err(|e| match e {
                crate::oidc::OidcError::Unavailable(why) => {
                    tracing::warn!("a bearer JWT could not be checked: {why}");
                    ApiError::unavailable("the token's issuer cannot be reached to check it; try again")
                }
                other => ApiError::unauthorized(other.to_string()),
            })?;
            let groups = state.service.directory().await?.directory.groups_of(verified.principal.as_str());
            let verified =
                oidc.with_directory_groups(verified, &groups).map_err(|e| ApiError::unauthorized(e.to_string()))?;
            return match state
                .service
                .bearer_actor(&verified.principal, &verified.roles, &verified.authentication)
                .await?
            {
                Some(actor) => Ok(Caller(actor)),
                None => Err(ApiError::unauthorized(format!("`{}` has left (offboarded)", verified.principal))),
            };
        }
        match state.service.authenticate_scoped(&waiver_service::token_hash(token)).await? {
            Some((actor, scopes)) => {
                // Within its roles, a scoped token does only what its scopes name; checked
                // here, before any body is read.
                let needs = crate::scope_for(&parts.method, parts.uri.path());
                if scopes.is_empty() || scopes.iter().any(|s| s == needs) {
                    Ok(Caller(actor))
                } else {
                    Err(ApiError::forbidden(format!(
                        "this token is limited to `{}`; this call needs the scope `{needs}`",
                        scopes.join("`, `")
                    )))
                }
            }
            None => Err(ApiError::unauthorized("the token is unknown or revoked")),
        }
    }
}

/// A path parameter, with a problem response when it does not parse.
pub(crate) struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text(), None))
    }
}

/// Query parameters, with a problem response naming the bad one.
pub(crate) struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text(), None))
    }
}

/// Refuses `actor` unless it holds one of `roles`, before the body is parsed. A refused
/// body is still read (up to the limit, never parsed) and dropped, so a client that sends it
/// whole gets the 403 rather than a connection reset under its feet.
pub(crate) async fn require_before_body(
    actor: &Actor,
    what: &'static str,
    roles: &[Role],
    raw: Body,
) -> Result<Body, ApiError> {
    match waiver_service::require(actor, what, roles) {
        Ok(()) => Ok(raw),
        Err(refused) => {
            let _ = axum::body::to_bytes(raw, MAX_BODY_BYTES).await;
            Err(refused.into())
        }
    }
}

/// Reads a JSON body with the field of any error named (as the CLI does for files).
pub(crate) async fn body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("invalid_json", "the body is not UTF-8", None))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    waiver_proto::parse(text, waiver_proto::Format::Json).map_err(|e| ServiceError::Invalid(e).into())
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_input", message, Some(field))
}

fn parse_entity(field: &str, value: &str) -> Result<EntityRef, ApiError> {
    value.parse().map_err(|e: waiver_core::id::IdError| invalid(field, e.to_string()))
}

fn parse_id(value: &str) -> Result<ExceptionId, ApiError> {
    value.parse().map_err(|e: waiver_core::id::IdError| {
        ApiError::not_found(format!("no exception `{}`: {e}", waiver_core::id::clip(value)))
    })
}

fn view(service: &Service, e: &Exception) -> waiver_proto::Exception {
    let mut view = waiver_proto::Exception::view(e, service.now());
    view.eligible_approvers =
        service.eligible_approvers(e).map(|people| people.iter().map(ToString::to_string).collect());
    view
}

/// After a write: the result goes into this node's decision snapshot before the answer, so
/// the next decision here already sees it.
pub(crate) fn applied(api: &ApiState, e: &Exception) -> Json<waiver_proto::Exception> {
    api.decisions.apply_changes(std::slice::from_ref(e));
    Json(view(&api.service, e))
}

// ---- exceptions -------------------------------------------------------------------------

/// Filters and paging for the register.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Effective state now: requested, approved, active, rejected, withdrawn, expired, revoked, suspended, awaiting_post_use_review, closed.
    pub(crate) state: Option<String>,
    /// planned or break_glass.
    pub(crate) kind: Option<String>,
    /// The subject as `TYPE:ID`.
    pub(crate) subject: Option<String>,
    pub(crate) owner: Option<String>,
    /// low, medium, high or critical.
    pub(crate) risk: Option<String>,
    /// A baseline policy `@id`, or default-deny.
    pub(crate) waives: Option<String>,
    /// RFC 3339.
    pub(crate) expires_before: Option<String>,
    /// `true`: requested, approved, active or suspended now; `false`: none of those.
    pub(crate) open: Option<String>,
    /// `true`: its periodic review is overdue now.
    pub(crate) review_overdue: Option<String>,
    /// Case-insensitive text search.
    pub(crate) q: Option<String>,
    /// From `next_cursor` of the previous page.
    pub(crate) cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    pub(crate) limit: Option<String>,
}

/// A page of exceptions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExceptionPage {
    items: Vec<waiver_proto::Exception>,
    next_cursor: Option<String>,
}

fn flag(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("`{}` is not `true` or `false`", waiver_core::id::clip(other))),
    }
}

pub(crate) fn list_query(p: ListParams) -> Result<ListQuery, ApiError> {
    fn opt<T>(field: &str, v: Option<String>, f: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, ApiError> {
        v.map(|s| f(&s).map_err(|e| invalid(field, e))).transpose()
    }
    Ok(ListQuery {
        state: opt("state", p.state, XState::parse)?,
        kind: opt("kind", p.kind, Kind::parse)?,
        subject: opt("subject", p.subject, |s| s.parse().map_err(|e: waiver_core::id::IdError| e.to_string()))?,
        owner: p.owner,
        risk: opt("risk", p.risk, Risk::parse)?,
        waives: opt("waives", p.waives, Waived::parse)?,
        expires_before: opt("expires_before", p.expires_before, |s| {
            waiver_proto::parse_timestamp(s).map_err(|e| e.to_string())
        })?,
        open: opt("open", p.open, flag)?,
        review_overdue: opt("review_overdue", p.review_overdue, flag)?,
        q: p.q,
        after: opt("cursor", p.cursor, |s| {
            s.parse::<ExceptionId>().map_err(|_| "not a cursor this server issued".to_owned())
        })?,
        limit: opt("limit", p.limit, |s| match s.parse::<usize>() {
            Ok(n) if (1..=waiver_service::MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(format!("must be a whole number from 1 to {}", waiver_service::MAX_PAGE)),
        })?,
    })
}

#[utoipa::path(get, path = "/api/v1/exceptions", tag = "exceptions", params(ListParams),
    responses((status = 200, body = ExceptionPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_exceptions(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<ListParams>,
) -> Result<Json<ExceptionPage>, ApiError> {
    let query = list_query(params)?;
    let page = api.service.list_page(&actor, &query).await?;
    Ok(Json(ExceptionPage {
        items: page.items.iter().map(|e| view(&api.service, e)).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

#[utoipa::path(post, path = "/api/v1/exceptions", tag = "exceptions", request_body = ExceptionRequest,
    responses((status = 201, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_exception(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = require_before_body(&actor, "request an exception", may::FILE, raw).await?;
    let request: ExceptionRequest = body(raw).await?;
    let e = api.service.request(&actor, request).await?;
    Ok((StatusCode::CREATED, applied(&api, &e)).into_response())
}

#[utoipa::path(post, path = "/api/v1/break-glass", tag = "break-glass", request_body = ExceptionRequest,
    responses((status = 201, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn activate_break_glass(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = require_before_body(&actor, "activate break-glass", may::BREAK_GLASS, raw).await?;
    let request: ExceptionRequest = body(raw).await?;
    let e = api.service.activate_break_glass(&actor, request).await?;
    Ok((StatusCode::CREATED, applied(&api, &e)).into_response())
}

#[utoipa::path(get, path = "/api/v1/exceptions/{id}", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    responses((status = 200, body = waiver_proto::Exception), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_exception(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let e = api.service.get(&actor, parse_id(&id)?).await?;
    Ok(Json(view(&api.service, &e)))
}

/// A page of audit events.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventPage {
    items: Vec<waiver_proto::Event>,
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/exceptions/{id}/events", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    responses((status = 200, body = EventPage), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn exception_events(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
) -> Result<Json<EventPage>, ApiError> {
    let events = api.service.history(&actor, parse_id(&id)?).await?;
    Ok(Json(EventPage { items: events.iter().map(waiver_proto::Event::from).collect(), next_cursor: None }))
}

/// An optional comment on a lifecycle action.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn act(
    api: &ApiState,
    actor: &Actor,
    id: &str,
    action: Action,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(id)?;
    // Whatever the action, a token without a person's role changes nothing: refused before
    // the body is read (the service checks the action's own roles again).
    let raw = require_before_body(actor, "change an exception", may::ACT_AS_PERSON_OR_AGENT, raw).await?;
    let ActionBody { comment } = body(raw).await?;
    let e = api.service.act(actor, id, action, comment).await?;
    Ok(applied(api, &e))
}

macro_rules! action_handler {
    ($name:ident, $path:literal, $action:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(post, path = $path, tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
            request_body(content = Option<ActionBody>, description = $what),
            responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
                (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"),
                (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
        pub(crate) async fn $name(
            State(api): State<ApiState>,
            Caller(actor): Caller,
            P(id): P<String>,
            raw: Body,
        ) -> Result<Json<waiver_proto::Exception>, ApiError> {
            act(&api, &actor, &id, $action, raw).await
        }
    };
}

/// An approval, optionally narrowing the request first.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    #[serde(default)]
    comment: Option<String>,
    /// What to take out of the request before approving it (recorded as
    /// `exception.narrowed`, then `exception.approved`). Never widens.
    #[serde(default)]
    narrow: Option<waiver_proto::Narrowing>,
}

/// Approve a request or a renewal (an approver who is neither requester nor owner, and
/// whom the waived rules' routing names), optionally narrowing a request first.
#[utoipa::path(post, path = "/api/v1/exceptions/{id}/approve", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    request_body(content = Option<ApproveBody>, description = "An optional comment and narrowing"),
    responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn approve(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(&id)?;
    let raw = require_before_body(&actor, "approve", &[Role::Approver], raw).await?;
    let ApproveBody { comment, narrow } = body(raw).await?;
    let narrowing = narrow.map(waiver_proto::Narrowing::into_core).transpose().map_err(ServiceError::Invalid)?;
    let e = api.service.approve(&actor, id, comment, narrowing).await?;
    Ok(applied(&api, &e))
}

/// An ownership transfer: the proposed owner, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferBody {
    /// A current person in the directory, other than the requester and the approvers.
    to: String,
    /// Why accountability changes hands (required).
    comment: String,
}

/// The owner (or an admin) proposes a new owner; recorded as `exception.transfer_proposed`.
/// Nothing changes until the new owner accepts.
#[utoipa::path(post, path = "/api/v1/exceptions/{id}/transfer", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    request_body = TransferBody,
    responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn transfer(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(&id)?;
    let raw = require_before_body(&actor, "transfer an exception", may::ACT_AS_PERSON, raw).await?;
    let TransferBody { to, comment } = body(raw).await?;
    let e = api.service.propose_transfer(&actor, id, &to, Some(comment)).await?;
    Ok(applied(&api, &e))
}

/// The proposed owner accepts; recorded as `exception.owner_transferred`.
#[utoipa::path(post, path = "/api/v1/exceptions/{id}/accept-transfer", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    request_body(content = Option<ActionBody>, description = "An optional comment"),
    responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn accept_transfer(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(&id)?;
    let raw = require_before_body(&actor, "accept an exception", may::ACT_AS_PERSON, raw).await?;
    let ActionBody { comment } = body(raw).await?;
    let e = api.service.accept_transfer(&actor, id, comment).await?;
    Ok(applied(&api, &e))
}

// ---- my work ----------------------------------------------------------------------------

/// How many of each kind to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct InboxParams {
    /// 1 to 500 (default 100).
    limit: Option<String>,
}

/// What waits for the caller: requests and renewals they may approve (routing included),
/// break-glass uses to review, exceptions they own that are overdue or suspended, ownership
/// transfers offered to them, and their own undecided requests.
#[utoipa::path(get, path = "/api/v1/inbox", tag = "exceptions", params(InboxParams),
    responses((status = 200, body = waiver_proto::Inbox), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn inbox(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<InboxParams>,
) -> Result<Json<waiver_proto::Inbox>, ApiError> {
    let limit = match params.limit.as_deref() {
        None | Some("") => waiver_service::DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=waiver_service::MAX_PAGE).contains(l))
            .ok_or_else(|| invalid("limit", "must be a whole number from 1 to 500"))?,
    };
    let work = api.service.my_work(&actor, limit).await?;
    Ok(Json(work.view(api.service.now())))
}

// ---- people -----------------------------------------------------------------------------

/// The people directory.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PeoplePage {
    items: Vec<waiver_proto::Person>,
}

/// Every person waiver knows (owners and approvers are chosen from them).
#[utoipa::path(get, path = "/api/v1/people", tag = "people",
    responses((status = 200, body = PeoplePage), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_people(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<PeoplePage>, ApiError> {
    Ok(Json(PeoplePage { items: api.service.people(&actor).await? }))
}

/// A person to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersonBody {
    /// The principal they act as (`sam`).
    name: String,
}

/// An admin adds a person (recorded as `person.added`).
#[utoipa::path(post, path = "/api/v1/people", tag = "people", request_body = PersonBody,
    responses((status = 201, body = waiver_proto::Person), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn add_person(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<(StatusCode, Json<waiver_proto::Person>), ApiError> {
    let raw = require_before_body(&actor, "add people", &[Role::Admin], raw).await?;
    let PersonBody { name } = body(raw).await?;
    Ok((StatusCode::CREATED, Json(api.service.person_add(&actor, &name).await?)))
}

/// How a person is notified.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotificationsBody {
    /// `email`, `chat`, both, or none (`[]`); absent: every channel set up.
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// One daily digest by email instead of a message per event.
    #[serde(default)]
    digest: bool,
}

/// A person chooses how they are notified (themselves, or an admin for them); recorded as
/// `person.updated`.
#[utoipa::path(put, path = "/api/v1/people/{name}/notifications", tag = "people", params(("name" = String, Path, description = "sam")),
    request_body(content = Option<NotificationsBody>, description = "None: every channel set up, no digest"),
    responses((status = 200, body = waiver_proto::Person), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn person_notifications(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(name): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Person>, ApiError> {
    // Checked before the body: oneself (as a person) or an admin.
    if !(actor.roles.contains(Role::Admin)
        || (actor.principal.as_str() == name && actor.roles.any(waiver_core::actor::may::ACT_AS_PERSON)))
    {
        return Err(ApiError::forbidden(format!(
            "`{}` may set only their own notifications (an admin may set anyone's)",
            actor.principal
        )));
    }
    let NotificationsBody { channels, digest } = body(raw).await?;
    Ok(Json(api.service.person_notifications(&actor, &name, channels, digest).await?))
}

/// What offboarding a person did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PersonOffboarded {
    person: Option<waiver_proto::Person>,
    /// Their tokens, revoked.
    tokens_revoked: Vec<String>,
    /// Live exceptions they owned, now suspended (or flagged) until a new owner accepts.
    exceptions: Vec<String>,
}

/// A person leaves: their tokens are revoked and the live exceptions they own are held as
/// the rules' `people.owner_left` says, in one commit (`person.offboarded`).
#[utoipa::path(post, path = "/api/v1/people/{name}/offboard", tag = "people", params(("name" = String, Path, description = "sam")),
    request_body(content = Option<ActionBody>, description = "An optional comment"),
    responses((status = 200, body = PersonOffboarded), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn offboard_person(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(name): P<String>,
    raw: Body,
) -> Result<Json<PersonOffboarded>, ApiError> {
    let raw = require_before_body(&actor, "offboard people", &[Role::Admin], raw).await?;
    let ActionBody { comment } = body(raw).await?;
    let done = api.service.person_offboard(&actor, &name, comment).await?;
    // What it held grants nothing from the next decision on this node (others follow the log).
    api.decisions.apply_changes(&done.changed);
    Ok(Json(PersonOffboarded {
        person: done.person,
        tokens_revoked: done.tokens_revoked,
        exceptions: done.exceptions.iter().map(ToString::to_string).collect(),
    }))
}
action_handler!(reject, "/api/v1/exceptions/{id}/reject", Action::Reject, "Reject a request or a renewal.");
action_handler!(withdraw, "/api/v1/exceptions/{id}/withdraw", Action::Withdraw, "Withdraw one's own request.");
action_handler!(revoke, "/api/v1/exceptions/{id}/revoke", Action::Revoke, "Revoke: it grants nothing from now on.");
action_handler!(
    attest,
    "/api/v1/exceptions/{id}/attest",
    Action::Attest,
    "The owner attests it is still needed (lifts a revalidation suspension)."
);
action_handler!(end_break_glass, "/api/v1/exceptions/{id}/end", Action::EndBreakGlass, "End a break-glass early.");
action_handler!(
    post_use_review,
    "/api/v1/exceptions/{id}/post-use-review",
    Action::PostUseReview,
    "File a break-glass's post-use review (not by its activator)."
);

/// A renewal: the new expiry, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewBody {
    /// RFC 3339 with an offset.
    #[schema(value_type = String, format = DateTime)]
    expires_at: String,
    #[serde(default)]
    comment: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/exceptions/{id}/renew", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    request_body = RenewBody,
    responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn renew(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(&id)?;
    let RenewBody { expires_at, comment } = body(raw).await?;
    let expires_at = waiver_proto::parse_timestamp(&expires_at).map_err(|e| invalid("expires_at", e.to_string()))?;
    let e = api.service.renew(&actor, id, expires_at, comment).await?;
    Ok(applied(&api, &e))
}

/// A framework mapping to record instead of the current one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FrameworksBody {
    /// Catalog keys, `FRAMEWORK:CONTROL` (e.g. `owasp-nhi-2025:NHI7`, `nist-800-53r5:AC-2(2)`).
    frameworks: Vec<String>,
    #[serde(default)]
    comment: Option<String>,
}

/// Replaces the exception's framework mapping (the owner or an admin); recorded as
/// `exception.frameworks_changed` with what was added and removed.
#[utoipa::path(put, path = "/api/v1/exceptions/{id}/frameworks", tag = "exceptions", params(("id" = String, Path, description = "EXC-000042")),
    request_body = FrameworksBody,
    responses((status = 200, body = waiver_proto::Exception), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn set_frameworks(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Exception>, ApiError> {
    let id = parse_id(&id)?;
    let FrameworksBody { frameworks, comment } = body(raw).await?;
    let e = api.service.set_frameworks(&actor, id, frameworks, comment).await?;
    Ok(applied(&api, &e))
}

// ---- identities -------------------------------------------------------------------------

/// A page of identities.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IdentityPage {
    items: Vec<waiver_proto::Identity>,
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/identities", tag = "identities",
    responses((status = 200, body = IdentityPage), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_identities(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<IdentityPage>, ApiError> {
    let all = api.service.identities(&actor).await?;
    Ok(Json(IdentityPage { items: all.iter().map(waiver_proto::Identity::from).collect(), next_cursor: None }))
}

#[utoipa::path(post, path = "/api/v1/identities", tag = "identities", request_body = IdentityInput,
    responses((status = 201, body = waiver_proto::Identity), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn add_identity(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = require_before_body(&actor, "add identities", &[Role::Admin], raw).await?;
    let input: IdentityInput = body(raw).await?;
    let identity = api.service.identity_add(&actor, input).await?;
    Ok((StatusCode::CREATED, Json(waiver_proto::Identity::from(&identity))).into_response())
}

#[utoipa::path(get, path = "/api/v1/identities/{entity}", tag = "identities", params(("entity" = String, Path, description = "TYPE:ID")),
    responses((status = 200, body = waiver_proto::Identity), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_identity(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(entity): P<String>,
) -> Result<Json<waiver_proto::Identity>, ApiError> {
    let entity = parse_entity("entity", &entity)?;
    let identity = api.service.identity_get(&actor, &entity).await?;
    Ok(Json(waiver_proto::Identity::from(&identity)))
}

pub(crate) async fn reload_subject(api: &ApiState, entity: &EntityRef) {
    let filter = waiver_store::ExceptionFilter { subject: Some(entity.clone()), ..Default::default() };
    match api.service.store().exceptions(&filter).await {
        Ok(changed) => api.decisions.apply_changes(&changed),
        Err(e) => tracing::warn!("cannot refresh {entity} in the decision snapshot: {e}"),
    }
}

#[utoipa::path(patch, path = "/api/v1/identities/{entity}", tag = "identities", params(("entity" = String, Path, description = "TYPE:ID")),
    request_body = IdentityPatchInput,
    responses((status = 200, body = waiver_proto::Identity), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_identity(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(entity): P<String>,
    raw: Body,
) -> Result<Json<waiver_proto::Identity>, ApiError> {
    let entity = parse_entity("entity", &entity)?;
    let patch: IdentityPatchInput = body(raw).await?;
    let identity = api.service.identity_update(&actor, &entity, patch).await?;
    reload_subject(&api, &entity).await;
    Ok(Json(waiver_proto::Identity::from(&identity)))
}

/// The outcome of offboarding.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Offboarded {
    identity: waiver_proto::Identity,
    /// Exceptions revoked with it.
    revoked: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/identities/{entity}/offboard", tag = "identities", params(("entity" = String, Path, description = "TYPE:ID")),
    request_body(content = Option<ActionBody>),
    responses((status = 200, body = Offboarded), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn offboard_identity(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(entity): P<String>,
    raw: Body,
) -> Result<Json<Offboarded>, ApiError> {
    let entity = parse_entity("entity", &entity)?;
    let ActionBody { comment } = body(raw).await?;
    let (identity, revoked) = api.service.identity_offboard(&actor, &entity, comment).await?;
    reload_subject(&api, &entity).await;
    // Offboarded means denied, on this node from the next decision on.
    if let Err(e) = api.decisions.reload_offboarded(api.service.store().as_ref()).await {
        tracing::warn!("cannot refresh the offboarded identities in the decision snapshot: {e}");
    }
    Ok(Json(Offboarded {
        identity: waiver_proto::Identity::from(&identity),
        revoked: revoked.iter().map(ToString::to_string).collect(),
    }))
}

/// A change to an identity that the inventory does not hold (new code, a vendor swap).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeBody {
    /// owner_change, code_change or vendor_change.
    kind: String,
    #[serde(default)]
    detail: Option<String>,
}

/// The exceptions a reported change suspended or flagged.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChangeOutcome {
    trigger: String,
    /// Suspended (or flagged, as the governance rules say).
    exceptions: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/identities/{entity}/changes", tag = "identities", params(("entity" = String, Path, description = "TYPE:ID")),
    request_body = ChangeBody,
    responses((status = 200, body = ChangeOutcome), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn identity_change(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(entity): P<String>,
    raw: Body,
) -> Result<Json<ChangeOutcome>, ApiError> {
    let entity = parse_entity("entity", &entity)?;
    let ChangeBody { kind, detail } = body(raw).await?;
    let trigger = RevalidationTrigger::parse(&kind).map_err(|e| invalid("kind", e))?;
    let touched = api.service.identity_change(&actor, &entity, trigger, detail).await?;
    reload_subject(&api, &entity).await;
    Ok(Json(ChangeOutcome {
        trigger: trigger.as_str().to_owned(),
        exceptions: touched.iter().map(ToString::to_string).collect(),
    }))
}

// ---- baseline ---------------------------------------------------------------------------

/// A baseline: Cedar policies (each with `@id`), optional schema and entities.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BaselineBody {
    policies: String,
    #[serde(default)]
    schema: Option<String>,
    /// Cedar entity JSON: a list of `{"uid", "attrs", "parents"}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    entities: Option<Value>,
}

/// One policy of the baseline.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyView {
    id: String,
    effect: String,
    /// Open exceptions that waive it.
    waived_by: usize,
}

/// The baseline in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BaselineView {
    policies: Vec<PolicyView>,
    source: BaselineBody,
}

#[utoipa::path(get, path = "/api/v1/baseline", tag = "baseline",
    responses((status = 200, body = BaselineView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_baseline(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<BaselineView>, ApiError> {
    let open = api.service.list(&actor, &ListQuery::default()).await?;
    let baseline = api.decisions.snapshot.load().baseline().clone();
    let now = api.service.now();
    let policies = baseline
        .policies()
        .into_iter()
        .map(|(id, effect)| {
            let waived_by =
                open.iter().filter(|e| e.is_open(now) && e.waives.iter().any(|w| w.to_string() == id)).count();
            PolicyView { id, effect: effect.to_owned(), waived_by }
        })
        .collect();
    let (policies_text, schema, entities) = baseline.sources();
    Ok(Json(BaselineView {
        policies,
        source: BaselineBody {
            policies: policies_text.to_owned(),
            schema: schema.map(str::to_owned),
            entities: entities.and_then(|e| serde_json::from_str(e).ok()),
        },
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DryRun {
    /// `true` to see what the change would do without doing it.
    dry_run: Option<bool>,
}

/// What a baseline change does.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BaselineDiffView {
    applied: bool,
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    /// Open exceptions waiving a changed or removed policy: `{"exception", "policy"}`.
    #[schema(value_type = Vec<Object>)]
    affected: Vec<Value>,
    /// Why it cannot be applied (empty if it can).
    refusals: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/baseline", tag = "baseline", params(DryRun), request_body = BaselineBody,
    responses((status = 200, body = BaselineDiffView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_baseline(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(DryRun { dry_run }): Q<DryRun>,
    raw: Body,
) -> Result<Json<BaselineDiffView>, ApiError> {
    // The role before the body: parsing Cedar is the most expensive thing a caller can ask for.
    let raw = match dry_run {
        Some(true) => require_before_body(&actor, "read the baseline", may::READ_BASELINE, raw).await?,
        _ => require_before_body(&actor, "replace the baseline", may::REPLACE_BASELINE, raw).await?,
    };
    let input: BaselineBody = body(raw).await?;
    let entities = input.entities.as_ref().map(Value::to_string);
    let next = Baseline::parse(&input.policies, input.schema.as_deref(), entities.as_deref())
        .map_err(|e| invalid("policies", e.to_string()))?;
    let view = |diff: &waiver_service::BaselineDiff, applied: bool| {
        Json(BaselineDiffView {
            applied,
            added: diff.added.clone(),
            removed: diff.removed.clone(),
            changed: diff.changed.clone(),
            affected: diff.affected.iter().map(|(id, p)| json!({ "exception": id.to_string(), "policy": p })).collect(),
            refusals: diff.refusals.clone(),
        })
    };
    if dry_run.unwrap_or(false) {
        return Ok(view(&api.service.diff_baseline(&actor, &next).await?, false));
    }
    // Admin only, and refused (409) if it would strand an open exception.
    let change = api.service.check_baseline(&actor, &next).await?;
    if api.baseline_pinned {
        return Err(ApiError::problem(
            ServiceError::InvalidState(
                "this server's baseline is pinned by `--baseline`; change the files and restart".into(),
            )
            .problem(),
        ));
    }
    let next = Arc::new(next);
    api.service.record_baseline(&actor, &next, &change).await?;
    api.service.set_baseline(next.clone());
    let all =
        api.service.store().exceptions(&waiver_store::ExceptionFilter::default()).await.map_err(ServiceError::from)?;
    api.decisions.rebuild(next, &all);
    Ok(view(&change, true))
}

/// A version of the baseline or the rules, as the log put it in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ArtifactView {
    /// `baseline` or `rules`.
    kind: String,
    /// The `baseline.set` / `rules.set` event that put it in force.
    set_by_event: u64,
    /// SHA-256 of `body`, as that event sealed it.
    sha256: String,
    /// The baseline's sources as canonical JSON (`policies`, `schema`, `entities`), or the
    /// rules' TOML.
    body: String,
}

impl From<(&str, waiver_store::InForce)> for ArtifactView {
    fn from((kind, held): (&str, waiver_store::InForce)) -> Self {
        Self { kind: kind.to_owned(), set_by_event: held.seq, sha256: held.digest, body: held.body }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AtParams {
    /// An event number: what was in force at that event (default: now).
    at: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/artifacts/{kind}", tag = "baseline",
    params(("kind" = String, Path, description = "`baseline`, `rules` or `people` (the directory)"), AtParams),
    responses((status = 200, body = ArtifactView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_artifact(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(kind): P<String>,
    Q(params): Q<AtParams>,
) -> Result<Json<ArtifactView>, ApiError> {
    let kind = match kind.as_str() {
        "baseline" => "baseline",
        "rules" => "rules",
        "people" => "people",
        _ => return Err(ApiError::not_found("artifacts are `baseline`, `rules` or `people`")),
    };
    let at = match params.at.as_deref() {
        None | Some("") => None,
        Some(a) => Some(a.parse::<u64>().map_err(|_| invalid("at", "must be an event number"))?),
    };
    let held = api.service.artifact_at(&actor, kind, at).await?.ok_or_else(|| {
        ApiError::not_found(match at {
            Some(seq) => format!("no {kind} was recorded in force at event {seq}"),
            None => format!("no {kind} is recorded in the log"),
        })
    })?;
    Ok(Json(ArtifactView::from((kind, held))))
}

/// The most a rules file may hold.
const MAX_RULES_BYTES: usize = 64 * 1024;

#[utoipa::path(put, path = "/api/v1/rules", tag = "baseline",
    request_body(content = String, content_type = "text/plain", description = "The governance rules (TOML), checked exactly as at start; an empty body is refused"),
    responses((status = 200, body = ArtifactView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 413, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_rules(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Json<ArtifactView>, ApiError> {
    let raw = require_before_body(&actor, "replace the governance rules", may::REPLACE_BASELINE, raw).await?;
    let bytes = axum::body::to_bytes(raw, MAX_RULES_BYTES).await.map_err(|_| ApiError::too_large(MAX_RULES_BYTES))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid("rules", "the body is not UTF-8"))?;
    if text.trim().is_empty() {
        // An empty file parses as "every default": never what someone meant to put in force.
        return Err(invalid("rules", "the body is empty: send the rules file (TOML)"));
    }
    let seq = api.service.record_rules(&actor, text).await?;
    let held = api.service.artifact_at(&actor, "rules", Some(seq)).await?.ok_or_else(|| {
        ApiError::problem(
            ServiceError::Store(waiver_store::StoreError::Other("the rules just set are gone".into())).problem(),
        )
    })?;
    Ok(Json(ArtifactView::from(("rules", held))))
}

// ---- audit ------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// Events after this sequence number (the previous page's `next_cursor`).
    cursor: Option<String>,
    /// 1 to 1000 (default 100).
    limit: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", params(EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn audit_events(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<EventParams>,
) -> Result<Json<EventPage>, ApiError> {
    let after = match params.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse::<u64>().map_err(|_| invalid("cursor", "not a cursor this server issued"))?,
    };
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| invalid("limit", "must be a whole number from 1 to 1000"))?,
    };
    let events = api.service.audit_events(&actor, after, limit).await?;
    let next = (events.len() == limit as usize).then(|| events.last().map(|e| e.seq.to_string())).flatten();
    Ok(Json(EventPage { items: events.iter().map(waiver_proto::Event::from).collect(), next_cursor: next }))
}

/// The result of recomputing the chain.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerifyView {
    ok: bool,
    events: u64,
    head_hash: Option<String>,
    /// The first broken event, when not ok.
    broken_at: Option<u64>,
    detail: Option<String>,
    /// Records that do not match the event that last changed them (checked when the chain
    /// holds; at most 100). Any makes `ok` false.
    records: Vec<TamperedView>,
}

/// A stored record that is not what the audit log says it is: it grants nothing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TamperedView {
    /// `exception:EXC-…`, `identity:TYPE:ID` or `token:tok_…`.
    record: String,
    reason: String,
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = VerifyView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn audit_verify(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<VerifyView>, ApiError> {
    let verification = api.service.audit_verify(&actor).await?;
    let ok = verification.is_ok();
    let records = verification.records.into_iter().map(|t| TamperedView { record: t.key, reason: t.reason }).collect();
    Ok(Json(match verification.chain {
        Ok(head) => VerifyView {
            ok,
            events: head.n_events,
            head_hash: Some(head.head_hash),
            broken_at: None,
            detail: None,
            records,
        },
        Err(link) => VerifyView {
            ok,
            events: link.seq.saturating_sub(1),
            head_hash: None,
            broken_at: Some(link.seq),
            detail: Some(link.to_string()),
            records,
        },
    }))
}

// ---- tokens -----------------------------------------------------------------------------

/// A token to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenInput {
    /// Who the token acts as (a person, or `TYPE:ID` for an agent).
    principal: String,
    /// requester, approver, responder, admin, auditor, pep, agent.
    roles: Vec<String>,
    label: String,
    /// How long it lives, ISO 8601 (`P30D`); the rules' `tokens.max_lifetime` when absent,
    /// and never longer.
    #[serde(default)]
    expires_in: Option<String>,
    /// What it is limited to, within its roles: `read`, `request`, `approve`, `decide`,
    /// `admin`. None: everything its roles allow.
    #[serde(default)]
    scopes: Vec<String>,
}

/// A token as listed: never the secret, nor its hash.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    id: String,
    principal: String,
    roles: Vec<String>,
    label: String,
    created_at: String,
    revoked_at: Option<String>,
    /// When it stops authenticating (absent only on tokens from before tokens expired).
    expires_at: Option<String>,
    /// Whether `expires_at` has passed.
    expired: bool,
    /// When it last authenticated (recorded within a few seconds of a use).
    last_used_at: Option<String>,
    /// What it is limited to, within its roles (empty: everything its roles allow).
    scopes: Vec<String>,
}

/// A newly issued token: the secret is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenIssued {
    token: String,
    #[serde(flatten)]
    record: TokenView,
}

fn token_view(t: &waiver_store::TokenRecord, now: jiff::Timestamp) -> TokenView {
    TokenView {
        id: t.id.clone(),
        principal: t.principal.clone(),
        roles: t.roles.clone(),
        label: t.label.clone(),
        created_at: t.created_at.clone(),
        revoked_at: t.revoked_at.clone(),
        expires_at: t.expires_at.clone(),
        expired: waiver_service::token_expired(t, now),
        last_used_at: t.last_used_at.clone(),
        scopes: t.scopes.clone(),
    }
}

/// Every token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenPage {
    items: Vec<TokenView>,
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenPage), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_tokens(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<TokenPage>, ApiError> {
    let tokens = api.service.tokens(&actor).await?;
    let now = api.service.now();
    Ok(Json(TokenPage { items: tokens.iter().map(|t| token_view(t, now)).collect(), next_cursor: None }))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = TokenInput,
    responses((status = 201, body = TokenIssued), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn issue_token(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = require_before_body(&actor, "issue tokens", &[Role::Admin], raw).await?;
    let input: TokenInput = body(raw).await?;
    let principal = waiver_core::Principal::parse("principal", &input.principal)
        .map_err(|e| invalid("principal", e.to_string()))?;
    let mut roles = Vec::new();
    for (i, r) in input.roles.iter().enumerate() {
        roles.push(
            Role::parse(r).ok_or_else(|| {
                invalid(&format!("roles[{i}]"), format!("`{}` is not a role", waiver_core::id::clip(r)))
            })?,
        );
    }
    let lifetime = input
        .expires_in
        .as_deref()
        .map(|p| p.parse::<waiver_core::Period>().map_err(|e| invalid("expires_in", e.to_string())))
        .transpose()?;
    let issued = api.service.issue_token_for(&actor, principal, &roles, &input.label, lifetime, &input.scopes).await?;
    Ok(issued_once(&api, issued).await)
}

/// After a token change, the decision API's in-memory table follows at once.
async fn reload_decision_tokens(api: &ApiState) {
    if let Err(e) = api.decisions.reload_tokens(api.service.store().as_ref()).await {
        tracing::warn!("cannot reload the decision API's tokens: {e}");
    }
}

/// A token just issued (or rotated): 201 with the secret, shown this once.
async fn issued_once(api: &ApiState, issued: waiver_service::IssuedToken) -> Response {
    reload_decision_tokens(api).await;
    let record = token_view(&issued.record, api.service.now());
    (StatusCode::CREATED, Json(TokenIssued { token: issued.secret, record })).into_response()
}

/// Replaces a token with a new secret (same principal, roles and label, a fresh lifetime)
/// and revokes the old one, in one commit. An admin rotates any token; a caller rotates
/// their own. The new secret is shown this once.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/rotate", tag = "tokens", params(("id" = String, Path, description = "tok_…")),
    responses((status = 201, body = TokenIssued), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rotate_token(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
) -> Result<Response, ApiError> {
    let issued = api.service.rotate_token(&actor, &id).await?;
    Ok(issued_once(&api, issued).await)
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "tok_…")),
    responses((status = 200, body = TokenView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_token(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
) -> Result<Json<TokenView>, ApiError> {
    let token = api.service.revoke_token(&actor, &id).await?;
    reload_decision_tokens(&api).await;
    Ok(Json(token_view(&token, api.service.now())))
}

// ---- webhooks ---------------------------------------------------------------------------

/// A subscription to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookInput {
    url: String,
    /// Event type prefixes (`exception.`, `break_glass.used`); empty or absent for all.
    #[serde(default)]
    event_types: Vec<String>,
}

/// A subscription as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookView {
    id: String,
    url: String,
    event_types: Vec<String>,
    created_by: String,
    created_at: String,
    deleted_at: Option<String>,
    delivered_seq: u64,
    attempts: u32,
    next_attempt_at: Option<String>,
    last_error: Option<String>,
}

/// A new subscription: the signing secret (`whsec_…`) is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookCreated {
    secret: String,
    #[serde(flatten)]
    webhook: WebhookView,
}

/// A subscription as `actor` may see it: admins see the URL and the last error; others see
/// the URL without credentials or path, and no error (it would tell what answers inside).
fn webhook_view(actor: &Actor, h: &waiver_store::WebhookRecord) -> WebhookView {
    let admin = actor.roles.contains(Role::Admin);
    WebhookView {
        id: h.id.clone(),
        url: if admin { h.url.clone() } else { waiver_service::webhooks::redact(&h.url) },
        event_types: h.event_types.clone(),
        created_by: h.created_by.clone(),
        created_at: h.created_at.clone(),
        deleted_at: h.deleted_at.clone(),
        delivered_seq: h.progress.delivered_seq,
        attempts: h.progress.attempts,
        next_attempt_at: h.progress.next_attempt_at.clone(),
        last_error: if admin { h.progress.last_error.clone() } else { None },
    }
}

/// Every subscription.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookPage {
    items: Vec<WebhookView>,
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookPage), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_webhooks(
    State(api): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<WebhookPage>, ApiError> {
    let hooks = api.service.webhooks(&actor).await?;
    Ok(Json(WebhookPage { items: hooks.iter().map(|h| webhook_view(&actor, h)).collect(), next_cursor: None }))
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = WebhookInput,
    responses((status = 201, body = WebhookCreated), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_webhook(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = require_before_body(&actor, "manage webhooks", &[Role::Admin], raw).await?;
    let input: WebhookInput = body(raw).await?;
    let hook = api.service.webhook_create(&actor, &input.url, input.event_types).await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated { secret: hook.secret.clone(), webhook: webhook_view(&actor, &hook) }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "wh_…")),
    responses((status = 200, body = WebhookView), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_webhook(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(id): P<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let hook = api.service.webhook_delete(&actor, &id).await?;
    Ok(Json(webhook_view(&actor, &hook)))
}

// ---- operations -------------------------------------------------------------------------

pub(crate) async fn metrics(State(api): State<ApiState>) -> Response {
    let mut text = api.decisions.metrics.render();
    let tampered = api.service.quarantined().len();
    text.push_str(
        "# HELP waiver_records_tampered Stored records that do not match the audit log (they grant nothing).\n\
         # TYPE waiver_records_tampered gauge\n",
    );
    text.push_str(&format!("waiver_records_tampered {tampered}\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

pub(crate) async fn readyz(State(api): State<ApiState>) -> Result<Json<Value>, ApiError> {
    if !api.decisions.metrics.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable("the decision snapshot is still loading"));
    }
    if let Some(why) = api.decisions.artifact_failure() {
        return Err(ApiError::unavailable(why));
    }
    let store = api.service.store();
    if let Some(failure) = store.write_failure() {
        // Writes failed last time; try one before saying so again (space may be free now).
        if let Err(e) = store.probe_write().await {
            return Err(ApiError::unavailable(format!(
                "writes are failing (decisions go on from memory): {failure}; a probe write failed too: {e}"
            )));
        }
    }
    // Records that do not match the log are reported, and the node stays in rotation: every
    // replica reads the same rows, so failing readiness would turn one edited row into an
    // outage, while the node already grants nothing through them.
    let tampered = api.service.quarantined();
    let status = if tampered.is_empty() { "ready" } else { "degraded" };
    let records: Vec<Value> =
        tampered.iter().take(20).map(|t| json!({ "record": t.key, "reason": t.reason })).collect();
    match store.last_seq().await {
        Ok(seq) => Ok(Json(json!({
            "status": status, "last_seq": seq, "exceptions": api.decisions.snapshot.load().n_exceptions(),
            "records_tampered": tampered.len(), "tampered": records,
        }))),
        Err(e) => Err(ApiError::unavailable(format!("the store is unreachable (decisions go on from memory): {e}"))),
    }
}
