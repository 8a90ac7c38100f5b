//! The keys of an external issuer fetched over HTTP: found by OpenID
//! Connect Discovery 1.0 (`{issuer}/.well-known/openid-configuration`,
//! whose `issuer` must be the configured one exactly, and its `jwks_uri`)
//! or at a configured JWKS URL.
//!
//! The set is cached. A token naming a key the cache lacks makes the
//! request that carried it wait for one fetch, at most one per issuer every
//! `refresh_min`, so a flood of made-up `kid`s costs the provider one fetch
//! per interval. A cache older than `max_age` serves nothing until a fetch
//! succeeds: while the provider is unreachable its tokens are refused
//! (401), never accepted on stale keys, and never answered with a 5xx.
//! Nothing in a token names where keys come from (`jku` and `x5u` are
//! refused before any lookup); the URLs are the operator's.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::token::{IssuerKey, TokenError, algorithm_name};

/// Longest answer read from a provider.
const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an issuer's keys are fetched from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The `jwks_uri` of the issuer's discovery document.
    Discovery,
    /// A JWKS at this URL.
    Jwks(String),
}

/// How an issuer's remote keys are fetched and kept.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// The issuer (`iss`), whose discovery document is fetched.
    pub issuer: String,
    /// Discovery or a JWKS URL.
    pub source: KeySource,
    /// The one algorithm its keys are used with.
    pub algorithm: Algorithm,
    /// The least time between two fetches.
    pub refresh_min: Duration,
    /// How long a fetched set is trusted.
    pub max_age: Duration,
    /// Whether `http://` URLs are allowed (a provider on loopback in
    /// development); otherwise only `https://`.
    pub insecure_http: bool,
    /// A PEM file of CA certificates to trust besides the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// An issuer's keys, fetched and cached.
