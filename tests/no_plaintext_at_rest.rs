//! Guarantee 1: no personal value reaches disk or logs in clear.
//!
//! Canary values go in through the subject-data API with every log level
//! captured; then every byte under the data directory and every log line is
//! searched for them.

#![allow(clippy::unwrap_used)]

mod common;

use consentvault::audit::Actor;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_values_never_appear_on_disk_or_in_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Everything the vault logs, at every level, as it could be configured
    // to (`CONSENTVAULT_LOG=trace` still stops the engine's own at warnings).
    tracing_subscriber::fmt()
        .with_env_filter(consentvault::telemetry::filter_of(Some("trace")))
        .with_writer(move || writer.clone())
        .init();

    let mut rng = common::TestRng::from_env();
    let tag = format!("{:016x}", rng.next_u64());
    let numeric = 900_000_000_000 + (rng.next_u64() % 99_999_999) as i64;
    let canaries: Vec<(&str, serde_json::Value, String)> = vec![
        ("email", json!(format!("canary{tag}@example.org")), format!("canary{tag}")),
        ("given_name", json!(format!("Canary{tag}")), format!("Canary{tag}")),
        ("phone", json!(format!("+44 {}", &numeric.to_string()[..10])), numeric.to_string()[..10].to_owned()),
        ("loyalty_points", json!(numeric), numeric.to_string()),
        ("allergies", json!([format!("peanut{tag}")]), format!("peanut{tag}")),
        ("postal_address", json!({"lines": [format!("{tag} Canary Wharf")], "country": "GB"}), format!("{tag} Canary")),
    ];

    let dir = tempfile::tempdir().unwrap();
    {
        let (vault, _) = common::open_vault(dir.path());
        let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
        for (field, value, _) in &canaries {
            vault.subjects().data_put(&Actor::customer(subject), subject, field, value).await.unwrap();
        }
        // Overwrite and delete too, so old versions must not linger in clear.
        vault
            .subjects()
            .data_put(&Actor::customer(subject), subject, "email", &json!(format!("second{tag}@example.org")))
            .await
            .unwrap();
        vault.subjects().data_delete(&Actor::customer(subject), subject, "given_name").await.unwrap();
        let read = vault.subjects().data_read_own(subject).await.unwrap();
        assert_eq!(read.get("loyalty_points"), Some(&json!(numeric)));
        // A refused value must not be echoed either.
        let refused = vault
            .subjects()
            .data_put(&Actor::customer(subject), subject, "email", &json!(format!("refused{tag} not an address")))
            .await;
        assert!(refused.unwrap_err().to_string().find(&tag).is_none());
        vault.close().unwrap();
    }

    let mut needles: Vec<String> = canaries.iter().map(|(_, _, needle)| needle.clone()).collect();
    needles.push(format!("second{tag}"));
    needles.push(format!("refused{tag}"));
    let files = common::files_under(dir.path());
    let stored_bytes: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    assert!(stored_bytes > 0, "the data directory must hold the sealed values");
    for (path, bytes) in &files {
        for needle in &needles {
            assert!(!common::contains(bytes, needle.as_bytes()), "{needle} found in clear in {}", path.display());
        }
    }

    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(log_text.contains("data written"), "the logs must have captured the writes:\n{log_text}");
    for needle in &needles {
        assert!(!log_text.contains(needle.as_str()), "{needle} found in the logs");
    }

    // The search itself works: the same scan finds a canary planted in clear.
    std::fs::write(dir.path().join("planted"), format!("x{}x", needles[0])).unwrap();
    let planted = common::files_under(dir.path());
    assert!(planted.iter().any(|(_, bytes)| common::contains(bytes, needles[0].as_bytes())));
}
