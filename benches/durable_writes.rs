//! Durable single-field writes through the vault API from W concurrent
//! writers, each acknowledged only after the flush that carries it.
//!
//! `cargo bench --bench durable_writes` runs 1 and 64 writers for
//! `CONSENTVAULT_BENCH_SECS` seconds each (default 5), first writing fields,
//! then appending bare audit events, and prints throughput, latency
//! percentiles and where the commit path spends its time.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use consentvault::audit::{Actor, AuditEvent, EventKind};
use consentvault::vault::{Vault, VaultOptions, policies_load};
use serde_json::json;

/// The allocator the `consentvault` binary runs on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What each writer does per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `Vault::data_put` of one field (seal, value, audit event).
    FieldWrite,
    /// One audit event appended on the commit path, nothing else.
    AuditAppend,
}

async fn run(work: Work, writers: usize, duration: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let options = VaultOptions {
        data_dir: dir.path().join("data"),
        key_source: None,
        policies: policies_load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap(),
        policy_dir: None,
        production: false,
        store_cache_bytes: 256 * 1024 * 1024,
        store: Default::default(),
        audit_origin: None,
        identity: Default::default(),
        key_limits: Default::default(),
        webhooks: Default::default(),
    };
    let (vault, _) = Vault::open(options).unwrap();
    let mut subjects = Vec::new();
    for _ in 0..writers {
        subjects.push(vault.subjects().subject_create(&Actor::system()).await.unwrap());
    }
    let stats = vault.store().stats();
    let (batches_before, transactions_before, flush_before, apply_before, execute_before) = (
        stats.batches.load(Ordering::Relaxed),
        stats.transactions.load(Ordering::Relaxed),
        stats.flush_nanos.load(Ordering::Relaxed),
        stats.apply_nanos.load(Ordering::Relaxed),
        stats.execute_nanos.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (writer, subject) in subjects.into_iter().enumerate() {
        let vault = Arc::clone(&vault);
        tasks.push(tokio::spawn(async move {
            let mut latencies_micros = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let begun = Instant::now();
                match work {
                    Work::FieldWrite => {
                        let value = json!(format!("writer{writer}-{seq:0>100}"));
                        vault
                            .subjects()
                            .data_put(&Actor::customer(subject), subject, "given_name", &value)
                            .await
                            .unwrap();
                    }
                    Work::AuditAppend => {
                        let event =
                            AuditEvent::new(EventKind::DataRead, Actor::customer(subject), "2026-11-23T19:00:00Z")
                                .subject(subject)
                                .fields(vec!["given_name".to_owned()]);
                        let (appended, durable) = {
                            let log = vault.audit().clone();
                            vault.store().commit_durable(move |txn| log.append(txn, &event))
                        }
                        .await
                        .unwrap();
                        vault.audit().confirm(appended, &durable).unwrap();
                    }
                }
                latencies_micros.push(begun.elapsed().as_micros() as u32);
            }
            latencies_micros
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let batches = stats.batches.load(Ordering::Relaxed) - batches_before;
    let transactions = stats.transactions.load(Ordering::Relaxed) - transactions_before;
    let flush_nanos = stats.flush_nanos.load(Ordering::Relaxed) - flush_before;
    let apply_nanos = stats.apply_nanos.load(Ordering::Relaxed) - apply_before;
    let execute_nanos = stats.execute_nanos.load(Ordering::Relaxed) - execute_before;
    println!(
        "{work:?} writers={writers:>3}  writes={:>8}  writes/s={:>9.0}  p50={:>6}µs  p99={:>6}µs  p99.9={:>6}µs  batch_avg={:>6.1}  per batch: execute={:>5.0}µs apply={:>5.0}µs flush={:>5.0}µs",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        transactions as f64 / batches.max(1) as f64,
        execute_nanos as f64 / batches.max(1) as f64 / 1000.0,
        apply_nanos as f64 / batches.max(1) as f64 / 1000.0,
        flush_nanos as f64 / batches.max(1) as f64 / 1000.0,
    );
    vault.close().unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // extra and only wants to know the target builds and starts.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let secs: u64 = std::env::var("CONSENTVAULT_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let duration = if quick { Duration::from_millis(200) } else { Duration::from_secs(secs) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for work in [Work::FieldWrite, Work::AuditAppend] {
        for writers in [1, 64] {
            runtime.block_on(run(work, writers, duration));
        }
    }
}
