//! The connection task: moves bytes between a stream and a [`Session`],
//! hands finished messages to the stores, and enforces time limits.
//!
//! It is generic over the stream so tests can drive it in memory, and it
//! holds no read buffer while the client is idle: the buffer is allocated
//! when bytes arrive and dropped once the session has consumed them.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::check::RecipientCheck;
use crate::config::ConnLimits;
use crate::message::Envelope;
use crate::pipeline::{self, Pipeline};
use crate::smtp::{DeliveryOutcome, Event, Session};
use crate::store::FanOut;

/// Read size while waiting for commands; pipelined groups are small.
const COMMAND_READ: usize = 4 * 1024;
/// Read size while receiving content.
const DATA_READ: usize = 64 * 1024;

/// A byte stream the server can speak SMTP over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// Waits until a read would find bytes (or EOF), without a buffer, so an
    /// idle connection costs no buffer memory. The default returns at once.
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
}

impl Io for tokio::net::TcpStream {
    async fn wait_readable(&self) -> io::Result<()> {
        self.readable().await
    }
}

impl Io for tokio::io::DuplexStream {}

/// TLS keeps its own buffers; it is read like any stream.
impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// Why a connection ended.
#[derive(Debug)]
pub enum CloseReason {
    /// The session ended it: QUIT, or a protocol error that closes.
    Session,
    /// The client closed the connection.
    Eof,
    /// A read or write took longer than its timeout.
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// A socket error.
    Io(io::Error),
    /// The client asked for STARTTLS: the caller runs the handshake and
    /// continues the session over TLS. Not an end.
    StartTls,
}

impl CloseReason {
    /// A short word for the disconnect log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Session => "quit",
            CloseReason::Eof => "eof",
            CloseReason::Timeout => "timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Io(_) => "io-error",
            CloseReason::StartTls => "starttls",
        }
    }
}

/// Cancellation signals from the server.
#[derive(Clone, Default)]
pub struct Stop {
    /// Graceful shutdown began: idle sessions close now, open transactions
    /// may finish.
    pub graceful: CancellationToken,
    /// The grace period is over: every session closes at its next read.
    pub now: CancellationToken,
}

/// What a session's messages and recipients are handed to.
pub struct Services {
    /// The steps between end of data and the stores.
    pub pipeline: Arc<Pipeline>,
    /// The stores.
    pub stores: Arc<FanOut>,
    /// The recipient check, when configured.
    pub check: Option<Arc<RecipientCheck>>,
    /// The large-message memory budget, in KiB (`max_inflight_bytes`).
    pub inflight: Arc<tokio::sync::Semaphore>,
}

/// Past this much memory a message must hold a reservation of the budget.
pub const LARGE_MESSAGE: usize = 1 << 20;

/// Budget units (KiB) for `bytes`, rounded up.
pub fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Runs one SMTP session over `io` until it ends, or until STARTTLS hands
/// it back to the caller. `greet` is false when a session continues over
/// TLS after STARTTLS.
pub async fn drive<S: Io>(
    io: &mut S,
    session: &mut Session,
    limits: &ConnLimits,
    services: &Services,
    stop: &Stop,
    greet: bool,
) -> CloseReason {
    if greet {
        session.greeting();
    }
    let mut input = BytesMut::new();
    // A large message's share of the memory budget, held until it is stored.
    let mut reservation = None;
    loop {
        match session.advance(&mut input) {
            Event::NeedInput => {
                if let Err(r) = write_output(io, session, limits.command_timeout).await {
                    return r;
                }
                if input.is_empty() {
                    // Release the buffer: an idle session holds none.
                    input = BytesMut::new();
                }
                match session.message_memory() {
                    0 => reservation = None,
                    m if m > LARGE_MESSAGE && reservation.is_none() => {
                        // Reserve all a message can grow to, at once: a
                        // holder never waits for more, so the budget cannot
                        // deadlock. Until then this connection stops reading.
                        // Twice the size: the buffer, and the parsed body
                        // the pipeline will extract from it.
                        let units = kib(limits.session.max_message_size.saturating_mul(2));
                        let wait = Arc::clone(&services.inflight).acquire_many_owned(units);
                        match tokio::time::timeout(limits.data_timeout, wait).await {
                            Ok(permit) => reservation = permit.ok(),
                            Err(_) => {
                                session.timed_out();
                                let _ = write_output(io, session, limits.command_timeout).await;
                                return CloseReason::Timeout;
                            }
                        }
                    }
                    _ => {}
                }
                let (timeout, chunk) = if session.in_data() {
                    (limits.data_timeout, DATA_READ)
                } else {
                    (limits.command_timeout, COMMAND_READ)
                };
                // Sessions with an open transaction may finish it during a
                // graceful shutdown; the others leave at once.
                let stop_now = if session.in_transaction() {
                    &stop.now
                } else {
                    &stop.graceful
                };
                let read = tokio::select! {
                    biased;
                    () = stop_now.cancelled() => {
                        session.shutting_down();
                        let _ = write_output(io, session, limits.command_timeout).await;
                        return CloseReason::Shutdown;
                    }
                    r = tokio::time::timeout(timeout, read_some(io, &mut input, chunk)) => r,
                };
                match read {
                    Ok(Ok(0)) => return CloseReason::Eof,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return CloseReason::Io(e),
                    Err(_) => {
                        session.timed_out();
                        let _ = write_output(io, session, limits.command_timeout).await;
                        return CloseReason::Timeout;
                    }
                }
            }
            Event::Deliver(envelope) => {
                let envelope = prepare(&services.pipeline, envelope).await;
                let outcome = store(&services.stores, Arc::new(envelope)).await;
                session.delivered(outcome);
            }
            Event::CheckRecipient(address) => {
                let verdict = match &services.check {
                    Some(check) => check.verify(&address).await,
                    None => crate::smtp::RecipientVerdict::Known,
                };
                session.recipient_checked(verdict);
            }
            Event::StartTls => {
                if let Err(r) = write_output(io, session, limits.command_timeout).await {
                    return r;
                }
                // Whatever the client sent after STARTTLS in plaintext is
                // dropped here, unread by the session (CVE-2011-0411).
                return CloseReason::StartTls;
            }
            Event::Close => {
                let _ = write_output(io, session, limits.command_timeout).await;
                return CloseReason::Session;
            }
        }
    }
}

