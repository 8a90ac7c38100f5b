//! Configuration: defaults, then an optional TOML file, then `CONSENTVAULT_*`
//! environment variables, then command-line flags; each layer overrides the
//! one before. Everything is validated before the vault opens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::auth::external::ExternalIssuerConfig;
use crate::crypto::KeySource;
use crate::keys::{ENCRYPTIONS_PER_KEY_CEILING, ENCRYPTIONS_PER_KEY_DEFAULT, KeyLimits};
use crate::policy::PolicyError;
use crate::vault::{IdentityOptions, StoreLocation, VaultOptions, policies_load};

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./vault-data";
/// Default listen address: loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8200";
/// Default policy directory, relative to the working directory.
pub const POLICIES_DEFAULT: &str = "./policies";
const BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
const REQUEST_TIMEOUT_SECS_DEFAULT: u64 = 30;
const PRINCIPAL_REQUESTS_PER_SEC_DEFAULT: u32 = 1000;
const STORE_CACHE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// How long a client may take to send a request's header lines; a slower
/// client (a "slowloris" holding connections open) is disconnected.
pub const HEADER_READ_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(10);

/// Flags (and their environment variables) shared by the commands that open
/// a vault.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VaultArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "CONSENTVAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./vault-data].
    #[arg(long, env = "CONSENTVAULT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Key file holding the key-encryption keys [default: DATA_DIR/kek.key].
    #[arg(long, env = "CONSENTVAULT_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Policy directory [default: ./policies, else the built-in defaults].
    #[arg(long, env = "CONSENTVAULT_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Production mode: never create keys or a vault on start, refuse weak keys.
    #[arg(long, env = "CONSENTVAULT_PRODUCTION")]
    pub production: bool,
    /// Origin of the audit log, fixed when the vault is created
    /// [default: consentvault.local/RANDOM_ID].
    #[arg(long, env = "CONSENTVAULT_AUDIT_ORIGIN")]
    pub audit_origin: Option<String>,
    /// Storage engine: `sled` (embedded, in the data directory) or a
    /// PostgreSQL URL, `postgres://USER[:PASSWORD]@HOST:PORT/DB`, shared by
    /// vault nodes of which one is active [default: sled].
    #[arg(long, env = "CONSENTVAULT_STORE")]
    pub store: Option<String>,
}

/// Flags of `serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Vault location, keys and policies.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Address to listen on [default: 127.0.0.1:8200].
    #[arg(long, env = "CONSENTVAULT_LISTEN")]
    pub listen: Option<String>,
    /// Largest request body, in bytes [default: 1048576].
    #[arg(long, env = "CONSENTVAULT_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    /// Longest time a request may take, in seconds [default: 30].
    #[arg(long, env = "CONSENTVAULT_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Longest time a client may take to send a request's headers, in
    /// seconds; slower clients are disconnected [default: 10].
    #[arg(long, env = "CONSENTVAULT_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Authenticated requests one principal may make per second, twice as
    /// many in a burst; beyond, 429 with Retry-After [default: 1000].
    #[arg(long, env = "CONSENTVAULT_PRINCIPAL_REQUESTS_PER_SEC")]
    pub principal_requests_per_sec: Option<u32>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "CONSENTVAULT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    kek_file: Option<PathBuf>,
    policies: Option<PathBuf>,
    production: Option<bool>,
    listen: Option<String>,
    body_bytes_max: Option<usize>,
    request_timeout_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    principal_requests_per_sec: Option<u32>,
    log_format: Option<LogFormat>,
    store_cache_bytes: Option<u64>,
    store: Option<String>,
    store_lease_secs: Option<u64>,
    audit_origin: Option<String>,
    #[serde(default)]
    identity: IdentityFile,
    #[serde(default)]
    keys: KeysFile,
    #[serde(default)]
    limits: crate::principals::LimitSettings,
    #[serde(default)]
    webhooks: crate::webhooks::WebhookSettings,
}

