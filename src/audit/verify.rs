//! Full verification of a stored log, offline or at start-up.
//!
//! Recomputes the Merkle tree from the stored entry bytes in one pass
//! (keeping only the right edge, at most 64 hashes), and checks:
//! every index from 0 to the stored size is present and nothing lies beyond
//! it; every entry is a canonical event; every stored subtree hash equals the
//! recomputed one; every stored checkpoint is signed by the log's key, names
//! the log's origin, and its root equals the recomputed root at its size.
//! The first failure is reported with the first index it implicates.

use std::collections::BTreeMap;

use super::checkpoint::NoteVerifier;
use super::merkle::{self, Hash};
use super::{AuditEvent, entry_index};
use crate::store::{Key, Store, counter_decode};

/// Entries read per store scan.
const SCAN_CHUNK: usize = 4096;

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

/// Verifies the whole log in `store` against `verifier` and `origin`.
pub fn verify_log(store: &Store, verifier: &NoteVerifier, origin: &str) -> Result<Verified, VerifyFailure> {
    let io = |error: crate::store::StoreError| failure(None, format!("cannot read the store: {error}"));
    let size = counter_decode(store.get(&Key::meta(super::SIZE_KEY)).map_err(io)?.as_deref())
        .map_err(|_| failure(None, "stored log size is corrupt"))?;

    // Every checkpoint, by size: signature and origin first.
    let mut checkpoints: BTreeMap<u64, Hash> = BTreeMap::new();
    for (key, note) in store.scan_prefix(&Key::audit_checkpoints_all(), usize::MAX).map_err(io)? {
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
        if checkpoint.tree_size > size {
            return Err(failure(
                Some(size),
                format!(
                    "the log has {size} entries but a checkpoint covers {}: entries were removed",
                    checkpoint.tree_size
                ),
            ));
        }
        checkpoints.insert(checkpoint.tree_size, checkpoint.root);
    }
    let check_checkpoint = |frontier: &Frontier, processed: u64| match checkpoints.get(&processed) {
        Some(root) if *root != frontier.root() => {
            Err(failure(None, format!("the checkpoint of size {processed} does not match the stored entries")))
        }
        _ => Ok(()),
    };

    let mut frontier = Frontier::default();
    check_checkpoint(&frontier, 0)?;
    let mut expected = 0u64;
    loop {
        let rows = store
            .scan_range(&Key::audit_entry(expected), &Key::audit_entries_all().with_suffix(&[0xFF; 9]), SCAN_CHUNK)
            .map_err(io)?;
        if rows.is_empty() {
            break;
        }
        for (key, bytes) in rows {
            let index = entry_index(&key).ok_or_else(|| failure(Some(expected), "an entry key is malformed"))?;
            if index != expected {
                return Err(failure(Some(expected), format!("entry {expected} is missing")));
            }
            if index >= size {
                return Err(failure(Some(index), format!("entry {index} lies beyond the log size {size}")));
            }
            AuditEvent::from_bytes(&bytes)
                .map_err(|error| failure(Some(index), format!("entry {index} is not a valid event: {error}")))?;
            for (level, at, hash) in frontier.push(index, merkle::leaf_hash(&bytes)) {
                let stored = store.get(&Key::audit_node(level, at)).map_err(io)?;
                if stored.as_deref() != Some(hash.as_slice()) {
                    let first = at << level;
                    return Err(failure(
                        Some(first),
                        format!("entry bytes do not match the stored tree at level {level}, index {at}"),
                    ));
                }
            }
            expected += 1;
            check_checkpoint(&frontier, expected)?;
        }
    }
    if expected != size {
        return Err(failure(Some(expected), format!("the log size is {size} but entries end at {expected}")));
    }
    Ok(Verified { size, root: frontier.root(), checkpoints: checkpoints.len() })
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
