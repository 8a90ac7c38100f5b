//! How a grant ends: the one function every path that ends a grant calls
//! (the customer's revoke, a disconnect, an erasure at the customer's request
//! or by the retention rule, and the sweep that records an expiry), and the
//! typed cause the business's change feed reads back from the log.
//!
//! An objection never ends a grant: it overrides grants for its purpose at
//! decision time (`policy::engine`), and lifting it lets them apply again.

use serde::Serialize;

use super::{ConsentError, GrantRecord, Relationship, decode, encode, receipt_end_in};
use crate::audit::{Actor, Appended, AuditEvent, AuditLog, EventKind, Related};
use crate::ids::SubjectId;
use crate::store::{Key, Txn};

/// Why a grant ended: the event it gets and the `cause` that event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEnd {
    /// The customer revoked it.
    Revoked,
    /// The customer disconnected from the business (`cause: disconnect`).
    Disconnected,
    /// The customer was erased at their own request (`cause: erasure`).
    Erased,
    /// The retention rule erased the customer (`cause: retention`).
    Retention,
    /// Its window closed; recorded by the sweep (`grant.expired`).
    Expired,
}

impl GrantEnd {
    /// The event kind that records it.
    fn kind(self) -> EventKind {
        match self {
            Self::Expired => EventKind::GrantExpired,
            Self::Revoked | Self::Disconnected | Self::Erased | Self::Retention => EventKind::GrantRevoked,
        }
    }

    /// The `cause` its event carries, if any.
    pub fn cause(self) -> Option<&'static str> {
        match self {
            Self::Revoked | Self::Expired => None,
            Self::Disconnected => Some("disconnect"),
            Self::Erased => Some("erasure"),
            Self::Retention => Some("retention"),
        }
    }

    /// How a grant ended, read back from its logged event (`None` for any
    /// other event).
    pub fn of_event(event: &AuditEvent) -> Option<Self> {
        let cause = event.related_value(Related::Cause);
        match (event.kind, cause) {
            (EventKind::GrantExpired, _) => Some(Self::Expired),
            (EventKind::GrantRevoked, Some("disconnect")) => Some(Self::Disconnected),
            (EventKind::GrantRevoked, Some("erasure")) => Some(Self::Erased),
            (EventKind::GrantRevoked, Some("retention")) => Some(Self::Retention),
            (EventKind::GrantRevoked, _) => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// What the business's change feed says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantChangeKind {
    /// A grant was given.
    Created,
    /// A grant was revoked (by the customer, or by an erasure).
    Revoked,
    /// The grant's window closed.
    Expired,
    /// The customer disconnected: the relationship and its grants ended.
    Disconnected,
}

impl GrantChangeKind {
    /// The change an event stands for in the feed, if any.
    pub fn of_event(event: &AuditEvent) -> Option<Self> {
        match event.kind {
            EventKind::GrantCreated => Some(Self::Created),
            EventKind::RelationshipEnded => Some(Self::Disconnected),
            _ => GrantEnd::of_event(event).map(|end| match end {
                GrantEnd::Disconnected => Self::Disconnected,
                GrantEnd::Expired => Self::Expired,
                GrantEnd::Revoked | GrantEnd::Erased | GrantEnd::Retention => Self::Revoked,
            }),
        }
    }
}

/// Ends `grant` of `subject` in `txn` for `end`, by `actor` at `now` (Unix
/// seconds; `time` is the same instant as RFC 3339): a revocation stores
/// the grant with `revoked_at`, an expiry leaves the record as its window
/// already says; either way the event (with the business's pairwise id while
/// the relationship stands) is appended. The caller has checked that the
/// grant is live, and confirms the returned append after the commit.
///
/// **Architecture Invariant:** every ended grant goes through here, in the
/// transaction that ends it, so its event is in commit order with the reads
/// it ends: no allowed read appears after it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grant_end_in(
    txn: &mut Txn<'_>,
    log: &AuditLog,
    subject: SubjectId,
    grant: &mut GrantRecord,
    end: GrantEnd,
    actor: Actor,
    now: i64,
    time: &str,
) -> Result<Appended, ConsentError> {
    if end != GrantEnd::Expired {
        grant.revoked_at = Some(now);
    }
    let mut event = grant_event(txn, end.kind(), actor, time, subject, grant)?;
    if let Some(cause) = end.cause() {
        event = event.related(Related::Cause, cause);
    }
    let appended = log.append(txn, &event)?;
    // The signed record of the end, referring to the consent's receipt.
    if let Some(id) = receipt_end_in(txn, log, subject, grant, end, time, appended.index())? {
        grant.receipt_ids.push(id);
    }
    txn.put(Key::grant(subject.as_bytes(), &grant.grant_id), encode(&*grant, "grant")?);
    Ok(appended)
}

