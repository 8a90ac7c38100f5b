//! The one place plaintext leaves the vault's keeping.
//!
//! A read takes sealed values in its commit transaction (`sealed_in`,
//! `sealed_all_in`) together with the subject's key record as that
//! transaction saw it, and appends the read's audit event in the same
//! transaction. `release` opens the values only with the [`Logged`] proof
//! that this event is on disk, and only the fields the event names.
//!
//! **Architecture Invariant:** this module is the only caller of
//! [`Dek::open`](crate::crypto::Dek::open) for a value that leaves the process (clippy's
//! `disallowed_methods` refuses it elsewhere; `clippy.toml`). Resealing for a
//! DEK replacement or a KEK rotation happens inside `crypto` and never hands
//! plaintext to its caller.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::audit::Logged;
use crate::core::Core;
use crate::crypto::{CryptoError, Sealed, message_label};
use crate::ids::SubjectId;
use crate::keys::{KeyError, dek_of_record, dek_stored};
use crate::store::{Key, StoreError, Txn};

/// Why values taken by a logged read could not be released. None carries a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A value names a field its read's event does not: a bug, refused
    /// rather than released.
    #[error("a value is not covered by its read's audit event")]
    NotCovered,
    /// A value or the key record failed to open (a corrupt or misplaced
    /// ciphertext).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed, or holds a record this build cannot read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The subject's key record could not be read or unwrapped.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Values taken in a read's transaction, by name (a field's, for
/// [`release`]; a message's id, for [`release_messages`]), with the
/// subject's key record as the same transaction saw it.
#[derive(Debug)]
pub(crate) struct SealedRead {
    key_record: Option<Vec<u8>>,
    values: Vec<(String, Sealed)>,
}

