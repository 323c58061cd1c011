//! Running it in production: PROXY protocol, per-client limits, reload,
//! and the admin endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use gsmtpd::config::{AdminConfig, ListenerConfig, TlsMode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Client, Server};
use crate::tls::{cert, connector, tls_listener};

fn proxy_listener(networks: &[&str]) -> ListenerConfig {
    ListenerConfig {
        proxy_protocol: true,
        proxy_networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
        proxy_timeout_secs: 1,
        ..ListenerConfig::plain("127.0.0.1:0".parse().unwrap())
    }
}

/// Connects, sends `header`, then reads the greeting.
async fn via_proxy(addr: SocketAddr, header: &[u8]) -> Client {
    let mut c = Client::connect_raw(addr).await;
    c.send(header).await;
    assert_eq!(c.reply().await.code, 220);
    c
}

fn v2_header(from: &str, to: &str) -> Vec<u8> {
    let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two as u8 | ppp::v2::Command::Proxy as u8,
        ppp::v2::Protocol::Stream,
        (from, to),
    )
    .build()
    .unwrap()
}

fn stored_ip(server: &Server, id: &str) -> String {
    server
        .db()
        .query_row("SELECT remote_ip FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_v1_and_v2_name_the_client() {
    let server = Server::start_with(|c| c.listener = vec![proxy_listener(&["127.0.0.0/8"])]).await;
    let mut c = via_proxy(server.addr, b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 25\r\n").await;
    let id = c
        .send_message("a@sender.test", &["r@example.com"], b"Subject: v1\r\n\r\n")
        .await
        .queued_id();
    assert_eq!(stored_ip(&server, &id), "203.0.113.9");
    assert!(String::from_utf8_lossy(&server.raw(&id)).contains("([203.0.113.9])"));

    let header = v2_header("[2001:db8::9]:40000", "[2001:db8::1]:25");
    let mut c = via_proxy(server.addr, &header).await;
    let id = c
        .send_message("a@sender.test", &["r@example.com"], b"Subject: v2\r\n\r\n")
        .await
        .queued_id();
    assert_eq!(stored_ip(&server, &id), "2001:db8::9");
    assert!(String::from_utf8_lossy(&server.raw(&id)).contains("([IPv6:2001:db8::9])"));

    // A LOCAL header (the proxy's own health check): the socket peer.
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two as u8 | ppp::v2::Command::Local as u8,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let mut c = via_proxy(server.addr, &local).await;
    let id = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: local\r\n\r\n",
        )
        .await
        .queued_id();
    assert_eq!(stored_ip(&server, &id), "127.0.0.1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_headers_from_untrusted_peers_or_malformed_are_refused() {
    let trusted = Server::start_with(|c| c.listener = vec![proxy_listener(&["127.0.0.0/8"])]).await;
    for bad in [
        &b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n"[..],
        b"EHLO no-header.test\r\n",
        b"PROXY TCP4 203.0.113.9",
    ] {
        let mut c = Client::connect_raw(trusted.addr).await;
        c.send(bad).await;
        let sent = c.wait_closed().await;
        assert!(
            sent.is_empty(),
            "closed without a greeting: {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // No header at all within proxy_timeout_secs.
    let mut c = Client::connect_raw(trusted.addr).await;
    assert!(c.wait_closed().await.is_empty());

    // 127.0.0.1 is not one of this listener's proxies: even a well-formed
    // header is refused, so no one outside can forge a client address.
    let untrusted =
        Server::start_with(|c| c.listener = vec![proxy_listener(&["10.0.0.0/8"])]).await;
    let mut c = Client::connect_raw(untrusted.addr).await;
    c.send("PROXY TCP4 203.0.113.9 10.0.0.1 40000 25\r\n").await;
    assert!(c.wait_closed().await.is_empty());
    assert_eq!(untrusted.count(), 0);
    trusted.shutdown().await;
    untrusted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_client_connection_and_message_rate_limits() {
    let server = Server::start_with(|c| {
        c.listener = vec![proxy_listener(&["127.0.0.0/8"])];
        c.max_connections_per_ip = 2;
        c.max_messages_per_minute_per_ip = 2;
    })
    .await;
    let a = b"PROXY TCP4 198.51.100.1 10.0.0.1 1000 25\r\n";
    let b = b"PROXY TCP4 198.51.100.2 10.0.0.1 1000 25\r\n";
    let mut a1 = via_proxy(server.addr, a).await;
    let _a2 = via_proxy(server.addr, a).await;
    // The third from the same (proxied) client address is refused...
    let mut a3 = Client::connect_raw(server.addr).await;
    a3.send(a).await;
    let r = a3.reply().await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (
            421,
            "4.7.0 mx.test Error: too many connections from your address"
        )
    );
    // ...another client's is not.
    let mut b1 = via_proxy(server.addr, b).await;
    b1.expect("NOOP", 250).await;

    // Two MAILs a minute from 198.51.100.1, then 451 4.7.1.
    a1.expect("EHLO a.test", 250).await;
    for _ in 0..2 {
        a1.expect("MAIL FROM:<a@sender.test>", 250).await;
        a1.expect("RSET", 250).await;
    }
    let r = a1.expect("MAIL FROM:<a@sender.test>", 451).await;
    assert!(r.text.starts_with("4.7.1 "), "{r:?}");
    b1.expect("EHLO b.test", 250).await;
    b1.expect("MAIL FROM:<b@sender.test>", 250).await;
    b1.expect("RSET", 250).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_changes_domains_certificates_and_listeners_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let old_cert = cert(dir.path(), "old");
    let starttls = tls_listener(TlsMode::Starttls, &old_cert);
    let mut server = Server::start_with(|c| c.listener = vec![starttls]).await;

    // A client in the middle of a transaction when the reload happens.
    let mut busy = server.client().await;
    busy.expect("EHLO busy.test", 250).await;
    busy.expect("MAIL FROM:<a@sender.test>", 250).await;
    busy.expect("RCPT TO:<r@example.com>", 250).await;

    // A reload that cannot work changes nothing.
    let err = server
        .reload(|c| c.listener[0].tls_cert = Some(dir.path().join("missing.pem")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // New certificate (same paths, new contents), a new domain, a new listener.
    let new_cert = cert(dir.path(), "new");
    std::fs::copy(&new_cert.cert, &old_cert.cert).unwrap();
    std::fs::copy(&new_cert.key, &old_cert.key).unwrap();
    server
        .reload(|c| {
            c.allowed_hosts.push("new.test".into());
            c.listener
                .push(ListenerConfig::plain("127.0.0.2:0".parse().unwrap()));
        })
        .await
        .unwrap();
    assert_eq!(server.addrs.len(), 2);

    // The session that was open finishes as it began.
    busy.expect("DATA", 354).await;
    busy.send("Subject: across the reload\r\n\r\n.\r\n").await;
    busy.reply().await.queued_id();
    // ...and still refuses the new domain: its configuration is the old one.
    busy.expect("MAIL FROM:<a@sender.test>", 250).await;
    busy.expect("RCPT TO:<r@new.test>", 550).await;
    busy.expect("QUIT", 221).await;

    // New sessions see the new domain, on the old and the new listener.
    for addr in [server.addrs[0], server.addrs[1]] {
        let mut c = Client::connect(addr).await;
        c.expect("EHLO fresh.test", 250).await;
        c.expect("MAIL FROM:<a@sender.test>", 250).await;
        c.expect("RCPT TO:<r@new.test>", 250).await;
        c.expect("QUIT", 221).await;
    }
    // ...and the new certificate: a client trusting only it completes the
    // handshake, one trusting only the old one does not.
    for (trusted, ok) in [(&new_cert, true), (&old_cert, false)] {
        let mut c = Client::connect(server.addrs[0]).await;
        c.expect("EHLO tls.test", 250).await;
        c.expect("STARTTLS", 220).await;
        let hs = connector(trusted)
            .connect(ServerName::try_from("mx.test").unwrap(), c.into_stream())
            .await;
        assert_eq!(hs.is_ok(), ok);
    }

    // Removing a listener stops new connections there.
    let removed = server.addrs[1];
    server
        .reload(|c| {
            c.listener.truncate(1);
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(removed).await.is_err());
    server.shutdown().await;
}

/// GET `path` from the admin listener; status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("admin answers")
        .unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample of `name` (with any labels) in `metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_metrics_health_and_readiness() {
    let server = Server::start_with(|c| {
        c.admin = Some(AdminConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
        })
    })
    .await;
    let admin = server.server().admin_addr().expect("admin listener");
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));

    let (_, before) = http_get(admin, "/metrics").await;
    let accepted_before = sample(&before, "gsmtpd_messages_accepted_total").unwrap_or(0.0);
    let mut c = server.client().await;
    c.send_message(
        "a@sender.test",
        &["r@example.com", "s@example.com"],
        b"Subject: m\r\n\r\n",
    )
    .await
    .queued_id();
    c.expect("QUIT", 221).await;
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    // The registry is shared by every test in this process: compare deltas.
    assert!(sample(&metrics, "gsmtpd_messages_accepted_total").unwrap() >= accepted_before + 1.0);
    assert!(
        metrics.contains(&format!(
            "gsmtpd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    for name in [
        "gsmtpd_connections_total",
        "gsmtpd_recipients_total",
        "gsmtpd_message_bytes_total",
        "gsmtpd_store_commit_seconds_bucket",
        "gsmtpd_store_batch_size_bucket",
        "gsmtpd_store_queue_depth",
        "gsmtpd_connections_current",
    ] {
        assert!(
            sample(&metrics, name).is_some(),
            "{name} missing:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("# HELP gsmtpd_store_commit_seconds"),
        "described once"
    );
    server.shutdown().await;
}

/// A required store that cannot commit makes `/readyz` answer 503.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_when_a_required_store_is_down() {
    use gsmtpd::config::{Backend, RedisConfig, StoreConfig};
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Server::start_with(|c| {
        c.admin = Some(AdminConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
        });
        c.store.push(StoreConfig {
            backend: Backend::Redis(RedisConfig {
                url: format!("redis://{closed}/"),
                prefix: "gsmtpd:".into(),
                ttl_secs: 60,
                compression: Default::default(),
                timeout_secs: 1,
            }),
            ..StoreConfig::default()
        });
    })
    .await;
    let admin = server.server().admin_addr().unwrap();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: redis"), "{body}");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_listener_has_its_own_name_and_limits() {
    let server = Server::start_with(|c| {
        c.listener.push(ListenerConfig {
            hostname: Some("submit.test".into()),
            max_message_size: Some(100),
            command_timeout_secs: Some(1),
            ..ListenerConfig::plain("127.0.0.2:0".parse().unwrap())
        });
    })
    .await;
    let mut first = server.client().await;
    let ehlo = first.expect("EHLO a.test", 250).await;
    assert!(ehlo.text.starts_with("mx.test\n"), "{ehlo:?}");
    assert!(ehlo.text.contains("SIZE 26214400"), "{ehlo:?}");

    let mut second = Client::connect_raw(server.addrs[1]).await;
    let greeting = second.reply().await;
    assert_eq!(greeting.text, "submit.test ESMTP gsmtpd");
    let ehlo = second.expect("EHLO a.test", 250).await;
    assert!(
        ehlo.text.starts_with("submit.test\n") && ehlo.text.contains("SIZE 100"),
        "{ehlo:?}"
    );
    second
        .expect("MAIL FROM:<a@sender.test> SIZE=101", 552)
        .await;
    // The 1-second command timeout applies on this listener only.
    let r = second.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.4.2"), "{r:?}");
    first.expect("NOOP", 250).await;
    first.expect("QUIT", 221).await;
    server.shutdown().await;
}
