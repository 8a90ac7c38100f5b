//! Consent: relationships (with pairwise ids), grants, objections, and the
//! scoped read a business makes.
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

use crate::audit::{Actor, AuditError, AuditEvent, Decision, EventKind, Withheld};
use crate::clock;
use crate::core::{Core, VaultClock};
use crate::crypto::CryptoError;
use crate::directory::subject_activity_in;
use crate::ids::SubjectId;
use crate::policy::Policies;
use crate::policy::engine::{self, FieldDecision, GrantProblem, GrantView, ReadQuery, Reason};
use crate::principals::{PrincipalError, Principals};
use crate::release::{self, ReleaseError, SealedRead, sealed_in};
use crate::store::{CommitError, Key, Stamp, StoreError, Txn};

pub mod requests;
mod revoke;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relationship {
    /// The relationship id.
    pub relationship_id: String,
    /// The business.
    pub business_id: String,
    /// How the business sees the customer; different for every business.
    pub pairwise_id: String,
    /// When the customer connected (RFC 3339).
    pub connected_at: String,
}

/// Grant status on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    /// The grant id.
    pub grant_id: String,
    /// The business it is given to.
    pub business_id: String,
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
            id: self.grant_id.clone(),
            business: self.business_id.clone(),
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
    pub grant_ids: Vec<String>,
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

/// Stores a prepared grant with its event, if the customer is connected to
/// the business; the caller's transaction has checked that the customer is
/// live (`customer_acts_in`). Returns the append and the grant's audit index.
pub(crate) fn grant_write(
    txn: &mut Txn<'_>,
    log: &crate::audit::AuditLog,
    subject: SubjectId,
    mut grant: GrantRecord,
    event: &AuditEvent,
) -> Result<(crate::audit::Appended, u64), ConsentError> {
    let Some(relationship) = txn.get(&Key::relationship(subject.as_bytes(), &grant.business_id))? else {
        return Err(ConsentError::Invalid("connect to the business before granting it access".to_owned()));
    };
    let relationship: Relationship = decode(&relationship, "relationship")?;
    // The business's change feed names the customer by pairwise id only.
    let event = event.clone().related("pairwise_id", &relationship.pairwise_id);
    let appended = log.append(txn, &event)?;
    let index = appended.index();
    grant.audit_index = index;
    txn.put(Key::grant(subject.as_bytes(), &grant.grant_id), encode(&grant, "grant")?);
    txn.put(Key::grant_of_business(&grant.business_id, &grant.grant_id), subject.to_string().into_bytes());
    txn.put(Key::grant_expiry(grant.expires_at, subject.as_bytes(), &grant.grant_id), Vec::new());
    Ok((appended, index))
}

/// Every grant of `subject`, as `txn` sees them.
fn grants_in(txn: &Txn<'_>, subject: SubjectId) -> Result<Vec<GrantRecord>, StoreError> {
    txn.scan_prefix(&Key::grants_of(subject.as_bytes()))?.iter().map(|(_, bytes)| decode(bytes, "grant")).collect()
}

fn objections_in(txn: &Txn<'_>, subject: SubjectId) -> Result<Vec<String>, StoreError> {
    Ok(match txn.get(&Key::objections(subject.as_bytes()))? {
        Some(bytes) => decode(&bytes, "objections")?,
        None => Vec::new(),
    })
}

/// What a business asks of a scoped read.
struct ReadAsk {
    business: String,
    pairwise: String,
    purpose: String,
    /// The fields asked for; `None` for every field live grants name.
    fields: Option<Vec<String>>,
}

/// A scoped read's decision, and what acting on it needs.
struct ReadDecided {
    /// The time (Unix seconds) it was decided at.
    now: i64,
    /// The audit event that logs it.
    event: AuditEvent,
    /// Whether a live grant covers the purpose: if not, nothing is returned.
    live_for_purpose: bool,
    subject: Option<SubjectId>,
    /// The released fields' sealed values, if any are released.
    sealed: Option<SealedRead>,
    withheld: Vec<Withheld>,
    grant_ids: Vec<String>,
}

