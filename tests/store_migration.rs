//! A store written by a build of format 1 (each kind of subject record in a
//! space of its own) opens in this build: offline tools read it as it is,
//! `serve` moves its subject records next to each other (format 2), and
//! every role then finds what it had, with a log that still verifies.
//!
//! The fixture in `tests/fixtures/format-1` is a backup made by such a build
//! (`make.sh` there says how): three customers with data, two relationships
//! each, a grant and a pending request, two reads by the business each, and
//! an objection.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::roles::{client_token, get, post, send};
use common::{ServerProcess, binary, restore};
use consentvault::ids::SubjectId;
use consentvault::store::migrate::FORMAT_1_SUBJECT_SPACES;
use consentvault::store::sled_backend::SledBackend;
use consentvault::store::{Backend, Key, Part};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1").join(name)
}

fn succeeded(output: &Output) -> bool {
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.success()
}

/// Every stored key of the store in `data_dir`, with the stored format.
fn stored_keys(data_dir: &Path) -> (String, Vec<Vec<u8>>) {
    let backend = SledBackend::open(&data_dir.join("store"), 16 << 20).unwrap();
    let format = String::from_utf8(backend.get(Key::meta("format").as_bytes()).unwrap().unwrap()).unwrap();
    let keys = backend.scan(&[0x00], &[0xFF], usize::MAX).unwrap().into_iter().map(|(key, _)| key).collect();
    (format, keys)
}

fn in_format_1_spaces(keys: &[Vec<u8>]) -> usize {
    keys.iter().filter(|key| FORMAT_1_SUBJECT_SPACES.iter().any(|(space, _)| key.first() == Some(space))).count()
}

