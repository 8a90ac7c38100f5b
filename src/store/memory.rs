//! An in-memory [`Backend`] that can be told to fail, for fault-injection
//! tests of the commit path and everything built on it.
//!
//! It keeps two maps: what has been applied, and what the last successful
//! flush made "durable", so a test can check that nothing was acknowledged
//! without reaching the durable map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::{Backend, COMMIT_THREAD_NAME, Entries, Key, StoreError, WriteBatch, map_range};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// What a slow read counts as read from disk, for the thread that made it.
const SLOW_READ_BYTES: u64 = 1 << 20;

/// An in-memory backend with switchable faults.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    applied: Mutex<Map>,
    durable: Mutex<Map>,
    fail_applies: AtomicBool,
    fail_flushes: AtomicBool,
    fail_syncs: AtomicBool,
    fail_reads: AtomicBool,
    fail_reads_under: Mutex<Option<Vec<u8>>>,
    read_delay_micros: AtomicU64,
    reads: AtomicU64,
    slow_reads: Mutex<std::collections::HashMap<std::thread::ThreadId, u64>>,
    recording: AtomicBool,
    commit_thread_reads: Mutex<Vec<Vec<u8>>>,
    hold: Mutex<Hold>,
    held: Condvar,
    /// Whether a failed apply or flush leaves the backend failed until
    /// [`Backend::recover`] (as sled 0.34 stays after an I/O error).
    sticky: AtomicBool,
    /// A sticky failure happened and no recovery has cleared it yet.
    stuck: AtomicBool,
    recoveries: AtomicU64,
}

/// Reads held back by [`MemoryBackend::hold_reads_under`].
#[derive(Debug, Default)]
struct Hold {
    prefix: Option<Vec<u8>>,
    waiting: usize,
}

fn on_commit_thread() -> bool {
    std::thread::current().name() == Some(COMMIT_THREAD_NAME)
}

impl MemoryBackend {
    /// Makes every later read take `delay` longer, as reads of pages that
    /// are not in a disk store's cache do (zero for full speed again). Each
    /// slow read counts as 1 MiB read from disk for the thread that made it
    /// ([`Backend::disk_read_bytes`]).
    pub fn slow_reads(&self, delay: std::time::Duration) {
        self.read_delay_micros.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// How many reads (point reads and scans) the backend has served.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Starts (or stops) recording the keys read on the commit thread.
    pub fn record_commit_thread_reads(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// The keys (or scan starts) read on the commit thread, in order, while
    /// recording since the last call: what the transactions themselves read.
    pub fn commit_thread_reads_take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.commit_thread_reads))
    }

    /// Holds every later point read of a key under `prefix` made on a thread
    /// other than the commit thread until [`MemoryBackend::release_reads`]:
    /// lets a test change the store in the middle of a read made off the
    /// commit path.
    pub fn hold_reads_under(&self, prefix: &[u8]) {
        lock(&self.hold).prefix = Some(prefix.to_vec());
    }

    /// How many reads are being held now.
    pub fn reads_held(&self) -> usize {
        lock(&self.hold).waiting
    }

    /// Lets every held read go on, and holds no more.
    pub fn release_reads(&self) {
        lock(&self.hold).prefix = None;
        self.held.notify_all();
    }

    /// Makes every later `apply` fail (or succeed again).
    pub fn fail_applies(&self, fail: bool) {
        self.fail_applies.store(fail, Ordering::SeqCst);
    }

    /// Makes every later `get` and `scan` fail (or succeed again).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Makes every later read of a key starting with `prefix` fail; `None`
    /// ends the fault. Lets a test break one part of a transaction (the
    /// audit append) while the rest works.
    pub fn fail_reads_under(&self, prefix: Option<&[u8]>) {
        *lock(&self.fail_reads_under) = prefix.map(<[u8]>::to_vec);
    }

    /// Makes failures sticky, as sled's are: once an apply or flush fails,
    /// every later call fails too, until [`Backend::recover`] succeeds, which
    /// (as a reopen does) drops whatever was applied but never flushed.
    pub fn sticky_failures(&self, sticky: bool) {
        self.sticky.store(sticky, Ordering::SeqCst);
    }

    /// How many times [`Backend::recover`] reopened a stuck backend.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::SeqCst)
    }

    fn stuck(&self) -> Result<(), StoreError> {
        if self.stuck.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: failed until reopened".to_owned()));
        }
        Ok(())
    }

    /// A failure injected into a write; sticky if so configured.
    fn write_failure(&self, what: &str) -> StoreError {
        if self.sticky.load(Ordering::SeqCst) {
            self.stuck.store(true, Ordering::SeqCst);
        }
        StoreError::Unavailable(format!("injected {what} failure"))
    }

    /// Makes every later `sync` fail (or succeed again): the device took
    /// the bytes, then reported an error making them stable.
    pub fn fail_syncs(&self, fail: bool) {
        self.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// Makes every later `flush` fail, in its write-out, as a full disk
    /// refuses a write (or succeed again).
    pub fn fail_flushes(&self, fail: bool) {
        self.fail_flushes.store(fail, Ordering::SeqCst);
    }

    /// The value at `key` as of the last successful flush.
    pub fn durable(&self, key: &Key) -> Option<Vec<u8>> {
        lock(&self.durable).get(key.as_bytes()).cloned()
    }

    /// The sealed value at `key` as of the last successful flush.
    pub fn durable_value(&self, key: &super::ValueKey) -> Option<Vec<u8>> {
        self.durable(key.key())
    }

    /// Every durable entry (for scans in tests).
    pub fn durable_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        lock(&self.durable).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl MemoryBackend {
    fn read_fault(&self, key: &[u8]) -> Result<(), StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.recording.load(Ordering::SeqCst) && on_commit_thread() {
            lock(&self.commit_thread_reads).push(key.to_vec());
        }
        let delay_micros = self.read_delay_micros.load(Ordering::SeqCst);
        if delay_micros > 0 {
            *lock(&self.slow_reads).entry(std::thread::current().id()).or_default() += 1;
            std::thread::sleep(std::time::Duration::from_micros(delay_micros));
        }
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Engine("injected read failure".to_owned()));
        }
        self.stuck()
    }
}

