//! The command line: `init`, `serve`, `policy check`, `audit verify`,
//! `keys rotate|status`, `backup` and `restore`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::backup::BackupSummary;
use crate::config::{PolicySource, ServeArgs, ServeConfig, VaultArgs, VaultConfig};
use crate::control;
use crate::server::{Application, shutdown_signal};
use crate::telemetry;
use crate::vault::{KEY_FILE, Opened, Vault, VaultError, policies_load};

/// consentvault: a privacy-first, permission-based customer data vault.
#[derive(Debug, Parser)]
#[command(name = "consentvault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory with a fresh key-encryption key.
    Init(VaultArgs),
    /// Run the vault's HTTP API.
    Serve(ServeArgs),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write a consistent backup of the store (still sealed; the key file is
    /// not in it): through the running server's control socket, or directly
    /// if no server runs on the data directory. Needs no key.
    Backup(BackupArgs),
    /// Restore a backup into an empty directory, with the key-encryption key
    /// it was sealed under (--kek-file or CONSENTVAULT_KEK); verifies the
    /// whole audit log before the vault appears.
    Restore(RestoreArgs),
    /// Work with the key-encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// Vault location (the key flags are not needed).
    #[command(flatten)]
    vault: VaultArgs,
    /// The backup file to create; an existing file is never replaced.
    #[arg(long)]
    out: PathBuf,
    /// Keys read per chunk: each chunk holds writers back while it is read,
    /// so smaller chunks mean shorter pauses and more of them.
    #[arg(long, default_value_t = crate::backup::CHUNK_KEYS_DEFAULT)]
    chunk_keys: usize,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The new data directory (empty or missing), keys and policies.
    #[command(flatten)]
    vault: VaultArgs,
    /// The backup file to restore.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Rotate the key-encryption key: a new version in the key file, every
    /// DEK rewrapped, the old version destroyed. Asks the running vault
    /// through its control socket, or rotates a stopped one itself; shows
    /// progress, and follows a rotation already under way.
    Rotate(VaultArgs),
    /// Print the state of the keys and the latest rotation as JSON.
    Status(VaultArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the Merkle tree from the stored entries and check every
    /// checkpoint, and that the store holds every checkpoint the vault
    /// published; the vault must not be running.
    Verify(VaultArgs),
    /// Go on from a store that is behind a checkpoint this vault published
    /// (a power cut on a device that lied about its cache, an older copy put
    /// back) instead of restoring a backup: records the decision in the log
    /// as `vault.rollback_accepted`, and the vault serves and signs again.
    /// The vault must not be running.
    AcceptRollback(VaultArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory without starting the vault.
    Check {
        /// The policy directory.
        dir: PathBuf,
    },
}

/// Runs the command line and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init(&args),
        Command::Serve(args) => serve(&args),
        Command::Policy { command: PolicyCommand::Check { dir } } => policy_check(&dir),
        Command::Audit { command: AuditCommand::Verify(args) } => audit_verify(&args),
        Command::Audit { command: AuditCommand::AcceptRollback(args) } => audit_accept_rollback(&args),
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
        Command::Keys { command: KeysCommand::Rotate(args) } => keys_rotate(&args),
        Command::Keys { command: KeysCommand::Status(args) } => keys_status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("consentvault: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init(args: &VaultArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(args).map_err(|e| e.to_string())?;
    let options = &config.options;
    Vault::init(&options.data_dir, options.key_source.as_ref(), options.audit_origin.as_deref())
        .map_err(|e| e.to_string())?;
    eprintln!("consentvault: created a vault in {}", options.data_dir.display());
    if options.key_source.is_none() {
        eprintln!(
            "consentvault: key-encryption key written to {} (mode 0600); keep it secret and back it up apart from the data",
            options.data_dir.join(KEY_FILE).display()
        );
    }
    Ok(())
}

fn policy_check(dir: &std::path::Path) -> Result<(), String> {
    let policies = policies_load(dir).map_err(|e| e.to_string())?;
    let retention = match policies.rules.retention {
        Some(rule) => format!("retention: erase customers inactive for {} days", rule.erase_inactive_after_days),
        None => "retention: off".to_owned(),
    };
    eprintln!(
        "consentvault: {} is valid ({} fields, {} purposes, {} deny rules, {} duration caps, {retention}; sha256 {})",
        dir.display(),
        policies.catalogue.fields().count(),
        policies.rules.purposes.len(),
        policies.rules.deny.len(),
        policies.rules.duration_caps.len(),
        policies.sha256
    );
    Ok(())
}

fn audit_verify(args: &VaultArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(args).map_err(|e| e.to_string())?;
    match Vault::verify_offline(&config.options) {
        Ok(verified) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "ok: size {} root {} ({} checkpoints verified)",
                    verified.size,
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, verified.root),
                    verified.checkpoints
                );
            }
            Ok(())
        }
        Err(VaultError::AuditInvalid(failure)) => {
            #[allow(clippy::print_stdout)]
            {
                match failure.first_bad_index {
                    Some(index) => println!("first bad index: {index}"),
                    None => println!("first bad index: unknown"),
                }
            }
            Err(format!("the audit log does not verify: {}", failure.problem))
        }
        Err(error) => Err(error.to_string()),
    }
}

