//! The load benchmark: the real vault server against a bare axum handler,
//! side by side, on this machine, over HTTP.
//!
//! `cargo bench --bench load` provisions `CONSENTVAULT_BENCH_SUBJECTS`
//! subjects (default 10,000), each with an e-mail address, a relationship to
//! one business and a marketing grant for that field; then starts the
//! release `consentvault serve` on the directory as its own process, and a
//! bare axum server (this binary, re-run with `--bare-server`) that answers
//! the same path with a JSON body of the same shape and size. With
//! `CONSENTVAULT_BENCH_CONNECTIONS` concurrent connections (default 64) for
//! `CONSENTVAULT_BENCH_SECS` seconds per row (default 10) it drives:
//!
//! * authorized scoped reads as the business, with a vault-issued token:
//!   decided by the policy engine, audited and durably logged before the
//!   answer;
//! * the same requests against the bare handler (the headline ratio);
//! * data writes by 64 customers (`PUT /v1/me/data`);
//! * grant changes by those customers (create, then revoke).
//!
//! `CONSENTVAULT_BENCH_SCALE=10000,100000,1000000` instead measures, for each
//! subject count: provisioning time, start-up time of the server until
//! `/readyz` answers 200, scoped-read latency and throughput, and the
//! server's resident memory.
//!
//! Provisioning 10^6 subjects takes minutes. With
//! `CONSENTVAULT_BENCH_STORE=<dir>`, each provisioned store is kept in
//! `<dir>/subjects-<N>` (with what the load needs in `provisioned.json`)
//! and reused by later runs; the reads of each run add to its audit log.
//! In the scale mode, `CONSENTVAULT_BENCH_HOT=<n>` reads only the first n
//! subjects, to compare scales at the same working set.
//! `CONSENTVAULT_BENCH_CACHE_MIB` sets the served store's page cache (the
//! vault's `store_cache_bytes`; its default otherwise).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use consentvault::audit::Actor;
use consentvault::auth::Role;
use consentvault::vault::{Vault, VaultOptions, policies_load};
use serde_json::{Value, json};

/// The allocator the vault's binary uses, so the bare server (this binary)
/// is compared on equal terms; the load generator runs on it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "bench-password-correct-horse";
const WRITERS: usize = 64;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--bare-server") {
        bare_server();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let connections = env_number("CONSENTVAULT_BENCH_CONNECTIONS", 64) as usize;
    let duration = Duration::from_secs(env_number("CONSENTVAULT_BENCH_SECS", 10));
    match std::env::var("CONSENTVAULT_BENCH_SCALE") {
        Ok(list) => {
            let counts: Vec<usize> = list.split(',').map(|n| n.trim().parse().unwrap()).collect();
            runtime.block_on(scale(&counts, connections, duration));
        }
        Err(_) => {
            let subjects = env_number("CONSENTVAULT_BENCH_SUBJECTS", 10_000) as usize;
            if std::env::var("CONSENTVAULT_BENCH_GENERATOR").as_deref() == Ok("wrk") {
                let rounds = env_number("CONSENTVAULT_BENCH_ROUNDS", 2) as usize;
                runtime.block_on(load_wrk(subjects, connections, duration, rounds));
            } else {
                runtime.block_on(load(subjects, connections, duration));
            }
        }
    }
}

/// What provisioning left for the load: how the business and the writing
/// customers sign in, and whom the business can read.
#[derive(serde::Serialize, serde::Deserialize)]
struct Provisioned {
    business_client: (String, String),
    pairwise_ids: Vec<consentvault::ids::PairwiseId>,
    customers: Vec<String>,
    business_id: consentvault::ids::BusinessId,
}

fn vault_options(data_dir: &Path) -> VaultOptions {
    VaultOptions {
        data_dir: data_dir.to_owned(),
        key_source: None,
        policies: policies_load(&policies_dir()).unwrap(),
        policy_dir: Some(policies_dir()),
        production: false,
        store_cache_bytes: 256 * 1024 * 1024,
        store: Default::default(),
        audit_origin: None,
        identity: Default::default(),
        key_limits: Default::default(),
        webhooks: Default::default(),
    }
}

