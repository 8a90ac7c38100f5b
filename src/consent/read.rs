//! The scoped read: a business reads fields of a customer it knows by
//! pairwise id, for one purpose. The pure engine decides per field on the
//! state the read's commit transaction commits on (or, while the store reads
//! cold pages, ahead of it, kept only if nothing it read changed); the
//! decision's `data.read` event is appended in that transaction, and values
//! are released only with the proof that it is on disk (`release`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Consent, ConsentError, GrantRecord, ScopedRead, corrupt, grants_in, objections_in};
use crate::audit::{Actor, AuditEvent, Decision, EventKind, Related, Withheld};
use crate::core::VaultClock;
use crate::ids::{BusinessId, GrantId, PairwiseId, SubjectId};
use crate::policy::Policies;
use crate::policy::engine::{self, FieldDecision, GrantView, ReadQuery, Reason};
use crate::release::{self, SealedRead, sealed_in};
use crate::store::{Key, Stamp, StoreError, Txn};

/// What a business asks of a scoped read.
struct ReadAsk {
    business: BusinessId,
    pairwise: PairwiseId,
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
    grant_ids: Vec<GrantId>,
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
    let live = |g: &&GrantView| g.business == business.as_str() && g.is_live(now) && g.purposes.contains(purpose);
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
    event.business = Some(business.to_string());
    event.purpose = policies.rules.purposes.contains_key(purpose).then(|| purpose.clone());
    event.decision = Some(decision);
    event.reasons = logged_withheld;
    if unknown > 0 {
        event.related.insert(Related::UnknownFields.as_str().to_owned(), unknown.to_string());
    }
    event.grants = grant_ids.clone();
    // What a replay decides again: the catalogue fields asked for, in order.
    event.requested = requested.iter().filter(|field| policies.catalogue.field(field).is_some()).cloned().collect();
    let sealed = match subject {
        Some(subject) if live_for_purpose => Some(sealed_in(txn, subject, &released)?),
        _ => None,
    };
    let withheld = withheld.into_iter().map(|(field, reason)| Withheld { field, reason: reason.code() }).collect();
    let grant_ids =
        grant_ids.iter().map(|id| id.parse().map_err(|_| corrupt("grant id"))).collect::<Result<_, StoreError>>()?;
    Ok(ReadDecided { now, event, live_for_purpose, subject, sealed, withheld, grant_ids })
}

impl Consent {
    /// The subject behind `pairwise` for `business`, while connected.
    pub(crate) fn pairwise_subject(
        txn: &Txn<'_>,
        business: &BusinessId,
        pairwise: &PairwiseId,
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
        business: &BusinessId,
        pairwise: &PairwiseId,
        purpose: &str,
        fields: Option<Vec<String>>,
    ) -> Result<ScopedRead, ConsentError> {
        let policies = self.core.policies();
        let ask = Arc::new(ReadAsk {
            business: business.clone(),
            pairwise: pairwise.clone(),
            purpose: purpose.to_owned(),
            fields,
        });
        let ahead = self.scoped_read_ahead(&policies, &ask).await;
        let log = self.core.audit().clone();
        let vclock = self.core.clock().clone();
        let core = Arc::clone(&self.core);
        let ((decided, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // The time of the decision is the time of its commit, and so
                // are the policies: a reload puts its policies in force in
                // the transaction of its `policy.loaded` event, on this
                // thread, so a read logged after that event is decided under
                // them (what the replay checks).
                let now = vclock.now_secs();
                let in_force = core.policies();
                let same_policies = in_force.sha256 == policies.sha256;
                let decided = match ahead {
                    Some((stamps, decided)) if same_policies && txn.ahead_holds(&stamps, decided.now == now) => decided,
                    _ => txn.lookahead(|txn| {
                        let subject = Self::pairwise_subject(txn, &ask.business, &ask.pairwise)?;
                        read_decide(txn, &in_force, &ask, subject, now)
                    })?,
                };
                let appended = log.append(txn, &decided.event)?;
                Ok::<_, ConsentError>((decided, appended))
            })
            .await?;
        let logged = self.core.audit().confirm(appended, &durable)?;
        let decisions = self.core.decisions();
        if let Some(decision) = decided.event.decision {
            decisions.outcomes.inc(&[decision.as_str()]);
        }
        for withheld in &decided.event.reasons {
            decisions.withheld.inc(&[&withheld.reason]);
        }
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
}
