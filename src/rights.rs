//! Data-subject rights: export everything held about me, and erasure by
//! crypto-shredding, asked for by the customer or applied by the retention
//! rule. What customers, DPOs and auditors are told about both is in
//! `docs/RIGHTS.md`.
//!
//! Erasure, in one transaction: the subject's key record (the wrapped DEK)
//! and every sealed value are deleted, every relationship ends (pairwise ids
//! stop resolving), every live grant is revoked (businesses see it in their
//! change feed) and every pending request closed (its stored status becomes
//! `expired`; a denial's reason, the customer's words, is removed),
//! objections go, the customer login is deleted and the subject
//! record becomes a tombstone; the audit log records it all, with ids only
//! and a `cause` (`erasure` when the customer asked, `retention` when the
//! retention rule did). Then the customer's cached tokens are forgotten and a
//! checkpoint covering the erasure is signed.
//!
//! What remains: audit events (ids, field names, purposes, reason codes,
//! times; never a value) so the log still verifies, and the tombstone
//! (creation and erasure times, the erasure's audit index). Erasing again
//! writes nothing and answers with the first erasure's index and the
//! earliest kept checkpoint covering it.

use std::sync::Arc;

use serde::Serialize;

use crate::audit::{Actor, AuditError, AuditEvent, EventKind, Related};
use crate::consent::requests::{AccessRequest, RequestStatus};
use crate::consent::{
    Consent, ConsentError, GrantEnd, GrantRecord, GrantStatus, Relationship, decode, encode, grant_end_in,
};
use crate::contact::{Contact, InboxView, Preferences};
use crate::core::Core;
use crate::directory::{record_decode, record_encode};
use crate::ids::SubjectId;
use crate::principals::Principals;
use crate::store::Key;
use crate::subjects::Subjects;

/// The answer to an erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErasureReceipt {
    /// Always true: the subject is erased (now or before).
    pub erased: bool,
    /// The audit index of the `subject.erased` event.
    pub audit_index: u64,
    /// A signed checkpoint whose tree contains that event.
    pub checkpoint: String,
    /// The `subject.erased` entry and its inclusion proof in that
    /// checkpoint's tree: with the checkpoint and the vault's public key,
    /// enough to prove the erasure after the account is gone.
    pub inclusion_proof: crate::audit::EntryProof,
}

/// Everything the vault holds about a customer, for the customer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Export {
    /// The customer's id.
    #[schema(value_type = String)]
    pub subject: SubjectId,
    /// Her field values.
    #[schema(value_type = crate::policy::FieldValues)]
    pub data: std::collections::BTreeMap<String, serde_json::Value>,
    /// Her connections to businesses.
    pub relationships: Vec<ExportedRelationship>,
    /// The access requests made to her.
    pub access_requests: Vec<AccessRequest>,
    /// Her grants, each with its signed receipt.
    pub grants: Vec<ExportedGrant>,
    /// The purposes she objects to.
    pub objections: Vec<String>,
    /// Every read of her data.
    pub access_log: Vec<crate::consent::AccessLogItem>,
    /// Her inbox: messages from businesses with their texts, what she
    /// wrote, the vault's notices (opening the texts is logged).
    pub inbox: Vec<InboxView>,
    /// Her contact preferences, per business she is connected to.
    pub contact_preferences: Vec<ExportedContact>,
}

/// Contact preferences in an export, with the business's name.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportedContact {
    /// The business.
    pub business_id: String,
    /// The business's registered name.
    pub business_name: Option<String>,
    /// What she takes from it.
    pub preferences: Preferences,
}

/// A relationship in an export, with the business's name.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportedRelationship {
    /// The relationship id.
    pub relationship_id: String,
    /// The business.
    pub business_id: String,
    /// The business's registered name.
    pub business_name: Option<String>,
    /// How the business sees her.
    pub pairwise_id: String,
    /// When she connected (RFC 3339).
    #[schema(format = DateTime)]
    pub connected_at: String,
    /// Whether she has stopped the business asking her for access.
    pub requests_blocked: bool,
}

impl ExportedRelationship {
    fn new(relationship: Relationship, business_name: Option<String>) -> Self {
        Self {
            relationship_id: relationship.relationship_id.to_string(),
            business_id: relationship.business_id.to_string(),
            business_name,
            pairwise_id: relationship.pairwise_id.to_string(),
            connected_at: relationship.connected_at,
            requests_blocked: relationship.requests_blocked,
        }
    }
}

