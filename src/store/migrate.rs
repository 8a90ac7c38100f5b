//! Moves a store written in an earlier layout to the current one.
//!
//! Format 1 kept each kind of subject record in a space of its own: the
//! wrapped DEKs under `0x03`, values under `0x04`, access-log markers under
//! `0x13`, relationships, grants, objections and requests under `0x30`,
//! `0x33`, `0x35` and `0x36`, each keyed by the subject id and the record's
//! own key. A scoped read touched six places in the tree, one in each space.
//! Format 2 keeps them side by side under [`Space::SubjectRecords`](super::Space::SubjectRecords): a key of
//! format 1 `space ‖ subject ‖ rest` becomes `0x40 ‖ subject ‖ part ‖ rest`.
//! Values, lengths and every other space are unchanged; audit entries hold
//! ids, not keys, so the log and its proofs are the same bytes.
//!
//! The move runs when a vault opens a format-1 store writable (`serve`, and
//! the `keys` commands on a stopped vault), before the commit path starts,
//! on the engine directly. It goes in batches, each
//! atomic, that write the new keys and delete the old ones together; so a
//! move stopped at any point (a crash, `kill -9`) leaves every record in
//! exactly one of its two places, and the next open goes on where it stopped.
//! The store's format is set to 2 only after every batch is flushed.

use super::{Backend, Key, Part, StoreError, WriteBatch};

/// Format 1's spaces of subject records, and the part of
/// [`Space::SubjectRecords`](super::Space::SubjectRecords) each moves to.
pub const FORMAT_1_SUBJECT_SPACES: [(u8, Part); 7] = [
    (0x03, Part::Key),
    (0x04, Part::Value),
    (0x13, Part::AuditMarker),
    (0x30, Part::Relationship),
    (0x33, Part::Grant),
    (0x35, Part::Objections),
    (0x36, Part::Request),
];

/// Keys moved per atomic batch.
const BATCH_KEYS: usize = 8192;
/// A progress line after this many keys.
const PROGRESS_KEYS: u64 = 1 << 20;

/// The key of format 2 for `key`, a key of format 1 in the space of `part`:
/// `0x40 ‖ subject ‖ part ‖ rest` for `space ‖ subject ‖ rest`.
fn regrouped(key: &[u8], part: Part) -> Result<Vec<u8>, StoreError> {
    let subject: &[u8; 16] = key
        .get(1..17)
        .and_then(|subject| subject.try_into().ok())
        .ok_or(StoreError::Corrupt { what: "format-1 subject record key" })?;
    Ok(Key::of_subject(subject, part, &key[17..]).as_bytes().to_vec())
}

