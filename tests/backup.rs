//! `consentvault backup` and `consentvault restore` with the real binary: a
//! backup taken through the control socket while customers keep writing
//! over HTTP restores to a vault that verifies and serves; an offline backup
//! restores every stored key and value; damaged files, occupied targets and
//! wrong keys are refused without leaving a vault behind; a backup taken
//! before a KEK rotation needs the key file kept with it; the control socket
//! is private and goes away at shutdown; and no personal value is in a
//! backup file in clear.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use common::roles::{admin_token, client_principal, connect, customer, get, post};
use common::{ServerProcess, binary, restore};
use consentvault::audit::Actor;
use consentvault::audit::checkpoint::{Checkpoint, NoteVerifier};
use consentvault::audit::merkle::{Hash, verify_consistency};
use consentvault::store::sled_backend::SledBackend;
use consentvault::store::{Backend, Key};
use serde_json::{Value, json};

const CANARY: &str = "canary-7f3a9c@example.org";
const PASSWORD: &str = "correct horse battery staple";

fn backup(data_dir: &Path, out: &Path) -> Output {
    backup_in_chunks(data_dir, out, 1000)
}

fn backup_in_chunks(data_dir: &Path, out: &Path, chunk_keys: u32) -> Output {
    let chunk_keys = chunk_keys.to_string();
    let args: [&OsStr; 7] = [
        "backup".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_ref(),
        "--out".as_ref(),
        out.as_ref(),
        "--chunk-keys".as_ref(),
        chunk_keys.as_ref(),
    ];
    binary(args)
}