/// Creates `subjects` subjects with data, relationship and grant, and the
/// writing customers, through the library (64 at a time), then closes the
/// vault.
async fn provision(data_dir: &Path, subjects: usize) -> Provisioned {
    let (vault, _) = Vault::open(vault_options(data_dir)).unwrap();
    let business = vault
        .principals()
        .client_create(
            &Actor::system(),
            Role::Business,
            "Bench",
            vec!["marketing".to_owned(), "order-fulfilment".to_owned()],
        )
        .await
        .unwrap();
    let business_id: consentvault::ids::BusinessId = business.id.parse().unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (vault, next, business_id) = (Arc::clone(&vault), Arc::clone(&next), business_id.clone());
        tasks.spawn(async move {
            let mut pairwise = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= subjects {
                    return pairwise;
                }
                let subject = vault.subjects().subject_create(&Actor::system()).await.unwrap();
                let email = json!(format!("subject-{index:07}@example.org"));
                vault.subjects().data_put(&Actor::customer(subject), subject, "email", &email).await.unwrap();
                let relationship = vault.consent().relationship_create(subject, &business_id).await.unwrap();
                vault
                    .consent()
                    .grant_create(subject, &business_id, vec!["marketing".to_owned()], vec!["email".to_owned()], 90)
                    .await
                    .unwrap();
                pairwise.push(relationship.pairwise_id);
            }
        });
    }
    let mut pairwise_ids = Vec::with_capacity(subjects);
    while let Some(batch) = tasks.join_next().await {
        pairwise_ids.extend(batch.unwrap());
    }
    let mut customers = Vec::new();
    for _ in 0..WRITERS {
        let customer = vault.principals().customer_signup(PASSWORD).await.unwrap();
        vault.consent().relationship_create(customer, &business_id).await.unwrap();
        customers.push(customer.to_string());
    }
    vault.close().unwrap();
    Provisioned { business_client: (business.client_id, business.client_secret), pairwise_ids, customers, business_id }
}

/// A provisioned store: its data directory (removed at the end of the run
/// unless kept under `CONSENTVAULT_BENCH_STORE`), what the load needs, and
/// how long provisioning took (`None` when a kept store was reused).
struct Store {
    _temporary: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    provisioned: Provisioned,
    provisioning: Option<Duration>,
}

async fn store(subjects: usize) -> Store {
    let (temporary, root) = match std::env::var_os("CONSENTVAULT_BENCH_STORE") {
        Some(kept) => (None, PathBuf::from(kept).join(format!("subjects-{subjects}"))),
        None => {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_owned();
            (Some(dir), root)
        }
    };
    let data_dir = root.join("data");
    let manifest = root.join("provisioned.json");
    if let Ok(text) = std::fs::read(&manifest) {
        let provisioned = serde_json::from_slice(&text).unwrap();
        return Store { _temporary: temporary, data_dir, provisioned, provisioning: None };
    }
    // A directory without its manifest is an interrupted provisioning.
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&root).unwrap();
    let started = Instant::now();
    let provisioned = provision(&data_dir, subjects).await;
    let provisioning = Some(started.elapsed());
    std::fs::write(&manifest, serde_json::to_vec(&provisioned).unwrap()).unwrap();
    Store { _temporary: temporary, data_dir, provisioned, provisioning }
}

impl Store {
    fn provisioning_text(&self) -> String {
        self.provisioning.map_or_else(|| "reused".to_owned(), |took| format!("{:.1} s", took.as_secs_f64()))
    }
}

/// A server process and the URL it listens on.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `command` with stdout piped (for its address) and waits until
    /// it listens.
    fn spawn(mut command: Command) -> Self {
        let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        Self::wait_listening(child)
    }

    /// Reads the `listening on http://...` line the server prints.
    fn wait_listening(mut child: Child) -> Self {
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("the server exited before listening").unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    }

    fn stop(mut self) {
        // SIGTERM for a graceful shutdown (the last checkpoint is kept).
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn spawn_vault(data_dir: &Path) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consentvault"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--policies")
        .arg(policies_dir())
        .arg("--listen")
        .arg("127.0.0.1:0")
        // One business makes every read here: lift the per-principal rate.
        .arg("--principal-requests-per-sec")
        .arg("1000000")
        .env("CONSENTVAULT_LOG", "warn");
    // The store's page cache: the vault's default unless the run sets it.
    if let Ok(mib) = std::env::var("CONSENTVAULT_BENCH_CACHE_MIB") {
        let config = data_dir.with_file_name("bench-config.toml");
        let bytes = mib.parse::<u64>().expect("CONSENTVAULT_BENCH_CACHE_MIB is a number") * 1024 * 1024;
        std::fs::write(&config, format!("store_cache_bytes = {bytes}\n")).unwrap();
        command.arg("--config").arg(config);
    }
    Server::spawn(command)
}

