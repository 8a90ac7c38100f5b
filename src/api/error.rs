//! The one place domain errors become HTTP responses.
//!
//! Client mistakes get a 4xx problem document naming what is wrong. Anything
//! else is a 500 whose body says nothing about the cause; the cause is
//! logged in the request's span, which carries the request id that the
//! response returns in `x-request-id`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use crate::audit::AuditError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(Problem, Option<std::time::Duration>);

impl ApiError {
    /// A client error with a stable code.
    pub fn client(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self(Problem::new(status, code, title, detail), None)
    }

    /// A server-side failure: logs `cause`, answers an opaque 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self(Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR), None)
    }

    /// A 429 `rate_limited` with `Retry-After` (whole seconds, at least 1).
    pub fn too_many(wait: std::time::Duration) -> Self {
        Self(
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                "too many requests; wait before trying again",
            ),
            Some(wait),
        )
    }

    /// The uniform 401: the same whatever check failed.
    pub fn unauthorized() -> Self {
        Self(
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "a valid bearer token for this resource is required",
            ),
            None,
        )
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self(problem, None)
    }
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::OutOfRange(detail) => {
                Self::client(StatusCode::BAD_REQUEST, "out_of_range", "Out of range", detail)
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.0.status == StatusCode::UNAUTHORIZED.as_u16();
        let retry_after = self.1;
        let mut response = self.0.into_response();
        if let Some(wait) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        if unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"consentvault\""),
            );
        }
        response
    }
}

impl From<crate::subjects::DataError> for ApiError {
    fn from(error: crate::subjects::DataError) -> Self {
        use crate::policy::FieldError;
        use crate::subjects::DataError;
        match error {
            DataError::Field(FieldError::Unknown { field }) => Self::client(
                StatusCode::BAD_REQUEST,
                "unknown_field",
                "Unknown field",
                format!("`{field}` is not in the field catalogue"),
            ),
            DataError::Field(FieldError::Invalid { field, reason }) => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_value", "Invalid value", format!("`{field}`: {reason}"))
            }
            DataError::Field(FieldError::TooLarge { field, max_bytes }) => Self::client(
                StatusCode::BAD_REQUEST,
                "value_too_large",
                "Value too large",
                format!("`{field}` takes at most {max_bytes} bytes"),
            ),
            DataError::SubjectNotFound => {
                Self::client(StatusCode::NOT_FOUND, "no_such_subject", "No such subject", "the subject does not exist")
            }
            other => Self::internal(&other),
        }
    }
}

impl From<crate::principals::PrincipalError> for ApiError {
    fn from(error: crate::principals::PrincipalError) -> Self {
        use crate::principals::PrincipalError;
        match error {
            PrincipalError::Invalid(detail) => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_body", "Invalid body", detail)
            }
            PrincipalError::NotFound(what) => {
                Self::client(StatusCode::NOT_FOUND, "not_found", "Not found", format!("no such {what}"))
            }
            PrincipalError::BadCredentials | PrincipalError::BadToken(_) => Self::unauthorized(),
            other => Self::internal(&other),
        }
    }
}
