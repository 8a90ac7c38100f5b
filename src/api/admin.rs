//! Admin routes: register businesses and auditors (credentials shown once),
//! list them, disable them. The admin never reaches personal data: no
//! route here touches subject data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, PageParams, Path, Query, cursor_encode};
use super::guard::AdminCaller;
#[allow(unused_imports)]
use super::problem::Problem;
use crate::auth::Role;
use crate::principals::{NewClient, PrincipalRecord};

/// The body of `POST /v1/admin/businesses`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessCreate {
    name: String,
    purposes: Vec<String>,
    /// How to reach the business about personal data; its consent receipts
    /// name it by these (Kantara CR v1.1 asks for every one).
    #[serde(default)]
    controller: Option<crate::controller::ControllerDetails>,
}

/// The body of `POST /v1/admin/auditors`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditorCreate {
    name: String,
}

/// A registered business, as the admin lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusinessItem {
    business_id: String,
    name: String,
    purposes: Vec<String>,
    client_id: String,
    disabled: bool,
    #[schema(format = DateTime)]
    created_at: String,
    /// Its controller details, once registered.
    controller: Option<crate::controller::ControllerDetails>,
}

impl From<PrincipalRecord> for BusinessItem {
    fn from(record: PrincipalRecord) -> Self {
        Self {
            business_id: record.id,
            name: record.name,
            purposes: record.purposes,
            client_id: record.client_id,
            disabled: record.disabled,
            created_at: record.created_at,
            controller: record.controller,
        }
    }
}

/// A registered auditor, as the admin lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditorItem {
    auditor_id: String,
    name: String,
    client_id: String,
    disabled: bool,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<PrincipalRecord> for AuditorItem {
    fn from(record: PrincipalRecord) -> Self {
        Self {
            auditor_id: record.id,
            name: record.name,
            client_id: record.client_id,
            disabled: record.disabled,
            created_at: record.created_at,
        }
    }
}

/// A page of principals; `cursor` is `null` on the last.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PrincipalPage<T> {
    items: Vec<T>,
    cursor: Option<String>,
}

async fn create<T: From<NewClient> + Serialize>(
    state: &AppState,
    caller: &AdminCaller,
    role: Role,
    name: &str,
    purposes: Vec<String>,
) -> Result<Response, ApiError> {
    let created = state.vault.principals().client_create(&caller.0.actor(), role, name, purposes).await?;
    Ok((StatusCode::CREATED, axum::Json(T::from(created))).into_response())
}

/// A business's credentials, shown once: at registration and when it
/// rotates its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusinessCredentials {
    business_id: String,
    client_id: String,
    /// Shown only in this answer; the vault keeps a hash.
    client_secret: String,
}

impl From<NewClient> for BusinessCredentials {
    fn from(client: NewClient) -> Self {
        Self { business_id: client.id, client_id: client.client_id, client_secret: client.client_secret }
    }
}

/// An auditor's credentials, shown once, at registration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditorCredentials {
    auditor_id: String,
    client_id: String,
    /// Shown only in this answer; the vault keeps a hash.
    client_secret: String,
}

impl From<NewClient> for AuditorCredentials {
    fn from(client: NewClient) -> Self {
        Self { auditor_id: client.id, client_id: client.client_id, client_secret: client.client_secret }
    }
}

fn list<T: From<PrincipalRecord>>(
    state: &AppState,
    role: Role,
    paging: &PageParams,
) -> Result<axum::Json<PrincipalPage<T>>, ApiError> {
    let kind = role.as_str();
    let after: Option<String> = paging.after(kind)?;
    let (records, more) = state.vault.principals().principals(role, after.as_deref(), paging.limit()?)?;
    let cursor = if more { records.last().map(|record| cursor_encode(kind, &record.id)) } else { None };
    Ok(axum::Json(PrincipalPage { items: records.into_iter().map(T::from).collect(), cursor }))
}

async fn disable<T: From<PrincipalRecord>>(
    state: &AppState,
    caller: &AdminCaller,
    role: Role,
    id: &str,
) -> Result<axum::Json<T>, ApiError> {
    let record = state.vault.principals().principal_disable(&caller.0.actor(), role, id).await?;
    Ok(axum::Json(record.into()))
}

#[utoipa::path(post, path = "/v1/admin/businesses", tag = "admin", request_body = BusinessCreate, security(("bearer" = [])), responses((status = 201, description = "The business and its credentials (the secret shown once)", body = BusinessCredentials), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 409, description = "A business of that name is registered", body = Problem, content_type = "application/problem+json"), (status = 422, description = "A purpose the policies do not define", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/businesses`.
pub async fn businesses_create(
    caller: AdminCaller,
    State(state): State<AppState>,
    Json(body): Json<BusinessCreate>,
) -> Result<Response, ApiError> {
    let principals = state.vault.principals();
    let created = principals.business_register(&caller.0.actor(), &body.name, body.purposes, body.controller).await?;
    Ok((StatusCode::CREATED, axum::Json(BusinessCredentials::from(created))).into_response())
}

#[utoipa::path(put, path = "/v1/admin/businesses/{id}/controller", tag = "admin", params(("id" = String, Path, description = "Business id")), request_body = crate::controller::ControllerDetails, security(("bearer" = [])), responses((status = 200, body = BusinessItem), (status = 404, description = "No such principal", body = Problem, content_type = "application/problem+json")))]
/// `PUT /v1/admin/businesses/{id}/controller`: replaces the business's
/// controller details. Receipts issued from now on name them; those issued
/// before never change.
pub async fn businesses_controller_put(
    caller: AdminCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<crate::controller::ControllerDetails>,
) -> Result<axum::Json<BusinessItem>, ApiError> {
    let record = state.vault.principals().business_controller_set(&caller.0.actor(), &id, body).await?;
    Ok(axum::Json(record.into()))
}

