//! The outbox: which events a business hears of, and the messages they
//! become (with the customer's notices `contact` adds), written in the
//! transaction that appends the event.
//!
//! A message carries ids, field names and purposes, never a value or a
//! message text. The business is named by nothing but its endpoints; the
//! customer, to a business, only by the pairwise id it knows her by.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Endpoint, Message, OwnerNotice, decode, encode};
use crate::audit::{AuditEvent, EventKind, Related, Role};
use crate::store::{Key, StoreError, Txn};

/// The members of a stored grant (`consent::GrantRecord`) the outbox reads.
/// A view of its own: `consent` depends on `keys`, which reseals webhook
/// secrets, so this module does not depend on `consent`.
#[derive(Deserialize)]
struct GrantFields {
    business_id: String,
    fields: Vec<String>,
}

/// The members of a stored relationship (`consent::Relationship`) the
/// outbox reads.
#[derive(Deserialize)]
struct RelationshipView {
    business_id: String,
    pairwise_id: String,
}

/// What a message announces: its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum NoticeType {
    /// A customer gave the business a grant.
    #[serde(rename = "grant.created")]
    GrantCreated,
    /// A grant was revoked: by the customer, or by a disconnect or erasure
    /// (`cause`).
    #[serde(rename = "grant.revoked")]
    GrantRevoked,
    /// A grant's window closed.
    #[serde(rename = "grant.expired")]
    GrantExpired,
    /// The customer disconnected from the business.
    #[serde(rename = "relationship.disconnected")]
    RelationshipDisconnected,
    /// The customer was erased (at her request or by the retention rule):
    /// erase the copies you hold (GDPR Art. 17 and 19).
    #[serde(rename = "customer.erased")]
    CustomerErased,
    /// The customer corrected fields the business was granted: correct the
    /// copies you hold (GDPR Art. 16 and 19).
    #[serde(rename = "data.corrected")]
    DataCorrected,
    /// The customer deleted fields the business was granted: erase the
    /// copies you hold (GDPR Art. 17 and 19).
    #[serde(rename = "data.deleted")]
    DataDeleted,
    /// The customer wrote to the business (a reply or feedback): read it
    /// at `GET /v1/subjects/{pairwise_id}/replies`.
    #[serde(rename = "message.received")]
    MessageReceived,
    /// To a customer: a business asked her for access.
    #[serde(rename = "access_request.created")]
    AccessRequestCreated,
    /// To a customer: a grant of hers ends soon.
    #[serde(rename = "grant.expiring")]
    GrantExpiring,
    /// To a customer: a business read special-category data of hers.
    #[serde(rename = "special_data.read")]
    SpecialDataRead,
    /// To a customer who chose the webhook channel for that business: its
    /// message is in her inbox.
    #[serde(rename = "message.delivered")]
    MessageDelivered,
}

/// Whom `event` concerns, and what each is told: `(business, type, data)`.
fn notices_of(txn: &Txn<'_>, event: &AuditEvent, index: u64) -> Result<Vec<(String, NoticeType, Value)>, StoreError> {
    // Every append comes here, reads first among them: they leave at once.
    if event.kind == EventKind::DataRead {
        return Ok(Vec::new());
    }
    let pairwise = event.related_value(Related::PairwiseId);
    let cause = event.related_value(Related::Cause);
    let grant = |kind: NoticeType| -> Vec<(String, NoticeType, Value)> {
        let Some(business) = &event.business else { return Vec::new() };
        let mut data = json!({
            "audit_index": index,
            "grant_id": event.related_value(Related::GrantId),
            "pairwise_id": pairwise,
        });
        if kind == NoticeType::GrantCreated {
            data["purposes"] = json!(event.purposes);
            data["fields"] = json!(event.fields);
            data["starts_at"] = json!(event.window.as_ref().map(|w| &w.starts_at));
            data["expires_at"] = json!(event.window.as_ref().map(|w| &w.expires_at));
        }
        if let Some(cause) = cause {
            data["cause"] = json!(cause);
        }
        vec![(business.clone(), kind, data)]
    };
    Ok(match event.kind {
        EventKind::GrantCreated => grant(NoticeType::GrantCreated),
        EventKind::GrantRevoked => grant(NoticeType::GrantRevoked),
        EventKind::GrantExpired => grant(NoticeType::GrantExpired),
        EventKind::RelationshipEnded => {
            let Some(business) = &event.business else { return Ok(Vec::new()) };
            let kind = if cause.is_some() { NoticeType::CustomerErased } else { NoticeType::RelationshipDisconnected };
            let mut data = json!({"audit_index": index, "pairwise_id": pairwise});
            if let Some(cause) = cause {
                data["cause"] = json!(cause);
            }
            vec![(business.clone(), kind, data)]
        }
        EventKind::MessageSent => {
            let Some(business) = &event.business else { return Ok(Vec::new()) };
            let mut data = json!({
                "audit_index": index,
                "message_id": event.related_value(Related::MessageId),
                "pairwise_id": pairwise,
            });
            if let Some(replied) = event.related_value(Related::InReplyTo) {
                data["in_reply_to"] = json!(replied);
            }
            vec![(business.clone(), NoticeType::MessageReceived, data)]
        }
        EventKind::DataWritten | EventKind::DataDeleted if event.actor.role == Role::Customer => {
            let kind =
                if event.kind == EventKind::DataWritten { NoticeType::DataCorrected } else { NoticeType::DataDeleted };
            data_notices(txn, event, index, kind)?
        }
        _ => Vec::new(),
    })
}

