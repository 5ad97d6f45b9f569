//! The OpenID AuthZEN 1.0 decision API.

use axum::{Json, body::Body, extract::State, http::HeaderMap, response::IntoResponse as _};
use serde_json::{Value, json};
use waiver_core::Role;
use waiver_engine::{Decision, DecisionRequest, Snapshot, Target};
use waiver_proto::authzen::{ActionIn, EntityIn, EvaluationRequest, EvaluationsRequest, SearchRequest};

use crate::{
    ApiError, DecisionAuth, DecisionState, MAX_BATCH, MAX_BODY_BYTES,
    metrics::{DecisionPath, Outcome},
};

/// Reads and parses a JSON body, naming the member of a type error.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    // A body slow to arrive is cut off at the request deadline. The timer is armed only when
    // the body is not already here, so a decision whose body came with its headers has none.
    let bytes = tokio::time::timeout(crate::REQUEST_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError::request_timeout())?
        .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    // Parsed plainly first; only a body that fails is parsed again, tracking the path, to
    // name the member at fault (the same parse fails at the same place).
    if let Ok(parsed) = serde_json::from_slice(&bytes) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let parsed = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = (path != ".").then_some(path.as_str());
        ApiError::bad_request("invalid_json", format!("the body is not a valid request: {message}"), field)
    })?;
    // What is left after the value: one JSON document per request, nothing after it.
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not a valid request: {e}"), None))?;
    Ok(parsed)
}