/// Decides `ask` on the state `txn` sees, for `subject` (the customer behind
/// the pairwise id, if connected) at `now`, by the pure engine; reads the
/// sealed values it releases. Changes nothing.
fn read_decide(
    txn: &Txn<'_>,
    policies: &Policies,
    ask: &ReadAsk,
    subject: Option<SubjectId>,
    now: i64,
) -> Result<ReadDecided, ConsentError> {
    let ReadAsk { business, purpose, .. } = ask;
    let (grants, objections, connected) = match subject {
        Some(subject) => (
            grants_in(txn, subject)?.iter().map(GrantRecord::view).collect::<Vec<_>>(),
            objections_in(txn, subject)?,
            txn.contains(&Key::relationship(subject.as_bytes(), business))?,
        ),
        None => (Vec::new(), Vec::new(), false),
    };
    let live = |g: &&GrantView| g.business == *business && g.is_live(now) && g.purposes.contains(purpose);
    let requested: std::borrow::Cow<'_, [String]> = match &ask.fields {
        Some(fields) => fields.into(),
        None => {
            // No list: every field live grants for this purpose name.
            let mut all: Vec<String> = grants.iter().filter(live).flat_map(|g| g.fields.iter().cloned()).collect();
            all.sort();
            all.dedup();
            all.into()
        }
    };
    let query = ReadQuery { business, purpose, fields: &requested, now, connected, objections: &objections };
    let decisions = engine::decide(policies, &query, &grants);
    let mut released = Vec::new();
    let mut withheld = Vec::new();
    let mut grant_ids = Vec::new();
    for (field, decision) in decisions {
        match decision {
            FieldDecision::Released { grant } => {
                released.push(field);
                if !grant_ids.contains(&grant) {
                    grant_ids.push(grant);
                }
            }
            FieldDecision::Withheld(reason) => withheld.push((field, reason)),
        }
    }
    let live_for_purpose = grants.iter().any(|g| live(&g));
    let decision = match (released.is_empty(), withheld.is_empty()) {
        (false, true) => Decision::Allow,
        (false, false) => Decision::Partial,
        (true, _) => Decision::Deny,
    };
    // Only names from the catalogue reach the log: a caller could put
    // anything in a field list.
    let logged_withheld: Vec<Withheld> = withheld
        .iter()
        .filter(|(field, _)| policies.catalogue.field(field).is_some())
        .map(|(field, reason)| Withheld { field: field.clone(), reason: reason.code() })
        .collect();
    let unknown = withheld.iter().filter(|(_, reason)| *reason == Reason::UnknownField).count();
    let actor = Actor::new(crate::audit::Role::Business, business.clone());
    let mut event = AuditEvent::new(EventKind::DataRead, actor, &VaultClock::rfc3339_at(now)).fields(released.clone());
    event.subject = subject;
    event.business = Some(business.clone());
    event.purpose = policies.rules.purposes.contains_key(purpose).then(|| purpose.clone());
    event.decision = Some(decision);
    event.reasons = logged_withheld;
    if unknown > 0 {
        event.related.insert("unknown_fields".to_owned(), unknown.to_string());
    }
    if !grant_ids.is_empty() {
        event.related.insert("grant_ids".to_owned(), grant_ids.join(","));
    }
    let sealed = match subject {
        Some(subject) if live_for_purpose => Some(sealed_in(txn, subject, &released)?),
        _ => None,
    };
    let withheld = withheld.into_iter().map(|(field, reason)| Withheld { field, reason: reason.code() }).collect();
    Ok(ReadDecided { now, event, live_for_purpose, subject, sealed, withheld, grant_ids })
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

    pub(crate) fn random_hex_id(&self) -> Result<String, ConsentError> {
        Ok(self.core.random_id()?)
    }

    pub(crate) fn business_purposes(&self, business: &str) -> Result<Vec<String>, ConsentError> {
        let record = self
            .principals
            .principal(crate::auth::Role::Business, business)?
            .filter(|record| !record.disabled)
            .ok_or(ConsentError::NotFound("business"))?;
        Ok(record.purposes)
    }

    /// Connects `subject` to `business` with a fresh pairwise id.
    pub async fn relationship_create(&self, subject: SubjectId, business: &str) -> Result<Relationship, ConsentError> {
        self.business_purposes(business)?;
        let relationship = Relationship {
            relationship_id: self.random_hex_id()?,
            business_id: business.to_owned(),
            pairwise_id: self.random_hex_id()?,
            connected_at: self.core.clock().rfc3339(),
        };
        let event =
            AuditEvent::new(EventKind::RelationshipCreated, Actor::customer(subject), &relationship.connected_at)
                .subject(subject)
                .related("relationship_id", &relationship.relationship_id);
        let mut event = event;
        event.business = Some(business.to_owned());
        let log = self.core.audit().clone();
        let stored = relationship.clone();
        let now_secs = self.core.clock().now_secs();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                customer_acts_in(txn, subject, now_secs)?;
                let key = Key::relationship(subject.as_bytes(), &stored.business_id);
                if txn.contains(&key)? {
                    return Err(ConsentError::AlreadyConnected);
                }
                txn.put(key, encode(&stored, "relationship")?);
                txn.put(Key::pairwise(&stored.business_id, &stored.pairwise_id), subject.to_string().into_bytes());
                Ok(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(relationship)
    }

    /// The customer's relationships.
    pub fn relationships(&self, subject: SubjectId) -> Result<Vec<Relationship>, ConsentError> {
        self.core
            .store()
            .scan_prefix(&Key::relationships_of(subject.as_bytes()), usize::MAX)?
            .iter()
            .map(|(_, bytes)| Ok(decode(bytes, "relationship")?))
            .collect()
    }

    /// Disconnects: the pairwise id stops resolving and every grant to that
    /// business is revoked, in one transaction.
    pub async fn relationship_end(
        &self,
        subject: SubjectId,
        relationship_id: &str,
    ) -> Result<Relationship, ConsentError> {
        let relationship = self
            .relationships(subject)?
            .into_iter()
            .find(|r| r.relationship_id == relationship_id)
            .ok_or(ConsentError::NotFound("relationship"))?;
        let now = self.core.clock().now_secs();
        let time = self.core.clock().rfc3339();
        let log = self.core.audit().clone();
        let ended = relationship.clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                customer_acts_in(txn, subject, now)?;
                let key = Key::relationship(subject.as_bytes(), &ended.business_id);
                if !txn.contains(&key)? {
                    return Err(ConsentError::NotFound("relationship"));
                }
                let mut appended = Vec::new();
                for mut grant in grants_in(txn, subject)? {
                    if grant.business_id != ended.business_id || grant.status(now) != GrantStatus::Active {
                        continue;
                    }
                    let actor = Actor::customer(subject);
                    let end = GrantEnd::Disconnected;
                    appended.push(grant_end_in(txn, &log, subject, &mut grant, end, actor, now, &time)?);
                }
                txn.delete(&key);
                txn.delete(&Key::pairwise(&ended.business_id, &ended.pairwise_id));
                let mut event = AuditEvent::new(EventKind::RelationshipEnded, Actor::customer(subject), &time)
                    .subject(subject)
                    .related("relationship_id", &ended.relationship_id)
                    .related("pairwise_id", &ended.pairwise_id);
                event.business = Some(ended.business_id.clone());
                appended.push(log.append(txn, &event)?);
                Ok(appended)
            })
            .await?;
        for appended in appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(relationship)
    }

    /// A grant made directly by the customer, checked against the policies.
    pub async fn grant_create(
        &self,
        subject: SubjectId,
        business: &str,
        purposes: Vec<String>,
        fields: Vec<String>,
        duration_days: u32,
    ) -> Result<GrantRecord, ConsentError> {
        let (grant, event) = self.grant_prepare(subject, business, purposes, fields, duration_days, None)?;
        let log = self.core.audit().clone();
        let stored = grant.clone();
        let ((appended, index), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // The grant starts at the vault clock's now: that is the
                // activity time.
                customer_acts_in(txn, subject, stored.starts_at)?;
                grant_write(txn, &log, subject, stored, &event)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(GrantRecord { audit_index: index, ..grant })
    }

    /// Checks a grant against the policies and makes its record and
    /// `grant.created` event (not yet stored).
    pub(crate) fn grant_prepare(
        &self,
        subject: SubjectId,
        business: &str,
        purposes: Vec<String>,
        fields: Vec<String>,
        duration_days: u32,
        request_id: Option<&str>,
    ) -> Result<(GrantRecord, AuditEvent), ConsentError> {
        let registered = self.business_purposes(business)?;
        engine::check_grant(&self.core.policies(), business, &registered, &purposes, &fields, duration_days)?;
        let now = self.core.clock().now_secs();
        let grant = GrantRecord {
            grant_id: self.random_hex_id()?,
            business_id: business.to_owned(),
            purposes,
            fields,
            starts_at: now,
            expires_at: now + i64::from(duration_days) * DAY_SECS,
            revoked_at: None,
            audit_index: 0,
        };
        let mut event =
            AuditEvent::new(EventKind::GrantCreated, Actor::customer(subject), &self.core.clock().rfc3339())
                .subject(subject)
                .fields(grant.fields.clone())
                .related("grant_id", &grant.grant_id)
                .related("purposes", grant.purposes.join(","));
        if let Some(request_id) = request_id {
            event = event.related("request_id", request_id);
        }
        event.business = Some(business.to_owned());
        Ok((grant, event))
    }

    /// The customer's grants.
    pub fn grants(&self, subject: SubjectId) -> Result<Vec<GrantRecord>, ConsentError> {
        self.core
            .store()
            .scan_prefix(&Key::grants_of(subject.as_bytes()), usize::MAX)?
            .iter()
            .map(|(_, bytes)| Ok(decode(bytes, "grant")?))
            .collect()
    }

    /// Revokes a grant, effective for every read that commits after it.
    pub async fn grant_revoke(&self, subject: SubjectId, grant_id: &str) -> Result<GrantRecord, ConsentError> {
        let key = Key::grant(subject.as_bytes(), grant_id);
        let now = self.core.clock().now_secs();
        let time = self.core.clock().rfc3339();
        let log = self.core.audit().clone();
        let ((grant, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                customer_acts_in(txn, subject, now)?;
                let bytes = txn.get(&key)?.ok_or(ConsentError::NotFound("grant"))?;
                let mut grant: GrantRecord = decode(&bytes, "grant")?;
                if grant.status(now) != GrantStatus::Active {
                    return Ok((grant, None));
                }
                let actor = Actor::customer(subject);
                let appended = grant_end_in(txn, &log, subject, &mut grant, GrantEnd::Revoked, actor, now, &time)?;
                Ok((grant, Some(appended)))
            })
            .await?;
        if let Some(appended) = appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(grant)
    }

    /// The customer's objections (purposes never to be used).
    pub fn objections(&self, subject: SubjectId) -> Result<Vec<String>, ConsentError> {
        Ok(match self.core.store().get(&Key::objections(subject.as_bytes()))? {
            Some(bytes) => decode(&bytes, "objections")?,
            None => Vec::new(),
        })
    }

    /// Replaces the customer's objections.
    pub async fn objections_set(&self, subject: SubjectId, purposes: Vec<String>) -> Result<Vec<String>, ConsentError> {
        if let Some(unknown) = purposes.iter().find(|p| !self.core.policies().rules.purposes.contains_key(*p)) {
            return Err(ConsentError::Invalid(format!("unknown purpose `{unknown}`")));
        }
        let mut purposes = purposes;
        purposes.sort();
        purposes.dedup();
        let event =
            AuditEvent::new(EventKind::ObjectionChanged, Actor::customer(subject), &self.core.clock().rfc3339())
                .subject(subject)
                .related("purposes", purposes.join(","));
        let log = self.core.audit().clone();
        let stored = encode(&purposes, "objections")?;
        let now_secs = self.core.clock().now_secs();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                customer_acts_in(txn, subject, now_secs)?;
                txn.put(Key::objections(subject.as_bytes()), stored);
                Ok::<_, ConsentError>(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(purposes)
    }

    /// The subject behind `pairwise` for `business`, while connected.
    pub(crate) fn pairwise_subject(
        txn: &Txn<'_>,
        business: &str,
        pairwise: &str,
    ) -> Result<Option<SubjectId>, StoreError> {
        txn.get(&Key::pairwise(business, pairwise))?
            .map(|bytes| String::from_utf8(bytes).ok().and_then(|text| text.parse().ok()).ok_or(corrupt("pairwise")))
            .transpose()
    }

    /// A business reads fields of the customer it knows as `pairwise`, for
    /// `purpose`. Decided and logged in commit order; values leave only with
    /// the proof that the decision is on disk. With no live grant for the
    /// purpose (or no such customer), the answer is
    /// [`ConsentError::NoConsent`], logged all the same.
    ///
    /// The decision is made in the read's commit transaction, on the state
    /// it commits on; or, while the store reads cold pages, ahead of it on
    /// committed state off the commit thread
    /// ([`crate::store::StoreReader::read`]). The transaction then only
    /// appends the audit event, after checking that nothing the decision
    /// read has changed since and that the second has not turned; if either
    /// did, it decides again itself.
    pub async fn scoped_read(
        &self,
        business: &str,
        pairwise: &str,
        purpose: &str,
        fields: Option<Vec<String>>,
    ) -> Result<ScopedRead, ConsentError> {
        let policies = self.core.policies();
        let ask = Arc::new(ReadAsk {
            business: business.to_owned(),
            pairwise: pairwise.to_owned(),
            purpose: purpose.to_owned(),
            fields,
        });
        let ahead = self.scoped_read_ahead(&policies, &ask).await;
        let log = self.core.audit().clone();
        let vclock = self.core.clock().clone();
        let ((decided, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // The time of the decision is the time of its commit.
                let now = vclock.now_secs();
                let decided = match ahead {
                    Some((stamps, decided)) if txn.ahead_holds(&stamps, decided.now == now) => decided,
                    _ => txn.lookahead(|txn| {
                        let subject = Self::pairwise_subject(txn, &ask.business, &ask.pairwise)?;
                        read_decide(txn, &policies, &ask, subject, now)
                    })?,
                };
                let appended = log.append(txn, &decided.event)?;
                Ok::<_, ConsentError>((decided, appended))
            })
            .await?;
        let logged = self.core.audit().confirm(appended, &durable)?;
        let ReadDecided { live_for_purpose, subject, sealed, withheld, grant_ids, .. } = decided;
        if !live_for_purpose {
            return Err(ConsentError::NoConsent);
        }
        let data = match subject.zip(sealed) {
            Some((subject, sealed)) => release::release(&self.core, &logged, subject, sealed)?,
            None => BTreeMap::new(),
        };
        Ok(ScopedRead { data, withheld, grant_ids, audit_index: logged.index() })
    }
}

impl Consent {
    /// While the store reads cold pages ([`crate::store::Store::reads_cold`]),
    /// decides a scoped read ahead: on committed state, on a blocking thread,
    /// with the stamps of what the decision read (the business's pairwise
    /// index entry, then the subject's records) taken before reading them.
    /// `None` while the store is warm, or if the reads failed: the
    /// transaction then decides (and meets any failure) itself.
    async fn scoped_read_ahead(
        &self,
        policies: &Arc<Policies>,
        ask: &Arc<ReadAsk>,
    ) -> Option<(Vec<Stamp>, ReadDecided)> {
        if !self.core.store().reads_cold() {
            return None;
        }
        let reader = self.core.store().reader();
        let vclock = self.core.clock().clone();
        let (policies, ask) = (Arc::clone(policies), Arc::clone(ask));
        let decide = move || {
            reader.read(|snapshot| {
                let now = vclock.now_secs();
                let mut stamps = vec![snapshot.stamp(&Key::pairwise(&ask.business, &ask.pairwise))];
                let subject = Self::pairwise_subject(snapshot.txn(), &ask.business, &ask.pairwise).ok()?;
                if let Some(subject) = subject {
                    stamps.push(snapshot.stamp(&Key::subject(subject.as_bytes())));
                }
                let decided = read_decide(snapshot.txn(), &policies, &ask, subject, now).ok()?;
                if let Some(subject) = subject {
                    // Brings in the page where the commit will index the
                    // read's audit event by subject: the embedded engine makes every read
                    // wait while a batch is applied, so the batch should not
                    // have to read it from disk.
                    snapshot.txn().get(&Key::audit_by_subject(subject.as_bytes(), u64::MAX)).ok()?;
                }
                Some((stamps, decided))
            })
        };
        tokio::task::spawn_blocking(decide).await.ok().flatten()
    }

    /// The customers connected to `business`: (pairwise id, connected at).
    pub fn business_relationships(&self, business: &str) -> Result<Vec<(String, String)>, ConsentError> {
        let mut items = Vec::new();
        for (pairwise, subject) in self.business_index(&Key::pairwise_of(business), "pairwise")? {
            if let Some(bytes) = self.core.store().get(&Key::relationship(subject.as_bytes(), business))? {
                let relationship: Relationship = decode(&bytes, "relationship")?;
                items.push((pairwise, relationship.connected_at));
            }
        }
        Ok(items)
    }

    /// The entries of a business's index under `prefix` (pairwise ids or
    /// grant ids, each naming a subject): (id, subject).
    fn business_index(&self, prefix: &Key, what: &'static str) -> Result<Vec<(String, SubjectId)>, ConsentError> {
        let mut entries = Vec::new();
        for (key, subject) in self.core.store().scan_prefix(prefix, usize::MAX)? {
            let id = prefix.suffix_of(&key).and_then(|s| std::str::from_utf8(s).ok()).ok_or(corrupt(what))?;
            let subject: SubjectId =
                String::from_utf8(subject).ok().and_then(|text| text.parse().ok()).ok_or(corrupt(what))?;
            entries.push((id.to_owned(), subject));
        }
        Ok(entries)
    }
}

/// One read of a customer's data, as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogItem {
    /// Where the event is in the audit log.
    pub audit_index: u64,
    /// When (RFC 3339).
    pub time: String,
    /// Who read: `business`, or `customer` for the customer's own reads.
    pub role: crate::audit::Role,
    /// The business, for reads by a business.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_id: Option<String>,
    /// The purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The fields released.
    pub fields: Vec<String>,
    /// `allow`, `partial` or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Requested fields withheld, with reasons.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
}

