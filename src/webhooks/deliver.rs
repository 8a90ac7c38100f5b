//! Delivering the outbox: each due message is sent to its endpoint, signed
//! per Standard Webhooks, and the attempt recorded in one transaction with
//! what follows from it (the message removed, rescheduled or given up; the
//! endpoint's failure count, and its disabling).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use zeroize::Zeroizing;

use super::{
    Delivery, DeliveryOutcome, Endpoint, EndpointStatus, Message, WebhookError, Webhooks, decode, encode, secret_label,
    signature,
};
use crate::core::VaultClock;
use crate::store::Key;

/// Messages read from one endpoint's queue per pass.
const ENDPOINT_MESSAGES_MAX: usize = 64;
/// Deliveries in flight at once.
const IN_FLIGHT_MAX: usize = 8;
/// The longest wait between retries.
const RETRY_WAIT_MAX_SECS: u64 = 6 * 3_600;
/// How often the worker looks for due messages when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a delivery log keeps an attempt.
pub const DELIVERY_LOG_KEPT_SECS: i64 = 30 * 86_400;
/// How often delivery logs are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3_600);
/// Attempts removed per transaction when pruning.
const PRUNE_BATCH: usize = 1_000;

/// Whether `address` is one the vault may send to: not loopback,
/// unspecified, private, shared (carrier-grade NAT), link-local,
/// documentation, benchmarking, reserved, broadcast or multicast; for IPv6
/// also not unique-local, and an IPv4-mapped address is judged as IPv4.
pub fn address_is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_is_public(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4
            // address, judged as such.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return address_is_public(embedded(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return address_is_public(embedded(segments[1], segments[2]));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-compatible (::/96) and everything else under ::/16.
                || first == 0
                // Unique local, link-local and the old site-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                // Discard-only (100::/64) and documentation (2001:db8::/32).
                || segments[..4] == [0x0100, 0, 0, 0]
                || (first == 0x2001 && segments[1] == 0x0db8))
        }
    }
}

/// What one attempt came to.
struct Attempted {
    status_code: Option<u16>,
    error: Option<String>,
}

impl Attempted {
    fn delivered(&self) -> bool {
        self.status_code.is_some_and(|status| (200..300).contains(&status))
    }
}

