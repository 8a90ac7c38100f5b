//! Seal and open of field values under a subject DEK (AES-256-GCM, ring),
//! and DEK unwrap under the KEK.

// Opening is what this benchmark measures; in the vault only `release` opens.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use consentvault::crypto::{KeyRing, random_bytes};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

fn seal_and_open(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let ring = KeyRing::new(vec![(1, Zeroizing::new(random_bytes(&rng).unwrap()))]).unwrap();
    let subject = [7u8; 16];
    let (dek, wrapped) = ring.dek_create(&subject, 1).unwrap();
    let mut group = c.benchmark_group("value");
    for size in [32usize, 256, 4096] {
        let plaintext = vec![0x5Au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &plaintext, |b, plaintext| {
            b.iter(|| dek.seal(&rng, &subject, "email", plaintext).unwrap())
        });
        let sealed = dek.seal(&rng, &subject, "email", &plaintext).unwrap();
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, sealed| {
            b.iter(|| dek.open(&subject, "email", sealed).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("seal+open", size), &plaintext, |b, plaintext| {
            b.iter(|| {
                let sealed = dek.seal(&rng, &subject, "email", plaintext).unwrap();
                dek.open(&subject, "email", &sealed).unwrap()
            })
        });
    }
    group.finish();
    // Unwrap and wrap again under the current KEK: the cost per subject of a
    // KEK rotation, and an upper bound of an unwrap.
    c.bench_function("dek/rewrap", |b| b.iter(|| ring.dek_rewrap(&subject, &wrapped).unwrap()));
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
