//! Consent receipts as a customer keeps them: valid against the Kantara
//! Consent Receipt v1.1 JSON schema (`tests/fixtures`, from the Kantara
//! Initiative's `consent-receipt-v-next` repository, with its two leading
//! `//` comment lines removed so it parses as JSON), naming the business's
//! controller details, the justification and benefit she approved and the
//! business's pairwise id; issued once and never changed; the end of the
//! consent a second signed record referring to the first.

#![allow(clippy::unwrap_used)]

mod common;

use common::app::TestApp;
use consentvault::audit::checkpoint::NoteVerifier;
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("fixtures/kantara-consent-receipt-v1_1-schema.json");

/// What the Kantara Consent Receipt v1.1 schema finds wrong with `receipt`.
fn kantara_errors(receipt: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let validator = jsonschema::draft4::new(&schema).unwrap();
    validator.iter_errors(receipt).map(|error| format!("{error} at {}", error.instance_path())).collect()
}

/// Panics with every schema error unless `receipt` is a valid Kantara
/// Consent Receipt v1.1.
fn assert_kantara_valid(receipt: &Value) {
    let errors = kantara_errors(receipt);
    assert!(errors.is_empty(), "not a Kantara CR v1.1 receipt: {errors:?}\n{receipt:#}");
}

/// The receipt text a signed note carries, after checking its signature.
fn signed_text(verifier_key: &str, note: &str) -> Value {
    let verifier = NoteVerifier::parse(verifier_key).unwrap();
    serde_json::from_str(&verifier.open(note).expect("the record's signature verifies")).unwrap()
}

