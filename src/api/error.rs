//! The one place errors become HTTP responses: every domain error's
//! conversion to a problem document, and the constructors of the problems
//! the handlers raise about the request itself.
//!
//! Client mistakes get a 4xx problem document naming what is wrong. Anything
//! else is a 5xx whose body says nothing about the cause; the cause is
//! logged in the request's span, which carries the request id that the
//! response returns in `x-request-id`. No internal failure (store, random
//! generator, signing, key material) becomes a 4xx.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use crate::audit::AuditError;

/// How long a client is asked to wait while storage is unavailable: the
/// store tries to recover twice a second.
const STORAGE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(Problem, Option<RetryAfterSecs>);

/// A `Retry-After` in whole seconds, at least 1.
#[derive(Debug, Clone, Copy)]
struct RetryAfterSecs(u32);

impl From<std::time::Duration> for RetryAfterSecs {
    fn from(wait: std::time::Duration) -> Self {
        Self(u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX))
    }
}

impl ApiError {
    /// A client error with a stable code.
    fn client(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self(Problem::new(status, code, title, detail), None)
    }

    /// A server-side failure: logs `cause`, answers an opaque 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self(Problem::for_status(StatusCode::INTERNAL_SERVER_ERROR), None)
    }

    /// A 503 `storage_unavailable` with `Retry-After`: the storage device
    /// refused a write (a full disk, say); nothing was acknowledged, and the
    /// store recovers by itself once the device takes writes again.
    pub fn storage_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed: storage unavailable");
        Self(
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "Storage unavailable",
                "the vault cannot write to its storage now; the request was not acknowledged (it may or may not \
                 have been applied) and no data was released; try again shortly",
            ),
            Some(STORAGE_RETRY_AFTER.into()),
        )
    }

    /// A 503 `standby` with `Retry-After`: this node does not hold the
    /// shared store's lease (another vault node took it); nothing was
    /// acknowledged or released, and a load balancer sends the retry to the
    /// active node.
    pub fn standby() -> Self {
        tracing::warn!("request refused: another vault node holds the store's lease");
        Self(
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "standby",
                "Not the active node",
                "another vault node holds the store's lease; this node serves nothing; send the request to the \
                 active node",
            ),
            Some(STORAGE_RETRY_AFTER.into()),
        )
    }

    /// A 429 `rate_limited` with `Retry-After` (whole seconds, at least 1),
    /// from the limit `kind` names (counted in `/metrics`).
    pub fn too_many(kind: &'static str, wait: std::time::Duration) -> Self {
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            "too many requests; wait before trying again",
        );
        problem.limit = Some(kind);
        Self(problem, Some(wait.into()))
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

    /// A 400 `invalid_body`: the body is not what the route takes.
    pub fn invalid_body(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, "invalid_body", "Invalid body", detail)
    }

    /// A body the extractor refused (too large, wrong media type, ...).
    pub fn body_rejected(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::client(status, "invalid_body", "Invalid body", detail)
    }

    /// A 400 with `code` for a query parameter that is not valid.
    pub fn invalid_query(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, "Invalid query", detail)
    }

    /// A 404 `not_found` for `what` (a record of the caller's).
    pub fn not_found(what: &str) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", "Not found", format!("no such {what}"))
    }

    /// A 404 `no_such_entry`: the audit log has no entry at `index`.
    pub fn no_such_entry(index: u64) -> Self {
        Self::client(StatusCode::NOT_FOUND, "no_such_entry", "No such entry", format!("the log has no entry {index}"))
    }

    /// The 401 of `POST /v1/token`: whatever did not match, the same answer.
    pub fn invalid_credentials() -> Self {
        Self::client(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "Invalid credentials",
            "the credentials are not valid",
        )
    }

    /// A 400 for a `grant_type` the token endpoint does not offer.
    pub fn unsupported_grant_type() -> Self {
        Self::client(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant type",
            "`grant_type` must be client_credentials or password",
        )
    }

    /// A 403 `wrong_role`: the token is valid, for another role.
    pub fn wrong_role(role: crate::auth::Role) -> Self {
        Self::client(
            StatusCode::FORBIDDEN,
            "wrong_role",
            "Wrong role",
            format!("this resource is for the {} role", role.as_str()),
        )
    }

    /// A 400 `confirmation_required`: an erasure without its confirmation.
    pub fn erasure_unconfirmed() -> Self {
        Self::client(
            StatusCode::BAD_REQUEST,
            "confirmation_required",
            "Confirmation required",
            "send {\"confirm\": \"erase\"} to erase everything held about you",
        )
    }

    /// A 406: the export is offered as JSON and HTML only.
    pub fn export_not_acceptable() -> Self {
        Self::client(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "Not acceptable",
            "the export is available as application/json or text/html",
        )
    }
}

