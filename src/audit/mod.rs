//! The tamper-evident audit log: an append-only list of events, an RFC 9162
//! Merkle tree over their exact bytes, and signed C2SP checkpoints.
//!
//! Appends happen inside a store transaction ([`append`](AuditLog::append)), so an event lands
//! in the same atomic batch and flush as the change it records, and in commit
//! order. The store keeps, per append, the entry bytes, the hashes of the
//! complete subtrees above the leaf that the append finishes (one on
//! average; a leaf hash is recomputed from its entry), the new size, and
//! per-subject and per-business markers; proofs need O(log n) reads.
//!
//! **Architecture Invariant:** plaintext for a reader is released only with a
//! [`Logged`] value, and a `Logged` exists only for an event whose batch the
//! store has flushed: [`Appended`] (made by [`append`](AuditLog::append) inside a transaction)
//! is turned into `Logged` by [`AuditLog::confirm`] with the store's
//! [`Durable`] proof of that very batch.

pub mod checkpoint;
mod event;
pub mod merkle;
pub mod published;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use event::{Actor, AuditEvent, Decision, EVENT_BYTES_MAX, EventError, EventKind, Related, Role, Withheld};

use crate::crypto::{CryptoError, KeyRing};
use crate::ids::SubjectId;
use crate::store::{Durable, Key, Store, StoreError, Txn, WriteBatch, counter_decode};
use checkpoint::{Checkpoint, KeyError, NoteError, NoteSigner, NoteVerifier};
use merkle::{Hash, ProofError, SubtreeHashes};

/// The label of the checkpoint signing key sealed under the KEK.
pub(crate) const SIGNING_KEY_LABEL: &str = "audit-signing-key";
const SIZE_KEY: &str = "audit/size";
pub(crate) const SIGNING_KEY_KEY: &str = "audit/signing-key";
const ORIGIN_KEY: &str = "audit/origin";
const LATEST_CHECKPOINT_KEY: &str = "audit/checkpoint";
const LATEST_NOTE_KEY: &str = "audit/checkpoint-note";
/// Subtree hashes at this level and above are kept in memory (1/16 of the
/// leaves: 62,500 hashes for a log of 10^6), so a proof reads at most a few
/// low-level hashes from the store.
const NODE_CACHE_LEVEL_MIN: u32 = 4;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The event cannot be encoded or a stored entry cannot be decoded.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signing key could not be created, unsealed or used.
    #[error("audit signing key: {0}")]
    Key(#[from] KeyError),
    /// The sealed signing key failed to open.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A checkpoint could not be signed or opened.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A stored audit record is missing or malformed.
    #[error("audit record {0} is missing or corrupt")]
    Corrupt(&'static str),
    /// A proof was asked for sizes or an index the log does not have.
    #[error("{0}")]
    OutOfRange(String),
    /// An append was confirmed with the proof of another batch.
    #[error("the audit event's batch is not the one that was flushed")]
    NotDurable,
    /// A value was about to be released that its read event does not name.
    #[error("a value is not covered by the logged read")]
    NotCovered,
    /// The store is behind a checkpoint the vault published; nothing is
    /// signed until the rollback is resolved ([`published`]).
    #[error("signing refused: {0}")]
    SigningRefused(published::Rollback),
}

/// An event appended inside a transaction, not yet known to be durable.
#[must_use = "an appended event must be confirmed once its batch is durable"]
#[derive(Debug)]
pub struct Appended {
    index: u64,
    batch_seq: u64,
    subject: Option<SubjectId>,
    fields: Vec<String>,
}

impl Appended {
    /// The event's index in the log.
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// Proof that audit event `index` is on disk; the only key to releasing
/// plaintext to a reader, and only for the subject and fields it names.
#[derive(Debug)]
pub struct Logged {
    index: u64,
    subject: Option<SubjectId>,
    fields: Vec<String>,
}

impl Logged {
    /// The event's index in the log.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Whether the logged event released `field` of `subject`.
    pub fn covers(&self, subject: SubjectId, field: &str) -> bool {
        self.subject == Some(subject) && self.fields.iter().any(|f| f == field)
    }
}

fn size_in(txn: &Txn<'_>) -> Result<u64, AuditError> {
    Ok(counter_decode(txn.get(&Key::meta(SIZE_KEY))?.as_deref())?)
}

fn decode_hash(bytes: Option<Vec<u8>>) -> Result<Hash, AuditError> {
    bytes.and_then(|bytes| bytes.try_into().ok()).ok_or(AuditError::Corrupt("subtree hash"))
}

fn node_in(txn: &Txn<'_>, level: u32, index: u64) -> Result<Hash, AuditError> {
    if level == 0 {
        let entry = txn.get(&Key::audit_entry(index))?.ok_or(AuditError::Corrupt("entry"))?;
        return Ok(merkle::leaf_hash(&entry));
    }
    decode_hash(txn.get(&Key::audit_node(level, index))?)
}

/// Subtree hashes as a transaction sees them.
struct TxnTree<'t, 'a>(&'t Txn<'a>);

impl SubtreeHashes for TxnTree<'_, '_> {
    type Error = AuditError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, AuditError> {
        node_in(self.0, level, index)
    }
}

/// Subtree hashes as committed in the store, upper levels from memory.
struct StoreTree<'s> {
    store: &'s Store,
    log: &'s AuditLog,
}

impl SubtreeHashes for StoreTree<'_> {
    type Error = AuditError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, AuditError> {
        if level >= NODE_CACHE_LEVEL_MIN
            && let Some(hash) = self.log.0.nodes.read().ok().and_then(|nodes| nodes.get(&(level, index)).copied())
        {
            return Ok(hash);
        }
        if level == 0 {
            let entry = self.store.get(&Key::audit_entry(index))?.ok_or(AuditError::Corrupt("entry"))?;
            return Ok(merkle::leaf_hash(&entry));
        }
        decode_hash(self.store.get(&Key::audit_node(level, index))?)
    }
}

