//! The newest checkpoint the vault has handed out, kept in a small file
//! beside the store, so the vault never signs two different trees of one
//! size.
//!
//! A checkpoint is published when it leaves the vault: served at
//! `GET /v1/audit/checkpoint`, with an access-log page, in an export or an
//! erasure receipt. A record costs a small file write and two syncs, made
//! only when the log grew since the last one; callers at the same moment
//! share one, and the public route makes it off the async workers.
//! Before it is handed out its note is written to
//! `<data-dir>/published-checkpoint` (synced, renamed, directory synced), so
//! the file is never older than what anyone outside holds. It is written
//! only after the batch that carries the checkpoint is durable, so it is
//! never newer than what the store holds either, unless the store lost
//! durable batches (a device that lied about its cache, a copy of an older
//! data directory put back). At open the vault compares: a store behind the
//! file, or holding another tree at the file's size, is a rollback, and the
//! vault neither serves nor signs until an operator restores a backup or
//! accepts the rollback, which the log then records as its own event
//! (`vault.rollback_accepted`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::checkpoint::{Checkpoint, NoteVerifier};
use super::merkle::Hash;

/// The file, in the data directory.
pub const PUBLISHED_FILE: &str = "published-checkpoint";

/// The size and root of a signed checkpoint note, and the note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedCheckpoint {
    /// The tree size it signs.
    pub size: u64,
    /// The root hash it signs.
    pub root: Hash,
    /// The signed note, as handed out.
    pub note: String,
}

/// What the store holds, compared with the newest published checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rollback {
    /// The store holds fewer entries than a checkpoint already handed out.
    #[error(
        "the store holds {held} audit entries but the vault published a checkpoint of {published}: \
         the store lost durable writes or an older copy was put back"
    )]
    Behind {
        /// The size published.
        published: u64,
        /// The size the store holds.
        held: u64,
    },
    /// The store's tree at the published size is not the one published.
    #[error("the store's audit log at size {size} is not the tree the vault published at that size")]
    Diverged {
        /// The size published.
        size: u64,
    },
}

impl Rollback {
    /// The size of the checkpoint that was published.
    pub fn published_size(&self) -> u64 {
        match self {
            Self::Behind { published, .. } => *published,
            Self::Diverged { size } => *size,
        }
    }
}

/// Reads and checks the published checkpoint at `path`, if there is one.
pub fn published_read(
    path: &Path,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Option<PublishedCheckpoint>, String> {
    let note = match std::fs::read_to_string(path) {
        Ok(note) => note,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let checkpoint: Checkpoint = verifier
        .open_checkpoint(&note, origin)
        .map_err(|error| format!("{}: not a checkpoint this vault signed: {error}", path.display()))?;
    Ok(Some(PublishedCheckpoint { size: checkpoint.tree_size, root: checkpoint.root, note }))
}

/// Whether a store holding `held` entries, whose tree at the published size
/// has root `root_at` (asked only when it holds that many), is behind or
/// beside `published`.
pub fn rollback_of(
    published: &PublishedCheckpoint,
    held: u64,
    root_at: impl FnOnce(u64) -> Result<Hash, super::AuditError>,
) -> Result<Option<Rollback>, super::AuditError> {
    if held < published.size {
        return Ok(Some(Rollback::Behind { published: published.size, held }));
    }
    if root_at(published.size)? != published.root {
        return Ok(Some(Rollback::Diverged { size: published.size }));
    }
    Ok(None)
}

/// Where published checkpoints are recorded, and the size of the newest.
#[derive(Debug)]
pub(super) struct Publication {
    path: PathBuf,
    size: Mutex<u64>,
}

impl Publication {
    pub(super) fn new(path: PathBuf, size: u64) -> Self {
        Self { path, size: Mutex::new(size) }
    }

    /// Records `note` (of tree size `size`) as published, unless a checkpoint
    /// at least as large already is; returns once the file is durable.
    /// Callers handing out checkpoints at once wait for one record, then
    /// find theirs covered.
    pub(super) fn record(&self, note: &str, size: u64) -> std::io::Result<()> {
        let mut published = self.size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if size <= *published {
            return Ok(());
        }
        crate::files::replace_private(&self.path, note.as_bytes())?;
        *published = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_store_behind_or_beside_the_published_checkpoint_is_a_rollback() {
        let published = PublishedCheckpoint { size: 10, root: [7; 32], note: String::new() };
        let same = |_| Ok([7; 32]);
        assert_eq!(rollback_of(&published, 10, same).unwrap(), None);
        assert_eq!(rollback_of(&published, 25, same).unwrap(), None, "a store that grew since holds it");
        assert_eq!(
            rollback_of(&published, 3, same).unwrap(),
            Some(Rollback::Behind { published: 10, held: 3 }),
            "a store that lost entries"
        );
        assert_eq!(
            rollback_of(&published, 12, |_| Ok([8; 32])).unwrap(),
            Some(Rollback::Diverged { size: 10 }),
            "another tree at the published size"
        );
    }

    #[test]
    fn a_published_checkpoint_is_recorded_only_when_it_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PUBLISHED_FILE);
        let publication = Publication::new(path.clone(), 0);
        publication.record("note of 5", 5).unwrap();
        publication.record("note of 4", 4).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "note of 5");
        publication.record("note of 9", 9).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "note of 9");
    }
}
