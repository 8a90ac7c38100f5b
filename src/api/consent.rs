//! Consent routes: the customer's relationships, grants and objections, the
//! business's view of its customers, and the scoped read.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, PageParams, Path, Query, cursor_decode, cursor_encode, page_limit, record_id};
use super::guard::{BusinessCaller, CustomerCaller};
#[allow(unused_imports)]
use super::problem::Problem;
use crate::consent::{GrantRecord, GrantStatus, Page, Relationship};
use crate::ids::PairwiseId;

/// A relationship on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RelationshipView {
    relationship_id: String,
    business_id: String,
    /// The business's registered name.
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<String>,
    pairwise_id: String,
    #[schema(format = DateTime)]
    connected_at: String,
    /// Whether the customer blocked this business: no access requests, no
    /// messages.
    requests_blocked: bool,
}

impl RelationshipView {
    fn new(r: Relationship, business_name: Option<String>) -> Self {
        Self {
            relationship_id: r.relationship_id.into(),
            business_id: r.business_id.into(),
            business_name,
            pairwise_id: r.pairwise_id.into(),
            connected_at: r.connected_at,
            requests_blocked: r.requests_blocked,
        }
    }
}

/// A page of a listing: its items, and the cursor of the next page (`null`
/// on the last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub(super) items: Vec<T>,
    pub(super) cursor: Option<String>,
}

/// `page` with the name of each item's business (`business_of`), for views
/// a customer reads: she sees businesses by name, not by id.
fn with_business_names<T>(
    state: &AppState,
    page: Page<T>,
    business_of: impl Fn(&T) -> &crate::ids::BusinessId,
) -> Result<Page<(T, Option<String>)>, ApiError> {
    let mut named = Vec::with_capacity(page.items.len());
    for item in page.items {
        let name = business_name(state, business_of(&item))?;
        named.push((item, name));
    }
    Ok(Page { items: named, next: page.next })
}

/// The registered name of business `id`.
pub(super) fn business_name(state: &AppState, id: &crate::ids::BusinessId) -> Result<Option<String>, ApiError> {
    Ok(state.vault.principals().principal(crate::auth::Role::Business, id.as_ref())?.map(|record| record.name))
}

/// The answer for `page` of the listing `kind`, each item shown by `view`.
fn items<T, U>(page: Page<T>, kind: &str, view: impl FnMut(T) -> U) -> axum::Json<Items<U>> {
    axum::Json(Items {
        items: page.items.into_iter().map(view).collect(),
        cursor: page.next.map(|next| cursor_encode(kind, next)),
    })
}

/// The body of `POST /v1/me/relationships`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelationshipCreate {
    business_id: String,
}

/// `GET /v1/me/relationships`.
#[utoipa::path(get, path = "/v1/me/relationships", tag = "customer", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<RelationshipView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn relationships_list(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<RelationshipView>>, ApiError> {
    const KIND: &str = "my-relationships";
    let page =
        state.vault.consent().relationships_page(caller.subject, paging.after(KIND)?.as_ref(), paging.limit()?)?;
    let page = with_business_names(&state, page, |relationship| &relationship.business_id)?;
    Ok(items(page, KIND, |(relationship, name)| RelationshipView::new(relationship, name)))
}

/// `POST /v1/me/relationships`: connect to a business.
#[utoipa::path(post, path = "/v1/me/relationships", tag = "customer", request_body = RelationshipCreate, security(("bearer" = [])), responses((status = 201, body = RelationshipView), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
pub async fn relationships_create(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<RelationshipCreate>,
) -> Result<Response, ApiError> {
    let relationship =
        state.vault.consent().relationship_create(caller.subject, &record_id(&body.business_id, "business")?).await?;
    let name = business_name(&state, &relationship.business_id)?;
    Ok((StatusCode::CREATED, axum::Json(RelationshipView::new(relationship, name))).into_response())
}

/// The answer to a disconnection.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RelationshipEnded {
    relationship_id: String,
    status: Ended,
}

/// What a disconnection leaves of the relationship.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ended {
    /// The relationship ended; its grants were revoked.
    Ended,
}

