//! Liveness and readiness probes; public, no personal data.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::problem::Problem;

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers")))]
/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready to serve"), (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json")))]
/// `GET /readyz`: the store is open and flushing, and keys are loaded.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.vault.readiness();
    if readiness.is_ready() {
        Json(json!({"status": "ready", "checks": readiness})).into_response()
    } else {
        let failed: Vec<&str> = [("store", readiness.store), ("keys", readiness.keys), ("audit", readiness.audit)]
            .into_iter()
            .filter_map(|(name, ok)| (!ok).then_some(name))
            .collect();
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "Not ready",
            format!("failing checks: {}", failed.join(", ")),
        )
        .into_response()
    }
}
