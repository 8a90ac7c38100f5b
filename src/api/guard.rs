//! Who is calling: one extractor per role, so a handler for one role cannot
//! be reached with another role's token. The check is the type of the
//! handler's argument, not an `if` inside it.
//!
//! Every failure to authenticate is the same 401 with `WWW-Authenticate`;
//! a valid token of another role is a 403 `wrong_role`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::{Principal, Role};
use crate::ids::{BusinessId, SubjectId};

/// The longest `Authorization` header looked at; longer ones are refused
/// before any parsing.
pub const AUTHORIZATION_BYTES_MAX: usize = 8 * 1024;

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

/// The verified principal of a request, required to have `role`.
async fn principal(parts: &Parts, state: &AppState, role: Role) -> Result<Principal, ApiError> {
    let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
    let now = u64::try_from(crate::clock::now().unix_timestamp()).unwrap_or(0);
    let principal = state.vault.principals().authenticate(token, now).await.map_err(|error| {
        // The reason goes to the log (no token text in it), never to the client.
        tracing::info!(reason = %error, "token refused");
        ApiError::unauthorized()
    })?;
    // Per principal, whatever its role: one client cannot crowd out others.
    // Principal ids are random 128-bit values, unique across roles, so the
    // id alone is the key (no allocation on every request).
    if let Err(wait) = state.principal_requests.take(&principal.id) {
        return Err(ApiError::too_many("requests_per_principal", wait));
    }
    if principal.role != role {
        return Err(ApiError::wrong_role(role));
    }
    Ok(principal)
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                principal(parts, state, $role).await.map(Self)
            }
        }
    };
}

/// A caller holding a business token, with its business id.
#[derive(Debug, Clone)]
pub struct BusinessCaller {
    /// The verified principal.
    pub principal: Principal,
    /// The business it is.
    pub business: BusinessId,
}

impl FromRequestParts<AppState> for BusinessCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = principal(parts, state, Role::Business).await?;
        let business = principal.id.parse().map_err(|_| ApiError::unauthorized())?;
        Ok(Self { principal, business })
    }
}
role_extractor!(
    /// A caller holding an auditor token.
    AuditorCaller,
    Role::Auditor
);
role_extractor!(
    /// A caller holding the admin's token.
    AdminCaller,
    Role::Admin
);

/// A caller holding a customer token: the subject they may act on.
#[derive(Debug, Clone)]
pub struct CustomerCaller {
    /// The principal.
    pub principal: Principal,
    /// The customer's own subject.
    pub subject: SubjectId,
}

impl FromRequestParts<AppState> for CustomerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = principal(parts, state, Role::Customer).await?;
        // A customer principal's id is its subject id by construction.
        let subject = principal.id.parse().map_err(|_| ApiError::unauthorized())?;
        Ok(Self { principal, subject })
    }
}
