//! Access tokens: the vault's own issuer, and verification per RFC 8725
//! (JWT best current practices) for the vault's tokens and for configured
//! external issuers.
//!
//! A token is accepted only if every one of these holds, checked in this
//! order, each failure the same [`TokenError::Invalid`] to the caller:
//! the text is at most [`TOKEN_BYTES_MAX`], has exactly three segments of
//! unpadded base64url; header and claims are JSON objects without duplicate
//! members; `typ` is `at+jwt`; no `crit`, `jku`, `x5u`, `jwk` or `x5c`
//! header; `iss` names a configured issuer and `kid` (when the issuer needs
//! one) a key in its fixed map; `alg` is exactly that key's one algorithm;
//! the signature verifies; `exp`, `nbf`, `iat` are integers, `iss`, `aud`,
//! `sub` are present and right; the token is live within the leeway and
//! no longer-lived than the issuer allows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Role;

/// The meta key of the vault's sealed token signing key.
pub(crate) const TOKEN_KEY: &str = "auth/token-signing-key";
/// The label the token signing key is sealed with.
pub(crate) const TOKEN_KEY_LABEL: &str = "token-signing-key";

/// Longest token accepted; RFC 8725 asks for limits, and the `Authorization`
/// header is capped at 8 KiB before this is reached.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Lifetime of the vault's own tokens.
pub const TOKEN_TTL_SECS: u64 = 900;
/// Longest lifetime (`exp - iat`) accepted from any issuer.
pub const TOKEN_LIFETIME_MAX_SECS: u64 = 3600;
/// The media type every access token must declare (RFC 9068).
const TOKEN_TYPE: &str = "at+jwt";
/// Header members that would let a token choose its own key or demand
/// processing the vault does not do.
const FORBIDDEN_HEADERS: [&str; 5] = ["crit", "jku", "x5u", "jwk", "x5c"];
/// Longest `kid` looked up; longer ones cannot be in the map.
const KID_BYTES_MAX: usize = 128;
/// Longest `sub` accepted.
const SUBJECT_BYTES_MAX: usize = 256;

/// Why a token was not accepted. The variants exist for logs and tests; the
/// HTTP layer answers every one with the same 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token failed a check; the text names which, for the log only.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The vault could not sign a token.
    #[error("cannot sign a token: {0}")]
    Signing(String),
    /// An issuer's key material could not be loaded.
    #[error("issuer key: {0}")]
    Key(String),
    /// The token names a key that the issuer's fetched set, as cached, does
    /// not hold (or the cache is too old to serve): fetching the set again
    /// may find it (`TokenVerifier::refresh`).
    #[error("invalid token: a key the cached set of issuer {0} does not hold")]
    KeyNotCached(String),
}

fn invalid(reason: &'static str) -> TokenError {
    TokenError::Invalid(reason)
}

