//! The background sweep, run every [`crate::server::EXPIRY_SWEEP_INTERVAL`]:
//! ended grants get their `grant.expired` event, pending access requests
//! past their time are closed (`access_request.closed`, `cause: expired`),
//! and, when the policies set a retention rule, customers inactive for longer
//! than it allows are erased through the same erasure as `DELETE /v1/me`
//! (`cause: retention`, actor `system`). Customers are told of their
//! grants that end within a week (`grant.expiring`, `contact`).
//!
//! Each part works from an index ordered by time (expiry or last activity),
//! so a sweep reads only what is due, a bounded number at a time, and
//! re-checks every item inside the transaction that changes it.

use std::sync::Arc;

use crate::consent::{Consent, ConsentError};
use crate::contact::Contact;
use crate::core::Core;
use crate::directory::{ACTIVITY_RESOLUTION_SECS, subject_activity_in, subjects_page};
use crate::ids::SubjectId;
use crate::rights::{Erasure, ErasureCause, InactiveCheck, Rights};
use crate::store::{Key, StoreError};

/// The setting that says every subject has an activity record.
const ACTIVITY_BACKFILLED: &str = "activity/backfilled";
/// Seconds in a day.
const DAY_SECS: i64 = 86_400;
/// Subjects the retention rule looks at in one sweep; each erasure is its
/// own transaction.
const RETENTION_SWEEP_MAX: usize = 100;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Grants whose end was recorded.
    pub grants_expired: usize,
    /// Pending access requests closed as expired.
    pub requests_expired: usize,
    /// Customers erased by the retention rule.
    pub subjects_erased: usize,
    /// Grants whose customer was told they end soon.
    pub grants_announced: usize,
}

/// The background sweep over consent (expiries) and rights (retention).
#[derive(Debug, Clone)]
pub struct Sweep {
    core: Arc<Core>,
    consent: Consent,
    rights: Rights,
    contact: Contact,
}

impl Sweep {
    /// The sweep over `core`, closing what `consent` and `rights` keep and
    /// announcing ends through `contact`.
    pub fn new(core: Arc<Core>, consent: Consent, rights: Rights, contact: Contact) -> Self {
        Self { core, consent, rights, contact }
    }

    /// Runs every part of the sweep once. A failing part is logged and does
    /// not stop the others.
    pub async fn sweep(&self) -> Swept {
        let mut swept = Swept::default();
        match self.consent.grants_expire().await {
            Ok(count) => swept.grants_expired = count,
            Err(error) => tracing::error!(%error, "grant expiry sweep failed"),
        }
        match self.consent.requests_expire().await {
            Ok(count) => swept.requests_expired = count,
            Err(error) => tracing::error!(%error, "request expiry sweep failed"),
        }
        match self.retention_sweep().await {
            Ok(count) => swept.subjects_erased = count,
            Err(error) => tracing::error!(%error, "retention sweep failed"),
        }
        match self.contact.expiry_notices().await {
            Ok(count) => swept.grants_announced = count,
            Err(error) => tracing::error!(%error, "grant expiry notices failed"),
        }
        swept
    }

    /// Erases every customer whose last activity is more than the retention
    /// rule's `erase_inactive_after_days` ago (up to a bounded number per
    /// call). Does nothing while the policies set no retention rule. Returns
    /// how many customers it erased.
    pub async fn retention_sweep(&self) -> Result<usize, ConsentError> {
        let Some(rule) = self.core.policies().rules.retention else { return Ok(0) };
        // The recorded activity may lag the last action by up to its
        // resolution: widen the window by as much, so nobody is erased early.
        let inactive_before = self
            .core
            .clock()
            .now_secs()
            .saturating_sub(i64::from(rule.erase_inactive_after_days) * DAY_SECS)
            .saturating_sub(ACTIVITY_RESOLUTION_SECS);
        let start = Key::subject_activities_all();
        let end = Key::subject_activity(inactive_before, &[0u8; 16]);
        let due = self.core.store().scan_range(&start, &end, RETENTION_SWEEP_MAX)?;
        let mut erased = 0;
        for (key, _) in due {
            let (marker_secs, subject) = activity_marker(&start, &key)?;
            let check = InactiveCheck { marker_secs, inactive_before };
            if let Erasure::Done(_) = self.rights.erasure_commit(subject, ErasureCause::Retention, Some(check)).await? {
                erased += 1;
            }
        }
        if erased > 0 {
            tracing::info!(count = erased, "inactive customers erased by the retention rule");
        }
        Ok(erased)
    }

    /// Gives every live subject stored without an activity record (by a
    /// version of the vault before the retention rule) one, as of now, so
    /// the rule measures their inactivity from the first start that knows
    /// it. Pages through the subjects once; a stored flag makes later calls
    /// a single read. Returns how many subjects it gave a record.
    pub async fn activity_backfill(&self) -> Result<usize, ConsentError> {
        const PAGE_MAX: usize = 1_000;
        let done = Key::meta(ACTIVITY_BACKFILLED);
        if self.core.store().get(&done)?.is_some() {
            return Ok(0);
        }
        let mut from = Some(Key::subjects_all());
        let mut filled = 0;
        while let Some(start) = from {
            let (page, next) = subjects_page(self.core.store(), &start, PAGE_MAX)?;
            from = next;
            let missing: Vec<SubjectId> = page
                .into_iter()
                .filter(|(_, record)| record.erased_at.is_none() && record.last_active_at.is_none())
                .map(|(subject, _)| subject)
                .collect();
            filled += missing.len();
            if !missing.is_empty() {
                let now_secs = self.core.clock().now_secs();
                let ((), _) = self
                    .core
                    .store()
                    .commit_durable(move |txn| {
                        for subject in missing {
                            subject_activity_in(txn, subject, now_secs)?;
                        }
                        Ok::<_, ConsentError>(())
                    })
                    .await?;
            }
        }
        self.core
            .store()
            .commit_durable(move |txn| {
                txn.put(done, b"1".to_vec());
                Ok::<_, ConsentError>(())
            })
            .await?;
        if filled > 0 {
            tracing::info!(count = filled, "activity records added to subjects stored before the retention rule");
        }
        Ok(filled)
    }
}

/// The time and subject of an activity marker (time, 8 bytes ‖ subject, 16).
fn activity_marker(prefix: &Key, key: &[u8]) -> Result<(i64, SubjectId), StoreError> {
    let corrupt = StoreError::Corrupt { what: "activity marker" };
    let suffix = prefix.suffix_of(key).ok_or(corrupt.clone())?;
    let time: [u8; 8] = suffix.get(..8).and_then(|bytes| bytes.try_into().ok()).ok_or(corrupt.clone())?;
    let subject: [u8; 16] = suffix.get(8..).and_then(|bytes| bytes.try_into().ok()).ok_or(corrupt)?;
    let secs = i64::try_from(u64::from_be_bytes(time)).unwrap_or(i64::MAX);
    Ok((secs, SubjectId::from_bytes(subject)))
}
