//! The composition root: one data directory opened with its keys, store and
//! policies, and the domain services built over them.
//!
//! A data directory holds `kek.key` (unless the KEK comes from the
//! environment) and `store/` (the embedded store). Opening checks that the
//! loaded KEKs are the ones the store was sealed with, so a wrong key file is
//! refused at start-up instead of failing on the first read; then it builds a
//! [`Core`] and the services that hold it (`keys`, `subjects`, `principals`,
//! `consent`, `rights`, `sweep`). No service imports this module.
//!
//! No global state: two vaults on two directories can live in one process.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::audit::published::{PUBLISHED_FILE, Rollback, published_read, rollback_of};
use crate::audit::verify::{Depth, STOPPED, Verified, VerifyFailure, verify_latest, verify_log};
use crate::audit::{Actor, AuditError, AuditEvent, AuditLog, EventKind, Related};
use crate::auth::cache::TokenCache;
use crate::auth::token::{TOKEN_KEY, TOKEN_KEY_LABEL, TokenIssuer, TokenVerifier, TrustedIssuer};
use crate::consent::Consent;
use crate::contact::Contact;
use crate::core::Core;
use crate::crypto::{KeyFileError, KeyRing, KeySource, load_key_ring, write_new_key_file};
use crate::keys::{KeyConfig, KeyLimits, Keys, destroyed_in, key_check_key};
use crate::policy::{self, Policies, PolicyError};
use crate::principals::{Principals, Tokens};
use crate::rights::Rights;
use crate::store::{Backend, Key, Store, StoreConfig, StoreError};
use crate::subjects::Subjects;
use crate::sweep::Sweep;
use crate::webhooks::Webhooks;
use crate::{clock, crypto};

/// The name of the key file inside a data directory.
pub const KEY_FILE: &str = "kek.key";
/// The name of the store directory inside a data directory.
pub const STORE_DIR: &str = crate::store::EMBEDDED_DIR;

/// The layout version written at init. A store of an earlier format is
/// moved to it when it is opened writable (`serve`, and the `keys` commands
/// on a stopped vault): format 1 (each kind of subject record in a space of
/// its own, `store::migrate`) to 2, and format 2 (a key per audit entry,
/// `audit::records`) to 3. `audit verify`, `backup` and `restore` read
/// every one as it is.
const FORMAT_VERSION: &str = "3";
/// The layout before the audit log's entries were stored per batch.
const FORMAT_ENTRY_KEYS: &str = "2";
/// The layout before subject records were grouped by subject.
const FORMAT_SUBJECT_SPACES: &str = "1";

/// Errors while creating or opening a vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The data directory cannot be created or read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data directory is not empty but holds no vault.
    #[error("data directory {0} is not empty and holds no vault; choose an empty or a vault directory")]
    NotAVault(PathBuf),
    /// A command that works on an existing vault found none: the directory
    /// is missing or empty.
    #[error(
        "there is no vault in {0}: the directory is missing or empty; create one with `consentvault init --data-dir {0}` \
         (or `consentvault serve`, which creates one on first start), or name the vault's directory with --data-dir"
    )]
    NoVault(PathBuf),
    /// `init` was asked to create a vault where one exists.
    #[error("data directory {0} already holds a vault")]
    AlreadyInitialised(PathBuf),
    /// Production mode never creates keys on its own.
    #[error("data directory {0} holds no vault; production start-up does not create one (run `consentvault init`)")]
    NotInitialised(PathBuf),
    /// The store was written by a layout version this build does not know.
    #[error(
        "the store has format {found}, this build reads formats {FORMAT_SUBJECT_SPACES}, {FORMAT_ENTRY_KEYS} and {FORMAT_VERSION}"
    )]
    Format {
        /// The version found.
        found: String,
    },
    /// The key file or environment key is unusable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A loaded KEK differs from the stored check of its version.
    #[error(
        "key-encryption key version {0} is not the one this store was sealed with; use the key file that belongs to this data directory"
    )]
    KeyMismatch(u32),
    /// None of the loaded KEKs is a version the store is sealed under.
    #[error(
        "the store is sealed under key-encryption key version(s) {sealed:?}, and the key file holds version(s) {loaded:?}; \
         a rotation made after this store (or backup) was written destroys the versions before it: use the key file \
         as it was when the store was written (back it up with every backup)"
    )]
    KeysMissing {
        /// The versions the store is sealed under and that were not destroyed.
        sealed: Vec<u32>,
        /// The versions the key file or environment holds.
        loaded: Vec<u32>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A policy file is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Key material could not be created.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The audit log's records could not be created or loaded.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// `accept-rollback` on a vault whose store holds every checkpoint it
    /// published.
    #[error("the store holds every checkpoint this vault published; there is no rollback to accept")]
    NoRollback,
    /// The store is behind a checkpoint the vault published.
    #[error("{0}; {ROLLBACK_ADVICE}")]
    RolledBack(Rollback),
    /// The published-checkpoint file cannot be read or is not this vault's.
    #[error("published checkpoint: {0}")]
    Published(String),
    /// The stored audit log does not verify: entries were edited, removed,
    /// reordered or truncated, or a checkpoint does not match. The vault
    /// refuses to serve.
    #[error("the audit log does not verify: {0}")]
    AuditInvalid(VerifyFailure),
    /// The audit origin cannot be a signed-note key name.
    #[error(
        "audit origin `{0}` is not valid: it must be 1 to 256 characters without spaces, control characters or '+'"
    )]
    InvalidOrigin(String),
    /// The identity configuration is inconsistent.
    #[error("identity: {0}")]
    Identity(String),
    /// A destroyed KEK is still offered, or an interrupted rotation could
    /// not resume.
    #[error("keys: {0}")]
    Keys(crate::keys::KeyError),
    /// `init` on a PostgreSQL store that already holds a vault.
    #[error(
        "the PostgreSQL store already holds a vault: to run another node of it, copy that vault's key file into \
         this data directory (or give its key) and start `serve`"
    )]
    SharedStoreTaken,
    /// A PostgreSQL store's vault is opened from a data directory without
    /// its key.
    #[error(
        "the PostgreSQL store holds a vault, and there is no key file at {0}: copy the active node's key file there \
         (mode 0600), or give the key with --kek-file or CONSENTVAULT_KEK"
    )]
    SharedStoreKeyMissing(PathBuf),
    /// The configured audit origin differs from the one the log was created
    /// with; the origin is fixed when the vault is created.
    #[error("the audit origin is `{stored}`; it is fixed at creation and cannot become `{configured}`")]
    OriginChanged {
        /// The origin in the store.
        stored: String,
        /// The origin in the configuration.
        configured: String,
    },
}

