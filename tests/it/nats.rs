//! The NATS JetStream store against a real NATS server: what a message
//! looks like in the stream, `451` while NATS is away, messages larger
//! than a NATS message, and three receivers sharing one stream while one
//! of them is killed with `kill -9`.
//!
//! NATS is `GSMTPD_TEST_NATS_URL` if set, else the server on
//! 127.0.0.1:4222 if one answers, else a `nats-server -js` this test
//! starts on a free port (and stops).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use gsmtpd::config::{Backend, NatsConfig, Oversize, StoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::{Server, mime, unique};
use crate::process::Proc;
use crate::proxy::Proxy;

const VAR: &str = "GSMTPD_TEST_NATS_URL";

/// A nats-server this test binary started, stopped when the binary ends.
struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static OWN: OnceLock<Mutex<Option<OwnServer>>> = OnceLock::new();

/// The NATS server's URL, or `None` (printed) when there is none to use.
async fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var(VAR)
        && !url.is_empty()
    {
        return Some(url);
    }
    if TcpStream::connect("127.0.0.1:4222").await.is_ok() {
        return Some("nats://127.0.0.1:4222".to_owned());
    }
    let own = OWN.get_or_init(|| Mutex::new(start_own()));
    let url = own.lock().unwrap().as_ref().map(|o| o.url());
    if url.is_none() {
        println!(
            "SKIPPED: no NATS server ({VAR} unset, nothing on 127.0.0.1:4222, no nats-server binary)"
        );
    }
    url
}

impl OwnServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    fn port(&self) -> u16 {
        let log = std::fs::read_to_string(self._dir.path().join("port")).unwrap_or_default();
        log.trim().parse().unwrap()
    }
}

/// Starts `nats-server -js` on a free loopback port, if installed.
fn start_own() -> Option<OwnServer> {
    let bin = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())?;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("port"), port.to_string()).unwrap();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(OwnServer { child, _dir: dir });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{bin} did not listen on 127.0.0.1:{port} within 5 s");
}

/// A store configuration with a stream and subject of the test's own.
fn config(url: &str, stream: &str, subject: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_owned(),
        stream: stream.to_owned(),
        subject: subject.to_owned(),
        create_stream: true,
        max_age_secs: 3_600,
        max_bytes: 0,
        replicas: 1,
        timeout_secs: 5,
        oversize: Oversize::Reject,
        object_bucket: format!("{stream}_LARGE"),
    }
}

/// A client of the test's own.
async fn connect(url: &str) -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("NATS at {url} does not answer: {e}"))
}

/// The test's own JetStream context, to read what the server published.
async fn context(url: &str) -> jetstream::Context {
    jetstream::new(connect(url).await)
}

/// A message as a consumer receives it.
struct Received {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// Every message in `stream`, in order, through a consumer (the way
/// downstream processors read it; async-nats 0.51's direct reads by
/// sequence keep only the last of a repeated header).
async fn read_all(js: &jetstream::Context, stream: &str) -> Vec<Received> {
    use futures_util::StreamExt;
    let mut s = js.get_stream(stream).await.unwrap();
    let count = s.info().await.unwrap().state.messages as usize;
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream's messages within 10 s")
            .expect("more messages")
            .unwrap();
        out.push(Received {
            subject: m.subject.to_string(),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
        });
    }
    out
}

fn header<'a>(m: &'a Received, name: &str) -> &'a str {
    m.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", m.headers))
        .as_str()
}

async fn start(backend: Backend) -> Server {
    Server::start_with(move |c| {
        c.store = vec![StoreConfig {
            backend,
            ..StoreConfig::default()
        }];
    })
    .await
}

