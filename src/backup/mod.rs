//! Backups of a vault's store, taken while it serves, and restores.
//!
//! A backup copies the stored bytes as they are: sealed values, wrapped
//! DEKs, the audit log, the sealed signing keys. It never holds a key-
//! encryption key, so it is as safe to keep as the store itself, and
//! useless without the key file, which must be backed up apart.
//!
//! **Consistency while serving.** Every change goes through the commit
//! thread, so the backup reads the store there: in chunks of
//! [`CHUNK_KEYS_DEFAULT`] keys, each a read-only transaction (a consistent read at
//! one place in commit order), and meanwhile a [`crate::store::BatchTap`] hands it every
//! batch the commit thread makes durable, as a redo record. Both are queued
//! from the commit thread, so the file's order is commit order: a chunk read
//! in batch `k` comes before the redo of batch `k`. Applying the records in
//! file order gives, for every key, the state the store was in after the
//! last batch in the file: a key's value is the last write to it in the file,
//! and a chunk covering it is followed by every later write to it. Writers
//! never wait for the backup beyond the time one chunk is read.
//!
//! The embedded engine has no point-in-time snapshot (its iterators see concurrent
//! writes), and copying its directory while it runs is not consistent; this
//! scheme needs nothing from the engine beyond the commit path.
//!
//! **File layout** (all integers big-endian; `docs/OPERATIONS.md`):
//!
//! ```text
//! file     = header record* trailer
//! header   = "CVBACKUP" (8 bytes) ‖ format version (u16, = 1)
//! record   = kind (u8) ‖ body length (u32) ‖ body
//!   0x01 chunk: count (u32) ‖ count × write, every write a put
//!   0x02 redo:  count (u32) ‖ count × write
//!   write    = key length (u32) ‖ key ‖ op (u8: 0x01 put, 0x00 delete)
//!              ‖ [value length (u32) ‖ value, for a put]
//! trailer  = 0x03 ‖ body length (u32) ‖ records before it (u64)
//!            ‖ note length (u32) ‖ latest signed checkpoint (note text)
//!            ‖ SHA-256 of every byte of the file before these 32
//! ```
//!
//! The trailer's checkpoint is the store's latest checkpoint as of the last
//! record; every batch that appends to the audit log rewrites it, so it
//! covers the whole backed-up log. The digest finds damage and truncation;
//! the checkpoint's signature and the full audit verification at restore
//! authenticate the log, and AES-GCM authenticates every sealed value.
//!
//! **Restore** refuses a non-empty target, checks the whole file (header,
//! every record, trailer, digest) before writing anything, writes the store
//! beside its final name, opens it with the given KEK, recomputes the whole
//! audit log, checks that the trailer's checkpoint covers exactly that log,
//! records a `vault.restored` event, and only then renames the store into
//! place. On any failure it removes what it wrote.

mod format;
mod restore;
mod writer;

pub use format::read;
pub use restore::{BackupReplay, RESTORE_VERIFY, RESTORE_WRITE, RestoreProgress, RestoreSummary, replay, restore};
pub use writer::{BackupSummary, Progress, write};

use std::path::{Path, PathBuf};

use crate::audit::AuditError;
use crate::audit::checkpoint::NoteError;
use crate::audit::verify::VerifyFailure;
use crate::store::{CommitError, StoreError};
use crate::vault::VaultError;

/// The first bytes of every backup file.
pub(crate) const MAGIC: &[u8; 8] = b"CVBACKUP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Keys read per chunk by default: one read-only transaction on the commit
/// thread, so it bounds how long a chunk holds writers back (about a
/// millisecond).
pub const CHUNK_KEYS_DEFAULT: usize = 1000;
/// The most keys a chunk may read.
pub const CHUNK_KEYS_MAX: usize = 100_000;
/// A record body is closed once it passes this size.
const RECORD_BYTES_TARGET: usize = 1 << 20;
/// The largest record body a reader accepts (and a writer writes).
const RECORD_BYTES_MAX: usize = 64 << 20;
const KIND_CHUNK: u8 = 0x01;
const KIND_REDO: u8 = 0x02;
const KIND_TRAILER: u8 = 0x03;
const OP_DELETE: u8 = 0x00;
const OP_PUT: u8 = 0x01;
const DIGEST_BYTES: usize = 32;
/// Where restore writes the store before renaming it to `store/`.
const RESTORING_DIR: &str = "store.restoring";

