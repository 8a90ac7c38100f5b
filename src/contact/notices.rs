//! The vault's notices to a customer: a business asked her for access, a
//! business read special-category data of hers, a grant of hers ends soon,
//! a business's message reached her inbox. Each comes from an audit event,
//! in the transaction that appends it: a notice in her inbox (not for a
//! message, which is there itself), and, for her own webhook endpoints, a
//! signed message (ids and names only; `webhooks`).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::messages::{Item, ItemType};
use super::{Channel, Contact, ContactError, INBOX_ITEMS_MAX, decode, encode, preferences_in};
use crate::audit::{Actor, AuditEvent, Decision, EventKind, Related, Role};
use crate::consent::{GrantRecord, GrantStatus};
use crate::core::VaultClock;
use crate::ids::{BusinessId, MessageId};
use crate::policy::Sensitivity;
use crate::store::{Key, StoreError, Txn};
use crate::webhooks::{NoticeType, OwnerNotice, Webhooks};

/// How long before a grant ends she is told (seven days). A grant given
/// for less than this is not announced: she chose its end days before.
pub const EXPIRY_NOTICE_SECS: i64 = 7 * 86_400;
/// Grants announced per sweep at most; the rest wait for the next.
const EXPIRY_NOTICES_PER_SWEEP: usize = 200;
/// Where the expiry notices have got to: the last expiry marker announced.
const EXPIRY_CURSOR: &str = "contact/expiry-notices-through";

/// What a notice tells her.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A business asked her for access (`about_id`: the request).
    AccessRequest,
    /// A grant of hers ends soon (`about_id`: the grant; `expires_at`).
    GrantExpiring,
    /// A business read special-category data of hers (`fields`,
    /// `purpose`; `audit_index`: the read).
    SpecialRead,
}

/// The Unix second of an event's time (the vault clock's, when it does not
/// parse: it always does for events the vault made).
fn event_secs(event: &AuditEvent, fallback: i64) -> i64 {
    time::OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
        .map(|at| at.unix_timestamp())
        .unwrap_or(fallback)
}

impl Contact {
    /// The part of the audit log's observer that concerns customers (for
    /// [`Webhooks::observer`]): writes the inbox notice an event warrants in
    /// the transaction that appends it, and returns the webhook messages her
    /// own endpoints get for it. It holds the core weakly: the core holds
    /// the observer.
    pub fn notices(&self) -> crate::webhooks::ExtraNotices {
        let core = std::sync::Arc::downgrade(&self.core);
        let sequence = std::sync::Arc::clone(&self.sequence);
        Box::new(move |txn, event, index| match core.upgrade() {
            Some(core) => notices_in(&core, &sequence, txn, event, index),
            None => Ok(Vec::new()),
        })
    }
}

