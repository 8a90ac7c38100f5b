//! Admin routes: register businesses and auditors (credentials shown once),
//! list them, disable them. The admin never reaches personal data: no
//! route here touches subject data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::guard::AdminCaller;
#[allow(unused_imports)]
use super::problem::Problem;
use crate::auth::Role;
use crate::principals::PrincipalRecord;

/// Largest page of a principal listing.
const PAGE_ITEMS_MAX: usize = 100;

/// The body of `POST /v1/admin/businesses`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessCreate {
    name: String,
    purposes: Vec<String>,
}

/// The body of `POST /v1/admin/auditors`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditorCreate {
    name: String,
}

/// Paging of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// One principal in a listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PrincipalItem {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purposes: Vec<String>,
    client_id: String,
    disabled: bool,
    created_at: String,
}

impl From<PrincipalRecord> for PrincipalItem {
    fn from(record: PrincipalRecord) -> Self {
        Self {
            id: record.id,
            name: record.name,
            purposes: record.purposes,
            client_id: record.client_id,
            disabled: record.disabled,
            created_at: record.created_at,
        }
    }
}

/// A page of principals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PrincipalPage {
    items: Vec<PrincipalItem>,
    cursor: Option<String>,
}

async fn create(
    state: &AppState,
    caller: &AdminCaller,
    role: Role,
    name: &str,
    purposes: Vec<String>,
) -> Result<Response, ApiError> {
    let created = state.vault.principals().client_create(&caller.0.actor(), role, name, purposes).await?;
    let id_name = match role {
        Role::Business => "business_id",
        _ => "auditor_id",
    };
    let body = serde_json::json!({
        id_name: created.id,
        "client_id": created.client_id,
        "client_secret": created.client_secret,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn list(state: &AppState, role: Role, query: PageQuery) -> Result<axum::Json<PrincipalPage>, ApiError> {
    let limit = super::extract::page_limit(query.limit, PAGE_ITEMS_MAX, PAGE_ITEMS_MAX)?;
    let after = match &query.cursor {
        Some(cursor) => {
            let valid = cursor.len() == 32 && cursor.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(ApiError::invalid_query("invalid_cursor", "`cursor` is not one this vault issued"));
            }
            Some(cursor.as_str())
        }
        None => None,
    };
    let records = state.vault.principals().principals(role, after, limit + 1)?;
    let more = records.len() > limit;
    let items: Vec<PrincipalItem> = records.into_iter().take(limit).map(PrincipalItem::from).collect();
    let cursor = if more { items.last().map(|item| item.id.clone()) } else { None };
    Ok(axum::Json(PrincipalPage { items, cursor }))
}

async fn disable(
    state: &AppState,
    caller: &AdminCaller,
    role: Role,
    id: &str,
) -> Result<axum::Json<PrincipalItem>, ApiError> {
    let record = state.vault.principals().principal_disable(&caller.0.actor(), role, id).await?;
    Ok(axum::Json(record.into()))
}

#[utoipa::path(post, path = "/v1/admin/businesses", tag = "admin", request_body = BusinessCreate, security(("bearer" = [])), responses((status = 201, description = "business_id, client_id, client_secret (shown once)", body = Object), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/businesses`.
pub async fn businesses_create(
    caller: AdminCaller,
    State(state): State<AppState>,
    Json(body): Json<BusinessCreate>,
) -> Result<Response, ApiError> {
    create(&state, &caller, Role::Business, &body.name, body.purposes).await
}

#[utoipa::path(get, path = "/v1/admin/businesses", tag = "admin", params(PageQuery), security(("bearer" = [])), responses((status = 200, body = PrincipalPage), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/admin/businesses`.
pub async fn businesses_list(
    _caller: AdminCaller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<PrincipalPage>, ApiError> {
    list(&state, Role::Business, query)
}

#[utoipa::path(post, path = "/v1/admin/businesses/{id}/disable", tag = "admin", params(("id" = String, Path, description = "Business id")), security(("bearer" = [])), responses((status = 200, body = PrincipalItem), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such principal", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/businesses/{id}/disable`.
pub async fn businesses_disable(
    caller: AdminCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<PrincipalItem>, ApiError> {
    disable(&state, &caller, Role::Business, &id).await
}

#[utoipa::path(post, path = "/v1/admin/auditors", tag = "admin", request_body = AuditorCreate, security(("bearer" = [])), responses((status = 201, description = "auditor_id, client_id, client_secret (shown once)", body = Object), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/auditors`.
pub async fn auditors_create(
    caller: AdminCaller,
    State(state): State<AppState>,
    Json(body): Json<AuditorCreate>,
) -> Result<Response, ApiError> {
    create(&state, &caller, Role::Auditor, &body.name, Vec::new()).await
}

#[utoipa::path(get, path = "/v1/admin/auditors", tag = "admin", params(PageQuery), security(("bearer" = [])), responses((status = 200, body = PrincipalPage), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/admin/auditors`.
pub async fn auditors_list(
    _caller: AdminCaller,
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<PrincipalPage>, ApiError> {
    list(&state, Role::Auditor, query)
}

#[utoipa::path(post, path = "/v1/admin/auditors/{id}/disable", tag = "admin", params(("id" = String, Path, description = "Auditor id")), security(("bearer" = [])), responses((status = 200, body = PrincipalItem), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such principal", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/admin/auditors/{id}/disable`.
pub async fn auditors_disable(
    caller: AdminCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<PrincipalItem>, ApiError> {
    disable(&state, &caller, Role::Auditor, &id).await
}

/// `POST /v1/admin/policies/reload`: re-read the policy directory. An
/// invalid file changes nothing and is named, with its line, in the answer.
#[utoipa::path(post, path = "/v1/admin/policies/reload", tag = "admin", security(("bearer" = [])), responses((status = 200, description = "The policies now in force", body = Object), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn policies_reload(
    caller: AdminCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let policies = state.vault.policies_reload(&caller.0.actor()).await?;
    Ok(axum::Json(serde_json::json!({
        "sha256": policies.sha256,
        "fields": policies.catalogue.fields().count(),
        "purposes": policies.rules.purposes.len(),
        "deny_rules": policies.rules.deny.len(),
        "duration_caps": policies.rules.duration_caps.len(),
    })))
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
