//! Subjects and their data: create a subject, put, merge and delete fields,
//! read one's own fields.
//!
//! Values are checked against the field catalogue, sealed under the
//! subject's DEK outside the commit path, and written in one transaction that
//! re-checks, at commit time, that the subject still exists with the same DEK
//! (an erasure or DEK change in between makes the write fail rather than
//! store a value nobody can open).
//!
//! Every seal is counted per DEK (in the subject's key record) and every DEK
//! wrap per KEK, in the same batch as the result, so the stored counts never
//! miss such an encryption whose result was stored. (The KEK's few other
//! seals, the key check and the vault's signing keys, are not counted.)
//!
//! Every change appends its audit event in the same transaction. A read
//! appends a `data.read` event and takes the sealed values in the same
//! transaction, and opens them only with the [`crate::audit::Logged`] proof that the event
//! is on disk (guarantee 2).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::{Actor, Appended, AuditError, AuditEvent, AuditLog, Decision, EventKind};
use crate::core::Core;
use crate::crypto::{CryptoError, Dek, KeyRing, WrappedDek};
use crate::directory::{SubjectRecord, record_encode, subject_activity_in};
use crate::ids::SubjectId;
use crate::keys::{KeyError, KeyRecord, Keys, kek_counter};
use crate::policy::FieldError;
use crate::release::{self, ReleaseError};
use crate::store::{CommitError, Key, StoreError, Txn};

/// Encryptions allowed under one key whatever the configuration says. AES-GCM
/// with random 96-bit nonces stays within NIST SP 800-38D's bound of 2^32
/// invocations per key with a wide margin; the configured limit
/// (`crate::keys::KeyLimits`) replaces a DEK well before.
pub const SEALS_PER_KEY_MAX: u64 = crate::keys::ENCRYPTIONS_PER_KEY_CEILING;

/// Tries of one write when its DEK is replaced under it.
const DEK_ATTEMPTS_MAX: u32 = 4;

/// Errors of the subject-data API. None carries a personal value.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A field is unknown or a value fails its type or size.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The subject does not exist (never did, or was erased).
    #[error("subject not found")]
    SubjectNotFound,
    /// The subject's DEK has sealed as many values as it may; it must be
    /// rotated before more writes.
    #[error("the subject's data key has reached its encryption limit")]
    KeyExhausted,
    /// The subject's DEK changed between sealing and commit (a concurrent
    /// write replaced it); the write is sealed again.
    #[error("the subject's data key changed meanwhile")]
    KeyChanged,
    /// Sealing failed, or a stored key did not open.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Replacing the subject's DEK at its limit failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Values read could not be released.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The store failed; the change was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit append failed; the change was not made and nothing was read.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<CommitError<DataError>> for DataError {
    fn from(error: CommitError<DataError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// A subject about to be created: see [`Subjects::subject_prepare`].
#[derive(Debug)]
pub struct NewSubject {
    id: SubjectId,
    dek: Dek,
    wrapped: WrappedDek,
    keys: Arc<KeyRing>,
    created_at: String,
    /// The vault clock's time at preparation: the first activity.
    active_at_secs: i64,
}

impl NewSubject {
    /// The new subject's id.
    pub fn id(&self) -> SubjectId {
        self.id
    }

    /// Writes the subject record (active since its creation) and key
    /// record, counts the wrap, and appends `subject.created` by `actor`.
    ///
    /// If a KEK rotation started after the DEK was wrapped, the DEK is
    /// rewrapped here under the rotation's version, inside the transaction,
    /// so no DEK under a retiring KEK appears after a rotation pass.
    pub fn write(mut self, txn: &mut Txn<'_>, log: &AuditLog, actor: &Actor) -> Result<Appended, DataError> {
        if let Some(required) = crate::keys::wrap_version_in(txn)?
            && self.wrapped.kek_version() != Some(required)
        {
            self.wrapped = self.keys.dek_wrap_again(required, self.id.as_bytes(), &self.dek)?;
        }
        let kek_version = self.wrapped.kek_version().ok_or(CryptoError::Malformed("wrapped key header"))?;
        let record = record_encode(&SubjectRecord {
            created_at: self.created_at.clone(),
            last_active_at: Some(self.active_at_secs),
            erased_at: None,
            erasure_index: None,
        })?;
        txn.put(Key::subject(self.id.as_bytes()), record);
        txn.put(Key::subject_activity(self.active_at_secs, self.id.as_bytes()), Vec::new());
        txn.put(Key::dek(self.id.as_bytes()), KeyRecord { wrapped: self.wrapped, seals: 0 }.encode());
        txn.counter_add(kek_counter(kek_version), 1)?;
        let event = AuditEvent::new(EventKind::SubjectCreated, actor.clone(), &self.created_at).subject(self.id);
        Ok(log.append(txn, &event)?)
    }
}

/// Subjects and their data, for the subjects themselves. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Subjects {
    core: Arc<Core>,
    keys: Keys,
}

