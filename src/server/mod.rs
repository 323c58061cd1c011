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

use crate::config::{Config, ConnLimits, StoreConfig};
use crate::smtp::{Peer, Session, reply};
use crate::store::{self, Delivery, Store};

pub use conn::{CloseReason, Io, Stop};

/// What every connection task shares.
struct Shared {
    limits: ConnLimits,
    delivery: Delivery,
    permits: Arc<Semaphore>,
    stop: Stop,
    tracker: TaskTracker,
}

/// Serves SMTP on `listener`, storing into `store`, until `shutdown`
/// completes; then stops accepting, lets transactions in flight finish
/// within `shutdown_timeout_secs`, answers the rest `421 4.3.2`, and
/// returns once every acknowledged message is committed.
pub async fn run<S: Store>(
    listener: TcpListener,
    config: Config,
    store: S,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(vec![listener], config, store, shutdown).await
}

/// [`run`] over several listeners.
pub async fn serve<S: Store>(
    listeners: Vec<TcpListener>,
    config: Config,
    store: S,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (queue_size, max_batch) = match &config.store {
        StoreConfig::Sqlite(s) => (s.queue_size, s.max_batch),
    };
    let (delivery, writer) = store::writer::spawn(store, queue_size, max_batch);
    let shared = Arc::new(Shared {
        limits: config.conn_limits(),
        delivery,
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
    // Every connection is gone; dropping the last Delivery lets the writer
    // finish its queue and stop.
    drop(shared);
    writer.drained().await;
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
        Peer { client, tls: false },
    );
    let reason = conn::drive(
        &mut stream,
        &mut session,
        &shared.limits,
        &shared.delivery,
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
