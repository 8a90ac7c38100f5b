//! Messages: a business's message to a connected customer (decided,
//! sealed into her inbox and logged in one transaction, or refused and
//! logged), what she writes back, her inbox, and the business's read of
//! her replies. Every text that leaves is opened by
//! `release::release_messages` after its `message.read` is on disk.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Contact, ContactError, INBOX_ITEMS_MAX, Refusal, decode, encode, live_customer_in, preferences_in};
use crate::audit::{Actor, AuditEvent, EventKind, Related, Role};
use crate::consent::{ConsentError, Relationship};
use crate::core::VaultClock;
use crate::crypto::message_label;
use crate::ids::{BusinessId, MessageId, PairwiseId, SubjectId};
use crate::keys::{KeyError, KeyRecord, dek_of_record};
use crate::policy::contact::{Situation, decide, period_start};
use crate::policy::engine::GrantProblem;
use crate::release::{release_messages, sealed_messages_in};
use crate::store::{Key, StoreError, Txn};

/// What an inbox item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    /// A business's message to her.
    Message,
    /// What she wrote to a business: a reply or feedback.
    Sent,
    /// The vault's notice to her.
    Notice,
}

/// One inbox item as stored: ids, names and times; a message's text is
/// sealed apart (`Key::message_text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Its id (newest sort first).
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// What it is.
    #[serde(rename = "type")]
    pub item_type: ItemType,
    /// The business it is from, to or about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub business_id: Option<BusinessId>,
    /// How that business knew her when the message went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pairwise_id: Option<PairwiseId>,
    /// A business's message: its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A notice: what it tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<super::NoticeKind>,
    /// What she wrote: the message it answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub in_reply_to: Option<MessageId>,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// The audit index of the event it comes from.
    pub audit_index: u64,
    /// A notice: the access request or grant it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about_id: Option<String>,
    /// A notice: the purpose concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// A notice: the fields concerned (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// A grant-expiry notice: when the grant ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

impl Item {
    /// A new item of `item_type` at `time_secs`, with nothing else set.
    pub(crate) fn new(message_id: MessageId, item_type: ItemType, time_secs: i64, audit_index: u64) -> Self {
        Self {
            message_id,
            item_type,
            business_id: None,
            pairwise_id: None,
            kind: None,
            notice: None,
            in_reply_to: None,
            time: VaultClock::rfc3339_at(time_secs),
            audit_index,
            about_id: None,
            purpose: None,
            fields: Vec::new(),
            expires_at: None,
        }
    }
}

/// A message's text, sealed as this JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Text {
    /// Its title, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Its body.
    pub body: String,
}

/// An inbox item with its text, if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InboxView {
    /// The item.
    #[serde(flatten)]
    pub item: Item,
    /// Its text (messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
}

/// One page of her inbox, newest first.
#[derive(Debug, Clone)]
pub struct InboxPage {
    /// The items.
    pub items: Vec<InboxView>,
    /// Where the next page starts (the last id of this one).
    pub next: Option<MessageId>,
    /// The audit index of the `message.read` that opened the texts.
    pub audit_index: Option<u64>,
}

/// A message that went: its id and the audit index of its event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The message's id.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// The audit index of its `message.delivered` or `message.sent`.
    pub audit_index: u64,
}

/// A customer's message to a business, as that business reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reply {
    /// Its id.
    #[schema(value_type = String)]
    pub message_id: MessageId,
    /// The business's message it answers; absent for feedback.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub in_reply_to: Option<MessageId>,
    /// When she wrote it (RFC 3339).
    #[schema(format = DateTime)]
    pub sent_at: String,
    /// What she wrote.
    pub text: Text,
}

/// Whom a customer writes to.
#[derive(Debug, Clone)]
pub enum Recipient {
    /// The business that sent the message in her inbox with this id.
    ReplyTo(MessageId),
    /// A business she is connected to (feedback).
    Business(BusinessId),
}

