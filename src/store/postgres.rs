//! PostgreSQL as the vault's storage engine, for vault nodes that share one
//! database: exactly one active, the others standing by to take over.
//!
//! The database holds what the embedded store holds, key for key and still
//! sealed, in schema `consentvault` (`docs/STORAGE.md`, "PostgreSQL"):
//! `records (key bytea, value bytea)`, one row per key; `lease`, one row
//! naming the active node and its fencing token; `schema_version`, the
//! migrations applied. The KEK never goes there.
//!
//! A node waits in [`PostgresBackend::open`] until it takes the lease: the
//! row's `expires_at` (the database's clock, the one clock every node
//! shares) has passed, and taking it adds one to the token. Only then does it
//! read the records into memory; it serves reads from there, and only while
//! it knows the lease held (renewed less than three quarters of its life
//! ago, by its own monotonic clock). Each group of batches is one PostgreSQL
//! transaction that first locks the lease row and checks the token, so a
//! node that was paused (GC, SIGSTOP, a partition) past its lease can never
//! commit after another took over: the takeover's `UPDATE` waits for a
//! commit holding the row, and a commit that comes after it finds another
//! token. A batch is acknowledged only after `COMMIT` returned, with
//! `synchronous_commit` at least `on`.
//!
//! **Architecture Invariant:** what this engine serves and commits, it
//! serves and commits under the lease it holds; once another node took the
//! lease ([`Backend::superseded`]), it neither reads nor commits again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{Backend, Entries, Entry, StoreError, WriteBatch, map_range};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The schema migrations, in order: `schema_version` holds how many ran.
/// Each runs once, in a transaction, under an advisory lock so that nodes
/// starting together do not race.
const MIGRATIONS: [&str; 1] = [r"
    CREATE TABLE consentvault.records (
        key bytea PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE consentvault.lease (
        id smallint PRIMARY KEY CHECK (id = 1),
        holder text NOT NULL,
        token bigint NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO consentvault.lease VALUES (1, '', 0, now(), '-infinity');
"];

/// The advisory lock migrations hold (an arbitrary constant: "cvlt").
const MIGRATION_LOCK: i64 = 0x6376_6c74;

/// Rows per page when the records are read into memory or copied.
const PAGE_ROWS: i64 = 10_000;

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one exchange with the database may take (a transaction, a lease
/// renewal, a page of records) before the connection is dropped and the
/// operation counts as failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease's life when nothing configures one.
pub const LEASE_SECS_DEFAULT: u64 = 5;

/// The database URL. Its password never reaches a log line or an error:
/// `Debug` and `Display` show it without one.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// Parses `postgres://USER[:PASSWORD]@HOST:PORT/DB` (or `postgresql://`,
    /// with the query parameters libpq knows); the error says what is wrong
    /// without repeating the URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err("a PostgreSQL store is a URL that starts with postgres://".to_owned());
        }
        let config: tokio_postgres::Config =
            text.parse().map_err(|_| "not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST:PORT/DB)".to_owned())?;
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err("the PostgreSQL URL names no database (postgres://USER@HOST:PORT/DB)".to_owned());
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err("the PostgreSQL URL names no user (postgres://USER@HOST:PORT/DB)".to_owned());
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err("sslmode=require: this build connects without TLS; reach the database over a trusted \
                        network or a local TLS tunnel (docs/OPERATIONS.md)"
                .to_owned());
        }
        Ok(Self(text.to_owned()))
    }

    fn config(&self) -> tokio_postgres::Config {
        // Parsed once already in `parse`; a URL that parsed parses again.
        let mut config: tokio_postgres::Config = self.0.parse().unwrap_or_default();
        config.connect_timeout(CONNECT_TIMEOUT).keepalives(true).keepalives_idle(Duration::from_secs(10));
        config.application_name("consentvault");
        config
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.config();
        // Every host, for a URL that names a primary and its replicas.
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(at, host)| {
                let host = match host {
                    tokio_postgres::config::Host::Tcp(host) => host.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = config.get_ports().get(at).or(config.get_ports().first());
                port.map_or(host.clone(), |port| format!("{host}:{port}"))
            })
            .collect();
        let user = config.get_user().unwrap_or_default();
        let database = config.get_dbname().unwrap_or_default();
        write!(f, "postgres://{user}@{}/{database}", hosts.join(","))
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

/// How a process uses the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `serve`: wait as a standby until the lease is free, take it, serve.
    Standby,
    /// A command that writes without serving (`keys rotate` on a stopped
    /// vault, say): take the lease if it is free, else refuse
    /// ([`StoreError::LeaseHeld`]).
    Exclusive,
    /// A command that only reads (`audit verify`, `audit replay`,
    /// `backup`): one consistent snapshot, read without the lease, while the
    /// active node goes on; writing is refused.
    Snapshot,
}

/// How a node reaches the database and holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The database.
    pub url: PostgresUrl,
    /// The lease's life: a standby takes over at most this long after the
    /// active node's last renewal (it renews five times per life).
    pub lease_secs: u64,
    /// How this process uses the store.
    pub access: Access,
}

