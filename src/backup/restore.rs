//! Restoring a backup into an empty data directory: checked whole first,
//! written beside its final name, verified with the KEK, recorded, renamed.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use base64::Engine as _;

use super::{BackupError, RESTORING_DIR, Trailer, io, read};
use crate::audit::verify::{Depth, verify_log};
use crate::audit::{AuditError, AuditEvent, EventKind, Related};
use crate::crypto::load_key_ring;
use crate::store::{CommitError, WriteBatch};
use crate::vault::{self, STORE_DIR, VaultError, VaultOptions};

/// A finished restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Records applied.
    pub records: u64,
    /// The backed-up audit log's size (the trailer's checkpoint).
    pub audit_size: u64,
    /// Its root hash, standard base64.
    pub audit_root: String,
    /// The index of the `vault.restored` event.
    pub restored_index: u64,
}

/// How far a restore has got, for a progress display: `step` is
/// [`RESTORE_WRITE`] (records of the file written to the store) or
/// [`RESTORE_VERIFY`] (entries of the restored log verified), with how many
/// of how many.
pub type RestoreProgress<'a> = &'a dyn Fn(&'static str, u64, u64);

/// The step of a restore that writes the file's records.
pub const RESTORE_WRITE: &str = "records written";
/// The step of a restore that verifies the restored audit log.
pub const RESTORE_VERIFY: &str = "audit entries verified";

/// Restores the backup at `input` into `options.data_dir`, which must be
/// empty or missing, with the KEK `options.key_source` names. Nothing is
/// left behind on failure.
pub fn restore(
    input: &Path,
    options: &VaultOptions,
    progress: RestoreProgress<'_>,
) -> Result<RestoreSummary, BackupError> {
    let target = &options.data_dir;
    if !vault::is_empty_dir(target)? {
        return Err(BackupError::TargetNotEmpty(target.clone()));
    }
    let source = options.key_source.clone().ok_or(BackupError::NoKey)?;
    let keys = load_key_ring(&source, options.production).map_err(VaultError::Key)?;
    // The whole file is checked before anything is written.
    let checked = read(input, &mut |_| Ok(()))?;
    let created = !target.exists();
    vault::create_private_dir(target)?;
    let staging = target.join(RESTORING_DIR);
    let restored =
        restore_into(input, &staging, &keys, &checked, options.store_cache_bytes, progress).and_then(|summary| {
            let store_dir = target.join(STORE_DIR);
            std::fs::rename(&staging, &store_dir).map_err(io(&store_dir))?;
            crate::files::sync_parent(&store_dir).map_err(io(&store_dir))?;
            File::open(target).and_then(|dir| dir.sync_all()).map_err(io(target))?;
            Ok(summary)
        });
    match restored {
        Ok(summary) => Ok(summary),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            if created {
                let _ = std::fs::remove_dir(target);
            }
            Err(error)
        }
    }
}

/// Writes the store at `staging`, opens and verifies it, and records the
/// restore in its log.
fn restore_into(
    input: &Path,
    staging: &Path,
    keys: &crate::crypto::KeyRing,
    checked: &Trailer,
    cache_bytes: u64,
    progress: RestoreProgress<'_>,
) -> Result<RestoreSummary, BackupError> {
    let Loaded { store, audit, trailer, checkpoint } =
        load_verified(input, staging, keys, checked, cache_bytes, progress)?;
    let root = base64::engine::general_purpose::STANDARD.encode(checkpoint.root);
    let event = AuditEvent::new(
        EventKind::VaultRestored,
        crate::audit::Actor::system(),
        &crate::clock::rfc3339(crate::clock::now()),
    )
    .related(Related::BackupCheckpointSize, checkpoint.tree_size.to_string())
    .related(Related::BackupCheckpointRoot, root.clone())
    .related(Related::BackupSha256, crate::ids::hex(&trailer.sha256));
    store.set_finalizer(audit.finalizer());
    let log = audit.clone();
    let restored_index = store
        .commit_blocking(move |txn| {
            let appended = log.append(txn, &event)?;
            // Kept in the history too: the first checkpoint after the restore.
            log.checkpoint_in(txn, true)?;
            Ok::<_, AuditError>(appended.index())
        })
        .map_err(|error| match error {
            CommitError::Rejected(error) => BackupError::Audit(error),
            CommitError::Store(error) => BackupError::Store(error),
        })?;
    store.close()?;
    tracing::info!(records = trailer.records, audit_size = checkpoint.tree_size, "backup restored");
    Ok(RestoreSummary { records: trailer.records, audit_size: checkpoint.tree_size, audit_root: root, restored_index })
}

