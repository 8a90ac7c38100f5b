//! Contact on the customer's terms: her preferences per business (which
//! kinds of message, how many per period, quiet hours, channel), messages
//! businesses send her through the vault, what she writes back, and the
//! vault's own notices to her, all kept in her inbox.
//!
//! A business reaches a connected customer only here, by the pairwise id it
//! knows her by: it never holds an address. Every delivery decision is made
//! by the pure [`decide`](crate::policy::contact::decide) in the sending transaction and logged
//! (`message.delivered` or `message.refused`, with the exact reason); the
//! business is told only delivered, or refused with a coarse reason.
//!
//! **Architecture Invariant:** a message's text is sealed under the
//! customer's DEK like a field value (`Key::message_text`, the AAD naming
//! the message), never logged, and opened only by
//! `release::release_messages` with the
//! proof that a `message.read` naming it is on disk. Erasure destroys the
//! DEK and removes her inbox, so her messages go with her.

mod messages;
mod notices;

use std::sync::Arc;

use serde::Serialize;

pub use crate::policy::contact::{
    CAP_DEFAULT, CAP_MESSAGES_MAX, Cap, Channel, INBOX_ITEMS_MAX, Period, Preferences, QuietHours, Refusal, Told,
};
pub use messages::{Delivery, InboxPage, InboxView, Item, ItemType, Recipient, Reply, Text};
pub use notices::{EXPIRY_NOTICE_SECS, NoticeKind};

use crate::audit::{Actor, AuditError, AuditEvent, EventKind, Related};
use crate::auth::ratelimit::RateLimiter;
use crate::consent::{Consent, ConsentError, Relationship};
use crate::core::Core;
use crate::crypto::CryptoError;
use crate::ids::{RelationshipId, SubjectId};
use crate::keys::{KeyError, Keys};
use crate::policy::Policies;
use crate::release::ReleaseError;
use crate::store::{CommitError, Key, StoreError, Txn};

/// Longest message title, in characters.
pub const TITLE_CHARS_MAX: usize = 120;
/// Longest message body, in bytes.
pub const BODY_BYTES_MAX: usize = 4_000;
/// Messages one business may send (delivered or not) in a burst, and per
/// minute after it, whatever its customers' caps.
pub const SENDS_BURST: u32 = 60;
/// See [`SENDS_BURST`].
pub const SENDS_PER_MINUTE: u32 = 600;
/// Messages one customer may write (replies and feedback) in a burst, and
/// per minute after it.
pub const WRITES_BURST: u32 = 10;
/// See [`WRITES_BURST`].
pub const WRITES_PER_MINUTE: u32 = 30;