/// `DELETE /v1/me/relationships/{id}`: disconnect, revoking its grants.
#[utoipa::path(delete, path = "/v1/me/relationships/{id}", tag = "customer", params(("id" = String, Path, description = "Relationship id")), security(("bearer" = [])), responses((status = 200, body = RelationshipEnded), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn relationships_delete(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RelationshipEnded>, ApiError> {
    let relationship = state.vault.consent().relationship_end(caller.subject, &record_id(&id, "relationship")?).await?;
    Ok(axum::Json(RelationshipEnded { relationship_id: relationship.relationship_id.into(), status: Ended::Ended }))
}

/// The body of `PATCH /v1/me/relationships/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelationshipChange {
    /// `true`: the business may no longer ask her for access nor send her
    /// messages (she stays connected, its grants stay); `false`: it may
    /// again.
    requests_blocked: bool,
}

/// `PATCH /v1/me/relationships/{id}`: block or unblock the business (its
/// access requests and messages) without disconnecting.
#[utoipa::path(patch, path = "/v1/me/relationships/{id}", tag = "customer", params(("id" = String, Path, description = "Relationship id")), request_body = RelationshipChange, security(("bearer" = [])), responses((status = 200, body = RelationshipView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn relationships_update(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<RelationshipChange>,
) -> Result<axum::Json<RelationshipView>, ApiError> {
    let id = record_id(&id, "relationship")?;
    let relationship =
        state.vault.consent().relationship_requests_block(caller.subject, &id, body.requests_blocked).await?;
    let name = business_name(&state, &relationship.business_id)?;
    Ok(axum::Json(RelationshipView::new(relationship, name)))
}

/// A grant on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantView {
    grant_id: String,
    business_id: String,
    /// The business's registered name (in the customer's views).
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<String>,
    purposes: Vec<String>,
    fields: Vec<String>,
    /// When the grant starts (RFC 3339).
    #[schema(format = DateTime)]
    starts_at: String,
    /// When it ends: the window is half-open, live until just before this.
    #[schema(format = DateTime)]
    expires_at: String,
    status: GrantStatus,
    audit_index: u64,
}

fn time_text(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs).map(crate::clock::rfc3339).unwrap_or_else(|_| secs.to_string())
}

impl GrantView {
    /// The view with its business's name.
    fn named(mut self, business_name: Option<String>) -> Self {
        self.business_name = business_name;
        self
    }

    /// The view of `grant` at `now` (Unix seconds, the vault's clock).
    fn new(grant: GrantRecord, now: i64) -> Self {
        let status = grant.status(now);
        Self {
            grant_id: grant.grant_id.into(),
            business_id: grant.business_id.into(),
            business_name: None,
            purposes: grant.purposes,
            fields: grant.fields,
            starts_at: time_text(grant.starts_at),
            expires_at: time_text(grant.expires_at),
            status,
            audit_index: grant.audit_index,
        }
    }
}

/// The body of `POST /v1/me/grants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantCreate {
    business_id: String,
    purposes: Vec<String>,
    fields: Vec<String>,
    duration_days: u32,
}

/// `GET /v1/me/grants`.
#[utoipa::path(get, path = "/v1/me/grants", tag = "customer", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<GrantView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn grants_list(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<GrantView>>, ApiError> {
    const KIND: &str = "my-grants";
    let page = state.vault.consent().grants_page(caller.subject, paging.after(KIND)?.as_ref(), paging.limit()?)?;
    let now = state.vault.core().clock().now_secs();
    let page = with_business_names(&state, page, |grant| &grant.business_id)?;
    Ok(items(page, KIND, |(grant, name)| GrantView::new(grant, now).named(name)))
}

/// `POST /v1/me/grants`: grant a business access directly.
#[utoipa::path(post, path = "/v1/me/grants", tag = "customer", request_body = GrantCreate, security(("bearer" = [])), responses((status = 201, body = GrantView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such business, or not connected to it", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Refused by policy (`policy_violation`)", body = Problem, content_type = "application/problem+json")))]
pub async fn grants_create(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<GrantCreate>,
) -> Result<Response, ApiError> {
    let grant = state
        .vault
        .consent()
        .grant_create(
            caller.subject,
            &record_id(&body.business_id, "business")?,
            body.purposes,
            body.fields,
            body.duration_days,
        )
        .await?;
    let name = business_name(&state, &grant.business_id)?;
    Ok((StatusCode::CREATED, axum::Json(GrantView::new(grant, state.vault.core().clock().now_secs()).named(name)))
        .into_response())
}