/// The businesses connected to the customer that were ever granted one of
/// the fields she changed, each told which of them.
fn data_notices(
    txn: &Txn<'_>,
    event: &AuditEvent,
    index: u64,
    kind: NoticeType,
) -> Result<Vec<(String, NoticeType, Value)>, StoreError> {
    let Some(subject) = event.subject else { return Ok(Vec::new()) };
    let grants: Vec<GrantFields> = txn
        .scan_prefix(&Key::grants_of(subject.as_bytes()))?
        .iter()
        .map(|(_, bytes)| decode(bytes, "grant"))
        .collect::<Result<_, _>>()?;
    let mut notices = Vec::new();
    for (_, bytes) in txn.scan_prefix(&Key::relationships_of(subject.as_bytes()))? {
        let relationship: RelationshipView = decode(&bytes, "relationship")?;
        let granted: Vec<&String> = event
            .fields
            .iter()
            .filter(|field| {
                grants.iter().any(|grant| grant.business_id == relationship.business_id && grant.fields.contains(field))
            })
            .collect();
        if !granted.is_empty() {
            let data = json!({"audit_index": index, "pairwise_id": relationship.pairwise_id, "fields": granted});
            notices.push((relationship.business_id.clone(), kind, data));
        }
    }
    Ok(notices)
}

/// The audit log's observer: queues one message per endpoint of each
/// business `event` concerns, and of each owner `extra` names, in the
/// transaction that appends it, and wakes the delivery worker once that
/// transaction's batch is durable.
pub(super) fn outbox_in(
    txn: &mut Txn<'_>,
    event: &AuditEvent,
    index: u64,
    extra: Vec<OwnerNotice>,
    wake: &std::sync::Arc<tokio::sync::Notify>,
) -> Result<(), StoreError> {
    let mut notices = notices_of(txn, event, index)?;
    notices.extend(extra.into_iter().map(|notice| (notice.owner, notice.notice, notice.data)));
    let mut queued = false;
    for (business, notice, data) in notices {
        // What the business was told of the customer's change, whether or
        // not it has an endpoint (it may poll): the event is then its to
        // prove (`GET /v1/events/{index}/proof`), and only those field names.
        if matches!(notice, NoticeType::DataCorrected | NoticeType::DataDeleted) {
            txn.put(Key::data_notice(&business, index), encode(&data["fields"], "data notice")?);
        }
        for (_, bytes) in txn.scan_prefix(&Key::webhook_endpoints_of(&business))? {
            let endpoint: Endpoint = decode(&bytes, "webhook endpoint")?;
            let message = Message {
                message_id: format!("msg_{index}_{}", endpoint.endpoint_id),
                endpoint_id: endpoint.endpoint_id.clone(),
                owner: business.clone(),
                notice,
                audit_index: index,
                time: event.time.clone(),
                data: data.clone(),
                attempts: 0,
                next_attempt_at: 0,
            };
            txn.put(Key::webhook_message(&endpoint.endpoint_id, index), encode(&message, "webhook message")?);
            queued = true;
        }
    }
    if queued {
        let wake = std::sync::Arc::clone(wake);
        txn.on_durable(move || wake.notify_one());
    }
    Ok(())
}