/// Errors of backup and restore. None holds a stored value.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be created, read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The output file exists already; a backup never overwrites a file.
    #[error("{0} exists already; a backup never overwrites a file")]
    Exists(PathBuf),
    /// The output path has no parent directory or file name.
    #[error("{0} cannot name a backup file")]
    BadPath(PathBuf),
    /// The file does not start like a backup file.
    #[error("not a consentvault backup file")]
    NotABackup,
    /// The file was written in a format version this build does not read.
    #[error("backup format version {found}; this build reads version {FORMAT_VERSION}")]
    Version {
        /// The version in the header.
        found: u16,
    },
    /// The file ends before its trailer.
    #[error("the backup file ends before its trailer: it is truncated")]
    Truncated,
    /// A record cannot be decoded.
    #[error("record {record} of the backup file is malformed ({problem}): the file was changed or damaged")]
    Malformed {
        /// The record's position (0 is the first after the header).
        record: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// The SHA-256 of the file does not match the one in its trailer.
    #[error("the backup file's SHA-256 does not match its trailer: the file was changed or damaged")]
    DigestMismatch,
    /// The trailer disagrees with the records before it.
    #[error("the backup trailer does not match the file: {0}")]
    TrailerMismatch(&'static str),
    /// The file changed between the check and the restore.
    #[error("the backup file changed while it was being restored")]
    Changed,
    /// The store holds no signed checkpoint to close the backup with.
    #[error("the store holds no signed checkpoint yet (a vault that was initialised but never opened); start it once")]
    NoCheckpoint,
    /// A single stored entry is larger than a record may be.
    #[error("a stored entry is larger than a backup record may be")]
    EntryTooLarge,
    /// The store failed while the backup read it, or the commit path stopped.
    #[error("the store failed during the backup: {0}")]
    Store(#[from] StoreError),
    /// The backup stopped before its last batch (the store is closing).
    #[error("the backup was interrupted before its end; no file was written")]
    Interrupted,
    /// Restore was asked to write into a directory that holds something.
    #[error("{0} is not empty; restore only into an empty or new directory")]
    TargetNotEmpty(PathBuf),
    /// Restore was not told where the key-encryption key is.
    #[error(
        "restore needs the key-encryption key the backup's data keys are wrapped with: pass --kek-file (the key file kept apart from the backup) or set CONSENTVAULT_KEK"
    )]
    NoKey,
    /// The restored store could not be opened: a wrong KEK, a foreign format.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The restored audit log does not verify.
    #[error("the restored audit log does not verify: {0}")]
    AuditInvalid(VerifyFailure),
    /// The trailer's checkpoint does not verify under the log's key.
    #[error("the backup's checkpoint does not verify: {0}")]
    Checkpoint(#[from] NoteError),
    /// The trailer's checkpoint does not cover exactly the restored log.
    #[error("the backup's checkpoint does not cover the restored log (size {checkpoint} against {log})")]
    CheckpointMismatch {
        /// The checkpoint's tree size.
        checkpoint: u64,
        /// The restored log's size.
        log: u64,
    },
    /// The restore could not be recorded in the audit log.
    #[error("recording the restore: {0}")]
    Audit(#[from] AuditError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

fn commit_error(error: CommitError<StoreError>) -> BackupError {
    match error {
        CommitError::Rejected(error) | CommitError::Store(error) => BackupError::Store(error),
    }
}

/// A backup file's trailer, after the whole file was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Records before the trailer.
    pub records: u64,
    /// The latest signed checkpoint of the backed-up store.
    pub note: String,
    /// The file's SHA-256.
    pub sha256: [u8; DIGEST_BYTES],
}

/// One record's writes: key, and the new value or `None` for a delete.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use base64::Engine as _;

    use super::*;
    use crate::audit::checkpoint_note_key;
    use crate::store::Key;
    use crate::store::Store;
    use crate::store::memory::MemoryBackend;

    const STATIC_KEYS: u64 = 2500;

    fn static_key(n: u64) -> Key {
        Key::counter(&format!("s{n:05}"))
    }

    fn note() -> Vec<u8> {
        let root = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        format!("test.example/log\n5\n{root}\n\n\u{2014} test.example/log AAAA\n").into_bytes()
    }

    /// A store with `STATIC_KEYS` counters at 0, a counter `n` at 0 and a
    /// checkpoint note.
    fn store() -> Store {
        let store = Store::new(Arc::new(MemoryBackend::default())).unwrap();
        store
            .commit_blocking(|txn| {
                for n in 0..STATIC_KEYS {
                    txn.put(static_key(n), 0u64.to_be_bytes().to_vec());
                }
                txn.put(Key::counter("n"), 0u64.to_be_bytes().to_vec());
                txn.put(checkpoint_note_key(), note());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
    }

    fn restored(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut state = BTreeMap::new();
        read(path, &mut |writes| {
            for (key, value) in writes {
                match value {
                    Some(value) => state.insert(key, value),
                    None => state.remove(&key),
                };
            }
            Ok(())
        })
        .unwrap();
        state
    }

    fn counter(state: &BTreeMap<Vec<u8>, Vec<u8>>, key: &Key) -> u64 {
        u64::from_be_bytes(state[key.as_bytes()].as_slice().try_into().unwrap())
    }

    #[test]
    fn a_backup_taken_under_writes_equals_the_store_at_one_commit_point() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vault.backup");
        let stop = AtomicBool::new(false);
        let (summary, writes_before) = std::thread::scope(|scope| {
            // Write i sets `n` to i and static key 7i mod STATIC_KEYS (spread
            // over every chunk) to i, and deletes the marker of write i - 3:
            // in every committed state, `n` says what every other key holds.
            let writer = scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    store
                        .commit_blocking(move |txn| {
                            txn.put(Key::counter("n"), i.to_be_bytes().to_vec());
                            txn.put(static_key(i * 7 % STATIC_KEYS), i.to_be_bytes().to_vec());
                            txn.put(Key::counter(&format!("m{i}")), vec![]);
                            txn.delete(&Key::counter(&format!("m{}", i.saturating_sub(3))));
                            Ok::<_, StoreError>(())
                        })
                        .unwrap();
                }
                i
            });
            while store.stats().transactions.load(Ordering::Relaxed) < 200 {
                std::thread::yield_now();
            }
            let before = store.stats().transactions.load(Ordering::Relaxed) - 1;
            // Between chunks, let the writer commit a few more writes, so
            // the backup certainly has batches to redo however the threads
            // are scheduled (bounded, should the writer stall).
            let mut between_chunks = |_: Progress| {
                let seen = store.stats().transactions.load(Ordering::Relaxed);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while store.stats().transactions.load(Ordering::Relaxed) < seen + 3
                    && std::time::Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
            };
            let summary = write(&store, &out, CHUNK_KEYS_DEFAULT, &mut between_chunks).unwrap();
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap();
            (summary, before)
        });
        assert!(summary.chunks >= 3 && summary.redo_batches > 0, "{summary:?}");
        let state = restored(&out);
        let last = counter(&state, &Key::counter("n"));
        assert!(last >= writes_before, "every write acknowledged before the backup is in it");
        let mut expected = vec![0u64; STATIC_KEYS as usize];
        for i in last.saturating_sub(STATIC_KEYS - 1).max(1)..=last {
            expected[(i * 7 % STATIC_KEYS) as usize] = i;
        }
        for (n, expected) in expected.into_iter().enumerate() {
            let found = counter(&state, &static_key(n as u64));
            assert_eq!(found, expected, "static key {n} at commit point {last}");
        }
        let markers: Vec<&Vec<u8>> = state.keys().filter(|key| key.starts_with(Key::counter("m").as_bytes())).collect();
        let expected: Vec<Vec<u8>> = (last.saturating_sub(2)..=last)
            .filter(|i| *i > 0)
            .map(|i| Key::counter(&format!("m{i}")).as_bytes().to_vec())
            .collect();
        assert_eq!(markers.len(), expected.len(), "{last}");
        assert!(expected.iter().all(|key| state.contains_key(key)));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn a_backup_never_replaces_an_existing_file() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("taken");
        std::fs::write(&out, b"keep me").unwrap();
        assert!(matches!(write(&store, &out, CHUNK_KEYS_DEFAULT, &mut |_| {}), Err(BackupError::Exists(_))));
        assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let store = store();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vault.backup");
        write(&store, &out, CHUNK_KEYS_DEFAULT, &mut |_| {}).unwrap();
        let good = std::fs::read(&out).unwrap();
        let check = |bytes: &[u8]| {
            let path = dir.path().join("candidate");
            std::fs::write(&path, bytes).unwrap();
            read(&path, &mut |_| Ok(())).map(drop)
        };
        assert!(check(&good).is_ok());
        assert!(matches!(check(&good[..good.len() - 40]), Err(BackupError::Truncated)));
        assert!(matches!(check(b"PK\x03\x04 not a backup"), Err(BackupError::NotABackup)));
        let mut version = good.clone();
        version[9] = 9;
        assert!(matches!(check(&version), Err(BackupError::Version { found: 9 })));
        // A changed byte in the trailer's note, and one in a stored value.
        let mut note = good.clone();
        let at = good.len() - DIGEST_BYTES - 3;
        note[at] ^= 0x20;
        assert!(matches!(check(&note), Err(BackupError::DigestMismatch)));
        let mut value = good.clone();
        let last_value = good.len() / 2;
        value[last_value] ^= 0x01;
        assert!(check(&value).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(check(&longer), Err(BackupError::Malformed { .. })));
    }
}
