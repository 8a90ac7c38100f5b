//! Durable storage behind a narrow, typed interface.
//!
//! The rest of the vault sees three things: [`Key`]s built by typed
//! constructors, the read side of [`Store`], and [`Store::commit`], the single
//! path every mutation takes. Personal values only enter through
//! [`Txn::put_sealed`], which takes a [`Sealed`] value: the store never sees
//! plaintext personal data.
//!
//! The engine is a [`Backend`], chosen in one place, [`open`], from a
//! [`StoreConfig`]: sled in the data directory ([`sled_backend`], the
//! default), or PostgreSQL shared by an active node and its standbys
//! ([`postgres`]). Nothing outside this module names either.
//!
//! **Architecture Invariant:** a change is acknowledged (its `commit` future
//! resolves `Ok`) only after the flush of the atomic batch that carries it.

mod cache;
mod cold;
mod commit;
pub mod copy;
pub mod memory;
pub mod migrate;
pub mod postgres;
mod reader;
pub mod sled_backend;
mod txn;
mod versions;

use std::collections::BTreeMap;

pub(crate) use commit::COMMIT_THREAD_NAME;
pub use commit::{
    BatchTap, CommitError, Durable, DurableHook, Finalizer, ScanPage, Snapshot, Store, StoreReader, StoreStats, Txn,
};
pub use versions::Stamp;

use crate::crypto::Sealed;

/// The embedded store's directory inside the data directory.
pub const EMBEDDED_DIR: &str = "store";

/// Which engine holds a vault's records, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded engine (sled) in a directory, with its page cache size.
    Embedded {
        /// The store's directory (`<data-dir>/store`).
        path: std::path::PathBuf,
        /// The engine's page cache, in bytes.
        cache_bytes: u64,
    },
    /// PostgreSQL, shared by vault nodes of which one is active.
    Postgres(postgres::PostgresSettings),
}

impl StoreConfig {
    /// The embedded engine in `path` with a page cache of `cache_bytes`.
    pub fn embedded(path: &std::path::Path, cache_bytes: u64) -> Self {
        Self::Embedded { path: path.to_owned(), cache_bytes }
    }
}

/// Opens the engine `config` names: the one place an engine is chosen.
pub fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn Backend>, StoreError> {
    match config {
        StoreConfig::Embedded { path, cache_bytes } => {
            Ok(std::sync::Arc::new(sled_backend::SledBackend::open(path, *cache_bytes)?))
        }
        StoreConfig::Postgres(settings) => postgres::open(settings),
    }
}

/// One atomic set of writes: key → new value, or `None` to delete.
pub type WriteBatch = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The entries of an ordered in-memory map with `start <= key < end` (an
/// empty `end`: no upper bound), in key order: what `scan` and `last` of an
/// engine that keeps its records in a map walk.
pub(crate) fn map_range<'a>(
    map: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: &[u8],
) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    use std::ops::Bound;
    let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
    // Bounds that cross are an empty range, not a panic.
    let range = (end.is_empty() || start < end).then(|| map.range::<[u8], _>((Bound::Included(start), upper)));
    range.into_iter().flatten()
}

