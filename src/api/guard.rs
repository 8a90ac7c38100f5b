//! Who may call a route. Today one guard: the auditor routes need the vault's
//! auditor bearer token (`<data-dir>/auditor-token`). The identity layer
//! replaces this with the auditor role of a verified token; routes keep
//! asking for [`AuditorAccess`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// The longest `Authorization` header looked at; longer ones are refused
/// before any parsing.
pub const AUTHORIZATION_BYTES_MAX: usize = 8 * 1024;

/// Proof that the caller presented the auditor credential.
#[derive(Debug, Clone, Copy)]
pub struct AuditorAccess;

/// The bearer token of a request, if the header is well-formed and small.
fn bearer(parts: &Parts) -> Option<&str> {
    let header = parts.headers.get(AUTHORIZATION)?;
    if header.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let text = header.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|token| !token.is_empty())
}

impl FromRequestParts<AppState> for AuditorAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if state.vault.auditor_token_matches(token) => Ok(Self),
            _ => Err(ApiError::unauthorized()),
        }
    }
}
