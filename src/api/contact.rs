//! Contact routes: a business's messages to the customers it knows by
//! pairwise id and its read of their replies; the customer's inbox, her
//! replies and feedback, her contact preferences per business; the message
//! kinds the policies define.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::consent::{Items, business_name};
use super::error::ApiError;
use super::extract::{Json, PageParams, Path, Query, cursor_encode, record_id};
use super::guard::{BusinessCaller, CustomerCaller};
#[allow(unused_imports)]
use super::problem::Problem;
use crate::contact::{Delivery, InboxView, Preferences, Recipient, Reply};
use crate::ids::{BusinessId, MessageId, PairwiseId, RelationshipId};

/// The body of `POST /v1/subjects/{pairwise_id}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageSend {
    /// The message's kind: one of `GET /v1/message-kinds`.
    kind: String,
    /// An optional title (1 to 120 characters).
    #[serde(default)]
    title: Option<String>,
    /// Its body (1 to 4,000 bytes; line breaks allowed).
    body: String,
}

/// A message that went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageSent {
    /// Always `delivered`: a refused message is a `403 message_refused`.
    status: &'static str,
    #[serde(flatten)]
    delivery: Delivery,
}

#[utoipa::path(post, path = "/v1/subjects/{pairwise_id}/messages", tag = "business", params(("pairwise_id" = String, Path, description = "The customer as this business knows them")), request_body = MessageSend, security(("bearer" = [])), responses((status = 201, description = "Delivered to her inbox", body = MessageSent), (status = 400, description = "An unknown kind, a title or body too long (`invalid_body`); nothing is logged", body = Problem, content_type = "application/problem+json"), (status = 403, description = "Refused (`message_refused`): `reason` is `not_connected`, `not_accepted`, `not_now` or `cap_reached`, and `audit_index` the logged decision", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many messages (`rate_limited`)", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/subjects/{pairwise_id}/messages`: a message to a connected
/// customer, delivered to her inbox if her preferences take it. The
/// business never learns her address, only delivered or refused.
pub async fn messages_send(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(pairwise): Path<String>,
    Json(body): Json<MessageSend>,
) -> Result<Response, ApiError> {
    let pairwise: PairwiseId = pairwise.parse().map_err(|_| {
        ApiError::invalid_query("invalid_query", "the pairwise id is not 32 lowercase hexadecimal digits")
    })?;
    let delivery =
        state.vault.contact().message_send(&caller.business, &pairwise, &body.kind, body.title, body.body).await?;
    Ok((StatusCode::CREATED, axum::Json(MessageSent { status: "delivered", delivery })).into_response())
}

#[utoipa::path(get, path = "/v1/subjects/{pairwise_id}/replies", tag = "business", params(("pairwise_id" = String, Path, description = "The customer as this business knows them"), PageParams), security(("bearer" = [])), responses((status = 200, description = "What she wrote to this business under this pairwise id, newest first; the read is logged", body = Items<Reply>), (status = 404, description = "No connected customer has this pairwise id", body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/subjects/{pairwise_id}/replies`: the customer's replies and
/// feedback to this business, newest first.
pub async fn replies_list(
    caller: BusinessCaller,
    State(state): State<AppState>,
    Path(pairwise): Path<String>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<Items<Reply>>, ApiError> {
    const KIND: &str = "replies";
    let pairwise: PairwiseId = record_id(&pairwise, "customer")?;
    let after: Option<MessageId> = paging.after(KIND)?;
    let (items, next) =
        state.vault.contact().replies(&caller.business, &pairwise, after.as_ref(), paging.limit()?).await?;
    Ok(axum::Json(Items { items, cursor: next.map(|next| cursor_encode(KIND, next)) }))
}

/// An inbox item as the customer sees it: with the business's name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    #[serde(flatten)]
    view: InboxView,
    /// The business's registered name.
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<String>,
}

/// A page of her inbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxAnswer {
    items: Vec<InboxItem>,
    /// The next page's cursor; `null` on the last.
    cursor: Option<String>,
    /// The audit index of the `message.read` that opened the texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_index: Option<u64>,
}

#[utoipa::path(get, path = "/v1/me/inbox", tag = "customer", params(PageParams), security(("bearer" = [])), responses((status = 200, description = "Messages from businesses with their texts, what I wrote, and the vault's notices, newest first; opening the texts is logged", body = InboxAnswer)))]
/// `GET /v1/me/inbox`: my inbox, newest first.
pub async fn inbox_list(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
) -> Result<axum::Json<InboxAnswer>, ApiError> {
    const KIND: &str = "inbox";
    let after: Option<MessageId> = paging.after(KIND)?;
    let page = state.vault.contact().inbox(caller.subject, after.as_ref(), paging.limit()?).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for view in page.items {
        let business_name = match &view.item.business_id {
            Some(business) => business_name(&state, business)?,
            None => None,
        };
        items.push(InboxItem { view, business_name });
    }
    let cursor = page.next.map(|next| cursor_encode(KIND, next));
    Ok(axum::Json(InboxAnswer { items, cursor, audit_index: page.audit_index }))
}

