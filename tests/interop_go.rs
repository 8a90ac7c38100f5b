//! Guarantee 5 with a verifier nobody on this project wrote: Go's
//! `golang.org/x/mod/sumdb/note` and `sumdb/tlog` (Debian's packaged copy)
//! open the vault's signed checkpoint and check every inclusion proof and a
//! consistency proof, through `tools/auditor-go` speaking to the real server
//! over HTTP. `scripts/install-test-deps` installs Go.

#![allow(clippy::unwrap_used)]

mod common;

use consentvault::audit::Actor;
use consentvault::audit::checkpoint::NoteSigner;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sumdb_packages_accept_the_vaults_checkpoints_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let vault = server.vault.clone();
    for index in 0..5 {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        vault
            .subjects()
            .data_put(&Actor::customer(subject), subject, "email", &json!(format!("c{index}@example.org")))
            .await
            .unwrap();
        vault.subjects().data_read_own(subject).await.unwrap();
    }
    let old = dir.path().join("old-checkpoint");
    std::fs::write(&old, vault.core().checkpoint_now().await.unwrap()).unwrap();
    for _ in 0..6 {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        vault.subjects().data_put(&Actor::customer(subject), subject, "country", &json!("FR")).await.unwrap();
    }
    vault.core().checkpoint_now().await.unwrap();
    let client = reqwest::Client::new();
    let admin = common::roles::admin_token(&client, &server.base_url, &data_dir).await;
    let (_, token) = common::roles::client_principal(&client, &server.base_url, &admin, "auditors").await;
    let verifier_key = vault.audit().verifier_key();

    let url = server.base_url.clone();
    let (token_arg, old_arg) = (token.trim().to_owned(), old.to_str().unwrap().to_owned());
    let accepted = tokio::task::spawn_blocking(move || {
        common::auditor_go(&["-vault", &url, "-token", &token_arg, "-key", &verifier_key, "-old", &old_arg])
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&accepted.stdout);
    assert!(accepted.status.success(), "Go rejected the log:\n{stdout}\n{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(stdout.contains("consistent: 17 -> 30"), "{stdout}");
    assert!(stdout.contains("size 30, 30 inclusion proofs"), "{stdout}");

    // The same tool refuses the checkpoint under another key of the same name.
    let pkcs8 = NoteSigner::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let other_key = NoteSigner::from_pkcs8(vault.audit().origin(), &pkcs8).unwrap().verifier_key();
    let url = server.base_url.clone();
    let token_arg = token.trim().to_owned();
    let refused = tokio::task::spawn_blocking(move || {
        common::auditor_go(&["-vault", &url, "-token", &token_arg, "-key", &other_key])
    })
    .await
    .unwrap();
    assert!(!refused.status.success(), "a foreign key must not verify the checkpoint");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("checkpoint"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    server.stop().await;
}

/// A customer checks what she holds with the same Go packages: that the
/// vault's log today extends a checkpoint she kept (with her own token), and,
/// offline with nothing but the vault's key, that her erasure receipt's entry
/// is in the log its checkpoint signs; a receipt changed in any way fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_proves_the_log_grew_consistently_and_her_erasure_after_her_account_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let vault = server.vault.clone();
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let (_, signed_up) = common::roles::sign_up(&client, &base).await.unwrap();
    let customer_id = signed_up["customer_id"].as_str().unwrap().to_owned();
    let (_, answer) = common::roles::sign_in(&client, &base, &customer_id).await.unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let bearer = |request: reqwest::RequestBuilder| request.bearer_auth(&token);
    let put = bearer(client.put(format!("{base}/v1/me/data"))).json(&json!({"email": "ada@example.org"}));
    assert_eq!(put.send().await.unwrap().status(), 200);
    let kept = dir.path().join("kept-checkpoint");
    std::fs::write(&kept, vault.core().checkpoint_now().await.unwrap()).unwrap();
    for _ in 0..4 {
        assert_eq!(bearer(client.get(format!("{base}/v1/me/data"))).send().await.unwrap().status(), 200);
    }
    vault.core().checkpoint_now().await.unwrap();
    let key = vault.audit().verifier_key();
    let go = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || common::auditor_go(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap()
    };
    let consistent = go(vec![
        "-customer".into(),
        "-vault".into(),
        base.clone(),
        "-token".into(),
        token.clone(),
        "-key".into(),
        key.clone(),
        "-old".into(),
        kept.to_str().unwrap().into(),
    ])
    .await;
    let said = String::from_utf8_lossy(&consistent.stdout).into_owned();
    assert!(consistent.status.success(), "{said}{}", String::from_utf8_lossy(&consistent.stderr));
    assert!(said.contains("consistent: "), "{said}");

    // Erased: the receipt alone proves it, once the account is gone.
    let erased = bearer(client.delete(format!("{base}/v1/me"))).json(&json!({"confirm": "erase"}));
    let receipt: serde_json::Value = erased.send().await.unwrap().json().await.unwrap();
    server.stop().await;
    let file = dir.path().join("erasure-receipt.json");
    std::fs::write(&file, serde_json::to_vec(&receipt).unwrap()).unwrap();
    let checked = go(vec!["-receipt".into(), file.to_str().unwrap().into(), "-key".into(), key.clone()]).await;
    let said = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(checked.status.success(), "{said}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(said.contains(&format!("erasure verified: entry {}", receipt["audit_index"])), "{said}");

    // Any change to what the receipt says is caught.
    let mut another_index = receipt.clone();
    another_index["audit_index"] = json!(receipt["audit_index"].as_u64().unwrap() - 1);
    another_index["inclusion_proof"]["index"] = another_index["audit_index"].clone();
    let mut another_entry = receipt.clone();
    let entry = receipt["inclusion_proof"]["entry"].as_str().unwrap();
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, entry).unwrap();
    let changed = String::from_utf8(decoded).unwrap().replace("\"time\":\"", "\"time\":\"1");
    another_entry["inclusion_proof"]["entry"] =
        json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, changed));
    for (name, forged) in [("index", another_index), ("entry", another_entry)] {
        std::fs::write(&file, serde_json::to_vec(&forged).unwrap()).unwrap();
        let refused = go(vec!["-receipt".into(), file.to_str().unwrap().into(), "-key".into(), key.clone()]).await;
        assert!(!refused.status.success(), "a receipt with another {name} must not verify");
    }
}
