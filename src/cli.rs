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
    /// How the result is written on stdout: `text`, or `json` (one object,
    /// with `"ok"`). Messages and progress go to stderr either way; the exit
    /// codes are in docs/CLI.md.
    #[arg(long, global = true, value_enum, default_value_t, env = "CONSENTVAULT_FORMAT")]
    format: Format,
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
    /// Work with the storage engines.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
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
struct ReplayArgs {
    /// The stopped vault, or the key for --backup.
    #[command(flatten)]
    vault: VaultArgs,
    /// Replay this backup file instead of the data directory (it is
    /// written to a temporary store, verified, replayed and removed).
    #[arg(long, value_name = "FILE")]
    backup: Option<PathBuf>,
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
enum StoreCommand {
    /// Copy a stopped vault's records from sled to PostgreSQL or back
    /// (still sealed), into an empty destination, with progress; then verify
    /// the copied audit log with the vault's key.
    Copy(StoreCopyArgs),
}

#[derive(Debug, clap::Args)]
struct StoreCopyArgs {
    /// Where the records are: `sled:DIR` (a data directory) or a PostgreSQL
    /// URL.
    #[arg(long)]
    from: String,
    /// Where they go, empty: a PostgreSQL URL or `sled:DIR`.
    #[arg(long)]
    to: String,
    /// The key and policies that verify the copy (the data directory
    /// defaults to the `sled:` side's).
    #[command(flatten)]
    vault: VaultArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Rotate the key-encryption key: a new version in the key file, every
    /// DEK rewrapped, the old version destroyed. Asks the running vault
    /// through its control socket, or rotates a stopped one itself; shows
    /// progress, and follows a rotation already under way.
    Rotate(VaultArgs),
    /// Show the state of the keys and the latest rotation.
    Status(VaultArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the Merkle tree from the stored entries and check every
    /// checkpoint, and that the store holds every checkpoint the vault
    /// published; the vault must not be running.
    Verify(VaultArgs),
    /// Replay the log from its first entry and prove that every read that
    /// released a field was covered, at its position, by a live grant under
    /// the policies then in force (docs/AUDIT.md). Verifies the log first.
    /// On a stopped vault's data directory, or on a backup (--backup, with
    /// the key-encryption key it was sealed under). Exits with 3 at the
    /// first violation, naming its index.
    Replay(ReplayArgs),
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

/// How a command writes its result on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A line for people.
    #[default]
    Text,
    /// One JSON object: `"ok": true` and the result's members, or
    /// `"ok": false` and `error` (`code`, `exit_code`, `message`).
    Json,
}

/// The exit codes (`docs/CLI.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// It failed (storage, a file, the running vault refused, ...).
    Failed = 1,
    /// Its flags or configuration are wrong (clap uses 2 for bad flags too).
    Usage = 2,
    /// The audit log does not verify, or the store is behind a checkpoint
    /// the vault published.
    NotVerified = 3,
    /// A running vault holds the data directory.
    InUse = 4,
    /// There is no vault where the command expects one.
    NoVault = 5,
}

/// A command's result: a line for people, an object for scripts.
#[derive(Debug)]
struct Outcome {
    text: String,
    json: serde_json::Value,
}

impl Outcome {
    fn new(text: impl Into<String>, json: serde_json::Value) -> Self {
        Self { text: text.into(), json }
    }
}

/// Why a command failed: what to tell the operator, a stable code and the
/// exit code.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    code: &'static str,
    message: String,
    /// What the command found before it failed (a replay's summary), shown
    /// as a result would be.
    found: Option<Box<Outcome>>,
}

impl Failure {
    fn new(exit: Exit, code: &'static str, message: impl Into<String>) -> Self {
        Self { exit, code, message: message.into(), found: None }
    }