/// What a failed exchange means.
fn unavailable(error: &tokio_postgres::Error) -> StoreError {
    // The message names the SQL state or the connection failure; it never
    // holds a stored value (the records are bytes, and no statement here
    // echoes them).
    StoreError::Unavailable(format!("PostgreSQL: {error}"))
}

fn timed_out() -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL did not answer within {} s", EXCHANGE_TIMEOUT.as_secs()))
}

/// One connection, worked by the thread that owns it.
struct Session {
    runtime: tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    client: Option<Client>,
    /// How long the server lets a transaction of this session sit idle
    /// before it ends it: a node paused inside a commit then releases the
    /// lease row, and a standby's takeover does not wait for it.
    idle_secs: u64,
}

impl Session {
    fn new(url: &PostgresUrl, idle_secs: u64) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| StoreError::Engine(format!("cannot start the PostgreSQL runtime: {error}")))?;
        Ok(Self { runtime, config: url.config(), client: None, idle_secs })
    }

    /// Runs `exchange` on the connection, connecting first if there is none
    /// (or it broke). A failure drops a broken connection, so the next
    /// exchange reconnects.
    fn run<T>(
        &mut self,
        exchange: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let config = self.config.clone();
            let idle_secs = self.idle_secs;
            let client = self.runtime.block_on(async move {
                let (client, connection) = config.connect(NoTls).await.map_err(|error| unavailable(&error))?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "PostgreSQL connection ended");
                    }
                });
                // Acknowledged means committed on the primary's disk at
                // least: a weaker setting of the server is raised for this
                // session (a stronger one, remote_apply, is kept).
                let level = client.query_one("SHOW synchronous_commit", &[]).await.map_err(|e| unavailable(&e))?;
                let level: String = level.try_get(0).map_err(|e| unavailable(&e))?;
                if matches!(level.as_str(), "off" | "local" | "remote_write") {
                    client.batch_execute("SET synchronous_commit = on").await.map_err(|e| unavailable(&e))?;
                }
                client
                    .batch_execute(&format!("SET idle_in_transaction_session_timeout = '{idle_secs}s'"))
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok::<_, StoreError>(client)
            })?;
            self.client = Some(client);
        }
        let Self { runtime, client, .. } = self;
        let Some(connected) = client.as_mut() else {
            return Err(StoreError::Unavailable("PostgreSQL: not connected".to_owned()));
        };
        let outcome = runtime.block_on(async { tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(connected)).await });
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if connected.is_closed() {
                    *client = None;
                }
                Err(unavailable(&error))
            }
            Err(_) => {
                *client = None;
                Err(timed_out())
            }
        }
    }
}

/// Work handed to a [`Worker`]'s session.
type SessionJob = Box<dyn FnOnce(&mut Session) + Send>;

