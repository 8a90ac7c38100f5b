//! Signed notices to businesses: webhooks per the Standard Webhooks
//! specification, for grant changes, for the customer's corrections and
//! erasures (GDPR Art. 19) and her messages; and to customers who register
//! endpoints of their own, for the vault's notices to them (`contact`).
//!
//! An endpoint has an **owner**: a business (its id) or a customer
//! ([`Webhooks::customer_owner`]); every operation names the owner, so no
//! one reaches another's endpoints.
//!
//! A business registers endpoints (an `https` URL each, with a `whsec_`
//! secret it is shown once and can rotate). Every audit event a business
//! must hear of becomes one message per endpoint in the **outbox**, written
//! by the audit log's observer in the transaction that appends the event
//! (`outbox.rs`): a notice is durable exactly when its event is. The
//! delivery worker (`deliver.rs`) sends each message until an endpoint
//! answers 2xx, retrying with backoff, and records every attempt in the
//! endpoint's **delivery log**; an endpoint that keeps failing is disabled
//! until the business enables it again, its messages kept. Delivery is at
//! least once: a message is removed only after a 2xx is recorded.
//!
//! **SSRF.** The vault sends HTTP only to URLs businesses registered, and
//! only to public addresses: a URL whose host is, or resolves to, a
//! loopback, private, link-local, shared or otherwise non-public address is
//! refused (at registration for an address, at each delivery for a name,
//! which is then connected to at the address checked), unless the operator
//! sets `webhooks.insecure_allow_private`. No redirects are followed and no
//! proxy is used. `docs/WEBHOOKS.md` has the threat and the rule.

mod deliver;
mod outbox;
pub mod signature;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use deliver::{DELIVERY_LOG_KEPT_SECS, address_is_public};
pub use outbox::NoticeType;

use crate::core::{Core, VaultClock};
use crate::crypto::CryptoError;
use crate::ids::SubjectId;
use crate::store::{CommitError, Key, StoreError};

/// Endpoints one business, or one customer, may register.
pub const ENDPOINTS_PER_BUSINESS_MAX: usize = 10;
/// Longest endpoint URL, in bytes.
const URL_BYTES_MAX: usize = 2_000;
/// Longest endpoint description, in bytes.
const DESCRIPTION_BYTES_MAX: usize = 200;
/// How long a rotated-out secret still signs, beside the new one, so the
/// business can switch its receiver over without losing a message.
pub const PREVIOUS_SECRET_SECS: i64 = 24 * 3_600;

/// How webhooks are delivered (`[webhooks]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The wait before the first retry, in seconds; each later retry waits
    /// twice the one before, up to six hours.
    pub retry_initial_secs: u64,
    /// Attempts per message before it is given up (recorded as such). At
    /// least `failures_to_disable`: an endpoint that keeps failing is
    /// disabled, its messages kept, before any is given up.
    pub attempts_max: u32,
    /// Failed attempts in a row after which an endpoint is disabled.
    pub failures_to_disable: u32,
    /// How long one delivery may take, in seconds.
    pub timeout_secs: u64,
    /// Lets endpoints use plain `http` (a warning at start-up). Refused in
    /// production.
    pub insecure_allow_http: bool,
    /// Lets endpoints be on loopback, private or link-local addresses (a
    /// warning at start-up): the SSRF rule off.
    pub insecure_allow_private: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_initial_secs: 10,
            attempts_max: 15,
            failures_to_disable: 10,
            timeout_secs: 10,
            insecure_allow_http: false,
            insecure_allow_private: false,
        }
    }
}

/// Whether an endpoint is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    /// Messages are delivered.
    Enabled,
    /// Disabled after repeated failure: messages wait until the business
    /// enables it again.
    Disabled,
}

