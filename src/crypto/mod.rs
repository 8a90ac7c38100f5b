//! Keys and sealing: the only module that imports `ring::aead`.
//!
//! Two layers of AES-256-GCM (see `docs/CRYPTO.md` for the byte layouts):
//!
//! * a **key-encryption key** (KEK, 256 bits, versioned) wraps one
//!   **data-encryption key** (DEK) per subject;
//! * the DEK seals every field value of that subject.
//!
//! Guarantees kept here:
//! * every sealed value and wrapped DEK starts with a format byte and the
//!   version of the key that sealed it, and that header is part of the AAD;
//! * the AAD binds a sealed value to its subject and field, and a wrapped DEK
//!   to its subject (all length-prefixed), so a ciphertext moved elsewhere
//!   fails to open;
//! * nonces are 96 random bits from `SystemRandom`, never reused on purpose;
//! * key bytes live in [`zeroize::Zeroizing`] buffers and no `Debug` output
//!   ever shows them. (ring's expanded AES key schedule is not zeroized by
//!   ring; see `docs/CRYPTO.md`.)

mod keyfile;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub use keyfile::{KeyFileError, KeySource, key_file_add, key_file_remove, load_key_ring, write_new_key_file};

/// Length of every symmetric key, in bytes.
pub const KEY_BYTES: usize = 32;
/// Length of the AES-GCM authentication tag, in bytes.
pub const TAG_BYTES: usize = 16;

/// Format byte of a sealed field value (`V`).
const VALUE_FORMAT: u8 = 0x56;
/// Format byte of a wrapped DEK (`K`).
const WRAPPED_DEK_FORMAT: u8 = 0x4B;
/// Format byte of the key-check value stored per KEK version (`C`).
const KEY_CHECK_FORMAT: u8 = 0x43;
/// Format byte of a vault secret sealed under the KEK (`S`).
const SECRET_FORMAT: u8 = 0x53;

/// Header of a sealed value: format byte and DEK version (u32, big-endian).
const VALUE_HEADER_BYTES: usize = 1 + 4;
/// Header of a wrapped DEK: format byte, KEK version, DEK version.
const WRAPPED_HEADER_BYTES: usize = 1 + 4 + 4;
/// Total length of a wrapped DEK.
pub const WRAPPED_DEK_BYTES: usize = WRAPPED_HEADER_BYTES + NONCE_LEN + KEY_BYTES + TAG_BYTES;

const VALUE_DOMAIN: &[u8] = b"consentvault.value.v1";
const DEK_DOMAIN: &[u8] = b"consentvault.dek.v1";
const KEY_CHECK_DOMAIN: &[u8] = b"consentvault.key-check.v1";
const SECRET_DOMAIN: &[u8] = b"consentvault.secret.v1";

/// Errors of the key and sealing layer. None of them carries key material or
/// plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The system random generator failed; nothing can be sealed safely.
    #[error("the system random generator failed")]
    Random,
    /// A ciphertext failed authentication: it was altered, truncated, moved to
    /// another subject or field, or sealed under another key.
    #[error("ciphertext failed authentication")]
    Open,
    /// A ciphertext is shorter than its fixed layout or has an unknown format byte.
    #[error("ciphertext is malformed: {0}")]
    Malformed(&'static str),
    /// A ciphertext names a KEK version that is not loaded.
    #[error("key-encryption key version {0} is not loaded")]
    UnknownKekVersion(u32),
    /// A key is not 32 bytes long.
    #[error("a key must be exactly {KEY_BYTES} bytes")]
    KeyLength,
    /// The KEK new DEKs are wrapped under cannot be removed.
    #[error("key-encryption key version {0} is current and cannot be removed")]
    CurrentKek(u32),
}

/// Fills a fresh buffer with random bytes from `rng`.
pub fn random_bytes<const N: usize>(rng: &dyn SecureRandom) -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes).map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

