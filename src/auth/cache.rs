//! A bounded cache of verified tokens, keyed by SHA-256 of the token.
//!
//! Signature checks cost tens of microseconds; a cached token costs a hash
//! and a map lookup. An entry lives until its token's `exp` (never longer),
//! and every entry of a principal goes the moment it is disabled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Principal;

/// Entries kept at most; when full, expired entries go first, then the
/// cache is emptied (verification simply runs again).
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 65_536;

type TokenHash = [u8; 32];

/// The cache.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenHash, (Principal, u64)>>,
    /// Bumped by every [`TokenCache::forget_principal`]: a token verified
    /// against a principal's record read before a change is not cached
    /// after it.
    generation: AtomicU64,
}

fn token_hash(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

impl TokenCache {
    /// The principal of `token` if it was verified before and has not
    /// expired at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        entries.get(&token_hash(token)).filter(|(_, expires_at)| now < *expires_at).map(|(p, _)| p.clone())
    }

    /// The generation to pass to [`TokenCache::insert`], taken before the
    /// principal's record is read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers that `token` belongs to `principal` until `expires_at`,
    /// unless a principal was forgotten since `generation` was taken.
    pub fn insert(&self, token: &str, principal: Principal, expires_at: u64, now: u64, generation: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                entries.retain(|_, (_, expires)| now < *expires);
                if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                    entries.clear();
                }
            }
            entries.insert(token_hash(token), (principal, expires_at));
        }
    }

    /// Forgets every token of the principal `id`.
    pub fn forget_principal(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.retain(|_, (principal, _)| principal.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Role;

    #[test]
    fn entries_expire_and_go_with_their_principal() {
        let cache = TokenCache::default();
        let ada = Principal { role: Role::Customer, id: "ada".to_owned() };
        cache.insert("t1", ada.clone(), 100, 0, cache.generation());
        cache.insert("t2", Principal { role: Role::Business, id: "acme".to_owned() }, 100, 0, cache.generation());
        assert_eq!(cache.get("t1", 99), Some(ada));
        assert_eq!(cache.get("t1", 100), None);
        cache.forget_principal("ada");
        assert_eq!(cache.get("t1", 50), None);
        assert!(cache.get("t2", 50).is_some());
    }

    #[test]
    fn a_token_checked_before_a_principal_changed_is_not_cached_after() {
        let cache = TokenCache::default();
        let acme = Principal { role: Role::Business, id: "acme".to_owned() };
        let generation = cache.generation();
        // The record was read, then the principal was disabled or rotated.
        cache.forget_principal("acme");
        cache.insert("t1", acme.clone(), 100, 0, generation);
        assert_eq!(cache.get("t1", 50), None);
        cache.insert("t1", acme.clone(), 100, 0, cache.generation());
        assert_eq!(cache.get("t1", 50), Some(acme));
    }
}
