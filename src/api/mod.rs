//! The HTTP API: the only module that knows HTTP and the JSON wire types.
//!
//! [`router`] builds the whole surface with its middleware: request ids,
//! tracing without personal values, a body size limit, a request timeout,
//! panic catching, and problem documents for every error status that a layer
//! produces without a body of its own.

mod admin;
mod audit;
pub mod center;
mod consent;
mod contact;
mod describe;
pub mod error;
pub mod export_html;
pub mod extract;
pub mod guard;
mod health;
pub use health::waiting_router;
mod identity;
mod me;
pub mod observe;
pub mod problem;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Authenticated requests one principal may make per second (twice as
    /// many in a burst); beyond, `429` with `Retry-After`.
    pub principal_requests_per_sec: u32,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The open vault.
    pub vault: Arc<Vault>,
    /// Authenticated requests per principal.
    pub principal_requests: Arc<crate::auth::ratelimit::RateLimiter>,
    /// What `/metrics` counts of the HTTP surface.
    pub metrics: Arc<observe::HttpMetrics>,
    /// The privacy center's sessions.
    pub sessions: Arc<crate::auth::session::Sessions>,
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
    let per_sec = limits.principal_requests_per_sec;
    let principal_requests =
        Arc::new(crate::auth::ratelimit::RateLimiter::new(per_sec.saturating_mul(2), per_sec.saturating_mul(60)));
    let metrics = Arc::new(observe::HttpMetrics::default());
    let sessions = Arc::new(crate::auth::session::Sessions::default());
    let state = AppState { vault, principal_requests, metrics: Arc::clone(&metrics), sessions };
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
    let (routes, openapi) = api_parts();
    let queryless = Arc::new(QuerylessRoutes::of(&openapi));
    let openapi = Arc::new(openapi);
    routes
        .route_layer(middleware::from_fn_with_state(queryless, refuse_undeclared_query))
        .route_layer(middleware::from_fn(observe::route_mark))
        // The privacy center's pages (HTML, outside the API description).
        .merge(center::routes().route_layer(middleware::from_fn(observe::route_mark)))
        .layer(axum::Extension(openapi))
        .fallback(|| async { Problem::for_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { Problem::for_status(StatusCode::METHOD_NOT_ALLOWED) })
        .with_state(state)
        .layer(middleware::from_fn_with_state(guard_state, refuse_when_audit_invalid))
        .layer(middleware::from_fn(refuse_large_headers))
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
        .layer(middleware::from_fn_with_state(metrics, observe::observe))
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
/// health probes: every other request gets 503 `audit_log_invalid`; and
/// one whose store is behind a checkpoint it published, 503
/// `store_rolled_back`.
async fn refuse_when_audit_invalid(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !probe && let Some(rollback) = state.vault.rollback() {
        return rolled_back(&rollback).into_response();
    }
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

/// The answer of a vault whose store is behind a checkpoint it published:
/// what happened, and what the operator does about it.
pub(crate) fn rolled_back(rollback: &crate::audit::published::Rollback) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_rolled_back",
        "Store rolled back",
        format!("{rollback}; {}", crate::vault::ROLLBACK_ADVICE),
    )
}

/// The operations that declare no query parameter in the API description:
/// route template to methods. Routes that declare some parse them into types
/// that refuse any other (`extract::Query`).
#[derive(Debug, Default)]
struct QuerylessRoutes(std::collections::HashMap<String, Vec<Method>>);

impl QuerylessRoutes {
    fn of(openapi: &utoipa::openapi::OpenApi) -> Self {
        use utoipa::openapi::path::ParameterIn;
        let mut routes = std::collections::HashMap::<String, Vec<Method>>::new();
        for (path, item) in &openapi.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let takes_query =
                    operation.parameters.iter().flatten().any(|parameter| parameter.parameter_in == ParameterIn::Query);
                if !takes_query {
                    routes.entry(path.clone()).or_default().push(method);
                }
            }
        }
        Self(routes)
    }

    fn contains(&self, method: &Method, route: &str) -> bool {
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.0.get(route).is_some_and(|methods| methods.contains(method))
    }
}

