//! TLS end to end: STARTTLS and implicit TLS with a real client (lettre and
//! tokio-rustls) and a throwaway certificate from rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gsmtpd::config::{Config, ListenerConfig, TlsMode};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::{Client, Server};

/// A self-signed certificate for `mx.test`, written as PEM files.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

pub fn cert(dir: &Path, name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: ck.cert.der().clone(),
        pem: ck.cert.pem(),
    }
}

/// A listener on a free loopback port with the given TLS mode.
pub fn tls_listener(mode: TlsMode, c: &Cert) -> ListenerConfig {
    ListenerConfig {
        tls: mode,
        tls_cert: Some(c.cert.clone()),
        tls_key: Some(c.key.clone()),
        ..ListenerConfig::plain("127.0.0.1:0".parse().unwrap())
    }
}

/// A server with a STARTTLS listener first and an implicit-TLS one second.
async fn tls_server(dir: &Path, tweak: impl FnOnce(&mut Config)) -> (Server, Cert) {
    let c = cert(dir, "mx");
    let (starttls, implicit) = (
        tls_listener(TlsMode::Starttls, &c),
        tls_listener(TlsMode::Implicit, &c),
    );
    let server = Server::start_with(|cfg| {
        cfg.listener = vec![starttls, implicit];
        // A second plaintext-port listener would collide with port 0 keys;
        // the two listeners above differ by their TLS mode only.
        cfg.listener[1].addr = "127.0.0.2:0".parse().unwrap();
        tweak(cfg);
    })
    .await;
    (server, c)
}

/// A tokio-rustls client that trusts exactly `cert`.
pub fn connector(cert: &Cert) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn lettre_tls(cert: &Cert) -> lettre::transport::smtp::client::TlsParameters {
    use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
    TlsParameters::builder("mx.test".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap()
}

fn message(subject: &str) -> lettre::Message {
    lettre::Message::builder()
        .from("alice@sender.test".parse().unwrap())
        .to("bob@example.com".parse().unwrap())
        .subject(subject)
        .body(String::from("over TLS\r\n"))
        .unwrap()
}

/// Sends with lettre on `port` using `tls`; returns the queued id.
async fn lettre_send(
    port: u16,
    host: &'static str,
    tls: lettre::transport::smtp::client::Tls,
    subject: &'static str,
) -> String {
    use lettre::{SmtpTransport, Transport};
    let response = tokio::task::spawn_blocking(move || {
        SmtpTransport::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .build()
            .send(&message(subject))
    })
    .await
    .unwrap()
    .expect("lettre delivers over TLS");
    let text = response.message().collect::<Vec<_>>().join(" ");
    text.rsplit(' ').next().unwrap().to_owned()
}

fn stored_tls(server: &Server, id: &str) -> (bool, String) {
    let (tls, protocol): (bool, String) = server
        .db()
        .query_row(
            "SELECT tls, protocol FROM messages WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (tls, protocol)
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_implicit_tls_with_lettre() {
    use lettre::transport::smtp::client::Tls;
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), |_| {}).await;

    let id = lettre_send(
        server.addrs[0].port(),
        "127.0.0.1",
        Tls::Required(lettre_tls(&cert)),
        "starttls",
    )
    .await;
    assert_eq!(stored_tls(&server, &id), (true, "ESMTPS".into()));
    let raw = String::from_utf8_lossy(&server.raw(&id)).into_owned();
    assert!(
        raw.contains("\r\n\t(using TLSv1.3 with cipher TLS_"),
        "{raw}"
    );
    assert!(raw.contains(" with ESMTPS id "), "{raw}");

    let id = lettre_send(
        server.addrs[1].port(),
        "127.0.0.2",
        Tls::Wrapper(lettre_tls(&cert)),
        "implicit",
    )
    .await;
    assert_eq!(stored_tls(&server, &id), (true, "ESMTPS".into()));
    server.shutdown().await;
}

/// Reads one (possibly multi-line) reply from a TLS stream.
async fn tls_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).await.unwrap() > 0, "EOF");
        text.push_str(&line);
        if line.as_bytes()[3] == b' ' {
            return (line[..3].parse().unwrap(), text);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_sent_with_starttls_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path(), |_| {}).await;
    let mut c = Client::connect(server.addrs[0]).await;
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(ehlo.text.lines().any(|l| l == "STARTTLS"), "{ehlo:?}");
    // CVE-2011-0411: commands injected in the same packet as STARTTLS.
    c.send("STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    let r = c.reply().await;
    assert_eq!((r.code, r.text.as_str()), (220, "2.0.0 Ready to start TLS"));
    let tcp = c.into_stream();
    let tls = connector(&cert)
        .connect(ServerName::try_from("mx.test").unwrap(), tcp)
        .await
        .expect("handshake");
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    w.write_all(b"EHLO client.test\r\n").await.unwrap();
    // The first reply over TLS is EHLO's: neither RSET nor MAIL was run.
    let (code, text) = tls_reply(&mut r).await;
    assert_eq!(code, 250);
    assert!(text.starts_with("250-mx.test\r\n"), "{text}");
    assert!(
        !text.contains("STARTTLS"),
        "no STARTTLS once encrypted: {text}"
    );
    w.write_all(b"RCPT TO:<bob@example.com>\r\nSTARTTLS\r\n")
        .await
        .unwrap();
    assert_eq!(
        tls_reply(&mut r).await.0,
        503,
        "no MAIL transaction survived"
    );
    let (code, text) = tls_reply(&mut r).await;
    assert_eq!(
        (code, text.as_str()),
        (503, "503 5.5.1 Error: TLS already active\r\n")
    );
    w.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(tls_reply(&mut r).await.0, 221);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn require_tls_refuses_mail_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _cert) = tls_server(dir.path(), |c| c.listener[0].require_tls = true).await;
    let mut c = Client::connect(server.addrs[0]).await;
    c.expect("EHLO client.test", 250).await;
    let r = c.expect("MAIL FROM:<a@sender.test>", 530).await;
    assert_eq!(r.text, "5.7.0 Must issue a STARTTLS command first");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_handshake_closes_that_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _cert) = tls_server(dir.path(), |_| {}).await;
    let mut bystander = Client::connect(server.addrs[0]).await;
    bystander.expect("EHLO bystander.test", 250).await;
    // Garbage instead of a ClientHello, after STARTTLS and on port 465.
    let mut c = Client::connect(server.addrs[0]).await;
    c.expect("EHLO client.test", 250).await;
    c.expect("STARTTLS", 220).await;
    c.send("this is not TLS\r\n\r\n").await;
    let sent = c.wait_closed().await;
    assert!(
        !String::from_utf8_lossy(&sent).contains("250 "),
        "no SMTP after a failed handshake"
    );
    let mut raw = TcpStream::connect(server.addrs[1]).await.unwrap();
    raw.write_all(b"EHLO not-tls.test\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
    )
    .await
    .expect("closed in time");
    assert!(
        !String::from_utf8_lossy(&rest).contains("220 "),
        "no SMTP greeting in plaintext on 465"
    );
    // The other session is untouched.
    bystander.expect("NOOP", 250).await;
    bystander.expect("QUIT", 221).await;
    server.shutdown().await;
}