fn audit_accept_rollback(args: &VaultArgs) -> Result<(), String> {
    let vault = vault_open_existing(args)?;
    let Some(rollback) = vault.rollback() else {
        vault.close().map_err(|e| e.to_string())?;
        return Err(VaultError::NoRollback.to_string());
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
    let accepted = runtime.block_on(vault.rollback_accept());
    vault.close().map_err(|e| e.to_string())?;
    let index = accepted.map_err(|e| e.to_string())?;
    eprintln!("consentvault: accepted: {rollback}");
    eprintln!("consentvault: recorded as audit entry {index} (vault.rollback_accepted); the vault serves again");
    Ok(())
}

fn backup(args: &BackupArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(&args.vault).map_err(|e| e.to_string())?;
    let options = &config.options;
    let out = std::path::absolute(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let chunk_keys = args.chunk_keys;
    if !(1..=crate::backup::CHUNK_KEYS_MAX).contains(&chunk_keys) {
        return Err(format!("--chunk-keys must be between 1 and {}", crate::backup::CHUNK_KEYS_MAX));
    }
    let request = control::Request::Backup { out: out.clone(), chunk_keys: Some(chunk_keys) };
    let online = control::request(&options.data_dir, &request, &mut |progress| {
        eprintln!("consentvault: backup progress {progress}");
    })
    .map_err(|e| e.to_string())?;
    let summary: BackupSummary = match online {
        Some(result) => {
            serde_json::from_value(result).map_err(|e| format!("unexpected answer from the server: {e}"))?
        }
        None => {
            let store = Vault::store_open_offline(&options.data_dir, options.store_cache_bytes).map_err(|e| {
                format!("{e} (no server answers on {}/{})", options.data_dir.display(), control::SOCKET_FILE)
            })?;
            let summary = crate::backup::write(&store, &out, chunk_keys, &mut |_| {}).map_err(|e| e.to_string())?;
            store.close().map_err(|e| e.to_string())?;
            summary
        }
    };
    #[allow(clippy::print_stdout)]
    {
        println!(
            "ok: wrote {}: {} records ({} chunks, {} redo batches), {} bytes, sha256 {}; audit log size {} root {}",
            summary.file.display(),
            summary.records,
            summary.chunks,
            summary.redo_batches,
            summary.bytes,
            summary.sha256,
            summary.audit_size,
            summary.audit_root
        );
    }
    eprintln!(
        "consentvault: the backup is sealed; restoring it needs the key-encryption key, which is not in it: back up the key file apart"
    );
    Ok(())
}

fn restore(args: &RestoreArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(&args.vault).map_err(|e| e.to_string())?;
    let summary = crate::backup::restore(&args.input, &config.options).map_err(|e| e.to_string())?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "ok: restored {} into {}: audit log size {} root {} verified against the backup's checkpoint; vault.restored recorded at index {}",
            args.input.display(),
            config.options.data_dir.display(),
            summary.audit_size,
            summary.audit_root,
            summary.restored_index
        );
    }
    Ok(())
}

/// Opens the existing vault `args` name (never creates one).
fn vault_open_existing(args: &VaultArgs) -> Result<std::sync::Arc<Vault>, String> {
    let config = VaultConfig::from_args(args).map_err(|e| e.to_string())?;
    let data_dir = config.options.data_dir.clone();
    if !data_dir.join(crate::vault::STORE_DIR).is_dir() {
        return Err(VaultError::NotAVault(data_dir).to_string());
    }
    Vault::open(config.options)
        .map(|(vault, _)| vault)
        .map_err(|e| format!("{e} (no server answers on {}/{})", data_dir.display(), control::SOCKET_FILE))
}

