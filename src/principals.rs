//! Principals: the admin, businesses, auditors and customers, their
//! credentials, tokens and disabling.
//!
//! Client secrets are 256 random bits, shown once, stored as SHA-256 (a hash
//! of that much entropy cannot be guessed back). Customer passwords are
//! stored as Argon2id PHC strings. Every principal change is an audit event
//! in the same transaction. Disabling a principal ends its tokens at once:
//! the token cache forgets them and every request re-checks the record.

use std::net::IpAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditError, AuditEvent, EventKind, Related};
use crate::auth::cache::TokenCache;
use crate::auth::token::{IssuedToken, TokenError, TokenIssuer, TokenVerifier, VerifiedToken};
use crate::auth::{Principal, Role};
use crate::clock;
use crate::core::Core;
use crate::crypto::{CryptoError, random_bytes};
use crate::ids::{SubjectId, hex};
use crate::store::{CommitError, Key, StoreError, Txn};
use crate::subjects::{DataError, Subjects};

/// Shortest customer password accepted.
pub const PASSWORD_CHARS_MIN: usize = 10;
/// Longest customer password accepted (Argon2 input is bounded anyway).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Longest business or auditor name.
pub const NAME_BYTES_MAX: usize = 200;
/// Most purposes a business may be registered for.
pub const PURPOSES_MAX: usize = 32;

/// Errors of principal management and sign-in. Messages never contain a
/// secret or a password.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    /// The credentials do not match an enabled principal. Deliberately
    /// vague: it does not say whether the client exists.
    #[error("invalid credentials")]
    BadCredentials,
    /// A rotation named a current client secret that is not the one held.
    #[error("the current client secret given is not this client's")]
    WrongSecret,
    /// Too many wrong passwords for this customer lately (the sign-in
    /// limit); try again after the wait.
    #[error("too many attempts; try again in {} s", .0.as_secs().max(1))]
    TooManyAttempts(std::time::Duration),
    /// The token is not acceptable (expired, forged, of a disabled or
    /// unknown principal...).
    #[error("invalid token: {0}")]
    BadToken(&'static str),
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A business was to be registered for a purpose the policies in force
    /// do not define.
    #[error("purpose `{0}` is not defined in the policies in force")]
    UnknownPurpose(String),
    /// Another business is registered under the same name (compared
    /// without case and runs of spaces).
    #[error("a business named `{0}` is already registered")]
    NameTaken(String),
    /// No such principal.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The admin credentials file could not be written at first start.
    #[error("{}: {source}", path.display())]
    CredentialsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit append failed; nothing changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Key material failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A token could not be signed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Password hashing failed.
    #[error("password hashing failed")]
    Hashing,
    /// Creating the customer's subject failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

impl From<CommitError<PrincipalError>> for PrincipalError {
    fn from(error: CommitError<PrincipalError>) -> Self {
        match error {
            CommitError::Rejected(error) => error,
            CommitError::Store(error) => Self::Store(error),
        }
    }
}

/// A stored API client (admin, business or auditor credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRecord {
    role: Role,
    principal_id: String,
    secret_sha256: String,
    created_at: String,
    /// The version of this secret, which the tokens it signs in for name
    /// ([`PrincipalRecord::secret_version`] holds the current one).
    #[serde(default, skip_serializing_if = "is_zero")]
    secret_version: u32,
}

/// A registered business or auditor (or the admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRecord {
    /// The principal id.
    pub id: String,
    /// The role.
    pub role: Role,
    /// A display name.
    pub name: String,
    /// For businesses, the purposes it is registered for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    /// The client id of its credentials.
    pub client_id: String,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When it was created.
    pub created_at: String,
    /// How many times its client secret was replaced; its tokens name the
    /// version they were issued under.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secret_version: u32,
    /// For businesses, its controller details, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<crate::controller::ControllerDetails>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// A name as compared for uniqueness: lower case, runs of white space as
/// one space, so "Acme  Pizza" and "acme pizza" are one name.
pub fn name_folded(name: &str) -> String {
    name.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// A customer of the built-in identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerRecord {
    password_argon2: String,
    disabled: bool,
    created_at: String,
}

/// The admin credentials file as written at first start.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct AdminCredentials {
    /// `client_credentials`: the file is a token request as it stands.
    #[serde(default)]
    #[allow(dead_code)]
    grant_type: Option<String>,
    client_id: String,
    client_secret: String,
}

/// The flag of [`Principals::name_index_backfill`].
const NAMES_INDEXED: &str = "principals/names-indexed";

/// The admin credentials file written on first start.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.json";

/// A client checked and given ids, not yet stored.
#[derive(Debug)]
struct PreparedClient {
    role: Role,
    name: String,
    purposes: Vec<String>,
    controller: Option<crate::controller::ControllerDetails>,
    credentials: NewClient,
}

