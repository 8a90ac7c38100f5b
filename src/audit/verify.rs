//! Full verification of a stored log, offline or at start-up.
//!
//! Recomputes the Merkle tree from the stored entry bytes in one pass
//! (keeping only the right edge, at most 64 hashes), and checks: every index
//! from 0 to the stored size is present and nothing lies beyond it; every
//! stored checkpoint is signed by the log's key, names the log's origin, and
//! its root equals the recomputed root at its size. At [`Depth::Full`] it
//! also checks that every entry is a canonical event and every stored
//! subtree hash equals the recomputed one. The first failure is reported
//! with the first index it implicates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::AuditEvent;
use super::checkpoint::NoteVerifier;
use super::merkle::{self, Hash};
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

/// The right edge of a tree being built leaf by leaf: complete subtrees of
/// strictly decreasing size, as (level, index, hash).
#[derive(Debug, Default)]
struct Frontier {
    stack: Vec<(u32, u64, Hash)>,
}

impl Frontier {
    /// Adds leaf `index`; returns every subtree that became complete.
    fn push(&mut self, index: u64, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut completed = vec![(0, index, leaf)];
        let mut node = (0u32, index, leaf);
        while let Some(&(level, left_index, left)) = self.stack.last() {
            if level != node.0 {
                break;
            }
            self.stack.pop();
            node = (level + 1, left_index >> 1, merkle::node_hash(&left, &node.2));
            completed.push(node);
        }
        self.stack.push(node);
        completed
    }

    /// The root of the leaves pushed so far.
    fn root(&self) -> Hash {
        let mut hashes = self.stack.iter().rev().map(|&(_, _, hash)| hash);
        match hashes.next() {
            None => merkle::empty_root(),
            Some(first) => hashes.fold(first, |right, left| merkle::node_hash(&left, &right)),
        }
    }
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
    for index in [size.checked_sub(1), checkpoint.tree_size.checked_sub(1)].into_iter().flatten() {
        if store.get(&Key::audit_entry(index)).map_err(io)?.is_none() {
            return Err(failure(Some(index), format!("entry {index} is missing")));
        }
    }
    if store.get(&Key::audit_entry(size)).map_err(io)?.is_some() {
        return Err(failure(Some(size), format!("entry {size} lies beyond the log size {size}")));
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

    // Point reads by index: on the embedded engine they cost a fraction of a range scan's
    // per-entry cost, and a missing index shows up as a missing read.
    let end = if live { checkpoints.last_key_value().map_or(0, |(&covered, _)| covered) } else { size };
    let mut frontier = Frontier::default();
    check_checkpoint(&frontier, 0)?;
    for index in 0..end {
        if index % 4096 == 0 && stop.load(Ordering::Relaxed) {
            return Err(failure(None, STOPPED));
        }
        let bytes = store
            .get(&Key::audit_entry(index))
            .map_err(io)?
            .ok_or_else(|| failure(Some(index), format!("entry {index} is missing")))?;
        let completed = frontier.push(index, merkle::leaf_hash(&bytes));
        for (level, at, hash) in &completed {
            visit(*level, *at, hash);
        }
        if depth == Depth::Full {
            AuditEvent::from_bytes(&bytes)
                .map_err(|error| failure(Some(index), format!("entry {index} is not a valid event: {error}")))?;
            for (level, at, hash) in completed.into_iter().filter(|(level, _, _)| *level > 0) {
                let stored = store.get(&Key::audit_node(level, at)).map_err(io)?;
                if stored.as_deref() != Some(hash.as_slice()) {
                    return Err(failure(
                        Some(at << level),
                        format!("entry bytes do not match the stored tree at level {level}, index {at}"),
                    ));
                }
            }
        }
        check_checkpoint(&frontier, index + 1)?;
    }
    if !live && store.get(&Key::audit_entry(size)).map_err(io)?.is_some() {
        return Err(failure(Some(size), format!("entry {size} lies beyond the log size {size}")));
    }
    Ok(Verified { size: end, root: frontier.root(), checkpoints: checkpoints.len() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::merkle::MemoryTree;

    #[test]
    fn frontier_roots_and_completed_subtrees_match_the_memory_tree() {
        let mut frontier = Frontier::default();
        let mut tree = MemoryTree::new();
        assert_eq!(frontier.root(), merkle::empty_root());
        for index in 0..70u64 {
            let entry = index.to_be_bytes();
            let leaf = merkle::leaf_hash(&entry);
            let mut from_frontier = frontier.push(index, leaf);
            let mut expected = merkle::appended_subtrees(index, leaf, |level, at| {
                use crate::audit::merkle::SubtreeHashes;
                tree.subtree(level, at)
            })
            .unwrap();
            from_frontier.sort();
            expected.sort();
            assert_eq!(from_frontier, expected, "index {index}");
            tree.push(&entry);
            assert_eq!(frontier.root(), tree.root(), "size {}", index + 1);
        }
    }
}