    fn failed(message: impl std::fmt::Display) -> Self {
        Self::new(Exit::Failed, "failed", message.to_string())
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(error: crate::config::ConfigError) -> Self {
        Self::new(Exit::Usage, "invalid_configuration", error.to_string())
    }
}

impl From<VaultError> for Failure {
    fn from(error: VaultError) -> Self {
        use crate::store::StoreError;
        let (exit, code) = match &error {
            VaultError::NoVault(_) | VaultError::NotAVault(_) | VaultError::NotInitialised(_) => {
                (Exit::NoVault, "no_vault")
            }
            VaultError::Store(StoreError::InUse(_) | StoreError::LeaseHeld(_)) => (Exit::InUse, "vault_in_use"),
            VaultError::AuditInvalid(_) => (Exit::NotVerified, "audit_log_invalid"),
            VaultError::RolledBack(_) => (Exit::NotVerified, "store_rolled_back"),
            VaultError::KeyMismatch(_) | VaultError::KeysMissing { .. } => (Exit::Failed, "key_mismatch"),
            VaultError::Key(_) => (Exit::Failed, "key_unusable"),
            VaultError::AlreadyInitialised(_) => (Exit::Failed, "already_initialised"),
            VaultError::Policy(_) | VaultError::InvalidOrigin(_) | VaultError::Identity(_) => {
                (Exit::Usage, "invalid_configuration")
            }
            _ => (Exit::Failed, "failed"),
        };
        Self::new(exit, code, error.to_string())
    }
}

impl From<crate::backup::BackupError> for Failure {
    fn from(error: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError;
        match error {
            BackupError::Vault(error) => error.into(),
            BackupError::AuditInvalid(_) => Self::new(Exit::NotVerified, "audit_log_invalid", error.to_string()),
            BackupError::Store(crate::store::StoreError::InUse(_)) => {
                Self::new(Exit::InUse, "vault_in_use", error.to_string())
            }
            BackupError::TargetNotEmpty(_) => Self::new(Exit::Usage, "target_not_empty", error.to_string()),
            error => Self::failed(error),
        }
    }
}

impl From<control::ControlError> for Failure {
    fn from(error: control::ControlError) -> Self {
        let code = match error {
            control::ControlError::Failed(_) => "server_refused",
            _ => "control_socket",
        };
        Self::new(Exit::Failed, code, error.to_string())
    }
}

/// Asks the vault running on `data_dir` to carry out `request` through its
/// control socket (its progress lines go to `progress`), or, when none
/// runs, does the work itself with `offline`.
fn online_or<T: serde::de::DeserializeOwned>(
    data_dir: &std::path::Path,
    request: &control::Request,
    progress: &mut dyn FnMut(&serde_json::Value),
    offline: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, Failure> {
    match control::request(data_dir, request, progress)? {
        Some(answer) => serde_json::from_value(answer)
            .map_err(|error| Failure::failed(format!("unexpected answer from the server: {error}"))),
        None => offline(),
    }
}

/// Runs the command line and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let format = cli.format;
    let result = match cli.command {
        Command::Init(args) => init(&args),
        Command::Serve(args) => serve(&args, format),
        Command::Policy { command: PolicyCommand::Check { dir } } => policy_check(&dir),
        Command::Audit { command: AuditCommand::Verify(args) } => audit_verify(&args),
        Command::Audit { command: AuditCommand::Replay(args) } => audit_replay(&args),
        Command::Audit { command: AuditCommand::AcceptRollback(args) } => audit_accept_rollback(&args),
        Command::Backup(args) => backup(&args),
        Command::Restore(args) => restore(&args),
        Command::Store { command: StoreCommand::Copy(args) } => store_copy(&args),
        Command::Keys { command: KeysCommand::Rotate(args) } => keys_rotate(&args),
        Command::Keys { command: KeysCommand::Status(args) } => keys_status(&args),
    };
    report(format, result)
}

/// Flags clap refused: its own text, or with `--format json` (flag or
/// environment) one object saying so; `--help` and `--version` as clap
/// writes them.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || matches!(error.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
    {
        error.exit();
    }
    let arguments: Vec<String> = std::env::args().collect();
    let json = arguments.windows(2).any(|pair| pair[0] == "--format" && pair[1] == "json")
        || arguments.iter().any(|argument| argument == "--format=json")
        || std::env::var("CONSENTVAULT_FORMAT").is_ok_and(|format| format == "json");
    if !json {
        error.exit();
    }
    let message = error.kind().as_str().unwrap_or("invalid command line").to_owned();
    report(Format::Json, Err(Failure::new(Exit::Usage, "usage", format!("{message}: {}", error.render()))))
}

