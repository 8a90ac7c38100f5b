//! `consentvault audit replay` finds, at its index, a read the log does not
//! justify: one no live grant covered, one after its grant was revoked, and
//! one outside the grant's window; on the data directory and on a backup.
//! The clean case is every `TestApp` test: each ends with a replay of its
//! log, over the API and on the stopped directory (`tests/common/app.rs`).
//!
//! The vault never writes such a read, so the tests append one to a real
//! vault's log as an attacker with write access to the store would, signed
//! and checkpointed like any other: the log still verifies, and only the
//! replay shows what is wrong.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use consentvault::audit::{Actor, AuditEvent, Decision, EventKind, Role};
use consentvault::consent::GrantRecord;
use consentvault::ids::{BusinessId, SubjectId};
use consentvault::vault::Vault;
use serde_json::Value;

/// A vault with the policies' load recorded, a customer connected to a
/// business and a 30-day marketing grant of her e-mail, read once as the
/// vault reads.
async fn vault_with_grant(dir: &Path) -> (Arc<Vault>, SubjectId, BusinessId, GrantRecord) {
    let (vault, _) = common::open_vault(dir);
    vault.policies_loaded_at_start().await.unwrap();
    let (subject, business, relationship) = common::connected_customer(&vault).await;
    let grant = vault
        .consent()
        .grant_create(subject, &business, vec!["marketing".to_owned()], vec!["email".to_owned()], 30)
        .await
        .unwrap();
    let pairwise = relationship.pairwise_id.parse().unwrap();
    let read = vault.consent().scoped_read(&business, &pairwise, "marketing", None).await.unwrap();
    assert_eq!(read.data.keys().collect::<Vec<_>>(), ["email"]);
    (vault, subject, business, grant)
}

/// Appends a `data.read` that says `email` was released to `business` for
/// `purpose` at `time` (Unix seconds) under `grant`, as the vault would log
/// it; returns its index.
async fn forged_read(
    vault: &Vault,
    subject: SubjectId,
    business: &BusinessId,
    purpose: &str,
    grant: &GrantRecord,
    time: i64,
) -> u64 {
    let rfc3339 = time::OffsetDateTime::from_unix_timestamp(time).unwrap();
    let mut event = AuditEvent::new(
        EventKind::DataRead,
        Actor::new(Role::Business, business.as_str()),
        &consentvault::clock::rfc3339(rfc3339),
    )
    .subject(subject)
    .fields(vec!["email".to_owned()]);
    event.business = Some(business.to_string());
    event.purpose = Some(purpose.to_owned());
    event.decision = Some(Decision::Allow);
    event.requested = vec!["email".to_owned()];
    event.grants = vec![grant.grant_id.to_string()];
    let log = vault.audit().clone();
    let (appended, durable) =
        vault.store().commit_durable(move |txn| log.append(txn, &event)).await.map_err(|_| "append").unwrap();
    vault.audit().confirm(appended, &durable).unwrap().index()
}

/// Replays the stopped vault in `dir` (or its backup) and checks that the
/// replay fails with exit code 3 at `index`, for `rule`.
fn assert_violation_at(output: std::process::Output, index: u64, rule: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"]["code"], "replay_violation");
    let violation = &answer["replay"]["violation"];
    assert_eq!(violation["index"], index, "{answer}");
    assert_eq!(violation["rule"], rule, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains(&format!("entry {index}:")), "{answer}");
    // Everything before it was replayed, the vault's own read among them.
    assert_eq!(answer["replay"]["entries"], index + 1);
    assert_eq!(answer["replay"]["reads_released"], 1);
}

