//! The single commit path: group commit on one dedicated thread.
//!
//! Every mutation is a transaction function submitted with [`Store::commit`].
//! The commit thread takes whatever transactions are waiting, runs them one
//! after another against the current state (each sees the writes of those
//! before it in the same batch), applies their writes as one atomic batch,
//! flushes once, and only then answers each caller.
//!
//! There is no fixed wait: while one flush runs, the next batch gathers in the
//! channel, so a lone write is flushed at once and batches grow with load.
//!
//! Because transactions run one at a time in commit order, a transaction that
//! reads state and decides (the consent check of a read, the next audit index)
//! decides against exactly the state its batch commits on top of. A decision
//! made off the commit thread on committed state ([`StoreReader::read`]) is
//! checked in its transaction with change stamps ([`super::versions`]).
//!
//! Transactions read the records consent decisions read through the commit
//! thread's cache ([`super::cache`]), which follows every applied batch.
//!
//! A transaction can also install a [`BatchTap`]: it then sees, on this
//! thread and in commit order, the writes of every batch from its own on.
//! That is how an online backup follows the writes made while it reads.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{COUNT_BUCKETS, Histogram, SECONDS_BUCKETS};

use tokio::sync::oneshot;

use super::cache::ReadCache;
use super::cold::ColdWindow;
pub use super::reader::{Snapshot, StoreReader};
use super::txn::TxnContext;
pub use super::txn::{BatchTap, CommitError, Durable, DurableHook, Finalizer, ScanPage, Txn};
use super::versions::Versions;
use super::{Backend, Entries, Key, StoreError, WriteBatch};

/// The name of the commit thread.
pub const COMMIT_THREAD_NAME: &str = "consentvault-commit";
/// The name of the thread that waits for the device on the commit thread's
/// behalf ([`Backend::sync`]).
pub const SYNC_THREAD_NAME: &str = "consentvault-sync";

/// Most transactions gathered into one batch; bounds the latency one flush
/// adds for the transactions behind it.
const BATCH_TRANSACTIONS_MAX: usize = 4096;

/// How often a failing store tries to recover ([`Backend::recover`]),
/// whether or not transactions are waiting.
const RECOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// Called with the outcome of the batch flush, after the batch is applied.
type Completion = Box<dyn FnOnce(Result<Durable, StoreError>) + Send>;
/// A transaction as the commit thread runs it.
type Job = Box<dyn for<'a> FnOnce(&mut Txn<'a>) -> Completion + Send>;

/// Counters of the commit path, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions acknowledged or rejected.
    pub transactions: AtomicU64,
    /// Batches applied and flushed.
    pub batches: AtomicU64,
    /// Time the commit thread spent writing batches out to the device
    /// ([`Backend::write_out`]), in nanoseconds.
    pub flush_nanos: AtomicU64,
    /// Syncs made ([`Backend::sync`]), each covering every batch written
    /// out while the one before ran.
    pub syncs: AtomicU64,
    /// Time the syncer spent in them, off the commit thread, in
    /// nanoseconds.
    pub sync_nanos: AtomicU64,
    /// Time spent applying batches to the engine, in nanoseconds.
    pub apply_nanos: AtomicU64,
    /// Time spent running transaction functions, in nanoseconds.
    pub execute_nanos: AtomicU64,
    /// Reads that could have been made ahead, made on the commit thread
    /// instead ([`Txn::lookahead`]).
    pub lookahead_reads: AtomicU64,
    /// Time spent in those reads, in nanoseconds.
    pub lookahead_nanos: AtomicU64,
    /// Bytes the storage device read for reads made ahead of the commit
    /// thread ([`StoreReader::read`]).
    pub ahead_disk_bytes: AtomicU64,
    /// Checks of stamps that held ([`Txn::ahead_holds`]).
    pub stamps_held: AtomicU64,
    /// Decisions made ahead that did not hold: something read ahead had
    /// changed, or the second of the decision had passed.
    pub stamps_stale: AtomicU64,
    /// Flushes that failed.
    pub flush_failures: AtomicU64,
    /// Reads in transactions that the device refused
    /// ([`StoreError::Unavailable`]); one makes the store unhealthy.
    pub read_failures: AtomicU64,
    /// Times the engine was made usable again after a failure
    /// ([`Backend::recover`]).
    pub recoveries: AtomicU64,
    /// Windows over which the engine's disk reads were judged cold or warm
    /// ([`Store::reads_cold`]).
    pub cold_windows_judged: AtomicU64,
    /// Batch sizes and durations.
    pub histograms: CommitHistograms,
}

/// The distributions of the commit path, for `/metrics`.
#[derive(Debug)]
pub struct CommitHistograms {
    /// Transactions per batch.
    pub batch_transactions: Histogram,
    /// Time to apply a batch to the engine, in seconds.
    pub apply_seconds: Histogram,
    /// Time to sync a group of written-out batches, in seconds.
    pub sync_seconds: Histogram,
}