fn spawn_bare() -> Server {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg("--bare-server");
    Server::spawn(command)
}

/// The bare axum server: the scoped-read path answered with a body of the
/// same shape and size as the vault's, with no decision, audit or storage.
fn bare_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = axum::Router::new().route(
            "/v1/subjects/{pairwise_id}/data",
            axum::routing::get(move |axum::extract::Path(pairwise_id): axum::extract::Path<String>| {
                let counter = Arc::clone(&counter);
                async move {
                    let index = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut response = axum::Json(json!({
                        "data": {"email": format!("subject-{:07}@example.org", index % 10_000_000)},
                        "withheld": [],
                        "grant_ids": [pairwise_id],
                        "audit_index": index,
                    }))
                    .into_response();
                    response
                        .headers_mut()
                        .insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}

async fn token(client: &reqwest::Client, base: &str, body: Value) -> String {
    let answer: Value = client.post(format!("{base}/v1/token")).json(&body).send().await.unwrap().json().await.unwrap();
    answer["access_token"].as_str().expect("a token").to_owned()
}

/// The provisioned business's token.
async fn business_token(client: &reqwest::Client, base: &str, provisioned: &Provisioned) -> String {
    let (client_id, client_secret) = &provisioned.business_client;
    let body = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret});
    token(client, base, body).await
}

/// Latencies (µs) and failures of one row.
struct Measured {
    elapsed: Duration,
    latencies_us: Vec<u32>,
    failures: u64,
}

impl Measured {
    fn ops_per_sec(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    /// The row of a workload, with the CPU time the server and the load
    /// generator used per operation while it ran.
    fn row(&self, name: &str, cpu: Cpu) -> String {
        let (server_micros, generator_micros) = cpu.per_op_micros(self);
        format!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.1} µs | {:.1} µs |",
            self.ops_per_sec(),
            self.percentile_ms(0.5),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.failures,
            server_micros,
            generator_micros,
        )
    }
}

/// CPU time (user and system) used by a server process and by this
/// process, the load generator.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    server_secs: f64,
    generator_secs: f64,
}

impl Cpu {
    /// CPU time used so far by `server` and by this process.
    fn now(server: &Server) -> Self {
        Self { server_secs: cpu_secs(&server.child.id().to_string()), generator_secs: cpu_secs("self") }
    }

    /// The server's and the generator's time spread over the operations
    /// `measured` counted, in µs each.
    fn per_op_micros(self, measured: &Measured) -> (f64, f64) {
        let ops = measured.latencies_us.len().max(1) as f64;
        (self.server_secs * 1e6 / ops, self.generator_secs * 1e6 / ops)
    }

    /// What was used between `self` and now.
    fn since(self, server: &Server) -> Self {
        let now = Self::now(server);
        Self {
            server_secs: now.server_secs - self.server_secs,
            generator_secs: now.generator_secs - self.generator_secs,
        }
    }
}

/// User and system CPU time of process `pid` (or `self`), in seconds, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s: Linux
/// reports them in `USER_HZ`, which its ABI fixes at 100; the benchmark is
/// Linux-only).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields[index - 3].parse::<f64>().unwrap();
    (ticks(14) + ticks(15)) / 100.0
}

/// One round of a workload for (client, task, sequence): its requests,
/// each timed, with whether it succeeded.
type Round = Arc<
    dyn Fn(reqwest::Client, usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Vec<(u32, bool)>> + Send>>
        + Send
        + Sync,
>;

/// Sends one request and times it (µs), reading the whole body.
async fn timed(request: reqwest::RequestBuilder) -> ((u32, bool), Option<Value>) {
    let sent = Instant::now();
    let (ok, body) = match request.send().await {
        Ok(response) => {
            let ok = response.status().is_success();
            (ok, response.bytes().await.ok())
        }
        Err(_) => (false, None),
    };
    let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    ((micros, ok), body.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Runs `connections` tasks, each running rounds one after another for
/// `duration` after half a second of warm-up, and measures every request.
async fn drive(connections: usize, duration: Duration, round: Round) -> Measured {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let started = Instant::now() + Duration::from_millis(500);
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..connections {
        let (client, round) = (client.clone(), Arc::clone(&round));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let warm = Instant::now() < started;
                for (micros, ok) in round(client.clone(), task, sequence).await {
                    if !warm {
                        latencies.push(micros);
                        failures += u64::from(!ok);
                    }
                }
            }
            (latencies, failures)
        });
    }
    let mut measured = Measured { elapsed: duration, latencies_us: Vec::new(), failures: 0 };
    while let Some(outcome) = tasks.join_next().await {
        let (latencies, failures) = outcome.unwrap();
        measured.latencies_us.extend(latencies);
        measured.failures += failures;
    }
    measured.latencies_us.sort_unstable();
    measured
}