/// See [`Contact::notices`].
fn notices_in(
    core: &crate::core::Core,
    sequence: &std::sync::atomic::AtomicU64,
    txn: &mut Txn<'_>,
    event: &AuditEvent,
    index: u64,
) -> Result<Vec<OwnerNotice>, StoreError> {
    let (Some(subject), Some(business)) = (event.subject, event.business.as_deref()) else { return Ok(Vec::new()) };
    let (notice, webhook, mut data) = match event.kind {
        EventKind::AccessRequestCreated => (
            Some(NoticeKind::AccessRequest),
            NoticeType::AccessRequestCreated,
            json!({"request_id": event.related_value(Related::RequestId), "purposes": event.purposes}),
        ),
        EventKind::GrantExpiring => (
            Some(NoticeKind::GrantExpiring),
            NoticeType::GrantExpiring,
            json!({
                "grant_id": event.related_value(Related::GrantId),
                "expires_at": event.window.as_ref().map(|window| &window.expires_at),
            }),
        ),
        EventKind::DataRead
            if event.actor.role == Role::Business
                && matches!(event.decision, Some(Decision::Allow | Decision::Partial)) =>
        {
            let policies = core.policies();
            let special: Vec<&String> = event
                .fields
                .iter()
                .filter(|field| {
                    policies.catalogue.field(field).is_some_and(|spec| spec.sensitivity == Sensitivity::Special)
                })
                .collect();
            if special.is_empty() {
                return Ok(Vec::new());
            }
            (
                Some(NoticeKind::SpecialRead),
                NoticeType::SpecialDataRead,
                json!({"purpose": event.purpose, "fields": special}),
            )
        }
        EventKind::MessageDelivered => {
            let preferences = preferences_in(txn, &core.policies(), subject, business)?;
            if preferences.channel != Channel::Webhook {
                return Ok(Vec::new());
            }
            (
                None,
                NoticeType::MessageDelivered,
                json!({
                    "message_id": event.related_value(Related::MessageId),
                    "kind": event.related_value(Related::MessageKind),
                }),
            )
        }
        _ => return Ok(Vec::new()),
    };
    if let Some(notice) = notice
        && txn.scan_prefix(&Key::inbox_of(subject.as_bytes()))?.len() < INBOX_ITEMS_MAX
    {
        // One notice per event: its index makes its id.
        let time_secs = event_secs(event, core.clock().now_secs());
        let order = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut item = Item::new(MessageId::of_notice(time_secs, order, index), ItemType::Notice, time_secs, index);
        item.notice = Some(notice);
        item.business_id = business.parse::<BusinessId>().ok();
        match notice {
            NoticeKind::AccessRequest => {
                item.about_id = event.related_value(Related::RequestId).map(str::to_owned);
                item.fields = event.fields.clone();
                item.purpose = event.purposes.first().cloned();
            }
            NoticeKind::GrantExpiring => {
                item.about_id = event.related_value(Related::GrantId).map(str::to_owned);
                item.expires_at = event.window.as_ref().map(|window| window.expires_at.clone());
            }
            NoticeKind::SpecialRead => {
                item.purpose = event.purpose.clone();
                item.fields = data["fields"]
                    .as_array()
                    .map(|fields| fields.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
            }
        }
        txn.put(Key::inbox_item(subject.as_bytes(), &item.message_id), encode(&item, "inbox item")?);
    }
    data["audit_index"] = json!(index);
    data["business_id"] = json!(business);
    Ok(vec![OwnerNotice { owner: Webhooks::customer_owner(subject), notice: webhook, data }])
}

impl Contact {
    /// Tells customers of their grants that end within
    /// [`EXPIRY_NOTICE_SECS`]: one `grant.expiring` event per live grant,
    /// whose notice reaches her inbox and her webhook endpoints. Walks the
    /// expiry markers once, in time order, from where it last stopped.
    /// Returns how many it announced.
    pub async fn expiry_notices(&self) -> Result<usize, ContactError> {
        let now = self.core.clock().now_secs();
        let store = self.core.store();
        let floor = Key::grant_expiry(now.saturating_add(1), &[0u8; 16], "");
        let start = match store.get(&Key::meta(EXPIRY_CURSOR))? {
            // Just past the last marker announced.
            Some(last) => std::cmp::max(Key::raw([last.as_slice(), &[0]].concat()), floor),
            None => floor,
        };
        let end = Key::grant_expiry(now.saturating_add(EXPIRY_NOTICE_SECS), &[0u8; 16], "");
        if start >= end {
            return Ok(0);
        }
        let markers = store.scan_range(&start, &end, EXPIRY_NOTICES_PER_SWEEP)?;
        let Some((last, _)) = markers.last() else { return Ok(0) };
        let last = last.clone();
        let prefix = Key::grant_expiries_all();
        let log = self.core.audit().clone();
        let time = VaultClock::rfc3339_at(now);
        let (appended, durable) = store
            .commit_durable(move |txn| {
                // A sweep that ran meanwhile announced up to here already.
                let through = txn.get(&Key::meta(EXPIRY_CURSOR))?;
                let mut appended = Vec::new();
                for (key, _) in &markers {
                    if through.as_ref().is_some_and(|through| key <= through) {
                        continue;
                    }
                    let (subject, grant_id) = crate::consent::expiry_marker(&prefix, key)?;
                    let Some(bytes) = txn.get(&Key::grant(subject.as_bytes(), &grant_id))? else { continue };
                    let grant: GrantRecord = decode(&bytes, "grant")?;
                    // A grant revoked, not yet started, or given for less than
                    // the notice period (she chose its end days before), is
                    // not announced.
                    if grant.status(now) != GrantStatus::Active
                        || grant.starts_at > now
                        || grant.expires_at - grant.starts_at <= EXPIRY_NOTICE_SECS
                    {
                        continue;
                    }
                    let mut event = AuditEvent::new(EventKind::GrantExpiring, Actor::system(), &time)
                        .subject(subject)
                        .related(Related::GrantId, &grant.grant_id);
                    event.business = Some(grant.business_id.to_string());
                    event.window = Some(crate::audit::Window {
                        starts_at: VaultClock::rfc3339_at(grant.starts_at),
                        expires_at: VaultClock::rfc3339_at(grant.expires_at),
                    });
                    appended.push(log.append(txn, &event)?);
                }
                if through.as_ref().is_none_or(|through| last > *through) {
                    txn.put(Key::meta(EXPIRY_CURSOR), last);
                }
                Ok::<_, ContactError>(appended)
            })
            .await?;
        let count = appended.len();
        for appended in appended {
            self.core.audit().confirm(appended, &durable)?;
        }
        Ok(count)
    }
}
