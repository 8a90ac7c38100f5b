//! The test app and its actors: the main flow of the specification's
//! Appendix, driven through every role's helpers, and the check the app
//! makes when dropped, shown to refuse a log that does not verify.

#![allow(clippy::unwrap_used)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::app::{LogSnapshot, TestApp};
use common::tlog;
use serde_json::{Value, json};

/// Panics unless `answer` has every member of `expected` with its value
/// (answers may carry more than the specification names).
fn assert_has(answer: &Value, expected: Value) {
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(&answer[name], value, "{name} in {answer}");
    }
}

/// The ids in a list answer's `items`, under `name`.
fn ids(list: &Value, name: &str) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|item| item[name].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appendix_flow_runs_through_the_actors_of_every_role() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let business = app.business("Acme Pizza", &["order-fulfilment", "marketing"]).await;
    let auditor = app.auditor().await;
    let customer = app.customer().await;

    let (status, stored) = customer.data_put(&json!({"email": "ada@example.org", "phone": "+44 20 7946 0000"})).await;
    assert_eq!(status, 200, "{stored}");
    assert_has(&stored, json!({"fields": ["email", "phone"]}));
    let (status, data) = customer.data().await;
    assert_eq!(status, 200, "{data}");
    assert_has(&data, json!({"data": {"email": "ada@example.org", "phone": "+44 20 7946 0000"}}));
    let (status, relationship) = customer.connect(&business.id).await;
    assert_eq!(status, 201, "{relationship}");
    assert_eq!(relationship["business_id"], json!(business.id));
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();

    let (status, connected) = business.relationships().await;
    assert_eq!(status, 200, "{connected}");
    assert_eq!(ids(&connected, "pairwise_id"), [pairwise.as_str()]);
    assert!(connected["items"][0]["connected_at"].is_string(), "{connected}");
    assert_eq!(connected["cursor"], Value::Null);

    let ask = json!({"pairwise_id": pairwise, "purposes": ["marketing"], "fields": ["email", "phone"],
                     "duration_days": 90, "justification": "Send our monthly offers", "benefit": "10% off every order"});
    let (status, asked) = business.access_request(&ask).await;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(asked["status"], "pending");
    let request_id = asked["request_id"].as_str().unwrap().to_owned();
    let (status, pending) = customer.access_requests().await;
    assert_eq!(status, 200, "{pending}");
    let item = &pending["items"][0];
    assert_eq!(ids(&pending, "request_id"), [request_id.as_str()]);
    assert_eq!(item["business_name"], "Acme Pizza");
    assert_eq!(item["justification"], "Send our monthly offers");
    assert_eq!(item["benefit"], "10% off every order");
    assert_eq!(item["status"], "pending");
    let (status, seen) = business.access_request_get(&request_id).await;
    assert_eq!((status, &seen["status"]), (200, &json!("pending")), "{seen}");

    let (status, grant) = customer.approve(&request_id, &json!({"fields": ["email"]})).await;
    assert_eq!(status, 201, "{grant}");
    assert_has(&grant, json!({"purposes": ["marketing"], "fields": ["email"], "status": "active"}));
    assert!(grant["starts_at"].is_string() && grant["expires_at"].is_string(), "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let (status, given) = business.grants().await;
    assert_eq!(status, 200, "{given}");
    assert_eq!(ids(&given, "grant_id"), [grant_id.as_str()]);

    let (status, read) = business.read(&pairwise, "marketing", &["email", "phone"]).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], json!({"email": "ada@example.org"}));
    assert_eq!(read["withheld"], json!([{"field": "phone", "reason": "field_not_granted"}]));
    assert_eq!(read["grant_ids"], json!([grant_id]));
    let read_index = read["audit_index"].as_u64().unwrap();

    let (status, log) = customer.access_log(true).await;
    assert_eq!(status, 200, "{log}");
    let entry = log["items"].as_array().unwrap().iter().find(|item| item["audit_index"] == json!(read_index));
    let entry = entry.unwrap_or_else(|| panic!("the read at {read_index} is in the access log: {log}"));
    // The Appendix shows this read (email released, phone withheld) as
    // `allow`; the vault logs it as `partial`, as docs/AUDIT.md describes.
    assert_has(
        entry,
        json!({"business_id": business.id, "purpose": "marketing", "fields": ["email"], "decision": "partial"}),
    );

    // The auditor finds the read in the log, proven against a signed checkpoint.
    let (status, bytes) = auditor.entry(read_index).await;
    assert_eq!(status, 200);
    let stored: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored["kind"], "data.read", "{stored}");
    let (_, verifier_key) = auditor.public_key().await;
    let (_, note) = auditor.checkpoint().await;
    let (_, size, root) = tlog::open_checkpoint(&note, &verifier_key);
    let (status, proof) = auditor.inclusion(read_index, size).await;
    assert_eq!(status, 200, "{proof}");
    assert!(tlog::verify_inclusion(read_index, size, tlog::leaf(&bytes), &tlog::hashes(&proof), &root));
    let (status, reads) = auditor.entries(&[("kind", "data.read"), ("decision", "partial")]).await;
    assert_eq!(status, 200, "{reads}");
    assert_eq!(reads["items"].as_array().unwrap().len(), 1, "{reads}");
    let (status, receipt) = customer.receipt(&grant_id).await;
    assert_eq!(status, 200, "{receipt}");

    let (status, revoked) = customer.revoke(&grant_id).await;
    assert_eq!(status, 200, "{revoked}");
    assert_has(&revoked, json!({"grant_id": grant_id, "status": "revoked"}));
    let (status, refused) = business.read(&pairwise, "marketing", &["email"]).await;
    assert_eq!((status, &refused["code"]), (403, &json!("no_consent")), "{refused}");
    let (status, changes) = business.grant_changes(None).await;
    assert_eq!(status, 200, "{changes}");
    let kinds: Vec<&str> = changes["items"].as_array().unwrap().iter().filter_map(|c| c["change"].as_str()).collect();
    assert_eq!(kinds, ["created", "revoked"], "{changes}");

    // A second request, denied with a reason.
    let (status, asked) = business.access_request(&ask).await;
    assert_eq!(status, 201, "{asked}");
    let (status, denied) = customer.deny(asked["request_id"].as_str().unwrap(), Some("not now")).await;
    assert_eq!((status, &denied["status"]), (200, &json!("denied")), "{denied}");

    let (status, objections) = customer.objections_put(&["marketing"]).await;
    assert_eq!(status, 200, "{objections}");
    assert_has(&objections, json!({"purposes": ["marketing"]}));
    let (status, export) = customer.export().await;
    assert_eq!(status, 200, "{export}");
    for part in ["data", "relationships", "access_requests", "grants", "objections", "access_log"] {
        assert!(export.get(part).is_some(), "the export has {part}: {export}");
    }

    for (what, (status, answer)) in [
        ("businesses", admin.businesses().await),
        ("auditors", admin.auditors().await),
        ("keys", admin.keys().await),
        ("policies", admin.policies_reload().await),
    ] {
        assert_eq!(status, 200, "{what}: {answer}");
    }

    let (status, erased) = customer.erase().await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["erased"], true);
    let (_, covered, _) = tlog::open_checkpoint(erased["checkpoint"].as_str().unwrap(), &verifier_key);
    assert!(covered > erased["audit_index"].as_u64().unwrap(), "the erasure receipt's checkpoint covers the erasure");
    let (status, _) = customer.data().await;
    assert_eq!(status, 401, "an erased customer's token no longer works");
}

