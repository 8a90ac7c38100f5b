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
//! transaction, and opens them only with the [`Logged`] proof that the event
//! is on disk (guarantee 2).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::audit::{Actor, Appended, AuditError, AuditEvent, AuditLog, Decision, EventKind, Logged};
use crate::clock;
use crate::crypto::{CryptoError, Dek, KeyRing, Sealed, WRAPPED_DEK_BYTES, WrappedDek};
use crate::ids::SubjectId;
use crate::policy::FieldError;
use crate::store::{CommitError, Key, StoreError, Txn};
use crate::vault::Vault;

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
    /// Sealing or opening failed (a corrupt or misplaced ciphertext).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
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

/// A subject about to be created: see [`Vault::subject_prepare`].
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
        let record = serde_json::to_vec(&SubjectRecord {
            created_at: self.created_at.clone(),
            last_active_at: Some(self.active_at_secs),
            erased_at: None,
            erasure_index: None,
        })
        .map_err(|_| StoreError::Corrupt { what: "subject" })?;
        txn.put(Key::subject(self.id.as_bytes()), record);
        txn.put(Key::subject_activity(self.active_at_secs, self.id.as_bytes()), Vec::new());
        txn.put(Key::dek(self.id.as_bytes()), KeyRecord { wrapped: self.wrapped, seals: 0 }.encode());
        txn.counter_add(kek_counter(kek_version), 1)?;
        let event = AuditEvent::new(EventKind::SubjectCreated, actor.clone(), &self.created_at).subject(self.id);
        Ok(log.append(txn, &event)?)
    }
}

/// The stored record of a subject: ids and times only.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRecord {
    /// When the subject was created (RFC 3339).
    pub created_at: String,
    /// The customer's last activity (Unix seconds, the vault clock): sign-up,
    /// sign-in, a data write or read, a consent change or an export. What the
    /// retention rule measures inactivity from; cleared at erasure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<i64>,
    /// When the subject was erased (RFC 3339); the record stays as a
    /// tombstone so a repeated erasure finds the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<String>,
    /// The audit index of the erasure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure_index: Option<u64>,
}

/// The stored key record of a subject: its wrapped DEK, then the number of
/// values sealed under that DEK (u64, big-endian). Keeping the count beside
/// the key makes the commit-time check and the count one read and one write.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub(crate) wrapped: WrappedDek,
    pub(crate) seals: u64,
}

impl KeyRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = self.wrapped.as_bytes().to_vec();
        bytes.extend_from_slice(&self.seals.to_be_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: Vec<u8>) -> Result<Self, StoreError> {
        let corrupt = StoreError::Corrupt { what: "key record" };
        if bytes.len() != WRAPPED_DEK_BYTES + 8 {
            return Err(corrupt);
        }
        let seals = u64::from_be_bytes(bytes[WRAPPED_DEK_BYTES..].try_into().map_err(|_| corrupt)?);
        let mut wrapped = bytes;
        wrapped.truncate(WRAPPED_DEK_BYTES);
        Ok(Self { wrapped: WrappedDek::from_bytes(wrapped), seals })
    }
}

/// The counter of DEK wraps under KEK `kek_version`.
pub(crate) fn kek_counter(kek_version: u32) -> Key {
    Key::counter(&format!("kek/{kek_version}"))
}

/// One page of the subject directory ([`Vault::subjects_page`]): subjects
/// with their records, and where the next page starts (`None` after the
/// last).
pub(crate) type SubjectsPage = (Vec<(SubjectId, SubjectRecord)>, Option<Key>);

