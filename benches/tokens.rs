//! Bearer token checks: the full RFC 8725 verification of a vault-issued
//! EdDSA token (uncached: parse, header checks, Ed25519 signature, claims),
//! and the cache hit every later request with the same token takes.

#![allow(clippy::unwrap_used)]

use consentvault::auth::cache::TokenCache;
use consentvault::auth::token::{TokenIssuer, TokenVerifier, TrustedIssuer};
use consentvault::auth::{Principal, Role};
use criterion::{Criterion, criterion_group, criterion_main};

fn tokens(c: &mut Criterion) {
    // jsonwebtoken's signatures go through ring, as in the vault.
    consentvault::auth::jwt_ring::install();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let issuer = TokenIssuer::new("consentvault", "consentvault", pkcs8.as_ref()).unwrap();
    let now = 1_800_000_000;
    let business = "0123456789abcdef0123456789abcdef";
    let token = issuer.issue(Role::Business, business, "jti-1", now).unwrap().token;
    let verifier = TokenVerifier::new(vec![TrustedIssuer::own(&issuer, "consentvault")]);
    assert!(verifier.verify(&token, now + 1).is_ok());
    c.bench_function("token/verify uncached", |b| b.iter(|| verifier.verify(&token, now + 1).unwrap()));

    let cache = TokenCache::default();
    // A realistic population: many principals' tokens, then the one read.
    for n in 0..10_000u32 {
        let other = issuer.issue(Role::Customer, &format!("{n:032x}"), &format!("jti-{n}"), now).unwrap().token;
        cache.insert(
            &other,
            Principal { role: Role::Customer, id: format!("{n:032x}") },
            now + 900,
            now,
            cache.generation(),
        );
    }
    cache.insert(
        &token,
        Principal { role: Role::Business, id: business.to_owned() },
        now + 900,
        now,
        cache.generation(),
    );
    c.bench_function("token/cache hit", |b| b.iter(|| cache.get(&token, now + 1).unwrap()));
}

criterion_group!(benches, tokens);
criterion_main!(benches);