fn audit_verify(data_dir: &Path, kek: &Path) -> Output {
    let policies = common::policies_dir();
    let args: [&OsStr; 8] = [
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_ref(),
        "--kek-file".as_ref(),
        kek.as_ref(),
        "--policies".as_ref(),
        policies.as_ref(),
    ];
    binary(args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A stopped vault in `<dir>/data` holding three customers' data, one of
/// them the canary.
async fn stopped_vault(dir: &Path) -> PathBuf {
    let data_dir = dir.join("data");
    let (vault, _) = common::open_vault(&data_dir);
    for (index, email) in [CANARY, "second@example.org", "third@example.org"].into_iter().enumerate() {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        let actor = Actor::customer(subject);
        vault.subjects().data_put(&actor, subject, "email", &json!(email)).await.unwrap();
        vault.subjects().data_put(&actor, subject, "loyalty_points", &json!(index * 10)).await.unwrap();
        vault.subjects().data_read_own(subject).await.unwrap();
    }
    vault.close().unwrap();
    data_dir
}

/// A stopped vault (`stopped_vault`) and its offline backup: (temporary
/// directory, data directory, backup file).
async fn backed_up_vault() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = stopped_vault(dir.path()).await;
    let file = dir.path().join("vault.backup");
    let made = backup(&data_dir, &file);
    assert!(made.status.success(), "{}", text(&made.stderr));
    (dir, data_dir, file)
}

/// Every key and value of the store in `data_dir`.
fn store_entries(data_dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let backend = SledBackend::open(&data_dir.join("store"), 16 * 1024 * 1024).unwrap();
    backend.scan(&[], &[], usize::MAX).unwrap().into_iter().collect()
}

#[tokio::test]
async fn offline_backup_of_a_stopped_vault_restores_every_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = stopped_vault(dir.path()).await;
    let file = dir.path().join("vault.backup");
    let made = backup(&data_dir, &file);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let stdout = text(&made.stdout);
    assert!(stdout.starts_with("ok: wrote") && stdout.contains(" 0 redo batches"), "{stdout}");
    assert!(text(&made.stderr).contains("back up the key file apart"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let target = dir.path().join("restored");
    let kek = data_dir.join("kek.key");
    let restored = restore(&file, &target, Some(&kek));
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let verified = audit_verify(&target, &kek);
    assert!(verified.status.success(), "{}", text(&verified.stderr));

    // Every stored key holds the same bytes, except the records the
    // restore's own audit event advances; what the restore added is that
    // event's record, a subtree hash if it completed one, and its checkpoint.
    let original = store_entries(&data_dir);
    let copy = store_entries(&target);
    let advanced: Vec<Vec<u8>> = ["audit/size", "audit/frontier", "audit/checkpoint", "audit/checkpoint-note"]
        .iter()
        .map(|name| Key::meta(name).as_bytes().to_vec())
        .collect();
    for (key, value) in &original {
        if !advanced.contains(key) {
            assert_eq!(copy.get(key), Some(value), "key {key:?} differs");
        }
    }
    let added: Vec<&Vec<u8>> = copy.keys().filter(|key| !original.contains_key(*key)).collect();
    let size = u64::from_be_bytes(original[&advanced[0]].as_slice().try_into().unwrap());
    assert!(added.iter().all(|key| [0x11, 0x12, 0x15].contains(&key[0])), "{added:?}");
    let record = consentvault::audit::records::record_entries(&copy[Key::audit_record(size).as_bytes()]).unwrap();
    assert_eq!(record.len(), 1, "the restore's event is a batch of its own");
    let event: Value = serde_json::from_slice(record[0]).unwrap();
    assert_eq!(event["kind"], "vault.restored");
    assert_eq!(event["related"]["backup_checkpoint_size"], size.to_string());
}

#[tokio::test]
async fn a_backup_file_holds_no_personal_value_in_clear() {
    let (_dir, _, file) = backed_up_vault().await;
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 1000, "the backup holds the sealed store");
    for needle in [CANARY, "second@example.org", "canary-7f3a9c"] {
        assert!(!common::contains(&bytes, needle.as_bytes()), "{needle} is in the backup in clear");
    }
    // The scan itself finds a value that is there in clear.
    assert!(common::contains(&bytes, b"data.written"));
}

#[tokio::test]
async fn a_tampered_or_truncated_backup_is_refused_and_leaves_no_vault() {
    let (dir, data_dir, file) = backed_up_vault().await;
    let kek = data_dir.join("kek.key");
    let good = std::fs::read(&file).unwrap();

    let mut in_trailer = good.clone();
    let at = good.len() - 40;
    in_trailer[at] ^= 0x01;
    let mut in_the_middle = good.clone();
    in_the_middle[good.len() / 2] ^= 0x01;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        ("edited trailer", in_trailer, "SHA-256 does not match"),
        ("edited record", in_the_middle, "the file was changed or damaged"),
        ("not a backup", b"just some text".to_vec(), "not a consentvault backup"),
    ];
    for (name, bytes, expected) in cases {
        let bad = dir.path().join(format!("{name}.backup"));
        std::fs::write(&bad, bytes).unwrap();
        let target = dir.path().join(format!("target-{name}"));
        let refused = restore(&bad, &target, Some(&kek));
        assert!(!refused.status.success(), "{name} was restored");
        let stderr = text(&refused.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!target.exists(), "{name}: a refused restore leaves nothing behind");
    }
    // An empty directory given as the target stays, empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let bad = dir.path().join("truncated.backup");
    assert!(!restore(&bad, &empty, Some(&kek)).status.success());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[tokio::test]
async fn restore_refuses_an_occupied_target_a_wrong_key_and_a_missing_key() {
    let (dir, data_dir, file) = backed_up_vault().await;
    let kek = data_dir.join("kek.key");

    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let refused = restore(&file, &occupied, Some(&kek));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("is not empty"), "{}", text(&refused.stderr));
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1, "an occupied target is left as it was");

    // Another vault's key: the key check refuses it after the file checked out.
    let other = dir.path().join("other");
    assert!(binary([OsStr::new("init"), "--data-dir".as_ref(), other.as_ref()]).status.success());
    let target = dir.path().join("target");
    let refused = restore(&file, &target, Some(&other.join("kek.key")));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("is not the one this store was sealed with"), "{}", text(&refused.stderr));
    assert!(!target.exists(), "a restore refused for its key leaves nothing behind");

    let refused = restore(&file, &target, None);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("--kek-file"), "{}", text(&refused.stderr));
    assert!(!target.exists());
}

