//! Helpers shared by the integration tests: a vault on a temporary
//! directory, the real server binary on port 0, `audit verify` on a stopped
//! vault, a small seeded random generator so failures can be replayed, an
//! outside auditor's log verifier ([`tlog`]), and a test app with one actor
//! per role that verifies the whole audit log when dropped ([`app`]).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod postgres;
pub mod tlog;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use consentvault::vault::{Opened, Vault, VaultOptions, policies_load};

/// The policy directory shipped with the crate.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the shipped policy files in `<dir>/policies`, for a test that
/// edits them.
pub fn policies_copy(dir: &Path) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    for file in ["fields.toml", "purposes.toml", "rules.toml"] {
        std::fs::copy(policies_dir().join(file), policies.join(file)).unwrap();
    }
    policies
}

/// Options for a test vault in `data_dir` with the policies in `policy_dir`.
pub fn vault_options(data_dir: &Path, policy_dir: &Path) -> VaultOptions {
    VaultOptions {
        data_dir: data_dir.to_owned(),
        key_source: None,
        policies: policies_load(policy_dir).unwrap(),
        policy_dir: Some(policy_dir.to_owned()),
        production: false,
        store_cache_bytes: 16 * 1024 * 1024,
        store: postgres::test_store(data_dir),
        audit_origin: None,
        identity: Default::default(),
        key_limits: Default::default(),
        webhooks: Default::default(),
    }
}

/// Opens (creating if empty) a vault in `data_dir` with the shipped policies.
pub fn open_vault(data_dir: &Path) -> (Arc<Vault>, Opened) {
    Vault::open(vault_options(data_dir, &policies_dir())).unwrap()
}

/// A vault over the in-memory `backend` (with its fault switches), a fresh
/// random KEK and the shipped policies.
pub fn memory_vault(backend: Arc<consentvault::store::memory::MemoryBackend>) -> Arc<Vault> {
    let rng = ring::rand::SystemRandom::new();
    let kek = zeroize::Zeroizing::new(consentvault::crypto::random_bytes(&rng).unwrap());
    let keys = consentvault::crypto::KeyRing::new(vec![(1, kek)]).unwrap();
    let policies = policies_load(&policies_dir()).unwrap();
    Vault::open_backend(consentvault::vault::VaultParts {
        data_dir: "memory".into(),
        keys,
        backend,
        policies,
        policy_dir: None,
        audit_origin: None,
        identity: Default::default(),
        key_config: Default::default(),
        webhooks: Default::default(),
    })
    .unwrap()
}

/// Through the library: a business registered for marketing and a customer
/// with an email connected to it: (customer, business, relationship).
pub async fn connected_customer(
    vault: &Vault,
) -> (consentvault::ids::SubjectId, consentvault::ids::BusinessId, consentvault::consent::Relationship) {
    use consentvault::audit::Actor;
    let business = vault
        .principals()
        .client_create(&Actor::system(), consentvault::auth::Role::Business, "Acme", vec!["marketing".to_owned()])
        .await
        .unwrap();
    let business: consentvault::ids::BusinessId = business.id.parse().unwrap();
    let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
    let email = serde_json::json!("ada@example.org");
    vault.subjects().data_put(&Actor::customer(subject), subject, "email", &email).await.unwrap();
    let relationship = vault.consent().relationship_create(subject, &business).await.unwrap();
    (subject, business, relationship)
}

/// Runs the `consentvault` binary with `args`, without the key or data
/// directory the environment may name, and waits for it.
pub fn binary<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> std::process::Output {
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|arg| arg.as_ref().to_owned()).collect();
    // A data directory whose vault lives on the suite's PostgreSQL names
    // its store too.
    let data_dir = args.windows(2).find(|pair| pair[0] == "--data-dir").map(|pair| PathBuf::from(&pair[1]));
    let named = args.iter().any(|arg| arg.to_string_lossy().starts_with("--store"));
    let store =
        data_dir.filter(|_| !named).and_then(|dir| postgres::store_url(&dir)).map(|url| format!("--store={url}"));
    Command::new(env!("CARGO_BIN_EXE_consentvault"))
        .args(args)
        .args(store)
        .env_remove("CONSENTVAULT_KEK")
        .env_remove("CONSENTVAULT_DATA_DIR")
        .env_remove("CONSENTVAULT_FORMAT")
        .output()
        .unwrap()
}