impl Consent {
    /// Reads of `subject`'s data from index `from` on: up to `limit` items,
    /// and the index to continue from if there may be more.
    pub fn access_log(
        &self,
        subject: SubjectId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<AccessLogItem>, Option<u64>), ConsentError> {
        let indices = self.core.audit().indices_of_subject(self.core.store(), subject, from, EVENT_SCAN_MAX)?;
        self.events_at(&indices, limit, |index, event| {
            (event.kind == EventKind::DataRead).then_some(AccessLogItem {
                audit_index: index,
                time: event.time,
                role: event.actor.role,
                business_id: event.business,
                purpose: event.purpose,
                fields: event.fields,
                decision: event.decision,
                withheld: event.reasons,
            })
        })
    }

    /// Reads the events at `indices` (one bounded window of markers) and
    /// keeps up to `limit` of those `pick` maps; returns them and where to
    /// continue, if there may be more.
    fn events_at<T>(
        &self,
        indices: &[u64],
        limit: usize,
        mut pick: impl FnMut(u64, AuditEvent) -> Option<T>,
    ) -> Result<(Vec<T>, Option<u64>), ConsentError> {
        let mut items = Vec::new();
        let mut next = None;
        for (position, &index) in indices.iter().enumerate() {
            if items.len() == limit {
                next = Some(index);
                break;
            }
            let Some(bytes) = self.core.audit().entry(self.core.store(), index)? else { break };
            let event = AuditEvent::from_bytes(&bytes).map_err(AuditError::from)?;
            items.extend(pick(index, event));
            // The window ran out with markers possibly beyond it.
            if position + 1 == EVENT_SCAN_MAX {
                next = Some(index + 1);
            }
        }
        Ok((items, next))
    }
}