fn ids(list: &Value, name: &str) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|item| item[name].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_format_1_store_is_moved_at_serve_and_every_role_finds_what_it_had() {
    let credentials: Value = serde_json::from_slice(&std::fs::read(fixture("credentials.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek.key");
    std::fs::copy(fixture("kek.key"), &kek).unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let data_dir = dir.path().join("data");
    let restored = restore(&fixture("vault.backup"), &data_dir, Some(&kek));
    assert!(succeeded(&restored), "a format-1 backup restores");
    // The key goes where the vault looks for it by default.
    std::fs::copy(&kek, data_dir.join("kek.key")).unwrap();
    let verified = || {
        let (ok, _, stderr) = common::audit_verify(&data_dir);
        if !ok {
            eprintln!("{stderr}");
        }
        ok
    };

    // Restored as it was written; offline tools read it as it is.
    let (format, keys) = stored_keys(&data_dir);
    assert_eq!(format, "1");
    let old_records = in_format_1_spaces(&keys);
    assert!(old_records >= 3 * 8, "the fixture's subject records are in format-1 spaces: {old_records}");
    assert!(keys.iter().all(|key| Part::of(key).is_none()));
    assert!(verified());
    assert_eq!(stored_keys(&data_dir).0, "1", "verifying changed nothing");

    // Another vault's key is refused before anything moves.
    let other = dir.path().join("other");
    assert!(succeeded(&binary([OsStr::new("init"), "--data-dir".as_ref(), other.as_ref()])));
    let other_kek = other.join("kek.key");
    let refused = ServerProcess::start(&data_dir, &["--kek-file", other_kek.to_str().unwrap()], &[]).err().unwrap();
    assert!(refused.contains("does not match this data directory"), "{refused}");
    assert_eq!(stored_keys(&data_dir), (format, keys), "a refused start moved nothing");

    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    let http = reqwest::Client::new();
    let text = |value: &Value| value.as_str().unwrap().to_owned();
    let acme = &credentials["acme"];
    let acme_id = text(&acme["business_id"]);
    let acme_token = client_token(&http, &base, &text(&acme["client_id"]), &text(&acme["client_secret"])).await;
    let password = text(&credentials["customer_password"]);

    for customer in credentials["customers"].as_array().unwrap() {
        let customer_id = text(&customer["customer_id"]);
        let body = json!({"grant_type": "password", "username": customer_id, "password": password});
        let (status, token) = post(&http, format!("{base}/v1/token"), None, body).await;
        assert_eq!(status, 200, "{token}");
        let me = text(&token["access_token"]);

        // The customer's values open under the moved key.
        let (status, data) = get(&http, format!("{base}/v1/me/data"), &me).await;
        assert_eq!(status, 200, "{data}");
        assert_eq!(data["data"], json!({"email": customer["email"], "phone": customer["phone"]}));
        let (_, relationships) = get(&http, format!("{base}/v1/me/relationships"), &me).await;
        let mut connected = ids(&relationships, "business_id");
        connected.sort();
        let mut expected = vec![acme_id.clone(), text(&credentials["globex_id"])];
        expected.sort();
        assert_eq!(connected, expected);
        let (_, grants) = get(&http, format!("{base}/v1/me/grants"), &me).await;
        assert!(ids(&grants, "grant_id").contains(&text(&customer["grant_id"])), "{grants}");
        let (_, requests) = get(&http, format!("{base}/v1/me/access-requests"), &me).await;
        assert!(ids(&requests, "request_id").contains(&text(&customer["request_id"])), "{requests}");
        let (_, objections) = get(&http, format!("{base}/v1/me/objections"), &me).await;
        let objects = objections.to_string().contains("marketing");
        assert_eq!(objects, customer["objects_to_marketing"].as_bool().unwrap(), "{objections}");

        // The two reads before the move are in the customer's access log.
        let business_reads = |log: &Value| -> Vec<Value> {
            let items = log["items"].as_array().unwrap();
            items.iter().filter(|read| read["role"] == "business").cloned().collect()
        };
        let (_, log) = get(&http, format!("{base}/v1/me/access-log"), &me).await;
        let reads = business_reads(&log);
        assert_eq!(reads.len(), 2, "{log}");
        assert!(reads.iter().all(|read| read["business_id"] == json!(acme_id) && read["decision"] == "allow"));

        // A grant given now relies on the moved relationship, pairwise id,
        // key and values; the read is logged next to the old ones.
        let body =
            json!({"business_id": acme_id, "purposes": ["order-fulfilment"], "fields": ["phone"], "duration_days": 30});
        let (status, grant) = post(&http, format!("{base}/v1/me/grants"), Some(&me), body).await;
        assert_eq!(status, 201, "{grant}");
        let pairwise = text(&customer["pairwise_id"]);
        let url = format!("{base}/v1/subjects/{pairwise}/data?purpose=order-fulfilment&fields=phone");
        let (status, read) = get(&http, url, &acme_token).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"], json!({"phone": customer["phone"]}));
        let (_, log) = get(&http, format!("{base}/v1/me/access-log"), &me).await;
        assert_eq!(business_reads(&log).len(), 3, "{log}");
    }

    // Erasure finds the moved records.
    let erased = &credentials["customers"][1];
    let body = json!({"grant_type": "password", "username": erased["customer_id"], "password": password});
    let (_, token) = post(&http, format!("{base}/v1/token"), None, body).await;
    let url = format!("{base}/v1/me");
    let (status, receipt) = send(
        &http,
        reqwest::Method::DELETE,
        url,
        Some(token["access_token"].as_str().unwrap()),
        Some(json!({"confirm": "erase"})),
    )
    .await;
    assert_eq!(status, 200, "{receipt}");
    let stderr = server.stderr_text();
    assert_eq!(server.terminate().code(), Some(0));
    assert!(stderr.contains("the store has format 2"), "{stderr}");

    let (format, keys) = stored_keys(&data_dir);
    assert_eq!(format, "2");
    assert_eq!(in_format_1_spaces(&keys), 0, "every format-1 record moved");
    let erased_subject: SubjectId = erased["customer_id"].as_str().unwrap().parse().unwrap();
    let erased_records: Vec<Part> = keys
        .iter()
        .filter(|key| key.get(1..17) == Some(&erased_subject.as_bytes()[..]))
        .filter_map(|key| Part::of(key))
        .collect();
    // Revoked grants, closed requests and access-log markers stay (ids
    // only); the key, the values, relationships and objections are gone.
    assert!(erased_records.contains(&Part::AuditMarker) && erased_records.contains(&Part::Grant));
    let kept = [Part::Grant, Part::Request, Part::AuditMarker];
    assert!(erased_records.iter().all(|part| kept.contains(part)), "{erased_records:?}");
    assert!(verified());

    // A second start has nothing to move.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let (status, _) = get(&http, format!("{}/readyz", server.base_url), "").await;
    assert_eq!(status, 200);
    let stderr = server.stderr_text();
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!stderr.contains("format 1"), "{stderr}");

    // A format this build does not know is refused, and left as it is.
    let backend = SledBackend::open(&data_dir.join("store"), 16 << 20).unwrap();
    let mut batch = consentvault::store::WriteBatch::new();
    batch.insert(Key::meta("format").as_bytes().to_vec(), Some(b"3".to_vec()));
    backend.apply(&batch).unwrap();
    backend.flush().unwrap();
    drop(backend);
    let before = stored_keys(&data_dir);
    let refused = ServerProcess::start(&data_dir, &[], &[]).err().unwrap();
    assert!(refused.contains("the store has format 3, this build reads formats 1 and 2"), "{refused}");
    assert_eq!(stored_keys(&data_dir), before);
}