/// Errors of contact. None carries a message text or a personal value.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// The request is invalid; the text says why.
    #[error("{0}")]
    Invalid(String),
    /// No such relationship, message or business (for this caller).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The message was refused (logged at `audit_index`).
    #[error("the message was refused: {}", .refusal.told().as_str())]
    Refused {
        /// Why, exactly (the business is told [`Refusal::told`]).
        refusal: Refusal,
        /// The audit index of the refusal.
        audit_index: u64,
    },
    /// Her inbox is full: she must delete items to write more.
    #[error("your inbox holds {INBOX_ITEMS_MAX} items; delete some to write more")]
    InboxFull,
    /// Too many messages sent or written: wait this long.
    #[error("too many messages")]
    TooMany(std::time::Duration),
    /// The customer was erased (or never existed) by the time the change
    /// committed; nothing changed.
    #[error("the customer was erased")]
    SubjectErased,
    /// This customer's DEK sealed as many values as it may; it is replaced
    /// and the message sealed again.
    #[error("the data key reached its encryption limit")]
    KeyExhausted(SubjectId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit append failed; nothing changed and nothing was read.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Texts could not be opened.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A text could not be sealed, or an id drawn.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The customer's key could not be read or replaced.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A relationship or business could not be read.
    #[error(transparent)]
    Consent(#[from] ConsentError),
}

impl From<CommitError<ContactError>> for ContactError {
    fn from(error: CommitError<ContactError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// At most 64 characters of a caller's text, for an error message.
fn shortened(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Her preferences for `business` as `txn` sees them: stored, or the
/// defaults.
fn preferences_in(
    txn: &Txn<'_>,
    policies: &Policies,
    subject: SubjectId,
    business: &str,
) -> Result<Preferences, StoreError> {
    match txn.get(&Key::contact_preferences(subject.as_bytes(), business))? {
        Some(bytes) => decode(&bytes, "contact preferences"),
        None => Ok(Preferences::defaults(policies)),
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| StoreError::Corrupt { what })
}

/// Removes everything contact keeps about `subject` in `txn`: preferences,
/// inbox items and sealed texts (the erasure, which destroys her DEK in the
/// same transaction).
pub(crate) fn erase_in(txn: &mut Txn<'_>, subject: SubjectId) -> Result<(), StoreError> {
    for prefix in [
        Key::contact_preferences_of(subject.as_bytes()),
        Key::inbox_of(subject.as_bytes()),
        Key::message_texts_of(subject.as_bytes()),
    ] {
        for (key, _) in txn.scan_prefix(&prefix)? {
            txn.delete(&Key::raw(key));
        }
    }
    Ok(())
}

/// Contact: preferences, messages, the inbox and notices. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Contact {
    core: Arc<Core>,
    keys: Keys,
    /// What each business is registered for.
    consent: Consent,
    /// Messages each business may send.
    sends: Arc<RateLimiter>,
    /// Messages each customer may write.
    writes: Arc<RateLimiter>,
    /// Businesses' messages decided, by outcome and reason, for `/metrics`.
    decisions: Arc<crate::metrics::CounterFamily>,
    /// Counts the inbox items this vault made, to order those made in the
    /// same second ([`crate::ids::MessageId`]).
    sequence: Arc<std::sync::atomic::AtomicU64>,
}

impl Contact {
    /// The contact service over `core`; `keys` replaces a DEK at its limit,
    /// `consent` says which purposes a business is registered for.
    pub fn new(core: Arc<Core>, keys: Keys, consent: Consent) -> Self {
        Self {
            core,
            keys,
            consent,
            sends: Arc::new(RateLimiter::new(SENDS_BURST, SENDS_PER_MINUTE)),
            writes: Arc::new(RateLimiter::new(WRITES_BURST, WRITES_PER_MINUTE)),
            sequence: Arc::default(),
            decisions: Arc::default(),
        }
    }

    /// Businesses' messages decided, by `outcome` (`delivered`, `refused`)
    /// and `reason` (what the business is told: `none` for a delivery).
    pub fn decisions_counted(&self) -> &crate::metrics::CounterFamily {
        &self.decisions
    }

    /// The next inbox item's sequence number.
    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Her preferences for the business of one relationship (the defaults
    /// until she sets them).
    pub fn preferences(
        &self,
        subject: SubjectId,
        relationship_id: &RelationshipId,
    ) -> Result<(Relationship, Preferences), ContactError> {
        let relationship = self.consent.relationship(subject, relationship_id)?;
        let preferences = self.preferences_stored(subject, &relationship)?;
        Ok((relationship, preferences))
    }

    /// Her stored preferences for the business of `relationship`, or the
    /// defaults.
    fn preferences_stored(&self, subject: SubjectId, relationship: &Relationship) -> Result<Preferences, ContactError> {
        let key = Key::contact_preferences(subject.as_bytes(), &relationship.business_id);
        Ok(match self.core.store().get(&key)? {
            Some(bytes) => decode(&bytes, "contact preferences")?,
            None => Preferences::defaults(&self.core.policies()),
        })
    }

    /// Her preferences for every business she is connected to, in business
    /// id order.
    pub fn preferences_all(&self, subject: SubjectId) -> Result<Vec<(Relationship, Preferences)>, ContactError> {
        let prefix = Key::relationships_of(subject.as_bytes());
        let mut all = Vec::new();
        for (_, bytes) in self.core.store().scan_prefix(&prefix, usize::MAX)? {
            let relationship: Relationship = decode(&bytes, "relationship")?;
            let preferences = self.preferences_stored(subject, &relationship)?;
            all.push((relationship, preferences));
        }
        Ok(all)
    }

    /// Sets her preferences for the business of one relationship; recorded
    /// as `contact.changed` with what they now are.
    pub async fn preferences_set(
        &self,
        subject: SubjectId,
        relationship_id: &RelationshipId,
        preferences: Preferences,
    ) -> Result<Preferences, ContactError> {
        let policies = self.core.policies();
        let mut preferences = preferences.checked(&policies).map_err(ContactError::Invalid)?;
        let relationship = self.consent.relationship(subject, relationship_id)?;
        let time = self.core.clock().rfc3339();
        preferences.updated_at = Some(time.clone());
        let texts = preferences.texts();
        let mut event = AuditEvent::new(EventKind::ContactChanged, Actor::customer(subject), &time)
            .subject(subject)
            .related(Related::RelationshipId, &relationship.relationship_id)
            .related(Related::ContactKinds, texts.kinds)
            .related(Related::ContactCap, texts.cap)
            .related(Related::QuietHours, texts.quiet_hours)
            .related(Related::Channel, texts.channel);
        event.business = Some(relationship.business_id.to_string());
        let log = self.core.audit().clone();
        let now_secs = self.core.clock().now_secs();
        let stored = preferences.clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                live_customer_in(txn, subject, now_secs)?;
                let key = Key::relationship(subject.as_bytes(), &relationship.business_id);
                let current: Option<Relationship> =
                    txn.get(&key)?.map(|bytes| decode(&bytes, "relationship")).transpose()?;
                if current.is_none_or(|current| current.relationship_id != relationship.relationship_id) {
                    return Err(ContactError::NotFound("relationship"));
                }
                let key = Key::contact_preferences(subject.as_bytes(), &relationship.business_id);
                txn.put(key, encode(&stored, "contact preferences")?);
                Ok(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(preferences)
    }
}

/// The check every transaction the customer makes here runs first: she is
/// live (an erasure that committed first wins), and her activity is
/// recorded for the retention rule.
fn live_customer_in(txn: &mut Txn<'_>, subject: SubjectId, now_secs: i64) -> Result<(), ContactError> {
    if crate::directory::subject_activity_in(txn, subject, now_secs)? {
        Ok(())
    } else {
        Err(ContactError::SubjectErased)
    }
}