#[tokio::test]
async fn a_backup_needs_the_key_versions_it_was_taken_under_and_a_rotation_retires_them() {
    let (dir, data_dir, before_rotation) = backed_up_vault().await;
    let kek = data_dir.join("kek.key");
    let old_key_copy = dir.path().join("kek-at-backup.key");
    std::fs::copy(&kek, &old_key_copy).unwrap();
    let rotated = binary([OsStr::new("keys"), "rotate".as_ref(), "--data-dir".as_ref(), data_dir.as_ref()]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let after_rotation = dir.path().join("after-rotation.backup");
    assert!(backup(&data_dir, &after_rotation).status.success());

    let target = dir.path().join("after");
    let restored = restore(&after_rotation, &target, Some(&kek));
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    // The rotated key file no longer holds the version the older backup's
    // data keys are wrapped with; the copy kept with that backup does.
    let target = dir.path().join("before-with-new-key");
    let refused = restore(&before_rotation, &target, Some(&kek));
    assert!(!refused.status.success());
    // The message names the version the backup needs and the one offered.
    let message = text(&refused.stderr);
    assert!(message.contains("sealed under key-encryption key version(s) [1]"), "{message}");
    assert!(message.contains("the key file holds version(s) [2]"), "{message}");
    assert!(!target.exists());
    let target = dir.path().join("before-with-kept-key");
    let restored = restore(&before_rotation, &target, Some(&old_key_copy));
    assert!(restored.status.success(), "{}", text(&restored.stderr));
}

#[tokio::test]
async fn the_control_socket_is_private_speaks_json_lines_and_goes_away_at_shutdown() {
    use std::io::{BufRead, BufReader, Write as _};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let socket = data_dir.join("control.sock");
    let ask = |line: &str| {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        let answer: Value = serde_json::from_str(&BufReader::new(stream).lines().next().unwrap().unwrap()).unwrap();
        answer
    };

    // A server killed with SIGKILL leaves its socket behind; the next one
    // replaces it.
    drop(ServerProcess::start(&data_dir, &[], &[]).unwrap());
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let metadata = std::fs::metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);

    let unknown = ask("{\"command\":\"format_disk\"}\n");
    assert_eq!(unknown["status"], "error");
    assert!(unknown["error"].as_str().unwrap().contains("not a control request"), "{unknown}");
    let relative = ask("{\"command\":\"backup\",\"out\":\"relative.backup\"}\n");
    assert_eq!(relative["status"], "error");
    assert!(relative["error"].as_str().unwrap().contains("absolute"), "{relative}");
    // The server's refusal reaches the command line.
    let taken = dir.path().join("taken.backup");
    std::fs::write(&taken, "an earlier backup").unwrap();
    let refused = backup(&data_dir, &taken);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("exists already"), "{}", text(&refused.stderr));
    assert_eq!(std::fs::read(&taken).unwrap(), b"an earlier backup");

    assert!(server.terminate().success());
    assert!(!socket.exists(), "a clean shutdown removes the socket");
}

/// One write a writer had acknowledged, and when.
#[derive(Debug, Clone)]
enum Write {
    /// `email` set to the writer's value number `n`.
    Email(u64),
    /// A grant created.
    Grant(String),
}

fn email(writer: usize, n: u64) -> String {
    format!("w{writer}-{n}@example.org")
}

fn email_number(value: &str) -> u64 {
    value.split_once('-').unwrap().1.split_once('@').unwrap().0.parse().unwrap()
}