impl Subjects {
    /// The subject service over `core`; `keys` replaces DEKs at their limit.
    pub fn new(core: Arc<Core>, keys: Keys) -> Self {
        Self { core, keys }
    }

    /// Creates a subject with a fresh DEK.
    pub async fn subject_create(&self, actor: &Actor) -> Result<SubjectId, DataError> {
        let new_subject = self.subject_prepare()?;
        let subject = new_subject.id();
        let actor = actor.clone();
        let log = self.core.audit().clone();
        let (appended, durable) =
            self.core.store().commit_durable(move |txn| new_subject.write(txn, &log, &actor)).await?;
        self.core.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, "subject created");
        self.subject_created();
        Ok(subject)
    }

    /// Work after a subject was created: a rotation starts if its wrap
    /// pushed the current KEK to its limit.
    pub(crate) fn subject_created(&self) {
        self.keys.kek_limit_check();
    }

    /// A new subject id with its wrapped DEK, ready to be written in a
    /// transaction (alone, or with a sign-up).
    pub fn subject_prepare(&self) -> Result<NewSubject, DataError> {
        let keys = self.core.keys_shared();
        let id = SubjectId::random(keys.rng())?;
        let (dek, wrapped) = keys.dek_create(id.as_bytes(), 1)?;
        Ok(NewSubject {
            id,
            dek,
            wrapped,
            keys,
            created_at: self.core.clock().rfc3339(),
            active_at_secs: self.core.clock().now_secs(),
        })
    }

    /// Whether `subject` exists.
    pub fn subject_exists(&self, subject: SubjectId) -> Result<bool, DataError> {
        Ok(self.subject_record(subject)?.is_some_and(|record| record.erased_at.is_none()))
    }

    /// The subject's record (a tombstone once erased).
    pub fn subject_record(&self, subject: SubjectId) -> Result<Option<SubjectRecord>, DataError> {
        Ok(crate::directory::subject_record(self.core.store(), subject)?)
    }

    /// The subject's DEK, unwrapped, to seal with.
    fn dek(&self, subject: SubjectId) -> Result<Dek, DataError> {
        crate::keys::dek_stored(&self.core, subject)?.ok_or(DataError::SubjectNotFound)
    }

    /// Stores one field (replacing any earlier value).
    pub async fn data_put(
        &self,
        actor: &Actor,
        subject: SubjectId,
        field: &str,
        value: &Value,
    ) -> Result<u64, DataError> {
        let mut values = Map::new();
        values.insert(field.to_owned(), value.clone());
        self.data_merge(actor, subject, &values).await.map(|(_, index)| index)
    }

    /// Stores several fields at once, atomically: either every value is valid
    /// and all are stored, or none is. Returns the field names stored and the
    /// audit index of the `data.written` event.
    pub async fn data_merge(
        &self,
        actor: &Actor,
        subject: SubjectId,
        values: &Map<String, Value>,
    ) -> Result<(Vec<String>, u64), DataError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.data_merge_once(actor, subject, values).await {
                // The DEK reached its limit: replace it, then write again.
                Err(DataError::KeyExhausted) if attempts < DEK_ATTEMPTS_MAX => {
                    match self.keys.dek_replace(subject).await {
                        Ok(()) | Err(KeyError::KeyChanged) => {}
                        Err(KeyError::NoSubject) => return Err(DataError::SubjectNotFound),
                        Err(error) => return Err(error.into()),
                    }
                }
                // The DEK changed between sealing and commit (replaced by a
                // concurrent write): seal again under the new one.
                Err(DataError::KeyChanged) if attempts < DEK_ATTEMPTS_MAX => {}
                outcome => return outcome,
            }
        }
    }

    async fn data_merge_once(
        &self,
        actor: &Actor,
        subject: SubjectId,
        values: &Map<String, Value>,
    ) -> Result<(Vec<String>, u64), DataError> {
        let policies = self.core.policies();
        let catalogue = &policies.catalogue;
        let mut canonical = Vec::with_capacity(values.len());
        for (field, value) in values {
            canonical.push((field.clone(), catalogue.validate(field, value)?));
        }
        let dek = self.dek(subject)?;
        let dek_version = dek.version();
        let mut sealed = Vec::with_capacity(canonical.len());
        for (field, bytes) in canonical {
            let value = dek.seal(self.core.keys().rng(), subject.as_bytes(), &field, &bytes)?;
            sealed.push((field, value));
        }
        let fields: Vec<String> = sealed.iter().map(|(field, _)| field.clone()).collect();
        let event = AuditEvent::new(EventKind::DataWritten, actor.clone(), &self.core.clock().rfc3339())
            .subject(subject)
            .fields(fields.clone());
        let seal_count = sealed.len() as u64;
        let seals_max = self.keys.config().limits.dek_seals_max.min(SEALS_PER_KEY_MAX);
        let log = self.core.audit().clone();
        let now_secs = self.core.clock().now_secs();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                if !subject_activity_in(txn, subject, now_secs)? {
                    return Err(DataError::SubjectNotFound);
                }
                let mut record = key_record_with_version(txn, subject, dek_version)?;
                record.seals = record.seals.saturating_add(seal_count);
                if record.seals > seals_max {
                    return Err(DataError::KeyExhausted);
                }
                txn.put(Key::dek(subject.as_bytes()), record.encode());
                for (field, value) in sealed {
                    txn.put_sealed(Key::value(subject.as_bytes(), &field), value);
                }
                Ok(log.append(txn, &event)?)
            })
            .await?;
        let logged = self.core.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, fields = ?fields, audit_index = logged.index(), "data written");
        Ok((fields, logged.index()))
    }

    /// Deletes one field. Returns whether it held a value.
    pub async fn data_delete(&self, actor: &Actor, subject: SubjectId, field: &str) -> Result<bool, DataError> {
        if self.core.policies().catalogue.field(field).is_none() {
            return Err(FieldError::Unknown { field: field.chars().take(64).collect() }.into());
        }
        let key = Key::value(subject.as_bytes(), field);
        let event = AuditEvent::new(EventKind::DataDeleted, actor.clone(), &self.core.clock().rfc3339())
            .subject(subject)
            .fields(vec![field.to_owned()]);
        let log = self.core.audit().clone();
        let now_secs = self.core.clock().now_secs();
        let ((existed, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                if !subject_activity_in(txn, subject, now_secs)? {
                    return Err(DataError::SubjectNotFound);
                }
                let existed = txn.contains(key.key())?;
                txn.delete_value(&key);
                Ok((existed, log.append(txn, &event)?))
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, field, existed, "data deleted");
        Ok(existed)
    }

    /// Every field the subject holds, opened, for the subject's own use.
    /// The read is logged (`data.read`, actor the customer) before any value
    /// is opened; if the append fails nothing is returned.
    pub async fn data_read_own(&self, subject: SubjectId) -> Result<BTreeMap<String, Value>, DataError> {
        let now = self.core.clock().rfc3339();
        let now_secs = self.core.clock().now_secs();
        let log = self.core.audit().clone();
        let ((appended, sealed), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                if !subject_activity_in(txn, subject, now_secs)? {
                    return Err(DataError::SubjectNotFound);
                }
                let sealed = release::sealed_all_in(txn, subject)?;
                let mut event = AuditEvent::new(EventKind::DataRead, Actor::customer(subject), &now)
                    .subject(subject)
                    .fields(sealed.names());
                event.decision = Some(Decision::Allow);
                Ok((log.append(txn, &event)?, sealed))
            })
            .await?;
        let logged = self.core.audit().confirm(appended, &durable)?;
        Ok(release::release(&self.core, &logged, subject, sealed)?)
    }
}

