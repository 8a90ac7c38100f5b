//! Key lifecycle over HTTP and on disk: a KEK rotation under concurrent
//! reads and writes fails no request, keeps every value readable and leaves
//! no DEK under the old KEK, which is gone from the key file; rotations start
//! by themselves at the encryption limits; the environment key source and
//! the CLI.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::roles::{self, send};
use consentvault::audit::Actor;
use consentvault::crypto::KeySource;
use consentvault::keys::KeyError;
use consentvault::vault::{Vault, VaultOptions};
use reqwest::Method;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Polls the admin's key status until the rotation to `target` finished.
async fn rotation_finished(client: &reqwest::Client, base: &str, admin: &str, target: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, keys) = roles::get(client, format!("{base}/v1/admin/keys"), admin).await;
        assert_eq!(status, 200, "{keys}");
        match keys["rotation"]["state"].as_str() {
            Some("finished") if keys["rotation_running"] == false && keys["rotation"]["target_version"] == target => {
                return keys;
            }
            Some("failed") => panic!("rotation failed: {keys}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "rotation did not finish: {keys}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The audit entries of `kind`, read by an auditor.
async fn audit_kinds(client: &reqwest::Client, base: &str, auditor: &str, kind: &str) -> Vec<Value> {
    let url = format!("{base}/v1/audit/entries?kind={kind}&limit=1000");
    let (status, page) = roles::get(client, url, auditor).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().iter().map(|item| item["entry"].clone()).collect()
}

fn key_file_versions(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join("kek.key"))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(':').next().unwrap().to_owned())
        .collect()
}

/// What every load task shares: the client, the base URL, the stop flag and
/// the count of acknowledged operations.
type Shared = (reqwest::Client, String, Arc<AtomicBool>, Arc<AtomicU64>);

/// Writes the customer's e-mail address until stopped; returns the index,
/// token and number of the last acknowledged write.
async fn writer(index: usize, token: String, (client, base, stop, done): Shared) -> (usize, String, u64) {
    let mut last = 0u64;
    while !stop.load(Ordering::Acquire) {
        let next = last + 1;
        let body = json!({"email": format!("c{index}-{next}@example.org")});
        let (status, answer) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&token), Some(body)).await;
        assert_eq!(status, 200, "write failed during rotation: {answer}");
        last = next;
        done.fetch_add(1, Ordering::Relaxed);
    }
    (index, token, last)
}

