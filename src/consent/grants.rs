//! Grants and objections: a grant the customer makes, checked by the policy
//! engine against the business's registered purposes; the list; revoking;
//! objections (purposes never to be used, whatever a grant says); and the
//! sweep that records the end of grants whose window closed.

use super::{
    Consent, ConsentError, ConsentReceipt, DAY_SECS, GrantEnd, GrantRecord, GrantStatus, Page, Relationship,
    RequestTerms, corrupt, customer_acts_in, decode, encode, grant_end_in, receipt_issue_in,
};
use crate::audit::{Actor, AuditEvent, EventKind, Related};
use crate::core::VaultClock;
use crate::ids::{BusinessId, GrantId, SubjectId};
use crate::policy::engine::{self};
use crate::store::{Key, StoreError, Txn};

/// Stores a prepared grant with its event, if the customer is connected to
/// the business; the caller's transaction has checked that the customer is
/// live (`customer_acts_in`). Returns the append and the grant's audit index.
pub(crate) fn grant_write(
    txn: &mut Txn<'_>,
    log: &crate::audit::AuditLog,
    subject: SubjectId,
    mut grant: GrantRecord,
    event: &AuditEvent,
    receipt: ConsentReceipt,
) -> Result<(crate::audit::Appended, u64), ConsentError> {
    let Some(relationship) = txn.get(&Key::relationship(subject.as_bytes(), &grant.business_id))? else {
        return Err(ConsentError::Invalid("connect to the business before granting it access".to_owned()));
    };
    let relationship: Relationship = decode(&relationship, "relationship")?;
    // The business's change feed names the customer by pairwise id only.
    let event = event.clone().related(Related::PairwiseId, &relationship.pairwise_id);
    let appended = log.append(txn, &event)?;
    let index = appended.index();
    grant.audit_index = index;
    grant.pairwise_id = Some(relationship.pairwise_id.clone());
    grant.receipt_ids = vec![receipt.consent_receipt_id.clone()];
    receipt_issue_in(txn, log, subject, receipt, &relationship.pairwise_id, index)?;
    txn.put(Key::grant(subject.as_bytes(), &grant.grant_id), encode(&grant, "grant")?);
    txn.put(Key::grant_of_business(&grant.business_id, &grant.grant_id), subject.to_string().into_bytes());
    txn.put(Key::grant_expiry(grant.expires_at, subject.as_bytes(), &grant.grant_id), Vec::new());
    Ok((appended, index))
}

/// Reads an expiry marker found under `prefix` (expiry time, 8 bytes ‖
/// subject, 16 bytes ‖ grant or request id): the subject and the id.
pub(crate) fn expiry_marker(prefix: &Key, key: &[u8]) -> Result<(SubjectId, String), StoreError> {
    let suffix = prefix.suffix_of(key).ok_or(corrupt("expiry marker"))?;
    let (subject, id) = match suffix.get(8..24).zip(suffix.get(24..)) {
        Some((subject, id)) => (subject, id),
        None => return Err(corrupt("expiry marker")),
    };
    let subject = SubjectId::from_bytes(subject.try_into().map_err(|_| corrupt("expiry marker"))?);
    let id = std::str::from_utf8(id).map_err(|_| corrupt("expiry marker"))?.to_owned();
    Ok((subject, id))
}

/// [`expiry_marker`], and deletes the marker in `txn`: every marker is
/// handled once, whatever the sweep then finds.
fn expiry_marker_take(txn: &mut Txn<'_>, prefix: &Key, key: &[u8]) -> Result<(SubjectId, String), StoreError> {
    let found = expiry_marker(prefix, key)?;
    txn.delete(&Key::raw(key.to_vec()));
    Ok(found)
}

impl Consent {
    /// A grant made directly by the customer, checked against the policies.
    pub async fn grant_create(
        &self,
        subject: SubjectId,
        business: &BusinessId,
        purposes: Vec<String>,
        fields: Vec<String>,
        duration_days: u32,
    ) -> Result<GrantRecord, ConsentError> {
        let (grant, event, receipt) = self.grant_prepare(subject, business, purposes, fields, duration_days, None)?;
        let log = self.core.audit().clone();
        let stored = grant.clone();
        let ((appended, index), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // The grant starts at the vault clock's now: that is the
                // activity time.
                customer_acts_in(txn, subject, stored.starts_at)?;
                grant_write(txn, &log, subject, stored, &event, receipt)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(GrantRecord { audit_index: index, ..grant })
    }

    /// Checks a grant against the policies and makes its record, its
    /// `grant.created` event and the draft of its receipt (not yet stored).
    pub(crate) fn grant_prepare(
        &self,
        subject: SubjectId,
        business: &BusinessId,
        purposes: Vec<String>,
        fields: Vec<String>,
        duration_days: u32,
        request: Option<RequestTerms<'_>>,
    ) -> Result<(GrantRecord, AuditEvent, ConsentReceipt), ConsentError> {
        let registered = self.business_purposes(business)?;
        engine::check_grant(&self.core.policies(), business, &registered, &purposes, &fields, duration_days)?;
        let now = self.core.clock().now_secs();
        let grant = GrantRecord {
            grant_id: GrantId::random(self.core.keys().rng())?,
            business_id: business.clone(),
            purposes,
            fields,
            starts_at: now,
            expires_at: now + i64::from(duration_days) * DAY_SECS,
            revoked_at: None,
            audit_index: 0,
            pairwise_id: None,
            receipt_ids: Vec::new(),
        };
        let receipt_id = self.core.random_id()?;
        let receipt = self.receipt_draft(business, &grant, &receipt_id, request.clone())?;
        let mut event =
            AuditEvent::new(EventKind::GrantCreated, Actor::customer(subject), &self.core.clock().rfc3339())
                .subject(subject)
                .fields(grant.fields.clone())
                .related(Related::GrantId, &grant.grant_id)
                .related(Related::ReceiptId, &receipt_id);
        event.purposes = grant.purposes.clone();
        event.window = Some(crate::audit::Window {
            expires_at: VaultClock::rfc3339_at(grant.expires_at),
            starts_at: VaultClock::rfc3339_at(grant.starts_at),
        });
        if let Some(terms) = &request {
            event = event.related(Related::RequestId, terms.request_id);
        }
        event.business = Some(business.to_string());
        Ok((grant, event, receipt))
    }

    /// The customer's grants.
    pub fn grants(&self, subject: SubjectId) -> Result<Vec<GrantRecord>, ConsentError> {
        self.records(&Key::grants_of(subject.as_bytes()), "grant")
    }

    /// One page of the customer's grants, in grant id order after `after`.
    pub fn grants_page(
        &self,
        subject: SubjectId,
        after: Option<&GrantId>,
        limit: usize,
    ) -> Result<Page<GrantRecord>, ConsentError> {
        self.records_page(&Key::grants_of(subject.as_bytes()), after.map(|id| id.as_str()), limit, "grant")
    }

    /// One of the customer's grants.
    pub fn grant(&self, subject: SubjectId, grant_id: &GrantId) -> Result<GrantRecord, ConsentError> {
        self.record(&Key::grant(subject.as_bytes(), grant_id), "grant")
    }

    /// Revokes a grant, effective for every read that commits after it.
    pub async fn grant_revoke(&self, subject: SubjectId, grant_id: &GrantId) -> Result<GrantRecord, ConsentError> {
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
        let mut event =
            AuditEvent::new(EventKind::ObjectionChanged, Actor::customer(subject), &self.core.clock().rfc3339())
                .subject(subject);
        event.purposes = purposes.clone();
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
