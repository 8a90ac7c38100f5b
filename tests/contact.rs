//! Contact on her terms, as a customer and a business see it over HTTP: a
//! business reaches a connected customer only through the vault, within the
//! kinds, cap and quiet hours she set; every decision is logged with its
//! exact reason while the business learns only delivered or a coarse
//! refusal; it never receives an address; her replies reach it by pairwise
//! id; the vault's notices reach her inbox and her own webhook endpoint; and
//! her messages go with her when she is erased.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::app::{Auditor, Business, Customer, TestApp};
use serde_json::{Value, json};

/// The e-mail and phone she stores: no answer to a business may carry them.
const EMAIL: &str = "contact-canary-81c4@example.org";
const PHONE: &str = "+44 20 7946 0811";

/// A customer with her address stored, connected to `business`; her
/// relationship.
async fn connected(app: &TestApp, business: &Business) -> (Customer, Value) {
    let customer = app.customer().await;
    let (status, stored) = customer.data_put(&json!({"email": EMAIL, "phone": PHONE})).await;
    assert_eq!(status, 200, "{stored}");
    let (status, relationship) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    (customer, relationship)
}

fn pairwise_of(relationship: &Value) -> String {
    relationship["pairwise_id"].as_str().unwrap().to_owned()
}

fn relationship_id(relationship: &Value) -> String {
    relationship["relationship_id"].as_str().unwrap().to_owned()
}

/// Her inbox's items.
async fn inbox(customer: &Customer) -> Vec<Value> {
    let (status, inbox) = customer.inbox().await;
    assert_eq!(status, 200, "{inbox}");
    inbox["items"].as_array().unwrap().clone()
}

