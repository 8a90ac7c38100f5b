//! Reads of committed state off the commit path ([`StoreReader::read`]):
//! a decision made ahead of the commit thread reads through a [`Snapshot`]
//! and takes a change stamp of each record before it reads it, so its
//! transaction can tell whether anything it read changed since.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::txn::{Txn, TxnContext};
use super::versions::{Stamp, Versions};
use super::{Backend, Key, StoreStats, WriteBatch};

/// Reads committed state off the commit path: see [`StoreReader::read`].
#[derive(Clone)]
pub struct StoreReader {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) versions: Arc<Versions>,
    pub(super) stats: Arc<StoreStats>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader").finish_non_exhaustive()
    }
}

impl StoreReader {
    /// Runs `reads` against committed state on the calling thread and
    /// returns what it found. It holds only a shared [`Txn`], so it can
    /// change nothing; and what it read may be stale by the time it returns.
    ///
    /// This is how a decision is made off the commit thread: before reading
    /// records, `reads` takes their [`Snapshot::stamp`]; the transaction
    /// that acts on the decision then checks, with [`Txn::ahead_holds`], that
    /// nothing under those stamps changed since, and decides again itself
    /// if anything did (`store::versions`). The commit thread, which every
    /// transaction waits on, then reads none of those records; and a store
    /// much larger than its cache reads its cold pages on many threads at
    /// once.
    pub fn read<T>(&self, reads: impl FnOnce(&Snapshot<'_>) -> T) -> T {
        let nothing = WriteBatch::new();
        let context = TxnContext { versions: &self.versions, stats: &self.stats, cache: None };
        let snapshot = Snapshot { txn: Txn::new(&*self.backend, &nothing, 0, context) };
        let disk_before = self.backend.disk_read_bytes();
        let found = reads(&snapshot);
        // What the device read for these reads counts towards the verdict
        // of `Store::reads_cold`, as the commit thread's own reads do.
        if let (Some(before), Some(after)) = (disk_before, self.backend.disk_read_bytes()) {
            self.stats.ahead_disk_bytes.fetch_add(after.saturating_sub(before), Ordering::Relaxed);
        }
        found
    }
}

/// Committed state as [`StoreReader::read`] sees it.
pub struct Snapshot<'a> {
    txn: Txn<'a>,
}

impl std::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl<'a> Snapshot<'a> {
    /// The version of the records under `key`: take it before reading them.
    pub fn stamp(&self, key: &Key) -> Stamp {
        self.txn.context.versions.stamp(key)
    }

    /// Reads committed state (it has no writes of its own).
    pub fn txn(&self) -> &Txn<'a> {
        &self.txn
    }
}