/// Runs `consentvault restore` of the backup `input` into `target` with the
/// shipped policies, and the key file `kek` if given.
pub fn restore(input: &Path, target: &Path, kek: Option<&Path>) -> std::process::Output {
    let mut args: Vec<std::ffi::OsString> = ["restore", "--in"].map(std::ffi::OsString::from).into();
    args.push(input.into());
    args.extend(["--data-dir".into(), target.into(), "--policies".into(), policies_dir().into()]);
    if let Some(kek) = kek {
        args.extend(["--kek-file".into(), kek.into()]);
    }
    binary(args)
}

/// Runs `consentvault audit verify` on a stopped vault with the shipped
/// policies; returns (success, stdout, stderr).
pub fn audit_verify(data_dir: &Path) -> (bool, String, String) {
    let (code, stdout, stderr) = audit_verify_code(data_dir);
    (code == Some(0), stdout, stderr)
}

/// [`audit_verify`], with the exit code (`docs/CLI.md`).
pub fn audit_verify_code(data_dir: &Path) -> (Option<i32>, String, String) {
    audit_command(data_dir, "verify")
}

/// Runs `consentvault audit replay` on a stopped vault with the shipped
/// policies: it verifies the log, then replays it; returns the exit code,
/// stdout and stderr.
pub fn audit_replay(data_dir: &Path) -> (Option<i32>, String, String) {
    audit_command(data_dir, "replay")
}

/// Runs `consentvault audit <command>` on a stopped vault.
fn audit_command(data_dir: &Path, command: &str) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_consentvault"))
        .args(["audit", command, "--data-dir"])
        .arg(data_dir)
        .arg("--policies")
        .arg(policies_dir())
        .args(postgres::store_url(data_dir).map(|url| format!("--store={url}")))
        .env_remove("CONSENTVAULT_KEK")
        .env_remove("CONSENTVAULT_FORMAT")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every regular file under `dir`, with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                // Not sockets (a running server's control socket).
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// xorshift64*: small, seeded, good enough to pick test timings and values.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// Seeded from `CONSENTVAULT_TEST_SEED` if set, else from the clock; the
    /// seed is printed so a failing run can be replayed.
    pub fn from_env() -> Self {
        Self::from_env_var("CONSENTVAULT_TEST_SEED")
    }

    /// Seeded from the environment variable `name` if set, else from the
    /// clock; the seed is printed so a failing run can be replayed.
    pub fn from_env_var(name: &str) -> Self {
        let seed = std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("test seed: {name}={seed}");
        Self::seeded(seed)
    }

    /// A generator with a fixed seed (for one of several workers).
    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `range`.
    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next_u64() % (range.end - range.start)
    }
}

/// Runs `tools/auditor-go` (an outside auditor's verifier on Go's
/// `sumdb/note` and `sumdb/tlog`) with `args`.
pub fn auditor_go(args: &[&str]) -> std::process::Output {
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/auditor-go/main.go");
    let cache = concat!(env!("CARGO_MANIFEST_DIR"), "/target/go-build-cache");
    Command::new("go")
        .arg("run")
        .arg(tool)
        .args(args)
        // Debian's golang-golang-x-mod-dev installs the module sources here.
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", cache)
        .env("GOFLAGS", "")
        .output()
        .expect("Go is installed (scripts/install-test-deps)")
}

/// The real `consentvault serve` process on 127.0.0.1 port 0.
pub struct ServerProcess {
    pub child: Child,
    pub base_url: String,
    pub stderr: Arc<Mutex<Vec<u8>>>,
}