/// A cheap per-task pseudo-random index (xorshift), so every task reads a
/// spread of subjects without sharing state.
fn spread(task: usize, sequence: u64, len: usize) -> usize {
    let mut x = (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sequence.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x % len as u64) as usize
}

fn read_workload(base: &str, token: &str, pairwise_ids: &Arc<Vec<consentvault::ids::PairwiseId>>) -> Round {
    let (base, token, pairwise_ids) = (base.to_owned(), token.to_owned(), Arc::clone(pairwise_ids));
    Arc::new(move |client, task, sequence| {
        let pairwise = &pairwise_ids[spread(task, sequence, pairwise_ids.len())];
        let request = client
            .get(format!("{base}/v1/subjects/{pairwise}/data?purpose=marketing&fields=email"))
            .bearer_auth(&token);
        Box::pin(async move { vec![timed(request).await.0] })
    })
}

const TABLE_HEAD: &str = "| workload | ops/s | p50 | p99 | p99.9 | failed | server CPU per op | load generator CPU per op |\n|---|---|---|---|---|---|---|---|";

/// The provisioned store, the vault serving it and the bare handler, a
/// client, and the business's token.
struct Running {
    store: Store,
    vault: Server,
    bare: Server,
    client: reqwest::Client,
    business: String,
}

/// Provisions (or reuses) `subjects` subjects and starts both servers.
async fn running(subjects: usize) -> Running {
    let store = store(subjects).await;
    println!("provisioned {subjects} subjects: {}", store.provisioning_text());
    let vault = spawn_vault(&store.data_dir);
    let bare = spawn_bare();
    let client = reqwest::Client::new();
    let business = business_token(&client, &vault.base, &store.provisioned).await;
    Running { store, vault, bare, client, business }
}