/// Stored entries as a scan returns them: (key, value) in key order.
pub type Entries = Vec<Entry>;
/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The storage engine failed to read, write or flush; the text is the
    /// engine's message and never holds stored values.
    #[error("storage engine failed: {0}")]
    Engine(String),
    /// The storage device refused a read, write or flush (a full disk, a
    /// file-size limit, an I/O error), or the engine is being reopened after
    /// one. Nothing was acknowledged; the commit path reopens the engine and
    /// carries on by itself once the device takes writes again.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the store: a vault is running on this data
    /// directory.
    #[error("the store at {0} is in use by another process: a vault is running on this data directory; stop it first")]
    InUse(std::path::PathBuf),
    /// Another vault node took the lease on the shared store: this node
    /// neither reads nor commits again, and stops serving.
    #[error("another vault node holds the store's lease; this node no longer serves")]
    Superseded,
    /// A command that writes found the shared store's lease held: a vault
    /// node serves from it.
    #[error(
        "a vault node ({0}) holds the PostgreSQL store's lease: stop it first, or do this through the running vault"
    )]
    LeaseHeld(String),
    /// The commit thread has stopped (the store is shutting down or a previous
    /// fault stopped it); nothing more can be committed.
    #[error("the commit path is closed")]
    Closed,
    /// A transaction function panicked; its changes were discarded.
    #[error("a transaction panicked and was discarded")]
    Panicked,
    /// A stored record could not be decoded (corruption or a format change).
    #[error("stored record {what} is corrupt")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
    },
}

/// A storage engine: ordered bytes to bytes, with atomic batches and an
/// explicit flush. Implementations must make `apply` atomic (all or nothing)
/// and `flush` return only when everything applied before it is on disk.
pub trait Backend: Send + Sync + 'static {
    /// The committed (applied) value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError>;
    /// The entry with the largest key in `start <= key < end`, if any.
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Applies every write of `batch` atomically.
    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// The first half of [`Backend::flush`]: writes every applied batch out
    /// to the device without waiting for it to be stable, so the commit
    /// thread can go on while [`Backend::sync`] waits. Nothing by default.
    fn write_out(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The second half of [`Backend::flush`]: makes everything written out
    /// durable. Runs on another thread than `apply` and `write_out`, while
    /// they go on. [`Backend::flush`] by default.
    fn sync(&self) -> Result<(), StoreError> {
        self.flush()
    }
    /// How many keys are applied, for a progress total: by default counted
    /// through `scan`, a page at a time.
    fn keys_count(&self) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start = Vec::new();
        loop {
            let page = self.scan(&start, &[], 10_000)?;
            count += page.len() as u64;
            let Some((last, _)) = page.last().filter(|_| page.len() == 10_000) else { return Ok(count) };
            start = last.clone();
            start.push(0);
        }
    }
    /// Bytes the storage device has read so far for the calling thread (not
    /// served from the OS page cache), if the engine can tell: asked on the
    /// commit thread, the sign that its working set is not cached
    /// ([`Store::reads_cold`]). `None` by default.
    fn disk_read_bytes(&self) -> Option<u64> {
        None
    }
    /// After an `apply` or `flush` failed, makes the engine usable again if
    /// it can: an engine that stays failed after an I/O error (sled 0.34)
    /// is reopened from its files, which hold everything flushed before,
    /// and batches applied since the last flush may be gone. Called on the
    /// commit thread only, between batches. Nothing to do by default.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether this engine may serve now: a PostgreSQL node only while it
    /// knows its lease held. Always by default.
    fn standing(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether another node took this engine's lease: then nothing applied
    /// since will ever commit, and the process stops serving. Never by
    /// default.
    fn superseded(&self) -> bool {
        false
    }
    /// Called once by [`Store::close`] after the last flush: a PostgreSQL
    /// node gives its lease up. Nothing by default.
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The key spaces. The first byte of every key names its space, so a scan of
/// one space never sees another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Space {
    /// Vault-wide settings and key checks.
    Meta = 0x01,
    /// One record per subject (ids and timestamps only). Also the subject
    /// directory: passes over every subject (KEK rotation, the activity
    /// backfill) page through it.
    Subjects = 0x02,
    /// Encryption counters per key.
    Counters = 0x05,
    /// Audit entries of format 2, one key per index (moved to
    /// [`Space::AuditRecords`] when a store moves to format 3).
    AuditEntries = 0x10,
    /// Hashes of complete Merkle subtrees, by level and index (levels 4
    /// and above; format 2 also kept levels 1 to 3).
    AuditNodes = 0x11,
    /// Signed checkpoints, by tree size.
    AuditCheckpoints = 0x12,
    /// Index of audit entries by business: groups of indices.
    AuditByBusiness = 0x14,
    /// Audit entries in records of consecutive entries, by the index of
    /// the first (`audit::records`).
    AuditRecords = 0x15,
    /// Policy bundles by their SHA-256 (hex), each stored once, in the
    /// batch of the first `policy.loaded` event that names it.
    AuditPolicies = 0x16,
    /// Principals (businesses, auditors, the admin, customers) by role and id.
    Principals = 0x20,
    /// API client credentials by client id.
    Clients = 0x21,
    /// Customers of external issuers: issuer and subject claim to subject id.
    ExternalSubjects = 0x22,
    /// Business names, folded (see `principals`), to the business's id: a
    /// name is registered once.
    PrincipalNames = 0x23,
    /// Webhook endpoints by business and endpoint id (`webhooks`).
    WebhookEndpoints = 0x24,
    /// Webhook signing secrets by endpoint id, sealed under the KEK: the
    /// current one, and the one a rotation replaced while it stays valid.
    WebhookSecrets = 0x25,
    /// Pairwise ids by business, while the relationship lasts.
    Pairwise = 0x31,
    /// Grant ids by business, to the subject.
    GrantsByBusiness = 0x34,
    /// Access request ids by business, to the subject.
    RequestsByBusiness = 0x37,
    /// Grants by expiry time, for the expiry sweep.
    GrantExpiry = 0x38,
    /// Pending access requests by expiry time, for the expiry sweep.
    RequestExpiry = 0x39,
    /// Subjects by the time of their last activity, for the retention sweep.
    SubjectActivity = 0x3A,
    /// Webhook messages waiting to be delivered, by endpoint and the audit
    /// index of the event they announce: written in the batch of that
    /// event, removed once delivered or given up.
    WebhookOutbox = 0x50,
    /// Webhook delivery attempts, by endpoint, time and audit index.
    WebhookDeliveries = 0x51,
    /// The corrections and deletions each business was told of (GDPR
    /// Art. 19), by business and audit index: the field names it was told.
    DataNotices = 0x52,
    /// Everything kept about one subject but its record, side by side:
    /// subject id, then the [`Part`], then the part's own key. A business's
    /// scoped read decides on, releases and logs into one place in the
    /// tree, however many subjects the store holds.
    SubjectRecords = 0x40,
}

