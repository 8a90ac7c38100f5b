//! The PostgreSQL engine with two vault nodes on one database, each test on
//! a throwaway PostgreSQL of its own (`common::postgres`):
//!
//! - a commit made under a lease another node took is refused by its
//!   fencing token, whatever the paused node believes;
//! - SIGKILL of the active node under concurrent writes: the standby takes
//!   over, every acknowledged write is there, and the log it continues is
//!   consistent with the last checkpoint the old active handed out;
//! - SIGSTOP of the active node until the standby took over, then SIGCONT:
//!   the old active commits nothing and stops;
//! - PostgreSQL restarted under the vault: requests fail closed with 503
//!   and `Retry-After`, and the vault recovers by itself;
//! - a primary with a synchronous streaming replica, the primary killed
//!   under load and the replica promoted: the vault (given both servers)
//!   fails closed, then serves from the new primary with every
//!   acknowledged write;
//! - `store copy` from sled to PostgreSQL and back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::TestPostgres;
use common::{ServerProcess, roles, tlog};
use consentvault::store::postgres::{Access, PostgresSettings, PostgresUrl};
use consentvault::store::{StoreConfig, StoreError, WriteBatch};
use serde_json::{Value, json};

fn settings(url: &str, access: Access) -> StoreConfig {
    StoreConfig::Postgres(PostgresSettings { url: PostgresUrl::parse(url).unwrap(), lease_secs: 5, access })
}

fn batch(key: &[u8], value: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.insert(key.to_vec(), Some(value.to_vec()));
    batch
}

