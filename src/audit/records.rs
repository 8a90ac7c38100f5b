//! How the log lies in the store (format 3): entries in records of
//! consecutive entries, and the indices of a subject's or a business's
//! entries in groups.
//!
//! A record holds the exact bytes of consecutive entries, each as
//! `length (u32, big-endian) ‖ bytes`, and is keyed by the index of its
//! first entry. The entries one batch appends go into one record (a new one
//! after [`RECORD_ENTRIES_MAX`] entries or [`RECORD_BYTES_MAX`] bytes), so
//! a batch writes one key for all of them instead of one per entry. The
//! entry bytes, and so the tree, proofs and checkpoints, are the same as
//! when each entry had a key of its own (format 2).
//!
//! A group holds indices (u64, big-endian, ascending), keyed by the first
//! index of the record its entries are in: one batch writes one group per
//! subject and per business it logs about. A group with an empty value is a
//! marker of format 2, which names the one index in its key. Groups of one
//! owner never overlap and lie in index order, so the indices from `start`
//! on are in the last group keyed at or before `start` and in the groups
//! after it.
//!
//! A store of format 2 moves to format 3 with [`format_2_move`].

use super::merkle::{self, Frontier, Hash, SubtreeHashes};
use crate::store::{Backend, Key, StoreError, WriteBatch, counter_decode};

/// Entries per record at most.
pub const RECORD_ENTRIES_MAX: u64 = 256;
/// A record is not extended past this many bytes (an entry larger than it
/// gets a record of its own).
pub const RECORD_BYTES_MAX: usize = 32 * 1024;

/// Appends `entry` to the encoded `record`.
pub fn record_push(record: &mut Vec<u8>, entry: &[u8]) {
    // Entries are far below 4 GiB (`EVENT_BYTES_MAX`).
    let length = u32::try_from(entry.len()).unwrap_or(u32::MAX);
    record.extend_from_slice(&length.to_be_bytes());
    record.extend_from_slice(entry);
}

/// The entries of an encoded record, in order; `Err(())` in place of the
/// rest if it is malformed.
fn record_walk(record: &[u8]) -> impl Iterator<Item = Result<&[u8], ()>> {
    let mut rest = Some(record);
    std::iter::from_fn(move || {
        let current = rest.take().filter(|current| !current.is_empty())?;
        let split = current.split_first_chunk::<4>().and_then(|(length, tail)| {
            let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
            (length <= tail.len()).then(|| tail.split_at(length))
        });
        Some(
            split
                .map(|(entry, tail)| {
                    rest = Some(tail);
                    entry
                })
                .ok_or(()),
        )
    })
}

/// The entries of an encoded record, or `None` if it is malformed.
pub fn record_entries(record: &[u8]) -> Option<Vec<&[u8]>> {
    record_walk(record).collect::<Result<_, _>>().ok()
}

/// How many entries an encoded record holds, or `None` if it is malformed.
pub fn record_len(record: &[u8]) -> Option<u64> {
    record_walk(record).try_fold(0u64, |count, entry| entry.ok().map(|_| count + 1))
}

/// The indices of the group keyed by `first` (none below it), or `None`
/// if malformed.
pub fn group_indices(first: u64, group: &[u8]) -> Option<Vec<u64>> {
    if group.is_empty() {
        return Some(vec![first]);
    }
    let (chunks, rest) = group.as_chunks::<8>();
    if !rest.is_empty() {
        return None;
    }
    let indices: Vec<u64> = chunks.iter().map(|chunk| u64::from_be_bytes(*chunk)).collect();
    (indices.first().is_some_and(|&lowest| lowest >= first) && indices.is_sorted()).then_some(indices)
}

/// The index in a key `prefix ‖ index (u64)`.
pub fn key_index(prefix: &Key, key: &[u8]) -> Option<u64> {
    prefix.suffix_of(key).and_then(|suffix| <[u8; 8]>::try_from(suffix).ok()).map(u64::from_be_bytes)
}

/// Subtree hashes as format 2 stores them: every level from 1 up, and the
/// entries by index.
struct Format2Tree<'b>(&'b dyn Backend);

impl SubtreeHashes for Format2Tree<'_> {
    type Error = StoreError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        let corrupt = StoreError::Corrupt { what: "format-2 audit tree" };
        if level == 0 {
            let entry = self.0.get(Key::audit_entry_format_2(index).as_bytes())?.ok_or(corrupt)?;
            return Ok(merkle::leaf_hash(&entry));
        }
        let hash = self.0.get(Key::audit_node(level, index).as_bytes())?;
        hash.and_then(|hash| hash.try_into().ok()).ok_or(corrupt)
    }
}