/// A grant as the business it was given to sees it: the customer by
/// pairwise id only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusinessGrant {
    /// The grant.
    #[serde(flatten)]
    pub grant: GrantRecord,
    /// The customer, as this business knows them (absent once disconnected).
    pub pairwise_id: Option<String>,
}

impl Consent {
    /// Every grant given to `business`.
    pub fn business_grants(&self, business: &str) -> Result<Vec<BusinessGrant>, ConsentError> {
        let mut grants = Vec::new();
        for (grant_id, subject) in self.business_index(&Key::grants_of_business(business), "grant index")? {
            let Some(bytes) = self.core.store().get(&Key::grant(subject.as_bytes(), &grant_id))? else { continue };
            let grant: GrantRecord = decode(&bytes, "grant")?;
            let pairwise_id = match self.core.store().get(&Key::relationship(subject.as_bytes(), business))? {
                Some(bytes) => Some(decode::<Relationship>(&bytes, "relationship")?.pairwise_id),
                None => None,
            };
            grants.push(BusinessGrant { grant, pairwise_id });
        }
        Ok(grants)
    }
}

/// One change a business learns of, so it can delete its copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantChange {
    /// What happened.
    pub change: GrantChangeKind,
    /// The grant concerned (none for a disconnection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The customer, by this business's pairwise id.
    pub pairwise_id: Option<String>,
    /// When (RFC 3339).
    pub time: String,
    /// Where the event is in the audit log.
    pub audit_index: u64,
}