/// Credentials shown once, when a client is created.
#[derive(Debug, Clone, Serialize)]
pub struct NewClient {
    /// The principal's id.
    pub id: String,
    /// The client id.
    pub client_id: String,
    /// The client secret, never shown again.
    pub client_secret: String,
}

fn record_error(what: &'static str) -> StoreError {
    StoreError::Corrupt { what }
}

fn sha256_hex(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Compares two equal-length texts without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secret(core: &Core) -> Result<String, CryptoError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>(core.keys().rng())?))
}

fn principal_key(role: Role, id: &str) -> Key {
    Key::principal(role.as_str(), id)
}

/// Checks a display name: non-empty, bounded, no control characters.
fn name_check(name: &str) -> Result<String, PrincipalError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.len() > NAME_BYTES_MAX || trimmed.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(PrincipalError::Invalid(format!(
            "`name` must be 1 to {NAME_BYTES_MAX} bytes of text without control or invisible characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Characters that show nothing (zero-width spaces and joiners, direction
/// marks and overrides, word joiners, the byte-order mark): a name holding
/// one would look like another name it is not.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// Principals and their credentials, tokens and rate limits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principals {
    core: Arc<Core>,
    subjects: Subjects,
    tokens: Arc<Tokens>,
    limits: Arc<Limits>,
    /// Password hashes that may run at once (Argon2id takes tens of
    /// milliseconds of a core each): a flood of sign-ins waits here instead
    /// of taking every core.
    hashes: Arc<tokio::sync::Semaphore>,
}

/// The vault's token issuer, the verifier of every trusted issuer's tokens,
/// and the verified tokens kept until they expire.
#[derive(Debug)]
pub struct Tokens {
    /// The vault's own issuer.
    pub issuer: TokenIssuer,
    /// Every trusted issuer.
    pub verifier: TokenVerifier,
    /// Verified tokens, until they expire.
    pub cache: TokenCache,
}

impl Principals {
    /// The principal service over `core`; sign-ups create subjects through
    /// `subjects`.
    pub fn new(core: Arc<Core>, subjects: Subjects, tokens: Tokens, limits: &LimitSettings) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let hashes = Arc::new(tokio::sync::Semaphore::new(cores));
        Self { core, subjects, tokens: Arc::new(tokens), limits: Arc::new(Limits::new(limits)), hashes }
    }

    /// Sign-in and sign-up rate limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The vault's token issuer.
    pub fn token_issuer(&self) -> &TokenIssuer {
        &self.tokens.issuer
    }

    /// The verifier of every trusted issuer's tokens.
    pub fn token_verifier(&self) -> &TokenVerifier {
        &self.tokens.verifier
    }

    /// Verified tokens, until they expire.
    pub fn token_cache(&self) -> &TokenCache {
        &self.tokens.cache
    }

    /// Creates a client principal (admin, business or auditor) and its
    /// credentials, audited as `principal.created` by `actor`.
    pub async fn client_create(
        &self,
        actor: &Actor,
        role: Role,
        name: &str,
        purposes: Vec<String>,
    ) -> Result<NewClient, PrincipalError> {
        let prepared = self.client_prepare(role, name, purposes, None)?;
        self.client_commit(actor, prepared).await
    }

    /// Registers a business with its controller details (which its consent
    /// receipts name), audited as `principal.created` by `actor`.
    pub async fn business_register(
        &self,
        actor: &Actor,
        name: &str,
        purposes: Vec<String>,
        controller: Option<crate::controller::ControllerDetails>,
    ) -> Result<NewClient, PrincipalError> {
        let controller =
            controller.map(|details| details.checked()).transpose().map_err(|e| PrincipalError::Invalid(e.0))?;
        let prepared = self.client_prepare(Role::Business, name, purposes, controller)?;
        self.client_commit(actor, prepared).await
    }

    /// Replaces a business's controller details; receipts issued from now
    /// on name the new ones (those issued before are never changed).
    /// Audited as `principal.changed`.
    pub async fn business_controller_set(
        &self,
        actor: &Actor,
        id: &str,
        controller: crate::controller::ControllerDetails,
    ) -> Result<PrincipalRecord, PrincipalError> {
        let controller = controller.checked().map_err(|e| PrincipalError::Invalid(e.0))?;
        self.principal_change(actor, Role::Business, id, EventKind::PrincipalChanged, move |_, record| {
            record.controller = Some(controller);
            Ok(())
        })
        .await
    }

    /// Checks the request and makes the ids and secret of a new client.
    fn client_prepare(
        &self,
        role: Role,
        name: &str,
        purposes: Vec<String>,
        controller: Option<crate::controller::ControllerDetails>,
    ) -> Result<PreparedClient, PrincipalError> {
        if role == Role::Customer {
            return Err(PrincipalError::Invalid("customers sign up; they are not clients".to_owned()));
        }
        let name = name_check(name)?;
        if purposes.len() > PURPOSES_MAX || purposes.iter().any(|p| !crate::policy::catalogue::is_identifier(p)) {
            return Err(PrincipalError::Invalid(format!(
                "`purposes` must be at most {PURPOSES_MAX} purpose names like order-fulfilment"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = purposes.iter().find(|purpose| !seen.insert(purpose.as_str())) {
            return Err(PrincipalError::Invalid(format!("`purposes` names `{twice}` twice")));
        }
        let policies = self.core.policies();
        if let Some(unknown) = purposes.iter().find(|purpose| !policies.rules.purposes.contains_key(purpose.as_str())) {
            return Err(PrincipalError::UnknownPurpose(unknown.clone()));
        }
        let credentials = NewClient {
            id: self.core.random_id()?,
            client_id: self.core.random_id()?,
            client_secret: secret(&self.core)?,
        };
        Ok(PreparedClient { role, name, purposes, controller, credentials })
    }

    /// Stores a prepared client with its `principal.created` event.
    async fn client_commit(&self, actor: &Actor, prepared: PreparedClient) -> Result<NewClient, PrincipalError> {
        let PreparedClient { role, name, purposes, controller, credentials } = prepared;
        let id = credentials.id.clone();
        let now = self.core.clock().rfc3339();
        let client = ClientRecord {
            role,
            principal_id: id.clone(),
            secret_sha256: sha256_hex(&credentials.client_secret),
            created_at: now.clone(),
            secret_version: 0,
        };
        let record = PrincipalRecord {
            id: id.clone(),
            role,
            name,
            purposes,
            client_id: credentials.client_id.clone(),
            disabled: false,
            created_at: now.clone(),
            secret_version: 0,
            controller,
        };
        let mut event = AuditEvent::new(EventKind::PrincipalCreated, actor.clone(), &now)
            .related(Related::Principal(role.audit_role()), &id);
        if role == Role::Business {
            event.business = Some(id.clone());
        }
        let client_bytes = serde_json::to_vec(&client).map_err(|_| record_error("client"))?;
        let record_bytes = serde_json::to_vec(&record).map_err(|_| record_error("principal"))?;
        let key = principal_key(role, &id);
        let id_bytes = id.clone().into_bytes();
        let client_key = Key::client(&credentials.client_id);
        // Business names are unique: customers choose whom to trust by them.
        let name_key = (role == Role::Business).then(|| Key::principal_name(role.as_str(), &name_folded(&record.name)));
        let name = record.name.clone();
        let log = self.core.audit().clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                if let Some(name_key) = name_key {
                    if txn.get(&name_key)?.is_some() {
                        return Err(PrincipalError::NameTaken(name));
                    }
                    txn.put(name_key, id_bytes);
                }
                txn.put(client_key, client_bytes);
                txn.put(key, record_bytes);
                Ok::<_, PrincipalError>(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        tracing::info!(role = role.as_str(), id = %id, "principal created");
        Ok(credentials)
    }

    /// On the first start of a vault: creates the admin client and writes
    /// its credentials to `<data-dir>/admin-credentials.json` (mode 0600),
    /// the file first (synced, with its directory), so a secret is never
    /// stored that nobody can read. A first start cut off between the two
    /// (a power cut) left the file without the principal: the next start
    /// makes the principal from the file, so the credentials the operator
    /// may already hold work. Returns the file's path, or `None` if an admin
    /// exists.
    pub async fn admin_bootstrap(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<Option<std::path::PathBuf>, PrincipalError> {
        if !self.principals(Role::Admin, None, 1)?.0.is_empty() {
            return Ok(None);
        }
        let mut prepared = self.client_prepare(Role::Admin, "admin", Vec::new(), None)?;
        let path = data_dir.join(ADMIN_CREDENTIALS_FILE);
        let io = |source: std::io::Error| PrincipalError::CredentialsFile { path: path.clone(), source };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                let written: AdminCredentials = serde_json::from_slice(&bytes).map_err(|_| {
                    io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not the credentials this vault wrote"))
                })?;
                prepared.credentials.client_id = written.client_id.clone();
                prepared.credentials.client_secret = written.client_secret.clone();
                self.client_commit(&Actor::system(), prepared).await?;
                tracing::warn!(file = %path.display(), "admin client made from the credentials of an interrupted first start");
                return Ok(Some(path));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
        let text = zeroize::Zeroizing::new(
            // A token request as it stands: `curl -d @admin-credentials.json`.
            serde_json::to_string_pretty(&serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": prepared.credentials.client_id,
                "client_secret": prepared.credentials.client_secret,
            }))
            .map_err(|_| record_error("admin credentials"))?,
        );
        crate::files::create_private(&path, format!("{}\n", text.as_str()).as_bytes()).map_err(io)?;
        if let Err(error) = self.client_commit(&Actor::system(), prepared).await {
            // Not stored: the file must not promise credentials that do not work.
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        Ok(Some(path))
    }

    /// The record of a business, auditor or admin.
    pub fn principal(&self, role: Role, id: &str) -> Result<Option<PrincipalRecord>, PrincipalError> {
        self.core
            .store()
            .get(&principal_key(role, id))?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| record_error("principal").into()))
            .transpose()
    }

    /// One page of the principals of `role`, in id order: up to `limit`
    /// after the id `after`, and whether more follow.
    pub fn principals(
        &self,
        role: Role,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<PrincipalRecord>, bool), PrincipalError> {
        let (entries, more) =
            self.core.store().scan_page(&Key::principals_of(role.as_str()), after.map(str::as_bytes), limit)?;
        let records = entries
            .into_iter()
            .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(|_| record_error("principal").into()))
            .collect::<Result<_, PrincipalError>>()?;
        Ok((records, more))
    }

    /// Disables a business or auditor: its tokens stop working at once.
    pub async fn principal_disable(
        &self,
        actor: &Actor,
        role: Role,
        id: &str,
    ) -> Result<PrincipalRecord, PrincipalError> {
        let record = self
            .principal_change(actor, role, id, EventKind::PrincipalDisabled, |_, record| {
                record.disabled = true;
                Ok(())
            })
            .await?;
        tracing::info!(role = role.as_str(), id, "principal disabled");
        Ok(record)
    }

    /// Replaces the client secret of principal `id` in `role` (a business
    /// rotating its own), which must prove it holds the `current` one: a
    /// token alone (one that leaked, or one the admin made with the first
    /// secret) cannot take the credentials over. The old secret, and every
    /// token issued under it, stop working when this returns. Audited as
    /// `principal.secret_rotated`. The new secret is in the answer, and
    /// nowhere else.
    pub async fn secret_rotate(
        &self,
        actor: &Actor,
        role: Role,
        id: &str,
        current: &str,
    ) -> Result<NewClient, PrincipalError> {
        let client_secret = secret(&self.core)?;
        let secret_sha256 = sha256_hex(&client_secret);
        let current_sha256 = sha256_hex(current);
        let record = self
            .principal_change(actor, role, id, EventKind::PrincipalSecretRotated, move |txn, record| {
                if record.disabled {
                    return Err(PrincipalError::BadCredentials);
                }
                let client_key = Key::client(&record.client_id);
                let client_bytes = txn.get(&client_key)?.ok_or(record_error("client"))?;
                let mut client: ClientRecord =
                    serde_json::from_slice(&client_bytes).map_err(|_| record_error("client"))?;
                if !same(&current_sha256, &client.secret_sha256) {
                    return Err(PrincipalError::WrongSecret);
                }
                client.secret_sha256 = secret_sha256;
                record.secret_version = record.secret_version.checked_add(1).ok_or(record_error("secret version"))?;
                client.secret_version = record.secret_version;
                txn.put(client_key, serde_json::to_vec(&client).map_err(|_| record_error("client"))?);
                Ok(())
            })
            .await?;
        tracing::info!(role = role.as_str(), id, "client secret rotated");
        Ok(NewClient { id: record.id, client_id: record.client_id, client_secret })
    }

    /// Changes the record of principal `id` in `role` with `change`, in one
    /// transaction with its `kind` event by `actor`; the token cache then
    /// forgets the principal's tokens, so each is checked against the new
    /// record.
    async fn principal_change(
        &self,
        actor: &Actor,
        role: Role,
        id: &str,
        kind: EventKind,
        change: impl FnOnce(&mut Txn<'_>, &mut PrincipalRecord) -> Result<(), PrincipalError> + Send + 'static,
    ) -> Result<PrincipalRecord, PrincipalError> {
        let key = principal_key(role, id);
        let now = self.core.clock().rfc3339();
        let mut event = AuditEvent::new(kind, actor.clone(), &now).related(Related::Principal(role.audit_role()), id);
        if role == Role::Business {
            event.business = Some(id.to_owned());
        }
        let log = self.core.audit().clone();
        let ((record, appended), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let bytes = txn.get(&key)?.ok_or(PrincipalError::NotFound(role.as_str()))?;
                let mut record: PrincipalRecord =
                    serde_json::from_slice(&bytes).map_err(|_| record_error("principal"))?;
                change(txn, &mut record)?;
                txn.put(key, serde_json::to_vec(&record).map_err(|_| record_error("principal"))?);
                Ok::<_, PrincipalError>((record, log.append(txn, &event)?))
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        self.token_cache().forget_principal(id);
        Ok(record)
    }

    /// Gives every business registered before names were unique an entry
    /// in the name index, so later registrations cannot take their names.
    /// Pages through the businesses once, in id order; a stored flag makes
    /// later calls a single read. Businesses that already share a name keep
    /// it; the index names the first in id order. Returns how many names it
    /// indexed.
    pub async fn name_index_backfill(&self) -> Result<usize, PrincipalError> {
        const PAGE_MAX: usize = 1_000;
        let done = Key::meta(NAMES_INDEXED);
        if self.core.store().get(&done)?.is_some() {
            return Ok(0);
        }
        let mut after: Option<String> = None;
        let mut indexed = 0;
        loop {
            let (records, more) = self.principals(Role::Business, after.as_deref(), PAGE_MAX)?;
            after = records.last().map(|record| record.id.clone());
            let mut names: Vec<(Key, String)> = records
                .into_iter()
                .map(|record| (Key::principal_name(Role::Business.as_str(), &name_folded(&record.name)), record.id))
                .collect();
            names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let (added, _) = self
                .core
                .store()
                .commit_durable(move |txn| {
                    let mut added = 0;
                    for (key, id) in names {
                        if txn.get(&key)?.is_none() {
                            txn.put(key, id.into_bytes());
                            added += 1;
                        }
                    }
                    Ok::<_, PrincipalError>(added)
                })
                .await?;
            indexed += added;
            if !more {
                break;
            }
        }
        self.core
            .store()
            .commit_durable(move |txn| {
                txn.put(done, b"1".to_vec());
                Ok::<_, PrincipalError>(())
            })
            .await?;
        Ok(indexed)
    }

    /// Signs up a customer of the built-in identity: a new subject with its
    /// key, and the password hash, in one transaction.
    pub async fn customer_signup(&self, password: &str) -> Result<SubjectId, PrincipalError> {
        let hash = self.password_hash("password", password).await?;
        let new_subject = self.subjects.subject_prepare()?;
        let subject = new_subject.id();
        let now = self.core.clock().rfc3339();
        let record =
            serde_json::to_vec(&CustomerRecord { password_argon2: hash, disabled: false, created_at: now.clone() })
                .map_err(|_| record_error("customer"))?;
        let actor = Actor::customer(subject);
        let created = AuditEvent::new(EventKind::PrincipalCreated, actor.clone(), &now)
            .subject(subject)
            .related(Related::Principal(crate::audit::Role::Customer), subject.to_string());
        let key = principal_key(Role::Customer, &subject.to_string());
        let log = self.core.audit().clone();
        let ((first, second), durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let first = new_subject.write(txn, &log, &actor)?;
                txn.put(key, record);
                Ok::<_, PrincipalError>((first, log.append(txn, &created)?))
            })
            .await?;
        self.core.audit().confirm(first, &durable)?;
        self.core.audit().confirm(second, &durable)?;
        tracing::info!(%subject, "customer signed up");
        self.subjects.subject_created();
        Ok(subject)
    }

    /// The Argon2id hash of a new password, checked for length (`member`
    /// names it in the error).
    async fn password_hash(&self, member: &str, password: &str) -> Result<String, PrincipalError> {
        if password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX {
            return Err(PrincipalError::Invalid(format!(
                "`{member}` must be {PASSWORD_CHARS_MIN} to {PASSWORD_BYTES_MAX} characters"
            )));
        }
        let salt = SaltString::encode_b64(&random_bytes::<16>(self.core.keys().rng())?)
            .map_err(|_| PrincipalError::Hashing)?;
        let password = zeroize::Zeroizing::new(password.to_owned());
        // Argon2id takes tens of milliseconds of CPU: keep it off the
        // async workers, and at most one per core at a time.
        let permit = self.hashes.acquire().await.map_err(|_| PrincipalError::Hashing)?;
        let hash = tokio::task::spawn_blocking(move || {
            argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string())
        })
        .await
        .map_err(|_| PrincipalError::Hashing)?
        .map_err(|_| PrincipalError::Hashing)?;
        drop(permit);
        Ok(hash)
    }

    /// Replaces a customer's password, proving the current one; recorded as
    /// `principal.secret_rotated`. Tokens already issued end at their
    /// expiry; the caller ends the customer's sessions.
    pub async fn password_change(&self, subject: SubjectId, current: &str, new: &str) -> Result<(), PrincipalError> {
        let customer_id = subject.to_string();
        // Counted as sign-in failures are: a stolen session or token must
        // not guess the current password at will.
        let attempts = &self.limits().failures_per_client;
        let attempt_key = format!("customer:{customer_id}");
        attempts.take(&attempt_key).map_err(PrincipalError::TooManyAttempts)?;
        match self.password_verify(&customer_id, current).await {
            Err(PrincipalError::BadCredentials) => return Err(PrincipalError::BadCredentials),
            other => {
                attempts.refund(&attempt_key);
                other?;
            }
        }
        let hash = self.password_hash("new_password", new).await?;
        let now = self.core.clock().rfc3339();
        let event = AuditEvent::new(EventKind::PrincipalSecretRotated, Actor::customer(subject), &now)
            .subject(subject)
            .related(Related::Principal(crate::audit::Role::Customer), customer_id.clone());
        let key = principal_key(Role::Customer, &customer_id);
        let log = self.core.audit().clone();
        let (appended, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                let mut record: CustomerRecord = txn
                    .get(&key)?
                    .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| record_error("customer")))
                    .transpose()?
                    .ok_or(PrincipalError::BadCredentials)?;
                record.password_argon2 = hash;
                txn.put(key, serde_json::to_vec(&record).map_err(|_| record_error("customer"))?);
                Ok::<_, PrincipalError>(log.append(txn, &event)?)
            })
            .await?;
        self.core.audit().confirm(appended, &durable)?;
        self.token_cache().forget_principal(&customer_id);
        tracing::info!(%subject, "customer password changed");
        Ok(())
    }

    /// Issues a token for a client's credentials.
    pub fn token_for_client(&self, client_id: &str, client_secret: &str) -> Result<IssuedToken, PrincipalError> {
        let client: ClientRecord = match self.core.store().get(&Key::client(client_id))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| record_error("client"))?,
            // Hash anyway, so an unknown client costs what a known one does.
            None => {
                let _ = sha256_hex(client_secret);
                return Err(PrincipalError::BadCredentials);
            }
        };
        if !same(&sha256_hex(client_secret), &client.secret_sha256) {
            return Err(PrincipalError::BadCredentials);
        }
        let record = self.principal(client.role, &client.principal_id)?.ok_or(PrincipalError::BadCredentials)?;
        if record.disabled {
            return Err(PrincipalError::BadCredentials);
        }
        // The version the secret itself carries: a rotation that lands
        // between the two reads makes this token one of the old secret,
        // which the new record refuses.
        self.token_issue(client.role, &client.principal_id, client.secret_version)
    }

    /// Issues a token for a customer's password.
    pub async fn token_for_password(&self, customer_id: &str, password: &str) -> Result<IssuedToken, PrincipalError> {
        self.password_sign_in(customer_id, password).await?;
        self.token_issue(Role::Customer, customer_id, 0)
    }

    /// Checks a customer's password and records the sign-in as activity;
    /// the subject it signs in as.
    pub async fn password_sign_in(&self, customer_id: &str, password: &str) -> Result<SubjectId, PrincipalError> {
        self.password_verify(customer_id, password).await?;
        self.sign_in_record(customer_id).await?;
        customer_id.parse().map_err(|_| PrincipalError::BadCredentials)
    }

    /// Whether `password` is the enabled customer `customer_id`'s.
    async fn password_verify(&self, customer_id: &str, password: &str) -> Result<(), PrincipalError> {
        if password.len() > PASSWORD_BYTES_MAX || customer_id.parse::<SubjectId>().is_err() {
            return Err(PrincipalError::BadCredentials);
        }
        let record: Option<CustomerRecord> = self
            .core
            .store()
            .get(&principal_key(Role::Customer, customer_id))?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| record_error("customer")))
            .transpose()?;
        // An unknown customer costs the same Argon2 work as a known one, so
        // the answer time does not tell which customer ids exist.
        let (hash, known) = match &record {
            Some(record) => (record.password_argon2.clone(), true),
            None => (unknown_customer_hash()?, false),
        };
        let password = zeroize::Zeroizing::new(password.to_owned());
        let permit = self.hashes.acquire().await.map_err(|_| PrincipalError::Hashing)?;
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|_| PrincipalError::Hashing)?;
        drop(permit);
        let enabled = record.is_some_and(|record| !record.disabled);
        if !(matches && known && enabled) {
            return Err(PrincipalError::BadCredentials);
        }
        Ok(())
    }

    /// Records a customer's sign-in as activity (for the retention rule);
    /// refuses the sign-in of a customer erased meanwhile.
    async fn sign_in_record(&self, customer_id: &str) -> Result<(), PrincipalError> {
        let subject: SubjectId = customer_id.parse().map_err(|_| PrincipalError::BadCredentials)?;
        let now_secs = self.core.clock().now_secs();
        let (live, _) = self
            .core
            .store()
            .commit_durable(move |txn| {
                Ok::<_, PrincipalError>(crate::directory::subject_activity_in(txn, subject, now_secs)?)
            })
            .await?;
        if live { Ok(()) } else { Err(PrincipalError::BadCredentials) }
    }

    /// A token for principal `id` in `role`, under client secret version
    /// `secret_version` (0 for customers).
    fn token_issue(&self, role: Role, id: &str, secret_version: u32) -> Result<IssuedToken, PrincipalError> {
        let jti = self.core.random_id()?;
        let now = u64::try_from(clock::now().unix_timestamp()).unwrap_or(0);
        Ok(self.token_issuer().issue_for_secret(role, id, &jti, now, secret_version)?)
    }

    /// The principal a bearer token names, if the token verifies and the
    /// principal exists and is enabled. Cached until the token expires.
    pub async fn authenticate(&self, token: &str, now: u64) -> Result<Principal, PrincipalError> {
        if let Some(principal) = self.token_cache().get(token, now) {
            return Ok(principal);
        }
        let verified = match self.token_verifier().verify(token, now) {
            // A key the fetched set lacks: the provider may have rotated.
            // This request waits for one fetch (rate-limited per issuer).
            Err(TokenError::KeyNotCached(issuer)) if self.token_verifier().refresh(&issuer).await => {
                self.token_verifier().verify(token, now)
            }
            verified => verified,
        }
        .map_err(|error| match error {
            TokenError::Invalid(reason) => PrincipalError::BadToken(reason),
            TokenError::KeyNotCached(_) => PrincipalError::BadToken("a key the issuer's fetched keys lack"),
            other => PrincipalError::Token(other),
        })?;
        // Taken before the record is read: a disable or rotation that lands
        // meanwhile keeps this token out of the cache.
        let generation = self.token_cache().generation();
        let principal = self.principal_of(&verified).await?;
        // An erased customer's tokens end with the erasure, whoever issued them.
        if principal.role == Role::Customer {
            let subject: SubjectId = principal.id.parse().map_err(|_| PrincipalError::BadToken("customer id"))?;
            if !self.subjects.subject_exists(subject)? {
                return Err(PrincipalError::BadToken("erased customer"));
            }
        }
        self.token_cache().insert(token, principal.clone(), verified.cache_until, now, generation);
        Ok(principal)
    }

    async fn principal_of(&self, token: &VerifiedToken) -> Result<Principal, PrincipalError> {
        let id = match (token.role, token.own) {
            (Role::Customer, false) => self.external_customer(&token.issuer, &token.subject).await?.to_string(),
            (Role::Customer, true) => {
                let record: CustomerRecord = self
                    .core
                    .store()
                    .get(&principal_key(Role::Customer, &token.subject))?
                    .map(|bytes| serde_json::from_slice(&bytes).map_err(|_| record_error("customer")))
                    .transpose()?
                    .ok_or(PrincipalError::BadToken("unknown customer"))?;
                if record.disabled {
                    return Err(PrincipalError::BadToken("disabled principal"));
                }
                token.subject.clone()
            }
            (role, _) => {
                let record =
                    self.principal(role, &token.subject)?.ok_or(PrincipalError::BadToken("unknown principal"))?;
                if record.disabled {
                    return Err(PrincipalError::BadToken("disabled principal"));
                }
                // A token issued under a secret since replaced ended with it.
                if token.own && token.secret_version != record.secret_version {
                    return Err(PrincipalError::BadToken("client secret rotated"));
                }
                record.id
            }
        };
        Ok(Principal { role: token.role, id })
    }

    /// The subject of a customer of an external issuer, created on first use.
    async fn external_customer(&self, issuer: &str, external_subject: &str) -> Result<SubjectId, PrincipalError> {
        let key = Key::external_subject(issuer, external_subject);
        if let Some(bytes) = self.core.store().get(&key)? {
            let text = String::from_utf8(bytes).map_err(|_| record_error("external subject"))?;
            return text.parse().map_err(|_| record_error("external subject").into());
        }
        let new_subject = self.subjects.subject_prepare()?;
        let subject = new_subject.id();
        let actor = Actor::customer(subject);
        let now = self.core.clock().rfc3339();
        let created = AuditEvent::new(EventKind::PrincipalCreated, actor.clone(), &now)
            .subject(subject)
            .related(Related::Principal(crate::audit::Role::Customer), subject.to_string())
            .related(Related::Issuer, issuer);
        let log = self.core.audit().clone();
        let (outcome, durable) = self
            .core
            .store()
            .commit_durable(move |txn| {
                // Two first requests may race: the first one to commit wins.
                if let Some(existing) = txn.get(&key)? {
                    return Ok::<_, PrincipalError>(Err(existing));
                }
                let first = new_subject.write(txn, &log, &actor)?;
                txn.put(key, subject.to_string().into_bytes());
                Ok(Ok((first, log.append(txn, &created)?)))
            })
            .await?;
        match outcome {
            Ok((first, second)) => {
                self.core.audit().confirm(first, &durable)?;
                self.core.audit().confirm(second, &durable)?;
                tracing::info!(%subject, "customer of an external issuer provisioned");
                self.subjects.subject_created();
                Ok(subject)
            }
            Err(existing) => {
                let text = String::from_utf8(existing).map_err(|_| record_error("external subject"))?;
                text.parse().map_err(|_| record_error("external subject").into())
            }
        }
    }
}

