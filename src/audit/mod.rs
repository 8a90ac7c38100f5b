//! The tamper-evident audit log: an append-only list of events, an RFC 9162
//! Merkle tree over their exact bytes, and signed C2SP checkpoints.
//!
//! Appends happen inside a store transaction ([`append`](AuditLog::append)), so an event lands
//! in the same atomic batch and flush as the change it records, and in commit
//! order. The store keeps, per batch, one record of the entries it appended,
//! one group of indices per subject and per business they concern
//! ([`records`]), the log's size and right edge (the [`Frontier`], from which
//! the checkpoint's root follows), and the hashes of the complete subtrees
//! of [`STORED_LEVEL_MIN`] levels and more that the batch finished (one per
//! sixteen entries); smaller subtrees are recomputed from the entries.
//! Proofs need O(log n) reads.
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
pub mod records;
pub mod replay;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use event::{Actor, AuditEvent, Decision, EVENT_BYTES_MAX, EventError, EventKind, Related, Role, Window, Withheld};

use crate::crypto::{CryptoError, KeyRing};
use crate::ids::SubjectId;
use crate::store::{Durable, Entries, Key, Store, StoreError, Txn, WriteBatch, counter_decode};
use checkpoint::{Checkpoint, KeyError, NoteError, NoteSigner, NoteVerifier};
use merkle::{Frontier, Hash, ProofError, SubtreeHashes};

/// The tree size a checkpoint's text names (its second line).
pub fn checkpoint_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// An entry with its inclusion proof: its exact bytes (the leaf input) and
/// the audit path from its leaf to the root of the tree of `tree_size`
/// (RFC 9162 §2.1.3), base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct EntryProof {
    /// The entry's index.
    pub index: u64,
    /// The size of the tree the path leads to (a checkpoint's).
    pub tree_size: u64,
    /// The exact stored entry bytes, base64.
    #[schema(format = Byte)]
    pub entry: String,
    /// The audit path, leaf to root, each hash base64.
    pub hashes: Vec<String>,
}

/// The label of the checkpoint signing key sealed under the KEK.
pub(crate) const SIGNING_KEY_LABEL: &str = "audit-signing-key";
const SIZE_KEY: &str = "audit/size";
/// The log's right edge: the hashes of the complete subtrees that make up
/// the whole tree, largest first ([`Frontier::to_bytes`]).
const FRONTIER_KEY: &str = "audit/frontier";
pub(crate) const SIGNING_KEY_KEY: &str = "audit/signing-key";
const ORIGIN_KEY: &str = "audit/origin";
const LATEST_CHECKPOINT_KEY: &str = "audit/checkpoint";
const LATEST_NOTE_KEY: &str = "audit/checkpoint-note";
/// Subtree hashes at this level and above are stored, and kept in memory
/// (1/16 of the leaves: 62,500 hashes for a log of 10^6); a proof
/// recomputes the few it needs below it from at most 15 entries.
pub const STORED_LEVEL_MIN: u32 = 4;

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
    messages: Vec<String>,
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
    messages: Vec<String>,
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

    /// Whether the logged event (a `message.read`) opened message
    /// `message` of `subject`.
    pub fn covers_message(&self, subject: SubjectId, message: &str) -> bool {
        self.subject == Some(subject) && self.messages.iter().any(|m| m == message)
    }
}

fn size_in(txn: &Txn<'_>) -> Result<u64, AuditError> {
    Ok(counter_decode(txn.get(&Key::meta(SIZE_KEY))?.as_deref())?)
}

fn decode_hash(bytes: Option<Vec<u8>>) -> Result<Hash, AuditError> {
    bytes.and_then(|bytes| bytes.try_into().ok()).ok_or(AuditError::Corrupt("subtree hash"))
}