/// Checks a text's sizes and characters: a title, if any, of 1 to
/// [`super::TITLE_CHARS_MAX`] characters without control characters, a body
/// of 1 to [`super::BODY_BYTES_MAX`] bytes whose only control characters
/// are line breaks and tabs.
fn text_checked(title: Option<String>, body: String) -> Result<Text, ContactError> {
    match &title {
        Some(title)
            if title.trim().is_empty()
                || title.chars().count() > super::TITLE_CHARS_MAX
                || title.chars().any(char::is_control) =>
        {
            return Err(ContactError::Invalid(format!(
                "`title` must be 1 to {} characters without control characters",
                super::TITLE_CHARS_MAX
            )));
        }
        _ => {}
    }
    if body.trim().is_empty()
        || body.len() > super::BODY_BYTES_MAX
        || body.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ContactError::Invalid(format!(
            "`body` must be 1 to {} bytes, without control characters but line breaks and tabs",
            super::BODY_BYTES_MAX
        )));
    }
    Ok(Text { title, body })
}

/// Seals `text` as message `message` of `subject` under her DEK as `txn`
/// sees it, counting the seal against the DEK's limit, and stores it with
/// its inbox `item`.
fn store_sealed_in(
    txn: &mut Txn<'_>,
    contact: &Contact,
    subject: SubjectId,
    item: &Item,
    text: &Text,
) -> Result<(), ContactError> {
    let record_bytes = txn.get(&Key::dek(subject.as_bytes()))?.ok_or(ContactError::SubjectErased)?;
    let mut record = KeyRecord::decode(record_bytes.clone())?;
    let seals_max = contact.keys.config().limits.dek_seals_max.min(crate::subjects::SEALS_PER_KEY_MAX);
    record.seals = record.seals.saturating_add(1);
    if record.seals > seals_max {
        return Err(ContactError::KeyExhausted(subject));
    }
    let dek = dek_of_record(contact.core.keys(), subject, record_bytes)?;
    let plaintext = zeroize::Zeroizing::new(encode(text, "message text")?);
    let label = message_label(&item.message_id);
    let sealed = dek.seal(contact.core.keys().rng(), subject.as_bytes(), &label, &plaintext)?;
    txn.put(Key::dek(subject.as_bytes()), record.encode());
    txn.put_sealed(Key::message_text(subject.as_bytes(), &item.message_id), sealed);
    txn.put(Key::inbox_item(subject.as_bytes(), &item.message_id), encode(item, "inbox item")?);
    Ok(())
}

/// Every item of `subject`'s inbox, newest first, as `txn` sees it.
fn items_in(txn: &Txn<'_>, subject: SubjectId) -> Result<Vec<Item>, StoreError> {
    txn.scan_prefix(&Key::inbox_of(subject.as_bytes()))?.iter().map(|(_, bytes)| decode(bytes, "inbox item")).collect()
}

/// How many times a message is sealed again when her DEK is replaced under
/// it.
const SEAL_ATTEMPTS_MAX: usize = 3;

impl Contact {
    /// Runs `attempt` until it does not fail for a DEK at its limit,
    /// replacing the DEK it names in between. The next attempt decides
    /// afresh: a customer erased meanwhile is refused (a business's message)
    /// or gone (her own write), as for anyone erased.
    async fn with_key_room<T, F, Fut>(&self, attempt: F) -> Result<T, ContactError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ContactError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt().await {
                Err(ContactError::KeyExhausted(subject)) if attempts < SEAL_ATTEMPTS_MAX => {
                    match self.keys.dek_replace(subject).await {
                        Ok(()) | Err(KeyError::KeyChanged | KeyError::NoSubject) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                outcome => return outcome,
            }
        }
    }