#[test]
fn a_commit_under_a_lease_another_node_took_is_refused_by_its_fencing_token() {
    let pg = TestPostgres::start();
    let url = pg.database();
    let first = consentvault::store::open(&settings(&url, Access::Exclusive)).unwrap();
    first.apply(&batch(b"\x01before", b"1")).unwrap();
    first.flush().unwrap();
    // While it holds the lease, nobody else takes it.
    let refused = consentvault::store::open(&settings(&url, Access::Exclusive)).err();
    assert!(matches!(refused, Some(StoreError::LeaseHeld(_))), "{refused:?}");
    // The first node is paused past its lease (here: the lease is made to
    // lapse in the database while the node still believes it holds it),
    // and a second node takes over.
    common::postgres::query(&url, "UPDATE consentvault.lease SET expires_at = '-infinity'").unwrap();
    let second = consentvault::store::open(&settings(&url, Access::Exclusive)).unwrap();
    // The first node's own clock still says it holds the lease: it applies,
    // but its commit is refused by the token, and it stops for good.
    first.apply(&batch(b"\x01after", b"2")).unwrap();
    assert_eq!(first.flush(), Err(StoreError::Superseded));
    assert!(first.superseded());
    assert_eq!(first.get(b"\x01before"), Err(StoreError::Superseded));
    // The second node read what the first committed, and nothing else.
    assert_eq!(second.get(b"\x01before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(second.get(b"\x01after").unwrap(), None);
    let rows = common::postgres::query(&url, "SELECT count(*) FROM consentvault.records WHERE key = '\\x016166746572'");
    assert_eq!(rows.unwrap(), ["0"]);
    second.apply(&batch(b"\x01second", b"3")).unwrap();
    second.flush().unwrap();
    // A snapshot reads without the lease and writes nothing.
    let snapshot = consentvault::store::open(&settings(&url, Access::Snapshot)).unwrap();
    assert_eq!(snapshot.get(b"\x01second").unwrap(), Some(b"3".to_vec()));
    assert!(matches!(snapshot.apply(&batch(b"\x01x", b"4")), Err(StoreError::Engine(_))));
}

#[test]
fn a_batch_whose_commit_failed_is_committed_with_the_next_one_so_the_database_never_skips_it() {
    let mut pg = TestPostgres::start();
    let url = pg.database();
    let node = consentvault::store::open(&settings(&url, Access::Exclusive)).unwrap();
    pg.crash();
    // Applied (later batches decide on top of it), but its commit fails:
    // not acknowledged.
    node.apply(&batch(b"\x01first", b"1")).unwrap();
    assert!(matches!(node.flush(), Err(StoreError::Unavailable(_))));
    pg.run();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.standing().is_err() {
        assert!(Instant::now() < deadline, "the lease was not renewed after PostgreSQL came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    node.apply(&batch(b"\x01second", b"2")).unwrap();
    node.flush().unwrap();
    let rows = common::postgres::query(
        &url,
        "SELECT count(*) FROM consentvault.records WHERE key IN ('\\x016669727374', '\\x017365636f6e64')",
    );
    assert_eq!(rows.unwrap(), ["2"], "the database holds the second batch without the first");
}

/// Two nodes on one database: `first` active, `second` standing by with a
/// copy of the first's key file.
struct Pair {
    pg: TestPostgres,
    url: String,
    dirs: [tempfile::TempDir; 2],
    first: Option<ServerProcess>,
    second: ServerProcess,
}

impl Pair {
    fn start() -> Self {
        let pg = TestPostgres::start();
        let url = pg.database();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let store = format!("--store={url}");
        let first = ServerProcess::start(dirs[0].path(), &[&store], &[]).unwrap();
        std::fs::copy(dirs[0].path().join("kek.key"), dirs[1].path().join("kek.key")).unwrap();
        let second = ServerProcess::start_standby(dirs[1].path(), &[&store]).unwrap();
        Self { pg, url, dirs, first: Some(first), second }
    }

    fn first(&self) -> &ServerProcess {
        self.first.as_ref().unwrap()
    }
}

async fn status_of(http: &reqwest::Client, url: String) -> Option<(u16, Value)> {
    let response = http.get(url).timeout(Duration::from_secs(10)).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Waits until `base` answers `/readyz` with `want`; returns how long it took.
async fn ready_is(http: &reqwest::Client, base: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if status_of(http, format!("{base}/readyz")).await.is_some_and(|(status, _)| status == want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{base} did not answer /readyz {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Four customers, each writing numbered values of her e-mail address one
/// after another until stopped or refused.
struct Writers {
    tasks: tokio::task::JoinSet<()>,
    written: Arc<Mutex<Vec<Written>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What one writer did: her token, the last value acknowledged, and the
/// last one sent (which may have landed without an answer).
#[derive(Debug, Clone)]
struct Written {
    writer: usize,
    token: String,
    acknowledged: u64,
    sent: u64,
}

impl Writers {
    async fn start(http: &reqwest::Client, base: &str) -> Self {
        let written: Arc<Mutex<Vec<Written>>> = Arc::default();
        for writer in 0..4 {
            let (_, token) = roles::customer(http, base).await;
            written.lock().unwrap().push(Written { writer, token, acknowledged: 0, sent: 0 });
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..4 {
            let (http, base, written, stop) = (http.clone(), base.to_owned(), written.clone(), stop.clone());
            let token = written.lock().unwrap()[writer].token.clone();
            tasks.spawn(async move {
                for n in 1.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    written.lock().unwrap()[writer].sent = n;
                    match put_data(&http, &base, &token, &Self::value(writer, n)).await {
                        Ok((200, _)) => written.lock().unwrap()[writer].acknowledged = n,
                        _ => break,
                    }
                }
            });
        }
        Self { tasks, written, stop }
    }

    fn value(writer: usize, n: u64) -> String {
        format!("writer{writer}-{n}@example.org")
    }

    /// Stops the writers; what each did, with at least 20 writes
    /// acknowledged in all.
    async fn stop(mut self) -> Vec<Written> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let written = self.written.lock().unwrap().clone();
        let acknowledged: u64 = written.iter().map(|written| written.acknowledged).sum();
        assert!(acknowledged >= 20, "only {acknowledged} writes were acknowledged");
        written
    }

    /// Checks on `base` that each customer's value is her last acknowledged
    /// one, or the one sent after it: no acknowledged write was lost.
    async fn check(http: &reqwest::Client, base: &str, written: &[Written]) {
        for Written { writer, token, acknowledged, sent } in written {
            let value = email_of(http, base, token).await;
            let found = (*acknowledged..=*sent).find(|n| value == json!(Self::value(*writer, *n)));
            assert!(found.is_some(), "writer {writer}: acknowledged {acknowledged}, sent {sent}, found {value}");
        }
    }
}

async fn put_data(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    value: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let body = json!({"email": value});
    roles::try_send(http, reqwest::Method::PUT, format!("{base}/v1/me/data"), Some(token), Some(body)).await
}

async fn email_of(http: &reqwest::Client, base: &str, token: &str) -> Value {
    let (status, data) = roles::get(http, format!("{base}/v1/me/data"), token).await;
    assert_eq!(status, 200, "{data}");
    data["data"]["email"].clone()
}

/// Verifies the signed checkpoint `note` and returns (size, root).
fn checkpoint(note: &str, verifier_key: &str) -> (u64, tlog::Hash) {
    let (_, size, root) = tlog::open_checkpoint(note, verifier_key);
    (size, root)
}

/// `consentvault audit verify` of the shared store, from `data_dir`'s key.
fn audit_verify(data_dir: &Path, url: &str) {
    let output = common::binary([
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        format!("--store={url}").as_ref(),
        "--policies".as_ref(),
        common::policies_dir().as_os_str(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_active_with_every_acknowledged_write_and_one_log() {
    let mut pair = Pair::start();
    let http = reqwest::Client::new();
    let base_first = pair.first().base_url.clone();
    let base_second = pair.second.base_url.clone();
    // The standby says so, and serves nothing.
    let (status, problem) = status_of(&http, format!("{base_second}/readyz")).await.unwrap();
    assert_eq!((status, problem["code"].as_str()), (503, Some("standby")), "{problem}");
    let verifier_key =
        http.get(format!("{base_first}/v1/audit/public-key")).send().await.unwrap().text().await.unwrap();
    let admin = roles::admin_token(&http, &base_first, pair.dirs[0].path()).await;
    let (_, auditor) = roles::client_principal(&http, &base_first, &admin, "auditors").await;

    // Writers sign customers up and store a value for each. A watcher keeps
    // the last checkpoint the active handed out.
    let writers = Writers::start(&http, &base_first).await;
    let last_checkpoint: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (http, base, last, stop) = (http.clone(), base_first.clone(), last_checkpoint.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(response) = http.get(format!("{base}/v1/audit/checkpoint")).send().await else { break };
                if response.status() == 200 {
                    *last.lock().unwrap() = Some(response.text().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SIGKILL while the writers are in full flow.
    pair.first.take().unwrap().kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let written = writers.stop().await;

    let took = ready_is(&http, &base_second, 200, Duration::from_secs(20)).await;
    let acknowledged: u64 = written.iter().map(|written| written.acknowledged).sum();
    eprintln!("the standby took over {took:?} after the kill; {acknowledged} writes were acknowledged");
    Writers::check(&http, &base_second, &written).await;
    // The new active continues the same tree: consistent with the last
    // checkpoint the old one handed out.
    let old = last_checkpoint.lock().unwrap().clone().expect("no checkpoint was fetched before the kill");
    let (old_size, old_root) = checkpoint(&old, &verifier_key);
    let (status, _) = put_data(&http, &base_second, &written[0].token, "after@example.org").await.unwrap();
    assert_eq!(status, 200);
    let new = http.get(format!("{base_second}/v1/audit/checkpoint")).send().await.unwrap().text().await.unwrap();
    let (new_size, new_root) = checkpoint(&new, &verifier_key);
    assert!(new_size > old_size);
    let path = format!("{base_second}/v1/audit/proof/consistency?old_size={old_size}&new_size={new_size}");
    let (status, proof) = roles::get(&http, path, &auditor).await;
    assert_eq!(status, 200, "{proof}");
    assert!(tlog::verify_consistency(old_size, new_size, &old_root, &new_root, &tlog::hashes(&proof)), "a fork");
    assert!(pair.second.terminate().success());
    audit_verify(pair.dirs[1].path(), &pair.url);
    drop(pair.pg);
}

fn signal(process: &ServerProcess, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &process.child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_commits_nothing_once_the_standby_took_over() {
    let mut pair = Pair::start();
    let http = reqwest::Client::new();
    let base_first = pair.first().base_url.clone();
    let base_second = pair.second.base_url.clone();
    let (_, token) = roles::customer(&http, &base_first).await;
    assert_eq!(put_data(&http, &base_first, &token, "one@example.org").await.unwrap().0, 200);

    signal(pair.first(), "-STOP");
    ready_is(&http, &base_second, 200, Duration::from_secs(20)).await;
    assert_eq!(put_data(&http, &base_second, &token, "two@example.org").await.unwrap().0, 200);
    // A write reaches the paused node; it is handled when the node resumes,
    // its lease long gone.
    let paused_write = {
        let (http, base, token) = (http.clone(), base_first.clone(), token.clone());
        tokio::spawn(async move { put_data(&http, &base, &token, "three@example.org").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pair.first(), "-CONT");
    match paused_write.await.unwrap() {
        Ok((status, problem)) => {
            assert_eq!(status, 503, "the paused node answered {status}: {problem}");
            assert!(
                ["standby", "storage_unavailable"].contains(&problem["code"].as_str().unwrap_or_default()),
                "{problem}"
            );
        }
        // Or it had already stopped.
        Err(error) => assert!(error.is_connect() || error.is_request(), "{error}"),
    }
    // It stops serving and exits, saying why.
    let first = pair.first.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.is_running() {
        assert!(Instant::now() < deadline, "the superseded node still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!first.child.wait().unwrap().success());
    assert!(first.stderr_text().contains("another vault node took the store's lease"), "{}", first.stderr_text());
    assert_eq!(email_of(&http, &base_second, &token).await, json!("two@example.org"));
    assert!(pair.second.terminate().success());
    audit_verify(pair.dirs[1].path(), &pair.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_closed_while_postgres_restarts_and_the_vault_recovers_by_itself() {
    let mut pg = TestPostgres::start();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[&format!("--store={url}")], &[]).unwrap();
    let http = reqwest::Client::new();
    let base = server.base_url.clone();
    let (_, token) = roles::customer(&http, &base).await;
    assert_eq!(put_data(&http, &base, &token, "before@example.org").await.unwrap().0, 200);

    pg.crash();
    // Writes fail at once; reads once the lease can no longer be renewed.
    let (status, problem) = put_data(&http, &base, &token, "during@example.org").await.unwrap();
    assert_eq!((status, problem["code"].as_str()), (503, Some("storage_unavailable")), "{problem}");
    ready_is(&http, &base, 503, Duration::from_secs(15)).await;
    let response = http
        .get(format!("{base}/v1/me/data"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "storage_unavailable", "{problem}");
    assert!(!problem.to_string().contains("before@example.org"));

    pg.run();
    let took = ready_is(&http, &base, 200, Duration::from_secs(30)).await;
    eprintln!("the vault served again {took:?} after PostgreSQL was back");
    assert_eq!(email_of(&http, &base, &token).await, json!("before@example.org"));
    assert_eq!(put_data(&http, &base, &token, "after@example.org").await.unwrap().0, 200);
    assert_eq!(email_of(&http, &base, &token).await, json!("after@example.org"));
    assert!(server.terminate().success());
    audit_verify(dir.path(), &url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_stopped_vault_to_postgres_and_back_and_refuses_a_served_or_full_destination() {
    let pg = TestPostgres::start();
    let url = pg.database();
    let http = reqwest::Client::new();
    let sled_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(sled_dir.path(), &["--store=sled"], &[]).unwrap();
    let (_, token) = roles::customer(&http, &server.base_url).await;
    assert_eq!(put_data(&http, &server.base_url, &token, "moved@example.org").await.unwrap().0, 200);
    // A served store is not copied.
    let from_sled = format!("sled:{}", sled_dir.path().display());
    let copy = |from: &str, to: &str, extra: &[&str]| {
        let mut args = vec!["store", "copy", "--from", from, "--to", to, "--policies"];
        let policies = common::policies_dir().display().to_string();
        args.push(&policies);
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        common::binary(args)
    };
    let refused = copy(&from_sled, &url, &[]);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(server.terminate().success());

    let copied = copy(&from_sled, &url, &[]);
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
    assert!(stdout.contains("the copy's audit log verifies"), "{stdout}");
    // Into a store that is no longer empty, nothing.
    let again = copy(&from_sled, &url, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // The same vault, served from PostgreSQL: her data and token hold.
    let store = format!("--store={url}");
    let server = ServerProcess::start(sled_dir.path(), &[&store], &[]).unwrap();
    assert_eq!(email_of(&http, &server.base_url, &token).await, json!("moved@example.org"));
    assert_eq!(put_data(&http, &server.base_url, &token, "on-postgres@example.org").await.unwrap().0, 200);
    let back_dir = tempfile::tempdir().unwrap();
    let to_sled = format!("sled:{}", back_dir.path().join("vault").display());
    let kek = sled_dir.path().join("kek.key").display().to_string();
    let refused = copy(&url, &to_sled, &["--kek-file", &kek]);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(server.terminate().success());

    // And back to sled, where it serves again.
    let copied = copy(&url, &to_sled, &["--kek-file", &kek]);
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
    let back = back_dir.path().join("vault");
    let server = ServerProcess::start(&back, &["--store=sled", "--kek-file", &kek], &[]).unwrap();
    assert_eq!(email_of(&http, &server.base_url, &token).await, json!("on-postgres@example.org"));
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_after_the_primary_is_killed_under_load_holds_every_acknowledged_write() {
    let mut primary = TestPostgres::start();
    let database = primary.database();
    let replica = TestPostgres::replica_of(&primary);
    // The vault knows both servers and uses the one that takes writes.
    let name = database.rsplit_once('/').unwrap().1;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{name}?target_session_attrs=read-write",
        primary.port, replica.port
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[&format!("--store={url}")], &[]).unwrap();
    let http = reqwest::Client::new();
    let base = server.base_url.clone();
    let writers = Writers::start(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The primary dies at once (no shutdown checkpoint), with writes in
    // flight; the vault fails closed until a primary answers again.
    primary.crash();
    let written = writers.stop().await;
    ready_is(&http, &base, 503, Duration::from_secs(15)).await;
    replica.promote();
    let took = ready_is(&http, &base, 200, Duration::from_secs(30)).await;
    let acknowledged: u64 = written.iter().map(|written| written.acknowledged).sum();
    eprintln!("the vault served again {took:?} after the promotion; {acknowledged} writes were acknowledged");
    Writers::check(&http, &base, &written).await;
    assert_eq!(put_data(&http, &base, &written[0].token, "after@example.org").await.unwrap().0, 200);
    assert!(server.terminate().success());
    audit_verify(dir.path(), &replica.url(name));
}
