//! Guarantee 2, fail closed: when the audit append or the flush that carries
//! it fails, a read returns an error and no data, and a write is not
//! acknowledged. The vault runs over an in-memory backend with injected
//! faults, and recovers when the fault clears.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use consentvault::audit::Actor;
use consentvault::store::Key;
use consentvault::store::memory::MemoryBackend;
use consentvault::subjects::DataError;
use serde_json::json;

fn durable_audit_size(backend: &MemoryBackend) -> u64 {
    backend.durable(&Key::meta("audit/size")).map(|b| u64::from_be_bytes(b.try_into().unwrap())).unwrap_or(0)
}

#[tokio::test]
async fn a_failed_flush_releases_no_data_and_acknowledges_no_write() {
    let backend = Arc::new(MemoryBackend::default());
    let vault = common::memory_vault(backend.clone());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let actor = Actor::customer(subject);
    vault.subjects().data_put(&actor, subject, "email", &json!("ada@example.org")).await.unwrap();
    let size_before = durable_audit_size(&backend);

    backend.fail_flushes(true);
    let read = vault.subjects().data_read_own(subject).await;
    assert!(matches!(read, Err(DataError::Store(_))), "a read whose audit event is not durable must fail: {read:?}");
    let write = vault.subjects().data_put(&actor, subject, "phone", &json!("+44 20 7946 0000")).await;
    assert!(matches!(write, Err(DataError::Store(_))), "a write that is not durable must not be acknowledged");
    assert_eq!(backend.durable_value(&Key::value(subject.as_bytes(), "phone")), None);
    assert_eq!(durable_audit_size(&backend), size_before, "no event reached the durable state");
    assert!(!vault.readiness().is_ready(), "a vault that cannot flush is not ready");

    // The checkpoint served is still the last one on disk.
    let served = vault.audit().checkpoint_latest().unwrap();
    assert!(
        served.lines().nth(1).unwrap().parse::<u64>().unwrap() <= size_before,
        "a checkpoint that is not durable was served:\n{served}"
    );

    // After a failed sync nothing written since the last good one is
    // trusted until the store has recovered (it tries twice a second); then
    // it serves again, by itself.
    backend.fail_flushes(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !vault.readiness().is_ready() {
        assert!(std::time::Instant::now() < deadline, "the vault did not recover once flushes succeed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let data = vault.subjects().data_read_own(subject).await.unwrap();
    assert_eq!(data.get("email"), Some(&json!("ada@example.org")));
}

#[tokio::test]
async fn a_failed_audit_append_releases_no_data_and_changes_nothing() {
    let backend = Arc::new(MemoryBackend::default());
    let vault = common::memory_vault(backend.clone());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let actor = Actor::customer(subject);
    vault.subjects().data_put(&actor, subject, "email", &json!("ada@example.org")).await.unwrap();
    let size_before = durable_audit_size(&backend);

    // The append reads the log size first; make exactly that read fail.
    backend.fail_reads_under(Some(Key::meta("audit/size").as_bytes()));
    let read = vault.subjects().data_read_own(subject).await;
    assert!(matches!(read, Err(DataError::Audit(_))), "{read:?}");
    let write = vault.subjects().data_put(&actor, subject, "email", &json!("changed@example.org")).await;
    assert!(matches!(write, Err(DataError::Audit(_))), "{write:?}");
    let delete = vault.subjects().data_delete(&actor, subject, "email").await;
    assert!(matches!(delete, Err(DataError::Audit(_))), "{delete:?}");
    backend.fail_reads_under(None);

    assert_eq!(durable_audit_size(&backend), size_before);
    let data = vault.subjects().data_read_own(subject).await.unwrap();
    assert_eq!(data.get("email"), Some(&json!("ada@example.org")), "the refused write and delete changed nothing");
}

#[tokio::test]
async fn a_failed_apply_acknowledges_nothing_and_the_vault_recovers() {
    let backend = Arc::new(MemoryBackend::default());
    let vault = common::memory_vault(backend.clone());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    backend.fail_applies(true);
    let write = vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org")).await;
    assert!(matches!(write, Err(DataError::Store(_))));
    assert!(matches!(vault.subjects().data_read_own(subject).await, Err(DataError::Store(_))));
    backend.fail_applies(false);
    assert!(vault.subjects().data_read_own(subject).await.unwrap().is_empty());
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org")).await.unwrap();
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap().len(), 1);
}