/// A grant in an export, with its status at export time and its receipt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportedGrant {
    /// The business's registered name.
    pub business_name: Option<String>,
    /// The stored grant (times in Unix seconds).
    pub grant: GrantRecord,
    /// Where it stands now.
    pub status: GrantStatus,
    /// The signed records issued for it: its consent receipt, then the
    /// record of its end (none for a grant made before receipts were kept).
    pub receipts: Vec<crate::consent::SignedReceipt>,
}

/// Why a subject is erased: the `cause` its audit events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureCause {
    /// The customer asked (`DELETE /v1/me`); the actor is the customer.
    Request,
    /// The retention rule found the customer inactive; the actor is the
    /// vault itself.
    Retention,
}

impl ErasureCause {
    /// The `cause` in the audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "erasure",
            Self::Retention => "retention",
        }
    }

    /// How the subject's live grants end.
    fn grant_end(self) -> GrantEnd {
        match self {
            Self::Request => GrantEnd::Erased,
            Self::Retention => GrantEnd::Retention,
        }
    }

    fn actor(self, subject: SubjectId) -> Actor {
        match self {
            Self::Request => Actor::customer(subject),
            Self::Retention => Actor::system(),
        }
    }
}

/// A condition the retention sweep puts on an erasure, checked in its
/// transaction: the subject's activity marker it found is still the
/// current one, and older than `inactive_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InactiveCheck {
    /// The time of the activity marker the sweep found (Unix seconds).
    pub marker_secs: i64,
    /// Erase only if the last activity is before this (Unix seconds).
    pub inactive_before: i64,
}

/// What an erasure transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Erasure {
    /// Erased now; the index of `subject.erased`.
    Done(u64),
    /// Erased before; the index of that `subject.erased`.
    Before(u64),
    /// The inactivity check failed (the customer acted since, or the marker
    /// was stale and is gone); nothing else changed.
    Skipped,
}

/// Data-subject rights: export and erasure. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Rights {
    core: Arc<Core>,
    subjects: Subjects,
    principals: Principals,
    consent: Consent,
    contact: Contact,
}

