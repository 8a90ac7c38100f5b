//! The customer's own data: `GET|PUT /v1/me/data`, `PUT|DELETE
//! /v1/me/data/{field}`. A customer only ever reaches their own subject:
//! the subject comes from the token, never from the request.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::export_html;
use super::extract::{Json, Path, UniqueMap};
use super::guard::CustomerCaller;
#[allow(unused_imports)]
use super::problem::Problem;

/// `GET /v1/me/data` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataView {
    #[schema(value_type = crate::policy::FieldValues)]
    data: std::collections::BTreeMap<String, Value>,
}

/// Fields stored by a write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stored {
    fields: Vec<String>,
    audit_index: u64,
}

/// The body of `PUT /v1/me/data/{field}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldPut {
    value: Value,
}

/// The answer to a delete.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    field: String,
    deleted: bool,
}

#[utoipa::path(get, path = "/v1/me/data", tag = "customer", security(("bearer" = [])), responses((status = 200, body = DataView), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/me/data`: everything I stored (the read is audited).
pub async fn data_get(caller: CustomerCaller, State(state): State<AppState>) -> Result<axum::Json<DataView>, ApiError> {
    let data = state.vault.subjects().data_read_own(caller.subject).await?;
    Ok(axum::Json(DataView { data }))
}

#[utoipa::path(put, path = "/v1/me/data", tag = "customer", request_body(content = crate::policy::FieldValues, description = "Field values by catalogue field name; all are stored, or none"), security(("bearer" = [])), responses((status = 200, body = Stored), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `PUT /v1/me/data`: store several fields at once (all or none).
pub async fn data_merge(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(UniqueMap(values)): Json<UniqueMap>,
) -> Result<axum::Json<Stored>, ApiError> {
    let (fields, audit_index) =
        state.vault.subjects().data_merge(&caller.principal.actor(), caller.subject, &values).await?;
    Ok(axum::Json(Stored { fields, audit_index }))
}

#[utoipa::path(put, path = "/v1/me/data/{field}", tag = "customer", params(("field" = String, Path, description = "A catalogue field name")), request_body = FieldPut, security(("bearer" = [])), responses((status = 200, body = Stored), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `PUT /v1/me/data/{field}`: store one field.
pub async fn data_put(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(field): Path<String>,
    Json(body): Json<FieldPut>,
) -> Result<axum::Json<Stored>, ApiError> {
    let audit_index =
        state.vault.subjects().data_put(&caller.principal.actor(), caller.subject, &field, &body.value).await?;
    Ok(axum::Json(Stored { fields: vec![field], audit_index }))
}

#[utoipa::path(delete, path = "/v1/me/data/{field}", tag = "customer", params(("field" = String, Path, description = "A catalogue field name")), security(("bearer" = [])), responses((status = 200, body = Deleted), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `DELETE /v1/me/data/{field}`: delete one field.
pub async fn data_delete(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(field): Path<String>,
) -> Result<axum::Json<Deleted>, ApiError> {
    let deleted = state.vault.subjects().data_delete(&caller.principal.actor(), caller.subject, &field).await?;
    Ok(axum::Json(Deleted { field, deleted }))
}

/// The body of `DELETE /v1/me`: an explicit confirmation.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseConfirm {
    /// Must be `"erase"`.
    confirm: String,
}

/// `DELETE /v1/me`: erase me (crypto-shredding). Answers with an erasure
/// receipt naming the audit index and a checkpoint that covers it.
#[utoipa::path(delete, path = "/v1/me", tag = "customer", request_body = EraseConfirm, security(("bearer" = [])), responses((status = 200, description = "The erasure receipt: the audit index of the erasure and a signed checkpoint covering it", body = crate::rights::ErasureReceipt), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn me_erase(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<EraseConfirm>,
) -> Result<axum::Json<crate::rights::ErasureReceipt>, ApiError> {
    if body.confirm != "erase" {
        return Err(ApiError::erasure_unconfirmed());
    }
    let receipt = state.vault.rights().subject_erase(caller.subject).await?;
    // Her privacy-center sessions end with her.
    state.sessions.end_subject(caller.subject);
    Ok(axum::Json(receipt))
}

/// The body of `POST /v1/me/password`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password now.
    current_password: String,
    /// The new one (12 to 1024 characters).
    new_password: String,
}

/// The answer to a password change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasswordChanged {
    /// Always true.
    changed: bool,
}

/// `POST /v1/me/password`: a customer of the built-in identity replaces her
/// password, proving the current one; her privacy-center sessions end, and
/// tokens already issued end at their expiry. Wrong current passwords count
/// as failed sign-ins (429 beyond the limit). Recorded as
/// `principal.secret_rotated`.
#[utoipa::path(post, path = "/v1/me/password", tag = "customer", request_body = PasswordChange, security(("bearer" = [])), responses((status = 200, body = PasswordChanged), (status = 401, description = "Missing or invalid token, or not the current password", body = Problem, content_type = "application/problem+json")))]
pub async fn password_change(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<PasswordChange>,
) -> Result<axum::Json<PasswordChanged>, ApiError> {
    let current = zeroize::Zeroizing::new(body.current_password);
    let new = zeroize::Zeroizing::new(body.new_password);
    state.vault.principals().password_change(caller.subject, &current, &new).await?;
    state.sessions.end_subject(caller.subject);
    Ok(axum::Json(PasswordChanged { changed: true }))
}

/// `GET /v1/me/export`: everything held about me, in one document: JSON by
/// default, or an HTML page for `Accept: text/html`. Either way the same
/// document, exported (and recorded as `data.exported`) once.
#[utoipa::path(
    get,
    path = "/v1/me/export",
    tag = "customer",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "data, relationships, access_requests, grants (with signed receipts), objections, access_log: JSON by default, a self-contained HTML page when `Accept` prefers text/html", content(
            (crate::rights::Export = "application/json"),
            (String = "text/html")
        )),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 406, description = "`Accept` allows neither JSON nor HTML", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn me_export(
    caller: CustomerCaller,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::{HeaderValue, header};
    use axum::response::IntoResponse;
    use export_html::ExportForm;
    // Decided before exporting, so a refused request exports (and logs) nothing.
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok());
    let form = export_html::wants_html(accept);
    if form == ExportForm::Neither {
        return Err(ApiError::export_not_acceptable());
    }
    let document = state.vault.rights().subject_export(caller.subject).await?;
    let mut response = match form {
        ExportForm::Html => {
            let document = serde_json::to_value(&document).map_err(|error| ApiError::internal(&error))?;
            let mut response = export_html::render(&document).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(export_html::CONTENT_SECURITY_POLICY),
            );
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        ExportForm::Json | ExportForm::Neither => axum::Json(document).into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}