/// A registered webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Its id.
    pub endpoint_id: String,
    /// Where messages are sent.
    pub url: String,
    /// The business's own note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether messages are sent.
    pub status: EndpointStatus,
    /// Failed attempts since the last delivery.
    pub failures_in_a_row: u32,
    /// When it was registered (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Why and when it was disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Until when (RFC 3339) the secret a rotation replaced still signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub previous_secret_until: Option<String>,
}

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    /// `webhook-id`: the same on every attempt.
    message_id: String,
    endpoint_id: String,
    /// The endpoint's owner ([`Webhooks::customer_owner`] for a customer's);
    /// stored under the name it had when only businesses had endpoints.
    #[serde(rename = "business_id")]
    owner: String,
    /// The message's `type`.
    notice: NoticeType,
    /// The audit index of the event it announces.
    audit_index: u64,
    /// The event's time (RFC 3339): the message's `timestamp`.
    time: String,
    /// The message's `data`: ids and field names, never a value.
    data: serde_json::Value,
    attempts: u32,
    /// When it is next due (Unix seconds).
    next_attempt_at: i64,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx: the message is delivered.
    Delivered,
    /// It failed; the message will be tried again.
    Failed,
    /// It failed for the last time: the message is given up.
    GivenUp,
}

/// One attempt in an endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The message (`webhook-id`).
    pub message_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub notice: NoticeType,
    /// The audit index of the event it announced.
    pub audit_index: u64,
    /// Which attempt this was (1 for the first).
    pub attempt: u32,
    /// When it was made (RFC 3339).
    #[schema(format = DateTime)]
    pub time: String,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// The endpoint's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (RFC 3339), after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// Whether this failure disabled the endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub endpoint_disabled: bool,
}

/// Errors of webhook registration and delivery bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The request is invalid (a URL the rule refuses, a description too
    /// long); the text says why.
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint for this owner.
    #[error("no such webhook endpoint")]
    NotFound,
    /// The owner has [`ENDPOINTS_PER_BUSINESS_MAX`] endpoints already.
    #[error("at most {ENDPOINTS_PER_BUSINESS_MAX} webhook endpoints may be registered")]
    TooMany,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A secret could not be drawn, sealed or opened.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<CommitError<WebhookError>> for WebhookError {
    fn from(error: CommitError<WebhookError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// A page of an endpoint's delivery log, oldest first.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    /// The attempts.
    pub items: Vec<Delivery>,
    /// Where the next page starts, if there is one.
    pub next: Option<Vec<u8>>,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt { what })
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| StoreError::Corrupt { what })
}

/// A message for an owner's endpoints that an event warrants beyond what
/// the outbox itself derives (the customer's notices, from `contact`).
#[derive(Debug, Clone)]
pub struct OwnerNotice {
    /// Whose endpoints get it.
    pub owner: String,
    /// Its type.
    pub notice: NoticeType,
    /// Its `data`: ids and names, never a value.
    pub data: serde_json::Value,
}

/// What else an appended event warrants for endpoints, decided in its
/// transaction (which it may also write to).
pub type ExtraNotices = Box<
    dyn Fn(&mut crate::store::Txn<'_>, &crate::audit::AuditEvent, u64) -> Result<Vec<OwnerNotice>, StoreError>
        + Send
        + Sync,
>;

/// The label a webhook secret is sealed under: the endpoint's id, so a
/// sealed secret moved to another endpoint does not open.
fn secret_label(endpoint_id: &str) -> String {
    format!("webhook-secret:{endpoint_id}")
}

/// Removes the endpoint at `key` (id `endpoint_id`), its secrets, its
/// waiting messages and its delivery log in `txn`.
fn endpoint_remove_in(txn: &mut crate::store::Txn<'_>, key: &Key, endpoint_id: &str) -> Result<(), StoreError> {
    txn.delete(key);
    txn.delete(&Key::webhook_secret(endpoint_id, false));
    txn.delete(&Key::webhook_secret(endpoint_id, true));
    for (row, _) in txn.scan_prefix(&Key::webhook_messages_of(endpoint_id))? {
        txn.delete(&Key::raw(row));
    }
    for (row, _) in txn.scan_prefix(&Key::webhook_deliveries_of(endpoint_id))? {
        txn.delete(&Key::raw(row));
    }
    Ok(())
}

/// Webhook endpoints, the outbox and its delivery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    core: Arc<Core>,
    settings: Arc<WebhookSettings>,
    /// Woken when a batch that queued messages is durable.
    wake: Arc<tokio::sync::Notify>,
    /// Delivery attempts by outcome, for `/metrics`.
    deliveries: Arc<crate::metrics::CounterFamily>,
}

