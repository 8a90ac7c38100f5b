//! The audit routes, checked the way an outside auditor would: with the
//! RFC 9162 verifier in `common::tlog`, written from the RFC text (SHA-256
//! from the `sha2` crate, not ring), and the checkpoint signature checked
//! with ed25519-dalek.

#![allow(clippy::unwrap_used)]

mod common;

use common::tlog::{hashes, leaf, open_checkpoint, verify_consistency, verify_inclusion};
use consentvault::audit::Actor;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_auditor_verifies_entries_proofs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let (vault, base) = (server.vault.clone(), server.base_url.clone());

    // Activity: two customers write and read their data.
    let mut subjects = Vec::new();
    for email in ["ada@example.org", "grace@example.org"] {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!(email)).await.unwrap();
        vault.subjects().data_read_own(subject).await.unwrap();
        subjects.push(subject);
    }
    let first_note = vault.core().checkpoint_now().await.unwrap();
    vault.subjects().data_put(&Actor::customer(subjects[0]), subjects[0], "country", &json!("GB")).await.unwrap();
    vault.subjects().data_read_own(subjects[0]).await.unwrap();
    vault.core().checkpoint_now().await.unwrap();

    let client = reqwest::Client::new();
    let admin = common::roles::admin_token(&client, &base, &data_dir).await;
    let (_, token) = common::roles::client_principal(&client, &base, &admin, "auditors").await;
    let get = |path: String| {
        let request = client.get(format!("{base}{path}")).bearer_auth(&token);
        async move { request.send().await.unwrap() }
    };

    let verifier_key = client.get(format!("{base}/v1/audit/public-key")).send().await.unwrap().text().await.unwrap();
    let note = client.get(format!("{base}/v1/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    let (origin, size, root) = open_checkpoint(&note, &verifier_key);
    assert!(origin.starts_with("consentvault.local/"));
    let (_, first_size, first_root) = open_checkpoint(&first_note, &verifier_key);
    assert_eq!(
        (first_size, size),
        (8, 11),
        "admin created, policies loaded, then per customer created, written, read; later a write, a read, the auditor created"
    );

    // Every entry, paged with a cursor.
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/audit/entries?limit=3&cursor={cursor}"),
            None => "/v1/audit/entries?limit=3".to_owned(),
        };
        let page: Value = get(path).await.json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().clone());
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(items.len() as u64, size);

    for index in 0..size {
        let response = get(format!("/v1/audit/entries/{index}")).await;
        assert_eq!(response.headers()["cache-control"], "no-store");
        let bytes = response.bytes().await.unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("@example.org"), "entry {index} holds a personal value");
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), items[index as usize]["entry"]);
        let proof: Value =
            get(format!("/v1/audit/proof/inclusion?index={index}&tree_size={size}")).await.json().await.unwrap();
        assert!(verify_inclusion(index, size, leaf(&bytes), &hashes(&proof), &root), "inclusion of {index}");
        assert!(!verify_inclusion(index, size, leaf(b"forged"), &hashes(&proof), &root));
    }
    let proof: Value =
        get(format!("/v1/audit/proof/consistency?old_size={first_size}&new_size={size}")).await.json().await.unwrap();
    assert!(verify_consistency(first_size, size, &first_root, &root, &hashes(&proof)));
    assert!(!verify_consistency(first_size, size, &leaf(b"other"), &root, &hashes(&proof)));

    // Filters.
    let reads: Value = get("/v1/audit/entries?kind=data.read&decision=allow".to_owned()).await.json().await.unwrap();
    let reads = reads["items"].as_array().unwrap();
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|item| item["entry"]["kind"] == "data.read"));
    let mine: Value = get(format!("/v1/audit/entries?subject={}", subjects[1])).await.json().await.unwrap();
    let mine = mine["items"].as_array().unwrap();
    assert_eq!(mine.len(), 3, "created, written, read");
    assert!(mine.iter().all(|item| item["entry"]["subject"] == subjects[1].to_string()));
    let future: Value = get("/v1/audit/entries?since=2999-01-01T00:00:00Z".to_owned()).await.json().await.unwrap();
    assert!(future["items"].as_array().unwrap().is_empty());

    // Refusals.
    let anonymous = client.get(format!("{base}/v1/audit/entries")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client.get(format!("{base}/v1/audit/entries")).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.text().await.unwrap(), anonymous.text().await.unwrap(), "401 says the same whatever failed");
    for (path, code) in [
        (format!("/v1/audit/proof/inclusion?index=0&tree_size={}", size + 100), "out_of_range"),
        ("/v1/audit/proof/inclusion?index=5&tree_size=5".to_owned(), "out_of_range"),
        ("/v1/audit/proof/consistency?old_size=5&new_size=4".to_owned(), "out_of_range"),
        ("/v1/audit/entries?kind=data.stolen".to_owned(), "invalid_kind"),
        ("/v1/audit/entries?limit=100000".to_owned(), "invalid_limit"),
        ("/v1/audit/entries?cursor=bogus".to_owned(), "invalid_cursor"),
        ("/v1/audit/entries?colour=red".to_owned(), "invalid_query"),
        ("/v1/audit/entries?since=9999-12-31T23:59:59-23:59".to_owned(), "invalid_time"),
        ("/v1/audit/entries?until=yesterday".to_owned(), "invalid_time"),
    ] {
        let response = get(path.clone()).await;
        assert_eq!(response.status(), 400, "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{path}");
    }
    assert_eq!(get(format!("/v1/audit/entries/{}", size + 5)).await.status(), 404);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_log_gets_a_new_signed_checkpoint_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::InProcessServer::start(&dir.path().join("data")).await;
    let client = reqwest::Client::new();
    let verifier_key =
        client.get(format!("{}/v1/audit/public-key", server.base_url)).send().await.unwrap().text().await.unwrap();
    let subject = server.vault.subjects().subject_create(&Actor::system()).await.unwrap();
    server
        .vault
        .subjects()
        .data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org"))
        .await
        .unwrap();
    let size = consentvault::audit::size(server.vault.store()).unwrap();
    // The checkpoint thread signs at least once a second while the log grows;
    // allow a generous bound for a loaded machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let note =
            client.get(format!("{}/v1/audit/checkpoint", server.base_url)).send().await.unwrap().text().await.unwrap();
        let (_, covered, _) = open_checkpoint(&note, &verifier_key);
        if covered >= size {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint covered size {size}; latest covers {covered}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;
}
