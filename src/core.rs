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
    /// How scoped reads were decided.
    decisions: crate::metrics::ReadDecisions,
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
            decisions: crate::metrics::ReadDecisions::default(),
        }
    }

    /// How scoped reads were decided, for `/metrics`.
    pub fn decisions(&self) -> &crate::metrics::ReadDecisions {
        &self.decisions
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

    /// Raises the clock to the time of the log's latest entry, so the vault's
    /// time does not go back across a restart on a clock that stepped back.
    pub(crate) fn clock_floor_from_log(&self) -> Result<(), AuditError> {
        let size = self.audit.durable_size();
        if size == 0 {
            return Ok(());
        }
        let Some(bytes) = self.audit.entry(&self.store, size - 1)? else { return Ok(()) };
        let event = crate::audit::AuditEvent::from_bytes(&bytes).map_err(AuditError::Event)?;
        let time = time::OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
            .map_err(|_| AuditError::Store(crate::store::StoreError::Corrupt { what: "audit entry time" }))?;
        self.clock.floor_raise(time.unix_timestamp());
        Ok(())
    }

    /// 128 random bits as hex, for a new record id.
    pub fn random_id(&self) -> Result<String, CryptoError> {
        let bytes: [u8; 16] = crate::crypto::random_bytes(self.keys.rng())?;
        Ok(crate::ids::hex(&bytes))
    }
}

/// A failed commit of an audit-only transaction, as the audit error it is.
pub(crate) fn audit_commit_error(error: CommitError<AuditError>) -> AuditError {
    match error {
        CommitError::Rejected(error) => error,
        CommitError::Store(error) => AuditError::Store(error),
    }
}

/// The vault's clock: the time every decision and event is made at.
///
/// It never goes backwards. It follows the system clock, but a reading
/// earlier than the latest one it gave (an NTP step back, a resumed virtual
/// machine) gives that latest time instead, until the system clock passes
/// it again; at open, the time of the log's latest entry raises it
/// (`VaultClock::floor_raise`), so a restart on a clock that stepped back
/// does not go back either. Otherwise a grant revoked at `T` would read as
/// live again at a reading before `T`.
///
/// Tests and drills can pin it at a given second (`Vault::insecure_pin_clock_secs`),
/// which decides at exactly that second and leaves the high-water mark alone,
/// or step the system reading (`Vault::insecure_step_clock_secs`), which the
/// high-water mark still bounds.
#[derive(Debug, Clone, Default)]
pub struct VaultClock(Arc<ClockState>);

#[derive(Debug, Default)]
struct ClockState {
    /// A pinned second, or 0: not pinned (no real decision happens at the
    /// epoch).
    pinned: AtomicI64,
    /// Seconds added to the system clock's reading (a simulated step).
    step: AtomicI64,
    /// The latest second the clock gave, or was raised to.
    floor: AtomicI64,
}

impl VaultClock {
    /// Now, in Unix seconds: never earlier than any earlier answer.
    pub fn now_secs(&self) -> i64 {
        let state = &self.0;
        match state.pinned.load(Ordering::Acquire) {
            0 => {
                let reading = clock::now().unix_timestamp().saturating_add(state.step.load(Ordering::Acquire));
                state.floor.fetch_max(reading, Ordering::AcqRel).max(reading)
            }
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

    /// Never answers earlier than `secs` from now on (a time already
    /// recorded, such as the log's latest entry).
    pub(crate) fn floor_raise(&self, secs: i64) {
        self.0.floor.fetch_max(secs, Ordering::AcqRel);
    }

    /// Pins the clock at `secs`, or lets it follow the system clock (`None`).
    pub(crate) fn pin(&self, secs: Option<i64>) {
        self.0.pinned.store(secs.unwrap_or(0), Ordering::Release);
    }

    /// Shifts the system clock's reading by `secs` from now on.
    pub(crate) fn step(&self, secs: i64) {
        self.0.step.fetch_add(secs, Ordering::AcqRel);
    }
}