/// Where a vault's records live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded engine (sled), in `<data-dir>/store`.
    #[default]
    Embedded,
    /// PostgreSQL, shared by vault nodes of which one is active; the data
    /// directory keeps the key file, the admin credentials and the control
    /// socket.
    Postgres(crate::store::postgres::PostgresSettings),
}

impl VaultOptions {
    /// The engine these options name; a PostgreSQL store opened with
    /// `access` instead of the configured access when one is given.
    pub fn store_config(&self, access: Option<crate::store::postgres::Access>) -> StoreConfig {
        match &self.store {
            StoreLocation::Embedded => StoreConfig::embedded(&self.data_dir.join(STORE_DIR), self.store_cache_bytes),
            StoreLocation::Postgres(settings) => {
                let mut settings = settings.clone();
                settings.access = access.unwrap_or(settings.access);
                StoreConfig::Postgres(settings)
            }
        }
    }

    /// Whether the records live outside the data directory.
    fn store_is_shared(&self) -> bool {
        matches!(self.store, StoreLocation::Postgres(_))
    }
}

/// Whether the vault `options` name exists, for a command that works on an
/// existing one: [`vault_exists`] for the embedded engine; a PostgreSQL
/// store is checked when it is opened.
pub fn vault_exists_for(options: &VaultOptions) -> Result<(), VaultError> {
    if options.store_is_shared() { Ok(()) } else { vault_exists(&options.data_dir) }
}

/// How to open a vault.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the KEKs come from; `None` means `<data_dir>/kek.key`.
    pub key_source: Option<KeySource>,
    /// The parsed policies.
    pub policies: Policies,
    /// The directory they were read from, for reloads (`None`: built in).
    pub policy_dir: Option<PathBuf>,
    /// Production mode: never create keys, refuse weak ones.
    pub production: bool,
    /// The embedded engine's page cache, in bytes.
    pub store_cache_bytes: u64,
    /// Where the records live: the embedded engine in the data directory,
    /// or PostgreSQL.
    pub store: StoreLocation,
    /// The audit log's origin for a new vault (`None`: a unique default).
    pub audit_origin: Option<String>,
    /// Token issuing and trusted external issuers.
    pub identity: IdentityOptions,
    /// When keys are replaced because they encrypted enough.
    pub key_limits: KeyLimits,
    /// How webhooks are delivered.
    pub webhooks: crate::webhooks::WebhookSettings,
}

/// What a vault is made of once its keys are loaded and its store is open
/// ([`Vault::open_backend`]).
pub struct VaultParts {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The KEKs.
    pub keys: KeyRing,
    /// The storage engine.
    pub backend: Arc<dyn Backend>,
    /// The parsed policies.
    pub policies: Policies,
    /// The directory they were read from, for reloads (`None`: built in).
    pub policy_dir: Option<PathBuf>,
    /// The audit log's origin for a new vault (`None`: a unique default).
    pub audit_origin: Option<String>,
    /// Token issuing, trusted external issuers and the sign-in limits.
    pub identity: IdentityOptions,
    /// Where keys come from and when they are replaced.
    pub key_config: KeyConfig,
    /// How webhooks are delivered.
    pub webhooks: crate::webhooks::WebhookSettings,
}

impl std::fmt::Debug for VaultParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultParts").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

/// How the vault issues and trusts tokens.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// The `iss` of the vault's own tokens.
    pub issuer: String,
    /// The `aud` of the vault's own tokens, and the one it expects.
    pub audience: String,
    /// External issuers whose tokens are trusted.
    pub external: Vec<TrustedIssuer>,
    /// The limits on sign-up, sign-in and access requests.
    pub limits: crate::principals::LimitSettings,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        Self {
            issuer: "consentvault".to_owned(),
            audience: "consentvault".to_owned(),
            external: Vec::new(),
            limits: crate::principals::LimitSettings::default(),
        }
    }
}

/// What [`Vault::open`] did to the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An existing vault was opened.
    Existing,
    /// The directory was empty: a new vault and key file were created.
    Initialised,
}

/// An open vault: the core and the services over it.
pub struct Vault {
    data_dir: PathBuf,
    /// Where the policies were read from (`None`: built into the binary).
    policy_dir: Option<PathBuf>,
    core: Arc<Core>,
    keys: Keys,
    subjects: Subjects,
    principals: Principals,
    consent: Consent,
    rights: Rights,
    sweep: Sweep,
    webhooks: Webhooks,
    contact: Contact,
    /// The full recomputation of the log that runs after start-up.
    audit_status: Arc<Mutex<AuditStatus>>,
    verifier: Mutex<Option<JoinHandle<()>>>,
    /// Set when the store is behind a checkpoint the vault published: it
    /// neither serves nor signs until an operator accepts the rollback.
    rollback: Mutex<Option<Rollback>>,
}

/// Where the full verification of the stored log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditStatus {
    /// Still recomputing the tree from the stored entries.
    Verifying,
    /// Every entry and checkpoint present at start-up verified.
    Verified,
    /// The stored log does not verify; the vault refuses to serve.
    Failed(VerifyFailure),
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("data_dir", &self.data_dir).field("core", &self.core).finish_non_exhaustive()
    }
}