impl Webhooks {
    /// Runs the delivery worker until the task is dropped: a pass whenever
    /// a batch queued messages, and every second for retries that came due.
    pub async fn run(&self) {
        let mut pruned_at: Option<std::time::Instant> = None;
        loop {
            if let Err(error) = self.deliver_due().await {
                tracing::error!(%error, "webhook delivery pass failed");
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                pruned_at = Some(std::time::Instant::now());
                if let Err(error) = self.deliveries_prune().await {
                    tracing::error!(%error, "pruning webhook delivery logs failed");
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// One pass: sends the messages that are due to each enabled endpoint,
    /// up to 64 of each, and records each attempt.
    /// Returns how many were attempted.
    pub async fn deliver_due(&self) -> Result<usize, WebhookError> {
        let now = self.core.clock().now_secs();
        let store = self.core.store();
        // Queue by queue, visiting only endpoints that have messages (an
        // idle vault reads one empty range), so one whose messages pile up
        // (disabled, or failing) never holds back another's.
        let mut due = Vec::new();
        let outbox_end = Key::from_prefix_end(&Key::webhook_outbox_all());
        let mut from = Key::webhook_outbox_all();
        while let Some((_, head)) = store.scan_range(&from, &outbox_end, 1)?.pop() {
            let head: Message = decode(&head, "webhook message")?;
            let queue = Key::webhook_messages_of(&head.endpoint_id);
            from = Key::from_prefix_end(&queue);
            let endpoint = store.get(&Key::webhook_endpoint(&head.owner, &head.endpoint_id))?;
            let Some(endpoint) = endpoint.map(|bytes| decode::<Endpoint>(&bytes, "webhook endpoint")).transpose()?
            else {
                continue;
            };
            if endpoint.status != EndpointStatus::Enabled {
                continue;
            }
            // First in, first out: the oldest message waits for its retry,
            // and the ones after it wait behind it.
            for (_, bytes) in store.scan_prefix(&queue, ENDPOINT_MESSAGES_MAX)? {
                let message: Message = decode(&bytes, "webhook message")?;
                if message.next_attempt_at > now {
                    break;
                }
                due.push((endpoint.clone(), message));
            }
        }
        let attempted = due.len();
        // One task per endpoint, which sends its messages one after another
        // in audit order; endpoints side by side.
        let mut by_endpoint: Vec<(Endpoint, Vec<Message>)> = Vec::new();
        for (endpoint, message) in due {
            match by_endpoint.iter_mut().find(|(known, _)| known.endpoint_id == endpoint.endpoint_id) {
                Some((_, messages)) => messages.push(message),
                None => by_endpoint.push((endpoint, vec![message])),
            }
        }
        let mut in_flight = tokio::task::JoinSet::new();
        for (endpoint, messages) in by_endpoint {
            // An endpoint whose secret cannot be opened is skipped, not the
            // whole pass: the others are still served.
            let keys = match self.signing_keys(&endpoint, now) {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::error!(endpoint = %endpoint.endpoint_id, %error, "webhook secret unusable; not sent");
                    continue;
                }
            };
            let settings = std::sync::Arc::clone(&self.settings);
            in_flight.spawn(async move {
                let mut sent = Vec::with_capacity(messages.len());
                for message in messages {
                    let outcome = send(&settings, &endpoint, &message, &keys).await;
                    let failed = !outcome.delivered();
                    sent.push((message, outcome));
                    // The rest wait behind the one that failed.
                    if failed {
                        break;
                    }
                }
                sent
            });
            while in_flight.len() >= IN_FLIGHT_MAX {
                if let Some(Ok(sent)) = in_flight.join_next().await {
                    self.record_all(sent).await?;
                }
            }
        }
        while let Some(joined) = in_flight.join_next().await {
            if let Ok(sent) = joined {
                self.record_all(sent).await?;
            }
        }
        Ok(attempted)
    }

    /// The keys an endpoint's messages are signed with now: its secret, and
    /// the one a rotation replaced while that still signs.
    fn signing_keys(&self, endpoint: &Endpoint, now: i64) -> Result<Vec<Zeroizing<Vec<u8>>>, WebhookError> {
        let label = secret_label(&endpoint.endpoint_id);
        let store = self.core.store();
        let current = store
            .get(&Key::webhook_secret(&endpoint.endpoint_id, false))?
            .ok_or(crate::store::StoreError::Corrupt { what: "webhook secret" })?;
        let mut keys = vec![self.core.keys().secret_open(&label, &current)?];
        let previous_live = endpoint
            .previous_secret_until
            .as_deref()
            .and_then(|until| time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339).ok());
        if previous_live.is_some_and(|until| now < until.unix_timestamp())
            && let Some(previous) = store.get(&Key::webhook_secret(&endpoint.endpoint_id, true))?
        {
            // The old secret is a courtesy during a rotation: if it no
            // longer opens, the new one alone signs.
            match self.core.keys().secret_open(&label, &previous) {
                Ok(previous) => keys.push(previous),
                Err(error) => {
                    tracing::warn!(endpoint = %endpoint.endpoint_id, %error, "previous webhook secret unusable");
                }
            }
        }
        Ok(keys)
    }

    /// Removes the attempts older than [`DELIVERY_LOG_KEPT_SECS`] from every
    /// endpoint's delivery log, a bounded number per transaction so the
    /// commit thread is never held long. Returns how many it removed.
    pub async fn deliveries_prune(&self) -> Result<usize, WebhookError> {
        let before = self.core.clock().now_secs() - DELIVERY_LOG_KEPT_SECS;
        let store = self.core.store();
        let mut removed = 0;
        for (_, bytes) in store.scan_prefix(&Key::webhook_endpoints_all(), usize::MAX)? {
            let endpoint: Endpoint = decode(&bytes, "webhook endpoint")?;
            let prefix = Key::webhook_deliveries_of(&endpoint.endpoint_id);
            let end = Key::webhook_delivery(&endpoint.endpoint_id, before, 0, 0);
            loop {
                let old = store.scan_range(&prefix, &end, PRUNE_BATCH)?;
                if old.is_empty() {
                    break;
                }
                removed += old.len();
                let keys: Vec<Vec<u8>> = old.into_iter().map(|(key, _)| key).collect();
                self.core
                    .store()
                    .commit(move |txn| {
                        for key in keys {
                            txn.delete(&Key::raw(key));
                        }
                        Ok::<_, WebhookError>(())
                    })
                    .await?;
            }
        }
        Ok(removed)
    }

    /// Records the attempts one endpoint's task made.
    async fn record_all(&self, sent: Vec<(Message, Attempted)>) -> Result<(), WebhookError> {
        for (message, outcome) in sent {
            self.record(message, outcome).await?;
        }
        Ok(())
    }

    /// Records an attempt and what follows from it, in one transaction.
    async fn record(&self, message: Message, attempted: Attempted) -> Result<(), WebhookError> {
        let now = self.core.clock().now_secs();
        let settings = std::sync::Arc::clone(&self.settings);
        let delivered = attempted.delivered();
        let outcome = self
            .core
            .store()
            .commit_durable(move |txn| {
                let key = Key::webhook_message(&message.endpoint_id, message.audit_index);
                let endpoint_key = Key::webhook_endpoint(&message.owner, &message.endpoint_id);
                // Deleted with its endpoint while it was being sent.
                let (Some(_), Some(endpoint)) = (txn.get(&key)?, txn.get(&endpoint_key)?) else {
                    return Ok(None);
                };
                let mut endpoint: Endpoint = decode(&endpoint, "webhook endpoint")?;
                let mut message = message;
                message.attempts += 1;
                let mut delivery = Delivery {
                    message_id: message.message_id.clone(),
                    notice: message.notice,
                    audit_index: message.audit_index,
                    attempt: message.attempts,
                    time: VaultClock::rfc3339_at(now),
                    outcome: DeliveryOutcome::Delivered,
                    status_code: attempted.status_code,
                    error: attempted.error,
                    next_attempt_at: None,
                    endpoint_disabled: false,
                };
                if delivered {
                    endpoint.failures_in_a_row = 0;
                    txn.delete(&key);
                } else {
                    endpoint.failures_in_a_row += 1;
                    if message.attempts >= settings.attempts_max {
                        delivery.outcome = DeliveryOutcome::GivenUp;
                        txn.delete(&key);
                    } else {
                        let wait = settings
                            .retry_initial_secs
                            .saturating_mul(1 << (message.attempts - 1).min(20))
                            .min(RETRY_WAIT_MAX_SECS);
                        message.next_attempt_at = now.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX));
                        delivery.outcome = DeliveryOutcome::Failed;
                        delivery.next_attempt_at = Some(VaultClock::rfc3339_at(message.next_attempt_at));
                        txn.put(key, encode(&message, "webhook message")?);
                    }
                    if endpoint.failures_in_a_row >= settings.failures_to_disable
                        && endpoint.status == EndpointStatus::Enabled
                    {
                        endpoint.status = EndpointStatus::Disabled;
                        endpoint.disabled_reason = Some(format!(
                            "disabled at {} after {} failed attempts in a row",
                            VaultClock::rfc3339_at(now),
                            endpoint.failures_in_a_row
                        ));
                        delivery.endpoint_disabled = true;
                    }
                }
                txn.put(endpoint_key, encode(&endpoint, "webhook endpoint")?);
                let log_key = Key::webhook_delivery(&message.endpoint_id, now, message.audit_index, message.attempts);
                txn.put(log_key, encode(&delivery, "webhook delivery")?);
                Ok::<_, WebhookError>(Some(delivery.outcome))
            })
            .await?
            .0;
        if let Some(outcome) = outcome {
            self.deliveries.inc(&[match outcome {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::Failed => "failed",
                DeliveryOutcome::GivenUp => "given_up",
            }]);
        }
        Ok(())
    }
}

