//! What the log tells each role about consent: the customer's access log
//! (with inclusion proofs served by the API), the business's grants by
//! pairwise id, and the business's change feed of created, revoked, expired
//! and disconnected grants. Read from the audit log's per-subject and
//! per-business markers, so a listing never shows another subject's id.

use serde::Serialize;

use super::{Consent, ConsentError, EVENT_SCAN_MAX, GrantChangeKind, GrantRecord, Page, Relationship, decode};
use crate::audit::{AuditError, AuditEvent, Decision, EventKind, Related, Withheld};
use crate::ids::{BusinessId, GrantId, PairwiseId, SubjectId};
use crate::store::Key;

/// One read of a customer's data, as the customer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AccessLogItem {
    /// Where the event is in the audit log.
    pub audit_index: u64,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// Who read: `business`, or `customer` for the customer's own reads.
    pub role: crate::audit::Role,
    /// The business, for reads by a business.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_id: Option<String>,
    /// Its registered name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_name: Option<String>,
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

/// A grant as the business it was given to sees it: the customer by
/// pairwise id only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessGrant {
    /// The grant.
    pub grant: GrantRecord,
    /// The customer, by the pairwise id the grant was given under, while
    /// that relationship stands (absent after a disconnect, and after a
    /// reconnection under a new pairwise id).
    pub pairwise_id: Option<PairwiseId>,
}

/// One change a business learns of, so it can delete its copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GrantChange {
    /// What happened.
    pub change: GrantChangeKind,
    /// The grant concerned (none for a disconnection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The customer, by this business's pairwise id.
    pub pairwise_id: Option<String>,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// Where the event is in the audit log.
    pub audit_index: u64,
}

/// An event and its index in the audit log.
pub type IndexedEvent = (u64, AuditEvent);

impl Consent {
    /// Every event about `subject` from index `from` on (her data written,
    /// read, exported; her relationships, requests, grants and their ends;
    /// her objections; her erasure): up to `limit`, with their indices, and
    /// the index to continue from if there may be more.
    pub fn events_about(
        &self,
        subject: SubjectId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<IndexedEvent>, Option<u64>), ConsentError> {
        let indices = self.core.audit().indices_of_subject(self.core.store(), subject, from, EVENT_SCAN_MAX)?;
        self.events_at(&indices, limit, |index, event| Some((index, event)))
    }

    /// Reads of `subject`'s data from index `from` on: up to `limit` items,
    /// and the index to continue from if there may be more.
    pub fn access_log(
        &self,
        subject: SubjectId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<AccessLogItem>, Option<u64>), ConsentError> {
        let indices = self.core.audit().indices_of_subject(self.core.store(), subject, from, EVENT_SCAN_MAX)?;
        let (mut items, next) = self.events_at(&indices, limit, |index, event| {
            (event.kind == EventKind::DataRead).then_some(AccessLogItem {
                audit_index: index,
                time: event.time,
                role: event.actor.role,
                business_id: event.business,
                business_name: None,
                purpose: event.purpose,
                fields: event.fields,
                decision: event.decision,
                withheld: event.reasons,
            })
        })?;
        // She reads who read her data by name.
        for item in &mut items {
            if let Some(id) = &item.business_id {
                item.business_name =
                    self.principals.principal(crate::auth::Role::Business, id)?.map(|record| record.name);
            }
        }
        Ok((items, next))
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

    /// One page of the grants given to `business`, in grant id order after
    /// `after`.
    pub fn business_grants(
        &self,
        business: &BusinessId,
        after: Option<&GrantId>,
        limit: usize,
    ) -> Result<Page<BusinessGrant>, ConsentError> {
        let index = self.business_index_page::<GrantId>(
            &Key::grants_of_business(business),
            after.map(|id| id.as_str()),
            limit,
            "grant index",
        )?;
        let mut grants = Vec::with_capacity(index.items.len());
        for (grant_id, subject) in index.items {
            let Some(bytes) = self.core.store().get(&Key::grant(subject.as_bytes(), &grant_id))? else { continue };
            let grant: GrantRecord = decode(&bytes, "grant")?;
            // The customer by the pairwise id the grant was given under, and
            // only while that relationship stands: after a disconnect, or a
            // reconnection under a new pairwise id, an old grant names no one,
            // so the business cannot link the old id to the new.
            let given_under = self.grant_pairwise(&grant)?;
            let current = match self.core.store().get(&Key::relationship(subject.as_bytes(), business))? {
                Some(bytes) => Some(decode::<Relationship>(&bytes, "relationship")?.pairwise_id),
                None => None,
            };
            let pairwise_id = current.filter(|current| *current == given_under);
            grants.push(BusinessGrant { grant, pairwise_id });
        }
        Ok(Page { items: grants, next: index.next })
    }

    /// The changes to `business`'s grants and relationships from audit
    /// index `from` on; and where to continue.
    pub fn grant_changes(
        &self,
        business: &BusinessId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<GrantChange>, Option<u64>), ConsentError> {
        let indices = self.core.audit().indices_of_business(self.core.store(), business, from, EVENT_SCAN_MAX)?;
        let (changes, next) = self.events_at(&indices, limit, |index, event| {
            let change = GrantChangeKind::of_event(&event)?;
            Some(GrantChange {
                change,
                grant_id: event.related_value(Related::GrantId).map(str::to_owned),
                pairwise_id: event.related_value(Related::PairwiseId).map(str::to_owned),
                time: event.time,
                audit_index: index,
            })
        })?;
        // With nothing more now, the feed goes on from the end next time.
        let next = next.or_else(|| Some(indices.last().map_or(from, |last| last + 1)));
        Ok((changes, next))
    }
}