/// A 256-bit AES-GCM key with its version. The raw bytes are zeroized on
/// drop; `Debug` shows the version only.
struct AeadKey {
    version: u32,
    key: LessSafeKey,
    // Kept so the bytes can be zeroized (ring keeps its own schedule), and
    // so a new DEK can be wrapped again under another KEK.
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

impl AeadKey {
    fn new(version: u32, bytes: Zeroizing<[u8; KEY_BYTES]>) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes.as_ref()).map_err(|_| CryptoError::KeyLength)?;
        Ok(Self { version, key: LessSafeKey::new(unbound), bytes })
    }

    /// Seals `plaintext` as `header ‖ nonce ‖ ciphertext ‖ tag`, with
    /// `aad_prefix ‖ header ‖ aad_suffix` as additional data.
    fn seal(
        &self,
        rng: &dyn SecureRandom,
        header: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes(rng)?;
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(header);
        out.extend_from_slice(&nonce_bytes);
        let body_start = out.len();
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(body_start);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(aad), &mut body)
            .map_err(|_| CryptoError::Random)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens `nonce ‖ ciphertext ‖ tag` (the part after the header).
    fn open(&self, aad: &[u8], sealed_body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed_body.len() < NONCE_LEN + TAG_BYTES {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce_bytes, rest) = sealed_body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| CryptoError::Malformed("nonce"))?;
        let mut buffer = Zeroizing::new(rest.to_vec());
        let plaintext_len =
            self.key.open_in_place(nonce, Aad::from(aad), buffer.as_mut_slice()).map_err(|_| CryptoError::Open)?.len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey").field("version", &self.version).finish_non_exhaustive()
    }
}

/// Appends `bytes` to `aad` behind its length as a big-endian u16.
fn push_length_prefixed(aad: &mut Vec<u8>, bytes: &[u8]) {
    // Subject ids are 16 bytes and field names are capped by the catalogue far
    // below 64 KiB, so the length always fits.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(bytes);
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, CryptoError> {
    bytes
        .get(at..at + 4)
        .and_then(|slice| <[u8; 4]>::try_from(slice).ok())
        .map(u32::from_be_bytes)
        .ok_or(CryptoError::Malformed("too short"))
}

/// The loaded key-encryption keys: every version still referenced, and the
/// current one used for new wraps.
///
/// KEK rotation changes the ring while the vault serves: a new version is
/// added, made current once the store records it, and an old one removed
/// (its bytes zeroized) once nothing is sealed under it. The versions sit
/// behind a lock that every wrap and unwrap takes for reading only.
pub struct KeyRing {
    keks: RwLock<KekSet>,
    rng: SystemRandom,
}

/// The versions of a [`KeyRing`].
struct KekSet {
    current: u32,
    keks: BTreeMap<u32, Arc<AeadKey>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("current", &self.current_version()).field("versions", &self.versions()).finish()
    }
}