/// Runs the pipeline; a large message on the blocking pool.
async fn prepare(pipeline: &Arc<Pipeline>, mut envelope: Box<Envelope>) -> Envelope {
    if envelope.raw.len() < pipeline::BLOCKING_THRESHOLD {
        pipeline.run(&mut envelope);
        return *envelope;
    }
    let p = Arc::clone(pipeline);
    let id = envelope.id;
    tokio::task::spawn_blocking(move || {
        p.run(&mut envelope);
        *envelope
    })
    .await
    .unwrap_or_else(|e| unreachable!("the pipeline guards its parser against panics: {e} ({id})"))
}

/// Commits a message and logs the result, one line per message.
async fn store(stores: &FanOut, envelope: Arc<Envelope>) -> DeliveryOutcome {
    match stores.deliver(Arc::clone(&envelope)).await {
        Ok(()) => {
            crate::metrics::message_accepted(envelope.raw.len(), envelope.recipients.len());
            tracing::info!(
                id = %envelope.id,
                client = %envelope.client,
                from = %format_args!("<{}>", envelope.mail_from),
                nrcpt = envelope.recipients.len(),
                size = envelope.raw.len(),
                "queued"
            );
            DeliveryOutcome::Stored
        }
        Err(e) => {
            crate::metrics::message_rejected("store");
            tracing::warn!(
                id = %envelope.id,
                client = %envelope.client,
                from = %format_args!("<{}>", envelope.mail_from),
                nrcpt = envelope.recipients.len(),
                size = envelope.raw.len(),
                error = %e,
                "not stored, answered 451"
            );
            DeliveryOutcome::Failed
        }
    }
}

async fn read_some<S: Io>(io: &mut S, input: &mut BytesMut, chunk: usize) -> io::Result<usize> {
    if input.capacity() == 0 {
        io.wait_readable().await?;
    }
    if input.capacity() - input.len() < chunk / 4 {
        input.reserve(chunk);
    }
    io.read_buf(input).await
}