impl Consent {
    /// The changes to `business`'s grants and relationships from audit
    /// index `from` on; and where to continue.
    pub fn grant_changes(
        &self,
        business: &str,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<GrantChange>, Option<u64>), ConsentError> {
        let indices = self.core.audit().indices_of_business(self.core.store(), business, from, EVENT_SCAN_MAX)?;
        let (changes, next) = self.events_at(&indices, limit, |index, event| {
            let change = GrantChangeKind::of_event(&event)?;
            Some(GrantChange {
                change,
                grant_id: event.related.get("grant_id").cloned(),
                pairwise_id: event.related.get("pairwise_id").cloned(),
                time: event.time,
                audit_index: index,
            })
        })?;
        // With nothing more now, the feed goes on from the end next time.
        let next = next.or_else(|| Some(indices.last().map_or(from, |last| last + 1)));
        Ok((changes, next))
    }
}

/// The jurisdiction receipts name: the vault is built to GDPR's terms
/// (special categories are Art. 9 data).
pub const RECEIPT_JURISDICTION: &str = "EU";

impl Consent {
    /// A consent receipt for one of the customer's grants, shaped on the
    /// Kantara Consent Receipt v1.1 fields, as canonical JSON, and the same
    /// text signed as a C2SP signed note with the vault's audit key (verify
    /// it with the key at `/v1/audit/public-key`).
    pub fn grant_receipt(&self, subject: SubjectId, grant_id: &str) -> Result<(Value, String), ConsentError> {
        let grant = self
            .grants(subject)?
            .into_iter()
            .find(|g| g.grant_id == grant_id)
            .ok_or(ConsentError::NotFound("grant"))?;
        let business = self.principals.principal(crate::auth::Role::Business, &grant.business_id)?;
        let controller = business.map(|b| b.name).unwrap_or_else(|| grant.business_id.clone());
        let rfc3339 = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs).map(clock::rfc3339).unwrap_or_else(|_| secs.to_string())
        };
        let policies = self.core.policies();
        let catalogue = &policies.catalogue;
        let categories: std::collections::BTreeSet<String> =
            grant.fields.iter().filter_map(|f| catalogue.field(f)).map(|f| f.category.clone()).collect();
        let sensitive: Vec<&str> = grant
            .fields
            .iter()
            .filter(|f| catalogue.field(f).is_some_and(|spec| spec.sensitivity == crate::policy::Sensitivity::Special))
            .map(String::as_str)
            .collect();
        let purposes: Vec<Value> = grant
            .purposes
            .iter()
            .map(|purpose| {
                let spec = policies.rules.purposes.get(purpose);
                serde_json::json!({
                    "purpose": spec.map_or(purpose.as_str(), |p| p.description.as_str()),
                    "purposeCategory": [purpose, spec.map_or("", |p| p.dpv.as_str())],
                    "consentType": "EXPLICIT",
                    "piiCategory": categories,
                    "primaryPurpose": false,
                    "termination": format!("on revocation, or at {}", rfc3339(grant.expires_at)),
                    "thirdPartyDisclosure": false,
                })
            })
            .collect();
        // serde_json's map is ordered by key, so this is the canonical form.
        let receipt = serde_json::json!({
            "version": "KI-CR-v1.1.0",
            "jurisdiction": RECEIPT_JURISDICTION,
            "consentTimestamp": grant.starts_at,
            "collectionMethod": "consentvault grant",
            "consentReceiptID": format!("receipt-{}", grant.grant_id),
            "language": "en",
            "piiPrincipalId": subject.to_string(),
            "piiControllers": [{"piiController": controller, "businessId": grant.business_id}],
            "policyUrl": format!("urn:consentvault:policies:{}", policies.sha256),
            "services": [{"service": controller, "purposes": purposes}],
            "sensitive": !sensitive.is_empty(),
            "spiCat": sensitive,
            "fields": grant.fields,
            "grantId": grant.grant_id,
            "status": grant.status(self.core.clock().now_secs()),
            "expiresAt": rfc3339(grant.expires_at),
            "auditIndex": grant.audit_index,
        });
        let text = format!("{}\n", serde_json::to_string(&receipt).map_err(|_| corrupt("receipt"))?);
        let signed = self.core.audit().signer().sign_note(&text)?;
        Ok((receipt, signed))
    }
}

