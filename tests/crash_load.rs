//! Guarantees 2, 3, 4 and 6 end to end, under load: the real server is
//! killed with SIGKILL while 16 clients work on it, and everything it
//! acknowledged must be there after the restart.
//!
//! One data directory is kept across cycles. Each cycle runs `consentvault
//! serve` on port 0 and lets 16 concurrent clients work over HTTP for a
//! random while (customers write their data with values never written
//! before, create and revoke grants and erase themselves, new customers sign
//! up, the business reads; a watcher keeps every checkpoint the server hands
//! out), then kills the server with SIGKILL, restarts it on the same
//! directory and checks:
//!
//! 1. every acknowledged write is there: each field holds its last
//!    acknowledged value or the value of the one write that was in flight at
//!    the kill (each customer is acted for by one client, one request at a
//!    time, so at most one is), and an in-flight merge landed whole or not at
//!    all;
//! 2. no erased subject comes back: its token gets 401, its password is
//!    refused, the business's read of its pairwise id gets 403, and
//!    `subject.erased` is at the receipt's index;
//! 3. every business read that got a 2xx has its `data.read` event at the
//!    index it was given, naming the same subject, purpose, fields and grants;
//! 4. acknowledged grants are still active and acknowledged revocations still
//!    revoked, and the business's read releases exactly what the live grants
//!    allow (403 without one);
//! 5. the log is consistent with every checkpoint handed out before any
//!    crash: an RFC 9162 consistency proof from each to the new checkpoint
//!    verifies (`common::tlog`), and the new one is at least as large.
//!
//! While the load runs, a business read that started after an acknowledged
//! erasure or revocation must not release data through it. After the last
//! cycle the server is stopped and `consentvault audit verify` must accept
//! the directory.
//!
//! `CONSENTVAULT_CRASH_LOAD_CYCLES` sets the number of cycles (default 30).
//! The seed of the kill moments and of the clients' choices is printed;
//! `CONSENTVAULT_CRASH_SEED` replays it (the interleaving of the clients is
//! up to the scheduler).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tlog::{self, Hash};
use common::{ServerProcess, TestRng, roles};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// Concurrent clients while the load runs.
const CLIENTS: usize = 16;
/// Kill cycles unless `CONSENTVAULT_CRASH_LOAD_CYCLES` says otherwise.
const CYCLES_DEFAULT: usize = 30;
/// How long the load runs before the kill, drawn per cycle.
const LOAD_MILLIS: std::ops::Range<u64> = 150..600;
/// How often the watcher fetches the checkpoint.
const CHECKPOINT_POLL: Duration = Duration::from_millis(25);
/// A client signs up more customers only while it acts for fewer.
const CUSTOMERS_PER_CLIENT_MAX: usize = 3;
/// Tokens live 15 minutes; a long run signs in again well before.
const TOKEN_FRESH: Duration = Duration::from_secs(600);
/// The fields the customers write and grant, and the business reads.
const FIELDS: [&str; 3] = ["given_name", "family_name", "loyalty_points"];
const PURPOSE: &str = "marketing";

/// A customer's request whose answer never came: the server was killed
/// while it was in flight, so it may or may not have landed.
#[derive(Debug, Clone, PartialEq)]
enum InFlight {
    Write(Map<String, Value>),
    GrantCreate(Vec<String>),
    GrantRevoke(String),
    Erase,
    /// Sign-in or connecting: the check after the restart looks.
    Setup,
}

/// A grant as the server acknowledged it.
#[derive(Debug, Clone)]
struct Grant {
    fields: Vec<String>,
    revoked: bool,
}

/// What the server acknowledged about one live customer.
#[derive(Debug, Clone)]
struct Customer {
    id: String,
    token: Option<(String, Instant)>,
    pairwise: Option<String>,
    /// The last acknowledged value of each field.
    data: Map<String, Value>,
    grants: BTreeMap<String, Grant>,
    in_flight: Option<InFlight>,
}

impl Customer {
    fn new(id: String) -> Self {
        Self { id, token: None, pairwise: None, data: Map::new(), grants: BTreeMap::new(), in_flight: None }
    }

    fn token(&self) -> &str {
        self.token.as_ref().map(|(token, _)| token.as_str()).unwrap_or_default()
    }

    fn ready(&self) -> bool {
        self.token.is_some() && self.pairwise.is_some() && self.in_flight.is_none()
    }
}

/// An erased customer and its receipt.
#[derive(Debug, Clone)]
struct Erased {
    id: String,
    token: String,
    pairwise: Option<String>,
    /// The index of `subject.erased`.
    index: u64,
    /// Whether the event and the refused password were checked after a
    /// restart (once is enough: later checkpoints cover the event).
    checked_once: bool,
}

/// A business read that got a 2xx.
#[derive(Debug, Clone)]
struct Read {
    subject: String,
    audit_index: u64,
    released: Vec<String>,
    grant_ids: Vec<String>,
}

