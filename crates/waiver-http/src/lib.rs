//! The HTTP edge of waiver.
//!
//! Layers, outermost first: request id (set, then echoed), trace span, timeout, body limit.
//! Handlers are thin: parse, authorise, ask the engine snapshot (decisions) or the service,
//! map errors once to RFC 9457 problem bodies.

mod authzen;
mod error;
mod evidence;
pub mod metrics;
pub mod oidc;
mod openapi;
pub mod recent;
mod rest;
mod scim;
pub mod ui;

use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Router,
    http::{HeaderName, HeaderValue, Request},
    routing::{get, post, put},
};
use tower::Layer as _;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use waiver_core::{Actor, Clock};
use waiver_engine::Snapshot;

pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use rest::ApiState;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most items in one batch or search page.
pub const MAX_BATCH: usize = 1000;

/// The token of an `Authorization: Bearer …` header. The scheme is case-insensitive
/// (RFC 9110 §11.1; RFC 6750 clients send `bearer` too).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The scope a call needs from a scoped token: `decide` for the decision API, `read` for
/// every other read, `approve` for the approver's actions, `request` for what a requester,
/// owner or responder does, `admin` for the rest (baseline, rules, tokens, webhooks,
/// identities, people, imports, SCIM).
pub(crate) fn scope_for(method: &axum::http::Method, path: &str) -> &'static str {
    if path.starts_with("/access/v1/") {
        return "decide";
    }
    if path.starts_with("/scim/") {
        return "admin";
    }
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return "read";
    }
    let last = path.rsplit('/').next().unwrap_or_default();
    let on_exception = path.starts_with("/api/v1/exceptions/");
    match last {
        "approve" | "reject" | "revoke" | "post-use-review" if on_exception => "approve",
        _ if on_exception || path == "/api/v1/exceptions" || path == "/api/v1/break-glass" => "request",
        "notifications" if path.starts_with("/api/v1/people/") => "request",
        "rotate" if path.starts_with("/api/v1/tokens/") => "request",
        _ => "admin",
    }
}

/// How callers of the decision API authenticate.
#[derive(Clone)]
pub enum DecisionAuth {
    /// No authentication (config `decision_auth = "none"`); any `Authorization` header is ignored.
    None,
    /// A bearer token with the `pep` (or `admin`/`auditor`) role, looked up in memory by
    /// the SHA-256 of the secret: the decision path never reads the database.
    Tokens(Arc<ArcSwap<HashMap<String, TokenEntry>>>),
}

/// A live token in the decision path's table: who it stands for, and until when.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub id: String,
    pub actor: Actor,
    /// Checked at every decision (the table is not rebuilt when a token expires).
    pub expires_at: Option<jiff::Timestamp>,
    /// Microseconds since the epoch of its last decision (0 for none since the table was
    /// built): an atomic, so the decision path records a use without a lock.
    pub last_used: Arc<std::sync::atomic::AtomicI64>,
    /// Limited to these scopes (empty: everything its roles allow); decisions need `decide`.
    pub scopes: Arc<[String]>,
}

impl TokenEntry {
    /// Notes a use at `now`, touching the shared line at most once a second.
    pub fn used(&self, now: jiff::Timestamp) {
        use std::sync::atomic::Ordering::Relaxed;
        let micros = now.as_microsecond();
        if micros - self.last_used.load(Relaxed) > 1_000_000 {
            self.last_used.store(micros, Relaxed);
        }
    }
}

/// The decision path's token uses since `since` (microseconds), for a flush.
pub fn decision_token_uses(auth: &DecisionAuth, since: i64) -> Vec<(String, jiff::Timestamp)> {
    let DecisionAuth::Tokens(table) = auth else { return Vec::new() };
    table
        .load()
        .values()
        .filter_map(|t| {
            let at = t.last_used.load(std::sync::atomic::Ordering::Relaxed);
            (at > since).then(|| jiff::Timestamp::from_microsecond(at).ok().map(|ts| (t.id.clone(), ts))).flatten()
        })
        .collect()
}

