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
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{CounterFamily, Exposition, Histogram, SECONDS_BUCKETS};

/// The label of a request answered before it was routed (an unknown path,
/// a method the path does not take, a refusal of every request).
pub const UNROUTED: &str = "(unrouted)";

/// The status classes, in the order of [`RouteStats::classes`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A route template and a method.
type RouteKey = (Arc<str>, &'static str);

/// What one route template and method answered, and how fast.
#[derive(Debug)]
struct RouteStats {
    /// Responses by status class ([`STATUS_CLASSES`]).
    classes: [AtomicU64; 5],
    /// Time until the response's head.
    latency: Histogram,
}

/// The HTTP surface's counters.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Requests by route template and method: found with one lookup per
    /// request, without allocating.
    routes: RwLock<BTreeMap<RouteKey, Arc<RouteStats>>>,
    /// 401s by problem code, and 403 `wrong_role`.
    pub auth_failures: CounterFamily,
    /// 429s by the limit that refused.
    pub rate_limited: CounterFamily,
}

impl HttpMetrics {
    fn route(&self, route: &Arc<str>, method: &'static str) -> Arc<RouteStats> {
        let key = (Arc::clone(route), method);
        if let Some(stats) = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
            return Arc::clone(stats);
        }
        let mut routes = self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = routes.entry(key).or_insert_with(|| {
            Arc::new(RouteStats { classes: Default::default(), latency: Histogram::new(SECONDS_BUCKETS) })
        });
        Arc::clone(stats)
    }

    /// Writes every family.
    pub fn write(&self, out: &mut Exposition) {
        let routes = self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        out.header(
            "consentvault_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status class.",
        );
        for ((route, method), stats) in routes.iter() {
            for (class, count) in STATUS_CLASSES.iter().zip(&stats.classes) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let labels = [("route", &**route), ("method", *method), ("status", *class)];
                    out.labelled("consentvault_http_requests_total", &labels, count);
                }
            }
        }
        out.header(
            "consentvault_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its response's head, by route template and method.",
        );
        for ((route, method), stats) in routes.iter() {
            let labels = [("route", &**route), ("method", *method)];
            stats.latency.write(out, "consentvault_http_request_duration_seconds", &labels);
        }
        drop(routes);
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

thread_local! {
    /// [`UNROUTED`], shared, so counting it allocates nothing.
    static UNROUTED_ROUTE: Arc<str> = Arc::from(UNROUTED);
}

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

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn status_class(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// Counts and times every request.
pub(super) async fn observe(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status();
    let stats = match response.extensions().get::<RouteTemplate>() {
        Some(route) => metrics.route(&route.0, method),
        None => UNROUTED_ROUTE.with(|route| metrics.route(route, method)),
    };
    stats.classes[status_class(status)].fetch_add(1, Ordering::Relaxed);
    stats.latency.observe_duration(started.elapsed());
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