impl Read {
    /// The read of all of [`FIELDS`] answered with `answer`.
    fn from_answer(subject: &str, answer: &Value) -> Option<Self> {
        let withheld: Vec<&str> = answer["withheld"].as_array()?.iter().filter_map(|w| w["field"].as_str()).collect();
        Some(Self {
            subject: subject.to_owned(),
            audit_index: answer["audit_index"].as_u64()?,
            released: FIELDS.iter().filter(|f| !withheld.contains(f)).map(|f| (*f).to_owned()).collect(),
            grant_ids: strings(&answer["grant_ids"]),
        })
    }
}

/// The customers one client acts for, kept across cycles.
#[derive(Debug, Default)]
struct ClientState {
    customers: Vec<Customer>,
    erased: Vec<Erased>,
}

/// How a sign-up went.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SignUp {
    /// Signed up (and, unless a problem was recorded, signed in and
    /// connected).
    Done,
    /// Refused by the sign-up limit of the client's address.
    Refused,
    /// An answer did not come: the server is gone.
    Gone,
}

/// What the harness counts, for the summary.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    writes: usize,
    reads: usize,
    reads_denied: usize,
    grants: usize,
    revocations: usize,
    erasures: usize,
    sign_ups: usize,
    in_flight_at_kill: usize,
    in_flight_landed: usize,
}

/// Shared by the clients, across cycles.
#[derive(Debug, Default)]
struct Shared {
    /// Every customer the business can name: (subject, pairwise id), erased
    /// ones included (their reads must be refused).
    targets: Vec<(String, String)>,
    /// When an erasure was acknowledged, by subject.
    erased_at: HashMap<String, Instant>,
    /// When a revocation was acknowledged, by grant.
    revoked_at: HashMap<String, Instant>,
    /// Reads whose audit event is still to be checked.
    reads: Vec<Read>,
    /// Checkpoints handed out since the last check, as served.
    checkpoints: Vec<String>,
    /// Every checkpoint handed out so far, opened: root by size.
    checkpoint_roots: BTreeMap<u64, Hash>,
    problems: Vec<String>,
    counts: Counts,
}

/// One client's view of the running server.
#[derive(Debug, Clone)]
struct Ctx {
    http: reqwest::Client,
    base: String,
    business_id: String,
    business: String,
    auditor: String,
    cycle: usize,
    shared: Arc<Mutex<Shared>>,
}

