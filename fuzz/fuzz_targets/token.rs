//! Bearer tokens: the verifier (RFC 8725 checks, then the signature) refuses
//! every token it did not issue, without panicking, whatever the bytes.
#![no_main]

use std::sync::LazyLock;

use consentvault::auth::Role;
use consentvault::auth::token::{TokenIssuer, TokenVerifier, TrustedIssuer};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<(TokenVerifier, String)> = LazyLock::new(|| {
    // jsonwebtoken's signatures go through ring, as in the vault.
    consentvault::auth::jwt_ring::install();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
    let issuer = TokenIssuer::new("consentvault", "consentvault", pkcs8.as_ref()).expect("an issuer");
    let good = issuer.issue(Role::Customer, "00000000000000000000000000000001", "jti", 1_800_000_000).expect("a token");
    let trusted = TrustedIssuer::own(&issuer, "consentvault");
    (TokenVerifier::new(vec![trusted]), good.token)
});

fuzz_target!(|data: &[u8]| {
    let (verifier, good) = &*VERIFIER;
    let Ok(token) = std::str::from_utf8(data) else { return };
    if token != good {
        assert!(verifier.verify(token, 1_800_000_001).is_err(), "a token the vault did not issue was accepted");
    }
});
