//! Public identity routes: `POST /v1/token` and `POST /v1/customers`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, json_body};
#[allow(unused_imports)]
use super::problem::Problem;
use crate::principals::Limits;

/// The body of `POST /v1/credentials/rotate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRotation {
    /// The client secret held now: a token alone does not rotate it.
    client_secret: String,
}

/// `POST /v1/credentials/rotate`: a business replaces its own client
/// secret, proving it holds the current one. The new one is shown once, in
/// this answer; the old one, and every token issued under it (this
/// request's too), stop working at once.
#[utoipa::path(post, path = "/v1/credentials/rotate", tag = "business", request_body = SecretRotation, security(("bearer" = [])), responses((status = 200, description = "The new credentials (the secret shown once)", body = super::admin::BusinessCredentials), (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token, or not the current client secret", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
pub async fn credentials_rotate(
    caller: super::guard::BusinessCaller,
    State(state): State<AppState>,
    Json(body): Json<SecretRotation>,
) -> Result<axum::Json<super::admin::BusinessCredentials>, ApiError> {
    let role = crate::auth::Role::Business;
    let actor = caller.principal.actor();
    let rotated = state.vault.principals().secret_rotate(&actor, role, &caller.business, &body.client_secret).await?;
    Ok(axum::Json(rotated.into()))
}

/// The body of `POST /v1/token`, as JSON or as a form.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `client_credentials` (with `client_id` and `client_secret`) or
    /// `password` (with `username`, the customer id, and `password`).
    #[schema(value_type = GrantType)]
    grant_type: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The grant types the token endpoint takes. The request carries the name
/// as text, so an unknown one is answered `unsupported_grant_type` (RFC 6749
/// §5.2) rather than as a malformed body.
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum GrantType {
    /// A business, auditor or admin client's id and secret.
    ClientCredentials,
    /// A customer's id and password (the built-in identity).
    Password,
}

impl GrantType {
    /// The grant type named `name` on the wire.
    fn parse(name: &str) -> Option<Self> {
        match name {
            "client_credentials" => Some(Self::ClientCredentials),
            "password" => Some(Self::Password),
            _ => None,
        }
    }
}

/// A token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

fn too_many(kind: &'static str, wait: std::time::Duration) -> Response {
    ApiError::too_many(kind, wait).into_response()
}

fn bad_credentials() -> ApiError {
    ApiError::invalid_credentials()
}

fn missing(name: &str) -> ApiError {
    ApiError::invalid_body(format!("`{name}` is required"))
}

#[utoipa::path(post, path = "/v1/token", tag = "identity", request_body(description = "As JSON or as an `application/x-www-form-urlencoded` form (RFC 6749)", content((TokenRequest = "application/json"), (TokenRequest = "application/x-www-form-urlencoded"))), responses((status = 200, body = TokenResponse), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Invalid credentials", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many attempts", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/token`: `client_credentials` for businesses, auditors and the
/// admin; `password` for customers of the built-in identity.
pub async fn token_create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = axum::body::Bytes::from_request(request, &())
        .await
        .map_err(|rejection| ApiError::body_rejected(rejection.status(), rejection.body_text()))?;
    let token_request: TokenRequest = if form { serde_urlencoded_form(&body)? } else { json_body(&headers, &body)? };
    let (principal_key, attempt) = match GrantType::parse(&token_request.grant_type) {
        Some(GrantType::ClientCredentials) => {
            let client_id = token_request.client_id.ok_or_else(|| missing("client_id"))?;
            let secret = token_request.client_secret.ok_or_else(|| missing("client_secret"))?;
            (format!("client:{client_id}"), Attempt::Client(client_id, secret))
        }
        Some(GrantType::Password) => {
            let username = token_request.username.ok_or_else(|| missing("username"))?;
            let password = token_request.password.ok_or_else(|| missing("password"))?;
            (format!("customer:{username}"), Attempt::Password(username, password))
        }
        None => {
            return Err(ApiError::unsupported_grant_type());
        }
    };
    let limits = state.vault.principals().limits();
    let address_key = Limits::address_key(peer.ip());
    // Every attempt is counted before its secret is checked, so attempts
    // made at once are limited exactly as attempts made one after another;
    // only a failure keeps its count.
    if let Err(wait) = limits.failures_per_client.take(&principal_key) {
        return Ok(too_many("token_failures_per_client", wait));
    }
    if let Err(wait) = limits.failures_per_address.take(&address_key) {
        limits.failures_per_client.refund(&principal_key);
        return Ok(too_many("token_failures_per_address", wait));
    }
    let issued = match attempt {
        Attempt::Client(client_id, secret) => state.vault.principals().token_for_client(&client_id, &secret),
        Attempt::Password(username, password) => {
            state.vault.principals().token_for_password(&username, &password).await
        }
    };
    if !matches!(issued, Err(crate::principals::PrincipalError::BadCredentials)) {
        limits.failures_per_client.refund(&principal_key);
        limits.failures_per_address.refund(&address_key);
    }
    match issued {
        Ok(token) => {
            let body = TokenResponse { access_token: token.token, token_type: "Bearer", expires_in: token.expires_in };
            Ok(axum::Json(body).into_response())
        }
        Err(crate::principals::PrincipalError::BadCredentials) => {
            tracing::info!(peer = %peer.ip(), "sign-in refused");
            Err(bad_credentials())
        }
        Err(error) => Err(error.into()),
    }
}

enum Attempt {
    Client(String, String),
    Password(String, String),
}

fn serde_urlencoded_form(body: &[u8]) -> Result<TokenRequest, ApiError> {
    let pairs: Vec<(String, String)> =
        url_form_pairs(body).ok_or_else(|| ApiError::invalid_body("the form is not valid"))?;
    let mut map = serde_json::Map::new();
    for (name, value) in pairs {
        if map.insert(name.clone(), serde_json::Value::String(value)).is_some() {
            return Err(ApiError::invalid_body(format!("`{name}` is given twice")));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|error| ApiError::invalid_body(format!("the form is not valid: {error}")))
}

/// Splits an `application/x-www-form-urlencoded` body into decoded pairs.
pub(super) fn url_form_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode = |part: &str| -> Option<String> {
        let mut bytes = Vec::with_capacity(part.len());
        let mut iter = part.bytes();
        while let Some(byte) = iter.next() {
            match byte {
                b'+' => bytes.push(b' '),
                b'%' => {
                    let high = char::from(iter.next()?).to_digit(16)?;
                    let low = char::from(iter.next()?).to_digit(16)?;
                    bytes.push(u8::try_from(high * 16 + low).ok()?);
                }
                other => bytes.push(other),
            }
        }
        String::from_utf8(bytes).ok()
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(name)?, decode(value)?))
        })
        .collect()
}

/// The body of `POST /v1/customers`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    password: String,
}

/// The answer to a sign-up.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignupResponse {
    customer_id: String,
}

#[utoipa::path(post, path = "/v1/customers", tag = "identity", request_body = SignupRequest, responses((status = 201, body = SignupResponse), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many attempts", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/customers`: built-in customer sign-up, rate-limited per address.
pub async fn customers_create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<SignupRequest>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.vault.principals().limits().signups_per_address.take(&Limits::address_key(peer.ip())) {
        return Ok(too_many("signups_per_address", wait));
    }
    let customer = state.vault.principals().customer_signup(&request.password).await?;
    Ok((StatusCode::CREATED, axum::Json(SignupResponse { customer_id: customer.to_string() })).into_response())
}