/// The audit entry at `index`, as the auditor reads it.
async fn entry(auditor: &Auditor, index: u64) -> Value {
    let (status, bytes) = auditor.entry(index).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends a message and expects a refusal: the coarse reason the business is
/// told, and the logged event with the exact one.
async fn refused(business: &Business, auditor: &Auditor, pairwise: &str, kind: &str, told: &str, logged: &str) {
    let (status, problem) = business.message(pairwise, kind, "Hello", "A message.").await;
    assert_eq!(status, 403, "{kind} should be refused ({logged}): {problem}");
    assert_eq!(problem["code"], "message_refused", "{problem}");
    assert_eq!(problem["reason"], told, "{problem}");
    let event = entry(auditor, problem["audit_index"].as_u64().unwrap()).await;
    assert_eq!(event["kind"], "message.refused", "{event}");
    assert_eq!(event["related"]["cause"], logged, "{event}");
    assert_eq!(event["related"]["message_kind"], kind, "{event}");
    assert_eq!(event["business"], business.id.as_str(), "{event}");
    // The proof a business may fetch of its own event tells it no more.
    let (status, proof) = business.caller().get(&format!("/v1/events/{}/proof", problem["audit_index"])).await;
    assert_eq!(status, 200, "{proof}");
    assert_eq!(proof["event"]["related"]["cause"], told, "{proof}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_message_reaches_her_inbox_and_the_log_names_it_without_its_text() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let auditor = app.auditor().await;
    let (customer, relationship) = connected(&app, &business).await;
    let title = "Your order 1207 is on its way";
    let body = "The courier left at 18:40.\nTrack it on our site.";
    let (status, sent) = business.message(&pairwise_of(&relationship), "service", title, body).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["status"], "delivered");
    let message_id = sent["message_id"].as_str().unwrap();

    let items = inbox(&customer).await;
    let message = items.iter().find(|item| item["message_id"] == message_id).expect("the message is in her inbox");
    assert_eq!(message["type"], "message");
    assert_eq!(message["kind"], "service");
    assert_eq!(message["business_name"], "Acme Pizza");
    assert_eq!(message["text"]["title"], title);
    assert_eq!(message["text"]["body"], body);

    // Delivered, with its kind and purpose, never its text.
    let event = entry(&auditor, sent["audit_index"].as_u64().unwrap()).await;
    assert_eq!(event["kind"], "message.delivered");
    assert_eq!(event["related"]["message_id"], message_id);
    assert_eq!(event["purpose"], "order-fulfilment");
    assert_eq!(event["subject"], customer.id.as_str());
    for entry in auditor.entries_all().await {
        let text = entry.to_string();
        assert!(!text.contains("courier") && !text.contains("1207"), "a message text reached the log: {text}");
    }
    // A title is optional.
    let (status, untitled) = business
        .caller()
        .post(
            &format!("/v1/subjects/{}/messages", pairwise_of(&relationship)),
            &json!({"kind": "service", "body": "Ready."}),
        )
        .await;
    assert_eq!(status, 201, "{untitled}");
    let items = inbox(&customer).await;
    let untitled = items.iter().find(|item| item["message_id"] == untitled["message_id"]).unwrap();
    assert_eq!(untitled["text"], json!({"body": "Ready."}));
    // Opening her inbox is a logged read naming the message.
    let (_, page) = customer.inbox().await;
    let read = entry(&auditor, page["audit_index"].as_u64().unwrap()).await;
    assert_eq!(read["kind"], "message.read");
    assert!(read["messages"].as_array().unwrap().iter().any(|m| m == message_id), "{read}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_she_does_not_take_are_refused_logged_and_kept_out_of_her_inbox() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing", "customer-care"]).await;
    let auditor = app.auditor().await;
    let (customer, relationship) = connected(&app, &business).await;
    let pairwise = pairwise_of(&relationship);
    let id = relationship_id(&relationship);

    // By default she takes service messages only.
    refused(&business, &auditor, &pairwise, "offers", "not_accepted", "kind_not_allowed").await;
    refused(&business, &auditor, &pairwise, "feedback", "not_accepted", "kind_not_allowed").await;

    // She takes offers, but objects to marketing: the objection wins.
    let preferences =
        json!({"kinds": ["service", "offers"], "cap": {"messages": 2, "period": "day"}, "channel": "inbox"});
    let (status, set) = customer.contact_put(&id, &preferences).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(customer.objections_put(&["marketing"]).await.0, 200);
    refused(&business, &auditor, &pairwise, "offers", "not_accepted", "objection").await;
    assert_eq!(customer.objections_put(&[]).await.0, 200);

    // Two a day: the third is over the cap.
    for n in 0..2 {
        let (status, sent) = business.message(&pairwise, "offers", "Two for one", &format!("Offer {n}")).await;
        assert_eq!(status, 201, "{sent}");
    }
    refused(&business, &auditor, &pairwise, "service", "cap_reached", "cap_reached").await;
    // Deleting a message she got does not reset the cap.
    let offer = inbox(&customer).await.into_iter().find(|item| item["kind"] == "offers").unwrap();
    let (status, _) =
        customer.caller().delete(&format!("/v1/me/inbox/{}", offer["message_id"].as_str().unwrap()), None).await;
    assert_eq!(status, 204);
    refused(&business, &auditor, &pairwise, "service", "cap_reached", "cap_reached").await;

    // Quiet hours around now, on her wall clock in UTC.
    let now = app.vault().core().clock().now_secs();
    let at = |secs: i64| {
        let minutes = secs.rem_euclid(86_400) / 60;
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    };
    let quiet = json!({"kinds": ["service"], "cap": {"messages": 50, "period": "day"}, "channel": "inbox",
                       "quiet_hours": {"from": at(now - 3_600), "to": at(now + 3_600), "time_zone": "UTC"}});
    assert_eq!(customer.contact_put(&id, &quiet).await.0, 200);
    refused(&business, &auditor, &pairwise, "service", "not_now", "quiet_hours").await;
    let open = json!({"kinds": ["service"], "cap": {"messages": 50, "period": "day"}, "channel": "inbox"});
    assert_eq!(customer.contact_put(&id, &open).await.0, 200);

    // She blocks the business: nothing reaches her.
    let (status, blocked) = customer
        .caller()
        .json(reqwest::Method::PATCH, &format!("/v1/me/relationships/{id}"), Some(&json!({"requests_blocked": true})))
        .await;
    assert_eq!(status, 200, "{blocked}");
    refused(&business, &auditor, &pairwise, "service", "not_accepted", "blocked").await;

    // Disconnected, and a pairwise id nobody has: the same answer.
    let (status, _) = customer.disconnect(&id).await;
    assert!([200, 204].contains(&status));
    refused(&business, &auditor, &pairwise, "service", "not_connected", "not_connected").await;
    refused(&business, &auditor, &"0".repeat(32), "service", "not_connected", "not_connected").await;

    // Only the two offers reached her (and she deleted one).
    let messages: Vec<Value> = inbox(&customer).await.into_iter().filter(|item| item["type"] == "message").collect();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(messages.iter().all(|m| m["kind"] == "offers"));

    // Operators count the decisions, never who or what.
    let (status, metrics) = app.anonymous().caller().text(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let count = |labels: &str| -> f64 {
        let series = format!("consentvault_messages_total{{{labels}}} ");
        metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0.0, |value| value.parse().unwrap())
    };
    // `/metrics` is public: it counts what businesses are told, never her
    // exact reasons.
    assert_eq!(count("outcome=\"delivered\",reason=\"none\""), 2.0, "{metrics}");
    assert_eq!(count("outcome=\"refused\",reason=\"not_accepted\""), 4.0, "{metrics}");
    assert_eq!(count("outcome=\"refused\",reason=\"not_now\""), 1.0, "{metrics}");
    assert_eq!(count("outcome=\"refused\",reason=\"cap_reached\""), 2.0, "{metrics}");
    assert_eq!(count("outcome=\"refused\",reason=\"not_connected\""), 2.0, "{metrics}");
    for exact in ["kind_not_allowed", "objection", "blocked", "quiet_hours"] {
        assert!(!metrics.contains(&format!("reason=\"{exact}\"")), "{exact} is in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_and_preferences_get_a_problem_and_change_nothing() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment"]).await;
    let auditor = app.auditor().await;
    let (customer, relationship) = connected(&app, &business).await;
    let pairwise = pairwise_of(&relationship);
    let size = auditor.entries_all().await.len();
    for (kind, title, body, why) in [
        ("no-such-kind", "Hi", "Text", "an unknown kind"),
        ("service", "", "Text", "an empty title"),
        ("service", &"t".repeat(121), "Text", "a title too long"),
        ("service", "Hi", &"b".repeat(4_001), "a body too long"),
        ("service", "Hi", "bell\u{7}", "a control character"),
    ] {
        let (status, problem) = business.message(&pairwise, kind, title, body).await;
        assert_eq!(status, 400, "{why}: {problem}");
        assert_eq!(problem["code"], "invalid_body", "{why}: {problem}");
    }
    let (status, problem) = business
        .caller()
        .post(
            &format!("/v1/subjects/{pairwise}/messages"),
            &json!({"kind": "service", "title": "Hi", "body": "x", "to": "ada@example.org"}),
        )
        .await;
    assert_eq!(status, 400, "an unknown member: {problem}");
    // Offers serve marketing, which this business is not registered for.
    let (status, problem) = business.message(&pairwise, "offers", "Sale", "Half price.").await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("policy_violation")), "{problem}");
    let id = relationship_id(&relationship);
    for (preferences, why) in [
        (json!({"kinds": ["spam"], "cap": {"messages": 1, "period": "day"}, "channel": "inbox"}), "an unknown kind"),
        (json!({"kinds": [], "cap": {"messages": 101, "period": "day"}, "channel": "inbox"}), "a cap over 100"),
        (json!({"kinds": [], "cap": {"messages": 1, "period": "year"}, "channel": "inbox"}), "an unknown period"),
        (json!({"kinds": [], "cap": {"messages": 1, "period": "day"}, "channel": "email"}), "an unknown channel"),
        (
            json!({"kinds": [], "cap": {"messages": 1, "period": "day"}, "channel": "inbox",
                   "quiet_hours": {"from": "22:00", "to": "07:00", "time_zone": "Mars/Olympus"}}),
            "an unknown time zone",
        ),
        (
            json!({"kinds": [], "cap": {"messages": 1, "period": "day"}, "channel": "inbox",
                   "quiet_hours": {"from": "22:00", "to": "22:00", "time_zone": "UTC"}}),
            "empty quiet hours",
        ),
        (
            json!({"kinds": [], "cap": {"messages": 1, "period": "day"}, "channel": "inbox",
                   "quiet_hours": {"from": "25:00", "to": "07:00", "time_zone": "UTC"}}),
            "a time that is not one",
        ),
    ] {
        let (status, problem) = customer.contact_put(&id, &preferences).await;
        assert_eq!(status, 400, "{why}: {problem}");
    }
    assert_eq!(auditor.entries_all().await.len(), size, "a refused request logged something");
    let (status, current) = customer.caller().get(&format!("/v1/me/relationships/{id}/contact")).await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["preferences"]["kinds"], json!(["service"]), "the defaults stand: {current}");
    assert_eq!(current["preferences"]["cap"], json!({"messages": 5, "period": "week"}));
    assert_eq!(current["business_name"], "Acme Pizza");
    let (status, kinds) = app.anonymous().caller().get("/v1/message-kinds").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = kinds["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["feedback", "offers", "service"]);
}