/// A break-glass use waiting to be made durable; `durable` answers whether it was.
#[derive(Debug)]
pub struct SpoolItem {
    pub used: waiver_service::BreakGlassUse,
    pub durable: tokio::sync::oneshot::Sender<bool>,
}

/// Hands break-glass uses to the spool and waits until each is durable: a grant through a
/// break-glass answers only once its use is on disk, or is denied.
#[derive(Clone, Debug)]
pub struct BreakGlassRecorder {
    items: tokio::sync::mpsc::Sender<SpoolItem>,
}

impl BreakGlassRecorder {
    /// Longest a grant waits for its use to be durable before it is denied instead.
    const WAIT: Duration = Duration::from_secs(2);

    /// A recorder and the queue the spool task reads (at most `capacity` uses waiting).
    pub fn new(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<SpoolItem>) {
        let (items, queue) = tokio::sync::mpsc::channel(capacity);
        (Self { items }, queue)
    }

    /// Queues a use; the answer resolves to whether it became durable. A full queue or a
    /// closed spool (shutting down) is `None`: the use is refused at once.
    fn submit(&self, used: waiver_service::BreakGlassUse) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let (durable, answer) = tokio::sync::oneshot::channel();
        self.items.try_send(SpoolItem { used, durable }).ok().map(|()| answer)
    }

    async fn confirmed(answer: Option<tokio::sync::oneshot::Receiver<bool>>) -> bool {
        match answer {
            Some(answer) => matches!(tokio::time::timeout(Self::WAIT, answer).await, Ok(Ok(true))),
            None => false,
        }
    }
}