/// A thread that owns a [`Session`] and runs what it is handed: callers may
/// be on an async runtime's thread, where a session's own runtime cannot
/// block.
struct Worker {
    jobs: Option<mpsc::Sender<SessionJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(url: &PostgresUrl, idle_secs: u64) -> Result<Self, StoreError> {
        let mut session = Session::new(url, idle_secs)?;
        let (jobs, receiver) = mpsc::channel::<SessionJob>();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("consentvault-postgres".to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    while let Ok(job) = receiver.recv() {
                        job(&mut session);
                    }
                });
            })
            .map_err(|error| StoreError::Engine(format!("cannot start the PostgreSQL thread: {error}")))?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Runs `job` on the worker's session and waits for its result.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = self.jobs.as_ref().is_some_and(|jobs| {
            jobs.send(Box::new(move |session: &mut Session| {
                let _ = reply.send(job(session));
            }))
            .is_ok()
        });
        if !sent {
            return Err(StoreError::Closed);
        }
        answer.recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lease as this node holds it, shared with the thread that renews it.
#[derive(Debug)]
struct Lease {
    /// The fencing token every commit checks.
    token: i64,
    /// Who holds it, as the `lease` row names it.
    holder: String,
    life: Duration,
    /// What `valid_until_nanos` counts from.
    epoch: Instant,
    /// Until when this node may serve, in nanoseconds after `epoch`: three
    /// quarters of a life after the last renewal was sent. An atomic, as
    /// every read checks it.
    valid_until_nanos: AtomicU64,
    /// Another node took the lease: for good.
    superseded: AtomicBool,
    /// The node is closing: the renewer releases the lease and ends.
    closing: Mutex<bool>,
    wake: Condvar,
}

impl Lease {
    /// Whether this node may read and commit now.
    fn check(&self) -> Result<(), StoreError> {
        if self.superseded.load(Ordering::Acquire) {
            return Err(StoreError::Superseded);
        }
        if self.nanos_at(Instant::now()) >= self.valid_until_nanos.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "this node's lease is not renewed (PostgreSQL unreachable?): it serves again once it is".to_owned(),
            ));
        }
        Ok(())
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A renewal sent at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        self.valid_until_nanos.fetch_max(self.nanos_at(sent + self.life * 3 / 4), Ordering::AcqRel);
    }

    fn closing(&self) -> bool {
        self.closing.lock().map(|closing| *closing).unwrap_or(true)
    }

    /// Waits `interval`, or less if the node starts closing.
    fn wait(&self, interval: Duration) {
        if let Ok(closing) = self.closing.lock() {
            let _ = self.wake.wait_timeout_while(closing, interval, |closing| !*closing);
        }
    }
}

/// The PostgreSQL engine of the active node (or a read-only snapshot).
pub struct PostgresBackend {
    worker: Worker,
    /// The lease held; `None` for a snapshot, which never writes.
    lease: Option<Arc<Lease>>,
    renewer: Mutex<Option<JoinHandle<()>>>,
    /// Every record, as the last load and the batches applied since leave
    /// them.
    mirror: RwLock<Map>,
    /// The writes applied since the last commit, merged in order.
    pending: Mutex<WriteBatch>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let holder = self.lease.as_ref().map(|lease| lease.holder.as_str());
        f.debug_struct("PostgresBackend").field("holder", &holder).finish_non_exhaustive()
    }
}

/// This process's name in the `lease` row: host, process id and a random
/// part, so a restarted process on the same host is another holder.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|host| host.trim().to_owned());
    let host = host.ok().filter(|host| !host.is_empty()).unwrap_or_else(|| "node".to_owned());
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!("{host}:{}:{}", std::process::id(), crate::ids::hex(&random))
}

