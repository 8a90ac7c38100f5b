//! While the store reads cold pages, scoped reads are decided ahead, on
//! committed state off the commit thread, and only their audit append runs
//! on it. That must change nothing that guarantees 2 and 3 promise: every
//! read is logged once, in commit order, and a revocation (or an expiry)
//! that lands while a read is being decided is seen by the read's commit,
//! which then decides again itself.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use consentvault::audit::{AuditEvent, Decision, EventKind};
use consentvault::consent::{ConsentError, GrantRecord, ScopedRead};
use consentvault::ids::{BusinessId, PairwiseId, RelationshipId, SubjectId};
use consentvault::store::memory::MemoryBackend;
use consentvault::store::{Key, Part, Space, StoreStats};
use consentvault::vault::Vault;
use serde_json::json;

struct Setup {
    vault: Arc<Vault>,
    backend: Arc<MemoryBackend>,
    subject: SubjectId,
    business: BusinessId,
    pairwise: PairwiseId,
    relationship_id: RelationshipId,
    grant: GrantRecord,
}

impl Setup {
    /// A vault on an in-memory store: one customer with an email, connected
    /// to a business with a marketing grant for it.
    async fn new() -> Self {
        let backend = Arc::new(MemoryBackend::default());
        let vault = common::memory_vault(backend.clone());
        let (subject, business, relationship) = common::connected_customer(&vault).await;
        let (pairwise, relationship_id) = (relationship.pairwise_id, relationship.relationship_id);
        let grant = vault
            .consent()
            .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 90)
            .await
            .unwrap();
        Self { vault, backend, subject, business, pairwise, relationship_id, grant }
    }

    /// [`Setup::new`] on a store whose reads take 300 µs each, as reads of
    /// pages a disk store has not cached do (each counts as read from disk),
    /// once the vault has noticed.
    async fn cold() -> Self {
        let setup = Self::new().await;
        setup.backend.slow_reads(Duration::from_micros(300));
        assert!(!setup.vault.store().reads_cold(), "nothing has been read from disk yet");
        for _ in 0..40 {
            // The commit thread caches this customer's records, but still
            // reads the log's size and tree from the store.
            let reads: Vec<_> = (0..40).map(|_| tokio::spawn(setup.read())).collect();
            for read in reads {
                assert_eq!(read.await.unwrap().unwrap().data.get("email"), Some(&json!("ada@example.org")));
            }
            if setup.vault.store().reads_cold() {
                return setup;
            }
            // Disk reads are judged over windows of half a second.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("slow reads were never noticed");
    }

    /// Pins the vault clock at the current second.
    fn pin_clock_now(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        self.vault.insecure_pin_clock_secs(Some(i64::try_from(now).unwrap()));
    }

    fn read(&self) -> impl Future<Output = Result<ScopedRead, ConsentError>> + Send + 'static {
        let (vault, business, pairwise) = (Arc::clone(&self.vault), self.business.clone(), self.pairwise.clone());
        async move { vault.consent().scoped_read(&business, &pairwise, "marketing", Some(vec!["email".to_owned()])).await }
    }

    /// A counter of the commit path.
    fn stat(&self, counter: impl Fn(&StoreStats) -> &AtomicU64) -> u64 {
        counter(self.vault.store().stats()).load(Ordering::Relaxed)
    }

    fn event(&self, index: u64) -> AuditEvent {
        let bytes = self.vault.audit().entry(self.vault.store(), index).unwrap().unwrap();
        AuditEvent::from_bytes(&bytes).unwrap()
    }

    /// Starts a read that stops, once decided ahead, at reading the value
    /// it releases; returns when it has got there.
    async fn read_held_at_its_value(&self) -> tokio::task::JoinHandle<Result<ScopedRead, ConsentError>> {
        self.backend.hold_reads_under(Key::values_of(self.subject.as_bytes()).as_bytes());
        let read = tokio::spawn(self.read());
        for _ in 0..500 {
            if self.backend.reads_held() == 1 {
                return read;
            }
            assert!(!read.is_finished(), "the read was not decided ahead");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the read was never decided ahead");
    }
}