/// Why an export failed. None carries a personal value.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Her data, consent records or access log could not be read.
    #[error(transparent)]
    Consent(#[from] ConsentError),
    /// Her inbox could not be read.
    #[error(transparent)]
    Contact(#[from] crate::contact::ContactError),
}

impl Rights {
    /// The rights service over `core` and the services it gathers from.
    pub fn new(
        core: Arc<Core>,
        subjects: Subjects,
        principals: Principals,
        consent: Consent,
        contact: Contact,
    ) -> Self {
        Self { core, subjects, principals, consent, contact }
    }

    /// Erases `subject` at the customer's request. Idempotent: erasing an
    /// erased subject writes nothing and answers with the first erasure's
    /// audit index and the earliest kept checkpoint covering it.
    pub async fn subject_erase(&self, subject: SubjectId) -> Result<ErasureReceipt, ConsentError> {
        let record =
            crate::directory::subject_record(self.core.store(), subject)?.ok_or(ConsentError::NotFound("subject"))?;
        if let Some(index) = record.erasure_index
            && let Some(receipt) = self.erasure_receipt_stored(index)?
        {
            return Ok(receipt);
        }
        let index = match self.erasure_commit(subject, ErasureCause::Request, None).await? {
            Erasure::Done(index) => index,
            Erasure::Before(index) => match self.erasure_receipt_stored(index)? {
                Some(receipt) => return Ok(receipt),
                None => index,
            },
            // Only a retention check skips.
            Erasure::Skipped => return Err(ConsentError::NotFound("subject")),
        };
        let checkpoint = self.core.checkpoint_now().await?;
        self.erasure_receipt(index, checkpoint)
    }

    /// The one erasure transaction, shared by `DELETE /v1/me` and the
    /// retention rule; with `check`, it erases only a subject still inactive.
    /// Forgets the customer's cached tokens after a fresh erasure.
    pub(crate) async fn erasure_commit(
        &self,
        subject: SubjectId,
        cause: ErasureCause,
        check: Option<InactiveCheck>,
    ) -> Result<Erasure, ConsentError> {
        let now = self.core.clock().now_secs();
        let time = self.core.clock().rfc3339();
        let log = self.core.audit().clone();
        let actor = cause.actor(subject);
        let grant_end = cause.grant_end();
        let cause = cause.as_str();
        let ((appended, outcome), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let key = Key::subject(subject.as_bytes());
                let found = txn.get(&key)?;
                if let Some(check) = check {
                    let current = match &found {
                        Some(bytes) => record_decode(bytes)?.last_active_at,
                        None => None,
                    };
                    if current != Some(check.marker_secs) {
                        // A stale marker (the subject acted, or is gone): drop it.
                        txn.delete(&Key::subject_activity(check.marker_secs, subject.as_bytes()));
                        return Ok((Vec::new(), Erasure::Skipped));
                    }
                    if check.marker_secs >= check.inactive_before {
                        return Ok((Vec::new(), Erasure::Skipped));
                    }
                }
                let mut record = record_decode(&found.ok_or(ConsentError::NotFound("subject"))?)?;
                if let Some(index) = record.erasure_index {
                    // Erased while this call waited: nothing more to do.
                    return Ok((Vec::new(), Erasure::Before(index)));
                }
                let mut appended = Vec::new();
                // Crypto-shredding: the wrapped DEK goes, and with it every value.
                txn.delete(&Key::dek(subject.as_bytes()));
                for (value_key, _) in txn.scan_prefix(&Key::values_of(subject.as_bytes()))? {
                    txn.delete(&Key::raw(value_key));
                }
                for (_, bytes) in txn.scan_prefix(&Key::grants_of(subject.as_bytes()))? {
                    let mut grant: GrantRecord = decode(&bytes, "grant")?;
                    let marker = Key::grant_expiry(grant.expires_at, subject.as_bytes(), &grant.grant_id);
                    let unswept = txn.contains(&marker)?;
                    txn.delete(&marker);
                    match grant.status(now) {
                        GrantStatus::Active => {
                            let actor = actor.clone();
                            appended.push(grant_end_in(txn, &log, subject, &mut grant, grant_end, actor, now, &time)?);
                        }
                        // Its window closed before the sweep recorded it:
                        // recorded now, as the sweep would have.
                        GrantStatus::Expired if unswept => {
                            let (end, system) = (GrantEnd::Expired, Actor::system());
                            appended.push(grant_end_in(txn, &log, subject, &mut grant, end, system, now, &time)?);
                        }
                        _ => {}
                    }
                }
                for (request_key, bytes) in txn.scan_prefix(&Key::requests_of(subject.as_bytes()))? {
                    let mut request: AccessRequest = decode(&bytes, "request")?;
                    // A denial's reason is the customer's own words: it goes.
                    if request.reason.take().is_some() {
                        txn.put(Key::raw(request_key.clone()), encode(&request, "request")?);
                    }
                    // Stored as pending, even if its time ran out unswept:
                    // after an erasure no request waits and no marker is left.
                    if request.status == RequestStatus::Pending {
                        request.status = RequestStatus::Expired;
                        txn.put(Key::raw(request_key), encode(&request, "request")?);
                        txn.delete(&Key::request_expiry(request.expires_at, subject.as_bytes(), &request.request_id));
                        let mut event = AuditEvent::new(EventKind::AccessRequestClosed, actor.clone(), &time)
                            .subject(subject)
                            .related(Related::RequestId, &request.request_id)
                            .related(Related::Cause, cause);
                        event.business = Some(request.business_id.to_string());
                        appended.push(log.append(txn, &event)?);
                    }
                }
                for (relationship_key, bytes) in txn.scan_prefix(&Key::relationships_of(subject.as_bytes()))? {
                    let relationship: Relationship = decode(&bytes, "relationship")?;
                    txn.delete(&Key::raw(relationship_key));
                    txn.delete(&Key::pairwise(&relationship.business_id, &relationship.pairwise_id));
                    let mut event = AuditEvent::new(EventKind::RelationshipEnded, actor.clone(), &time)
                        .subject(subject)
                        .related(Related::RelationshipId, &relationship.relationship_id)
                        .related(Related::PairwiseId, &relationship.pairwise_id)
                        .related(Related::Cause, cause);
                    event.business = Some(relationship.business_id.to_string());
                    appended.push(log.append(txn, &event)?);
                }
                txn.delete(&Key::objections(subject.as_bytes()));
                // The login goes too: the record of a built-in customer.
                txn.delete(&Key::principal("customer", &subject.to_string()));
                if let Some(active_at) = record.last_active_at.take() {
                    txn.delete(&Key::subject_activity(active_at, subject.as_bytes()));
                }
                let event = AuditEvent::new(EventKind::SubjectErased, actor.clone(), &time)
                    .subject(subject)
                    .related(Related::Cause, cause);
                let erased = log.append(txn, &event)?;
                record.erased_at = Some(time.clone());
                record.erasure_index = Some(erased.index());
                txn.put(key, record_encode(&record)?);
                // Her inbox, messages and preferences, and her own webhook
                // endpoints (last: with any notice this erasure queued).
                crate::contact::erase_in(txn, subject)?;
                crate::webhooks::Webhooks::owner_erase_in(txn, &crate::webhooks::Webhooks::customer_owner(subject))?;
                let index = erased.index();
                appended.push(erased);
                Ok((appended, Erasure::Done(index)))
            })
            .await?;
        for appended in appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        if let Erasure::Done(index) = outcome {
            self.principals.token_cache().forget_principal(&subject.to_string());
            tracing::info!(%subject, audit_index = index, cause, "subject erased");
        }
        Ok(outcome)
    }

    /// The receipt of an erasure already on disk, read without writing: its
    /// audit index and the earliest kept checkpoint covering it (`None` while
    /// the erasure is not yet durable or no kept checkpoint covers it).
    fn erasure_receipt_stored(&self, index: u64) -> Result<Option<ErasureReceipt>, ConsentError> {
        self.core
            .audit()
            .checkpoint_covering(self.core.store(), index)?
            .map(|checkpoint| self.erasure_receipt(index, checkpoint))
            .transpose()
    }

    /// The receipt of the erasure at `index`, under `checkpoint` (which
    /// covers it), with the entry's inclusion proof in its tree.
    fn erasure_receipt(&self, index: u64, checkpoint: String) -> Result<ErasureReceipt, ConsentError> {
        let size = crate::audit::checkpoint_size(&checkpoint).ok_or(AuditError::Corrupt("checkpoint"))?;
        let inclusion_proof = self.core.audit().entry_proof(self.core.store(), index, size)?;
        Ok(ErasureReceipt { erased: true, audit_index: index, checkpoint, inclusion_proof })
    }
}

