//! The SMTP session state machine, sans IO: the connection task feeds it the
//! bytes it read and writes out the replies it produced. No sockets, no
//! tokio, no clock but the one that stamps a message, so every behaviour can
//! be tested byte by byte.
//!
//! ```text
//!   greeting() ──► advance(input) ──► Event::NeedInput   read more, call again
//!                                 ├─► Event::Deliver(e)  store it, call delivered()
//!                                 └─► Event::Close       write output, close
//! ```
//!
//! Replies accumulate in an output buffer; the caller writes them when
//! `advance` asks for input, so the replies to a pipelined group leave in one
//! write (RFC 2920).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, BytesMut};

use super::address::Path;
use super::command::{self, BodyType, Command, MailParams, Verb};
use super::data::{DataReader, MessageBuf};
use super::reply::{self, Reply};
use crate::message::{self, Envelope, MessageId, Trace};

/// The limits and names a session works with; shared by all sessions of a
/// listener and replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Largest message content accepted, in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Error replies before `421 4.7.0` and close.
    pub max_errors: u32,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Refuse message content with a bare CR or LF (`550 5.6.0`).
    pub forbid_bare_newline: bool,
    /// Domains we accept mail for.
    pub allowed_hosts: HostMatcher,
    /// Ask the caller to look each recipient up (`Event::CheckRecipient`).
    pub check_recipients: bool,
    /// Offer STARTTLS (RFC 3207) until the session is encrypted.
    pub starttls: bool,
    /// Refuse MAIL until the session is encrypted (`530 5.7.0`).
    pub require_tls: bool,
    /// The per-client MAIL rate (`451 4.7.1` beyond it); shared by every
    /// session, so it lives here rather than in each.
    pub mail_rate: Option<Arc<dyn MailRate>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_errors: 10,
            max_line_length: 512,
            forbid_bare_newline: true,
            allowed_hosts: HostMatcher::any(),
            check_recipients: false,
            starttls: false,
            require_tls: false,
            mail_rate: None,
        }
    }
}

/// Which domains we receive mail for: exact names, `*.example.org`
/// (any subdomain, not the domain itself), or `*` for any.
#[derive(Debug, Clone, Default)]
pub struct HostMatcher {
    any: bool,
    exact: std::collections::HashSet<String>,
    suffixes: Vec<String>,
}

impl HostMatcher {
    /// Matches every domain.
    pub fn any() -> Self {
        Self {
            any: true,
            ..Self::default()
        }
    }

    /// Builds a matcher; returns the first pattern that is not valid.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut m = Self::default();
        for p in patterns {
            let p = p.as_ref().trim().to_ascii_lowercase();
            if p == "*" {
                m.any = true;
            } else if let Some(suffix) = p.strip_prefix("*.") {
                if !super::address::is_valid_domain(suffix) {
                    return Err(p);
                }
                m.suffixes.push(format!(".{suffix}"));
            } else if super::address::is_valid_domain(&p)
                || (p.starts_with('[') && p.ends_with(']'))
            {
                m.exact.insert(p);
            } else {
                return Err(p);
            }
        }
        Ok(m)
    }

    /// True if mail for `domain` is accepted.
    pub fn matches(&self, domain: &str) -> bool {
        if self.any {
            return true;
        }
        let d = domain.to_ascii_lowercase();
        self.exact.contains(&d) || self.suffixes.iter().any(|s| d.ends_with(s.as_str()))
    }
}

/// Decides, per client address, whether another MAIL may start now (the
/// per-client message rate). Shared state, but no IO.
pub trait MailRate: Send + Sync + std::fmt::Debug {
    /// Counts one MAIL from `client`; false if it is over the limit.
    fn allow(&self, client: std::net::IpAddr) -> bool;
}

/// What the connection knows about its peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client address (after a PROXY header, when there is one).
    pub client: SocketAddr,
    /// Set once the session runs over TLS. Boxed: every plaintext session
    /// would otherwise carry its space.
    pub tls: Option<Box<TlsInfo>>,
}

/// The negotiated TLS parameters, for the Received header and the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`
    pub version: &'static str,
    /// e.g. `TLS_AES_256_GCM_SHA384`
    pub cipher: &'static str,
}

