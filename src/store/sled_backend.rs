//! The sled (`=0.34.7`) backend: the only file that names sled.
//!
//! Durability: `apply_batch` is atomic, and sled's `flush` returns once the
//! batch is written to its log file and pushed out with `sync_file_range`,
//! which survives a killed process but not a power cut: it neither flushes
//! the device's write cache nor persists the file's size, and sled never
//! calls `fsync` while running. So [`Backend::flush`] here ends with an
//! `fdatasync` of the log file, and syncs what else sled wrote without
//! syncing (new blob files, the directory entries of new files and renamed
//! snapshots) whenever a directory changed (see `docs/STORAGE.md`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use super::{Backend, Entries, StoreError, WriteBatch};

/// Removes the snapshot files sled was still writing when its process died
/// (`snap.<lsn>.generating`), and says whether there were any.
///
/// sled 0.34.7 writes a snapshot under that name and renames it when it is
/// complete, but at start-up it reads the newest snapshot file by name,
/// and the unfinished one sorts last: a process killed while writing it
/// leaves a database sled refuses to open ("corrupted data", sled issues
/// #1527 and #1533). Such a file was never complete, so the snapshot before
/// it and the log after it still hold every flushed write; sled then
/// recovers as if the snapshot had not been started. Called only after
/// sled refused to open, so no running process is writing the file.
fn unfinished_snapshots_remove(dir: &Path) -> Result<bool, StoreError> {
    let io = |error: std::io::Error| StoreError::Engine(format!("{}: {error}", dir.display()));
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing a snapshot the store was writing when it stopped");
            std::fs::remove_file(&path).map_err(io)?;
            removed = true;
        }
    }
    Ok(removed)
}

/// A sled database holding the whole vault in its default tree.
///
/// sled 0.34 keeps the first I/O error it meets (a full disk, a file-size
/// limit) and answers every later call with it, even once the device takes
/// writes again. So the database sits behind a lock, and
/// [`Backend::recover`] closes it and opens it again from its files; calls
/// made meanwhile fail at once with [`StoreError::Unavailable`].
#[derive(Debug)]
pub struct SledBackend {
    db: RwLock<Option<sled::Db>>,
    path: PathBuf,
    cache_bytes: u64,
    files: Mutex<Option<StoreFiles>>,
}

/// The files sled writes and leaves unsynced, synced after each flush.
#[derive(Debug)]
struct StoreFiles {
    /// sled's log: every batch is written here.
    log: File,
    /// When the store directory was last seen changed (new files, renamed
    /// snapshots), as its modification time.
    dir_changed: Option<SystemTime>,
    /// The same for the blob directory (values too large for the log).
    blobs_changed: Option<SystemTime>,
    /// Blob files already synced.
    blobs_synced: BTreeSet<OsString>,
}

impl StoreFiles {
    /// Opens the log and syncs everything sled has written so far: the log,
    /// its configuration file (written once, never synced by sled), the
    /// blobs, and the store directory and its parent's entry for it.
    fn open(path: &Path) -> std::io::Result<Self> {
        let log = File::open(path.join("db"))?;
        let mut files = Self { log, dir_changed: None, blobs_changed: None, blobs_synced: BTreeSet::new() };
        let conf = path.join("conf");
        if conf.exists() {
            File::open(&conf)?.sync_all()?;
        }
        files.sync(path)?;
        crate::files::sync_parent(path)?;
        Ok(files)
    }

    /// Makes what sled's flush wrote durable: `fdatasync` of the log (its
    /// bytes and size), then, only if their directory changed since the
    /// last time, new blob files and the directories themselves.
    fn sync(&mut self, path: &Path) -> std::io::Result<()> {
        self.log.sync_data()?;
        let blobs = path.join("blobs");
        let blobs_changed = modified(&blobs)?;
        if blobs_changed != self.blobs_changed || recent(blobs_changed) {
            let mut present = BTreeSet::new();
            for entry in std::fs::read_dir(&blobs)? {
                let entry = entry?;
                let name = entry.file_name();
                if !self.blobs_synced.contains(&name) {
                    match File::open(entry.path()) {
                        Ok(blob) => blob.sync_all()?,
                        // sled removed it since the listing: nothing to keep.
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(error) => return Err(error),
                    }
                }
                present.insert(name);
            }
            crate::files::sync_dir(&blobs)?;
            self.blobs_synced = present;
            self.blobs_changed = blobs_changed;
        }
        let dir_changed = modified(path)?;
        if dir_changed != self.dir_changed || recent(dir_changed) {
            crate::files::sync_dir(path)?;
            self.dir_changed = dir_changed;
        }
        Ok(())
    }
}