/// `GET /v1/me/grants/{id}`.
#[utoipa::path(get, path = "/v1/me/grants/{id}", tag = "customer", params(("id" = String, Path, description = "Grant id")), security(("bearer" = [])), responses((status = 200, body = GrantView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn grants_get(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<GrantView>, ApiError> {
    let grant = state.vault.consent().grant(caller.subject, &record_id(&id, "grant")?)?;
    let name = business_name(&state, &grant.business_id)?;
    Ok(axum::Json(GrantView::new(grant, state.vault.core().clock().now_secs()).named(name)))
}

/// `DELETE /v1/me/grants/{id}`: revoke, effective immediately.
#[utoipa::path(delete, path = "/v1/me/grants/{id}", tag = "customer", params(("id" = String, Path, description = "Grant id")), security(("bearer" = [])), responses((status = 200, body = GrantView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn grants_revoke(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<GrantView>, ApiError> {
    let grant = state.vault.consent().grant_revoke(caller.subject, &record_id(&id, "grant")?).await?;
    let name = business_name(&state, &grant.business_id)?;
    Ok(axum::Json(GrantView::new(grant, state.vault.core().clock().now_secs()).named(name)))
}

/// Objections on the wire.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Objections {
    purposes: Vec<String>,
}

/// `GET /v1/me/objections`.
#[utoipa::path(get, path = "/v1/me/objections", tag = "customer", security(("bearer" = [])), responses((status = 200, body = Objections)))]
pub async fn objections_get(
    caller: CustomerCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<Objections>, ApiError> {
    Ok(axum::Json(Objections { purposes: state.vault.consent().objections(caller.subject)? }))
}

/// `PUT /v1/me/objections`: purposes never to be used, whatever a grant says.
#[utoipa::path(put, path = "/v1/me/objections", tag = "customer", request_body = Objections, security(("bearer" = [])), responses((status = 200, body = Objections), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn objections_put(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<Objections>,
) -> Result<axum::Json<Objections>, ApiError> {
    Ok(axum::Json(Objections { purposes: state.vault.consent().objections_set(caller.subject, body.purposes).await? }))
}

/// A connected customer, as a business sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Connected {
    pairwise_id: String,
    #[schema(format = DateTime)]
    connected_at: String,
}

/// `GET /v1/relationships`: my connected customers, by pairwise id.
#[utoipa::path(get, path = "/v1/relationships", tag = "business", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<Connected>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn business_relationships(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<Connected>>, ApiError> {
    const KIND: &str = "relationships";
    let page = state.vault.consent().business_relationships(
        &caller.business,
        paging.after(KIND)?.as_ref(),
        paging.limit()?,
    )?;
    Ok(items(page, KIND, |(pairwise_id, connected_at)| Connected { pairwise_id: pairwise_id.into(), connected_at }))
}

/// The query of a scoped read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// The purpose of the read.
    purpose: String,
    /// Comma-separated field names (default: every field granted for the purpose).
    fields: Option<String>,
}

/// The answer to a scoped read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadAnswer {
    /// The released fields.
    #[schema(value_type = crate::policy::FieldValues)]
    data: std::collections::BTreeMap<String, serde_json::Value>,
    /// Every requested field not released, with the reason.
    withheld: Vec<crate::audit::Withheld>,
    /// The grants the released fields rely on.
    grant_ids: Vec<String>,
    /// The audit index of this decision.
    audit_index: u64,
}