/// The parts of a subject's records under [`Space::SubjectRecords`]. The
/// records a decision reads come first and the access-log markers, which
/// grow with every read, last, so a subject's records stay together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Part {
    /// The wrapped DEK, with the count of seals under it.
    Key = 0x01,
    /// Sealed field values, by field name.
    Value = 0x02,
    /// Relationships, by business id.
    Relationship = 0x03,
    /// Grants, by grant id.
    Grant = 0x04,
    /// The list of purposes the subject objects to.
    Objections = 0x05,
    /// Access requests, by request id.
    Request = 0x06,
    /// Signed consent receipts, by receipt id: each written once, never
    /// changed.
    Receipt = 0x07,
    /// Contact preferences, by business id, and the times of each
    /// business's recent deliveries, by business id ‖ `/delivered`
    /// (`contact`).
    Contact = 0x08,
    /// Inbox items: messages from businesses, her own messages to them and
    /// the vault's notices, by message id (newest first: see
    /// `contact::MessageId`).
    Inbox = 0x09,
    /// Message texts, sealed under the subject's DEK like field values, by
    /// message id.
    MessageText = 0x0A,
    /// The indices of the audit entries that concern the subject, in
    /// groups keyed by their first index (`audit::records`).
    AuditMarker = 0x10,
}

impl Part {
    const ALL: [Part; 11] = [
        Part::Key,
        Part::Value,
        Part::Relationship,
        Part::Grant,
        Part::Objections,
        Part::Request,
        Part::Receipt,
        Part::Contact,
        Part::Inbox,
        Part::MessageText,
        Part::AuditMarker,
    ];

