//! A loopback TCP proxy in front of PostgreSQL that a test can cut, stall
//! and restore, to make the database unreachable for the server under test
//! without stopping the PostgreSQL server every other test shares.
//!
//! - Cut: it closes every connection it carries (the server sees its
//!   sessions die mid-stream) and closes each new one as soon as it is
//!   accepted (a reconnect fails at once).
//! - Stalled: it keeps every connection open and forwards nothing, and
//!   accepts new ones without ever answering (a network that drops packets
//!   silently: only a timeout notices).
//! - Up: it forwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Stalled,
    Cut,
}

/// A running proxy; dropping it closes everything it carries.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepter: JoinHandle<()>,
    /// The connections it holds (finished ones are pruned as new ones come).
    pipes: Pipes,
}

type Pipes = Arc<Mutex<Vec<JoinHandle<()>>>>;

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Up);
        let pipes = Pipes::default();
        let accepter = tokio::spawn(accept(listener, upstream, mode.clone(), pipes.clone()));
        Self {
            addr,
            mode,
            accepter,
            pipes,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection it holds and refuses new ones; returns once
    /// all are closed, so a quick `restore` cannot let one survive.
    pub async fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        let pipes = std::mem::take(&mut *self.pipes.lock().unwrap());
        for pipe in pipes {
            let _ = pipe.await;
        }
    }

    /// Goes silent without closing anything; `cut` ends the stall.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    /// Forwards new connections again (after a `cut`).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.accepter.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    pipes: Pipes,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        let mut state = mode.subscribe();
        let now = *state.borrow_and_update();
        if now == Mode::Cut {
            // Accepted only to be closed: the client's connect fails fast,
            // as it would against a server that is going away.
            drop(client);
            continue;
        }
        let pipe = tokio::spawn(async move {
            if now == Mode::Up {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                // Either side closing ends the pipe; a stall or a cut
                // stops the forwarding.
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                    _ = state.wait_for(|m| *m != Mode::Up) => {}
                }
            }
            // Stalled: hold the sockets open and silent until the cut (or
            // the proxy is dropped, which closes the channel).
            let _ = state.wait_for(|m| *m == Mode::Cut).await;
        });
        let mut pipes = pipes.lock().unwrap();
        pipes.retain(|p| !p.is_finished());
        pipes.push(pipe);
    }
}
