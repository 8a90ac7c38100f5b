//! Sessions of the privacy center. A session is 256 random bits, given to
//! the browser once in an `HttpOnly` cookie and held here only by its
//! SHA-256, with the customer it signs in, a CSRF token for its forms, and
//! two lifetimes: an idle one and an absolute one. Sessions live in memory:
//! a restart signs everyone out. They end at sign-out, at a password change
//! (every session of the customer) and at erasure (the center also refuses a
//! session whose customer no longer exists).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::crypto::CryptoError;
use crate::ids::SubjectId;

/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, however used.
pub const SESSION_LIFETIME_MAX: Duration = Duration::from_secs(12 * 60 * 60);
/// Most sessions held at once; beyond, the expired ones are dropped, then
/// the oldest.
const SESSIONS_MAX: usize = 100_000;
/// Most sessions one customer holds; a new one beyond ends her oldest, so
/// one account cannot crowd out everyone else's.
pub const SESSIONS_PER_SUBJECT_MAX: usize = 16;

/// A live session, as a request sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The customer it signs in.
    pub subject: SubjectId,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("subject", &self.subject).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Entry {
    session: Session,
    started: Instant,
    seen: Instant,
}

/// The sessions of one vault.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(cookie: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, cookie.as_bytes()).as_ref());
    out
}

fn random_text(rng: &ring::rand::SystemRandom) -> Result<String, CryptoError> {
    let bytes: [u8; 32] = crate::crypto::random_bytes(rng)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // Entries are inserted and removed whole; a panic elsewhere cannot
        // leave one half made.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `subject`; returns the cookie value (given to
    /// the browser, never kept) and the session.
    pub fn start(&self, subject: SubjectId, rng: &ring::rand::SystemRandom) -> Result<(String, Session), CryptoError> {
        let cookie = random_text(rng)?;
        let session = Session { subject, csrf: random_text(rng)? };
        let now = Instant::now();
        let mut entries = self.entries();
        let mut hers: Vec<([u8; 32], Instant)> = entries
            .iter()
            .filter(|(_, entry)| entry.session.subject == subject)
            .map(|(key, entry)| (*key, entry.started))
            .collect();
        if hers.len() >= SESSIONS_PER_SUBJECT_MAX {
            hers.sort_by_key(|(_, started)| *started);
            for (key, _) in &hers[..=hers.len() - SESSIONS_PER_SUBJECT_MAX] {
                entries.remove(key);
            }
        }
        if entries.len() >= SESSIONS_MAX {
            entries.retain(|_, entry| Self::live(entry, now));
            if entries.len() >= SESSIONS_MAX
                && let Some(oldest) = entries.iter().min_by_key(|(_, entry)| entry.started).map(|(key, _)| *key)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(digest(&cookie), Entry { session: session.clone(), started: now, seen: now });
        Ok((cookie, session))
    }

    fn live(entry: &Entry, now: Instant) -> bool {
        now.duration_since(entry.seen) < SESSION_IDLE && now.duration_since(entry.started) < SESSION_LIFETIME_MAX
    }

    /// The session `cookie` names, if it is live; marks it used.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = digest(cookie);
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.get_mut(&key)?;
        if !Self::live(entry, now) {
            entries.remove(&key);
            return None;
        }
        entry.seen = now;
        Some(entry.session.clone())
    }

    /// Ends the session `cookie` names.
    pub fn end(&self, cookie: &str) {
        self.entries().remove(&digest(cookie));
    }

    /// Ends every session of `subject`.
    pub fn end_subject(&self, subject: SubjectId) {
        self.entries().retain(|_, entry| entry.session.subject != subject);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_with_sign_out_or_its_subject() {
        let sessions = Sessions::default();
        let rng = ring::rand::SystemRandom::new();
        let ada: SubjectId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let bob: SubjectId = "fedcba9876543210fedcba9876543210".parse().unwrap();
        let (first, session) = sessions.start(ada, &rng).unwrap();
        let (second, _) = sessions.start(ada, &rng).unwrap();
        let (third, other) = sessions.start(bob, &rng).unwrap();
        assert_eq!(sessions.get(&first), Some(session.clone()));
        assert_ne!(session.csrf, other.csrf);
        assert_eq!(sessions.get("not a cookie"), None);
        sessions.end(&first);
        assert_eq!(sessions.get(&first), None);
        assert!(sessions.get(&second).is_some());
        sessions.end_subject(ada);
        assert_eq!(sessions.get(&second), None);
        assert_eq!(sessions.get(&third).map(|session| session.subject), Some(bob));
    }

    #[test]
    fn one_customer_holds_a_bounded_number_of_sessions_and_a_new_one_ends_her_oldest() {
        let sessions = Sessions::default();
        let rng = ring::rand::SystemRandom::new();
        let ada: SubjectId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let bob: SubjectId = "fedcba9876543210fedcba9876543210".parse().unwrap();
        let (bobs, _) = sessions.start(bob, &rng).unwrap();
        let cookies: Vec<String> =
            (0..=SESSIONS_PER_SUBJECT_MAX).map(|_| sessions.start(ada, &rng).unwrap().0).collect();
        assert_eq!(sessions.get(&cookies[0]), None, "her oldest ended");
        assert!(cookies[1..].iter().all(|cookie| sessions.get(cookie).is_some()));
        assert!(sessions.get(&bobs).is_some(), "nobody else's");
    }
}