impl Vault {
    /// Up to `page_max` subjects of the directory from `from` on (start at
    /// [`Key::subjects_all`]), in id order, with their records: how passes
    /// over every subject (KEK rotation, the activity backfill) page.
    pub(crate) fn subjects_page(&self, from: &Key, page_max: usize) -> Result<SubjectsPage, StoreError> {
        let prefix = Key::subjects_all();
        let page = self.store().scan_range(from, &Key::from_prefix_end(&prefix), page_max)?;
        let next = match page.last() {
            Some((last, _)) if page.len() == page_max => Some(Key::raw(last.clone()).with_suffix(&[0])),
            _ => None,
        };
        let subjects = page
            .iter()
            .map(|(key, bytes)| {
                let id: [u8; 16] = prefix
                    .suffix_of(key)
                    .and_then(|id| id.try_into().ok())
                    .ok_or(StoreError::Corrupt { what: "subject record id" })?;
                let record =
                    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt { what: "subject record" })?;
                Ok((SubjectId::from_bytes(id), record))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((subjects, next))
    }
}

impl Vault {
    /// Creates a subject with a fresh DEK.
    pub async fn subject_create(&self, actor: &Actor) -> Result<SubjectId, DataError> {
        let new_subject = self.subject_prepare()?;
        let subject = new_subject.id();
        let actor = actor.clone();
        let log = self.audit().clone();
        let (appended, durable) = self.store().commit_durable(move |txn| new_subject.write(txn, &log, &actor)).await?;
        self.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, "subject created");
        self.subject_created();
        Ok(subject)
    }

    /// Work after a subject was created: a rotation starts if its wrap
    /// pushed the current KEK to its limit.
    pub(crate) fn subject_created(&self) {
        if let Some(vault) = self.shared() {
            vault.kek_limit_check();
        }
    }

    /// A new subject id with its wrapped DEK, ready to be written in a
    /// transaction (alone, or with a sign-up).
    pub fn subject_prepare(&self) -> Result<NewSubject, DataError> {
        let keys = self.keys_shared();
        let id = SubjectId::random(keys.rng())?;
        let (dek, wrapped) = keys.dek_create(id.as_bytes(), 1)?;
        Ok(NewSubject {
            id,
            dek,
            wrapped,
            keys,
            created_at: clock::rfc3339(clock::now()),
            active_at_secs: self.clock().now_secs(),
        })
    }

    /// Whether `subject` exists.
    pub fn subject_exists(&self, subject: SubjectId) -> Result<bool, DataError> {
        Ok(self.subject_record(subject)?.is_some_and(|record| record.erased_at.is_none()))
    }