    /// A business sends a message of `kind` to the customer it knows as
    /// `pairwise`. Decided on her preferences, block, objections, cap and
    /// inbox in the transaction that delivers it, and logged either way.
    pub async fn message_send(
        &self,
        business: &BusinessId,
        pairwise: &PairwiseId,
        kind: &str,
        title: Option<String>,
        body: String,
    ) -> Result<Delivery, ContactError> {
        let Some(purpose) = self.core.policies().rules.message_kinds.get(kind).map(|kind| kind.purpose.clone()) else {
            return Err(ContactError::Invalid(format!(
                "`{}` is not a message kind of the policies",
                super::shortened(kind)
            )));
        };
        // A business writes only for purposes it is registered for, as it
        // asks for access only for those.
        if !self.consent.business_purposes(business)?.contains(&purpose) {
            return Err(ConsentError::Policy(GrantProblem::PurposeNotRegistered(purpose)).into());
        }
        let text = text_checked(title, body)?;
        self.sends.take(business).map_err(ContactError::TooMany)?;
        let (business, pairwise) = (business.clone(), pairwise.clone());
        let outcome = self.with_key_room(|| self.message_send_once(&business, &pairwise, kind, &text)).await?;
        match outcome {
            Ok(delivery) => {
                self.decisions.inc(&["delivered", "none"]);
                Ok(delivery)
            }
            Err((refusal, audit_index)) => {
                // The coarse reason only: `/metrics` is public, and the
                // exact one is hers (and the auditors').
                self.decisions.inc(&["refused", refusal.told().as_str()]);
                Err(ContactError::Refused { refusal, audit_index })
            }
        }
    }