/// Keys written per atomic batch of the move.
const MOVE_BATCH_KEYS: usize = 8192;

/// Moves the log of a format-2 store to format 3, on the engine directly
/// (before the commit path starts), and flushes; returns how many entries
/// moved. First the log's right edge (its [`Frontier`]) is written, from
/// the format-2 tree; then the entries, oldest first, into records, in
/// atomic batches that write the records and delete the entries' keys
/// together; then the subtree hashes below level
/// [`super::STORED_LEVEL_MIN`] are deleted. A move stopped at any point
/// leaves every entry in exactly one place, and the next one goes on.
/// Markers of format 2 stay: they are groups of one.
pub fn format_2_move(backend: &dyn Backend, progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
    let frontier_key = Key::meta(super::FRONTIER_KEY);
    if backend.get(frontier_key.as_bytes())?.is_none() {
        let size = counter_decode(backend.get(Key::meta(super::SIZE_KEY).as_bytes())?.as_deref())?;
        let frontier = Frontier::of_tree(&Format2Tree(backend), size)?;
        let mut batch = WriteBatch::new();
        batch.insert(frontier_key.as_bytes().to_vec(), Some(frontier.to_bytes()));
        backend.apply(&batch)?;
        backend.flush()?;
    }
    let old = Key::audit_entries_format_2();
    let mut moved = 0u64;
    loop {
        let entries = backend.scan(old.as_bytes(), &old.prefix_end(), MOVE_BATCH_KEYS)?;
        if entries.is_empty() {
            break;
        }
        let mut batch = WriteBatch::new();
        let mut open: Option<(u64, Vec<u8>, u64)> = None;
        for (key, entry) in entries {
            let index = key_index(&old, &key).ok_or(StoreError::Corrupt { what: "format-2 audit entry key" })?;
            let extends = open.as_ref().is_some_and(|(first, record, count)| {
                first + count == index
                    && *count < RECORD_ENTRIES_MAX
                    && record.len() + 4 + entry.len() <= RECORD_BYTES_MAX
            });
            if !extends && let Some((first, record, _)) = open.take() {
                batch.insert(Key::audit_record(first).as_bytes().to_vec(), Some(record));
            }
            let (_, record, count) = open.get_or_insert_with(|| (index, Vec::new(), 0));
            record_push(record, &entry);
            *count += 1;
            batch.insert(key, None);
            moved += 1;
        }
        if let Some((first, record, _)) = open {
            batch.insert(Key::audit_record(first).as_bytes().to_vec(), Some(record));
        }
        backend.apply(&batch)?;
        progress(moved);
    }
    for level in 1..super::STORED_LEVEL_MIN {
        let start = Key::audit_node(level, 0);
        let end = Key::audit_node(level + 1, 0);
        loop {
            let nodes = backend.scan(start.as_bytes(), end.as_bytes(), MOVE_BATCH_KEYS)?;
            if nodes.is_empty() {
                break;
            }
            let batch: WriteBatch = nodes.into_iter().map(|(key, _)| (key, None)).collect();
            backend.apply(&batch)?;
        }
    }
    backend.flush()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::audit::merkle::MemoryTree;
    use crate::store::memory::{MemoryBackend, Stopping};

    /// A log of `size` entries as format 2 stored it: an entry per key,
    /// subtree hashes from level 1, a marker per entry of its subject.
    fn format_2_log(backend: &dyn Backend, size: u64) -> MemoryTree {
        let mut tree = MemoryTree::new();
        let mut batch = WriteBatch::new();
        for index in 0..size {
            let entry = format!("entry {index} {}", "x".repeat((index % 50) as usize * 300)).into_bytes();
            let leaf = merkle::leaf_hash(&entry);
            let completed = merkle::appended_subtrees(index, leaf, |level, at| tree.subtree(level, at)).unwrap();
            for (level, at, hash) in completed.into_iter().filter(|(level, _, _)| *level > 0) {
                batch.insert(Key::audit_node(level, at).as_bytes().to_vec(), Some(hash.to_vec()));
            }
            tree.push(&entry);
            batch.insert(Key::audit_entry_format_2(index).as_bytes().to_vec(), Some(entry));
            batch.insert(Key::audit_by_subject(&[7; 16], index).as_bytes().to_vec(), Some(Vec::new()));
        }
        batch.insert(Key::meta(super::super::SIZE_KEY).as_bytes().to_vec(), Some(size.to_be_bytes().to_vec()));
        backend.apply(&batch).unwrap();
        tree
    }

    #[test]
    fn a_format_2_log_moves_into_records_even_when_stopped_part_way() {
        let size = 3 * MOVE_BATCH_KEYS as u64 + 77;
        let backend = Stopping { inner: MemoryBackend::default(), applies_left: 3.into() };
        let tree = format_2_log(&backend, size);
        // The right edge and the first batch of entries apply, the next fails.
        assert!(format_2_move(&backend, &mut |_| {}).is_err());
        let records_all = Key::audit_records_all();
        let in_records = |backend: &Stopping| {
            let records = backend.scan(records_all.as_bytes(), &records_all.prefix_end(), usize::MAX).unwrap();
            records.iter().map(|(_, record)| record_len(record).unwrap()).sum::<u64>()
        };
        let old = Key::audit_entries_format_2();
        let left =
            |backend: &Stopping| backend.scan(old.as_bytes(), &old.prefix_end(), usize::MAX).unwrap().len() as u64;
        assert_eq!((in_records(&backend), left(&backend)), (MOVE_BATCH_KEYS as u64, size - MOVE_BATCH_KEYS as u64));

        backend.applies_left.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        format_2_move(&backend, &mut |_| {}).unwrap();
        assert_eq!((in_records(&backend), left(&backend)), (size, 0));
        // Records are dense, within their bounds, and hold the same bytes.
        let records = backend.scan(records_all.as_bytes(), &records_all.prefix_end(), usize::MAX).unwrap();
        let mut next = 0;
        for (key, record) in &records {
            assert_eq!(key_index(&records_all, key), Some(next));
            let entries = record_entries(record).unwrap();
            assert!(entries.len() as u64 <= RECORD_ENTRIES_MAX);
            assert!(entries.len() == 1 || record.len() <= RECORD_BYTES_MAX);
            for entry in entries {
                assert_eq!(merkle::leaf_hash(entry), tree.subtree(0, next).unwrap(), "entry {next}");
                next += 1;
            }
        }
        // The right edge gives the tree's root; low subtree hashes are
        // gone, the rest and the markers stay.
        let frontier = backend.get(Key::meta(super::super::FRONTIER_KEY).as_bytes()).unwrap().unwrap();
        assert_eq!(Frontier::of_bytes(size, &frontier).unwrap().root(), tree.root());
        let nodes = backend.scan(&[0x11], &[0x12], usize::MAX).unwrap();
        assert!(nodes.iter().all(|(key, _)| u32::from(key[1]) >= super::super::STORED_LEVEL_MIN));
        assert_eq!(nodes.len() as u64, (4..64).map(|level| size >> level).sum::<u64>());
        let markers = Key::audit_by_subject_all(&[7; 16]);
        assert_eq!(backend.scan(markers.as_bytes(), &markers.prefix_end(), usize::MAX).unwrap().len() as u64, size);
        // A second run has nothing left to move.
        assert_eq!(format_2_move(&backend, &mut |_| {}).unwrap(), 0);
    }

    #[test]
    fn records_hold_entries_of_any_length_and_refuse_truncation() {
        let mut record = Vec::new();
        let entries: [&[u8]; 3] = [b"first", b"", &[7u8; 300]];
        for entry in entries {
            record_push(&mut record, entry);
        }
        assert_eq!(record_entries(&record).unwrap(), entries.to_vec());
        assert_eq!(record_len(&record), Some(3));
        for cut in 1..record.len() {
            let truncated = &record[..cut];
            let whole = record_entries(truncated).map(|found| found.len() as u64);
            assert_eq!(whole, record_len(truncated), "{cut}");
            assert!(whole.is_none_or(|n| n < 3), "a truncated record is not whole: {cut}");
        }
    }

    #[test]
    fn groups_name_their_first_index_and_format_2_markers_are_groups_of_one() {
        assert_eq!(group_indices(9, &[]), Some(vec![9]));
        let group: Vec<u8> = [9u64, 11, 40].iter().flat_map(|i| i.to_be_bytes()).collect();
        assert_eq!(group_indices(9, &group), Some(vec![9, 11, 40]));
        assert_eq!(group_indices(8, &group), Some(vec![9, 11, 40]), "keyed by its record's first index");
        assert_eq!(group_indices(10, &group), None, "an index below its key");
        assert_eq!(group_indices(9, &group[..20]), None, "truncated");
        let unordered: Vec<u8> = [9u64, 7].iter().flat_map(|i| i.to_be_bytes()).collect();
        assert_eq!(group_indices(9, &unordered), None);
    }
}