/// Reads the policy directory `dir` from disk and parses it.
pub fn policies_load(dir: &Path) -> Result<Policies, PolicyError> {
    let read = |name: &str| {
        let file = dir.join(name);
        std::fs::read_to_string(&file).map_err(|error| PolicyError {
            file: file.display().to_string(),
            line: 0,
            problem: format!("cannot read: {error}"),
        })
    };
    let (catalogue, purposes, rules) =
        (read(policy::CATALOGUE_FILE)?, read(policy::PURPOSES_FILE)?, read(policy::RULES_FILE)?);
    Policies::parse(dir, policy::PolicyTexts { catalogue: &catalogue, purposes: &purposes, rules: &rules })
}

/// Whether `path` is an empty directory or does not exist.
pub(crate) fn is_empty_dir(path: &Path) -> Result<bool, VaultError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(VaultError::DataDir { path: path.to_owned(), source }),
    }
}

/// Whether `data_dir` holds what a first start writes before its store, and
/// nothing else: the key file it made, with no store beside it. A first
/// start cut off there (a power cut) is carried on from that key, not
/// refused as a directory of something else.
fn first_start_interrupted(data_dir: &Path) -> Result<bool, VaultError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(VaultError::DataDir { path: data_dir.to_owned(), source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry.map_err(|source| VaultError::DataDir { path: data_dir.to_owned(), source })?.file_name());
    }
    Ok(names == [std::ffi::OsString::from(KEY_FILE)])
}

/// Creates `path` (and missing parents) readable by the owner only.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), VaultError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| crate::files::sync_parent(path))
        .map_err(|source| VaultError::DataDir { path: path.to_owned(), source })
}

/// Makes the data directory and everything under it readable by the owner
/// only: directories 0700, files 0600 (the store's files hold sealed values,
/// and audit entries that link subject ids to businesses and pairwise ids).
/// A directory made by hand with a looser mode is tightened, with a warning
/// naming what changed. Sockets and links are left as they are.
pub(crate) fn tighten_permissions(data_dir: &Path) -> Result<(), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VaultError::DataDir { path, source }
    };
    let mut pending = vec![data_dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let wanted = if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io(&path))? {
                pending.push(entry.map_err(io(&path))?.path());
            }
            0o700
        } else if metadata.is_file() {
            0o600
        } else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & !wanted != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & wanted)).map_err(io(&path))?;
            tracing::warn!(path = %path.display(), from = format!("{mode:o}"), to = format!("{:o}", mode & wanted), "permissions tightened: only the vault's user may read its data directory");
        }
    }
    Ok(())
}

/// Whether `data_dir` holds a vault, for a command that works on an
/// existing one: a missing or empty directory is [`VaultError::NoVault`], a
/// directory with something else in it [`VaultError::NotAVault`].
pub fn vault_exists(data_dir: &Path) -> Result<(), VaultError> {
    if data_dir.join(STORE_DIR).is_dir() {
        Ok(())
    } else if is_empty_dir(data_dir)? {
        Err(VaultError::NoVault(data_dir.to_owned()))
    } else {
        Err(VaultError::NotAVault(data_dir.to_owned()))
    }
}

impl Vault {
    /// Creates a vault in an empty (or missing) `data_dir`: a fresh key file
    /// (unless `key_source` names another) and an empty store bound to it.
    pub fn init(options: &VaultOptions) -> Result<(), VaultError> {
        let (data_dir, key_source, audit_origin) =
            (options.data_dir.as_path(), options.key_source.as_ref(), options.audit_origin.as_deref());
        // Check what can be checked before anything is written, so a refused
        // init leaves the directory as it was.
        if let Some(origin) = audit_origin
            && !crate::audit::origin_is_valid(origin)
        {
            return Err(VaultError::InvalidOrigin(origin.to_owned()));
        }
        let resuming = key_source.is_none() && first_start_interrupted(data_dir)?;
        if !resuming && !is_empty_dir(data_dir)? {
            return Err(if data_dir.join(STORE_DIR).exists() {
                VaultError::AlreadyInitialised(data_dir.to_owned())
            } else {
                VaultError::NotAVault(data_dir.to_owned())
            });
        }
        // A shared store is checked before the key is written: one that
        // already holds a vault is refused, the directory left as it was.
        let shared = match options.store_config(None) {
            StoreConfig::Embedded { .. } => None,
            config => {
                let backend = crate::store::open(&config)?;
                if holds_vault(&*backend)? {
                    return Err(VaultError::SharedStoreTaken);
                }
                Some(backend)
            }
        };
        create_private_dir(data_dir)?;
        let source = match key_source {
            Some(source) => source.clone(),
            None => {
                let path = data_dir.join(KEY_FILE);
                if !resuming {
                    write_new_key_file(&path, &ring::rand::SystemRandom::new())?;
                }
                KeySource::File(path)
            }
        };
        let keys = load_key_ring(&source, false)?;
        let backend = match shared {
            Some(backend) => backend,
            None => crate::store::open(&StoreConfig::embedded(&data_dir.join(STORE_DIR), 64 * 1024 * 1024))?,
        };
        write_init_records(&*backend, &keys, audit_origin)?;
        drop(backend);
        Ok(())
    }

    /// Opens the vault in `options.data_dir`. An empty directory is
    /// initialised first unless in production mode.
    pub fn open(options: VaultOptions) -> Result<(Arc<Self>, Opened), VaultError> {
        let data_dir = options.data_dir.clone();
        if options.store_is_shared() {
            return Self::open_shared(options);
        }
        let interrupted = options.key_source.is_none() && first_start_interrupted(&data_dir)?;
        let opened = if is_empty_dir(&data_dir)? || interrupted {
            if options.production {
                return Err(VaultError::NotInitialised(data_dir));
            }
            Self::init(&options)?;
            Opened::Initialised
        } else if !data_dir.join(STORE_DIR).is_dir() {
            return Err(VaultError::NotAVault(data_dir));
        } else {
            Opened::Existing
        };
        let backend = crate::store::open(&options.store_config(None))?;
        Self::open_with(options, backend).map(|vault| (vault, opened))
    }