impl SealedRead {
    /// The names taken, in order: fields, or message ids.
    pub(crate) fn names(&self) -> Vec<String> {
        self.values.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// The sealed values of `fields` that `subject` holds, and its key record,
/// as `txn` sees them.
pub(crate) fn sealed_in(txn: &Txn<'_>, subject: SubjectId, fields: &[String]) -> Result<SealedRead, StoreError> {
    let mut values = Vec::new();
    for field in fields {
        if let Some(bytes) = txn.get(Key::value(subject.as_bytes(), field).key())? {
            values.push((field.clone(), Sealed::from_bytes(bytes)));
        }
    }
    let key_record = if values.is_empty() { None } else { txn.get(&Key::dek(subject.as_bytes()))? };
    Ok(SealedRead { key_record, values })
}

/// Every sealed value `subject` holds, and its key record, as `txn` sees
/// them.
pub(crate) fn sealed_all_in(txn: &Txn<'_>, subject: SubjectId) -> Result<SealedRead, StoreError> {
    // The key as this transaction sees it opens what it takes, whatever
    // commits after it (see `release`).
    let key_record = txn.get(&Key::dek(subject.as_bytes()))?;
    let prefix = Key::values_of(subject.as_bytes());
    let mut values = Vec::new();
    for (key, bytes) in txn.scan_prefix(&prefix)? {
        let field = prefix
            .suffix_of(&key)
            .and_then(|name| std::str::from_utf8(name).ok())
            .ok_or(StoreError::Corrupt { what: "value key" })?;
        values.push((field.to_owned(), Sealed::from_bytes(bytes)));
    }
    Ok(SealedRead { key_record, values })
}

/// Opens values taken in a read's transaction, for the reader: needs the
/// proof that the read's audit event is on disk, and opens only the fields
/// that event names. The DEK comes from the key record that same transaction
/// saw, not from the store now: an erasure (which deletes the key) or a DEK
/// replacement may commit between the read's commit and this call, and the
/// read, decided and logged before it, must still open what it took.
pub(crate) fn release(
    core: &Core,
    logged: &Logged,
    subject: SubjectId,
    sealed: SealedRead,
) -> Result<BTreeMap<String, Value>, ReleaseError> {
    open_all(core, subject, sealed, |field| logged.covers(subject, field), str::to_owned, "value encoding")
}

/// Opens every value of `sealed` that `covered` allows (a value it does
/// not is a bug, refused rather than released), each under the AAD name
/// `label` gives it, and decodes its JSON.
fn open_all(
    core: &Core,
    subject: SubjectId,
    sealed: SealedRead,
    covered: impl Fn(&str) -> bool,
    label: impl Fn(&str) -> String,
    what: &'static str,
) -> Result<BTreeMap<String, Value>, ReleaseError> {
    if sealed.values.is_empty() {
        return Ok(BTreeMap::new());
    }
    let dek = dek_of_read(core, subject, sealed.key_record)?;
    let mut opened = BTreeMap::new();
    for (name, value) in sealed.values {
        if !covered(&name) {
            // The event names exactly what was taken in its transaction;
            // anything else is a bug, and is refused rather than released.
            return Err(ReleaseError::NotCovered);
        }
        #[allow(clippy::disallowed_methods)] // The release itself.
        let plaintext = dek.open(subject.as_bytes(), &label(&name), &value)?;
        let value: Value = serde_json::from_slice(&plaintext).map_err(|_| StoreError::Corrupt { what })?;
        opened.insert(name, value);
    }
    Ok(opened)
}

/// The DEK a read's key record holds.
fn dek_of_read(core: &Core, subject: SubjectId, record: Option<Vec<u8>>) -> Result<crate::crypto::Dek, ReleaseError> {
    let record = record.ok_or(StoreError::Corrupt { what: "values without a key record" })?;
    Ok(match dek_of_record(core.keys(), subject, record) {
        // A KEK rotation rewrapped the record and destroyed the KEK it was
        // under since the read's commit: the stored record now holds the
        // same DEK under the new KEK.
        Err(KeyError::Crypto(CryptoError::UnknownKekVersion(_))) => {
            dek_stored(core, subject)?.ok_or(StoreError::Corrupt { what: "values without a key record" })?
        }
        outcome => outcome?,
    })
}

/// The sealed texts of `messages` in `subject`'s inbox (those that have
/// one), and its key record, as `txn` sees them.
pub(crate) fn sealed_messages_in(
    txn: &Txn<'_>,
    subject: SubjectId,
    messages: &[String],
) -> Result<SealedRead, StoreError> {
    let mut texts = Vec::new();
    for message in messages {
        if let Some(bytes) = txn.get(Key::message_text(subject.as_bytes(), message).key())? {
            texts.push((message.clone(), Sealed::from_bytes(bytes)));
        }
    }
    let key_record = if texts.is_empty() { None } else { txn.get(&Key::dek(subject.as_bytes()))? };
    Ok(SealedRead { key_record, values: texts })
}

/// Opens message texts taken in a read's transaction, for the reader (the
/// customer, or the business she wrote to): needs the proof that the
/// read's `message.read` event is on disk, and opens only the messages it
/// names. Each text is the JSON document it was sealed as.
pub(crate) fn release_messages(
    core: &Core,
    logged: &Logged,
    subject: SubjectId,
    sealed: SealedRead,
) -> Result<BTreeMap<String, Value>, ReleaseError> {
    open_all(
        core,
        subject,
        sealed,
        |message| logged.covers_message(subject, message),
        message_label,
        "message encoding",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::{Actor, AuditEvent, Decision, EventKind};
    use crate::store::StoreError;
    use crate::testing::Services;

    /// Takes `taken` of the customer's values in one transaction whose
    /// `data.read` event names `named`, and returns what the release gives.
    async fn read(
        services: &Services,
        subject: SubjectId,
        taken: &[&str],
        named: &[&str],
    ) -> Result<BTreeMap<String, Value>, ReleaseError> {
        let taken: Vec<String> = taken.iter().map(|f| f.to_string()).collect();
        let named: Vec<String> = named.iter().map(|f| f.to_string()).collect();
        let log = services.core.audit().clone();
        let ((appended, sealed), durable) = services
            .core
            .store()
            .commit_durable(move |txn| {
                let sealed = sealed_in(txn, subject, &taken)?;
                let mut event = AuditEvent::new(EventKind::DataRead, Actor::customer(subject), "2026-12-01T00:00:00Z")
                    .subject(subject)
                    .fields(named);
                event.decision = Some(Decision::Allow);
                let appended = log.append(txn, &event).map_err(|_| StoreError::Corrupt { what: "append" })?;
                Ok::<_, StoreError>((appended, sealed))
            })
            .await
            .unwrap();
        let logged = services.core.audit().confirm(appended, &durable).unwrap();
        release(&services.core, &logged, subject, sealed)
    }

    #[tokio::test]
    async fn a_logged_read_releases_exactly_the_fields_its_event_names() {
        let services = Services::new();
        let subject = services.customer().await;
        let data = read(&services, subject, &["email"], &["email"]).await.unwrap();
        assert_eq!(data, BTreeMap::from([("email".to_owned(), serde_json::json!("ada@example.org"))]));
    }

    #[tokio::test]
    async fn a_value_its_event_does_not_name_is_refused_not_released() {
        let services = Services::new();
        let subject = services.customer().await;
        let outcome = read(&services, subject, &["email", "phone"], &["email"]).await;
        assert!(matches!(outcome, Err(ReleaseError::NotCovered)), "{outcome:?}");
    }

    #[tokio::test]
    async fn another_subjects_read_does_not_open_a_value() {
        let services = Services::new();
        let (ada, bob) = (services.customer().await, services.customer().await);
        // Bob's proof over Ada's sealed email: the values do not open under
        // Bob's key (the AAD binds each to its subject), and the proof does
        // not cover Ada.
        let log = services.core.audit().clone();
        let ((appended, sealed), durable) = services
            .core
            .store()
            .commit_durable(move |txn| {
                let sealed = sealed_in(txn, ada, &["email".to_owned()])?;
                let event = AuditEvent::new(EventKind::DataRead, Actor::customer(bob), "2026-12-01T00:00:00Z")
                    .subject(bob)
                    .fields(vec!["email".to_owned()]);
                let appended = log.append(txn, &event).map_err(|_| StoreError::Corrupt { what: "append" })?;
                Ok::<_, StoreError>((appended, sealed))
            })
            .await
            .unwrap();
        let logged = services.core.audit().confirm(appended, &durable).unwrap();
        assert!(release(&services.core, &logged, bob, sealed).is_err());
    }
}