/// Writes the result: on stdout the line or the object, on stderr the
/// failure's message; and returns the exit code.
#[allow(clippy::print_stdout)]
fn report(format: Format, result: Result<Outcome, Failure>) -> ExitCode {
    let (exit, json) = match result {
        Ok(outcome) => {
            if format == Format::Text && !outcome.text.is_empty() {
                println!("{}", outcome.text);
            }
            let mut json = outcome.json;
            if let Some(object) = json.as_object_mut() {
                object.insert("ok".to_owned(), true.into());
            }
            (Exit::Success, json)
        }
        Err(failure) => {
            let mut json = serde_json::json!({});
            if let Some(found) = failure.found.map(|found| *found) {
                if format == Format::Text && !found.text.is_empty() {
                    println!("{}", found.text);
                }
                json = found.json;
            }
            eprintln!("consentvault: {}", failure.message);
            let error = serde_json::json!({
                "code": failure.code,
                "exit_code": failure.exit as u8,
                "message": failure.message,
            });
            if let Some(object) = json.as_object_mut() {
                object.insert("ok".to_owned(), false.into());
                object.insert("error".to_owned(), error);
            }
            (failure.exit, json)
        }
    };
    // `serve` wrote its object when it began to listen.
    if format == Format::Json && !json.is_null() {
        println!("{json}");
    }
    ExitCode::from(exit as u8)
}

/// A progress bar on stderr, drawn only when stderr is a terminal; `what`
/// names the unit counted.
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({elapsed}, {eta} left)")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(what.to_owned())
        // Cleared however the command ends, an early error included.
        .with_finish(indicatif::ProgressFinish::AndClear)
}

fn init(args: &VaultArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(args)?;
    let options = &config.options;
    Vault::init(options)?;
    let key_file = options.key_source.is_none().then(|| options.data_dir.join(KEY_FILE));
    if let Some(key_file) = &key_file {
        eprintln!(
            "consentvault: key-encryption key written to {} (mode 0600); keep it secret and back it up apart from the data",
            key_file.display()
        );
    }
    let data_dir = options.data_dir.display().to_string();
    Ok(Outcome::new(
        format!("ok: created a vault in {data_dir}"),
        serde_json::json!({"data_dir": data_dir, "key_file": key_file}),
    ))
}

fn policy_check(dir: &std::path::Path) -> Result<Outcome, Failure> {
    let policies =
        policies_load(dir).map_err(|error| Failure::new(Exit::Usage, "invalid_policy", error.to_string()))?;
    let retention_days = policies.rules.retention.map(|rule| rule.erase_inactive_after_days);
    let retention = match retention_days {
        Some(days) => format!("retention: erase customers inactive for {days} days"),
        None => "retention: off".to_owned(),
    };
    let counts = (
        policies.catalogue.fields().count(),
        policies.rules.purposes.len(),
        policies.rules.deny.len(),
        policies.rules.duration_caps.len(),
    );
    Ok(Outcome::new(
        format!(
            "ok: {} is valid ({} fields, {} purposes, {} deny rules, {} duration caps, {retention}; sha256 {})",
            dir.display(),
            counts.0,
            counts.1,
            counts.2,
            counts.3,
            policies.sha256
        ),
        serde_json::json!({
            "dir": dir,
            "fields": counts.0,
            "purposes": counts.1,
            "deny_rules": counts.2,
            "duration_caps": counts.3,
            "retention_days": retention_days,
            "sha256": policies.sha256,
        }),
    ))
}

fn audit_verify(args: &VaultArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(args)?;
    let bar = progress_bar("audit entries verified");
    let verified = Vault::verify_offline(&config.options, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    match verified {
        Ok(verified) => {
            let root = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, verified.root);
            Ok(Outcome::new(
                format!("ok: size {} root {root} ({} checkpoints verified)", verified.size, verified.checkpoints),
                serde_json::json!({"size": verified.size, "root": root, "checkpoints": verified.checkpoints}),
            ))
        }
        Err(VaultError::AuditInvalid(failure)) => {
            let at = failure.first_bad_index.map_or_else(|| "unknown".to_owned(), |index| index.to_string());
            Err(Failure::new(
                Exit::NotVerified,
                "audit_log_invalid",
                format!("the audit log does not verify: {} (first bad index: {at})", failure.problem),
            ))
        }
        Err(VaultError::Store(crate::store::StoreError::InUse(_))) => Err(Failure::new(
            Exit::InUse,
            "vault_in_use",
            format!(
                "a vault is running on {}: `audit verify` reads the store alone; stop the server (its log is \
                 verified at every start), or verify it while it runs as an auditor, with the checkpoints and \
                 proofs under /v1/audit/",
                config.options.data_dir.display()
            ),
        )),
        Err(error) => Err(error.into()),
    }
}