    /// [`Vault::open`] on a store shared by several nodes: the store is
    /// opened first (a standby waits there for the lease), then a new store
    /// gets its records and, in an empty data directory, a new key file;
    /// a store that already holds a vault needs that vault's key.
    fn open_shared(options: VaultOptions) -> Result<(Arc<Self>, Opened), VaultError> {
        let data_dir = options.data_dir.clone();
        let backend = crate::store::open(&options.store_config(None))?;
        let new_store = !holds_vault(&*backend)?;
        let key_file = data_dir.join(KEY_FILE);
        let opened = if new_store && options.key_source.is_none() && !key_file.exists() {
            if options.production {
                return Err(VaultError::NotInitialised(data_dir));
            }
            create_private_dir(&data_dir)?;
            write_new_key_file(&key_file, &ring::rand::SystemRandom::new())?;
            Opened::Initialised
        } else if options.key_source.is_none() && !key_file.exists() {
            return Err(VaultError::SharedStoreKeyMissing(key_file));
        } else {
            create_private_dir(&data_dir)?;
            Opened::Existing
        };
        Self::open_with(options, backend).map(|vault| (vault, opened))
    }

    /// The rest of [`Vault::open`], once the engine is open.
    fn open_with(options: VaultOptions, backend: Arc<dyn Backend>) -> Result<Arc<Self>, VaultError> {
        let data_dir = options.data_dir.clone();
        let source = key_source_of(&options);
        let keys = load_key_ring(&source, options.production)?;
        // After the key check, which refuses a loose key file rather than
        // mend it: the key may already have been read by others.
        tighten_permissions(&data_dir)?;
        let publication = Some(data_dir.join(PUBLISHED_FILE));
        let parts = VaultParts {
            data_dir,
            keys,
            backend,
            policies: options.policies,
            policy_dir: options.policy_dir,
            audit_origin: options.audit_origin,
            identity: options.identity,
            key_config: KeyConfig { source: Some(source), limits: options.key_limits },
            webhooks: options.webhooks,
        };
        Self::open_parts(publication, parts)
    }

    /// Opens a vault over any storage backend, initialising it if it is
    /// empty (tests use this with a fault-injecting in-memory backend).
    /// Verifies the audit log and refuses to open if it does not verify.
    /// Resumes a KEK rotation a restart interrupted.
    pub fn open_backend(parts: VaultParts) -> Result<Arc<Self>, VaultError> {
        Self::open_parts(None, parts)
    }

    /// [`Vault::open_backend`], recording published checkpoints in the file
    /// at `publication` and comparing the store with it first.
    fn open_parts(publication: Option<PathBuf>, parts: VaultParts) -> Result<Arc<Self>, VaultError> {
        let VaultParts { data_dir, keys, backend, policies, policy_dir, audit_origin, identity, key_config, webhooks } =
            parts;
        crate::auth::jwt_ring::install();
        if !holds_vault(&*backend)? {
            write_init_records(&*backend, &keys, audit_origin.as_deref())?;
        }
        let (store, audit) = load_store(backend, &keys, audit_origin, true)?;
        // Every writing batch from now on ends with a signed checkpoint.
        store.set_finalizer(audit.finalizer());
        // Quick and complete for truncation, rollback and rewritten subtree
        // hashes; edits of entry bytes are found by the full pass below.
        verify_latest(&store, &audit.verifier(), audit.origin(), &|size| audit.root(&store, size))
            .map_err(VaultError::AuditInvalid)?;
        let rollback = match publication {
            Some(path) => publication_check(path, &store, &audit)?,
            None => None,
        };
        let token_issuer = token_issuer_load(&store, &keys, &identity)?;
        let own = TrustedIssuer::own(&token_issuer, &identity.audience);
        if identity.external.iter().any(|external| external.issuer == identity.issuer) {
            return Err(VaultError::Identity(format!(
                "external issuer `{}` has the vault's own name",
                identity.issuer
            )));
        }
        let mut trusted = vec![own];
        let limits = identity.limits;
        trusted.extend(identity.external);
        let core = Arc::new(Core::new(store, audit, Arc::new(keys), policies));
        let keys = Keys::new(Arc::clone(&core), key_config);
        let subjects = Subjects::new(Arc::clone(&core), keys.clone());
        let tokens =
            Tokens { issuer: token_issuer, verifier: TokenVerifier::new(trusted), cache: TokenCache::default() };
        let principals = Principals::new(Arc::clone(&core), subjects.clone(), tokens, &limits);
        let consent = Consent::new(Arc::clone(&core), principals.clone());
        let contact = Contact::new(Arc::clone(&core), keys.clone(), consent.clone());
        let rights =
            Rights::new(Arc::clone(&core), subjects.clone(), principals.clone(), consent.clone(), contact.clone());
        let sweep = Sweep::new(Arc::clone(&core), consent.clone(), rights.clone(), contact.clone());
        let webhooks = Webhooks::new(Arc::clone(&core), webhooks);
        // Every event a business or customer must hear of queues its
        // messages, and her inbox notice, in the transaction that appends it.
        core.audit().observe(webhooks.observer(contact.notices()));
        let vault = Arc::new(Self {
            data_dir,
            policy_dir,
            core,
            keys,
            subjects,
            principals,
            consent,
            rights,
            sweep,
            webhooks,
            contact,
            audit_status: Arc::new(Mutex::new(AuditStatus::Verifying)),
            verifier: Mutex::new(None),
            rollback: Mutex::new(rollback.clone()),
        });
        // The vault's time never goes back, across restarts too.
        vault.core.clock_floor_from_log()?;
        vault.verifier_start();
        if let Some(rollback) = rollback {
            // Nothing is written, so nothing is signed, until an operator
            // restores a backup or accepts the rollback.
            tracing::error!(%rollback, "{ROLLBACK_ADVICE}");
            return Ok(vault);
        }
        // The first checkpoint of a new log; a no-op for a log whose last
        // batch was checkpointed, as every batch is.
        vault.core.checkpoint_blocking(false)?;
        // Versions a crash left in the key file after a rotation recorded
        // them destroyed.
        vault.keys.keys_forget(&vault.keys.keys_destroyed()?).map_err(VaultError::Keys)?;
        vault.keys.rotation_resume().map_err(VaultError::Keys)?;
        Ok(vault)
    }