async fn checkpoint(client: &reqwest::Client, base: &str, verifier: &NoteVerifier) -> Checkpoint {
    let note = client.get(format!("{base}/v1/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    verifier.open_checkpoint(&note, verifier.name()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_to_a_vault_that_verifies_and_serves() {
    const WRITERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[], &[]).unwrap();
    let base = server.base_url.clone();
    let client = reqwest::Client::new();
    let admin = admin_token(&client, &base, &data_dir).await;
    let (business_id, business) = client_principal(&client, &base, &admin, "businesses").await;
    let (_, auditor) = client_principal(&client, &base, &admin, "auditors").await;
    let key = client.get(format!("{base}/v1/audit/public-key")).send().await.unwrap().text().await.unwrap();
    let verifier = NoteVerifier::parse(key.trim()).unwrap();
    let grant_body =
        json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 90});

    let mut customers = Vec::new();
    for _ in 0..WRITERS {
        let (customer_id, token) = customer(&client, &base).await;
        let pairwise = connect(&client, &base, &token, &business_id).await["pairwise_id"].as_str().unwrap().to_owned();
        let (status, grant) = post(&client, format!("{base}/v1/me/grants"), Some(&token), grant_body.clone()).await;
        assert_eq!(status, 201, "{grant}");
        customers.push((customer_id, token, pairwise, grant["grant_id"].as_str().unwrap().to_owned()));
    }

    // Each writer sets its customer's e-mail address again and again, and
    // creates a grant every fourth time; every acknowledgement is recorded
    // with the moment it arrived.
    let acked: Arc<Mutex<Vec<(Instant, usize, Write)>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (writer, (_, token, _, _)) in customers.iter().enumerate() {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let (acked, progress, stop, grant_body) =
            (Arc::clone(&acked), Arc::clone(&progress), Arc::clone(&stop), grant_body.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = json!({"email": email(writer, n)});
                let (status, answer) = common::roles::send(
                    &client,
                    reqwest::Method::PUT,
                    format!("{base}/v1/me/data"),
                    Some(&token),
                    Some(body),
                )
                .await;
                assert_eq!(status, 200, "{answer}");
                acked.lock().unwrap().push((Instant::now(), writer, Write::Email(n)));
                if n.is_multiple_of(4) {
                    let (status, grant) =
                        post(&client, format!("{base}/v1/me/grants"), Some(&token), grant_body.clone()).await;
                    assert_eq!(status, 201, "{grant}");
                    let id = grant["grant_id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push((Instant::now(), writer, Write::Grant(id)));
                }
                progress.notify_one();
            }
        }));
    }
    let acks_at_least = |count: usize| {
        let (acked, progress) = (Arc::clone(&acked), Arc::clone(&progress));
        async move {
            while acked.lock().unwrap().len() < count {
                progress.notified().await;
            }
        }
    };
    acks_at_least(150).await;

    let file = dir.path().join("under-load.backup");
    let backup_started = Instant::now();
    let (from, to) = (data_dir.clone(), file.clone());
    // Small chunks, so the backup reads the store in many transactions
    // while the writers go on.
    let made = tokio::task::spawn_blocking(move || backup_in_chunks(&from, &to, 50)).await.unwrap();
    let acks_after_backup = acked.lock().unwrap().len() + 40;
    acks_at_least(acks_after_backup).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(made.status.success(), "{}\n{}", text(&made.stderr), server.stderr_text());
    let summary = text(&made.stdout);
    let redo_batches: u64 = summary.split(" redo batches").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(redo_batches > 0, "writes went on while the backup ran: {summary}");
    assert!(server.stderr_text().contains("backup requested on the control socket"), "the running server wrote it");

    // What the original vault says later, as an auditor would keep it.
    let later_note = client.get(format!("{base}/v1/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    let later = verifier.open_checkpoint(&later_note, verifier.name()).unwrap();
    let kept = dir.path().join("kept-checkpoint");
    std::fs::write(&kept, &later_note).unwrap();

    let restored_dir = dir.path().join("restored");
    let kek = data_dir.join("kek.key");
    let (input, target, key_file) = (file.clone(), restored_dir.clone(), kek.clone());
    let restored = tokio::task::spawn_blocking(move || restore(&input, &target, Some(&key_file))).await.unwrap();
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let verified = audit_verify(&restored_dir, &kek);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert!(text(&verified.stdout).starts_with("ok: size"), "{}", text(&verified.stdout));

    let kek_arg = kek.to_str().unwrap().to_owned();
    let copy = ServerProcess::start(&restored_dir, &["--kek-file", &kek_arg], &[]).unwrap();
    let copy_base = copy.base_url.clone();

    // The restored log: the backup's log, then the restore's own event (and
    // what the restored vault recorded since it started).
    let now = checkpoint(&client, &copy_base, &verifier).await;
    let (status, found) = get(&client, format!("{copy_base}/v1/audit/entries?kind=vault.restored"), &auditor).await;
    assert_eq!(status, 200, "{found}");
    let (index, entry) = (found["items"][0]["index"].as_u64().unwrap(), &found["items"][0]["entry"]);
    let backed_up: u64 = entry["related"]["backup_checkpoint_size"].as_str().unwrap().parse().unwrap();
    assert_eq!(index, backed_up, "the restore's event directly follows the backed-up log");
    let backed_up_root: Hash = base64::engine::general_purpose::STANDARD
        .decode(entry["related"]["backup_checkpoint_root"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let url = format!("{copy_base}/v1/audit/proof/consistency?old_size={backed_up}&new_size={}", now.tree_size);
    let (status, proof) = get(&client, url, &auditor).await;
    assert_eq!(status, 200, "{proof}");
    verify_consistency(backed_up, now.tree_size, &backed_up_root, &now.root, &common::tlog::hashes(&proof)).unwrap();

    // The backed-up log is a prefix of the original's later log ...
    assert!(later.tree_size > now.tree_size, "the original kept growing after the backup");
    let url = format!("{base}/v1/audit/proof/consistency?old_size={backed_up}&new_size={}", later.tree_size);
    let (status, proof) = get(&client, url, &auditor).await;
    assert_eq!(status, 200, "{proof}");
    verify_consistency(backed_up, later.tree_size, &backed_up_root, &later.root, &common::tlog::hashes(&proof))
        .unwrap();
    // ... and an auditor holding that later checkpoint sees the restore to
    // an older state: the restored log is smaller, so no proof exists.
    let url = format!("{copy_base}/v1/audit/proof/consistency?old_size={}&new_size={}", later.tree_size, now.tree_size);
    let (status, _) = get(&client, url, &auditor).await;
    assert!((400..500).contains(&status), "a consistency proof to a smaller log cannot exist");
    // The outside auditor's tool says so, with the documented command.
    let args = [copy_base.clone(), auditor.clone(), key.trim().to_owned(), kept.to_str().unwrap().to_owned()];
    let refused = tokio::task::spawn_blocking(move || {
        common::auditor_go(&["-vault", &args[0], "-token", &args[1], "-key", &args[2], "-old", &args[3]])
    })
    .await
    .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("restored to an older state"), "{}", text(&refused.stderr));
    // Every write acknowledged before the backup started is there: each
    // customer signs in and finds an e-mail address at least as new as the
    // last one acknowledged, and every grant; the business reads what the
    // grants allow.
    let mut before: HashMap<usize, (u64, Vec<String>)> = HashMap::new();
    for (at, writer, write) in acked.lock().unwrap().iter() {
        if *at < backup_started {
            let entry = before.entry(*writer).or_default();
            match write {
                Write::Email(n) => entry.0 = entry.0.max(*n),
                Write::Grant(id) => entry.1.push(id.clone()),
            }
        }
    }
    for (writer, (customer_id, _, pairwise, first_grant)) in customers.iter().enumerate() {
        let body = json!({"grant_type": "password", "username": customer_id, "password": PASSWORD});
        let (status, answer) = post(&client, format!("{copy_base}/v1/token"), None, body).await;
        assert_eq!(status, 200, "{answer}");
        let token = answer["access_token"].as_str().unwrap();
        let (status, data) = get(&client, format!("{copy_base}/v1/me/data"), token).await;
        assert_eq!(status, 200, "{data}");
        let value = data["data"]["email"].as_str().unwrap().to_owned();
        let (last_acked, grants_acked) = &before[&writer];
        assert!(email_number(&value) >= *last_acked, "writer {writer}: {value} is older than write {last_acked}");
        let (_, grants) = get(&client, format!("{copy_base}/v1/me/grants"), token).await;
        let held: Vec<&str> =
            grants["items"].as_array().unwrap().iter().map(|g| g["grant_id"].as_str().unwrap()).collect();
        for grant in grants_acked.iter().chain([first_grant]) {
            assert!(held.contains(&grant.as_str()), "writer {writer}: grant {grant} is missing");
        }
        let read_url = format!("{copy_base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email");
        let (status, read) = get(&client, read_url, &business).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"]["email"], value.as_str());
    }

    drop(copy);
    drop(server);
}
