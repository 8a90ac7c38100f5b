//! What `/metrics` counts of the HTTP surface: requests by route template,
//! method and status class, their latency, and the authentication failures
//! and 429s by kind. Labels are route templates (never a raw path), methods,
//! status classes, problem codes and limit names.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::problem::ProblemSent;
use crate::metrics::{CounterFamily, Exposition, HistogramFamily, SECONDS_BUCKETS};

/// The label of a request answered before it was routed (an unknown path,
/// a method the path does not take, a refusal of every request).
pub const UNROUTED: &str = "(unrouted)";

/// The HTTP surface's counters.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Requests by route, method and status class.
    pub requests: CounterFamily,
    /// Latency by route and method, until the response's head.
    pub durations: HistogramFamily,
    /// 401s by problem code, and 403 `wrong_role`.
    pub auth_failures: CounterFamily,
    /// 429s by the limit that refused.
    pub rate_limited: CounterFamily,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: CounterFamily::default(),
            durations: HistogramFamily::new(SECONDS_BUCKETS),
            auth_failures: CounterFamily::default(),
            rate_limited: CounterFamily::default(),
        }
    }
}

impl HttpMetrics {
    /// Writes every family.
    pub fn write(&self, out: &mut Exposition) {
        self.requests.write(
            out,
            "consentvault_http_requests_total",
            "HTTP requests answered, by route template, method and status class.",
            &["route", "method", "status"],
        );
        self.durations.write(
            out,
            "consentvault_http_request_duration_seconds",
            "Time from a request's arrival to its response's head, by route template and method.",
            &["route", "method"],
        );
        self.auth_failures.write(
            out,
            "consentvault_auth_failures_total",
            "Requests refused for their credentials or token (401), or for their role (403 wrong_role), by problem code.",
            &["code"],
        );
        self.rate_limited.write(
            out,
            "consentvault_rate_limited_total",
            "Requests refused with 429, by the limit that refused them.",
            &["limit"],
        );
    }
}

/// The route template of a response, set inside the router.
#[derive(Debug, Clone)]
struct RouteTemplate(Arc<str>);

/// Marks a routed request's response with its route template.
pub(super) async fn route_mark(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| Arc::<str>::from(path.as_str()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteTemplate(route));
    }
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Counts and times every request.
pub(super) async fn observe(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status();
    let route = response.extensions().get::<RouteTemplate>().map_or(UNROUTED, |route| &route.0);
    metrics.requests.inc(&[route, method, status_class(status)]);
    metrics.durations.of(&[route, method]).observe_duration(started.elapsed());
    if let Some(sent) = response.extensions().get::<ProblemSent>() {
        match status {
            StatusCode::UNAUTHORIZED => metrics.auth_failures.inc(&[sent.code]),
            StatusCode::FORBIDDEN if sent.code == "wrong_role" => metrics.auth_failures.inc(&[sent.code]),
            StatusCode::TOO_MANY_REQUESTS => metrics.rate_limited.inc(&[sent.limit.unwrap_or(sent.code)]),
            _ => {}
        }
    }
    response
}