impl KeyRing {
    /// Builds a key ring from `(version, key bytes)` pairs; the highest
    /// version becomes the current one.
    pub fn new(keys: Vec<(u32, Zeroizing<[u8; KEY_BYTES]>)>) -> Result<Self, CryptoError> {
        let mut keks = BTreeMap::new();
        for (version, bytes) in keys {
            keks.insert(version, Arc::new(AeadKey::new(version, bytes)?));
        }
        let current = *keks.keys().next_back().ok_or(CryptoError::UnknownKekVersion(0))?;
        Ok(Self { keks: RwLock::new(KekSet { current, keks }), rng: SystemRandom::new() })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KekSet> {
        // A writer never panics while holding the lock (it only inserts into
        // or removes from a map), so a poisoned lock still holds a whole set.
        self.keks.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KekSet> {
        self.keks.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The KEK version new DEKs are wrapped under.
    pub fn current_version(&self) -> u32 {
        self.read().current
    }

    /// Every loaded KEK version, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        self.read().keks.keys().copied().collect()
    }

    /// Whether KEK `version` is loaded.
    pub fn contains(&self, version: u32) -> bool {
        self.read().keks.contains_key(&version)
    }

    /// Draws a fresh random KEK. The caller stores it (the key file) before
    /// adding it with [`KeyRing::kek_insert`], so no value is ever sealed
    /// under a key that exists only in memory.
    pub fn kek_generate(&self) -> Result<Zeroizing<[u8; KEY_BYTES]>, CryptoError> {
        Ok(Zeroizing::new(random_bytes::<KEY_BYTES>(&self.rng)?))
    }

    /// Adds KEK `version` (not current until [`KeyRing::kek_make_current`]).
    /// Refuses a version that is loaded with other bytes.
    pub fn kek_insert(&self, version: u32, bytes: Zeroizing<[u8; KEY_BYTES]>) -> Result<(), CryptoError> {
        let key = Arc::new(AeadKey::new(version, bytes)?);
        self.write().keks.entry(version).or_insert(key);
        Ok(())
    }

    /// Makes the loaded KEK `version` the one new DEKs are wrapped under.
    pub fn kek_make_current(&self, version: u32) -> Result<(), CryptoError> {
        let mut set = self.write();
        if !set.keks.contains_key(&version) {
            return Err(CryptoError::UnknownKekVersion(version));
        }
        set.current = version;
        Ok(())
    }

    /// Removes KEK `version`; its bytes are zeroized once no wrap or unwrap
    /// in flight holds it. The current version cannot be removed.
    pub fn kek_remove(&self, version: u32) -> Result<(), CryptoError> {
        let mut set = self.write();
        if set.current == version {
            return Err(CryptoError::CurrentKek(version));
        }
        set.keks.remove(&version);
        Ok(())
    }

    /// The system random generator shared by every seal.
    pub fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    fn kek(&self, version: u32) -> Result<Arc<AeadKey>, CryptoError> {
        self.read().keks.get(&version).cloned().ok_or(CryptoError::UnknownKekVersion(version))
    }

    /// Creates a fresh DEK for `subject` and returns it with its wrapped form.
    pub fn dek_create(&self, subject: &[u8], dek_version: u32) -> Result<(Dek, WrappedDek), CryptoError> {
        let bytes = Zeroizing::new(random_bytes::<KEY_BYTES>(&self.rng)?);
        let wrapped = self.dek_wrap(subject, dek_version, &bytes)?;
        let dek = Dek { key: AeadKey::new(dek_version, bytes)? };
        Ok((dek, wrapped))
    }

    fn dek_wrap(&self, subject: &[u8], dek_version: u32, bytes: &[u8; KEY_BYTES]) -> Result<WrappedDek, CryptoError> {
        self.dek_wrap_under(self.current_version(), subject, dek_version, bytes)
    }

    fn dek_wrap_under(
        &self,
        kek_version: u32,
        subject: &[u8],
        dek_version: u32,
        bytes: &[u8; KEY_BYTES],
    ) -> Result<WrappedDek, CryptoError> {
        let kek = self.kek(kek_version)?;
        let header = wrapped_header(kek.version, dek_version);
        let aad = dek_aad(&header, subject);
        let sealed = kek.seal(&self.rng, &header, &aad, bytes)?;
        Ok(WrappedDek(sealed))
    }

    /// Unwraps the DEK of `subject`. Fails if the wrapped bytes belong to
    /// another subject, were altered, or name a KEK that is not loaded.
    ///
    /// Crate-private, and called only by `keys::dek_of_record`: a DEK unwrapped
    /// there seals new values (`subjects`) or, in `release`, opens values for
    /// a reader with a `Logged` proof, the only place [`Dek::open`](crate::crypto::Dek::open) may be
    /// called for that (clippy's `disallowed_methods`).
    pub(crate) fn dek_unwrap(&self, subject: &[u8], wrapped: &WrappedDek) -> Result<Dek, CryptoError> {
        let (dek_version, key) = self.dek_unwrap_bytes(subject, wrapped)?;
        Ok(Dek { key: AeadKey::new(dek_version, key)? })
    }

    /// Wraps `dek` (of `subject`) again, under KEK `kek_version`: a DEK made
    /// just before a rotation started is wrapped under the new KEK without
    /// needing the old one.
    pub(crate) fn dek_wrap_again(
        &self,
        kek_version: u32,
        subject: &[u8],
        dek: &Dek,
    ) -> Result<WrappedDek, CryptoError> {
        self.dek_wrap_under(kek_version, subject, dek.key.version, &dek.key.bytes)
    }

    /// Re-wraps a DEK under the current KEK (KEK rotation).
    pub fn dek_rewrap(&self, subject: &[u8], wrapped: &WrappedDek) -> Result<WrappedDek, CryptoError> {
        self.dek_rewrap_to(self.current_version(), subject, wrapped)
    }

    /// Re-wraps a DEK under KEK `kek_version`; the DEK itself (and so every
    /// value sealed under it) stays the same.
    pub fn dek_rewrap_to(
        &self,
        kek_version: u32,
        subject: &[u8],
        wrapped: &WrappedDek,
    ) -> Result<WrappedDek, CryptoError> {
        let (dek_version, key) = self.dek_unwrap_bytes(subject, wrapped)?;
        self.dek_wrap_under(kek_version, subject, dek_version, &key)
    }

    /// Replaces a subject's DEK by a fresh one of the next generation (when
    /// the old one has sealed as many values as it may). The replacement
    /// reseals the subject's values from the old DEK to the new one without
    /// handing their plaintext to its caller.
    pub(crate) fn dek_replace(&self, subject: &[u8], wrapped: &WrappedDek) -> Result<DekReplacement, CryptoError> {
        let old = self.dek_unwrap(subject, wrapped)?;
        let next = old.version().checked_add(1).ok_or(CryptoError::Malformed("DEK generation overflow"))?;
        let (new, new_wrapped) = self.dek_create(subject, next)?;
        Ok(DekReplacement { old, new, wrapped: new_wrapped })
    }

    fn dek_unwrap_bytes(
        &self,
        subject: &[u8],
        wrapped: &WrappedDek,
    ) -> Result<(u32, Zeroizing<[u8; KEY_BYTES]>), CryptoError> {
        let bytes = wrapped.as_bytes();
        if bytes.len() != WRAPPED_DEK_BYTES {
            return Err(CryptoError::Malformed("wrapped key length"));
        }
        if bytes[0] != WRAPPED_DEK_FORMAT {
            return Err(CryptoError::Malformed("unknown wrapped key format"));
        }
        let kek_version = read_u32(bytes, 1)?;
        let dek_version = read_u32(bytes, 5)?;
        let aad = dek_aad(&bytes[..WRAPPED_HEADER_BYTES], subject);
        let plaintext = self.kek(kek_version)?.open(&aad, &bytes[WRAPPED_HEADER_BYTES..])?;
        let key: [u8; KEY_BYTES] = plaintext.as_slice().try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok((dek_version, Zeroizing::new(key)))
    }

    /// Opens a sealed vault secret and seals it again under the current KEK
    /// (KEK rotation), without handing the secret to the caller.
    pub fn secret_reseal(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let plaintext = self.secret_open(label, sealed)?;
        self.secret_seal(label, &plaintext)
    }

    /// Seals a vault secret (a signing key, ...) under the current KEK. The
    /// `label` names the secret and is bound into the AAD.
    pub fn secret_seal(&self, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let kek = self.kek(self.current_version())?;
        let mut header = vec![SECRET_FORMAT];
        header.extend_from_slice(&kek.version.to_be_bytes());
        kek.seal(&self.rng, &header, &secret_aad(&header, label), plaintext)
    }

    /// Opens a secret made by [`KeyRing::secret_seal`] with the same label.
    pub fn secret_open(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let header = sealed.get(..VALUE_HEADER_BYTES).ok_or(CryptoError::Malformed("too short"))?;
        if header[0] != SECRET_FORMAT {
            return Err(CryptoError::Malformed("unknown secret format"));
        }
        let kek = self.kek(read_u32(header, 1)?)?;
        kek.open(&secret_aad(header, label), &sealed[VALUE_HEADER_BYTES..])
    }

    /// The KEK version a secret made by [`KeyRing::secret_seal`] is sealed under.
    pub fn secret_kek_version(sealed: &[u8]) -> Option<u32> {
        read_u32(sealed, 1).ok()
    }

    /// A value that proves, at start-up, that `version` is the key this data
    /// directory was sealed with.
    pub fn key_check_create(&self, version: u32) -> Result<Vec<u8>, CryptoError> {
        let kek = self.kek(version)?;
        let mut header = vec![KEY_CHECK_FORMAT];
        header.extend_from_slice(&version.to_be_bytes());
        let mut aad = KEY_CHECK_DOMAIN.to_vec();
        aad.extend_from_slice(&header);
        kek.seal(&self.rng, &header, &aad, &[])
    }

    /// Checks a value made by [`KeyRing::key_check_create`].
    pub fn key_check_verify(&self, version: u32, check: &[u8]) -> Result<(), CryptoError> {
        let kek = self.kek(version)?;
        let header = check.get(..VALUE_HEADER_BYTES).ok_or(CryptoError::Malformed("too short"))?;
        if header[0] != KEY_CHECK_FORMAT || read_u32(header, 1)? != version {
            return Err(CryptoError::Malformed("key check header"));
        }
        let mut aad = KEY_CHECK_DOMAIN.to_vec();
        aad.extend_from_slice(header);
        kek.open(&aad, &check[VALUE_HEADER_BYTES..]).map(|_| ())
    }
}

fn wrapped_header(kek_version: u32, dek_version: u32) -> [u8; WRAPPED_HEADER_BYTES] {
    let mut header = [0u8; WRAPPED_HEADER_BYTES];
    header[0] = WRAPPED_DEK_FORMAT;
    header[1..5].copy_from_slice(&kek_version.to_be_bytes());
    header[5..9].copy_from_slice(&dek_version.to_be_bytes());
    header
}

fn dek_aad(header: &[u8], subject: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_DOMAIN.len() + header.len() + 2 + subject.len());
    aad.extend_from_slice(DEK_DOMAIN);
    aad.extend_from_slice(header);
    push_length_prefixed(&mut aad, subject);
    aad
}

fn secret_aad(header: &[u8], label: &str) -> Vec<u8> {
    let mut aad = SECRET_DOMAIN.to_vec();
    aad.extend_from_slice(header);
    push_length_prefixed(&mut aad, label.as_bytes());
    aad
}

fn value_aad(header: &[u8], subject: &[u8], field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(VALUE_DOMAIN.len() + header.len() + 4 + subject.len() + field.len());
    aad.extend_from_slice(VALUE_DOMAIN);
    aad.extend_from_slice(header);
    push_length_prefixed(&mut aad, subject);
    push_length_prefixed(&mut aad, field.as_bytes());
    aad
}

/// A subject's DEK wrapped by a KEK; safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek(Vec<u8>);

impl WrappedDek {
    /// Takes stored bytes; they are checked when unwrapped.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The KEK version this DEK is wrapped under, if the header is readable.
    pub fn kek_version(&self) -> Option<u32> {
        read_u32(&self.0, 1).ok()
    }