impl Default for CommitHistograms {
    fn default() -> Self {
        Self {
            batch_transactions: Histogram::new(COUNT_BUCKETS),
            apply_seconds: Histogram::new(SECONDS_BUCKETS),
            sync_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// The store: committed reads, and the single commit path.
pub struct Store {
    backend: Arc<dyn Backend>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    healthy: Arc<AtomicBool>,
    /// Set for good once a sync fails.
    sync_failed: Arc<AtomicBool>,
    stats: Arc<StoreStats>,
    finalizer: Arc<std::sync::OnceLock<Finalizer>>,
    versions: Arc<Versions>,
    /// Whether the commit thread waits on cold pages ([`Store::reads_cold`]).
    cold: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("healthy", &self.is_healthy()).finish_non_exhaustive()
    }
}

impl Store {
    /// Starts the commit thread over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self, StoreError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(StoreStats::default());
        let thread_backend = Arc::clone(&backend);
        let thread_healthy = Arc::clone(&healthy);
        let sync_failed = Arc::new(AtomicBool::new(false));
        let thread_sync_failed = Arc::clone(&sync_failed);
        let thread_stats = Arc::clone(&stats);
        let finalizer: Arc<std::sync::OnceLock<Finalizer>> = Arc::new(std::sync::OnceLock::new());
        let thread_finalizer = Arc::clone(&finalizer);
        let versions = Arc::new(Versions::default());
        let thread_versions = Arc::clone(&versions);
        let cold = Arc::new(AtomicBool::new(false));
        let thread_cold = Arc::clone(&cold);
        // Logs from the commit thread go where the caller's logs go.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name(COMMIT_THREAD_NAME.to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let context = CommitContext {
                        backend: &*thread_backend,
                        healthy: &thread_healthy,
                        sync_failed: &thread_sync_failed,
                        stats: &thread_stats,
                        finalizer: &thread_finalizer,
                        versions: &thread_versions,
                        cold: &thread_cold,
                    };
                    commit_loop(&context, &receiver);
                });
            })
            .map_err(|error| StoreError::Engine(format!("cannot start the commit thread: {error}")))?;
        Ok(Self {
            backend,
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            healthy,
            sync_failed,
            stats,
            finalizer,
            versions,
            cold,
        })
    }

    /// Whether the commit thread is waiting on cold pages: the engine has had
    /// the storage device read more than 16 MiB/s for it, and for the reads
    /// made ahead of it ([`StoreReader::read`]), over the last half second
    /// (once cold, it counts as warm again under 4 MiB/s). Only those reads
    /// count: a background task that reads the disk (the log's
    /// recomputation at start-up, a backup) does not make the store cold.
    /// Judged on the commit thread once per window; here it is an atomic
    /// load. An engine that cannot tell ([`Backend::disk_read_bytes`]:
    /// sled off Linux) is never cold.
    ///
    /// While it holds, a caller whose transaction would read records it can
    /// read ahead ([`StoreReader::read`], checked with stamps) does so, on
    /// a blocking thread: the cold pages are then read many at a time, not
    /// one after another on the one thread every writer waits on. On a
    /// cached store reading ahead only adds work: sled 0.34.7 makes every
    /// read wait while a batch is applied, and the cores here are busy
    /// anyway (`docs/PERFORMANCE.md`).
    pub fn reads_cold(&self) -> bool {
        self.cold.load(Ordering::Relaxed)
    }

    /// Sets the function that ends every writing batch (once; later calls
    /// are refused and return `false`).
    pub fn set_finalizer(&self, finalizer: Finalizer) -> bool {
        self.finalizer.set(finalizer).is_ok()
    }

    /// How many keys the store holds, at about this moment (a progress
    /// total: writes go on meanwhile).
    pub fn keys_count(&self) -> Result<u64, StoreError> {
        self.backend.keys_count()
    }

    /// The committed value at `key` (outside any transaction).
    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(key.as_bytes())
    }

    /// Up to `limit` committed entries under `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &Key, limit: usize) -> Result<Entries, StoreError> {
        self.backend.scan(prefix.as_bytes(), &prefix.prefix_end(), limit)
    }

    /// Up to `limit` committed entries with `start <= key < end`.
    pub fn scan_range(&self, start: &Key, end: &Key, limit: usize) -> Result<Entries, StoreError> {
        self.backend.scan(start.as_bytes(), end.as_bytes(), limit)
    }

    /// The committed entry with the largest key in `start <= key < end`.
    pub fn last_in(&self, start: &Key, end: &Key) -> Result<Option<crate::store::Entry>, StoreError> {
        self.backend.last(start.as_bytes(), end.as_bytes())
    }

    /// One page of the committed entries under `prefix`, in key order: up to
    /// `limit` of those after `prefix ‖ after` (from the first when `after`
    /// is `None`), and whether more follow.
    pub fn scan_page(&self, prefix: &Key, after: Option<&[u8]>, limit: usize) -> Result<(Entries, bool), StoreError> {
        let start = match after {
            Some(after) => prefix.with_suffix(after).with_suffix(&[0]),
            None => prefix.clone(),
        };
        let mut entries = self.backend.scan(start.as_bytes(), &prefix.prefix_end(), limit.saturating_add(1))?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok((entries, more))
    }

    /// A handle on the committed state that [`StoreReader::read`] reads
    /// through, usable from any thread.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            backend: Arc::clone(&self.backend),
            versions: Arc::clone(&self.versions),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Whether the last flush succeeded and the commit thread is running.
    pub fn is_healthy(&self) -> bool {
        let running =
            self.thread.lock().map(|thread| thread.as_ref().is_some_and(|t| !t.is_finished())).unwrap_or(false);
        running
            && self.healthy.load(Ordering::Acquire)
            && !self.sync_failed.load(Ordering::Acquire)
            && self.backend.standing().is_ok()
    }

    /// Whether another vault node took the lease on the shared store
    /// ([`Backend::superseded`]): this one must stop serving.
    pub fn superseded(&self) -> bool {
        self.backend.superseded()
    }

    /// Counters of the commit path.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Runs `transaction` on the commit path and resolves once its batch is
    /// durable. If `transaction` returns `Err`, its writes are discarded and
    /// the error comes back as [`CommitError::Rejected`].
    ///
    /// The function runs on the commit thread while other callers wait: keep
    /// it to reads, decisions and writes; do sealing and opening outside.
    pub async fn commit<T, E, F>(&self, transaction: F) -> Result<T, CommitError<E>>
    where
        F: for<'a> FnOnce(&mut Txn<'a>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.commit_durable(transaction).await.map(|(value, _)| value)
    }

    /// Like [`Store::commit`], and also returns the proof that the batch is
    /// durable.
    pub async fn commit_durable<T, E, F>(&self, transaction: F) -> Result<(T, Durable), CommitError<E>>
    where
        F: for<'a> FnOnce(&mut Txn<'a>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.submit(transaction, move |result| {
            // The caller may have gone away (request cancelled); the change
            // is durable either way.
            let _ = reply.send(result);
        })?;
        answer.await.unwrap_or(Err(CommitError::Store(StoreError::Closed)))
    }

    /// [`Store::commit`] for synchronous callers (start-up, background
    /// threads): blocks the calling thread until the batch is durable.
    pub fn commit_blocking<T, E, F>(&self, transaction: F) -> Result<T, CommitError<E>>
    where
        F: for<'a> FnOnce(&mut Txn<'a>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(transaction, move |result| {
            let _ = reply.send(result);
        })?;
        answer.recv().unwrap_or(Err(CommitError::Store(StoreError::Closed))).map(|(value, _)| value)
    }

    fn submit<T, E, F, R>(&self, transaction: F, reply: R) -> Result<(), CommitError<E>>
    where
        F: for<'a> FnOnce(&mut Txn<'a>) -> Result<T, E> + Send + 'static,
        R: FnOnce(Result<(T, Durable), CommitError<E>>) + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let job: Job = Box::new(move |txn: &mut Txn<'_>| {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| transaction(txn)));
            let outcome = match outcome {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(CommitError::Rejected(error)),
                Err(_) => Err(CommitError::Store(StoreError::Panicked)),
            };
            if outcome.is_err() {
                txn.writes.clear();
                txn.hooks.clear();
                txn.taps.clear();
            }
            Box::new(move |flushed: Result<Durable, StoreError>| {
                reply(match (outcome, flushed) {
                    // A batch that could not be made durable ran on a store
                    // that was failing: what a transaction in it read may be
                    // half of a failed write, so its refusal is not trusted
                    // and the storage failure is the answer.
                    (Err(CommitError::Rejected(_)), Err(error)) => Err(CommitError::Store(error)),
                    (Err(error), _) => Err(error),
                    (Ok(value), Ok(durable)) => Ok((value, durable)),
                    (Ok(_), Err(error)) => Err(CommitError::Store(error)),
                });
            })
        });
        let sent = match self.sender.lock() {
            Ok(sender) => sender.as_ref().map(|sender| sender.send(job).is_ok()).unwrap_or(false),
            Err(_) => false,
        };
        if sent { Ok(()) } else { Err(CommitError::Store(StoreError::Closed)) }
    }

    /// Stops the commit thread after it has finished every submitted
    /// transaction, then flushes. Called by `Drop` too.
    pub fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut thread| thread.take());
        if let Some(thread) = thread {
            thread.join().map_err(|_| StoreError::Panicked)?;
            self.backend.flush()?;
            self.backend.close()?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "store did not close cleanly");
        }
    }
}

