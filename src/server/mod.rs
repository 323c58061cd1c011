//! The tokio server: listeners, connection limits, PROXY and TLS, reload
//! and graceful shutdown.
//!
//! ```text
//! listener ─► accept ─► max_clients? ─► PROXY header? ─► per-IP limit? ─► TLS? ─► session
//!                          │ no              │ bad            │ no            │ fails
//!                          ▼                 ▼                ▼               ▼
//!                      421 4.7.0           close          421 4.7.0        close
//! ```
//!
//! What a reload may change (domains, limits, certificates, listeners) lives
//! in a [`Runtime`] behind an `ArcSwap`: a connection takes the current one
//! when it is accepted and keeps it, so a reload never disturbs a session
//! in progress. Stores and the recipient check are fixed at start.

pub mod conn;
pub mod proxy;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::check::RecipientCheck;
use crate::config::{Config, ConnLimits, ListenerConfig, StoreConfig, TlsMode};
use crate::pipeline::Pipeline;
use crate::smtp::session::MailRate;
use crate::smtp::{Peer, Session, reply};
use crate::store::{FanOut, Store, StoreError, Stores, WriterHandle};

pub use conn::{CloseReason, Io, Services, Stop};

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// A listener's certificate or key is unusable.
    #[error("listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: tls::TlsError,
    },
    /// A store or the recipient check could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything outside the process a server talks to, opened from the
/// configuration: the stores and the recipient check.
pub struct Backends {
    /// The stores, each with its writer.
    pub stores: Stores,
    /// The recipient check, if configured.
    pub check: Option<RecipientCheck>,
}

impl Backends {
    /// Opens the stores and the recipient check the configuration lists.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        let stores = Stores::open(config).await?;
        let check = RecipientCheck::open(config).await?;
        Ok(Self { stores, check })
    }
}

/// One listener's settings as of the last (re)load.
struct ListenerRuntime {
    cfg: ListenerConfig,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    /// The configured address, as a metrics label.
    label: String,
}

/// Everything a reload replaces.
struct Runtime {
    config: Config,
    /// Keyed by the configured address (which may have port 0).
    listeners: HashMap<SocketAddr, Arc<ListenerRuntime>>,
    pipeline: Arc<Pipeline>,
}

impl Runtime {
    /// Builds the runtime of `config`, loading every certificate, so a bad
    /// one is found before anything is swapped in. `rate` is the MAIL-rate
    /// limiter every session shares (its state outlives reloads);
    /// `size_cap` the stores' limit on message size, if any.
    fn build(
        config: Config,
        rate: &Arc<MailRateLimiter>,
        size_cap: Option<u64>,
    ) -> Result<Self, ServerError> {
        let mut listeners = HashMap::new();
        for l in &config.listener {
            let tls = match (l.tls, &l.tls_cert, &l.tls_key) {
                (TlsMode::None, _, _) => None,
                (_, Some(cert), Some(key)) => {
                    Some(tls::acceptor(cert, key).map_err(|source| ServerError::Tls {
                        addr: l.addr,
                        source,
                    })?)
                }
                _ => unreachable!("validated: TLS listeners have a certificate and key"),
            };
            listeners.insert(
                l.addr,
                Arc::new(ListenerRuntime {
                    cfg: l.clone(),
                    limits: {
                        let mut limits = config.conn_limits_for(l);
                        let session = Arc::get_mut(&mut limits.session).expect("just built");
                        if config.max_messages_per_minute_per_ip > 0 {
                            session.mail_rate = Some(Arc::clone(rate) as Arc<dyn MailRate>);
                        }
                        if let Some(cap) = size_cap
                            && session.max_message_size > cap
                        {
                            tracing::warn!(
                                listener = %l.addr,
                                configured = session.max_message_size,
                                limit = cap,
                                "max_message_size lowered to what the stores accept"
                            );
                            session.max_message_size = cap;
                        }
                        limits
                    },
                    tls,
                    label: l.addr.to_string(),
                }),
            );
        }
        Ok(Self {
            pipeline: Arc::new(Pipeline::from_config(&config)),
            listeners,
            config,
        })
    }
}

