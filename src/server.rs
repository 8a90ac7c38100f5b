//! The running server: binds, serves the router, and shuts down gracefully.
//!
//! [`Application::build`] can bind port 0, so tests start the real server on
//! a free port with a temporary data directory. It also binds the control
//! socket (`control.rs`) in the data directory, for `consentvault backup`.
//!
//! The listener answers from the moment it is bound ([`Application::bind`]):
//! `503 starting` while the vault opens, or on a shared PostgreSQL store
//! `503 standby` while another node holds the lease; then the full router
//! takes over the same listener. A node whose lease another node took stops
//! serving and [`Application::run`] returns [`Superseded`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, Limits};
use crate::config::ServeConfig;
use crate::control::ControlSocket;
use crate::vault::{Opened, Vault, VaultError};

/// How often the background sweep runs (grant and request expiry, the
/// retention rule).
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How long a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Accepts connections until `shutdown` resolves, then lets requests in
/// flight finish (for at most [`SHUTDOWN_GRACE`]).
///
/// This is `axum::serve` with hyper's HTTP/1 header-read timeout switched
/// on: hyper has one, but it only acts with a timer, which `axum::serve`
/// does not install. Each request carries the peer address as
/// `ConnectInfo`, for the per-address rate limits.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: RouterSlot,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Some(header_read_timeout));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = Arc::clone(&router);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            // The router in place when the request arrives serves it.
            let current =
                router.read().map(|router| router.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
            current.oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection ends with an error when the client goes away or
            // is too slow; that is the client's affair.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the shutdown grace period were cut");
    }
}

/// The router the listener serves now: the waiting one, then the vault's.
type RouterSlot = Arc<std::sync::RwLock<axum::Router>>;