/// What the commit thread works with.
struct CommitContext<'a> {
    backend: &'a dyn Backend,
    healthy: &'a AtomicBool,
    /// Set for good once a sync fails ([`sync_loop`]).
    sync_failed: &'a AtomicBool,
    stats: &'a StoreStats,
    finalizer: &'a std::sync::OnceLock<Finalizer>,
    versions: &'a Versions,
    cold: &'a AtomicBool,
}

fn commit_loop(context: &CommitContext<'_>, receiver: &mpsc::Receiver<Job>) {
    let (to_syncer, syncer_jobs) = mpsc::channel::<SyncJob>();
    std::thread::scope(|scope| {
        let syncer = std::thread::Builder::new()
            .name(SYNC_THREAD_NAME.to_owned())
            .spawn_scoped(scope, move || sync_loop(context, &syncer_jobs));
        if let Err(error) = syncer {
            tracing::error!(%error, "cannot start the sync thread; nothing can be committed");
            return;
        }
        run_batches(context, receiver, &to_syncer);
        // Closing the channel ends the syncer once it has answered every
        // batch; the scope waits for it.
        drop(to_syncer);
    });
}

/// The commit thread proper: runs each batch's transactions, applies the
/// batch and writes it out, then hands it to the syncer and goes on with the
/// next batch while the device makes the previous one stable.
fn run_batches(context: &CommitContext<'_>, receiver: &mpsc::Receiver<Job>, to_syncer: &mpsc::Sender<SyncJob>) {
    let CommitContext { backend, healthy, sync_failed, stats, finalizer, versions, cold } = *context;
    let cache = RefCell::new(ReadCache::default());
    let txn_context = TxnContext { versions, stats, cache: Some(&cache) };
    let mut cold_window = ColdWindow::default();
    let mut batch_seq = 0u64;
    let mut recovery = Recovery::default();
    loop {
        // Waits for the first transaction of a batch, then takes whatever
        // else is already waiting. It wakes now and then without one: a
        // store that is failing (a write-out failed, or the device refused a
        // read) tries to recover, before running a batch or with no traffic;
        // after a failed sync it does not (see `sync_loop`).
        let first = match receiver.recv_timeout(RECOVERY_INTERVAL) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if !healthy.load(Ordering::Acquire) && recovery.due() && recovery.attempt(backend, stats, sync_failed) {
            cache.borrow_mut().clear();
            versions.all_changed();
            healthy.store(true, Ordering::Release);
        }
        let Some(first) = first else { continue };
        batch_seq += 1;
        let mut jobs = vec![first];
        while jobs.len() < BATCH_TRANSACTIONS_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        stats.histograms.batch_transactions.observe(jobs.len() as f64);
        let mut batch = WriteBatch::new();
        let mut hooks: Vec<DurableHook> = Vec::new();
        let mut taps: Vec<BatchTap> = Vec::new();
        let mut completions = Vec::with_capacity(jobs.len());
        let mut touched = Vec::new();
        let executing = Instant::now();
        let read_failures = stats.read_failures.load(Ordering::Relaxed);
        for job in jobs {
            let mut txn = Txn::new(backend, &batch, batch_seq, txn_context);
            let completion = job(&mut txn);
            let (writes, txn_hooks) = (std::mem::take(&mut txn.writes), std::mem::take(&mut txn.hooks));
            taps.append(&mut txn.taps);
            // Counted as it runs, so the transactions after it in this
            // batch see the change too.
            versions.count_ran(&writes, &mut touched);
            batch.extend(writes);
            hooks.extend(txn_hooks);
            completions.push(completion);
        }
        let finalized = match finalizer.get() {
            Some(finalize) if !batch.is_empty() => {
                let mut txn = Txn::new(backend, &batch, batch_seq, txn_context);
                let finalized = std::panic::catch_unwind(AssertUnwindSafe(|| finalize(&mut txn)))
                    .unwrap_or(Err(StoreError::Panicked));
                let (writes, txn_hooks) = (std::mem::take(&mut txn.writes), std::mem::take(&mut txn.hooks));
                versions.count_ran(&writes, &mut touched);
                batch.extend(writes);
                hooks.extend(txn_hooks);
                finalized
            }
            _ => Ok(()),
        };
        stats.execute_nanos.fetch_add(nanos_since(executing), Ordering::Relaxed);
        // A batch of pure reads is written out too if the store is failing:
        // what it read may not be durable yet.
        let was_healthy = healthy.load(Ordering::Acquire);
        let outcome = match finalized {
            Err(error) => Err(error),
            Ok(()) if batch.is_empty() && was_healthy => Ok(()),
            Ok(()) => apply_and_write_out(backend, &batch, stats, || {
                cache.borrow_mut().applied(&batch);
                versions.publish_applied(&touched);
            }),
        };
        // A read the device refused leaves the engine suspect (sled keeps an
        // I/O error for every later call): the store recovers before going on.
        if stats.read_failures.load(Ordering::Relaxed) != read_failures {
            healthy.store(false, Ordering::Release);
        }
        if outcome.is_err() {
            // Whether the engine holds the batch or not, nothing cached is
            // trusted after a failure.
            cache.borrow_mut().clear();
            // A batch that never reached the engine left it as it was: its
            // counts are published all the same, or the stripes would stay
            // "changed" for good.
            versions.publish_applied(&touched);
            healthy.store(false, Ordering::Release);
        }
        let needs_sync = outcome.is_ok() && (!batch.is_empty() || !was_healthy);
        let job = SyncJob { batch_seq, needs_sync, outcome, hooks, completions, batch, taps };
        if let Err(mpsc::SendError(job)) = to_syncer.send(job) {
            // The syncer is gone (it panicked): nothing is made durable.
            for completion in job.completions {
                completion(Err(StoreError::Closed));
            }
        }
        // What the device read for this thread and for the reads made ahead
        // of it, once per window.
        let judged = cold_window.judge(cold.load(Ordering::Relaxed), || {
            backend.disk_read_bytes().map(|own| own + stats.ahead_disk_bytes.load(Ordering::Relaxed))
        });
        if let Some(verdict) = judged {
            cold.store(verdict, Ordering::Relaxed);
            stats.cold_windows_judged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A batch the commit thread has applied and written out, waiting for the
/// device: its answers go out once a sync that began after it succeeds.
struct SyncJob {
    batch_seq: u64,
    /// Whether the batch wrote anything out that a sync must make stable.
    needs_sync: bool,
    /// How running, applying and writing out went.
    outcome: Result<(), StoreError>,
    hooks: Vec<DurableHook>,
    completions: Vec<Completion>,
    batch: WriteBatch,
    /// Taps the batch's transactions installed; they see this batch first.
    taps: Vec<BatchTap>,
}

/// The syncer: takes every batch written out so far, makes them stable
/// with one [`Backend::sync`], and answers them in order. One sync covers
/// all the batches that queued while the last one ran.
///
/// A failed sync is final for this process. After an `fdatasync` error the
/// kernel may keep pages the device never took, marked clean: a later sync
/// succeeds and a reopened engine reads them back, though they are not on
/// disk. So every batch from then on fails, and the store does not recover
/// by itself (`Store::is_healthy` stays false); the operator checks the
/// device. A device that refuses a write (a full disk, a file-size limit)
/// fails the write-out on the commit thread instead, before anything is
/// cached, and that the store does recover from.
fn sync_loop(context: &CommitContext<'_>, jobs: &mpsc::Receiver<SyncJob>) {
    let CommitContext { backend, healthy, sync_failed, stats, .. } = *context;
    let mut taps: Vec<BatchTap> = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter());
        let synced = if sync_failed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("a sync failed earlier; nothing is acknowledged until a restart".to_owned()))
        } else if group.iter().any(|job| job.needs_sync) {
            let started = Instant::now();
            let synced = backend.sync();
            let synced_in = nanos_since(started);
            stats.sync_nanos.fetch_add(synced_in, Ordering::Relaxed);
            stats.histograms.sync_seconds.observe(synced_in as f64 / 1e9);
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = &synced {
                sync_failed.store(true, Ordering::Release);
                healthy.store(false, Ordering::Release);
                stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    batches = group.len(),
                    "sync failed: these batches are not acknowledged, and nothing more is until the vault is \
                     restarted after the device is checked"
                );
            }
            synced
        } else {
            Ok(())
        };
        for job in group {
            let outcome = job.outcome.and_then(|()| synced.clone());
            if outcome.is_ok() {
                for hook in job.hooks {
                    hook();
                }
            } else {
                tracing::error!(
                    transactions = job.completions.len(),
                    "batch not durable; its changes are not acknowledged"
                );
            }
            taps.extend(job.taps);
            let tapped = outcome.as_ref().map(|()| &job.batch);
            taps.retain_mut(|tap| std::panic::catch_unwind(AssertUnwindSafe(|| tap(tapped))).unwrap_or(false));
            stats.transactions.fetch_add(job.completions.len() as u64, Ordering::Relaxed);
            let batch_seq = job.batch_seq;
            for completion in job.completions {
                completion(outcome.clone().map(|()| Durable { batch_seq }));
            }
        }
    }
}

