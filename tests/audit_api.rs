//! The audit routes, checked the way an outside auditor would: with an
//! RFC 9162 verifier written here from the RFC text (SHA-256 from the `sha2`
//! crate, not ring) and the checkpoint signature checked with ed25519-dalek.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use consentvault::audit::Actor;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn leaf(entry: &[u8]) -> Hash {
    sha256(&[&[0], entry])
}

fn node(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1], left, right])
}

/// RFC 9162 §2.1.3.2.
fn verify_inclusion(index: u64, size: u64, leaf_hash: Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf_hash;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// RFC 9162 §2.1.4.2.
fn verify_consistency(first: u64, second: u64, first_hash: &Hash, second_hash: &Hash, proof: &[Hash]) -> bool {
    if first == second {
        return proof.is_empty() && first_hash == second_hash;
    }
    if first == 0 || first > second {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_hash);
    }
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some((&start, rest)) = path.split_first() else { return false };
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == first_hash && &sr == second_hash
}

/// Opens a signed checkpoint with the verifier key, the way the C2SP
/// signed-note spec describes it; returns (origin, size, root).
fn open_checkpoint(note: &str, verifier_key: &str) -> (String, u64, Hash) {
    let mut key_parts = verifier_key.trim().splitn(3, '+');
    let (name, key_id_hex, key_b64) = (key_parts.next().unwrap(), key_parts.next().unwrap(), key_parts.next().unwrap());
    let key_bytes = STANDARD.decode(key_b64).unwrap();
    assert_eq!(key_bytes[0], 1, "Ed25519 signature type");
    let public: [u8; 32] = key_bytes[1..].try_into().unwrap();
    let key_id = &sha256(&[name.as_bytes(), b"\n", &[1], &public])[..4];
    assert_eq!(hex(key_id), key_id_hex, "key id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[..4]");

    let split = note.rfind("\n\n").unwrap();
    let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
    let line = signatures.lines().find(|l| l.starts_with(&format!("\u{2014} {name} "))).unwrap();
    let signature = STANDARD.decode(line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(&signature[..4], key_id);
    let verifying = VerifyingKey::from_bytes(&public).unwrap();
    let signature = Signature::from_slice(&signature[4..]).unwrap();
    verifying.verify(body.as_bytes(), &signature).expect("ed25519-dalek accepts the checkpoint signature");

    let mut lines = body.lines();
    let origin = lines.next().unwrap().to_owned();
    let size = lines.next().unwrap().parse().unwrap();
    let root = STANDARD.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    (origin, size, root)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hashes(value: &Value) -> Vec<Hash> {
    value["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_auditor_verifies_entries_proofs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = common::InProcessServer::start(&data_dir).await;
    let (vault, base) = (server.vault.clone(), server.base_url.clone());

    // Activity: two customers write and read their data.
    let mut subjects = Vec::new();
    for email in ["ada@example.org", "grace@example.org"] {
        let subject = vault.subject_create(&Actor::system()).await.unwrap();
        vault.data_put(&Actor::customer(subject), subject, "email", &json!(email)).await.unwrap();
        vault.data_read_own(subject).await.unwrap();
        subjects.push(subject);
    }
    let first_note = vault.checkpoint_now().await.unwrap();
    vault.data_put(&Actor::customer(subjects[0]), subjects[0], "country", &json!("GB")).await.unwrap();
    vault.data_read_own(subjects[0]).await.unwrap();
    vault.checkpoint_now().await.unwrap();

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
    let subject = server.vault.subject_create(&Actor::system()).await.unwrap();
    server.vault.data_put(&Actor::customer(subject), subject, "email", &json!("ada@example.org")).await.unwrap();
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
