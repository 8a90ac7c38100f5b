//! Webhook routes: a business's endpoints (secrets shown once), their
//! delivery logs, and inclusion proofs of the events its messages name; and
//! the same endpoints for a customer's own notices (`/v1/me/webhooks`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, PageParams, Path, Query, cursor_encode};
use super::guard::{BusinessCaller, CustomerCaller};
#[allow(unused_imports)]
use super::problem::Problem;
use crate::audit::{AuditEvent, EventKind, Role};
use crate::webhooks::{Delivery, Endpoint};

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    /// Where to send messages: an `https` URL on a public address.
    url: String,
    /// A note of the business's own.
    #[serde(default)]
    description: Option<String>,
}

/// An endpoint with its secret, shown once: at registration and rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    endpoint: Endpoint,
    /// The Standard Webhooks secret (`whsec_…`) messages are signed with.
    /// Shown only in this answer; the vault keeps it sealed.
    secret: String,
}

/// The business's endpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    items: Vec<Endpoint>,
}

/// A page of an endpoint's delivery log, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    items: Vec<Delivery>,
    /// The next page's cursor; `null` on the last.
    cursor: Option<String>,
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "business", request_body = EndpointCreate, security(("bearer" = [])), responses((status = 201, description = "The endpoint and its secret (shown once)", body = EndpointWithSecret), (status = 409, description = "The business has as many endpoints as it may", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/webhooks`: registers an endpoint for the business's messages.
pub async fn webhooks_create(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Json(body): Json<EndpointCreate>,
) -> Result<Response, ApiError> {
    endpoint_created(&state, &caller.business, body).await
}

/// Registers an endpoint for `owner`: `201` with its secret, shown once.
async fn endpoint_created(state: &AppState, owner: &str, body: EndpointCreate) -> Result<Response, ApiError> {
    let (endpoint, secret) = state.vault.webhooks().endpoint_create(owner, &body.url, body.description).await?;
    let answer = EndpointWithSecret { endpoint, secret: secret.to_string() };
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "business", security(("bearer" = [])), responses((status = 200, body = EndpointList)))]
/// `GET /v1/webhooks`: the business's endpoints.
pub async fn webhooks_list(
    caller: BusinessCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<EndpointList>, ApiError> {
    Ok(axum::Json(EndpointList { items: state.vault.webhooks().endpoints(&caller.business)? }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "business", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 200, body = Endpoint), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/webhooks/{id}`: one endpoint.
pub async fn webhooks_get(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    Ok(axum::Json(state.vault.webhooks().endpoint(&caller.business, &id)?))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "business", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 204, description = "Removed, with its waiting messages and delivery log"), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `DELETE /v1/webhooks/{id}`: removes an endpoint.
pub async fn webhooks_delete(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.vault.webhooks().endpoint_delete(&caller.business, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "business", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 200, description = "Enabled; the messages that waited are sent", body = Endpoint), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/webhooks/{id}/enable`: enables an endpoint the vault disabled
/// after repeated failure.
pub async fn webhooks_enable(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    Ok(axum::Json(state.vault.webhooks().endpoint_enable(&caller.business, &id).await?))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/secret", tag = "business", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 200, description = "The new secret (shown once); the old one signs beside it for 24 hours", body = EndpointWithSecret), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/webhooks/{id}/secret`: rotates an endpoint's secret.
pub async fn webhooks_secret_rotate(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EndpointWithSecret>, ApiError> {
    secret_rotated(&state, &caller.business, &id).await
}

/// Rotates the secret of `owner`'s endpoint `id`: the new one, shown once.
async fn secret_rotated(state: &AppState, owner: &str, id: &str) -> Result<axum::Json<EndpointWithSecret>, ApiError> {
    let (endpoint, secret) = state.vault.webhooks().secret_rotate(owner, id).await?;
    Ok(axum::Json(EndpointWithSecret { endpoint, secret: secret.to_string() }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "business", params(("id" = String, Path, description = "Endpoint id"), PageParams), security(("bearer" = [])), responses((status = 200, body = DeliveryPage), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/webhooks/{id}/deliveries`: the endpoint's delivery log, every
/// attempt, oldest first.
pub async fn webhooks_deliveries(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    deliveries_page(&state, &caller.business, &id, &paging)
}

/// A page of the delivery log of `owner`'s endpoint `id`.
fn deliveries_page(
    state: &AppState,
    owner: &str,
    id: &str,
    paging: &PageParams,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    const KIND: &str = "deliveries";
    let after: Option<String> = paging.after(KIND)?;
    let after = after
        .map(|hex| {
            (0..hex.len())
                .step_by(2)
                .map(|at| hex.get(at..at + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| ApiError::invalid_query("invalid_cursor", "the cursor is not one this listing gave"))
        })
        .transpose()?;
    let page = state.vault.webhooks().deliveries(owner, id, after.as_deref(), paging.limit()?)?;
    let cursor = page.next.map(|next| cursor_encode(KIND, crate::ids::hex(&next)));
    Ok(axum::Json(DeliveryPage { items: page.items, cursor }))
}

/// An event about the business, as the business may see it: everything but
/// the customer's vault id (`subject`, and the actor's id when she acted),
/// which no business learns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventForBusiness {
    /// The event's kind.
    kind: EventKind,
    /// When it happened.
    #[schema(format = DateTime)]
    time: String,
    /// Who acted, by role.
    actor_role: Role,
    /// The read's purpose, or a grant's purposes.
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purposes: Vec<String>,
    /// Field names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<String>,
    /// A grant's window.
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<crate::audit::Window>,
    /// A read's decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<crate::audit::Decision>,
    /// Related ids: grant, request, receipt and relationship, the pairwise
    /// id, the cause.
    related: std::collections::BTreeMap<String, String>,
}

/// The names under `related` a business may see.
const RELATED_SHOWN: [crate::audit::Related; 11] = [
    crate::audit::Related::GrantId,
    crate::audit::Related::GrantIds,
    crate::audit::Related::RequestId,
    crate::audit::Related::ReceiptId,
    crate::audit::Related::RelationshipId,
    crate::audit::Related::PairwiseId,
    crate::audit::Related::Cause,
    crate::audit::Related::RequestsBlocked,
    crate::audit::Related::MessageId,
    crate::audit::Related::MessageKind,
    crate::audit::Related::InReplyTo,
];

/// An inclusion proof of an event about the business.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BusinessEventProof {
    /// The event's index.
    index: u64,
    /// The signed checkpoint the proof leads to.
    checkpoint: String,
    /// Its tree size.
    tree_size: u64,
    /// The RFC 9162 leaf hash of the stored entry, base64.
    #[schema(format = Byte)]
    leaf_hash: String,
    /// The audit path from that leaf to the checkpoint's root, base64.
    hashes: Vec<String>,
    /// The event, without the customer's vault id.
    event: EventForBusiness,
}

#[utoipa::path(get, path = "/v1/events/{index}/proof", tag = "business", params(("index" = u64, Path, description = "An audit index a webhook message or the change feed named")), security(("bearer" = [])), responses((status = 200, body = BusinessEventProof), (status = 404, description = "No event about this business at that index", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/events/{index}/proof`: for an event about the business (its
/// grants, relationships, requests and reads, and the customer's
/// corrections of fields it was granted), the leaf hash of the stored entry
/// and its inclusion proof in the latest signed checkpoint.
pub async fn events_proof(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(index): Path<u64>,
) -> Result<axum::Json<BusinessEventProof>, ApiError> {
    let (audit, store) = (state.vault.audit(), state.vault.store());
    let (checkpoint, mut proofs) = audit.entry_proofs_latest(store, [index])?;
    let proof = proofs.pop().flatten().ok_or_else(|| ApiError::not_found("event about this business"))?;
    let bytes = STANDARD.decode(&proof.entry).map_err(|error| ApiError::internal(&error))?;
    let event = AuditEvent::from_bytes(&bytes).map_err(|error| ApiError::internal(&error))?;
    // Its own events, and the customer's corrections and deletions it was
    // told of (its `data.*` notices), with only the field names it was told;
    // another business's event, or nobody's, gets the same answer as none.
    let mut fields = event.fields;
    let about = match event.kind {
        EventKind::DataWritten | EventKind::DataDeleted => {
            match state.vault.store().get(&crate::store::Key::data_notice(&caller.business, index))? {
                Some(told) => {
                    fields = serde_json::from_slice(&told).map_err(|error| ApiError::internal(&error))?;
                    true
                }
                None => false,
            }
        }
        // Her contact preferences are hers: the business is never told them.
        EventKind::ContactChanged => false,
        _ => event.business.as_deref() == Some(caller.business.as_str()),
    };
    if !about {
        return Err(ApiError::not_found("event about this business"));
    }
    let leaf_hash = STANDARD.encode(crate::audit::merkle::leaf_hash(&bytes));
    let event = EventForBusiness {
        kind: event.kind,
        time: event.time,
        actor_role: event.actor.role,
        purpose: event.purpose,
        purposes: event.purposes,
        fields,
        window: event.window,
        decision: event.decision,
        related: event
            .related
            .into_iter()
            .filter(|(name, _)| RELATED_SHOWN.iter().any(|shown| shown.as_str() == name))
            .map(|(name, value)| match (event.kind, name.as_str()) {
                // A refused message's exact cause is hers; the business is
                // told the coarse reason, as when it sent the message.
                (EventKind::MessageRefused, "cause") => {
                    let told = crate::contact::Refusal::parse(&value).map_or("not_accepted", |r| r.told().as_str());
                    (name, told.to_owned())
                }
                _ => (name, value),
            })
            .collect(),
    };
    Ok(axum::Json(BusinessEventProof {
        index,
        checkpoint,
        tree_size: proof.tree_size,
        leaf_hash,
        hashes: proof.hashes,
        event,
    }))
}

#[utoipa::path(post, path = "/v1/me/webhooks", tag = "customer", request_body = EndpointCreate, security(("bearer" = [])), responses((status = 201, description = "The endpoint and its secret (shown once)", body = EndpointWithSecret), (status = 409, description = "As many endpoints as one may have", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/me/webhooks`: registers an endpoint for the vault's notices to
/// me (access requests, grants ending, special-category reads, messages).
pub async fn me_webhooks_create(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<EndpointCreate>,
) -> Result<Response, ApiError> {
    endpoint_created(&state, &crate::webhooks::Webhooks::customer_owner(caller.subject), body).await
}

#[utoipa::path(get, path = "/v1/me/webhooks", tag = "customer", security(("bearer" = [])), responses((status = 200, body = EndpointList)))]
/// `GET /v1/me/webhooks`: my endpoints.
pub async fn me_webhooks_list(
    caller: CustomerCaller,
    State(state): State<AppState>,
) -> Result<axum::Json<EndpointList>, ApiError> {
    let owner = crate::webhooks::Webhooks::customer_owner(caller.subject);
    Ok(axum::Json(EndpointList { items: state.vault.webhooks().endpoints(&owner)? }))
}

#[utoipa::path(delete, path = "/v1/me/webhooks/{id}", tag = "customer", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 204, description = "Removed, with its waiting messages and delivery log"), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `DELETE /v1/me/webhooks/{id}`: removes one of my endpoints.
pub async fn me_webhooks_delete(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = crate::webhooks::Webhooks::customer_owner(caller.subject);
    state.vault.webhooks().endpoint_delete(&owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/me/webhooks/{id}/enable", tag = "customer", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 200, description = "Enabled; the messages that waited are sent", body = Endpoint), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/me/webhooks/{id}/enable`: enables one of my endpoints the
/// vault disabled after repeated failure.
pub async fn me_webhooks_enable(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Endpoint>, ApiError> {
    let owner = crate::webhooks::Webhooks::customer_owner(caller.subject);
    Ok(axum::Json(state.vault.webhooks().endpoint_enable(&owner, &id).await?))
}

#[utoipa::path(get, path = "/v1/me/webhooks/{id}/deliveries", tag = "customer", params(("id" = String, Path, description = "Endpoint id"), PageParams), security(("bearer" = [])), responses((status = 200, body = DeliveryPage), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/me/webhooks/{id}/deliveries`: my endpoint's delivery log.
pub async fn me_webhooks_deliveries(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    deliveries_page(&state, &crate::webhooks::Webhooks::customer_owner(caller.subject), &id, &paging)
}

#[utoipa::path(post, path = "/v1/me/webhooks/{id}/secret", tag = "customer", params(("id" = String, Path, description = "Endpoint id")), security(("bearer" = [])), responses((status = 200, description = "The new secret (shown once); the old one signs beside it for 24 hours", body = EndpointWithSecret), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/me/webhooks/{id}/secret`: rotates my endpoint's secret.
pub async fn me_webhooks_secret_rotate(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<EndpointWithSecret>, ApiError> {
    secret_rotated(&state, &crate::webhooks::Webhooks::customer_owner(caller.subject), &id).await
}