    /// The parts a consent decision reads: what a decision made ahead is
    /// stamped on (`versions.rs`) and what the commit thread caches
    /// (`cache.rs`). Access-log markers and requests are not among them:
    /// every read writes a marker, and no decision reads either.
    pub const DECIDED_ON: [Part; 5] = [Part::Key, Part::Value, Part::Relationship, Part::Grant, Part::Objections];

    /// The part of a subject's records a stored key lies in, if it lies in
    /// [`Space::SubjectRecords`].
    pub fn of(key: &[u8]) -> Option<Part> {
        if key.first() != Some(&(Space::SubjectRecords as u8)) {
            return None;
        }
        let byte = *key.get(SUBJECT_PART_AT)?;
        Part::ALL.into_iter().find(|part| *part as u8 == byte)
    }
}

/// Where the [`Part`] byte sits in a key of [`Space::SubjectRecords`]:
/// after the space byte and the 16-byte subject id.
pub const SUBJECT_PART_AT: usize = 17;

/// A key in one [`Space`]. Built only by the constructors below, so every
/// module agrees on the layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(Vec<u8>);

/// The key of one sealed field value; only [`Txn::put_sealed`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueKey(Key);

impl Key {
    fn new(space: Space, parts: &[&[u8]]) -> Self {
        let mut bytes = vec![space as u8];
        for part in parts {
            bytes.extend_from_slice(part);
        }
        Self(bytes)
    }

    /// A key in `part` of `subject`'s records.
    pub(crate) fn of_subject(subject: &[u8; 16], part: Part, rest: &[u8]) -> Self {
        Self::new(Space::SubjectRecords, &[subject, &[part as u8], rest])
    }

    /// Webhook endpoint `endpoint` of `business`.
    pub fn webhook_endpoint(business: &str, endpoint: &str) -> Self {
        let length = u8::try_from(business.len()).unwrap_or(u8::MAX);
        Self::new(Space::WebhookEndpoints, &[&[length], business.as_bytes(), endpoint.as_bytes()])
    }

    /// Every webhook endpoint of `business`.
    pub fn webhook_endpoints_of(business: &str) -> Self {
        let length = u8::try_from(business.len()).unwrap_or(u8::MAX);
        Self::new(Space::WebhookEndpoints, &[&[length], business.as_bytes()])
    }

    /// The sealed signing secret of webhook endpoint `endpoint`; `previous`
    /// for the one a rotation replaced.
    pub fn webhook_secret(endpoint: &str, previous: bool) -> Self {
        Self::new(Space::WebhookSecrets, &[endpoint.as_bytes(), &[u8::from(previous)]])
    }

    /// Every sealed webhook secret.
    pub fn webhook_secrets_all() -> Self {
        Self::new(Space::WebhookSecrets, &[])
    }

    /// A webhook message for `endpoint` announcing the event at `index`.
    pub fn webhook_message(endpoint: &str, index: u64) -> Self {
        let length = u8::try_from(endpoint.len()).unwrap_or(u8::MAX);
        Self::new(Space::WebhookOutbox, &[&[length], endpoint.as_bytes(), &index.to_be_bytes()])
    }

    /// Every webhook message waiting for `endpoint`, in audit order.
    pub fn webhook_messages_of(endpoint: &str) -> Self {
        let length = u8::try_from(endpoint.len()).unwrap_or(u8::MAX);
        Self::new(Space::WebhookOutbox, &[&[length], endpoint.as_bytes()])
    }

    /// Every webhook message waiting, for every endpoint.
    pub fn webhook_outbox_all() -> Self {
        Self::new(Space::WebhookOutbox, &[])
    }

    /// Every webhook endpoint, of every business.
    pub fn webhook_endpoints_all() -> Self {
        Self::new(Space::WebhookEndpoints, &[])
    }

