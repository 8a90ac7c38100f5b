//! Key lifecycle: KEK rotation while the vault serves, and the replacement
//! of a subject's DEK before it seals too many values.
//!
//! A KEK rotation goes through four durable steps, each audited as
//! `key.rotated` with `related.step`:
//!
//! 1. **started** — a new KEK version is written to the key file (atomically,
//!    before anything is sealed under it), its key check, the rotation record
//!    and the wrap marker (`meta/kek-wrap-version`: every DEK must now be
//!    wrapped under it) are committed, and only then does the ring make it
//!    current;
//! 2. **rewrapping** — a background thread walks every wrapped DEK in key
//!    order, rewraps each one not yet under the new version outside the
//!    commit path, and commits chunks that replace a record only if it is
//!    still the one that was read (a concurrent write, DEK replacement or
//!    erasure wins; the next pass sees it). Progress is stored with every
//!    chunk, so a restart resumes the rotation;
//! 3. **finished** — once a whole pass finds nothing left under an old
//!    version, one transaction reseals the vault's own secrets (audit and
//!    token signing keys) under the new KEK, deletes the old versions' key
//!    checks and records them as destroyed;
//! 4. **destroyed** — after that commit is durable, the old versions are
//!    removed from the key file (atomically) and from memory (zeroized).
//!
//! **Invariant:** nothing is ever sealed under a KEK that is not yet in the
//! key file, and a KEK leaves the key file only after the store durably holds
//! nothing sealed under it. A subject created while a rotation starts (its
//! DEK wrapped under the old version a moment before) is rewrapped inside its
//! own commit transaction, which reads the wrap marker, so a pass that found
//! nothing under the old version stays true until the old version is gone.
//!
//! With the KEK in `CONSENTVAULT_KEK` the vault cannot write keys: a rotation
//! adopts a newer version the operator added there and restarted with, and
//! "destroying" the old one means the vault forgets it and refuses it from
//! then on (the operator removes it from the environment).
//!
//! Encryption limits: every DEK wrap is counted per KEK and every seal per
//! DEK (see `subjects`). When the current KEK reaches `kek_wraps_max`, a
//! rotation starts on its own (`cause: encryption_limit`); a subject's DEK
//! that reaches `dek_seals_max` is replaced by a fresh one and its values
//! resealed before the write that would pass the limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditError, AuditEvent, EventKind, Related};
use crate::core::Core;
use crate::crypto::{CryptoError, Dek, KeyFileError, KeyRing, KeySource, WRAPPED_DEK_BYTES, WrappedDek};
use crate::crypto::{key_file_add, key_file_remove};
use crate::directory::subjects_page;
use crate::ids::SubjectId;
use crate::store::{CommitError, Key, StoreError, Txn};

/// The default number of DEK wraps under one KEK before it is rotated, and
/// of values sealed under one DEK before it is replaced: 2^30, a quarter of
/// the 2^32 invocations NIST SP 800-38D allows a key with random nonces.
pub const ENCRYPTIONS_PER_KEY_DEFAULT: u64 = 1 << 30;

/// The largest limit a configuration may set: 2^31, half of 2^32.
pub const ENCRYPTIONS_PER_KEY_CEILING: u64 = 1 << 31;

/// Wrapped DEKs read and rewrapped per commit during a rotation.
const REWRAP_CHUNK: usize = 512;

/// Passes over the DEKs before a rotation gives up (each pass rewraps what
/// concurrent changes made the previous one skip; two are the norm).
const REWRAP_PASSES_MAX: usize = 16;

const ROTATION_KEY: &str = "kek-rotation";
const WRAP_VERSION_KEY: &str = "kek-wrap-version";

/// The meta key of the check value of KEK `version`.
pub(crate) fn key_check_key(version: u32) -> Key {
    Key::meta(&format!("kek-check/{version}"))
}

/// The meta key that records that KEK `version` was destroyed.
pub(crate) fn destroyed_key(version: u32) -> Key {
    Key::meta(&format!("kek-destroyed/{version}"))
}

/// The KEK versions recorded destroyed, read through `scan` (of the store,
/// or of a backend before the store starts).
pub(crate) fn destroyed_in(
    scan: impl FnOnce(&Key) -> Result<crate::store::Entries, StoreError>,
) -> Result<Vec<u32>, StoreError> {
    versions_in("kek-destroyed/", "destroyed key record", scan)
}

/// The KEK versions the store holds a check of (every version it was ever
/// sealed under, destroyed ones included), read through `scan`.
pub(crate) fn checked_in(
    scan: impl FnOnce(&Key) -> Result<crate::store::Entries, StoreError>,
) -> Result<Vec<u32>, StoreError> {
    versions_in("kek-check/", "key check record", scan)
}