#[utoipa::path(get, path = "/v1/admin/businesses", tag = "admin", params(PageParams), security(("bearer" = [])), responses((status = 200, body = PrincipalPage<BusinessItem>), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/admin/businesses`.
pub async fn businesses_list(
    _caller: AdminCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<PrincipalPage<BusinessItem>>, ApiError> {
    list(&state, Role::Business, &paging)
}

#[utoipa::path(post, path = "/v1/admin/businesses/{id}/disable", tag = "admin", params(("id" = String, Path, description = "Business id")), security(("bearer" = [])), responses((status = 200, body = BusinessItem), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such principal", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/businesses/{id}/disable`.
pub async fn businesses_disable(
    caller: AdminCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<BusinessItem>, ApiError> {
    disable(&state, &caller, Role::Business, &id).await
}

#[utoipa::path(post, path = "/v1/admin/auditors", tag = "admin", request_body = AuditorCreate, security(("bearer" = [])), responses((status = 201, description = "The auditor and its credentials (the secret shown once)", body = AuditorCredentials), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/auditors`.
pub async fn auditors_create(
    caller: AdminCaller,
    State(state): State<AppState>,
    Json(body): Json<AuditorCreate>,
) -> Result<Response, ApiError> {
    create::<AuditorCredentials>(&state, &caller, Role::Auditor, &body.name, Vec::new()).await
}

#[utoipa::path(get, path = "/v1/admin/auditors", tag = "admin", params(PageParams), security(("bearer" = [])), responses((status = 200, body = PrincipalPage<AuditorItem>), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/admin/auditors`.
pub async fn auditors_list(
    _caller: AdminCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<PrincipalPage<AuditorItem>>, ApiError> {
    list(&state, Role::Auditor, &paging)
}

#[utoipa::path(post, path = "/v1/admin/auditors/{id}/disable", tag = "admin", params(("id" = String, Path, description = "Auditor id")), security(("bearer" = [])), responses((status = 200, body = AuditorItem), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such principal", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/auditors/{id}/disable`.
pub async fn auditors_disable(
    caller: AdminCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<AuditorItem>, ApiError> {
    disable(&state, &caller, Role::Auditor, &id).await
}

/// `POST /v1/admin/policies/reload`: re-read the policy directory. An
/// invalid file changes nothing and is named, with its line, in the answer.
#[utoipa::path(post, path = "/v1/admin/policies/reload", tag = "admin", security(("bearer" = [])), responses((status = 200, description = "The policies now in force", body = PoliciesLoaded), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn policies_reload(
    caller: AdminCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<PoliciesLoaded>, ApiError> {
    let policies = state.vault.policies_reload(&caller.0.actor()).await?;
    Ok(axum::Json(PoliciesLoaded {
        sha256: policies.sha256.clone(),
        fields: policies.catalogue.fields().count(),
        purposes: policies.rules.purposes.len(),
        deny_rules: policies.rules.deny.len(),
        duration_caps: policies.rules.duration_caps.len(),
    }))
}

/// The policies a reload put in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoliciesLoaded {
    /// The hash of the policy files, as the log names them.
    sha256: String,
    /// Fields in the catalogue.
    fields: usize,
    /// Purposes defined.
    purposes: usize,
    /// Deny rules.
    deny_rules: usize,
    /// Duration caps.
    duration_caps: usize,
}

/// The keys: the current KEK version, the loaded and destroyed versions,
/// the wraps counted per version, the encryption limits, and the latest
/// rotation with its progress. Never any key material.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", security(("bearer" = [])), responses((status = 200, description = "The state of the keys", body = crate::keys::KeyStatus)))]
pub async fn keys_status(
    _caller: AdminCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<crate::keys::KeyStatus>, ApiError> {
    Ok(axum::Json(state.vault.keys().key_status()?))
}

/// Starts a KEK rotation: a new KEK version is written to the key file and
/// made current, and every DEK is rewrapped in the background while the
/// vault keeps serving; the old version is destroyed once nothing is sealed
/// under it. Every step is audited (`key.rotated`). Progress: `GET
/// /v1/admin/keys`. An interrupted rotation is resumed instead.
#[utoipa::path(post, path = "/v1/admin/keys/rotate", tag = "admin", security(("bearer" = [])), responses((status = 202, description = "The rotation as started; `Location` is the status resource", body = crate::keys::Rotation), (status = 409, description = "A rotation runs, or the KEKs come from the environment", body = Problem, content_type = "application/problem+json")))]
pub async fn keys_rotate(caller: AdminCaller, State(state): State<AppState>) -> Result<Response, ApiError> {
    let vault = std::sync::Arc::clone(&state.vault);
    let actor = caller.0.actor();
    // Writes the key file and waits for a durable commit: blocking work.
    let rotation = tokio::task::spawn_blocking(move || vault.keys().kek_rotate(&actor, "admin"))
        .await
        .map_err(|error| ApiError::internal(&error))??;
    Ok((StatusCode::ACCEPTED, [(axum::http::header::LOCATION, "/v1/admin/keys")], axum::Json(rotation)).into_response())
}