    /// The subject's record (a tombstone once erased).
    pub fn subject_record(&self, subject: SubjectId) -> Result<Option<SubjectRecord>, DataError> {
        self.store()
            .get(&Key::subject(subject.as_bytes()))?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt { what: "subject" }.into()))
            .transpose()
    }

    /// The subject's DEK, unwrapped.
    fn dek(&self, subject: SubjectId) -> Result<Dek, DataError> {
        let unwrap = || -> Result<Dek, DataError> {
            let record = self.store().get(&Key::dek(subject.as_bytes()))?.ok_or(DataError::SubjectNotFound)?;
            Ok(self.keys().dek_unwrap(subject.as_bytes(), &KeyRecord::decode(record)?.wrapped)?)
        };
        match unwrap() {
            // A rotation rewrapped the record and destroyed the old KEK
            // between the read and the unwrap: the record read now is new.
            Err(DataError::Crypto(CryptoError::UnknownKekVersion(_))) => unwrap(),
            outcome => outcome,
        }
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
                Err(DataError::KeyExhausted) if attempts < DEK_ATTEMPTS_MAX => match self.dek_replace(subject).await {
                    Ok(()) | Err(DataError::Crypto(CryptoError::Open)) => {}
                    Err(error) => return Err(error),
                },
                // The DEK changed between sealing and commit (replaced by a
                // concurrent write): seal again under the new one.
                Err(DataError::Crypto(CryptoError::Open)) if attempts < DEK_ATTEMPTS_MAX => {}
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
        let policies = self.policies();
        let catalogue = &policies.catalogue;
        let mut canonical = Vec::with_capacity(values.len());
        for (field, value) in values {
            canonical.push((field.clone(), catalogue.validate(field, value)?));
        }
        let dek = self.dek(subject)?;
        let dek_version = dek.version();
        let mut sealed = Vec::with_capacity(canonical.len());
        for (field, bytes) in canonical {
            let value = dek.seal(self.keys().rng(), subject.as_bytes(), &field, &bytes)?;
            sealed.push((field, value));
        }
        let fields: Vec<String> = sealed.iter().map(|(field, _)| field.clone()).collect();
        let event = AuditEvent::new(EventKind::DataWritten, actor.clone(), &clock::rfc3339(clock::now()))
            .subject(subject)
            .fields(fields.clone());
        let seal_count = sealed.len() as u64;
        let seals_max = self.key_config().limits.dek_seals_max.min(SEALS_PER_KEY_MAX);
        let log = self.audit().clone();
        let now_secs = self.clock().now_secs();
        let (appended, durable) = self
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
        let logged = self.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, fields = ?fields, audit_index = logged.index(), "data written");
        Ok((fields, logged.index()))
    }

    /// Deletes one field. Returns whether it held a value.
    pub async fn data_delete(&self, actor: &Actor, subject: SubjectId, field: &str) -> Result<bool, DataError> {
        if self.policies().catalogue.field(field).is_none() {
            return Err(FieldError::Unknown { field: field.chars().take(64).collect() }.into());
        }
        let key = Key::value(subject.as_bytes(), field);
        let event = AuditEvent::new(EventKind::DataDeleted, actor.clone(), &clock::rfc3339(clock::now()))
            .subject(subject)
            .fields(vec![field.to_owned()]);
        let log = self.audit().clone();
        let now_secs = self.clock().now_secs();
        let ((existed, appended), durable) = self
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
        self.audit().confirm(appended, &durable)?;
        tracing::debug!(%subject, field, existed, "data deleted");
        Ok(existed)
    }

    /// Every field the subject holds, opened, for the subject's own use.
    /// The read is logged (`data.read`, actor the customer) before any value
    /// is opened; if the append fails nothing is returned.
    pub async fn data_read_own(&self, subject: SubjectId) -> Result<BTreeMap<String, Value>, DataError> {
        let now = clock::rfc3339(clock::now());
        let now_secs = self.clock().now_secs();
        let log = self.audit().clone();
        let ((appended, sealed), durable) = self
            .store()
            .commit_durable(move |txn| {
                if !subject_activity_in(txn, subject, now_secs)? {
                    return Err(DataError::SubjectNotFound);
                }
                // The key as this transaction sees it opens what it takes,
                // whatever commits after it (see `release`).
                let key_record = txn.get(&Key::dek(subject.as_bytes()))?;
                let prefix = Key::values_of(subject.as_bytes());
                let mut sealed = Vec::new();
                for (key, bytes) in txn.scan_prefix(&prefix)? {
                    let field = prefix
                        .suffix_of(&key)
                        .and_then(|name| std::str::from_utf8(name).ok())
                        .ok_or(StoreError::Corrupt { what: "value key" })?;
                    sealed.push((field.to_owned(), Sealed::from_bytes(bytes)));
                }
                let mut event = AuditEvent::new(EventKind::DataRead, Actor::customer(subject), &now)
                    .subject(subject)
                    .fields(sealed.iter().map(|(field, _)| field.clone()).collect());
                event.decision = Some(Decision::Allow);
                Ok((log.append(txn, &event)?, SealedRead { key_record, values: sealed }))
            })
            .await?;
        let logged = self.audit().confirm(appended, &durable)?;
        self.release(&logged, subject, sealed)
    }

    /// Opens values taken in a read's transaction, for the reader: needs the
    /// proof that the read's audit event is on disk. The DEK comes from the
    /// key record that same transaction saw, not from the store now: an
    /// erasure (which deletes the key) or a DEK replacement may commit
    /// between the read's commit and this call, and the read, decided and
    /// logged before it, must still open what it took.
    pub(crate) fn release(
        &self,
        logged: &Logged,
        subject: SubjectId,
        sealed: SealedRead,
    ) -> Result<BTreeMap<String, Value>, DataError> {
        if sealed.values.is_empty() {
            return Ok(BTreeMap::new());
        }
        let record = sealed.key_record.ok_or(StoreError::Corrupt { what: "values without a key record" })?;
        let dek = match self.keys().dek_unwrap(subject.as_bytes(), &KeyRecord::decode(record)?.wrapped) {
            // A KEK rotation rewrapped the record and destroyed the KEK it
            // was under since the read's commit: the stored record now holds
            // the same DEK under the new KEK.
            Err(CryptoError::UnknownKekVersion(_)) => self.dek(subject)?,
            outcome => outcome?,
        };
        self.open_released(logged, subject, &dek, sealed.values)
    }

    /// Opens sealed values for a reader. Needs the proof that the read's audit
    /// event is on disk, and opens only the fields that event names.
    fn open_released(
        &self,
        logged: &Logged,
        subject: SubjectId,
        dek: &Dek,
        sealed: Vec<(String, Sealed)>,
    ) -> Result<BTreeMap<String, Value>, DataError> {
        let mut data = BTreeMap::new();
        for (field, value) in sealed {
            if !logged.covers(subject, &field) {
                // The event names exactly the fields taken in its transaction;
                // anything else is a bug, and is refused rather than released.
                return Err(AuditError::NotCovered.into());
            }
            let plaintext = dek.open(subject.as_bytes(), &field, &value)?;
            let value: Value =
                serde_json::from_slice(&plaintext).map_err(|_| StoreError::Corrupt { what: "value encoding" })?;
            data.insert(field, value);
        }
        Ok(data)
    }
}