impl ServerProcess {
    /// Starts `consentvault serve --data-dir DIR --listen 127.0.0.1:0` with
    /// the shipped policies, plus `extra` arguments and environment.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_wrapped(&[], data_dir, extra, env)
    }

    /// [`ServerProcess::start`] of a node on a shared store, returning as
    /// soon as it says it stands by (it may become active at once).
    pub fn start_standby(data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::start_inner(&[], data_dir, extra, &[], true)
    }

    /// [`ServerProcess::start`], with the binary run by `wrapper` (a
    /// command and its arguments, the binary's path and arguments after
    /// them), as `strace ... --` runs it.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        Self::start_inner(wrapper, data_dir, extra, env, false)
    }

    fn start_inner(
        wrapper: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        until_standby: bool,
    ) -> Result<Self, String> {
        let binary = env!("CARGO_BIN_EXE_consentvault");
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("CONSENTVAULT_LOG", "debug")
            .env_remove("CONSENTVAULT_KEK")
            .env_remove("CONSENTVAULT_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !extra.contains(&"--policies") {
            command.arg("--policies").arg(policies_dir());
        }
        if !extra.iter().any(|arg| arg.starts_with("--store")) {
            command.args(postgres::store_url(data_dir).map(|url| format!("--store={url}")));
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // A node on a shared store says it stands by first; the caller that
        // waits for a standby stops there.
        if line.starts_with("standing by on ") && !until_standby {
            line.clear();
            stdout.read_line(&mut line).unwrap();
        }
        let serving = line.trim().strip_prefix("listening on ").or_else(|| line.trim().strip_prefix("standing by on "));
        match serving {
            Some(url) => {
                let base_url = url.to_owned();
                // Keep draining stdout so the server never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
                Ok(Self { child, base_url, stderr })
            }
            None => {
                let status = child.wait().unwrap();
                // Give the stderr reader a moment to collect the last bytes.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let text = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
                Err(format!("server did not start ({status}): {text}"))
            }
        }
    }

    /// The server's stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGKILL (no chance to flush or clean up) and waits for the exit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real server, built in this process so a test can also act on its
/// vault through the library (for roles the HTTP API does not serve yet).
pub struct InProcessServer {
    pub vault: Arc<Vault>,
    pub base_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcessServer {
    /// Builds the application on 127.0.0.1 port 0 over `data_dir` and serves
    /// it on the current runtime.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with_config(data_dir, None).await
    }

    /// Like [`InProcessServer::start`], with a configuration file.
    pub async fn start_with_config(data_dir: &Path, config: Option<PathBuf>) -> Self {
        Self::start_with(data_dir, config, policies_dir()).await
    }

    /// Like [`InProcessServer::start`], with a configuration file and a
    /// policy directory.
    pub async fn start_with(data_dir: &Path, config: Option<PathBuf>, policies: PathBuf) -> Self {
        use consentvault::config::{ServeArgs, ServeConfig, VaultArgs};
        let args = ServeArgs {
            vault: VaultArgs {
                data_dir: Some(data_dir.to_owned()),
                policies: Some(policies),
                store: postgres::store_url(data_dir),
                config,
                ..VaultArgs::default()
            },
            listen: Some("127.0.0.1:0".to_owned()),
            ..ServeArgs::default()
        };
        let application =
            consentvault::server::Application::build(&ServeConfig::from_args(&args).unwrap()).await.unwrap();
        let vault = application.vault().clone();
        let base_url = format!("http://{}", application.address());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(application.run(async move {
            let _ = stopped.await;
        }));
        Self { vault, base_url, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving from where blocking is allowed but awaiting is not (a
    /// `Drop`): signals the server, then waits on a thread of its own for it
    /// to close the vault. The server runs on the test runtime's workers
    /// while the calling thread waits, so that runtime must be multi-thread.
    pub fn stop_blocking(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else { return Ok(()) };
        drop(self);
        let waiter = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|error| error.to_string())?;
            match runtime.block_on(task) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(format!("serving ended with an error: {error}")),
                Err(error) => Err(format!("the server task failed: {error}")),
            }
        });
        waiter.join().unwrap_or_else(|_| Err("waiting for the server panicked".to_owned()))
    }

    /// Stops serving and closes the vault.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A server in this process with its admin, one business and one auditor
/// signed in: what most HTTP tests start from.
pub struct World {
    pub server: InProcessServer,
    pub client: reqwest::Client,
    pub base: String,
    pub admin: String,
    pub business_id: String,
    pub business: String,
    pub auditor: String,
}

impl World {
    /// Starts the server over `data_dir` and registers the business and the
    /// auditor as the admin.
    pub async fn start(data_dir: &Path) -> Self {
        let server = InProcessServer::start(data_dir).await;
        let client = reqwest::Client::new();
        let base = server.base_url.clone();
        let admin = roles::admin_token(&client, &base, data_dir).await;
        let (business_id, business) = roles::client_principal(&client, &base, &admin, "businesses").await;
        let (_, auditor) = roles::client_principal(&client, &base, &admin, "auditors").await;
        Self { server, client, base, admin, business_id, business, auditor }
    }
}

/// Acting as the real roles over HTTP.
/// HMAC-SHA256 (RFC 2104), from the `sha2` crate, not the vault's ring.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Whether one of the space-separated `v1,` signatures of a Standard
/// Webhooks message (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`, body) is the one `secret` (`whsec_…`) makes.
pub fn standard_webhook_signed(id: &str, timestamp: &str, signatures: &str, body: &[u8], secret: &str) -> bool {
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let key = base64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = format!("v1,{}", base64.encode(hmac_sha256(&key, &signed)));
    signatures.split(' ').any(|signature| signature == expected)
}

pub mod roles {
    use serde_json::{Value, json};

    /// The password every test customer signs up with.
    pub const PASSWORD: &str = "correct horse battery staple";

    /// Sends a request, with a bearer token and a JSON body when given, and
    /// returns (status, body text), or the transport error (no answer: the
    /// server is gone or the connection broke).
    pub async fn try_send_text(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, String), reqwest::Error> {
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Like [`try_send_text`], with the body parsed as JSON (`Null` if it
    /// is not JSON).
    pub async fn try_send(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let (status, text) = try_send_text(client, method, url, token, body).await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// [`try_send`] for a server that must answer.
    pub async fn send(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        try_send(client, method, url, token, body).await.unwrap()
    }

    /// [`try_send_text`] for a server that must answer.
    pub async fn send_text(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        try_send_text(client, method, url, token, body).await.unwrap()
    }

    /// POSTs JSON and returns (status, body).
    pub async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
        send(client, reqwest::Method::POST, url, token, Some(body)).await
    }

    /// GETs with a token and returns (status, body).
    pub async fn get(client: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
        send(client, reqwest::Method::GET, url, Some(token), None).await
    }

    /// Connects the customer to a business and returns the relationship.
    pub async fn connect(client: &reqwest::Client, base: &str, customer: &str, business_id: &str) -> Value {
        let body = json!({"business_id": business_id});
        let (status, relationship) = post(client, format!("{base}/v1/me/relationships"), Some(customer), body).await;
        assert_eq!(status, 201, "{relationship}");
        relationship
    }

    /// A token for client credentials.
    pub async fn client_token(client: &reqwest::Client, base: &str, client_id: &str, secret: &str) -> String {
        let body = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});
        let (status, answer) = post(client, format!("{base}/v1/token"), None, body).await;
        assert_eq!(status, 200, "{answer}");
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// The admin's token, from the credentials file written on first start.
    pub async fn admin_token(client: &reqwest::Client, base: &str, data_dir: &std::path::Path) -> String {
        let text = std::fs::read_to_string(data_dir.join("admin-credentials.json")).unwrap();
        let credentials: Value = serde_json::from_str(&text).unwrap();
        client_token(
            client,
            base,
            credentials["client_id"].as_str().unwrap(),
            credentials["client_secret"].as_str().unwrap(),
        )
        .await
    }

    /// Registers a business (or auditor) and returns (id, client id, client
    /// secret).
    pub async fn client_register(
        client: &reqwest::Client,
        base: &str,
        admin: &str,
        kind: &str,
    ) -> (String, String, String) {
        let body = match kind {
            "businesses" => json!({"name": "Acme Pizza", "purposes": ["order-fulfilment", "marketing"]}),
            _ => json!({"name": "Internal audit"}),
        };
        let (status, created) = post(client, format!("{base}/v1/admin/{kind}"), Some(admin), body).await;
        assert_eq!(status, 201, "{created}");
        let id_name = if kind == "businesses" { "business_id" } else { "auditor_id" };
        let text = |name: &str| created[name].as_str().unwrap().to_owned();
        (text(id_name), text("client_id"), text("client_secret"))
    }

    /// Registers a business (or auditor) and returns (id, token).
    pub async fn client_principal(client: &reqwest::Client, base: &str, admin: &str, kind: &str) -> (String, String) {
        let (id, client_id, secret) = client_register(client, base, admin, kind).await;
        (id, client_token(client, base, &client_id, &secret).await)
    }

    /// `POST /v1/customers` with [`PASSWORD`]: (status, body) or the
    /// transport error.
    pub async fn sign_up(client: &reqwest::Client, base: &str) -> Result<(u16, Value), reqwest::Error> {
        let body = json!({"password": PASSWORD});
        try_send(client, reqwest::Method::POST, format!("{base}/v1/customers"), None, Some(body)).await
    }

    /// `POST /v1/token` for a customer with [`PASSWORD`]: (status, body) or
    /// the transport error.
    pub async fn sign_in(client: &reqwest::Client, base: &str, id: &str) -> Result<(u16, Value), reqwest::Error> {
        let body = json!({"grant_type": "password", "username": id, "password": PASSWORD});
        try_send(client, reqwest::Method::POST, format!("{base}/v1/token"), None, Some(body)).await
    }

    /// Signs a customer up and returns (customer id, token).
    pub async fn customer(client: &reqwest::Client, base: &str) -> (String, String) {
        let (status, created) = sign_up(client, base).await.unwrap();
        assert_eq!(status, 201, "{created}");
        let id = created["customer_id"].as_str().unwrap().to_owned();
        let (status, answer) = sign_in(client, base, &id).await.unwrap();
        assert_eq!(status, 200, "{answer}");
        (id, answer["access_token"].as_str().unwrap().to_owned())
    }
}
