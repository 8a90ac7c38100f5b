//! The commit thread's cache of the records consent decisions read.
//!
//! Every scoped read decided on the commit thread reads the business's
//! pairwise index entry, the subject's grants (a scan), objections,
//! relationship, values and key record; other consent changes read the
//! subject's record too. Reading them from sled took about
//! a third of the commit thread's time under load, and everything else
//! waits on that thread. The records are small and change rarely, and only
//! the commit thread changes anything, so it keeps them in memory: a read
//! fills the cache from the engine, and every batch the engine applies
//! updates (or, for scans, drops) what the cache holds under the keys it
//! wrote. So the cache always holds exactly what the engine holds.
//!
//! It lives on the commit thread alone (transactions reach it through their
//! [`Txn`](super::Txn)); reads of committed state elsewhere go to the engine.
//! It holds what the engine holds: ids, names, timestamps, and personal
//! values only sealed. When it outgrows [`CACHE_BYTES_MAX`] (counted
//! roughly: a value that grows in place, or a dropped scan, is not
//! recounted) it starts over.

use std::collections::HashMap;

use super::{Entries, Part, Space, WriteBatch};

/// The most the cache holds (keys and values, with a per-entry overhead).
const CACHE_BYTES_MAX: usize = 64 << 20;
/// What an entry costs beyond its bytes (map slot, vectors), roughly.
const ENTRY_OVERHEAD: usize = 64;
/// Scans are cached by subject: the space byte, the 16-byte subject id and
/// the part byte.
const SUBJECT_PREFIX_LEN: usize = super::SUBJECT_PART_AT + 1;

/// Point reads and subject scans the commit thread has made, as committed.
#[derive(Debug, Default)]
pub(super) struct ReadCache {
    points: HashMap<Vec<u8>, Option<Vec<u8>>>,
    scans: HashMap<Vec<u8>, Entries>,
    bytes: usize,
}

/// Whether point reads of `key` are cached: records a consent decision
/// reads.
fn point_cached(key: &[u8]) -> bool {
    // Grants are read as a scan, cached below.
    key.first().is_some_and(|space| *space == Space::Pairwise as u8 || *space == Space::Subjects as u8)
        || Part::of(key).is_some_and(|part| part != Part::Grant && Part::DECIDED_ON.contains(&part))
}

/// Whether a scan of `prefix` is cached: a subject's grants.
fn scan_cached(prefix: &[u8]) -> bool {
    prefix.len() == SUBJECT_PREFIX_LEN && Part::of(prefix) == Some(Part::Grant)
}

impl ReadCache {
    /// The committed value at `key`, read through `read` if not cached
    /// (and then cached, if its space is).
    pub(super) fn get<E>(
        &mut self,
        key: &[u8],
        read: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        if !point_cached(key) {
            return read();
        }
        if let Some(value) = self.points.get(key) {
            return Ok(value.clone());
        }
        let value = read()?;
        self.make_room(key.len() + value.as_ref().map_or(0, Vec::len));
        self.points.insert(key.to_vec(), value.clone());
        Ok(value)
    }

    /// The committed entries under `prefix`, scanned through `scan` if not
    /// cached (and then cached, if it is a subject's grants).
    pub(super) fn scan<E>(&mut self, prefix: &[u8], scan: impl FnOnce() -> Result<Entries, E>) -> Result<Entries, E> {
        if !scan_cached(prefix) {
            return scan();
        }
        if let Some(entries) = self.scans.get(prefix) {
            return Ok(entries.clone());
        }
        let entries = scan()?;
        self.make_room(prefix.len() + entries.iter().map(|(key, value)| key.len() + value.len()).sum::<usize>());
        self.scans.insert(prefix.to_vec(), entries.clone());
        Ok(entries)
    }

