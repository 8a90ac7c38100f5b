//! C2SP `tlog-checkpoint` bodies and C2SP `signed-note` Ed25519 signatures.
//!
//! A checkpoint commits the audit log to a tree size and RFC 9162 root hash.
//! It is published as a signed note so that outside tools (Go's
//! `golang.org/x/mod/sumdb/note`, transparency-dev witnesses, …) can verify
//! it with nothing but our verifier key string.
//!
//! Formats (c2sp.org/tlog-checkpoint, c2sp.org/signed-note):
//! - body: `<origin>\n<tree size, decimal>\n<base64(root)>\n[<extension>\n]*`
//! - signed note: `<body>\n— <key name> <base64(key ID ‖ Ed25519 signature)>\n`
//! - key ID: first 4 bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`
//! - verifier key: `<key name>+<key ID, 8 hex digits>+<base64(0x01 ‖ public key)>`
//!
//! Guarantees:
//! - [`Checkpoint::body`] only emits bodies that [`Checkpoint::parse_body`]
//!   accepts and maps back to the same value; parsing is strict (canonical
//!   decimal, canonical base64, exactly 32 hash bytes, no empty lines).
//! - [`NoteSigner::sign_note`] only signs text that is a valid note text, so
//!   every note it emits opens with [`NoteVerifier::open`] and with Go's
//!   `note.Open`.
//! - [`NoteVerifier::open`] returns the text only if a signature line with
//!   the verifier's key name *and* key ID verifies; every signature line must
//!   be well-formed, every line from the verifier's key must verify, and
//!   lines from other keys are otherwise ignored.
//! - Private key material never appears in `Debug` output or errors.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest;
use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use super::merkle::Hash;

/// Signature type byte for Ed25519 in key IDs and verifier keys
/// (c2sp.org/signed-note "Signature types").
const ALG_ED25519: u8 = 0x01;

/// Length of an Ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;

/// Every signature line starts with an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The most signature lines [`NoteVerifier::open`] accepts. The spec asks
/// for a limit of at least 16; 100 is the limit of Go's `note.Open`.
pub const MAX_SIGNATURES: usize = 100;

/// A 4-byte key ID, big-endian as it appears in signatures.
pub type KeyId = [u8; 4];

/// A checkpoint body was malformed, or a [`Checkpoint`] cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The body does not end in a newline.
    #[error("checkpoint body does not end in a newline")]
    MissingFinalNewline,
    /// The body has fewer than the three mandatory lines.
    #[error("checkpoint body has fewer than three lines")]
    TooFewLines,
    /// A line (1-based) is empty: the origin and extension lines must not be.
    #[error("checkpoint line {line} is empty")]
    EmptyLine {
        /// 1-based line number.
        line: usize,
    },
    /// A line (1-based) contains an ASCII control character (a newline
    /// inside an origin or extension value counts as one).
    #[error("checkpoint line {line} contains a control character")]
    ControlCharacter {
        /// 1-based line number.
        line: usize,
    },
    /// The tree size is not a canonical decimal `u64` (digits only, no
    /// leading zeros, no sign, in range).
    #[error("checkpoint tree size is not a canonical decimal number")]
    InvalidTreeSize,
    /// The root hash is not the canonical standard base64 of 32 bytes.
    #[error("checkpoint root hash is not base64 of 32 bytes")]
    InvalidRootHash,
}

/// A signer or verifier key could not be created or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key name is empty or contains `+`, Unicode whitespace or an
    /// ASCII control character.
    #[error("invalid key name")]
    InvalidName,
    /// The PKCS#8 document is not a usable Ed25519 private key (ring's
    /// reason attached; it never contains key material).
    #[error("Ed25519 PKCS#8 key rejected: {0}")]
    InvalidPrivateKey(String),
    /// The random number generator failed while generating a key.
    #[error("random number generator failed")]
    Rng,
    /// The verifier key string is not `<name>+<8 hex digits>+<base64>`.
    #[error("malformed verifier key")]
    MalformedVerifierKey,
    /// The verifier key is for a signature type other than Ed25519 (`0x01`).
    #[error("unsupported signature type {0:#04x} in verifier key")]
    UnsupportedAlgorithm(u8),
    /// The key ID in the verifier key does not match its name and key.
    #[error("verifier key ID does not match its name and public key")]
    KeyIdMismatch,
}

/// A note could not be signed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The text to sign does not end in a newline or contains an ASCII
    /// control character other than newline.
    #[error("text cannot be signed as a note")]
    InvalidText,
    /// The signed note does not follow the signed-note format; the reason
    /// says which rule it breaks.
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    /// No signature line carries the verifier's key name and key ID.
    #[error("note has no signature from the verifier's key")]
    UnknownKey,
    /// A signature line with the verifier's key name and key ID does not
    /// verify.
    #[error("invalid signature from the verifier's key")]
    BadSignature,
    /// The verified text is not a valid checkpoint body.
    #[error("signed note is not a valid checkpoint")]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint is for a different log than expected.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    OriginMismatch {
        /// The origin the caller expected.
        expected: String,
        /// The origin in the checkpoint.
        found: String,
    },
}

