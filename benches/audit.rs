//! Audit log costs at scale: building a log of 10^6 events, opening it
//! (which verifies the whole log), and inclusion and consistency proofs and
//! roots at 10^6 entries, and appends on top of it (criterion).
//!
//! `cargo bench --bench audit`; `CONSENTVAULT_BENCH_AUDIT_ENTRIES` changes
//! the log size (default 1,000,000).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use consentvault::audit::{self, Actor, AuditEvent, Decision, EventKind, Related, Role};
use consentvault::ids::SubjectId;
use consentvault::vault::{AuditStatus, Vault, VaultOptions, policies_load};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn options(dir: &std::path::Path) -> VaultOptions {
    VaultOptions {
        data_dir: dir.join("data"),
        key_source: None,
        policies: policies_load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap(),
        policy_dir: None,
        production: false,
        store_cache_bytes: 512 * 1024 * 1024,
        store: Default::default(),
        audit_origin: None,
        identity: Default::default(),
        key_limits: Default::default(),
        webhooks: Default::default(),
    }
}

/// A typical read event: a business read two fields of a subject.
fn event(index: u64) -> AuditEvent {
    let mut event = AuditEvent::new(
        EventKind::DataRead,
        Actor::new(Role::Business, "6b1f0f5e2c8d4a7b9e3f1a2b3c4d5e6f"),
        "2026-11-23T19:00:00Z",
    )
    .subject(SubjectId::from_bytes((index as u128).to_be_bytes()))
    .fields(vec!["email".to_owned(), "phone".to_owned()])
    .related(Related::GrantId, "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    event.purpose = Some("order-fulfilment".to_owned());
    event.decision = Some(Decision::Allow);
    event
}

fn build(dir: &std::path::Path, entries: u64) -> Arc<Vault> {
    let (vault, _) = Vault::open(options(dir)).unwrap();
    let started = Instant::now();
    const CHUNK: u64 = 1_000;
    let mut next = 0;
    while next < entries {
        let end = (next + CHUNK).min(entries);
        let log = vault.audit().clone();
        vault
            .store()
            .commit_blocking(move |txn| {
                for index in next..end {
                    let _ = log.append(txn, &event(index))?;
                }
                Ok::<_, audit::AuditError>(())
            })
            .unwrap();
        next = end;
    }
    println!("built a log of {entries} events in {:.1} s", started.elapsed().as_secs_f64());
    vault.close().unwrap();
    drop(vault);
    let started = Instant::now();
    let (vault, _) = Vault::open(options(dir)).unwrap();
    println!("opened it, ready to serve, in {:.2} s", started.elapsed().as_secs_f64());
    while vault.audit_status() == AuditStatus::Verifying {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(vault.audit_status(), AuditStatus::Verified);
    println!("background verification of the whole log done after {:.2} s", started.elapsed().as_secs_f64());
    vault
}

fn proofs(c: &mut Criterion) {
    let entries: u64 =
        std::env::var("CONSENTVAULT_BENCH_AUDIT_ENTRIES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let vault = build(dir.path(), entries);
    let size = audit::size(vault.store()).unwrap();
    let mut index = 0u64;
    c.bench_function(&format!("audit/inclusion_proof/{size}"), |b| {
        b.iter(|| {
            // A spread of indices, so the cache is not always warm.
            index = (index + 7_919_003) % size;
            vault.audit().inclusion_proof(vault.store(), index, size).unwrap()
        })
    });
    let mut old = 1u64;
    c.bench_function(&format!("audit/consistency_proof/{size}"), |b| {
        b.iter(|| {
            old = (old + 104_729) % size + 1;
            vault.audit().consistency_proof(vault.store(), old.min(size), size).unwrap()
        })
    });
    c.bench_function(&format!("audit/root/{size}"), |b| b.iter(|| vault.audit().root(vault.store(), size).unwrap()));
    c.bench_function("audit/event_encode", |b| b.iter(|| event(42).to_bytes().unwrap()));
    // Appends on top of the log just measured: one event alone, durable
    // (its transaction, the batch's signed checkpoint, apply and flush), and
    // a thousand in one transaction (encoding, hashing, subtree hashes).
    let mut next = size;
    c.bench_function(&format!("audit/append/durable/{size}"), |b| {
        b.iter(|| {
            let (log, event) = (vault.audit().clone(), event(next));
            next += 1;
            vault.store().commit_blocking(move |txn| log.append(txn, &event)).unwrap()
        })
    });
    let mut group = c.benchmark_group("audit/append/in_transaction");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("1000", |b| {
        b.iter(|| {
            let (log, first) = (vault.audit().clone(), next);
            next += 1_000;
            vault
                .store()
                .commit_blocking(move |txn| {
                    for index in first..first + 1_000 {
                        let _ = log.append(txn, &event(index))?;
                    }
                    Ok::<_, audit::AuditError>(())
                })
                .unwrap()
        })
    });
    group.finish();
    vault.close().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = proofs
}
criterion_main!(benches);
