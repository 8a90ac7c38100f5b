//! Full verification of a stored log, offline or at start-up.
//!
//! Recomputes the Merkle tree from the stored entry bytes in one pass
//! (keeping only the right edge, at most 64 hashes), and checks: every index
//! from 0 to the stored size is present and nothing lies beyond it; the
//! stored right edge (format 3) is the recomputed one; every
//! stored checkpoint is signed by the log's key, names the log's origin, and
//! its root equals the recomputed root at its size. At [`Depth::Full`] it
//! also checks that every entry is a canonical event and every stored
//! subtree hash equals the recomputed one. The first failure is reported
//! with the first index it implicates.
//!
//! It reads the entries of format 3 (records, [`super::records`]) and of
//! format 2 (a key per entry), and a store between the two, whose oldest
//! entries are in records and the rest not moved yet; so offline tools
//! verify a store of either format without changing it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::AuditEvent;
use super::checkpoint::NoteVerifier;
use super::merkle::{self, Frontier, Hash};
use super::records;
use crate::store::{Key, Store, counter_decode};

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries in the log.
    pub size: u64,
    /// Root hash over all of them.
    pub root: Hash,
    /// Checkpoints checked.
    pub checkpoints: usize,
}

/// Why a log did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}{}", .first_bad_index.map(|i| format!(" (first bad index {i})")).unwrap_or_default())]
pub struct VerifyFailure {
    /// The first entry index implicated, where one can be named.
    pub first_bad_index: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

fn failure(first_bad_index: Option<u64>, problem: impl Into<String>) -> VerifyFailure {
    VerifyFailure { first_bad_index, problem: problem.into() }
}

/// The problem reported when verification was asked to stop early.
pub const STOPPED: &str = "verification stopped before the end of the log";

/// How much [`verify_log`] checks for every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Recompute the tree and check every checkpoint root: enough to detect
    /// any change to the entries, fast enough for every start-up. On a
    /// mismatch a [`Depth::Full`] pass runs to name the first bad index.
    Roots,
    /// Also parse every entry as a canonical event and compare every stored
    /// subtree hash (`consentvault audit verify`).
    Full,
}

/// A `visit` for [`verify_log`] that tells `progress` how many entries are
/// checked: it hears of each completed leaf (level 0) by its index.
pub fn entries_counted(progress: &dyn Fn(u64)) -> impl Fn(u32, u64, &Hash) + '_ {
    move |level, at, _| {
        if level == 0 {
            progress(at + 1);
        }
    }
}

/// Verifies the whole log in `store` against `verifier` and `origin`.
/// `live` is for a vault that is serving (and appending) while this runs: it
/// verifies up to the latest checkpoint read at the start. `visit` sees
/// every complete subtree hash recomputed from the entries (the vault fills
/// its node cache from it).
pub fn verify_log(
    store: &Store,
    verifier: &NoteVerifier,
    origin: &str,
    depth: Depth,
    live: bool,
    visit: &dyn Fn(u32, u64, &Hash),
    stop: &AtomicBool,
) -> Result<Verified, VerifyFailure> {
    match verify_pass(store, verifier, origin, depth, live, visit, stop) {
        Err(failure) if failure.first_bad_index.is_none() && depth == Depth::Roots => {
            // Pinpoint the damage; if the full pass finds nothing more
            // precise, report what the fast pass found.
            let full = verify_pass(store, verifier, origin, Depth::Full, live, &|_, _, _| {}, stop);
            Err(full.err().filter(|f| f.first_bad_index.is_some()).unwrap_or(failure))
        }
        other => other,
    }
}