/// A query string on a route that takes none is refused with 400, as an
/// unknown JSON member is: a client that sends a parameter learns it is not
/// read, rather than getting an answer that ignored it.
async fn refuse_undeclared_query(
    axum::extract::State(queryless): axum::extract::State<Arc<QuerylessRoutes>>,
    request: Request,
    next: Next,
) -> Response {
    let has_query = request.uri().query().is_some_and(|query| !query.is_empty());
    let refused = has_query
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|route| queryless.contains(request.method(), route.as_str()));
    if refused {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "Invalid query",
            "this route takes no query parameters",
        )
        .into_response();
    }
    next.run(request).await
}

/// Largest total size of a request's header lines (names, values and their
/// separators). hyper refuses far larger ones itself; this refuses anything
/// a legitimate client of this API does not need, before routing.
pub const HEADER_BYTES_MAX: usize = 8 * 1024;

async fn refuse_large_headers(request: Request, next: Next) -> Response {
    let bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if bytes > HEADER_BYTES_MAX {
        return Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "Headers too large",
            format!("the request's headers take more than {HEADER_BYTES_MAX} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn drop_client_request_id(mut request: Request) -> Request {
    request.headers_mut().remove(REQUEST_ID_HEADER);
    request
}

/// Parses `bytes` as every JSON request body the API accepts, and `query`
/// as every query string, as the extractors do; for the fuzz targets
/// (`fuzz/`), which must not reach the handlers' private types otherwise.
#[cfg(fuzzing)]
pub fn fuzz_request_parsing(bytes: &[u8], query: &str) {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    macro_rules! bodies {
        ($($body:ty),* $(,)?) => {
            $( let _ = extract::json_body::<$body>(&headers, bytes); )*
        };
    }
    bodies!(
        admin::BusinessCreate,
        admin::AuditorCreate,
        crate::controller::ControllerDetails,
        webhooks::EndpointCreate,
        consent::RelationshipCreate,
        consent::GrantCreate,
        consent::Objections,
        consent::RequestCreate,
        consent::Approval,
        consent::Denial,
        identity::TokenRequest,
        identity::SignupRequest,
        identity::SecretRotation,
        me::FieldPut,
        me::EraseConfirm,
        me::PasswordChange,
        serde_json::Map<String, serde_json::Value>,
    );
    let Ok(uri) = format!("/?{query}").parse::<axum::http::Uri>() else { return };
    macro_rules! queries {
        ($($params:ty),* $(,)?) => {
            $( let _ = axum::extract::Query::<$params>::try_from_uri(&uri); )*
        };
    }
    queries!(
        extract::PageParams,
        audit::EntriesQuery,
        audit::InclusionQuery,
        audit::ConsistencyQuery,
        consent::ReadParams,
        consent::AccessLogParams,
        consent::ChangesParams,
    );
}

/// The OpenAPI description of the API: every route the router serves, and
/// only those, because both come from [`api_routes`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "consentvault", description = "A privacy-first, permission-based customer data vault."),
    modifiers(&BearerAuth),
    components(schemas(Problem))
)]
struct ApiDoc;

/// Declares the bearer-token scheme the protected routes use.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Every route, registered together with its OpenAPI description: one
/// router per role, merged. Which role a route is for is also fixed by the
/// extractor its handler takes (`guard.rs`).
fn api_routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public_routes())
        .merge(customer_routes())
        .merge(business_routes())
        .merge(auditor_routes())
        .merge(admin_routes())
}

/// Routes anyone may call: probes, the API description, the audit log's
/// checkpoint and key, token exchange and customer sign-up.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi_get))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::public_key))
        .routes(routes!(identity::token_create))
        .routes(routes!(identity::customers_create))
        .routes(routes!(contact::message_kinds))
}