/// Whether a directory was changed within the last second: a second change
/// in the same tick of its coarse modification time would not move it, so
/// such a directory is synced again until the time has clearly passed.
fn recent(changed: Option<SystemTime>) -> bool {
    changed.is_some_and(|changed| changed.elapsed().is_ok_and(|age| age < std::time::Duration::from_secs(1)))
}

/// The modification time of `path`, `None` if it does not exist.
fn modified(path: &Path) -> std::io::Result<Option<SystemTime>> {
    match std::fs::metadata(path) {
        Ok(metadata) => metadata.modified().map(Some),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn engine(error: sled::Error) -> StoreError {
    match error {
        // The device refused: full, over a file-size limit, failing. The
        // text is the operating system's, never a stored value.
        sled::Error::Io(error) => StoreError::Unavailable(error.to_string()),
        other => StoreError::Engine(other.to_string()),
    }
}

/// A failed sync of the store's files: the device refused.
fn io_error(path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

/// How many more bytes the store's log may take: the free space of its file
/// system and, under a file-size limit, what the limit leaves the log.
/// `None` if it cannot be told.
fn room(path: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    match rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
        None => Some(free),
        Some(limit) => {
            let log = std::fs::metadata(path.join("db")).map(|metadata| metadata.len()).unwrap_or(0);
            Some(free.min(limit.saturating_sub(log)))
        }
    }
}

fn reopening() -> StoreError {
    StoreError::Unavailable("the store is being reopened after a storage failure".to_owned())
}

impl SledBackend {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Self::open_db(path, cache_bytes)?;
        let files = StoreFiles::open(path).map_err(|error| io_error(path, &error))?;
        Ok(Self { db: RwLock::new(Some(db)), path: path.to_owned(), cache_bytes, files: Mutex::new(Some(files)) })
    }

    fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // The commit path flushes every batch itself; sled's own timer
            // only adds flushes nobody waits for.
            .flush_every_ms(None);
        // sled releases its file lock from a background thread after the last
        // handle of a closed database goes; a reopen right after a close (a
        // quick restart) waits for that, briefly, instead of failing.
        let mut attempts = 0;
        let mut snapshots_cleared = false;
        loop {
            match config.open() {
                Ok(db) => return Ok(db),
                // sled reports the lock as `Other` with this text.
                Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                    if attempts == 100 {
                        return Err(StoreError::InUse(path.to_owned()));
                    }
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(sled::Error::Corruption { .. }) if !snapshots_cleared && unfinished_snapshots_remove(path)? => {
                    snapshots_cleared = true;
                }
                Err(error) => return Err(engine(error)),
            }
        }
    }

    /// Runs `op` on the open database; fails at once while it is reopened.
    fn with_db<T>(&self, op: impl FnOnce(&sled::Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        op(guard.as_ref().ok_or_else(reopening)?)
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.with_db(|db| db.size_on_disk().map_err(engine))
    }
}

impl Backend for SledBackend {
    fn keys_count(&self) -> Result<u64, StoreError> {
        self.with_db(|db| Ok(db.len() as u64))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| Ok(db.get(key).map_err(engine)?.map(|value| value.to_vec())))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.with_db(|db| {
            let range = if end.is_empty() { db.range(start..) } else { db.range(start..end) };
            range
                .take(limit)
                .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(engine))
                .collect()
        })
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<crate::store::Entry>, StoreError> {
        self.with_db(|db| {
            let last = db.range(start..end).next_back().transpose().map_err(engine)?;
            Ok(last.map(|(key, value)| (key.to_vec(), value.to_vec())))
        })
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key.as_slice(), value.as_slice()),
                None => sled_batch.remove(key.as_slice()),
            }
        }
        self.with_db(|db| db.apply_batch(sled_batch).map_err(engine))
    }

    /// sled's flush, then the syncs it leaves out: nothing counts as
    /// durable before the log's bytes are on stable storage.
    fn flush(&self) -> Result<(), StoreError> {
        self.write_out()?;
        self.sync()
    }

    /// sled's flush: the log buffers written to the file and pushed out with
    /// `sync_file_range`, which does not wait for the device to make them
    /// stable.
    fn write_out(&self) -> Result<(), StoreError> {
        self.with_db(|db| db.flush().map(|_| ()).map_err(engine))
    }

    /// `fdatasync` of the log, and of whatever else sled wrote unsynced.
    fn sync(&self) -> Result<(), StoreError> {
        let mut files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let files = files.as_mut().ok_or_else(reopening)?;
        files.sync(&self.path).map_err(|error| io_error(&self.path, &error))
    }

    /// The calling thread's `read_bytes` from `/proc/thread-self/io`
    /// (Linux): what it had the storage device read for it. On the commit
    /// thread that is sled's reads of pages that neither its cache nor the
    /// OS page cache held.
    fn disk_read_bytes(&self) -> Option<u64> {
        let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
        io.lines().find_map(|line| line.strip_prefix("read_bytes:")).and_then(|bytes| bytes.trim().parse().ok())
    }

    /// Closes the failed database and opens it again from its files: sled
    /// recovers every flushed batch from its log, and a batch applied but
    /// never flushed is either whole or gone (batches are atomic). While the
    /// device still refuses, the open fails and the store stays closed until
    /// the next attempt.
    fn recover(&self) -> Result<(), StoreError> {
        // sled 0.34.7 can wait for ever on a log write that failed in a
        // reopened database (the recovery probe's, on a device still full):
        // nothing is reopened before the device has room for the probe.
        let needed = 2 * super::commit::PROBE_BYTES as u64;
        if let Some(room) = room(&self.path)
            && room < needed
        {
            return Err(StoreError::Unavailable(format!("{room} bytes of room for the store; waiting for {needed}")));
        }
        let failed = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        // The lock is not held while the old handle closes and the new one
        // opens (which reads the log since the last snapshot): readers fail
        // fast instead of waiting.
        drop(failed);
        let db = Self::open_db(&self.path, self.cache_bytes)?;
        // The open read what is on disk; a flush and the syncs prove the
        // device takes writes again before anything is committed on it.
        db.flush().map_err(engine)?;
        let files = StoreFiles::open(&self.path).map_err(|error| io_error(&self.path, &error))?;
        *self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(files);
        *self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(db);
        tracing::warn!(path = %self.path.display(), "store reopened after a storage failure");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_snapshot_left_unfinished_by_a_killed_process_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = SledBackend::open(dir.path(), 1 << 20).unwrap();
            let mut batch = WriteBatch::new();
            batch.insert(b"acknowledged".to_vec(), Some(b"kept".to_vec()));
            backend.apply(&batch).unwrap();
            backend.flush().unwrap();
        }
        // What a process killed inside sled's snapshot write leaves behind:
        // a partial file under the name that sorts after every snapshot.
        std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"partial").unwrap();
        let backend = SledBackend::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(backend.get(b"acknowledged").unwrap().as_deref(), Some(&b"kept"[..]));
        assert!(!dir.path().join("snap.FFFFFFFFFFFFFFFF.generating").exists());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The last entry of a range, as the log's lookups of a record and
        /// of a group ask for it, is the one a sorted map names, across
        /// keys sled has split over many nodes and keys removed again.
        #[test]
        fn the_last_entry_of_a_range_is_the_one_a_sorted_map_names(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..4, 1..5), 1..300),
            removed in proptest::collection::vec(0usize..300, 0..50),
            ranges in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..5), proptest::collection::vec(0u8..5, 0..5)), 1..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let backend = SledBackend::open(dir.path(), 1 << 20).unwrap();
            let memory = crate::store::memory::MemoryBackend::default();
            let mut batch: WriteBatch = keys.iter().map(|key| (key.clone(), Some(key.repeat(3)))).collect();
            backend.apply(&batch).unwrap();
            memory.apply(&batch).unwrap();
            batch = removed.iter().filter_map(|n| keys.get(*n)).map(|key| (key.clone(), None)).collect();
            backend.apply(&batch).unwrap();
            memory.apply(&batch).unwrap();
            for (start, end) in &ranges {
                if start < end {
                    proptest::prop_assert_eq!(backend.last(start, end).unwrap(), memory.last(start, end).unwrap());
                }
            }
        }
    }
}