/// The versions named by the meta keys under `name`, in order.
fn versions_in(
    name: &str,
    what: &'static str,
    scan: impl FnOnce(&Key) -> Result<crate::store::Entries, StoreError>,
) -> Result<Vec<u32>, StoreError> {
    let prefix = Key::meta(name);
    let mut versions = Vec::new();
    for (key, _) in scan(&prefix)? {
        let version = prefix
            .suffix_of(&key)
            .and_then(|text| std::str::from_utf8(text).ok())
            .and_then(|text| text.parse().ok())
            .ok_or(StoreError::Corrupt { what })?;
        versions.push(version);
    }
    versions.sort_unstable();
    Ok(versions)
}

/// The stored key record of a subject: its wrapped DEK, then the number of
/// values sealed under that DEK (u64, big-endian). Keeping the count beside
/// the key makes the commit-time check and the count one read and one write.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub(crate) wrapped: WrappedDek,
    pub(crate) seals: u64,
}

impl KeyRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = self.wrapped.as_bytes().to_vec();
        bytes.extend_from_slice(&self.seals.to_be_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: Vec<u8>) -> Result<Self, StoreError> {
        let corrupt = StoreError::Corrupt { what: "key record" };
        if bytes.len() != WRAPPED_DEK_BYTES + 8 {
            return Err(corrupt);
        }
        let seals = u64::from_be_bytes(bytes[WRAPPED_DEK_BYTES..].try_into().map_err(|_| corrupt)?);
        let mut wrapped = bytes;
        wrapped.truncate(WRAPPED_DEK_BYTES);
        Ok(Self { wrapped: WrappedDek::from_bytes(wrapped), seals })
    }
}

/// Unwraps `subject`'s DEK from its stored key record.
pub(crate) fn dek_of_record(keys: &KeyRing, subject: SubjectId, record: Vec<u8>) -> Result<Dek, KeyError> {
    Ok(keys.dek_unwrap(subject.as_bytes(), &KeyRecord::decode(record)?.wrapped)?)
}

/// `subject`'s DEK as the store holds it now, or `None` without a key record.
/// A rotation can rewrap the record and destroy the KEK it was under between
/// the read and the unwrap; the record read again then holds the same DEK
/// under the new KEK.
pub(crate) fn dek_stored(core: &Core, subject: SubjectId) -> Result<Option<Dek>, KeyError> {
    let read = || -> Result<Option<Dek>, KeyError> {
        let Some(record) = core.store().get(&Key::dek(subject.as_bytes()))? else { return Ok(None) };
        dek_of_record(core.keys(), subject, record).map(Some)
    };
    match read() {
        Err(KeyError::Crypto(CryptoError::UnknownKekVersion(_))) => read(),
        outcome => outcome,
    }
}

/// The counter of DEK wraps under KEK `kek_version`.
pub(crate) fn kek_counter(kek_version: u32) -> Key {
    Key::counter(&format!("kek/{kek_version}"))
}

/// When keys are replaced because they encrypted enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyLimits {
    /// DEK wraps under one KEK before a rotation starts on its own.
    pub kek_wraps_max: u64,
    /// Values sealed under one DEK before it is replaced.
    pub dek_seals_max: u64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        Self { kek_wraps_max: ENCRYPTIONS_PER_KEY_DEFAULT, dek_seals_max: ENCRYPTIONS_PER_KEY_DEFAULT }
    }
}

/// Where a vault's KEKs come from and how long they may be used.
#[derive(Debug, Clone, Default)]
pub struct KeyConfig {
    /// The key source; `None` (a vault over a test backend) behaves like the
    /// environment: rotation can only adopt versions already loaded.
    pub source: Option<KeySource>,
    /// Encryption limits.
    pub limits: KeyLimits,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A rotation is already running; its status says how far it is.
    #[error("a key rotation is already running")]
    InProgress,
    /// The KEKs come from the environment and no newer version is loaded.
    #[error(
        "the key-encryption keys come from CONSENTVAULT_KEK, which the vault cannot change: add version {next} there, restart, and rotate again"
    )]
    SourceReadOnly {
        /// The version to add.
        next: u32,
    },
    /// A loaded KEK version was destroyed by an earlier rotation and is
    /// still the newest one offered.
    #[error("key-encryption key version {0} was destroyed by a rotation; remove it from the key source")]
    Destroyed(u32),
    /// The key file could not be changed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// A key could not be made, or a wrapped DEK failed to open.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store failed; the step was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit append failed; the step was not made.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The rotation thread could not be started.
    #[error("the rotation thread could not start: {0}")]
    Thread(String),
    /// The rotation stopped on an error (recorded in its `problem`).
    #[error("the key rotation failed: {0}")]
    Failed(String),
    /// The subject has no key record (never existed, or was erased).
    #[error("the subject has no data key")]
    NoSubject,
    /// The subject's key record or values changed between reading and
    /// committing a DEK replacement (a concurrent write or replacement); the
    /// caller tries again.
    #[error("the subject's data key changed meanwhile")]
    KeyChanged,
    /// Passes kept finding DEKs under an old version (a storm of concurrent
    /// changes); the rotation stays recorded and resumes on the next request.
    #[error("DEKs kept changing during {REWRAP_PASSES_MAX} passes; the rotation will resume")]
    Unsettled,
}