impl Webhooks {
    /// The webhook service over `core`.
    pub fn new(core: Arc<Core>, settings: WebhookSettings) -> Self {
        Self {
            core,
            settings: Arc::new(settings),
            wake: Arc::new(tokio::sync::Notify::new()),
            deliveries: Arc::default(),
        }
    }

    /// Delivery attempts by outcome (`delivered`, `failed`, `given_up`).
    pub fn deliveries_counted(&self) -> &crate::metrics::CounterFamily {
        &self.deliveries
    }

    /// The settings in force.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// The audit log observer that writes the outbox (install it with
    /// [`crate::audit::AuditLog::observe`]); `extra` adds the messages an
    /// event warrants for customers' endpoints.
    pub fn observer(&self, extra: ExtraNotices) -> crate::audit::Observer {
        let wake = Arc::clone(&self.wake);
        Box::new(move |txn, event, index| {
            let extra = extra(txn, event, index)?;
            outbox::outbox_in(txn, event, index, extra, &wake)
        })
    }

    /// The owner name of `subject`'s own endpoints: distinct from every
    /// business id (which is 32 hexadecimal digits).
    pub fn customer_owner(subject: SubjectId) -> String {
        format!("customer:{subject}")
    }

    /// Removes every endpoint of `owner`, their secrets, waiting messages
    /// and delivery logs, in `txn` (a customer's erasure).
    pub(crate) fn owner_erase_in(txn: &mut crate::store::Txn<'_>, owner: &str) -> Result<(), StoreError> {
        for (key, bytes) in txn.scan_prefix(&Key::webhook_endpoints_of(owner))? {
            let endpoint: Endpoint = decode(&bytes, "webhook endpoint")?;
            endpoint_remove_in(txn, &Key::raw(key), &endpoint.endpoint_id)?;
        }
        Ok(())
    }

    /// Checks an endpoint URL against the rule: `https` (or `http` if the
    /// operator allows it), no credentials, a host, at most
    /// [`URL_BYTES_MAX`] bytes, and not an address that is not public
    /// (unless allowed). Names are checked again at each delivery.
    fn url_check(&self, url: &str) -> Result<String, WebhookError> {
        let invalid = |why: &str| WebhookError::Invalid(format!("`url` {why}"));
        if url.len() > URL_BYTES_MAX {
            return Err(invalid(&format!("must be at most {URL_BYTES_MAX} bytes")));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| invalid("must be an absolute URL"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.settings.insecure_allow_http => {}
            _ => return Err(invalid("must use https")),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("must not carry credentials"));
        }
        if parsed.fragment().is_some() {
            return Err(invalid("must not have a fragment"));
        }
        let host = parsed.host_str().filter(|host| !host.is_empty()).ok_or_else(|| invalid("must name a host"))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
        if let Some(address) = literal
            && !self.settings.insecure_allow_private
            && !address_is_public(address)
        {
            return Err(invalid("must not point at a loopback, private or link-local address"));
        }
        Ok(parsed.to_string())
    }