/// Authenticates the caller; returns whether it may ask for explanations.
fn authorize(state: &DecisionState, headers: &HeaderMap) -> Result<bool, ApiError> {
    let wants_explain =
        headers.get("waiver-explain").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    match &state.auth {
        DecisionAuth::None => Ok(wants_explain && state.explain),
        DecisionAuth::Tokens(tokens) => {
            let token =
                crate::bearer(headers).ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <token>`"))?;
            let tokens = tokens.load();
            let entry = tokens
                .get(&waiver_service::token_hash(token.trim()))
                .ok_or_else(|| ApiError::unauthorized("the token is unknown or revoked"))?;
            let now = state.clock.now();
            if entry.expires_at.is_some_and(|t| now >= t) {
                return Err(ApiError::unauthorized("the token has expired; rotate it or ask for a new one"));
            }
            if !entry.scopes.is_empty() && !entry.scopes.iter().any(|s| s == "decide") {
                return Err(ApiError::forbidden("this token is limited to other scopes; decisions need `decide`"));
            }
            entry.used(now);
            let actor = &entry.actor;
            if !actor.roles.any(&[Role::Pep, Role::Admin, Role::Auditor]) {
                return Err(ApiError::forbidden(format!(
                    "`{}` needs the role `pep` to ask for decisions",
                    actor.principal
                )));
            }
            let may_explain = state.explain || actor.roles.any(&[Role::Admin, Role::Auditor]);
            Ok(wants_explain && may_explain)
        }
    }
}

fn target(field: &'static str, entity: Option<&EntityIn>) -> Result<Target, String> {
    let entity = entity.ok_or_else(|| format!("`{field}` is required"))?;
    let entity_type = entity.entity_type.clone().ok_or_else(|| format!("`{field}.type` is required"))?;
    let id = entity.id.clone().ok_or_else(|| format!("`{field}.id` is required"))?;
    Ok(Target { entity_type, id, properties: entity.properties.clone() })
}

fn action(action: Option<&ActionIn>) -> Result<String, String> {
    action.and_then(|a| a.name.clone()).ok_or_else(|| "`action.name` is required".to_owned())
}

/// Builds a decision request from an item and the batch defaults.
fn decision_request(item: &EvaluationRequest, defaults: &EvaluationRequest) -> Result<DecisionRequest, String> {
    Ok(DecisionRequest {
        subject: target("subject", item.subject.as_ref().or(defaults.subject.as_ref()))?,
        action: action(item.action.as_ref().or(defaults.action.as_ref()))?,
        resource: target("resource", item.resource.as_ref().or(defaults.resource.as_ref()))?,
        context: item.context.clone().or_else(|| defaults.context.clone()).unwrap_or(Value::Null),
    })
}

/// One decision's answer as sent: exactly `{"decision": b}` unless an exception granted it,
/// an item failed, or the caller asked for an explanation. Serialized as it is (no JSON tree
/// is built for each answer), in the shape of [`waiver_proto::authzen::EvaluationResponse`].
#[derive(Debug, serde::Serialize)]
pub(crate) struct Answer {
    decision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<AnswerContext>,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum AnswerContext {
    Decided {
        #[serde(skip_serializing_if = "Option::is_none")]
        exception: Option<GrantOut>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reasons: Option<Vec<Value>>,
    },
    Error {
        error: String,
    },
}

#[derive(Debug, serde::Serialize)]
struct GrantOut {
    #[serde(serialize_with = "as_text")]
    id: waiver_core::ExceptionId,
    #[serde(serialize_with = "as_text")]
    expires_at: jiff::Timestamp,
    owner: String,
    obligations: Vec<String>,
}

fn as_text<S: serde::Serializer, T: std::fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl Answer {
    fn error(error: impl Into<String>) -> Self {
        Self { decision: false, context: Some(AnswerContext::Error { error: error.into() }) }
    }
}

/// The answer for a decision.
fn respond(decision: Decision, explain: bool) -> Answer {
    let exception = decision.exception.map(|grant| GrantOut {
        id: grant.id,
        expires_at: grant.expires_at,
        owner: grant.owner,
        obligations: grant.obligations,
    });
    let reasons = explain.then(|| {
        let mut reasons: Vec<Value> = decision.reasons.iter().map(|id| json!({ "policy": id })).collect();
        reasons
            .extend(decision.near_misses.iter().map(|m| json!({ "exception": m.exception.to_string(), "why": m.why })));
        reasons
    });
    let context = (exception.is_some() || reasons.is_some()).then_some(AnswerContext::Decided { exception, reasons });
    Answer { decision: decision.allowed, context }
}

/// A batch's answers.
#[derive(Debug, serde::Serialize)]
struct Answers {
    evaluations: Vec<Answer>,
}

/// Whether a decision is an access (counted, break-glass uses recorded) or a search's
/// evaluation of a candidate (pure: no usage, no audit, no sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Access,
    Search,
}

/// A decision's answer, and the break-glass use it still needs recorded before it may grant.
struct Decided {
    response: Answer,
    break_glass: Option<waiver_service::BreakGlassUse>,
}

fn decide(
    snapshot: &Snapshot,
    state: &DecisionState,
    request: &DecisionRequest,
    explain: bool,
    kind: Use,
) -> Result<Decided, String> {
    let now = state.clock.now();
    let started = std::time::Instant::now();
    let decided = match kind {
        Use::Access => snapshot.decide(request, now, explain),
        Use::Search => snapshot.evaluate(request, now, explain),
    };
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            state.metrics.decision(Outcome::Error, DecisionPath::Baseline, started.elapsed());
            return Err(e.to_string());
        }
    };
    let path = match &decision.exception {
        Some(g) if g.break_glass => DecisionPath::BreakGlass,
        Some(_) => DecisionPath::Exception,
        None => DecisionPath::Baseline,
    };
    let outcome = if decision.allowed { Outcome::Allow } else { Outcome::Deny };
    state.metrics.decision(outcome, path, started.elapsed());
    if kind == Use::Search {
        return Ok(Decided { response: respond(decision, explain), break_glass: None });
    }
    if let (Some(grant), Some(sample)) = (decision.exception.as_ref(), &state.granted) {
        // A sample for the UI: never waited for; the oldest goes when the drain is behind.
        sample.offer(crate::recent::Granted {
            exception: grant.id,
            at: now,
            subject: format!("{}:{}", request.subject.entity_type, request.subject.id),
            action: request.action.clone(),
            resource: format!("{}:{}", request.resource.entity_type, request.resource.id),
        });
    }
    let break_glass =
        decision.exception.as_ref().filter(|g| g.break_glass).map(|grant| waiver_service::BreakGlassUse {
            exception: grant.id,
            at: now,
            subject: format!("{}:{}", request.subject.entity_type, request.subject.id),
            action: request.action.clone(),
            resource: format!("{}:{}", request.resource.entity_type, request.resource.id),
            request_id: None,
        });
    Ok(Decided { response: respond(decision, explain), break_glass })
}

/// Settles decisions: each break-glass grant stands only once its use is durable (all of a
/// batch's are queued first, so they share one fsync); one that cannot be recorded is
/// denied, counted in `/metrics`, and logged.
async fn settle(state: &DecisionState, snapshot: &Snapshot, decided: Vec<Decided>) -> Vec<Answer> {
    let answers: Vec<_> = decided
        .iter()
        .map(|d| d.break_glass.as_ref().map(|used| state.break_glass.as_ref().and_then(|r| r.submit(used.clone()))))
        .collect();
    let mut out = Vec::with_capacity(decided.len());
    for (d, answer) in decided.into_iter().zip(answers) {
        let Decided { mut response, break_glass } = d;
        if let (Some(used), Some(answer)) = (break_glass, answer)
            && !crate::BreakGlassRecorder::confirmed(answer).await
        {
            state.metrics.break_glass_refused();
            if let Some(counter) = snapshot.counter(used.exception) {
                // Not an access after all.
                counter.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::error!(exception = %used.exception, "a break-glass use could not be recorded; the grant is refused");
            response =
                Answer::error("the break-glass use could not be recorded; emergency access is refused without a trail");
        }
        out.push(response);
    }
    out
}

pub(crate) async fn evaluation(
    State(state): State<std::sync::Arc<DecisionState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Answer>, ApiError> {
    let explain = authorize(&state, &headers)?;
    let item: EvaluationRequest = read_json(body).await?;
    let request = decision_request(&item, &EvaluationRequest::default())
        .map_err(|e| ApiError::bad_request("missing_member", e, None))?;
    let snapshot = state.snapshot.load_full();
    let decided = decide(&snapshot, &state, &request, explain, Use::Access)
        .map_err(|e| ApiError::bad_request("invalid_request", e, None))?;
    let mut settled = settle(&state, &snapshot, vec![decided]).await;
    settled.pop().map(Json).ok_or_else(|| ApiError::unavailable("no decision"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

pub(crate) async fn evaluations(
    State(state): State<std::sync::Arc<DecisionState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let explain = authorize(&state, &headers)?;
    let batch: EvaluationsRequest = read_json(body).await?;
    let semantic = match batch.options.as_ref().and_then(|o| o.get("evaluations_semantic")) {
        None => Semantic::ExecuteAll,
        Some(Value::String(s)) if s == "execute_all" => Semantic::ExecuteAll,
        Some(Value::String(s)) if s == "deny_on_first_deny" => Semantic::DenyOnFirstDeny,
        Some(Value::String(s)) if s == "permit_on_first_permit" => Semantic::PermitOnFirstPermit,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_option",
                format!(
                    "`{other}` is not an evaluations_semantic: use execute_all, deny_on_first_deny or permit_on_first_permit"
                ),
                Some("options.evaluations_semantic"),
            ));
        }
    };
    let defaults = EvaluationRequest {
        subject: batch.subject.clone(),
        action: batch.action.clone(),
        resource: batch.resource.clone(),
        context: batch.context.clone(),
    };
    let snapshot = state.snapshot.load_full();
    let items = batch.evaluations.unwrap_or_default();
    if items.is_empty() {
        // No items: a single evaluation of the defaults (AuthZEN 1.0 §7.1).
        let request =
            decision_request(&defaults, &defaults).map_err(|e| ApiError::bad_request("missing_member", e, None))?;
        let decided = decide(&snapshot, &state, &request, explain, Use::Access)
            .map_err(|e| ApiError::bad_request("invalid_request", e, None))?;
        let response = settle(&state, &snapshot, vec![decided]).await.pop();
        return Ok(Json(response).into_response());
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("{} evaluations in one batch; at most {MAX_BATCH} are accepted", items.len()),
            Some("evaluations"),
        ));
    }
    let mut results = Vec::with_capacity(items.len());
    for item in &items {
        // An item that cannot be evaluated is denied, with its error, and the batch goes on.
        let decided = decision_request(item, &defaults)
            .and_then(|request| decide(&snapshot, &state, &request, explain, Use::Access))
            .unwrap_or_else(|error| Decided { response: Answer::error(error), break_glass: None });
        let decision = decided.response.decision;
        results.push(decided);
        match (semantic, decision) {
            (Semantic::DenyOnFirstDeny, false) | (Semantic::PermitOnFirstPermit, true) => break,
            _ => {}
        }
    }
    let evaluations = settle(&state, &snapshot, results).await;
    Ok(Json(Answers { evaluations }).into_response())
}

/// One page of search results: offset paging with an opaque token.
fn page<T: Clone>(all: &[T], request: &SearchRequest) -> Result<(Vec<T>, Option<String>), ApiError> {
    let page = request.page.clone().unwrap_or_default();
    let offset = match page.token.as_deref() {
        None | Some("") => 0,
        Some(token) => token.strip_prefix("o").and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_token", "the page token is not one this server issued", Some("page.token"))
        })?,
    };
    let limit = page.limit.map_or(all.len(), |l| usize::try_from(l).unwrap_or(usize::MAX)).max(1);
    let items: Vec<T> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = (offset + items.len() < all.len()).then(|| format!("o{}", offset + items.len()));
    Ok((items, next))
}

fn search_response(results: Vec<Value>, next: Option<String>) -> Json<Value> {
    match next {
        Some(token) => Json(json!({ "results": results, "page": { "next_token": token } })),
        None => Json(json!({ "results": results, "page": {} })),
    }
}

fn required_type(field: &'static str, entity: Option<&EntityIn>) -> Result<String, ApiError> {
    entity
        .and_then(|e| e.entity_type.clone())
        .ok_or_else(|| ApiError::bad_request("missing_member", format!("`{field}.type` is required"), Some(field)))
}

fn missing(e: String) -> ApiError {
    ApiError::bad_request("missing_member", e, None)
}

/// Decides every candidate and keeps the allowed ones' result items, paged.
/// One snapshot serves both the candidates and their decisions, so a swap mid-search
/// cannot mix two views.
fn search(
    state: &DecisionState,
    snapshot: &Snapshot,
    request: &SearchRequest,
    explain: bool,
    candidates: impl Iterator<Item = (DecisionRequest, Value)>,
) -> Result<Json<Value>, ApiError> {
    let found: Vec<Value> = candidates
        .filter(|(candidate, _)| {
            decide(snapshot, state, candidate, explain, Use::Search).is_ok_and(|d| d.response.decision)
        })
        .map(|(_, item)| item)
        .collect();
    let (results, next) = page(&found, request)?;
    Ok(search_response(results, next))
}

fn context_of(request: &SearchRequest) -> Value {
    request.context.clone().unwrap_or(Value::Null)
}

pub(crate) async fn search_subject(
    State(state): State<std::sync::Arc<DecisionState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let explain = authorize(&state, &headers)?;
    let request: SearchRequest = read_json(body).await?;
    let subject_type = required_type("subject", request.subject.as_ref())?;
    let action = action(request.action.as_ref()).map_err(missing)?;
    let resource = target("resource", request.resource.as_ref()).map_err(missing)?;
    let snapshot = state.snapshot.load_full();
    let candidates = snapshot.entities_of_type(&subject_type).iter().map(|id| {
        let subject = Target { entity_type: subject_type.clone(), id: id.clone(), properties: None };
        let candidate = DecisionRequest {
            subject,
            action: action.clone(),
            resource: resource.clone(),
            context: context_of(&request),
        };
        (candidate, json!({ "type": subject_type, "id": id }))
    });
    search(&state, &snapshot, &request, explain, candidates)
}

pub(crate) async fn search_resource(
    State(state): State<std::sync::Arc<DecisionState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let explain = authorize(&state, &headers)?;
    let request: SearchRequest = read_json(body).await?;
    let subject = target("subject", request.subject.as_ref()).map_err(missing)?;
    let action = action(request.action.as_ref()).map_err(missing)?;
    let resource_type = required_type("resource", request.resource.as_ref())?;
    let snapshot = state.snapshot.load_full();
    let candidates = snapshot.entities_of_type(&resource_type).iter().map(|id| {
        let resource = Target { entity_type: resource_type.clone(), id: id.clone(), properties: None };
        let candidate = DecisionRequest {
            subject: subject.clone(),
            action: action.clone(),
            resource,
            context: context_of(&request),
        };
        (candidate, json!({ "type": resource_type, "id": id }))
    });
    search(&state, &snapshot, &request, explain, candidates)
}

pub(crate) async fn search_action(
    State(state): State<std::sync::Arc<DecisionState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let explain = authorize(&state, &headers)?;
    let request: SearchRequest = read_json(body).await?;
    let subject = target("subject", request.subject.as_ref()).map_err(missing)?;
    let resource = target("resource", request.resource.as_ref()).map_err(missing)?;
    let snapshot = state.snapshot.load_full();
    let candidates = snapshot.actions().map(|name| {
        let candidate = DecisionRequest {
            subject: subject.clone(),
            action: name.clone(),
            resource: resource.clone(),
            context: context_of(&request),
        };
        (candidate, json!({ "name": name }))
    });
    search(&state, &snapshot, &request, explain, candidates)
}

pub(crate) async fn configuration(State(state): State<std::sync::Arc<DecisionState>>) -> Json<Value> {
    let base = state.public_url.trim_end_matches('/');
    Json(json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
        "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
        "search_action_endpoint": format!("{base}/access/v1/search/action"),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_is_cut_off_at_the_deadline() {
        let stalled = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let started = tokio::time::Instant::now();
        let error = read_json::<EvaluationRequest>(Body::from_stream(stalled)).await.unwrap_err();
        assert_eq!(error.into_problem().status, 408);
        assert_eq!(started.elapsed(), crate::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn one_document_per_body_and_the_member_at_fault_named() {
        let trailing = read_json::<EvaluationRequest>(Body::from(r#"{"action":{"name":"read"}} {}"#)).await;
        let problem = trailing.unwrap_err().into_problem();
        assert_eq!(problem.status, 400);
        assert!(problem.detail.contains("trailing characters"), "{}", problem.detail);
        let wrong = read_json::<EvaluationRequest>(Body::from(r#"{"action":{"name":7}}"#)).await;
        let problem = serde_json::to_value(wrong.unwrap_err().into_problem()).unwrap();
        assert_eq!(problem["errors"][0]["field"], "action.name", "{problem}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_here_is_read_without_waiting() {
        let started = tokio::time::Instant::now();
        let body = Body::from(r#"{"action":{"name":"read"}}"#);
        let request = read_json::<EvaluationRequest>(body).await.unwrap();
        assert_eq!(request.action.unwrap().name.as_deref(), Some("read"));
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    }
}