impl<E: Into<KeyError>> From<CommitError<E>> for KeyError {
    fn from(error: CommitError<E>) -> Self {
        match error {
            CommitError::Rejected(error) => error.into(),
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// DEKs are being rewrapped under the new version.
    Rewrapping,
    /// Every DEK is under the new version and the old versions are destroyed.
    Finished,
    /// The last attempt stopped on an error (`problem`); a new request resumes it.
    Failed,
}

/// The stored record of the latest KEK rotation (`meta/kek-rotation`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Where it stands.
    pub state: RotationState,
    /// The KEK version every DEK is being moved to.
    pub target_version: u32,
    /// The versions being retired (destroyed when the rotation finishes).
    pub retiring_versions: Vec<u32>,
    /// `admin`, `cli` or `encryption_limit`.
    pub cause: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Wrapped DEKs in the store when the first pass began (0 until counted).
    #[serde(default)]
    pub deks_total: u64,
    /// DEKs rewrapped so far.
    #[serde(default)]
    pub deks_rewrapped: u64,
    /// The audit index of the `started` step.
    pub started_index: u64,
    /// The audit index of the `finished` step.
    #[serde(default)]
    pub finished_index: Option<u64>,
    /// Why the last attempt failed.
    #[serde(default)]
    pub problem: Option<String>,
}

impl Rotation {
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|_| StoreError::Corrupt { what: "key rotation" })
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt { what: "key rotation" })
    }
}

/// The state of a vault's keys, as the admin sees it (no key material).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyStatus {
    /// The KEK version new DEKs are wrapped under.
    pub current_version: u32,
    /// Every KEK version loaded.
    pub loaded_versions: Vec<u32>,
    /// Versions destroyed by rotations.
    pub destroyed_versions: Vec<u32>,
    /// `file` or `environment`.
    pub source: String,
    /// DEK wraps counted per KEK version (keyed by the version, as text).
    pub wraps: std::collections::BTreeMap<String, u64>,
    /// The limits in force.
    pub limits: KeyLimits,
    /// The latest rotation, if any.
    pub rotation: Option<Rotation>,
    /// Whether a rotation thread is at work. It stays true after the record
    /// says `finished` until the old versions are out of the key file and
    /// memory.
    pub rotation_running: bool,
}

/// One audit event of a rotation step.
fn step_event(actor: &Actor, time: &str, step: &str, rotation: &Rotation) -> AuditEvent {
    let retiring: Vec<String> = rotation.retiring_versions.iter().map(u32::to_string).collect();
    AuditEvent::new(EventKind::KeyRotated, actor.clone(), time)
        .related(Related::Step, step)
        .related(Related::KekVersion, rotation.target_version.to_string())
        .related(Related::RetiringVersions, retiring.join(","))
        .related(Related::Cause, rotation.cause.clone())
}

/// The vault's sealed secrets: (meta key, label), resealed by a rotation.
fn sealed_secrets() -> [(Key, &'static str); 2] {
    [
        (Key::meta(crate::audit::SIGNING_KEY_KEY), crate::audit::SIGNING_KEY_LABEL),
        (Key::meta(crate::auth::token::TOKEN_KEY), crate::auth::token::TOKEN_KEY_LABEL),
    ]
}

/// The version every DEK must be wrapped under, if a rotation set one.
pub(crate) fn wrap_version_in(txn: &Txn<'_>) -> Result<Option<u32>, StoreError> {
    txn.get(&Key::meta(WRAP_VERSION_KEY))?
        .map(|bytes| {
            <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { what: "wrap version" })
        })
        .transpose()
}