impl ApiError {
    /// A failure of the audit log, which is never the client's: storage
    /// refusing is a 503, anything else an opaque 500.
    fn failed_audit(error: AuditError) -> Self {
        match error {
            AuditError::Store(error) => error.into(),
            AuditError::SigningRefused(rollback) => super::rolled_back(&rollback).into(),
            other => Self::internal(&other),
        }
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
            other => Self::failed_audit(other),
        }
    }
}

impl ApiError {
    /// The problem this error answers with.
    pub fn problem(&self) -> &Problem {
        &self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.0.status == StatusCode::UNAUTHORIZED.as_u16();
        let retry_after = self.1;
        let mut response = self.0.into_response();
        if let Some(RetryAfterSecs(wait)) = retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&wait.to_string())
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
            DataError::Store(error)
            | DataError::Release(crate::release::ReleaseError::Store(error))
            | DataError::Key(crate::keys::KeyError::Store(error)) => error.into(),
            DataError::Key(crate::keys::KeyError::Audit(error)) => Self::failed_audit(error),
            DataError::Audit(error) => Self::failed_audit(error),
            error @ (DataError::KeyExhausted
            | DataError::KeyChanged
            | DataError::Crypto(_)
            | DataError::Key(_)
            | DataError::Release(_)) => Self::internal(&error),
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
            PrincipalError::UnknownPurpose(_) => {
                Self::client(StatusCode::UNPROCESSABLE_ENTITY, "unknown_purpose", "Unknown purpose", error.to_string())
            }
            PrincipalError::NameTaken(_) => {
                Self::client(StatusCode::CONFLICT, "name_taken", "Name taken", error.to_string())
            }
            PrincipalError::BadCredentials | PrincipalError::BadToken(_) => Self::unauthorized(),
            PrincipalError::WrongSecret => Self::invalid_credentials(),
            PrincipalError::TooManyAttempts(wait) => Self::too_many("token_failures_per_client", wait),
            PrincipalError::Store(error) => error.into(),
            PrincipalError::Audit(error) => Self::failed_audit(error),
            error @ (PrincipalError::CredentialsFile { .. }
            | PrincipalError::Crypto(_)
            | PrincipalError::Token(_)
            | PrincipalError::Hashing) => Self::internal(&error),
            PrincipalError::Data(error) => error.into(),
        }
    }
}

impl From<crate::consent::ConsentError> for ApiError {
    fn from(error: crate::consent::ConsentError) -> Self {
        use crate::consent::ConsentError;
        match error {
            ConsentError::NotFound(what) => {
                Self::client(StatusCode::NOT_FOUND, "not_found", "Not found", format!("no such {what}"))
            }
            ConsentError::AlreadyConnected => {
                Self::client(StatusCode::CONFLICT, "already_connected", "Already connected", error.to_string())
            }
            ConsentError::Invalid(detail) => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_body", "Invalid body", detail)
            }
            ConsentError::Policy(problem @ crate::policy::engine::GrantProblem::Duplicate { .. }) => {
                Self::invalid_body(problem.to_string())
            }
            ConsentError::Policy(problem) => Self::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_violation",
                "Refused by policy",
                problem.to_string(),
            ),
            // An erased customer's token stops working; a change that raced
            // the erasure gets the same uniform 401.
            ConsentError::SubjectErased => Self::unauthorized(),
            ConsentError::NoConsent => Self::client(
                StatusCode::FORBIDDEN,
                "no_consent",
                "No consent",
                "there is no live grant for this purpose",
            ),
            ConsentError::RequestRefused(refused) => {
                use crate::consent::RequestRefused;
                let (code, title) = match refused {
                    RequestRefused::Objected(_) => ("objected", "Objected purpose"),
                    RequestRefused::Blocked => ("requests_blocked", "Requests blocked"),
                    RequestRefused::TooManyPending { .. } => ("too_many_pending_requests", "Too many pending requests"),
                };
                Self::client(StatusCode::CONFLICT, code, title, refused.to_string())
            }
            ConsentError::Principal(error) => error.into(),
            ConsentError::Data(error) => error.into(),
            ConsentError::Store(error) | ConsentError::Release(crate::release::ReleaseError::Store(error)) => {
                error.into()
            }
            ConsentError::Audit(error) => Self::failed_audit(error),
            error @ (ConsentError::Release(_) | ConsentError::Crypto(_) | ConsentError::Signing(_)) => {
                Self::internal(&error)
            }
        }
    }
}