/// Every JSON answer the business got, to search for her address.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, (status, answer): (u16, Value)) -> Value {
        self.0.push(answer.to_string());
        assert!(status < 500, "{answer}");
        answer
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn her_reply_and_feedback_reach_the_business_by_pairwise_id_and_no_answer_carries_her_address() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let (customer, relationship) = connected(&app, &business).await;
    let pairwise = pairwise_of(&relationship);
    let mut seen = Seen::default();
    seen.keep(business.relationships().await);
    let sent = seen.keep(business.message(&pairwise, "service", "Your order", "Shipped today.").await);
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    seen.keep(business.message(&pairwise, "offers", "Offer", "Half price.").await);

    let (status, reply) = customer.reply(&message_id, "Thanks, please ring the bell twice.").await;
    assert_eq!(status, 201, "{reply}");
    let (status, feedback) = customer.write(&business.id, "The pizza was cold.").await;
    assert_eq!(status, 201, "{feedback}");
    // A message id that is not in her inbox, or a notice, gets a 404.
    assert_eq!(customer.reply(&"f".repeat(32), "Hello?").await.0, 404);

    let replies = seen.keep(business.replies(&pairwise).await);
    let items = replies["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{replies}");
    // Newest first: the feedback, then the reply to the message.
    assert_eq!(items[0]["text"]["body"], "The pizza was cold.");
    assert!(items[0].get("in_reply_to").is_none());
    assert_eq!(items[1]["text"]["body"], "Thanks, please ring the bell twice.");
    assert_eq!(items[1]["in_reply_to"], message_id.as_str());

    // Another business sees none of it, nor her under this pairwise id.
    let other = app.business("Other Shop", &["order-fulfilment"]).await;
    assert_eq!(other.replies(&pairwise).await.0, 404);
    let (status, problem) = other.message(&pairwise, "service", "Hi", "Hi").await;
    assert_eq!((status, problem["reason"].as_str()), (403, Some("not_connected")));

    // After she disconnects and connects again, the new pairwise id shows
    // nothing written under the old one.
    let (status, _) = customer.disconnect(&relationship_id(&relationship)).await;
    assert!([200, 204].contains(&status));
    assert_eq!(business.replies(&pairwise).await.0, 404);
    let (_, again) = customer.connect(&business.id).await;
    let replies = seen.keep(business.replies(&pairwise_of(&again)).await);
    assert_eq!(replies["items"], json!([]), "{replies}");
    // Nor can she answer, under the new id, a message sent to the old one:
    // the answer would tie the two together.
    let (status, refused) = customer.reply(&message_id, "Still there?").await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(seen.keep(business.replies(&pairwise_of(&again)).await)["items"], json!([]));

    for answer in &seen.0 {
        for value in [EMAIL, PHONE, customer.id.as_str()] {
            assert!(!answer.contains(value), "an answer to the business carries `{value}`: {answer}");
        }
    }
}