fn replay(dir: &Path, backup: Option<&Path>) -> std::process::Output {
    let mut args = vec!["--format".into(), "json".into(), "audit".into(), "replay".into(), "--data-dir".into()];
    args.push(dir.as_os_str().to_owned());
    args.extend(["--policies".into(), common::policies_dir().into_os_string()]);
    if let Some(backup) = backup {
        args.extend(["--backup".into(), backup.as_os_str().to_owned()]);
        args.extend(["--kek-file".into(), dir.join(consentvault::vault::KEY_FILE).into_os_string()]);
    }
    common::binary(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_no_live_grant_covered_fails_the_replay_at_its_index() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let (vault, subject, business, grant) = vault_with_grant(&dir).await;
    // The grant is for marketing; the read says order fulfilment.
    let index = forged_read(&vault, subject, &business, "order-fulfilment", &grant, grant.starts_at + 60).await;
    vault.close().unwrap();
    drop(vault);
    assert!(common::audit_verify(&dir).0, "the log itself verifies: only the replay sees the read");
    assert_violation_at(replay(&dir, None), index, "not_covered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_after_the_revoke_fails_the_replay_at_its_index_also_from_a_backup() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let (vault, subject, business, grant) = vault_with_grant(&dir).await;
    vault.consent().grant_revoke(subject, &grant.grant_id).await.unwrap();
    // Inside the window, but after the revoke in the log.
    let index = forged_read(&vault, subject, &business, "marketing", &grant, grant.starts_at + 60).await;
    vault.close().unwrap();
    drop(vault);
    assert_violation_at(replay(&dir, None), index, "not_covered");
    let backup = temp.path().join("vault.backup");
    let made = common::binary([
        "backup".as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
        "--out".as_ref(),
        backup.as_os_str(),
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_violation_at(replay(&dir, Some(&backup)), index, "not_covered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_outside_the_window_fails_the_replay_at_its_index() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let (vault, subject, business, grant) = vault_with_grant(&dir).await;
    // The first second the grant is no longer live.
    let index = forged_read(&vault, subject, &business, "marketing", &grant, grant.expires_at).await;
    vault.close().unwrap();
    drop(vault);
    assert_violation_at(replay(&dir, None), index, "not_covered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_log_replays_with_every_read_counted() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let (vault, _, _, _) = vault_with_grant(&dir).await;
    vault.close().unwrap();
    drop(vault);
    let output = replay(&dir, None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["ok"], true);
    assert!(answer["replay"]["violation"].is_null());
    assert_eq!(answer["replay"]["reads_released"], 1);
    assert_eq!(answer["replay"]["fields_released"], 1);
    assert_eq!(answer["replay"]["grants_created"], 1);
    assert_eq!(answer["replay"]["entries"], answer["size"]);
    assert_eq!(answer["replay"]["policies"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_her_choices_refused_fails_the_replay_at_its_index() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let (vault, subject, business, grant) = vault_with_grant(&dir).await;
    let pairwise = vault.consent().grant_pairwise(&grant).unwrap();
    // She takes one offer a week from the business (registered for
    // marketing): the first is delivered, and proven.
    let relationship = vault.consent().relationships(subject).unwrap().remove(0);
    let mut preferences = consentvault::contact::Preferences::defaults(&vault.policies());
    preferences.kinds = vec!["offers".to_owned()];
    preferences.cap = consentvault::contact::Cap { messages: 1, period: consentvault::contact::Period::Week };
    vault.contact().preferences_set(subject, &relationship.relationship_id, preferences).await.unwrap();
    let delivered = vault
        .contact()
        .message_send(&business, &pairwise, "offers", Some("Sale".to_owned()), "Half price.".to_owned())
        .await
        .unwrap();
    // A second offer, over her cap, logged as if it had been delivered.
    let mut event = AuditEvent::new(
        EventKind::MessageDelivered,
        Actor::new(Role::Business, business.as_str()),
        &vault.core().clock().rfc3339(),
    )
    .subject(subject)
    .related(consentvault::audit::Related::MessageKind, "offers")
    .related(consentvault::audit::Related::MessageId, "f".repeat(32))
    .related(consentvault::audit::Related::PairwiseId, pairwise.as_str());
    event.business = Some(business.to_string());
    event.purpose = Some("marketing".to_owned());
    let log = vault.audit().clone();
    let (appended, durable) =
        vault.store().commit_durable(move |txn| log.append(txn, &event)).await.map_err(|_| "append").unwrap();
    let index = vault.audit().confirm(appended, &durable).unwrap().index();
    assert!(index > delivered.audit_index);
    vault.close().unwrap();
    drop(vault);
    assert!(common::audit_verify(&dir).0, "the log itself verifies: only the replay sees the message");
    let output = replay(&dir, None);
    assert_violation_at(output.clone(), index, "message_not_allowed");
    let answer: Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(answer["replay"]["messages_delivered"], 1, "{answer}");
}