/// Sends `message` to `endpoint`, signed with `keys`. Never follows a
/// redirect or uses a proxy; connects only to an address the rule allows,
/// the one it checked.
async fn send(
    settings: &super::WebhookSettings,
    endpoint: &Endpoint,
    message: &Message,
    keys: &[Zeroizing<Vec<u8>>],
) -> Attempted {
    let failed = |error: String| Attempted { status_code: None, error: Some(error) };
    let Ok(url) = reqwest::Url::parse(&endpoint.url) else { return failed("the URL does not parse".to_owned()) };
    let allowed_scheme = url.scheme() == "https" || (url.scheme() == "http" && settings.insecure_allow_http);
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return failed("the URL names no host".to_owned());
    };
    if !allowed_scheme {
        return failed("refused: the URL does not use https".to_owned());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((bare.as_str(), port)).await {
        Ok(found) => found.collect(),
        Err(_) => return failed(format!("{host} does not resolve")),
    };
    if addresses.is_empty() {
        return failed(format!("{host} does not resolve"));
    }
    if !settings.insecure_allow_private && addresses.iter().any(|address| !address_is_public(address.ip())) {
        return failed(format!("refused: {host} resolves to an address that is not public"));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(settings.timeout_secs))
        .resolve_to_addrs(&bare, &addresses)
        .user_agent(concat!("consentvault/", env!("CARGO_PKG_VERSION")))
        .build();
    let Ok(client) = client else { return failed("no HTTP client".to_owned()) };
    let body = json!({"type": message.notice, "timestamp": message.time, "data": message.data}).to_string();
    let timestamp = crate::clock::now().unix_timestamp();
    let signature = signature::signature_header(keys, &message.message_id, timestamp, body.as_bytes());
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &message.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let error = (!(200..300).contains(&status)).then(|| format!("the endpoint answered {status}"));
            Attempted { status_code: Some(status), error }
        }
        Err(error) if error.is_timeout() => failed("timed out".to_owned()),
        Err(error) if error.is_connect() => failed("could not connect".to_owned()),
        Err(_) => failed("the request failed".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "::127.0.0.1",
            "::a00:1",
            "fec0::1",
            "100::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!address_is_public(private.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(address_is_public(public.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))), "{public}");
        }
    }
}
