//! The audit routes: the signed checkpoint and verifier key for anyone;
//! entries and proofs for auditors.
//!
//! Everything served here is bytes the vault has flushed: entries and proofs
//! stop at the durable log size, so an auditor never sees an entry that a
//! crash could still take back.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Path, Query, cursor_decode, cursor_encode, page_limit};
use super::guard::AuditorCaller;
#[allow(unused_imports)]
use super::problem::Problem;
use crate::audit::{AuditEvent, Decision, EventKind};
use crate::ids::SubjectId;

/// Default page size of `GET /v1/audit/entries`.
const PAGE_ITEMS_DEFAULT: usize = 100;
/// Largest page size of `GET /v1/audit/entries`.
pub const PAGE_ITEMS_MAX: usize = 1000;
/// Most entries examined for one page when filters skip many: the page ends
/// early with a cursor rather than scanning the whole log.
const PAGE_SCAN_MAX: usize = 10_000;

fn text(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", responses((status = 200, description = "The latest signed checkpoint (C2SP tlog-checkpoint in a signed note)", body = String, content_type = "text/plain")))]
/// `GET /v1/audit/checkpoint`: the latest signed checkpoint (C2SP
/// tlog-checkpoint in a C2SP signed note).
pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Recording it as published may sync a file: off the async workers.
    let audit = state.vault.audit().clone();
    let note = tokio::task::spawn_blocking(move || audit.checkpoint_latest())
        .await
        .map_err(|error| ApiError::internal(&error))??;
    Ok(text(note))
}

#[utoipa::path(get, path = "/v1/audit/public-key", tag = "audit", responses((status = 200, description = "The signed-note verifier key", body = String, content_type = "text/plain")))]
/// `GET /v1/audit/public-key`: the signed-note verifier key.
pub async fn public_key(State(state): State<AppState>) -> Response {
    text(format!("{}\n", state.vault.audit().verifier_key()))
}

/// Filters of `GET /v1/audit/entries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// First index (inclusive).
    start: Option<u64>,
    /// Last index (exclusive).
    end: Option<u64>,
    /// Only events about this subject.
    subject: Option<String>,
    /// Only events about this business.
    business: Option<String>,
    /// Only events of this kind (`data.read`, ...).
    #[param(value_type = Option<EventKind>)]
    kind: Option<String>,
    /// Only reads with this decision (`allow`, `partial`, `deny`).
    #[param(value_type = Option<Decision>)]
    decision: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size (default 100, at most 1000).
    limit: Option<usize>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

/// One entry in a listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryItem {
    index: u64,
    /// The event, parsed (`GET /v1/audit/entries/{index}` gives its exact
    /// bytes, the leaf input).
    #[schema(value_type = AuditEvent)]
    entry: serde_json::Value,
}

/// A page of entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntriesPage {
    items: Vec<EntryItem>,
    cursor: Option<String>,
}

fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::invalid_query(code, detail)
}

/// A time filter as the events write times: UTC, whole seconds (rounded
/// down), RFC 3339, so string order is time order.
fn time_filter(name: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let invalid = || bad_request("invalid_time", format!("`{name}` must be an RFC 3339 time"));
    value
        .map(|text| {
            let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| invalid())?;
            let utc = time.checked_to_offset(time::UtcOffset::UTC).ok_or_else(invalid)?;
            Ok(crate::clock::rfc3339(utc.replace_nanosecond(0).unwrap_or(utc)))
        })
        .transpose()
}

struct Filter {
    kind: Option<EventKind>,
    decision: Option<Decision>,
    since: Option<String>,
    until: Option<String>,
}

impl Filter {
    fn matches(&self, event: &AuditEvent) -> bool {
        self.kind.is_none_or(|kind| event.kind == kind)
            && self.decision.is_none_or(|decision| event.decision == Some(decision))
            && self.since.as_ref().is_none_or(|since| event.time.as_str() >= since.as_str())
            && self.until.as_ref().is_none_or(|until| event.time.as_str() < until.as_str())
    }
}