/// What the decision API needs: the current snapshot, the clock and how to authenticate.
#[derive(Clone)]
pub struct DecisionState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub clock: Arc<dyn Clock>,
    pub auth: DecisionAuth,
    /// Whether any caller may ask for `Waiver-Explain: true`.
    pub explain: bool,
    /// Where break-glass uses are made durable before a grant answers. Without one (no
    /// store), nothing records them, and break-glass grants are refused.
    pub break_glass: Option<BreakGlassRecorder>,
    pub metrics: Arc<metrics::Metrics>,
    /// Serialises snapshot *writers* (this node's REST writes and the log follower);
    /// decisions only load the current snapshot and never take it.
    pub snapshot_writer: Arc<std::sync::Mutex<()>>,
    /// The register in memory, kept with the snapshot (the service reads reports from it).
    pub records: waiver_service::records::Records,
    /// Where decisions an exception granted go to be sampled for the UI (never awaited).
    pub granted: Option<recent::Sampler>,
    /// The sample, as the UI reads it.
    pub recent: recent::Recent,
    /// This server's address as clients reach it, for the AuthZEN discovery document (never
    /// taken from a request's `Host`, which a client chooses).
    pub public_url: Arc<str>,
    /// Why the baseline or rules the log last set could not be put in force here, if so.
    pub artifact_failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl DecisionState {
    pub fn new(snapshot: Snapshot, clock: Arc<dyn Clock>, auth: DecisionAuth) -> Self {
        Self {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            clock,
            auth,
            explain: false,
            break_glass: None,
            metrics: metrics::Metrics::new(),
            snapshot_writer: Arc::new(std::sync::Mutex::new(())),
            records: waiver_service::records::Records::default(),
            granted: None,
            recent: recent::Recent::default(),
            public_url: Arc::from("http://127.0.0.1:8080"),
            artifact_failure: Arc::default(),
        }
    }

    /// Applies changed exceptions to the decision snapshot at once.
    pub fn apply_changes(&self, changed: &[waiver_core::Exception]) {
        if changed.is_empty() {
            return;
        }
        let _writer = self.snapshot_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = self.snapshot.load().with_changes(changed);
        self.snapshot.store(Arc::new(next));
        self.records.apply(changed);
    }

    /// Takes the inventory's offboarded identities into the snapshot: decisions for them are
    /// denied from the next one on.
    /// Identities whose record does not match the audit log are denied too.
    pub fn set_offboarded(&self, identities: &[waiver_core::Identity], tampered: &[waiver_core::EntityRef]) {
        let _writer = self.snapshot_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = self.snapshot.load().with_inventory(identities, tampered);
        self.snapshot.store(Arc::new(next));
    }

    /// Reads the inventory and takes its offboarded identities into the snapshot.
    pub async fn reload_offboarded(&self, store: &dyn waiver_store::StoreRead) -> Result<(), waiver_store::StoreError> {
        let identities = store.identities().await?;
        self.set_offboarded(&identities, &tampered_identities(store));
        Ok(())
    }

    /// Why this node could not put in force what the log last set (baseline or rules), if it
    /// could not: `/readyz` answers 503 with it until a later load succeeds.
    pub fn artifact_failure(&self) -> Option<String> {
        self.artifact_failure.lock().ok().and_then(|held| held.clone())
    }

    pub fn set_artifact_failure(&self, why: Option<String>) {
        if let Ok(mut held) = self.artifact_failure.lock() {
            *held = why;
        }
    }

    /// Replaces the whole snapshot (a new baseline), keeping usage counters.
    pub fn rebuild(&self, baseline: Arc<waiver_engine::Baseline>, exceptions: &[waiver_core::Exception]) {
        let _writer = self.snapshot_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.snapshot.load_full();
        self.snapshot.store(Arc::new(Snapshot::after(Some(&current), baseline, exceptions)));
        self.records.replace(exceptions);
    }

    /// Reloads the in-memory token table from the store (after a token is issued or revoked).
    pub async fn reload_tokens(&self, store: &dyn waiver_store::StoreRead) -> Result<(), waiver_store::StoreError> {
        let DecisionAuth::Tokens(table) = &self.auth else { return Ok(()) };
        let mut next = token_table(store).await?;
        // A token's last use survives the reload (the flusher may not have read it yet).
        let previous = table.load();
        for (hash, entry) in &mut next {
            if let Some(old) = previous.get(hash).filter(|old| old.id == entry.id) {
                entry.last_used = Arc::clone(&old.last_used);
            }
        }
        table.store(Arc::new(next));
        Ok(())
    }
}

/// The identities whose record the store's reads found not matching the audit log.
pub fn tampered_identities(store: &dyn waiver_store::StoreRead) -> Vec<waiver_core::EntityRef> {
    store.quarantined().iter().filter_map(|t| t.identity()).filter_map(|e| e.parse().ok()).collect()
}

/// The live tokens by the SHA-256 of their secret.
pub async fn token_table(
    store: &dyn waiver_store::StoreRead,
) -> Result<HashMap<String, TokenEntry>, waiver_store::StoreError> {
    let mut tokens = HashMap::new();
    for token in store.tokens().await? {
        if token.revoked_at.is_some() {
            continue;
        }
        let Ok(principal) = waiver_core::Principal::parse("principal", &token.principal) else { continue };
        // An expiry that does not parse leaves the token out: fail closed.
        let expires_at = match token.expires_at.as_deref().map(str::parse::<jiff::Timestamp>) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => continue,
        };
        let roles: Vec<waiver_core::Role> = token.roles.iter().filter_map(|r| waiver_core::Role::parse(r)).collect();
        let entry = TokenEntry {
            id: token.id,
            actor: Actor::new(principal, &roles),
            expires_at,
            last_used: Arc::default(),
            scopes: token.scopes.into(),
        };
        tokens.insert(token.secret_hash, entry);
    }
    Ok(tokens)
}

#[derive(Clone, Default)]
struct CountingIds(Arc<std::sync::atomic::AtomicU64>);