/// The claims of the vault's own tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VaultClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    role: Role,
    /// For a client's token, the version of the client secret it was issued
    /// under: a rotation ends every token of an older one.
    #[serde(default, skip_serializing_if = "is_zero")]
    secret_version: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// A token the vault issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// The vault's token issuer: EdDSA (Ed25519) with one key id.
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    kid: String,
    key: EncodingKey,
    public_key: [u8; 32],
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer named `issuer` for `audience`, signing with the Ed25519
    /// PKCS#8 document `pkcs8`. The key id is derived from the public key.
    pub fn new(issuer: &str, audience: &str, pkcs8: &[u8]) -> Result<Self, TokenError> {
        use ring::signature::KeyPair;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|error| TokenError::Key(error.to_string()))?;
        let public_key: [u8; 32] =
            pair.public_key().as_ref().try_into().map_err(|_| TokenError::Key("public key length".to_owned()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &public_key);
        let kid = crate::ids::hex(&digest.as_ref()[..8]);
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            kid,
            key: EncodingKey::from_ed_der(pkcs8),
            public_key,
        })
    }

    /// The `iss` of the vault's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id in the vault's tokens.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The verification key for the vault's own tokens.
    pub fn verification_key(&self) -> IssuerKey {
        IssuerKey { algorithm: Algorithm::EdDSA, key: DecodingKey::from_ed_der(&self.public_key) }
    }

    /// Signs a token for `subject` in `role`, valid from `now` (Unix seconds)
    /// for [`TOKEN_TTL_SECS`]. `jti` must be unique.
    pub fn issue(&self, role: Role, subject: &str, jti: &str, now: u64) -> Result<IssuedToken, TokenError> {
        self.issue_for_secret(role, subject, jti, now, 0)
    }

    /// As [`TokenIssuer::issue`], for a client whose secret is at version
    /// `secret_version`: the token names it, so a later rotation ends it.
    pub fn issue_for_secret(
        &self,
        role: Role,
        subject: &str,
        jti: &str,
        now: u64,
        secret_version: u32,
    ) -> Result<IssuedToken, TokenError> {
        let claims = VaultClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: now + TOKEN_TTL_SECS,
            nbf: now,
            iat: now,
            jti: jti.to_owned(),
            role,
            secret_version,
        };
        let claims = serde_json::to_value(&claims).map_err(|error| TokenError::Signing(error.to_string()))?;
        let token = self.sign_claims(&claims)?;
        Ok(IssuedToken { token, expires_in: TOKEN_TTL_SECS })
    }

    /// Signs arbitrary claims with the vault's key and header (`typ`
    /// `at+jwt`, `kid`). Used by [`TokenIssuer::issue`], and by tests that
    /// need validly signed tokens with broken claims.
    pub fn sign_claims(&self, claims: &Value) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|error| TokenError::Signing(error.to_string()))
    }

    /// Signs `header.claims` given as raw JSON texts (for tests of header
    /// handling): returns the compact JWS.
    pub fn sign_raw(&self, header_json: &str, claims_json: &str) -> Result<String, TokenError> {
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header_json), URL_SAFE_NO_PAD.encode(claims_json));
        let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.key, Algorithm::EdDSA)
            .map_err(|error| TokenError::Signing(error.to_string()))?;
        Ok(format!("{signing_input}.{signature}"))
    }
}

/// One verification key with its one algorithm.
#[derive(Clone)]
pub struct IssuerKey {
    /// The only algorithm tokens under this key may use.
    pub algorithm: Algorithm,
    /// The public key (or HMAC secret).
    pub key: DecodingKey,
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// How a trusted issuer's tokens are read.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// The `iss` value.
    pub issuer: String,
    /// The `aud` value the vault expects.
    pub audience: String,
    /// Keys by `kid`; a single key may be under `None` for issuers whose
    /// tokens carry no `kid`.
    pub keys: HashMap<Option<String>, IssuerKey>,
    /// The claim that names the role.
    pub role_claim: String,
    /// The claim that names the principal (usually `sub`).
    pub subject_claim: String,
    /// Roles this issuer may grant.
    pub roles: Vec<Role>,
    /// Whether this is the vault's own issuer.
    pub own: bool,
    /// Keys fetched over HTTP (discovery or a JWKS URL), looked up instead
    /// of `keys`.
    pub remote: Option<std::sync::Arc<super::oidc::RemoteKeys>>,
}