/// An Argon2id hash of a random password, made once, checked against when a
/// customer id is unknown.
fn unknown_customer_hash() -> Result<String, PrincipalError> {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(hash) = HASH.get() {
        return Ok(hash.clone());
    }
    let rng = ring::rand::SystemRandom::new();
    let salt = SaltString::encode_b64(&random_bytes::<16>(&rng)?).map_err(|_| PrincipalError::Hashing)?;
    let password = random_bytes::<32>(&rng)?;
    let hash =
        argon2::Argon2::default().hash_password(&password, &salt).map_err(|_| PrincipalError::Hashing)?.to_string();
    Ok(HASH.get_or_init(|| hash).clone())
}

/// The rate limiters of sign-in and sign-up.
#[derive(Debug)]
pub struct Limits {
    /// Failed sign-ins per client id or customer id.
    pub failures_per_client: crate::auth::ratelimit::RateLimiter,
    /// Failed sign-ins per address.
    pub failures_per_address: crate::auth::ratelimit::RateLimiter,
    /// Sign-ups per address.
    pub signups_per_address: crate::auth::ratelimit::RateLimiter,
    /// Access requests per business.
    pub requests_per_business: crate::auth::ratelimit::RateLimiter,
}

/// One limit: up to `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// How many at once, after a quiet while.
    pub burst: u32,
    /// How many more each minute.
    pub per_minute: u32,
}

