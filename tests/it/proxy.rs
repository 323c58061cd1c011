//! A loopback TCP proxy in front of a real service (MySQL, PostgreSQL,
//! Redis, memcached) that a test can cut, stall and restore, to make the
//! service unreachable for the server under test without stopping the
//! service every other test shares; and the two URL helpers that point a
//! store at it.
//!
//! - Up: it forwards.
//! - Cut: it closes every connection it carries (the server sees its
//!   sessions die mid-stream) and closes its port, so a reconnect is
//!   *refused* at once, as by a service that died. The refusal matters:
//!   the Redis store retries a commit once on a refused connection
//!   (`is_connection_refusal` in `store::redis`), and the Redis test
//!   checks that the first message after an outage passes.
//! - Stalled: it keeps every connection open and forwards nothing, and
//!   accepts new ones without ever answering (a network that drops packets
//!   silently: only a timeout notices). A cut ends the stall.

// Only tests behind backend features use it; a default build has none.
#![cfg_attr(
    not(any(
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "memcached"
    )),
    allow(dead_code)
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connections carried at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;

/// What the proxy does with the connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Stalled,
    Cut,
}

/// A running proxy; dropping it closes everything it carries.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The accept loop, which owns the listening socket; `None` while cut.
    accepter: Option<JoinHandle<()>>,
    /// The connections it carries (finished ones are pruned as new ones come).
    pipes: Pipes,
}

type Pipes = Arc<Mutex<Vec<JoinHandle<()>>>>;

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut proxy = Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            mode: watch::channel(Mode::Up).0,
            accepter: None,
            pipes: Pipes::default(),
        };
        proxy.listen(listener);
        proxy
    }

    /// A proxy in front of the service that `url` names (on `default_port`
    /// when it names none), and `url` pointing at the proxy.
    pub async fn in_front_of(url: &str, default_port: u16) -> (Self, String) {
        let proxy = Self::start(service_addr(url, default_port).await).await;
        let proxied = via(url, proxy.addr());
        (proxy, proxied)
    }

    fn listen(&mut self, listener: TcpListener) {
        self.accepter = Some(tokio::spawn(accept(
            listener,
            self.upstream,
            self.mode.clone(),
            Arc::clone(&self.pipes),
        )));
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the port and every connection it carries; returns once all
    /// are closed, so a quick [`Proxy::restore`] cannot let one survive.
    pub async fn cut(&mut self) {
        if let Some(accepter) = self.accepter.take() {
            // Dropping the accept loop drops the listener: the port refuses.
            accepter.abort();
            let _ = accepter.await;
        }
        self.mode.send_replace(Mode::Cut);
        let pipes = std::mem::take(&mut *self.pipes.lock().unwrap());
        for pipe in pipes {
            let _ = pipe.await;
        }
    }

    /// Goes silent without closing anything; [`Proxy::cut`] ends the stall.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    /// Listens on the same port again and forwards (after a cut).
    pub async fn restore(&mut self) {
        if self.accepter.is_none() {
            let listener = TcpListener::bind(self.addr)
                .await
                .expect("the proxy's port is free again");
            self.listen(listener);
        }
        self.mode.send_replace(Mode::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Every pipe ends on a cut, and closes its sockets.
        self.mode.send_replace(Mode::Cut);
        if let Some(accepter) = &self.accepter {
            accepter.abort();
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    pipes: Pipes,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut pipes = pipes.lock().unwrap();
        pipes.retain(|p| !p.is_finished());
        if pipes.len() >= MAX_CONNECTIONS {
            continue;
        }
        let mut state = mode.subscribe();
        let now = *state.borrow_and_update();
        pipes.push(tokio::spawn(async move {
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
        }));
    }
}

/// Where the `host:port` of a service URL starts and ends
/// (`scheme://[userinfo@]host:port[/path][?query]`).
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host, end)
}

/// The address a service URL points at; `default_port` when it names none.
/// An IPv4 address is preferred, as the services listen on 127.0.0.1.
pub async fn service_addr(url: &str, default_port: u16) -> SocketAddr {
    let (a, b) = authority(url);
    let host = &url[a..b];
    let has_port = host.rsplit_once(']').map_or(host, |(_, p)| p).contains(':');
    let host_port = if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&host_port)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .unwrap_or_else(|| panic!("{url}: no address"))
}

/// `url` pointing at `addr` (a proxy) instead; user, path and query kept.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (a, b) = authority(url);
    format!("{}{addr}{}", &url[..a], &url[b..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn service_urls_are_rewritten_to_the_proxy() {
        let proxy: SocketAddr = "127.0.0.1:7".parse().unwrap();
        for (url, want) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:7/"),
            ("redis://:pw@127.0.0.1:6379/2", "redis://:pw@127.0.0.1:7/2"),
            ("tcp://127.0.0.1:11211", "tcp://127.0.0.1:7"),
            (
                "postgres://postgres@127.0.0.1:5432/x",
                "postgres://postgres@127.0.0.1:7/x",
            ),
            ("postgres://h/x?a=b", "postgres://127.0.0.1:7/x?a=b"),
            (
                "mysql://u:p@h?ssl-mode=disabled",
                "mysql://u:p@127.0.0.1:7?ssl-mode=disabled",
            ),
        ] {
            assert_eq!(via(url, proxy), want);
        }
    }

    #[tokio::test]
    async fn service_addresses_are_resolved() {
        for (url, want) in [
            ("redis://:pw@127.0.0.1:6379/2", "127.0.0.1:6379"),
            ("tcp://127.0.0.1:11211", "127.0.0.1:11211"),
            ("postgres://u@localhost/x?a=b", "127.0.0.1:5432"),
            ("postgres://[::1]:6000/x", "[::1]:6000"),
        ] {
            let want: SocketAddr = want.parse().unwrap();
            assert_eq!(service_addr(url, 5432).await, want, "{url}");
        }
    }

    /// Up forwards, cut refuses and closes what it carried, a stall is
    /// silent, restore forwards again on the same port.
    #[tokio::test]
    async fn cut_refuses_stall_is_silent_restore_forwards() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let round_trip = |addr| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            s
        };
        let mut proxy = Proxy::start(upstream).await;
        let mut carried = round_trip(proxy.addr()).await;

        proxy.cut().await;
        let mut rest = Vec::new();
        match carried.read_to_end(&mut rest).await {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a cut closes what it carried: {other:?}"),
        }
        let refused = TcpStream::connect(proxy.addr()).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        proxy.restore().await;
        let mut stalled = round_trip(proxy.addr()).await;
        proxy.stall();
        stalled.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        let silent = tokio::time::timeout(Duration::from_millis(200), stalled.read(&mut buf));
        assert!(silent.await.is_err(), "a stalled proxy answers nothing");

        proxy.cut().await;
        proxy.restore().await;
        round_trip(proxy.addr()).await;
    }
}