#[utoipa::path(get, path = "/v1/audit/entries", tag = "audit", params(EntriesQuery), security(("bearer" = [])), responses((status = 200, body = EntriesPage), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/audit/entries`: durable entries in index order, filtered.
pub async fn entries_list(
    _auditor: AuditorCaller,
    State(state): State<AppState>,
    Query(query): Query<EntriesQuery>,
) -> Result<Json<EntriesPage>, ApiError> {
    let vault = &state.vault;
    let limit = page_limit(query.limit, PAGE_ITEMS_DEFAULT, PAGE_ITEMS_MAX)?;
    let from = match &query.cursor {
        Some(cursor) => cursor_decode("audit", cursor)?,
        None => query.start.unwrap_or(0),
    };
    let end = query.end.unwrap_or(u64::MAX).min(vault.audit().durable_size());
    let filter = Filter {
        kind: query
            .kind
            .as_deref()
            .map(|kind| {
                EventKind::parse(kind).ok_or_else(|| bad_request("invalid_kind", "`kind` is not an event kind"))
            })
            .transpose()?,
        decision: query
            .decision
            .as_deref()
            .map(|d| {
                Decision::parse(d)
                    .ok_or_else(|| bad_request("invalid_decision", "`decision` must be allow, partial or deny"))
            })
            .transpose()?,
        since: time_filter("since", query.since.as_deref())?,
        until: time_filter("until", query.until.as_deref())?,
    };
    let subject = query
        .subject
        .as_deref()
        .map(|s| s.parse::<SubjectId>().map_err(|_| bad_request("invalid_subject", "`subject` must be a subject id")))
        .transpose()?;

    // Candidate indices in order: from the subject or business markers when
    // one is named, else every index.
    let store = vault.store();
    let candidates: Vec<u64> = match (subject, &query.business) {
        (Some(subject), _) => vault.audit().indices_of_subject(store, subject, from, PAGE_SCAN_MAX)?,
        (None, Some(business)) => vault.audit().indices_of_business(store, business, from, PAGE_SCAN_MAX)?,
        (None, None) => (from..end).take(PAGE_SCAN_MAX).collect(),
    };
    let mut items = Vec::new();
    let mut next = None;
    for (position, &index) in candidates.iter().enumerate() {
        if index >= end {
            break;
        }
        if items.len() == limit {
            next = Some(index);
            break;
        }
        let Some(bytes) = vault.audit().entry(store, index)? else { break };
        let event = AuditEvent::from_bytes(&bytes).map_err(|error| ApiError::internal(&error))?;
        if subject.is_none_or(|s| event.subject == Some(s))
            && query.business.as_ref().is_none_or(|b| event.business.as_ref() == Some(b))
            && filter.matches(&event)
        {
            let entry = serde_json::from_slice(&bytes).map_err(|error| ApiError::internal(&error))?;
            items.push(EntryItem { index, entry });
        }
        // The scan budget ran out with candidates left beyond it.
        if position + 1 == candidates.len() && candidates.len() == PAGE_SCAN_MAX && index + 1 < end {
            next = Some(index + 1);
        }
    }
    Ok(Json(EntriesPage { items, cursor: next.map(|next| cursor_encode("audit", next)) }))
}

#[utoipa::path(get, path = "/v1/audit/entries/{index}", tag = "audit", params(("index" = u64, Path, description = "Entry index")), security(("bearer" = [])), responses((status = 200, description = "The exact stored bytes of the entry: the leaf input of the Merkle tree, which is canonical JSON of an `AuditEvent`", body = inline(EntryBytes), content_type = "application/octet-stream"), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/audit/entries/{index}`: the exact stored bytes of one entry.
pub async fn entries_get(
    _auditor: AuditorCaller,
    State(state): State<AppState>,
    Path(index): Path<u64>,
) -> Result<Response, ApiError> {
    match state.vault.audit().entry(state.vault.store(), index)? {
        Some(bytes) => {
            let mut response = bytes.into_response();
            // Bytes, not a document to re-encode: a client hashes exactly
            // these to check a proof.
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            Ok(response)
        }
        None => Err(ApiError::no_such_entry(index)),
    }
}

/// The exact bytes of an entry, as the API description names them.
#[derive(Debug)]
pub struct EntryBytes;

impl utoipa::PartialSchema for EntryBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for EntryBytes {}

/// Parameters of `GET /v1/audit/proof/inclusion`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    index: u64,
    tree_size: u64,
}

/// An inclusion proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InclusionProof {
    index: u64,
    tree_size: u64,
    hashes: Vec<String>,
}

#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery), security(("bearer" = [])), responses((status = 200, body = InclusionProof), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/audit/proof/inclusion?index=&tree_size=`.
pub async fn proof_inclusion(
    _auditor: AuditorCaller,
    State(state): State<AppState>,
    Query(query): Query<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    let hashes = state.vault.audit().inclusion_proof(state.vault.store(), query.index, query.tree_size)?;
    Ok(Json(InclusionProof {
        index: query.index,
        tree_size: query.tree_size,
        hashes: hashes.iter().map(|hash| STANDARD.encode(hash)).collect(),
    }))
}

/// Parameters of `GET /v1/audit/proof/consistency`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    old_size: u64,
    new_size: u64,
}

/// A consistency proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    old_size: u64,
    new_size: u64,
    hashes: Vec<String>,
}

#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery), security(("bearer" = [])), responses((status = 200, body = ConsistencyProof), (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Token of another role", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/audit/proof/consistency?old_size=&new_size=`.
pub async fn proof_consistency(
    _auditor: AuditorCaller,
    State(state): State<AppState>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    consistency(&state, &query)
}