    /// A delivery attempt to `endpoint` at `time` (Unix seconds) of the
    /// message announcing the event at `index`.
    pub fn webhook_delivery(endpoint: &str, time: i64, index: u64, attempt: u32) -> Self {
        let time = u64::try_from(time).unwrap_or(0).to_be_bytes();
        Self::new(Space::WebhookDeliveries, &[endpoint.as_bytes(), &time, &index.to_be_bytes(), &attempt.to_be_bytes()])
    }

    /// The Art. 19 notice `business` got of the event at `index`.
    pub fn data_notice(business: &str, index: u64) -> Self {
        let length = u8::try_from(business.len()).unwrap_or(u8::MAX);
        Self::new(Space::DataNotices, &[&[length], business.as_bytes(), &index.to_be_bytes()])
    }

    /// Every delivery attempt to `endpoint`.
    pub fn webhook_deliveries_of(endpoint: &str) -> Self {
        Self::new(Space::WebhookDeliveries, &[endpoint.as_bytes()])
    }

    /// The policy bundle whose SHA-256 is `sha256` (hex).
    pub fn audit_policy(sha256: &str) -> Self {
        Self::new(Space::AuditPolicies, &[sha256.as_bytes()])
    }

    /// A vault-wide setting.
    pub fn meta(name: &str) -> Self {
        Self::new(Space::Meta, &[name.as_bytes()])
    }

    /// The record of one subject.
    pub fn subject(subject: &[u8; 16]) -> Self {
        Self::new(Space::Subjects, &[subject])
    }

    /// The prefix of every subject record.
    pub fn subjects_all() -> Self {
        Self::new(Space::Subjects, &[])
    }

