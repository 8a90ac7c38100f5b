//! A transaction as the commit thread runs it: reads see committed state,
//! the writes of earlier transactions in the same batch, and its own; writes
//! wait in the transaction until the batch is applied and flushed. Also the
//! proof of durability ([`Durable`]) and what a transaction can leave for
//! after its flush (hooks, taps).

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::cache::ReadCache;
use super::commit::nanos_since;
use super::versions::{Stamp, Versions};
use super::{Backend, Entries, Key, StoreError, StoreStats, ValueKey, WriteBatch, counter_decode, sealed_bytes};
use crate::crypto::Sealed;

/// Errors of [`super::Store::commit`].
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E> {
    /// The transaction function returned an error; none of its writes were
    /// applied.
    #[error(transparent)]
    Rejected(E),
    /// The store could not apply or flush the batch; the change is not
    /// acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The view a transaction function gets: reads see committed state plus the
/// writes of earlier transactions in the same batch plus its own.
pub struct Txn<'a> {
    backend: &'a dyn Backend,
    batch: &'a WriteBatch,
    pub(super) context: TxnContext<'a>,
    pub(super) writes: WriteBatch,
    batch_seq: u64,
    pub(super) hooks: Vec<DurableHook>,
    pub(super) taps: Vec<BatchTap>,
}

/// Work to do once the batch is durable (publish a new durable log size, a
/// new checkpoint), run by the commit thread right after the flush, before
/// any caller hears back.
pub type DurableHook = Box<dyn FnOnce() + Send>;

/// A function run once at the end of every batch that writes anything, in
/// the same batch (the audit log signs a checkpoint of the batch there).
/// If it fails, the whole batch is not acknowledged.
pub type Finalizer = Box<dyn for<'a> Fn(&mut Txn<'a>) -> Result<(), StoreError> + Send + Sync>;

/// Sees every batch the commit thread finishes while it is installed, on
/// the commit thread, in commit order, after the flush and before any caller
/// of that batch hears back: `Ok` with the batch's writes (puts and deletes;
/// empty for a batch of pure reads) once they are durable, `Err` if the batch
/// was not made durable. Returning `false` removes it; so does a panic. It
/// runs while every writer waits: hand the batch on, do not work on it.
pub type BatchTap = Box<dyn FnMut(Result<&WriteBatch, &StoreError>) -> bool + Send>;

/// One page of [`Txn::scan_from`].
#[derive(Debug)]
pub struct ScanPage {
    /// The entries, in key order.
    pub entries: Entries,
    /// Where the next page starts, or `None` if this page reached the end of
    /// the key space.
    pub next: Option<Vec<u8>>,
}

/// Proof that a batch is durable: made only by the commit path, after the
/// flush of batch `batch_seq` succeeded. Values created inside a transaction
/// (an audit append) can be checked against it to show they are on disk.
#[derive(Debug)]
pub struct Durable {
    pub(super) batch_seq: u64,
}

impl Durable {
    /// The sequence number of the batch that was flushed.
    pub fn batch_seq(&self) -> u64 {
        self.batch_seq
    }
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").field("writes", &self.writes.len()).finish_non_exhaustive()
    }
}

impl<'a> Txn<'a> {
    pub(super) fn new(
        backend: &'a dyn Backend,
        batch: &'a WriteBatch,
        batch_seq: u64,
        context: TxnContext<'a>,
    ) -> Self {
        Self { backend, batch, context, writes: WriteBatch::new(), batch_seq, hooks: Vec::new(), taps: Vec::new() }
    }

    /// Whether a decision made ahead of this transaction still holds: it
    /// was made in the same second (`same_second`, the caller's clock) and
    /// none of the records under `stamps` has changed since they were taken
    /// ([`super::Snapshot::stamp`]), counting the transactions that ran before this
    /// one in its batch. Counts the outcome either way (kept, or decided
    /// again). Meaningful on the commit thread only.
    pub fn ahead_holds(&self, stamps: &[Stamp], same_second: bool) -> bool {
        let holds = same_second && self.context.versions.unchanged(stamps);
        let counter = if holds { &self.context.stats.stamps_held } else { &self.context.stats.stamps_stale };
        counter.fetch_add(1, Ordering::Relaxed);
        holds
    }

    /// Runs `reads`, which a caller could have made ahead of the transaction
    /// ([`super::StoreReader::read`]), and counts and times them if this is the
    /// commit thread (for `/metrics`).
    pub fn lookahead<T>(&self, reads: impl FnOnce(&Self) -> T) -> T {
        if self.context.cache.is_none() {
            return reads(self);
        }
        let started = Instant::now();
        let found = reads(self);
        let stats = self.context.stats;
        stats.lookahead_reads.fetch_add(1, Ordering::Relaxed);
        stats.lookahead_nanos.fetch_add(nanos_since(started), Ordering::Relaxed);
        found
    }

    /// The sequence number of the batch this transaction is part of.
    pub fn batch_seq(&self) -> u64 {
        self.batch_seq
    }

