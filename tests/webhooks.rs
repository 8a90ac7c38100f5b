//! Signed notices to businesses, as a business receives them: Standard
//! Webhooks messages for grant changes and for her corrections and
//! erasure, each naming its audit index, signed with the endpoint's secret
//! (checked here with an HMAC written from RFC 2104 over the `sha2` crate,
//! not the vault's ring); retried after failures, the endpoint disabled and
//! enabled again; nothing lost across a `kill -9`; and the SSRF rule.
//! `scripts/standard-webhooks` checks the same messages with the
//! `standardwebhooks` package from PyPI.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::app::{Business, Customer, TestApp};
use common::tlog;
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    /// The status the receiver answered.
    answered: u16,
}

/// A business's webhook receiver on 127.0.0.1: records every request and
/// answers with the status set (200 at first).
#[derive(Clone)]
struct Receiver {
    address: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Self {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn start_on(listener: tokio::net::TcpListener) -> Self {
        let address = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (sink, answer) = (Arc::clone(&got), Arc::clone(&status));
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (sink, answer) = (Arc::clone(&sink), Arc::clone(&answer));
                async move {
                    let header = |name: &str| {
                        headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
                    };
                    let answered = answer.load(Ordering::SeqCst);
                    sink.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                        answered,
                    });
                    axum::http::StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, got, status }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) until `done` holds for what was received.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(Instant::now() < deadline, "waited 30 s for {what}; got {received:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether one of the `v1,` signatures in `received` is the one `secret`
/// (`whsec_…`) makes, per Standard Webhooks.
fn signed_with(received: &Received, secret: &str) -> bool {
    common::standard_webhook_signed(&received.id, &received.timestamp, &received.signature, &received.body, secret)
}

/// Connects `customer` to `business` and grants it her e-mail for
/// marketing for `days`; returns the grant.
async fn connect_and_grant(customer: &Customer, business: &Business, days: u32) -> Value {
    let (status, relationship) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    let body =
        json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": days});
    let (status, grant) = customer.grant(&body).await;
    assert_eq!(status, 201, "{grant}");
    grant
}

/// The endpoint's delivery log once it holds `count` attempts (waiting up
/// to 30 s).
async fn deliveries_recorded(business: &Business, endpoint_id: &str, count: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, log) = business.caller().get(&format!("/v1/webhooks/{endpoint_id}/deliveries")).await;
        if log["items"].as_array().is_some_and(|items| items.len() >= count) {
            return log;
        }
        assert!(Instant::now() < deadline, "{count} deliveries were never recorded: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(received: &Received) -> Value {
    serde_json::from_slice(&received.body).unwrap()
}

/// A configuration file for receivers on loopback over plain HTTP, with
/// quick retries.
fn config(dir: &std::path::Path, failures_to_disable: u32) -> std::path::PathBuf {
    let path = dir.join("vault.toml");
    let text = format!(
        "[webhooks]\ninsecure_allow_http = true\ninsecure_allow_private = true\nretry_initial_secs = 1\n\
         attempts_max = 100\nfailures_to_disable = {failures_to_disable}\ntimeout_secs = 5\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_business_gets_signed_notices_of_grants_and_her_corrections_each_with_a_provable_audit_index() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_config(Some(config(dir.path(), 100))).await;
    let receiver = Receiver::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let (status, created) =
        business.caller().post("/v1/webhooks", &json!({"url": receiver.url(), "description": "orders"})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let endpoint_id = created["endpoint"]["endpoint_id"].as_str().unwrap().to_owned();
    let (_, listed) = business.caller().get("/v1/webhooks").await;
    assert!(!listed.to_string().contains(&secret), "the secret is shown once: {listed}");

    let customer = app.customer().await;
    let canary = "webhook-canary-5d1e@example.org";
    assert_eq!(customer.data_put(&json!({"email": canary})).await.0, 200);
    let (_, relationship) = customer.connect(&business.id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let (status, grant) = customer
        .grant(
            &json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90}),
        )
        .await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    // She corrects her e-mail: the business must correct its copies (Art. 19).
    assert_eq!(customer.field_put("email", &json!("corrected-5d1e@example.org")).await.0, 200);
    assert_eq!(customer.revoke(&grant_id).await.0, 200);
    let relationship_id = relationship["relationship_id"].as_str().unwrap();
    assert!([200, 204].contains(&customer.disconnect(relationship_id).await.0));

    let types = ["grant.created", "data.corrected", "grant.revoked", "relationship.disconnected"];
    let received = receiver.until("four notices", |got| got.len() >= types.len()).await;
    let auditor = app.auditor().await;
    let (checkpoint_status, checkpoint) = auditor.checkpoint().await;
    assert_eq!(checkpoint_status, 200);
    let (_, key) = auditor.public_key().await;
    for (received, expected) in received.iter().zip(types) {
        assert!(signed_with(received, &secret), "{received:?} is not signed with the endpoint's secret");
        let body = body(received);
        assert_eq!(body["type"], expected, "{body}");
        assert_eq!(body["data"]["pairwise_id"], pairwise.as_str(), "{body}");
        let index = body["data"]["audit_index"].as_u64().unwrap();
        assert!(received.id.starts_with(&format!("msg_{index}_")), "{}", received.id);
        assert!((received.timestamp.parse::<i64>().unwrap() - consentvault::clock::now().unix_timestamp()).abs() < 120);
        // The index names the event, as an auditor reads it.
        let (_, entry) = auditor.entry(index).await;
        let event: Value = serde_json::from_slice(&entry).unwrap();
        let kind = match expected {
            "data.corrected" => "data.written",
            "relationship.disconnected" => "relationship.ended",
            other => other,
        };
        assert_eq!(event["kind"], kind);
        // No personal value, and not her vault id.
        let text = String::from_utf8_lossy(&received.body);
        assert!(!text.contains("5d1e") && !text.contains(&customer.id), "{text}");
        // The business proves the event is in the signed log.
        let (status, proof) = business.caller().get(&format!("/v1/events/{index}/proof")).await;
        assert_eq!(status, 200, "{proof}");
        assert!(!proof.to_string().contains(&customer.id), "{proof}");
        assert_eq!(proof["event"]["kind"], kind);
        let (_, size, root) = tlog::open_checkpoint(proof["checkpoint"].as_str().unwrap(), key.trim());
        let leaf: tlog::Hash = STANDARD.decode(proof["leaf_hash"].as_str().unwrap()).unwrap().try_into().unwrap();
        assert_eq!(leaf, tlog::leaf(&entry), "the leaf hash is the entry's");
        let path = tlog::hashes(&proof);
        assert!(tlog::verify_inclusion(index, size, leaf, &path, &root), "{proof}");
    }
    assert!(checkpoint.contains('\n'));
    let created_body = body(&received[0]);
    assert_eq!(created_body["data"]["grant_id"], grant_id.as_str());
    assert_eq!(created_body["data"]["fields"], json!(["email"]));
    assert_eq!(body(&received[1])["data"]["fields"], json!(["email"]), "the field names, never the value");

    // Another business cannot prove, or learn of, these events.
    let other = app.business("Other Shop", &["marketing"]).await;
    let index = body(&received[0])["data"]["audit_index"].as_u64().unwrap();
    assert_eq!(other.caller().get(&format!("/v1/events/{index}/proof")).await.0, 404);
    assert_eq!(other.caller().get(&format!("/v1/webhooks/{endpoint_id}")).await.0, 404);
    let corrected = body(&received[1])["data"]["audit_index"].as_u64().unwrap();
    assert_eq!(other.caller().get(&format!("/v1/events/{corrected}/proof")).await.0, 404, "nor her correction");

    // The delivery log (the receiver has a message before the vault
    // records its delivery).
    let log = deliveries_recorded(&business, &endpoint_id, types.len()).await;
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), types.len(), "{log}");
    assert!(items.iter().all(|item| item["outcome"] == "delivered" && item["status_code"] == 200), "{log}");
    // The pull feed names the same audit indexes.
    let (_, feed) = business.grant_changes(None).await;
    let created_index = feed["items"][0]["audit_index"].clone();
    assert_eq!(created_index, body(&received[0])["data"]["audit_index"]);

    // A KEK rotation reseals the endpoint's secret: messages after it are
    // signed with the same secret.
    let admin = app.admin();
    let (status, started) = admin.keys_rotate().await;
    assert_eq!(status, 202, "{started}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, keys) = admin.keys().await;
        if keys["rotation"]["state"] == "finished" && keys["rotation_running"] == false {
            assert_eq!(keys["destroyed_versions"], json!([1]), "{keys}");
            break;
        }
        assert!(Instant::now() < deadline, "the rotation did not finish: {keys}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let customer = app.customer().await;
    connect_and_grant(&customer, &business, 30).await;
    let after = receiver.until("a message after the rotation", |got| got.len() > types.len()).await;
    assert!(signed_with(after.last().unwrap(), &secret), "the secret survived the KEK rotation");

    // The delivery log keeps 30 days of attempts.
    deliveries_recorded(&business, &endpoint_id, after.len()).await;
    let webhooks = app.vault().webhooks();
    assert_eq!(webhooks.deliveries_prune().await.unwrap(), 0, "nothing is old yet");
    let now = consentvault::clock::now().unix_timestamp();
    app.vault().insecure_pin_clock_secs(Some(now + consentvault::webhooks::DELIVERY_LOG_KEPT_SECS + 60));
    assert_eq!(webhooks.deliveries_prune().await.unwrap(), after.len());
    let (_, log) = business.caller().get(&format!("/v1/webhooks/{endpoint_id}/deliveries")).await;
    assert_eq!(log["items"], json!([]), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_is_retried_then_disabled_and_gets_every_message_once_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_config(Some(config(dir.path(), 4))).await;
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let (_, created) = business.caller().post("/v1/webhooks", &json!({"url": receiver.url()})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let endpoint_id = created["endpoint"]["endpoint_id"].as_str().unwrap().to_owned();
    let customer = app.customer().await;
    let grant = connect_and_grant(&customer, &business, 90).await;

    // Retried with the same id, then the endpoint is disabled after four
    // failures in a row.
    let failed = receiver.until("four failed attempts", |got| got.len() >= 4).await;
    assert!(failed.iter().all(|attempt| attempt.id == failed[0].id && attempt.answered == 500));
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        let (_, endpoint) = business.caller().get(&format!("/v1/webhooks/{endpoint_id}")).await;
        if endpoint["status"] == "disabled" || Instant::now() > deadline {
            break endpoint;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(endpoint["status"], "disabled", "{endpoint}");
    assert!(endpoint["disabled_reason"].as_str().unwrap().contains("4 failed attempts"));
    let (_, log) = business.caller().get(&format!("/v1/webhooks/{endpoint_id}/deliveries")).await;
    let attempts = log["items"].as_array().unwrap();
    assert!(attempts.iter().all(|item| item["outcome"] == "failed" && item["status_code"] == 500), "{log}");
    assert_eq!(attempts.last().unwrap()["endpoint_disabled"], true, "{log}");
    assert!(attempts[0]["next_attempt_at"].is_string());

    // While it is disabled, more happens: she revokes. Nothing is sent.
    let grant_id = grant["grant_id"].as_str().unwrap();
    assert_eq!(customer.revoke(grant_id).await.0, 200);
    let sent_while_disabled = receiver.received().len();
    assert_eq!(app.vault().webhooks().waiting(&business.id).unwrap(), 2, "both wait");

    // The business mends its receiver and enables the endpoint: both
    // messages arrive, signed.
    receiver.status.store(200, Ordering::SeqCst);
    let (status, enabled) = business.caller().post(&format!("/v1/webhooks/{endpoint_id}/enable"), &json!({})).await;
    assert_eq!((status, enabled["status"].as_str()), (200, Some("enabled")), "{enabled}");
    let got = receiver
        .until("both messages delivered", |got| got.iter().filter(|attempt| attempt.answered == 200).count() >= 2)
        .await;
    assert_eq!(got.len(), sent_while_disabled + 2);
    // Sent side by side: in audit order by their index.
    let mut delivered: Vec<&Received> = got.iter().filter(|attempt| attempt.answered == 200).collect();
    delivered.sort_by_key(|attempt| body(attempt)["data"]["audit_index"].as_u64());
    assert_eq!(delivered[0].id, failed[0].id, "the message that failed, under its own id");
    assert_eq!(body(delivered[0])["type"], "grant.created");
    assert_eq!(body(delivered[1])["type"], "grant.revoked");
    assert!(delivered.iter().all(|attempt| signed_with(attempt, &secret)));
    // Removed from the outbox once recorded (just after the receiver has it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.vault().webhooks().waiting(&business.id).unwrap() > 0 {
        assert!(Instant::now() < deadline, "delivered messages stayed in the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A rotated secret: the new one signs, and the old one beside it for a day.
    let (status, rotated) = business.caller().post(&format!("/v1/webhooks/{endpoint_id}/secret"), &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    customer.data_put(&json!({"email": "x@example.org"})).await;
    let got = receiver.until("the correction", |got| got.len() > sent_while_disabled + 2).await;
    let last = got.last().unwrap();
    assert!(signed_with(last, &new_secret) && signed_with(last, &secret), "{last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_queued_before_a_kill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = config(dir.path(), 100);
    let config_arg = config.to_str().unwrap();
    // The receiver's port is held but not answering while the vault runs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let server = common::ServerProcess::start(&data_dir, &["--config", config_arg], &[]).unwrap();
    let base = server.base_url.clone();
    let client = reqwest::Client::new();
    let admin = common::roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = common::roles::client_principal(&client, &base, &admin, "businesses").await;
    let url = format!("http://{address}/hooks");
    let (status, created) =
        common::roles::post(&client, format!("{base}/v1/webhooks"), Some(&business), json!({"url": url})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let mut grants = Vec::new();
    for _ in 0..3 {
        let (_, customer) = common::roles::customer(&client, &base).await;
        common::roles::connect(&client, &base, &customer, &business_id).await;
        let body =
            json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
        let (status, grant) = common::roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
        assert_eq!(status, 201, "{grant}");
        grants.push(grant["grant_id"].as_str().unwrap().to_owned());
    }
    // Acknowledged, and not delivered (nothing listens): then kill -9.
    server.kill();
    let receiver = Receiver::start_on(tokio::net::TcpListener::bind(address).await.unwrap()).await;
    let server = common::ServerProcess::start(&data_dir, &["--config", config_arg], &[]).unwrap();
    let received = receiver.until("three grant notices", |got| got.len() >= 3).await;
    let mut delivered: Vec<String> =
        received.iter().map(|got| body(got)["data"]["grant_id"].as_str().unwrap().to_owned()).collect();
    delivered.sort();
    grants.sort();
    assert_eq!(delivered, grants, "every grant's notice, once each");
    assert!(received.iter().all(|got| signed_with(got, &secret)));
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ssrf_rule_refuses_endpoints_that_are_not_public() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    for url in [
        "http://shop.example/hooks",
        "https://127.0.0.1/hooks",
        "https://10.0.0.8/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hooks",
        "https://[fd00::1]/hooks",
        "https://user:pass@shop.example/hooks",
        "file:///etc/passwd",
        "not a url",
    ] {
        let (status, problem) = business.caller().post("/v1/webhooks", &json!({"url": url})).await;
        assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_webhook")), "{url}: {problem}");
    }
    assert_eq!(business.caller().get("/v1/webhooks").await.1["items"], json!([]));
    // A name is checked where it leads, at every delivery: `localhost` is
    // refused then, and the delivery log says why.
    let receiver = Receiver::start().await;
    let url = format!("https://localhost:{}/hooks", receiver.address.port());
    let (status, created) = business.caller().post("/v1/webhooks", &json!({"url": url})).await;
    assert_eq!(status, 201, "{created}");
    let endpoint_id = created["endpoint"]["endpoint_id"].as_str().unwrap();
    let customer = app.customer().await;
    connect_and_grant(&customer, &business, 30).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let (_, log) = business.caller().get(&format!("/v1/webhooks/{endpoint_id}/deliveries")).await;
        if !log["items"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log["items"][0]["outcome"], "failed", "{log}");
    assert!(log["items"][0]["error"].as_str().unwrap().contains("not public"), "{log}");
    assert!(receiver.received().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_and_an_erasure_are_announced_and_the_erasure_names_no_value() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_with_config(Some(config(dir.path(), 100))).await;
    let receiver = Receiver::start().await;
    let business = app.business("Acme Pizza", &["marketing"]).await;
    let (_, created) = business.caller().post("/v1/webhooks", &json!({"url": receiver.url()})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let customer = app.customer().await;
    assert_eq!(customer.data_put(&json!({"email": "erasure-canary-77aa@example.org"})).await.0, 200);
    let (_, relationship) = customer.connect(&business.id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let grant = |days: u32| json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": days});
    let (_, short) = customer.grant(&grant(30)).await;
    let (_, long) = customer.grant(&grant(90)).await;
    // Past the short grant's window, the sweep records its expiry.
    let expires_at = time::OffsetDateTime::parse(
        short["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    app.vault().insecure_pin_clock_secs(Some(expires_at));
    // She erases herself before the sweep records the expiry (the clock
    // still where it was moved, as the vault's clock never goes back): the
    // erasure records it, the live grant is revoked, and the business is
    // told to erase its copies.
    let (status, _) = customer.erase().await;
    assert_eq!(status, 200);
    app.vault().insecure_pin_clock_secs(None);
    let received = receiver.until("five messages", |got| got.len() >= 5).await;
    let mut bodies: Vec<Value> = received.iter().map(body).collect();
    bodies.sort_by_key(|body| body["data"]["audit_index"].as_u64());
    let types: Vec<&str> = bodies.iter().map(|body| body["type"].as_str().unwrap()).collect();
    assert_eq!(types[..2], ["grant.created", "grant.created"]);
    assert_eq!(types[4], "customer.erased");
    let of = |kind: &str| bodies.iter().find(|body| body["type"] == kind).unwrap();
    assert_eq!(of("grant.expired")["data"]["grant_id"], short["grant_id"]);
    assert_eq!(of("grant.revoked")["data"]["grant_id"], long["grant_id"]);
    assert_eq!(of("grant.revoked")["data"]["cause"], "erasure");
    assert_eq!(bodies[4]["data"]["cause"], "erasure");
    assert!(bodies.iter().all(|body| body["data"]["pairwise_id"] == pairwise.as_str()));
    for received in &received {
        assert!(signed_with(received, &secret));
        let text = String::from_utf8_lossy(&received.body);
        assert!(!text.contains("77aa") && !text.contains(&customer.id), "{text}");
    }
}