fn controller() -> Value {
    json!({
        "contact": "Data protection officer",
        "email": "privacy@acme.example",
        "phone": "+44 20 7946 0000",
        "address": {"street_address": "1 High Street", "locality": "London", "postal_code": "N1 9GU", "country": "GB"},
        "privacy_notice_url": "https://acme.example/privacy"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_is_a_valid_kantara_receipt_with_what_she_approved_and_never_changes() {
    let app = TestApp::start().await;
    let business = app
        .business_with(
            &json!({"name": "Acme Pizza", "purposes": ["marketing", "order-fulfilment"], "controller": controller()}),
        )
        .await;
    let customer = app.customer().await;
    let (status, relationship) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    let pairwise = relationship["pairwise_id"].as_str().unwrap();
    let (status, request) = business
        .access_request(&json!({
            "pairwise_id": pairwise,
            "purposes": ["marketing", "order-fulfilment"],
            "fields": ["email", "phone"],
            "duration_days": 90,
            "justification": "To send your order updates and our monthly offers",
            "benefit": "10% off your next order"
        }))
        .await;
    assert_eq!(status, 201, "{request}");
    let request_id = request["request_id"].as_str().unwrap();
    // She narrows it to order fulfilment and her e-mail.
    let (status, grant) =
        customer.approve(request_id, &json!({"purposes": ["order-fulfilment"], "fields": ["email"]})).await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap();

    let (status, answer) = customer.receipt(grant_id).await;
    assert_eq!(status, 200, "{answer}");
    let receipt = &answer["receipt"];
    assert_kantara_valid(receipt);
    // The schema check has teeth: without the controller's phone, or with
    // a timestamp as text, a receipt is refused.
    let mut phoneless = receipt.clone();
    phoneless["piiControllers"][0].as_object_mut().unwrap().remove("phone");
    assert!(!kantara_errors(&phoneless).is_empty());
    let mut textual = receipt.clone();
    textual["consentTimestamp"] = json!("yesterday");
    assert!(!kantara_errors(&textual).is_empty());
    assert_eq!(
        signed_text(answer["verifier_key"].as_str().unwrap(), answer["signed_note"].as_str().unwrap()),
        *receipt
    );
    assert_eq!(receipt["piiPrincipalId"], pairwise, "the business's pairwise id, never her own");
    assert!(!answer.to_string().contains(&customer.id));
    let acme = &receipt["piiControllers"][0];
    assert_eq!(acme["piiController"], "Acme Pizza");
    assert_eq!(acme["contact"], "Data protection officer");
    assert_eq!(acme["email"], "privacy@acme.example");
    assert_eq!(acme["phone"], "+44 20 7946 0000");
    assert_eq!(acme["address"]["addressCountry"], "GB");
    assert_eq!(acme["detailsRegistered"], true);
    assert_eq!(receipt["policyUrl"], "https://acme.example/privacy");
    // What she approved, and why the business asked.
    assert_eq!(receipt["justification"], "To send your order updates and our monthly offers");
    assert_eq!(receipt["benefit"], "10% off your next order");
    assert_eq!(receipt["requestId"], request_id);
    assert_eq!(receipt["fields"], json!(["email"]));
    assert_eq!(receipt["services"][0]["purposes"].as_array().unwrap().len(), 1);
    assert_eq!(receipt["services"][0]["purposes"][0]["purposeCategory"][0], "order-fulfilment");
    // The ISO/IEC TS 27560 record fields.
    assert_eq!(receipt["recordType"], "given");
    assert_eq!(receipt["legalBasis"][0], "GDPR Art. 6(1)(a): consent");
    assert_eq!(receipt["recipients"], json!(["Acme Pizza"]));
    assert_eq!(receipt["noticeVersion"], consentvault::policy::Policies::built_in().sha256);
    assert_eq!(receipt["auditIndex"], grant["audit_index"]);
    assert_eq!(receipt["issuedAt"], receipt["startsAt"]);
    assert_eq!(receipt["history"].as_array().unwrap().len(), 1);
    assert_eq!(answer["later"], json!([]));
    // The grant.created event names the receipt.
    let auditor = app.auditor().await;
    let (_, created) = auditor.entries(&[("kind", "grant.created")]).await;
    assert_eq!(created["items"][0]["entry"]["related"]["receipt_id"], receipt["consentReceiptID"]);

    // The business changes its controller details: the receipt she holds
    // stays exactly as issued.
    let mut moved = controller();
    moved["address"]["street_address"] = json!("2 Low Road");
    let (status, changed) =
        app.admin().caller().put(&format!("/v1/admin/businesses/{}/controller", business.id), &moved).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["controller"]["address"]["street_address"], "2 Low Road");
    let (_, again) = customer.receipt(grant_id).await;
    assert_eq!(again["signed_note"], answer["signed_note"]);

    // She revokes: the receipt still stands as issued, and a second
    // signed record says the consent was withdrawn, referring to it.
    let (status, _) = customer.revoke(grant_id).await;
    assert_eq!(status, 200);
    let (_, ended) = customer.receipt(grant_id).await;
    assert_eq!(ended["signed_note"], answer["signed_note"]);
    let later = ended["later"].as_array().unwrap();
    assert_eq!(later.len(), 1, "{ended}");
    let withdrawal = &later[0]["receipt"];
    assert_kantara_valid(withdrawal);
    assert_eq!(
        signed_text(ended["verifier_key"].as_str().unwrap(), later[0]["signed_note"].as_str().unwrap()),
        *withdrawal
    );
    assert_eq!(withdrawal["recordType"], "withdrawn");
    assert_eq!(withdrawal["refersTo"], receipt["consentReceiptID"]);
    assert_ne!(withdrawal["consentReceiptID"], receipt["consentReceiptID"]);
    assert_eq!(withdrawal["consentTimestamp"], receipt["consentTimestamp"]);
    let history = withdrawal["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["recordType"], "withdrawn");
    let (_, revoked) = auditor.entries(&[("kind", "grant.revoked")]).await;
    assert_eq!(withdrawal["auditIndex"], revoked["items"][0]["index"], "it names the revoke's audit event");
    // Her export carries both signed records.
    let (_, export) = customer.export().await;
    let records = export["grants"][0]["receipts"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["signed_note"], answer["signed_note"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_runs_out_gets_an_expiry_record_and_a_business_without_details_says_so() {
    let app = TestApp::start().await;
    let business = app.business("Plain Shop", &["marketing"]).await;
    let customer = app.customer().await;
    let (status, _) = customer.connect(&business.id).await;
    assert_eq!(status, 201);
    let (status, grant) = customer
        .grant(
            &json!({"business_id": business.id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90}),
        )
        .await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap();
    let (_, answer) = customer.receipt(grant_id).await;
    let receipt = &answer["receipt"];
    assert_kantara_valid(receipt);
    assert_eq!(receipt["piiControllers"][0]["detailsRegistered"], false);
    assert_eq!(receipt["piiControllers"][0]["contact"], "Plain Shop");
    assert!(receipt.get("justification").is_none(), "a direct grant has no request behind it");
    assert_eq!(receipt["collectionMethod"], "the customer granted access in consentvault");

    // Past the window, the sweep records the expiry.
    let expires_at = time::OffsetDateTime::parse(
        grant["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    app.vault().insecure_pin_clock_secs(Some(expires_at));
    assert_eq!(app.vault().consent().grants_expire().await.unwrap(), 1);
    app.vault().insecure_pin_clock_secs(None);
    let (_, ended) = customer.receipt(grant_id).await;
    assert_eq!(ended["signed_note"], answer["signed_note"]);
    let expiry = &ended["later"][0]["receipt"];
    assert_kantara_valid(expiry);
    assert_eq!(expiry["recordType"], "expired");
    assert_eq!(expiry["refersTo"], receipt["consentReceiptID"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_details_that_make_no_sense_are_refused_by_name_and_register_nothing() {
    let app = TestApp::start().await;
    let admin = app.admin();
    for (name, spoil) in [
        ("email", json!({"email": "not an address"})),
        ("phone", json!({"phone": "call us"})),
        ("privacy_notice_url", json!({"privacy_notice_url": "http://acme.example/privacy"})),
        (
            "country",
            json!({"address": {"street_address": "1 High Street", "locality": "London", "postal_code": "N1", "country": "England"}}),
        ),
    ] {
        let mut details = controller();
        for (key, value) in spoil.as_object().unwrap() {
            details[key] = value.clone();
        }
        let body = json!({"name": format!("Shop {name}"), "purposes": ["marketing"], "controller": details});
        let (status, problem) = admin.caller().post("/v1/admin/businesses", &body).await;
        assert_eq!(status, 400, "{name}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains(name), "{name}: {problem}");
    }
    let (_, listed) = admin.businesses().await;
    assert_eq!(listed["items"], json!([]), "nothing was registered");
}