    /// The value at `key` as this transaction sees it.
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes = key.as_bytes();
        if let Some(write) = self.writes.get(bytes).or_else(|| self.batch.get(bytes)) {
            return Ok(write.clone());
        }
        let read = match self.context.cache {
            Some(cache) => cache.borrow_mut().get(bytes, || self.backend.get(bytes)),
            None => self.backend.get(bytes),
        };
        self.engine_read(read)
    }

    /// The write to `key` waiting in this batch (this transaction's or an
    /// earlier one's), if there is one: `Some(None)` for a delete. Never
    /// asks the engine.
    pub fn pending(&self, key: &Key) -> Option<&Option<Vec<u8>>> {
        let bytes = key.as_bytes();
        self.writes.get(bytes).or_else(|| self.batch.get(bytes))
    }

    /// Counts a read the device refused: the engine may be failed for good
    /// (sled after an I/O error), which the commit thread then sees.
    fn engine_read<T>(&self, read: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unavailable(_)) = &read {
            self.context.stats.read_failures.fetch_add(1, Ordering::Relaxed);
        }
        read
    }

    /// Whether `key` holds a value.
    pub fn contains(&self, key: &Key) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// Every entry under `prefix`, merged with pending writes, in key order.
    pub fn scan_prefix(&self, prefix: &Key) -> Result<Entries, StoreError> {
        // The end is only worked out when the engine is asked.
        let scan = || self.backend.scan(prefix.as_bytes(), &prefix.prefix_end(), usize::MAX);
        let stored = self.engine_read(match self.context.cache {
            Some(cache) => cache.borrow_mut().scan(prefix.as_bytes(), scan),
            None => scan(),
        })?;
        let pending_under = |pending: &WriteBatch| {
            let from = (std::ops::Bound::Included(prefix.as_bytes()), std::ops::Bound::Unbounded);
            pending.range::<[u8], _>(from).next().is_some_and(|(key, _)| key.starts_with(prefix.as_bytes()))
        };
        if !pending_under(self.batch) && !pending_under(&self.writes) {
            return Ok(stored);
        }
        let mut merged: WriteBatch = stored.into_iter().map(|(key, value)| (key, Some(value))).collect();
        for pending in [self.batch, &self.writes] {
            for (key, value) in pending.range(prefix.as_bytes().to_vec()..) {
                if !key.starts_with(prefix.as_bytes()) {
                    break;
                }
                merged.insert(key.clone(), value.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|(key, value)| value.map(|value| (key, value))).collect())
    }

    /// About `limit` entries from `start` on (to the end of the key space), as
    /// this transaction sees them, in key order. The page covers every key
    /// from `start` up to the last key the engine returned (or to the end):
    /// pending writes inside that span are merged in, pending writes beyond
    /// it are left to the next page, so paging from `start` to the end visits
    /// every key exactly once.
    pub fn scan_from(&self, start: &[u8], limit: usize) -> Result<ScanPage, StoreError> {
        let limit = limit.max(1);
        let stored = self.engine_read(self.backend.scan(start, &[], limit))?;
        // The engine's last key bounds the span this page covers, unless the
        // engine ran out of keys first.
        let bound = if stored.len() == limit { stored.last().map(|(key, _)| key.clone()) } else { None };
        let mut merged: WriteBatch = stored.into_iter().map(|(key, value)| (key, Some(value))).collect();
        for pending in [self.batch, &self.writes] {
            for (key, value) in pending.range(start.to_vec()..) {
                if bound.as_ref().is_some_and(|bound| key > bound) {
                    break;
                }
                merged.insert(key.clone(), value.clone());
            }
        }
        let entries = merged.into_iter().filter_map(|(key, value)| value.map(|value| (key, value))).collect();
        let next = bound.map(|mut key| {
            // The smallest key after `key`.
            key.push(0);
            key
        });
        Ok(ScanPage { entries, next })
    }

    /// Installs `tap` at the end of this transaction's batch, so its first
    /// call is with this very batch (not at all if this transaction fails).
    pub fn tap(&mut self, tap: BatchTap) {
        self.taps.push(tap);
    }

    /// Writes a record that holds no personal value (ids, names, timestamps).
    pub fn put(&mut self, key: Key, value: Vec<u8>) {
        self.writes.insert(key.0, Some(value));
    }

    /// Writes a sealed personal value.
    pub fn put_sealed(&mut self, key: ValueKey, value: Sealed) {
        self.writes.insert(key.0.0, Some(sealed_bytes(value)));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &Key) {
        self.writes.insert(key.0.clone(), None);
    }

    /// Deletes a sealed value.
    pub fn delete_value(&mut self, key: &ValueKey) {
        self.delete(&key.0);
    }

    /// Runs `hook` on the commit thread once this batch is durable (not at
    /// all if it never becomes durable, or if this transaction fails).
    pub fn on_durable(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// Whether this transaction has written anything so far.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Adds `amount` to the counter at `key` and returns the new total.
    pub fn counter_add(&mut self, key: Key, amount: u64) -> Result<u64, StoreError> {
        let total = counter_decode(self.get(&key)?.as_deref())?.saturating_add(amount);
        self.put(key, total.to_be_bytes().to_vec());
        Ok(total)
    }
}

/// What a [`Txn`] counts in, and reads through.
#[derive(Clone, Copy)]
pub(super) struct TxnContext<'a> {
    pub(super) versions: &'a Versions,
    pub(super) stats: &'a StoreStats,
    /// The commit thread's cache of committed records: `Some` exactly when
    /// the transaction runs on the commit thread.
    pub(super) cache: Option<&'a RefCell<ReadCache>>,
}