/// `GET /v1/subjects/{pairwise_id}/data?purpose=P&fields=a,b`.
#[utoipa::path(get, path = "/v1/subjects/{pairwise_id}/data", tag = "business", params(("pairwise_id" = String, Path, description = "The customer as this business knows them"), ReadParams), security(("bearer" = [])), responses((status = 200, body = ReadAnswer), (status = 400, description = "A malformed pairwise id, an unknown purpose or field (`invalid_query`); nothing is logged", body = Problem, content_type = "application/problem+json"), (status = 403, description = "No live grant for the purpose (`no_consent`)", body = Problem, content_type = "application/problem+json")))]
pub async fn subjects_data(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(pairwise): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<axum::Json<ReadAnswer>, ApiError> {
    // No list, or an empty one: every field granted for the purpose.
    let fields = params
        .fields
        .map(|list| list.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect::<Vec<_>>())
        .filter(|fields| !fields.is_empty());
    if fields.as_ref().is_some_and(|fields| fields.len() > 64) {
        return Err(ApiError::invalid_query("invalid_query", "at most 64 fields per read"));
    }
    let pairwise = read_query_check(&state, &pairwise, &params.purpose, fields.as_deref())?;
    let read = state.vault.consent().scoped_read(&caller.business, &pairwise, &params.purpose, fields).await?;
    Ok(axum::Json(ReadAnswer {
        data: read.data,
        withheld: read.withheld,
        grant_ids: read.grant_ids.into_iter().map(Into::into).collect(),
        audit_index: read.audit_index,
    }))
}

/// Refuses a read whose query is malformed before anything is decided or
/// logged: the audit log keeps only ids, catalogue field names and policy
/// purposes, never arbitrary text a caller sent. (The catalogue and the
/// purposes are public policy, so this reveals nothing about any customer;
/// a well-formed pairwise id that resolves to nobody still gets the logged
/// 403.)
fn read_query_check(
    state: &AppState,
    pairwise: &str,
    purpose: &str,
    fields: Option<&[String]>,
) -> Result<PairwiseId, ApiError> {
    let invalid = |detail: String| ApiError::invalid_query("invalid_query", detail);
    let pairwise: PairwiseId =
        pairwise.parse().map_err(|_| invalid("the pairwise id is not 32 lowercase hexadecimal digits".to_owned()))?;
    let policies = state.vault.policies();
    if !policies.rules.purposes.contains_key(purpose) {
        return Err(invalid(format!("`{}` is not a purpose of the policies", shortened(purpose))));
    }
    if let Some(unknown) = fields.unwrap_or_default().iter().find(|field| policies.catalogue.field(field).is_none()) {
        return Err(invalid(format!("`{}` is not a field of the catalogue", shortened(unknown))));
    }
    Ok(pairwise)
}

/// At most 64 characters of a caller's text, for an error message.
fn shortened(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The query of the customer's own log listings (`GET /v1/me/access-log`,
/// `GET /v1/me/events`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccessLogParams {
    /// Page size (default 100, at most 100).
    limit: Option<usize>,
    /// The cursor of the previous page.
    cursor: Option<String>,
    /// `true`: each item carries an inclusion proof against `checkpoint`.
    proofs: Option<bool>,
}

/// One access-log item, with its proof when asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessLogEntry {
    #[serde(flatten)]
    item: crate::consent::AccessLogItem,
    #[serde(skip_serializing_if = "Option::is_none")]
    inclusion_proof: Option<crate::audit::EntryProof>,
}

/// The access log page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccessLogPage {
    items: Vec<AccessLogEntry>,
    cursor: Option<String>,
    /// With `proofs=true`: the signed checkpoint the proofs lead to.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
}

/// `GET /v1/me/access-log`: every read of my data, with inclusion proofs on
/// request (`proofs=true`), verifiable against the signed checkpoint given.
#[utoipa::path(get, path = "/v1/me/access-log", tag = "customer", params(AccessLogParams), security(("bearer" = [])), responses((status = 200, body = AccessLogPage), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn access_log(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(params): Query<AccessLogParams>,
) -> Result<axum::Json<AccessLogPage>, ApiError> {
    let limit = page_limit(params.limit, 100, 100)?;
    let from = params.cursor.as_deref().map(|cursor| cursor_decode("access", cursor)).transpose()?.unwrap_or(0);
    let vault = &state.vault;
    let (log, next) = vault.consent().access_log(caller.subject, from, limit)?;
    let (checkpoint, proofs) = proofs_of(&state, params.proofs, log.iter().map(|item| item.audit_index))?;
    let items =
        log.into_iter().zip(proofs).map(|(item, inclusion_proof)| AccessLogEntry { item, inclusion_proof }).collect();
    let cursor = next.map(|next| cursor_encode("access", next));
    Ok(axum::Json(AccessLogPage { items, cursor, checkpoint }))
}