/// The `[webhooks]` table, checked: bounded retries and timeouts, and the
/// insecure switches refused in production and warned about otherwise.
fn webhook_settings(
    settings: &crate::webhooks::WebhookSettings,
    production: bool,
) -> Result<crate::webhooks::WebhookSettings, ConfigError> {
    let range = |setting: &'static str, value: u64, low: u64, high: u64| {
        if (low..=high).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::Invalid { setting, problem: format!("must be between {low} and {high}") })
        }
    };
    range("webhooks.retry_initial_secs", settings.retry_initial_secs, 1, 3_600)?;
    range("webhooks.attempts_max", u64::from(settings.attempts_max), 1, 100)?;
    range("webhooks.failures_to_disable", u64::from(settings.failures_to_disable), 1, 10_000)?;
    range("webhooks.timeout_secs", settings.timeout_secs, 1, 60)?;
    if settings.failures_to_disable > settings.attempts_max {
        return Err(ConfigError::Invalid {
            setting: "webhooks.failures_to_disable",
            problem: "must be at most webhooks.attempts_max: an endpoint that keeps failing is disabled, its \
                      messages kept, before any message is given up"
                .to_owned(),
        });
    }
    for (setting, on) in [
        ("webhooks.insecure_allow_http", settings.insecure_allow_http),
        ("webhooks.insecure_allow_private", settings.insecure_allow_private),
    ] {
        if on && production {
            return Err(ConfigError::Invalid { setting, problem: "is refused in production".to_owned() });
        }
        if on {
            tracing::warn!(setting, "insecure: webhooks may reach what the SSRF rule protects");
        }
    }
    Ok(settings.clone())
}

/// The `[keys]` table: when keys are replaced because they encrypted enough.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    kek_wraps_max: Option<u64>,
    dek_seals_max: Option<u64>,
}

/// The smallest encryption limit a configuration may set: a replaced DEK
/// must have room for the values it reseals, and a rotation for the DEKs it
/// rewraps, before it is due again.
const ENCRYPTIONS_PER_KEY_MIN: u64 = 16;

fn encryption_limit(setting: &'static str, value: Option<u64>) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(ENCRYPTIONS_PER_KEY_DEFAULT);
    if !(ENCRYPTIONS_PER_KEY_MIN..=ENCRYPTIONS_PER_KEY_CEILING).contains(&value) {
        return Err(ConfigError::Invalid {
            setting,
            problem: format!("must be between {ENCRYPTIONS_PER_KEY_MIN} and {ENCRYPTIONS_PER_KEY_CEILING} (2^31)"),
        });
    }
    Ok(value)
}

/// The `[identity]` table: the vault's own issuer name and audience, and
/// trusted external issuers (`[[identity.external]]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    issuer: Option<String>,
    audience: Option<String>,
    #[serde(default)]
    external: Vec<ExternalIssuerConfig>,
}

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A setting has a value outside its range.
    #[error("setting `{setting}`: {problem}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A policy file is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Where the policies were taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory on disk.
    Dir(PathBuf),
    /// The defaults built into the binary.
    BuiltIn,
}

/// A validated configuration for opening a vault.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// What to open.
    pub options: VaultOptions,
    /// Where the policies came from.
    pub policy_source: PolicySource,
}

/// A validated configuration for `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The vault to open.
    pub vault: VaultConfig,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Longest time a request may take, in seconds.
    pub request_timeout_secs: u64,
    /// How long a client may take to send a request's headers, in seconds.
    pub header_read_timeout_secs: u64,
    /// Authenticated requests per principal and second.
    pub principal_requests_per_sec: u32,
    /// Log format.
    pub log_format: LogFormat,
}

/// The `[limits]` table, each limit between 1 and 1,000,000.
fn rate_limits(limits: crate::principals::LimitSettings) -> Result<crate::principals::LimitSettings, ConfigError> {
    for (setting, rate) in limits.named() {
        if !(1..=1_000_000).contains(&rate.burst) || !(1..=1_000_000).contains(&rate.per_minute) {
            return Err(ConfigError::Invalid {
                setting,
                problem: "`burst` and `per_minute` must be between 1 and 1000000".to_owned(),
            });
        }
    }
    Ok(limits)
}

/// The `store` setting: `sled` (the default) or a PostgreSQL URL, with the
/// lease's life (2 to 60 s). Commands that open the store take the lease
/// only if it is free; `serve` waits for it ([`ServeConfig::from_args`]).
fn store_location(text: Option<&str>, lease_secs: Option<u64>) -> Result<StoreLocation, ConfigError> {
    let lease_secs = lease_secs.unwrap_or(crate::store::postgres::LEASE_SECS_DEFAULT);
    if !(2..=60).contains(&lease_secs) {
        return Err(ConfigError::Invalid {
            setting: "store_lease_secs",
            problem: "must be between 2 and 60".to_owned(),
        });
    }
    match text {
        None | Some("sled") => Ok(StoreLocation::Embedded),
        Some(url) => {
            let url = crate::store::postgres::PostgresUrl::parse(url).map_err(|problem| ConfigError::Invalid {
                setting: "store",
                problem: format!("`sled` or {problem}"),
            })?;
            Ok(StoreLocation::Postgres(crate::store::postgres::PostgresSettings {
                url,
                lease_secs,
                access: crate::store::postgres::Access::Exclusive,
            }))
        }
    }
}

fn read_file_config(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else { return Ok(FileConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string() })
}