    /// Recomputes the whole stored log in the background: serving starts at
    /// once, and if the log does not verify the vault stops serving
    /// ([`Vault::audit_status`]). Fills the audit node cache on the way.
    fn verifier_start(&self) {
        let core = Arc::clone(&self.core);
        let audit_status = Arc::clone(&self.audit_status);
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new().name("consentvault-audit-verify".to_owned()).spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let started = std::time::Instant::now();
                let audit = core.audit();
                let visit = |level, index, hash: &_| audit.node_cache(level, index, hash);
                let outcome = verify_log(
                    core.store(),
                    &audit.verifier(),
                    audit.origin(),
                    Depth::Roots,
                    true,
                    &visit,
                    core.closing_flag(),
                );
                let status = match outcome {
                    Ok(verified) => {
                        tracing::info!(
                            size = verified.size,
                            checkpoints = verified.checkpoints,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "audit log verified"
                        );
                        AuditStatus::Verified
                    }
                    Err(failure) if failure.problem == STOPPED => return,
                    Err(failure) => {
                        tracing::error!(%failure, "the audit log does not verify; refusing to serve");
                        AuditStatus::Failed(failure)
                    }
                };
                if let Ok(mut slot) = audit_status.lock() {
                    *slot = status;
                }
            });
        });
        match thread {
            Ok(thread) => {
                if let Ok(mut slot) = self.verifier.lock() {
                    *slot = Some(thread);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the audit verification thread");
                if let Ok(mut slot) = self.audit_status.lock() {
                    *slot = AuditStatus::Failed(VerifyFailure {
                        first_bad_index: None,
                        problem: "verification could not run".to_owned(),
                    });
                }
            }
        }
    }

    /// Where the full verification of the stored log stands.
    pub fn audit_status(&self) -> AuditStatus {
        self.audit_status.lock().map(|status| status.clone()).unwrap_or(AuditStatus::Verifying)
    }

    /// Verifies the audit log of a vault that is not running, changing
    /// nothing: `consentvault audit verify`. `progress` hears how many
    /// entries of how many are verified.
    pub fn verify_offline(options: &VaultOptions, progress: &dyn Fn(u64, u64)) -> Result<Verified, VaultError> {
        vault_exists_for(options)?;
        let keys = load_key_ring(&key_source_of(options), options.production)?;
        let backend = crate::store::open(&options.store_config(Some(crate::store::postgres::Access::Snapshot)))?;
        let (store, audit) = store_open_checked(backend, &keys)?;
        let never = AtomicBool::new(false);
        let size = audit.durable_size();
        let counted = |done| progress(done, size);
        let visit = crate::audit::verify::entries_counted(&counted);
        let verified = verify_log(&store, &audit.verifier(), audit.origin(), Depth::Full, false, &visit, &never)
            .map_err(VaultError::AuditInvalid)
            .and_then(|verified| {
                let path = options.data_dir.join(PUBLISHED_FILE);
                let published =
                    published_read(&path, &audit.verifier(), audit.origin()).map_err(VaultError::Published)?;
                let rollback = match published {
                    Some(published) => rollback_of(&published, audit.durable_size(), |size| audit.root(&store, size))?,
                    None => None,
                };
                match rollback {
                    Some(rollback) => Err(VaultError::RolledBack(rollback)),
                    None => Ok(verified),
                }
            });
        store.close()?;
        verified
    }

    /// Replays the log of a vault that is not running (`consentvault audit
    /// replay`), after [`Vault::verify_offline`]: returns the log's size
    /// and what the replay found. `progress` hears each step (`audit
    /// entries verified`, then `audit entries replayed`), done and total.
    pub fn replay_offline(
        options: &VaultOptions,
        progress: &dyn Fn(&str, u64, u64),
    ) -> Result<(u64, crate::audit::replay::ReplaySummary), VaultError> {
        let verified = Self::verify_offline(options, &|done, total| progress("audit entries verified", done, total))?;
        let store = Self::store_open_offline(options)?;
        let size = verified.size;
        let summary =
            crate::audit::replay_store(&store, size, &|done| progress(crate::audit::replay::REPLAY_STEP, done, size));
        store.close()?;
        Ok((size, summary?))
    }

    /// Opens the store of a vault that is not running without its keys
    /// (`consentvault backup` copies sealed bytes and needs none). Checks
    /// that the directory holds a store of this build's format.
    pub fn store_open_offline(options: &VaultOptions) -> Result<Store, VaultError> {
        vault_exists_for(options)?;
        let backend = crate::store::open(&options.store_config(Some(crate::store::postgres::Access::Snapshot)))?;
        check_format(&*backend)?;
        Ok(Store::new(backend)?)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The state every service holds.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The key lifecycle.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Subjects and their own data.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Principals, credentials and tokens.
    pub fn principals(&self) -> &Principals {
        &self.principals
    }

    /// Relationships, grants, objections, requests and the scoped read.
    pub fn consent(&self) -> &Consent {
        &self.consent
    }

    /// Export and erasure.
    pub fn rights(&self) -> &Rights {
        &self.rights
    }

    /// The background sweep.
    pub fn sweep(&self) -> &Sweep {
        &self.sweep
    }

    /// Webhook endpoints and the delivery of their messages.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Contact: preferences, messages, inboxes and notices.
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.core.store()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        self.core.audit()
    }

    /// The policies in force (a snapshot: a reload does not change it).
    pub fn policies(&self) -> Arc<Policies> {
        self.core.policies()
    }

    /// Re-reads the policy directory. On any error nothing changes; on
    /// success the new policies apply to every later decision and a
    /// `policy.loaded` event records their SHA-256.
    pub async fn policies_reload(&self, actor: &Actor) -> Result<Arc<Policies>, PolicyReloadError> {
        let dir = self.policy_dir.clone().ok_or(PolicyReloadError::BuiltIn)?;
        let policies = Arc::new(policies_load(&dir).map_err(PolicyReloadError::Invalid)?);
        self.policy_event(actor, &policies, "reload").await.map_err(PolicyReloadError::Audit)?;
        tracing::info!(sha256 = %policies.sha256, "policies reloaded");
        Ok(policies)
    }

    /// Records that `policies` were loaded, stores their bundle under its
    /// SHA-256 in the same batch unless an earlier load stored it (every
    /// version of the policies a decision was made under is in the store,
    /// content-addressed, for a replay), and puts them in force in that
    /// transaction, on the commit thread: every read that commits after the
    /// `policy.loaded` event is decided under them, every read before it
    /// under the old ones (`consent::read` checks at commit). If the commit
    /// fails, the policies in force before are put back.
    async fn policy_event(&self, actor: &Actor, policies: &Arc<Policies>, cause: &str) -> Result<(), AuditError> {
        let event = AuditEvent::new(EventKind::PolicyLoaded, actor.clone(), &self.core.clock().rfc3339())
            .related(Related::PolicySha256, &policies.sha256)
            .related(Related::Cause, cause);
        let log = self.core.audit().clone();
        let (key, bundle) = (Key::audit_policy(&policies.sha256), policies.bundle().to_vec());
        let (core, new, before) = (Arc::clone(&self.core), Arc::clone(policies), self.core.policies());
        let committed = self.core.store().commit_durable(move |txn| {
            if !txn.contains(&key)? {
                txn.put(key, bundle);
            }
            let appended = log.append(txn, &event)?;
            core.policies_replace(new);
            Ok(appended)
        });
        let (appended, durable) =
            committed.await.inspect_err(|_| self.core.policies_replace(before)).map_err(|error| match error {
                crate::store::CommitError::Rejected(error) => error,
                crate::store::CommitError::Store(error) => AuditError::Store(error),
            })?;
        self.core.audit().confirm(appended, &durable)?;
        Ok(())
    }

    /// Records the policies a start-up loaded (called once the vault serves).
    pub async fn policies_loaded_at_start(&self) -> Result<(), AuditError> {
        let policies = self.policies();
        self.policy_event(&Actor::system(), &policies, "start").await
    }

    /// Pins the consent clock at `secs` (Unix seconds), or lets it follow
    /// the system clock again (`None`). For tests that must decide reads at
    /// exact moments, and for drills; a warning is logged, since a pinned
    /// clock changes which grants are live.
    pub fn insecure_pin_clock_secs(&self, secs: Option<i64>) {
        tracing::warn!(?secs, "the consent clock was pinned");
        self.core.clock().pin(secs);
    }

    /// Shifts the system clock's reading the vault clock follows by `secs`,
    /// as an NTP step or a resumed virtual machine would, for tests and
    /// drills; the vault clock still never goes back. A warning is logged.
    pub fn insecure_step_clock_secs(&self, secs: i64) {
        tracing::warn!(secs, "the system clock reading was stepped");
        self.core.clock().step(secs);
    }

    /// Whether the vault can serve: the store answers and its last flush
    /// succeeded, keys are loaded, the log verifies, and the store holds
    /// every checkpoint the vault published.
    pub fn readiness(&self) -> Readiness {
        let store = self.store().is_healthy() && self.store().get(&Key::meta("format")).is_ok();
        let audit = !matches!(self.audit_status(), AuditStatus::Failed(_));
        let published = self.rollback().is_none();
        Readiness { store, keys: !self.core.keys().versions().is_empty(), audit, published }
    }

    /// The rollback found at open, while it is not accepted: the store is
    /// behind (or beside) a checkpoint the vault published, and the vault
    /// neither serves nor signs.
    pub fn rollback(&self) -> Option<Rollback> {
        self.rollback.lock().ok().and_then(|rollback| rollback.clone())
    }

    /// Accepts the rollback found at open, as the operator's explicit
    /// decision (`consentvault audit accept-rollback`): appends a
    /// `vault.rollback_accepted` event naming the size published and the
    /// size held, signs again from there, and records the new checkpoint as
    /// published. Auditors holding the old checkpoint will find the log
    /// inconsistent with it, and this event saying why. Returns the event's
    /// index.
    pub async fn rollback_accept(&self) -> Result<u64, VaultError> {
        let rollback = self.rollback().ok_or(VaultError::NoRollback)?;
        let held = self.core.audit().durable_size();
        let mut event =
            AuditEvent::new(EventKind::VaultRollbackAccepted, Actor::system(), &self.core.clock().rfc3339())
                .related(Related::PublishedSize, rollback.published_size().to_string())
                .related(Related::HeldSize, held.to_string());
        if let Rollback::Diverged { .. } = rollback {
            event = event.related(Related::Cause, "diverged");
        }
        let audit = self.core.audit().clone();
        audit.refuse_signing(None);
        let log = audit.clone();
        let committed = self
            .core
            .store()
            .commit_durable(move |txn| {
                let appended = log.append(txn, &event)?;
                log.checkpoint_in(txn, true)?;
                Ok::<_, AuditError>(appended)
            })
            .await;
        let (appended, durable) = match committed {
            Ok(committed) => committed,
            Err(error) => {
                audit.refuse_signing(Some(rollback));
                return Err(VaultError::Audit(crate::core::audit_commit_error(error)));
            }
        };
        let logged = audit.confirm(appended, &durable)?;
        audit.publish_to(self.data_dir.join(PUBLISHED_FILE), 0);
        audit.checkpoint_latest()?;
        if let Ok(mut slot) = self.rollback.lock() {
            *slot = None;
        }
        tracing::warn!(index = logged.index(), "rollback accepted; the vault signs again from the store it holds");
        Ok(logged.index())
    }

    /// Stops the background verification, keeps a last checkpoint, finishes
    /// every pending commit and flushes the store.
    pub fn close(&self) -> Result<(), VaultError> {
        self.core.closing_begin();
        let verifier = self.verifier.lock().ok().and_then(|mut slot| slot.take());
        if let Some(thread) = verifier {
            // The thread only ever fails by panicking, which it has logged.
            let _ = thread.join();
        }
        self.keys.rotation_join();
        // A vault refusing to sign (a rollback not accepted) adds nothing.
        if self.store().is_healthy() && self.rollback().is_none() {
            // Keep the final checkpoint in the history too.
            self.core.checkpoint_blocking(true)?;
        }
        Ok(self.store().close()?)
    }
}

