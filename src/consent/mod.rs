//! Consent: the service, its errors and records. Relationships, grants and
//! objections, the scoped read, the feeds read from the log, receipts,
//! access requests and how a grant ends each have a file of their own.
//!
//! **Architecture Invariant:** a read's logged decision, made by the pure
//! engine in `policy::engine`, holds for the state its commit transaction
//! commits on: it is made in that transaction or, while the store reads cold
//! pages, ahead of it on committed state, and then kept only if nothing it
//! read has changed since (its stamps hold, see `store::versions`) and the
//! second has not turned, else made again in the transaction. A revoke, disconnect or objection that committed before is
//! seen; the log order is the commit order, so no allowed read appears after
//! the event that ended the grant it relied on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{AuditError, AuditEvent, Related, Withheld};
use crate::core::Core;
use crate::crypto::CryptoError;
use crate::directory::subject_activity_in;
use crate::ids::{BusinessId, GrantId, PairwiseId, RelationshipId, SubjectId};
use crate::policy::engine::{GrantProblem, GrantView};
use crate::principals::{PrincipalError, Principals};
use crate::release::ReleaseError;
use crate::store::{CommitError, Key, StoreError, Txn};

mod feeds;
mod grants;
mod read;
mod receipts;
mod relationships;
pub mod requests;
mod revoke;

pub use feeds::{AccessLogItem, BusinessGrant, GrantChange};

pub(crate) use grants::{expiry_marker, grant_write};
pub use receipts::{
    ConsentReceipt, RECEIPT_JURISDICTION, RECEIPT_VERSION, ReceiptAddress, ReceiptController, ReceiptHistoryItem,
    ReceiptPurpose, ReceiptRecordType, ReceiptService, SignedReceipt,
};
pub(crate) use receipts::{RequestTerms, receipt_end_in, receipt_issue_in};
pub(crate) use revoke::grant_end_in;
pub use revoke::{GrantChangeKind, GrantEnd};

/// Seconds in a day.
const DAY_SECS: i64 = 86_400;
/// Audit markers read for one page of a listing built from the log (the
/// access log, the change feed); a page can end early with a cursor.
const EVENT_SCAN_MAX: usize = 2_000;

