//! Load generation for gsmtpd's benchmarks: many SMTP clients on loopback,
//! each sending messages as fast as the server answers, with the latency
//! of every message measured from the end of its data to the server's
//! reply (the time the store takes to commit it, plus the protocol).
//!
//! The engine is a library so that every benchmark script drives the same
//! code through the `smtp-load` binary; [`Spec`] says what to send and
//! [`run`] returns a [`Report`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The longest any one read or write may take before the connection is
/// given up as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512).
const MAX_REPLY_LINE: usize = 4096;

/// What to send.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The server; must be a loopback address.
    pub addr: SocketAddr,
    /// Concurrent connections.
    pub connections: usize,
    /// Messages in all, across every connection.
    pub messages: u64,
    /// Messages per connection before it QUITs and reconnects; 0 = no limit.
    pub per_connection: u64,
    /// Octets of message content (header and body, before dot-stuffing).
    pub size: usize,
    /// Use PIPELINING when the server offers it: MAIL, RCPT and DATA in one
    /// write, and a message's data together with the next MAIL, RCPT, DATA.
    pub pipelining: bool,
    /// The run stops here whatever is left; every read and write is also
    /// bounded by it.
    pub time_limit: Duration,
    /// Reverse-path.
    pub from: String,
    /// Forward-path of every message.
    pub rcpt: String,
    /// EHLO argument.
    pub helo: String,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum SpecError {
    /// The address is not on loopback: this tool loads only local servers.
    NotLoopback(SocketAddr),
    /// A count or size is zero.
    Zero(&'static str),
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::NotLoopback(a) => write!(f, "{a} is not a loopback address"),
            SpecError::Zero(what) => write!(f, "{what} must be greater than 0"),
        }
    }
}

impl std::error::Error for SpecError {}

impl Spec {
    /// Checks the limits that keep a run local and bounded.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !self.addr.ip().is_loopback() {
            return Err(SpecError::NotLoopback(self.addr));
        }
        for (what, n) in [
            ("connections", self.connections as u64),
            ("messages", self.messages),
            ("time limit", self.time_limit.as_millis() as u64),
        ] {
            if n == 0 {
                return Err(SpecError::Zero(what));
            }
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Messages whose data was sent or whose transaction was refused.
    pub attempted: u64,
    /// Final replies 250 after the data.
    pub ok: u64,
    /// 4xx replies (to the data or to MAIL/RCPT/DATA).
    pub temp: u64,
    /// 5xx replies.
    pub perm: u64,
    /// Connections lost, timed out or answered nonsense.
    pub io_errors: u64,
    /// The time limit stopped the run before every message was sent.
    pub timed_out: bool,
    /// From the first connect to the last reply.
    pub elapsed: Duration,
    /// End of data to the final reply, for every 250, in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Report {
    /// Messages answered 250 per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency below which `p` (0..=100) percent of the 250s fell,
    /// in microseconds (nearest rank).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        Some(self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1])
    }

    /// Every message got its 250 within the time limit.
    pub fn all_ok(&self, spec: &Spec) -> bool {
        !self.timed_out && self.ok == spec.messages
    }
}