impl Consent {
    /// Records the end of every grant whose window closed by now: a
    /// `grant.expired` event (so the business's feed shows it) and the
    /// marker removed. Reads already deny at the window's edge; this makes
    /// the end visible. Returns how many grants it recorded.
    pub async fn grants_expire(&self) -> Result<usize, ConsentError> {
        let now = self.core.clock().now_secs();
        let time = self.core.clock().rfc3339();
        let start = Key::grant_expiries_all();
        let end = Key::grant_expiry(now.saturating_add(1), &[0u8; 16], "");
        let log = self.core.audit().clone();
        let count = self
            .expiries_sweep(start, end, move |txn, subject, grant_id| {
                let Some(bytes) = txn.get(&Key::grant(subject.as_bytes(), &grant_id))? else { return Ok(None) };
                let mut grant: GrantRecord = decode(&bytes, "grant")?;
                // A revoked grant already told its business.
                if grant.revoked_at.is_some_and(|at| at <= grant.expires_at) {
                    return Ok(None);
                }
                let end = GrantEnd::Expired;
                Ok(Some(grant_end_in(txn, &log, subject, &mut grant, end, Actor::system(), now, &time)?))
            })
            .await?;
        if count > 0 {
            tracing::info!(count, "grants expired");
        }
        Ok(count)
    }