/// Attempts to make a failed engine usable again, at most once per
/// [`RECOVERY_INTERVAL`].
#[derive(Debug, Default)]
struct Recovery {
    last: Option<Instant>,
    failures: u64,
}

impl Recovery {
    fn due(&self) -> bool {
        self.last.is_none_or(|last| last.elapsed() >= RECOVERY_INTERVAL)
    }

    /// Reopens the engine if it needs it and checks that the device takes
    /// a write again; says whether the store may commit again. Never after a
    /// failed sync (see [`sync_loop`]).
    fn attempt(&mut self, backend: &dyn Backend, stats: &StoreStats, sync_failed: &AtomicBool) -> bool {
        self.last = Some(Instant::now());
        if sync_failed.load(Ordering::Acquire) {
            if self.failures.is_multiple_of(120) {
                tracing::error!("a sync failed: the store does not recover by itself; check the device and restart");
            }
            self.failures += 1;
            return false;
        }
        match backend.recover().and_then(|()| probe(backend)).and_then(|()| {
            // A sync that failed meanwhile (on the syncer) wins.
            if sync_failed.load(Ordering::Acquire) {
                Err(StoreError::Unavailable("a sync failed during recovery".to_owned()))
            } else {
                Ok(())
            }
        }) {
            Ok(()) => {
                stats.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(attempts = self.failures + 1, "storage recovered; committing again");
                *self = Self::default();
                true
            }
            Err(error) => {
                // Once a minute is enough to say it is still failing.
                if self.failures.is_multiple_of(120) {
                    tracing::error!(%error, "storage still failing; trying again every 500 ms");
                }
                self.failures += 1;
                false
            }
        }
    }
}