/// Errors of the consent operations. None carries a personal value.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// No such business, relationship or grant (for this caller).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The customer is already connected to that business.
    #[error("already connected to this business")]
    AlreadyConnected,
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The grant breaks a policy.
    #[error(transparent)]
    Policy(#[from] GrantProblem),
    /// The customer does not take this request.
    #[error(transparent)]
    RequestRefused(#[from] RequestRefused),
    /// The business has no live grant for the purpose (or the subject does
    /// not exist: the same answer, so it reveals nothing).
    #[error("no live grant for this purpose")]
    NoConsent,
    /// The customer was erased (or never existed) by the time the change
    /// committed; nothing changed.
    #[error("the customer was erased")]
    SubjectErased,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit append failed; nothing changed and nothing was read.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Released values could not be opened.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A record id could not be drawn from the random generator.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The business's record could not be read.
    #[error(transparent)]
    Principal(#[from] PrincipalError),
    /// A receipt could not be signed.
    #[error("signing: {0}")]
    Signing(#[from] crate::audit::checkpoint::NoteError),
    /// The customer's own audited read failed (an export).
    #[error(transparent)]
    Data(#[from] crate::subjects::DataError),
}

/// Why a customer does not take an access request. Each says so to the
/// business, which asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    /// She objects to a purpose asked for: a grant for it could never be
    /// used.
    #[error("the customer objects to the purpose `{0}`")]
    Objected(String),
    /// She has blocked this business from asking.
    #[error("the customer does not take access requests from this business")]
    Blocked,
    /// This business already has as many requests waiting for her as the
    /// rules allow.
    #[error("{max} requests from this business already wait for the customer's answer")]
    TooManyPending {
        /// The rules' `[requests] pending_per_customer_max`.
        max: u32,
    },
}

impl From<CommitError<ConsentError>> for ConsentError {
    fn from(error: CommitError<ConsentError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

pub(crate) fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt { what }
}

/// A customer's connection to a business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Relationship {
    /// The relationship id.
    #[schema(value_type = String)]
    pub relationship_id: RelationshipId,
    /// The business.
    #[schema(value_type = String)]
    pub business_id: BusinessId,
    /// How the business sees the customer; different for every business.
    #[schema(value_type = String)]
    pub pairwise_id: PairwiseId,
    /// When the customer connected (RFC 3339).
    #[schema(format = DateTime)]
    pub connected_at: String,
    /// Whether the customer has blocked this business: it may neither ask
    /// her for access nor send her messages (she stays connected, and its
    /// grants stay as they are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requests_blocked: bool,
}

/// Grant status on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Live (or not yet started).
    Active,
    /// Revoked by the customer or a disconnect.
    Revoked,
    /// Past its end.
    Expired,
}

/// A stored grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    /// The grant id.
    #[schema(value_type = String)]
    pub grant_id: GrantId,
    /// The business it is given to.
    #[schema(value_type = String)]
    pub business_id: BusinessId,
    /// The purposes it covers.
    pub purposes: Vec<String>,
    /// The fields it covers.
    pub fields: Vec<String>,
    /// First second it is live (Unix seconds).
    pub starts_at: i64,
    /// First second it is not (Unix seconds).
    pub expires_at: i64,
    /// When it was revoked (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// The audit index of its `grant.created` event.
    pub audit_index: u64,
    /// How the business knew the customer when the grant was given (grants
    /// stored before this was recorded carry it in their `grant.created`
    /// event instead: [`Consent::grant_pairwise`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pairwise_id: Option<PairwiseId>,
    /// The signed records issued for it (`GET /v1/me/grants/{id}/receipt`):
    /// the receipt of the consent, then the record of its end. Empty for a
    /// grant made before receipts were stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipt_ids: Vec<String>,
}

impl GrantRecord {
    /// Its status at `now`.
    pub fn status(&self, now: i64) -> GrantStatus {
        if self.revoked_at.is_some_and(|at| at <= now) {
            GrantStatus::Revoked
        } else if now >= self.expires_at {
            GrantStatus::Expired
        } else {
            GrantStatus::Active
        }
    }

    fn view(&self) -> GrantView {
        GrantView {
            id: self.grant_id.to_string(),
            business: self.business_id.to_string(),
            purposes: self.purposes.clone(),
            fields: self.fields.clone(),
            starts_at: self.starts_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// What a business read returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopedRead {
    /// Released values by field.
    pub data: BTreeMap<String, Value>,
    /// Requested fields not released, with the reason.
    pub withheld: Vec<Withheld>,
    /// The grants relied on.
    pub grant_ids: Vec<GrantId>,
    /// The audit index of the decision.
    pub audit_index: u64,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| corrupt(what))
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| corrupt(what))
}

/// The check every consent change the customer makes runs first in its own
/// transaction: the subject is live (an erasure that committed first wins,
/// and the change fails with [`ConsentError::SubjectErased`]), and the
/// customer's activity at `now_secs` is recorded for the retention rule.
pub(crate) fn customer_acts_in(txn: &mut Txn<'_>, subject: SubjectId, now_secs: i64) -> Result<(), ConsentError> {
    if subject_activity_in(txn, subject, now_secs)? { Ok(()) } else { Err(ConsentError::SubjectErased) }
}

/// Every grant of `subject`, as `txn` sees them.
fn grants_in(txn: &Txn<'_>, subject: SubjectId) -> Result<Vec<GrantRecord>, StoreError> {
    txn.scan_prefix(&Key::grants_of(subject.as_bytes()))?.iter().map(|(_, bytes)| decode(bytes, "grant")).collect()
}

/// The purposes `subject` objects to, as `txn` sees them.
pub(crate) fn objections_in(txn: &Txn<'_>, subject: SubjectId) -> Result<Vec<String>, StoreError> {
    Ok(match txn.get(&Key::objections(subject.as_bytes()))? {
        Some(bytes) => decode(&bytes, "objections")?,
        None => Vec::new(),
    })
}

/// Consent: relationships, grants, objections, access requests, the scoped
/// read, and what customers, businesses and auditors read of them. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Consent {
    core: Arc<Core>,
    principals: Principals,
}

impl Consent {
    /// The consent service over `core`; `principals` says which businesses
    /// exist and what they are registered for.
    pub fn new(core: Arc<Core>, principals: Principals) -> Self {
        Self { core, principals }
    }