/// Whether any of `keys` lies in one of the decision's spaces.
fn touches_decision_records(keys: &[Vec<u8>]) -> bool {
    keys.iter().any(|key| {
        key.first() == Some(&(Space::Pairwise as u8))
            || Part::of(key).is_some_and(|part| Part::DECIDED_ON.contains(&part))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_decided_on_the_commit_thread_while_warm_and_ahead_of_it_while_cold() {
    let setup = Setup::new().await;
    setup.backend.record_commit_thread_reads(true);
    let size_before = setup.vault.audit().durable_size();
    let read = setup.read().await.unwrap();
    assert_eq!(read.data.get("email"), Some(&json!("ada@example.org")));
    assert_eq!(read.audit_index, size_before);
    assert!(touches_decision_records(&setup.backend.commit_thread_reads_take()), "a warm read is decided at commit");
    assert_eq!(setup.stat(|s| &s.lookahead_reads), 1);
    assert_eq!(setup.stat(|s| &s.stamps_held), 0);
    let event = setup.event(read.audit_index);
    assert_eq!((event.kind, event.decision), (EventKind::DataRead, Some(Decision::Allow)));
    setup.backend.record_commit_thread_reads(false);

    // Cold: reads are decided ahead, and read nothing they decide on on the
    // commit thread.
    let setup = Setup::cold().await;
    setup.backend.record_commit_thread_reads(true);
    let size_before = setup.vault.audit().durable_size();
    let (held, at_commit) = (setup.stat(|s| &s.stamps_held), setup.stat(|s| &s.lookahead_reads));
    // The second stands still, so a decision made ahead is kept on its
    // stamps alone (a turned second is the test below, at a grant's edge).
    setup.pin_clock_now();
    for at in size_before..size_before + 8 {
        let read = setup.read().await.unwrap();
        assert_eq!(read.data.get("email"), Some(&json!("ada@example.org")));
        assert_eq!(read.audit_index, at);
        let event = setup.event(read.audit_index);
        assert_eq!((event.kind, event.decision), (EventKind::DataRead, Some(Decision::Allow)));
        let on_commit_thread = setup.backend.commit_thread_reads_take();
        assert!(!touches_decision_records(&on_commit_thread), "the commit thread read {on_commit_thread:?}");
    }
    // Each was decided ahead and kept: none was decided on the commit
    // thread (whose cache would hide a second decision from the backend).
    assert_eq!(setup.stat(|s| &s.stamps_held), held + 8);
    assert_eq!(setup.stat(|s| &s.lookahead_reads), at_commit);
    setup.vault.insecure_pin_clock_secs(None);
}

/// Holds a read decided ahead on a live grant before its commit, makes
/// `change` (which ends what the read relied on), and checks that the read's
/// commit saw it: it decided again, on the commit thread, and logged a
/// denial after the change.
async fn a_change_while_a_read_is_decided_is_seen_by_its_commit(change: impl AsyncFnOnce(&Setup)) {
    let setup = Setup::cold().await;
    let stale = setup.stat(|s| &s.stamps_stale);
    let read = setup.read_held_at_its_value().await;
    change(&setup).await;
    let changed_to = setup.vault.audit().durable_size();
    let at_commit = setup.stat(|s| &s.lookahead_reads);
    setup.backend.release_reads();

    // Nothing is released: no live grant at all, or (after an objection) a
    // live grant whose field is withheld.
    let denied = read.await.unwrap();
    let released_nothing = match &denied {
        Err(ConsentError::NoConsent) => true,
        Ok(read) => read.data.is_empty(),
        Err(_) => false,
    };
    assert!(released_nothing, "a read committed after the change released: {denied:?}");
    assert_eq!(setup.stat(|s| &s.stamps_stale), stale + 1, "the stamps did not catch the change");
    assert_eq!(setup.stat(|s| &s.lookahead_reads), at_commit + 1, "not decided again at commit");
    let logged = setup.event(changed_to);
    assert_eq!((logged.kind, logged.decision), (EventKind::DataRead, Some(Decision::Deny)));
    assert_eq!(setup.vault.audit().durable_size(), changed_to + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_lands_while_a_read_is_decided_is_seen_by_its_commit() {
    a_change_while_a_read_is_decided_is_seen_by_its_commit(async |setup: &Setup| {
        setup.vault.consent().grant_revoke(setup.subject, &setup.grant.grant_id).await.unwrap();
        let revoked = setup.event(setup.vault.audit().durable_size() - 1);
        assert_eq!(revoked.kind, EventKind::GrantRevoked);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objection_that_lands_while_a_read_is_decided_is_seen_by_its_commit() {
    a_change_while_a_read_is_decided_is_seen_by_its_commit(async |setup: &Setup| {
        setup.vault.consent().objections_set(setup.subject, vec!["marketing".to_owned()]).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_that_lands_while_a_read_is_decided_is_seen_by_its_commit() {
    a_change_while_a_read_is_decided_is_seen_by_its_commit(async |setup: &Setup| {
        setup.vault.consent().relationship_end(setup.subject, &setup.relationship_id).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_that_lands_while_a_read_is_decided_is_seen_by_its_commit() {
    a_change_while_a_read_is_decided_is_seen_by_its_commit(async |setup: &Setup| {
        setup.vault.rights().subject_erase(setup.subject).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_decided_in_the_last_second_of_a_grant_and_committed_after_it_is_denied() {
    let setup = Setup::cold().await;
    // The grant's last live second; it expires at `expires_at` (half-open).
    setup.vault.insecure_pin_clock_secs(Some(setup.grant.expires_at - 1));
    let read = setup.read_held_at_its_value().await;
    setup.vault.insecure_pin_clock_secs(Some(setup.grant.expires_at));
    let size_before = setup.vault.audit().durable_size();
    setup.backend.release_reads();

    let denied = read.await.unwrap();
    assert!(matches!(denied, Err(ConsentError::NoConsent)), "an expired grant released data: {denied:?}");
    let logged = setup.event(size_before);
    assert_eq!((logged.kind, logged.decision), (EventKind::DataRead, Some(Decision::Deny)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_cold_store_are_decided_on_blocking_threads_logged_once_and_see_a_revocation() {
    let setup = Setup::cold().await;
    // The second stands still, so each decision made ahead is kept on its
    // stamps alone (a turned second is decided again, as designed).
    setup.pin_clock_now();
    // Many reads at once, each decided on a blocking thread: each is logged
    // once, at its own index.
    setup.backend.record_commit_thread_reads(true);
    let size_before = setup.vault.audit().durable_size();
    let reads: Vec<_> = (0..32).map(|_| tokio::spawn(setup.read())).collect();
    let mut indices = Vec::new();
    for read in reads {
        let read = read.await.unwrap().unwrap();
        assert_eq!(read.data.get("email"), Some(&json!("ada@example.org")));
        indices.push(read.audit_index);
    }
    assert!(setup.vault.store().reads_cold());
    assert!(!touches_decision_records(&setup.backend.commit_thread_reads_take()));
    indices.sort_unstable();
    assert_eq!(indices, (size_before..size_before + 32).collect::<Vec<_>>(), "one audit event per read");
    assert!(setup.stat(|s| &s.stamps_held) >= 32, "the reads were not decided ahead");
    assert_eq!(setup.vault.audit().durable_size(), size_before + 32);

    // A revocation that returned is seen by the next read.
    setup.vault.consent().grant_revoke(setup.subject, &setup.grant.grant_id).await.unwrap();
    let denied = setup.read().await;
    assert!(matches!(denied, Err(ConsentError::NoConsent)), "a read after the revoke was not denied: {denied:?}");
    assert_eq!(setup.vault.audit().durable_size(), size_before + 34, "the revoke and the denied read are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_reads_off_the_commit_thread_do_not_make_the_store_cold() {
    let setup = Setup::new().await;
    setup.backend.slow_reads(Duration::from_micros(300));
    // At least two whole windows (the first look only starts one), at most
    // five seconds.
    for _ in 0..100 {
        if setup.stat(|s| &s.cold_windows_judged) >= 2 {
            break;
        }
        // Another thread reads the store hard (as the log's recomputation
        // at start-up or a backup does), far above the cold threshold...
        for _ in 0..100 {
            setup.vault.consent().objections(setup.subject).unwrap();
        }
        // ... while the commit thread runs batches that read nothing.
        setup.vault.store().commit(|_txn| Ok::<_, ConsentError>(())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Judged, and judged warm: not merely never looked at.
    assert!(setup.stat(|s| &s.cold_windows_judged) >= 2, "the disk reads were never judged");
    assert!(!setup.vault.store().reads_cold(), "the store counted as cold for reads the commit thread never waited on");
    let read = setup.read().await.unwrap();
    assert_eq!(read.data.get("email"), Some(&json!("ada@example.org")));
}