/// What the caller must do next.
#[derive(Debug)]
pub enum Event {
    /// Every complete command in the input was handled: write the output,
    /// read more input, call `advance` again.
    NeedInput,
    /// A message is complete. Store it, then call [`Session::delivered`]
    /// before calling `advance` again.
    Deliver(Box<Envelope>),
    /// Look this recipient up, then call [`Session::recipient_checked`]
    /// before calling `advance` again.
    CheckRecipient(String),
    /// Write the output, throw away every byte of input already buffered
    /// (RFC 3207 §4.2, CVE-2011-0411), run the TLS handshake, then call
    /// [`Session::tls_started`] (or end the connection if it failed).
    StartTls,
    /// Write the output, then close the connection.
    Close,
}

/// Whether the stores committed the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Every required store committed it: answer `250`.
    Stored,
    /// A store failed: answer `451 4.3.0`, the client will retry.
    Failed,
}

/// The answer of a recipient lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientVerdict {
    /// The mailbox exists: `250 2.1.5`.
    Known,
    /// No such mailbox: `550 5.1.1`.
    Unknown,
    /// The lookup failed or timed out: `451 4.3.0`, the client retries.
    LookupFailed,
}

/// Why content cannot be taken now: a fixed reply, a byte instead of a
/// `Reply` so every session's phase stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NeedHelo,
    NeedMail,
    NeedRcpt,
    BdatSyntax,
    TooBig,
}

impl Refusal {
    fn reply(self) -> Reply {
        match self {
            Refusal::NeedHelo => reply::NEED_HELO,
            Refusal::NeedMail => reply::NEED_MAIL,
            Refusal::NeedRcpt => reply::NEED_RCPT,
            Refusal::BdatSyntax => reply::SYNTAX_BDAT,
            Refusal::TooBig => reply::MESSAGE_TOO_BIG,
        }
    }
}

/// Where the session is in the input.
#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// A command line was too long; discarding it up to its CRLF.
    SkipLine,
    /// Reading the content after DATA.
    Data(DataReader),
    /// Reading a BDAT chunk: `remaining` octets to go.
    Chunk {
        remaining: u64,
        size: u64,
        last: bool,
        /// `Some`: the chunk is read and dropped, then this is the reply.
        discard: Option<Refusal>,
    },
    /// A message was handed out; waiting for `delivered`.
    Delivering(MessageId),
    /// A recipient was handed out for lookup; waiting for `recipient_checked`.
    Checking(String),
    /// `220` to STARTTLS queued; waiting for `tls_started`.
    StartingTls,
    /// The session is over.
    Closed,
}

/// A message being received.
#[derive(Debug)]
struct Started {
    id: MessageId,
    at: SystemTime,
    buf: MessageBuf,
}

/// The mail transaction between MAIL and the end of data.
#[derive(Debug)]
struct Transaction {
    from: String,
    params: MailParams,
    recipients: Vec<String>,
    message: Option<Started>,
    /// BDAT was used; DATA is no longer allowed.
    chunking: bool,
    /// A BDAT chunk failed with this reply: the rest of the chunks already
    /// in the pipeline are read, dropped and answered the same (RFC 3030 §2).
    failed: Option<Refusal>,
}

/// Per-verb command counts for the disconnect log line.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    ok: [u32; Verb::ALL.len()],
    total: [u32; Verb::ALL.len()],
}

impl Counts {
    fn index(v: Verb) -> usize {
        Verb::ALL.iter().position(|&x| x == v).unwrap_or(0)
    }

    fn record(&mut self, v: Verb, ok: bool) {
        let i = Self::index(v);
        self.total[i] += 1;
        self.ok[i] += u32::from(ok);
    }
}

