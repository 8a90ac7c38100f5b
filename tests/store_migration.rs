//! Stores written by earlier builds open in this build: format 1 (each kind
//! of subject record in a space of its own) and format 2 (a key per audit
//! entry). Offline tools read them as they are; `serve` moves them to
//! format 3 (subject records side by side, audit entries in records of a
//! batch each), and every role then finds what it had, with a log that
//! still verifies.
//!
//! The fixtures in `tests/fixtures/format-1` and `format-2` are backups made
//! by such builds (`tests/fixtures/make.sh` says how): three customers with data,
//! two relationships each, a grant and a pending request, two reads by the
//! business each, and an objection.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::roles::{client_token, get, post, send};
use common::{ServerProcess, binary, restore};
use consentvault::audit::STORED_LEVEL_MIN;
use consentvault::ids::SubjectId;
use consentvault::store::migrate::FORMAT_1_SUBJECT_SPACES;
use consentvault::store::sled_backend::SledBackend;
use consentvault::store::{Backend, Key, Part};
use serde_json::{Value, json};

fn fixture(format: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{format}")).join(name)
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

/// Keys of format 2's audit layout: an entry per key, and subtree hashes
/// below the levels format 3 stores.
fn in_format_2_audit_layout(keys: &[Vec<u8>]) -> usize {
    let low_node = |key: &Vec<u8>| key[0] == 0x11 && u32::from(key[1]) < STORED_LEVEL_MIN;
    keys.iter().filter(|key| key[0] == 0x10 || low_node(key)).count()
}

fn in_records(keys: &[Vec<u8>]) -> usize {
    keys.iter().filter(|key| key[0] == 0x15).count()
}

/// The store of `backup`, written into `data_dir` key for key, as the
/// build that made it had it (a restore would move it to this format).
fn write_as_is(backup: &Path, data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::set_permissions(data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let backend = SledBackend::open(&data_dir.join("store"), 16 << 20).unwrap();
    consentvault::backup::read(backup, &mut |writes| {
        backend.apply(&writes.into_iter().collect()).unwrap();
        Ok(())
    })
    .unwrap();
    backend.flush().unwrap();
}

fn ids(list: &Value, name: &str) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|item| item[name].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_format_1_store_is_moved_at_serve_and_every_role_finds_what_it_had() {
    moved_at_serve("1").await;
}

#[tokio::test]
async fn a_format_2_store_is_moved_at_serve_and_every_role_finds_what_it_had() {
    moved_at_serve("2").await;
}

async fn moved_at_serve(from: &str) {
    let fixture = |name: &str| fixture(from, name);
    let credentials: Value = serde_json::from_slice(&std::fs::read(fixture("credentials.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek.key");
    std::fs::copy(fixture("kek.key"), &kek).unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let verified = |data_dir: &Path| {
        let (ok, _, stderr) = common::audit_verify(data_dir);
        if !ok {
            eprintln!("{stderr}");
        }
        ok
    };

    // A restore verifies the log as the backup holds it, then moves the
    // store to format 3 and logs the restore there.
    let restored_dir = dir.path().join("restored");
    let restored = restore(&fixture("vault.backup"), &restored_dir, Some(&kek));
    assert!(succeeded(&restored), "a format-{from} backup restores");
    std::fs::copy(&kek, restored_dir.join("kek.key")).unwrap();
    let (format, keys) = stored_keys(&restored_dir);
    assert_eq!(format, "3");
    assert_eq!(in_format_1_spaces(&keys) + in_format_2_audit_layout(&keys), 0);
    assert!(verified(&restored_dir));

    // The data directory as the earlier build left it: the backup's keys,
    // written as they are.
    let data_dir = dir.path().join("data");
    write_as_is(&fixture("vault.backup"), &data_dir);
    // The key goes where the vault looks for it by default.
    std::fs::copy(&kek, data_dir.join("kek.key")).unwrap();
    let verified = || verified(&data_dir);

    // Restored as it was written; offline tools read it as it is.
    let (format, keys) = stored_keys(&data_dir);
    assert_eq!(format, from);
    if from == "1" {
        let old_records = in_format_1_spaces(&keys);
        assert!(old_records >= 3 * 8, "the fixture's subject records are in format-1 spaces: {old_records}");
        assert!(keys.iter().all(|key| Part::of(key).is_none()));
    }
    let entries = in_format_2_audit_layout(&keys);
    assert!(entries >= 3 * 8, "the fixture's audit entries have a key each: {entries}");
    assert_eq!(in_records(&keys), 0);
    assert!(verified());
    assert_eq!(stored_keys(&data_dir), (format.clone(), keys.clone()), "verifying changed nothing");

    // Another vault's key is refused before anything moves.
    let other = dir.path().join("other");
    assert!(succeeded(&binary([OsStr::new("init"), "--data-dir".as_ref(), other.as_ref()])));
    let other_kek = other.join("kek.key");
    let refused = ServerProcess::start(&data_dir, &["--kek-file", other_kek.to_str().unwrap()], &[]).err().unwrap();
    assert!(refused.contains("is not the one this store was sealed with"), "{refused}");
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
    assert_eq!(stderr.contains("moving subject records"), from == "1", "{stderr}");
    assert!(stderr.contains("the store has format 3"), "{stderr}");

    let (format, keys) = stored_keys(&data_dir);
    assert_eq!(format, "3");
    assert_eq!(in_format_1_spaces(&keys), 0, "every format-1 record moved");
    assert_eq!(in_format_2_audit_layout(&keys), 0, "every audit entry moved");
    assert!(in_records(&keys) > 0);
    let erased_subject: SubjectId = erased["customer_id"].as_str().unwrap().parse().unwrap();
    let erased_records: Vec<Part> = keys
        .iter()
        .filter(|key| key.get(1..17) == Some(&erased_subject.as_bytes()[..]))
        .filter_map(|key| Part::of(key))
        .collect();
    // Revoked grants, their signed receipts, closed requests and access-log
    // markers stay (ids only); the key, the values, relationships and
    // objections are gone.
    assert!(erased_records.contains(&Part::AuditMarker) && erased_records.contains(&Part::Grant));
    let kept = [Part::Grant, Part::Receipt, Part::Request, Part::AuditMarker];
    assert!(erased_records.iter().all(|part| kept.contains(part)), "{erased_records:?}");
    assert!(verified());

    // A second start has nothing to move.
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let (status, _) = get(&http, format!("{}/readyz", server.base_url), "").await;
    assert_eq!(status, 200);
    let stderr = server.stderr_text();
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!stderr.contains("moving"), "{stderr}");

    // A format this build does not know is refused, and left as it is.
    let backend = SledBackend::open(&data_dir.join("store"), 16 << 20).unwrap();
    let mut batch = consentvault::store::WriteBatch::new();
    batch.insert(Key::meta("format").as_bytes().to_vec(), Some(b"4".to_vec()));
    backend.apply(&batch).unwrap();
    backend.flush().unwrap();
    drop(backend);
    let before = stored_keys(&data_dir);
    let refused = ServerProcess::start(&data_dir, &[], &[]).err().unwrap();
    assert!(refused.contains("the store has format 4, this build reads formats 1, 2 and 3"), "{refused}");
    assert_eq!(stored_keys(&data_dir), before);
}