    /// The DEK generation this wrapped key holds, if the header is readable.
    pub fn dek_version(&self) -> Option<u32> {
        read_u32(&self.0, 5).ok()
    }
}

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDek").field("kek_version", &self.kek_version()).finish_non_exhaustive()
    }
}

/// The name a message's text is sealed under, in the place of a field name
/// in the AAD (`message:<id>`): a sealed text moved to another message, or
/// to a field (whose names never hold `:`), does not open.
pub fn message_label(message: &str) -> String {
    format!("message:{message}")
}

/// An unwrapped data-encryption key. Zeroized on drop, never printed.
#[derive(Debug)]
pub struct Dek {
    key: AeadKey,
}

impl Dek {
    /// The DEK generation of this subject.
    pub fn version(&self) -> u32 {
        self.key.version
    }

    /// Seals one field value of `subject`.
    pub fn seal(
        &self,
        rng: &dyn SecureRandom,
        subject: &[u8],
        field: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let mut header = [0u8; VALUE_HEADER_BYTES];
        header[0] = VALUE_FORMAT;
        header[1..5].copy_from_slice(&self.key.version.to_be_bytes());
        let aad = value_aad(&header, subject, field);
        self.key.seal(rng, &header, &aad, plaintext).map(Sealed)
    }

    /// Opens a value sealed for (`subject`, `field`) under this DEK. Only
    /// `release` calls it for a value that leaves the process (enforced by
    /// clippy's `disallowed_methods`, `clippy.toml`).
    pub fn open(&self, subject: &[u8], field: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let bytes = sealed.as_bytes();
        let header = bytes.get(..VALUE_HEADER_BYTES).ok_or(CryptoError::Malformed("too short"))?;
        if header[0] != VALUE_FORMAT {
            return Err(CryptoError::Malformed("unknown value format"));
        }
        if read_u32(header, 1)? != self.key.version {
            return Err(CryptoError::Open);
        }
        let aad = value_aad(header, subject, field);
        self.key.open(&aad, &bytes[VALUE_HEADER_BYTES..])
    }
}

