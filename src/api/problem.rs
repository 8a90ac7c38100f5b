//! RFC 9457 problem documents: the one place errors become HTTP responses.
//!
//! A problem carries a stable machine `code`, a `title` and a `detail` that
//! say what is wrong without echoing personal values. A 500 is opaque: it
//! carries the request id, and the cause goes to the log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:consentvault:problem:<code>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short, fixed summary of the problem type.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// A decision the problem reports, logged: `reason` and `audit_index`
    /// members (boxed: most problems have none, and errors stay small).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub decided: Option<Box<Decided>>,
    /// For a 429: which limit refused (counted in `/metrics`, not sent).
    #[serde(skip)]
    #[schema(ignore)]
    pub limit: Option<&'static str>,
}

/// A logged decision a problem reports (a refused message).
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    /// Why, coarsely (`not_connected`, `not_accepted`, `not_now`,
    /// `cap_reached`).
    pub reason: &'static str,
    /// The audit index of the decision.
    pub audit_index: u64,
}

/// What a problem response says of itself to the metrics layer: its code
/// and, for a 429, the limit that refused.
#[derive(Debug, Clone, Copy)]
pub struct ProblemSent {
    /// The problem's stable code.
    pub code: &'static str,
    /// The limit that refused, for a 429.
    pub limit: Option<&'static str>,
}

impl Problem {
    /// A problem with `status`, stable `code`, `title` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:consentvault:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            decided: None,
            limit: None,
        }
    }

    /// The problem for a status produced by a middleware layer (body too
    /// large, timeout, unknown route, ...), which has no richer context.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, title, detail) = match status {
            StatusCode::NOT_FOUND => ("not_found", "Not found", "no resource at this path"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "Method not allowed", "this path does not support this method")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("body_too_large", "Body too large", "the request body is larger than the server accepts")
            }
            StatusCode::REQUEST_TIMEOUT => {
                ("timeout", "Request timeout", "the request took longer than the server allows")
            }
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                ("headers_too_large", "Headers too large", "the request headers are larger than the server accepts")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "Unsupported media type", "send application/json")
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ("unavailable", "Service unavailable", "the vault cannot serve right now")
            }
            status if status.is_server_error() => {
                ("internal", "Internal error", "the server failed; the request id identifies the cause in its log")
            }
            _ => ("bad_request", "Bad request", "the request is not valid"),
        };
        Self::new(status, code, title, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.extensions_mut().insert(ProblemSent { code: self.code, limit: self.limit });
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