/// The customer's own data (`/v1/me/...`).
fn customer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me::data_get, me::data_merge))
        .routes(routes!(me::data_put, me::data_delete))
        .routes(routes!(consent::relationships_list, consent::relationships_create))
        .routes(routes!(consent::relationships_delete, consent::relationships_update))
        .routes(routes!(consent::grants_list, consent::grants_create))
        .routes(routes!(consent::grants_get, consent::grants_revoke))
        .routes(routes!(consent::objections_get, consent::objections_put))
        .routes(routes!(consent::access_log))
        .routes(routes!(consent::my_events))
        .routes(routes!(consent::grants_receipt))
        .routes(routes!(me::me_erase))
        .routes(routes!(me::password_change))
        .routes(routes!(audit::my_proof_consistency))
        .routes(routes!(me::me_export))
        .routes(routes!(consent::my_requests_list))
        .routes(routes!(consent::my_requests_approve))
        .routes(routes!(consent::my_requests_deny))
        .routes(routes!(contact::inbox_list))
        .routes(routes!(contact::inbox_delete))
        .routes(routes!(contact::inbox_reply))
        .routes(routes!(contact::messages_write))
        .routes(routes!(contact::contact_get, contact::contact_put))
        .routes(routes!(webhooks::me_webhooks_list, webhooks::me_webhooks_create))
        .routes(routes!(webhooks::me_webhooks_delete))
        .routes(routes!(webhooks::me_webhooks_enable))
        .routes(routes!(webhooks::me_webhooks_deliveries))
        .routes(routes!(webhooks::me_webhooks_secret_rotate))
}

/// Business routes: connected customers and the scoped read.
fn business_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(consent::business_relationships))
        .routes(routes!(consent::business_grants))
        .routes(routes!(consent::grant_changes))
        .routes(routes!(consent::requests_list, consent::requests_create))
        .routes(routes!(consent::requests_get))
        .routes(routes!(consent::subjects_data))
        .routes(routes!(contact::messages_send))
        .routes(routes!(contact::replies_list))
        .routes(routes!(identity::credentials_rotate))
        .routes(routes!(webhooks::webhooks_list, webhooks::webhooks_create))
        .routes(routes!(webhooks::webhooks_get, webhooks::webhooks_delete))
        .routes(routes!(webhooks::webhooks_enable))
        .routes(routes!(webhooks::webhooks_secret_rotate))
        .routes(routes!(webhooks::webhooks_deliveries))
        .routes(routes!(webhooks::events_proof))
}

/// The auditor's view of the audit log.
fn auditor_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(audit::entries_list))
        .routes(routes!(audit::entries_get))
        .routes(routes!(audit::proof_inclusion))
        .routes(routes!(audit::proof_consistency))
        .routes(routes!(audit::replay))
        .routes(routes!(audit::policies_get))
}

/// The operator's routes; none touches personal data.
fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin::businesses_list, admin::businesses_create))
        .routes(routes!(admin::businesses_disable))
        .routes(routes!(admin::businesses_controller_put))
        .routes(routes!(admin::auditors_list, admin::auditors_create))
        .routes(routes!(admin::auditors_disable))
        .routes(routes!(admin::policies_reload))
        .routes(routes!(admin::keys_status))
        .routes(routes!(admin::keys_rotate))
}

/// The routes and their description, with the conventions every route
/// follows (`describe.rs`) applied to the description.
fn api_parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut openapi) = api_routes().split_for_parts();
    describe::conventions(&mut openapi);
    (routes, openapi)
}

/// The OpenAPI document of this API, with field values not yet typed by a
/// catalogue (a vault serves it typed by its own, at `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_parts().1
}

/// `GET /v1/openapi.json`: this document, with the customer's field values
/// typed as the field catalogue in force types them.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_get(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(describe::with_catalogue(&doc, &state.vault.policies().catalogue))
}

/// Gives every error response that has no problem document one, so clients
/// see one error format whichever layer refused the request.
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // Problem documents, and the privacy center's pages, which say what is
    // wrong in HTML, stay as they are.
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|value| {
        value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()) || value.as_bytes().starts_with(b"text/html")
    });
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