/// A subject's DEK being replaced: reseals values from the old DEK to the
/// new one inside this module, so the plaintext never reaches the caller.
#[derive(Debug)]
pub struct DekReplacement {
    old: Dek,
    new: Dek,
    wrapped: WrappedDek,
}

impl DekReplacement {
    /// The new DEK's generation.
    pub fn version(&self) -> u32 {
        self.new.version()
    }

    /// The new DEK, wrapped under the current KEK.
    pub fn wrapped(&self) -> &WrappedDek {
        &self.wrapped
    }

    /// Opens `sealed` (of `subject`, `field`) under the old DEK and seals it
    /// again under the new one.
    pub fn reseal(
        &self,
        rng: &dyn SecureRandom,
        subject: &[u8],
        field: &str,
        sealed: &Sealed,
    ) -> Result<Sealed, CryptoError> {
        // The plaintext stays in this function: sealed again, then zeroized.
        #[allow(clippy::disallowed_methods)]
        let plaintext = self.old.open(subject, field, sealed)?;
        self.new.seal(rng, subject, field, &plaintext)
    }
}

/// A sealed field value: `0x56 ‖ dek version ‖ nonce ‖ ciphertext ‖ tag`.
/// The only form in which a personal value reaches the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Takes stored bytes; they are authenticated when opened. (Opening
    /// needs the subject's DEK, which only the audited read path unwraps.)
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes to store, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]
    use super::*;

    fn ring_with(versions: &[u32]) -> KeyRing {
        let rng = SystemRandom::new();
        KeyRing::new(versions.iter().map(|&v| (v, Zeroizing::new(random_bytes(&rng).unwrap()))).collect()).unwrap()
    }

    const ALICE: &[u8] = &[1u8; 16];
    const BOB: &[u8] = &[2u8; 16];

    #[test]
    fn seal_then_open_round_trips() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada@example.org").unwrap();
        assert_eq!(dek.open(ALICE, "email", &sealed).unwrap().as_slice(), b"ada@example.org");
        let empty = dek.seal(ring.rng(), ALICE, "email", b"").unwrap();
        assert_eq!(dek.open(ALICE, "email", &empty).unwrap().as_slice(), b"");
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let a = dek.seal(ring.rng(), ALICE, "email", b"same").unwrap();
        let b = dek.seal(ring.rng(), ALICE, "email", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_value_never_contains_the_plaintext() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let canary = b"canary-7f3a9c-plaintext";
        let sealed = dek.seal(ring.rng(), ALICE, "email", canary).unwrap();
        assert!(!sealed.as_bytes().windows(canary.len()).any(|w| w == canary));
    }

    #[test]
    fn open_fails_for_every_flipped_bit() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada@example.org").unwrap();
        for bit in 0..sealed.as_bytes().len() * 8 {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(dek.open(ALICE, "email", &Sealed::from_bytes(bytes)).is_err(), "bit {bit} flipped but opened");
        }
    }

    #[test]
    fn open_fails_for_every_truncation() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada@example.org").unwrap();
        for len in 0..sealed.as_bytes().len() {
            let bytes = sealed.as_bytes()[..len].to_vec();
            assert!(dek.open(ALICE, "email", &Sealed::from_bytes(bytes)).is_err(), "truncated to {len} but opened");
        }
    }

    #[test]
    fn open_fails_under_a_wrong_key() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let (other, _) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada@example.org").unwrap();
        assert_eq!(other.open(ALICE, "email", &sealed), Err(CryptoError::Open));
    }

    #[test]
    fn value_moved_to_another_subject_or_field_fails_to_open() {
        let ring = ring_with(&[1]);
        let (dek, _) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada@example.org").unwrap();
        assert_eq!(dek.open(BOB, "email", &sealed), Err(CryptoError::Open));
        assert_eq!(dek.open(ALICE, "phone", &sealed), Err(CryptoError::Open));
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        let split = dek.seal(ring.rng(), b"ab", "c", b"x").unwrap();
        assert_eq!(dek.open(b"a", "bc", &split), Err(CryptoError::Open));
    }

    #[test]
    fn value_sealed_under_another_dek_version_fails_to_open() {
        let ring = ring_with(&[1]);
        let (old, _) = ring.dek_create(ALICE, 1).unwrap();
        let (new, _) = ring.dek_create(ALICE, 2).unwrap();
        let sealed = old.seal(ring.rng(), ALICE, "email", b"x").unwrap();
        assert!(new.open(ALICE, "email", &sealed).is_err());
    }

    #[test]
    fn wrapped_dek_unwraps_only_for_its_subject() {
        let ring = ring_with(&[1]);
        let (dek, wrapped) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(ring.rng(), ALICE, "email", b"ada").unwrap();
        let again = ring.dek_unwrap(ALICE, &wrapped).unwrap();
        assert_eq!(again.open(ALICE, "email", &sealed).unwrap().as_slice(), b"ada");
        assert_eq!(ring.dek_unwrap(BOB, &wrapped).unwrap_err(), CryptoError::Open);
    }

    #[test]
    fn wrapped_dek_fails_for_every_flipped_bit_and_truncation() {
        let ring = ring_with(&[1]);
        let (_, wrapped) = ring.dek_create(ALICE, 1).unwrap();
        for bit in 0..wrapped.as_bytes().len() * 8 {
            let mut bytes = wrapped.as_bytes().to_vec();
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(ring.dek_unwrap(ALICE, &WrappedDek::from_bytes(bytes)).is_err(), "bit {bit}");
        }
        for len in 0..wrapped.as_bytes().len() {
            let bytes = wrapped.as_bytes()[..len].to_vec();
            assert!(ring.dek_unwrap(ALICE, &WrappedDek::from_bytes(bytes)).is_err(), "len {len}");
        }
    }

    #[test]
    fn wrapped_dek_fails_under_another_kek() {
        let ring = ring_with(&[1]);
        let other = ring_with(&[1]);
        let (_, wrapped) = ring.dek_create(ALICE, 1).unwrap();
        assert_eq!(other.dek_unwrap(ALICE, &wrapped).unwrap_err(), CryptoError::Open);
    }

    #[test]
    fn rewrap_moves_a_dek_to_the_current_kek_and_keeps_it() {
        let rng = SystemRandom::new();
        let old_key: [u8; 32] = random_bytes(&rng).unwrap();
        let new_key: [u8; 32] = random_bytes(&rng).unwrap();
        let old_ring = KeyRing::new(vec![(1, Zeroizing::new(old_key))]).unwrap();
        let (dek, wrapped) = old_ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(old_ring.rng(), ALICE, "email", b"ada").unwrap();
        let both = KeyRing::new(vec![(1, Zeroizing::new(old_key)), (2, Zeroizing::new(new_key))]).unwrap();
        let rewrapped = both.dek_rewrap(ALICE, &wrapped).unwrap();
        assert_eq!(rewrapped.kek_version(), Some(2));
        let only_new = KeyRing::new(vec![(2, Zeroizing::new(new_key))]).unwrap();
        let dek = only_new.dek_unwrap(ALICE, &rewrapped).unwrap();
        assert_eq!(dek.open(ALICE, "email", &sealed).unwrap().as_slice(), b"ada");
        assert_eq!(only_new.dek_unwrap(ALICE, &wrapped).unwrap_err(), CryptoError::UnknownKekVersion(1));
    }

    #[test]
    fn secrets_open_only_under_their_label_and_key() {
        let ring = ring_with(&[1]);
        let sealed = ring.secret_seal("audit-signing-key", b"pkcs8").unwrap();
        assert_eq!(ring.secret_open("audit-signing-key", &sealed).unwrap().as_slice(), b"pkcs8");
        assert_eq!(ring.secret_open("other", &sealed), Err(CryptoError::Open));
        assert!(ring_with(&[1]).secret_open("audit-signing-key", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(ring.secret_open("audit-signing-key", &flipped).is_err());
    }

    #[test]
    fn key_check_detects_a_different_key() {
        let ring = ring_with(&[1]);
        let check = ring.key_check_create(1).unwrap();
        ring.key_check_verify(1, &check).unwrap();
        assert!(ring_with(&[1]).key_check_verify(1, &check).is_err());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let rng = SystemRandom::new();
        let bytes = [0xABu8; 32];
        let ring = KeyRing::new(vec![(7, Zeroizing::new(bytes))]).unwrap();
        let (dek, wrapped) = ring.dek_create(ALICE, 1).unwrap();
        let sealed = dek.seal(&rng, ALICE, "f", b"secret").unwrap();
        for text in [format!("{ring:?}"), format!("{dek:?}"), format!("{wrapped:?}"), format!("{sealed:?}")] {
            assert!(!text.contains("171") && !text.to_lowercase().contains("ab, ab"), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
    }
}