fn proof_error(error: ProofError<AuditError>) -> AuditError {
    match error {
        ProofError::Store(error) => error,
        other => AuditError::OutOfRange(other.to_string()),
    }
}

/// The audit log of one vault: its origin, its checkpoint signer, and what
/// is known to be durable. Cheap to clone: transactions take a clone.
#[derive(Clone)]
pub struct AuditLog(Arc<Shared>);

struct Shared {
    origin: String,
    signer: NoteSigner,
    /// Entries known to be flushed; set by the commit thread after each
    /// flush, before any caller hears back.
    durable_size: AtomicU64,
    /// The newest checkpoint known to be flushed.
    latest_note: RwLock<String>,
    /// When (Unix seconds) a checkpoint was last kept in the history.
    history_secs: AtomicU64,
    /// Complete subtree hashes at [`NODE_CACHE_LEVEL_MIN`] and above. They
    /// never change once complete, so the cache never needs invalidating.
    nodes: RwLock<HashMap<(u32, u64), Hash>>,
    /// Where a checkpoint is recorded before it is handed out; unset for a
    /// vault without a data directory.
    publication: std::sync::OnceLock<published::Publication>,
    /// Set while the store is behind a published checkpoint.
    signing_refused: RwLock<Option<published::Rollback>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.0.origin)
            .field("signer", &self.0.signer)
            .finish_non_exhaustive()
    }
}

/// Whether `origin` can name a log: it is also the signed-note key name, so
/// it must be non-empty, at most 256 bytes, without whitespace, control
/// characters or `+`.
pub fn origin_is_valid(origin: &str) -> bool {
    !origin.is_empty()
        && origin.len() <= 256
        && !origin.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+')
}

/// The default origin of a new vault's log: a name unique to the vault.
pub fn origin_default(rng: &dyn ring::rand::SecureRandom) -> Result<String, CryptoError> {
    let id: [u8; 8] = crate::crypto::random_bytes(rng)?;
    Ok(format!("consentvault.local/{}", crate::ids::hex(&id)))
}

impl AuditLog {
    /// The records a new vault starts with: the origin and a fresh signing
    /// key sealed under the current KEK.
    pub fn init_records(keys: &KeyRing, origin: &str) -> Result<WriteBatch, AuditError> {
        let pkcs8 = zeroize::Zeroizing::new(NoteSigner::generate_pkcs8(keys.rng())?);
        // Refuse an origin that cannot be a signed-note key name now, not at
        // the first checkpoint.
        NoteSigner::from_pkcs8(origin, &pkcs8)?;
        let sealed = keys.secret_seal(SIGNING_KEY_LABEL, &pkcs8)?;
        let mut batch = WriteBatch::new();
        batch.insert(Key::meta(ORIGIN_KEY).as_bytes().to_vec(), Some(origin.as_bytes().to_vec()));
        batch.insert(Key::meta(SIGNING_KEY_KEY).as_bytes().to_vec(), Some(sealed));
        Ok(batch)
    }