    /// The wrapped DEK of one subject.
    pub fn dek(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Key, &[])
    }

    /// One sealed field value.
    pub fn value(subject: &[u8; 16], field: &str) -> ValueKey {
        ValueKey(Self::of_subject(subject, Part::Value, field.as_bytes()))
    }

    /// The prefix of every sealed value of one subject.
    pub fn values_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Value, &[])
    }

    /// The sealed text of one message in a subject's inbox; a value like a
    /// field's, sealed under the subject's DEK.
    pub fn message_text(subject: &[u8; 16], message: &str) -> ValueKey {
        ValueKey(Self::of_subject(subject, Part::MessageText, message.as_bytes()))
    }

    /// The prefix of every sealed message text of one subject.
    pub fn message_texts_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::MessageText, &[])
    }

    /// One item of a subject's inbox.
    pub fn inbox_item(subject: &[u8; 16], message: &str) -> Self {
        Self::of_subject(subject, Part::Inbox, message.as_bytes())
    }

    /// Every item of a subject's inbox, newest first.
    pub fn inbox_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Inbox, &[])
    }

    /// A subject's contact preferences for one business.
    pub fn contact_preferences(subject: &[u8; 16], business: &str) -> Self {
        Self::of_subject(subject, Part::Contact, business.as_bytes())
    }

    /// The times (Unix seconds) of the messages `business` delivered to a
    /// subject within the longest cap period: what her cap counts, whatever
    /// she deleted since.
    pub fn contact_deliveries(subject: &[u8; 16], business: &str) -> Self {
        Self::of_subject(subject, Part::Contact, &[business.as_bytes(), b"/delivered"].concat())
    }

    /// Every contact record of one subject: preferences and deliveries.
    pub fn contact_preferences_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Contact, &[])
    }

    /// The encryption counter of a key, by name.
    pub fn counter(name: &str) -> Self {
        Self::new(Space::Counters, &[name.as_bytes()])
    }

    /// The audit entry at `index` in format 2.
    pub fn audit_entry_format_2(index: u64) -> Self {
        Self::new(Space::AuditEntries, &[&index.to_be_bytes()])
    }

    /// The prefix of every audit entry of format 2.
    pub fn audit_entries_format_2() -> Self {
        Self::new(Space::AuditEntries, &[])
    }

    /// The record of audit entries that starts at index `first`.
    pub fn audit_record(first: u64) -> Self {
        Self::new(Space::AuditRecords, &[&first.to_be_bytes()])
    }

    /// The prefix of every record of audit entries.
    pub fn audit_records_all() -> Self {
        Self::new(Space::AuditRecords, &[])
    }

    /// The hash of the complete subtree at `level`, `index`.
    pub fn audit_node(level: u32, index: u64) -> Self {
        // Levels are at most 64, so one byte holds them.
        let level = u8::try_from(level).unwrap_or(u8::MAX);
        Self::new(Space::AuditNodes, &[&[level], &index.to_be_bytes()])
    }

    /// The signed checkpoint of tree size `size`.
    pub fn audit_checkpoint(size: u64) -> Self {
        Self::new(Space::AuditCheckpoints, &[&size.to_be_bytes()])
    }

    /// The prefix of every checkpoint.
    pub fn audit_checkpoints_all() -> Self {
        Self::new(Space::AuditCheckpoints, &[])
    }

    /// The group of `subject`'s audit entry indices that starts at `first`.
    pub fn audit_by_subject(subject: &[u8; 16], first: u64) -> Self {
        Self::of_subject(subject, Part::AuditMarker, &first.to_be_bytes())
    }

    /// The prefix of every group of audit entry indices of `subject`.
    pub fn audit_by_subject_all(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::AuditMarker, &[])
    }

    /// The group of `business`'s audit entry indices that starts at `first`.
    pub fn audit_by_business(business: &str, first: u64) -> Self {
        let name = business.as_bytes();
        let length = u8::try_from(name.len()).unwrap_or(u8::MAX);
        Self::new(Space::AuditByBusiness, &[&[length], name, &first.to_be_bytes()])
    }

    /// The prefix of every group of audit entry indices of `business`.
    pub fn audit_by_business_all(business: &str) -> Self {
        let name = business.as_bytes();
        let length = u8::try_from(name.len()).unwrap_or(u8::MAX);
        Self::new(Space::AuditByBusiness, &[&[length], name])
    }

    /// The record of principal `id` in `role`.
    pub fn principal(role: &str, id: &str) -> Self {
        Self::new(Space::Principals, &[&length_prefixed(role.as_bytes()), id.as_bytes()])
    }

    /// The prefix of every principal of `role`.
    pub fn principals_of(role: &str) -> Self {
        Self::new(Space::Principals, &[&length_prefixed(role.as_bytes())])
    }

    /// The principal of `role` registered under the folded name `name`.
    pub fn principal_name(role: &str, name: &str) -> Self {
        Self::new(Space::PrincipalNames, &[&length_prefixed(role.as_bytes()), name.as_bytes()])
    }

    /// The credentials of client `client_id`.
    pub fn client(client_id: &str) -> Self {
        Self::new(Space::Clients, &[client_id.as_bytes()])
    }

    /// The subject of an external issuer's customer.
    pub fn external_subject(issuer: &str, subject: &str) -> Self {
        Self::new(Space::ExternalSubjects, &[&length_prefixed(issuer.as_bytes()), subject.as_bytes()])
    }

    /// The relationship of `subject` with `business`.
    pub fn relationship(subject: &[u8; 16], business: &str) -> Self {
        Self::of_subject(subject, Part::Relationship, business.as_bytes())
    }

    /// Every relationship of `subject`.
    pub fn relationships_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Relationship, &[])
    }

    /// The subject behind `pairwise` for `business`.
    pub fn pairwise(business: &str, pairwise: &str) -> Self {
        Self::new(Space::Pairwise, &[&length_prefixed(business.as_bytes()), pairwise.as_bytes()])
    }

    /// Every pairwise id of `business`.
    pub fn pairwise_of(business: &str) -> Self {
        Self::new(Space::Pairwise, &[&length_prefixed(business.as_bytes())])
    }

    /// Grant `grant` of `subject`.
    pub fn grant(subject: &[u8; 16], grant: &str) -> Self {
        Self::of_subject(subject, Part::Grant, grant.as_bytes())
    }

    /// Every grant of `subject`.
    pub fn grants_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Grant, &[])
    }

    /// Grant `grant` given to `business`.
    pub fn grant_of_business(business: &str, grant: &str) -> Self {
        Self::new(Space::GrantsByBusiness, &[&length_prefixed(business.as_bytes()), grant.as_bytes()])
    }

    /// Every grant given to `business`.
    pub fn grants_of_business(business: &str) -> Self {
        Self::new(Space::GrantsByBusiness, &[&length_prefixed(business.as_bytes())])
    }

    /// The expiry marker of a grant: expiry time (big-endian, so key order is
    /// time order), subject, grant.
    pub fn grant_expiry(expires_at: i64, subject: &[u8; 16], grant: &str) -> Self {
        let time = u64::try_from(expires_at.max(0)).unwrap_or(0).to_be_bytes();
        Self::new(Space::GrantExpiry, &[&time, subject, grant.as_bytes()])
    }

    /// Every expiry marker.
    pub fn grant_expiries_all() -> Self {
        Self::new(Space::GrantExpiry, &[])
    }

    /// The expiry marker of a pending access request: expiry time
    /// (big-endian, so key order is time order), subject, request.
    pub fn request_expiry(expires_at: i64, subject: &[u8; 16], request: &str) -> Self {
        let time = u64::try_from(expires_at.max(0)).unwrap_or(0).to_be_bytes();
        Self::new(Space::RequestExpiry, &[&time, subject, request.as_bytes()])
    }

    /// Every request expiry marker.
    pub fn request_expiries_all() -> Self {
        Self::new(Space::RequestExpiry, &[])
    }

    /// The activity marker of a subject: the time of its last activity
    /// (big-endian, so key order is time order), subject.
    pub fn subject_activity(active_at: i64, subject: &[u8; 16]) -> Self {
        let time = u64::try_from(active_at.max(0)).unwrap_or(0).to_be_bytes();
        Self::new(Space::SubjectActivity, &[&time, subject])
    }

    /// Every activity marker.
    pub fn subject_activities_all() -> Self {
        Self::new(Space::SubjectActivity, &[])
    }

    /// Access request `request` of `subject`.
    pub fn request(subject: &[u8; 16], request: &str) -> Self {
        Self::of_subject(subject, Part::Request, request.as_bytes())
    }

    /// Consent receipt `receipt` of `subject` (a signed note).
    pub fn receipt(subject: &[u8; 16], receipt: &str) -> Self {
        Self::of_subject(subject, Part::Receipt, receipt.as_bytes())
    }

    /// Every access request of `subject`.
    pub fn requests_of(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Request, &[])
    }

    /// Access request `request` made by `business`.
    pub fn request_of_business(business: &str, request: &str) -> Self {
        Self::new(Space::RequestsByBusiness, &[&length_prefixed(business.as_bytes()), request.as_bytes()])
    }

    /// Every access request made by `business`.
    pub fn requests_of_business(business: &str) -> Self {
        Self::new(Space::RequestsByBusiness, &[&length_prefixed(business.as_bytes())])
    }

    /// The objections of `subject`.
    pub fn objections(subject: &[u8; 16]) -> Self {
        Self::of_subject(subject, Part::Objections, &[])
    }

    /// The key just past every key starting with `prefix` (a scan's end).
    pub fn from_prefix_end(prefix: &Key) -> Self {
        Self(prefix.prefix_end())
    }

    /// A key read back from a scan, to delete or rewrite it.
    pub(crate) fn raw(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The key `self ‖ suffix` (for paging within a prefix).
    pub fn with_suffix(&self, suffix: &[u8]) -> Self {
        let mut bytes = self.0.clone();
        bytes.extend_from_slice(suffix);
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes after this key when it is used as a prefix of `full`.
    pub fn suffix_of<'a>(&self, full: &'a [u8]) -> Option<&'a [u8]> {
        full.strip_prefix(self.0.as_slice())
    }

    /// The smallest key greater than every key starting with this prefix
    /// (empty, meaning "no bound", if the prefix is all `0xFF`).
    pub fn prefix_end(&self) -> Vec<u8> {
        let mut end = self.0.clone();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return end;
            }
        }
        // Every key starts with a space byte below 0xFF, so this is unreachable
        // for keys built here; an empty end means "no upper bound".
        Vec::new()
    }
}

