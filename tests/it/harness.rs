//! Test harness: the real server on `127.0.0.1:0` with a SQLite store in a
//! temporary directory, a raw SMTP client, and helpers to read the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gsmtpd::MessageId;
use gsmtpd::config::{Backend, Config, SqliteConfig, StoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// The URL of a test service from the environment (`.ci/run` sets them).
/// Unset: the test is skipped and says so. Set: the service must answer,
/// or the test fails.
// Only tests behind backend features call it; a default build has none.
#[cfg_attr(
    not(any(
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "memcached"
    )),
    allow(dead_code)
)]
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("SKIPPED: {var} is not set (.ci/run sets it to the local service)");
            None
        }
    }
}

/// `prefix` and a suffix no other test, run or process uses, for database
/// names, key prefixes and subjects. The suffix is lower-case ASCII letters
/// and digits after a `_`, so with a plain `prefix` the whole is a plain
/// SQL identifier.
#[cfg_attr(
    not(any(
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "memcached"
    )),
    allow(dead_code)
)]
pub fn unique(prefix: &str) -> String {
    // Message ids are unique across processes (see `message::id`).
    let id = MessageId::generate(SystemTime::now());
    format!("{prefix}_{}", id.as_str().to_ascii_lowercase())
}

/// A MIME message that gives every parsed field something to show:
/// `subject` as the raw `Subject:` value (an RFC 2047 encoded word, say),
/// a `Date:` of 17:15:33 +0100 on 3 December 2026, a `Message-ID:`, an
/// alternative of a quoted-printable ISO-8859-1 plain part and HTML part
/// (`<p>Café <b>html</b></p>` decoded), and a base64 attachment.
#[cfg_attr(
    not(any(
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "memcached"
    )),
    allow(dead_code)
)]
pub fn mime(subject: &str) -> Vec<u8> {
    format!(
        "From: \"Sender Name\" <Sender@Example.NET>\r\n\
         To: Alice <Alice@example.com>, bob@sub.example.org\r\n\
         Subject: {subject}\r\n\
         Date: Thu, 3 Dec 2026 17:15:33 +0100\r\n\
         Message-ID: <abc.123@sender.example.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
         \r\n\
         --outer\r\n\
         Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
         \r\n\
         --inner\r\n\
         Content-Type: text/plain; charset=ISO-8859-1\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         \r\n\
         Caf=E9 plain\r\n\
         --inner\r\n\
         Content-Type: text/html; charset=ISO-8859-1\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         \r\n\
         <p>Caf=E9 <b>html</b></p>\r\n\
         --inner--\r\n\
         \r\n\
         --outer\r\n\
         Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Disposition: attachment; filename=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n\
         AAECAwQ=\r\n\
         --outer--\r\n"
    )
    .into_bytes()
}

/// How long a test waits for any one reply before it fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server and its database.
pub struct Server {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub db: PathBuf,
    /// The configuration it runs with (reload edits a copy of it).
    pub config: Config,
    server: Option<gsmtpd::Server>,
    stopping: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A configuration for tests: any domain but `elsewhere.test`-style checks
/// use `example.com`, a temporary SQLite file, port 0.
pub fn test_config(db: &Path) -> Config {
    let mut c = Config::from_toml(
        r#"
        hostname = "mx.test"
        allowed_hosts = ["example.com", "*.example.org"]
        # Every test client comes from 127.0.0.1.
        max_connections_per_ip = 0
        [[listener]]
        addr = "127.0.0.1:0"
        "#,
    )
    .unwrap();
    c.store = vec![StoreConfig {
        backend: Backend::Sqlite(SqliteConfig {
            path: db.to_owned(),
            ..SqliteConfig::default()
        }),
        ..StoreConfig::default()
    }];
    c
}

impl Server {
    /// Starts a server with the test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` edits the test configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gsmtpd.db");
        let mut config = test_config(&db);
        tweak(&mut config);
        // Tests that replace the SQLite store leave `db` unused.
        let db = match &config.store[0].backend {
            Backend::Sqlite(sqlite) => sqlite.path.clone(),
            _ => db,
        };
        let backends = gsmtpd::Backends::open(&config).await.unwrap();
        let server = gsmtpd::Server::bind(config.clone(), backends)
            .await
            .unwrap();
        let addrs = server.local_addrs();
        Self {
            addr: addrs[0],
            addrs,
            db,
            config,
            server: Some(server),
            stopping: None,
            _dir: dir,
        }
    }

    /// The running server (until shutdown begins).
    pub fn server(&self) -> &gsmtpd::Server {
        self.server.as_ref().expect("server running")
    }

    /// Reloads with a copy of the configuration edited by `tweak`.
    pub async fn reload(
        &mut self,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<(), gsmtpd::ServerError> {
        let mut config = self.config.clone();
        tweak(&mut config);
        self.server().reload(config.clone()).await?;
        self.config = config;
        self.addrs = self.server().local_addrs();
        Ok(())
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            self.stopping = Some(tokio::spawn(s.shutdown()));
        }
    }

