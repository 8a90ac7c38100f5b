//! A customer's relationships with businesses: connecting (a fresh random
//! pairwise id per business), the list, disconnecting (the pairwise id stops
//! resolving and every live grant to that business ends in the same
//! transaction), and the business's list of its connected customers.

use super::{
    Consent, ConsentError, GrantEnd, GrantStatus, Page, Relationship, customer_acts_in, decode, encode, grant_end_in,
    grants_in,
};
use crate::audit::{Actor, AuditEvent, EventKind, Related};
use crate::ids::{BusinessId, PairwiseId, RelationshipId, SubjectId};
use crate::store::Key;

impl Consent {
    /// Connects `subject` to `business` with a fresh pairwise id.
    pub async fn relationship_create(
        &self,
        subject: SubjectId,
        business: &BusinessId,
    ) -> Result<Relationship, ConsentError> {
        self.business_purposes(business)?;
        let rng = self.core.keys().rng();
        let relationship = Relationship {
            relationship_id: RelationshipId::random(rng)?,
            business_id: business.clone(),
            pairwise_id: PairwiseId::random(rng)?,
            connected_at: self.core.clock().rfc3339(),
            requests_blocked: false,
        };
        let event =
            AuditEvent::new(EventKind::RelationshipCreated, Actor::customer(subject), &relationship.connected_at)
                .subject(subject)
                .related(Related::RelationshipId, &relationship.relationship_id);
        let mut event = event;
        event.business = Some(business.to_string());
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
        self.records(&Key::relationships_of(subject.as_bytes()), "relationship")
    }

    /// One page of the customer's relationships, in business id order, after
    /// the business `after`.
    pub fn relationships_page(
        &self,
        subject: SubjectId,
        after: Option<&BusinessId>,
        limit: usize,
    ) -> Result<Page<Relationship>, ConsentError> {
        self.records_page(
            &Key::relationships_of(subject.as_bytes()),
            after.map(|id| id.as_str()),
            limit,
            "relationship",
        )
    }

    /// One of the customer's relationships.
    pub fn relationship(
        &self,
        subject: SubjectId,
        relationship_id: &RelationshipId,
    ) -> Result<Relationship, ConsentError> {
        self.relationships(subject)?
            .into_iter()
            .find(|r| r.relationship_id == *relationship_id)
            .ok_or(ConsentError::NotFound("relationship"))
    }

    /// Disconnects: the pairwise id stops resolving and every grant to that
    /// business is revoked, in one transaction.
    pub async fn relationship_end(
        &self,
        subject: SubjectId,
        relationship_id: &RelationshipId,
    ) -> Result<Relationship, ConsentError> {
        let relationship = self.relationship(subject, relationship_id)?;
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
                // Her contact preferences go with the relationship: a new
                // connection starts from the defaults.
                txn.delete(&Key::contact_preferences(subject.as_bytes(), &ended.business_id));
                txn.delete(&Key::contact_deliveries(subject.as_bytes(), &ended.business_id));
                let mut event = AuditEvent::new(EventKind::RelationshipEnded, Actor::customer(subject), &time)
                    .subject(subject)
                    .related(Related::RelationshipId, &ended.relationship_id)
                    .related(Related::PairwiseId, &ended.pairwise_id);
                event.business = Some(ended.business_id.to_string());
                appended.push(log.append(txn, &event)?);
                Ok(appended)
            })
            .await?;
        for appended in appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(relationship)
    }

    /// Blocks (or unblocks) the business of a relationship from asking the
    /// customer for access; she stays connected and its grants stay as they
    /// are. Recorded as `relationship.changed`.
    pub async fn relationship_requests_block(
        &self,
        subject: SubjectId,
        relationship_id: &RelationshipId,
        blocked: bool,
    ) -> Result<Relationship, ConsentError> {
        let relationship = self.relationship(subject, relationship_id)?;
        let now = self.core.clock().now_secs();
        let mut event =
            AuditEvent::new(EventKind::RelationshipChanged, Actor::customer(subject), &self.core.clock().rfc3339())
                .subject(subject)
                .related(Related::RelationshipId, &relationship.relationship_id)
                .related(Related::RequestsBlocked, blocked.to_string());
        event.business = Some(relationship.business_id.to_string());
        let log = self.core.audit().clone();
        let business = relationship.business_id.clone();
        let relationship_id = relationship.relationship_id.clone();
        let (changed, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                customer_acts_in(txn, subject, now)?;
                let key = Key::relationship(subject.as_bytes(), &business);
                let bytes = txn.get(&key)?.ok_or(ConsentError::NotFound("relationship"))?;
                let mut stored: Relationship = decode(&bytes, "relationship")?;
                if stored.relationship_id != relationship_id {
                    return Err(ConsentError::NotFound("relationship"));
                }
                if stored.requests_blocked == blocked {
                    return Ok((stored, None));
                }
                stored.requests_blocked = blocked;
                txn.put(key, encode(&stored, "relationship")?);
                Ok((stored, Some(log.append(txn, &event)?)))
            })
            .await?;
        let (stored, appended) = changed;
        if let Some(appended) = appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(stored)
    }

    /// One page of the customers connected to `business`, in pairwise id
    /// order after `after`: (pairwise id, connected at).
    pub fn business_relationships(
        &self,
        business: &BusinessId,
        after: Option<&PairwiseId>,
        limit: usize,
    ) -> Result<Page<(PairwiseId, String)>, ConsentError> {
        let index = self.business_index_page::<PairwiseId>(
            &Key::pairwise_of(business),
            after.map(|id| id.as_str()),
            limit,
            "pairwise",
        )?;
        let mut items = Vec::with_capacity(index.items.len());
        for (pairwise, subject) in index.items {
            if let Some(bytes) = self.core.store().get(&Key::relationship(subject.as_bytes(), business))? {
                let relationship: Relationship = decode(&bytes, "relationship")?;
                items.push((pairwise, relationship.connected_at));
            }
        }
        Ok(Page { items, next: index.next })
    }
}
