//! Trusted external issuers (an organisation's OIDC provider), configured
//! with their issuer, audience, one algorithm, and where their keys are: a
//! public key (PEM) or a JWKS file, read at start-up, or the provider
//! itself, by OpenID Connect Discovery or at a JWKS URL, fetched and
//! refreshed (`oidc.rs`). Only the configuration names where keys come
//! from: nothing in a token can make the vault fetch from elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::Role;
use super::oidc::{KeySource, RemoteKeys, RemoteSettings};
use super::token::{IssuerKey, TokenError, TrustedIssuer};

/// Least seconds between two fetches of an issuer's remote keys, unless
/// configured.
pub const REFRESH_MIN_SECS_DEFAULT: u64 = 30;
/// Seconds fetched keys are trusted, unless configured.
pub const MAX_AGE_SECS_DEFAULT: u64 = 3600;

/// One `[[identity.external]]` entry of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for this vault.
    pub audience: String,
    /// The one algorithm: `EdDSA`, `ES256` or `RS256`.
    pub algorithm: String,
    /// A PEM public key file (tokens then need no `kid`).
    #[serde(default)]
    pub public_key_pem: Option<PathBuf>,
    /// A JWKS file; each key is looked up by its `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// `true`: the keys are found by OpenID Connect Discovery from
    /// `issuer` (`{issuer}/.well-known/openid-configuration`, its
    /// `jwks_uri`), fetched at start and again for an unknown `kid`.
    #[serde(default)]
    pub discovery: bool,
    /// A JWKS URL, fetched at start and again for an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Least seconds between two fetches of remote keys (default 30): an
    /// unknown `kid` within that time is refused without a fetch.
    #[serde(default)]
    pub refresh_min_secs: Option<u64>,
    /// Seconds fetched keys are trusted (default 3600); older, they serve
    /// nothing until a fetch succeeds.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Allow `http://` URLs for discovery and keys: a provider on loopback,
    /// in development only (logged as a warning at every fetch start).
    #[serde(default)]
    pub insecure_http: bool,
    /// PEM file of CA certificates trusted for the provider's HTTPS, besides
    /// the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The claim holding the role (default `role`).
    #[serde(default = "role_claim_default")]
    pub role_claim: String,
    /// The claim holding the principal (default `sub`).
    #[serde(default = "subject_claim_default")]
    pub subject_claim: String,
    /// The roles this issuer may grant (default: customer only).
    #[serde(default = "roles_default")]
    pub roles: Vec<Role>,
}

fn role_claim_default() -> String {
    "role".to_owned()
}

fn subject_claim_default() -> String {
    "sub".to_owned()
}

fn roles_default() -> Vec<Role> {
    vec![Role::Customer]
}

fn algorithm(name: &str) -> Result<Algorithm, TokenError> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        other => Err(TokenError::Key(format!("algorithm `{other}` is not one of EdDSA, ES256, RS256"))),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|error| TokenError::Key(format!("{}: {error}", path.display())))
}

impl ExternalIssuerConfig {
    /// Reads the key files and builds the trusted issuer.
    pub fn load(&self) -> Result<TrustedIssuer, TokenError> {
        let algorithm = algorithm(&self.algorithm)?;
        let not_one = || {
            TokenError::Key(format!(
                "issuer {}: give exactly one of public_key_pem, jwks_file, jwks_url and discovery = true",
                self.issuer
            ))
        };
        let remote = match (&self.public_key_pem, &self.jwks_file, self.discovery, &self.jwks_url) {
            (None, None, true, None) => Some(KeySource::Discovery),
            (None, None, false, Some(url)) => Some(KeySource::Jwks(url.clone())),
            (_, _, false, None) => None,
            _ => return Err(not_one()),
        };
        if let Some(source) = remote {
            let refresh_min_secs = self.refresh_min_secs.unwrap_or(REFRESH_MIN_SECS_DEFAULT);
            let max_age_secs = self.max_age_secs.unwrap_or(MAX_AGE_SECS_DEFAULT);
            // A zero interval would let every made-up kid cost the provider a
            // fetch; a cache that ages out before it may be refreshed would
            // refuse every token of the issuer for a while.
            if refresh_min_secs == 0 || max_age_secs <= refresh_min_secs {
                return Err(TokenError::Key(format!(
                    "issuer {}: refresh_min_secs must be at least 1, and max_age_secs larger than it",
                    self.issuer
                )));
            }
            let settings = RemoteSettings {
                issuer: self.issuer.clone(),
                source,
                algorithm,
                refresh_min: Duration::from_secs(refresh_min_secs),
                max_age: Duration::from_secs(max_age_secs),
                insecure_http: self.insecure_http,
                ca_pem: self.ca_file.as_deref().map(read).transpose()?,
            };
            let remote = RemoteKeys::new(settings)?;
            return self.trusted(HashMap::new(), Some(Arc::new(remote)));
        }
        let keys = match (&self.public_key_pem, &self.jwks_file) {
            (Some(pem), None) => {
                let bytes = read(pem)?;
                let key = match algorithm {
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(&bytes),
                    _ => DecodingKey::from_rsa_pem(&bytes),
                }
                .map_err(|error| TokenError::Key(format!("{}: {error}", pem.display())))?;
                HashMap::from([(None, IssuerKey { algorithm, key })])
            }
            (None, Some(jwks)) => {
                let set: JwkSet = serde_json::from_slice(&read(jwks)?)
                    .map_err(|error| TokenError::Key(format!("{}: {error}", jwks.display())))?;
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let kid = jwk
                        .common
                        .key_id
                        .clone()
                        .ok_or_else(|| TokenError::Key(format!("{}: every key needs a kid", jwks.display())))?;
                    let key = DecodingKey::from_jwk(jwk)
                        .map_err(|error| TokenError::Key(format!("{} key {kid}: {error}", jwks.display())))?;
                    keys.insert(Some(kid), IssuerKey { algorithm, key });
                }
                if keys.is_empty() {
                    return Err(TokenError::Key(format!("{}: no keys", jwks.display())));
                }
                keys
            }
            _ => return Err(not_one()),
        };
        self.trusted(keys, None)
    }

    fn trusted(
        &self,
        keys: HashMap<Option<String>, IssuerKey>,
        remote: Option<Arc<RemoteKeys>>,
    ) -> Result<TrustedIssuer, TokenError> {
        if self.roles.is_empty() {
            return Err(TokenError::Key(format!("issuer {}: `roles` is empty", self.issuer)));
        }
        Ok(TrustedIssuer {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            keys,
            role_claim: self.role_claim.clone(),
            subject_claim: self.subject_claim.clone(),
            roles: self.roles.clone(),
            own: false,
            remote,
        })
    }
}
