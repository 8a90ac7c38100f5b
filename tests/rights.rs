//! Data-subject rights over HTTP: the customer exports everything held about
//! them, then erases it; afterwards no path reaches their data, the business
//! sees the consent end, and the audit log still verifies.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::roles::{self, send};
use serde_json::json;

const CANARY: &str = "erasure-canary-7f3a@example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_everything_and_erasure_leaves_nothing_reachable() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
    let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
    let (customer_id, customer) = roles::customer(&client, &base).await;
    let (status, _) = send(
        &client,
        Method::PUT,
        format!("{base}/v1/me/data"),
        Some(&customer),
        Some(json!({"email": CANARY, "phone": "+44 20 7946 0001"})),
    )
    .await;
    assert_eq!(status, 200);
    let relationship = roles::connect(&client, &base, &customer, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
    let (status, grant) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&customer), body).await;
    assert_eq!(status, 201, "{grant}");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let read_url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing");
    let (status, read) = send(&client, Method::GET, read_url.clone(), Some(&business), None).await;
    assert_eq!((status, &read["data"]), (200, &json!({"email": CANARY})));

    // Export: the data, the relationship, the grant with its signed receipt,
    // and the read the business just made.
    let (status, export) = send(&client, Method::GET, format!("{base}/v1/me/export"), Some(&customer), None).await;
    assert_eq!(status, 200, "{export}");
    let text = export.to_string();
    assert!(text.contains(CANARY) && text.contains("+44 20 7946 0001"), "{export}");
    assert!(text.contains(&pairwise) && text.contains(&grant_id), "{export}");
    assert!(text.contains("signed_receipt"), "{export}");
    assert!(text.contains(&business_id), "the export names who read the data: {export}");

    // Erasure needs an explicit confirmation; without it nothing changes.
    let (status, problem) =
        send(&client, Method::DELETE, format!("{base}/v1/me"), Some(&customer), Some(json!({"confirm": "yes"}))).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("confirmation_required")), "{problem}");
    let (status, _) = send(&client, Method::GET, read_url.clone(), Some(&business), None).await;
    assert_eq!(status, 200, "a refused erasure changes nothing");

    let (status, receipt) =
        send(&client, Method::DELETE, format!("{base}/v1/me"), Some(&customer), Some(json!({"confirm": "erase"})))
            .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["erased"], true);
    let erased_at = receipt["audit_index"].as_u64().unwrap();
    let verifier = server.vault.audit().verifier();
    let checkpoint =
        verifier.open_checkpoint(receipt["checkpoint"].as_str().unwrap(), server.vault.audit().origin()).unwrap();
    assert!(checkpoint.tree_size > erased_at, "the receipt's checkpoint covers the erasure");

    // No path reaches the customer any more.
    for (method, path) in [(Method::GET, "/v1/me/data"), (Method::GET, "/v1/me/export"), (Method::GET, "/v1/me/grants")]
    {
        let (status, _) = send(&client, method.clone(), format!("{base}{path}"), Some(&customer), None).await;
        assert_eq!(status, 401, "{method} {path} with the erased customer's token");
    }
    let login = json!({"grant_type": "password", "username": customer_id, "password": "correct horse battery staple"});
    let (status, _) = roles::post(&client, format!("{base}/v1/token"), None, login).await;
    assert!((400..500).contains(&status), "the erased customer cannot log in: {status}");
    let (status, denied) = send(&client, Method::GET, read_url, Some(&business), None).await;
    assert_eq!(status, 403, "{denied}");
    assert!(!denied.to_string().contains(CANARY));
    let (_, grants) = send(&client, Method::GET, format!("{base}/v1/grants"), Some(&business), None).await;
    assert!(
        grants["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["grant_id"] != grant_id.as_str() || g["status"] != "active"),
        "{grants}"
    );
    let (_, changes) = send(&client, Method::GET, format!("{base}/v1/grants/changes"), Some(&business), None).await;
    assert!(changes.to_string().contains("revoked"), "the feed tells the business the grant ended: {changes}");

    // The log keeps the erasure, with ids only.
    let (_, entries) = send(
        &client,
        Method::GET,
        format!("{base}/v1/audit/entries?subject={customer_id}&limit=1000"),
        Some(&auditor),
        None,
    )
    .await;
    let entries = entries["items"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["entry"]["kind"] == "subject.erased" && e["index"] == erased_at));
    assert!(entries.iter().all(|e| !e["entry"].to_string().contains(CANARY)));
    let vault = server.vault.clone();
    server.stop().await;
    drop(vault);

    // Nothing at rest holds the value in the clear, and the log verifies.
    for (path, bytes) in common::files_under(&data_dir) {
        assert!(!common::contains(&bytes, CANARY.as_bytes()), "{} holds the erased value", path.display());
    }
    let output = Command::new(env!("CARGO_BIN_EXE_consentvault"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data_dir)
        .arg("--policies")
        .arg(common::policies_dir())
        .env_remove("CONSENTVAULT_KEK")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
