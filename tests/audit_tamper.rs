//! Tampering with stored audit entries (editing, deleting, reordering,
//! truncating) is reported by `consentvault audit verify` with the first bad
//! index, and stops the server from starting.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use consentvault::audit::{Actor, AuditEvent};
use consentvault::store::sled_backend::SledBackend;
use consentvault::store::{Backend, Key, WriteBatch};
use serde_json::json;

/// Builds a vault whose log holds a dozen events, closed and checkpointed.
async fn pristine(dir: &Path) -> u64 {
    let (vault, _) = common::open_vault(dir);
    for _ in 0..3 {
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        let actor = Actor::customer(subject);
        vault.subjects().data_put(&actor, subject, "email", &json!("ada@example.org")).await.unwrap();
        vault.subjects().data_put(&actor, subject, "country", &json!("GB")).await.unwrap();
        vault.subjects().data_read_own(subject).await.unwrap();
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
    let (ok, stdout, stderr) = common::audit_verify(&dir);
    assert!(!ok, "{name}: audit verify must fail");
    assert!(
        stdout.contains(&format!("first bad index: {first_bad}")),
        "{name}: expected first bad index {first_bad}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert_server_refuses(&dir, name);
}

fn entry(backend: &SledBackend, index: u64) -> Vec<u8> {
    backend.get(Key::audit_entry(index).as_bytes()).unwrap().unwrap()
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
    assert!(size >= 12, "the pristine log has {size} entries");

    let (ok, stdout, stderr) = common::audit_verify(&pristine_dir);
    assert!(ok, "an untouched log verifies: {stdout} {stderr}");
    assert!(stdout.starts_with(&format!("ok: size {size} root ")), "{stdout}");

    assert_detected(&pristine_dir, "edit", 4, |backend| {
        write(backend, vec![(Key::audit_entry(4), Some(forged(&entry(backend, 4))))]);
    });
    assert_detected(&pristine_dir, "edit with its parent subtree hash rewritten to match", 4, |backend| {
        use consentvault::audit::merkle::{leaf_hash, node_hash};
        let edited = forged(&entry(backend, 4));
        let parent = node_hash(&leaf_hash(&edited), &leaf_hash(&entry(backend, 5)));
        write(backend, vec![(Key::audit_entry(4), Some(edited)), (Key::audit_node(1, 2), Some(parent.to_vec()))]);
    });
    assert_detected(&pristine_dir, "delete", 6, |backend| {
        write(backend, vec![(Key::audit_entry(6), None)]);
    });
    assert_detected(&pristine_dir, "reorder", 2, |backend| {
        let (two, three) = (entry(backend, 2), entry(backend, 3));
        write(backend, vec![(Key::audit_entry(2), Some(three)), (Key::audit_entry(3), Some(two))]);
    });
    assert_detected(&pristine_dir, "truncate with a lowered size", 7, |backend| {
        let mut changes: Vec<(Key, Option<Vec<u8>>)> = (7..size).map(|i| (Key::audit_entry(i), None)).collect();
        changes.push((Key::meta("audit/size"), Some(7u64.to_be_bytes().to_vec())));
        write(backend, changes);
    });
    assert_detected(&pristine_dir, "an entry appended behind the vault's back", size, |backend| {
        let forged_entry = forged(&entry(backend, 0));
        write(
            backend,
            vec![
                (Key::audit_entry(size), Some(forged_entry)),
                (Key::meta("audit/size"), Some((size + 1).to_be_bytes().to_vec())),
            ],
        );
    });
    assert_detected(&pristine_dir, "truncate of the last entry", size - 1, |backend| {
        write(backend, vec![(Key::audit_entry(size - 1), None)]);
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
