//! Sealed values, wrapped DEKs and sealed secrets: arbitrary bytes never
//! open (AES-GCM authenticates them) and never panic.
#![no_main]

use std::sync::LazyLock;

use consentvault::crypto::{KeyRing, Sealed, WrappedDek};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

const SUBJECT: &[u8] = &[7u8; 16];

static KEYS: LazyLock<(KeyRing, consentvault::crypto::Dek)> = LazyLock::new(|| {
    let ring = KeyRing::new(vec![(1, Zeroizing::new([0x5Au8; 32])), (2, Zeroizing::new([0xA5u8; 32]))])
        .expect("two 32-byte keys");
    let (dek, _) = ring.dek_create(SUBJECT, 1).expect("a DEK");
    (ring, dek)
});

fuzz_target!(|data: &[u8]| {
    let (ring, dek) = &*KEYS;
    assert!(dek.open(SUBJECT, "email", &Sealed::from_bytes(data.to_vec())).is_err());
    assert!(ring.dek_rewrap(SUBJECT, &WrappedDek::from_bytes(data.to_vec())).is_err());
    assert!(ring.secret_open("audit-signing-key", data).is_err());
    assert!(ring.key_check_verify(1, data).is_err());
});