fn audit_replay(args: &ReplayArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(&args.vault)?;
    let bar = progress_bar("audit entries replayed");
    let step = |step: &str, done, total| {
        if bar.message() != step {
            bar.set_message(step.to_owned());
        }
        bar.set_length(total);
        bar.set_position(done);
    };
    let replayed = match &args.backup {
        Some(backup) => crate::backup::replay(backup, &config.options, &std::env::temp_dir(), &step)
            .map(|replayed| (replayed.audit_size, replayed.summary))
            .map_err(Failure::from),
        None => Vault::replay_offline(&config.options, &step).map_err(Failure::from),
    };
    bar.finish_and_clear();
    let (size, summary) = replayed?;
    let policies = summary.policies.len();
    let text = format!(
        "{size} entries verified; replayed {}: {} reads released {} fields, each covered by a live grant under the \
         policies then in force; {} reads released nothing; {} reads by customers of their own data; {} reads not \
         checked (format 1); {} grants created, {} ended; {} messages delivered, each allowed by the customer's \
         choices then; {policies} policy versions",
        summary.entries,
        summary.reads_released,
        summary.fields_released,
        summary.reads_denied,
        summary.reads_own,
        summary.reads_unchecked,
        summary.grants_created,
        summary.grants_ended,
        summary.messages_delivered,
    );
    let json = serde_json::json!({"size": size, "replay": summary});
    match &summary.violation {
        None => Ok(Outcome::new(format!("ok: {text}"), json)),
        Some(violation) => Err(Failure {
            found: Some(Box::new(Outcome::new(text, json))),
            ..Failure::new(
                Exit::NotVerified,
                "replay_violation",
                format!("the log does not justify a read: {violation}"),
            )
        }),
    }
}

fn audit_accept_rollback(args: &VaultArgs) -> Result<Outcome, Failure> {
    let vault = vault_open_existing(args)?;
    let Some(rollback) = vault.rollback() else {
        vault.close().map_err(Failure::failed)?;
        return Err(Failure::new(Exit::Failed, "no_rollback", VaultError::NoRollback.to_string()));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::failed(format!("runtime: {error}")))?;
    let accepted = runtime.block_on(vault.rollback_accept());
    vault.close().map_err(Failure::failed)?;
    let index = accepted.map_err(Failure::failed)?;
    eprintln!("consentvault: accepted: {rollback}");
    Ok(Outcome::new(
        format!("ok: recorded as audit entry {index} (vault.rollback_accepted); the vault serves again"),
        serde_json::json!({"rollback": rollback.to_string(), "audit_index": index}),
    ))
}