/// Every stored checkpoint, by size, after checking its signature and origin.
fn checkpoints_load(
    store: &Store,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<BTreeMap<u64, Hash>, VerifyFailure> {
    let mut checkpoints = BTreeMap::new();
    let mut notes = store.scan_prefix(&Key::audit_checkpoints_all(), usize::MAX).map_err(io)?;
    // The latest checkpoint, stored apart from the history; its key is made
    // to look like a history entry of its own size.
    if let Some(latest) = store.get(&Key::meta(super::LATEST_NOTE_KEY)).map_err(io)? {
        let text = String::from_utf8(latest.clone()).map_err(|_| failure(None, "the latest checkpoint is not text"))?;
        let checkpoint = verifier
            .open_checkpoint(&text, origin)
            .map_err(|error| failure(None, format!("the latest checkpoint does not verify: {error}")))?;
        notes.push((Key::audit_checkpoint(checkpoint.tree_size).as_bytes().to_vec(), latest));
    }
    for (key, note) in notes {
        let text = String::from_utf8(note).map_err(|_| failure(None, "a stored checkpoint is not text"))?;
        let checkpoint = verifier
            .open_checkpoint(&text, origin)
            .map_err(|error| failure(None, format!("a stored checkpoint does not verify: {error}")))?;
        let key_size = Key::audit_checkpoints_all().suffix_of(&key).and_then(|s| <[u8; 8]>::try_from(s).ok());
        if key_size.map(u64::from_be_bytes) != Some(checkpoint.tree_size) {
            return Err(failure(
                None,
                format!("checkpoint of size {} is stored under another size", checkpoint.tree_size),
            ));
        }
        checkpoints.insert(checkpoint.tree_size, checkpoint.root);
    }
    Ok(checkpoints)
}

/// The quick start-up check, O(log n) reads: the latest checkpoint is
/// signed by the log's key, covers exactly the stored log, and its root
/// equals the root computed from the stored subtree hashes. It catches
/// entries added or removed behind the vault's back and rewritten subtree
/// hashes; edits of entry bytes need the full recomputation of
/// [`verify_log`]. A rollback that also rolls back the checkpoints is only
/// visible to someone holding a later checkpoint (`docs/AUDIT.md`).
pub fn verify_latest(
    store: &Store,
    verifier: &NoteVerifier,
    origin: &str,
    root_at: &dyn Fn(u64) -> Result<Hash, super::AuditError>,
) -> Result<(), VerifyFailure> {
    let size = counter_decode(store.get(&Key::meta(super::SIZE_KEY)).map_err(io)?.as_deref())
        .map_err(|_| failure(None, "stored log size is corrupt"))?;
    let Some(note) = store.get(&Key::meta(super::LATEST_NOTE_KEY)).map_err(io)? else {
        return if size == 0 { Ok(()) } else { Err(failure(Some(0), "the log has entries but no checkpoint")) };
    };
    let text = String::from_utf8(note).map_err(|_| failure(None, "a stored checkpoint is not text"))?;
    let checkpoint = verifier
        .open_checkpoint(&text, origin)
        .map_err(|error| failure(None, format!("the latest checkpoint does not verify: {error}")))?;
    size_matches_checkpoint(size, Some(checkpoint.tree_size), false)?;
    // The last record ends exactly at the size.
    let all = Key::audit_records_all();
    let stored_end = match store.last_in(&all, &Key::from_prefix_end(&all)).map_err(io)? {
        None => 0,
        Some((key, record)) => {
            let first = records::key_index(&all, &key).ok_or_else(|| failure(None, "a record key is malformed"))?;
            let count = records::record_len(&record)
                .ok_or_else(|| failure(Some(first), format!("the record of entries from {first} is malformed")))?;
            first + count
        }
    };
    if stored_end > size {
        return Err(failure(Some(size), format!("entry {size} lies beyond the log size {size}")));
    }
    if stored_end < size {
        return Err(failure(Some(stored_end), format!("entry {stored_end} is missing")));
    }
    let frontier = match store.get(&Key::meta(super::FRONTIER_KEY)).map_err(io)? {
        Some(bytes) => Frontier::of_bytes(size, &bytes),
        None => (size == 0).then(Frontier::default),
    };
    if frontier.is_none_or(|frontier| frontier.root() != checkpoint.root) {
        return Err(failure(None, "the stored right edge of the tree does not match the latest checkpoint"));
    }
    let root = root_at(checkpoint.tree_size)
        .map_err(|error| failure(None, format!("the stored tree cannot be read: {error}")))?;
    if root != checkpoint.root {
        return Err(failure(
            None,
            format!("the checkpoint of size {} does not match the stored tree", checkpoint.tree_size),
        ));
    }
    Ok(())
}

/// The stored log `size` against the latest checkpoint's size (`None`: no
/// checkpoint). Every batch that appends signs a checkpoint in the same
/// write, so a log at rest ends exactly at its latest checkpoint; a `live`
/// vault may have appended since the checkpoint was read.
fn size_matches_checkpoint(size: u64, covered: Option<u64>, live: bool) -> Result<(), VerifyFailure> {
    match covered {
        Some(covered) if covered > size => Err(failure(
            Some(size),
            format!("the log has {size} entries but a checkpoint covers {covered}: entries were removed"),
        )),
        Some(covered) if covered < size && !live => Err(failure(
            Some(covered),
            format!("the log has {size} entries but its latest checkpoint covers {covered}"),
        )),
        None if size > 0 && !live => Err(failure(Some(0), "the log has entries but no checkpoint")),
        _ => Ok(()),
    }
}

fn io(error: crate::store::StoreError) -> VerifyFailure {
    failure(None, format!("cannot read the store: {error}"))
}

fn verify_pass(
    store: &Store,
    verifier: &NoteVerifier,
    origin: &str,
    depth: Depth,
    live: bool,
    visit: &dyn Fn(u32, u64, &Hash),
    stop: &AtomicBool,
) -> Result<Verified, VerifyFailure> {
    // Checkpoints first, then the size: on a live vault the log only grows,
    // so every checkpoint read is within the size read after it.
    let checkpoints = checkpoints_load(store, verifier, origin)?;
    let size = counter_decode(store.get(&Key::meta(super::SIZE_KEY)).map_err(io)?.as_deref())
        .map_err(|_| failure(None, "stored log size is corrupt"))?;
    size_matches_checkpoint(size, checkpoints.last_key_value().map(|(&covered, _)| covered), live)?;
    let check_checkpoint = |frontier: &Frontier, processed: u64| match checkpoints.get(&processed) {
        Some(root) if *root != frontier.root() => {
            Err(failure(None, format!("the checkpoint of size {processed} does not match the stored entries")))
        }
        _ => Ok(()),
    };

    let end = if live { checkpoints.last_key_value().map_or(0, |(&covered, _)| covered) } else { size };
    let mut frontier = Frontier::default();
    check_checkpoint(&frontier, 0)?;
    let mut check_entry = |index: u64, bytes: &[u8]| -> Result<(), VerifyFailure> {
        let completed = frontier.push(index, merkle::leaf_hash(bytes));
        for (level, at, hash) in &completed {
            visit(*level, *at, hash);
        }
        if depth == Depth::Full {
            AuditEvent::from_bytes(bytes)
                .map_err(|error| failure(Some(index), format!("entry {index} is not a valid event: {error}")))?;
            for (level, at, hash) in completed.into_iter().filter(|(level, _, _)| *level > 0) {
                // Levels below the stored ones are recomputed when needed
                // (format 2 stored them too: then they must match).
                let stored = store.get(&Key::audit_node(level, at)).map_err(io)?;
                let missing_allowed = level < super::STORED_LEVEL_MIN && stored.is_none();
                if !missing_allowed && stored.as_deref() != Some(hash.as_slice()) {
                    return Err(failure(
                        Some(at << level),
                        format!("entry bytes do not match the stored tree at level {level}, index {at}"),
                    ));
                }
            }
        }
        check_checkpoint(&frontier, index + 1)
    };
    let in_records = entries_visit(store, end, live, stop, &mut check_entry)?;
    if !live && in_records > 0 {
        let stored = store.get(&Key::meta(super::FRONTIER_KEY)).map_err(io)?;
        if stored.as_deref() != Some(frontier.to_bytes().as_slice()) {
            return Err(failure(None, "the stored right edge of the tree does not match the entries"));
        }
    }
    Ok(Verified { size: end, root: frontier.root(), checkpoints: checkpoints.len() })
}

/// What sees each entry, by index, in [`entries_visit`].
type EntryVisit<'a> = &'a mut dyn FnMut(u64, &[u8]) -> Result<(), VerifyFailure>;

/// Entries read per page of records.
const RECORDS_PER_PAGE: usize = 64;

/// Shows `visit` every entry from 0 to `end` in index order: those in
/// records first, then those of format 2 not moved yet. Fails on a missing
/// entry, a malformed record, and (unless `live`, where the log grows while
/// it is read) an entry at or beyond `end`. Returns how many entries were
/// in records.
fn entries_visit(
    store: &Store,
    end: u64,
    live: bool,
    stop: &AtomicBool,
    visit: EntryVisit<'_>,
) -> Result<u64, VerifyFailure> {
    let beyond = |index: u64| failure(Some(index), format!("entry {index} lies beyond the log size {end}"));
    let all = Key::audit_records_all();
    let records_end = Key::from_prefix_end(&all);
    let mut next = 0u64;
    let mut from = Key::audit_record(0);
    'pages: loop {
        if stop.load(Ordering::Relaxed) {
            return Err(failure(None, STOPPED));
        }
        let page = store.scan_range(&from, &records_end, RECORDS_PER_PAGE).map_err(io)?;
        let Some((last, _)) = page.last() else { break };
        from = Key::raw(last.iter().copied().chain([0]).collect());
        for (key, record) in &page {
            let first =
                records::key_index(&all, key).ok_or_else(|| failure(Some(next), "a record key is malformed"))?;
            if first >= end && live {
                break 'pages;
            }
            if first != next {
                let problem = if first > next {
                    format!("entry {next} is missing")
                } else {
                    format!("entry {first} is stored twice")
                };
                return Err(failure(Some(next.min(first)), problem));
            }
            let entries = records::record_entries(record)
                .ok_or_else(|| failure(Some(first), format!("the record of entries from {first} is malformed")))?;
            for entry in entries {
                if next >= end {
                    if live {
                        break 'pages;
                    }
                    return Err(beyond(next));
                }
                visit(next, entry)?;
                next += 1;
            }
        }
    }
    let in_records = next;
    // Point reads by index: on the embedded engine they cost a fraction of
    // a range scan's per-entry cost, and a missing index shows up as a
    // missing read.
    for index in next..end {
        if index % 4096 == 0 && stop.load(Ordering::Relaxed) {
            return Err(failure(None, STOPPED));
        }
        let bytes = store
            .get(&Key::audit_entry_format_2(index))
            .map_err(io)?
            .ok_or_else(|| failure(Some(index), format!("entry {index} is missing")))?;
        visit(index, &bytes)?;
    }
    if !live && store.get(&Key::audit_entry_format_2(end.max(in_records))).map_err(io)?.is_some() {
        return Err(beyond(end));
    }
    Ok(in_records)
}