impl std::fmt::Display for Counts {
    /// `ehlo=1 mail=1 rcpt=0/1 data=1 quit=1 commands=4/5`, as Postfix logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mut ok, mut total) = (0, 0);
        for (i, v) in Verb::ALL.iter().enumerate() {
            if self.total[i] == 0 {
                continue;
            }
            write!(f, "{}={}", v.name(), self.ok[i])?;
            if self.ok[i] != self.total[i] {
                write!(f, "/{}", self.total[i])?;
            }
            f.write_str(" ")?;
            ok += self.ok[i];
            total += self.total[i];
        }
        write!(f, "commands={ok}")?;
        if ok != total {
            write!(f, "/{total}")?;
        }
        Ok(())
    }
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    peer: Peer,
    phase: Phase,
    /// The EHLO/HELO argument, and whether it was EHLO.
    helo: Option<(String, bool)>,
    /// Boxed: an idle session should not carry a transaction's space.
    tx: Option<Box<Transaction>>,
    out: Vec<u8>,
    errors: u32,
    counts: Counts,
    accepted: u32,
}

impl Session {
    /// A session that has not yet sent its greeting.
    pub fn new(cfg: Arc<SessionConfig>, peer: Peer) -> Self {
        Self {
            cfg,
            peer,
            phase: Phase::Command,
            helo: None,
            tx: None,
            out: Vec::new(),
            errors: 0,
            counts: Counts::default(),
            accepted: 0,
        }
    }

    /// Queues the `220` greeting.
    pub fn greeting(&mut self) {
        let host = &self.cfg.hostname;
        self.out
            .extend_from_slice(format!("220 {host} ESMTP gsmtpd\r\n").as_bytes());
    }

    /// Replies waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Call after writing [`output`](Self::output). The buffer is released,
    /// not kept: an idle session holds no output memory.
    pub fn clear_output(&mut self) {
        self.out = Vec::new();
    }