/// Open connections per client address.
#[derive(Default)]
struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

/// A connection's slot in [`ClientCounts`], given back on drop.
struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl ClientCounts {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut map = self.0.lock().expect("client counts lock");
        let n = map.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().expect("client counts lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// MAIL commands per minute per client address, in fixed one-minute windows.
#[derive(Debug, Default)]
pub struct MailRateLimiter {
    per_minute: AtomicU32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl MailRateLimiter {
    /// MAIL commands per minute per client; 0 for no limit.
    fn set_limit(&self, per_minute: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
    }
}

/// Past this many tracked clients, windows that ended are dropped.
const RATE_PRUNE_AT: usize = 100_000;

impl MailRate for MailRateLimiter {
    fn allow(&self, client: IpAddr) -> bool {
        let limit = self.per_minute.load(Ordering::Relaxed);
        if limit == 0 {
            return true;
        }
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut windows = self.windows.lock().expect("rate lock");
        if windows.len() >= RATE_PRUNE_AT {
            windows.retain(|_, (start, _)| now.duration_since(*start) < minute);
        }
        let (start, count) = windows.entry(client).or_insert((now, 0));
        if now.duration_since(*start) >= minute {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= limit
    }
}

/// What every accept loop and connection task shares.
struct Shared {
    runtime: ArcSwap<Runtime>,
    stores: Arc<FanOut>,
    check: Option<Arc<RecipientCheck>>,
    inflight: Arc<Semaphore>,
    permits: Arc<Semaphore>,
    max_clients: AtomicUsize,
    clients: Arc<ClientCounts>,
    rate: Arc<MailRateLimiter>,
    /// The stores' limit on message size (fixed at start).
    size_cap: Option<u64>,
    stop: Stop,
    tracker: TaskTracker,
}

/// A running accept loop.
struct Accepter {
    local: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A running server: listeners, connections, stores.
pub struct Server {
    shared: Arc<Shared>,
    writers: Vec<WriterHandle>,
    /// Keyed by configured address.
    accepters: Mutex<HashMap<SocketAddr, Accepter>>,
    admin: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
}

impl Server {
    /// Binds every configured listener and starts serving.
    pub async fn bind(config: Config, backends: Backends) -> Result<Self, ServerError> {
        let mut listeners = Vec::new();
        for l in &config.listener {
            listeners.push(bind(l.addr).await?);
        }
        Self::start(listeners, config, backends).await
    }

    /// Starts serving on already-bound listeners, one per configured
    /// `[[listener]]`, in order.
    pub async fn start(
        listeners: Vec<TcpListener>,
        config: Config,
        backends: Backends,
    ) -> Result<Self, ServerError> {
        assert_eq!(
            listeners.len(),
            config.listener.len(),
            "one bound listener per [[listener]]"
        );
        let rate = Arc::new(MailRateLimiter::default());
        let size_cap = backends.stores.size_cap();
        let runtime = Runtime::build(config, &rate, size_cap)?;
        rate.set_limit(runtime.config.max_messages_per_minute_per_ip);
        let (stores, writers) = backends.stores.split();
        let stores = Arc::new(stores);
        let admin = match &runtime.config.admin {
            Some(a) => {
                let l = bind(a.addr).await?;
                let local = l.local_addr().map_err(|source| ServerError::Bind {
                    addr: a.addr,
                    source,
                })?;
                let stop = CancellationToken::new();
                let task = tokio::spawn(crate::admin::serve(l, Arc::clone(&stores), stop.clone()));
                tracing::info!(addr = %local, "admin listening");
                Some((local, stop, task))
            }
            None => None,
        };
        rate.per_minute.store(
            runtime.config.max_messages_per_minute_per_ip,
            Ordering::Relaxed,
        );
        let shared = Arc::new(Shared {
            inflight: Arc::new(Semaphore::new(
                conn::kib(runtime.config.max_inflight_bytes) as usize
            )),
            permits: Arc::new(Semaphore::new(runtime.config.max_clients)),
            max_clients: AtomicUsize::new(runtime.config.max_clients),
            runtime: ArcSwap::from_pointee(runtime),
            stores,
            check: backends.check.map(Arc::new),
            clients: Arc::default(),
            rate,
            size_cap,
            stop: Stop::default(),
            tracker: TaskTracker::new(),
        });
        let server = Self {
            shared,
            writers,
            accepters: Mutex::new(HashMap::new()),
            admin,
        };
        let keys: Vec<SocketAddr> = server
            .shared
            .runtime
            .load()
            .config
            .listener
            .iter()
            .map(|l| l.addr)
            .collect();
        for (key, listener) in keys.into_iter().zip(listeners) {
            server.spawn_accepter(key, listener)?;
        }
        Ok(server)
    }

    fn spawn_accepter(&self, key: SocketAddr, listener: TcpListener) -> Result<(), ServerError> {
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr: key, source })?;
        tracing::info!(addr = %local, "listening");
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            key,
            Arc::clone(&self.shared),
            stop.clone(),
        ));
        self.accepters
            .lock()
            .expect("accepters lock")
            .insert(key, Accepter { local, stop, task });
        Ok(())
    }

    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let accepters = self.accepters.lock().expect("accepters lock");
        self.shared
            .runtime
            .load()
            .config
            .listener
            .iter()
            .filter_map(|l| accepters.get(&l.addr).map(|a| a.local))
            .collect()
    }

    /// The admin listener's bound address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _, _)| *a)
    }

    /// Swaps in a new configuration: domains, limits, certificates, log
    /// level (by the caller), listeners added or removed. Connections in
    /// progress keep the configuration they started with. On error nothing
    /// changes.
    pub async fn reload(&self, config: Config) -> Result<(), ServerError> {
        let old = self.shared.runtime.load_full();
        let new = Runtime::build(config, &self.shared.rate, self.shared.size_cap)?;
        // Bind new listeners first: if one fails, nothing has changed.
        let mut added = Vec::new();
        for l in &new.config.listener {
            let exists = self
                .accepters
                .lock()
                .expect("accepters lock")
                .contains_key(&l.addr);
            if !exists {
                added.push((l.addr, bind(l.addr).await?));
            }
        }
        if new.config.store != old.config.store
            || new.config.recipient_check != old.config.recipient_check
            || new.config.admin != old.config.admin
            || new.config.max_inflight_bytes != old.config.max_inflight_bytes
        {
            tracing::warn!(
                "stores, recipient_check, admin and max_inflight_bytes change at restart only"
            );
        }
        self.resize_permits(new.config.max_clients);
        self.shared
            .rate
            .set_limit(new.config.max_messages_per_minute_per_ip);
        let keep: Vec<SocketAddr> = new.config.listener.iter().map(|l| l.addr).collect();
        self.shared.runtime.store(Arc::new(new));
        for (key, listener) in added {
            self.spawn_accepter(key, listener)?;
        }
        let mut accepters = self.accepters.lock().expect("accepters lock");
        accepters.retain(|key, a| {
            let keep = keep.contains(key);
            if !keep {
                tracing::info!(addr = %a.local, "listener removed");
                a.stop.cancel();
            }
            keep
        });
        tracing::info!("configuration reloaded");
        Ok(())
    }

    fn resize_permits(&self, max: usize) {
        let old = self.shared.max_clients.swap(max, Ordering::Relaxed);
        if max > old {
            self.shared.permits.add_permits(max - old);
        } else if max < old {
            // Only free permits can be forgotten; busy ones shrink the
            // limit as their connections end... which they would not do
            // by themselves, so the rest are forgotten as they come back.
            let forgotten = self.shared.permits.forget_permits(old - max);
            if forgotten < old - max {
                let rest = old - max - forgotten;
                let permits = Arc::clone(&self.shared.permits);
                tokio::spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(rest as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }

    /// Graceful shutdown: stop accepting; sessions without an open
    /// transaction get `421 4.3.2` now, the others may finish within
    /// `shutdown_timeout_secs`; then every store writer drains its queue.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.shared.runtime.load().config.shutdown_timeout_secs);
        tracing::info!(
            connections = self.shared.tracker.len(),
            grace_secs = grace.as_secs(),
            "shutting down"
        );
        self.shared.stop.graceful.cancel();
        let accepters: Vec<Accepter> = self
            .accepters
            .lock()
            .expect("accepters lock")
            .drain()
            .map(|(_, a)| a)
            .collect();
        for a in accepters {
            a.stop.cancel();
            let _ = a.task.await;
        }
        self.shared.tracker.close();
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.shared.tracker.len(),
                "grace period over, closing the remaining sessions"
            );
            self.shared.stop.now.cancel();
            self.shared.tracker.wait().await;
        }
        if let Some((_, stop, task)) = self.admin {
            stop.cancel();
            let _ = task.await;
        }
        // Every connection is gone; dropping the last handles to the stores
        // lets each writer finish its queue and stop.
        drop(self.shared);
        for w in self.writers {
            w.drained().await;
        }
        tracing::info!("stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves SMTP on `listener`, storing into `store` (and nothing else),
/// until `shutdown` completes; then shuts down gracefully (see
/// [`Server::shutdown`]): nothing acknowledged is lost.
pub async fn run<S: Store>(
    listener: TcpListener,
    config: Config,
    store: S,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut stores = Stores::new();
    stores.add(store, &StoreConfig::default());
    let backends = Backends {
        stores,
        check: None,
    };
    serve(vec![listener], config, backends, shutdown).await
}

/// Serves SMTP on bound listeners (one per `[[listener]]`) with the stores
/// and check in `backends` until `shutdown` completes.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: Config,
    backends: Backends,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let server = Server::start(listeners, config, backends)
        .await
        .map_err(io::Error::other)?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    key: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = shared.stop.graceful.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to free up
                // rather than spin.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let runtime = shared.runtime.load_full();
        let Some(listener_rt) = runtime.listeners.get(&key).cloned() else {
            return;
        };
        match Arc::clone(&shared.permits).try_acquire_owned() {
            Ok(permit) => {
                // A span costs ~400 bytes per connection in the subscriber's
                // registry; it is only worth it for the debug dialogue. The
                // info lines carry the client address themselves.
                let span = if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug_span!("smtp", client = %peer)
                } else {
                    tracing::Span::none()
                };
                let task = connection(
                    stream,
                    peer,
                    listener_rt,
                    runtime,
                    Arc::clone(&shared),
                    permit,
                );
                shared.tracker.spawn(task.instrument(span));
            }
            Err(_) => {
                crate::metrics::connection_rejected("max_clients");
                tracing::warn!(client = %peer, "refused: too many connections");
                refuse(
                    &stream,
                    reply::too_many_connections(&listener_rt.limits.session.hostname),
                );
            }
        }
    }
}

