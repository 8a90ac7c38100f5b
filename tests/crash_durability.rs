//! Guarantee 6 at the storage layer: an acknowledged write survives SIGKILL.
//!
//! The test re-runs its own binary as a child that writes through the vault
//! API from several concurrent writers and prints `ack <subject> <seq>` after
//! each acknowledged write. The parent kills the child with SIGKILL at a
//! random moment, reopens the data directory, and checks that every
//! acknowledged write is present and intact, and that no multi-field write
//! is torn. Cycles: `CONSENTVAULT_CRASH_CYCLES` (default 20).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use consentvault::audit::Actor;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use consentvault::ids::SubjectId;
use serde_json::json;

const CHILD_ENV: &str = "CONSENTVAULT_CRASH_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_writes_survive_sigkill";
const WRITERS: usize = 8;
const SUBJECTS_PER_WRITER: u64 = 4;

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_writes_until_killed(&dir);
        return;
    }
    let cycles: usize = std::env::var("CONSENTVAULT_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut rng = common::TestRng::from_env();
    let dir = tempfile::tempdir().unwrap();
    // Create the vault (and its key) once; every child reopens it. Closing
    // waits for the background verification, so the store's lock is free.
    common::open_vault(dir.path()).0.close().unwrap();

    // The highest acknowledged sequence number per subject, over all cycles.
    let mut acked: BTreeMap<SubjectId, u64> = BTreeMap::new();
    let mut total_acks = 0usize;
    // Every subject whose creation was acknowledged.
    let mut created: Vec<SubjectId> = Vec::new();
    // Every checkpoint the vault handed out before a crash.
    let mut checkpoints: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("CONSENTVAULT_CRASH_CYCLE", cycle.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is writing, then let it run a random while.
        let first = lines_rx.recv_timeout(Duration::from_secs(30)).expect("child started writing");
        let kill_after = Duration::from_millis(rng.range(20..300));
        let started = Instant::now();
        let mut lines = vec![first];
        while started.elapsed() < kill_after {
            if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(5)) {
                lines.push(line);
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(lines_rx.try_iter());

        let mut cycle_acks = 0;
        for line in &lines {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("ack") => {}
                Some("checkpoint") => {
                    if let (Some(note), None) = (parts.next(), parts.next())
                        && let Ok(bytes) = STANDARD.decode(note)
                    {
                        checkpoints.push(String::from_utf8(bytes).unwrap());
                    }
                    continue;
                }
                Some("subject") => {
                    if let (Some(subject), None) = (parts.next(), parts.next()) {
                        created.push(subject.parse().unwrap());
                    }
                    continue;
                }
                _ => continue,
            }
            let (Some(subject), Some(seq), None) = (parts.next(), parts.next(), parts.next()) else { continue };
            let subject: SubjectId = subject.parse().unwrap();
            let seq: u64 = seq.parse().unwrap();
            let entry = acked.entry(subject).or_insert(0);
            *entry = (*entry).max(seq);
            cycle_acks += 1;
        }
        total_acks += cycle_acks;
        verify(dir.path(), &created, &acked, &checkpoints, cycle);
    }
    eprintln!(
        "{cycles} kill cycles, {total_acks} acknowledged writes, {} subjects, {} checkpoints, all intact",
        created.len(),
        checkpoints.len()
    );
    assert!(!checkpoints.is_empty(), "the children must have handed out checkpoints");
    assert!(total_acks >= cycles, "the children must have acknowledged writes");
}

/// Reopens the vault and checks every acknowledged write.
fn verify(
    dir: &std::path::Path,
    created: &[SubjectId],
    acked: &BTreeMap<SubjectId, u64>,
    checkpoints: &[String],
    cycle: usize,
) {
    let (vault, _) = common::open_vault(dir);
    // The log after the crash verifies against every checkpoint handed out
    // before it: same root at that size.
    let verifier = vault.audit().verifier();
    for note in checkpoints {
        let checkpoint = verifier.open_checkpoint(note, vault.audit().origin()).unwrap();
        let root = vault.audit().root(vault.store(), checkpoint.tree_size).unwrap_or_else(|e| {
            panic!(
                "cycle {cycle}: a checkpoint of size {} was handed out, the log now has less: {e}",
                checkpoint.tree_size
            )
        });
        assert_eq!(
            root, checkpoint.root,
            "cycle {cycle}: the log forked from a checkpoint of size {}",
            checkpoint.tree_size
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for &subject in created {
        assert!(
            vault.subjects().subject_exists(subject).unwrap(),
            "cycle {cycle}: acknowledged subject {subject} is gone"
        );
    }
    for (&subject, &seq) in acked {
        let data = runtime
            .block_on(vault.subjects().data_read_own(subject))
            .unwrap_or_else(|e| panic!("cycle {cycle}: subject {subject}: {e}"));
        let points = data.get("loyalty_points").and_then(|v| v.as_u64());
        let name = data.get("given_name").and_then(|v| v.as_str()).map(str::to_owned);
        let stored = points.unwrap_or_else(|| panic!("cycle {cycle}: subject {subject} lost its acknowledged write"));
        assert!(stored >= seq, "cycle {cycle}: subject {subject} holds {stored}, acknowledged {seq}");
        // Both fields were written in one merge: they must agree.
        assert_eq!(name, Some(format!("writer-{stored}")), "cycle {cycle}: subject {subject} is torn");
    }
    vault.close().unwrap();
}

/// The child: opens the vault, creates subjects, and rewrites them with
/// increasing sequence numbers from several writers until killed.
fn child_writes_until_killed(dir: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (vault, _) = common::open_vault(std::path::Path::new(dir));
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let cycle: u64 = std::env::var("CONSENTVAULT_CRASH_CYCLE").unwrap().parse().unwrap();
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            let vault = vault.clone();
            let stdout = stdout.clone();
            writers.push(tokio::spawn(async move {
                let mut subjects = Vec::new();
                for _ in 0..SUBJECTS_PER_WRITER {
                    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "subject {subject}").unwrap();
                    out.flush().unwrap();
                    subjects.push(subject);
                }
                // Sequence numbers grow across cycles so a later value is
                // always larger than an earlier acknowledged one.
                let mut seq = cycle * 1_000_000;
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    for &subject in &subjects {
                        seq += 1;
                        let values = json!({"loyalty_points": seq, "given_name": format!("writer-{seq}")});
                        vault
                            .subjects()
                            .data_merge(&Actor::customer(subject), subject, values.as_object().unwrap())
                            .await
                            .unwrap();
                        let mut out = stdout.lock().unwrap();
                        writeln!(out, "ack {subject} {seq}").unwrap();
                        if seq.is_multiple_of(16) {
                            // A checkpoint as the vault would hand it to an auditor now.
                            let note = vault.audit().checkpoint_latest().unwrap();
                            writeln!(out, "checkpoint {}", STANDARD.encode(note)).unwrap();
                        }
                        out.flush().unwrap();
                    }
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
    });
}