/// The log's right edge as `txn` sees it, for a log of `size` entries.
fn frontier_in(txn: &Txn<'_>, size: u64) -> Result<Frontier, AuditError> {
    match txn.get(&Key::meta(FRONTIER_KEY))? {
        Some(bytes) => Frontier::of_bytes(size, &bytes).ok_or(AuditError::Corrupt("frontier")),
        None if size == 0 => Ok(Frontier::default()),
        None => Err(AuditError::Corrupt("frontier")),
    }
}

/// Adds `index` to the group at `key` if this batch wrote it, else starts
/// the group there ([`records`]: a group's key is the first index of the
/// record being written, so only this batch can have written it).
fn group_append(txn: &mut Txn<'_>, key: Key, index: u64) {
    let earlier = match txn.pending(&key) {
        Some(Some(group)) => group.as_slice(),
        _ => &[],
    };
    let mut group = Vec::with_capacity(earlier.len() + 8);
    group.extend_from_slice(earlier);
    group.extend_from_slice(&index.to_be_bytes());
    txn.put(key, group);
}

/// The record of entries a batch is appending to.
#[derive(Debug, Default)]
struct OpenRecord {
    batch_seq: u64,
    first: u64,
}

/// Subtree hashes as committed in the store, upper levels from memory.
struct StoreTree<'s> {
    store: &'s Store,
    log: &'s AuditLog,
}