/// Removes the test's stream and bucket, whatever the outcome.
async fn cleanup(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
    let _ = js.delete_object_store(format!("{stream}_LARGE")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_published_per_recipient_domain_with_its_envelope() {
    let Some(url) = nats_url().await else { return };
    let stream = unique("GSMTPD_T").to_uppercase();
    let subject = unique("gsmtpd_t");
    let js = context(&url).await;
    let server = start(Backend::Nats(config(&url, &stream, &subject))).await;
    let mut c = server.client().await;
    let content = mime("=?UTF-8?B?SGVsbG8=?=");
    let id = c
        .send_message(
            "sender@example.net",
            &["a@example.com", "b@x.example.org", "c@example.com"],
            &content,
        )
        .await
        .queued_id();
    c.expect("QUIT", 221).await;
    server.shutdown().await;

    let msgs = read_all(&js, &stream).await;
    cleanup(&js, &stream).await;
    assert_eq!(msgs.len(), 2, "one message per recipient domain");
    let by_subject: HashMap<&str, &Received> =
        msgs.iter().map(|m| (m.subject.as_str(), m)).collect();
    let com = by_subject[format!("{subject}.example.com").as_str()];
    let org = by_subject[format!("{subject}.x.example.org").as_str()];
    assert_eq!(header(com, "Nats-Msg-Id"), format!("{id}.example.com"));
    assert_eq!(header(org, "Nats-Msg-Id"), format!("{id}.x.example.org"));
    for m in [com, org] {
        assert_eq!(header(m, "Gsmtpd-Id"), id);
        assert_eq!(header(m, "Gsmtpd-Mail-From"), "<sender@example.net>");
        assert_eq!(header(m, "Gsmtpd-Client-Ip"), "127.0.0.1");
        assert_eq!(header(m, "Gsmtpd-Helo"), "client.test");
        assert_eq!(header(m, "Gsmtpd-Tls"), "false");
        assert!(header(m, "Gsmtpd-Received-At").ends_with('Z'));
        assert!(m.payload.starts_with(b"Received: from client.test"));
        assert!(m.payload.ends_with(&content), "the content as sent");
    }
    let rcpts: Vec<&str> = com
        .headers
        .get_all("Gsmtpd-Rcpt-To")
        .map(|v| v.as_str())
        .collect();
    assert_eq!(rcpts, ["a@example.com", "c@example.com"]);
    assert_eq!(header(org, "Gsmtpd-Rcpt-To"), "b@x.example.org");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_away_answers_451_and_mail_flows_when_it_is_back() {
    let Some(url) = nats_url().await else { return };
    let (mut proxy, proxied) = Proxy::in_front_of(&url, 4222).await;
    let stream = unique("GSMTPD_T").to_uppercase();
    let subject = unique("gsmtpd_t");
    let js = context(&url).await;
    let mut cfg = config(&proxied, &stream, &subject);
    cfg.timeout_secs = 2;
    let server = start(Backend::Nats(cfg)).await;
    let mut c = server.client().await;
    let first = c
        .send_message("a@example.net", &["r@example.com"], b"Subject: 1\r\n\r\n")
        .await
        .queued_id();

    proxy.cut().await;
    let r = c
        .transaction("a@example.net", &["r@example.com"], b"Subject: 2\r\n\r\n")
        .await;
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");

    proxy.restore().await;
    // The client reconnects by itself; the sender's retry goes through.
    let mut third = None;
    for _ in 0..50 {
        let r = c
            .transaction("a@example.net", &["r@example.com"], b"Subject: 3\r\n\r\n")
            .await;
        if r.code == 250 {
            third = Some(r.queued_id());
            break;
        }
        assert_eq!(r.code, 451, "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let third = third.expect("mail flows again once NATS is back");
    c.expect("QUIT", 221).await;
    server.shutdown().await;

    let ids: Vec<String> = read_all(&js, &stream)
        .await
        .iter()
        .map(|m| header(m, "Gsmtpd-Id").to_owned())
        .collect();
    cleanup(&js, &stream).await;
    assert!(ids.contains(&first) && ids.contains(&third), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_reject_shrinks_the_size_limit_to_a_nats_message() {
    let Some(url) = nats_url().await else { return };
    let stream = unique("GSMTPD_T").to_uppercase();
    let client = connect(&url).await;
    let nats_max = client.server_info().max_payload as u64;
    let js = jetstream::new(client);
    let server = start(Backend::Nats(config(&url, &stream, &unique("gsmtpd_t")))).await;
    let mut c = server.client().await;
    let ehlo = c.expect("EHLO client.test", 250).await;
    let size: u64 = ehlo
        .text
        .lines()
        .find_map(|l| l.strip_prefix("SIZE "))
        .expect("SIZE advertised")
        .parse()
        .unwrap();
    assert!(
        size < nats_max && size > nats_max / 2,
        "SIZE {size} fits a NATS message of {nats_max}"
    );
    let r = c
        .cmd(&format!("MAIL FROM:<a@example.net> SIZE={}", size + 1))
        .await;
    assert_eq!((r.code, &r.text[..5]), (552, "5.3.4"), "{r:?}");
    // A client that sends more than it announced is refused at the end.
    c.expect("MAIL FROM:<a@example.net>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(size as usize));
    c.send(gsmtpd::smtp::data::stuff(big.as_bytes())).await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (552, "5.3.4"), "{r:?}");
    // And one that fits is stored.
    let id = c
        .transaction("a@example.net", &["r@example.com"], b"Subject: ok\r\n\r\n")
        .await
        .queued_id();
    c.expect("QUIT", 221).await;
    server.shutdown().await;
    let msgs = read_all(&js, &stream).await;
    cleanup(&js, &stream).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(header(&msgs[0], "Gsmtpd-Id"), id);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_object_store_keeps_large_messages_in_a_bucket() {
    let Some(url) = nats_url().await else { return };
    let stream = unique("GSMTPD_T").to_uppercase();
    let js = context(&url).await;
    let mut cfg = config(&url, &stream, &unique("gsmtpd_t"));
    cfg.oversize = Oversize::ObjectStore;
    let server = start(Backend::Nats(cfg)).await;
    let mut c = server.client().await;
    // 3 MB: three times nats-server's default max_payload.
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(170_000)
    );
    let big_id = c
        .send_message("a@example.net", &["r@example.com"], big.as_bytes())
        .await
        .queued_id();
    let small_id = c
        .transaction(
            "a@example.net",
            &["r@example.com"],
            b"Subject: small\r\n\r\n",
        )
        .await
        .queued_id();
    c.expect("QUIT", 221).await;
    server.shutdown().await;

    let msgs = read_all(&js, &stream).await;
    let bucket = js
        .get_object_store(format!("{stream}_LARGE"))
        .await
        .unwrap();
    let mut object = Vec::new();
    let mut reader = bucket.get(big_id.as_str()).await.unwrap();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut object)
        .await
        .unwrap();
    cleanup(&js, &stream).await;
    assert_eq!(msgs.len(), 2);
    let (large, small) = (&msgs[0], &msgs[1]);
    assert_eq!(header(large, "Gsmtpd-Id"), big_id);
    assert_eq!(
        header(large, "Gsmtpd-Object"),
        format!("{stream}_LARGE/{big_id}")
    );
    assert!(large.payload.is_empty());
    assert!(object.starts_with(b"Received: "));
    assert!(
        object.ends_with(big.as_bytes()),
        "the whole content in the bucket"
    );
    assert_eq!(header(small, "Gsmtpd-Id"), small_id);
    assert!(small.headers.get("Gsmtpd-Object").is_none());
    assert!(small.payload.ends_with(b"Subject: small\r\n\r\n"));
}

/// How one attempt to deliver a message ended.
enum Outcome {
    /// `250`, with the id.
    Accepted(String),
    /// Refused or failed before the end of data was sent: not published.
    Before,
    /// The connection failed after the end of data, before the reply:
    /// the message may be in the stream (RFC 1047's duplicate window).
    AfterDot,
    /// A `4xx` to the end of data.
    Deferred,
}

/// One SMTP transaction on a new connection, with no panics: the server
/// may die at any byte.
async fn attempt(addr: SocketAddr, token: &str) -> Outcome {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return Outcome::Before;
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            match tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line);
            }
        }
    }
    let ok = |l: &Option<String>, code: &str| l.as_deref().is_some_and(|l| l.starts_with(code));
    if !ok(&reply(&mut r).await, "220") {
        return Outcome::Before;
    }
    let cmds =
        b"EHLO load.test\r\nMAIL FROM:<load@sender.test>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n";
    if w.write_all(cmds).await.is_err() {
        return Outcome::Before;
    }
    for code in ["250", "250", "250", "354"] {
        if !ok(&reply(&mut r).await, code) {
            return Outcome::Before;
        }
    }
    let body = format!(
        "Subject: {token}\r\nX-Test-Token: {token}\r\n\r\n{}\r\n.\r\n",
        "z".repeat(400)
    );
    let sent = w.write_all(body.as_bytes()).await;
    let last = match sent {
        Ok(()) => reply(&mut r).await,
        Err(_) => None,
    };
    match last {
        Some(l) if l.starts_with("250 ") => {
            let _ = w.write_all(b"QUIT\r\n").await;
            Outcome::Accepted(l.trim_end().rsplit(' ').next().unwrap().to_owned())
        }
        Some(l) if l.starts_with('4') => Outcome::Deferred,
        Some(l) => panic!("{token}: unexpected reply {l:?}"),
        None => Outcome::AfterDot,
    }
}

/// What the clients saw of one message.
#[derive(Default)]
struct Seen {
    /// The id of the `250`.
    accepted: Option<String>,
    /// Attempts that died after the end of data, per receiver.
    after_dot: Vec<usize>,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_receivers_one_killed_lose_and_duplicate_nothing() {
    const RECEIVERS: usize = 3;
    const CLIENTS: usize = 30;
    const MESSAGES: usize = 3_000;
    const KILLED: usize = 1;
    let Some(url) = nats_url().await else { return };
    let stream = unique("GSMTPD_T").to_uppercase();
    let subject = unique("gsmtpd_t");
    let js = context(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    for i in 0..RECEIVERS {
        let path = dir.path().join(format!("r{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "hostname = \"mx{i}.test\"\nallowed_hosts = [\"example.com\"]\n\
                 max_connections_per_ip = 0\nshutdown_timeout_secs = 10\n\
                 [[listener]]\naddr = \"127.0.0.1:0\"\n\
                 [[store]]\nkind = \"nats\"\nurl = {url:?}\nstream = {stream:?}\n\
                 subject = {subject:?}\ncreate_stream = true\nmax_age_secs = 3600\n"
            ),
        )
        .unwrap();
        procs.push(Proc::start(&["-c", path.to_str().unwrap()]));
    }
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(procs.iter().map(|p| p.addr).collect());
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (addrs, dead, accepted, seen) =
                (addrs.clone(), dead.clone(), accepted.clone(), seen.clone());
            tokio::spawn(async move {
                for k in 0..MESSAGES / CLIENTS {
                    let token = format!("m{}", k * CLIENTS + c);
                    // Round robin; a failed attempt goes to the next receiver.
                    let mut target = (c + k) % RECEIVERS;
                    for _attempt in 0..20 {
                        if target == KILLED && dead.load(Ordering::SeqCst) {
                            target = (target + 1) % RECEIVERS;
                        }
                        let outcome = attempt(addrs[target], &token).await;
                        let mut seen = seen.lock().unwrap();
                        let entry = seen.entry(token.clone()).or_default();
                        match outcome {
                            Outcome::Accepted(id) => {
                                entry.accepted = Some(id);
                                accepted.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Outcome::AfterDot => entry.after_dot.push(target),
                            Outcome::Before | Outcome::Deferred => {}
                        }
                        target = (target + 1) % RECEIVERS;
                    }
                }
            })
        })
        .collect();

    // Kill one receiver half-way, while transactions are in flight on it.
    while accepted.load(Ordering::SeqCst) < MESSAGES / 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    procs[KILLED].signal(libc::SIGKILL);
    dead.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    // The others stop cleanly: their writers drain before they exit.
    for (i, p) in procs.iter_mut().enumerate() {
        if i != KILLED {
            p.signal(libc::SIGTERM);
        }
        let status = tokio::task::block_in_place(|| p.wait());
        assert_eq!(status.success(), i != KILLED, "receiver {i}: {status}");
    }

    let msgs = read_all(&js, &stream).await;
    cleanup(&js, &stream).await;
    let seen = seen.lock().unwrap();
    // Stream copies per token, and gsmtpd ids seen.
    let mut copies: HashMap<String, Vec<String>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut per_receiver = [0usize; RECEIVERS];
    for m in &msgs {
        let id = header(m, "Gsmtpd-Id").to_owned();
        assert!(
            ids.insert(id.clone()),
            "message {id} is in the stream twice"
        );
        assert_eq!(header(m, "Nats-Msg-Id"), id);
        let text = String::from_utf8_lossy(&m.payload);
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Test-Token: "))
            .expect("the test's token")
            .to_owned();
        let by = (0..RECEIVERS)
            .find(|i| text.contains(&format!("\tby mx{i}.test ")))
            .expect("a Received header from a receiver");
        per_receiver[by] += 1;
        copies.entry(token).or_default().push(id);
    }
    let mut acked = 0;
    let mut duplicates = 0;
    let mut after_dot_on_killed = 0;
    for (token, s) in seen.iter() {
        let id = s
            .accepted
            .as_ref()
            .unwrap_or_else(|| panic!("{token} never got a 250"));
        acked += 1;
        let in_stream = copies.get(token).map(Vec::as_slice).unwrap_or_default();
        assert!(
            in_stream.contains(id),
            "{token}: its 250 ({id}) is not in the stream ({in_stream:?})"
        );
        let killed_after_dot = s.after_dot.iter().filter(|&&r| r == KILLED).count();
        after_dot_on_killed += killed_after_dot;
        let extra = in_stream.len() - 1;
        assert!(
            extra <= s.after_dot.len(),
            "{token}: {extra} extra copies, but only {} attempts died after the end of data",
            s.after_dot.len()
        );
        duplicates += extra;
    }
    assert_eq!(acked, MESSAGES);
    assert_eq!(copies.len(), MESSAGES, "no token the clients did not send");
    println!(
        "three receivers: {} messages acknowledged, {} in the stream ({:?} per receiver); \
         receiver {KILLED} killed with {after_dot_on_killed} transactions past their end of data \
         and without a reply, {duplicates} duplicates in the stream",
        acked,
        msgs.len(),
        per_receiver,
    );
    assert!(
        duplicates <= after_dot_on_killed,
        "duplicates only from transactions in flight on the killed receiver"
    );
    assert!(
        per_receiver.iter().all(|&n| n > 0),
        "every receiver stored some: {per_receiver:?}"
    );
}