#[utoipa::path(delete, path = "/v1/me/inbox/{message_id}", tag = "customer", params(("message_id" = String, Path, description = "An inbox item's id")), security(("bearer" = [])), responses((status = 204, description = "Removed, with its text"), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `DELETE /v1/me/inbox/{message_id}`: removes an item from my inbox.
pub async fn inbox_delete(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(message): Path<String>,
) -> Result<StatusCode, ApiError> {
    let message: MessageId = record_id(&message, "message")?;
    state.vault.contact().inbox_delete(caller.subject, &message).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a reply.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyWrite {
    /// An optional title (1 to 120 characters).
    #[serde(default)]
    title: Option<String>,
    /// What I write (1 to 4,000 bytes).
    body: String,
}

#[utoipa::path(post, path = "/v1/me/inbox/{message_id}/reply", tag = "customer", params(("message_id" = String, Path, description = "A business's message in my inbox")), request_body = ReplyWrite, security(("bearer" = [])), responses((status = 201, description = "Sent: the business reads it by my pairwise id", body = Delivery), (status = 404, description = "No such message, or I am no longer connected to its business", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many messages (`rate_limited`)", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/me/inbox/{message_id}/reply`: answers a business's message.
pub async fn inbox_reply(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(message): Path<String>,
    Json(body): Json<ReplyWrite>,
) -> Result<Response, ApiError> {
    let message: MessageId = record_id(&message, "message")?;
    let delivery =
        state.vault.contact().message_write(caller.subject, Recipient::ReplyTo(message), body.title, body.body).await?;
    Ok((StatusCode::CREATED, axum::Json(delivery)).into_response())
}

/// The body of `POST /v1/me/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackWrite {
    /// A business I am connected to.
    business_id: String,
    /// An optional title (1 to 120 characters).
    #[serde(default)]
    title: Option<String>,
    /// What I write (1 to 4,000 bytes).
    body: String,
}

#[utoipa::path(post, path = "/v1/me/messages", tag = "customer", request_body = FeedbackWrite, security(("bearer" = [])), responses((status = 201, description = "Sent: the business reads it by my pairwise id", body = Delivery), (status = 404, description = "I am not connected to that business", body = Problem, content_type = "application/problem+json"), (status = 429, description = "Too many messages (`rate_limited`)", body = Problem, content_type = "application/problem+json")))]
/// `POST /v1/me/messages`: feedback to a business I am connected to.
pub async fn messages_write(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Json(body): Json<FeedbackWrite>,
) -> Result<Response, ApiError> {
    let business: BusinessId = record_id(&body.business_id, "relationship")?;
    let delivery = state
        .vault
        .contact()
        .message_write(caller.subject, Recipient::Business(business), body.title, body.body)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(delivery)).into_response())
}

/// My contact preferences for one business.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContactView {
    /// The relationship.
    relationship_id: String,
    /// The business.
    business_id: String,
    /// Its registered name.
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<String>,
    /// What I take from it.
    preferences: Preferences,
}

#[utoipa::path(get, path = "/v1/me/relationships/{id}/contact", tag = "customer", params(("id" = String, Path, description = "Relationship id")), security(("bearer" = [])), responses((status = 200, description = "My preferences for this business (the defaults until I set them)", body = ContactView), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `GET /v1/me/relationships/{id}/contact`: my contact preferences for the
/// business of a relationship.
pub async fn contact_get(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<ContactView>, ApiError> {
    let id: RelationshipId = record_id(&id, "relationship")?;
    let (relationship, preferences) = state.vault.contact().preferences(caller.subject, &id)?;
    contact_view(&state, relationship, preferences)
}

#[utoipa::path(put, path = "/v1/me/relationships/{id}/contact", tag = "customer", params(("id" = String, Path, description = "Relationship id")), request_body = Preferences, security(("bearer" = [])), responses((status = 200, body = ContactView), (status = 400, description = "An unknown kind, a cap over 100, quiet hours that are not times or an unknown time zone", body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
/// `PUT /v1/me/relationships/{id}/contact`: sets which kinds of message the
/// business may send me, how many per period, my quiet hours and channel.
pub async fn contact_put(
    caller: CustomerCaller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(preferences): Json<Preferences>,
) -> Result<axum::Json<ContactView>, ApiError> {
    let id: RelationshipId = record_id(&id, "relationship")?;
    let preferences = state.vault.contact().preferences_set(caller.subject, &id, preferences).await?;
    let (relationship, _) = state.vault.contact().preferences(caller.subject, &id)?;
    contact_view(&state, relationship, preferences)
}

fn contact_view(
    state: &AppState,
    relationship: crate::consent::Relationship,
    preferences: Preferences,
) -> Result<axum::Json<ContactView>, ApiError> {
    Ok(axum::Json(ContactView {
        relationship_id: relationship.relationship_id.to_string(),
        business_id: relationship.business_id.to_string(),
        business_name: business_name(state, &relationship.business_id)?,
        preferences,
    }))
}

/// A kind of message businesses may send.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageKindView {
    /// Its name.
    name: String,
    /// What such a message is about.
    description: String,
    /// The purpose it serves: a customer who objects to it takes none.
    purpose: String,
    /// Whether customers take it until they choose.
    default: bool,
}

/// The message kinds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageKinds {
    items: Vec<MessageKindView>,
}

#[utoipa::path(get, path = "/v1/message-kinds", tag = "public", responses((status = 200, body = MessageKinds)))]
/// `GET /v1/message-kinds`: the kinds of message the policies define.
pub async fn message_kinds(State(state): State<AppState>) -> axum::Json<MessageKinds> {
    let policies = state.vault.policies();
    let items = policies
        .rules
        .message_kinds
        .values()
        .map(|kind| MessageKindView {
            name: kind.name.clone(),
            description: kind.description.clone(),
            purpose: kind.purpose.clone(),
            default: kind.default,
        })
        .collect();
    axum::Json(MessageKinds { items })
}