/// A tlog-checkpoint: the log's identity, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the log (e.g. `consentvault.example/audit`). Non-empty, no
    /// control characters; should equal the signing key name.
    pub origin: String,
    /// Number of leaves in the tree.
    pub tree_size: u64,
    /// RFC 9162 root hash of the first `tree_size` leaves.
    pub root: Hash,
    /// Optional opaque extension lines (without their newlines), kept in
    /// order. The spec discourages them; they are preserved, not emitted by
    /// default.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, tree_size: u64, root: Hash) -> Self {
        Self { origin: origin.into(), tree_size, root, extensions: Vec::new() }
    }

    /// The note text: origin, size, base64 root and extensions, each line
    /// terminated by a newline.
    ///
    /// Fails if the origin or an extension is empty or contains a control
    /// character (including a newline), because the result would not parse
    /// back to the same checkpoint.
    pub fn body(&self) -> Result<String, CheckpointError> {
        check_line(&self.origin, 1)?;
        for (i, extension) in self.extensions.iter().enumerate() {
            check_line(extension, i + 4)?;
        }
        let mut body = format!("{}\n{}\n{}\n", self.origin, self.tree_size, BASE64.encode(self.root));
        for extension in &self.extensions {
            body.push_str(extension);
            body.push('\n');
        }
        Ok(body)
    }

    /// Parses a checkpoint body (the verified text of a signed note).
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let text = text.strip_suffix('\n').ok_or(CheckpointError::MissingFinalNewline)?;
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(CheckpointError::TooFewLines);
        };
        check_line(origin, 1)?;
        let tree_size = parse_tree_size(size)?;
        let root = parse_root(root)?;
        let extensions = lines
            .enumerate()
            .map(|(i, line)| check_line(line, i + 4).map(|()| line.to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(Self { origin: origin.to_owned(), tree_size, root, extensions })
    }
}

/// Origin and extension lines must be non-empty and free of control
/// characters (a newline would split the line).
fn check_line(line: &str, number: usize) -> Result<(), CheckpointError> {
    if line.is_empty() {
        return Err(CheckpointError::EmptyLine { line: number });
    }
    if line.chars().any(|c| c.is_ascii_control()) {
        return Err(CheckpointError::ControlCharacter { line: number });
    }
    Ok(())
}

/// Canonical decimal only: `u64::from_str` would also take `+5` and `007`,
/// which would give one checkpoint several encodings.
fn parse_tree_size(line: &str) -> Result<u64, CheckpointError> {
    let canonical =
        !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) && (line == "0" || !line.starts_with('0'));
    if !canonical {
        return Err(CheckpointError::InvalidTreeSize);
    }
    line.parse().map_err(|_| CheckpointError::InvalidTreeSize)
}

/// The `STANDARD` engine requires canonical padding and zero trailing bits,
/// so each root has exactly one accepted encoding.
fn parse_root(line: &str) -> Result<Hash, CheckpointError> {
    BASE64.decode(line).ok().and_then(|bytes| Hash::try_from(bytes).ok()).ok_or(CheckpointError::InvalidRootHash)
}

/// Key name rules of c2sp.org/signed-note (non-empty, no `+`, no Unicode
/// whitespace), plus no control characters, which a note may not contain.
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c == '+' || c.is_whitespace() || c.is_control())
}

/// Whether `text` may appear in a signed note: no ASCII control characters
/// other than newline (the spec's rule; `&str` is already valid UTF-8).
fn has_only_allowed_characters(text: &str) -> bool {
    !text.bytes().any(|b| b < 0x20 && b != b'\n')
}

/// The recommended Ed25519 key ID:
/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4]`.
pub fn ed25519_key_id(name: &str, public_key: &[u8; PUBLIC_KEY_LEN]) -> KeyId {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(name.as_bytes());
    context.update(b"\n");
    context.update(&[ALG_ED25519]);
    context.update(public_key);
    let digest = context.finish();
    let mut id = [0u8; 4];
    // Invariant: a SHA-256 digest has 32 bytes, so the first 4 exist.
    id.copy_from_slice(&digest.as_ref()[..4]);
    id
}

/// `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
fn format_verifier_key(name: &str, key_id: &KeyId, public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    let mut key = Vec::with_capacity(1 + PUBLIC_KEY_LEN);
    key.push(ALG_ED25519);
    key.extend_from_slice(public_key);
    format!("{name}+{:08x}+{}", u32::from_be_bytes(*key_id), BASE64.encode(key))
}

/// Signs notes with an Ed25519 key held by ring.
pub struct NoteSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    public_key: [u8; PUBLIC_KEY_LEN],
    key_id: KeyId,
}