impl PostgresBackend {
    /// Connects, creates or migrates the schema, then waits until this node
    /// holds the lease (a standby waits here for as long as another node
    /// keeps it), and reads the records into memory. Blocks: call it where
    /// blocking is allowed.
    pub fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let worker = Worker::start(&settings.url, settings.lease_secs.max(1))?;
        worker.call(|session| session.run(async |client| migrate(client).await).and_then(|outcome| outcome))?;
        let life = Duration::from_secs(settings.lease_secs.max(1));
        // A snapshot holds no lease; every other access takes it first.
        let (lease, renewer) = if settings.access == Access::Snapshot {
            (None, None)
        } else {
            let holder = holder_name();
            let (token, sent) = lease_take(&worker, &holder, life, settings.access == Access::Standby)?;
            let lease = Arc::new(Lease {
                token,
                holder,
                life,
                epoch: sent,
                valid_until_nanos: AtomicU64::new(u64::try_from((life * 3 / 4).as_nanos()).unwrap_or(u64::MAX)),
                superseded: AtomicBool::new(false),
                closing: Mutex::new(false),
                wake: Condvar::new(),
            });
            tracing::info!(holder = %lease.holder, token, "this node holds the lease: it is the active node");
            let renewer = renewer_start(&settings.url, Arc::clone(&lease), settings.lease_secs.max(1))?;
            (Some(lease), Some(renewer))
        };
        let backend = Self {
            worker,
            lease,
            renewer: Mutex::new(renewer),
            mirror: RwLock::new(Map::new()),
            pending: Mutex::new(WriteBatch::new()),
        };
        backend.reload()?;
        Ok(backend)
    }

    /// Reads every record from the database into memory, replacing what
    /// was there and dropping writes not committed.
    fn reload(&self) -> Result<(), StoreError> {
        self.check()?;
        let records = self.worker.call(records_read)?;
        let mut pending = self.pending.lock().map_err(|_| StoreError::Panicked)?;
        pending.clear();
        *self.mirror.write().map_err(|_| StoreError::Panicked)? = records;
        Ok(())
    }

    /// Whether this node may read and commit now.
    fn check(&self) -> Result<(), StoreError> {
        self.lease.as_ref().map_or(Ok(()), |lease| lease.check())
    }

    /// The lease, for a write: a snapshot refuses every write.
    fn lease_for_write(&self) -> Result<&Lease, StoreError> {
        let lease = self
            .lease
            .as_deref()
            .ok_or_else(|| StoreError::Engine("a snapshot of the PostgreSQL store is read-only".to_owned()))?;
        lease.check()?;
        Ok(lease)
    }

    fn mirror(&self) -> Result<std::sync::RwLockReadGuard<'_, Map>, StoreError> {
        self.check()?;
        self.mirror.read().map_err(|_| StoreError::Panicked)
    }
}