/// Says why and closes at once, without a task. A fresh socket's send
/// buffer is empty: this write does not block.
fn refuse(stream: &TcpStream, r: reply::Reply) {
    let mut line = Vec::new();
    r.write_to(&mut line);
    let _ = stream.try_write(&line);
}

/// Decrements the open-connections gauge however the task ends.
struct OpenGauge;

impl Drop for OpenGauge {
    fn drop(&mut self) {
        crate::metrics::connection_closed();
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    runtime: Arc<Runtime>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    crate::metrics::connection_opened(&listener.label);
    let _gauge = OpenGauge;
    let _ = stream.set_nodelay(true);
    let client = if listener.cfg.proxy_protocol {
        match proxied_client(&mut stream, peer, &listener.cfg).await {
            Some(c) => c,
            None => return,
        }
    } else {
        peer
    };
    let Some(_slot) = shared
        .clients
        .acquire(client.ip(), runtime.config.max_connections_per_ip)
    else {
        crate::metrics::connection_rejected("per_ip");
        tracing::warn!(client = %client, "refused: too many connections from this address");
        refuse(
            &stream,
            reply::too_many_connections_from(&listener.limits.session.hostname),
        );
        return;
    };
    tracing::info!(client = %client, listener = %listener.label, "connect");
    let services = Services {
        pipeline: Arc::clone(&runtime.pipeline),
        stores: Arc::clone(&shared.stores),
        check: shared.check.clone(),
        inflight: Arc::clone(&shared.inflight),
    };
    let limits = &listener.limits;
    let handshake_timeout = || Duration::from_secs(runtime.config.tls_handshake_timeout_secs);
    let (session, reason) = match (&listener.tls, listener.cfg.tls) {
        (Some(acceptor), TlsMode::Implicit) => {
            let Some((mut tls, info)) =
                handshake(acceptor, stream, handshake_timeout(), client).await
            else {
                return;
            };
            let tls_info = Some(Box::new(info));
            let mut session = Session::new(
                Arc::clone(&limits.session),
                Peer {
                    client,
                    tls: tls_info,
                },
            );
            let reason = Box::pin(conn::drive(
                &mut *tls,
                &mut session,
                limits,
                &services,
                &shared.stop,
                true,
            ))
            .await;
            (session, reason)
        }
        (tls, _) => {
            let peer = Peer { client, tls: None };
            let mut session = Session::new(Arc::clone(&limits.session), peer);
            let mut reason = conn::drive(
                &mut stream,
                &mut session,
                limits,
                &services,
                &shared.stop,
                true,
            )
            .await;
            if let (CloseReason::StartTls, Some(acceptor)) = (&reason, tls) {
                // The plaintext buffered with STARTTLS died with the first
                // drive; the session continues over TLS, without a greeting.
                let Some((mut tls, info)) =
                    handshake(acceptor, stream, handshake_timeout(), client).await
                else {
                    return;
                };
                session.tls_started(info);
                reason = Box::pin(conn::drive(
                    &mut *tls,
                    &mut session,
                    limits,
                    &services,
                    &shared.stop,
                    false,
                ))
                .await;
            }
            (session, reason)
        }
    };
    match &reason {
        CloseReason::Io(e) => tracing::info!(
            client = %client,
            reason = reason.as_str(),
            error = %e,
            messages = session.accepted(),
            "disconnect {}",
            session.counts()
        ),
        _ => tracing::info!(
            client = %client,
            reason = reason.as_str(),
            messages = session.accepted(),
            "disconnect {}",
            session.counts()
        ),
    }
}

/// Reads the PROXY header of a connection on a proxy listener; `None`
/// (after logging and counting why) when the connection must be closed.
async fn proxied_client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cfg: &ListenerConfig,
) -> Option<SocketAddr> {
    // Only our proxies may name a client; anyone else could forge one.
    if !cfg.proxy_networks.iter().any(|n| n.contains(&peer.ip())) {
        crate::metrics::connection_rejected("proxy_untrusted");
        tracing::warn!(peer = %peer, "refused: PROXY listener, peer not in proxy_networks");
        return None;
    }
    let timeout = Duration::from_secs(cfg.proxy_timeout_secs);
    match tokio::time::timeout(timeout, proxy::read_header(stream)).await {
        Ok(Ok(Some(client))) => Some(client),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(e)) => {
            crate::metrics::connection_rejected("proxy_header");
            tracing::warn!(peer = %peer, error = %e, "refused: bad PROXY header");
            None
        }
        Err(_) => {
            crate::metrics::connection_rejected("proxy_header");
            tracing::warn!(peer = %peer, timeout_secs = timeout.as_secs(), "refused: no PROXY header in time");
            None
        }
    }
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Runs a TLS handshake. Boxed: TLS state is large, and a plaintext
/// connection should not carry its space.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    client: SocketAddr,
) -> Option<(Box<TlsStream>, crate::smtp::TlsInfo)> {
    match tokio::time::timeout(timeout, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(tls)) => {
            crate::metrics::tls_handshake(true);
            let info = tls::info(tls.get_ref().1);
            tracing::debug!(client = %client, version = info.version, cipher = info.cipher, "TLS established");
            Some((Box::new(tls), info))
        }
        Ok(Err(e)) => {
            crate::metrics::tls_handshake(false);
            crate::metrics::connection_rejected("tls_handshake");
            tracing::warn!(client = %client, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            crate::metrics::tls_handshake(false);
            crate::metrics::connection_rejected("tls_handshake");
            tracing::warn!(client = %client, "TLS handshake timed out");
            None
        }
    }
}