fn backup(args: &BackupArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(&args.vault)?;
    let options = &config.options;
    let out =
        std::path::absolute(&args.out).map_err(|error| Failure::failed(format!("{}: {error}", args.out.display())))?;
    let chunk_keys = args.chunk_keys;
    if !(1..=crate::backup::CHUNK_KEYS_MAX).contains(&chunk_keys) {
        return Err(Failure::new(
            Exit::Usage,
            "invalid_flag",
            format!("--chunk-keys must be between 1 and {}", crate::backup::CHUNK_KEYS_MAX),
        ));
    }
    let bar = progress_bar("keys backed up");
    let show = |progress: &crate::backup::Progress| {
        bar.set_length(progress.keys_total.max(progress.keys));
        bar.set_position(progress.keys);
    };
    let request = control::Request::Backup { out: out.clone(), chunk_keys: Some(chunk_keys) };
    let on_line = |progress: &serde_json::Value| {
        if let Ok(progress) = serde_json::from_value::<crate::backup::Progress>(progress.clone()) {
            show(&progress);
        }
    };
    let summary: BackupSummary = online_or(&options.data_dir, &request, &mut { on_line }, || {
        let store = Vault::store_open_offline(options)?;
        let summary = crate::backup::write(&store, &out, chunk_keys, &mut |progress| show(&progress));
        store.close().map_err(Failure::failed)?;
        Ok(summary?)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "consentvault: the backup is sealed; restoring it needs the key-encryption key, which is not in it: back up the key file apart"
    );
    Ok(Outcome::new(
        format!(
            "ok: wrote {}: {} records ({} chunks, {} redo batches), {} bytes, sha256 {}; audit log size {} root {}",
            summary.file.display(),
            summary.records,
            summary.chunks,
            summary.redo_batches,
            summary.bytes,
            summary.sha256,
            summary.audit_size,
            summary.audit_root
        ),
        serde_json::to_value(&summary).map_err(Failure::failed)?,
    ))
}

fn restore(args: &RestoreArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(&args.vault)?;
    let options = &config.options;
    let bar = progress_bar(crate::backup::RESTORE_WRITE);
    let summary = crate::backup::restore(&args.input, options, &|step, done, total| {
        if bar.message() != step {
            bar.set_message(step);
        }
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    let data_dir = options.data_dir.display();
    // The key is never in a backup: say where the restored vault finds it.
    let key_hint = match &options.key_source {
        Some(crate::crypto::KeySource::File(path)) if *path == options.data_dir.join(KEY_FILE) => String::new(),
        Some(crate::crypto::KeySource::File(path)) => format!(
            "the key-encryption key is not in {data_dir}: start the vault with --kek-file {} \
             (or copy it to {data_dir}/{KEY_FILE}, mode 0600, if the key may live beside the data)",
            path.display()
        ),
        Some(_) => {
            format!("the key-encryption key is not in {data_dir}: start the vault with the same CONSENTVAULT_KEK")
        }
        None => String::new(),
    };
    if !key_hint.is_empty() {
        eprintln!("consentvault: {key_hint}");
    }
    Ok(Outcome::new(
        format!(
            "ok: restored {} into {data_dir}: audit log size {} root {} verified against the backup's checkpoint; vault.restored recorded at index {}",
            args.input.display(),
            summary.audit_size,
            summary.audit_root,
            summary.restored_index
        ),
        serde_json::json!({
            "input": args.input,
            "data_dir": options.data_dir,
            "records": summary.records,
            "audit_size": summary.audit_size,
            "audit_root": summary.audit_root,
            "restored_index": summary.restored_index,
            "key_hint": (!key_hint.is_empty()).then_some(key_hint),
        }),
    ))
}

fn store_copy(args: &StoreCopyArgs) -> Result<Outcome, Failure> {
    use crate::store::copy::{CopyError, Endpoint};
    let usage = |problem: String| Failure::new(Exit::Usage, "invalid_flag", problem);
    let from = Endpoint::parse(&args.from).map_err(|problem| usage(format!("--from: {problem}")))?;
    let to = Endpoint::parse(&args.to).map_err(|problem| usage(format!("--to: {problem}")))?;
    // The copy is verified where it lies: a sled copy in its own data
    // directory, a PostgreSQL one with the key of the data directory given,
    // or else of the sled source.
    let mut vault_args = args.vault.clone();
    match &to {
        Endpoint::Sled(dir) => {
            vault_args.store = Some("sled".to_owned());
            vault_args.data_dir = Some(dir.clone());
        }
        Endpoint::Postgres(_) => {
            vault_args.store = Some(args.to.clone());
            if vault_args.data_dir.is_none() {
                vault_args.data_dir = from.data_dir().map(std::path::Path::to_owned);
            }
        }
    }
    // Checked before anything is copied: the key and policies must load.
    let config = VaultConfig::from_args(&vault_args)?;
    let bar = progress_bar("records copied");
    let copied = crate::store::copy::copy(&from, &to, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let copied = copied.map_err(|error| match error {
        CopyError::Store(crate::store::StoreError::InUse(_) | crate::store::StoreError::LeaseHeld(_)) => {
            Failure::new(Exit::InUse, "vault_in_use", format!("{error}: stop the vault before copying it"))
        }
        CopyError::NoSource(_) => Failure::new(Exit::NoVault, "no_vault", error.to_string()),
        CopyError::NotEmpty(_) | CopyError::SameEngine => Failure::new(Exit::Usage, "invalid_flag", error.to_string()),
        CopyError::Store(_) => Failure::failed(error),
    })?;
    let bar = progress_bar("audit entries verified");
    let verified = Vault::verify_offline(&config.options, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let verified = verified.map_err(Failure::from)?;
    let root = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, verified.root);
    Ok(Outcome::new(
        format!(
            "ok: copied {copied} records from {from} to {to}; the copy's audit log verifies: size {} root {root}",
            verified.size
        ),
        serde_json::json!({
            "from": from.to_string(),
            "to": to.to_string(),
            "records": copied,
            "audit_size": verified.size,
            "audit_root": root,
        }),
    ))
}

/// Opens the existing vault `args` name (never creates one).
fn vault_open_existing(args: &VaultArgs) -> Result<std::sync::Arc<Vault>, Failure> {
    let config = VaultConfig::from_args(args)?;
    crate::vault::vault_exists_for(&config.options)?;
    Ok(Vault::open(config.options).map(|(vault, _)| vault)?)
}

fn keys_rotate(args: &VaultArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(args)?;
    let bar = progress_bar("DEKs rewrapped");
    let show = |status: &crate::keys::KeyStatus| {
        if let Some(rotation) = &status.rotation {
            bar.set_length(rotation.deks_total.max(rotation.deks_rewrapped));
            bar.set_position(rotation.deks_rewrapped);
            bar.set_message(format!("DEKs rewrapped to version {}", rotation.target_version));
        }
    };
    // A running vault rotates itself (it holds the store); ask it.
    let on_line = |progress: &serde_json::Value| {
        if let Ok(status) = serde_json::from_value::<crate::keys::KeyStatus>(progress.clone()) {
            show(&status);
        }
    };
    let status: crate::keys::KeyStatus =
        online_or(&config.options.data_dir, &control::Request::KeysRotate, &mut { on_line }, || {
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
                .and_then(|()| crate::keys::rotation_follow(vault.keys(), &mut |status| show(status)));
            vault.close().map_err(Failure::failed)?;
            outcome.map_err(Failure::failed)
        })?;
    bar.finish_and_clear();
    let rotation = status.rotation.ok_or_else(|| Failure::failed("no rotation recorded"))?;
    eprintln!(
        "consentvault: back up the key file now: backups written before this rotation need the destroyed version(s) {:?}, which a copy of the key file from before it still holds",
        rotation.retiring_versions
    );
    Ok(Outcome::new(
        format!(
            "ok: rotation finished: key-encryption key version {} current; version(s) {:?} destroyed and removed from the key file",
            rotation.target_version, rotation.retiring_versions
        ),
        serde_json::to_value(&rotation).map_err(Failure::failed)?,
    ))
}

fn keys_status(args: &VaultArgs) -> Result<Outcome, Failure> {
    let config = VaultConfig::from_args(args)?;
    let status: crate::keys::KeyStatus =
        online_or(&config.options.data_dir, &control::Request::KeysStatus, &mut |_| {}, || {
            let vault = vault_open_existing(args)?;
            let status = vault.keys().key_status();
            vault.close().map_err(Failure::failed)?;
            status.map_err(Failure::failed)
        })?;
    let rotation = match &status.rotation {
        Some(rotation) => format!(
            "; latest rotation to version {}: {:?}, {}/{} DEKs rewrapped",
            rotation.target_version, rotation.state, rotation.deks_rewrapped, rotation.deks_total
        ),
        None => String::new(),
    };
    Ok(Outcome::new(
        format!(
            "key-encryption key version {} current; loaded {:?}; destroyed {:?}; from {}{rotation}",
            status.current_version, status.loaded_versions, status.destroyed_versions, status.source
        ),
        serde_json::to_value(&status).map_err(Failure::failed)?,
    ))
}

fn serve(args: &ServeArgs, format: Format) -> Result<Outcome, Failure> {
    let config = ServeConfig::from_args(args)?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Failure::failed)?;
    let served = runtime.block_on(async {
        let start_failed = |error| match error {
            crate::server::StartError::Vault(error) => error.into(),
            error => Failure::failed(error),
        };
        let bound = Application::bind(&config).await.map_err(start_failed)?;
        let mut shutdown = Box::pin(shutdown_signal());
        if let crate::vault::StoreLocation::Postgres(settings) = &config.vault.options.store {
            let base = format!("http://{}", bound.address());
            tracing::info!(address = %bound.address(), store = %settings.url, "standing by until this node holds the store's lease");
            // Scripts and tests read this line to learn a standby's port.
            #[allow(clippy::print_stdout)]
            match format {
                Format::Text => println!("standing by on {base}"),
                Format::Json => println!("{}", serde_json::json!({"ok": true, "standby": base})),
            }
        }
        let application = tokio::select! {
            opened = bound.open(&config) => opened.map_err(start_failed)?,
            () = &mut shutdown => {
                tracing::info!("shutdown requested while standing by");
                return Ok(Outcome::new("", serde_json::Value::Null));
            }
        };
        if config.vault.policy_source == PolicySource::BuiltIn {
            tracing::warn!("no policy directory found; using the built-in default policies");
        }
        let data_dir = &config.vault.options.data_dir;
        let base = format!("http://{}", application.address());
        tracing::info!(address = %application.address(), data_dir = %data_dir.display(), "consentvault serving");
        let text_log = config.log_format == crate::config::LogFormat::Text;
        if application.opened() == Opened::Initialised {
            announce_new_vault(&config, text_log);
        }
        next_steps(&base, application.admin_credentials(), text_log);
        // Scripts and tests read this line (or object) to learn the bound port.
        #[allow(clippy::print_stdout)]
        match format {
            Format::Text => println!("listening on {base}"),
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "ok": true,
                    "listening": base,
                    "data_dir": data_dir,
                    "openapi": format!("{base}/v1/openapi.json"),
                    "admin_credentials": application.admin_credentials(),
                })
            ),
        }
        application.run(shutdown).await.map_err(|error| {
            if error.get_ref().is_some_and(|inner| inner.is::<crate::server::Superseded>()) {
                Failure::new(Exit::Failed, "lease_lost", error.to_string())
            } else {
                Failure::failed(error)
            }
        })?;
        // The object above was the result; nothing more on stdout.
        Ok(Outcome::new("", serde_json::Value::Null))
    });
    // A standby stopped while it waited for the lease leaves that wait
    // behind on a blocking thread: the runtime does not wait for it.
    runtime.shutdown_background();
    served
}

