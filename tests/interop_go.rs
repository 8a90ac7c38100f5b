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