impl SubtreeHashes for StoreTree<'_> {
    type Error = AuditError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, AuditError> {
        if level >= STORED_LEVEL_MIN
            && let Some(hash) = self.log.0.nodes.read().ok().and_then(|nodes| nodes.get(&(level, index)).copied())
        {
            return Ok(hash);
        }
        if level < STORED_LEVEL_MIN {
            return self.log.subtree_of_entries(self.store, level, index);
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
    /// Complete subtree hashes at [`STORED_LEVEL_MIN`] and above. They
    /// never change once complete, so the cache never needs invalidating.
    nodes: RwLock<HashMap<(u32, u64), Hash>>,
    /// Where a checkpoint is recorded before it is handed out; unset for a
    /// vault without a data directory.
    publication: std::sync::OnceLock<published::Publication>,
    /// Set while the store is behind a published checkpoint.
    signing_refused: RwLock<Option<published::Rollback>>,
    /// Where the current batch appends its entries (used on the commit
    /// thread only; checked against the batch's writes before use).
    open_record: Mutex<OpenRecord>,
    /// Sees every event as it is appended, in its transaction.
    observer: std::sync::OnceLock<Observer>,
}

/// What sees every appended event in the transaction that appends it, with
/// its index: its writes commit with the event or not at all (the webhook
/// outbox). An `Err` fails the transaction.
pub type Observer = Box<dyn Fn(&mut Txn<'_>, &AuditEvent, u64) -> Result<(), StoreError> + Send + Sync>;

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
            open_record: Mutex::new(OpenRecord::default()),
            observer: std::sync::OnceLock::new(),
        })))
    }

    /// Installs the observer every later append calls (once; a second is
    /// ignored and reported as `false`).
    pub fn observe(&self, observer: Observer) -> bool {
        self.0.observer.set(observer).is_ok()
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

    /// The index the next event appended in `txn` takes, for records that
    /// name their event and are written beside it.
    pub fn next_index_in(&self, txn: &Txn<'_>) -> Result<u64, AuditError> {
        size_in(txn)
    }

    /// Appends `event` in `txn`: its canonical bytes go into the batch's
    /// record at the next index, its index into the batch's groups of the
    /// subject and business it names; the log's size and right edge move
    /// on, and a subtree hash is stored if the append completes one of
    /// [`STORED_LEVEL_MIN`] levels or more. Once the batch is flushed, the
    /// durable size and the node cache follow.
    pub fn append(&self, txn: &mut Txn<'_>, event: &AuditEvent) -> Result<Appended, AuditError> {
        let bytes = event.to_bytes()?;
        let index = size_in(txn)?;
        let mut frontier = frontier_in(txn, index)?;
        let mut nodes = frontier.push(index, merkle::leaf_hash(&bytes));
        nodes.retain(|(level, _, _)| *level >= STORED_LEVEL_MIN);
        for (level, at, hash) in &nodes {
            txn.put(Key::audit_node(*level, *at), hash.to_vec());
        }
        txn.put(Key::meta(FRONTIER_KEY), frontier.to_bytes());
        let first = self.record_append(txn, index, &bytes)?;
        txn.put(Key::meta(SIZE_KEY), (index + 1).to_be_bytes().to_vec());
        if let Some(subject) = event.subject {
            group_append(txn, Key::audit_by_subject(subject.as_bytes(), first), index);
        }
        if let Some(business) = &event.business {
            group_append(txn, Key::audit_by_business(business, first), index);
        }
        if let Some(observe) = self.0.observer.get() {
            observe(txn, event, index)?;
        }
        let log = self.clone();
        txn.on_durable(move || {
            log.0.durable_size.fetch_max(index + 1, Ordering::AcqRel);
            for (level, at, hash) in &nodes {
                log.node_cache(*level, *at, hash);
            }
        });
        Ok(Appended {
            index,
            batch_seq: txn.batch_seq(),
            subject: event.subject,
            fields: event.fields.clone(),
            messages: event.messages.clone(),
        })
    }

    /// Puts entry `index` into the record this batch appends to, or into a
    /// new one that starts at it; returns the record's first index.
    fn record_append(&self, txn: &mut Txn<'_>, index: u64, entry: &[u8]) -> Result<u64, AuditError> {
        let mut open = self.0.open_record.lock().map_err(|_| AuditError::Corrupt("open record"))?;
        if open.batch_seq == txn.batch_seq() && open.first < index && index - open.first < records::RECORD_ENTRIES_MAX {
            let key = Key::audit_record(open.first);
            // The record as this batch left it: a transaction that failed
            // after extending it took its entries with it.
            if let Some(Some(record)) = txn.pending(&key)
                && record.len() + 4 + entry.len() <= records::RECORD_BYTES_MAX
                && records::record_len(record) == Some(index - open.first)
            {
                // Sized once: the record is copied, never grown.
                let mut extended = Vec::with_capacity(record.len() + 4 + entry.len());
                extended.extend_from_slice(record);
                records::record_push(&mut extended, entry);
                txn.put(key, extended);
                return Ok(open.first);
            }
        }
        *open = OpenRecord { batch_seq: txn.batch_seq(), first: index };
        let mut record = Vec::with_capacity(4 + entry.len());
        records::record_push(&mut record, entry);
        txn.put(Key::audit_record(index), record);
        Ok(index)
    }

    /// The function that ends every writing batch: if the batch appended,
    /// it signs a checkpoint of the log as the batch leaves it, in the same
    /// batch. So no entry is ever on disk without a checkpoint covering it,
    /// and entries added behind the vault's back are visible at start-up.
    pub fn finalizer(&self) -> crate::store::Finalizer {
        let log = self.clone();
        Box::new(move |txn: &mut Txn<'_>| {
            log.checkpoint_in(txn, false).map(drop).map_err(|error| match error {
                // A storage failure stays one (a full disk is a 503 that
                // recovers by itself, not an internal error).
                AuditError::Store(error) => error,
                other => StoreError::Engine(format!("checkpoint: {other}")),
            })
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
        Ok(Logged {
            index: appended.index,
            subject: appended.subject,
            fields: appended.fields,
            messages: appended.messages,
        })
    }

    /// Remembers a complete subtree hash if its level is cached.
    pub fn node_cache(&self, level: u32, index: u64, hash: &Hash) {
        if level >= STORED_LEVEL_MIN
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
        let root = frontier_in(txn, size)?.root();
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
        let size = checkpoint_size(&note).ok_or(AuditError::Corrupt("checkpoint"))?;
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

    /// Entry `index` with its inclusion proof in the tree of `tree_size`, in
    /// the form people and their tools check: the exact bytes and the audit
    /// path, base64.
    pub fn entry_proof(&self, store: &Store, index: u64, tree_size: u64) -> Result<EntryProof, AuditError> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let hashes = self.inclusion_proof(store, index, tree_size)?;
        let entry = self.entry(store, index)?.ok_or(AuditError::Corrupt("entry under a checkpoint"))?;
        Ok(EntryProof {
            index,
            tree_size,
            entry: STANDARD.encode(entry),
            hashes: hashes.iter().map(|hash| STANDARD.encode(hash)).collect(),
        })
    }

    /// The latest checkpoint and, for each of `indices`, its entry and
    /// inclusion proof in that checkpoint's tree (`None` for an index past
    /// it): what a customer checks her own entries with.
    pub fn entry_proofs_latest(
        &self,
        store: &Store,
        indices: impl IntoIterator<Item = u64>,
    ) -> Result<(String, Vec<Option<EntryProof>>), AuditError> {
        let checkpoint = self.checkpoint_latest()?;
        let size = checkpoint_size(&checkpoint).ok_or(AuditError::Corrupt("checkpoint"))?;
        let proofs = indices
            .into_iter()
            .map(|index| (index < size).then(|| self.entry_proof(store, index, size)).transpose())
            .collect::<Result<_, _>>()?;
        Ok((checkpoint, proofs))
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
        Ok(self.entries(store, index, 1)?.into_iter().next().map(|(_, bytes)| bytes))
    }

    /// Up to `limit` durable entries from `start` on, in index order.
    pub fn entries(&self, store: &Store, start: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let end = self.durable_size();
        let end = end.min(start.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX)));
        entries_between(store, start, end)
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

    /// The hash of the subtree at `level` (below [`STORED_LEVEL_MIN`]),
    /// `index`, recomputed from its entries.
    fn subtree_of_entries(&self, store: &Store, level: u32, index: u64) -> Result<Hash, AuditError> {
        let start = index << level;
        let entries = entries_between(store, start, start + (1 << level))?;
        if entries.len() != 1 << level {
            return Err(AuditError::Corrupt("entry"));
        }
        let mut hashes: Vec<Hash> = entries.iter().map(|(_, bytes)| merkle::leaf_hash(bytes)).collect();
        while hashes.len() > 1 {
            hashes = hashes.chunks(2).map(|pair| merkle::node_hash(&pair[0], &pair[pair.len() - 1])).collect();
        }
        hashes.pop().ok_or(AuditError::Corrupt("entry"))
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
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut indices = Vec::new();
        for (key, group) in covering(store, prefix, start, end, limit)? {
            let first = records::key_index(prefix, &key).ok_or(AuditError::Corrupt("index group key"))?;
            let group = records::group_indices(first, &group).ok_or(AuditError::Corrupt("index group"))?;
            indices.extend(group.into_iter().filter(|index| (start..end).contains(index)));
            if indices.len() >= limit {
                break;
            }
        }
        indices.truncate(limit);
        Ok(indices)
    }
}