/// The subject's key record, if the subject exists with DEK `version`.
fn key_record_with_version(txn: &Txn<'_>, subject: SubjectId, version: u32) -> Result<KeyRecord, DataError> {
    let record = KeyRecord::decode(txn.get(&Key::dek(subject.as_bytes()))?.ok_or(DataError::SubjectNotFound)?)?;
    if record.wrapped.dek_version() == Some(version) {
        Ok(record)
    } else {
        // The DEK changed between sealing and commit; the caller retries.
        Err(DataError::KeyChanged)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::Services;

    #[tokio::test]
    async fn values_reach_the_store_only_sealed_and_the_log_only_by_name() {
        let services = Services::new();
        let subject = services.customer().await;
        let everything = crate::store::Backend::scan(&*services.backend, &[], &[0xFF; 64], usize::MAX).unwrap();
        assert!(everything.len() > 10);
        for (key, value) in everything {
            for plain in [&b"ada@example.org"[..], b"7946 0000"] {
                assert!(!value.windows(plain.len()).any(|w| w == plain), "plaintext under {key:?}");
            }
        }
        let data = services.subjects.data_read_own(subject).await.unwrap();
        assert_eq!(data.get("email"), Some(&serde_json::json!("ada@example.org")));
        let kinds: Vec<_> = services.events().iter().map(|event| (event.kind, event.fields.clone())).collect();
        let fields = vec!["email".to_owned(), "phone".to_owned()];
        assert_eq!(
            &kinds[kinds.len() - 2..],
            [(EventKind::DataWritten, fields.clone()), (EventKind::DataRead, fields)]
        );
    }

    #[tokio::test]
    async fn a_write_sealed_under_a_key_that_changed_is_told_so_not_taken_for_tampering() {
        let services = Services::new();
        let subject = services.customer().await;
        let current = services.core.store().get(&Key::dek(subject.as_bytes())).unwrap().unwrap();
        let current = KeyRecord::decode(current).unwrap().wrapped.dek_version().unwrap();
        let outcome = services
            .core
            .store()
            .commit(move |txn| {
                key_record_with_version(txn, subject, current)?;
                key_record_with_version(txn, subject, current + 1).map(drop)
            })
            .await;
        assert!(matches!(outcome, Err(CommitError::Rejected(DataError::KeyChanged))), "{outcome:?}");
    }

    #[tokio::test]
    async fn an_invalid_value_in_a_merge_changes_nothing() {
        let services = Services::new();
        let subject = services.customer().await;
        let size = services.core.audit().durable_size();
        let values = serde_json::json!({"email": "not an address", "phone": "+44 20 7946 0001"});
        let outcome =
            services.subjects.data_merge(&Actor::customer(subject), subject, values.as_object().unwrap()).await;
        assert!(matches!(outcome, Err(DataError::Field(FieldError::Invalid { .. }))), "{outcome:?}");
        assert_eq!(services.core.audit().durable_size(), size);
        let data = services.subjects.data_read_own(subject).await.unwrap();
        assert_eq!(data.get("phone"), Some(&serde_json::json!("+44 20 7946 0000")));
    }
}
