//! The subject-data library API: create, put, merge, delete, read own; what
//! is refused and that a refusal changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use consentvault::audit::Actor;
use consentvault::crypto::Sealed;
use consentvault::ids::SubjectId;
use consentvault::policy::FieldError;
use consentvault::store::{Key, StoreError};
use consentvault::subjects::DataError;
use serde_json::{Map, Value, json};

fn map(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[tokio::test]
async fn merged_fields_are_read_back_and_replaced_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let stored = vault
        .subjects()
        .data_merge(
            &Actor::customer(subject),
            subject,
            &map(json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"})),
        )
        .await
        .unwrap();
    assert_eq!(stored.0, vec!["email", "phone"]);
    vault
        .subjects()
        .data_put(&Actor::customer(subject), subject, "email", &json!("ada@lovelace.example"))
        .await
        .unwrap();
    let data = vault.subjects().data_read_own(subject).await.unwrap();
    assert_eq!(data.get("email"), Some(&json!("ada@lovelace.example")));
    assert_eq!(data.get("phone"), Some(&json!("+44 20 7946 0000")));
    assert_eq!(data.len(), 2);
}

#[tokio::test]
async fn one_invalid_value_rejects_the_whole_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org")).await.unwrap();
    let error = vault
        .subjects()
        .data_merge(
            &Actor::customer(subject),
            subject,
            &map(json!({"email": "new@example.org", "phone": "not a number"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, DataError::Field(FieldError::Invalid { ref field, .. }) if field == "phone"), "{error}");
    let error = vault
        .subjects()
        .data_merge(&Actor::customer(subject), subject, &map(json!({"email": "new@example.org", "shoe": "red"})))
        .await
        .unwrap_err();
    assert!(matches!(error, DataError::Field(FieldError::Unknown { ref field }) if field == "shoe"), "{error}");
    let data = vault.subjects().data_read_own(subject).await.unwrap();
    assert_eq!(data.get("email"), Some(&json!("ada@example.org")), "a refused merge must change nothing");
    assert_eq!(data.len(), 1);
}

#[tokio::test]
async fn delete_removes_one_field_and_reports_whether_it_existed() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    vault
        .subjects()
        .data_merge(&Actor::customer(subject), subject, &map(json!({"email": "ada@example.org", "country": "GB"})))
        .await
        .unwrap();
    assert!(vault.subjects().data_delete(&Actor::customer(subject), subject, "email").await.unwrap());
    assert!(!vault.subjects().data_delete(&Actor::customer(subject), subject, "email").await.unwrap());
    assert!(matches!(
        vault.subjects().data_delete(&Actor::customer(subject), subject, "nonsense").await,
        Err(DataError::Field(FieldError::Unknown { .. }))
    ));
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap().keys().collect::<Vec<_>>(), vec!["country"]);
}

#[tokio::test]
async fn unknown_subjects_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let stranger = SubjectId::from_bytes([7; 16]);
    assert!(matches!(
        vault.subjects().data_put(&Actor::customer(stranger), stranger, "email", &json!("a@b.org")).await,
        Err(DataError::SubjectNotFound)
    ));
    assert!(matches!(vault.subjects().data_read_own(stranger).await, Err(DataError::SubjectNotFound)));
    assert!(matches!(
        vault.subjects().data_delete(&Actor::customer(stranger), stranger, "email").await,
        Err(DataError::SubjectNotFound)
    ));
    assert!(!vault.subjects().subject_exists(stranger).unwrap());
}

#[tokio::test]
async fn subjects_cannot_read_each_other_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (ada, bob) = {
        let (vault, _) = common::open_vault(dir.path());
        let ada = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        let bob = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        vault.subjects().data_put(&Actor::customer(ada), ada, "email", &json!("ada@example.org")).await.unwrap();
        vault.subjects().data_put(&Actor::customer(bob), bob, "email", &json!("bob@example.org")).await.unwrap();
        vault.close().unwrap();
        (ada, bob)
    };
    let (vault, opened) = common::open_vault(dir.path());
    assert_eq!(opened, consentvault::vault::Opened::Existing);
    // Each reads exactly their own, and nothing of the other's.
    let own = |email: &str| std::collections::BTreeMap::from([("email".to_owned(), json!(email))]);
    assert_eq!(vault.subjects().data_read_own(ada).await.unwrap(), own("ada@example.org"));
    assert_eq!(vault.subjects().data_read_own(bob).await.unwrap(), own("bob@example.org"));
    // Ada's sealed value copied over Bob's does not open as Bob's: the
    // ciphertext is bound to its subject, so Bob's read fails rather than
    // return Ada's value, and changes nothing of Ada's.
    let sealed_email = |subject: SubjectId| {
        let values = vault.store().scan_prefix(&Key::values_of(subject.as_bytes()), usize::MAX).unwrap();
        assert_eq!(values.len(), 1, "one value: the email");
        values.into_iter().next().unwrap().1
    };
    let (ada_sealed, bob_sealed) = (sealed_email(ada), sealed_email(bob));
    assert_ne!(ada_sealed, bob_sealed);
    vault
        .store()
        .commit(move |txn| {
            txn.put_sealed(Key::value(bob.as_bytes(), "email"), Sealed::from_bytes(ada_sealed));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let read = vault.subjects().data_read_own(bob).await;
    assert!(read.is_err(), "Bob's read returned {read:?}");
    assert_eq!(vault.subjects().data_read_own(ada).await.unwrap(), own("ada@example.org"));
}

#[tokio::test]
async fn concurrent_writers_to_one_subject_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(dir.path());
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let fields = ["given_name", "family_name", "email", "phone", "country", "preferred_language"];
    let values =
        [json!("Ada"), json!("Lovelace"), json!("ada@example.org"), json!("+44 1234 5678"), json!("GB"), json!("en")];
    let mut tasks = Vec::new();
    for (field, value) in fields.iter().zip(values.iter()) {
        let vault = vault.clone();
        let (field, value) = (field.to_string(), value.clone());
        tasks.push(tokio::spawn(async move {
            vault.subjects().data_put(&Actor::customer(subject), subject, &field, &value).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap().len(), fields.len());
}