impl Backend for PostgresBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.mirror()?.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let mirror = self.mirror()?;
        Ok(map_range(&mirror, start, end).take(limit).map(|(key, value)| (key.clone(), value.clone())).collect())
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Entry>, StoreError> {
        let mirror = self.mirror()?;
        Ok(map_range(&mirror, start, end).next_back().map(|(key, value)| (key.clone(), value.clone())))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.lease_for_write()?;
        let mut mirror = self.mirror.write().map_err(|_| StoreError::Panicked)?;
        let mut pending = self.pending.lock().map_err(|_| StoreError::Panicked)?;
        for (key, value) in batch {
            match value {
                Some(value) => mirror.insert(key.clone(), value.clone()),
                None => mirror.remove(key),
            };
            pending.insert(key.clone(), value.clone());
        }
        Ok(())
    }

    /// Commits every write applied since the last commit as one
    /// transaction, checking the fencing token first.
    fn flush(&self) -> Result<(), StoreError> {
        if self.pending.lock().map_err(|_| StoreError::Panicked)?.is_empty() {
            return Ok(());
        }
        // Checked before the writes are taken: refused, they stay pending.
        let lease = self.lease_for_write()?;
        let writes = std::mem::take(&mut *self.pending.lock().map_err(|_| StoreError::Panicked)?);
        let token = lease.token;
        let (committed, writes) = self
            .worker
            .call(move |session| {
                let outcome = session.run(async |client| commit(client, token, &writes).await).and_then(|done| done);
                Ok((outcome, writes))
            })
            .unwrap_or_else(|error| (Err(error), WriteBatch::new()));
        match &committed {
            Err(StoreError::Superseded) => {
                lease.superseded.store(true, Ordering::Release);
                tracing::error!("another node took the lease: this node's commits are refused from now on");
            }
            // Not acknowledged, but still in memory, where the batches after
            // it decide on top of it (as sled keeps a batch whose flush
            // failed): the next commit carries it too, unless a recovery
            // reads the records again first. Later writes of a key win.
            Err(_) => {
                let mut pending = self.pending.lock().map_err(|_| StoreError::Panicked)?;
                for (key, value) in writes {
                    pending.entry(key).or_insert(value);
                }
            }
            Ok(()) => {}
        }
        committed
    }

    /// The commit itself: `COMMIT` returns only once the database made the
    /// transaction durable, so there is nothing left to wait for apart.
    fn write_out(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn keys_count(&self) -> Result<u64, StoreError> {
        Ok(self.mirror()?.len() as u64)
    }

    /// After a failed commit (the database unreachable, say) the records
    /// are read again: whether that commit landed or not, memory then holds
    /// what the database holds.
    fn recover(&self) -> Result<(), StoreError> {
        self.reload()
    }

    fn standing(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn superseded(&self) -> bool {
        self.lease.as_ref().is_some_and(|lease| lease.superseded.load(Ordering::Acquire))
    }

    /// Stops renewing and gives the lease up, so a standby takes over at
    /// once instead of after a lease's life.
    fn close(&self) -> Result<(), StoreError> {
        let Some(lease) = &self.lease else { return Ok(()) };
        if let Ok(mut closing) = lease.closing.lock() {
            *closing = true;
        }
        lease.wake.notify_all();
        let renewer = self.renewer.lock().ok().and_then(|mut renewer| renewer.take());
        if let Some(renewer) = renewer {
            let _ = renewer.join();
        }
        Ok(())
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        let _ = Backend::close(self);
    }
}

/// Creates the schema or brings it to this build's version.
async fn migrate(client: &mut Client) -> Result<Result<(), StoreError>, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    txn.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS consentvault;
         CREATE TABLE IF NOT EXISTS consentvault.schema_version (version integer NOT NULL);",
    )
    .await?;
    let version: Option<i32> =
        txn.query_opt("SELECT version FROM consentvault.schema_version", &[]).await?.map(|row| row.get(0));
    let version = version.unwrap_or(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if version > known {
        return Ok(Err(StoreError::Engine(format!(
            "the database's schema is at version {version}, made by a newer consentvault; this build knows up to \
             {known}"
        ))));
    }
    for (done, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        txn.batch_execute(migration).await?;
        let now = i32::try_from(done + 1).unwrap_or(i32::MAX);
        txn.execute("DELETE FROM consentvault.schema_version", &[]).await?;
        txn.execute("INSERT INTO consentvault.schema_version VALUES ($1)", &[&now]).await?;
        tracing::info!(version = now, "PostgreSQL schema migrated");
    }
    txn.commit().await?;
    Ok(Ok(()))
}

/// Takes the lease: waits until it is free if `wait`, else refuses at once
/// if another node holds it. Returns the token and when the taking
/// statement was sent.
fn lease_take(worker: &Worker, holder: &str, life: Duration, wait: bool) -> Result<(i64, Instant), StoreError> {
    let poll = (life / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut told: Option<String> = None;
    loop {
        let sent = Instant::now();
        let (holder_owned, secs) = (holder.to_owned(), life.as_secs_f64());
        let attempt = worker.call(move |session| {
            session.run(async |client| {
                let taken = client
                    .query_opt(
                        "UPDATE consentvault.lease SET holder = $1, token = token + 1, acquired_at = now(),
                             expires_at = now() + make_interval(secs => $2)
                         WHERE id = 1 AND expires_at <= now() RETURNING token",
                        &[&holder_owned, &secs],
                    )
                    .await?;
                if let Some(row) = taken {
                    return Ok(Ok(row.get::<_, i64>(0)));
                }
                let row = client
                    .query_one(
                        "SELECT holder, GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0)::float8
                         FROM consentvault.lease WHERE id = 1",
                        &[],
                    )
                    .await?;
                Ok(Err((row.get::<_, String>(0), row.get::<_, f64>(1))))
            })
        });
        match attempt {
            Ok(Ok(token)) => return Ok((token, sent)),
            Ok(Err((active, _))) if !wait => return Err(StoreError::LeaseHeld(active)),
            Ok(Err((active, left_secs))) => {
                if told.as_deref() != Some(active.as_str()) {
                    tracing::info!(active = %active, left_secs, "standing by: another node holds the lease");
                    told = Some(active);
                }
            }
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(error) if !wait => return Err(error),
            Err(error) => tracing::warn!(%error, "standing by: cannot reach PostgreSQL to take the lease"),
        }
        std::thread::sleep(poll);
    }
}

/// Starts the thread that renews the lease five times per life, on a
/// connection of its own (a slow commit does not hold a renewal up), and
/// gives the lease up when the node closes.
fn renewer_start(url: &PostgresUrl, lease: Arc<Lease>, idle_secs: u64) -> Result<JoinHandle<()>, StoreError> {
    let mut session = Session::new(url, idle_secs)?;
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("consentvault-lease".to_owned())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || renew_loop(&mut session, &lease));
        })
        .map_err(|error| StoreError::Engine(format!("cannot start the lease thread: {error}")))
}

