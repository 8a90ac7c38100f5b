//! A `jsonwebtoken` [`CryptoProvider`] backed by *ring* 0.17.
//!
//! consentvault uses *ring* as its only cryptographic library, and `jsonwebtoken` 11 ships no
//! *ring* backend, so this module supplies one. [`install`] makes it the process-wide provider;
//! the vault calls it first thing at start-up, before anything encodes, decodes or builds a JWK.
//!
//! Guarantees:
//! - Exactly four algorithms are supported: `EdDSA` (Ed25519), `ES256` (P-256/SHA-256, signatures
//!   in the fixed `r || s` form JWS requires, not ASN.1), `RS256` (RSASSA-PKCS1-v1_5/SHA-256) and
//!   `HS256` (HMAC-SHA-256). Any other algorithm yields [`ErrorKind::InvalidAlgorithm`] from the
//!   factories, never a panic.
//! - A key whose family does not match the algorithm is refused with [`ErrorKind::InvalidKeyFormat`]
//!   before any cryptography runs. This is what stops the classic "verify HS256 with the RSA public
//!   key as the HMAC secret" confusion, because `jsonwebtoken::decode` itself does not check the
//!   decoding key's family.
//! - HMAC tags are compared in constant time (`ring::hmac::verify`), and empty HMAC secrets are
//!   refused, so an unset secret can never make tokens forgeable.
//! - Verification failures carry no detail (an opaque [`signature::Error`]), so callers cannot
//!   leak why a token was rejected.
//! - Nothing here panics on bad input; the code has no `unsafe`.
//!
//! Limits, all inherited from *ring* 0.17:
//! - RSA: signing keys must have a 2048..=4096-bit modulus and `e >= 65537`; verification accepts
//!   2048..=8192-bit moduli. Smaller (legacy) keys are rejected.
//! - RSA private keys must be PKCS#1 `RSAPrivateKey` DER, which is what
//!   `EncodingKey::from_rsa_pem` produces from either PKCS#1 or PKCS#8 PEM.
//! - RSA public keys given as DER must be PKCS#1 `RSAPublicKey`, which is what
//!   `DecodingKey::from_rsa_pem` produces from either PKCS#1 or SPKI PEM.
//! - *ring* cannot parse an RSA public key DER into `(n, e)` through its public API, so
//!   `KeyUtils::rsa_pub_components_from_public_key` returns [`ErrorKind::InvalidRsaKey`]. In
//!   practice `Jwk::from_decoding_key` fails for an RSA key loaded from PEM/DER; build the JWK from
//!   the private key (`Jwk::from_encoding_key`) or load the public key from `(n, e)` instead.
//! - Ed25519 private keys may be PKCS#8 v1 (what `openssl genpkey` writes) or v2 (what *ring*
//!   generates). ES256 private keys must be PKCS#8 with the public key embedded (OpenSSL's default).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result, new_error};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};
use ring::{digest, hmac};
use signature::{Signer, Verifier};

/// Result type of the `signature` traits, whose error type differs from `jsonwebtoken`'s.
type SigResult<T> = std::result::Result<T, signature::Error>;

/// Length of a raw Ed25519 public key (RFC 8032 §5.1.5).
const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of one P-256 affine coordinate.
const P256_COORDINATE_LEN: usize = 32;
/// Length of an uncompressed SEC 1 P-256 point: the `0x04` tag, then `x`, then `y`.
const P256_UNCOMPRESSED_POINT_LEN: usize = 1 + 2 * P256_COORDINATE_LEN;
/// SEC 1 tag of an uncompressed point, the only encoding *ring* verifies against.
const SEC1_UNCOMPRESSED_TAG: u8 = 0x04;

/// The *ring*-backed provider. Prefer [`install`] over installing this by hand.
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Installs [`RING_PROVIDER`] as the process-wide `jsonwebtoken` provider.
///
/// The vault calls this first thing at start-up. It is idempotent and never panics: if a provider
/// is already installed (this one or another) it is left in place.
///
/// Returns `true` if [`RING_PROVIDER`] is the process default after the call, `false` if some
/// other provider got there first. Callers that must be certain should check the result.
///
/// Why "first thing": with no crypto feature enabled, the first `jsonwebtoken` call that needs a
/// provider (encode, decode, building a JWK) permanently installs a placeholder that panics on
/// use, and after that this function can no longer replace it (it would return `false`).
pub fn install() -> bool {
    match RING_PROVIDER.install_default() {
        Ok(()) => true,
        // `install_default` can succeed only once per process; compare addresses to tell whether
        // the provider already in place is this one (a repeated call) or a different one.
        Err(existing) => std::ptr::eq(existing, &RING_PROVIDER),
    }
}

/// Refuses a key meant for another algorithm family, before it reaches any *ring* parser.
fn require_family(actual: AlgorithmFamily, expected: AlgorithmFamily) -> Result<()> {
    if actual == expected { Ok(()) } else { Err(new_error(ErrorKind::InvalidKeyFormat)) }
}

/// Signer factory of [`RING_PROVIDER`].
fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let signer: Box<dyn JwtSigner> = match algorithm {
        Algorithm::EdDSA => Box::new(EdDsaSigner::new(key)?),
        Algorithm::ES256 => Box::new(Es256Signer::new(key)?),
        Algorithm::RS256 => Box::new(Rs256Signer::new(key)?),
        Algorithm::HS256 => Box::new(Hs256Signer::new(key)?),
        // Everything else, including algorithms added to `jsonwebtoken` later, is unsupported.
        _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
    };
    Ok(signer)
}