impl ValueKey {
    /// The underlying key. Crate-private, so no code outside the vault can
    /// write a plaintext under a value key with [`Txn::put`].
    pub(crate) fn key(&self) -> &Key {
        &self.0
    }
}

/// `bytes` behind its length as one byte (names here are short; longer
/// ones are cut, which only matters for keys nobody could have stored).
fn length_prefixed(bytes: &[u8]) -> Vec<u8> {
    let cut = &bytes[..bytes.len().min(usize::from(u8::MAX))];
    let mut out = Vec::with_capacity(cut.len() + 1);
    out.push(u8::try_from(cut.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(cut);
    out
}

/// Decodes a counter stored under [`Key::counter`].
pub fn counter_decode(bytes: Option<&[u8]>) -> Result<u64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt { what: "counter" })?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

/// A sealed value as it is stored.
pub(crate) fn sealed_bytes(value: Sealed) -> Vec<u8> {
    value.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_do_not_overlap_and_prefix_end_bounds_a_prefix() {
        let subject = [0xFFu8; 16];
        let prefix = Key::values_of(&subject);
        let end = prefix.prefix_end();
        let inside = Key::value(&subject, "zzzz");
        assert!(inside.key().as_bytes() >= prefix.as_bytes() && inside.key().as_bytes() < end.as_slice());
        assert_eq!(prefix.suffix_of(inside.key().as_bytes()), Some(&b"zzzz"[..]));
        // The subject's other parts, and the next subject's values, lie outside.
        for outside in [Key::relationship(&subject, ""), Key::objections(&subject), Key::dek(&subject)] {
            let bytes = outside.as_bytes();
            assert!(bytes < prefix.as_bytes() || bytes >= end.as_slice(), "{bytes:?}");
        }
        let mut next = [0u8; 16];
        next[15] = 1;
        assert!(Key::value(&next, "").key().as_bytes() < prefix.as_bytes());
    }

    #[test]
    fn a_subjects_records_lie_together_and_say_their_part() {
        let subject = [0x5Au8; 16];
        let all = Key::new(Space::SubjectRecords, &[&subject]);
        let end = all.prefix_end();
        let keys = [
            (Key::dek(&subject), Part::Key),
            (Key::value(&subject, "email").key().clone(), Part::Value),
            (Key::relationship(&subject, "acme"), Part::Relationship),
            (Key::grant(&subject, "g1"), Part::Grant),
            (Key::objections(&subject), Part::Objections),
            (Key::request(&subject, "r1"), Part::Request),
            (Key::audit_by_subject(&subject, 9), Part::AuditMarker),
        ];
        for (key, part) in &keys {
            assert!(key.as_bytes() >= all.as_bytes() && key.as_bytes() < end.as_slice());
            assert_eq!(Part::of(key.as_bytes()), Some(*part));
        }
        // Records before markers, which grow with every read.
        assert!(keys.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(Part::of(Key::subject(&subject).as_bytes()), None);
        assert_eq!(Part::of(Key::pairwise("acme", "p").as_bytes()), None);
    }
}