/// The rows under `prefix` keyed by an index (u64) that can hold indices
/// from `start` to `end` ([`records`]: a record or a group): the last keyed
/// at or before `start`, then up to `limit` keyed after it and before `end`.
fn covering(store: &Store, prefix: &Key, start: u64, end: u64, limit: usize) -> Result<Entries, AuditError> {
    let after_start = prefix.with_suffix(&(start + 1).to_be_bytes());
    let mut rows: Entries = store.last_in(prefix, &after_start)?.into_iter().collect();
    rows.extend(store.scan_range(&after_start, &prefix.with_suffix(&end.to_be_bytes()), limit)?);
    Ok(rows)
}

/// The stored entries with indices in `start..end`, in index order: from
/// the record that holds `start` on.
fn entries_between(store: &Store, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
    if start >= end {
        return Ok(Vec::new());
    }
    let all = Key::audit_records_all();
    let wanted = usize::try_from(end - start).unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    // Each record holds one entry at least.
    for (key, record) in covering(store, &all, start, end, wanted)? {
        let first = records::key_index(&all, &key).ok_or(AuditError::Corrupt("entry record key"))?;
        let record = records::record_entries(&record).ok_or(AuditError::Corrupt("entry record"))?;
        for (index, bytes) in (first..).zip(record) {
            if (start..end).contains(&index) {
                entries.push((index, bytes.to_vec()));
            }
        }
        if entries.len() >= wanted {
            break;
        }
    }
    Ok(entries)
}