    /// Shuts down and waits for the server to finish.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.finished().await;
    }

    /// Waits for a shutdown begun earlier to complete.
    pub async fn finished(&mut self) {
        if let Some(t) = self.stopping.take() {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("server stops within 60 s")
                .unwrap();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// The database, read-only.
    pub fn db(&self) -> rusqlite::Connection {
        gsmtpd::store::sqlite::open_read_only(&self.db).unwrap()
    }

    pub fn count(&self) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap()
    }

    /// The stored raw message with this id.
    pub fn raw(&self, id: &str) -> Vec<u8> {
        self.db()
            .query_row("SELECT raw FROM messages WHERE id = ?1", [id], |r| r.get(0))
            .unwrap_or_else(|e| panic!("message {id}: {e}"))
    }

    pub fn recipients(&self, id: &str) -> Vec<String> {
        let db = self.db();
        let mut st = db
            .prepare("SELECT address FROM recipients WHERE message_id = ?1 ORDER BY position")
            .unwrap();
        st.query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// Strips our Received header (the first header, with its folded lines).
pub fn content(raw: &[u8]) -> &[u8] {
    assert!(raw.starts_with(b"Received: "), "raw starts with our header");
    let mut i = 0;
    loop {
        let eol = i + raw[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        i = eol;
        if raw.get(i) != Some(&b'\t') {
            return &raw[i..];
        }
    }
}

/// A raw SMTP client: bytes out, parsed replies in.
pub struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

/// One reply: code and the text of its lines joined by '\n'.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// The id from `250 2.0.0 Ok: queued as ID`.
    pub fn queued_id(&self) -> String {
        assert_eq!(self.code, 250, "{self:?}");
        self.text
            .rsplit(' ')
            .next()
            .expect("queued as ID")
            .to_owned()
    }
}

impl Client {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut c = Self::connect_raw(addr).await;
        let greeting = c.reply().await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c
    }

    /// Connects without reading anything.
    pub async fn connect_raw(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    /// The socket, for a TLS handshake after STARTTLS.
    pub fn into_stream(self) -> TcpStream {
        self.r
            .into_inner()
            .reunite(self.w)
            .expect("halves of one stream")
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.w.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Reply {
        tokio::time::timeout(REPLY_TIMEOUT, self.try_reply())
            .await
            .expect("reply within the timeout")
            .expect("a reply, not EOF")
    }

    /// Reads one reply; `None` at EOF.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            assert!(
                line.ends_with("\r\n"),
                "reply line ends with CRLF: {line:?}"
            );
            let code: u16 = line[..3].parse().expect("reply code");
            text.push_str(&line[4..line.len() - 2]);
            if line.as_bytes()[3] == b' ' {
                return Some(Reply { code, text });
            }
            text.push('\n');
        }
    }

    /// Sends a command line, returns its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Sends a command line and checks the reply code.
    #[track_caller]
    pub fn expect<'a>(
        &'a mut self,
        line: &'a str,
        code: u16,
    ) -> impl std::future::Future<Output = Reply> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let r = self.cmd(line).await;
            assert_eq!(r.code, code, "{line} → {r:?} (at {caller})");
            r
        }
    }

    /// EHLO, then [`Client::transaction`]: returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], content: &[u8]) -> Reply {
        self.expect("EHLO client.test", 250).await;
        self.transaction(from, to, content).await
    }

    /// MAIL, RCPT for each recipient, DATA, the dot-stuffed body, on a
    /// session that said EHLO already: returns the final reply.
    pub async fn transaction(&mut self, from: &str, to: &[&str], content: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in to {
            self.expect(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        self.send(gsmtpd::smtp::data::stuff(content)).await;
        self.reply().await
    }

    /// True if the server closes the connection (EOF) within the timeout,
    /// after any replies still in flight.
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(REPLY_TIMEOUT, self.r.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        ) && rest.is_empty()
    }

    /// Waits for the server to close the connection; returns what it sent
    /// before closing (a TLS alert, say). Fails if it stays open.
    pub async fn wait_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match tokio::time::timeout(REPLY_TIMEOUT, self.r.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
        {
            Ok(_) => {}
            // Closing with unread input makes the kernel send a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("reading until EOF: {e}"),
        }
        rest
    }

    /// Reads whatever arrives until EOF.
    pub async fn read_to_end(&mut self) -> String {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(REPLY_TIMEOUT, self.r.read_to_end(&mut rest)).await;
        String::from_utf8_lossy(&rest).into_owned()
    }

    /// One read from the socket, whatever it holds (for pipelining checks).
    pub async fn read_once(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(REPLY_TIMEOUT, self.r.read(&mut buf))
            .await
            .expect("data within the timeout")
            .unwrap();
        buf.truncate(n);
        buf
    }
}