/// Verifier factory of [`RING_PROVIDER`].
fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let verifier: Box<dyn JwtVerifier> = match algorithm {
        Algorithm::EdDSA => Box::new(EdDsaVerifier::new(key)?),
        Algorithm::ES256 => Box::new(Es256Verifier::new(key)?),
        Algorithm::RS256 => Box::new(Rs256Verifier::new(key)?),
        Algorithm::HS256 => Box::new(Hs256Verifier::new(key)?),
        _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
    };
    Ok(verifier)
}

/// Parses an Ed25519 PKCS#8 private key, v1 or v2.
///
/// `from_pkcs8_maybe_unchecked` rather than `from_pkcs8`: the latter accepts only v2, but OpenSSL
/// writes v1 and `jsonwebtoken`'s JWK code expects v1. A v2 document is still checked for
/// consistency between its private and public halves; v1 has no public half to check.
fn parse_ed25519_pkcs8(pkcs8: &[u8]) -> Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| new_error(ErrorKind::InvalidEddsaKey))
}

/// Parses a P-256 PKCS#8 private key for ES256 signing.
fn parse_p256_pkcs8(pkcs8: &[u8], rng: &SystemRandom) -> Result<EcdsaKeyPair> {
    // ring 0.17 draws randomness here, to seed the key's nonce-hardening state.
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, rng)
        .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))
}

/// Parses a PKCS#1 `RSAPrivateKey` DER, enforcing *ring*'s 2048..=4096-bit modulus range.
fn parse_rsa_private_der(der: &[u8]) -> Result<RsaKeyPair> {
    RsaKeyPair::from_der(der).map_err(|e| new_error(ErrorKind::InvalidRsaKey(e.to_string())))
}

/// Returns the raw key bytes of a decoding key, refusing the wrong family first.
fn decoding_bytes(key: &DecodingKey, expected: AlgorithmFamily) -> Result<&[u8]> {
    require_family(key.family(), expected)?;
    key.try_get_as_bytes()
}

/// `EdDSA` (Ed25519) signer; the key is parsed once, when the signer is built.
struct EdDsaSigner(Ed25519KeyPair);

impl EdDsaSigner {
    fn new(key: &EncodingKey) -> Result<Self> {
        require_family(key.family(), AlgorithmFamily::Ed)?;
        parse_ed25519_pkcs8(key.as_bytes()).map(Self)
    }
}

impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> SigResult<Vec<u8>> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// ES256 signer producing fixed-length `r || s` signatures (RFC 7518 §3.4), not ASN.1 DER.
struct Es256Signer {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Es256Signer {
    fn new(key: &EncodingKey) -> Result<Self> {
        require_family(key.family(), AlgorithmFamily::Ec)?;
        let rng = SystemRandom::new();
        let key_pair = parse_p256_pkcs8(key.as_bytes(), &rng)?;
        Ok(Self { key_pair, rng })
    }
}

impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> SigResult<Vec<u8>> {
        let signature = self.key_pair.sign(&self.rng, msg).map_err(|_| signature::Error::new())?;
        Ok(signature.as_ref().to_vec())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signer.
struct Rs256Signer {
    key_pair: RsaKeyPair,
    // ring's signing API always takes an rng (PSS needs one); PKCS#1 v1.5 padding is deterministic.
    rng: SystemRandom,
}

impl Rs256Signer {
    fn new(key: &EncodingKey) -> Result<Self> {
        require_family(key.family(), AlgorithmFamily::Rsa)?;
        let key_pair = parse_rsa_private_der(key.as_bytes())?;
        Ok(Self { key_pair, rng: SystemRandom::new() })
    }
}

impl Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> SigResult<Vec<u8>> {
        // An RSA signature is exactly as long as the modulus.
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair.sign(&RSA_PKCS1_SHA256, &self.rng, msg, &mut signature).map_err(|_| signature::Error::new())?;
        Ok(signature)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// HS256 (HMAC-SHA-256) signer.
struct Hs256Signer(hmac::Key);

impl Hs256Signer {
    fn new(key: &EncodingKey) -> Result<Self> {
        require_family(key.family(), AlgorithmFamily::Hmac)?;
        hmac_key(key.as_bytes()).map(Self)
    }
}

impl Signer<Vec<u8>> for Hs256Signer {
    fn try_sign(&self, msg: &[u8]) -> SigResult<Vec<u8>> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

/// Builds an HMAC-SHA-256 key, refusing an empty secret.
///
/// An empty secret usually means unset configuration, and would let anyone mint valid tokens.
/// RFC 7518 §3.2 asks for at least 256 bits; that is left to whoever provisions the secret.
fn hmac_key(secret: &[u8]) -> Result<hmac::Key> {
    if secret.is_empty() {
        return Err(new_error(ErrorKind::InvalidKeyFormat));
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, secret))
}

/// `EdDSA` (Ed25519) verifier over a raw 32-byte public key.
struct EdDsaVerifier(Vec<u8>);

impl EdDsaVerifier {
    fn new(key: &DecodingKey) -> Result<Self> {
        let public_key = decoding_bytes(key, AlgorithmFamily::Ed)?;
        // Checked here so a malformed key is reported when the verifier is built, not as a
        // signature mismatch on every token.
        if public_key.len() != ED25519_PUBLIC_KEY_LEN {
            return Err(new_error(ErrorKind::InvalidEddsaKey));
        }
        Ok(Self(public_key.to_vec()))
    }
}

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> SigResult<()> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// ES256 verifier over an uncompressed SEC 1 P-256 point, expecting fixed-length signatures.
struct Es256Verifier(Vec<u8>);

impl Es256Verifier {
    fn new(key: &DecodingKey) -> Result<Self> {
        let point = decoding_bytes(key, AlgorithmFamily::Ec)?;
        // Catches P-384 points and SPKI documents early; ring checks the point is on the curve.
        if point.len() != P256_UNCOMPRESSED_POINT_LEN || point.first() != Some(&SEC1_UNCOMPRESSED_TAG) {
            return Err(new_error(ErrorKind::InvalidEcdsaKey));
        }
        Ok(Self(point.to_vec()))
    }
}

impl Verifier<Vec<u8>> for Es256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> SigResult<()> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// RS256 verifier, over either a PKCS#1 `RSAPublicKey` DER or big-endian `(n, e)` components.
enum Rs256Verifier {
    Der(Vec<u8>),
    Components { n: Vec<u8>, e: Vec<u8> },
}

impl Rs256Verifier {
    fn new(key: &DecodingKey) -> Result<Self> {
        require_family(key.family(), AlgorithmFamily::Rsa)?;
        // ring parses the key (and enforces the 2048..=8192-bit range) on each verification.
        Ok(match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => Self::Der(der.clone()),
            DecodingKeyKind::RsaModulusExponent { n, e } => Self::Components { n: n.clone(), e: e.clone() },
        })
    }
}

impl Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> SigResult<()> {
        let outcome = match self {
            Self::Der(der) => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der).verify(msg, signature),
            Self::Components { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, msg, signature)
            }
        };
        outcome.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// HS256 verifier; the tag comparison is constant-time.
struct Hs256Verifier(hmac::Key);

impl Hs256Verifier {
    fn new(key: &DecodingKey) -> Result<Self> {
        let secret = decoding_bytes(key, AlgorithmFamily::Hmac)?;
        hmac_key(secret).map(Self)
    }
}

impl Verifier<Vec<u8>> for Hs256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> SigResult<()> {
        // Never compare a recomputed tag with `==`: that leaks, through timing, how many leading
        // bytes of a forged tag are right. `hmac::verify` compares in constant time.
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Hs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

/// `KeyUtils::rsa_pub_components_from_private_key`: PKCS#1 private key DER to big-endian `(n, e)`.
fn rsa_pub_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let key_pair = parse_rsa_private_der(der)?;
    let components = RsaPublicKeyComponents::<Vec<u8>>::from(key_pair.public());
    Ok((components.n, components.e))
}

/// `KeyUtils::rsa_pub_components_from_public_key`: unsupported, always an error.
///
/// ring 0.17 validates RSA public keys only inside verification and exposes no parser that
/// returns `(n, e)` (its DER reader is a hidden, unstable module). Rather than hand-roll an ASN.1
/// parser in a security module, this refuses; see the module documentation for workarounds.
fn rsa_pub_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    Err(new_error(ErrorKind::InvalidRsaKey(
        "ring cannot extract (n, e) from an RSA public key DER; use DecodingKey::from_rsa_components \
         or Jwk::from_encoding_key"
            .to_owned(),
    )))
}

/// `KeyUtils::ec_pub_components_from_private_key`: P-256 PKCS#8 private key to `(curve, x, y)`.
fn ec_pub_components_from_private_key(pkcs8: &[u8], alg: Algorithm) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    if alg != Algorithm::ES256 {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    let key_pair = parse_p256_pkcs8(pkcs8, &SystemRandom::new())?;
    match key_pair.public_key().as_ref().split_first() {
        Some((&SEC1_UNCOMPRESSED_TAG, coordinates)) if coordinates.len() == 2 * P256_COORDINATE_LEN => {
            let (x, y) = coordinates.split_at(P256_COORDINATE_LEN);
            Ok((EllipticCurve::P256, x.to_vec(), y.to_vec()))
        }
        // ring always returns an uncompressed point for P-256; this arm only avoids a panic path.
        _ => Err(new_error(ErrorKind::InvalidEcdsaKey)),
    }
}