/// A backup written into a store and verified.
struct Loaded {
    store: crate::store::Store,
    audit: crate::audit::AuditLog,
    trailer: Trailer,
    checkpoint: crate::audit::checkpoint::Checkpoint,
}

/// Writes the backup at `input` into a new store at `staging`, verifies the
/// whole log (as the backup holds it, in whichever format it was written)
/// and that the trailer's checkpoint covers exactly that log, and moves the
/// store to this build's format.
fn load_verified(
    input: &Path,
    staging: &Path,
    keys: &crate::crypto::KeyRing,
    checked: &Trailer,
    cache_bytes: u64,
    progress: RestoreProgress<'_>,
) -> Result<Loaded, BackupError> {
    let backend = crate::store::open(&crate::store::StoreConfig::embedded(staging, cache_bytes))?;
    let mut batch = WriteBatch::new();
    let mut written = 0;
    let trailer = read(input, &mut |writes| {
        batch.clear();
        batch.extend(writes);
        backend.apply(&batch)?;
        written += 1;
        progress(RESTORE_WRITE, written, checked.records);
        Ok(())
    })?;
    if trailer != *checked {
        return Err(BackupError::Changed);
    }
    backend.flush()?;
    let (store, audit) = vault::store_open_checked(std::sync::Arc::clone(&backend), keys)?;
    let never = AtomicBool::new(false);
    let size = audit.durable_size();
    let counted = |done| progress(RESTORE_VERIFY, done, size);
    let visit = crate::audit::verify::entries_counted(&counted);
    let verified = verify_log(&store, &audit.verifier(), audit.origin(), Depth::Full, false, &visit, &never)
        .map_err(BackupError::AuditInvalid)?;
    store.close()?;
    drop(store);
    vault::store_format_move(&*backend)?;
    let (store, audit) = vault::store_open_checked(backend, keys)?;
    let checkpoint = audit.verifier().open_checkpoint(&trailer.note, audit.origin())?;
    if checkpoint.tree_size != verified.size || checkpoint.root != verified.root {
        return Err(BackupError::CheckpointMismatch { checkpoint: checkpoint.tree_size, log: verified.size });
    }
    Ok(Loaded { store, audit, trailer, checkpoint })
}

/// A backup replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReplay {
    /// The backed-up log's size (the trailer's checkpoint, which was
    /// checked to cover exactly the log replayed).
    pub audit_size: u64,
    /// What the replay found.
    pub summary: crate::audit::replay::ReplaySummary,
}

/// Replays the log of the backup at `input` (`consentvault audit replay
/// --backup`): written into a temporary store in `scratch` (removed after),
/// verified whole with the KEK `options.key_source` names, then replayed.
/// `progress` hears the steps of a restore, then [`crate::audit::replay::REPLAY_STEP`].
pub fn replay(
    input: &Path,
    options: &VaultOptions,
    scratch: &Path,
    progress: RestoreProgress<'_>,
) -> Result<BackupReplay, BackupError> {
    let source = options.key_source.clone().ok_or(BackupError::NoKey)?;
    let keys = load_key_ring(&source, options.production).map_err(VaultError::Key)?;
    let checked = read(input, &mut |_| Ok(()))?;
    // A new directory of the owner's only, under a name nobody can guess:
    // the store it holds links subject ids to businesses, and nobody else
    // may put anything in it between the check and the replay.
    let suffix: [u8; 16] = crate::crypto::random_bytes(keys.rng()).map_err(VaultError::Crypto)?;
    let staging = scratch.join(format!("consentvault-replay-{}", crate::ids::hex(&suffix)));
    std::fs::DirBuilder::new().mode(0o700).create(&staging).map_err(io(&staging))?;
    let replayed = load_verified(input, &staging, &keys, &checked, options.store_cache_bytes, progress).and_then(
        |Loaded { store, checkpoint, .. }| {
            let size = checkpoint.tree_size;
            let summary = crate::audit::replay_store(&store, size, &|done| {
                progress(crate::audit::replay::REPLAY_STEP, done, size)
            });
            store.close()?;
            Ok(BackupReplay { audit_size: size, summary: summary? })
        },
    );
    let _ = std::fs::remove_dir_all(&staging);
    replayed
}