    /// Registers an endpoint for `owner`; returns it and its secret,
    /// shown this once.
    pub async fn endpoint_create(
        &self,
        owner: &str,
        url: &str,
        description: Option<String>,
    ) -> Result<(Endpoint, Zeroizing<String>), WebhookError> {
        let url = self.url_check(url)?;
        if description.as_ref().is_some_and(|d| d.len() > DESCRIPTION_BYTES_MAX || d.chars().any(char::is_control)) {
            return Err(WebhookError::Invalid(format!(
                "`description` must be at most {DESCRIPTION_BYTES_MAX} bytes without control characters"
            )));
        }
        let endpoint_id = format!("ep_{}", self.core.random_id()?);
        let key: [u8; signature::SECRET_BYTES] = crate::crypto::random_bytes(self.core.keys().rng())?;
        let sealed = self.core.keys().secret_seal(&secret_label(&endpoint_id), &key)?;
        let endpoint = Endpoint {
            endpoint_id: endpoint_id.clone(),
            url,
            description,
            status: EndpointStatus::Enabled,
            failures_in_a_row: 0,
            created_at: self.core.clock().rfc3339(),
            disabled_reason: None,
            previous_secret_until: None,
        };
        let stored = endpoint.clone();
        let owner_key = owner.to_owned();
        self.core
            .store()
            .commit_durable(move |txn| {
                if txn.scan_prefix(&Key::webhook_endpoints_of(&owner_key))?.len() >= ENDPOINTS_PER_BUSINESS_MAX {
                    return Err(WebhookError::TooMany);
                }
                txn.put(Key::webhook_endpoint(&owner_key, &stored.endpoint_id), encode(&stored, "webhook endpoint")?);
                txn.put(Key::webhook_secret(&stored.endpoint_id, false), sealed);
                Ok(())
            })
            .await?;
        tracing::info!(owner = %owner, endpoint = %endpoint.endpoint_id, "webhook endpoint registered");
        Ok((endpoint, signature::secret_text(&key)))
    }

    /// The owner's endpoints.
    pub fn endpoints(&self, owner: &str) -> Result<Vec<Endpoint>, WebhookError> {
        let rows = self.core.store().scan_prefix(&Key::webhook_endpoints_of(owner), ENDPOINTS_PER_BUSINESS_MAX)?;
        Ok(rows.iter().map(|(_, bytes)| decode(bytes, "webhook endpoint")).collect::<Result<_, _>>()?)
    }

    /// One of the owner's endpoints.
    pub fn endpoint(&self, owner: &str, endpoint_id: &str) -> Result<Endpoint, WebhookError> {
        let bytes = self.core.store().get(&Key::webhook_endpoint(owner, endpoint_id))?.ok_or(WebhookError::NotFound)?;
        Ok(decode(&bytes, "webhook endpoint")?)
    }