/// With `proofs` asked for, the latest checkpoint and each index's proof in
/// its tree; otherwise nothing, and no proof for any index.
fn proofs_of(
    state: &AppState,
    proofs: Option<bool>,
    indices: impl ExactSizeIterator<Item = u64>,
) -> Result<(Option<String>, Vec<Option<crate::audit::EntryProof>>), ApiError> {
    if !proofs.unwrap_or(false) {
        return Ok((None, (0..indices.len()).map(|_| None).collect()));
    }
    let (checkpoint, proofs) = state.vault.audit().entry_proofs_latest(state.vault.store(), indices)?;
    Ok((Some(checkpoint), proofs))
}

/// One event about the customer, with its proof when asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventItem {
    audit_index: u64,
    /// The event as the log holds it (ids, names and codes; never a value).
    event: crate::audit::AuditEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    inclusion_proof: Option<crate::audit::EntryProof>,
}

/// A page of the events about the customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    items: Vec<EventItem>,
    cursor: Option<String>,
    /// With `proofs=true`: the signed checkpoint the proofs lead to.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
}

/// `GET /v1/me/events`: every event about me in the audit log (grants and
/// their ends, requests, relationships, objections, data written, read and
/// exported), with inclusion proofs on request (`proofs=true`) against the
/// signed checkpoint given.
#[utoipa::path(get, path = "/v1/me/events", tag = "customer", params(AccessLogParams), security(("bearer" = [])), responses((status = 200, body = EventsPage)))]
pub async fn my_events(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(params): Query<AccessLogParams>,
) -> Result<axum::Json<EventsPage>, ApiError> {
    let limit = page_limit(params.limit, 100, 100)?;
    let from = params.cursor.as_deref().map(|cursor| cursor_decode("events", cursor)).transpose()?.unwrap_or(0);
    let vault = &state.vault;
    let (events, next) = vault.consent().events_about(caller.subject, from, limit)?;
    let (checkpoint, proofs) = proofs_of(&state, params.proofs, events.iter().map(|(index, _)| *index))?;
    let items = events
        .into_iter()
        .zip(proofs)
        .map(|((audit_index, event), inclusion_proof)| EventItem { audit_index, event, inclusion_proof })
        .collect();
    Ok(axum::Json(EventsPage { items, cursor: next.map(|next| cursor_encode("events", next)), checkpoint }))
}

/// A grant given to the calling business.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusinessGrantView {
    #[serde(flatten)]
    grant: GrantView,
    pairwise_id: Option<String>,
}

/// `GET /v1/grants`: the grants given to me, customers by pairwise id.
#[utoipa::path(get, path = "/v1/grants", tag = "business", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<BusinessGrantView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn business_grants(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<BusinessGrantView>>, ApiError> {
    const KIND: &str = "grants";
    let page =
        state.vault.consent().business_grants(&caller.business, paging.after(KIND)?.as_ref(), paging.limit()?)?;
    let now = state.vault.core().clock().now_secs();
    Ok(items(page, KIND, |entry| BusinessGrantView {
        grant: GrantView::new(entry.grant, now),
        pairwise_id: entry.pairwise_id.map(Into::into),
    }))
}

/// An access request on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestView {
    request_id: String,
    business_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pairwise_id: Option<String>,
    purposes: Vec<String>,
    fields: Vec<String>,
    duration_days: u32,
    justification: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    benefit: Option<String>,
    status: crate::consent::requests::RequestStatus,
    /// When the business asked.
    #[schema(format = DateTime)]
    created_at: String,
    /// When the request lapses unanswered.
    #[schema(format = DateTime)]
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<String>,
}