/// Reads the customer's e-mail address as the business until stopped.
async fn reader(
    index: usize,
    pairwise: String,
    business: String,
    (client, base, stop, done): Shared,
) -> (usize, String, u64) {
    while !stop.load(Ordering::Acquire) {
        let url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
        let (status, read) = roles::get(&client, url, &business).await;
        assert_eq!(status, 200, "read failed during rotation: {read}");
        let email = read["data"]["email"].as_str().unwrap();
        assert!(email.starts_with(&format!("c{index}-")), "{email}");
        done.fetch_add(1, Ordering::Relaxed);
    }
    (usize::MAX, String::new(), 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_read_and_write_load_fails_nothing_and_retires_the_old_kek() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let common::World { server, client, base, admin, business_id, business, auditor } =
        common::World::start(&data_dir).await;

    // Customers with data and a grant, driven over HTTP during the rotation.
    let mut customers = Vec::new();
    for index in 0..8 {
        let (_, token) = roles::customer(&client, &base).await;
        let body = json!({"email": format!("c{index}-0@example.org"), "phone": "+44 20 7946 0000"});
        let (status, _) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&token), Some(body)).await;
        assert_eq!(status, 200);
        let pairwise =
            roles::connect(&client, &base, &token, &business_id).await["pairwise_id"].as_str().unwrap().to_owned();
        let grant =
            json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90});
        let (status, body) = roles::post(&client, format!("{base}/v1/me/grants"), Some(&token), grant).await;
        assert_eq!(status, 201, "{body}");
        customers.push((token, pairwise));
    }
    // Enough other subjects that the rewrap takes many chunks.
    let vault = Arc::clone(&server.vault);
    let mut creations = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let vault = Arc::clone(&vault);
        creations.spawn(async move {
            for _ in 0..60 {
                vault.subjects().subject_create(&Actor::system()).await.unwrap();
            }
        });
    }
    creations.join_all().await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = tokio::task::JoinSet::new();
    for (index, (token, pairwise)) in customers.iter().cloned().enumerate() {
        // A writer per customer: each acknowledged write is the new truth.
        let shared = (client.clone(), base.clone(), Arc::clone(&stop), Arc::clone(&done));
        load.spawn(writer(index, token, shared));
        // A business reader per customer: every read opens the value.
        let shared = (client.clone(), base.clone(), Arc::clone(&stop), Arc::clone(&done));
        load.spawn(reader(index, pairwise, business.clone(), shared));
    }
    // New subjects while the rotation runs get DEKs under one KEK or the
    // other; the rotation must catch them all.
    {
        let (vault, stop) = (Arc::clone(&vault), Arc::clone(&stop));
        load.spawn(async move {
            while !stop.load(Ordering::Acquire) {
                vault.subjects().subject_create(&Actor::system()).await.unwrap();
            }
            (usize::MAX, String::new(), 0)
        });
    }

    let before = done.load(Ordering::Relaxed);
    let (status, started) = roles::post(&client, format!("{base}/v1/admin/keys/rotate"), Some(&admin), json!({})).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["target_version"], 2);
    assert_eq!(started["retiring_versions"], json!([1]));
    let (status, again) = roles::post(&client, format!("{base}/v1/admin/keys/rotate"), Some(&admin), json!({})).await;
    assert!(
        status == 409 && again["code"] == "rotation_in_progress" || status == 202,
        "a second rotation request either finds the first running or starts after it: {status} {again}"
    );
    let keys = rotation_finished(&client, &base, &admin, 2).await;
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Release);
    let mut last_written = Vec::new();
    while let Some(outcome) = load.join_next().await {
        let (index, token, last) = outcome.unwrap();
        if index != usize::MAX {
            last_written.push((index, token, last));
        }
    }
    assert!(during > 0, "the load ran while the rotation did");

    assert_eq!(keys["current_version"], 2);
    assert_eq!(keys["loaded_versions"], json!([2]));
    assert_eq!(keys["destroyed_versions"], json!([1]));
    assert!(keys["rotation"]["deks_rewrapped"].as_u64().unwrap() >= 64 * 60 + 8, "{keys}");
    // No wrapped DEK refers to the old KEK; the key file no longer holds it.
    let versions = vault.keys().deks_by_kek_version().unwrap();
    assert_eq!(versions.keys().copied().collect::<Vec<_>>(), vec![2], "{versions:?}");
    assert_eq!(key_file_versions(&data_dir), vec!["2"]);
    // Every value still opens, and is the last acknowledged one.
    for (index, token, last) in &last_written {
        let (status, mine) = roles::get(&client, format!("{base}/v1/me/data"), token).await;
        assert_eq!(status, 200);
        assert_eq!(mine["data"]["email"], format!("c{index}-{last}@example.org"));
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("consentvault_kek_current_version 2\n"), "{metrics}");
    assert!(metrics.contains("consentvault_kek_rotation_running 0\n"), "{metrics}");
    // Every step is in the audit log, ids and versions only.
    let steps: Vec<String> = audit_kinds(&client, &base, &auditor, "key.rotated")
        .await
        .iter()
        .map(|entry| entry["related"]["step"].as_str().unwrap().to_owned())
        .collect();
    assert!(steps.starts_with(&["started".to_owned(), "finished".to_owned(), "destroyed".to_owned()]), "{steps:?}");

    // The vault reopens with the new key file alone and serves the values.
    drop(vault);
    server.stop().await;
    let server = common::InProcessServer::start(&data_dir).await;
    let (index, token, last) = &last_written[0];
    let (status, mine) = roles::get(&client, format!("{}/v1/me/data", server.base_url), token).await;
    assert_eq!(status, 200);
    assert_eq!(mine["data"]["email"], format!("c{index}-{last}@example.org"));
    server.stop().await;
}

