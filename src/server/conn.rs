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

use crate::config::ConnLimits;
use crate::message::Envelope;
use crate::smtp::{DeliveryOutcome, Event, Session};
use crate::store::Delivery;

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

/// Runs one SMTP session over `io` until it ends.
pub async fn drive<S: Io>(
    io: &mut S,
    session: &mut Session,
    limits: &ConnLimits,
    delivery: &Delivery,
    stop: &Stop,
) -> CloseReason {
    session.greeting();
    let mut input = BytesMut::new();
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
                let envelope = Arc::new(*envelope);
                let outcome = store(delivery, envelope).await;
                session.delivered(outcome);
            }
            Event::Close => {
                let _ = write_output(io, session, limits.command_timeout).await;
                return CloseReason::Session;
            }
        }
    }
}

/// Commits a message and logs the result, one line per message.
async fn store(delivery: &Delivery, envelope: Arc<Envelope>) -> DeliveryOutcome {
    match delivery.deliver(Arc::clone(&envelope)).await {
        Ok(()) => {
            tracing::info!(
                id = %envelope.id,
                from = %format_args!("<{}>", envelope.mail_from),
                nrcpt = envelope.recipients.len(),
                size = envelope.raw.len(),
                "queued"
            );
            DeliveryOutcome::Stored
        }
        Err(e) => {
            tracing::warn!(
                id = %envelope.id,
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