    async fn message_send_once(
        &self,
        business: &BusinessId,
        pairwise: &PairwiseId,
        kind: &str,
        text: &Text,
    ) -> Result<Result<Delivery, (Refusal, u64)>, ContactError> {
        let message_id = MessageId::at(self.core.clock().now_secs(), self.next_sequence(), self.core.keys().rng())?;
        let log = self.core.audit().clone();
        let contact = self.clone();
        let (business, pairwise, kind, text) = (business.clone(), pairwise.clone(), kind.to_owned(), text.clone());
        let (outcome, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // The time of the decision is the time of its commit, as a
                // scoped read's is: quiet hours and the cap are judged then.
                let now_secs = contact.core.clock().now_secs();
                let time = VaultClock::rfc3339_at(now_secs);
                // The policies in force at this transaction's place in the
                // log (a reload puts new ones in force in its own), so the
                // replay decides again under the same.
                let policies = contact.core.policies();
                let mut event =
                    AuditEvent::new(EventKind::MessageRefused, Actor::new(Role::Business, &*business), &time)
                        .related(Related::PairwiseId, &pairwise)
                        .related(Related::MessageKind, &kind);
                event.business = Some(business.to_string());
                // A reload that dropped the kind since the request came:
                // nobody takes a kind the policies do not define.
                let Some(kind) = policies.rules.message_kinds.get(&kind).cloned() else {
                    let event = event.related(Related::Cause, Refusal::KindNotAllowed.as_str());
                    let appended = log.append(txn, &event)?;
                    return Ok((Err(Refusal::KindNotAllowed), appended));
                };
                event.purpose = Some(kind.purpose.clone());
                let subject = subject_of(txn.get(&Key::pairwise(&business, &pairwise))?);
                let relationship: Option<Relationship> = match subject {
                    Some(subject) => txn
                        .get(&Key::relationship(subject.as_bytes(), &business))?
                        .map(|bytes| decode(&bytes, "relationship"))
                        .transpose()?,
                    None => None,
                };
                let (Some(subject), Some(relationship)) =
                    (subject, relationship.filter(|relationship| relationship.pairwise_id == pairwise))
                else {
                    let event = event.related(Related::Cause, Refusal::NotConnected.as_str());
                    let appended = log.append(txn, &event)?;
                    return Ok((Err(Refusal::NotConnected), appended));
                };
                event = event.subject(subject);
                let preferences = preferences_in(txn, &policies, subject, &business)?;
                let objections = crate::consent::objections_in(txn, subject)?;
                let items = txn.scan_prefix(&Key::inbox_of(subject.as_bytes()))?.len();
                // What the business delivered lately, counted whatever she
                // deleted since: deleting a message never resets a cap.
                let deliveries_key = Key::contact_deliveries(subject.as_bytes(), &business);
                let mut delivered: Vec<i64> = match txn.get(&deliveries_key)? {
                    Some(bytes) => decode(&bytes, "contact deliveries")?,
                    None => Vec::new(),
                };
                delivered.retain(|&at| at > now_secs - super::Period::LONGEST.secs());
                let since = period_start(&preferences.cap, now_secs);
                let delivered_in_period = delivered.iter().filter(|&&at| at > since).count();
                let situation = Situation {
                    preferences: &preferences,
                    blocked: relationship.requests_blocked,
                    objections: &objections,
                    kind: &kind.name,
                    purpose: &kind.purpose,
                    delivered_in_period,
                    inbox_items: items,
                    now_secs,
                };
                if let Err(refusal) = decide(&situation) {
                    let event = event.related(Related::Cause, refusal.as_str());
                    let appended = log.append(txn, &event)?;
                    return Ok((Err(refusal), appended));
                }
                let index = log.next_index_in(txn)?;
                let mut item = Item::new(message_id.clone(), ItemType::Message, now_secs, index);
                item.business_id = Some(business.clone());
                item.pairwise_id = Some(pairwise.clone());
                item.kind = Some(kind.name.clone());
                store_sealed_in(txn, &contact, subject, &item, &text)?;
                delivered.push(now_secs);
                txn.put(deliveries_key, encode(&delivered, "contact deliveries")?);
                event.kind = EventKind::MessageDelivered;
                let event = event.related(Related::MessageId, &message_id);
                let appended = log.append(txn, &event)?;
                Ok((Ok(message_id), appended))
            })
            .await?;
        let (outcome, appended) = outcome;
        let logged = self.core.audit().confirm(appended, &durable)?;
        Ok(match outcome {
            Ok(message_id) => Ok(Delivery { message_id, audit_index: logged.index() }),
            Err(refusal) => Err((refusal, logged.index())),
        })
    }

    /// The customer writes to a business: a reply to one of its messages, or
    /// feedback to a business she is connected to. Sealed into her inbox
    /// like the messages she gets, and logged as `message.sent`; the
    /// business reads it by her pairwise id.
    pub async fn message_write(
        &self,
        subject: SubjectId,
        recipient: Recipient,
        title: Option<String>,
        body: String,
    ) -> Result<Delivery, ContactError> {
        let text = text_checked(title, body)?;
        self.writes.take(&subject.to_string()).map_err(ContactError::TooMany)?;
        self.with_key_room(|| self.message_write_once(subject, &recipient, &text)).await
    }

    async fn message_write_once(
        &self,
        subject: SubjectId,
        recipient: &Recipient,
        text: &Text,
    ) -> Result<Delivery, ContactError> {
        let message_id = MessageId::at(self.core.clock().now_secs(), self.next_sequence(), self.core.keys().rng())?;
        let log = self.core.audit().clone();
        let contact = self.clone();
        let (recipient, text, id) = (recipient.clone(), text.clone(), message_id.clone());
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let now_secs = contact.core.clock().now_secs();
                let time = VaultClock::rfc3339_at(now_secs);
                live_customer_in(txn, subject, now_secs)?;
                let (business, replied) = match recipient {
                    Recipient::Business(business) => (business, None),
                    Recipient::ReplyTo(replied) => {
                        let item: Item = txn
                            .get(&Key::inbox_item(subject.as_bytes(), &replied))?
                            .map(|bytes| decode::<Item>(&bytes, "inbox item"))
                            .transpose()?
                            .filter(|item| item.item_type == ItemType::Message)
                            .ok_or(ContactError::NotFound("message"))?;
                        (item.business_id.clone().ok_or(StoreError::Corrupt { what: "inbox item" })?, Some(item))
                    }
                };
                let relationship: Relationship = txn
                    .get(&Key::relationship(subject.as_bytes(), &business))?
                    .map(|bytes| decode(&bytes, "relationship"))
                    .transpose()?
                    .ok_or(ContactError::NotFound("relationship"))?;
                // A message sent under a pairwise id she has since left (a
                // disconnect, then a new connection) cannot be answered: the
                // answer would tie the business's old id for her to the new.
                if replied.as_ref().is_some_and(|item| item.pairwise_id.as_ref() != Some(&relationship.pairwise_id)) {
                    return Err(ContactError::NotFound("message"));
                }
                let in_reply_to = replied.map(|item| item.message_id);
                if txn.scan_prefix(&Key::inbox_of(subject.as_bytes()))?.len() >= INBOX_ITEMS_MAX {
                    return Err(ContactError::InboxFull);
                }
                let index = log.next_index_in(txn)?;
                let mut item = Item::new(id.clone(), ItemType::Sent, now_secs, index);
                item.business_id = Some(business.clone());
                item.pairwise_id = Some(relationship.pairwise_id.clone());
                item.in_reply_to = in_reply_to.clone();
                store_sealed_in(txn, &contact, subject, &item, &text)?;
                let mut event = AuditEvent::new(EventKind::MessageSent, Actor::customer(subject), &time)
                    .subject(subject)
                    .related(Related::MessageId, &id)
                    .related(Related::PairwiseId, &relationship.pairwise_id);
                if let Some(replied) = &in_reply_to {
                    event = event.related(Related::InReplyTo, replied);
                }
                event.business = Some(business.to_string());
                Ok(log.append(txn, &event)?)
            })
            .await?;
        let logged = self.core.audit().confirm(appended, &durable)?;
        Ok(Delivery { message_id, audit_index: logged.index() })
    }

    /// One page of her inbox, newest first, after the id `after`: messages
    /// with their texts (opened after the `message.read` naming them is on
    /// disk), what she wrote, and the vault's notices.
    pub async fn inbox(
        &self,
        subject: SubjectId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<InboxPage, ContactError> {
        let now_secs = self.core.clock().now_secs();
        let time = VaultClock::rfc3339_at(now_secs);
        let log = self.core.audit().clone();
        let after = after.cloned();
        let ((items, more, sealed, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                live_customer_in(txn, subject, now_secs)?;
                let mut items: Vec<Item> = items_in(txn, subject)?
                    .into_iter()
                    .filter(|item| after.as_ref().is_none_or(|after| item.message_id > *after))
                    .collect();
                let more = items.len() > limit;
                items.truncate(limit);
                let with_text: Vec<String> = items
                    .iter()
                    .filter(|item| item.item_type != ItemType::Notice)
                    .map(|item| item.message_id.to_string())
                    .collect();
                let sealed = sealed_messages_in(txn, subject, &with_text)?;
                let appended = if sealed.names().is_empty() {
                    None
                } else {
                    let mut event =
                        AuditEvent::new(EventKind::MessageRead, Actor::customer(subject), &time).subject(subject);
                    event.messages = sealed.names();
                    Some(log.append(txn, &event)?)
                };
                Ok::<_, ContactError>((items, more, sealed, appended))
            })
            .await?;
        let (texts, audit_index) = match appended {
            Some(appended) => {
                let logged = self.core.audit().confirm(appended, &durable)?;
                (release_messages(&self.core, &logged, subject, sealed)?, Some(logged.index()))
            }
            None => (Default::default(), None),
        };
        let next = if more { items.last().map(|item| item.message_id.clone()) } else { None };
        let items = items
            .into_iter()
            .map(|item| {
                let text = texts.get(item.message_id.as_str()).map(text_of).transpose()?;
                Ok(InboxView { item, text })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(InboxPage { items, next, audit_index })
    }

    /// Her inbox items, newest first, without their texts (nothing is
    /// opened, so nothing is logged): for counts and summaries.
    pub fn inbox_items(&self, subject: SubjectId) -> Result<Vec<Item>, ContactError> {
        let rows = self.core.store().scan_prefix(&Key::inbox_of(subject.as_bytes()), INBOX_ITEMS_MAX * 2)?;
        Ok(rows.iter().map(|(_, bytes)| decode(bytes, "inbox item")).collect::<Result<_, _>>()?)
    }

    /// Removes one item and its text from her inbox.
    pub async fn inbox_delete(&self, subject: SubjectId, message: &MessageId) -> Result<(), ContactError> {
        let now_secs = self.core.clock().now_secs();
        let message = message.clone();
        self.core
            .store()
            .commit_durable(move |txn| {
                live_customer_in(txn, subject, now_secs)?;
                let key = Key::inbox_item(subject.as_bytes(), &message);
                if !txn.contains(&key)? {
                    return Err(ContactError::NotFound("message"));
                }
                txn.delete(&key);
                txn.delete_value(&Key::message_text(subject.as_bytes(), &message));
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// One page of what the customer it knows as `pairwise` wrote to
    /// `business` under that pairwise id, newest first, after the id
    /// `after`. The texts are opened after the `message.read` naming them
    /// is on disk.
    pub async fn replies(
        &self,
        business: &BusinessId,
        pairwise: &PairwiseId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<(Vec<Reply>, Option<MessageId>), ContactError> {
        let now_secs = self.core.clock().now_secs();
        let time = VaultClock::rfc3339_at(now_secs);
        let log = self.core.audit().clone();
        let (business, pairwise, after) = (business.clone(), pairwise.clone(), after.cloned());
        let ((subject, items, more, sealed, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let subject = subject_of(txn.get(&Key::pairwise(&business, &pairwise))?)
                    .ok_or(ContactError::NotFound("customer"))?;
                let mut items: Vec<Item> = items_in(txn, subject)?
                    .into_iter()
                    .filter(|item| {
                        item.item_type == ItemType::Sent
                            && item.business_id.as_ref() == Some(&business)
                            && item.pairwise_id.as_ref() == Some(&pairwise)
                            && after.as_ref().is_none_or(|after| item.message_id > *after)
                    })
                    .collect();
                let more = items.len() > limit;
                items.truncate(limit);
                let ids: Vec<String> = items.iter().map(|item| item.message_id.to_string()).collect();
                let sealed = sealed_messages_in(txn, subject, &ids)?;
                let appended = if sealed.names().is_empty() {
                    None
                } else {
                    let mut event =
                        AuditEvent::new(EventKind::MessageRead, Actor::new(Role::Business, &*business), &time)
                            .subject(subject)
                            .related(Related::PairwiseId, &pairwise);
                    event.business = Some(business.to_string());
                    event.messages = sealed.names();
                    Some(log.append(txn, &event)?)
                };
                Ok::<_, ContactError>((subject, items, more, sealed, appended))
            })
            .await?;
        let texts = match appended {
            Some(appended) => {
                let logged = self.core.audit().confirm(appended, &durable)?;
                release_messages(&self.core, &logged, subject, sealed)?
            }
            None => Default::default(),
        };
        let next = if more { items.last().map(|item| item.message_id.clone()) } else { None };
        let mut replies = Vec::with_capacity(items.len());
        for item in items {
            // A text removed since (she deleted it) is not listed.
            let Some(text) = texts.get(item.message_id.as_str()) else { continue };
            replies.push(Reply {
                message_id: item.message_id,
                in_reply_to: item.in_reply_to,
                sent_at: item.time,
                text: text_of(text)?,
            });
        }
        Ok((replies, next))
    }
}

/// The subject a pairwise index entry names, if it names one.
fn subject_of(entry: Option<Vec<u8>>) -> Option<SubjectId> {
    String::from_utf8(entry?).ok()?.parse().ok()
}

/// A released text, decoded.
fn text_of(value: &Value) -> Result<Text, StoreError> {
    serde_json::from_value(value.clone()).map_err(|_| StoreError::Corrupt { what: "message text" })
}