async fn load(subjects: usize, connections: usize, duration: Duration) {
    let Running { store, vault, bare, client, business } = running(subjects).await;
    let provisioned = &store.provisioned;
    let mut customers = Vec::new();
    for customer in &provisioned.customers {
        let body = json!({"grant_type": "password", "username": customer, "password": PASSWORD});
        customers.push(token(&client, &vault.base, body).await);
    }
    let customers = Arc::new(customers);
    let pairwise_ids = Arc::new(provisioned.pairwise_ids.clone());

    println!("\n{connections} connections, {} s per row, {subjects} subjects\n", duration.as_secs());
    println!("{TABLE_HEAD}");
    let cpu = Cpu::now(&bare);
    let bare_reads = drive(connections, duration, read_workload(&bare.base, &business, &pairwise_ids)).await;
    let bare_reads_cpu = cpu.since(&bare);
    println!("{}", bare_reads.row("bare axum handler, same path and body shape", bare_reads_cpu));
    let before = CommitCounters::scrape(&client, &vault.base).await;
    let cpu = Cpu::now(&vault);
    let vault_reads = drive(connections, duration, read_workload(&vault.base, &business, &pairwise_ids)).await;
    let vault_reads_cpu = cpu.since(&vault);
    let reads_commit = before.per_transaction(&CommitCounters::scrape(&client, &vault.base).await);
    println!("{}", vault_reads.row("vault scoped read (decided, audited, durable)", vault_reads_cpu));
    let cpu = Cpu::now(&vault);
    let writes = {
        let (base, customers) = (vault.base.clone(), Arc::clone(&customers));
        let round: Round = Arc::new(move |client, task, sequence| {
            let request = client
                .put(format!("{base}/v1/me/data"))
                .bearer_auth(&customers[task % customers.len()])
                .json(&json!({"email": format!("writer-{task}-{sequence}@example.org")}));
            Box::pin(async move { vec![timed(request).await.0] })
        });
        drive(connections, duration, round).await
    };
    println!("{}", writes.row("vault data write (PUT /v1/me/data)", cpu.since(&vault)));
    let cpu = Cpu::now(&vault);
    let grants = {
        let (base, customers, business_id) =
            (vault.base.clone(), Arc::clone(&customers), provisioned.business_id.clone());
        let round: Round = Arc::new(move |client, task, _| {
            let (base, token, business_id) =
                (base.clone(), customers[task % customers.len()].clone(), business_id.clone());
            Box::pin(async move {
                // Create a grant, then revoke it: two durable, audited changes.
                let body = json!({"business_id": business_id, "purposes": ["marketing"], "fields": ["email"], "duration_days": 30});
                let (created, grant) =
                    timed(client.post(format!("{base}/v1/me/grants")).bearer_auth(&token).json(&body)).await;
                let Some(grant_id) = grant.as_ref().and_then(|grant| grant["grant_id"].as_str()) else {
                    return vec![created];
                };
                let (revoked, _) =
                    timed(client.delete(format!("{base}/v1/me/grants/{grant_id}")).bearer_auth(&token)).await;
                vec![created, revoked]
            })
        });
        drive(connections, duration, round).await
    };
    println!("{}", grants.row("vault grant change (create, then revoke)", cpu.since(&vault)));
    println!(
        "\nratio vault scoped reads / bare axum: {:.2} (throughput); p99 {:.2} ms at {connections} connections; server RSS {} MiB",
        vault_reads.ops_per_sec() / bare_reads.ops_per_sec(),
        vault_reads.percentile_ms(0.99),
        vault.rss_kib() / 1024
    );
    println!("scoped reads: {reads_commit}");
    // With both cores busy, throughput is the inverse of the CPU time a
    // request costs the machine (server and generator).
    let per_op = |measured: &Measured, cpu: Cpu| {
        let (server_micros, generator_micros) = cpu.per_op_micros(measured);
        server_micros + generator_micros
    };
    let (bare_per_op, vault_per_op) = (per_op(&bare_reads, bare_reads_cpu), per_op(&vault_reads, vault_reads_cpu));
    println!(
        "CPU per read, server and generator: bare {bare_per_op:.1} µs, vault {vault_per_op:.1} µs; \
         on a machine both saturate, the ratio is bounded by {:.2}",
        bare_per_op / vault_per_op
    );
    vault.stop();
    bare.stop();
}

/// One wrk run: reads per second and latency percentiles (µs).
struct WrkRun {
    reads_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    failed: u64,
}