/// `KeyUtils::ed_pub_components_from_private_key`: Ed25519 PKCS#8 private key to the raw public key.
fn ed_pub_components_from_private_key(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(parse_ed25519_pkcs8(pkcs8)?.public_key().as_ref().to_vec()),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

/// `KeyUtils::compute_digest`, used for JWK thumbprints (RFC 7638).
fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        // `ThumbprintHash` is non-exhaustive; refuse hashes this module has not been taught.
        _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
    use jsonwebtoken::{Header, Validation, decode, encode, get_current_timestamp};
    use ring::rand::SecureRandom as _;
    use serde::{Deserialize, Serialize};

    /// 2048-bit RSA key A, PKCS#1 PEM (`openssl genrsa -traditional 2048`). Test-only.
    const RSA_A_PRIVATE_PEM: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEAjnmh+9+cGEYnpFsgduPa1RSjE0VGZSFPY+ixGX+quAuY0ntN
mxDLBCS/60LCP3gFVKQZZSwKMmOLhs4/ulBfvr70bzQ9D0mL46inSkd4AnPkDq9v
W2NE7hxp2WIUqWCXhnqd2fZrKYuB+/mrxBLrnvfixtXMFuHbwsktWrUeVOva41Ll
uR6lso64wZ/alyLfcvGf8m+L4nyAbL6ah5CECQ3l7huGAkCGXP7ty2rRywcXDRIt
PD6L13hJVL5NYR5Hlfx4so2Po1/LdFLDzE7bQfH7qbf1oMhISZbGSDSz99HaPV46
w8GsKTiqqFbT6/pxiFCXfbvBv7lkfW+D6fcehQIDAQABAoIBABOIMEE/6/3V7ExX
Y9F4tkDc9ehH6HknwmL/fPvyaRyXFmnQlpiKClL0mMzvV4Ls+MocPxEEIxe6Vt/x
uYHYz+9t7UOrhS1p10AsGFcSCi1H5v1uZpVAPCxqf8ZZ8FwyDkPU3nwJkLJe2kCJ
f1c/gsbF0/SPTc3bQ83l145mYxSgFoH2Os3rC3nm7elMs2vNylmbJKnpUoDnRCwU
FoQt52AIj+5UkuWVjH5+Bxln6EWhMvdgTi5nNGk0+/4WY1pRgmmKoFn1DiCtq8EI
N+IvylpyniPzPEqV4cN8y9eecq9GicZ28KR0qfQmulScekCW/fxLzxczZ8BCIRta
7675kqECgYEAwDQntyp7zeO28gLpGRb3m6cBmZqBF02bAtF/AetB6ncbIw/z62ow
8vh4aHDGhW1H7bJ6LgnAX0unXZofJ3z21gBlZ7+UK1SabwR4V9FT8Iq0ZlMGi3uO
aHnZ+YLgb9Hl73hUGEitCeaw4Hcyl8984jVlSHkuya4yimfRrvB9K7UCgYEAvcP2
UZ0+StohBjUvzeUsKHIgUEhYja2Ma81rCCQNa16iHH9JECO1iLTZG1TiyzQ7hM06
yv29iN4fYuMHZKu6AfzvWz5bQBmbl21Nx7ty6om8u7BhQWegEhBCZYbn5Y66hakN
hboHPpShG1iYpiI9O80a8FVjCsxctr0Zpj9oCZECgYBzQRMrt/MDdHBo0Sv8GpSi
JtRDyq1sTuIMH5n8iZk+Quvn65IF8eimWi7B2haBPhWqyKKRZtGPk2sqKthRspLF
ovkr7GqqTRJKTjDn4CNok5Q348OB8rZjmeYGw99XzlMGdW5gHXx9+nLIN1IETKyD
bSdt/RT8ZVPzQOww7g7xHQKBgDFhcxGd133m8T0KThxIDIuh1yLNEK4dgTL0S2vc
5dkQ0SKVRM/8WtruJKjmF/ZE61ANj8UO7mlVU9mJtnzN6yNlTGvz+A7gGwr2mIzn
DGpX2VMF/OjmLFNHA+AjkOi9kXACo9Aurn/scVgKX/6rXj/XibEMpy9CKsYqwyft
zAbhAoGAIQnjpEbSfJ27D1Zobdx13ed8b+R1hSBaunmC5x+IvGHxHDqUGolaicyE
d6XYlRCHtFiZPFJ6YSR8t2z/kbfNUn765I8gGMWnQbOl00Bu85hkpuvhF0vC9enb
dbA/Z3R8/XyMs29jMUE4WT3XkGEGXx1ku0UsXJkfoAApygxx0kI=
-----END RSA PRIVATE KEY-----
";
    /// Public half of key A, SPKI PEM (`openssl rsa -pubout`).
    const RSA_A_PUBLIC_PEM: &str = r"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAjnmh+9+cGEYnpFsgduPa
1RSjE0VGZSFPY+ixGX+quAuY0ntNmxDLBCS/60LCP3gFVKQZZSwKMmOLhs4/ulBf
vr70bzQ9D0mL46inSkd4AnPkDq9vW2NE7hxp2WIUqWCXhnqd2fZrKYuB+/mrxBLr
nvfixtXMFuHbwsktWrUeVOva41LluR6lso64wZ/alyLfcvGf8m+L4nyAbL6ah5CE
CQ3l7huGAkCGXP7ty2rRywcXDRItPD6L13hJVL5NYR5Hlfx4so2Po1/LdFLDzE7b
QfH7qbf1oMhISZbGSDSz99HaPV46w8GsKTiqqFbT6/pxiFCXfbvBv7lkfW+D6fce
hQIDAQAB
-----END PUBLIC KEY-----
";
    /// 2048-bit RSA key B, PKCS#8 PEM (`openssl genrsa 2048`). Test-only.
    const RSA_B_PRIVATE_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCWvuztYoFePF4c
QO87M1QCBGkGmxXeEd96j1JTOgHt3/tatbrg2LNYQFk9mUp3KoDbZYkkm1vwUM4v
vlt8WqawhUOpzS+G1rDt3yNZVXay4OHWfq2tJiu4S0kz89g+1EXHFWB9WEFDvbAa
CZ5SQyp55COWV0veJbPHnNGQJ5EvaJlmUuS7he6MMT6GcvUW+AZxIaG4tB9wlAWW
P1PNdlO19hD2nLkQ/z+LVFMvo48/xCL5hy01RCu7OTAwqj+UOpPdmZnGtS1kkRJn
WWw8XzgMUpTKjhv1V8sJoz8kx/sELHrfwwl/hsQFoIo2FlnUz1o3TlUGAIRKdzvr
MU9junG7AgMBAAECggEAJc5/lG+6m1xPjA17EmFmpdTeVFJL8zSPVGkikA4B0tt0
akUet+qRXEZTO2A5LVbjF2NJOH2gWs6hT5cR0cfYe3gIxsrXqx0oJZhrgKmvCeDd
sxJ1U3I5z9BN7TIwX12UnIAPgZBDWg52Xqlf5CjFO+nMRRXiyLWy95Kseld6EaXr
Bh/uVaS+6TwNCcLZZpdz+mL7rWrAgJHq3dy0MX9Owzr7C6WIEfYjdNnRV0SRBqUg
pZD9vG0v5YIv18P0f8Bp8CQ0C5CxxbtlJQbYS4JUqRN5Wof0XXK7O/fIxWpdI8bR
u9eit8rIcXQwmhozcENiIIa36RKMZCsvL//pPZhXjQKBgQDNFfB523kQC5hCv7pB
+BpNo4JJnNCMHfAyUfTba+EFmXsOGrFs0z2Y2co3ZFGQNMtlA/fcBG1ssQIPGyHv
KTvgeEkHoisZKBCWuiheakKdXmC6vJbmB4NeshgoTU5fUPXS1NAoeJjvlTn3Yh9G
4+F8JWiO515MIUN+SMf2XzwNNQKBgQC8K3Tj4nyMq82xcnJIPMfEiKQV9ox9FZg5
CbBCqNjXq3y6WOR4+Rck5A+RjGH+vl728AtKSNVe4FEqUiVmgA3GRZwDgngRqOji
hyJQn+VLX1/EK+Vs7xj/XCU9bwTBVcd3NlvKuYNU3BuwCNZ9gafb8AIxD76ZBt+Z
O4lXz3WRLwKBgQCm4HZHwaVVwAmKLtZRPZ+xkx295mLv0KCVYYjbToHQe53c0S2T
/qM9j+HyhqezrrHeJYd2uQeNDM8/GXXYVHYLZfUOyA9HrgkpjJqykMZZpOUSrcgf
rvdfg40SpizidE9C2bXzaIYRVRzQxj/rAByHVy0oMu3RBrQTuwcy2zVTDQKBgQCZ
HvvFnT4g8oU1ip34ro0ZHt/3h2OXPgVbFMk71U5vYfrjYQa6cmgk+vi4RfZQZ/W7
GGb3kgEfbYZe2+3XVQjgeTCVoou2Qy8Pd0uzNApQpVG2vsm5NW+wDPm43iiOcxEX
r0JO21tFqL9XJjn0c5d23/3IkrlUqUU22j3PGODgvQKBgED64WOYz/gKzpZrX+KW
esB0MoHXHucNg7pyBm3cnxoVV3XYhd6siJMM7Hhc0iRdQt6uxyG6Dl6vKdNgLhcZ
vmR8zNw0VH1t3FnMRKWEG8EUFVHoAppf6Rtz99KifYlhp7V8CZujlNfgFqSMlTx7
UhTGIWuoTifyTykBCKAhgoKt
-----END PRIVATE KEY-----
";
    /// Ed25519 PKCS#8 **v1** key as written by `openssl genpkey -algorithm ED25519`. Test-only.
    const ED25519_OPENSSL_PRIVATE_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICVndPPAf4M/4nSdqKcF6vZHx00P6xe7ww7Qfp4DUDQA
-----END PRIVATE KEY-----
";
    /// Public half of the OpenSSL Ed25519 key, SPKI PEM.
    const ED25519_OPENSSL_PUBLIC_PEM: &str = r"-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAdHdPQYdhoUabUVPA+14TOSdwLYWBYSo3AInWscv6lSs=
-----END PUBLIC KEY-----
";
    /// P-256 PKCS#8 key as written by `openssl ecparam -genkey | openssl pkcs8 -topk8`. Test-only.
    const P256_OPENSSL_PRIVATE_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguOs01HTkEyK9jrbf
Oa4z35QuaqpvIE9Q8mc+W7mhjkahRANCAARdBgTOIkNhU42QTkVsf75yCRZBOawg
T83kcDOicMuivE3ACrGZ5dx7Z1shCf/136TxNO7Ej6II3GGSIDvK8wHf
-----END PRIVATE KEY-----
";
    /// Public half of the OpenSSL P-256 key, SPKI PEM.
    const P256_OPENSSL_PUBLIC_PEM: &str = r"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXQYEziJDYVONkE5FbH++cgkWQTms
IE/N5HAzonDLorxNwAqxmeXce2dbIQn/9d+k8TTuxI+iCNxhkiA7yvMB3w==
-----END PUBLIC KEY-----
";

    const SUPPORTED: [Algorithm; 4] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256, Algorithm::HS256];
    const UNSUPPORTED: [Algorithm; 8] = [
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::ES384,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn claims() -> Claims {
        Claims { sub: "data-subject-42".to_owned(), exp: get_current_timestamp() + 600 }
    }

    /// A signing key and its verification key; `second` picks a different key of the same algorithm.
    fn key_pair(alg: Algorithm, second: bool) -> (EncodingKey, DecodingKey) {
        let rng = SystemRandom::new();
        match alg {
            Algorithm::EdDSA => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
                (EncodingKey::from_ed_der(pkcs8.as_ref()), DecodingKey::from_ed_der(&public))
            }
            Algorithm::ES256 => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                let public = parse_p256_pkcs8(pkcs8.as_ref(), &rng).unwrap().public_key().as_ref().to_vec();
                (EncodingKey::from_ec_der(pkcs8.as_ref()), DecodingKey::from_ec_der(&public))
            }
            Algorithm::RS256 if !second => (
                EncodingKey::from_rsa_pem(RSA_A_PRIVATE_PEM.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(RSA_A_PUBLIC_PEM.as_bytes()).unwrap(),
            ),
            Algorithm::RS256 => {
                let encoding = EncodingKey::from_rsa_pem(RSA_B_PRIVATE_PEM.as_bytes()).unwrap();
                let (n, e) = rsa_pub_components_from_private_key(encoding.as_bytes()).unwrap();
                (encoding, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            Algorithm::HS256 => {
                let mut secret = [0_u8; 32];
                rng.fill(&mut secret).unwrap();
                (EncodingKey::from_secret(&secret), DecodingKey::from_secret(&secret))
            }
            other => panic!("no test key for {other:?}"),
        }
    }

    fn verify(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims> {
        decode::<Claims>(token, key, &Validation::new(alg)).map(|data| data.claims)
    }

    /// Splits a compact JWS into its signing input and its decoded signature.
    fn split(token: &str) -> (&str, Vec<u8>) {
        let (input, signature) = token.rsplit_once('.').unwrap();
        (input, URL_SAFE_NO_PAD.decode(signature).unwrap())
    }

    fn error_kind<T>(result: Result<T>) -> ErrorKind {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.into_kind(),
        }
    }

    /// Signs, verifies, and returns the token for further checks.
    fn assert_round_trip(alg: Algorithm, encoding: &EncodingKey, decoding: &DecodingKey) -> String {
        assert!(install());
        let sent = claims();
        let token = encode(&Header::new(alg), &sent, encoding).unwrap();
        let data = decode::<Claims>(&token, decoding, &Validation::new(alg)).unwrap();
        assert_eq!(data.header.alg, alg);
        assert_eq!(data.claims, sent);
        token
    }

    #[test]
    fn install_is_idempotent() {
        assert!(install());
        assert!(install());
        assert!(std::thread::spawn(install).join().unwrap());
    }

    #[test]
    fn eddsa_round_trip() {
        let (encoding, decoding) = key_pair(Algorithm::EdDSA, false);
        let token = assert_round_trip(Algorithm::EdDSA, &encoding, &decoding);
        assert_eq!(split(&token).1.len(), 64);
    }

    #[test]
    fn es256_round_trip_uses_fixed_signatures() {
        let (encoding, decoding) = key_pair(Algorithm::ES256, false);
        let token = assert_round_trip(Algorithm::ES256, &encoding, &decoding);
        // JWS wants r || s (2 x 32 bytes); an ASN.1 DER signature would be 70-72 bytes.
        assert_eq!(split(&token).1.len(), 64);
    }

    #[test]
    fn rs256_round_trip_with_der_public_key() {
        let (encoding, decoding) = key_pair(Algorithm::RS256, false);
        assert!(matches!(decoding.kind(), DecodingKeyKind::SecretOrDer(_)));
        let token = assert_round_trip(Algorithm::RS256, &encoding, &decoding);
        assert_eq!(split(&token).1.len(), 256);
    }

    #[test]
    fn rs256_round_trip_with_modulus_and_exponent() {
        // Key B is PKCS#8 PEM, so this also covers that input form.
        let (encoding, decoding) = key_pair(Algorithm::RS256, true);
        assert!(matches!(decoding.kind(), DecodingKeyKind::RsaModulusExponent { .. }));
        assert_round_trip(Algorithm::RS256, &encoding, &decoding);

        // The base64url (JWK-style) constructor ends up in the same place.
        let (n, e) = rsa_pub_components_from_private_key(encoding.as_bytes()).unwrap();
        let from_jwk_strings =
            DecodingKey::from_rsa_components(&URL_SAFE_NO_PAD.encode(n), &URL_SAFE_NO_PAD.encode(e)).unwrap();
        assert_round_trip(Algorithm::RS256, &encoding, &from_jwk_strings);
    }

    #[test]
    fn hs256_round_trip() {
        let (encoding, decoding) = key_pair(Algorithm::HS256, false);
        let token = assert_round_trip(Algorithm::HS256, &encoding, &decoding);
        assert_eq!(split(&token).1.len(), 32);
    }

    #[test]
    fn openssl_generated_keys_round_trip() {
        let ed_encoding = EncodingKey::from_ed_pem(ED25519_OPENSSL_PRIVATE_PEM.as_bytes()).unwrap();
        let ed_decoding = DecodingKey::from_ed_pem(ED25519_OPENSSL_PUBLIC_PEM.as_bytes()).unwrap();
        assert_round_trip(Algorithm::EdDSA, &ed_encoding, &ed_decoding);

        let ec_encoding = EncodingKey::from_ec_pem(P256_OPENSSL_PRIVATE_PEM.as_bytes()).unwrap();
        let ec_decoding = DecodingKey::from_ec_pem(P256_OPENSSL_PUBLIC_PEM.as_bytes()).unwrap();
        assert_round_trip(Algorithm::ES256, &ec_encoding, &ec_decoding);
    }

    #[test]
    fn token_signed_with_another_key_is_rejected() {
        assert!(install());
        for alg in SUPPORTED {
            let (encoding, _) = key_pair(alg, false);
            let (_, other_decoding) = key_pair(alg, true);
            let token = encode(&Header::new(alg), &claims(), &encoding).unwrap();
            let kind = error_kind(verify(&token, alg, &other_decoding));
            assert_eq!(kind, ErrorKind::InvalidSignature, "{alg:?}");
        }
    }

    #[test]
    fn flipped_signature_bit_is_rejected() {
        assert!(install());
        for alg in SUPPORTED {
            let (encoding, decoding) = key_pair(alg, false);
            let token = encode(&Header::new(alg), &claims(), &encoding).unwrap();
            let (input, signature) = split(&token);
            for (byte, bit) in [(0, 0), (signature.len() / 2, 3), (signature.len() - 1, 7)] {
                let mut tampered = signature.clone();
                tampered[byte] ^= 1 << bit;
                let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&tampered));
                let kind = error_kind(verify(&forged, alg, &decoding));
                assert_eq!(kind, ErrorKind::InvalidSignature, "{alg:?} byte {byte} bit {bit}");
            }
            // The untouched token still verifies, so the failures above are due to the flip.
            verify(&token, alg, &decoding).unwrap();
        }
    }

    #[test]
    fn hs256_with_wrong_secret_is_rejected() {
        assert!(install());
        let secret = b"consentvault-test-secret-0123456789abcdef";
        let mut near_miss = *secret;
        near_miss[near_miss.len() - 1] ^= 1;
        let token = encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(secret)).unwrap();
        for wrong in [&near_miss[..], b"some-other-secret"] {
            let kind = error_kind(verify(&token, Algorithm::HS256, &DecodingKey::from_secret(wrong)));
            assert_eq!(kind, ErrorKind::InvalidSignature);
        }
    }

    #[test]
    fn empty_hmac_secret_is_refused() {
        assert!(install());
        let kind = error_kind((RING_PROVIDER.signer_factory)(&Algorithm::HS256, &EncodingKey::from_secret(b"")));
        assert_eq!(kind, ErrorKind::InvalidKeyFormat);
        let kind = error_kind((RING_PROVIDER.verifier_factory)(&Algorithm::HS256, &DecodingKey::from_secret(b"")));
        assert_eq!(kind, ErrorKind::InvalidKeyFormat);
        let kind = error_kind(encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(b"")));
        assert_eq!(kind, ErrorKind::InvalidKeyFormat);
    }

    #[test]
    fn unsupported_algorithms_are_errors_not_panics() {
        assert!(install());
        for alg in UNSUPPORTED {
            let sibling = match alg.family() {
                AlgorithmFamily::Hmac => Algorithm::HS256,
                AlgorithmFamily::Ec => Algorithm::ES256,
                AlgorithmFamily::Rsa => Algorithm::RS256,
                AlgorithmFamily::Ed => Algorithm::EdDSA,
            };
            // A valid key of the right family, so only the algorithm can be the problem.
            let (encoding, decoding) = key_pair(sibling, false);
            let kind = error_kind((RING_PROVIDER.signer_factory)(&alg, &encoding));
            assert_eq!(kind, ErrorKind::InvalidAlgorithm, "signer {alg:?}");
            let kind = error_kind((RING_PROVIDER.verifier_factory)(&alg, &decoding));
            assert_eq!(kind, ErrorKind::InvalidAlgorithm, "verifier {alg:?}");
        }

        // Through the public API too: signing RS512 ...
        let (rsa_encoding, _) = key_pair(Algorithm::RS256, false);
        let kind = error_kind(encode(&Header::new(Algorithm::RS512), &claims(), &rsa_encoding));
        assert_eq!(kind, ErrorKind::InvalidAlgorithm);

        // ... and verifying a token that claims ES384.
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ES384"}"#);
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"x","exp":{}}}"#, claims().exp));
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode([0_u8; 96]));
        let (_, ec_decoding) = key_pair(Algorithm::ES256, false);
        let kind = error_kind(verify(&token, Algorithm::ES384, &ec_decoding));
        assert_eq!(kind, ErrorKind::InvalidAlgorithm);
    }

    #[test]
    fn key_of_wrong_family_is_refused() {
        assert!(install());
        let (hmac_encoding, hmac_decoding) = key_pair(Algorithm::HS256, false);
        let (ed_encoding, ed_decoding) = key_pair(Algorithm::EdDSA, false);
        let (ec_encoding, ec_decoding) = key_pair(Algorithm::ES256, false);
        let (rsa_encoding, rsa_decoding) = key_pair(Algorithm::RS256, false);
        let mismatches = [
            (Algorithm::EdDSA, &hmac_encoding, &hmac_decoding),
            (Algorithm::ES256, &ed_encoding, &ed_decoding),
            (Algorithm::RS256, &ec_encoding, &ec_decoding),
            (Algorithm::HS256, &rsa_encoding, &rsa_decoding),
        ];
        for (alg, encoding, decoding) in mismatches {
            let kind = error_kind((RING_PROVIDER.signer_factory)(&alg, encoding));
            assert_eq!(kind, ErrorKind::InvalidKeyFormat, "signer {alg:?}");
            let kind = error_kind((RING_PROVIDER.verifier_factory)(&alg, decoding));
            assert_eq!(kind, ErrorKind::InvalidKeyFormat, "verifier {alg:?}");
        }

        // Algorithm confusion: an HS256 token keyed with the (public) RSA key bytes must not be
        // accepted by a verifier holding that RSA public key.
        let rsa_public_bytes = rsa_decoding.try_get_as_bytes().unwrap();
        let forged =
            encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(rsa_public_bytes)).unwrap();
        let kind = error_kind(verify(&forged, Algorithm::HS256, &rsa_decoding));
        assert_eq!(kind, ErrorKind::InvalidKeyFormat);
    }

    #[test]
    fn eddsa_token_verifies_with_ed25519_dalek() {
        assert!(install());
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let public: [u8; 32] =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().try_into().unwrap();
        let token =
            encode(&Header::new(Algorithm::EdDSA), &claims(), &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();

        let (input, signature) = split(&token);
        let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        verifying_key.verify_strict(input.as_bytes(), &signature).unwrap();
        assert!(verifying_key.verify_strict(b"some other message", &signature).is_err());
    }

    #[test]
    fn key_utils_derive_public_components() {
        let rng = SystemRandom::new();

        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_public = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        let x = ed_pub_components_from_private_key(ed_pkcs8.as_ref(), &EllipticCurve::Ed25519).unwrap();
        assert_eq!(x, ed_public);
        let kind = error_kind(ed_pub_components_from_private_key(ed_pkcs8.as_ref(), &EllipticCurve::P256));
        assert_eq!(kind, ErrorKind::InvalidAlgorithm);

        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec_public = parse_p256_pkcs8(ec_pkcs8.as_ref(), &rng).unwrap().public_key().as_ref().to_vec();
        let (curve, x, y) = ec_pub_components_from_private_key(ec_pkcs8.as_ref(), Algorithm::ES256).unwrap();
        assert_eq!(curve, EllipticCurve::P256);
        assert_eq!([&[SEC1_UNCOMPRESSED_TAG][..], &x, &y].concat(), ec_public);
        let kind = error_kind(ec_pub_components_from_private_key(ec_pkcs8.as_ref(), Algorithm::ES384));
        assert_eq!(kind, ErrorKind::InvalidAlgorithm);

        let rsa_encoding = EncodingKey::from_rsa_pem(RSA_A_PRIVATE_PEM.as_bytes()).unwrap();
        let (n, e) = rsa_pub_components_from_private_key(rsa_encoding.as_bytes()).unwrap();
        assert_eq!(n.len(), 256);
        assert_eq!(e, [0x01, 0x00, 0x01]);
        let kind = error_kind(rsa_pub_components_from_private_key(b"not a key"));
        assert!(matches!(kind, ErrorKind::InvalidRsaKey(_)));

        // Documented limitation: no (n, e) from a public key DER, but an error rather than a panic.
        let rsa_decoding = DecodingKey::from_rsa_pem(RSA_A_PUBLIC_PEM.as_bytes()).unwrap();
        let kind = error_kind(rsa_pub_components_from_public_key(rsa_decoding.try_get_as_bytes().unwrap()));
        assert!(matches!(kind, ErrorKind::InvalidRsaKey(_)));

        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let sha256 = compute_digest(b"abc", ThumbprintHash::SHA256).unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256.iter().map(|b| format!("{b:02x}")).collect::<String>(), expected);
        assert_eq!(compute_digest(b"abc", ThumbprintHash::SHA384).unwrap().len(), 48);
        assert_eq!(compute_digest(b"abc", ThumbprintHash::SHA512).unwrap().len(), 64);
    }

    #[test]
    fn jwk_helpers_work_through_the_installed_provider() {
        assert!(install());
        let rsa_encoding = EncodingKey::from_rsa_pem(RSA_A_PRIVATE_PEM.as_bytes()).unwrap();
        let rsa_jwk = Jwk::from_encoding_key(&rsa_encoding, Algorithm::RS256).unwrap();
        assert!(matches!(rsa_jwk.algorithm, AlgorithmParameters::RSA(_)));
        assert!(!rsa_jwk.thumbprint(ThumbprintHash::SHA256).unwrap().is_empty());
        // A JWK built from the private key yields a public key that verifies the key's tokens.
        let (_, pem_decoding) = key_pair(Algorithm::RS256, false);
        let token = assert_round_trip(Algorithm::RS256, &rsa_encoding, &pem_decoding);
        verify(&token, Algorithm::RS256, &DecodingKey::from_jwk(&rsa_jwk).unwrap()).unwrap();

        // OpenSSL writes Ed25519 PKCS#8 v1, the only form jsonwebtoken's JWK code accepts.
        let ed_encoding = EncodingKey::from_ed_pem(ED25519_OPENSSL_PRIVATE_PEM.as_bytes()).unwrap();
        let ed_jwk = Jwk::from_encoding_key(&ed_encoding, Algorithm::EdDSA).unwrap();
        let ed_decoding = DecodingKey::from_ed_pem(ED25519_OPENSSL_PUBLIC_PEM.as_bytes()).unwrap();
        let AlgorithmParameters::OctetKeyPair(params) = &ed_jwk.algorithm else { panic!("not an OKP JWK") };
        assert_eq!(params.x, URL_SAFE_NO_PAD.encode(ed_decoding.try_get_as_bytes().unwrap()));

        let ec_encoding = EncodingKey::from_ec_pem(P256_OPENSSL_PRIVATE_PEM.as_bytes()).unwrap();
        let ec_jwk = Jwk::from_encoding_key(&ec_encoding, Algorithm::ES256).unwrap();
        let ec_decoding = DecodingKey::from_ec_pem(P256_OPENSSL_PUBLIC_PEM.as_bytes()).unwrap();
        let ec_from_jwk = DecodingKey::from_jwk(&ec_jwk).unwrap();
        assert_eq!(ec_from_jwk.try_get_as_bytes().unwrap(), ec_decoding.try_get_as_bytes().unwrap());

        // The documented limitation surfaces as an error, not a panic.
        let kind = error_kind(Jwk::from_decoding_key(&pem_decoding, Some(Algorithm::RS256)));
        assert!(matches!(kind, ErrorKind::InvalidRsaKey(_)));
    }
}