impl RequestView {
    fn new(
        request: crate::consent::requests::AccessRequest,
        now: i64,
        for_business: bool,
        business_name: Option<String>,
    ) -> Self {
        let status = request.status_at(now);
        Self {
            request_id: request.request_id.into(),
            business_id: request.business_id.into(),
            business_name,
            pairwise_id: for_business.then_some(request.pairwise_id.into()),
            purposes: request.purposes,
            fields: request.fields,
            duration_days: request.duration_days,
            justification: request.justification,
            benefit: request.benefit,
            status,
            created_at: time_text(request.created_at),
            expires_at: time_text(request.expires_at),
            reason: request.reason,
            grant_id: request.grant_id.map(Into::into),
        }
    }
}

/// The body of `POST /v1/access-requests`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCreate {
    pairwise_id: String,
    purposes: Vec<String>,
    fields: Vec<String>,
    duration_days: u32,
    justification: String,
    benefit: Option<String>,
}

/// The answer to a new access request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestCreated {
    request_id: String,
    status: crate::consent::requests::RequestStatus,
}

/// `POST /v1/access-requests`: ask a connected customer for access.
#[utoipa::path(post, path = "/v1/access-requests", tag = "business", request_body = RequestCreate, security(("bearer" = [])), responses((status = 201, body = RequestCreated), (status = 404, description = "No customer connected under that pairwise id", body = Problem, content_type = "application/problem+json"), (status = 409, description = "The customer objects to a purpose (`objected`), blocked this business's requests (`requests_blocked`), or has too many pending (`too_many_pending_requests`)", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Refused by policy (`policy_violation`)", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many requests by this business (`Retry-After`)", body = Problem, content_type = "application/problem+json")))]
pub async fn requests_create(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Json(body): Json<RequestCreate>,
) -> Result<Response, ApiError> {
    if let Err(wait) = state.vault.principals().limits().requests_per_business.take(&caller.business) {
        return Err(ApiError::too_many("access_requests_per_business", wait));
    }
    let request = state
        .vault
        .consent()
        .request_create(
            &caller.business,
            &record_id(&body.pairwise_id, "customer")?,
            body.purposes,
            body.fields,
            body.duration_days,
            body.justification,
            body.benefit,
        )
        .await?;
    let created = RequestCreated { request_id: request.request_id.into(), status: request.status };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /v1/access-requests`: the requests I made.
#[utoipa::path(get, path = "/v1/access-requests", tag = "business", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<RequestView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn requests_list(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<RequestView>>, ApiError> {
    const KIND: &str = "requests";
    let page =
        state.vault.consent().requests_of_business(&caller.business, paging.after(KIND)?.as_ref(), paging.limit()?)?;
    let now = state.vault.core().clock().now_secs();
    Ok(items(page, KIND, |request| RequestView::new(request, now, true, None)))
}

/// `GET /v1/access-requests/{id}`.
#[utoipa::path(get, path = "/v1/access-requests/{id}", tag = "business", params(("id" = String, Path, description = "Request id")), security(("bearer" = [])), responses((status = 200, body = RequestView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn requests_get(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RequestView>, ApiError> {
    let request = state.vault.consent().request_of_business(&caller.business, &record_id(&id, "request")?)?;
    Ok(axum::Json(RequestView::new(request, state.vault.core().clock().now_secs(), true, None)))
}

/// `GET /v1/me/access-requests`: requests made to me, with who asks and why.
#[utoipa::path(get, path = "/v1/me/access-requests", tag = "customer", params(PageParams), security(("bearer" = [])), responses((status = 200, body = Items<RequestView>), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn my_requests_list(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<RequestView>>, ApiError> {
    const KIND: &str = "my-requests";
    let page = state.vault.consent().requests_of_customer_page(
        caller.subject,
        paging.after(KIND)?.as_ref(),
        paging.limit()?,
    )?;
    let now = state.vault.core().clock().now_secs();
    let page = with_business_names(&state, page, |request| &request.business_id)?;
    Ok(items(page, KIND, |(request, name)| RequestView::new(request, now, false, name)))
}

/// The body of an approval: every member optional, each a narrowing.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    purposes: Option<Vec<String>>,
    fields: Option<Vec<String>>,
    duration_days: Option<u32>,
}

/// `POST /v1/me/access-requests/{id}/approve`.
#[utoipa::path(post, path = "/v1/me/access-requests/{id}/approve", tag = "customer", params(("id" = String, Path, description = "Request id")), request_body = Approval, security(("bearer" = [])), responses((status = 201, body = GrantView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 422, description = "The narrowed grant is refused by policy (`policy_violation`)", body = Problem, content_type = "application/problem+json")))]
pub async fn my_requests_approve(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Approval>,
) -> Result<Response, ApiError> {
    let narrowing = crate::consent::requests::Narrowing {
        purposes: body.purposes,
        fields: body.fields,
        duration_days: body.duration_days,
    };
    let grant = state.vault.consent().request_approve(caller.subject, &record_id(&id, "request")?, narrowing).await?;
    let name = business_name(&state, &grant.business_id)?;
    Ok((StatusCode::CREATED, axum::Json(GrantView::new(grant, state.vault.core().clock().now_secs()).named(name)))
        .into_response())
}

/// The body of a denial.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Denial {
    reason: Option<String>,
}

/// `POST /v1/me/access-requests/{id}/deny`.
#[utoipa::path(post, path = "/v1/me/access-requests/{id}/deny", tag = "customer", params(("id" = String, Path, description = "Request id")), request_body = Denial, security(("bearer" = [])), responses((status = 200, body = RequestView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn my_requests_deny(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Denial>,
) -> Result<axum::Json<RequestView>, ApiError> {
    let request = state.vault.consent().request_deny(caller.subject, &record_id(&id, "request")?, body.reason).await?;
    Ok(axum::Json(RequestView::new(request, state.vault.core().clock().now_secs(), false, None)))
}

/// The query of the change feed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChangesParams {
    /// Where the previous page ended (from its `cursor`); absent: the start.
    cursor: Option<String>,
    /// Page size (default 100, at most 500).
    limit: Option<usize>,
}

/// A page of the change feed; `cursor` is always given, to poll from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangesPage {
    items: Vec<crate::consent::GrantChange>,
    cursor: String,
}

/// `GET /v1/grants/changes?cursor=`: created, revoked, expired and
/// disconnected grants, so the business can delete its copies.
#[utoipa::path(get, path = "/v1/grants/changes", tag = "business", params(ChangesParams), security(("bearer" = [])), responses((status = 200, body = ChangesPage), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn grant_changes(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Query(params): Query<ChangesParams>,
) -> Result<axum::Json<ChangesPage>, ApiError> {
    let limit = page_limit(params.limit, 100, 500)?;
    let from = params.cursor.as_deref().map(|cursor| cursor_decode("changes", cursor)).transpose()?.unwrap_or(0);
    let (items, next) = state.vault.consent().grant_changes(&caller.business, from, limit)?;
    let cursor = cursor_encode("changes", next.unwrap_or(from));
    Ok(axum::Json(ChangesPage { items, cursor }))
}

/// A grant's consent receipt and the records issued since.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptAnswer {
    /// The receipt of the consent, exactly as issued when the grant was
    /// made (it never changes).
    receipt: crate::consent::ConsentReceipt,
    /// The receipt's JSON text as a C2SP signed note, signed with the key at
    /// `/v1/audit/public-key`.
    signed_note: String,
    verifier_key: String,
    /// Records issued since, each signed and referring to the receipt: the
    /// withdrawal or expiry of the consent.
    later: Vec<crate::consent::SignedReceipt>,
}

/// `GET /v1/me/grants/{id}/receipt`: the grant's signed consent receipt
/// (Kantara Consent Receipt v1.1), and the record of its end if it ended.
#[utoipa::path(get, path = "/v1/me/grants/{id}/receipt", tag = "customer", params(("id" = String, Path, description = "Grant id")), security(("bearer" = [])), responses((status = 200, body = ReceiptAnswer), (status = 404, description = "No such grant, or one made before receipts were kept", body = Problem, content_type = "application/problem+json")))]
pub async fn grants_receipt(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<ReceiptAnswer>, ApiError> {
    let mut records = state.vault.consent().grant_receipts(caller.subject, &record_id(&id, "grant")?)?.into_iter();
    let first = records.next().ok_or_else(|| ApiError::not_found("receipt"))?;
    Ok(axum::Json(ReceiptAnswer {
        receipt: first.receipt,
        signed_note: first.signed_note,
        verifier_key: state.vault.audit().verifier_key(),
        later: records.collect(),
    }))
}
