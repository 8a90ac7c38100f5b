//! Subjects and their data: create a subject, put, merge and delete fields,
//! read one's own fields.
//!
//! Values are checked against the field catalogue, sealed under the
//! subject's DEK outside the commit path, and written in one transaction that
//! re-checks, at commit time, that the subject still exists with the same DEK
//! (an erasure or DEK change in between makes the write fail rather than
//! store a value nobody can open).
//!
//! Every seal is counted per DEK and per KEK in the same batch as the value,
//! so the stored counts never miss an encryption whose result was stored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::clock;
use crate::crypto::{CryptoError, Dek, WrappedDek};
use crate::ids::SubjectId;
use crate::policy::FieldError;
use crate::store::{CommitError, Key, StoreError, Txn};
use crate::vault::Vault;

/// Encryptions allowed under one key before it must be replaced. AES-GCM
/// with random 96-bit nonces stays within NIST SP 800-38D's bound of 2^32
/// invocations per key with a wide margin.
pub const SEALS_PER_KEY_MAX: u64 = 1 << 31;

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
    /// Sealing or opening failed (a corrupt or misplaced ciphertext).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed; the change was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CommitError<DataError>> for DataError {
    fn from(error: CommitError<DataError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// The stored record of a subject: ids and times only.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRecord {
    /// When the subject was created (RFC 3339).
    pub created_at: String,
}

fn dek_counter(subject: &SubjectId, dek_version: u32) -> Key {
    Key::counter(&format!("dek/{subject}/{dek_version}"))
}

fn kek_counter(kek_version: u32) -> Key {
    Key::counter(&format!("kek/{kek_version}"))
}

impl Vault {
    /// Creates a subject with a fresh DEK.
    pub async fn subject_create(&self) -> Result<SubjectId, DataError> {
        let keys = self.keys();
        let subject = SubjectId::random(keys.rng())?;
        let (_, wrapped) = keys.dek_create(subject.as_bytes(), 1)?;
        let record = serde_json::to_vec(&SubjectRecord { created_at: clock::rfc3339(clock::now()) })
            .map_err(|_| StoreError::Corrupt { what: "subject" })?;
        let kek_version = keys.current_version();
        self.store()
            .commit(move |txn| {
                txn.put(Key::subject(subject.as_bytes()), record);
                txn.put(Key::dek(subject.as_bytes()), wrapped.as_bytes().to_vec());
                txn.counter_add(kek_counter(kek_version), 1)?;
                Ok::<_, DataError>(())
            })
            .await?;
        tracing::debug!(%subject, "subject created");
        Ok(subject)
    }

    /// Whether `subject` exists.
    pub fn subject_exists(&self, subject: SubjectId) -> Result<bool, DataError> {
        Ok(self.store().get(&Key::subject(subject.as_bytes()))?.is_some())
    }

    /// The subject's DEK, unwrapped.
    fn dek(&self, subject: SubjectId) -> Result<(Dek, WrappedDek), DataError> {
        let wrapped = self.store().get(&Key::dek(subject.as_bytes()))?.ok_or(DataError::SubjectNotFound)?;
        let wrapped = WrappedDek::from_bytes(wrapped);
        let dek = self.keys().dek_unwrap(subject.as_bytes(), &wrapped)?;
        Ok((dek, wrapped))
    }

    /// Stores one field (replacing any earlier value).
    pub async fn data_put(&self, subject: SubjectId, field: &str, value: &Value) -> Result<(), DataError> {
        let mut values = Map::new();
        values.insert(field.to_owned(), value.clone());
        self.data_merge(subject, &values).await.map(drop)
    }

    /// Stores several fields at once, atomically: either every value is valid
    /// and all are stored, or none is. Returns the field names stored.
    pub async fn data_merge(&self, subject: SubjectId, values: &Map<String, Value>) -> Result<Vec<String>, DataError> {
        let catalogue = &self.policies().catalogue;
        let mut canonical = Vec::with_capacity(values.len());
        for (field, value) in values {
            canonical.push((field.clone(), catalogue.validate(field, value)?));
        }
        let (dek, _) = self.dek(subject)?;
        let dek_version = dek.version();
        let mut sealed = Vec::with_capacity(canonical.len());
        for (field, bytes) in canonical {
            let value = dek.seal(self.keys().rng(), subject.as_bytes(), &field, &bytes)?;
            sealed.push((field, value));
        }
        let fields: Vec<String> = sealed.iter().map(|(field, _)| field.clone()).collect();
        let seal_count = sealed.len() as u64;
        self.store()
            .commit(move |txn| {
                require_dek_version(txn, subject, dek_version)?;
                let total = txn.counter_add(dek_counter(&subject, dek_version), seal_count)?;
                if total > SEALS_PER_KEY_MAX {
                    return Err(DataError::KeyExhausted);
                }
                for (field, value) in sealed {
                    txn.put_sealed(Key::value(subject.as_bytes(), &field), value);
                }
                Ok(())
            })
            .await?;
        tracing::debug!(%subject, fields = ?fields, "data written");
        Ok(fields)
    }

    /// Deletes one field. Returns whether it held a value.
    pub async fn data_delete(&self, subject: SubjectId, field: &str) -> Result<bool, DataError> {
        if self.policies().catalogue.field(field).is_none() {
            return Err(FieldError::Unknown { field: field.chars().take(64).collect() }.into());
        }
        let key = Key::value(subject.as_bytes(), field);
        let existed = self
            .store()
            .commit(move |txn| {
                if !txn.contains(&Key::subject(subject.as_bytes()))? {
                    return Err(DataError::SubjectNotFound);
                }
                let existed = txn.contains(key.key())?;
                txn.delete_value(&key);
                Ok(existed)
            })
            .await?;
        tracing::debug!(%subject, field, existed, "data deleted");
        Ok(existed)
    }

    /// Every field the subject holds, opened. For the subject's own use: a
    /// business never reads through this path.
    pub fn data_read_own(&self, subject: SubjectId) -> Result<BTreeMap<String, Value>, DataError> {
        let (dek, _) = self.dek(subject)?;
        let prefix = Key::values_of(subject.as_bytes());
        let mut data = BTreeMap::new();
        for (key, sealed) in self.store().scan_prefix(&prefix, usize::MAX)? {
            let field = prefix
                .suffix_of(&key)
                .and_then(|name| std::str::from_utf8(name).ok())
                .ok_or(StoreError::Corrupt { what: "value key" })?;
            let plaintext = dek.open(subject.as_bytes(), field, &crate::crypto::Sealed::from_bytes(sealed))?;
            let value: Value =
                serde_json::from_slice(&plaintext).map_err(|_| StoreError::Corrupt { what: "value encoding" })?;
            data.insert(field.to_owned(), value);
        }
        Ok(data)
    }
}

/// Fails unless the subject exists with DEK `version`.
fn require_dek_version(txn: &Txn<'_>, subject: SubjectId, version: u32) -> Result<(), DataError> {
    let wrapped = txn.get(&Key::dek(subject.as_bytes()))?.ok_or(DataError::SubjectNotFound)?;
    if WrappedDek::from_bytes(wrapped).dek_version() == Some(version) {
        Ok(())
    } else {
        // The DEK changed between sealing and commit; the caller retries.
        Err(DataError::Crypto(CryptoError::Open))
    }
}
