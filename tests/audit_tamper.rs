//! Tampering with stored audit entries (editing, deleting, reordering,
//! truncating) is reported by `consentvault audit verify` with the first bad
//! index, and stops the server from starting.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use consentvault::audit::{Actor, AuditEvent, records};
use consentvault::store::sled_backend::SledBackend;
use consentvault::store::{Backend, Key, WriteBatch};
use serde_json::json;

/// Builds a vault whose log holds three dozen events, closed and
/// checkpointed: a dozen appended one batch each, then a burst that the
/// commit thread batches together, so records hold one entry or several.
async fn pristine(dir: &Path) -> u64 {
    let (vault, _) = common::open_vault(dir);
    for _ in 0..3 {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        let actor = Actor::customer(subject);
        vault.subjects().data_put(&actor, subject, "email", &json!("ada@example.org")).await.unwrap();
        vault.subjects().data_put(&actor, subject, "country", &json!("GB")).await.unwrap();
        vault.subjects().data_read_own(subject).await.unwrap();
    }
    let mut writes = Vec::new();
    for _ in 0..8 {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        for (field, value) in [("email", json!("grace@example.org")), ("country", json!("FR"))] {
            let vault = vault.clone();
            writes.push(tokio::spawn(async move {
                vault.subjects().data_put(&Actor::customer(subject), subject, field, &value).await.unwrap();
            }));
        }
    }
    for write in writes {
        write.await.unwrap();
    }
    let size = consentvault::audit::size(vault.store()).unwrap();
    vault.close().unwrap();
    size
}