async fn start_with_limits(data_dir: &Path, limits: &str) -> common::InProcessServer {
    let config = data_dir.parent().unwrap().join("vault.toml");
    std::fs::write(&config, format!("[keys]\n{limits}\n")).unwrap();
    common::InProcessServer::start_with_config(data_dir, Some(config)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_at_its_wrap_limit_is_rotated_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = start_with_limits(&data_dir, "kek_wraps_max = 16").await;
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (_, token) = roles::customer(&client, &base).await;
    let body = json!({"email": "limit@example.org"});
    let (status, _) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&token), Some(body)).await;
    assert_eq!(status, 200);
    let (_, keys) = roles::get(&client, format!("{base}/v1/admin/keys"), &admin).await;
    assert_eq!(keys["rotation"], Value::Null, "one wrap is far from the limit");
    for _ in 0..15 {
        server.vault.subjects().subject_create(&Actor::system()).await.unwrap();
    }
    let keys = rotation_finished(&client, &base, &admin, 2).await;
    assert_eq!(keys["rotation"]["cause"], "encryption_limit");
    assert_eq!(keys["rotation"]["target_version"], 2);
    assert_eq!(keys["destroyed_versions"], json!([1]));
    assert_eq!(server.vault.keys().deks_by_kek_version().unwrap().keys().copied().collect::<Vec<_>>(), vec![2]);
    let (status, mine) = roles::get(&client, format!("{base}/v1/me/data"), &token).await;
    assert_eq!((status, &mine["data"]["email"]), (200, &json!("limit@example.org")));
    // The 16 rewraps that moved every DEK to version 2 do not call for
    // another rotation; 16 new wraps do.
    server.vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let (_, keys) = roles::get(&client, format!("{base}/v1/admin/keys"), &admin).await;
    assert_eq!((keys["current_version"].as_u64(), keys["rotation_running"].as_bool()), (Some(2), Some(false)));
    for _ in 0..15 {
        server.vault.subjects().subject_create(&Actor::system()).await.unwrap();
    }
    let keys = rotation_finished(&client, &base, &admin, 3).await;
    assert_eq!(keys["destroyed_versions"], json!([1, 2]), "{keys}");
    server.stop().await;
}

/// A vault whose DEKs seal at most 16 values, with a business, an auditor
/// and a customer signed in.
struct SealLimited {
    server: common::InProcessServer,
    client: reqwest::Client,
    base: String,
    business_id: String,
    business: String,
    auditor: String,
    customer_id: String,
    token: String,
}

