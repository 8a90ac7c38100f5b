//! The subject directory: one record per subject (ids and times, never a
//! value), paged in id order by passes over every subject, and the liveness
//! check every transaction that acts for a customer makes first.
//!
//! A subject record stays behind erasure as a tombstone (`erased_at`,
//! `erasure_index`), so a repeated erasure finds the first one; its
//! `last_active_at` and the time-ordered activity index are what the
//! retention rule reads.

use crate::ids::SubjectId;
use crate::store::{Key, Store, StoreError, Txn};

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

/// One page of the subject directory ([`subjects_page`]): subjects
/// with their records, and where the next page starts (`None` after the
/// last).
pub(crate) type SubjectsPage = (Vec<(SubjectId, SubjectRecord)>, Option<Key>);

/// Up to `page_max` subjects of the directory from `from` on (start at
/// [`Key::subjects_all`]), in id order, with their records: how passes
/// over every subject (KEK rotation, the activity backfill) page.
pub(crate) fn subjects_page(store: &Store, from: &Key, page_max: usize) -> Result<SubjectsPage, StoreError> {
    let prefix = Key::subjects_all();
    let page = store.scan_range(from, &Key::from_prefix_end(&prefix), page_max)?;
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
            Ok((SubjectId::from_bytes(id), record_decode(bytes)?))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((subjects, next))
}

/// The record of `subject` (a tombstone once erased), as `store` holds it.
pub(crate) fn subject_record(store: &Store, subject: SubjectId) -> Result<Option<SubjectRecord>, StoreError> {
    store.get(&Key::subject(subject.as_bytes()))?.map(|bytes| record_decode(&bytes)).transpose()
}

/// Decodes a stored subject record.
pub(crate) fn record_decode(bytes: &[u8]) -> Result<SubjectRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt { what: "subject" })
}

/// Encodes a subject record for the store.
pub(crate) fn record_encode(record: &SubjectRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|_| StoreError::Corrupt { what: "subject" })
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
    let mut record = record_decode(&bytes)?;
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
    txn.put(key, record_encode(&record)?);
    Ok(true)
}