/// Entries replayed per read of the store.
const REPLAY_CHUNK: u64 = 1_024;

/// Replays the first `size` entries of the log in `store` (see
/// [`replay::replay`]), with the policy bundles the store holds; `progress`
/// hears how many entries are done. Needs no key: the entries and bundles
/// are stored in clear (a backup loaded into memory can be replayed).
pub fn replay_store(store: &Store, size: u64, progress: &dyn Fn(u64)) -> Result<replay::ReplaySummary, AuditError> {
    let bundle_of = |sha256: &str| store.get(&Key::audit_policy(sha256)).ok().flatten();
    let mut next = 0;
    let mut chunk = std::collections::VecDeque::new();
    let entries = std::iter::from_fn(|| {
        if chunk.is_empty() && next < size {
            match entries_between(store, next, size.min(next + REPLAY_CHUNK)) {
                Ok(read) if read.first().is_some_and(|(index, _)| *index == next) => {
                    next += read.len() as u64;
                    chunk.extend(read);
                }
                Ok(_) => {
                    next = size;
                    return Some(Err(AuditError::Corrupt("entry record")));
                }
                Err(error) => {
                    next = size;
                    return Some(Err(error));
                }
            }
        }
        chunk.pop_front().map(Ok)
    });
    replay::replay(entries, &bundle_of, progress)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::testing::Services;
    use merkle::MemoryTree;

    fn event(n: usize, subject: SubjectId, padding: usize) -> AuditEvent {
        let fields = vec![format!("field-{n}"), "x".repeat(padding)];
        let mut event = AuditEvent::new(EventKind::DataRead, Actor::customer(subject), "2026-12-02T00:00:00Z")
            .subject(subject)
            .fields(fields);
        event.business = Some(if n.is_multiple_of(3) { "acme" } else { "globex" }.to_owned());
        event
    }

    /// Appends `events` in one transaction; `fail` rejects it after the
    /// appends. Returns each appended event's index and bytes.
    async fn append_all(
        core: &crate::core::Core,
        events: Vec<AuditEvent>,
        fail: bool,
    ) -> Option<Vec<(u64, Vec<u8>, SubjectId)>> {
        let log = core.audit().clone();
        let committed = core
            .store()
            .commit(move |txn| {
                let mut appended = Vec::new();
                for event in &events {
                    let index = log.append(txn, event).map_err(|_| "append")?.index();
                    appended.push((index, event.to_bytes().unwrap(), event.subject.unwrap()));
                }
                if fail { Err("rejected after appending") } else { Ok(appended) }
            })
            .await;
        committed.ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_appends_keep_every_entry_once_in_order_and_prove_like_a_tree_in_memory() {
        let services = Services::new();
        let core = Arc::clone(&services.core);
        let subjects: Vec<SubjectId> = (1..=3u8).map(|n| SubjectId::from_bytes([n; 16])).collect();
        let base = core.audit().durable_size();

        // Concurrent transactions, so batches hold several; every fifth
        // fails after appending, in the middle of a batch.
        let mut tasks = Vec::new();
        for task in 0..60usize {
            let core = Arc::clone(&core);
            let subject = subjects[task % 3];
            tasks.push(tokio::spawn(async move {
                let events = (0..1 + task % 3).map(|n| event(task * 10 + n, subject, task % 7 * 40)).collect();
                append_all(&core, events, task % 5 == 4).await.map(|appended| (task, appended))
            }));
        }
        let mut expected: Vec<(u64, Vec<u8>, SubjectId)> = Vec::new();
        for task in tasks {
            if let Some((task, appended)) = task.await.unwrap() {
                assert_ne!(task % 5, 4, "a rejected transaction is not acknowledged");
                expected.extend(appended);
            }
        }
        // A transaction larger than a record, by count and by bytes.
        let many = (0..300).map(|n| event(n, subjects[0], 0)).collect();
        expected.extend(append_all(&core, many, false).await.unwrap());
        let large = (0..7).map(|n| event(n, subjects[1], 10_000)).collect();
        expected.extend(append_all(&core, large, false).await.unwrap());
        expected.sort_by_key(|(index, _, _)| *index);

        let store = core.store();
        let log = core.audit();
        let size = log.durable_size();
        assert_eq!(size, base + expected.len() as u64, "every acknowledged append, no rejected one");
        let indices: Vec<u64> = expected.iter().map(|(index, _, _)| *index).collect();
        assert_eq!(indices, (base..size).collect::<Vec<_>>(), "indices are dense");

        // Records: within their bounds, and some hold several entries.
        let records = store.scan_prefix(&Key::audit_records_all(), usize::MAX).unwrap();
        let mut shared = 0;
        for (_, record) in &records {
            let entries = records::record_entries(record).unwrap();
            assert!(entries.len() as u64 <= records::RECORD_ENTRIES_MAX);
            assert!(entries.len() == 1 || record.len() <= records::RECORD_BYTES_MAX);
            shared += usize::from(entries.len() > 1);
        }
        assert!(shared > 0 && records.len() < expected.len(), "{} records", records.len());

        // Entries read back from anywhere, in pages of any length.
        let all = log.entries(store, 0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, size);
        for (index, bytes, _) in &expected {
            assert_eq!(&all[*index as usize].1, bytes);
            assert_eq!(log.entry(store, *index).unwrap().as_ref(), Some(bytes));
        }
        for start in (0..size).step_by(7) {
            let page = log.entries(store, start, 5).unwrap();
            assert_eq!(page, all[start as usize..(start as usize + 5).min(all.len())].to_vec());
        }
        assert_eq!(log.entry(store, size).unwrap(), None);

        // Each subject's and business's indices, from any start.
        for subject in &subjects {
            let mine: Vec<u64> =
                expected.iter().filter(|(_, _, of)| of == subject).map(|(index, _, _)| *index).collect();
            for start in (0..size).step_by(5) {
                let from: Vec<u64> = mine.iter().copied().filter(|index| *index >= start).take(9).collect();
                assert_eq!(log.indices_of_subject(store, *subject, start, 9).unwrap(), from, "start {start}");
            }
        }
        let acme = |bytes: &[u8]| AuditEvent::from_bytes(bytes).unwrap().business.as_deref() == Some("acme");
        let of_acme: Vec<u64> = all.iter().filter(|(_, bytes)| acme(bytes)).map(|(index, _)| *index).collect();
        assert_eq!(log.indices_of_business(store, "acme", 0, usize::MAX).unwrap(), of_acme);

        // Roots, inclusion and consistency proofs match a tree in memory.
        let mut tree = MemoryTree::new();
        let mut roots = vec![merkle::empty_root()];
        for (_, bytes) in &all {
            tree.push(bytes);
            roots.push(tree.root());
        }
        for (n, root) in roots.iter().enumerate() {
            assert_eq!(log.root(store, n as u64).unwrap(), *root, "root at {n}");
        }
        for index in 0..size {
            let proof = log.inclusion_proof(store, index, size).unwrap();
            assert_eq!(proof, merkle::inclusion_proof(&tree, index, size).unwrap(), "index {index}");
        }
        for old in (1..size).step_by(13) {
            let proof = log.consistency_proof(store, old, size).unwrap();
            assert_eq!(proof, merkle::consistency_proof(&tree, old, size).unwrap(), "old size {old}");
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let verified =
            verify::verify_log(store, &log.verifier(), log.origin(), verify::Depth::Full, false, &|_, _, _| {}, &stop)
                .unwrap();
        assert_eq!((verified.size, verified.root), (size, tree.root()));
    }
}