/// A poisoned lock here only means a test thread panicked while holding it;
/// what it guards is still consistent, so keep using it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_fault(key)?;
        if !on_commit_thread() {
            let mut hold = lock(&self.hold);
            if hold.prefix.as_ref().is_some_and(|prefix| key.starts_with(prefix)) {
                hold.waiting += 1;
                while hold.prefix.as_ref().is_some_and(|prefix| key.starts_with(prefix)) {
                    hold = self.held.wait(hold).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                hold.waiting -= 1;
            }
        }
        let failing = lock(&self.fail_reads_under).clone();
        if failing.is_some_and(|prefix| key.starts_with(&prefix)) {
            return Err(StoreError::Engine("injected read failure".to_owned()));
        }
        Ok(lock(&self.applied).get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.read_fault(start)?;
        let applied = lock(&self.applied);
        Ok(map_range(&applied, start, end).take(limit).map(|(key, value)| (key.clone(), value.clone())).collect())
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<crate::store::Entry>, StoreError> {
        self.read_fault(start)?;
        let applied = lock(&self.applied);
        Ok(map_range(&applied, start, end).next_back().map(|(key, value)| (key.clone(), value.clone())))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.stuck()?;
        if self.fail_applies.load(Ordering::SeqCst) {
            return Err(self.write_failure("apply"));
        }
        let mut applied = lock(&self.applied);
        for (key, value) in batch {
            match value {
                Some(value) => applied.insert(key.clone(), value.clone()),
                None => applied.remove(key),
            };
        }
        Ok(())
    }

    fn disk_read_bytes(&self) -> Option<u64> {
        let slow_reads = lock(&self.slow_reads);
        Some(slow_reads.get(&std::thread::current().id()).copied().unwrap_or(0) * SLOW_READ_BYTES)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.write_out()?;
        self.sync()
    }

    fn write_out(&self) -> Result<(), StoreError> {
        self.stuck()?;
        if self.fail_flushes.load(Ordering::SeqCst) {
            return Err(self.write_failure("flush"));
        }
        Ok(())
    }

    /// What is applied becomes durable (more than was written out, when
    /// batches were applied since: as a real sync covers them too).
    fn sync(&self) -> Result<(), StoreError> {
        self.stuck()?;
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected sync failure".to_owned()));
        }
        let snapshot = lock(&self.applied).clone();
        *lock(&self.durable) = snapshot;
        Ok(())
    }

    fn recover(&self) -> Result<(), StoreError> {
        if !self.stuck.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Reopening reads back what is durable; while the fault lasts, the
        // device still refuses.
        if self.fail_flushes.load(Ordering::SeqCst) || self.fail_applies.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: the device still refuses".to_owned()));
        }
        let durable = lock(&self.durable).clone();
        *lock(&self.applied) = durable;
        self.stuck.store(false, Ordering::SeqCst);
        self.recoveries.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A store whose applies fail once `applies_left` have succeeded, as a
/// crash would stop a move of the store's format.
#[cfg(test)]
pub(crate) struct Stopping {
    pub inner: MemoryBackend,
    pub applies_left: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Backend for Stopping {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.inner.scan(start, end, limit)
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<crate::store::Entry>, StoreError> {
        self.inner.last(start, end)
    }
    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.applies_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .map_err(|_| StoreError::Engine("stopped".to_owned()))?;
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}