/// [`Application::run`] ended because another vault node took the shared
/// store's lease: this node served nothing after that.
#[derive(Debug, thiserror::Error)]
#[error("another vault node took the store's lease; this node stopped serving (restart it to stand by)")]
pub struct Superseded;

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The vault could not be opened.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Subjects stored by an earlier version could not be given an activity
    /// record.
    #[error("cannot record the activity of stored subjects: {0}")]
    Activity(crate::consent::ConsentError),
    /// The admin client could not be created on first start.
    #[error("cannot create the admin client: {0}")]
    Admin(#[from] crate::principals::PrincipalError),
    /// The business name index could not be completed.
    #[error("cannot index the names of stored businesses: {0}")]
    Names(crate::principals::PrincipalError),
    /// Opening the vault panicked.
    #[error("opening the vault failed unexpectedly")]
    Panicked,
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A bound listener that answers `503` until its vault is open
/// ([`Bound::open`]).
#[derive(Debug)]
pub struct Bound {
    address: SocketAddr,
    slot: RouterSlot,
    accepting: Accepting,
}

/// The task accepting connections, and how to stop it.
#[derive(Debug)]
struct Accepting {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Accepting {
    /// Stops accepting and waits for requests in flight (see
    /// [`serve_connections`]).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A vault bound to a listening socket, ready to serve.
#[derive(Debug)]
pub struct Application {
    accepting: Accepting,
    slot: RouterSlot,
    address: SocketAddr,
    vault: Arc<Vault>,
    opened: Opened,
    admin_credentials: Option<std::path::PathBuf>,
    control: Option<ControlSocket>,
}

impl Application {
    /// Binds the listen address and opens the vault.
    pub async fn build(config: &ServeConfig) -> Result<Self, StartError> {
        Self::bind(config).await?.open(config).await
    }

    /// Binds the listen address and answers `503` on it (`starting`, or
    /// `standby` on a shared store) until [`Bound::open`] is done.
    pub async fn bind(config: &ServeConfig) -> Result<Bound, StartError> {
        file_size_limit_watch();
        // Bound before the vault is opened: a start that cannot listen (the
        // port is in use) leaves nothing behind, no key, store or admin
        // credentials, and the next start is a first start, with its banner.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { address: config.listen, source })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind { address: config.listen, source })?;
        let shared = matches!(config.vault.options.store, crate::vault::StoreLocation::Postgres(_));
        let slot: RouterSlot = Arc::new(std::sync::RwLock::new(api::waiting_router(shared)));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
        let task = tokio::spawn(serve_connections(listener, Arc::clone(&slot), header_read_timeout, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        Ok(Bound { address, slot, accepting: Accepting { task, stop } })
    }
}

impl Bound {
    /// The bound address (with the real port when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Opens the vault (a standby waits here for the lease) and serves it
    /// on the bound listener.
    pub async fn open(self, config: &ServeConfig) -> Result<Application, StartError> {
        let Self { address, slot, accepting } = self;
        let options = config.vault.options.clone();
        let opening = tokio::task::spawn_blocking(move || Vault::open(options)).await;
        let (vault, opened) = match opening {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                accepting.stop().await;
                return Err(error.into());
            }
            Err(_) => {
                accepting.stop().await;
                return Err(StartError::Panicked);
            }
        };
        // External issuers' keys fetched over HTTP: a provider that does not
        // answer is logged, and its tokens are refused until it does.
        vault.principals().token_verifier().refresh_all().await;
        // A store behind a checkpoint the vault published is served only
        // its probes, which say so; nothing is written until an operator
        // decides (`Vault::rollback`).
        if vault.rollback().is_none() {
            if let Some(path) = vault.principals().admin_bootstrap(vault.data_dir()).await? {
                tracing::warn!(path = %path.display(), "admin credentials written");
            }
            vault.policies_loaded_at_start().await.map_err(|error| StartError::Vault(VaultError::Audit(error)))?;
            // Subjects stored before activity was recorded get a record now,
            // so the retention rule counts their inactivity from this start.
            vault.sweep().activity_backfill().await.map_err(StartError::Activity)?;
            // Businesses registered before names were unique keep theirs.
            vault.principals().name_index_backfill().await.map_err(StartError::Names)?;
        }
        // Shown at every start while the file is still where the first
        // start wrote it, so a hint missed once is not lost.
        let admin_credentials =
            Some(vault.data_dir().join(crate::principals::ADMIN_CREDENTIALS_FILE)).filter(|path| path.is_file());
        let limits = Limits {
            body_bytes_max: config.body_bytes_max,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            principal_requests_per_sec: config.principal_requests_per_sec,
        };
        let router = api::router(Arc::clone(&vault), limits);
        // Serving matters more than online backups: a socket that cannot be
        // bound (a data directory path too long for a socket name, say) is
        // reported and the vault serves without it.
        let control = match ControlSocket::bind(&config.vault.options.data_dir) {
            Ok(control) => Some(control),
            Err(error) => {
                tracing::error!(%error, "no control socket; `consentvault backup` cannot reach this server");
                None
            }
        };
        if let Ok(mut current) = slot.write() {
            *current = router;
        }
        Ok(Application { accepting, slot, address, vault, opened, admin_credentials, control })
    }
}

impl Application {
    /// The bound address (with the real port when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether opening created a new vault.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// The admin credentials file, while it is still in the data directory
    /// (an operator moves it to a secret store once the admin can sign in).
    pub fn admin_credentials(&self) -> Option<&std::path::Path> {
        self.admin_credentials.as_deref()
    }

    /// The open vault.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Serves until `shutdown` resolves, lets requests in flight finish, then
    /// closes the store after its last flush.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        // SIGHUP re-reads the policy directory, as the admin endpoint does.
        let reload_vault = Arc::downgrade(&self.vault);
        let reloader = tokio::spawn(async move {
            let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hangups.recv().await.is_some() {
                let Some(vault) = reload_vault.upgrade() else { break };
                match vault.policies_reload(&crate::audit::Actor::system()).await {
                    Ok(policies) => tracing::info!(sha256 = %policies.sha256, "policies reloaded on SIGHUP"),
                    Err(error) => tracing::error!(%error, "policy reload on SIGHUP failed; the policies in force stay"),
                }
            }
        });
        // Grants whose window closed get their `grant.expired` event (reads
        // already deny at the edge; this makes the end visible in the feed),
        // pending requests past their time are closed, and the retention
        // rule, if the policies set one, erases inactive customers.
        let sweep_vault = Arc::downgrade(&self.vault);
        let sweeper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
            loop {
                ticks.tick().await;
                let Some(vault) = sweep_vault.upgrade() else { break };
                if vault.rollback().is_none() {
                    vault.sweep().sweep().await;
                }
            }
        });
        // Webhook messages the outbox holds, delivered until the vault
        // closes; what is not delivered by then is sent after the next start.
        let webhooks = self.vault.webhooks().clone();
        let serving = self.vault.rollback().is_none();
        let deliverer = tokio::spawn(async move {
            if serving {
                webhooks.run().await;
            }
        });
        let control = self.control.map(|control| control.serve(Arc::clone(&self.vault)));
        // Serves until asked to stop, or until another node takes the lease:
        // then the waiting router answers what is still in flight or comes
        // on an open connection, and this node stops.
        let store_vault = Arc::clone(&self.vault);
        let superseded = async move {
            while !store_vault.store().superseded() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let was_superseded = tokio::select! {
            () = shutdown => false,
            () = superseded => true,
        };
        if was_superseded {
            tracing::error!("another vault node took the store's lease: this node stops serving");
            if let Ok(mut current) = self.slot.write() {
                *current = api::waiting_router(true);
            }
        }
        self.accepting.stop().await;
        reloader.abort();
        sweeper.abort();
        deliverer.abort();
        // An attempt in flight is cut off; its message stays in the outbox.
        let _ = deliverer.await;
        // Removes the socket: no new command reaches a closing vault.
        drop(control);
        if was_superseded {
            // Nothing it holds can be committed any more.
            let _ = self.vault.close();
            return Err(std::io::Error::other(Superseded));
        }
        self.vault.close().map_err(std::io::Error::other)
    }
}

/// Takes SIGXFSZ, which the kernel sends when a write would pass the
/// file-size limit (`RLIMIT_FSIZE`, systemd's `LimitFSIZE`). Its default
/// action ends the process; taken, the write fails instead, the store
/// answers `503 storage_unavailable` and recovers by itself once the limit
/// is raised, as after a full disk.
fn file_size_limit_watch() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut signals) = signal(SignalKind::from_raw(libc::SIGXFSZ)) else {
        tracing::warn!("cannot take SIGXFSZ; a write past the file-size limit would end the process");
        return;
    };
    tokio::spawn(async move {
        let mut last_said: Option<std::time::Instant> = None;
        while signals.recv().await.is_some() {
            if last_said.is_none_or(|said| said.elapsed() >= Duration::from_secs(60)) {
                tracing::error!("a write went past the file-size limit (RLIMIT_FSIZE); storage refuses writes");
                last_said = Some(std::time::Instant::now());
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that comes
/// right after the vault says it listens is a graceful stop, not the
/// default action's abrupt one. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let wait = |installed: std::io::Result<tokio::signal::unix::Signal>| async move {
            match installed {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {},
            () = wait(terminate) => {},
        }
        tracing::info!("shutdown requested; finishing requests in flight");
    }
}