impl fmt::Debug for NoteSigner {
    /// Shows only the key name and key ID: the key pair stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", u32::from_be_bytes(self.key_id)))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Loads a signer named `name` from an Ed25519 PKCS#8 document (v2 as
    /// made by [`NoteSigner::generate_pkcs8`], or v1 as made by
    /// `openssl genpkey -algorithm ed25519`). A v2 document's public key is
    /// checked against its private key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::InvalidName);
        }
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))?;
        let public_key: [u8; PUBLIC_KEY_LEN] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::InvalidPrivateKey("public key is not 32 bytes".into()))?;
        let key_id = ed25519_key_id(name, &public_key);
        Ok(Self { name: name.to_owned(), key_pair, public_key, key_id })
    }

    /// Generates a new Ed25519 key and returns it as a PKCS#8 v2 document.
    /// The caller must store it sealed: it is the log's signing key.
    pub fn generate_pkcs8(rng: &dyn SecureRandom) -> Result<Vec<u8>, KeyError> {
        let document = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| KeyError::Rng)?;
        Ok(document.as_ref().to_vec())
    }

    /// The key name that appears in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID that prefixes every signature.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public_key
    }

    /// The verifier key string to publish, as accepted by Go's
    /// `note.NewVerifier` and [`NoteVerifier::parse`].
    pub fn verifier_key(&self) -> String {
        format_verifier_key(&self.name, &self.key_id, &self.public_key)
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key_id: self.key_id, public_key: self.public_key }
    }

    /// Signs `text` and returns the complete signed note: the text, a blank
    /// line and one signature line.
    ///
    /// `text` must end in a newline and contain no ASCII control character
    /// other than newline.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || !has_only_allowed_characters(text) {
            return Err(NoteError::InvalidText);
        }
        let signature = self.key_pair.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + signature.as_ref().len());
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(signature.as_ref());
        Ok(format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(blob)))
    }

    /// Encodes and signs a checkpoint.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> Result<String, NoteError> {
        self.sign_note(&checkpoint.body()?)
    }
}

/// Verifies notes signed by one Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: KeyId,
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl NoteVerifier {
    /// A verifier for `public_key` under `name`, with the recommended key ID.
    pub fn new(name: &str, public_key: [u8; PUBLIC_KEY_LEN]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::InvalidName);
        }
        let key_id = ed25519_key_id(name, &public_key);
        Ok(Self { name: name.to_owned(), key_id, public_key })
    }

    /// Parses a verifier key string `<name>+<hex key ID>+<base64(0x01 ‖ key)>`
    /// and checks that the key ID matches the name and key.
    pub fn parse(vkey: &str) -> Result<Self, KeyError> {
        // The name cannot contain '+', the hex ID cannot either, and the
        // base64 key may: so split at the first two only.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::MalformedVerifierKey);
        };
        if !is_valid_key_name(name) {
            return Err(KeyError::InvalidName);
        }
        // Exactly 8 hex digits; `from_str_radix` alone would accept a sign.
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::MalformedVerifierKey);
        }
        let key_id = u32::from_str_radix(id_hex, 16).map_err(|_| KeyError::MalformedVerifierKey)?.to_be_bytes();
        let key = BASE64.decode(key_b64).map_err(|_| KeyError::MalformedVerifierKey)?;
        let (&algorithm, public_key) = key.split_first().ok_or(KeyError::MalformedVerifierKey)?;
        if algorithm != ALG_ED25519 {
            return Err(KeyError::UnsupportedAlgorithm(algorithm));
        }
        let public_key: [u8; PUBLIC_KEY_LEN] = public_key.try_into().map_err(|_| KeyError::MalformedVerifierKey)?;
        let verifier = Self::new(name, public_key)?;
        if verifier.key_id != key_id {
            return Err(KeyError::KeyIdMismatch);
        }
        Ok(verifier)
    }

    /// The key name this verifier accepts signatures under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID this verifier accepts signatures under.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public_key
    }

    /// The verifier key string (inverse of [`NoteVerifier::parse`]).
    pub fn verifier_key(&self) -> String {
        format_verifier_key(&self.name, &self.key_id, &self.public_key)
    }

    /// Verifies a signed note and returns its text (ending in a newline).
    ///
    /// The note is split at its last blank line. Every signature line must
    /// be well-formed (em dash, space, valid key name, space, canonical
    /// base64 of at least 5 bytes) or the note is [`NoteError::Malformed`];
    /// lines from other keys are then ignored. Every line carrying this
    /// verifier's name and key ID must verify ([`NoteError::BadSignature`]
    /// otherwise, as the spec recommends rejecting the whole note), and at
    /// least one must exist ([`NoteError::UnknownKey`] otherwise).
    pub fn open(&self, signed_note: &str) -> Result<String, NoteError> {
        if !has_only_allowed_characters(signed_note) {
            return Err(NoteError::Malformed("contains a control character"));
        }
        let split = signed_note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        // The text keeps its final newline; the blank line belongs to neither.
        let (text, signatures) = (&signed_note[..=split], &signed_note[split + 2..]);
        let signatures =
            signatures.strip_suffix('\n').ok_or(NoteError::Malformed("signature block does not end in a newline"))?;

        let public_key = signature::UnparsedPublicKey::new(&signature::ED25519, &self.public_key);
        let mut verified = false;
        for (count, line) in signatures.split('\n').enumerate() {
            if count >= MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            let (name, key_id, sig) = parse_signature_line(line)?;
            if name != self.name || key_id != self.key_id {
                continue;
            }
            public_key.verify(text.as_bytes(), &sig).map_err(|_| NoteError::BadSignature)?;
            verified = true;
        }
        if verified { Ok(text.to_owned()) } else { Err(NoteError::UnknownKey) }
    }

    /// Verifies a signed checkpoint and parses it, requiring its origin to
    /// be `origin` (the log the caller means to check).
    pub fn open_checkpoint(&self, signed_note: &str, origin: &str) -> Result<Checkpoint, NoteError> {
        let checkpoint = Checkpoint::parse_body(&self.open(signed_note)?)?;
        if checkpoint.origin != origin {
            return Err(NoteError::OriginMismatch { expected: origin.to_owned(), found: checkpoint.origin });
        }
        Ok(checkpoint)
    }
}