/// What to do next, paste-ready: the admin token, the API description and
/// the quick start. On stderr in text logs, one log event in JSON logs.
fn next_steps(base: &str, admin_credentials: Option<&std::path::Path>, text_log: bool) {
    let token = match admin_credentials {
        Some(path) if is_token_request(path) => format!(
            "curl -s -X POST {base}/v1/token -H 'Content-Type: application/json' -d @{}",
            shell_quoted(&path.display().to_string())
        ),
        // Written before the file carried its grant type.
        Some(path) => format!(
            "POST {base}/v1/token with grant_type=client_credentials and the client_id and client_secret in {}",
            path.display()
        ),
        None => format!("POST {base}/v1/token with grant_type=client_credentials and the admin client's id and secret"),
    };
    if !text_log {
        tracing::info!(
            admin_token = %token,
            openapi = %format!("{base}/v1/openapi.json"),
            quick_start = "README.md, \"Quick start\"",
            "next steps"
        );
        return;
    }
    let mut steps = format!(
        "consentvault: serving on {base}. Next:\n  \
         an admin token:  {token}\n  \
         the API:         {base}/v1/openapi.json\n  \
         the quick start: README.md, \"Quick start\"\n"
    );
    if let Some(path) = admin_credentials {
        steps.push_str(&format!(
            "  {} holds the admin client's secret (mode 0600): move it to a secret store once you have signed in.\n",
            path.display()
        ));
    }
    eprint!("{steps}");
}

/// Whether the admin credentials file at `path` is a token request as it
/// stands (files written by earlier versions lack the grant type).
fn is_token_request(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path).map(zeroize::Zeroizing::new) else { return false };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .is_ok_and(|request| request["grant_type"] == "client_credentials")
}

/// `text` as one shell word.
fn shell_quoted(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn announce_new_vault(config: &ServeConfig, text_log: bool) {
    let data_dir = config.vault.options.data_dir.display();
    let key = match &config.vault.options.key_source {
        None => format!("A development key-encryption key was written to {data_dir}/{KEY_FILE} (mode 0600)."),
        Some(_) => "The configured key-encryption key was bound to it.".to_owned(),
    };
    tracing::warn!(data_dir = %data_dir, "initialised a new vault (development default); {key} Anyone holding that key and this directory can read the data");
    if !text_log {
        return;
    }
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