impl Ctx {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        roles::try_send(&self.http, method, format!("{}{path}", self.base), token, body).await
    }

    /// The business reads all of [`FIELDS`] for [`PURPOSE`].
    async fn business_read(&self, pairwise: &str) -> Result<(u16, Value), reqwest::Error> {
        let path = format!("/v1/subjects/{pairwise}/data?purpose={PURPOSE}&fields={}", FIELDS.join(","));
        self.send(Method::GET, &path, Some(&self.business), None).await
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap()
    }

    fn problem(&self, text: String) {
        self.shared().problems.push(format!("cycle {}: {text}", self.cycle));
    }

    fn count(&self, update: impl FnOnce(&mut Counts)) {
        update(&mut self.shared().counts);
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A random non-empty subset of [`FIELDS`], in catalogue order.
fn some_fields(rng: &mut TestRng) -> Vec<String> {
    let mask = rng.range(1..(1 << FIELDS.len()));
    FIELDS.iter().enumerate().filter(|(bit, _)| mask & (1 << bit) != 0).map(|(_, f)| (*f).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill_under_concurrent_load() {
    let started = Instant::now();
    let cycles: usize =
        std::env::var("CONSENTVAULT_CRASH_LOAD_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(CYCLES_DEFAULT);
    let mut rng = TestRng::from_env_var("CONSENTVAULT_CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let start = |cycle: usize| {
        ServerProcess::start(&data_dir, &[], &[("CONSENTVAULT_LOG", "warn")])
            .unwrap_or_else(|error| panic!("cycle {cycle}: the server did not start: {error}"))
    };
    let mut server = start(0);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    // Each client speaks from its own loopback address, as separate clients
    // would: the sign-up and sign-in limits are per address.
    let clients: Vec<reqwest::Client> = (0..CLIENTS)
        .map(|i| {
            let address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
            assert!(
                std::net::TcpListener::bind((address, 0)).is_ok(),
                "the clients need the loopback addresses 127.0.0.2-17 (all of 127.0.0.0/8 is loopback on Linux)"
            );
            reqwest::Client::builder().local_address(address).timeout(Duration::from_secs(60)).build().unwrap()
        })
        .collect();
    let admin = roles::admin_token(&http, &server.base_url, &data_dir).await;
    let (business_id, business_client, business_secret) =
        roles::client_register(&http, &server.base_url, &admin, "businesses").await;
    let (_, auditor_client, auditor_secret) = roles::client_register(&http, &server.base_url, &admin, "auditors").await;
    let verifier_key = text(&http, &format!("{}/v1/audit/public-key", server.base_url)).await;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let context = |base: &str, cycle: usize, http: &reqwest::Client| {
        let (business_client, business_secret) = (business_client.clone(), business_secret.clone());
        let (auditor_client, auditor_secret) = (auditor_client.clone(), auditor_secret.clone());
        let (base, http, business_id, shared) =
            (base.to_owned(), http.clone(), business_id.clone(), Arc::clone(&shared));
        async move {
            // Client tokens are cheap: a fresh one per cycle.
            let business = roles::client_token(&http, &base, &business_client, &business_secret).await;
            let auditor = roles::client_token(&http, &base, &auditor_client, &auditor_secret).await;
            Ctx { http, base, business_id, business, auditor, cycle, shared }
        }
    };

    // One customer per client to begin with.
    let harness = context(&server.base_url, 0, &http).await;
    let mut set_ups = Vec::new();
    for client in &clients {
        let ctx = Ctx { http: client.clone(), ..harness.clone() };
        set_ups.push(tokio::spawn(async move {
            let mut state = ClientState::default();
            assert_eq!(sign_up(&ctx, &mut state).await, SignUp::Done);
            state
        }));
    }
    let mut states: Vec<ClientState> = Vec::new();
    for set_up in set_ups {
        states.push(set_up.await.unwrap());
    }
    assert!(harness.shared().problems.is_empty(), "{:?}", harness.shared().problems);
    assert!(states.iter().all(|s| s.customers.len() == 1 && s.customers[0].ready()), "set-up completes");

    for cycle in 0..cycles {
        let harness = context(&server.base_url, cycle, &http).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (state, client) in states.drain(..).zip(&clients) {
            let ctx = Ctx { http: client.clone(), ..harness.clone() };
            let client_rng = TestRng::seeded(rng.next_u64());
            let first_value = ((cycle * CLIENTS + tasks.len()) as u64) * 1_000_000;
            tasks.push(tokio::spawn(client_load(ctx, state, client_rng, Arc::clone(&stop), first_value)));
        }
        let watcher = tokio::spawn(checkpoint_watch(harness.clone(), Arc::clone(&stop)));
        let load = Duration::from_millis(rng.range(LOAD_MILLIS));
        // The load time is the point of the test (where the kill falls), not
        // a wait for something to happen.
        tokio::time::sleep(load).await;
        stop.store(true, Ordering::SeqCst);
        assert!(server.is_running(), "cycle {cycle}: the server died by itself: {}", server.stderr_text());
        // What the killed server logged (warnings and errors only), for a
        // failure report.
        let killed_log = server.stderr_text();
        server.kill();
        for task in tasks {
            states.push(task.await.unwrap());
        }
        watcher.await.unwrap();

        server = start(cycle);
        let harness = context(&server.base_url, cycle, &http).await;
        verify(&harness, &clients, &mut states, &verifier_key).await;
        let problems = std::mem::take(&mut harness.shared().problems);
        assert!(
            problems.is_empty(),
            "{} problems after kill {cycle} (replay with the seed printed above):\n{}\n\
             log of the killed server:\n{killed_log}\nlog since the restart:\n{}",
            problems.len(),
            problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
            server.stderr_text()
        );
    }

    let status = server.terminate();
    assert!(status.success(), "the server stops cleanly: {status}");
    let (verified, stdout, stderr) = common::audit_verify(&data_dir);
    assert!(verified, "audit verify after {cycles} kills: {stdout}{stderr}");
    let shared = shared.lock().unwrap();
    let counts = shared.counts;
    let live: usize = states.iter().map(|s| s.customers.len()).sum();
    let erased: usize = states.iter().map(|s| s.erased.len()).sum();
    eprintln!(
        "{cycles} kills in {:.1} s: {counts:?}; {live} live and {erased} erased customers; {} checkpoint sizes; {}",
        started.elapsed().as_secs_f64(),
        shared.checkpoint_roots.len(),
        stdout.trim()
    );
    assert!(counts.writes >= cycles && counts.reads > 0 && counts.revocations > 0, "the load did work: {counts:?}");
    assert!(counts.erasures > 0 && counts.in_flight_at_kill > 0, "the load did work: {counts:?}");
}

async fn text(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

/// One client's work until the stop: acts for its customers (one request at
/// a time each) and as the business.
async fn client_load(
    ctx: Ctx,
    mut state: ClientState,
    mut rng: TestRng,
    stop: Arc<AtomicBool>,
    mut next_value: u64,
) -> ClientState {
    let mut sign_ups_refused = false;
    while !stop.load(Ordering::SeqCst) {
        let ready: Vec<usize> = (0..state.customers.len()).filter(|&i| state.customers[i].ready()).collect();
        let roll = rng.range(0..1000);
        let wants_more = ready.is_empty() || (roll < 20 && state.customers.len() < CUSTOMERS_PER_CLIENT_MAX);
        let answered = if wants_more && !sign_ups_refused {
            let outcome = sign_up(&ctx, &mut state).await;
            sign_ups_refused = outcome == SignUp::Refused;
            outcome != SignUp::Gone
        } else if ready.is_empty() || (300..600).contains(&roll) {
            business_read(&ctx, &mut rng).await
        } else {
            let index = ready[rng.range(0..ready.len() as u64) as usize];
            let customer = &mut state.customers[index];
            match roll {
                600..720 => grant_create(&ctx, customer, &mut rng).await,
                720..820 => grant_revoke(&ctx, customer, &mut rng).await,
                820..830 => erase(&ctx, &mut state, index).await,
                _ => write(&ctx, customer, &mut rng, &mut next_value).await,
            }
        };
        if !answered {
            // No answer: the server is gone. Whatever was in flight stays
            // recorded on its customer.
            let in_flight = state.customers.iter().filter(|c| c.in_flight.is_some()).count();
            ctx.count(|c| c.in_flight_at_kill += in_flight);
            break;
        }
    }
    state
}

/// Fetches the checkpoint until the stop and keeps every new one.
async fn checkpoint_watch(ctx: Ctx, stop: Arc<AtomicBool>) {
    let mut interval = tokio::time::interval(CHECKPOINT_POLL);
    while !stop.load(Ordering::SeqCst) {
        interval.tick().await;
        let Ok(response) = ctx.http.get(format!("{}/v1/audit/checkpoint", ctx.base)).send().await else { break };
        if response.status() != 200 {
            ctx.problem(format!("GET /v1/audit/checkpoint answered {}", response.status()));
            break;
        }
        let Ok(note) = response.text().await else { break };
        let mut shared = ctx.shared();
        if shared.checkpoints.last() != Some(&note) {
            shared.checkpoints.push(note);
        }
    }
}

/// `PUT /v1/me/data` with one to three fields, each value never written
/// before. False when no answer came.
async fn write(ctx: &Ctx, customer: &mut Customer, rng: &mut TestRng, next_value: &mut u64) -> bool {
    let mut values = Map::new();
    for field in some_fields(rng) {
        *next_value += 1;
        let value = if field == "loyalty_points" { json!(*next_value) } else { json!(format!("v{next_value}")) };
        values.insert(field, value);
    }
    customer.in_flight = Some(InFlight::Write(values.clone()));
    let body = Some(Value::Object(values.clone()));
    match ctx.send(Method::PUT, "/v1/me/data", Some(customer.token()), body).await {
        Err(_) => return false,
        Ok((200, _)) => {
            customer.data.extend(values);
            ctx.count(|c| c.writes += 1);
        }
        Ok((status, body)) => {
            ctx.problem(format!("customer {}: write answered {status} {}", customer.id, body["code"]))
        }
    }
    customer.in_flight = None;
    true
}

/// The business reads a random customer it was connected to; a 2xx is
/// recorded, and must not rely on an erasure or revocation acknowledged
/// before the read began.
async fn business_read(ctx: &Ctx, rng: &mut TestRng) -> bool {
    let target = {
        let shared = ctx.shared();
        (!shared.targets.is_empty()).then(|| shared.targets[rng.range(0..shared.targets.len() as u64) as usize].clone())
    };
    let Some((subject, pairwise)) = target else { return true };
    let began = Instant::now();
    match ctx.business_read(&pairwise).await {
        Err(_) => false,
        Ok((200, answer)) => {
            let Some(read) = Read::from_answer(&subject, &answer) else {
                ctx.problem(format!("a read of {subject} answered 200 without its audit index: {answer}"));
                return true;
            };
            let mut shared = ctx.shared();
            if shared.erased_at.get(&subject).is_some_and(|&at| at < began) {
                let text = format!("a read of {subject} began after its erasure was acknowledged and got 200");
                shared.problems.push(text);
            }
            for grant in &read.grant_ids {
                if shared.revoked_at.get(grant).is_some_and(|&at| at < began) {
                    let text = format!("a read began after grant {grant} was revoked and was allowed by it");
                    shared.problems.push(text);
                }
            }
            shared.reads.push(read);
            shared.counts.reads += 1;
            true
        }
        Ok((403, _)) => {
            ctx.count(|c| c.reads_denied += 1);
            true
        }
        Ok((status, body)) => {
            ctx.problem(format!("a read of {subject} answered {status} {}", body["code"]));
            true
        }
    }
}

/// `POST /v1/me/grants` for the business, for some of the fields.
async fn grant_create(ctx: &Ctx, customer: &mut Customer, rng: &mut TestRng) -> bool {
    let fields = some_fields(rng);
    customer.in_flight = Some(InFlight::GrantCreate(fields.clone()));
    let body = json!({"business_id": ctx.business_id, "purposes": [PURPOSE], "fields": fields, "duration_days": 30});
    match ctx.send(Method::POST, "/v1/me/grants", Some(customer.token()), Some(body)).await {
        Err(_) => return false,
        Ok((201, grant)) if grant["status"] == "active" && grant["grant_id"].is_string() => {
            let id = grant["grant_id"].as_str().unwrap_or_default().to_owned();
            customer.grants.insert(id, Grant { fields, revoked: false });
            ctx.count(|c| c.grants += 1);
        }
        Ok((status, body)) => ctx.problem(format!("customer {}: grant answered {status} {body}", customer.id)),
    }
    customer.in_flight = None;
    true
}

/// `DELETE /v1/me/grants/{id}` of a random active grant (a new grant if
/// there is none).
async fn grant_revoke(ctx: &Ctx, customer: &mut Customer, rng: &mut TestRng) -> bool {
    let active: Vec<String> = customer.grants.iter().filter(|(_, g)| !g.revoked).map(|(id, _)| id.clone()).collect();
    if active.is_empty() {
        return grant_create(ctx, customer, rng).await;
    }
    let id = active[rng.range(0..active.len() as u64) as usize].clone();
    customer.in_flight = Some(InFlight::GrantRevoke(id.clone()));
    match ctx.send(Method::DELETE, &format!("/v1/me/grants/{id}"), Some(customer.token()), None).await {
        Err(_) => return false,
        Ok((200, grant)) if grant["status"] == "revoked" => {
            if let Some(grant) = customer.grants.get_mut(&id) {
                grant.revoked = true;
            }
            let mut shared = ctx.shared();
            shared.revoked_at.insert(id, Instant::now());
            shared.counts.revocations += 1;
        }
        Ok((status, body)) => ctx.problem(format!("customer {}: revoke answered {status} {body}", customer.id)),
    }
    customer.in_flight = None;
    true
}

/// `DELETE /v1/me`: the customer at `index` erases themselves.
async fn erase(ctx: &Ctx, state: &mut ClientState, index: usize) -> bool {
    let customer = &mut state.customers[index];
    customer.in_flight = Some(InFlight::Erase);
    let body = Some(json!({"confirm": "erase"}));
    match ctx.send(Method::DELETE, "/v1/me", Some(customer.token()), body).await {
        Err(_) => false,
        Ok((200, receipt)) if receipt["erased"] == true && receipt["audit_index"].is_u64() => {
            let customer = state.customers.remove(index);
            let mut shared = ctx.shared();
            shared.erased_at.insert(customer.id.clone(), Instant::now());
            if let Some(note) = receipt["checkpoint"].as_str() {
                shared.checkpoints.push(note.to_owned());
            }
            shared.counts.erasures += 1;
            state.erased.push(Erased {
                token: customer.token().to_owned(),
                id: customer.id,
                pairwise: customer.pairwise,
                index: receipt["audit_index"].as_u64().unwrap_or_default(),
                checked_once: false,
            });
            true
        }
        Ok((status, body)) => {
            ctx.problem(format!("customer {}: erasure answered {status} {body}", customer.id));
            customer.in_flight = None;
            true
        }
    }
}

/// A new customer signs up, signs in and connects to the business; what
/// was acknowledged is kept if an answer does not come.
async fn sign_up(ctx: &Ctx, state: &mut ClientState) -> SignUp {
    match roles::sign_up(&ctx.http, &ctx.base).await {
        Err(_) => SignUp::Gone,
        Ok((201, created)) if created["customer_id"].is_string() => {
            let id = created["customer_id"].as_str().unwrap_or_default().to_owned();
            ctx.count(|c| c.sign_ups += 1);
            state.customers.push(Customer::new(id));
            let last = state.customers.len() - 1;
            let customer = &mut state.customers[last];
            if sign_in(ctx, customer).await && connect(ctx, customer).await { SignUp::Done } else { SignUp::Gone }
        }
        Ok((429, _)) => SignUp::Refused,
        Ok((status, body)) => {
            ctx.problem(format!("sign-up answered {status} {body}"));
            SignUp::Done
        }
    }
}

/// Signs the customer in if it has no fresh token. False when no answer
/// came.
async fn sign_in(ctx: &Ctx, customer: &mut Customer) -> bool {
    if customer.token.as_ref().is_some_and(|(_, at)| at.elapsed() < TOKEN_FRESH) {
        return true;
    }
    customer.in_flight = Some(InFlight::Setup);
    match roles::sign_in(&ctx.http, &ctx.base, &customer.id).await {
        Err(_) => return false,
        Ok((200, answer)) if answer["access_token"].is_string() => {
            let token = answer["access_token"].as_str().unwrap_or_default().to_owned();
            customer.token = Some((token, Instant::now()));
        }
        Ok((status, body)) => {
            ctx.problem(format!("customer {}: an acknowledged sign-up cannot sign in: {status} {body}", customer.id));
        }
    }
    customer.in_flight = None;
    true
}

/// Connects the customer to the business unless it is known to be. False
/// when no answer came.
async fn connect(ctx: &Ctx, customer: &mut Customer) -> bool {
    if customer.pairwise.is_none() {
        customer.in_flight = Some(InFlight::Setup);
        let body = Some(json!({"business_id": ctx.business_id}));
        match ctx.send(Method::POST, "/v1/me/relationships", Some(customer.token()), body).await {
            Err(_) => return false,
            Ok((201, relationship)) if relationship["pairwise_id"].is_string() => {
                let pairwise = relationship["pairwise_id"].as_str().unwrap_or_default().to_owned();
                ctx.shared().targets.push((customer.id.clone(), pairwise.clone()));
                customer.pairwise = Some(pairwise);
            }
            Ok((status, body)) => {
                ctx.problem(format!("customer {}: connecting answered {status} {body}", customer.id));
                return true;
            }
        }
    }
    customer.in_flight = None;
    true
}

/// After a restart: the checkpoints, every customer (live and erased), then
/// the audit events of every read made since the last check.
async fn verify(harness: &Ctx, clients: &[reqwest::Client], states: &mut Vec<ClientState>, verifier_key: &str) {
    verify_checkpoints(harness, verifier_key).await;
    let mut tasks = Vec::new();
    for (state, client) in states.drain(..).zip(clients) {
        let ctx = Ctx { http: client.clone(), ..harness.clone() };
        tasks.push(tokio::spawn(verify_client(ctx, state)));
    }
    for task in tasks {
        states.push(task.await.unwrap());
    }
    verify_read_events(harness).await;
}

/// Check 5: every checkpoint seen so far is a prefix of the log now.
async fn verify_checkpoints(harness: &Ctx, verifier_key: &str) {
    let note = text(&harness.http, &format!("{}/v1/audit/checkpoint", harness.base)).await;
    let (origin, new_size, new_root) = tlog::open_checkpoint(&note, verifier_key);
    let roots = {
        let mut shared = harness.shared();
        let notes = std::mem::take(&mut shared.checkpoints);
        // Each note's signature is checked once, when it is first seen. One
        // root per size: two different roots for one size would be a fork
        // handed out before the crash.
        for note in notes.iter().chain([&note]) {
            let (their_origin, size, root) = tlog::open_checkpoint(note, verifier_key);
            assert_eq!(their_origin, origin, "one log");
            if *shared.checkpoint_roots.entry(size).or_insert(root) != root {
                shared.problems.push(format!("two checkpoints of size {size} have different roots"));
            }
        }
        shared.checkpoint_roots.clone()
    };
    let Some((&largest, _)) = roots.last_key_value() else { return };
    if largest > new_size {
        harness.problem(format!(
            "a checkpoint of size {largest} was handed out; after the restart the log has {new_size}"
        ));
        return;
    }
    let mut proofs = tokio::task::JoinSet::new();
    for (size, root) in roots {
        let ctx = harness.clone();
        proofs.spawn(async move {
            let path = format!("/v1/audit/proof/consistency?old_size={size}&new_size={new_size}");
            let (status, proof) = ctx.send(Method::GET, &path, Some(&ctx.auditor), None).await.unwrap();
            let consistent =
                status == 200 && tlog::verify_consistency(size, new_size, &root, &new_root, &tlog::hashes(&proof));
            if !consistent {
                ctx.problem(format!(
                    "the log of size {new_size} is not consistent with the checkpoint of size {size}: {status} {proof}"
                ));
            }
        });
    }
    proofs.join_all().await;
}

/// Checks 1, 2 and 4 for one client's customers, settling what was in flight
/// from what the server holds now.
async fn verify_client(ctx: Ctx, mut state: ClientState) -> ClientState {
    let mut customers = Vec::new();
    for customer in std::mem::take(&mut state.customers) {
        match verify_customer(&ctx, customer).await {
            Ok(customer) => customers.push(customer),
            Err(erased) => state.erased.push(erased),
        }
    }
    state.customers = customers;
    for erased in &mut state.erased {
        verify_erased(&ctx, erased).await;
    }
    state
}

/// A live customer after the restart: its data, relationship and grants are
/// what was acknowledged, give or take the one request in flight; `Err` if
/// that request was an erasure that landed.
async fn verify_customer(ctx: &Ctx, mut customer: Customer) -> Result<Customer, Erased> {
    let id = customer.id.clone();
    let in_flight = customer.in_flight.take();
    if in_flight == Some(InFlight::Erase) {
        let (status, _) = ctx.send(Method::GET, "/v1/me/data", Some(customer.token()), None).await.unwrap();
        if status == 401 {
            return Err(erasure_landed(ctx, customer).await);
        }
    }
    assert!(sign_in(ctx, &mut customer).await, "the server answers after the restart");
    verify_relationship(ctx, &mut customer).await;
    assert!(connect(ctx, &mut customer).await, "the server answers after the restart");
    let (status, answer) = ctx.send(Method::GET, "/v1/me/data", Some(customer.token()), None).await.unwrap();
    if status != 200 {
        ctx.problem(format!("customer {id}: reading its own data answered {status} {answer}"));
        return Ok(customer);
    }

    // Check 1: each field holds the last acknowledged value, or the
    // in-flight write landed whole.
    let stored: Map<String, Value> =
        FIELDS.iter().filter_map(|&f| answer["data"].get(f).map(|v| (f.to_owned(), v.clone()))).collect();
    if stored != customer.data {
        let landed = match &in_flight {
            Some(InFlight::Write(values)) => {
                let mut expected = customer.data.clone();
                expected.extend(values.clone());
                expected == stored
            }
            _ => false,
        };
        if landed {
            ctx.count(|c| c.in_flight_landed += 1);
        } else {
            ctx.problem(format!(
                "customer {id}: holds {stored:?}; acknowledged {:?}, in flight {in_flight:?}",
                customer.data
            ));
        }
        customer.data = stored;
    }

    verify_grants(ctx, &mut customer, in_flight.as_ref()).await;
    if let Some(pairwise) = customer.pairwise.clone() {
        verify_business_read(ctx, &customer, &pairwise).await;
    }
    Ok(customer)
}

/// An acknowledged relationship survived; one whose connect was in flight at
/// the kill is taken as found.
async fn verify_relationship(ctx: &Ctx, customer: &mut Customer) {
    let id = customer.id.clone();
    let (status, list) = ctx.send(Method::GET, "/v1/me/relationships", Some(customer.token()), None).await.unwrap();
    let found = list["items"].as_array().and_then(|items| {
        items.iter().find(|r| r["business_id"] == ctx.business_id.as_str()).and_then(|r| r["pairwise_id"].as_str())
    });
    match (&customer.pairwise, found) {
        (Some(known), Some(found)) if known == found => {}
        (Some(known), found) => {
            ctx.problem(format!("customer {id}: relationship {known} acknowledged, now {status} {found:?}"));
        }
        (None, Some(found)) => {
            ctx.shared().targets.push((id.clone(), found.to_owned()));
            customer.pairwise = Some(found.to_owned());
            ctx.count(|c| c.in_flight_landed += 1);
        }
        (None, None) => {}
    }
}

/// The erasure in flight at the kill landed: the receipt's index is where
/// the log has `subject.erased` for the customer.
async fn erasure_landed(ctx: &Ctx, customer: Customer) -> Erased {
    ctx.count(|c| c.in_flight_landed += 1);
    let path = format!("/v1/audit/entries?subject={}&kind=subject.erased", customer.id);
    let (status, page) = ctx.send(Method::GET, &path, Some(&ctx.auditor), None).await.unwrap();
    let indices: Vec<u64> =
        page["items"].as_array().into_iter().flatten().filter_map(|i| i["index"].as_u64()).collect();
    if status != 200 || indices.len() != 1 {
        ctx.problem(format!("customer {}: token refused but erased at {indices:?} ({status})", customer.id));
    }
    ctx.shared().erased_at.insert(customer.id.clone(), Instant::now());
    Erased {
        token: customer.token().to_owned(),
        id: customer.id,
        pairwise: customer.pairwise,
        index: indices.first().copied().unwrap_or_default(),
        checked_once: false,
    }
}

/// Check 4: acknowledged grants are active, acknowledged revocations
/// revoked; a grant or revocation in flight at the kill is taken as found.
async fn verify_grants(ctx: &Ctx, customer: &mut Customer, in_flight: Option<&InFlight>) {
    let id = customer.id.clone();
    let (status, list) = ctx.send(Method::GET, "/v1/me/grants", Some(customer.token()), None).await.unwrap();
    if status != 200 {
        ctx.problem(format!("customer {id}: listing grants answered {status} {list}"));
        return;
    }
    let found: BTreeMap<String, (String, Vec<String>)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((g["grant_id"].as_str()?.to_owned(), (g["status"].as_str()?.to_owned(), strings(&g["fields"]))))
        })
        .collect();
    for (grant_id, grant) in &mut customer.grants {
        let status = found.get(grant_id).map(|(status, _)| status.as_str());
        let revoking = in_flight == Some(&InFlight::GrantRevoke(grant_id.clone()));
        match (grant.revoked, status) {
            (false, Some("active")) | (true, Some("revoked")) => {}
            (false, Some("revoked")) if revoking => {
                grant.revoked = true;
                ctx.shared().revoked_at.insert(grant_id.clone(), Instant::now());
                ctx.count(|c| c.in_flight_landed += 1);
            }
            (revoked, status) => {
                ctx.problem(format!("customer {id}: grant {grant_id} acknowledged revoked={revoked}, now {status:?}"));
            }
        }
    }
    let mut creating = in_flight.and_then(|i| match i {
        InFlight::GrantCreate(fields) => Some(fields),
        _ => None,
    });
    for (grant_id, (status, fields)) in found {
        if customer.grants.contains_key(&grant_id) {
            continue;
        }
        if creating.is_some_and(|f| *f == fields) && status == "active" {
            // At most one grant can come from the one request in flight.
            creating = None;
            customer.grants.insert(grant_id, Grant { fields, revoked: false });
            ctx.count(|c| c.in_flight_landed += 1);
        } else {
            ctx.problem(format!("customer {id}: grant {grant_id} ({status}, {fields:?}) was never acknowledged"));
        }
    }
}

/// Check 4 through the business: the read releases exactly the fields of
/// the live grants, relying only on them, with the customer's values; 403
/// without a live grant. The read's event is checked with the others.
async fn verify_business_read(ctx: &Ctx, customer: &Customer, pairwise: &str) {
    let id = &customer.id;
    let live: Vec<(&String, &Grant)> = customer.grants.iter().filter(|(_, g)| !g.revoked).collect();
    let (status, answer) = ctx.business_read(pairwise).await.unwrap();
    if live.is_empty() {
        if status != 403 {
            ctx.problem(format!("customer {id}: no live grant, yet the business's read answered {status}"));
        }
        return;
    }
    let Some(read) = (status == 200).then(|| Read::from_answer(id, &answer)).flatten() else {
        ctx.problem(format!("customer {id}: live grants, yet the business's read answered {status} {answer}"));
        return;
    };
    let granted: Vec<String> = FIELDS
        .iter()
        .filter(|f| live.iter().any(|(_, g)| g.fields.iter().any(|g| g == *f)))
        .map(|f| (*f).to_owned())
        .collect();
    let relied_on_live = read.grant_ids.iter().all(|g| live.iter().any(|(id, _)| *id == g));
    let values_match = answer["data"].as_object().is_some_and(|data| {
        data.keys().all(|f| granted.contains(f)) && granted.iter().all(|f| data.get(f) == customer.data.get(f))
    });
    if read.released != granted || !relied_on_live || read.grant_ids.is_empty() || !values_match {
        ctx.problem(format!(
            "customer {id}: live grants {live:?} allow {granted:?}; the business's read released {:?} through {:?} (values match: {values_match})",
            read.released, read.grant_ids
        ));
    }
    ctx.shared().reads.push(read);
}

/// Check 2: an erased customer stays erased.
async fn verify_erased(ctx: &Ctx, erased: &mut Erased) {
    let id = &erased.id;
    let (status, _) = ctx.send(Method::GET, "/v1/me/data", Some(&erased.token), None).await.unwrap();
    if status != 401 {
        ctx.problem(format!("erased customer {id} came back: its token answered {status}"));
    }
    if let Some(pairwise) = &erased.pairwise {
        let (status, _) = ctx.business_read(pairwise).await.unwrap();
        if status != 403 {
            ctx.problem(format!("erased customer {id} came back: the business's read answered {status}"));
        }
    }
    if erased.checked_once {
        return;
    }
    erased.checked_once = true;
    let (status, _) = roles::sign_in(&ctx.http, &ctx.base, id).await.unwrap();
    if status != 401 {
        ctx.problem(format!("erased customer {id} came back: signing in answered {status}"));
    }
    let path = format!("/v1/audit/entries/{}", erased.index);
    let (status, entry) = ctx.send(Method::GET, &path, Some(&ctx.auditor), None).await.unwrap();
    if status != 200 || entry["kind"] != "subject.erased" || entry["subject"] != id.as_str() {
        ctx.problem(format!("erased customer {id}: the receipt's index {} holds {status} {entry}", erased.index));
    }
}

/// Check 3: each recorded read has its `data.read` event at its index.
async fn verify_read_events(ctx: &Ctx) {
    let reads = std::mem::take(&mut ctx.shared().reads);
    let Some(first) = reads.iter().map(|r| r.audit_index).min() else { return };
    let mut events: BTreeMap<u64, Value> = BTreeMap::new();
    let mut cursor = format!("start={first}");
    loop {
        let path = format!("/v1/audit/entries?business={}&kind=data.read&limit=1000&{cursor}", ctx.business_id);
        let (status, page) = ctx.send(Method::GET, &path, Some(&ctx.auditor), None).await.unwrap();
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            events.insert(item["index"].as_u64().unwrap(), item["entry"].clone());
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = format!("cursor={next}"),
            None => break,
        }
    }
    for read in reads {
        let Some(event) = events.get(&read.audit_index) else {
            ctx.problem(format!(
                "a read of {} got 200 with audit index {}, which holds no read by the business",
                read.subject, read.audit_index
            ));
            continue;
        };
        let mut fields = strings(&event["fields"]);
        fields.sort();
        let mut released = read.released.clone();
        released.sort();
        let decision = match read.released.len() {
            0 => "deny",
            n if n == FIELDS.len() => "allow",
            _ => "partial",
        };
        let same = event["subject"] == read.subject.as_str()
            && event["business"] == ctx.business_id.as_str()
            && event["purpose"] == PURPOSE
            && event["decision"] == decision
            && fields == released
            && event["grants"] == serde_json::json!(read.grant_ids);
        if !same {
            ctx.problem(format!(
                "the read at {} released {:?} of {} through {:?}; its event is {event}",
                read.audit_index, read.released, read.subject, read.grant_ids
            ));
        }
    }
}