/// The wrk script for scoped reads with `token`: one hot subject, or each
/// request a subject drawn at random from `pairwise_ids`. Its `done` prints
/// one line the run parses.
fn wrk_script(token: &str, pairwise_ids: &[consentvault::ids::PairwiseId]) -> String {
    let ids: Vec<String> = pairwise_ids.iter().map(|id| format!("\"{}\"", id.as_str())).collect();
    format!(
        r#"local ids = {{{ids}}}
wrk.headers["Authorization"] = "Bearer {token}"
function setup(thread) thread:set("seed", math.random(1, 1000000)) end
function init(args) math.randomseed(seed) end
request = function()
  local id = ids[math.random(#ids)]
  return wrk.format("GET", "/v1/subjects/" .. id .. "/data?purpose=marketing&fields=email")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests=%d duration_us=%d p50_us=%d p99_us=%d failed=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#,
        ids = ids.join(",")
    )
}

/// Runs wrk against `base` with `script` for `duration`.
fn wrk_run(base: &str, script: &Path, connections: usize, duration: Duration) -> WrkRun {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs()), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(base)
        .output()
        .expect("wrk is installed (scripts/loadtest installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|line| line.starts_with("WRK ")).unwrap_or_else(|| panic!("wrk said: {text}"));
    let value = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    WrkRun {
        reads_per_sec: value("requests") / (value("duration_us") / 1e6).max(1e-9),
        p50_us: value("p50_us"),
        p99_us: value("p99_us"),
        failed: value("failed") as u64,
    }
}

/// Scoped reads driven by wrk, a generator that costs far less CPU per
/// request than the servers: the vault and the bare handler in alternating
/// rounds (bare, vault, bare, vault, ...), for one hot subject and for
/// subjects drawn at random from all provisioned.
async fn load_wrk(subjects: usize, connections: usize, duration: Duration, rounds: usize) {
    let Running { store, vault, bare, client, business } = running(subjects).await;
    let provisioned = &store.provisioned;
    let scripts = tempfile::tempdir().unwrap();
    let hot = scripts.path().join("hot.lua");
    std::fs::write(&hot, wrk_script(&business, &provisioned.pairwise_ids[..1])).unwrap();
    let spread = scripts.path().join("random.lua");
    std::fs::write(&spread, wrk_script(&business, &provisioned.pairwise_ids)).unwrap();
    // Warm both servers up before the first round.
    wrk_run(&bare.base, &hot, connections, Duration::from_secs(1));
    wrk_run(&vault.base, &hot, connections, Duration::from_secs(1));

    println!("\nwrk, 2 threads, {connections} connections, {} s per round, {subjects} subjects\n", duration.as_secs());
    println!(
        "| workload | server | round | reads/s | p50 | p99 | failed | commit thread per read (run / apply / write out) | syncer per read |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (workload, script) in [("one hot subject", &hot), (&*format!("{subjects} subjects at random"), &spread)] {
        let (mut bare_total, mut vault_total, mut vault_p99) = (0.0, 0.0, 0.0f64);
        for round in 1..=rounds {
            let run = wrk_run(&bare.base, script, connections, duration);
            bare_total += run.reads_per_sec;
            println!(
                "| {workload} | bare axum | {round} | {:.0} | {:.2} ms | {:.2} ms | {} | | |",
                run.reads_per_sec,
                run.p50_us / 1e3,
                run.p99_us / 1e3,
                run.failed
            );
            let before = CommitCounters::scrape(&client, &vault.base).await;
            let run = wrk_run(&vault.base, script, connections, duration);
            let after = CommitCounters::scrape(&client, &vault.base).await;
            vault_total += run.reads_per_sec;
            vault_p99 = vault_p99.max(run.p99_us);
            let (run_us, apply_us, write_us, sync_us) = before.per_read_micros(&after);
            println!(
                "| {workload} | vault | {round} | {:.0} | {:.2} ms | {:.2} ms | {} | {run_us:.1} / {apply_us:.1} / {write_us:.1} µs ({:.1} µs) | {sync_us:.1} µs |",
                run.reads_per_sec,
                run.p50_us / 1e3,
                run.p99_us / 1e3,
                run.failed,
                run_us + apply_us + write_us
            );
        }
        println!(
            "\n{workload}: vault / bare = {:.2} (mean of {rounds} alternating rounds); worst vault p99 {:.2} ms\n",
            vault_total / bare_total.max(1e-9),
            vault_p99 / 1e3
        );
    }
    vault.stop();
    bare.stop();
}

async fn scale(counts: &[usize], connections: usize, duration: Duration) {
    println!(
        "| subjects | provisioning | start-up to ready | reads/s | p50 | p99 | log verified after | reads/s | p50 | p99 | server RSS |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &subjects in counts {
        let store = store(subjects).await;
        let client = reqwest::Client::new();
        let started = Instant::now();
        let vault = spawn_vault(&store.data_dir);
        while !vault_answers(&client, &vault.base, "/readyz", |text| text.contains("\"ready\"")).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start_up = started.elapsed();
        let business = business_token(&client, &vault.base, &store.provisioned).await;
        // `CONSENTVAULT_BENCH_HOT=<n>` reads only n of the subjects: the
        // same working set at every scale.
        let hot = env_number("CONSENTVAULT_BENCH_HOT", subjects as u64) as usize;
        let pairwise_ids = Arc::new(store.provisioned.pairwise_ids[..hot.min(subjects)].to_vec());
        // Right after start, while the whole log is recomputed in the
        // background; then again once it has been verified.
        let early = drive(connections, duration, read_workload(&vault.base, &business, &pairwise_ids)).await;
        while !vault_answers(&client, &vault.base, "/metrics", |text| {
            text.contains("consentvault_audit_log_verified 1")
        })
        .await
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let verified = started.elapsed();
        let before = CommitCounters::scrape(&client, &vault.base).await;
        let settled = drive(connections, duration, read_workload(&vault.base, &business, &pairwise_ids)).await;
        let settled_commit = before.per_transaction(&CommitCounters::scrape(&client, &vault.base).await);
        println!(
            "| {subjects} | {} | {:.2} s | {:.0} | {:.2} ms | {:.2} ms | {:.1} s | {:.0} | {:.2} ms | {:.2} ms | {} MiB |",
            store.provisioning_text(),
            start_up.as_secs_f64(),
            early.ops_per_sec(),
            early.percentile_ms(0.5),
            early.percentile_ms(0.99),
            verified.as_secs_f64(),
            settled.ops_per_sec(),
            settled.percentile_ms(0.5),
            settled.percentile_ms(0.99),
            vault.rss_kib() / 1024
        );
        println!("  {subjects} subjects, reads once verified: {settled_commit}");
        assert_eq!(early.failures + settled.failures, 0, "reads failed");
        vault.stop();
    }
}

/// The commit path's counters from `/metrics`.
#[derive(Clone, Copy, Default)]
struct CommitCounters {
    transactions: f64,
    batches: f64,
    execute_secs: f64,
    apply_secs: f64,
    flush_secs: f64,
    syncs: f64,
    sync_secs: f64,
    lookahead_reads: f64,
    lookahead_secs: f64,
    ahead_kept: f64,
    ahead_redone: f64,
}

impl CommitCounters {
    async fn scrape(client: &reqwest::Client, base: &str) -> Self {
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            transactions: value("consentvault_commit_transactions_total"),
            batches: value("consentvault_commit_batches_total"),
            execute_secs: value("consentvault_commit_execute_seconds_total"),
            apply_secs: value("consentvault_commit_apply_seconds_total"),
            flush_secs: value("consentvault_commit_flush_seconds_total"),
            syncs: value("consentvault_commit_syncs_total"),
            sync_secs: value("consentvault_commit_sync_seconds_total"),
            lookahead_reads: value("consentvault_commit_lookahead_reads_total"),
            lookahead_secs: value("consentvault_commit_lookahead_seconds_total"),
            ahead_kept: value("consentvault_read_ahead_kept_total"),
            ahead_redone: value("consentvault_read_ahead_redone_total"),
        }
    }

    /// The commit thread's time per transaction between `self` and `later`
    /// (running, applying, writing out) and the syncer's, in µs.
    fn per_read_micros(&self, later: &Self) -> (f64, f64, f64, f64) {
        let transactions = (later.transactions - self.transactions).max(1.0);
        let micros = |from: f64, to: f64| (to - from) * 1e6 / transactions;
        (
            micros(self.execute_secs, later.execute_secs),
            micros(self.apply_secs, later.apply_secs),
            micros(self.flush_secs, later.flush_secs),
            micros(self.sync_secs, later.sync_secs),
        )
    }

    /// What the commit thread spent per transaction between `self` and
    /// `later`: running it, applying, flushing (µs), and transactions per
    /// batch; and where the scoped reads were decided.
    fn per_transaction(&self, later: &Self) -> String {
        let transactions = (later.transactions - self.transactions).max(1.0);
        let micros = |from: f64, to: f64| (to - from) * 1e6 / transactions;
        let at_commit = later.lookahead_reads - self.lookahead_reads;
        format!(
            "commit thread per transaction: run {:.1} µs, apply {:.1} µs, write out {:.1} µs; {:.1} transactions per batch; \
             syncer: {:.1} µs per transaction, {:.0} µs per sync, {:.1} transactions per sync; \
             reads decided on the commit thread: {at_commit} ({:.1} µs each), ahead: {} kept, {} redone",
            micros(self.execute_secs, later.execute_secs),
            micros(self.apply_secs, later.apply_secs),
            micros(self.flush_secs, later.flush_secs),
            transactions / (later.batches - self.batches).max(1.0),
            micros(self.sync_secs, later.sync_secs),
            (later.sync_secs - self.sync_secs) * 1e6 / (later.syncs - self.syncs).max(1.0),
            transactions / (later.syncs - self.syncs).max(1.0),
            (later.lookahead_secs - self.lookahead_secs) * 1e6 / at_commit.max(1.0),
            later.ahead_kept - self.ahead_kept,
            later.ahead_redone - self.ahead_redone,
        )
    }
}

/// Whether `path` answers 200 with a body `accepts` holds for.
async fn vault_answers(client: &reqwest::Client, base: &str, path: &str, accepts: impl Fn(&str) -> bool) -> bool {
    match client.get(format!("{base}{path}")).send().await {
        Ok(response) if response.status().is_success() => response.text().await.is_ok_and(|text| accepts(&text)),
        _ => false,
    }
}
