//! Scoped reads on a store whose reads are slow, as a disk store's are when
//! its working set is not cached: the vault notices the slow transactions and
//! warms each read's records off the commit thread first. The warm-up must
//! change nothing that guarantees 2 and 3 promise: every read is decided and
//! logged once, at its commit, and a revocation is seen by the next read.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use consentvault::audit::Actor;
use consentvault::auth::Role;
use consentvault::consent::ConsentError;
use consentvault::crypto::{KeyRing, random_bytes};
use consentvault::store::memory::MemoryBackend;
use consentvault::vault::{Vault, policies_load};
use serde_json::json;
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_warmed_on_a_slow_store_are_decided_and_logged_once_and_see_a_revocation() {
    let backend = Arc::new(MemoryBackend::default());
    let rng = ring::rand::SystemRandom::new();
    let keys = KeyRing::new(vec![(1, Zeroizing::new(random_bytes(&rng).unwrap()))]).unwrap();
    let policies = policies_load(&common::policies_dir()).unwrap();
    let vault = Vault::open_backend(
        "memory".into(),
        keys,
        backend.clone(),
        policies,
        None,
        None,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let business =
        vault.client_create(&Actor::system(), Role::Business, "Acme", vec!["marketing".to_owned()]).await.unwrap();
    let subject = vault.subject_create(&Actor::system()).await.unwrap();
    vault.data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org")).await.unwrap();
    let pairwise = vault.relationship_create(subject, &business.id).await.unwrap().pairwise_id;
    let grant = vault
        .grant_create(subject, &business.id, vec!["marketing".to_owned()], vec!["email".to_owned()], 90)
        .await
        .unwrap();
    let read = |vault: Arc<Vault>| {
        let (business, pairwise) = (business.id.clone(), pairwise.clone());
        async move { vault.scoped_read(&business, &pairwise, "marketing", Some(vec!["email".to_owned()])).await }
    };

    // What one read costs the store while nothing is slow: no warm-up.
    let reads_before = backend.reads();
    read(Arc::clone(&vault)).await.unwrap();
    let reads_unwarmed = backend.reads() - reads_before;

    // Each read of the store now takes 300 µs, so a read's transaction
    // takes more than a millisecond on the commit thread.
    backend.slow_reads(Duration::from_micros(300));
    assert!(!vault.store().transactions_slow(), "nothing has been slow yet");
    let mut warmed = false;
    for _ in 0..20 {
        let reads: Vec<_> = (0..40).map(|_| tokio::spawn(read(Arc::clone(&vault)))).collect();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap().data.get("email"), Some(&json!("ada@example.org")));
        }
        if vault.store().transactions_slow() {
            warmed = true;
            break;
        }
        // The pace is judged over windows of a quarter of a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warmed, "slow transactions were never noticed");

    // From here every read is warmed first: each is still logged once, at
    // its own index, in order.
    let size_before = vault.audit().durable_size();
    let mut indices = Vec::new();
    for _ in 0..10 {
        assert!(vault.store().transactions_slow());
        let reads_before = backend.reads();
        let read = read(Arc::clone(&vault)).await.unwrap();
        // The warm-up reads seven records (pairwise index, grants,
        // objections, relationship, value, key record, subject index); the
        // transaction's own reads vary by a few audit tree nodes.
        let reads = backend.reads() - reads_before;
        assert!(reads >= reads_unwarmed + 6, "the read was not warmed first: {reads} reads, {reads_unwarmed} unwarmed");
        assert_eq!(read.data.get("email"), Some(&json!("ada@example.org")));
        indices.push(read.audit_index);
    }
    assert_eq!(indices, (size_before..size_before + 10).collect::<Vec<_>>(), "one audit event per read");
    assert_eq!(vault.audit().durable_size(), size_before + 10);

    // A revocation that returned is seen by the next read, warmed or not.
    vault.grant_revoke(subject, &grant.grant_id).await.unwrap();
    assert!(vault.store().transactions_slow());
    let denied = read(Arc::clone(&vault)).await;
    assert!(matches!(denied, Err(ConsentError::NoConsent)), "a read after the revoke was not denied: {denied:?}");
    assert_eq!(vault.audit().durable_size(), size_before + 12, "the revoke and the denied read are logged");
}