/// Clears the "rotation running" flag when the rotation thread ends, however
/// it ends.
struct RunningGuard(Arc<RotationSlot>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// The one KEK rotation that may run at a time.
#[derive(Debug, Default)]
struct RotationSlot {
    running: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The key lifecycle of an open vault: KEK rotation and its status, DEK
/// replacement at the encryption limit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keys {
    core: Arc<Core>,
    config: Arc<KeyConfig>,
    rotation: Arc<RotationSlot>,
}

impl Keys {
    /// The key lifecycle over `core`, with the key source and limits.
    pub fn new(core: Arc<Core>, config: KeyConfig) -> Self {
        Self { core, config: Arc::new(config), rotation: Arc::default() }
    }

    /// Where the KEKs come from and the encryption limits.
    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    /// Whether a KEK rotation is at work.
    pub fn rotation_is_running(&self) -> bool {
        self.rotation.running.load(Ordering::Acquire)
    }

    /// Waits for the rotation thread, if one runs (it stops at its next
    /// chunk once the vault is closing, and resumes at the next start).
    pub(crate) fn rotation_join(&self) {
        let thread = self.rotation.thread.lock().ok().and_then(|mut slot| slot.take());
        if let Some(thread) = thread {
            // The thread only ever fails by panicking, which it has logged.
            let _ = thread.join();
        }
    }

    /// Keeps the rotation thread's handle so closing can wait for it.
    fn rotation_thread_set(&self, thread: JoinHandle<()>) {
        if let Ok(mut slot) = self.rotation.thread.lock()
            && let Some(previous) = slot.replace(thread)
            && previous.is_finished()
        {
            let _ = previous.join();
        }
    }
}

impl Keys {
    /// The stored record of the latest rotation.
    pub fn key_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        self.core.store().get(&Key::meta(ROTATION_KEY))?.map(|bytes| Rotation::decode(&bytes)).transpose()
    }

    /// The versions destroyed by rotations.
    pub(crate) fn keys_destroyed(&self) -> Result<Vec<u32>, StoreError> {
        destroyed_in(|prefix| self.core.store().scan_prefix(prefix, usize::MAX))
    }

    /// The state of the keys and the latest rotation.
    pub fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let keys = self.core.keys();
        let destroyed = self.keys_destroyed()?;
        let mut wraps = std::collections::BTreeMap::new();
        for version in keys.versions().into_iter().chain(destroyed.iter().copied()) {
            let count = crate::store::counter_decode(self.core.store().get(&kek_counter(version))?.as_deref())?;
            wraps.insert(version.to_string(), count);
        }
        Ok(KeyStatus {
            current_version: keys.current_version(),
            loaded_versions: keys.versions(),
            destroyed_versions: destroyed,
            source: match self.config.source {
                Some(KeySource::File(_)) => "file",
                Some(KeySource::Env(_)) | None => "environment",
            }
            .to_owned(),
            wraps,
            limits: self.config.limits,
            rotation: self.key_rotation()?,
            rotation_running: self.rotation_is_running(),
        })
    }

    /// Starts a KEK rotation: a new version (or a newer one already loaded),
    /// made current once recorded; the DEKs are rewrapped by a background
    /// thread. Returns the rotation record as started. Blocks on file and
    /// store I/O: call it from a blocking context.
    pub fn kek_rotate(&self, actor: &Actor, cause: &str) -> Result<Rotation, KeyError> {
        if self.core.closing() {
            return Err(StoreError::Closed.into());
        }
        if self.rotation.running.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(KeyError::InProgress);
        }
        let guard = RunningGuard(Arc::clone(&self.rotation));
        let rotation = match self.key_rotation()? {
            // An interrupted or failed rotation resumes with its own target.
            Some(rotation) if rotation.state != RotationState::Finished => rotation,
            _ => self.rotation_start(actor, cause)?,
        };
        self.rotation_spawn(guard, actor.clone())?;
        Ok(rotation)
    }

    /// Resumes a rotation that a restart interrupted (called at open).
    pub(crate) fn rotation_resume(&self) -> Result<(), KeyError> {
        match self.key_rotation()? {
            Some(rotation) if rotation.state == RotationState::Rewrapping => {
                tracing::info!(target_version = rotation.target_version, "resuming the key rotation");
                self.kek_rotate(&Actor::system(), &rotation.cause).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Starts a rotation by itself when the current KEK has wrapped as many
    /// DEKs as it may. Cheap: a counter read (and the rotation record once
    /// the limit is reached).
    pub(crate) fn kek_limit_check(&self) {
        let current = self.core.keys().current_version();
        let wraps = self.core.store().get(&kek_counter(current)).ok().flatten();
        let Ok(wraps) = crate::store::counter_decode(wraps.as_deref()) else { return };
        let limit = self.config.limits.kek_wraps_max;
        if wraps < limit || self.rotation_is_running() {
            return;
        }
        // The rewraps that moved every DEK to this version count as wraps,
        // but a new rotation would make as many again: only wraps since
        // (new subjects, replaced DEKs) call for one.
        let rewrapped = match self.key_rotation() {
            Ok(Some(rotation)) if rotation.target_version == current => rotation.deks_rewrapped,
            _ => 0,
        };
        if wraps.saturating_sub(rewrapped) < limit {
            if rewrapped >= limit {
                tracing::warn!(
                    kek_version = current,
                    wraps,
                    limit,
                    "a rotation rewraps more DEKs than kek_wraps_max allows one key; raise the limit"
                );
            }
            return;
        }
        let vault = self.clone();
        // Key-file and store I/O; keep it off the caller's (async) thread.
        let started = std::thread::Builder::new().name("consentvault-kek-limit".to_owned()).spawn(move || match vault
            .kek_rotate(&Actor::system(), "encryption_limit")
        {
            Ok(rotation) => tracing::warn!(
                kek_version = current,
                wraps,
                target_version = rotation.target_version,
                "the key-encryption key reached its wrap limit; rotating"
            ),
            Err(KeyError::InProgress) => {}
            Err(error) => tracing::error!(%error, kek_version = current, "automatic key rotation failed"),
        });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the automatic key rotation");
        }
    }

    fn rotation_start(&self, actor: &Actor, cause: &str) -> Result<Rotation, KeyError> {
        let keys = self.core.keys();
        let destroyed = self.keys_destroyed()?;
        let loaded = keys.versions();
        let newest = *loaded.iter().max().ok_or(CryptoError::UnknownKekVersion(0))?;
        let target = if loaded.len() > 1 {
            // A version the operator added (or one a crashed start wrote to
            // the key file) is adopted rather than adding yet another.
            newest
        } else {
            let next = newest.max(destroyed.iter().copied().max().unwrap_or(0)) + 1;
            match &self.config.source {
                Some(KeySource::File(path)) => {
                    let bytes = keys.kek_generate()?;
                    key_file_add(path, next, &bytes)?;
                    keys.kek_insert(next, bytes)?;
                    tracing::warn!(kek_version = next, path = %path.display(), "new key-encryption key written");
                    next
                }
                Some(KeySource::Env(_)) | None => return Err(KeyError::SourceReadOnly { next }),
            }
        };
        if destroyed.contains(&target) {
            return Err(KeyError::Destroyed(target));
        }
        let check = keys.key_check_create(target)?;
        let mut rotation = Rotation {
            state: RotationState::Rewrapping,
            target_version: target,
            retiring_versions: loaded.into_iter().filter(|&version| version != target).collect(),
            cause: cause.to_owned(),
            started_at: self.core.clock().rfc3339(),
            finished_at: None,
            deks_total: 0,
            deks_rewrapped: 0,
            started_index: 0,
            finished_index: None,
            problem: None,
        };
        let event = step_event(actor, &self.core.clock().rfc3339(), "started", &rotation);
        let log = self.core.audit().clone();
        let stored = rotation.clone();
        let index = self.core.store().commit_blocking(move |txn| -> Result<u64, KeyError> {
            if !txn.contains(&key_check_key(target))? {
                txn.put(key_check_key(target), check);
            }
            txn.put(Key::meta(WRAP_VERSION_KEY), target.to_be_bytes().to_vec());
            let index = log.append(txn, &event)?.index();
            let mut stored = stored;
            stored.started_index = index;
            txn.put(Key::meta(ROTATION_KEY), stored.encode()?);
            Ok(index)
        })?;
        rotation.started_index = index;
        keys.kek_make_current(target)?;
        tracing::info!(target_version = target, retiring = ?rotation.retiring_versions, cause, "key rotation started");
        Ok(rotation)
    }

    fn rotation_spawn(&self, guard: RunningGuard, actor: Actor) -> Result<(), KeyError> {
        let vault = self.clone();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("consentvault-kek-rotate".to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let outcome = vault.rotation_run(&actor);
                    if let Err(error) = &outcome {
                        tracing::error!(%error, "key rotation stopped");
                        let problem = error.to_string();
                        let recorded = vault.core.store().commit_blocking(move |txn| -> Result<(), KeyError> {
                            rotation_update(txn, |rotation| {
                                rotation.state = RotationState::Failed;
                                rotation.problem = Some(problem);
                            })
                        });
                        if let Err(error) = recorded {
                            tracing::error!(%error, "the failed key rotation could not be recorded");
                        }
                    }
                    drop(guard);
                    // Subjects created while it ran may have used up the new
                    // version already.
                    if matches!(outcome, Ok(true)) {
                        vault.kek_limit_check();
                    }
                });
            })
            .map_err(|error| KeyError::Thread(error.to_string()))?;
        self.rotation_thread_set(thread);
        Ok(())
    }

    /// Rewraps every DEK under the target, then finishes the rotation.
    /// Returns `Ok(false)` if the vault is closing (the rotation resumes at
    /// the next start).
    fn rotation_run(&self, actor: &Actor) -> Result<bool, KeyError> {
        let Some(rotation) = self.key_rotation()? else { return Ok(false) };
        let target = rotation.target_version;
        if rotation.state == RotationState::Failed {
            self.core.store().commit_blocking(|txn| -> Result<(), KeyError> {
                rotation_update(txn, |rotation| {
                    rotation.state = RotationState::Rewrapping;
                    rotation.problem = None;
                })
            })?;
        }
        let total = self.deks_count()?;
        self.core.store().commit_blocking(move |txn| -> Result<(), KeyError> {
            rotation_update(txn, |rotation| rotation.deks_total = total)
        })?;
        let mut settled = false;
        for _ in 0..REWRAP_PASSES_MAX {
            match self.rewrap_pass(target)? {
                None => return Ok(false),
                Some(0) => {
                    settled = true;
                    break;
                }
                Some(_) => {}
            }
        }
        if !settled {
            return Err(KeyError::Unsettled);
        }
        self.rotation_finish(actor)?;
        Ok(true)
    }

    /// How many subjects have a DEK: every subject not erased (a subject's
    /// record and DEK are written together, and erasure removes the DEK as
    /// it marks the record). Reads the directory only.
    fn deks_count(&self) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut from = Some(Key::subjects_all());
        while let Some(start) = from {
            let (page, next) = subjects_page(self.core.store(), &start, REWRAP_CHUNK * 8)?;
            count += page.iter().filter(|(_, record)| record.erased_at.is_none()).count() as u64;
            from = next;
        }
        Ok(count)
    }

    /// How many wrapped DEKs each KEK version holds, by a pass over every
    /// key record (for checks after a rotation; O(subjects)).
    pub fn deks_by_kek_version(&self) -> Result<std::collections::BTreeMap<u32, u64>, StoreError> {
        let mut versions = std::collections::BTreeMap::new();
        let mut from = Some(Key::subjects_all());
        while let Some(start) = from {
            let (page, next) = self.deks_page(&start, REWRAP_CHUNK * 8)?;
            for (_, bytes) in page {
                let version = KeyRecord::decode(bytes)?.wrapped.kek_version().unwrap_or(0);
                *versions.entry(version).or_insert(0) += 1;
            }
            from = next;
        }
        Ok(versions)
    }

    /// The key records of the subjects on one page of the subject directory
    /// ([`subjects_page`]), and where the next page starts. Key
    /// records sit with each subject's other records, so each is a point
    /// read; erased subjects have none and are skipped unread.
    fn deks_page(&self, from: &Key, page_max: usize) -> Result<(Vec<SubjectKeyRecord>, Option<Key>), StoreError> {
        let (subjects, next) = subjects_page(self.core.store(), from, page_max)?;
        let mut page = Vec::with_capacity(subjects.len());
        for (subject, record) in subjects {
            if record.erased_at.is_some() {
                continue;
            }
            let subject = *subject.as_bytes();
            if let Some(key_record) = self.core.store().get(&Key::dek(&subject))? {
                page.push((subject, key_record));
            }
        }
        Ok((page, next))
    }

    /// One pass over every wrapped DEK. Returns how many were found under
    /// another version than `target` (0: the pass found none), or `None` if
    /// the vault is closing.
    fn rewrap_pass(&self, target: u32) -> Result<Option<u64>, KeyError> {
        let mut found = 0u64;
        let mut from = Some(Key::subjects_all());
        while let Some(start) = from {
            if self.core.closing() {
                return Ok(None);
            }
            let (page, next) = self.deks_page(&start, REWRAP_CHUNK)?;
            from = next;
            let mut changes = Vec::new();
            for (subject, bytes) in page {
                let record = KeyRecord::decode(bytes.clone())?;
                if record.wrapped.kek_version() == Some(target) {
                    continue;
                }
                let wrapped = self.core.keys().dek_rewrap_to(target, &subject, &record.wrapped)?;
                let new = KeyRecord { wrapped, seals: record.seals }.encode();
                changes.push((Key::dek(&subject), bytes, new));
            }
            if changes.is_empty() {
                continue;
            }
            found += changes.len() as u64;
            self.core.store().commit_blocking(move |txn| -> Result<(), KeyError> {
                let mut rewrapped = 0u64;
                for (key, old, new) in changes {
                    // A record changed since it was read (a DEK replaced, a
                    // subject erased) is left to the next pass.
                    if txn.get(&key)?.as_deref() == Some(old.as_slice()) {
                        txn.put(key, new);
                        rewrapped += 1;
                    }
                }
                txn.counter_add(kek_counter(target), rewrapped)?;
                rotation_update(txn, |rotation| rotation.deks_rewrapped += rewrapped)
            })?;
        }
        Ok(Some(found))
    }

    /// Reseals the vault's secrets under the target, records the old
    /// versions as destroyed, then removes them from the key file and memory.
    fn rotation_finish(&self, actor: &Actor) -> Result<(), KeyError> {
        let rotation = self.key_rotation()?.ok_or(StoreError::Corrupt { what: "key rotation" })?;
        let target = rotation.target_version;
        let keys = self.core.keys();
        let mut resealed = Vec::new();
        for (key, label) in sealed_secrets() {
            let sealed = self.core.store().get(&key)?.ok_or(StoreError::Corrupt { what: "sealed secret" })?;
            if KeyRing::secret_kek_version(&sealed) != Some(target) {
                let again = keys.secret_reseal(label, &sealed)?;
                resealed.push((key, sealed, again));
            }
        }
        // Webhook secrets come and go while the rotation runs: one replaced
        // or removed meanwhile was sealed under the target already, or is
        // gone, and is left as it is.
        let mut webhook_resealed = Vec::new();
        for (key, label) in crate::webhooks::Webhooks::sealed_secrets(self.core.store())? {
            let Some(sealed) = self.core.store().get(&key)? else { continue };
            if KeyRing::secret_kek_version(&sealed) != Some(target) {
                let again = keys.secret_reseal(&label, &sealed)?;
                webhook_resealed.push((key, sealed, again));
            }
        }
        let log = self.core.audit().clone();
        let now = self.core.clock().rfc3339();
        let finished = step_event(actor, &now, "finished", &rotation);
        let destroyed = step_event(actor, &now, "destroyed", &rotation);
        let retiring = rotation.retiring_versions.clone();
        self.core.store().commit_blocking(move |txn| -> Result<(), KeyError> {
            for (key, old, new) in resealed {
                if txn.get(&key)?.as_deref() != Some(old.as_slice()) {
                    return Err(StoreError::Corrupt { what: "sealed secret changed during rotation" }.into());
                }
                txn.put(key, new);
            }
            for (key, old, new) in webhook_resealed {
                if txn.get(&key)?.as_deref() == Some(old.as_slice()) {
                    txn.put(key, new);
                }
            }
            let finished_index = log.append(txn, &finished)?.index();
            for version in &retiring {
                txn.delete(&key_check_key(*version));
                txn.put(destroyed_key(*version), now.clone().into_bytes());
            }
            // These events release nothing, so no `Logged` proof is needed.
            let _ = log.append(txn, &destroyed)?;
            rotation_update(txn, |rotation| {
                rotation.state = RotationState::Finished;
                rotation.finished_at = Some(now.clone());
                rotation.finished_index = Some(finished_index);
            })
        })?;
        self.keys_forget(&rotation.retiring_versions)?;
        tracing::info!(target_version = target, destroyed = ?rotation.retiring_versions, "key rotation finished");
        Ok(())
    }

    /// Removes destroyed KEK versions from the key file and from memory.
    /// Called when a rotation finishes, and at open for versions a crash left
    /// in the key file after they were recorded destroyed.
    pub(crate) fn keys_forget(&self, versions: &[u32]) -> Result<(), KeyError> {
        let loaded: Vec<u32> = versions.iter().copied().filter(|&version| self.core.keys().contains(version)).collect();
        if loaded.is_empty() {
            return Ok(());
        }
        match &self.config.source {
            Some(KeySource::File(path)) => key_file_remove(path, &loaded)?,
            Some(KeySource::Env(_)) | None => tracing::warn!(
                versions = ?loaded,
                "destroyed key-encryption key versions are still offered by CONSENTVAULT_KEK; remove them there"
            ),
        }
        for version in loaded {
            self.core.keys().kek_remove(version)?;
        }
        Ok(())
    }

    /// Replaces `subject`'s DEK by the next generation and reseals every
    /// value under it, when the DEK has sealed `dek_seals_max` values. The
    /// values are resealed inside `crypto` ([`crate::crypto::DekReplacement`]);
    /// no plaintext reaches this code. Fails with [`KeyError::KeyChanged`] if
    /// the subject's key or values changed meanwhile (the caller retries).
    pub(crate) async fn dek_replace(&self, subject: SubjectId) -> Result<(), KeyError> {
        let key = Key::dek(subject.as_bytes());
        let old_record = self.core.store().get(&key)?.ok_or(KeyError::NoSubject)?;
        let record = KeyRecord::decode(old_record.clone())?;
        let replacement = self.core.keys().dek_replace(subject.as_bytes(), &record.wrapped)?;
        // Field values, and message texts sealed under the same DEK, each
        // with the name its AAD binds it to.
        let prefixes = [Key::values_of(subject.as_bytes()), Key::message_texts_of(subject.as_bytes())];
        let mut values = Vec::new();
        for (at, prefix) in prefixes.iter().enumerate() {
            for (value_key, bytes) in self.core.store().scan_prefix(prefix, usize::MAX)? {
                let name = prefix
                    .suffix_of(&value_key)
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .ok_or(StoreError::Corrupt { what: "value key" })?
                    .to_owned();
                let (place, label) = if at == 0 {
                    (Key::value(subject.as_bytes(), &name), name)
                } else {
                    (Key::message_text(subject.as_bytes(), &name), crate::crypto::message_label(&name))
                };
                let resealed = replacement.reseal(
                    self.core.keys().rng(),
                    subject.as_bytes(),
                    &label,
                    &crate::crypto::Sealed::from_bytes(bytes.clone()),
                )?;
                values.push((place, bytes, resealed));
            }
        }
        let wrapped = replacement.wrapped().clone();
        let kek_version = wrapped.kek_version().ok_or(CryptoError::Malformed("wrapped key header"))?;
        let dek_version = replacement.version();
        let seals = values.len() as u64;
        let event = AuditEvent::new(EventKind::KeyRotated, Actor::system(), &self.core.clock().rfc3339())
            .subject(subject)
            .related(Related::Step, "dek_replaced")
            .related(Related::DekVersion, dek_version.to_string())
            .related(Related::Cause, "encryption_limit");
        let log = self.core.audit().clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| -> Result<_, KeyError> {
                if txn.get(&key)?.as_deref() != Some(old_record.as_slice()) {
                    return Err(KeyError::KeyChanged);
                }
                let mut present = 0usize;
                for prefix in &prefixes {
                    for (_, bytes) in txn.scan_prefix(prefix)? {
                        present += 1;
                        if !values.iter().any(|(_, old, _)| *old == bytes) {
                            return Err(KeyError::KeyChanged);
                        }
                    }
                }
                if present != values.len() {
                    return Err(KeyError::KeyChanged);
                }
                txn.put(key, KeyRecord { wrapped, seals }.encode());
                txn.counter_add(kek_counter(kek_version), 1)?;
                for (place, _, resealed) in values {
                    txn.put_sealed(place, resealed);
                }
                Ok(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        tracing::info!(%subject, dek_version, "data key replaced at its encryption limit");
        Ok(())
    }
}

/// Waits for the rotation under way (if any) to end, calling `progress` with
/// the key status every 100 ms; returns the status once the rotation
/// finished and the old versions are gone, or an error if it failed.
pub fn rotation_follow(keys: &Keys, progress: &mut dyn FnMut(&KeyStatus)) -> Result<KeyStatus, KeyError> {
    loop {
        let status = keys.key_status()?;
        progress(&status);
        match &status.rotation {
            Some(rotation) if rotation.state == RotationState::Failed => {
                return Err(KeyError::Failed(rotation.problem.clone().unwrap_or_default()));
            }
            _ if !status.rotation_running => return Ok(status),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Changes the stored rotation record in `txn`.
fn rotation_update(txn: &mut Txn<'_>, change: impl FnOnce(&mut Rotation)) -> Result<(), KeyError> {
    let bytes = txn.get(&Key::meta(ROTATION_KEY))?.ok_or(StoreError::Corrupt { what: "key rotation" })?;
    let mut rotation = Rotation::decode(&bytes)?;
    change(&mut rotation);
    txn.put(Key::meta(ROTATION_KEY), rotation.encode()?);
    Ok(())
}

/// A subject id and its stored key record, as a pass over every DEK finds
/// them.
type SubjectKeyRecord = ([u8; 16], Vec<u8>);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::Services;

    #[tokio::test]
    async fn a_replaced_dek_reseals_every_value_and_the_data_reads_the_same() {
        let services = Services::new();
        let subject = services.customer().await;
        let store = services.core.store();
        let before = store.scan_prefix(&Key::values_of(subject.as_bytes()), usize::MAX).unwrap();
        let data = services.subjects.data_read_own(subject).await.unwrap();
        services.keys.dek_replace(subject).await.unwrap();
        let record = KeyRecord::decode(store.get(&Key::dek(subject.as_bytes())).unwrap().unwrap()).unwrap();
        assert_eq!(record.wrapped.dek_version(), Some(2));
        assert_eq!(record.seals, 2, "the reseals are counted under the new DEK");
        let after = store.scan_prefix(&Key::values_of(subject.as_bytes()), usize::MAX).unwrap();
        assert_eq!(after.len(), before.len());
        assert!(after.iter().zip(&before).all(|(new, old)| new.0 == old.0 && new.1 != old.1));
        assert_eq!(services.subjects.data_read_own(subject).await.unwrap(), data);
        let event = services.events().into_iter().rev().find(|event| event.kind == EventKind::KeyRotated).unwrap();
        assert_eq!(event.related_value(Related::Step), Some("dek_replaced"));
    }

    #[tokio::test]
    async fn replacing_the_dek_of_an_unknown_subject_is_refused() {
        let services = Services::new();
        let outcome = services.keys.dek_replace(SubjectId::from_bytes([9; 16])).await;
        assert!(matches!(outcome, Err(KeyError::NoSubject)), "{outcome:?}");
    }
}