/// Copies the pristine vault, applies `tamper` to its store, and checks that
/// `audit verify` names `first_bad` and that `serve` refuses to start.
fn assert_detected(pristine: &Path, name: &str, first_bad: u64, tamper: impl FnOnce(&SledBackend)) {
    let copy = tempfile::tempdir().unwrap();
    let dir = copy.path().join("data");
    assert!(Command::new("cp").arg("-a").arg(pristine).arg(&dir).status().unwrap().success());
    {
        let backend = SledBackend::open(&dir.join("store"), 1 << 20).unwrap();
        tamper(&backend);
        backend.flush().unwrap();
    }
    let (code, stdout, stderr) = common::audit_verify_code(&dir);
    assert_eq!(code, Some(3), "{name}: audit verify must fail with the exit code of a log that does not verify");
    assert!(
        stderr.contains(&format!("first bad index: {first_bad}")),
        "{name}: expected first bad index {first_bad}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_server_refuses(&dir, name);
}

/// Every record of entries: its first index and its entries.
fn records(backend: &SledBackend) -> Vec<(u64, Vec<Vec<u8>>)> {
    let all = Key::audit_records_all();
    let rows = backend.scan(all.as_bytes(), &all.prefix_end(), usize::MAX).unwrap();
    rows.into_iter()
        .map(|(key, record)| {
            let first = records::key_index(&all, &key).unwrap();
            (first, records::record_entries(&record).unwrap().into_iter().map(<[u8]>::to_vec).collect())
        })
        .collect()
}

/// The record that holds entry `index`.
fn record_of(backend: &SledBackend, index: u64) -> (u64, Vec<Vec<u8>>) {
    let holding = |(first, entries): &(u64, Vec<Vec<u8>>)| (*first..*first + entries.len() as u64).contains(&index);
    records(backend).into_iter().find(holding).unwrap()
}

fn entry(backend: &SledBackend, index: u64) -> Vec<u8> {
    let (first, entries) = record_of(backend, index);
    entries[(index - first) as usize].clone()
}

/// Stores `entries` as the record that starts at `first`.
fn record_put(first: u64, entries: &[Vec<u8>]) -> (Key, Option<Vec<u8>>) {
    let mut record = Vec::new();
    for entry in entries {
        records::record_push(&mut record, entry);
    }
    (Key::audit_record(first), Some(record))
}

/// The record holding entry `index`, with that entry replaced by `bytes`.
fn entry_replaced(backend: &SledBackend, index: u64, bytes: Vec<u8>) -> (Key, Option<Vec<u8>>) {
    let (first, mut entries) = record_of(backend, index);
    entries[(index - first) as usize] = bytes;
    record_put(first, &entries)
}

/// A plausible forgery: the same event, canonical, with another time.
fn forged(bytes: &[u8]) -> Vec<u8> {
    let mut event = AuditEvent::from_bytes(bytes).unwrap();
    event.time = "2000-01-01T00:00:00Z".to_owned();
    event.to_bytes().unwrap()
}

fn write(backend: &SledBackend, changes: Vec<(Key, Option<Vec<u8>>)>) {
    let batch: WriteBatch = changes.into_iter().map(|(key, value)| (key.as_bytes().to_vec(), value)).collect();
    backend.apply(&batch).unwrap();
}

#[tokio::test]
async fn tampered_logs_are_reported_with_their_first_bad_index_and_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let pristine_dir = root.path().join("pristine");
    let size = pristine(&pristine_dir).await;
    assert!(size >= 36, "the pristine log has {size} entries");
    let layout: Vec<(u64, usize)> = {
        let backend = SledBackend::open(&pristine_dir.join("store"), 1 << 20).unwrap();
        records(&backend).iter().map(|(first, entries)| (*first, entries.len())).collect()
    };
    assert!(layout.iter().any(|(_, count)| *count > 1), "a burst shares records: {layout:?}");
    // A record of the sequential dozen, past the first subtree of 16.
    let (alone, _) = *layout.iter().find(|(first, count)| *count == 1 && *first >= 4).unwrap();

    let (ok, stdout, stderr) = common::audit_verify(&pristine_dir);
    assert!(ok, "an untouched log verifies: {stdout} {stderr}");
    assert!(stdout.starts_with(&format!("ok: size {size} root ")), "{stdout}");

    // Edits are pinned to the smallest stored subtree that holds them:
    // entries 16 to 31.
    assert_detected(&pristine_dir, "edit", 16, |backend| {
        write(backend, vec![entry_replaced(backend, 20, forged(&entry(backend, 20)))]);
    });
    assert_detected(&pristine_dir, "edit with its subtree hash rewritten to match", 0, |backend| {
        use consentvault::audit::merkle::{leaf_hash, node_hash};
        let edited = forged(&entry(backend, 20));
        let mut hashes: Vec<_> =
            (16..32).map(|i| leaf_hash(&if i == 20 { edited.clone() } else { entry(backend, i) })).collect();
        while hashes.len() > 1 {
            hashes = hashes.chunks(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
        }
        write(backend, vec![entry_replaced(backend, 20, edited), (Key::audit_node(4, 1), Some(hashes[0].to_vec()))]);
    });
    assert_detected(&pristine_dir, "reorder", 16, |backend| {
        let (eighteen, nineteen) = (entry(backend, 18), entry(backend, 19));
        write(backend, vec![entry_replaced(backend, 18, nineteen)]);
        write(backend, vec![entry_replaced(backend, 19, eighteen)]);
    });
    assert_detected(&pristine_dir, "delete", alone, |backend| {
        write(backend, vec![(Key::audit_record(alone), None)]);
    });
    assert_detected(&pristine_dir, "truncate with a lowered size", alone, |backend| {
        let mut changes: Vec<(Key, Option<Vec<u8>>)> = records(backend)
            .iter()
            .filter(|(first, _)| *first >= alone)
            .map(|(first, _)| (Key::audit_record(*first), None))
            .collect();
        changes.push((Key::meta("audit/size"), Some(alone.to_be_bytes().to_vec())));
        write(backend, changes);
    });
    assert_detected(&pristine_dir, "an entry appended behind the vault's back", size, |backend| {
        let forged_entry = forged(&entry(backend, 0));
        write(
            backend,
            vec![record_put(size, &[forged_entry]), (Key::meta("audit/size"), Some((size + 1).to_be_bytes().to_vec()))],
        );
    });
    assert_detected(&pristine_dir, "truncate of the last entry", size - 1, |backend| {
        let (first, mut entries) = record_of(backend, size - 1);
        entries.pop();
        let change = if entries.is_empty() { (Key::audit_record(first), None) } else { record_put(first, &entries) };
        write(backend, vec![change]);
    });
}

/// The server either refuses to start (the quick start-up check) or starts
/// and, once its background recomputation of the log finishes, refuses every
/// request but its health probes.
fn assert_server_refuses(dir: &Path, name: &str) {
    let server = match common::ServerProcess::start(dir, &[], &[]) {
        Err(refused) => {
            assert!(refused.contains("does not verify"), "{name}: {refused}");
            return;
        }
        Ok(server) => server,
    };
    // The test itself runs on a runtime; the HTTP checks get a thread of their own.
    std::thread::scope(|scope| {
        scope.spawn(|| refused_over_http(&server, name)).join().unwrap();
    });
    assert!(server.stderr_text().contains("does not verify"), "{name}: the refusal is logged");
}

fn refused_over_http(server: &common::ServerProcess, name: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ready = client.get(format!("{}/readyz", server.base_url)).send().await.unwrap();
            if ready.status() == 503 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: the server kept serving a tampered log");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let response = client.get(format!("{}/v1/audit/checkpoint", server.base_url)).send().await.unwrap();
        assert_eq!(response.status(), 503, "{name}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "audit_log_invalid", "{name}");
    });
}