#[utoipa::path(get, path = "/v1/me/proof/consistency", tag = "customer", params(ConsistencyQuery), security(("bearer" = [])), responses((status = 200, body = ConsistencyProof)))]
/// `GET /v1/me/proof/consistency?old_size=&new_size=`: the same proof for a
/// customer, so she can check that a checkpoint she holds (from a receipt,
/// her access log or her erasure receipt) is a prefix of a later one.
pub async fn my_proof_consistency(
    _customer: super::guard::CustomerCaller,
    State(state): State<AppState>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    consistency(&state, &query)
}

/// The consistency proof `query` asks for.
pub(super) fn consistency(state: &AppState, query: &ConsistencyQuery) -> Result<Json<ConsistencyProof>, ApiError> {
    let hashes = state.vault.audit().consistency_proof(state.vault.store(), query.old_size, query.new_size)?;
    Ok(Json(ConsistencyProof {
        old_size: query.old_size,
        new_size: query.new_size,
        hashes: hashes.iter().map(|hash| STANDARD.encode(hash)).collect(),
    }))
}

/// A replay of the log up to the latest checkpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// The signed checkpoint whose tree was replayed, whole.
    checkpoint: String,
    /// Its size: the entries replayed unless a violation stopped the replay.
    tree_size: u64,
    /// Whether the vault's full verification of its stored log (every entry
    /// rehashed, every checkpoint checked), which starts at start-up, has
    /// finished and passed. The replay trusts the entries; an auditor who
    /// does not trust the vault verifies them with the proofs.
    log_verified: bool,
    /// What the replay found; `violation` is set at the first read the log
    /// does not justify.
    replay: crate::audit::replay::ReplaySummary,
}

#[utoipa::path(get, path = "/v1/audit/replay", tag = "audit", security(("bearer" = [])), responses((status = 200, description = "The log replayed from its first entry to the latest checkpoint, every read that released a field decided again under the policies then in force (docs/AUDIT.md); a violation is a finding, not an error", body = ReplayReport)))]
/// `GET /v1/audit/replay`: the compliance replay, run by the vault over the
/// log up to its latest checkpoint. An auditor can run the same rules
/// themselves over the entries and `GET /v1/audit/policies/{sha256}`.
pub async fn replay(_auditor: AuditorCaller, State(state): State<AppState>) -> Result<Json<ReplayReport>, ApiError> {
    let vault = std::sync::Arc::clone(&state.vault);
    let replayed = tokio::task::spawn_blocking(move || {
        let checkpoint = vault.audit().checkpoint_latest()?;
        let tree_size =
            crate::audit::checkpoint_size(&checkpoint).ok_or(crate::audit::AuditError::Corrupt("checkpoint"))?;
        let replay = crate::audit::replay_store(vault.store(), tree_size, &|_| {})?;
        let log_verified = matches!(vault.audit_status(), crate::vault::AuditStatus::Verified);
        Ok::<_, crate::audit::AuditError>(ReplayReport { checkpoint, tree_size, log_verified, replay })
    })
    .await
    .map_err(|error| ApiError::internal(&error))??;
    Ok(Json(replayed))
}

/// A version of the policies, as the vault stored it when it was loaded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyBundleAnswer {
    /// Its SHA-256 (hex), over the three texts as docs/AUDIT.md says: the
    /// value `policy.loaded` events name.
    sha256: String,
    /// The field catalogue (`fields.toml`).
    #[serde(rename = "fields.toml")]
    fields_toml: String,
    /// The purposes (`purposes.toml`).
    #[serde(rename = "purposes.toml")]
    purposes_toml: String,
    /// The organisation rules (`rules.toml`).
    #[serde(rename = "rules.toml")]
    rules_toml: String,
}

#[utoipa::path(get, path = "/v1/audit/policies/{sha256}", tag = "audit", params(("sha256" = String, Path, description = "The SHA-256 (hex) a `policy.loaded` event names")), security(("bearer" = [])), responses((status = 200, body = PolicyBundleAnswer), (status = 404, description = "No policies with this SHA-256 are held", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/audit/policies/{sha256}`: the policy files of one version, by
/// the content address the log names them by.
pub async fn policies_get(
    _auditor: AuditorCaller,
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Json<PolicyBundleAnswer>, ApiError> {
    let well_formed = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(ApiError::invalid_query("invalid_sha256", "the SHA-256 is 64 lowercase hex digits"));
    }
    let bundle = state
        .vault
        .store()
        .get(&crate::store::Key::audit_policy(&sha256))?
        .ok_or_else(|| ApiError::not_found("policy version"))?;
    let policies = crate::policy::Policies::from_bundle(std::path::Path::new("stored policies"), &bundle)
        .map_err(|error| ApiError::internal(&error))?;
    if policies.sha256 != sha256 {
        return Err(ApiError::internal(&"a stored policy bundle is not the one its address names"));
    }
    let [fields_toml, purposes_toml, rules_toml] = policies.texts().map(str::to_owned);
    Ok(Json(PolicyBundleAnswer { sha256, fields_toml, purposes_toml, rules_toml }))
}
