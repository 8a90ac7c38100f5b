//! The sled (`=0.34.7`) backend: the only file that names sled.
//!
//! Durability as sled gives it: `apply_batch` is atomic, and `flush` returns
//! once the batch is written to sled's log and synced with
//! `sync_file_range`. That survives a killed process; it is not a promise
//! against power loss or a kernel crash (see `docs/STORAGE.md`).

use std::path::Path;

use super::{Backend, Entries, StoreError, WriteBatch};

/// A sled database holding the whole vault in its default tree.
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
}

fn engine(error: sled::Error) -> StoreError {
    StoreError::Engine(error.to_string())
}

impl SledBackend {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
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
        loop {
            match config.open() {
                Ok(db) => return Ok(Self { db }),
                // sled reports the lock as `Other` with this text.
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock") && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => return Err(engine(error)),
            }
        }
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(engine)?.map(|value| value.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let range = if end.is_empty() { self.db.range(start..) } else { self.db.range(start..end) };
        range
            .take(limit)
            .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(engine))
            .collect()
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key.as_slice(), value.as_slice()),
                None => sled_batch.remove(key.as_slice()),
            }
        }
        self.db.apply_batch(sled_batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }
}