/// Size of the write that proves the device takes writes again: larger
/// than the space an engine reserved before (sled writes a value this large
/// to a file of its own, and its log grows by 512 KiB segments), so it
/// needs that much room on the device; the store then has headroom for
/// thousands of batches, not a handful.
pub(super) const PROBE_BYTES: usize = 4 << 20;

/// Writes [`PROBE_BYTES`] under a key of its own, flushes, removes it and
/// flushes again.
fn probe(backend: &dyn Backend) -> Result<(), StoreError> {
    let key = Key::meta(PROBE_KEY).as_bytes().to_vec();
    let mut batch = WriteBatch::new();
    batch.insert(key.clone(), Some(vec![0; PROBE_BYTES]));
    backend.apply(&batch)?;
    backend.flush()?;
    batch.insert(key, None);
    backend.apply(&batch)?;
    backend.flush()
}

/// The key of the recovery probe; never there outside an attempt.
const PROBE_KEY: &str = "store/recovery-probe";

pub(super) fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Applies `batch`, calls `applied` once the engine holds it, and writes
/// it out (the sync follows on the syncer).
fn apply_and_write_out(
    backend: &dyn Backend,
    batch: &WriteBatch,
    stats: &StoreStats,
    applied: impl FnOnce(),
) -> Result<(), StoreError> {
    let applying = Instant::now();
    backend.apply(batch)?;
    applied();
    let applied_in = nanos_since(applying);
    stats.apply_nanos.fetch_add(applied_in, Ordering::Relaxed);
    stats.histograms.apply_seconds.observe(applied_in as f64 / 1e9);
    let started = Instant::now();
    let written = backend.write_out();
    stats.flush_nanos.fetch_add(nanos_since(started), Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    written
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Sealed;
    use crate::store::memory::MemoryBackend;

    fn store() -> Store {
        Store::new(Arc::new(MemoryBackend::default())).unwrap()
    }

    #[tokio::test]
    async fn committed_write_is_visible_and_rejected_one_changes_nothing() {
        let store = store();
        store
            .commit(|txn| {
                txn.put(Key::meta("a"), b"1".to_vec());
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        let rejected = store
            .commit(|txn| {
                txn.put(Key::meta("b"), b"2".to_vec());
                Err::<(), _>("no")
            })
            .await;
        assert!(matches!(rejected, Err(CommitError::Rejected("no"))));
        assert_eq!(store.get(&Key::meta("a")).unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(&Key::meta("b")).unwrap(), None);
    }

    #[tokio::test]
    async fn a_panicking_transaction_is_discarded_and_the_path_stays_open() {
        let store = store();
        let panicked = store
            .commit(|txn| -> Result<(), ()> {
                txn.put(Key::meta("p"), b"x".to_vec());
                panic!("boom")
            })
            .await;
        assert!(matches!(panicked, Err(CommitError::Store(StoreError::Panicked))));
        assert_eq!(store.get(&Key::meta("p")).unwrap(), None);
        store
            .commit(|txn| {
                txn.put(Key::meta("q"), vec![1]);
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        assert!(store.is_healthy());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_counter_increments_are_serialised() {
        let store = Arc::new(store());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store.commit(|txn| txn.counter_add(Key::counter("c"), 1)).await.unwrap()
            }));
        }
        let mut totals = Vec::new();
        for task in tasks {
            totals.push(task.await.unwrap());
        }
        totals.sort_unstable();
        assert_eq!(totals, (1..=200).collect::<Vec<u64>>());
        let stats = store.stats();
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 200);
        assert!(stats.batches.load(Ordering::Relaxed) <= 200);
    }

    #[tokio::test]
    async fn scan_prefix_merges_pending_writes_and_deletes() {
        let store = store();
        let subject = [9u8; 16];
        store
            .commit(move |txn| {
                txn.put(Key::values_of(&subject), vec![]);
                txn.put(Key::counter("x"), vec![0; 8]);
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        let seen = store
            .commit(move |txn| {
                txn.delete(&Key::values_of(&subject));
                txn.put_sealed(Key::value(&subject, "email"), Sealed::from_bytes(vec![1]));
                txn.scan_prefix(&Key::values_of(&subject))
            })
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(Key::values_of(&subject).suffix_of(&seen[0].0), Some(&b"email"[..]));
    }

    #[tokio::test]
    async fn paging_with_scan_from_visits_every_key_once_with_pending_writes_merged() {
        let store = store();
        store
            .commit(|txn| {
                for n in 0u8..10 {
                    txn.put(Key::counter(&format!("k{n}")), vec![n]);
                }
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        let pages = store
            .commit(|txn| {
                // Pending in this transaction: one key deleted, one added
                // inside the first page's span, one added past every page.
                txn.delete(&Key::counter("k1"));
                txn.put(Key::counter("k15"), vec![15]);
                txn.put(Key::counter("z"), vec![99]);
                let mut pages = Vec::new();
                let mut start = Some(Vec::new());
                while let Some(from) = start {
                    let page = txn.scan_from(&from, 3)?;
                    start = page.next;
                    pages.push(page.entries);
                }
                Ok::<_, StoreError>(pages)
            })
            .await
            .unwrap();
        let keys: Vec<Vec<u8>> = pages.iter().flatten().map(|(key, _)| key.clone()).collect();
        let mut expected: Vec<Vec<u8>> = ["k0", "k15", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "z"]
            .iter()
            .map(|name| Key::counter(name).as_bytes().to_vec())
            .collect();
        expected.sort();
        assert_eq!(keys, expected);
        assert!(pages.len() >= 4, "the engine's pages bound each span");
    }

    #[tokio::test]
    async fn a_tap_sees_its_own_batch_and_every_later_one_in_commit_order_until_it_stops() {
        let store = store();
        let (sender, seen) = mpsc::channel::<Vec<Vec<u8>>>();
        let mut calls = 0;
        let tap: BatchTap = Box::new(move |batch| {
            calls += 1;
            let keys = batch.map(|batch| batch.keys().cloned().collect()).unwrap_or_default();
            let _ = sender.send(keys);
            calls < 3
        });
        store
            .commit(move |txn| {
                txn.tap(tap);
                txn.put(Key::meta("first"), vec![1]);
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        for name in ["second", "third", "fourth"] {
            store
                .commit(move |txn| {
                    txn.put(Key::meta(name), vec![2]);
                    Ok::<_, ()>(())
                })
                .await
                .unwrap();
        }
        let seen: Vec<Vec<Vec<u8>>> = seen.try_iter().collect();
        let expected: Vec<Vec<Vec<u8>>> =
            ["first", "second", "third"].iter().map(|name| vec![Key::meta(name).as_bytes().to_vec()]).collect();
        assert_eq!(seen, expected, "installed with the first batch, removed after the third");
    }

    #[tokio::test]
    async fn a_snapshot_reads_committed_state_and_its_stamps_see_later_changes() {
        let store = store();
        let subject = [7u8; 16];
        store
            .commit(move |txn| {
                txn.put(Key::grant(&subject, "g1"), b"live".to_vec());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let (seen, stamps) = store.reader().read(|snapshot| {
            let stamps = vec![snapshot.stamp(&Key::subject(&subject))];
            (snapshot.txn().get(&Key::grant(&subject, "g1")).unwrap(), stamps)
        });
        assert_eq!(seen.as_deref(), Some(&b"live"[..]));
        assert!(!store.reads_cold(), "a fresh store reads nothing cold");

        // Nothing changed: the stamp holds on the commit thread.
        let held = stamps.clone();
        assert!(store.commit(move |txn| Ok::<_, StoreError>(txn.ahead_holds(&held, true))).await.unwrap());
        // Another subject's change leaves it holding (their stripes differ).
        store
            .commit(|txn| {
                txn.put(Key::grant(&[8u8; 16], "g2"), b"live".to_vec());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let held = stamps.clone();
        assert!(store.commit(move |txn| Ok::<_, StoreError>(txn.ahead_holds(&held, true))).await.unwrap());
        // A change to the subject's grants ends it, and a fresh stamp holds.
        store
            .commit(move |txn| {
                txn.put(Key::grant(&subject, "g1"), b"revoked".to_vec());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let held = stamps.clone();
        assert!(!store.commit(move |txn| Ok::<_, StoreError>(txn.ahead_holds(&held, true))).await.unwrap());
        let fresh = store.reader().read(|snapshot| vec![snapshot.stamp(&Key::subject(&subject))]);
        assert!(store.commit(move |txn| Ok::<_, StoreError>(txn.ahead_holds(&fresh, true))).await.unwrap());
    }

    #[tokio::test]
    async fn failed_flush_is_not_acknowledged_and_the_store_recovers() {
        let backend = Arc::new(MemoryBackend::default());
        let store = Store::new(backend.clone()).unwrap();
        backend.fail_flushes(true);
        let result = store
            .commit(|txn| {
                txn.put(Key::meta("k"), vec![1]);
                Ok::<_, ()>(())
            })
            .await;
        assert!(matches!(result, Err(CommitError::Store(StoreError::Unavailable(_)))));
        assert!(!store.is_healthy());
        backend.fail_flushes(false);
        store
            .commit(|txn| {
                txn.put(Key::meta("k"), vec![2]);
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
        assert!(store.is_healthy());
        assert_eq!(backend.durable(&Key::meta("k")), Some(vec![2]));
    }

    /// Commits a put of `value` at `key`.
    async fn put(store: &Store, key: &str, value: u8) -> Result<(), CommitError<()>> {
        let key = Key::meta(key);
        store
            .commit(move |txn| {
                txn.put(key, vec![value]);
                Ok::<_, ()>(())
            })
            .await
    }

    #[tokio::test]
    async fn an_engine_that_stays_failed_is_reopened_by_itself_once_the_device_takes_writes() {
        let backend = Arc::new(MemoryBackend::default());
        backend.sticky_failures(true);
        let store = Store::new(backend.clone()).unwrap();
        put(&store, "acknowledged", 1).await.unwrap();
        let before = store.versions.stamp(&Key::grant(&[7; 16], "g"));

        // The device refuses (a full disk): the write is not acknowledged,
        // and the engine stays failed, as sled does after an I/O error.
        backend.fail_flushes(true);
        let refused = put(&store, "refused", 2).await;
        assert!(matches!(refused, Err(CommitError::Store(StoreError::Unavailable(_)))), "{refused:?}");
        assert!(!store.is_healthy());
        backend.fail_flushes(false);
        assert!(matches!(backend.get(b"x"), Err(StoreError::Unavailable(_))), "still failed until reopened");

        // No transaction arrives, yet the store reopens the engine within
        // seconds and is healthy again.
        healthy_again(&store).await;
        assert_eq!(backend.recoveries(), 1);
        assert_eq!(store.stats().recoveries.load(Ordering::Relaxed), 1);
        // Nothing acknowledged is lost; what was refused is not there; a
        // stamp taken before the reopen no longer holds.
        assert_eq!(store.get(&Key::meta("acknowledged")).unwrap(), Some(vec![1]));
        assert_eq!(store.get(&Key::meta("refused")).unwrap(), None);
        assert!(!store.versions.unchanged(&[before]));
        put(&store, "after", 3).await.unwrap();
        assert_eq!(backend.durable(&Key::meta("after")), Some(vec![3]));
    }

    #[tokio::test]
    async fn while_the_device_refuses_the_store_keeps_trying_and_answers_at_once() {
        let backend = Arc::new(MemoryBackend::default());
        backend.sticky_failures(true);
        let store = Store::new(backend.clone()).unwrap();
        backend.fail_flushes(true);
        assert!(put(&store, "refused", 1).await.is_err());
        tokio::time::sleep(RECOVERY_INTERVAL * 3).await;
        assert!(!store.is_healthy(), "no recovery while the device still refuses");
        assert_eq!(backend.recoveries(), 0);
        // A write meanwhile is answered (refused), not held until recovery.
        assert!(matches!(put(&store, "refused", 1).await, Err(CommitError::Store(StoreError::Unavailable(_)))));
        backend.fail_flushes(false);
        healthy_again(&store).await;
    }

    /// Waits for `store` to recover by itself; fails after ten seconds.
    async fn healthy_again(store: &Store) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.is_healthy() {
            assert!(Instant::now() < deadline, "the store did not recover by itself");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_acknowledged_until_a_restart() {
        let backend = Arc::new(MemoryBackend::default());
        let store = Store::new(backend.clone()).unwrap();
        put(&store, "before", 1).await.unwrap();
        backend.fail_syncs(true);
        let refused = put(&store, "during", 2).await;
        assert!(matches!(refused, Err(CommitError::Store(StoreError::Unavailable(_)))), "{refused:?}");
        // The device answers again, but what it may have dropped is not
        // trusted: no later write is acknowledged, and the store says so.
        backend.fail_syncs(false);
        tokio::time::sleep(RECOVERY_INTERVAL * 3).await;
        assert!(!store.is_healthy());
        assert!(put(&store, "after", 3).await.is_err(), "a write after a failed sync was acknowledged");
        assert_eq!(backend.recoveries(), 0);
        assert_eq!(backend.durable(&Key::meta("before")), Some(vec![1]));
    }
}