impl TrustedIssuer {
    /// The vault's own issuer, as its verifier trusts it: every role, the
    /// `role` and `sub` claims, the issuer's one key under its `kid`.
    pub fn own(issuer: &TokenIssuer, audience: &str) -> Self {
        Self {
            issuer: issuer.issuer().to_owned(),
            audience: audience.to_owned(),
            keys: HashMap::from([(Some(issuer.kid().to_owned()), issuer.verification_key())]),
            role_claim: "role".to_owned(),
            subject_claim: "sub".to_owned(),
            roles: vec![Role::Customer, Role::Business, Role::Auditor, Role::Admin],
            own: true,
            remote: None,
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The issuer.
    pub issuer: String,
    /// Whether the vault issued it.
    pub own: bool,
    /// The role it grants.
    pub role: Role,
    /// The principal it names (the subject claim).
    pub subject: String,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
    /// Until when its check may be reused (Unix seconds): its expiry, or
    /// earlier when its key was fetched over HTTP and will be too old then.
    pub cache_until: u64,
    /// For the vault's own client tokens, the version of the client secret
    /// it was issued under (0 for every other token).
    pub secret_version: u32,
}

/// Verifies tokens of the trusted issuers.
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    issuers: BTreeMap<String, TrustedIssuer>,
}

/// A JSON object that refuses duplicate member names (RFC 8725 §3.2 warns
/// that parsers disagree about which duplicate wins).
struct StrictObject(serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object without duplicate members")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom("duplicate member"));
                    }
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Decodes one unpadded base64url segment into a duplicate-free JSON object.
fn segment_object(segment: &str) -> Result<serde_json::Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| invalid("segment is not unpadded base64url"))?;
    let StrictObject(map) = serde_json::from_slice(&bytes).map_err(|_| invalid("segment is not a JSON object"))?;
    Ok(map)
}

/// The `alg` text of `algorithm`.
pub(super) fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        // Keys are only ever configured with the four algorithms above; a
        // name that matches no `alg` text refuses every token.
        _ => "unsupported",
    }
}

fn integer_claim(claims: &serde_json::Map<String, Value>, name: &'static str) -> Result<u64, TokenError> {
    match claims.get(name) {
        Some(Value::Number(number)) => number.as_u64().ok_or(invalid("a time claim is not a whole number")),
        Some(_) => Err(invalid("a time claim is not a number")),
        None => Err(invalid("a required time claim is missing")),
    }
}

impl TokenVerifier {
    /// A verifier trusting `issuers`.
    pub fn new(issuers: Vec<TrustedIssuer>) -> Self {
        Self { issuers: issuers.into_iter().map(|issuer| (issuer.issuer.clone(), issuer)).collect() }
    }

    /// Fetches the keys of the issuer named `issuer` again, if they are
    /// fetched over HTTP and the last try is old enough; returns whether
    /// fresh keys are cached now.
    pub async fn refresh(&self, issuer: &str) -> bool {
        match self.issuers.get(issuer).and_then(|issuer| issuer.remote.as_ref()) {
            Some(remote) => remote.refresh().await,
            None => false,
        }
    }

    /// Fetches the keys of every issuer whose keys come over HTTP (at
    /// start); an unreachable provider is logged, and its tokens are refused
    /// until a later fetch succeeds.
    pub async fn refresh_all(&self) {
        // At once: one provider that does not answer delays start-up by
        // its timeout, not by every provider's.
        let mut fetches = tokio::task::JoinSet::new();
        for remote in self.issuers.values().filter_map(|issuer| issuer.remote.clone()) {
            fetches.spawn(async move { remote.refresh().await });
        }
        while fetches.join_next().await.is_some() {}
    }