fn keys_rotate(args: &VaultArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(args).map_err(|e| e.to_string())?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} DEKs rewrapped ({elapsed}) {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut show = |status: &crate::keys::KeyStatus| {
        if let Some(rotation) = &status.rotation {
            bar.set_length(rotation.deks_total.max(rotation.deks_rewrapped));
            bar.set_position(rotation.deks_rewrapped);
            bar.set_message(format!("to version {}", rotation.target_version));
        }
    };
    // A running vault rotates itself (it holds the store); ask it.
    let request = control::Request::KeysRotate;
    let online = control::request(&config.options.data_dir, &request, &mut |progress| {
        if let Ok(status) = serde_json::from_value::<crate::keys::KeyStatus>(progress.clone()) {
            show(&status);
        }
    });
    let status = match online {
        Ok(Some(result)) => {
            serde_json::from_value(result).map_err(|e| format!("unexpected answer from the server: {e}"))
        }
        Ok(None) => {
            let vault = vault_open_existing(args)?;
            let outcome = vault
                .keys()
                .kek_rotate(&crate::audit::Actor::system(), "cli")
                .map(|_| ())
                .or_else(|error| match error {
                    // Resumed by opening the vault: follow it.
                    crate::keys::KeyError::InProgress => Ok(()),
                    error => Err(error),
                })
                .and_then(|_| crate::keys::rotation_follow(vault.keys(), &mut show))
                .map_err(|e| e.to_string());
            vault.close().map_err(|e| e.to_string())?;
            outcome
        }
        Err(error) => Err(error.to_string()),
    };
    match status {
        Ok(status) => {
            bar.finish();
            let rotation = status.rotation.ok_or("no rotation recorded")?;
            eprintln!(
                "consentvault: rotation finished: key-encryption key version {} current; version(s) {:?} destroyed and removed from the key file",
                rotation.target_version, rotation.retiring_versions
            );
            Ok(())
        }
        Err(error) => {
            bar.abandon();
            Err(error)
        }
    }
}

fn keys_status(args: &VaultArgs) -> Result<(), String> {
    let config = VaultConfig::from_args(args).map_err(|e| e.to_string())?;
    let online = control::request(&config.options.data_dir, &control::Request::KeysStatus, &mut |_| {})
        .map_err(|e| e.to_string())?;
    let status = match online {
        Some(status) => status,
        None => {
            let vault = vault_open_existing(args)?;
            let status = vault.keys().key_status().map_err(|e| e.to_string());
            vault.close().map_err(|e| e.to_string())?;
            serde_json::to_value(status?).map_err(|e| e.to_string())?
        }
    };
    let text = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let config = ServeConfig::from_args(args).map_err(|e| e.to_string())?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let application = Application::build(&config).await.map_err(|e| e.to_string())?;
        let data_dir = &config.vault.options.data_dir;
        if application.opened() == Opened::Initialised {
            announce_new_vault(&config);
        }
        if let Some(path) = application.admin_credentials() {
            tracing::warn!(path = %path.display(), "admin credentials written");
            eprintln!(
                "consentvault: the admin client's credentials are in {} (mode 0600);\n\
                 exchange them at POST /v1/token (grant_type=client_credentials) for an admin token",
                path.display()
            );
        }
        if config.vault.policy_source == PolicySource::BuiltIn {
            tracing::warn!("no policy directory found; using the built-in default policies");
        }
        tracing::info!(address = %application.address(), data_dir = %data_dir.display(), "consentvault serving");
        // Scripts and tests read this line to learn the bound port.
        #[allow(clippy::print_stdout)]
        {
            println!("listening on http://{}", application.address());
        }
        application.run(shutdown_signal()).await.map_err(|e| e.to_string())
    })
}

fn announce_new_vault(config: &ServeConfig) {
    let data_dir = config.vault.options.data_dir.display();
    let key = match &config.vault.options.key_source {
        None => format!("A development key-encryption key was written to {data_dir}/{KEY_FILE} (mode 0600)."),
        Some(_) => "The configured key-encryption key was bound to it.".to_owned(),
    };
    tracing::warn!(data_dir = %data_dir, "initialised a new vault (development default)");
    eprintln!(
        "\n==================================================================\n\
         consentvault: INITIALISED A NEW VAULT in {data_dir}\n\
         {key}\n\
         Anyone holding that key and this directory can read the data.\n\
         For production: `consentvault init` on protected storage (or\n\
         CONSENTVAULT_KEK from a secret store) and `serve --production`.\n\
         ==================================================================\n"
    );
}