/// Why a policy reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PolicyReloadError {
    /// The vault runs on the built-in policies; there is no directory to read.
    #[error("the vault runs on the built-in policies; start it with a policy directory to reload")]
    BuiltIn,
    /// A policy file is invalid; the policies in force stay.
    #[error(transparent)]
    Invalid(PolicyError),
    /// The `policy.loaded` event could not be recorded; the policies in force stay.
    #[error(transparent)]
    Audit(AuditError),
}

/// The result of a readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The store answers reads and the last flush succeeded.
    pub store: bool,
    /// Key-encryption keys are loaded.
    pub keys: bool,
    /// The stored audit log verifies (or is still being verified).
    pub audit: bool,
    /// The store holds every checkpoint the vault published.
    pub published: bool,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.store && self.keys && self.audit && self.published
    }
}

/// What an operator does about a rollback, said wherever it is reported.
pub const ROLLBACK_ADVICE: &str = "the store is behind a checkpoint this vault published; it neither serves nor \
signs. Restore the newest backup (`consentvault restore`), or, to go on from the store as it is, stop the vault and \
run `consentvault audit accept-rollback`, which the log records for auditors to see";

/// Compares the store with the published checkpoint at `path`: the
/// rollback found, if any. Without one, checkpoints handed out from now on
/// are recorded there; with one, nothing is signed.
fn publication_check(path: PathBuf, store: &Store, audit: &AuditLog) -> Result<Option<Rollback>, VaultError> {
    let published = published_read(&path, &audit.verifier(), audit.origin()).map_err(VaultError::Published)?;
    let Some(published) = published else {
        audit.publish_to(path, 0);
        return Ok(None);
    };
    let rollback = rollback_of(&published, audit.durable_size(), |size| audit.root(store, size))?;
    match &rollback {
        None => audit.publish_to(path, published.size),
        Some(rollback) => audit.refuse_signing(Some(rollback.clone())),
    }
    Ok(rollback)
}