    /// Loads the origin and unseals the signing key.
    pub fn load(store: &Store, keys: &KeyRing) -> Result<Self, AuditError> {
        let origin = store.get(&Key::meta(ORIGIN_KEY))?.ok_or(AuditError::Corrupt("origin"))?;
        let origin = String::from_utf8(origin).map_err(|_| AuditError::Corrupt("origin"))?;
        let sealed = store.get(&Key::meta(SIGNING_KEY_KEY))?.ok_or(AuditError::Corrupt("signing key"))?;
        let pkcs8 = keys.secret_open(SIGNING_KEY_LABEL, &sealed)?;
        let signer = NoteSigner::from_pkcs8(&origin, &pkcs8)?;
        // Everything a store holds when it opens is on disk.
        let durable_size = AtomicU64::new(size(store)?);
        let latest_note = match store.get(&Key::meta(LATEST_NOTE_KEY))? {
            Some(note) => String::from_utf8(note).map_err(|_| AuditError::Corrupt("latest checkpoint"))?,
            None => String::new(),
        };
        Ok(Self(Arc::new(Shared {
            origin,
            signer,
            durable_size,
            latest_note: RwLock::new(latest_note),
            history_secs: AtomicU64::new(0),
            nodes: RwLock::new(HashMap::new()),
            publication: std::sync::OnceLock::new(),
            signing_refused: RwLock::new(None),
        })))
    }

    /// Records every checkpoint handed out from now on in the file at
    /// `path`, which holds one of size `published_size` (0: none).
    pub fn publish_to(&self, path: std::path::PathBuf, published_size: u64) {
        let _ = self.0.publication.set(published::Publication::new(path, published_size));
    }

    /// Refuses to sign any checkpoint while `rollback` holds (`None`: signs
    /// again): every batch that would sign one fails, so nothing commits.
    pub fn refuse_signing(&self, rollback: Option<published::Rollback>) {
        if let Ok(mut refused) = self.0.signing_refused.write() {
            *refused = rollback;
        }
    }

    /// Appends `event` in `txn`: stores its canonical bytes at the next
    /// index, the subtree hashes the append completes, the new size, and the
    /// subject and business markers. Once the batch is flushed, the durable
    /// size and the node cache follow.
    pub fn append(&self, txn: &mut Txn<'_>, event: &AuditEvent) -> Result<Appended, AuditError> {
        let bytes = event.to_bytes()?;
        let index = size_in(txn)?;
        let leaf = merkle::leaf_hash(&bytes);
        let completed = merkle::appended_subtrees(index, leaf, |level, at| node_in(txn, level, at))?;
        // Level 0 is the leaf hash of the entry itself: not stored twice.
        for (level, at, hash) in completed.iter().filter(|(level, _, _)| *level > 0) {
            txn.put(Key::audit_node(*level, *at), hash.to_vec());
        }
        let nodes: Vec<(u32, u64, Hash)> =
            completed.into_iter().filter(|(level, _, _)| *level >= NODE_CACHE_LEVEL_MIN).collect();
        txn.put(Key::audit_entry(index), bytes);
        txn.put(Key::meta(SIZE_KEY), (index + 1).to_be_bytes().to_vec());
        if let Some(subject) = event.subject {
            txn.put(Key::audit_by_subject(subject.as_bytes(), index), Vec::new());
        }
        if let Some(business) = &event.business {
            txn.put(Key::audit_by_business(business, index), Vec::new());
        }
        let log = self.clone();
        txn.on_durable(move || {
            log.0.durable_size.fetch_max(index + 1, Ordering::AcqRel);
            for (level, at, hash) in &nodes {
                log.node_cache(*level, *at, hash);
            }
        });
        Ok(Appended { index, batch_seq: txn.batch_seq(), subject: event.subject, fields: event.fields.clone() })
    }

