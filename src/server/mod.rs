//! The tokio server: accept loops, the connection limit, graceful shutdown.
//!
//! ```text
//! listener ─► accept ─► permit? ─no─► 421 4.7.0, close
//!                          │yes
//!                          ▼
//!                  connection task (conn::drive) ─► Delivery ─► store writer
//! ```

pub mod conn;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::check::RecipientCheck;
use crate::config::{Config, ConnLimits, StoreConfig};
use crate::pipeline::Pipeline;
use crate::smtp::{Peer, Session, reply};
use crate::store::{Store, StoreError, Stores};

pub use conn::{CloseReason, Io, Services, Stop};

/// What every connection task shares.
struct Shared {
    limits: ConnLimits,
    services: Services,
    permits: Arc<Semaphore>,
    stop: Stop,
    tracker: TaskTracker,
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

/// Serves SMTP on `listener`, storing into `store` (and nothing else),
/// until `shutdown` completes; then stops accepting, lets transactions in
/// flight finish within `shutdown_timeout_secs`, answers the rest
/// `421 4.3.2`, and returns once every acknowledged message is committed.
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

/// Serves SMTP on several listeners with the stores and check in `backends`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: Config,
    backends: Backends,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stores, writers) = backends.stores.split();
    let shared = Arc::new(Shared {
        limits: config.conn_limits(),
        services: Services {
            pipeline: Arc::new(Pipeline::from_config(&config)),
            stores,
            check: backends.check.map(Arc::new),
        },
        permits: Arc::new(Semaphore::new(config.max_clients)),
        stop: Stop::default(),
        tracker: TaskTracker::new(),
    });
    let mut accepters = Vec::new();
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr()?, "listening");
        accepters.push(tokio::spawn(accept_loop(listener, Arc::clone(&shared))));
    }

    shutdown.await;
    tracing::info!(
        connections = shared.tracker.len(),
        grace_secs = config.shutdown_timeout_secs,
        "shutting down"
    );
    shared.stop.graceful.cancel();
    for a in accepters {
        let _ = a.await;
    }
    shared.tracker.close();
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = shared.tracker.len(),
            "grace period over, closing the remaining sessions"
        );
        shared.stop.now.cancel();
        shared.tracker.wait().await;
    }
    // Every connection is gone; dropping the last Delivery lets each writer
    // finish its queue and stop.
    drop(shared);
    for w in writers {
        w.drained().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = shared.stop.graceful.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, client) = match accepted {
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
        match Arc::clone(&shared.permits).try_acquire_owned() {
            Ok(permit) => {
                let shared2 = Arc::clone(&shared);
                // A span costs ~400 bytes per connection in the subscriber's
                // registry; it is only worth it for the debug dialogue. The
                // info lines carry the client address themselves.
                let span = if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug_span!("smtp", client = %client)
                } else {
                    tracing::Span::none()
                };
                shared
                    .tracker
                    .spawn(connection(stream, client, shared2, permit).instrument(span));
            }
            Err(_) => refuse(stream, client, &shared.limits.session.hostname),
        }
    }
}

/// Over the connection limit: say so and close at once, without a task.
fn refuse(stream: TcpStream, client: SocketAddr, host: &str) {
    let mut line = Vec::new();
    reply::too_many_connections(host).write_to(&mut line);
    // A fresh socket's send buffer is empty: this write does not block.
    let _ = stream.try_write(&line);
    tracing::warn!(client = %client, "refused: too many connections");
}

async fn connection(
    mut stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!(client = %client, "connect");
    let mut session = Session::new(
        Arc::clone(&shared.limits.session),
        Peer { client, tls: None },
    );
    let reason = conn::drive(
        &mut stream,
        &mut session,
        &shared.limits,
        &shared.services,
        &shared.stop,
    )
    .await;
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