impl From<crate::contact::ContactError> for ApiError {
    fn from(error: crate::contact::ContactError) -> Self {
        use crate::contact::ContactError;
        match error {
            ContactError::Invalid(detail) => Self::invalid_body(detail),
            ContactError::NotFound(what) => Self::not_found(what),
            ContactError::Refused { refusal, audit_index } => {
                let told = refusal.told();
                let detail = match told {
                    crate::contact::Told::NotConnected => "no connected customer has this pairwise id",
                    crate::contact::Told::NotAccepted => "the customer does not take this message from you",
                    crate::contact::Told::NotNow => "the customer takes no messages now; try again later",
                    crate::contact::Told::CapReached => {
                        "you reached the number of messages the customer takes from you in a period"
                    }
                };
                let mut problem = Problem::new(StatusCode::FORBIDDEN, "message_refused", "Message refused", detail);
                problem.decided = Some(Box::new(super::problem::Decided { reason: told.as_str(), audit_index }));
                Self(problem, None)
            }
            ContactError::TooMany(wait) => Self::too_many("messages", wait),
            ContactError::InboxFull => {
                Self::client(StatusCode::CONFLICT, "inbox_full", "Inbox full", error.to_string())
            }
            // An erased customer's token stops working; a change that raced
            // the erasure gets the same uniform 401.
            ContactError::SubjectErased => Self::unauthorized(),
            ContactError::Consent(error) => error.into(),
            ContactError::Key(error) => error.into(),
            ContactError::Store(error) | ContactError::Release(crate::release::ReleaseError::Store(error)) => {
                error.into()
            }
            ContactError::Audit(error) => Self::failed_audit(error),
            error @ (ContactError::KeyExhausted(_) | ContactError::Release(_) | ContactError::Crypto(_)) => {
                Self::internal(&error)
            }
        }
    }
}

impl From<crate::rights::ExportError> for ApiError {
    fn from(error: crate::rights::ExportError) -> Self {
        match error {
            crate::rights::ExportError::Consent(error) => error.into(),
            crate::rights::ExportError::Contact(error) => error.into(),
        }
    }
}

impl From<crate::keys::KeyError> for ApiError {
    fn from(error: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError;
        match error {
            KeyError::InProgress => Self::client(
                StatusCode::CONFLICT,
                "rotation_in_progress",
                "Rotation in progress",
                "a key rotation is already running; GET /v1/admin/keys shows its progress",
            ),
            error @ (KeyError::SourceReadOnly { .. } | KeyError::Destroyed(_)) => {
                Self::client(StatusCode::CONFLICT, "key_source_read_only", "Key source read-only", error.to_string())
            }
            KeyError::Store(error) => error.into(),
            KeyError::Audit(error) => Self::failed_audit(error),
            other => Self::internal(&other),
        }
    }
}

impl From<crate::vault::PolicyReloadError> for ApiError {
    fn from(error: crate::vault::PolicyReloadError) -> Self {
        use crate::vault::PolicyReloadError;
        match error {
            PolicyReloadError::Invalid(error) => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_policy", "Invalid policy", error.to_string())
            }
            error @ PolicyReloadError::BuiltIn => {
                Self::client(StatusCode::CONFLICT, "built_in_policies", "Built-in policies", error.to_string())
            }
            PolicyReloadError::Audit(error) => Self::failed_audit(error),
        }
    }
}

impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(error: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError;
        match error {
            WebhookError::Invalid(detail) => {
                Self::client(StatusCode::BAD_REQUEST, "invalid_webhook", "Invalid webhook endpoint", detail)
            }
            WebhookError::NotFound => Self::not_found("webhook endpoint"),
            WebhookError::TooMany => {
                Self::client(StatusCode::CONFLICT, "too_many_endpoints", "Too many endpoints", error.to_string())
            }
            WebhookError::Store(error) => error.into(),
            WebhookError::Crypto(error) => Self::internal(&error),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::Unavailable(_) => Self::storage_unavailable(&error),
            crate::store::StoreError::Superseded => Self::standby(),
            other => Self::internal(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::consent::{ConsentError, RequestRefused};
    use crate::crypto::CryptoError;
    use crate::principals::PrincipalError;
    use crate::store::StoreError;
    use crate::subjects::DataError;

    /// The status and body `error` is answered with.
    async fn answer(error: impl Into<ApiError>) -> (u16, String) {
        let response = error.into().into_response();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn internal_failures_are_opaque_5xx_never_4xx() {
        let internal: Vec<(ApiError, &str)> = vec![
            (ConsentError::Crypto(CryptoError::Random).into(), "random"),
            (
                ConsentError::Principal(PrincipalError::Store(StoreError::Corrupt { what: "principal" })).into(),
                "principal",
            ),
            (DataError::KeyChanged.into(), "data key"),
            (DataError::Store(StoreError::Corrupt { what: "key record" }).into(), "key record"),
            (
                PrincipalError::CredentialsFile {
                    path: "/secret/admin-credentials.json".into(),
                    source: std::io::Error::other("disk full"),
                }
                .into(),
                "admin-credentials",
            ),
        ];
        for (error, cause) in internal {
            let (status, body) = answer(error).await;
            assert_eq!(status, 500, "{body}");
            assert!(!body.contains(cause), "the cause reached the body: {body}");
            assert!(body.contains("\"code\":\"internal\""), "{body}");
        }
    }

    #[tokio::test]
    async fn storage_that_refuses_writes_is_a_503_to_retry_however_it_is_wrapped() {
        let refused = || StoreError::Unavailable("No space left on device (os error 28)".to_owned());
        let wrapped: Vec<ApiError> = vec![
            refused().into(),
            ConsentError::Store(refused()).into(),
            ConsentError::Audit(AuditError::Store(refused())).into(),
            ConsentError::Principal(PrincipalError::Store(refused())).into(),
            DataError::Store(refused()).into(),
            DataError::Release(crate::release::ReleaseError::Store(refused())).into(),
            PrincipalError::Audit(AuditError::Store(refused())).into(),
            crate::keys::KeyError::Store(refused()).into(),
            DataError::Key(crate::keys::KeyError::Store(refused())).into(),
        ];
        for error in wrapped {
            let response = error.into_response();
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "5");
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert!(body.contains("\"code\":\"storage_unavailable\""), "{body}");
            assert!(!body.contains("os error"), "the cause reached the body: {body}");
        }
        // An engine fault that is not the device refusing stays an opaque 500.
        let (status, body) = answer(StoreError::Engine("page table corrupt".to_owned())).await;
        assert_eq!(status, 500, "{body}");
    }

    #[tokio::test]
    async fn client_mistakes_get_their_own_4xx_and_code() {
        let duplicate = crate::policy::engine::GrantProblem::Duplicate { list: "fields", name: "email".to_owned() };
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ConsentError::Policy(duplicate).into(), 400, "invalid_body"),
            (ConsentError::NoConsent.into(), 403, "no_consent"),
            (ConsentError::NotFound("grant").into(), 404, "not_found"),
            (ConsentError::RequestRefused(RequestRefused::Blocked).into(), 409, "requests_blocked"),
            (DataError::SubjectNotFound.into(), 404, "no_such_subject"),
            (PrincipalError::BadCredentials.into(), 401, "unauthorized"),
        ];
        for (error, status, code) in cases {
            let (answered, body) = answer(error).await;
            assert_eq!(answered, status, "{body}");
            assert!(body.contains(&format!("\"code\":\"{code}\"")), "{body}");
        }
    }
}