/// How far a customer's recorded activity may lag the last action: the
/// record moves only when it is this much older, so most requests read it and
/// write nothing. The retention rule counts in days and adds this to its
/// window, so the lag never makes an erasure early.
pub(crate) const ACTIVITY_RESOLUTION_SECS: i64 = 3_600;

/// Whether `subject` exists and is not erased, as `txn` sees it; if so,
/// records the customer's activity at `now_secs` for the retention rule (the
/// record's `last_active_at` and the activity marker move forward, when the
/// recorded time is [`ACTIVITY_RESOLUTION_SECS`] old or more). Every
/// transaction that acts for the customer calls it, so the liveness check
/// and the activity are one read and, at most, three writes.
pub(crate) fn subject_activity_in(txn: &mut Txn<'_>, subject: SubjectId, now_secs: i64) -> Result<bool, StoreError> {
    let key = Key::subject(subject.as_bytes());
    let Some(bytes) = txn.get(&key)? else { return Ok(false) };
    let mut record: SubjectRecord =
        serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt { what: "subject" })?;
    if record.erased_at.is_some() {
        return Ok(false);
    }
    if record.last_active_at.is_some_and(|at| now_secs.saturating_sub(at) < ACTIVITY_RESOLUTION_SECS) {
        return Ok(true);
    }
    if let Some(before) = record.last_active_at {
        txn.delete(&Key::subject_activity(before, subject.as_bytes()));
    }
    txn.put(Key::subject_activity(now_secs, subject.as_bytes()), Vec::new());
    record.last_active_at = Some(now_secs);
    txn.put(key, serde_json::to_vec(&record).map_err(|_| StoreError::Corrupt { what: "subject" })?);
    Ok(true)
}

/// Values taken in a read's transaction, with the subject's key record as
/// the same transaction saw it, for [`Vault::release`].
#[derive(Debug)]
pub(crate) struct SealedRead {
    key_record: Option<Vec<u8>>,
    values: Vec<(String, Sealed)>,
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

/// The subject's key record, if the subject exists with DEK `version`.
fn key_record_with_version(txn: &Txn<'_>, subject: SubjectId, version: u32) -> Result<KeyRecord, DataError> {
    let record = KeyRecord::decode(txn.get(&Key::dek(subject.as_bytes()))?.ok_or(DataError::SubjectNotFound)?)?;
    if record.wrapped.dek_version() == Some(version) {
        Ok(record)
    } else {
        // The DEK changed between sealing and commit; the caller retries.
        Err(DataError::Crypto(CryptoError::Open))
    }
}