#[derive(Debug)]
pub struct RemoteKeys {
    settings: RemoteSettings,
    client: reqwest::Client,
    cached: RwLock<Cached>,
    /// One fetch at a time; a request that waited for another's fetch finds
    /// the keys it brought.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Cached {
    keys: HashMap<Option<String>, IssuerKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

/// The members of a discovery document the vault reads.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl RemoteKeys {
    /// Keys for `settings`, none fetched yet.
    pub fn new(settings: RemoteSettings) -> Result<Self, TokenError> {
        let url = match &settings.source {
            KeySource::Discovery => &settings.issuer,
            KeySource::Jwks(url) => url,
        };
        url_check(url, settings.insecure_http)?;
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.insecure_http)
            // Straight to the provider the operator named: no proxy from
            // the environment sees or changes the keys.
            .no_proxy()
            // Fetches are rare: a fresh connection each time, so a provider
            // that went away is found gone, not reached on an idle socket.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("consentvault/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| TokenError::Key(format!("issuer {}: ca_file: {error}", settings.issuer)))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client =
            builder.build().map_err(|error| TokenError::Key(format!("issuer {}: {error}", settings.issuer)))?;
        Ok(Self { settings, client, cached: RwLock::default(), fetching: tokio::sync::Mutex::new(()) })
    }

    /// The key `kid` names and how much longer the cache may serve it, if
    /// the cache holds it and is not older than `max_age`.
    pub fn key(&self, kid: &Option<String>) -> Option<(IssuerKey, Duration)> {
        let cached = self.cached();
        let age = cached.fetched_at?.elapsed();
        let left = self.settings.max_age.checked_sub(age).filter(|left| !left.is_zero())?;
        cached.keys.get(kid).map(|key| (key.clone(), left))
    }

    /// The one algorithm the issuer's keys are used with.
    pub fn algorithm(&self) -> Algorithm {
        self.settings.algorithm
    }

    fn cached(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        // The cache is replaced whole under the lock, so a panic elsewhere
        // cannot leave it half written.
        self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches the keys again, unless a fetch was tried less than
    /// `refresh_min` ago. Returns whether the cache now holds a fetch made
    /// by this call or by one it waited for.
    pub async fn refresh(&self) -> bool {
        let asked_at = Instant::now();
        let _one = self.fetching.lock().await;
        {
            let cached = self.cached();
            // Another request fetched while this one waited: use its keys.
            if cached.fetched_at.is_some_and(|at| at >= asked_at) {
                return true;
            }
            if cached.attempted_at.is_some_and(|at| at.elapsed() < self.settings.refresh_min) {
                return false;
            }
        }
        self.cached_mut().attempted_at = Some(Instant::now());
        let issuer = &self.settings.issuer;
        if self.settings.insecure_http {
            tracing::warn!(issuer = %issuer, "insecure_http: fetching the external issuer's keys over plain HTTP");
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %issuer, keys = keys.len(), "external issuer's keys fetched");
                let mut cached = self.cached_mut();
                cached.keys = keys;
                cached.fetched_at = Some(Instant::now());
                true
            }
            Err(problem) => {
                tracing::warn!(issuer = %issuer, %problem, "cannot fetch the external issuer's keys; its tokens are refused while the cache lacks them");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<Option<String>, IssuerKey>, String> {
        let jwks_url = match &self.settings.source {
            KeySource::Jwks(url) => url.clone(),
            KeySource::Discovery => {
                let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
                let discovery: Discovery = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|error| format!("{url}: not a discovery document: {error}"))?;
                // OpenID Connect Discovery 1.0 §4.3: exactly the issuer asked.
                if discovery.issuer != self.settings.issuer {
                    return Err(format!("{url} names the issuer {:?}, not this one", discovery.issuer));
                }
                url_check(&discovery.jwks_uri, self.settings.insecure_http).map_err(|error| error.to_string())?;
                discovery.jwks_uri
            }
        };
        let set: serde_json::Value = serde_json::from_slice(&self.get(&jwks_url).await?)
            .map_err(|error| format!("{jwks_url}: not JSON: {error}"))?;
        keys_of(&set, self.settings.algorithm).map_err(|problem| format!("{jwks_url}: {problem}"))
    }

    /// The body at `url`, at most [`ANSWER_BYTES_MAX`] bytes, of a 200.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self.client.get(url).send().await.map_err(|error| format!("{url}: {error}"))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("{url}: status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| format!("{url}: {error}"))? {
            if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                return Err(format!("{url}: longer than {ANSWER_BYTES_MAX} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `url` is `https://`, or `http://` where the operator allowed it.
fn url_check(url: &str, insecure_http: bool) -> Result<(), TokenError> {
    let allowed = url.starts_with("https://") || (insecure_http && url.starts_with("http://"));
    if allowed {
        Ok(())
    } else {
        Err(TokenError::Key(format!(
            "`{url}` is not an https URL (set insecure_http = true for a provider on plain HTTP, in development only)"
        )))
    }
}

/// The signing keys of a JWKS for `algorithm`, by `kid`: keys for another
/// use (`use` other than `sig`) or algorithm, or of a type the vault does
/// not read, are passed over. One key without a `kid` is kept under none.
fn keys_of(set: &serde_json::Value, algorithm: Algorithm) -> Result<HashMap<Option<String>, IssuerKey>, String> {
    let listed = set.get("keys").and_then(serde_json::Value::as_array).ok_or("no `keys` array")?;
    let mut keys = HashMap::new();
    for value in listed {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else { continue };
        let for_signing = jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|usage| matches!(usage, jsonwebtoken::jwk::PublicKeyUse::Signature));
        let same_algorithm =
            jwk.common.key_algorithm.is_none_or(|named| named.to_string() == algorithm_name(algorithm));
        if !for_signing || !same_algorithm || !type_fits(&jwk.algorithm, algorithm) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        if keys.insert(jwk.common.key_id.clone(), IssuerKey { algorithm, key }).is_some() {
            return Err(format!("two keys share the kid {:?}", jwk.common.key_id));
        }
    }
    if keys.is_empty() {
        return Err("no signing key for the configured algorithm".to_owned());
    }
    if keys.len() > 1 && keys.contains_key(&None) {
        return Err("a key without a kid beside others".to_owned());
    }
    Ok(keys)
}

/// Whether a key of this type serves `algorithm`.
fn type_fits(parameters: &AlgorithmParameters, algorithm: Algorithm) -> bool {
    matches!(
        (parameters, algorithm),
        (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
            | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
            | (AlgorithmParameters::RSA(_), Algorithm::RS256)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ed25519(kid: Option<&str>, usage: Option<&str>, alg: Option<&str>) -> serde_json::Value {
        let mut jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        if let Some(usage) = usage {
            jwk["use"] = usage.into();
        }
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }

    #[test]
    fn a_jwks_gives_its_signing_keys_for_the_algorithm_and_passes_over_the_rest() {
        crate::auth::jwt_ring::install();
        let set = serde_json::json!({"keys": [
            ed25519(Some("a"), Some("sig"), Some("EdDSA")),
            ed25519(Some("b"), None, None),
            ed25519(Some("enc"), Some("enc"), None),
            ed25519(Some("rsa"), None, Some("RS256")),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "unknown", "kid": "odd"},
        ]});
        let keys = keys_of(&set, Algorithm::EdDSA).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, [Some("a".to_owned()), Some("b".to_owned())]);

        assert!(keys_of(&serde_json::json!({"keys": []}), Algorithm::EdDSA).is_err());
        assert!(keys_of(&serde_json::json!({"nothing": 1}), Algorithm::EdDSA).is_err());
        let twice = serde_json::json!({"keys": [ed25519(Some("a"), None, None), ed25519(Some("a"), None, None)]});
        assert!(keys_of(&twice, Algorithm::EdDSA).is_err());
        let unnamed = serde_json::json!({"keys": [ed25519(None, None, None), ed25519(Some("a"), None, None)]});
        assert!(keys_of(&unnamed, Algorithm::EdDSA).is_err());
        let one = serde_json::json!({"keys": [ed25519(None, None, None)]});
        assert!(keys_of(&one, Algorithm::EdDSA).unwrap().contains_key(&None));
    }

    #[test]
    fn only_https_unless_the_operator_allows_plain_http() {
        assert!(url_check("https://idp.example.org", false).is_ok());
        assert!(url_check("http://127.0.0.1:9000", false).is_err());
        assert!(url_check("http://127.0.0.1:9000", true).is_ok());
        assert!(url_check("file:///etc/passwd", true).is_err());
        assert!(url_check("ftp://idp", true).is_err());
    }
}