    pub(crate) fn business_purposes(&self, business: &BusinessId) -> Result<Vec<String>, ConsentError> {
        let record = self
            .principals
            .principal(crate::auth::Role::Business, business)?
            .filter(|record| !record.disabled)
            .ok_or(ConsentError::NotFound("business"))?;
        Ok(record.purposes)
    }

    /// The pairwise id `grant` was given under: the business's name for the
    /// customer then, which a later reconnection does not change.
    pub fn grant_pairwise(&self, grant: &GrantRecord) -> Result<PairwiseId, ConsentError> {
        if let Some(pairwise) = &grant.pairwise_id {
            return Ok(pairwise.clone());
        }
        let created = self.core.audit().entry(self.core.store(), grant.audit_index)?.ok_or(corrupt("grant event"))?;
        let event = AuditEvent::from_bytes(&created).map_err(AuditError::Event)?;
        event
            .related_value(Related::PairwiseId)
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| corrupt("grant pairwise id").into())
    }

    /// The record at `key`, decoded as `what`; `NotFound(what)` if there is
    /// none.
    fn record<T: serde::de::DeserializeOwned>(&self, key: &Key, what: &'static str) -> Result<T, ConsentError> {
        let bytes = self.core.store().get(key)?.ok_or(ConsentError::NotFound(what))?;
        Ok(decode(&bytes, what)?)
    }

    /// Every record under `prefix`, decoded as `what`.
    fn records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &Key,
        what: &'static str,
    ) -> Result<Vec<T>, ConsentError> {
        self.core.store().scan_prefix(prefix, usize::MAX)?.iter().map(|(_, bytes)| Ok(decode(bytes, what)?)).collect()
    }

    /// One page of the records under `prefix` (each keyed by its id after
    /// the prefix), decoded as `what`, after the id `after`.
    fn records_page<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &Key,
        after: Option<&str>,
        limit: usize,
        what: &'static str,
    ) -> Result<Page<T>, ConsentError> {
        let Page { items, next } = self.page_under(prefix, after, limit, what)?;
        let items = items.iter().map(|(_, bytes)| Ok(decode(bytes, what)?)).collect::<Result<_, ConsentError>>()?;
        Ok(Page { items, next })
    }

    /// One page of a business's index under `prefix` (pairwise ids, grant
    /// ids or request ids, each naming a subject) after the id `after`:
    /// (id, subject) pairs, and where the next page starts.
    fn business_index_page<Id: std::str::FromStr>(
        &self,
        prefix: &Key,
        after: Option<&str>,
        limit: usize,
        what: &'static str,
    ) -> Result<Page<(Id, SubjectId)>, ConsentError> {
        let Page { items, next } = self.page_under(prefix, after, limit, what)?;
        let items = items
            .into_iter()
            .map(|(id, subject)| {
                let id: Id = id.parse().map_err(|_| corrupt(what))?;
                let subject: SubjectId =
                    String::from_utf8(subject).ok().and_then(|text| text.parse().ok()).ok_or(corrupt(what))?;
                Ok((id, subject))
            })
            .collect::<Result<_, ConsentError>>()?;
        Ok(Page { items, next })
    }

    /// One page of the entries under `prefix` after the id `after`, in key
    /// order: (id after the prefix, value) pairs.
    fn page_under(
        &self,
        prefix: &Key,
        after: Option<&str>,
        limit: usize,
        what: &'static str,
    ) -> Result<Page<(String, Vec<u8>)>, ConsentError> {
        let (entries, more) = self.core.store().scan_page(prefix, after.map(str::as_bytes), limit)?;
        let entries = entries
            .into_iter()
            .map(|(key, value)| {
                let id = prefix.suffix_of(&key).and_then(|id| std::str::from_utf8(id).ok()).ok_or(corrupt(what))?;
                Ok((id.to_owned(), value))
            })
            .collect::<Result<Vec<_>, ConsentError>>()?;
        let next = if more { entries.last().map(|(id, _)| id.clone()) } else { None };
        Ok(Page { items: entries, next })
    }
}

/// One page of a listing, in id order: the items, and the id of the last
/// entry looked at when more follow (the next page starts after it).
#[derive(Debug)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}