/// Writes the session's pending replies in one go.
async fn write_output<S: Io>(
    io: &mut S,
    session: &mut Session,
    timeout: Duration,
) -> Result<(), CloseReason> {
    if session.output().is_empty() {
        return Ok(());
    }
    let write = async {
        io.write_all(session.output()).await?;
        io.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => {
            session.clear_output();
            Ok(())
        }
        Ok(Err(e)) => Err(CloseReason::Io(e)),
        Err(_) => Err(CloseReason::Timeout),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    //! The connection loop over an in-memory stream, with the real SQLite
    //! store in a temporary directory.
    use super::*;
    use crate::config::{Config, SqliteConfig};
    use crate::smtp::Peer;
    use crate::store::sqlite::SqliteStore;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

    struct Rig {
        client_r: BufReader<ReadHalf<DuplexStream>>,
        client_w: WriteHalf<DuplexStream>,
        task: tokio::task::JoinHandle<(CloseReason, u32)>,
        stop: Stop,
        db: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let store = SqliteStore::open(&SqliteConfig {
            path: db.clone(),
            ..SqliteConfig::default()
        })
        .unwrap();
        let mut stores = crate::store::Stores::new();
        stores
            .add_blocking(store, &crate::config::StoreConfig::default())
            .unwrap();
        let (stores, _writers) = stores.split();
        let config = Config::default();
        let services = Services {
            pipeline: Arc::new(crate::pipeline::Pipeline::from_config(&config)),
            stores: Arc::new(stores),
            check: None,
            inflight: Arc::new(tokio::sync::Semaphore::new(
                kib(config.max_inflight_bytes) as usize
            )),
        };
        let limits = config.conn_limits();
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let stop = Stop::default();
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let peer = Peer {
                client: "192.0.2.1:5000".parse().unwrap(),
                tls: None,
            };
            let mut session = Session::new(Arc::clone(&limits.session), peer);
            let reason = drive(&mut server, &mut session, &limits, &services, &stop2, true).await;
            (reason, session.accepted())
        });
        let (r, w) = tokio::io::split(client);
        Rig {
            client_r: BufReader::new(r),
            client_w: w,
            task,
            stop,
            db,
            _dir: dir,
        }
    }

    impl Rig {
        /// Reads reply lines until one without a continuation dash.
        async fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                assert!(self.client_r.read_line(&mut line).await.unwrap() > 0, "EOF");
                all.push_str(&line);
                if line.as_bytes()[3] == b' ' {
                    return all;
                }
            }
        }
    }

    #[tokio::test]
    async fn pipelined_session_over_a_stream() {
        let mut t = rig().await;
        assert_eq!(
            t.reply().await,
            "220 localhost ESMTP gsmtpd\r\n".replace("localhost", &Config::default().hostname)
        );
        t.client_w
            .write_all(
                b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n",
            )
            .await
            .unwrap();
        assert!(t.reply().await.starts_with("250-"));
        assert_eq!(t.reply().await, "250 2.1.0 Ok\r\n");
        assert_eq!(t.reply().await, "250 2.1.5 Ok\r\n");
        assert!(t.reply().await.starts_with("354 "));
        t.client_w
            .write_all(b"Subject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        let queued = t.reply().await;
        assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
        assert_eq!(t.reply().await, "221 2.0.0 Bye\r\n");
        let (reason, accepted) = t.task.await.unwrap();
        assert!(matches!(reason, CloseReason::Session), "{reason:?}");
        assert_eq!(accepted, 1);
        let id = queued.trim_end().rsplit(' ').next().unwrap();
        let db = crate::store::sqlite::open_read_only(&t.db).unwrap();
        let raw: Vec<u8> = db
            .query_row("SELECT raw FROM messages WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        assert!(raw.ends_with(b"\r\nSubject: s\r\n\r\nhi\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_client_times_out_with_421() {
        let mut t = rig().await;
        t.reply().await;
        // The clock is paused: tokio jumps it forward once everything idles.
        let r = t.reply().await;
        assert!(r.starts_with("421 4.4.2 "), "{r}");
        let (reason, _) = t.task.await.unwrap();
        assert!(matches!(reason, CloseReason::Timeout), "{reason:?}");
    }

    #[tokio::test]
    async fn client_eof_ends_the_session() {
        let mut t = rig().await;
        t.reply().await;
        t.client_w.shutdown().await.unwrap();
        drop(t.client_w);
        let (reason, _) = t.task.await.unwrap();
        assert!(matches!(reason, CloseReason::Eof), "{reason:?}");
    }

    #[tokio::test]
    async fn graceful_stop_spares_an_open_transaction_until_the_hard_stop() {
        let mut t = rig().await;
        t.reply().await;
        t.client_w
            .write_all(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
            .await
            .unwrap();
        t.reply().await;
        t.reply().await;
        t.stop.graceful.cancel();
        // Still served: the transaction is open.
        t.client_w.write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(t.reply().await, "250 2.0.0 Ok\r\n");
        t.stop.now.cancel();
        assert!(t.reply().await.starts_with("421 4.3.2 "));
        let (reason, _) = t.task.await.unwrap();
        assert!(matches!(reason, CloseReason::Shutdown), "{reason:?}");
    }

    #[tokio::test]
    async fn graceful_stop_closes_an_idle_session() {
        let mut t = rig().await;
        t.reply().await;
        t.stop.graceful.cancel();
        assert!(t.reply().await.starts_with("421 4.3.2 "));
        let (reason, _) = t.task.await.unwrap();
        assert!(matches!(reason, CloseReason::Shutdown), "{reason:?}");
    }
}