impl VaultConfig {
    fn resolve(args: &VaultArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let data_dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| DATA_DIR_DEFAULT.into());
        let key_source = match (std::env::var("CONSENTVAULT_KEK").ok(), args.kek_file.clone().or(file.kek_file.clone()))
        {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "kek_file",
                    problem: "both CONSENTVAULT_KEK and a key file are set; choose one".to_owned(),
                });
            }
            (Some(text), None) => Some(KeySource::Env(Zeroizing::new(text))),
            (None, Some(path)) => Some(KeySource::File(path)),
            (None, None) => None,
        };
        let production = args.production || file.production.unwrap_or(false);
        let (policies, policy_source) = match args.policies.clone().or(file.policies.clone()) {
            Some(dir) => (policies_load(&dir)?, PolicySource::Dir(dir)),
            None if Path::new(POLICIES_DEFAULT).is_dir() => {
                (policies_load(Path::new(POLICIES_DEFAULT))?, PolicySource::Dir(POLICIES_DEFAULT.into()))
            }
            None if production => {
                return Err(ConfigError::Invalid {
                    setting: "policies",
                    problem: "production start-up needs a policy directory".to_owned(),
                });
            }
            None => (crate::policy::Policies::built_in(), PolicySource::BuiltIn),
        };
        let store_cache_bytes = file.store_cache_bytes.unwrap_or(STORE_CACHE_BYTES_DEFAULT);
        let audit_origin = args.audit_origin.clone().or(file.audit_origin.clone());
        let store = store_location(args.store.as_deref().or(file.store.as_deref()), file.store_lease_secs)?;
        let defaults = IdentityOptions::default();
        let mut external = Vec::new();
        for issuer in &file.identity.external {
            if issuer.insecure_http && production {
                return Err(ConfigError::Invalid {
                    setting: "identity.external",
                    problem: format!("issuer {}: insecure_http is refused in production", issuer.issuer),
                });
            }
            external.push(
                issuer.load().map_err(|error| ConfigError::Invalid {
                    setting: "identity.external",
                    problem: error.to_string(),
                })?,
            );
        }
        let identity = IdentityOptions {
            issuer: file.identity.issuer.clone().unwrap_or(defaults.issuer),
            audience: file.identity.audience.clone().unwrap_or(defaults.audience),
            external,
            limits: rate_limits(file.limits)?,
        };
        let policy_dir = match &policy_source {
            PolicySource::Dir(dir) => Some(dir.clone()),
            PolicySource::BuiltIn => None,
        };
        let options = VaultOptions {
            data_dir,
            key_source,
            policies,
            policy_dir,
            production,
            store_cache_bytes,
            store,
            audit_origin,
            identity,
            key_limits: KeyLimits {
                kek_wraps_max: encryption_limit("keys.kek_wraps_max", file.keys.kek_wraps_max)?,
                dek_seals_max: encryption_limit("keys.dek_seals_max", file.keys.dek_seals_max)?,
            },
            webhooks: webhook_settings(&file.webhooks, production)?,
        };
        Ok(Self { options, policy_source })
    }

    /// Resolves the flags of a command that opens a vault.
    pub fn from_args(args: &VaultArgs) -> Result<Self, ConfigError> {
        Self::resolve(args, &read_file_config(args.config.as_deref())?)
    }
}

impl ServeConfig {
    /// Resolves `serve`'s flags, environment and configuration file.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = read_file_config(args.vault.config.as_deref())?;
        let mut vault = VaultConfig::resolve(&args.vault, &file)?;
        // A serving node stands by while another holds the lease.
        if let StoreLocation::Postgres(settings) = &mut vault.options.store {
            settings.access = crate::store::postgres::Access::Standby;
        }
        let listen_text = args.listen.clone().or(file.listen.clone()).unwrap_or_else(|| LISTEN_DEFAULT.to_owned());
        let listen = listen_resolve(&listen_text)?;
        let body_bytes_max = args.body_bytes_max.or(file.body_bytes_max).unwrap_or(BODY_BYTES_MAX_DEFAULT);
        if !(1024..=64 * 1024 * 1024).contains(&body_bytes_max) {
            return Err(ConfigError::Invalid {
                setting: "body_bytes_max",
                problem: "must be between 1 KiB and 64 MiB".to_owned(),
            });
        }
        let request_timeout_secs =
            args.request_timeout_secs.or(file.request_timeout_secs).unwrap_or(REQUEST_TIMEOUT_SECS_DEFAULT);
        if !(1..=600).contains(&request_timeout_secs) {
            return Err(ConfigError::Invalid {
                setting: "request_timeout_secs",
                problem: "must be between 1 and 600".to_owned(),
            });
        }
        let log_format = args.log_format.or(file.log_format).unwrap_or_default();
        let header_read_timeout_secs = args
            .header_read_timeout_secs
            .or(file.header_read_timeout_secs)
            .unwrap_or(HEADER_READ_TIMEOUT_DEFAULT.as_secs());
        if !(1..=120).contains(&header_read_timeout_secs) {
            return Err(ConfigError::Invalid {
                setting: "header_read_timeout_secs",
                problem: "must be between 1 and 120".to_owned(),
            });
        }
        let principal_requests_per_sec = args
            .principal_requests_per_sec
            .or(file.principal_requests_per_sec)
            .unwrap_or(PRINCIPAL_REQUESTS_PER_SEC_DEFAULT);
        if !(1..=1_000_000).contains(&principal_requests_per_sec) {
            return Err(ConfigError::Invalid {
                setting: "principal_requests_per_sec",
                problem: "must be between 1 and 1000000".to_owned(),
            });
        }
        Ok(Self {
            vault,
            listen,
            body_bytes_max,
            request_timeout_secs,
            header_read_timeout_secs,
            principal_requests_per_sec,
            log_format,
        })
    }
}