/// Counters the connection tasks share; they survive a task that the time
/// limit cuts off.
#[derive(Default)]
struct Shared {
    claimed: AtomicU64,
    attempted: AtomicU64,
    ok: AtomicU64,
    temp: AtomicU64,
    perm: AtomicU64,
    io_errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Shared {
    /// Takes the next message to send, if any is left.
    fn claim(&self, total: u64) -> Option<u64> {
        let n = self.claimed.fetch_add(1, Ordering::Relaxed);
        (n < total).then_some(n)
    }

    fn count(&self, code: u16) {
        let slot = match code {
            200..=299 => &self.ok,
            400..=499 => &self.temp,
            _ => &self.perm,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the load and reports what it measured.
pub async fn run(spec: Spec) -> Result<Report, SpecError> {
    spec.validate()?;
    let spec = Arc::new(spec);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let deadline = started + spec.time_limit;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..spec.connections {
        let (spec, shared) = (Arc::clone(&spec), Arc::clone(&shared));
        tasks.spawn(async move { connection_loop(conn, &spec, &shared, deadline).await });
    }
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let timed_out = tokio::time::timeout_at(deadline.into(), all_done)
        .await
        .is_err();
    tasks.abort_all();
    let elapsed = started.elapsed();
    let mut latencies_us = std::mem::take(
        &mut *shared
            .latencies_us
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    latencies_us.sort_unstable();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(Report {
        attempted: load(&shared.attempted),
        ok: load(&shared.ok),
        temp: load(&shared.temp),
        perm: load(&shared.perm),
        io_errors: load(&shared.io_errors),
        timed_out,
        elapsed,
        latencies_us,
    })
}

/// One connection slot: connects, sends, reconnects, until no message is
/// left or the deadline passes.
async fn connection_loop(conn: usize, spec: &Spec, shared: &Shared, deadline: Instant) {
    // Bounded: every pass claims a message or returns.
    while Instant::now() < deadline {
        let Some(first) = shared.claim(spec.messages) else {
            return;
        };
        match session(conn, first, spec, shared, deadline).await {
            Ok(()) => {}
            Err(_) => {
                shared.io_errors.fetch_add(1, Ordering::Relaxed);
                // A server that refuses connections should not be spun on.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A failed exchange: the message at hand is counted, the connection dropped.
#[derive(Debug)]
enum Failed {
    /// A reply other than the expected one; already counted.
    Refused,
}

/// One SMTP session starting with message number `first`.
async fn session(
    conn: usize,
    first: u64,
    spec: &Spec,
    shared: &Shared,
    deadline: Instant,
) -> io::Result<()> {
    let stream = timed(deadline, TcpStream::connect(spec.addr)).await??;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut c = Conn {
        r: BufReader::new(r),
        w,
        deadline,
        line: String::new(),
    };
    c.expect(220).await?;
    c.write(format!("EHLO {}\r\n", spec.helo).as_bytes())
        .await?;
    let (code, ehlo) = c.reply().await?;
    if code != 250 {
        shared.attempted.fetch_add(1, Ordering::Relaxed);
        shared.count(code);
        return Ok(());
    }
    let pipelining = spec.pipelining && ehlo.lines().any(|l| l.eq_ignore_ascii_case("PIPELINING"));
    let envelope = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        spec.from, spec.rcpt
    );

    let mut current = first;
    let mut in_this_connection = 1u64;
    // Open the first transaction.
    if let Err(Failed::Refused) = c.open(&envelope, pipelining, shared).await? {
        c.quit().await;
        return Ok(());
    }
    loop {
        shared.attempted.fetch_add(1, Ordering::Relaxed);
        let data = message(conn, current, spec);
        let more = spec.per_connection == 0 || in_this_connection < spec.per_connection;
        let next = if more {
            shared.claim(spec.messages)
        } else {
            None
        };
        let next_envelope = next.is_some() && pipelining;
        // Pipelined: the next MAIL, RCPT, DATA go out with this data.
        if next_envelope {
            let mut buf = data;
            buf.extend_from_slice(envelope.as_bytes());
            c.write(&buf).await?;
        } else {
            c.write(&data).await?;
        }
        let sent = Instant::now();
        let (code, _) = c.reply().await?;
        shared.count(code);
        if code == 250 {
            let us = sent.elapsed().as_micros() as u64;
            shared
                .latencies_us
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(us);
        }
        let Some(n) = next else {
            c.quit().await;
            return Ok(());
        };
        current = n;
        in_this_connection += 1;
        let opened = if next_envelope {
            c.replies_to_envelope(shared).await?
        } else {
            c.open(&envelope, false, shared).await?
        };
        if let Err(Failed::Refused) = opened {
            c.quit().await;
            return Ok(());
        }
    }
}

/// The content of message `n`: a unique header, then lines of filler up to
/// `spec.size` octets, then the end-of-data marker. No line starts with a
/// dot, so no dot-stuffing is needed.
pub fn message(conn: usize, n: u64, spec: &Spec) -> Vec<u8> {
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: smtp-load {conn} {n}\r\n\
         Message-ID: <{n}.{conn}@smtp-load>\r\n\r\n",
        spec.from, spec.rcpt
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() + LINE.len() <= spec.size {
        m.extend_from_slice(LINE);
    }
    let rest = spec.size.saturating_sub(m.len());
    if rest >= 3 {
        m.extend(std::iter::repeat_n(b'x', rest - 2));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// A connection with its deadline.
struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    deadline: Instant,
    line: String,
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        timed(self.deadline, self.w.write_all(bytes)).await?
    }

    /// One reply: its code and its lines' texts, '\n'-separated.
    async fn reply(&mut self) -> io::Result<(u16, String)> {
        let mut text = String::new();
        // Bounded: a reply longer than 100 lines is nonsense.
        for _ in 0..100 {
            self.line.clear();
            let n = timed(
                self.deadline,
                (&mut self.r)
                    .take(MAX_REPLY_LINE as u64)
                    .read_line(&mut self.line),
            )
            .await??;
            let line = self.line.trim_end_matches(['\r', '\n']);
            if n == 0 || line.len() < 3 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad reply code"))?;
            text.push_str(line.get(4..).unwrap_or(""));
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text));
            }
            text.push('\n');
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"))
    }

    async fn expect(&mut self, want: u16) -> io::Result<()> {
        let (code, text) = self.reply().await?;
        if code == want {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "expected {want}, got {code} {text}"
            )))
        }
    }

    /// MAIL, RCPT, DATA: all in one write when pipelining.
    async fn open(
        &mut self,
        envelope: &str,
        pipelining: bool,
        shared: &Shared,
    ) -> io::Result<Result<(), Failed>> {
        if pipelining {
            self.write(envelope.as_bytes()).await?;
            return self.replies_to_envelope(shared).await;
        }
        for (line, want) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
            self.write(line.as_bytes()).await?;
            let (code, _) = self.reply().await?;
            if code != want {
                shared.attempted.fetch_add(1, Ordering::Relaxed);
                shared.count(code);
                return Ok(Err(Failed::Refused));
            }
        }
        Ok(Ok(()))
    }

    /// Reads the three replies to a pipelined MAIL, RCPT, DATA. A refusal
    /// counts the message once, by its first failing reply.
    async fn replies_to_envelope(&mut self, shared: &Shared) -> io::Result<Result<(), Failed>> {
        let mut failed = None;
        for want in [250, 250, 354] {
            let (code, _) = self.reply().await?;
            if code != want && failed.is_none() {
                failed = Some(code);
            }
        }
        match failed {
            None => Ok(Ok(())),
            Some(code) => {
                shared.attempted.fetch_add(1, Ordering::Relaxed);
                shared.count(code);
                // A 354 to a pipelined DATA after a refused RCPT would need
                // data; closing the connection ends that transaction.
                Ok(Err(Failed::Refused))
            }
        }
    }

    /// Best effort: the message results are in already.
    async fn quit(&mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply().await;
        }
    }
}

/// Runs `f` until `deadline`, at most [`IO_TIMEOUT`].
async fn timed<F: std::future::Future>(deadline: Instant, f: F) -> io::Result<F::Output> {
    let until = deadline.min(Instant::now() + IO_TIMEOUT);
    tokio::time::timeout_at(until.into(), f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize) -> Spec {
        Spec {
            addr: "127.0.0.1:2525".parse().unwrap(),
            connections: 1,
            messages: 1,
            per_connection: 0,
            size,
            pipelining: true,
            time_limit: Duration::from_secs(1),
            from: "load@bench.test".into(),
            rcpt: "sink@example.com".into(),
            helo: "bench.test".into(),
        }
    }

    #[test]
    fn messages_have_the_asked_size_and_need_no_dot_stuffing() {
        for size in [0, 100, 200, 1024, 1025, 4096, 100_000] {
            let m = message(3, 7, &spec(size));
            assert!(m.ends_with(b"\r\n.\r\n"), "{size}");
            let content = &m[..m.len() - 3];
            let header = message(3, 7, &spec(0)).len() - 3;
            assert_eq!(content.len(), size.max(header), "{size}");
            assert!(
                content.split(|&b| b == b'\n').all(|l| !l.starts_with(b".")),
                "{size}"
            );
            assert!(!content.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
        assert_ne!(message(0, 1, &spec(10)), message(0, 2, &spec(10)));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let r = Report {
            latencies_us: (1..=100).collect(),
            ..Report::default()
        };
        for (p, want) in [(50.0, 50), (99.0, 99), (100.0, 100), (0.0, 1), (99.5, 100)] {
            assert_eq!(r.percentile(p), Some(want), "p{p}");
        }
        assert_eq!(Report::default().percentile(50.0), None);
    }

    #[test]
    fn only_loopback_and_nonzero_runs() {
        let mut s = spec(10);
        assert!(s.validate().is_ok());
        s.addr = "192.0.2.1:25".parse().unwrap();
        assert!(matches!(s.validate(), Err(SpecError::NotLoopback(_))));
        s.addr = "[::1]:25".parse().unwrap();
        assert!(s.validate().is_ok());
        s.messages = 0;
        assert!(matches!(s.validate(), Err(SpecError::Zero("messages"))));
    }
}
