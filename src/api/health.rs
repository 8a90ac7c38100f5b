//! Liveness and readiness probes; public, no personal data.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::Problem;

/// The answer of a probe.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    status: &'static str,
}

/// The answer of a readiness probe that passed.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready`.
    status: &'static str,
    /// Each check, all passed.
    checks: crate::vault::Readiness,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers", body = Health)))]
/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready to serve", body = Ready), (status = 503, description = "Not ready (`not_ready` names the failing checks), or the store is behind a published checkpoint (`store_rolled_back`)", body = Problem, content_type = "application/problem+json")))]
/// `GET /readyz`: the store is open and flushing, and keys are loaded.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.vault.readiness();
    if let Some(rollback) = state.vault.rollback() {
        return super::rolled_back(&rollback).into_response();
    }
    if readiness.is_ready() {
        Json(Ready { status: "ready", checks: readiness }).into_response()
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

/// `GET /metrics`: Prometheus text (`docs/METRICS.md`): the HTTP surface,
/// read decisions, the commit path, the audit log, keys, the build and the
/// process. Counts and bounded labels only: never an id or a value.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    use std::sync::atomic::Ordering;
    let vault = &state.vault;
    let stats = vault.store().stats();
    let readiness = vault.readiness();
    let mut out = crate::metrics::Exposition::default();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| out.single(name, kind, help, value);
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed).to_string();
    let seconds = |nanos: &std::sync::atomic::AtomicU64| format!("{:.6}", nanos.load(Ordering::Relaxed) as f64 / 1e9);
    metric(
        "consentvault_commit_transactions_total",
        "counter",
        "Transactions run on the commit path.",
        count(&stats.transactions),
    );
    metric(
        "consentvault_commit_batches_total",
        "counter",
        "Batches applied to the storage engine.",
        count(&stats.batches),
    );
    metric(
        "consentvault_commit_execute_seconds_total",
        "counter",
        "Time spent running transactions on the commit thread.",
        seconds(&stats.execute_nanos),
    );
    metric(
        "consentvault_commit_apply_seconds_total",
        "counter",
        "Time spent applying batches to the storage engine.",
        seconds(&stats.apply_nanos),
    );
    metric("consentvault_commit_flush_failures_total", "counter", "Flushes that failed.", count(&stats.flush_failures));
    metric(
        "consentvault_commit_recoveries_total",
        "counter",
        "Times the store made its engine usable again after a storage failure.",
        count(&stats.recoveries),
    );
    metric(
        "consentvault_commit_flush_seconds_total",
        "counter",
        "Time the commit thread spent writing batches out to the device.",
        seconds(&stats.flush_nanos),
    );
    metric(
        "consentvault_commit_syncs_total",
        "counter",
        "Syncs that made written batches durable (fdatasync), each covering every batch written meanwhile.",
        count(&stats.syncs),
    );
    metric(
        "consentvault_commit_sync_seconds_total",
        "counter",
        "Time spent in syncs, off the commit thread.",
        seconds(&stats.sync_nanos),
    );
    metric(
        "consentvault_commit_lookahead_reads_total",
        "counter",
        "Scoped reads decided on the commit thread (their reads could have been made ahead of it).",
        count(&stats.lookahead_reads),
    );
    metric(
        "consentvault_commit_lookahead_seconds_total",
        "counter",
        "Time spent deciding those reads on the commit thread.",
        seconds(&stats.lookahead_nanos),
    );
    metric(
        "consentvault_read_ahead_kept_total",
        "counter",
        "Scoped reads decided ahead of the commit thread whose records were unchanged at commit.",
        count(&stats.stamps_held),
    );
    metric(
        "consentvault_read_ahead_redone_total",
        "counter",
        "Scoped reads decided ahead that the commit decided again, because their records changed or their second had passed.",
        count(&stats.stamps_stale),
    );
    metric(
        "consentvault_store_reads_cold",
        "gauge",
        "1 while the storage engine reads cold pages and scoped reads are decided ahead of the commit thread.",
        u8::from(vault.store().reads_cold()).to_string(),
    );
    metric(
        "consentvault_audit_log_size",
        "gauge",
        "Audit log entries known to be on disk.",
        vault.audit().durable_size().to_string(),
    );
    metric(
        "consentvault_audit_log_verified",
        "gauge",
        "1 once the background recomputation of the whole stored log, run at start-up, has verified it.",
        u8::from(matches!(vault.audit_status(), crate::vault::AuditStatus::Verified)).to_string(),
    );
    metric("consentvault_ready", "gauge", "1 when the vault can serve.", u8::from(readiness.is_ready()).to_string());
    metric(
        "consentvault_kek_current_version",
        "gauge",
        "The key-encryption key version new DEKs are wrapped under.",
        vault.core().keys().current_version().to_string(),
    );
    metric(
        "consentvault_kek_rotation_running",
        "gauge",
        "1 while a key rotation is at work.",
        u8::from(vault.keys().rotation_is_running()).to_string(),
    );
    let histograms = &stats.histograms;
    out.histogram("consentvault_commit_batch_transactions", "Transactions per batch.", &histograms.batch_transactions);
    out.histogram(
        "consentvault_commit_apply_duration_seconds",
        "Time to apply a batch to the storage engine.",
        &histograms.apply_seconds,
    );
    out.histogram(
        "consentvault_commit_sync_duration_seconds",
        "Time to sync a group of written-out batches (fdatasync), off the commit thread.",
        &histograms.sync_seconds,
    );
    let decisions = vault.core().decisions();
    decisions.outcomes.write(
        &mut out,
        "consentvault_read_decisions_total",
        "Scoped reads logged, by decision (allow, partial, deny).",
        &["decision"],
    );
    decisions.withheld.write(
        &mut out,
        "consentvault_read_withheld_fields_total",
        "Fields withheld from logged scoped reads, by reason code.",
        &["reason"],
    );
    vault.webhooks().deliveries_counted().write(
        &mut out,
        "consentvault_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (delivered, failed, given_up).",
        &["outcome"],
    );
    vault.contact().decisions_counted().write(
        &mut out,
        "consentvault_messages_total",
        "Businesses' messages to customers, by outcome (delivered, refused) and reason (none, or what the business is told).",
        &["outcome", "reason"],
    );
    state.metrics.write(&mut out);
    out.header("consentvault_build_info", "gauge", "The build that answers: always 1, its version as a label.");
    out.labelled("consentvault_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    crate::metrics::process_write(&mut out);
    let mut response = out.finish().into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The router a node serves before its vault is open: while it opens the
/// store (`starting`), or, on a shared store, while another node holds the
/// lease (`standby`). `/healthz` answers; everything else, `/readyz`
/// included, is a 503 problem with that code and `Retry-After`, so a load
/// balancer sends its traffic to the active node.
pub fn waiting_router(shared_store: bool) -> axum::Router {
    let (code, title, detail) = if shared_store {
        (
            "standby",
            "Standing by",
            "this node stands by: another vault node holds the store's lease, or this one is taking it over; \
             send requests to the active node",
        )
    } else {
        ("starting", "Starting", "the vault is opening its store; try again shortly")
    };
    let waiting = move || async move {
        let mut response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, title, detail).into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        response
    };
    axum::Router::new().route("/healthz", axum::routing::get(healthz)).fallback(waiting)
}
