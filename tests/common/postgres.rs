//! A throwaway PostgreSQL for tests: Debian's `postgresql` package
//! (installed by `scripts/install-test-deps`), `initdb` in a temporary
//! directory, the server on a free loopback port, stopped and removed when
//! the value is dropped. As root, the server runs as the `postgres` user,
//! since PostgreSQL refuses to run as root.
//!
//! With `CONSENTVAULT_TEST_POSTGRES` set (a URL to a running server, as
//! `scripts/test-on-postgres` sets it), every test vault gets a database of
//! its own on that server ([`test_store`]): the behavioural suite then runs
//! on the PostgreSQL engine.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consentvault::store::postgres::{Access, PostgresSettings, PostgresUrl};
use consentvault::vault::StoreLocation;

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|entry| Some(entry.ok()?.path().join("bin"))).collect())
        .unwrap_or_default();
    found.retain(|dir| dir.join("initdb").is_file());
    found.sort_by_key(|dir| {
        dir.parent().and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0)
    });
    found.pop().expect("PostgreSQL is not installed: run scripts/install-test-deps")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` with `args`, run as the `postgres` user when this is root.
fn as_server_user(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

/// A temporary directory the server user owns, for the cluster's `data`
/// (which initdb or pg_basebackup create) and the server's socket and log.
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if is_root() {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(status.success());
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server of a test's own.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl TestPostgres {
    /// Creates a cluster and starts its server.
    pub fn start() -> Self {
        let dir = server_dir();
        let data = dir.path().join("data");
        let initdb = bin_dir().join("initdb");
        let out = as_server_user(
            &initdb,
            &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = Self { dir, port: free_port(), child: None };
        server.run();
        server
    }

    /// A streaming replica of `primary` (`pg_basebackup` with its WAL),
    /// started on a port of its own. From then on the primary waits for it
    /// at every commit (synchronous replication), so a commit acknowledged
    /// by the primary is on the replica's disk too.
    pub fn replica_of(primary: &TestPostgres) -> Self {
        let dir = server_dir();
        let data = dir.path().join("data");
        let port = primary.port.to_string();
        let out = as_server_user(
            &bin_dir().join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                // At once, not after the next spread checkpoint.
                "--checkpoint=fast",
            ],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut replica = Self { dir, port: free_port(), child: None };
        replica.run();
        let primary_url = primary.url("postgres");
        query(&primary_url, "ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
        query(&primary_url, "SELECT pg_reload_conf()").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while query(&primary_url, "SELECT sync_state FROM pg_stat_replication").unwrap() != ["sync"] {
            assert!(Instant::now() < deadline, "the replica does not replicate synchronously: {}", replica.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        replica
    }

    /// Promotes this replica to a primary, and waits until it is one.
    pub fn promote(&self) {
        let data = self.data_dir();
        let out = as_server_user(&bin_dir().join("pg_ctl"), &["promote", "-w", "-D", data.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "promotion failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on its port and waits until it answers.
    pub fn run(&mut self) {
        let postgres = bin_dir().join("postgres");
        let port = self.port.to_string();
        let data = self.data_dir();
        let socket_dir = self.dir.path().to_str().unwrap().to_owned();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = as_server_user(
            &postgres,
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port,
                "-k",
                &socket_dir,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=on",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if query(&self.url("postgres"), "SELECT 1").is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The URL of database `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> String {
        database_create(&self.url("postgres"))
    }

    /// Stops the server at once, as a crash would (SIGQUIT: no checkpoint,
    /// recovery from the WAL at the next start).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Whether the server process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Runs `sql` on `url` from a thread of its own (callers may be on a
/// runtime); returns the rows' first columns as text.
pub fn query(url: &str, sql: &str) -> Result<Vec<String>, String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let (client, connection) =
                tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|error| error.to_string())?;
            tokio::spawn(connection);
            let rows = client.simple_query(&sql).await.map_err(|error| error.to_string())?;
            Ok(rows
                .into_iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
                    _ => None,
                })
                .collect())
        })
    })
    .join()
    .unwrap()
}

/// Creates a database with a fresh name on the server at `server_url`
/// (a URL to any of its databases); returns the new database's URL.
pub fn database_create(server_url: &str) -> String {
    let mut name = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name).unwrap();
    let name = format!("vault_{}", consentvault::ids::hex(&name));
    query(server_url, &format!("CREATE DATABASE {name}")).unwrap();
    let base = server_url.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

/// The PostgreSQL server the behavioural suite runs on, if any.
pub fn suite_server() -> Option<String> {
    std::env::var("CONSENTVAULT_TEST_POSTGRES").ok().filter(|url| !url.is_empty())
}

/// The database each data directory's vault uses in this process.
static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// The store URL of the vault in `data_dir`: `None` on the embedded
/// engine, else a database of its own on the suite's server.
pub fn store_url(data_dir: &Path) -> Option<String> {
    let server = suite_server()?;
    let mut databases = DATABASES.lock().unwrap();
    let databases = databases.get_or_insert_with(HashMap::new);
    Some(databases.entry(data_dir.to_owned()).or_insert_with(|| database_create(&server)).clone())
}

/// Where the vault in `data_dir` keeps its records in this test run.
pub fn test_store(data_dir: &Path) -> StoreLocation {
    match store_url(data_dir) {
        None => StoreLocation::Embedded,
        Some(url) => StoreLocation::Postgres(PostgresSettings {
            url: PostgresUrl::parse(&url).unwrap(),
            lease_secs: 5,
            access: Access::Exclusive,
        }),
    }
}