/// Moves every subject record of format 1 to its place in format 2 and
/// flushes; returns how many keys moved (0 if none was left to move).
/// `progress` hears the count now and then, for a store of millions of keys.
pub fn format_1_subject_records_move(backend: &dyn Backend, progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    let mut batch = WriteBatch::new();
    for (space, part) in FORMAT_1_SUBJECT_SPACES {
        let start = [space];
        let end = [space + 1];
        loop {
            // Moved keys are gone from the old space, so every scan starts
            // at its beginning.
            let entries = backend.scan(&start, &end, BATCH_KEYS)?;
            if entries.is_empty() {
                break;
            }
            batch.clear();
            for (key, value) in entries {
                batch.insert(regrouped(&key, part)?, Some(value));
                batch.insert(key, None);
            }
            backend.apply(&batch)?;
            let before = moved;
            moved += (batch.len() / 2) as u64;
            if before / PROGRESS_KEYS != moved / PROGRESS_KEYS {
                progress(moved);
            }
        }
    }
    backend.flush()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::memory::{MemoryBackend, Stopping};

    fn format_1(space: u8, subject: &[u8; 16], rest: &[u8]) -> Vec<u8> {
        [&[space][..], subject, rest].concat()
    }

    #[test]
    fn every_format_1_subject_record_lands_under_the_key_format_2_builds() {
        let backend = MemoryBackend::default();
        let ada = [0xAD; 16];
        let bob = [0x0B; 16];
        let mut batch = WriteBatch::new();
        let records = [
            (format_1(0x03, &ada, b""), Key::dek(&ada)),
            (format_1(0x04, &ada, b"email"), Key::value(&ada, "email").key().clone()),
            (format_1(0x04, &bob, b"phone"), Key::value(&bob, "phone").key().clone()),
            (format_1(0x13, &ada, &7u64.to_be_bytes()), Key::audit_by_subject(&ada, 7)),
            (format_1(0x30, &ada, b"acme"), Key::relationship(&ada, "acme")),
            (format_1(0x33, &ada, b"g1"), Key::grant(&ada, "g1")),
            (format_1(0x35, &bob, b""), Key::objections(&bob)),
            (format_1(0x36, &bob, b"r1"), Key::request(&bob, "r1")),
        ];
        for (n, (old, _)) in records.iter().enumerate() {
            batch.insert(old.clone(), Some(vec![u8::try_from(n).unwrap()]));
        }
        // Other spaces stay where they are.
        batch.insert(Key::subject(&ada).as_bytes().to_vec(), Some(b"record".to_vec()));
        batch.insert(Key::audit_entry_format_2(7).as_bytes().to_vec(), Some(b"entry".to_vec()));
        backend.apply(&batch).unwrap();

        let mut heard = Vec::new();
        assert_eq!(format_1_subject_records_move(&backend, &mut |n| heard.push(n)).unwrap(), 8);
        for (n, (old, new)) in records.iter().enumerate() {
            assert_eq!(backend.get(old).unwrap(), None, "record {n} left behind");
            assert_eq!(backend.get(new.as_bytes()).unwrap(), Some(vec![u8::try_from(n).unwrap()]), "record {n}");
        }
        assert_eq!(backend.get(Key::subject(&ada).as_bytes()).unwrap(), Some(b"record".to_vec()));
        assert_eq!(backend.get(Key::audit_entry_format_2(7).as_bytes()).unwrap(), Some(b"entry".to_vec()));
        assert_eq!(backend.scan(&[0x00], &[0xFF], usize::MAX).unwrap().len(), 10);
        assert!(heard.is_empty());
        // A second run has nothing left to move.
        assert_eq!(format_1_subject_records_move(&backend, &mut |_| {}).unwrap(), 0);
    }

    #[test]
    fn a_move_that_stops_part_way_goes_on_where_it_stopped() {
        let backend = Stopping { inner: MemoryBackend::default(), applies_left: 2.into() };
        let mut batch = WriteBatch::new();
        let subjects: Vec<[u8; 16]> = (0..3 * BATCH_KEYS as u32)
            .map(|n| {
                let mut subject = [0u8; 16];
                subject[..4].copy_from_slice(&n.to_be_bytes());
                subject
            })
            .collect();
        for subject in &subjects {
            batch.insert(format_1(0x04, subject, b"email"), Some(subject.to_vec()));
        }
        backend.apply(&batch).unwrap();
        // The first batch of the move applies, the second fails.
        assert!(format_1_subject_records_move(&backend, &mut |_| {}).is_err());
        backend.applies_left.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let moved = backend.scan(&[0x40], &[0x41], usize::MAX).unwrap().len();
        let left = backend.scan(&[0x04], &[0x05], usize::MAX).unwrap().len();
        assert_eq!((moved, left), (BATCH_KEYS, 2 * BATCH_KEYS));
        assert_eq!(format_1_subject_records_move(&backend, &mut |_| {}).unwrap(), 2 * BATCH_KEYS as u64);
        for subject in &subjects {
            assert_eq!(backend.get(Key::value(subject, "email").key().as_bytes()).unwrap(), Some(subject.to_vec()));
        }
        assert!(backend.scan(&[0x04], &[0x05], usize::MAX).unwrap().is_empty());
    }
}