/// Whether `check` panics.
fn refused(check: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(check)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closing_audit_refuses_a_changed_entry_a_lost_entry_a_forged_checkpoint_and_a_leaked_value() {
    let app = TestApp::start().await;
    let customer = app.customer().await;
    let (status, _) = customer.data_put(&json!({"email": "ada@example.org"})).await;
    assert_eq!(status, 200);
    let auditor = app.auditor().await;
    let snapshot = app.audit_snapshot(&auditor).await;
    let values = app.personal_values();
    assert_eq!(values, ["ada@example.org"]);
    assert!(snapshot.size() >= 4, "admin, policies, customer, write: {}", snapshot.size());
    snapshot.verify(&values);

    let tampered = |change: &dyn Fn(&mut LogSnapshot)| {
        let mut copy = snapshot.clone();
        change(&mut copy);
        refused(|| copy.verify(&values))
    };
    let last = snapshot.entries.len() - 1;
    assert!(tampered(&|log| log.entries[last][10] ^= 1), "a changed byte in the newest entry");
    assert!(tampered(&|log| log.entries[0][10] ^= 1), "a changed byte in the oldest entry");
    assert!(tampered(&|log| drop(log.entries.pop())), "the newest entry lost");
    assert!(tampered(&|log| log.entries.swap(0, 1)), "two entries swapped");
    assert!(
        tampered(&|log| log.checkpoint = log.checkpoint.replacen(&format!("\n{}\n", log.size()), "\n1\n", 1)),
        "a checkpoint whose size was edited"
    );
    assert!(tampered(&|log| log.listed[0]["entry"]["kind"] = json!("forged")), "a listing that differs");
    assert!(refused(|| snapshot.verify(std::slice::from_ref(&customer.id))), "a value that is in the log");
}