/// The limits on sign-up, sign-in and access requests (the `[limits]`
/// table of the configuration file; `docs/SECURITY.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Customer sign-ups per client address.
    pub signups_per_address: Rate,
    /// Failed sign-ins per client id or customer id.
    pub sign_in_failures_per_client: Rate,
    /// Failed sign-ins per client address.
    pub sign_in_failures_per_address: Rate,
    /// Access requests per business.
    pub access_requests_per_business: Rate,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            signups_per_address: Rate { burst: 10, per_minute: 10 },
            sign_in_failures_per_client: Rate { burst: 5, per_minute: 5 },
            sign_in_failures_per_address: Rate { burst: 20, per_minute: 20 },
            access_requests_per_business: Rate { burst: 30, per_minute: 60 },
        }
    }
}

impl LimitSettings {
    /// Each limit by its name in the configuration file.
    pub fn named(&self) -> [(&'static str, Rate); 4] {
        [
            ("limits.signups_per_address", self.signups_per_address),
            ("limits.sign_in_failures_per_client", self.sign_in_failures_per_client),
            ("limits.sign_in_failures_per_address", self.sign_in_failures_per_address),
            ("limits.access_requests_per_business", self.access_requests_per_business),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(&LimitSettings::default())
    }
}

impl Limits {
    /// The limiters for `settings`.
    pub fn new(settings: &LimitSettings) -> Self {
        use crate::auth::ratelimit::RateLimiter;
        let limiter = |rate: Rate| RateLimiter::new(rate.burst, rate.per_minute);
        Self {
            failures_per_client: limiter(settings.sign_in_failures_per_client),
            failures_per_address: limiter(settings.sign_in_failures_per_address),
            signups_per_address: limiter(settings.signups_per_address),
            requests_per_business: limiter(settings.access_requests_per_business),
        }
    }

    /// The key of an address in the limiters.
    pub fn address_key(address: IpAddr) -> String {
        format!("addr:{address}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::Services;

    #[test]
    fn names_with_invisible_characters_are_refused() {
        assert!(name_check("Acme\u{200B} Pizza").is_err());
        assert!(name_check("\u{202E}azziP emcA").is_err());
        assert_eq!(name_check("  Café Ünïcode  ").unwrap(), "Café Ünïcode");
    }

    #[test]
    fn names_fold_case_and_runs_of_spaces() {
        assert_eq!(name_folded("  ACME \t Pizza "), "acme pizza");
        assert_eq!(name_folded("Acme Pizza"), name_folded("acme   pizza"));
        assert_ne!(name_folded("Acme Pizza"), name_folded("Acme Pizzas"));
    }

    #[tokio::test]
    async fn businesses_stored_before_names_were_indexed_keep_their_names() {
        let services = Services::new();
        let principals = &services.principals;
        let purposes = || vec!["marketing".to_owned()];
        let first = principals.client_create(&Actor::system(), Role::Business, "Acme Pizza", purposes()).await.unwrap();
        principals.client_create(&Actor::system(), Role::Business, "Globex", purposes()).await.unwrap();
        // A store written before the index: no name entries, no flag.
        let names = Key::principal_name(Role::Business.as_str(), "");
        let ((), _) = services
            .core
            .store()
            .commit_durable(move |txn| {
                for (key, _) in txn.scan_prefix(&names)? {
                    txn.delete(&Key::raw(key));
                }
                Ok::<_, PrincipalError>(())
            })
            .await
            .unwrap();
        let again = principals.client_create(&Actor::system(), Role::Business, "acme pizza", purposes()).await.unwrap();

        // The backfill indexes every business; a shared name stays with the
        // first registered (in id order, the only order the store keeps).
        principals.name_index_backfill().await.unwrap();
        let owner = services.core.store().get(&Key::principal_name("business", "acme pizza")).unwrap().unwrap();
        assert!([first.id.as_bytes(), again.id.as_bytes()].contains(&owner.as_slice()));
        for taken in ["ACME PIZZA", "globex"] {
            let refused = principals.client_create(&Actor::system(), Role::Business, taken, purposes()).await;
            assert!(matches!(refused, Err(PrincipalError::NameTaken(_))), "{taken}: {refused:?}");
        }
        // Once done, it is a single read.
        assert_eq!(principals.name_index_backfill().await.unwrap(), 0);
    }
}