fn renew_loop(session: &mut Session, lease: &Lease) {
    let (token, secs) = (lease.token, lease.life.as_secs_f64());
    let mut failing = false;
    while !lease.closing() && !lease.superseded.load(Ordering::Acquire) {
        lease.wait(lease.life / 5);
        if lease.closing() {
            break;
        }
        let sent = Instant::now();
        let renewed = session.run(async |client| {
            client
                .query_opt(
                    "UPDATE consentvault.lease SET expires_at = now() + make_interval(secs => $2)
                     WHERE id = 1 AND token = $1 RETURNING 1",
                    &[&token, &secs],
                )
                .await
                .map(|row| row.is_some())
        });
        match renewed {
            Ok(true) => {
                lease.renewed(sent);
                if std::mem::take(&mut failing) {
                    tracing::warn!("lease renewed again; serving");
                }
            }
            Ok(false) => {
                lease.superseded.store(true, Ordering::Release);
                tracing::error!("another node took the lease: this node stops serving and committing");
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(%error, "cannot renew the lease; reads and writes are refused until it is");
                }
            }
        }
    }
    if lease.closing() && !lease.superseded.load(Ordering::Acquire) {
        let released = session.run(async |client| {
            client
                .execute(
                    "UPDATE consentvault.lease SET expires_at = '-infinity' WHERE id = 1 AND token = $1",
                    &[&token],
                )
                .await
        });
        match released {
            Ok(_) => tracing::info!("lease given up: a standby may take over at once"),
            Err(error) => tracing::warn!(%error, "cannot give the lease up; a standby takes over when it expires"),
        }
    }
}

/// Every record, read a page at a time in one snapshot.
fn records_read(session: &mut Session) -> Result<Map, StoreError> {
    session.run(async |client| {
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut records = Map::new();
        loop {
            let after = records.last_key_value().map(|(key, _)| key.clone());
            let page = records_page(&txn, after.as_deref()).await?;
            let full = page.len() == PAGE_ROWS as usize;
            records.extend(page);
            if !full {
                break;
            }
        }
        txn.commit().await?;
        Ok(records)
    })
}

/// Up to 10,000 records after `after` (from the first with `None`), in
/// key order.
async fn records_page(
    client: &impl tokio_postgres::GenericClient,
    after: Option<&[u8]>,
) -> Result<Entries, tokio_postgres::Error> {
    let rows = match after {
        None => {
            client.query("SELECT key, value FROM consentvault.records ORDER BY key LIMIT $1", &[&PAGE_ROWS]).await?
        }
        Some(after) => {
            client
                .query(
                    "SELECT key, value FROM consentvault.records WHERE key > $1 ORDER BY key LIMIT $2",
                    &[&after, &PAGE_ROWS],
                )
                .await?
        }
    };
    rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

/// Writes `entries`: a key and `Some` value to put, or `None` to delete.
async fn records_write<'a>(
    client: &impl tokio_postgres::GenericClient,
    entries: impl IntoIterator<Item = (&'a Vec<u8>, Option<&'a Vec<u8>>)>,
) -> Result<(), tokio_postgres::Error> {
    let (mut keys, mut values, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in entries {
        match value {
            Some(value) => {
                keys.push(key.as_slice());
                values.push(value.as_slice());
            }
            None => deleted.push(key.as_slice()),
        }
    }
    if !keys.is_empty() {
        client
            .execute(
                "INSERT INTO consentvault.records (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&keys, &values],
            )
            .await?;
    }
    if !deleted.is_empty() {
        client.execute("DELETE FROM consentvault.records WHERE key = ANY($1::bytea[])", &[&deleted]).await?;
    }
    Ok(())
}

/// One commit: the lease row locked and the token checked, the writes, then
/// `COMMIT`. Returns [`StoreError::Superseded`] (inside `Ok`) if another
/// node holds the lease now.
async fn commit(
    client: &mut Client,
    token: i64,
    writes: &WriteBatch,
) -> Result<Result<(), StoreError>, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    let held =
        txn.query_opt("SELECT 1 FROM consentvault.lease WHERE id = 1 AND token = $1 FOR SHARE", &[&token]).await?;
    if held.is_none() {
        txn.rollback().await?;
        return Ok(Err(StoreError::Superseded));
    }
    records_write(&txn, writes.iter().map(|(key, value)| (key, value.as_ref()))).await?;
    txn.commit().await?;
    Ok(Ok(()))
}