impl MakeRequestId for CountingIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        // `wvr-` and 12 hex digits, written in place: no formatting machinery per request.
        let mut n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = *b"wvr-000000000000";
        for digit in id[4..].iter_mut().rev() {
            *digit = char::from_digit((n & 0xf) as u32, 16).map_or(b'0', |c| c as u8);
            n >>= 4;
        }
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// The decision API alone (what `serve` offers without a store).
pub fn router(state: DecisionState) -> Router {
    layered(with_fallbacks(decision_routes(state)))
}

/// Longest any request may take, but an import.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an import may take: it is one commit, filed whole or not at all, so a long one
/// is allowed to finish rather than be cut off (a retry of the same file files nothing twice).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

fn timeout(after: Duration) -> TimeoutLayer {
    TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, after)
}

fn decision_routes(state: DecisionState) -> Router {
    // Shared, not cloned field by field for every request as axum clones a state.
    let state = Arc::new(state);
    Router::new()
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route("/access/v1/search/subject", post(authzen::search_subject))
        .route("/access/v1/search/resource", post(authzen::search_resource))
        .route("/access/v1/search/action", post(authzen::search_action))
        .route("/.well-known/authzen-configuration", get(authzen::configuration))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .with_state(state)
}

/// Everything: decisions, the REST API, its OpenAPI document, metrics and readiness.
pub fn app(api: ApiState) -> Router {
    let rest = Router::new()
        .route("/api/v1/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .route("/api/v1/exceptions", get(rest::list_exceptions).post(rest::create_exception))
        .route("/api/v1/exceptions/{id}", get(rest::get_exception))
        .route("/api/v1/exceptions/{id}/events", get(rest::exception_events))
        .route("/api/v1/exceptions/{id}/approve", post(rest::approve))
        .route("/api/v1/exceptions/{id}/reject", post(rest::reject))
        .route("/api/v1/exceptions/{id}/withdraw", post(rest::withdraw))
        .route("/api/v1/exceptions/{id}/revoke", post(rest::revoke))
        .route("/api/v1/exceptions/{id}/attest", post(rest::attest))
        .route("/api/v1/exceptions/{id}/end", post(rest::end_break_glass))
        .route("/api/v1/exceptions/{id}/post-use-review", post(rest::post_use_review))
        .route("/api/v1/exceptions/{id}/renew", post(rest::renew))
        .route("/api/v1/exceptions/{id}/frameworks", put(rest::set_frameworks))
        .route("/api/v1/exceptions/{id}/transfer", post(rest::transfer))
        .route("/api/v1/exceptions/{id}/accept-transfer", post(rest::accept_transfer))
        .route("/api/v1/people", get(rest::list_people).post(rest::add_person))
        .route("/api/v1/inbox", get(rest::inbox))
        .route("/scim/v2/ServiceProviderConfig", get(scim::service_provider_config))
        .route("/scim/v2/Users", get(scim::list_users).post(scim::create_user))
        .route(
            "/scim/v2/Users/{id}",
            get(scim::get_user).put(scim::replace_user).patch(scim::patch_user).delete(scim::delete_user),
        )
        .route("/scim/v2/Groups", get(scim::list_groups).post(scim::create_group))
        .route(
            "/scim/v2/Groups/{id}",
            get(scim::get_group).put(scim::replace_group).patch(scim::patch_group).delete(scim::delete_group),
        )
        .route("/api/v1/people/{name}/offboard", post(rest::offboard_person))
        .route("/api/v1/people/{name}/notifications", put(rest::person_notifications))
        .route("/api/v1/break-glass", post(rest::activate_break_glass))
        .route("/api/v1/identities", get(rest::list_identities).post(rest::add_identity))
        .route("/api/v1/identities/{entity}", get(rest::get_identity).patch(rest::update_identity))
        .route("/api/v1/identities/{entity}/offboard", post(rest::offboard_identity))
        .route("/api/v1/identities/{entity}/changes", post(rest::identity_change))
        .route("/api/v1/baseline", get(rest::get_baseline).put(rest::put_baseline))
        .route("/api/v1/artifacts/{kind}", get(rest::get_artifact))
        .route("/api/v1/rules", axum::routing::put(rest::put_rules))
        .route("/api/v1/audit/events", get(rest::audit_events))
        .route("/api/v1/export", get(evidence::export))
        .route("/api/v1/reports/{name}", get(evidence::report))
        .route("/api/v1/audit/verify", get(rest::audit_verify))
        .route("/api/v1/tokens", get(rest::list_tokens).post(rest::issue_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(rest::revoke_token))
        .route("/api/v1/tokens/{id}/rotate", post(rest::rotate_token))
        .route("/api/v1/webhooks", get(rest::list_webhooks).post(rest::create_webhook))
        .route("/api/v1/webhooks/{id}", axum::routing::delete(rest::delete_webhook))
        .route("/metrics", get(rest::metrics))
        .route("/readyz", get(rest::readyz))
        .with_state(api.clone());
    // Decisions carry no request-wide timer: the only wait in them is for the body, which
    // `read_json` bounds (and a break-glass use's durability, bounded on its own).
    let decisions = decision_routes(api.decisions.clone());
    // The import has its own, longer, deadline; everything else is cut off at 30 s.
    let import = Router::new()
        .route("/api/v1/import", post(evidence::import).layer(timeout(IMPORT_TIMEOUT)))
        .with_state(api.clone());
    let timed = with_fallbacks(rest.merge(ui::routes(api)));
    let front = decisions
        .merge(import)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback_service(timeout(REQUEST_TIMEOUT).layer(timed));
    layered(front)
}

/// Problem bodies for an unknown path and for a method a path does not take.
fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

/// Wraps the whole router once in the layers every response gets. `Router::layer` would wrap
/// each route in each layer separately (a boxed, cloned service per layer per request); one
/// composed stack in front of the router costs one.
fn layered(router: Router) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(HeaderName::from_static(name), HeaderValue::from_static(value))
    };
    // Outermost first: the id is set before anything else runs, so every later layer and
    // the handler see it, and echoed last on the way out.
    let stack = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), CountingIds::default()))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<axum::body::Body>| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(header("cache-control", "no-store"))
        .layer(header("content-security-policy", "default-src 'none'; frame-ancestors 'none'"))
        .layer(header("referrer-policy", "no-referrer"))
        .layer(header("x-frame-options", "DENY"))
        .layer(header("x-content-type-options", "nosniff"))
        .service(router);
    Router::new().fallback_service(stack)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_with_listener(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_limited(listener, router, ConnectionLimits::default(), shutdown).await
}

/// What one client can hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request's headers, and how long a kept-alive connection may sit idle
    /// before the next request starts (hyper's header-read timer runs in both cases).
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 1024, header_timeout: Duration::from_secs(10), drain: Duration::from_secs(30) }
    }
}

/// The answer to a connection over the cap: written raw, then the connection is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 122\r\n\r\n\
{\"type\":\"about:blank\",\"title\":\"Service unavailable\",\"status\":503,\"detail\":\"too many open connections; try again shortly\"}\n";

/// Serves HTTP/1.1 with a cap on connections and a header/idle timeout (what `axum::serve`
/// does not offer), draining requests in flight at shutdown.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TOO_MANY_CONNECTIONS)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away, or times out sending headers, ends its connection.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {:?}; closing", limits.drain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_ids_count_up_in_twelve_hex_digits() {
        let mut ids = CountingIds::default();
        let request = Request::new(());
        let mut next = || ids.make_request_id(&request).unwrap().into_header_value();
        assert_eq!(next(), "wvr-000000000000");
        assert_eq!(next(), "wvr-000000000001");
        ids.0.store(0xabc_def0_1234, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ids.make_request_id(&request).unwrap().into_header_value(), "wvr-0abcdef01234");
    }
}