    /// Checks `token` at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(invalid("token too long"));
        }
        let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let segments: Vec<&str> = token.split('.').collect();
        if segments.len() != 3 || segments.iter().any(|s| s.is_empty() || !s.chars().all(base64url)) {
            return Err(invalid("not three segments of base64url"));
        }
        let header = segment_object(segments[0])?;
        if header.get("typ").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() != Some(TOKEN_TYPE) {
            return Err(invalid("typ is not at+jwt"));
        }
        if FORBIDDEN_HEADERS.iter().any(|name| header.contains_key(*name)) {
            return Err(invalid("forbidden header member"));
        }
        let claims = segment_object(segments[1])?;
        let issuer_name = claims.get("iss").and_then(Value::as_str).ok_or(invalid("iss missing"))?;
        let issuer = self.issuers.get(issuer_name).ok_or(invalid("unknown issuer"))?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) if kid.len() <= KID_BYTES_MAX => Some(kid.clone()),
            Some(_) => return Err(invalid("kid is not a short string")),
        };
        let alg = header.get("alg").and_then(Value::as_str).ok_or(invalid("alg missing"))?;
        // Keys fetched over HTTP stay cached only as long as the fetch is
        // trusted; a token with another algorithm never brings a fetch.
        let (key, cache_left) = match &issuer.remote {
            Some(remote) if alg != algorithm_name(remote.algorithm()) => {
                return Err(invalid("alg is not the key's algorithm"));
            }
            Some(remote) => remote
                .key(&kid)
                .map(|(key, left)| (key, Some(left)))
                .ok_or_else(|| TokenError::KeyNotCached(issuer.issuer.clone()))?,
            None => (issuer.keys.get(&kid).cloned().ok_or(invalid("unknown kid"))?, None),
        };
        // Exactly the key's algorithm, compared as text: no family matching,
        // no `none`, no case games.
        if alg != algorithm_name(key.algorithm) {
            return Err(invalid("alg is not the key's algorithm"));
        }

        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        // Time is checked below against the caller's `now` (the vault reads
        // the clock at its edges only), with integer-only claims.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|_| invalid("signature or claims"))?;

        // Every time claim must be a whole number; RFC 8725 §3.10 and the
        // library's history of skipping malformed ones.
        let (exp, nbf, iat) =
            (integer_claim(&claims, "exp")?, integer_claim(&claims, "nbf")?, integer_claim(&claims, "iat")?);
        if now >= exp + LEEWAY_SECS {
            return Err(invalid("expired"));
        }
        if nbf > now + LEEWAY_SECS || iat > now + LEEWAY_SECS {
            return Err(invalid("not yet valid"));
        }
        if exp <= iat || exp - iat > TOKEN_LIFETIME_MAX_SECS {
            return Err(invalid("lifetime too long"));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == &issuer.audience,
            Some(Value::Array(values)) => values.iter().any(|v| v.as_str() == Some(issuer.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(invalid("aud"));
        }
        let subject = claims
            .get(&issuer.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= SUBJECT_BYTES_MAX)
            .ok_or(invalid("subject claim"))?;
        let role = claims
            .get(&issuer.role_claim)
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .filter(|role| issuer.roles.contains(role))
            .ok_or(invalid("role claim"))?;
        let secret_version = match claims.get("secret_version") {
            None => 0,
            Some(version) if issuer.own => {
                version.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or(invalid("secret_version"))?
            }
            Some(_) => 0,
        };
        let cache_until = cache_left.map_or(exp, |left| exp.min(now.saturating_add(left.as_secs())));
        Ok(VerifiedToken {
            issuer: issuer.issuer.clone(),
            own: issuer.own,
            role,
            subject: subject.to_owned(),
            expires_at: exp,
            cache_until,
            secret_version,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn issuer() -> TokenIssuer {
        super::super::jwt_ring::install();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        TokenIssuer::new("https://vault.test", "consentvault", pkcs8.as_ref()).unwrap()
    }

    fn verifier(issuer: &TokenIssuer) -> TokenVerifier {
        TokenVerifier::new(vec![TrustedIssuer::own(issuer, "consentvault")])
    }

    #[test]
    fn issued_tokens_verify_with_their_role_and_subject() {
        let issuer = issuer();
        let token = issuer.issue(Role::Business, "b1", "j1", 1_000_000).unwrap();
        let verified = verifier(&issuer).verify(&token.token, 1_000_010).unwrap();
        assert_eq!((verified.role, verified.subject.as_str(), verified.own), (Role::Business, "b1", true));
    }

    #[test]
    fn leeway_is_thirty_seconds_on_each_side() {
        let issuer = issuer();
        let verifier = verifier(&issuer);
        let token = issuer.issue(Role::Customer, "c", "j", 1_000_000).unwrap().token;
        let exp = 1_000_000 + TOKEN_TTL_SECS;
        assert!(verifier.verify(&token, exp + LEEWAY_SECS - 1).is_ok());
        assert!(verifier.verify(&token, exp + LEEWAY_SECS).is_err());
        assert!(verifier.verify(&token, 1_000_000 - LEEWAY_SECS).is_ok());
        assert!(verifier.verify(&token, 1_000_000 - LEEWAY_SECS - 1).is_err());
    }
}
