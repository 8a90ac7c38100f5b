//! What every domain service holds: the store, the audit log, the key ring,
//! the policies in force and the vault clock.
//!
//! The composition root (`vault.rs`) builds one [`Core`] when it opens a data
//! directory and hands an `Arc` of it to each service (`subjects`,
//! `principals`, `consent`, `rights`, `keys`, `sweep`). Services never reach
//! the root; a service that needs another holds a clone of it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use crate::audit::{AuditError, AuditLog};
use crate::clock;
use crate::crypto::{CryptoError, KeyRing};
use crate::policy::Policies;
use crate::store::{CommitError, Store};

/// The shared state of an open vault.
pub struct Core {
    store: Store,
    audit: AuditLog,
    keys: Arc<KeyRing>,
    /// The policies in force; swapped whole on reload.
    policies: RwLock<Arc<Policies>>,
    clock: VaultClock,
    /// Set when the vault starts to close: background work stops at its next
    /// step and resumes at the next start.
    closing: AtomicBool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl Core {
    /// The core over an open store and its audit log.
    pub fn new(store: Store, audit: AuditLog, keys: Arc<KeyRing>, policies: Policies) -> Self {
        Self {
            store,
            audit,
            keys,
            policies: RwLock::new(Arc::new(policies)),
            clock: VaultClock::default(),
            closing: AtomicBool::new(false),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The loaded KEKs.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The loaded KEKs, shared (for work that outlives a borrow).
    pub fn keys_shared(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys)
    }

    /// The policies in force (a snapshot: a reload does not change it).
    pub fn policies(&self) -> Arc<Policies> {
        match self.policies.read() {
            Ok(policies) => Arc::clone(&policies),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `policies` in force for every later decision.
    pub(crate) fn policies_replace(&self, policies: Arc<Policies>) {
        match self.policies.write() {
            Ok(mut slot) => *slot = policies,
            Err(poisoned) => *poisoned.into_inner() = policies,
        }
    }

    /// The clock consent decisions are made by.
    pub fn clock(&self) -> &VaultClock {
        &self.clock
    }

    /// Whether the vault is closing.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Tells background work that the vault is closing.
    pub(crate) fn closing_begin(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// The flag background work watches to stop early.
    pub(crate) fn closing_flag(&self) -> &AtomicBool {
        &self.closing
    }

    /// Signs a checkpoint now if the log has grown since the latest one, and
    /// returns the latest checkpoint (which then covers every event
    /// acknowledged before the call).
    pub async fn checkpoint_now(&self) -> Result<String, AuditError> {
        let log = self.audit.clone();
        self.store.commit(move |txn| log.checkpoint_in(txn, true)).await.map_err(audit_commit_error)?;
        self.audit.checkpoint_latest()
    }

    /// Signs a checkpoint now if the log has grown since the latest one (or
    /// `keep`s a copy of the latest in the history), from a blocking context.
    pub(crate) fn checkpoint_blocking(&self, keep: bool) -> Result<Option<u64>, AuditError> {
        let log = self.audit.clone();
        self.store.commit_blocking(move |txn| log.checkpoint_in(txn, keep)).map_err(audit_commit_error)
    }

    /// 128 random bits as hex, for a new record id.
    pub fn random_id(&self) -> Result<String, CryptoError> {
        let bytes: [u8; 16] = crate::crypto::random_bytes(self.keys.rng())?;
        Ok(crate::ids::hex(&bytes))
    }
}

/// A failed commit of an audit-only transaction, as the audit error it is.
fn audit_commit_error(error: CommitError<AuditError>) -> AuditError {
    match error {
        CommitError::Rejected(error) => error,
        CommitError::Store(error) => AuditError::Store(error),
    }
}

/// The vault's clock for consent decisions: the system clock, unless a test
/// or drill pinned it (`Vault::insecure_pin_clock_secs`).
#[derive(Debug, Clone, Default)]
pub struct VaultClock(Arc<AtomicI64>);

impl VaultClock {
    /// Now, in Unix seconds.
    pub fn now_secs(&self) -> i64 {
        // 0 means "not pinned": no real decision happens at the epoch.
        match self.0.load(Ordering::Acquire) {
            0 => clock::now().unix_timestamp(),
            pinned => pinned,
        }
    }

    /// Now, as RFC 3339.
    pub fn rfc3339(&self) -> String {
        Self::rfc3339_at(self.now_secs())
    }

    /// `secs` (Unix seconds) as RFC 3339.
    pub fn rfc3339_at(secs: i64) -> String {
        time::OffsetDateTime::from_unix_timestamp(secs).map(clock::rfc3339).unwrap_or_else(|_| secs.to_string())
    }

    /// Pins the clock at `secs`, or lets it follow the system clock (`None`).
    pub(crate) fn pin(&self, secs: Option<i64>) {
        self.0.store(secs.unwrap_or(0), Ordering::Release);
    }
}