/// A database to copy a vault's records into or out of (`consentvault store
/// copy`), without the lease: the copy refuses a database another node
/// could be serving from.
#[derive(Debug)]
pub struct PostgresCopy {
    session: Session,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("connected", &self.client.is_some()).finish_non_exhaustive()
    }
}

impl PostgresCopy {
    /// Connects and migrates the schema. Blocks: call it off any async
    /// runtime.
    pub fn open(url: &PostgresUrl) -> Result<Self, StoreError> {
        let mut session = Session::new(url, LEASE_SECS_DEFAULT)?;
        session.run(async |client| migrate(client).await)??;
        Ok(Self { session })
    }

    /// How many records the database holds.
    pub fn count(&mut self) -> Result<u64, StoreError> {
        self.session.run(async |client| {
            let row = client.query_one("SELECT count(*) FROM consentvault.records", &[]).await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    /// Starts the copy's one transaction (a consistent snapshot) and locks
    /// the lease row: refused if a node holds the lease (a vault is served
    /// from this database), and no node takes it until [`Self::commit`].
    pub fn begin(&mut self) -> Result<(), StoreError> {
        let held = self.session.run(async |client| {
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
            let row = client
                .query_one("SELECT holder, expires_at > now() FROM consentvault.lease WHERE id = 1 FOR UPDATE", &[])
                .await?;
            Ok(row.get::<_, bool>(1).then(|| row.get::<_, String>(0)))
        })?;
        match held {
            Some(holder) => Err(StoreError::LeaseHeld(holder)),
            None => Ok(()),
        }
    }

    /// Commits the copy's transaction.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.session.run(async |client| client.batch_execute("COMMIT").await)
    }

    /// Up to 10,000 records after `after` (from the first with
    /// `None`), in key order.
    pub fn page(&mut self, after: Option<&[u8]>) -> Result<Entries, StoreError> {
        self.session.run(async |client| records_page(client, after).await)
    }

    /// Writes `entries` (in the copy's transaction).
    pub fn write(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.session
            .run(async |client| records_write(client, entries.iter().map(|(key, value)| (key, Some(value)))).await)
    }
}

/// Opens the engine of the active node: what [`super::open`] calls for a
/// PostgreSQL store.
pub(super) fn open(settings: &PostgresSettings) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(Arc::new(PostgresBackend::open(settings)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shows_no_password_and_bad_ones_say_what_is_wrong() {
        let url = PostgresUrl::parse("postgres://vault:s3cret@db.internal:5433/consentvault").unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert_eq!(url.to_string(), "postgres://vault@db.internal:5433/consentvault");
        let pair = PostgresUrl::parse("postgres://vault:s3cret@a:5432,b:5433/v?target_session_attrs=read-write");
        assert_eq!(pair.map(|url| url.to_string()), Ok("postgres://vault@a:5432,b:5433/v".to_owned()));
        assert!(!format!("{url:?}").contains("s3cret"));
        for (text, says) in [
            ("mysql://vault@db/x", "postgres://"),
            ("postgres://vault@db:5432", "no database"),
            ("postgres://vault:pw@db:5432/x?sslmode=require", "TLS"),
            ("postgres://vault:pw@db:notaport/x", "not a PostgreSQL URL"),
        ] {
            let error = PostgresUrl::parse(text).err().unwrap_or_default();
            assert!(error.contains(says), "{text}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }
}
