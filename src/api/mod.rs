//! The HTTP API: the only module that knows HTTP and the JSON wire types.
//!
//! [`router`] builds the whole surface with its middleware: request ids,
//! tracing without personal values, a body size limit, a request timeout,
//! panic catching, and problem documents for every error status that a layer
//! produces without a body of its own.

mod admin;
mod audit;
pub mod error;
pub mod extract;
pub mod guard;
mod health;
mod identity;
mod me;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::vault::Vault;
use problem::{PROBLEM_JSON, Problem};

/// The header that carries the request id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Limits the HTTP layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Longest time a request may take.
    pub request_timeout: Duration,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The open vault.
    pub vault: Arc<Vault>,
}

/// Request ids: 128 random bits as hex, from the system generator.
#[derive(Debug, Clone)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let bytes: [u8; 16] = crate::crypto::random_bytes(&ring::rand::SystemRandom::new()).ok()?;
        HeaderValue::from_str(&crate::ids::hex(&bytes)).ok().map(RequestId::new)
    }
}

/// Builds the HTTP surface of `vault`.
pub fn router(vault: Arc<Vault>, limits: Limits) -> Router {
    let state = AppState { vault };
    let guard_state = state.clone();
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            // The route template, never the raw path or query: they can carry
            // identifiers a log reader should not correlate, and bodies are never
            // logged at all.
            let route = request.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
            let request_id =
                request.headers().get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), route, request_id)
        })
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/public-key", get(audit::public_key))
        .route("/v1/audit/entries", get(audit::entries_list))
        .route("/v1/audit/entries/{index}", get(audit::entries_get))
        .route("/v1/audit/proof/inclusion", get(audit::proof_inclusion))
        .route("/v1/audit/proof/consistency", get(audit::proof_consistency))
        .route("/v1/token", post(identity::token_create))
        .route("/v1/customers", post(identity::customers_create))
        .route("/v1/me/data", get(me::data_get).put(me::data_merge))
        .route("/v1/me/data/{field}", put(me::data_put).delete(me::data_delete))
        .route("/v1/admin/businesses", get(admin::businesses_list).post(admin::businesses_create))
        .route("/v1/admin/businesses/{id}/disable", post(admin::businesses_disable))
        .route("/v1/admin/auditors", get(admin::auditors_list).post(admin::auditors_create))
        .route("/v1/admin/auditors/{id}/disable", post(admin::auditors_disable))
        .fallback(|| async { Problem::for_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { Problem::for_status(StatusCode::METHOD_NOT_ALLOWED) })
        .with_state(state)
        .layer(middleware::from_fn_with_state(guard_state, refuse_when_audit_invalid))
        // Innermost first: each `layer` call wraps everything before it.
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
                }))
                .layer(RequestBodyLimitLayer::new(limits.body_bytes_max))
                .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout)),
        )
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
                // Nothing this API answers may be kept by a cache.
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ))
                // A client's own x-request-id is dropped: ids in the log are
                // the vault's, never text a client chose.
                .layer(middleware::map_request(drop_client_request_id))
                .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
}

/// A vault whose stored audit log does not verify answers nothing but its
/// health probes: every other request gets 503 `audit_log_invalid`.
async fn refuse_when_audit_invalid(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    if !probe && let crate::vault::AuditStatus::Failed(failure) = state.vault.audit_status() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_log_invalid",
            "Audit log invalid",
            format!("the stored audit log does not verify ({failure}); the vault refuses to serve"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn drop_client_request_id(mut request: Request) -> Request {
    request.headers_mut().remove(REQUEST_ID_HEADER);
    request
}

/// Gives every error response that has no problem document one, so clients
/// see one error format whichever layer refused the request.
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if (status.is_client_error() || status.is_server_error()) && !is_problem {
        let mut replaced = Problem::for_status(status).into_response();
        for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
            if let Some(value) = response.headers().get(&name) {
                replaced.headers_mut().insert(name, value.clone());
            }
        }
        return replaced;
    }
    response
}
