//! Data-subject rights: export everything held about me, and erasure by
//! crypto-shredding.
//!
//! Erasure, in one transaction: the subject's key record (the wrapped DEK)
//! and every sealed value are deleted, every relationship ends (pairwise ids
//! stop resolving), every live grant is revoked and every pending request
//! closed (businesses see both in their feed), objections go, the customer
//! login is disabled and the subject record becomes a tombstone; the audit
//! log records it all, with ids only. Then the customer's cached tokens are
//! forgotten and a checkpoint covering the erasure is signed.
//!
//! What remains: audit events (ids, field names, purposes, times; never a
//! value) so the log still verifies, and the tombstone (creation and
//! erasure times).

use serde::Serialize;

use crate::audit::{Actor, AuditEvent, EventKind};
use crate::consent::requests::{AccessRequest, RequestStatus};
use crate::consent::{ConsentError, GrantRecord, GrantStatus, Relationship, decode, encode, grant_event};
use crate::ids::SubjectId;
use crate::store::Key;
use crate::subjects::SubjectRecord;
use crate::vault::Vault;

/// The answer to an erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReceipt {
    /// Always true: the subject is erased (now or before).
    pub erased: bool,
    /// The audit index of the `subject.erased` event.
    pub audit_index: u64,
    /// A signed checkpoint whose tree contains that event.
    pub checkpoint: String,
}

impl Vault {
    /// Erases `subject`. Idempotent: erasing an erased subject answers with
    /// the first erasure's audit index.
    pub async fn subject_erase(
        self: &std::sync::Arc<Self>,
        subject: SubjectId,
    ) -> Result<ErasureReceipt, ConsentError> {
        let record = self
            .subject_record(subject)
            .map_err(|error| ConsentError::Invalid(error.to_string()))?
            .ok_or(ConsentError::NotFound("subject"))?;
        if let Some(index) = record.erasure_index {
            let checkpoint = self.checkpoint_now().await?;
            return Ok(ErasureReceipt { erased: true, audit_index: index, checkpoint });
        }
        let now = self.clock().now_secs();
        let time = self.clock().rfc3339();
        let log = self.audit().clone();
        let actor = Actor::customer(subject);
        let (appended, durable) = self
            .store()
            .commit_durable(move |txn| {
                let key = Key::subject(subject.as_bytes());
                let mut record: SubjectRecord =
                    decode(&txn.get(&key)?.ok_or(ConsentError::NotFound("subject"))?, "subject")?;
                if record.erased_at.is_some() {
                    return Err(ConsentError::Invalid("already erased".to_owned()));
                }
                let mut appended = Vec::new();
                // Crypto-shredding: the wrapped DEK goes, and with it every value.
                txn.delete(&Key::dek(subject.as_bytes()));
                for (value_key, _) in txn.scan_prefix(&Key::values_of(subject.as_bytes()))? {
                    txn.delete(&Key::raw(value_key));
                }
                for (grant_key, bytes) in txn.scan_prefix(&Key::grants_of(subject.as_bytes()))? {
                    let mut grant: GrantRecord = decode(&bytes, "grant")?;
                    txn.delete(&Key::grant_expiry(grant.expires_at, subject.as_bytes(), &grant.grant_id));
                    if grant.status(now) == GrantStatus::Active {
                        grant.revoked_at = Some(now);
                        txn.put(Key::raw(grant_key), encode(&grant, "grant")?);
                        let event = grant_event(txn, EventKind::GrantRevoked, actor.clone(), &time, subject, &grant)?
                            .related("cause", "erasure");
                        appended.push(log.append(txn, &event)?);
                    }
                }
                for (request_key, bytes) in txn.scan_prefix(&Key::requests_of(subject.as_bytes()))? {
                    let mut request: AccessRequest = decode(&bytes, "request")?;
                    if request.status_at(now) == RequestStatus::Pending {
                        request.status = RequestStatus::Expired;
                        txn.put(Key::raw(request_key), encode(&request, "request")?);
                        let mut event = AuditEvent::new(EventKind::AccessRequestClosed, actor.clone(), &time)
                            .subject(subject)
                            .related("request_id", &request.request_id)
                            .related("cause", "erasure");
                        event.business = Some(request.business_id.clone());
                        appended.push(log.append(txn, &event)?);
                    }
                }
                for (relationship_key, bytes) in txn.scan_prefix(&Key::relationships_of(subject.as_bytes()))? {
                    let relationship: Relationship = decode(&bytes, "relationship")?;
                    txn.delete(&Key::raw(relationship_key));
                    txn.delete(&Key::pairwise(&relationship.business_id, &relationship.pairwise_id));
                    let mut event = AuditEvent::new(EventKind::RelationshipEnded, actor.clone(), &time)
                        .subject(subject)
                        .related("relationship_id", &relationship.relationship_id)
                        .related("pairwise_id", &relationship.pairwise_id)
                        .related("cause", "erasure");
                    event.business = Some(relationship.business_id.clone());
                    appended.push(log.append(txn, &event)?);
                }
                txn.delete(&Key::objections(subject.as_bytes()));
                // The login goes too: the record of a built-in customer.
                txn.delete(&Key::principal("customer", &subject.to_string()));
                let event = AuditEvent::new(EventKind::SubjectErased, actor.clone(), &time).subject(subject);
                let erased = log.append(txn, &event)?;
                record.erased_at = Some(time.clone());
                record.erasure_index = Some(erased.index());
                txn.put(key, encode(&record, "subject")?);
                let index = erased.index();
                appended.push(erased);
                Ok((appended, index))
            })
            .await?;
        let (appended, index) = appended;
        for appended in appended {
            self.audit().confirm(appended, &durable)?;
        }
        self.token_cache().forget_principal(&subject.to_string());
        tracing::info!(%subject, audit_index = index, "subject erased");
        let checkpoint = self.checkpoint_now().await?;
        Ok(ErasureReceipt { erased: true, audit_index: index, checkpoint })
    }
}

impl Vault {
    /// Everything the vault holds about `subject`, for the subject: data
    /// (opened through the audited read), relationships, access requests,
    /// grants with signed receipts, objections and the access log. Recorded
    /// as `data.exported`.
    pub async fn subject_export(&self, subject: SubjectId) -> Result<serde_json::Value, ConsentError> {
        let data = self.data_read_own(subject).await?;
        let grants = self.grants(subject)?;
        let mut grant_items = Vec::with_capacity(grants.len());
        for grant in grants {
            let (receipt, signed_note) = self.grant_receipt(subject, &grant.grant_id)?;
            let status = grant.status(self.clock().now_secs());
            grant_items.push(serde_json::json!({"grant": grant, "status": status, "receipt": receipt, "signed_receipt": signed_note}));
        }
        let mut access_log = Vec::new();
        let mut from = 0;
        loop {
            let (items, next) = self.access_log(subject, from, 1_000)?;
            access_log.extend(items);
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        let event = AuditEvent::new(EventKind::DataExported, Actor::customer(subject), &self.clock().rfc3339())
            .subject(subject)
            .fields(data.keys().cloned().collect());
        let log = self.audit().clone();
        let (appended, durable) =
            self.store().commit_durable(move |txn| Ok::<_, ConsentError>(log.append(txn, &event)?)).await?;
        self.audit().confirm(appended, &durable)?;
        Ok(serde_json::json!({
            "subject": subject,
            "data": data,
            "relationships": self.relationships(subject)?,
            "access_requests": self.requests_of_customer(subject)?,
            "grants": grant_items,
            "objections": self.objections(subject)?,
            "access_log": access_log,
        }))
    }
}