/// Splits `— <name> <base64(key ID ‖ signature)>` (without its newline)
/// into name, key ID and signature bytes.
fn parse_signature_line(line: &str) -> Result<(&str, KeyId, Vec<u8>), NoteError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(NoteError::Malformed("signature line does not start with an em dash"))?;
    let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed("signature line has no signature"))?;
    if !is_valid_key_name(name) {
        return Err(NoteError::Malformed("invalid key name in signature line"));
    }
    let mut blob = BASE64.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
    // A key ID plus at least one byte of signature.
    if blob.len() < 5 {
        return Err(NoteError::Malformed("signature too short"));
    }
    let signature = blob.split_off(4);
    let mut key_id = [0u8; 4];
    key_id.copy_from_slice(&blob);
    Ok((name, key_id, signature))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::audit::merkle::{MemoryTree, leaf_hash};
    use ring::rand::SystemRandom;

    fn new_signer(name: &str) -> NoteSigner {
        let pkcs8 = NoteSigner::generate_pkcs8(&SystemRandom::new()).unwrap();
        NoteSigner::from_pkcs8(name, &pkcs8).unwrap()
    }

    fn sample_checkpoint() -> Checkpoint {
        let mut tree = MemoryTree::new();
        for i in 0..13u32 {
            tree.push(&i.to_be_bytes());
        }
        Checkpoint::new("consentvault.example/audit", tree.len(), tree.root())
    }

    /// The Go `sumdb/note` test key (note_test.go): name PeterNeumann,
    /// private key `PRIVATE+KEY+PeterNeumann+c74f20a3+<base64(0x01 ‖ seed)>`.
    const GO_SKEY_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_PETER_SIG: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const GO_ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const GO_ENOCH_SIG: &str =
        "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    /// The Go test key as a PKCS#8 v1 document (RFC 8410 §7 layout: a fixed
    /// 16-byte prefix, then the 32-byte seed).
    fn go_signer() -> NoteSigner {
        let skey = BASE64.decode(GO_SKEY_B64).unwrap();
        assert_eq!(skey[0], ALG_ED25519);
        let mut pkcs8 =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        pkcs8.extend_from_slice(&skey[1..]);
        NoteSigner::from_pkcs8("PeterNeumann", &pkcs8).unwrap()
    }

    #[test]
    fn body_matches_spec_example() {
        // The body of the example in c2sp.org/tlog-checkpoint.
        let text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let checkpoint = Checkpoint::parse_body(text).unwrap();
        assert_eq!(checkpoint.origin, "example.com/behind-the-sofa");
        assert_eq!(checkpoint.tree_size, 20_852_163);
        assert_eq!(checkpoint.root[..3], [0x0a, 0xc5, 0x18]);
        assert!(checkpoint.extensions.is_empty());
        assert_eq!(checkpoint.body().unwrap(), text);
    }

    #[test]
    fn body_round_trip_with_extensions() {
        let mut checkpoint = sample_checkpoint();
        checkpoint.extensions = vec!["— ext one".into(), "two 2".into()];
        let body = checkpoint.body().unwrap();
        assert!(body.ends_with("\n— ext one\ntwo 2\n"));
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), checkpoint);

        let empty = Checkpoint::new("o", 0, crate::audit::merkle::empty_root());
        assert_eq!(empty.body().unwrap(), "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n");
        assert_eq!(Checkpoint::parse_body(&empty.body().unwrap()).unwrap(), empty);
        let max = Checkpoint::new("o", u64::MAX, [0xff; 32]);
        assert_eq!(Checkpoint::parse_body(&max.body().unwrap()).unwrap(), max);
    }

    #[test]
    fn parse_body_is_strict() {
        let root = BASE64.encode([7u8; 32]);
        let ok = format!("o\n5\n{root}\n");
        assert!(Checkpoint::parse_body(&ok).is_ok());
        let cases: Vec<(String, CheckpointError)> = vec![
            (format!("o\n5\n{root}"), CheckpointError::MissingFinalNewline),
            ("o\n5\n".into(), CheckpointError::TooFewLines),
            (String::new(), CheckpointError::MissingFinalNewline),
            (format!("\n5\n{root}\n"), CheckpointError::EmptyLine { line: 1 }),
            (format!("o\n5\n{root}\n\n"), CheckpointError::EmptyLine { line: 4 }),
            (format!("o\n5\n{root}\next\n\n"), CheckpointError::EmptyLine { line: 5 }),
            (format!("o\tx\n5\n{root}\n"), CheckpointError::ControlCharacter { line: 1 }),
            (format!("o\n5\n{root}\ne\rx\n"), CheckpointError::ControlCharacter { line: 4 }),
            (format!("o\n05\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n+5\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n-5\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n 5\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n18446744073709551616\n{root}\n"), CheckpointError::InvalidTreeSize),
            (format!("o\n5\n{}\n", BASE64.encode([7u8; 31])), CheckpointError::InvalidRootHash),
            (format!("o\n5\n{}\n", BASE64.encode([7u8; 33])), CheckpointError::InvalidRootHash),
            (format!("o\n5\n{}\n", &root[..43]), CheckpointError::InvalidRootHash),
            // Non-canonical: the last symbol has non-zero trailing bits.
            (format!("o\n5\n{}x=\n", &root[..42]), CheckpointError::InvalidRootHash),
            // URL-safe alphabet.
            (
                format!("o\n5\n{}\n", BASE64.encode([0xfb; 32]).replace('+', "-").replace('/', "_")),
                CheckpointError::InvalidRootHash,
            ),
            // Padding missing.
            (format!("o\n5\n{}\n", root.trim_end_matches('=')), CheckpointError::InvalidRootHash),
        ];
        for (text, expected) in cases {
            assert_eq!(Checkpoint::parse_body(&text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn body_rejects_unencodable_fields() {
        let mut c = sample_checkpoint();
        c.origin = String::new();
        assert_eq!(c.body(), Err(CheckpointError::EmptyLine { line: 1 }));
        c.origin = "a\nb".into();
        assert_eq!(c.body(), Err(CheckpointError::ControlCharacter { line: 1 }));
        let mut c = sample_checkpoint();
        c.extensions = vec!["fine".into(), String::new()];
        assert_eq!(c.body(), Err(CheckpointError::EmptyLine { line: 5 }));
        c.extensions = vec!["a\nb".into()];
        assert_eq!(c.body(), Err(CheckpointError::ControlCharacter { line: 4 }));
        let signer = new_signer("consentvault.example/audit");
        assert_eq!(
            signer.sign_checkpoint(&c),
            Err(NoteError::Checkpoint(CheckpointError::ControlCharacter { line: 4 }))
        );
    }

    #[test]
    fn sign_and_open_round_trip() {
        let checkpoint = sample_checkpoint();
        let signer = new_signer(&checkpoint.origin);
        let note = signer.sign_checkpoint(&checkpoint).unwrap();
        let body = checkpoint.body().unwrap();
        assert!(note.starts_with(&format!("{body}\n— consentvault.example/audit ")));
        assert!(note.ends_with('\n'));
        assert_eq!(note.lines().count(), 5);

        let verifier = signer.verifier();
        assert_eq!(verifier.open(&note).unwrap(), body);
        assert_eq!(verifier.open_checkpoint(&note, &checkpoint.origin).unwrap(), checkpoint);
        assert_eq!(
            verifier.open_checkpoint(&note, "other.example/log"),
            Err(NoteError::OriginMismatch { expected: "other.example/log".into(), found: checkpoint.origin.clone() })
        );
        // Notes that are not checkpoints open but do not parse.
        let note = signer.sign_note("just text\n").unwrap();
        assert_eq!(verifier.open(&note).unwrap(), "just text\n");
        assert_eq!(
            verifier.open_checkpoint(&note, "just text"),
            Err(NoteError::Checkpoint(CheckpointError::TooFewLines))
        );
        // Texts with blank lines, including a trailing one, still split right.
        for text in ["a\n\nb\n", "a\n\n", "\n", "a\n\n\n"] {
            let note = signer.sign_note(text).unwrap();
            assert_eq!(verifier.open(&note).unwrap(), text);
        }
    }

    #[test]
    fn sign_note_rejects_invalid_text() {
        let signer = new_signer("k");
        for text in ["", "no newline", "tab\there\n", "cr\r\n", "nul\0\n"] {
            assert_eq!(signer.sign_note(text), Err(NoteError::InvalidText), "{text:?}");
        }
    }

    /// Replaces the first occurrence of `from` in the text part only.
    fn tamper_text(note: &str, from: &str, to: &str) -> String {
        let split = note.rfind("\n\n").unwrap();
        format!("{}{}", note[..split].replacen(from, to, 1), &note[split..])
    }

    #[test]
    fn tampering_is_detected() {
        let checkpoint = sample_checkpoint();
        let signer = new_signer(&checkpoint.origin);
        let verifier = signer.verifier();
        let note = signer.sign_checkpoint(&checkpoint).unwrap();
        let root_b64 = BASE64.encode(checkpoint.root);

        // Text changes: size, root, origin.
        let mut other_root = checkpoint.root;
        other_root[0] ^= 1;
        for bad in [
            tamper_text(&note, "\n13\n", "\n14\n"),
            tamper_text(&note, &root_b64, &BASE64.encode(other_root)),
            tamper_text(&note, "consentvault.example", "consentvault.exampla"),
        ] {
            assert_ne!(bad, note);
            assert_eq!(verifier.open(&bad), Err(NoteError::BadSignature));
        }

        // Signature bytes: flip a bit in each signature byte (the key ID is
        // bytes 0..4).
        let line = note.lines().last().unwrap();
        let prefix = format!("— {} ", signer.name());
        let blob = BASE64.decode(line.strip_prefix(&prefix).unwrap()).unwrap();
        assert_eq!(blob.len(), 68);
        assert_eq!(blob[..4], signer.key_id());
        let relabel = |blob: &[u8], name: &str| {
            let split = note.rfind("\n\n").unwrap();
            format!("{}— {name} {}\n", &note[..split + 2], BASE64.encode(blob))
        };
        assert_eq!(verifier.open(&relabel(&blob, signer.name())).unwrap(), checkpoint.body().unwrap());
        for i in 4..68 {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(verifier.open(&relabel(&bad, signer.name())), Err(NoteError::BadSignature));
        }
        // Truncated or extended signature under the right key: bad signature.
        assert_eq!(verifier.open(&relabel(&blob[..67], signer.name())), Err(NoteError::BadSignature));
        let mut long = blob.clone();
        long.push(0);
        assert_eq!(verifier.open(&relabel(&long, signer.name())), Err(NoteError::BadSignature));

        // Key ID or name changed: the line is from some other key, so it is
        // ignored and no signature from our key remains.
        for i in 0..4 {
            let mut bad = blob.clone();
            bad[i] ^= 0x80;
            assert_eq!(verifier.open(&relabel(&bad, signer.name())), Err(NoteError::UnknownKey));
        }
        assert_eq!(verifier.open(&relabel(&blob, "consentvault.example/audit2")), Err(NoteError::UnknownKey));

        // A different key with the same name is a different key ID.
        let impostor = new_signer("consentvault.example/audit");
        assert_ne!(impostor.key_id(), signer.key_id());
        let forged = impostor.sign_checkpoint(&checkpoint).unwrap();
        assert_eq!(verifier.open(&forged), Err(NoteError::UnknownKey));
    }

    #[test]
    fn other_keys_are_ignored_but_our_bad_lines_are_not() {
        let checkpoint = sample_checkpoint();
        let ours = new_signer(&checkpoint.origin);
        let theirs = new_signer("witness.example/w1");
        let note = ours.sign_checkpoint(&checkpoint).unwrap();
        let their_line = theirs.sign_checkpoint(&checkpoint).unwrap();
        let their_line = &their_line[their_line.rfind("\n\n").unwrap() + 2..];
        let our_line = &note[note.rfind("\n\n").unwrap() + 2..];
        let body = checkpoint.body().unwrap();

        let cosigned = format!("{body}\n{their_line}{our_line}");
        assert_eq!(ours.verifier().open(&cosigned).unwrap(), body);
        assert_eq!(theirs.verifier().open(&cosigned).unwrap(), body);
        // Duplicate valid lines are fine.
        assert!(ours.verifier().open(&format!("{body}\n{our_line}{our_line}")).is_ok());
        // A bad line from our key rejects the note even next to a good one,
        // in either order.
        let prefix = format!("— {} ", ours.name());
        let mut blob = BASE64.decode(our_line.trim_end().strip_prefix(&prefix).unwrap()).unwrap();
        blob[40] ^= 0x04;
        let bad_line = format!("{prefix}{}\n", BASE64.encode(&blob));
        for mixed in [format!("{body}\n{our_line}{bad_line}"), format!("{body}\n{bad_line}{our_line}")] {
            assert_eq!(ours.verifier().open(&mixed), Err(NoteError::BadSignature));
            // The other key's verifier does not care about our bad line.
            let with_theirs = mixed.replacen(our_line, their_line, 1);
            assert_eq!(theirs.verifier().open(&with_theirs).unwrap(), body);
        }
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let signer = new_signer("k");
        let verifier = signer.verifier();
        let note = signer.sign_note("hello\n").unwrap();
        let line = &note["hello\n\n".len()..];
        let sig_b64 = line.trim_end().rsplit(' ').next().unwrap();
        let malformed = [
            "hello\n".to_owned(),
            "hello\n\n".to_owned(),
            note.trim_end().to_owned(),
            format!("\x01{note}"),
            format!("hello\n\n- k {sig_b64}\n"),
            format!("hello\n\n—k {sig_b64}\n"),
            "hello\n\n— k\n".to_owned(),
            "hello\n\n— k \n".to_owned(),
            format!("hello\n\n— b+d {sig_b64}\n"),
            format!("hello\n\n— k {sig_b64}x\n"),
            format!("hello\n\n— k {}\n", &sig_b64[..sig_b64.len() - 1]),
            "hello\n\n— k AAAAAA==\n".to_owned(),
            format!("hello\n\n— k {sig_b64} extra\n"),
            format!("{note}Unexpected line.\n"),
            format!("{note}\n"),
            format!("hello\n\n{}", line.repeat(MAX_SIGNATURES + 1)),
        ];
        for bad in &malformed {
            assert!(matches!(verifier.open(bad), Err(NoteError::Malformed(_))), "{bad:?} -> {:?}", verifier.open(bad));
        }
        // The limit itself is fine.
        let many = format!("hello\n\n{}", line.repeat(MAX_SIGNATURES));
        assert_eq!(verifier.open(&many).unwrap(), "hello\n");
    }

    #[test]
    fn key_id_matches_formula() {
        let signer = new_signer("consentvault.example/audit");
        let mut input = b"consentvault.example/audit".to_vec();
        input.push(0x0a);
        input.push(0x01);
        input.extend_from_slice(&signer.public_key());
        let hash = digest::digest(&digest::SHA256, &input);
        assert_eq!(signer.key_id()[..], hash.as_ref()[..4]);
        assert_eq!(signer.verifier().key_id(), signer.key_id());
        assert_eq!(
            signer.verifier_key(),
            format!(
                "consentvault.example/audit+{}+{}",
                hash.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect::<String>(),
                BASE64.encode([&[0x01u8][..], &signer.public_key()].concat())
            )
        );
    }

    #[test]
    fn signature_verifies_with_ed25519_dalek() {
        use ed25519_dalek::{Signature, VerifyingKey};
        let checkpoint = sample_checkpoint();
        let signer = new_signer(&checkpoint.origin);
        let note = signer.sign_checkpoint(&checkpoint).unwrap();
        let text = checkpoint.body().unwrap();
        let line = note.lines().last().unwrap();
        let blob = BASE64.decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(blob[..4], signer.key_id());
        let signature = Signature::from_bytes(&blob[4..].try_into().unwrap());
        let key = VerifyingKey::from_bytes(&signer.public_key()).unwrap();
        key.verify_strict(text.as_bytes(), &signature).unwrap();
        // And not over anything else, e.g. the text without its final newline.
        assert!(key.verify_strict(text.trim_end().as_bytes(), &signature).is_err());
    }

    #[test]
    fn verifier_key_round_trip() {
        let signer = new_signer("consentvault.example/audit");
        let vkey = signer.verifier_key();
        let parsed = NoteVerifier::parse(&vkey).unwrap();
        assert_eq!(parsed, signer.verifier());
        assert_eq!(parsed.verifier_key(), vkey);
        assert_eq!(parsed.name(), signer.name());
        assert_eq!(parsed.public_key(), signer.public_key());
        assert_eq!(NoteVerifier::new(signer.name(), signer.public_key()).unwrap(), parsed);
    }

    #[test]
    fn verifier_key_parse_errors() {
        assert_eq!(NoteVerifier::parse(GO_VKEY).unwrap().name(), "PeterNeumann");
        // Go's mangling test: every proper substring and every single-byte
        // increment must be rejected.
        let b = GO_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let s = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(NoteVerifier::parse(s).is_err(), "{s}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let s = String::from_utf8(m).unwrap();
            assert!(NoteVerifier::parse(&s).is_err(), "{s}");
        }
        assert_eq!(
            NoteVerifier::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(KeyError::KeyIdMismatch)
        );
        // Go's "unknown algorithm, with adjusted key hash".
        assert_eq!(
            NoteVerifier::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
            Err(KeyError::UnsupportedAlgorithm(0x65))
        );
        // Go's "wrong length key, with adjusted key hash".
        assert_eq!(
            NoteVerifier::parse("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="),
            Err(KeyError::MalformedVerifierKey)
        );
        assert_eq!(NoteVerifier::parse("a b+00000000+AA=="), Err(KeyError::InvalidName));
        assert_eq!(NoteVerifier::parse("ab+-0000000+AA=="), Err(KeyError::MalformedVerifierKey));
        assert_eq!(NoteVerifier::parse("ab"), Err(KeyError::MalformedVerifierKey));
    }

    #[test]
    fn go_note_test_vectors() {
        // golang.org/x/mod/sumdb/note note_test.go: TestSign and TestOpen.
        let signer = go_signer();
        assert_eq!(signer.verifier_key(), GO_VKEY);
        assert_eq!(signer.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        let want = format!("{GO_TEXT}\n{GO_PETER_SIG}");
        assert_eq!(signer.sign_note(GO_TEXT).unwrap(), want);

        let peter = NoteVerifier::parse(GO_VKEY).unwrap();
        let enoch = NoteVerifier::parse(GO_ENOCH_VKEY).unwrap();
        let both = format!("{GO_TEXT}\n{GO_PETER_SIG}{GO_ENOCH_SIG}");
        assert_eq!(peter.open(&both).unwrap(), GO_TEXT);
        assert_eq!(enoch.open(&both).unwrap(), GO_TEXT);
        let enoch_only = format!("{GO_TEXT}\n{GO_ENOCH_SIG}");
        assert_eq!(peter.open(&enoch_only), Err(NoteError::UnknownKey));
        // Go's "Invalid signature" case: four extra base64 characters.
        let spliced = format!("{GO_TEXT}\n{}ABCD{}", &GO_PETER_SIG[..60], &GO_PETER_SIG[60..]);
        assert_eq!(peter.open(&spliced), Err(NoteError::BadSignature));
        // Go's malformed messages.
        let bad_msgs = [
            GO_TEXT.to_owned(),
            format!("{GO_TEXT}\n"),
            format!("{GO_TEXT}\n{}", &GO_PETER_SIG[..GO_PETER_SIG.len() - 1]),
            format!("\x01{GO_TEXT}\n{GO_PETER_SIG}"),
            format!(
                "{GO_TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{GO_TEXT}\n{GO_PETER_SIG}Unexpected line.\n"),
        ];
        for msg in &bad_msgs {
            assert!(matches!(peter.open(msg), Err(NoteError::Malformed(_))), "{msg:?}");
        }
    }

    #[test]
    fn key_errors() {
        let pkcs8 = NoteSigner::generate_pkcs8(&SystemRandom::new()).unwrap();
        for name in ["", "a+b", "a b", "a\tb", "a\nb", "a\u{a0}b", "a\u{2003}b", "a\x01b"] {
            assert_eq!(NoteSigner::from_pkcs8(name, &pkcs8).err(), Some(KeyError::InvalidName));
            assert_eq!(NoteVerifier::new(name, [1; 32]).err(), Some(KeyError::InvalidName));
        }
        assert!(matches!(NoteSigner::from_pkcs8("k", &pkcs8[..pkcs8.len() - 1]), Err(KeyError::InvalidPrivateKey(_))));
        assert!(matches!(NoteSigner::from_pkcs8("k", b"not a key"), Err(KeyError::InvalidPrivateKey(_))));
        // Unicode names other than spaces are allowed.
        assert!(NoteSigner::from_pkcs8("ключ/журнал", &pkcs8).is_ok());
    }

    #[test]
    fn debug_does_not_leak_key_material() {
        let signer = go_signer();
        let debug = format!("{signer:?}");
        assert_eq!(debug, r#"NoteSigner { name: "PeterNeumann", key_id: c74f20a3, .. }"#);
        let pretty = format!("{signer:#?}");
        assert!(!pretty.contains("key_pair"));
    }

    #[test]
    fn proofs_and_checkpoints_together() {
        // A verifier that trusts two signed checkpoints checks consistency
        // between them and inclusion of an entry.
        use crate::audit::merkle::{consistency_proof, inclusion_proof, verify_consistency, verify_inclusion};
        let signer = new_signer("consentvault.example/audit");
        let mut tree = MemoryTree::new();
        for i in 0..10u32 {
            tree.push(format!("event {i}").as_bytes());
        }
        let old = signer.sign_checkpoint(&Checkpoint::new(signer.name(), 10, tree.root())).unwrap();
        for i in 10..23u32 {
            tree.push(format!("event {i}").as_bytes());
        }
        let new = signer.sign_checkpoint(&Checkpoint::new(signer.name(), 23, tree.root())).unwrap();

        let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        let old = verifier.open_checkpoint(&old, "consentvault.example/audit").unwrap();
        let new = verifier.open_checkpoint(&new, "consentvault.example/audit").unwrap();
        let proof = consistency_proof(&tree, old.tree_size, new.tree_size).unwrap();
        verify_consistency(old.tree_size, new.tree_size, &old.root, &new.root, &proof).unwrap();
        let proof = inclusion_proof(&tree, 17, new.tree_size).unwrap();
        verify_inclusion(&leaf_hash(b"event 17"), 17, new.tree_size, &proof, &new.root).unwrap();
    }
}
