//! The vault's time never goes backwards: a host clock that steps back (an
//! NTP step, a resumed virtual machine), while serving or across a restart,
//! reopens no revoked or ended grant, and the log's times never go back.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use consentvault::audit::{AuditEvent, Decision, EventKind};
use consentvault::consent::ConsentError;
use consentvault::ids::{BusinessId, PairwiseId, SubjectId};
use consentvault::vault::Vault;

/// A customer with an email, connected to a business.
async fn connected(vault: &Vault) -> (SubjectId, BusinessId, PairwiseId) {
    let (subject, business, relationship) = common::connected_customer(vault).await;
    (subject, business, relationship.pairwise_id)
}

async fn read(vault: &Vault, business: &BusinessId, pairwise: &PairwiseId) -> Result<usize, ConsentError> {
    let read = vault.consent().scoped_read(business, pairwise, "marketing", Some(vec!["email".to_owned()])).await?;
    Ok(read.data.len())
}

/// Every event of the log, in log order.
fn events(vault: &Vault) -> Vec<AuditEvent> {
    (0..vault.audit().durable_size())
        .map(|index| AuditEvent::from_bytes(&vault.audit().entry(vault.store(), index).unwrap().unwrap()).unwrap())
        .collect()
}

/// No allowed read after the revocation of the grant it relied on, and no
/// event earlier in time than the one before it.
fn assert_log_in_order(vault: &Vault, grant_id: &str) {
    let events = events(vault);
    let revoked = events
        .iter()
        .position(|event| event.kind == EventKind::GrantRevoked && event.related.get("grant_id").unwrap() == grant_id)
        .expect("the revocation is logged");
    for event in &events[revoked..] {
        let allowed = event.kind == EventKind::DataRead && event.decision == Some(Decision::Allow);
        assert!(!(allowed && event.business.is_some()), "an allowed business read after the revocation: {event:?}");
    }
    for pair in events.windows(2) {
        assert!(pair[0].time <= pair[1].time, "the log's time went back: {} then {}", pair[0].time, pair[1].time);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_steps_back_after_a_revoke_reopens_nothing_while_serving_or_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (grant_id, business, pairwise, revoked_at) = {
        let (vault, _) = common::open_vault(dir.path());
        let (subject, business, pairwise) = connected(&vault).await;
        let grant = vault
            .consent()
            .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 30)
            .await
            .unwrap();
        assert_eq!(read(&vault, &business, &pairwise).await.unwrap(), 1, "the grant is live");
        let revoked = vault.consent().grant_revoke(subject, &grant.grant_id).await.unwrap();
        let revoked_at = revoked.revoked_at.unwrap();

        // The host clock steps back ten seconds: the revoke still holds.
        vault.insecure_step_clock_secs(-10);
        assert!(vault.core().clock().now_secs() >= revoked_at, "the vault's time went back");
        let denied = read(&vault, &business, &pairwise).await;
        assert!(matches!(denied, Err(ConsentError::NoConsent)), "read after the revoke: {denied:?}");
        assert_log_in_order(&vault, grant.grant_id.as_str());
        vault.close().unwrap();
        (grant.grant_id, business, pairwise, revoked_at)
    };

    // Restarted on a host clock an hour behind: still after the revoke.
    let (vault, _) = common::open_vault(dir.path());
    vault.insecure_step_clock_secs(-3_600);
    assert!(vault.core().clock().now_secs() >= revoked_at, "the vault's time went back across the restart");
    let denied = read(&vault, &business, &pairwise).await;
    assert!(matches!(denied, Err(ConsentError::NoConsent)), "read after the restart: {denied:?}");
    assert_log_in_order(&vault, grant_id.as_str());
    vault.close().unwrap();
    drop(vault);
    let (verified, stdout, stderr) = common::audit_verify(dir.path());
    assert!(verified, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_window_stays_ended_when_the_clock_steps_back() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let vault: Arc<Vault> = vault;
    let (subject, business, pairwise) = connected(&vault).await;
    let grant = vault
        .consent()
        .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 1)
        .await
        .unwrap();
    assert_eq!(read(&vault, &business, &pairwise).await.unwrap(), 1);
    // A day and a second later the window has closed...
    vault.insecure_step_clock_secs(86_401);
    assert!(vault.core().clock().now_secs() >= grant.expires_at);
    assert!(matches!(read(&vault, &business, &pairwise).await, Err(ConsentError::NoConsent)));
    // ... and a step back across its edge does not open it again.
    vault.insecure_step_clock_secs(-86_401);
    assert!(vault.core().clock().now_secs() >= grant.expires_at, "the vault's time went back");
    assert!(matches!(read(&vault, &business, &pairwise).await, Err(ConsentError::NoConsent)));
    vault.close().unwrap();
}