impl Rights {
    /// The registered name of business `id`.
    fn business_name(&self, id: &crate::ids::BusinessId) -> Result<Option<String>, ConsentError> {
        Ok(self.principals.principal(crate::auth::Role::Business, id.as_ref())?.map(|record| record.name))
    }

    /// Everything the vault holds about `subject`, for the subject: data
    /// (opened through the audited read), relationships, access requests,
    /// grants with signed receipts, objections, the access log, her inbox
    /// and contact preferences. Recorded as `data.exported`.
    pub async fn subject_export(&self, subject: SubjectId) -> Result<Export, ExportError> {
        let data = self.subjects.data_read_own(subject).await.map_err(ConsentError::from)?;
        let grants = self.consent.grants(subject)?;
        let mut grant_items = Vec::with_capacity(grants.len());
        for grant in grants {
            let receipts = match self.consent.grant_receipts(subject, &grant.grant_id) {
                Err(ConsentError::NotFound(_)) => Vec::new(),
                other => other?,
            };
            let status = grant.status(self.core.clock().now_secs());
            let business_name = self.business_name(&grant.business_id)?;
            grant_items.push(ExportedGrant { business_name, grant, status, receipts });
        }
        let mut access_log = Vec::new();
        let mut from = 0;
        loop {
            let (items, next) = self.consent.access_log(subject, from, 1_000)?;
            access_log.extend(items);
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        let relationships: Result<Vec<ExportedRelationship>, ConsentError> = self
            .consent
            .relationships(subject)?
            .into_iter()
            .map(|relationship| {
                let name = self.business_name(&relationship.business_id)?;
                Ok(ExportedRelationship::new(relationship, name))
            })
            .collect();
        let mut inbox = Vec::new();
        let mut after = None;
        loop {
            let page = self.contact.inbox(subject, after.as_ref(), crate::contact::INBOX_ITEMS_MAX).await?;
            inbox.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut contact_preferences = Vec::new();
        for (relationship, preferences) in self.contact.preferences_all(subject)? {
            contact_preferences.push(ExportedContact {
                business_name: self.business_name(&relationship.business_id)?,
                business_id: relationship.business_id.to_string(),
                preferences,
            });
        }
        let event = AuditEvent::new(EventKind::DataExported, Actor::customer(subject), &self.core.clock().rfc3339())
            .subject(subject)
            .fields(data.keys().cloned().collect());
        let log = self.core.audit().clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| Ok::<_, ConsentError>(log.append(txn, &event)?))
            .await
            .map_err(ConsentError::from)?;
        self.core.audit().confirm(appended, &durable).map_err(ConsentError::from)?;
        Ok(Export {
            subject,
            data,
            relationships: relationships?,
            access_requests: self.consent.requests_of_customer(subject)?,
            grants: grant_items,
            objections: self.consent.objections(subject)?,
            access_log,
            inbox,
            contact_preferences,
        })
    }
}