/// The vault's token signing key, created (sealed under the KEK) the first
/// time a vault opens without one.
fn token_issuer_load(store: &Store, keys: &KeyRing, identity: &IdentityOptions) -> Result<TokenIssuer, VaultError> {
    let sealed = match store.get(&Key::meta(TOKEN_KEY))? {
        Some(sealed) => sealed,
        None => {
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(keys.rng())
                .map_err(|_| VaultError::Crypto(crypto::CryptoError::Random))?;
            let sealed = keys.secret_seal(TOKEN_KEY_LABEL, pkcs8.as_ref())?;
            let stored = sealed.clone();
            store
                .commit_blocking(move |txn| {
                    txn.put(Key::meta(TOKEN_KEY), stored);
                    Ok::<_, StoreError>(())
                })
                .map_err(|error| match error {
                    crate::store::CommitError::Rejected(error) | crate::store::CommitError::Store(error) => error,
                })?;
            sealed
        }
    };
    let pkcs8 = keys.secret_open(TOKEN_KEY_LABEL, &sealed)?;
    TokenIssuer::new(&identity.issuer, &identity.audience, &pkcs8)
        .map_err(|error| VaultError::Identity(error.to_string()))
}

fn key_source_of(options: &VaultOptions) -> KeySource {
    options.key_source.clone().unwrap_or_else(|| KeySource::File(options.data_dir.join(KEY_FILE)))
}

/// Whether the store holds a vault (its format record), or is new.
fn holds_vault(backend: &dyn Backend) -> Result<bool, VaultError> {
    Ok(backend.get(Key::meta("format").as_bytes())?.is_some())
}

/// The records of a new vault: layout version, creation time, the KEK check
/// and the audit log's origin and sealed signing key.
fn write_init_records(backend: &dyn Backend, keys: &KeyRing, audit_origin: Option<&str>) -> Result<(), VaultError> {
    let mut batch = crate::store::WriteBatch::new();
    batch.insert(Key::meta("format").as_bytes().to_vec(), Some(FORMAT_VERSION.as_bytes().to_vec()));
    batch.insert(Key::meta("created_at").as_bytes().to_vec(), Some(clock::rfc3339(clock::now()).into_bytes()));
    let version = keys.current_version();
    batch.insert(key_check_key(version).as_bytes().to_vec(), Some(keys.key_check_create(version)?));
    let origin = match audit_origin {
        Some(origin) => origin.to_owned(),
        None => crate::audit::origin_default(keys.rng())?,
    };
    batch.extend(AuditLog::init_records(keys, &origin)?);
    backend.apply(&batch)?;
    backend.flush()?;
    Ok(())
}