/// One request her receiver got: its headers and body bytes.
type Request = (axum::http::HeaderMap, Vec<u8>);

/// A receiver for her own webhook endpoint on 127.0.0.1.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sink = Arc::clone(&self.got);
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = Arc::clone(&sink);
                async move {
                    sink.lock().unwrap().push((headers, body.to_vec()));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}/hooks")
    }

    async fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let bodies: Vec<Value> =
                self.got.lock().unwrap().iter().map(|(_, body)| serde_json::from_slice(body).unwrap()).collect();
            if done(&bodies) {
                return bodies;
            }
            assert!(Instant::now() < deadline, "waited 30 s for {what}; got {bodies:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_reach_her_inbox_and_her_own_webhook_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        "[webhooks]\ninsecure_allow_http = true\ninsecure_allow_private = true\nretry_initial_secs = 1\n",
    )
    .unwrap();
    let app = TestApp::start_with_config(Some(config)).await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let (customer, relationship) = connected(&app, &business).await;
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let (status, endpoint) = customer.caller().post("/v1/me/webhooks", &json!({"url": url})).await;
    assert_eq!(status, 201, "{endpoint}");
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));

    // A business asks for access.
    let request = json!({"pairwise_id": pairwise_of(&relationship), "purposes": ["marketing"], "fields": ["email"],
                         "duration_days": 30, "justification": "Our newsletter"});
    let (status, asked) = business.access_request(&request).await;
    assert_eq!(status, 201, "{asked}");
    // A business reads special-category data under her grant.
    assert_eq!(customer.field_put("allergies", &json!(["peanuts"])).await.0, 200);
    let grant = json!({"business_id": business.id, "purposes": ["order-fulfilment"], "fields": ["allergies"],
                       "duration_days": 30});
    let (status, granted) = customer.grant(&grant).await;
    assert_eq!(status, 201, "{granted}");
    let (status, read) = business.read(&pairwise_of(&relationship), "order-fulfilment", &["allergies"]).await;
    assert_eq!(status, 200, "{read}");
    // She hears of messages on her endpoint when she chooses to.
    let preferences = json!({"kinds": ["service"], "cap": {"messages": 5, "period": "week"}, "channel": "webhook"});
    assert_eq!(customer.contact_put(&relationship_id(&relationship), &preferences).await.0, 200);
    let (status, sent) = business.message(&pairwise_of(&relationship), "service", "Order", "On its way.").await;
    assert_eq!(status, 201, "{sent}");

    let items = inbox(&customer).await;
    let notices: Vec<&Value> = items.iter().filter(|item| item["type"] == "notice").collect();
    let of = |kind: &str| notices.iter().find(|n| n["notice"] == kind).copied();
    let asked_notice = of("access_request").expect("a notice of the request");
    assert_eq!(asked_notice["about_id"], asked["request_id"]);
    assert_eq!(asked_notice["business_name"], "Acme Pizza");
    let read_notice = of("special_read").expect("a notice of the special-category read");
    assert_eq!(read_notice["fields"], json!(["allergies"]));
    assert_eq!(read_notice["audit_index"], read["audit_index"]);
    assert_eq!(read_notice["purpose"], "order-fulfilment");

    let types = ["access_request.created", "special_data.read", "message.delivered"];
    let bodies =
        receiver.until("her notices", |bodies| types.iter().all(|t| bodies.iter().any(|b| b["type"] == *t))).await;
    let delivered = bodies.iter().find(|b| b["type"] == "message.delivered").unwrap();
    assert_eq!(delivered["data"]["message_id"], sent["message_id"]);
    for body in &bodies {
        let text = body.to_string();
        assert!(!text.contains("On its way") && !text.contains("peanuts") && !text.contains(EMAIL), "{text}");
    }
    // Each is signed with her endpoint's secret, per Standard Webhooks.
    let secret = endpoint["secret"].as_str().unwrap();
    for (headers, body) in receiver.got.lock().unwrap().iter() {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let (id, timestamp, signature) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        assert!(common::standard_webhook_signed(&id, &timestamp, &signature, body, secret), "{headers:?}");
    }

    // A grant that ends within a week is announced once, to both.
    let subject: consentvault::ids::SubjectId = customer.id.parse().unwrap();
    let vault = app.vault().clone();
    vault.insecure_step_clock_secs(24 * 86_400);
    vault.sweep().sweep().await;
    vault.sweep().sweep().await;
    let expiring: Vec<_> = vault
        .contact()
        .inbox_items(subject)
        .unwrap()
        .into_iter()
        .filter(|item| item.notice == Some(consentvault::contact::NoticeKind::GrantExpiring))
        .collect();
    assert_eq!(expiring.len(), 1, "{expiring:#?}");
    assert_eq!(expiring[0].about_id.as_deref(), granted["grant_id"].as_str());
    receiver.until("the grant's expiry notice", |bodies| bodies.iter().any(|b| b["type"] == "grant.expiring")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn her_messages_and_notices_are_erased_with_her() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let (customer, relationship) = connected(&app, &business).await;
    let pairwise = pairwise_of(&relationship);
    let canary_in = "inbox-canary-3e9b: your table is booked";
    let canary_out = "reply-canary-77d0: see you at eight";
    let (_, sent) = business.message(&pairwise, "service", "Booking", canary_in).await;
    let (status, _) = customer.reply(sent["message_id"].as_str().unwrap(), canary_out).await;
    assert_eq!(status, 201);
    let (status, export) = customer.export().await;
    assert_eq!(status, 200);
    let exported = export.to_string();
    assert!(exported.contains(canary_in) && exported.contains(canary_out), "the export holds her inbox");
    assert!(export["contact_preferences"][0]["preferences"]["kinds"] == json!(["service"]), "{export}");
    let subject: consentvault::ids::SubjectId = customer.id.parse().unwrap();
    assert!(!app.vault().contact().inbox_items(subject).unwrap().is_empty());

    let (status, erased) = customer.erase().await;
    assert_eq!(status, 200, "{erased}");
    assert!(app.vault().contact().inbox_items(subject).unwrap().is_empty(), "her inbox is gone");
    let store = app.vault().store();
    for prefix in [
        consentvault::store::Key::inbox_of(subject.as_bytes()),
        consentvault::store::Key::message_texts_of(subject.as_bytes()),
        consentvault::store::Key::contact_preferences_of(subject.as_bytes()),
    ] {
        assert!(store.scan_prefix(&prefix, 10).unwrap().is_empty(), "something of her contact is left");
    }
    assert_eq!(business.replies(&pairwise).await.0, 404);
    assert_eq!(customer.inbox().await.0, 401);
    // Nothing at rest ever held the texts in the clear (every write above
    // was acknowledged, so it is on disk).
    let files = common::files_under(app.data_dir());
    assert!(!files.is_empty());
    for (path, bytes) in files {
        for canary in ["inbox-canary-3e9b", "reply-canary-77d0"] {
            assert!(!common::contains(&bytes, canary.as_bytes()), "{} holds `{canary}`", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_business_that_sends_too_fast_is_slowed_whatever_the_answers() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment"]).await;
    let nobody = "0".repeat(32);
    // 60 at once and 10 a second after: sent as fast as the test can, the
    // limit is reached long before 600.
    let mut statuses = Vec::new();
    for _ in 0..600 {
        let (status, answer) = business.message(&nobody, "service", "Hi", "Hello.").await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "never slowed: {} sends", statuses.len());
    // Every send before the limit was decided, and refused (nobody has this
    // pairwise id).
    let before = &statuses[..statuses.len() - 1];
    assert!(before.len() >= consentvault::contact::SENDS_BURST as usize, "{statuses:?}");
    assert!(before.iter().all(|&status| status == 403), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_who_writes_too_fast_is_slowed() {
    let app = TestApp::start().await;
    let business = app.business("Acme Pizza", &["order-fulfilment"]).await;
    let (customer, _) = connected(&app, &business).await;
    // 10 at once and 30 a minute after.
    let mut statuses = Vec::new();
    for n in 0..100 {
        let (status, answer) = customer.write(&business.id, &format!("Note {n}")).await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "never slowed: {statuses:?}");
    let before = &statuses[..statuses.len() - 1];
    assert!(before.len() >= consentvault::contact::WRITES_BURST as usize, "{statuses:?}");
    assert!(before.iter().all(|&status| status == 201), "{statuses:?}");
}