/// The event of a change to `grant`: its id, the business, and the pairwise
/// id while the relationship stands (so the business's feed never shows a
/// subject id).
fn grant_event(
    txn: &Txn<'_>,
    kind: EventKind,
    actor: Actor,
    time: &str,
    subject: SubjectId,
    grant: &GrantRecord,
) -> Result<AuditEvent, ConsentError> {
    let mut event = AuditEvent::new(kind, actor, time).subject(subject).related(Related::GrantId, &grant.grant_id);
    if let Some(bytes) = txn.get(&Key::relationship(subject.as_bytes(), &grant.business_id))? {
        let relationship: Relationship = decode(&bytes, "relationship")?;
        // Only the id the grant was given under: after a disconnect and a
        // new connection, an old grant's end must not tie the old id to
        // the new one.
        let given_under = grant.pairwise_id.as_ref().is_none_or(|given| *given == relationship.pairwise_id);
        if given_under {
            event = event.related(Related::PairwiseId, &relationship.pairwise_id);
        }
    }
    event.business = Some(grant.business_id.to_string());
    Ok(event)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(kind: EventKind, cause: Option<&str>) -> AuditEvent {
        let event = AuditEvent::new(kind, Actor::system(), "2026-01-01T00:00:00Z");
        match cause {
            Some(cause) => event.related(Related::Cause, cause),
            None => event,
        }
    }

    #[test]
    fn every_end_reads_back_from_its_event() {
        for end in [GrantEnd::Revoked, GrantEnd::Disconnected, GrantEnd::Erased, GrantEnd::Retention, GrantEnd::Expired]
        {
            assert_eq!(GrantEnd::of_event(&event(end.kind(), end.cause())), Some(end), "{end:?}");
        }
    }

    #[test]
    fn the_feed_tells_disconnections_from_revocations() {
        let feed = |kind, cause| GrantChangeKind::of_event(&event(kind, cause));
        assert_eq!(feed(EventKind::GrantCreated, None), Some(GrantChangeKind::Created));
        assert_eq!(feed(EventKind::GrantRevoked, None), Some(GrantChangeKind::Revoked));
        assert_eq!(feed(EventKind::GrantRevoked, Some("disconnect")), Some(GrantChangeKind::Disconnected));
        assert_eq!(feed(EventKind::GrantRevoked, Some("erasure")), Some(GrantChangeKind::Revoked));
        assert_eq!(feed(EventKind::GrantRevoked, Some("retention")), Some(GrantChangeKind::Revoked));
        assert_eq!(feed(EventKind::GrantExpired, None), Some(GrantChangeKind::Expired));
        assert_eq!(feed(EventKind::RelationshipEnded, Some("disconnect")), Some(GrantChangeKind::Disconnected));
        assert_eq!(feed(EventKind::DataRead, None), None);
    }
}

#[cfg(test)]
mod service_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::consent::ConsentError;
    use crate::ids::BusinessId;
    use crate::testing::Services;

    /// A customer connected to a business, with a marketing grant for her
    /// email.
    async fn granted(services: &Services) -> (SubjectId, BusinessId, GrantRecord) {
        let (subject, business) = (services.customer().await, services.business().await);
        services.consent.relationship_create(subject, &business).await.unwrap();
        let grant = services
            .consent
            .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 30)
            .await
            .unwrap();
        (subject, business, grant)
    }

    fn changes(services: &Services, business: &BusinessId) -> Vec<GrantChangeKind> {
        services.consent.grant_changes(business, 0, 100).unwrap().0.into_iter().map(|change| change.change).collect()
    }

    #[tokio::test]
    async fn a_revoked_grant_ends_the_next_read_and_revoking_again_logs_nothing() {
        let services = Services::new();
        let (subject, business, grant) = granted(&services).await;
        let pairwise = services.consent.relationships(subject).unwrap()[0].pairwise_id.clone();
        let read = services.consent.scoped_read(&business, &pairwise, "marketing", None).await.unwrap();
        assert_eq!(read.grant_ids, vec![grant.grant_id.clone()]);
        let revoked = services.consent.grant_revoke(subject, &grant.grant_id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        let size = services.core.audit().durable_size();
        services.consent.grant_revoke(subject, &grant.grant_id).await.unwrap();
        assert_eq!(services.core.audit().durable_size(), size, "a second revoke writes nothing");
        let denied = services.consent.scoped_read(&business, &pairwise, "marketing", None).await;
        assert!(matches!(denied, Err(ConsentError::NoConsent)), "{denied:?}");
        let revocations: Vec<_> =
            services.events().into_iter().filter(|event| event.kind == EventKind::GrantRevoked).collect();
        assert_eq!(revocations.len(), 1);
        assert_eq!(GrantEnd::of_event(&revocations[0]), Some(GrantEnd::Revoked));
        assert_eq!(changes(&services, &business), [GrantChangeKind::Created, GrantChangeKind::Revoked]);
    }

    #[tokio::test]
    async fn a_disconnect_ends_the_grants_with_their_cause_before_the_relationship() {
        let services = Services::new();
        let (subject, business, _) = granted(&services).await;
        let relationship = services.consent.relationships(subject).unwrap().remove(0);
        services.consent.relationship_end(subject, &relationship.relationship_id).await.unwrap();
        let events = services.events();
        let ended: Vec<_> = events.iter().rev().take(2).map(|event| event.kind).collect();
        assert_eq!(ended, [EventKind::RelationshipEnded, EventKind::GrantRevoked]);
        let revoked = &events[events.len() - 2];
        assert_eq!(GrantEnd::of_event(revoked), Some(GrantEnd::Disconnected));
        // The business's feed names the customer by pairwise id, never by
        // subject id.
        assert_eq!(revoked.related_value(Related::PairwiseId), Some(relationship.pairwise_id.as_str()));
        assert_eq!(
            changes(&services, &business),
            [GrantChangeKind::Created, GrantChangeKind::Disconnected, GrantChangeKind::Disconnected]
        );
    }

    #[tokio::test]
    async fn an_erasure_ends_live_grants_with_cause_erasure() {
        let services = Services::new();
        let (subject, business, grant) = granted(&services).await;
        services.rights.subject_erase(subject).await.unwrap();
        let revoked = services.events().into_iter().find(|event| event.kind == EventKind::GrantRevoked).unwrap();
        assert_eq!(revoked.related_value(Related::GrantId), Some(grant.grant_id.as_str()));
        assert_eq!(GrantEnd::of_event(&revoked), Some(GrantEnd::Erased));
        assert_eq!(changes(&services, &business)[..2], [GrantChangeKind::Created, GrantChangeKind::Revoked]);
        assert!(services.subjects.data_read_own(subject).await.is_err(), "erased data stays gone");
    }
}