    /// Changes one of the owner's endpoints in a transaction.
    async fn endpoint_change<T: Send + 'static>(
        &self,
        owner: &str,
        endpoint_id: &str,
        change: impl FnOnce(&mut crate::store::Txn<'_>, &mut Endpoint) -> Result<T, WebhookError> + Send + 'static,
    ) -> Result<(Endpoint, T), WebhookError> {
        let key = Key::webhook_endpoint(owner, endpoint_id);
        let (changed, _) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let mut endpoint: Endpoint =
                    decode(&txn.get(&key)?.ok_or(WebhookError::NotFound)?, "webhook endpoint")?;
                let out = change(txn, &mut endpoint)?;
                txn.put(key, encode(&endpoint, "webhook endpoint")?);
                Ok((endpoint, out))
            })
            .await?;
        Ok(changed)
    }

    /// Enables an endpoint again: its waiting messages are due at once,
    /// their attempts counted afresh.
    pub async fn endpoint_enable(&self, owner: &str, endpoint_id: &str) -> Result<Endpoint, WebhookError> {
        let id = endpoint_id.to_owned();
        let (endpoint, ()) = self
            .endpoint_change(owner, endpoint_id, move |txn, endpoint| {
                endpoint.status = EndpointStatus::Enabled;
                endpoint.failures_in_a_row = 0;
                endpoint.disabled_reason = None;
                for (row, bytes) in txn.scan_prefix(&Key::webhook_messages_of(&id))? {
                    let mut message: Message = decode(&bytes, "webhook message")?;
                    message.next_attempt_at = 0;
                    message.attempts = 0;
                    txn.put(Key::raw(row), encode(&message, "webhook message")?);
                }
                Ok(())
            })
            .await?;
        self.wake.notify_one();
        Ok(endpoint)
    }

    /// Replaces an endpoint's secret; returns it, shown this once. The old
    /// one signs beside it for [`PREVIOUS_SECRET_SECS`].
    pub async fn secret_rotate(
        &self,
        owner: &str,
        endpoint_id: &str,
    ) -> Result<(Endpoint, Zeroizing<String>), WebhookError> {
        let key: [u8; signature::SECRET_BYTES] = crate::crypto::random_bytes(self.core.keys().rng())?;
        let sealed = self.core.keys().secret_seal(&secret_label(endpoint_id), &key)?;
        let until = VaultClock::rfc3339_at(self.core.clock().now_secs() + PREVIOUS_SECRET_SECS);
        let id = endpoint_id.to_owned();
        let core = Arc::clone(&self.core);
        let (endpoint, ()) = self
            .endpoint_change(owner, endpoint_id, move |txn, endpoint| {
                let current =
                    txn.get(&Key::webhook_secret(&id, false))?.ok_or(StoreError::Corrupt { what: "webhook secret" })?;
                // Sealed again under the KEK in force now, so a KEK rotation
                // already past its scan of the secrets leaves it readable.
                let previous = core.keys().secret_reseal(&secret_label(&id), &current)?;
                txn.put(Key::webhook_secret(&id, true), previous);
                txn.put(Key::webhook_secret(&id, false), sealed);
                endpoint.previous_secret_until = Some(until);
                Ok(())
            })
            .await?;
        Ok((endpoint, signature::secret_text(&key)))
    }

    /// Removes an endpoint, its secrets, its waiting messages and its
    /// delivery log.
    pub async fn endpoint_delete(&self, owner: &str, endpoint_id: &str) -> Result<(), WebhookError> {
        let key = Key::webhook_endpoint(owner, endpoint_id);
        let id = endpoint_id.to_owned();
        self.core
            .store()
            .commit_durable(move |txn| {
                if txn.get(&key)?.is_none() {
                    return Err(WebhookError::NotFound);
                }
                endpoint_remove_in(txn, &key, &id)?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// One page of an endpoint's delivery log, oldest first, from `after`
    /// (a key a previous page returned).
    pub fn deliveries(
        &self,
        owner: &str,
        endpoint_id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<DeliveryPage, WebhookError> {
        self.endpoint(owner, endpoint_id)?;
        let prefix = Key::webhook_deliveries_of(endpoint_id);
        let (rows, more) = self.core.store().scan_page(&prefix, after, limit)?;
        let next = if more { rows.last().and_then(|(key, _)| prefix.suffix_of(key)).map(<[u8]>::to_vec) } else { None };
        let items = rows.iter().map(|(_, bytes)| decode(bytes, "webhook delivery")).collect::<Result<_, _>>()?;
        Ok(DeliveryPage { items, next })
    }

    /// Messages waiting for `owner`'s endpoints.
    pub fn waiting(&self, owner: &str) -> Result<usize, WebhookError> {
        let mut count = 0;
        for endpoint in self.endpoints(owner)? {
            count += self.core.store().scan_prefix(&Key::webhook_messages_of(&endpoint.endpoint_id), usize::MAX)?.len();
        }
        Ok(count)
    }

    /// Every sealed webhook secret, for a KEK rotation to reseal.
    pub fn sealed_secrets(store: &crate::store::Store) -> Result<Vec<(Key, String)>, StoreError> {
        let prefix = Key::webhook_secrets_all();
        let rows = store.scan_prefix(&prefix, usize::MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, _)| {
                let suffix = prefix.suffix_of(&key)?;
                let endpoint = std::str::from_utf8(suffix.get(..suffix.len().checked_sub(1)?)?).ok()?;
                Some((Key::raw(key.clone()), secret_label(endpoint)))
            })
            .collect())
    }
}