    /// True while the session reads message content (DATA or a BDAT chunk),
    /// where the data timeout applies instead of the command timeout.
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. })
    }

    /// Octets of memory the message being received holds (0 when none, or
    /// when it passed the size limit and is only counted).
    pub fn message_memory(&self) -> usize {
        self.tx
            .as_ref()
            .and_then(|t| t.message.as_ref())
            .map_or(0, |m| m.buf.memory())
    }

    /// True while a mail transaction is open (MAIL given, or a message is
    /// being received or stored): a graceful shutdown lets it finish.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || !matches!(self.phase, Phase::Command | Phase::Closed)
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Command counts so far, for the disconnect log line.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Messages acknowledged with `250` in this session.
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    /// The read timed out: queue `421 4.4.2` and end the session.
    pub fn timed_out(&mut self) {
        let r = reply::timeout(&self.cfg.hostname);
        self.close_with(r);
    }

    /// The server is shutting down: queue `421 4.3.2` and end the session.
    pub fn shutting_down(&mut self) {
        let r = reply::shutting_down(&self.cfg.hostname);
        self.close_with(r);
    }

    fn close_with(&mut self, r: Reply) {
        if !self.is_closed() {
            self.reply(&r);
            self.phase = Phase::Closed;
        }
    }

    /// Handles as much of `input` as possible; consumed bytes are removed
    /// from it, a partial command or chunk stays for the next call.
    pub fn advance(&mut self, input: &mut BytesMut) -> Event {
        loop {
            match &mut self.phase {
                Phase::Closed => return Event::Close,
                Phase::Delivering(_) | Phase::Checking(_) | Phase::StartingTls => {
                    debug_assert!(false, "advance() before delivered() or recipient_checked()");
                    return Event::NeedInput;
                }
                Phase::Command => {
                    if let Some(e) = self.command(input) {
                        return e;
                    }
                }
                Phase::SkipLine => match memchr::memmem::find(input, b"\r\n") {
                    Some(p) => {
                        input.advance(p + 2);
                        self.phase = Phase::Command;
                        self.error(reply::LINE_TOO_LONG);
                    }
                    None => {
                        // Keep a trailing CR: it may be the first half of CRLF.
                        let keep = usize::from(input.last() == Some(&b'\r'));
                        input.advance(input.len() - keep);
                        return Event::NeedInput;
                    }
                },
                Phase::Data(reader) => {
                    let Some(Started { buf, .. }) =
                        self.tx.as_mut().and_then(|t| t.message.as_mut())
                    else {
                        unreachable!("DATA phase without a started message");
                    };
                    let (n, done) = reader.read(input, buf);
                    input.advance(n);
                    if !done {
                        return Event::NeedInput;
                    }
                    let bare = reader.saw_bare_newline();
                    self.phase = Phase::Command;
                    if let Some(e) = self.end_of_data(bare) {
                        return e;
                    }
                }
                Phase::Chunk {
                    remaining,
                    size,
                    last,
                    discard,
                } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    if discard.is_none()
                        && let Some(Started { buf, .. }) =
                            self.tx.as_mut().and_then(|t| t.message.as_mut())
                    {
                        buf.push(&input[..n]);
                    }
                    input.advance(n);
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        return Event::NeedInput;
                    }
                    let (size, last, discard) = (*size, *last, discard.take());
                    self.phase = Phase::Command;
                    if let Some(e) = self.end_of_chunk(size, last, discard) {
                        return e;
                    }
                }
            }
        }
    }

    /// Reports the stores' verdict on the message handed out by `Deliver`.
    pub fn delivered(&mut self, outcome: DeliveryOutcome) {
        let Phase::Delivering(id) = self.phase else {
            debug_assert!(false, "delivered() without a message");
            return;
        };
        self.phase = Phase::Command;
        match outcome {
            DeliveryOutcome::Stored => {
                self.accepted += 1;
                reply::write_queued(id.as_str(), &mut self.out);
            }
            DeliveryOutcome::Failed => self.reply(&reply::STORE_FAILED),
        }
    }

    /// The TLS handshake after `StartTls` succeeded: the session starts
    /// over (RFC 3207 §4.2: forget the EHLO and everything after it).
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.peer.tls = Some(Box::new(info));
        self.helo = None;
        self.tx = None;
        self.phase = Phase::Command;
    }

    /// Reports the lookup of the recipient handed out by `CheckRecipient`.
    pub fn recipient_checked(&mut self, verdict: RecipientVerdict) {
        let Phase::Checking(address) = std::mem::replace(&mut self.phase, Phase::Command) else {
            debug_assert!(false, "recipient_checked() without a lookup");
            return;
        };
        match verdict {
            RecipientVerdict::Known => {
                self.counts.record(Verb::Rcpt, true);
                self.add_recipient(address);
            }
            RecipientVerdict::Unknown => {
                self.counts.record(Verb::Rcpt, false);
                self.error(reply::user_unknown(&address));
            }
            RecipientVerdict::LookupFailed => {
                // Our failure, not the client's: not counted as its error.
                self.counts.record(Verb::Rcpt, false);
                self.reply(&reply::lookup_failed(&address));
            }
        }
    }

    /// Takes one command line from `input` and runs it; `None` means "go on".
    fn command(&mut self, input: &mut BytesMut) -> Option<Event> {
        let limit = self.cfg.max_line_length;
        let window = &input[..input.len().min(limit)];
        let Some(lf) = memchr::memchr(b'\n', window) else {
            if input.len() >= limit {
                self.phase = Phase::SkipLine;
                return None;
            }
            return Some(Event::NeedInput);
        };
        // Lines end at CRLF only. A bare LF or CR in a command line means the
        // client and we disagree on where commands end — exactly what SMTP
        // smuggling exploits — so we say so and hang up, as Postfix does
        // with smtpd_forbid_bare_newline.
        if lf == 0 || input[lf - 1] != b'\r' {
            self.close_with(reply::BARE_LF_IN_COMMAND);
            return Some(Event::Close);
        }
        let line = input.split_to(lf + 1);
        let line = &line[..lf - 1];
        if memchr::memchr(b'\r', line).is_some() {
            self.close_with(reply::BARE_CR_IN_COMMAND);
            return Some(Event::Close);
        }
        tracing::debug!(target: "gsmtpd::dialogue", "< {}", String::from_utf8_lossy(line));
        let (verb, parsed) = command::parse(line);
        match parsed {
            Ok(cmd) => self.execute(verb, cmd),
            Err(r) => {
                self.counts.record(verb, false);
                self.error(r);
            }
        }
        match &self.phase {
            Phase::Closed => Some(Event::Close),
            Phase::Checking(address) => Some(Event::CheckRecipient(address.clone())),
            Phase::StartingTls => Some(Event::StartTls),
            _ => None,
        }
    }

    /// Runs a parsed command and queues its reply.
    fn execute(&mut self, verb: Verb, cmd: Command) {
        let result = match cmd {
            Command::Ehlo(name) => {
                self.tx = None;
                self.helo = Some((name, true));
                self.ehlo_reply();
                Ok(())
            }
            Command::Helo(name) => {
                self.tx = None;
                self.helo = Some((name, false));
                let r = Reply::owned(250, self.cfg.hostname.clone());
                self.reply(&r);
                Ok(())
            }
            Command::Mail { from, params } => self.mail(from, params),
            // A recipient to look up is counted once its verdict is in.
            Command::Rcpt { to } => match self.rcpt(to) {
                Ok(()) if matches!(self.phase, Phase::Checking(_)) => return,
                r => r,
            },
            Command::Data => self.data(),
            // BDAT counts and answers once its chunk has been read.
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::BadBdat { size } => return self.bad_bdat(size),
            Command::Rset => {
                self.tx = None;
                self.reply(&reply::OK);
                Ok(())
            }
            Command::Noop => {
                self.reply(&reply::OK);
                Ok(())
            }
            Command::Vrfy => {
                self.reply(&reply::VRFY);
                Ok(())
            }
            Command::Help => {
                self.reply(&reply::HELP);
                Ok(())
            }
            Command::Quit => {
                self.close_with(reply::BYE);
                Ok(())
            }
            Command::StartTls => self.starttls(),
            Command::NotImplemented => Err(reply::NOT_IMPLEMENTED),
            Command::Forbidden => {
                self.counts.record(verb, false);
                self.close_with(reply::FORBIDDEN_COMMAND);
                return;
            }
        };
        match result {
            Ok(()) => self.counts.record(verb, true),
            Err(r) => {
                self.counts.record(verb, false);
                self.error(r);
            }
        }
    }

    fn starttls(&mut self) -> Result<(), Reply> {
        if !self.cfg.starttls {
            return Err(reply::NOT_IMPLEMENTED);
        }
        if self.peer.tls.is_some() {
            return Err(reply::TLS_ACTIVE);
        }
        if self.helo.is_none() {
            return Err(reply::NEED_HELO);
        }
        if self.tx.is_some() {
            return Err(reply::TX_IN_PROGRESS);
        }
        self.reply(&reply::READY_TLS);
        self.phase = Phase::StartingTls;
        Ok(())
    }

    fn ehlo_reply(&mut self) {
        let c = &self.cfg;
        let starttls = if c.starttls && self.peer.tls.is_none() {
            "250-STARTTLS\r\n"
        } else {
            ""
        };
        let text = format!(
            "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n{starttls}250-8BITMIME\r\n250-SMTPUTF8\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 BINARYMIME\r\n",
            c.hostname, c.max_message_size
        );
        tracing::debug!(target: "gsmtpd::dialogue", "> 250 {} (EHLO)", c.hostname);
        self.out.extend_from_slice(text.as_bytes());
    }

    fn mail(&mut self, from: Path, params: MailParams) -> Result<(), Reply> {
        let Some((_, esmtp)) = &self.helo else {
            return Err(reply::NEED_HELO);
        };
        if self.tx.is_some() {
            return Err(reply::NESTED_MAIL);
        }
        if self.cfg.require_tls && self.peer.tls.is_none() {
            return Err(reply::NEED_TLS);
        }
        if let Some(rate) = &self.cfg.mail_rate
            && !rate.allow(self.peer.client.ip())
        {
            return Err(reply::RATE_LIMITED);
        }
        if params.any && !esmtp {
            return Err(reply::PARAMS_NEED_EHLO);
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return Err(reply::MESSAGE_TOO_BIG);
        }
        if from.non_ascii && !params.smtputf8 {
            return Err(reply::NEED_SMTPUTF8);
        }
        self.tx = Some(Box::new(Transaction {
            from: from.mailbox.map(|m| m.to_string()).unwrap_or_default(),
            params,
            recipients: Vec::new(),
            message: None,
            chunking: false,
            failed: None,
        }));
        self.reply(&reply::MAIL_OK);
        Ok(())
    }

    fn rcpt(&mut self, to: Path) -> Result<(), Reply> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(reply::NEED_MAIL);
        };
        if tx.chunking {
            return Err(reply::BDAT_IN_PROGRESS);
        }
        if to.non_ascii && !tx.params.smtputf8 {
            return Err(reply::NEED_SMTPUTF8);
        }
        let mailbox = to.mailbox.expect("a forward-path is never null");
        if !mailbox.is_bare_postmaster() && !self.cfg.allowed_hosts.matches(&mailbox.domain) {
            return Err(reply::relay_denied(&mailbox.to_string()));
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            // Not an error of the client's: RFC 5321 §4.5.3.1.10 says it
            // should send the rest in a later transaction.
            self.reply(&reply::TOO_MANY_RECIPIENTS);
            return Ok(());
        }
        let address = mailbox.to_string();
        if self.cfg.check_recipients && !mailbox.is_bare_postmaster() {
            self.phase = Phase::Checking(address);
            return Ok(());
        }
        self.add_recipient(address);
        Ok(())
    }

    /// Accepts a recipient; a repeated one is acknowledged and kept once.
    fn add_recipient(&mut self, address: String) {
        if let Some(tx) = self.tx.as_mut()
            && !tx
                .recipients
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&address))
        {
            tx.recipients.push(address);
        }
        self.reply(&reply::RCPT_OK);
    }

    /// Checks that a message may start now; the shared part of DATA and BDAT.
    fn ready_for_content(&self) -> Result<(), Refusal> {
        if self.helo.is_none() {
            return Err(Refusal::NeedHelo);
        }
        let Some(tx) = &self.tx else {
            return Err(Refusal::NeedMail);
        };
        if tx.recipients.is_empty() {
            return Err(Refusal::NeedRcpt);
        }
        Ok(())
    }

    fn data(&mut self) -> Result<(), Reply> {
        self.ready_for_content().map_err(Refusal::reply)?;
        let tx = self.tx.as_ref().expect("checked above");
        if tx.chunking {
            return Err(reply::DATA_AFTER_BDAT);
        }
        if tx.params.body == Some(BodyType::BinaryMime) {
            return Err(reply::BINARYMIME_NEEDS_BDAT);
        }
        self.start_message();
        self.reply(&reply::START_DATA);
        self.phase = Phase::Data(DataReader::new());
        Ok(())
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // Whatever the verdict, the chunk is read: its bytes are data.
        let discard = match (self.ready_for_content(), self.tx.as_mut()) {
            (Err(r), _) => {
                self.errors += 1;
                Some(r)
            }
            // A transfer that already failed: not counted a second time.
            (Ok(()), Some(tx)) if tx.failed.is_some() => tx.failed,
            (Ok(()), _) => None,
        };
        self.counts.record(Verb::Bdat, discard.is_none());
        if discard.is_none() {
            let tx = self.tx.as_mut().expect("checked by ready_for_content");
            tx.chunking = true;
            if tx.message.is_none() {
                self.start_message();
            }
        }
        self.phase = Phase::Chunk {
            remaining: size,
            size,
            last,
            discard,
        };
    }

    /// A BDAT whose size parsed but whose rest did not: the chunk is skipped
    /// so its bytes are never taken for commands, and a BDAT transfer in
    /// progress has failed.
    fn bad_bdat(&mut self, size: u64) {
        if let Some(tx) = self.tx.as_mut().filter(|t| t.chunking) {
            tx.failed = Some(Refusal::BdatSyntax);
        }
        self.errors += 1;
        self.counts.record(Verb::Bdat, false);
        self.phase = Phase::Chunk {
            remaining: size,
            size,
            last: false,
            discard: Some(Refusal::BdatSyntax),
        };
    }

    fn end_of_chunk(&mut self, size: u64, last: bool, discard: Option<Refusal>) -> Option<Event> {
        if let Some(r) = discard {
            if last {
                // The failed transfer is over.
                self.tx.take_if(|t| t.failed.is_some());
            }
            self.reply(&r.reply());
            return self.check_errors();
        }
        let tx = self
            .tx
            .as_mut()
            .expect("a kept chunk belongs to a transaction");
        if tx.message.as_ref().is_some_and(|m| m.buf.overflowed()) {
            crate::metrics::message_rejected("size");
            // The message can no longer succeed; the chunks already in the
            // pipeline get the same answer.
            tx.message = None;
            tx.failed = Some(Refusal::TooBig);
            if last {
                self.tx = None;
            }
            self.reply(&reply::MESSAGE_TOO_BIG);
            return None;
        }
        if last {
            return Some(self.deliver());
        }
        self.reply(&reply::chunk_ok(size));
        None
    }

    fn end_of_data(&mut self, bare_newline: bool) -> Option<Event> {
        let tx = self.tx.as_ref().expect("DATA belongs to a transaction");
        let overflow = tx.message.as_ref().is_some_and(|m| m.buf.overflowed());
        if overflow {
            crate::metrics::message_rejected("size");
            self.tx = None;
            self.reply(&reply::MESSAGE_TOO_BIG);
            return None;
        }
        if bare_newline && self.cfg.forbid_bare_newline {
            crate::metrics::message_rejected("bare_newline");
            self.tx = None;
            self.error(reply::BARE_NEWLINE_IN_DATA);
            return self.is_closed().then_some(Event::Close);
        }
        Some(self.deliver())
    }

    /// Assigns the id, stamps the time and writes our Received header.
    fn start_message(&mut self) {
        let (helo, esmtp) = self.helo.as_ref().expect("checked by ready_for_content");
        let tx = self.tx.as_mut().expect("checked by ready_for_content");
        let at = SystemTime::now();
        let id = MessageId::generate(at);
        let trace = Trace {
            helo,
            client: self.peer.client.ip(),
            tls: self.peer.tls.as_deref().copied(),
            by: &self.cfg.hostname,
            protocol: message::protocol_name(*esmtp, self.peer.tls.is_some(), tx.params.smtputf8),
            id: &id,
            single_recipient: match tx.recipients.as_slice() {
                [one] => Some(one.as_str()),
                _ => None,
            },
            at,
        };
        // The header goes straight into the message's own buffer.
        let limit = self.cfg.max_message_size;
        let mut buf = Vec::new();
        MessageBuf::start(&mut buf, limit, tx.params.size.unwrap_or(0));
        trace.write_header(&mut buf);
        let header_len = buf.len();
        tx.message = Some(Started {
            id,
            at,
            buf: MessageBuf::with_prefix(buf, header_len, limit),
        });
    }

    fn deliver(&mut self) -> Event {
        let tx = self.tx.take().expect("deliver() with a transaction");
        let started = tx.message.expect("deliver() with a message");
        let header_len = started.buf.prefix_len();
        let (helo, esmtp) = self.helo.clone().expect("HELO before a message");
        self.phase = Phase::Delivering(started.id);
        Event::Deliver(Box::new(Envelope {
            id: started.id,
            received_at: started.at,
            client: self.peer.client,
            helo,
            esmtp,
            tls: self.peer.tls.is_some(),
            mail_from: tx.from,
            recipients: tx.recipients,
            body: tx.params.body.unwrap_or_default(),
            smtputf8: tx.params.smtputf8,
            raw: started.buf.into_bytes().into(),
            header_len,
            parsed: None,
            hashes: Vec::new(),
        }))
    }

    fn reply(&mut self, r: &Reply) {
        tracing::debug!(target: "gsmtpd::dialogue", "> {r}");
        r.write_to(&mut self.out);
    }

    /// Queues an error reply and enforces `max_errors`.
    fn error(&mut self, r: Reply) {
        self.errors += 1;
        self.reply(&r);
        self.check_errors();
    }

    fn check_errors(&mut self) -> Option<Event> {
        if self.errors >= self.cfg.max_errors && !self.is_closed() {
            let r = reply::too_many_errors(&self.cfg.hostname);
            self.close_with(r);
            return Some(Event::Close);
        }
        None
    }
}