/// The socket address `text` names: an IP address and port, or a host
/// name (`localhost:8200`) and port, resolved now; of a name's addresses,
/// the first IPv4 one (what `localhost` means to most clients), else the
/// first.
fn listen_resolve(text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let invalid = |problem: String| ConfigError::Invalid { setting: "listen", problem };
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let addresses: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| {
            invalid(format!("`{text}` is not an address like 127.0.0.1:8200 or localhost:8200 ({error})"))
        })?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| invalid(format!("`{text}` names no address")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listen_takes_a_host_name_as_well_as_an_address() {
        assert_eq!(listen_resolve("localhost:8200").unwrap(), "127.0.0.1:8200".parse().unwrap());
        assert_eq!(listen_resolve("[::1]:8200").unwrap(), "[::1]:8200".parse().unwrap());
        assert_eq!(listen_resolve("127.0.0.1:0").unwrap(), "127.0.0.1:0".parse().unwrap());
        for wrong in ["nowhere", "localhost", "localhost:http-ish", "127.0.0.1:99999"] {
            assert!(matches!(listen_resolve(wrong), Err(ConfigError::Invalid { setting: "listen", .. })), "{wrong}");
        }
    }

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vault.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nrequest_timeout_secs = 5\nbody_bytes_max = 4096\n")
            .unwrap();
        let args = ServeArgs {
            vault: VaultArgs { config: Some(file), policies: Some(policies_dir()), ..VaultArgs::default() },
            listen: Some("127.0.0.1:9100".to_owned()),
            ..ServeArgs::default()
        };
        let config = ServeConfig::from_args(&args).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.request_timeout_secs, 5);
        assert_eq!(config.body_bytes_max, 4096);
        assert_eq!(config.vault.options.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
    }

    #[test]
    fn limits_come_from_the_file_and_the_rest_keep_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vault.toml");
        std::fs::write(&file, "[limits]\nsignups_per_address = { burst = 3, per_minute = 1 }\n").unwrap();
        let args = ServeArgs {
            vault: VaultArgs { config: Some(file), policies: Some(policies_dir()), ..VaultArgs::default() },
            ..ServeArgs::default()
        };
        let limits = ServeConfig::from_args(&args).unwrap().vault.options.identity.limits;
        let defaults = crate::principals::LimitSettings::default();
        assert_eq!(limits.signups_per_address, crate::principals::Rate { burst: 3, per_minute: 1 });
        assert_eq!(limits.sign_in_failures_per_client, defaults.sign_in_failures_per_client);
        assert_eq!(limits.access_requests_per_business, defaults.access_requests_per_business);
    }

    #[test]
    fn invalid_settings_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("listen = \"nowhere\"\n", "listen"),
            ("body_bytes_max = 1\n", "body_bytes_max"),
            ("request_timeout_secs = 0\n", "request_timeout_secs"),
            ("colour = \"blue\"\n", "colour"),
            ("[limits]\nsignups_per_address = { burst = 0, per_minute = 10 }\n", "limits.signups_per_address"),
            (
                "[limits]\naccess_requests_per_business = { burst = 5, per_minute = 0 }\n",
                "access_requests_per_business",
            ),
            ("[limits]\nsign_in_failures_per_client = { burst = 5 }\n", "per_minute"),
            ("[limits]\nsignups = { burst = 5, per_minute = 5 }\n", "signups"),
        ];
        for (text, needle) in cases {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let args = ServeArgs {
                vault: VaultArgs { config: Some(file), policies: Some(policies_dir()), ..VaultArgs::default() },
                ..ServeArgs::default()
            };
            let error = ServeConfig::from_args(&args).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
    }
}