    /// Takes every expiry marker from `start` to `end` (at most 500 a
    /// sweep), and in the same commit lets `close` end what each names (an
    /// event, or `None` if it had ended already); confirms the events.
    /// Returns how many it ended.
    pub(crate) async fn expiries_sweep<F>(&self, start: Key, end: Key, close: F) -> Result<usize, ConsentError>
    where
        F: Fn(&mut Txn<'_>, SubjectId, String) -> Result<Option<crate::audit::Appended>, ConsentError> + Send + 'static,
    {
        const SWEEP_MAX: usize = 500;
        let due = self.core.store().scan_range(&start, &end, SWEEP_MAX)?;
        if due.is_empty() {
            return Ok(0);
        }
        let keys: Vec<Vec<u8>> = due.into_iter().map(|(key, _)| key).collect();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let mut appended = Vec::new();
                for key in keys {
                    let (subject, id) = expiry_marker_take(txn, &start, &key)?;
                    appended.extend(close(txn, subject, id)?);
                }
                Ok::<_, ConsentError>(appended)
            })
            .await?;
        let count = appended.len();
        for appended in appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(count)
    }
}

/// Reads an expiry marker found under `prefix` (expiry time, 8 bytes ‖
/// subject, 16 bytes ‖ grant or request id) and deletes it in `txn`:
/// every marker is handled once, whatever the sweep then finds.
fn expiry_marker_take(txn: &mut Txn<'_>, prefix: &Key, key: &[u8]) -> Result<(SubjectId, String), StoreError> {
    let suffix = prefix.suffix_of(key).ok_or(corrupt("expiry marker"))?;
    let (subject, id) = match suffix.get(8..24).zip(suffix.get(24..)) {
        Some((subject, id)) => (subject, id),
        None => return Err(corrupt("expiry marker")),
    };
    let subject = SubjectId::from_bytes(subject.try_into().map_err(|_| corrupt("expiry marker"))?);
    let id = std::str::from_utf8(id).map_err(|_| corrupt("expiry marker"))?.to_owned();
    txn.delete(&Key::raw(key.to_vec()));
    Ok((subject, id))
}
