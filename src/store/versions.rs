//! Versions of the records a consent decision reads, so that a decision
//! made off the commit thread can be checked on it, in commit order.
//!
//! While the store reads cold pages, a scoped read decides on committed
//! state, outside the commit thread, and then only its audit append goes
//! through the commit path. That append is
//! valid only if nothing the decision read has changed since: every
//! transaction that writes a versioned record counts the change in the
//! record's *stripe* when it runs, and [`Txn::ahead_holds`](super::Txn::ahead_holds)
//! compares those counts with the [`Stamp`]s the decision took before it
//! read. If anything moved, the transaction decides again itself, as every
//! decision did before.
//!
//! Two counts per stripe make that sound:
//! - `ran`: changes made by transactions that have run on the commit thread,
//!   whether or not their batch has reached the engine yet;
//! - `applied`: the same count, published once the batch that carries the
//!   changes is applied to the engine.
//!
//! A stamp takes `applied` before the records are read, so the records read
//! hold at least the changes counted in it. If `ran` still equals the stamp
//! when the append runs, no change to the stripe ran since, so nothing newer
//! could have been read either: the decision saw exactly the state its
//! append commits on top of. Stripes are shared by many subjects; a change
//! to one of them only costs the others a second decision.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Key, Part, Space, WriteBatch};

/// How many stripes changes are counted in.
const STRIPES: usize = 4096;

/// The change counts of every stripe.
#[derive(Debug)]
pub struct Versions {
    ran: Box<[AtomicU64]>,
    applied: Box<[AtomicU64]>,
}

/// The version of a stripe as a decision found it, taken before it read the
/// records the stripe covers. A stamp of a key that is not versioned never
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    stripe: Option<usize>,
    version: u64,
}

/// The stripe that counts changes to the record at `key`, if it is one a
/// consent decision reads: a subject's own records ([`Part::DECIDED_ON`],
/// and its subject record, which no decision reads today but which erasure
/// and activity change) by the subject, so a stamp of a prefix of one
/// subject's records covers every record under it; and the pairwise index
/// by the whole key, so a stamp of a pairwise entry covers that entry only.
fn stripe_of(key: &[u8]) -> Option<usize> {
    let (&space, rest) = key.split_first()?;
    if space == Space::Subjects as u8 || Part::of(key).is_some_and(|part| Part::DECIDED_ON.contains(&part)) {
        // Subject ids are random, so their first bytes spread evenly.
        let first: [u8; 8] = rest.get(..8)?.try_into().ok()?;
        return usize::try_from(u64::from_be_bytes(first) % STRIPES as u64).ok();
    }
    if space == Space::Pairwise as u8 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        return usize::try_from(hasher.finish() % STRIPES as u64).ok();
    }
    None
}

impl Default for Versions {
    fn default() -> Self {
        let zeros = || (0..STRIPES).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self { ran: zeros(), applied: zeros() }
    }
}

impl Versions {
    /// The stamp of the records under `key`, to be taken before reading them.
    pub fn stamp(&self, key: &Key) -> Stamp {
        let stripe = stripe_of(key.as_bytes());
        // Acquire: the records read after this hold every change counted.
        let version = stripe.map_or(0, |stripe| self.applied[stripe].load(Ordering::Acquire));
        Stamp { stripe, version }
    }

    /// Whether no change to the stripes of `stamps` has run since they were
    /// taken. Called on the commit thread, the only writer of `ran`. No
    /// stamps at all prove nothing, so they do not hold either.
    pub(super) fn unchanged(&self, stamps: &[Stamp]) -> bool {
        !stamps.is_empty()
            && stamps.iter().all(|stamp| {
                stamp.stripe.is_some_and(|stripe| self.ran[stripe].load(Ordering::Relaxed) == stamp.version)
            })
    }

    /// Counts the versioned writes of a transaction that just ran, adding
    /// their stripes to `touched`.
    pub(super) fn count_ran(&self, writes: &WriteBatch, touched: &mut Vec<usize>) {
        for key in writes.keys() {
            if let Some(stripe) = stripe_of(key) {
                self.ran[stripe].fetch_add(1, Ordering::Relaxed);
                touched.push(stripe);
            }
        }
    }

    /// Counts a change in every stripe: after the engine was reopened, what
    /// was read before may be gone, so no stamp taken before holds.
    pub(super) fn all_changed(&self) {
        for (ran, applied) in self.ran.iter().zip(self.applied.iter()) {
            let count = ran.fetch_add(1, Ordering::Relaxed) + 1;
            applied.store(count, Ordering::Release);
        }
    }

    /// Publishes the counts of `touched` stripes once their batch has been
    /// applied (or has failed to apply, leaving the engine as it was).
    pub(super) fn publish_applied(&self, touched: &[usize]) {
        for &stripe in touched {
            // Release: a reader that sees this count sees the batch.
            self.applied[stripe].store(self.ran[stripe].load(Ordering::Relaxed), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(keys: &[Key]) -> WriteBatch {
        keys.iter().map(|key| (key.as_bytes().to_vec(), Some(Vec::new()))).collect()
    }

    #[test]
    fn a_stamp_holds_until_a_change_to_its_records_runs() {
        let versions = Versions::default();
        let (ada, bob) = ([1u8; 16], [2u8; 16]);
        let stamps = [versions.stamp(&Key::subject(&ada)), versions.stamp(&Key::pairwise("acme", "p1"))];
        assert!(versions.unchanged(&stamps));

        // Another subject's grant, an audit entry, a principal, the
        // subject's own access-log marker and request: nothing a decision
        // on the subject reads.
        let mut touched = Vec::new();
        let others = [
            Key::grant(&bob, "g"),
            Key::audit_record(7),
            Key::client("c"),
            Key::audit_by_subject(&ada, 7),
            Key::request(&ada, "r"),
        ];
        versions.count_ran(&writes(&others), &mut touched);
        assert_eq!(touched.len(), 1);
        assert!(versions.unchanged(&stamps));

        // Every record of the subject a decision reads moves its stripe,
        // and so does its pairwise index entry.
        for key in [
            Key::grant(&ada, "g"),
            Key::objections(&ada),
            Key::relationship(&ada, "acme"),
            Key::value(&ada, "email").key().clone(),
            Key::dek(&ada),
            Key::subject(&ada),
            Key::pairwise("acme", "p1"),
        ] {
            let stamps = [versions.stamp(&Key::subject(&ada)), versions.stamp(&Key::pairwise("acme", "p1"))];
            let mut touched = Vec::new();
            versions.count_ran(&writes(std::slice::from_ref(&key)), &mut touched);
            assert!(!versions.unchanged(&stamps), "{key:?} did not move the stamp");
            // Until the batch is applied, new stamps are the old ones: they
            // must not hold either.
            assert!(!versions.unchanged(&[versions.stamp(&key)]), "{key:?} read before its batch was applied");
            versions.publish_applied(&touched);
            let fresh = [versions.stamp(&Key::subject(&ada)), versions.stamp(&Key::pairwise("acme", "p1"))];
            assert!(versions.unchanged(&fresh));
        }
    }

    #[test]
    fn a_stamp_of_a_record_no_decision_reads_never_holds() {
        let versions = Versions::default();
        assert!(!versions.unchanged(&[versions.stamp(&Key::audit_record(1))]));
        assert!(!versions.unchanged(&[]), "no stamps prove nothing");
    }
}