    /// The function that ends every writing batch: if the batch appended,
    /// it signs a checkpoint of the log as the batch leaves it, in the same
    /// batch. So no entry is ever on disk without a checkpoint covering it,
    /// and entries added behind the vault's back are visible at start-up.
    pub fn finalizer(&self) -> crate::store::Finalizer {
        let log = self.clone();
        Box::new(move |txn: &mut Txn<'_>| {
            log.checkpoint_in(txn, false).map(drop).map_err(|error| StoreError::Engine(format!("checkpoint: {error}")))
        })
    }

    /// The log's origin (the first line of every checkpoint, and the key name).
    pub fn origin(&self) -> &str {
        &self.0.origin
    }

    /// The signed-note verifier key: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub fn verifier_key(&self) -> String {
        self.0.signer.verifier_key()
    }

    /// A verifier for this log's checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        self.0.signer.verifier()
    }

    /// The signer (for receipts signed with the vault's key).
    pub fn signer(&self) -> &NoteSigner {
        &self.0.signer
    }

    /// Turns an append into proof that it is on disk, given the store's
    /// proof for the batch that carried it.
    pub fn confirm(&self, appended: Appended, durable: &Durable) -> Result<Logged, AuditError> {
        if appended.batch_seq != durable.batch_seq() {
            return Err(AuditError::NotDurable);
        }
        Ok(Logged { index: appended.index, subject: appended.subject, fields: appended.fields })
    }

    /// Remembers a complete subtree hash if its level is cached.
    pub fn node_cache(&self, level: u32, index: u64, hash: &Hash) {
        if level >= NODE_CACHE_LEVEL_MIN
            && let Ok(mut nodes) = self.0.nodes.write()
        {
            nodes.insert((level, index), *hash);
        }
    }

    /// The number of entries known to be on disk; proofs are served up to it.
    pub fn durable_size(&self) -> u64 {
        self.0.durable_size.load(Ordering::Acquire)
    }

    /// Signs and stores a checkpoint of the log as `txn` sees it, if the log
    /// has grown since the latest one (or none exists, or `keep` asks for a
    /// copy in the history). The latest checkpoint is always stored; a copy
    /// is kept in the history at most once a second while the log grows (and
    /// when `keep`). Returns the size.
    pub fn checkpoint_in(&self, txn: &mut Txn<'_>, keep: bool) -> Result<Option<u64>, AuditError> {
        if let Some(rollback) = self.0.signing_refused.read().ok().and_then(|refused| refused.clone()) {
            return Err(AuditError::SigningRefused(rollback));
        }
        let size = size_in(txn)?;
        let latest = txn.get(&Key::meta(LATEST_CHECKPOINT_KEY))?;
        let grown = latest.is_none() || counter_decode(latest.as_deref())? < size;
        let now_secs = u64::try_from(crate::clock::now().unix_timestamp()).unwrap_or(0);
        let history_due = now_secs > self.0.history_secs.load(Ordering::Acquire);
        let in_history = txn.contains(&Key::audit_checkpoint(size))?;
        let copy_wanted = keep && !in_history;
        if !grown && !copy_wanted {
            return Ok(None);
        }
        let root = merkle::root(&TxnTree(txn), size)?;
        let note = self.0.signer.sign_checkpoint(&Checkpoint::new(self.0.origin.clone(), size, root))?;
        txn.put(Key::meta(LATEST_CHECKPOINT_KEY), size.to_be_bytes().to_vec());
        txn.put(Key::meta(LATEST_NOTE_KEY), note.clone().into_bytes());
        let keep_copy = keep || history_due;
        if keep_copy {
            txn.put(Key::audit_checkpoint(size), note.clone().into_bytes());
        }
        let log = self.clone();
        txn.on_durable(move || {
            if keep_copy {
                log.0.history_secs.fetch_max(now_secs, Ordering::AcqRel);
            }
            if let Ok(mut latest) = log.0.latest_note.write() {
                *latest = note;
            }
        });
        Ok(Some(size))
    }

    /// The newest signed checkpoint that is on disk, to hand out: it is
    /// recorded as published first ([`published`]).
    pub fn checkpoint_latest(&self) -> Result<String, AuditError> {
        self.hand_out(self.latest_note()?)
    }

    fn latest_note(&self) -> Result<String, AuditError> {
        let note = self.0.latest_note.read().map(|note| note.clone()).map_err(|_| AuditError::Corrupt("checkpoint"))?;
        if note.is_empty() {
            return Err(AuditError::Corrupt("latest checkpoint"));
        }
        Ok(note)
    }

    /// `note` as it may leave the vault: recorded as published first if it
    /// is newer than every checkpoint recorded.
    fn hand_out(&self, note: String) -> Result<String, AuditError> {
        let Some(publication) = self.0.publication.get() else { return Ok(note) };
        let size = note.lines().nth(1).and_then(|size| size.parse().ok()).ok_or(AuditError::Corrupt("checkpoint"))?;
        publication.record(&note, size).map_err(|error| {
            AuditError::from(StoreError::Unavailable(format!("cannot record the published checkpoint: {error}")))
        })?;
        Ok(note)
    }

    fn check_durable(&self, tree_size: u64) -> Result<(), AuditError> {
        let durable = self.durable_size();
        if tree_size > durable {
            return Err(AuditError::OutOfRange(format!("tree size {tree_size} is larger than the log ({durable})")));
        }
        Ok(())
    }

    /// The inclusion proof of entry `index` in the tree of `tree_size`.
    pub fn inclusion_proof(&self, store: &Store, index: u64, tree_size: u64) -> Result<Vec<Hash>, AuditError> {
        self.check_durable(tree_size)?;
        merkle::inclusion_proof(&StoreTree { store, log: self }, index, tree_size).map_err(proof_error)
    }

    /// The consistency proof between the trees of `old_size` and `new_size`.
    pub fn consistency_proof(&self, store: &Store, old_size: u64, new_size: u64) -> Result<Vec<Hash>, AuditError> {
        self.check_durable(new_size)?;
        merkle::consistency_proof(&StoreTree { store, log: self }, old_size, new_size).map_err(proof_error)
    }

    /// The root of the tree of `tree_size`.
    pub fn root(&self, store: &Store, tree_size: u64) -> Result<Hash, AuditError> {
        self.check_durable(tree_size)?;
        merkle::root(&StoreTree { store, log: self }, tree_size)
    }

    /// The exact stored bytes of entry `index`, if it is durable.
    pub fn entry(&self, store: &Store, index: u64) -> Result<Option<Vec<u8>>, AuditError> {
        if index >= self.durable_size() {
            return Ok(None);
        }
        Ok(store.get(&Key::audit_entry(index))?)
    }

    /// Up to `limit` durable entries from `start` on, in index order.
    pub fn entries(&self, store: &Store, start: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let end = self.durable_size();
        if start >= end {
            return Ok(Vec::new());
        }
        let rows = store.scan_range(&Key::audit_entry(start), &Key::audit_entry(end), limit)?;
        rows.into_iter()
            .map(|(key, bytes)| entry_index(&key).map(|index| (index, bytes)))
            .collect::<Option<Vec<_>>>()
            .ok_or(AuditError::Corrupt("entry key"))
    }

    /// Up to `limit` durable entry indices of `subject` from `start` on.
    pub fn indices_of_subject(
        &self,
        store: &Store,
        subject: SubjectId,
        start: u64,
        limit: usize,
    ) -> Result<Vec<u64>, AuditError> {
        let prefix = Key::audit_by_subject_all(subject.as_bytes());
        self.indices_under(store, &prefix, start, limit)
    }

    /// Up to `limit` durable entry indices of `business` from `start` on.
    pub fn indices_of_business(
        &self,
        store: &Store,
        business: &str,
        start: u64,
        limit: usize,
    ) -> Result<Vec<u64>, AuditError> {
        let prefix = Key::audit_by_business_all(business);
        self.indices_under(store, &prefix, start, limit)
    }

    /// The earliest checkpoint kept in the history whose tree contains entry
    /// `index` and is durable, recorded as published first if it is newer
    /// than every one recorded. `None` if there is none yet.
    pub fn checkpoint_covering(&self, store: &Store, index: u64) -> Result<Option<String>, AuditError> {
        let end = self.durable_size();
        if index >= end {
            return Ok(None);
        }
        let rows = store.scan_range(
            &Key::audit_checkpoint(index.saturating_add(1)),
            &Key::audit_checkpoint(end.saturating_add(1)),
            1,
        )?;
        rows.into_iter()
            .next()
            .map(|(_, note)| {
                let note = String::from_utf8(note).map_err(|_| AuditError::Corrupt("checkpoint"))?;
                self.hand_out(note)
            })
            .transpose()
    }

    fn indices_under(&self, store: &Store, prefix: &Key, start: u64, limit: usize) -> Result<Vec<u64>, AuditError> {
        let end = self.durable_size();
        let from = prefix.with_suffix(&start.to_be_bytes());
        let to = prefix.with_suffix(&end.to_be_bytes());
        let rows = store.scan_range(&from, &to, limit)?;
        rows.iter()
            .map(|(key, _)| prefix.suffix_of(key).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes))
            .collect::<Option<Vec<_>>>()
            .ok_or(AuditError::Corrupt("index marker"))
    }
}

/// The index in an audit entry key.
fn entry_index(key: &[u8]) -> Option<u64> {
    Key::audit_entries_all().suffix_of(key).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes)
}

/// The key of the newest signed checkpoint note. Every batch that appends
/// rewrites it, so in any state the store passes through it covers the whole
/// log (a backup takes its trailer from it).
pub fn checkpoint_note_key() -> Key {
    Key::meta(LATEST_NOTE_KEY)
}

/// The stored log size (entries applied).
pub fn size(store: &Store) -> Result<u64, AuditError> {
    Ok(counter_decode(store.get(&Key::meta(SIZE_KEY))?.as_deref())?)
}