impl SealLimited {
    async fn start(data_dir: &Path) -> Self {
        let server = start_with_limits(data_dir, "dek_seals_max = 16").await;
        let client = reqwest::Client::new();
        let base = server.base_url.clone();
        let admin = roles::admin_token(&client, &base, data_dir).await;
        let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
        let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
        let (customer_id, token) = roles::customer(&client, &base).await;
        Self { server, client, base, business_id, business, auditor, customer_id, token }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dek_at_its_seal_limit_is_replaced_and_every_value_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let SealLimited { server, client, base, business_id, business, auditor, customer_id, token } =
        SealLimited::start(&dir.path().join("data")).await;
    let pairwise =
        roles::connect(&client, &base, &token, &business_id).await["pairwise_id"].as_str().unwrap().to_owned();
    let grant =
        json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90});
    assert_eq!(roles::post(&client, format!("{base}/v1/me/grants"), Some(&token), grant).await.0, 201);
    // 20 writes of two values: 40 seals, so the DEK is replaced twice.
    for round in 0..20 {
        let body = json!({"email": format!("round-{round}@example.org"), "phone": format!("+44 20 7946 {round:04}")});
        let (status, answer) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&token), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, mine) = roles::get(&client, format!("{base}/v1/me/data"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(mine["data"], json!({"email": "round-19@example.org", "phone": "+44 20 7946 0019"}));
    let url = format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
    let (status, read) = roles::get(&client, url, &business).await;
    assert_eq!((status, &read["data"]["email"]), (200, &json!("round-19@example.org")));
    let replaced: Vec<Value> = audit_kinds(&client, &base, &auditor, "key.rotated")
        .await
        .into_iter()
        .filter(|entry| entry["related"]["step"] == "dek_replaced")
        .collect();
    assert_eq!(replaced.len(), 2, "{replaced:?}");
    assert!(replaced.iter().all(|entry| entry["subject"] == customer_id.as_str()));
    assert_eq!(replaced.last().unwrap()["related"]["dek_version"], "3");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sealed_under_a_dek_that_is_replaced_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let SealLimited { server, client, base, business_id, business, auditor, token, .. } =
        SealLimited::start(&dir.path().join("data")).await;
    let relationship = roles::connect(&client, &base, &token, &business_id).await;
    let pairwise = relationship["pairwise_id"].as_str().unwrap().to_owned();
    let contact = format!("{base}/v1/me/relationships/{}/contact", relationship["relationship_id"].as_str().unwrap());
    let preferences = json!({"kinds": ["service"], "cap": {"messages": 50, "period": "day"}, "channel": "inbox"});
    let (status, set) = send(&client, Method::PUT, contact, Some(&token), Some(preferences)).await;
    assert_eq!(status, 200, "{set}");
    // Each round seals three messages and a reply, and she deletes two of
    // the messages: 24 seals in 6 rounds, while she never holds more than
    // 14 texts (a DEK must be able to reseal all she holds and still seal).
    let (mut kept, mut replies_sent) = (Vec::new(), 0);
    for round in 0..6 {
        let mut sent_ids = Vec::new();
        for n in 0..3 {
            let body = json!({"kind": "service", "title": format!("Order {round}.{n}"), "body": format!("Parcel {round}.{n} left.")});
            let url = format!("{base}/v1/subjects/{pairwise}/messages");
            let (status, sent) = roles::post(&client, url, Some(&business), body).await;
            assert_eq!(status, 201, "{sent}");
            sent_ids.push(sent["message_id"].as_str().unwrap().to_owned());
        }
        let url = format!("{base}/v1/me/inbox/{}/reply", sent_ids[0]);
        let (status, reply) = roles::post(&client, url, Some(&token), json!({"body": format!("Thanks {round}")})).await;
        assert_eq!(status, 201, "{reply}");
        replies_sent += 1;
        for id in &sent_ids[1..] {
            let url = format!("{base}/v1/me/inbox/{id}");
            assert_eq!(send(&client, Method::DELETE, url, Some(&token), None).await.0, 204);
        }
        kept.push(format!("Parcel {round}.0 left."));
    }
    let (status, inbox) = roles::get(&client, format!("{base}/v1/me/inbox"), &token).await;
    assert_eq!(status, 200, "{inbox}");
    let bodies: Vec<&str> =
        inbox["items"].as_array().unwrap().iter().filter_map(|item| item["text"]["body"].as_str()).collect();
    assert_eq!(bodies.len(), 12, "{inbox}");
    assert!(kept.iter().all(|body| bodies.contains(&body.as_str())), "{bodies:?}");
    let (status, replies) = roles::get(&client, format!("{base}/v1/subjects/{pairwise}/replies"), &business).await;
    assert_eq!((status, replies["items"].as_array().unwrap().len()), (200, replies_sent), "{replies}");
    let replaced = audit_kinds(&client, &base, &auditor, "key.rotated").await;
    assert!(replaced.iter().filter(|entry| entry["related"]["step"] == "dek_replaced").count() >= 1, "{replaced:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_prepared_before_a_rotation_and_stored_after_it_is_under_the_new_kek() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _) = common::open_vault(&dir.path().join("data"));
    vault.subjects().subject_create(&Actor::system()).await.unwrap();
    // Its DEK is wrapped under version 1 now...
    let prepared = vault.subjects().subject_prepare().unwrap();
    let subject = prepared.id();
    tokio::task::block_in_place(|| vault.keys().kek_rotate(&Actor::system(), "admin")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vault.keys().key_status().unwrap().rotation_running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(vault.core().keys().versions(), vec![2]);
    // ...and stored only after version 1 was destroyed.
    let log = vault.audit().clone();
    let _created = vault.store().commit(move |txn| prepared.write(txn, &log, &Actor::system())).await.unwrap();
    assert_eq!(vault.keys().deks_by_kek_version().unwrap(), [(2, 2)].into_iter().collect());
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("late@example.org")).await.unwrap();
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap()["email"], json!("late@example.org"));
    vault.close().unwrap();
}

fn env_options(data_dir: &Path, keys: &str) -> VaultOptions {
    VaultOptions {
        key_source: Some(KeySource::Env(Zeroizing::new(keys.to_owned()))),
        ..common::vault_options(data_dir, &common::policies_dir())
    }
}

fn random_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = consentvault::crypto::random_bytes(&ring::rand::SystemRandom::new()).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_kek_in_the_environment_rotation_adopts_a_version_the_operator_added() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (one, two) = (random_key(), random_key());
    let (vault, _) = Vault::open(env_options(&data_dir, &format!("1:{one}"))).unwrap();
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("env@example.org")).await.unwrap();
    let refused = tokio::task::block_in_place(|| vault.keys().kek_rotate(&Actor::system(), "admin"));
    assert!(matches!(refused, Err(KeyError::SourceReadOnly { next: 2 })), "{refused:?}");
    vault.close().unwrap();
    drop(vault);

    // The operator adds version 2 and restarts: the rotation moves to it.
    let (vault, _) = Vault::open(env_options(&data_dir, &format!("1:{one};2:{two}"))).unwrap();
    let started = tokio::task::block_in_place(|| vault.keys().kek_rotate(&Actor::system(), "admin")).unwrap();
    assert_eq!((started.target_version, started.retiring_versions.clone()), (2, vec![1]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while vault.keys().key_status().unwrap().rotation_running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(vault.core().keys().versions(), vec![2], "the destroyed version is forgotten");
    vault.close().unwrap();
    drop(vault);

    // Version 1 left in the environment is ignored; version 2 alone opens it.
    let (vault, _) = Vault::open(env_options(&data_dir, &format!("1:{one};2:{two}"))).unwrap();
    assert_eq!(vault.core().keys().versions(), vec![2]);
    vault.close().unwrap();
    drop(vault);
    let (vault, _) = Vault::open(env_options(&data_dir, &format!("2:{two}"))).unwrap();
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap()["email"], json!("env@example.org"));
    vault.close().unwrap();
    drop(vault);
    // Version 1 alone no longer opens the vault.
    assert!(Vault::open(env_options(&data_dir, &format!("1:{one}"))).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rotates_a_stopped_vault_and_the_log_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (vault, _) = common::open_vault(&data_dir);
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &json!("cli@example.org")).await.unwrap();
    vault.close().unwrap();
    drop(vault);

    let policies = common::policies_dir();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_consentvault"))
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(common::postgres::store_url(&data_dir).map(|url| format!("--store={url}")))
            .arg("--policies")
            .arg(&policies)
            .env_remove("CONSENTVAULT_KEK")
            .output()
            .unwrap()
    };
    let rotated = run(&["keys", "rotate"]);
    let stderr = String::from_utf8_lossy(&rotated.stderr);
    assert!(rotated.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("version 2"), "{stderr}");
    assert_eq!(key_file_versions(&data_dir), vec!["2"]);
    let status = run(&["keys", "status", "--format", "json"]);
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["destroyed_versions"], json!([1]));
    assert_eq!(status["rotation"]["cause"], "cli");
    let verified = run(&["audit", "verify"]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    let (vault, _) = common::open_vault(&data_dir);
    assert_eq!(vault.subjects().data_read_own(subject).await.unwrap()["email"], json!("cli@example.org"));
    vault.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rotates_a_running_vault_through_its_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = roles::admin_token(&client, &base, &data_dir).await;
    let (_, customer) = roles::customer(&client, &base).await;
    let body = json!({"email": "socket@example.org"});
    let (status, _) = send(&client, Method::PUT, format!("{base}/v1/me/data"), Some(&customer), Some(body)).await;
    assert_eq!(status, 200);

    let rotated = std::process::Command::new(env!("CARGO_BIN_EXE_consentvault"))
        .args(["keys", "rotate", "--data-dir"])
        .arg(&data_dir)
        .arg("--policies")
        .arg(common::policies_dir())
        .env_remove("CONSENTVAULT_KEK")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rotated.stderr);
    assert!(rotated.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("version 2 current"), "{stderr}");

    // The serving process did it: its key file, its memory, its audit log.
    assert_eq!(key_file_versions(&data_dir), vec!["2"]);
    let (_, keys) = roles::get(&client, format!("{base}/v1/admin/keys"), &admin).await;
    assert_eq!((keys["loaded_versions"].clone(), keys["rotation"]["cause"].clone()), (json!([2]), json!("cli")));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_consentvault"))
        .args(["keys", "status", "--format", "json", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["destroyed_versions"], json!([1]), "the running vault answered");
    let (status, mine) = roles::get(&client, format!("{base}/v1/me/data"), &customer).await;
    assert_eq!((status, &mine["data"]["email"]), (200, &json!("socket@example.org")));
    assert!(server.terminate().success());
}