    /// Follows a batch the engine has applied: cached point reads of keys
    /// it wrote take their new values, cached scans it wrote under are
    /// dropped.
    pub(super) fn applied(&mut self, batch: &WriteBatch) {
        // Most of a batch is the audit log's keys, which are never cached.
        for (key, value) in batch {
            if point_cached(key)
                && let Some(cached) = self.points.get_mut(key)
            {
                cached.clone_from(value);
            }
            // A dropped scan's bytes stay counted until the cache starts over.
            if let Some(prefix) = key.get(..SUBJECT_PREFIX_LEN).filter(|prefix| scan_cached(prefix)) {
                self.scans.remove(prefix);
            }
        }
    }

    /// Forgets everything (after a batch that may or may not have been
    /// applied).
    pub(super) fn clear(&mut self) {
        self.points.clear();
        self.scans.clear();
        self.bytes = 0;
    }

    fn make_room(&mut self, bytes: usize) {
        self.bytes += bytes + ENTRY_OVERHEAD;
        if self.bytes > CACHE_BYTES_MAX {
            self.clear();
            self.bytes = bytes + ENTRY_OVERHEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Key;

    fn never<T>() -> Result<T, ()> {
        panic!("read from the engine although cached")
    }

    #[test]
    fn cached_records_follow_every_applied_batch() {
        let mut cache = ReadCache::default();
        let subject = [3u8; 16];
        let objections = Key::objections(&subject);
        // Absent is cached too.
        assert_eq!(cache.get(objections.as_bytes(), || Ok::<_, ()>(None)), Ok(None));
        assert_eq!(cache.get(objections.as_bytes(), never), Ok(None));
        let grants = Key::grants_of(&subject);
        let stored = vec![(Key::grant(&subject, "g1").as_bytes().to_vec(), b"live".to_vec())];
        assert_eq!(cache.scan(grants.as_bytes(), || Ok::<_, ()>(stored.clone())), Ok(stored.clone()));
        assert_eq!(cache.scan(grants.as_bytes(), never), Ok(stored));

        // A batch writes the objections and a new grant.
        let batch: WriteBatch = [
            (objections.as_bytes().to_vec(), Some(b"[\"marketing\"]".to_vec())),
            (Key::grant(&subject, "g2").as_bytes().to_vec(), Some(b"live".to_vec())),
        ]
        .into_iter()
        .collect();
        cache.applied(&batch);
        assert_eq!(cache.get(objections.as_bytes(), never), Ok(Some(b"[\"marketing\"]".to_vec())));
        let rescanned = cache.scan(grants.as_bytes(), || Ok::<_, ()>(Vec::new()));
        assert_eq!(rescanned, Ok(Vec::new()), "the grants scan was dropped and read again");

        // A deletion is seen as absence.
        cache.applied(&[(objections.as_bytes().to_vec(), None)].into_iter().collect());
        assert_eq!(cache.get(objections.as_bytes(), never), Ok(None));
    }

    #[test]
    fn only_the_records_decisions_read_are_cached() {
        let mut cache = ReadCache::default();
        let mut reads = 0;
        for _ in 0..2 {
            let _ = cache.get(Key::audit_record(1).as_bytes(), || {
                reads += 1;
                Ok::<_, ()>(None)
            });
            let _ = cache.get(Key::audit_by_subject(&[3u8; 16], 1).as_bytes(), || {
                reads += 1;
                Ok::<_, ()>(None)
            });
            let _ = cache.scan(Key::requests_of(&[3u8; 16]).as_bytes(), || {
                reads += 1;
                Ok::<_, ()>(Vec::new())
            });
            let _ = cache.scan(Key::grants_of_business("acme").as_bytes(), || {
                reads += 1;
                Ok::<_, ()>(Vec::new())
            });
        }
        assert_eq!(reads, 8);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let mut cache = ReadCache::default();
        let big = vec![0u8; 1 << 20];
        for n in 0..80u8 {
            let key = Key::dek(&[n; 16]);
            let _ = cache.get(key.as_bytes(), || Ok::<_, ()>(Some(big.clone())));
        }
        assert!(cache.bytes <= CACHE_BYTES_MAX);
        assert!(cache.points.len() < 80);
    }
}