/// Checks the layout and keys, starts the commit path and loads the audit
/// log of an initialised backend.
fn load_store(
    backend: Arc<dyn Backend>,
    keys: &KeyRing,
    audit_origin: Option<String>,
    writable: bool,
) -> Result<(Store, AuditLog), VaultError> {
    let format = check_format(&*backend)?;
    // Keys first: a vault opened with the wrong key changes nothing.
    bind_keys(&*backend, keys, writable)?;
    if writable {
        format_move(&*backend, format)?;
    }
    let store = Store::new(backend)?;
    let audit = AuditLog::load(&store, keys)?;
    if let Some(configured) = audit_origin
        && configured != audit.origin()
    {
        return Err(VaultError::OriginChanged { stored: audit.origin().to_owned(), configured });
    }
    Ok((store, audit))
}

/// Opens an initialised store that no server is running on, for offline
/// work (`audit verify`, `restore`): checks its format and that `keys` are
/// the ones it was sealed with (binding nothing new), and loads the audit
/// log. The commit path has no finalizer yet.
pub(crate) fn store_open_checked(backend: Arc<dyn Backend>, keys: &KeyRing) -> Result<(Store, AuditLog), VaultError> {
    load_store(backend, keys, None, false)
}

/// Moves a store of an earlier format, on the engine directly (no commit
/// path running), to this build's format; nothing to do for a store of
/// this format. `restore` moves what it restored before it logs the restore.
pub(crate) fn store_format_move(backend: &dyn Backend) -> Result<(), VaultError> {
    let format = check_format(backend)?;
    format_move(backend, format)
}

fn format_move(backend: &dyn Backend, format: &str) -> Result<(), VaultError> {
    if format == FORMAT_SUBJECT_SPACES {
        subject_records_regroup(backend)?;
    }
    if format != FORMAT_VERSION {
        audit_entries_regroup(backend)?;
    }
    Ok(())
}

/// The store's format, if this build reads it.
fn check_format(backend: &dyn Backend) -> Result<&'static str, VaultError> {
    let found = backend.get(Key::meta("format").as_bytes())?;
    match found.as_deref() {
        Some(version) if version == FORMAT_VERSION.as_bytes() => Ok(FORMAT_VERSION),
        Some(version) if version == FORMAT_ENTRY_KEYS.as_bytes() => Ok(FORMAT_ENTRY_KEYS),
        Some(version) if version == FORMAT_SUBJECT_SPACES.as_bytes() => Ok(FORMAT_SUBJECT_SPACES),
        Some(version) => Err(VaultError::Format { found: String::from_utf8_lossy(version).into_owned() }),
        None => Err(VaultError::Format { found: "none".to_owned() }),
    }
}

/// Moves a store of format 1 to format 2: every subject record to its
/// place under its subject, then the format, each step flushed.
fn subject_records_regroup(backend: &dyn Backend) -> Result<(), VaultError> {
    tracing::info!("the store has format 1; moving subject records next to each other (format 2)");
    let started = std::time::Instant::now();
    let moved = crate::store::migrate::format_1_subject_records_move(backend, &mut |moved| {
        tracing::info!(moved, "moving subject records");
    })?;
    format_set(backend, FORMAT_ENTRY_KEYS)?;
    tracing::info!(moved, secs = started.elapsed().as_secs_f64(), "the store has format 2");
    Ok(())
}

/// Moves a store of format 2 to format 3: the audit log's entries into
/// records of a batch each, then the format, each step flushed.
fn audit_entries_regroup(backend: &dyn Backend) -> Result<(), VaultError> {
    tracing::info!("the store has format 2; moving the audit log's entries into records (format 3)");
    let started = std::time::Instant::now();
    let mut reported = 0u64;
    let moved = crate::audit::records::format_2_move(backend, &mut |moved| {
        if moved - reported >= 1 << 20 {
            reported = moved;
            tracing::info!(moved, "moving audit entries");
        }
    })?;
    format_set(backend, FORMAT_VERSION)?;
    tracing::info!(moved, secs = started.elapsed().as_secs_f64(), "the store has format 3");
    Ok(())
}

/// Records the store's format, flushed.
fn format_set(backend: &dyn Backend, format: &str) -> Result<(), VaultError> {
    let mut batch = crate::store::WriteBatch::new();
    batch.insert(Key::meta("format").as_bytes().to_vec(), Some(format.as_bytes().to_vec()));
    backend.apply(&batch)?;
    backend.flush()?;
    Ok(())
}

/// Every loaded KEK that has a stored check must match it, and at least one
/// must have one; a version without a check (a key just added for rotation)
/// gets one, unless the store is opened only to be read.
fn bind_keys(backend: &dyn Backend, keys: &KeyRing, writable: bool) -> Result<(), VaultError> {
    let destroyed: Vec<u32> = destroyed_in(|prefix| backend.scan(prefix.as_bytes(), &prefix.prefix_end(), usize::MAX))?;
    let mut bound = false;
    let mut new_checks = crate::store::WriteBatch::new();
    for version in keys.versions() {
        if destroyed.contains(&version) {
            // Removed from the ring once the vault is open (`keys_forget`);
            // it must not get a fresh check meanwhile.
            continue;
        }
        let key = key_check_key(version);
        match backend.get(key.as_bytes())? {
            Some(check) => {
                keys.key_check_verify(version, &check).map_err(|_| VaultError::KeyMismatch(version))?;
                bound = true;
            }
            None => {
                new_checks.insert(key.as_bytes().to_vec(), Some(keys.key_check_create(version)?));
            }
        }
    }
    if !bound {
        let checked =
            crate::keys::checked_in(|prefix| backend.scan(prefix.as_bytes(), &prefix.prefix_end(), usize::MAX))?;
        let sealed: Vec<u32> = checked.into_iter().filter(|version| !destroyed.contains(version)).collect();
        return Err(VaultError::KeysMissing { sealed, loaded: keys.versions() });
    }
    if writable && !new_checks.is_empty() {
        backend.apply(&new_checks)?;
        backend.flush()?;
    }
    Ok(())
}
