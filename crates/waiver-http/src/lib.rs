//! The HTTP edge of waiver.
//!
//! Layers, outermost first: request id (set, then echoed), trace span, timeout, body limit.
//! Handlers are thin: parse, authorise, ask the engine snapshot (decisions) or the service,
//! map errors once to RFC 9457 problem bodies.

mod authzen;
mod error;

use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Router,
    http::{HeaderName, Request},
    routing::{get, post},
};
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use waiver_core::{Actor, Clock};
use waiver_engine::Snapshot;

pub use error::ApiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most items in one batch or search page.
pub const MAX_BATCH: usize = 1000;

/// How callers of the decision API authenticate.
#[derive(Clone)]
pub enum DecisionAuth {
    /// No authentication (config `decision_auth = "none"`); any `Authorization` header is ignored.
    None,
    /// A bearer token with the `pep` (or `admin`/`auditor`) role, looked up in memory by
    /// the SHA-256 of the secret: the decision path never reads the database.
    Tokens(Arc<ArcSwap<HashMap<String, Actor>>>),
}

/// What the decision API needs: the current snapshot, the clock and how to authenticate.
#[derive(Clone)]
pub struct DecisionState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub clock: Arc<dyn Clock>,
    pub auth: DecisionAuth,
    /// Whether any caller may ask for `Waiver-Explain: true`.
    pub explain: bool,
    /// Where break-glass uses go to be recorded; never awaited on the decision path.
    pub break_glass_uses: Option<tokio::sync::mpsc::Sender<waiver_service::BreakGlassUse>>,
}

#[derive(Clone, Default)]
struct CountingIds(Arc<std::sync::atomic::AtomicU64>);

impl MakeRequestId for CountingIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("wvr-{n:012x}").parse().ok().map(RequestId::new)
    }
}

/// The router shared by `serve`, `demo` and the tests.
pub fn router(state: DecisionState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route("/access/v1/search/subject", post(authzen::search_subject))
        .route("/access/v1/search/resource", post(authzen::search_resource))
        .route("/access/v1/search/action", post(authzen::search_action))
        .route("/.well-known/authzen-configuration", get(authzen::configuration))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
        // Layers run bottom-up on the way in: the id is set first, so every later layer and
        // the handler see it, and echoed last on the way out.
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, CountingIds::default()))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_with_listener(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
