//! Session tests through a small DSL: `t.cmd("RCPT TO:<a@b>").expect(250)`.

use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;

use super::session::*;
use crate::message::Envelope;

/// A session driven in memory, with a fake store that answers `outcome`.
struct T {
    s: Session,
    input: BytesMut,
    stored: Vec<Envelope>,
    outcome: DeliveryOutcome,
    closed: bool,
    /// Answers recipient lookups when the config asks for them.
    lookup: fn(&str) -> RecipientVerdict,
    lookups: Vec<String>,
    dropped_at_starttls: Vec<u8>,
}

const TLS: TlsInfo = TlsInfo {
    version: "TLSv1.3",
    cipher: "TLS_AES_256_GCM_SHA384",
};

/// A directory: `known@…` exists, `down@…` makes the lookup fail.
fn directory(address: &str) -> RecipientVerdict {
    if address.starts_with("down@") {
        RecipientVerdict::LookupFailed
    } else if address.starts_with("known@") {
        RecipientVerdict::Known
    } else {
        RecipientVerdict::Unknown
    }
}

/// The replies one `send` produced.
#[derive(Debug)]
struct Replies(Vec<(u16, String)>);

impl Replies {
    /// Exactly one reply, with this code.
    #[track_caller]
    fn expect(&self, code: u16) -> &str {
        assert_eq!(self.0.len(), 1, "want one reply {code}, got {:?}", self.0);
        assert_eq!(self.0[0].0, code, "got {:?}", self.0);
        &self.0[0].1
    }

    /// Exactly these codes, in order.
    #[track_caller]
    fn codes(&self, codes: &[u16]) {
        let got: Vec<u16> = self.0.iter().map(|r| r.0).collect();
        assert_eq!(got, codes, "replies {:?}", self.0);
    }
}

fn parse_replies(out: &[u8]) -> Vec<(u16, String)> {
    let text = String::from_utf8_lossy(out);
    let mut replies = Vec::new();
    let mut current = String::new();
    for line in text.split_terminator("\r\n") {
        let code: u16 = line[..3].parse().expect("reply code");
        current.push_str(&line[4..]);
        if line.as_bytes().get(3) == Some(&b'-') {
            current.push('\n');
        } else {
            replies.push((code, std::mem::take(&mut current)));
        }
    }
    assert!(current.is_empty(), "unterminated multi-line reply");
    replies
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        allowed_hosts: HostMatcher::new(&["example.com", "*.example.org"]).unwrap(),
        max_message_size: 1000,
        ..SessionConfig::default()
    }
}

impl T {
    fn new() -> Self {
        Self::with(cfg())
    }

    fn with(cfg: SessionConfig) -> Self {
        let peer = Peer {
            client: "192.0.2.7:40000".parse().unwrap(),
            tls: None,
        };
        let mut s = Session::new(Arc::new(cfg), peer);
        s.greeting();
        s.clear_output();
        Self {
            s,
            input: BytesMut::new(),
            stored: Vec::new(),
            outcome: DeliveryOutcome::Stored,
            closed: false,
            lookup: directory,
            lookups: Vec::new(),
            dropped_at_starttls: Vec::new(),
        }
    }

    /// A session after EHLO.
    fn ready() -> Self {
        let mut t = Self::new();
        t.cmd("EHLO client.test").expect(250);
        t
    }

    /// Sends raw bytes; runs the session until it needs input or closes.
    fn send(&mut self, bytes: impl AsRef<[u8]>) -> Replies {
        assert!(!self.closed, "session already closed");
        self.input.extend_from_slice(bytes.as_ref());
        loop {
            match self.s.advance(&mut self.input) {
                Event::NeedInput => break,
                Event::Close => {
                    self.closed = true;
                    break;
                }
                Event::Deliver(e) => {
                    self.stored.push(*e);
                    self.s.delivered(self.outcome);
                }
                Event::CheckRecipient(a) => {
                    let verdict = (self.lookup)(&a);
                    self.lookups.push(a);
                    self.s.recipient_checked(verdict);
                }
                Event::StartTls => {
                    // What the connection does: drop the buffered plaintext,
                    // handshake, carry on encrypted.
                    self.dropped_at_starttls.extend_from_slice(&self.input);
                    self.input.clear();
                    self.s.tls_started(TLS);
                }
            }
        }
        let r = Replies(parse_replies(self.s.output()));
        self.s.clear_output();
        r
    }

    fn cmd(&mut self, line: &str) -> Replies {
        self.send(format!("{line}\r\n"))
    }

    /// MAIL + one RCPT, both accepted.
    fn envelope(&mut self) {
        self.cmd("MAIL FROM:<s@sender.test>").expect(250);
        self.cmd("RCPT TO:<r@example.com>").expect(250);
    }
}

#[test]
fn greeting_names_host_without_version() {
    let mut s = Session::new(
        Arc::new(cfg()),
        Peer {
            client: "192.0.2.7:1".parse().unwrap(),
            tls: None,
        },
    );
    s.greeting();
    assert_eq!(s.output(), b"220 mx.test ESMTP gsmtpd\r\n");
}

#[test]
fn ehlo_advertises_extensions() {
    let mut t = T::new();
    let text = t.cmd("EHLO client.test").expect(250).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "mx.test",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "BINARYMIME"
        ]
    );
    assert!(!text.contains("STARTTLS"), "no TLS yet");
    t.cmd("HELO client.test").expect(250);
}

#[test]
fn simple_commands() {
    let mut t = T::new();
    assert_eq!(t.cmd("NOOP").expect(250), "2.0.0 Ok");
    assert!(t.cmd("VRFY user").expect(252).starts_with("2.5.0"));
    assert!(t.cmd("HELP").expect(214).starts_with("2.0.0"));
    assert!(t.cmd("STARTTLS").expect(502).starts_with("5.5.1"));
    assert!(t.cmd("EXPN list").expect(502).starts_with("5.5.1"));
    assert!(t.cmd("XYZZY").expect(500).starts_with("5.5.2"));
    assert!(t.cmd("rset").expect(250).starts_with("2.0.0"));
    assert!(t.cmd("QUIT").expect(221).starts_with("2.0.0"));
    assert!(t.closed);
}

#[test]
fn sequencing() {
    let mut t = T::new();
    assert!(
        t.cmd("MAIL FROM:<a@b.test>")
            .expect(503)
            .starts_with("5.5.1")
    );
    t.cmd("EHLO c.test").expect(250);
    assert!(
        t.cmd("RCPT TO:<r@example.com>")
            .expect(503)
            .starts_with("5.5.1")
    );
    assert!(t.cmd("DATA").expect(503).starts_with("5.5.1"));
    t.cmd("MAIL FROM:<a@b.test>").expect(250);
    assert!(t.cmd("MAIL FROM:<a@b.test>").expect(503).contains("nested"));
    assert!(t.cmd("DATA").expect(503).contains("RCPT"));
    assert!(t.cmd("BDAT 0 LAST").expect(503).contains("RCPT"));
    t.cmd("RSET").expect(250);
    // EHLO, HELO and RSET each reset the transaction.
    for reset in ["EHLO c.test", "HELO c.test", "RSET"] {
        t.cmd("MAIL FROM:<a@b.test>").codes(&[250]);
        t.cmd(reset).expect(250);
        t.cmd("RCPT TO:<r@example.com>").expect(503);
    }
}

#[test]
fn accepted_message_is_delivered_with_received_header() {
    let mut t = T::ready();
    t.envelope();
    t.cmd("DATA").expect(354);
    let r = t.send("Subject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n");
    let text = r.expect(250).to_string();
    let e = &t.stored[0];
    assert_eq!(text, format!("2.0.0 Ok: queued as {}", e.id));
    assert_eq!(e.mail_from, "s@sender.test");
    assert_eq!(e.recipients, ["r@example.com"]);
    assert_eq!(e.helo, "client.test");
    assert!(e.esmtp);
    assert_eq!(e.content(), b"Subject: hi\r\n\r\n.dotted\r\nbody\r\n");
    let header = std::str::from_utf8(&e.raw[..e.header_len]).unwrap();
    assert!(header.starts_with(
        "Received: from client.test ([192.0.2.7])\r\n\tby mx.test (gsmtpd) with ESMTP id "
    ));
    assert!(header.contains(&format!("id {}\r\n\tfor <r@example.com>; ", e.id)));
    assert!(header.ends_with("+0000\r\n"));
    assert_eq!(t.s.accepted(), 1);
    // The session goes on after a message.
    t.envelope();
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    assert_eq!(t.stored[1].content(), b"");
}

#[test]
fn store_failure_is_451_and_session_goes_on() {
    let mut t = T::ready();
    t.outcome = DeliveryOutcome::Failed;
    t.envelope();
    t.cmd("DATA").expect(354);
    assert!(t.send("x\r\n.\r\n").expect(451).starts_with("4.3.0"));
    assert_eq!(t.s.accepted(), 0);
    t.outcome = DeliveryOutcome::Stored;
    t.envelope();
    t.cmd("DATA").expect(354);
    t.send("x\r\n.\r\n").expect(250);
}

#[test]
fn helo_session_uses_smtp_protocol_and_refuses_parameters() {
    let mut t = T::new();
    t.cmd("HELO client.test").expect(250);
    assert!(
        t.cmd("MAIL FROM:<a@b.test> SIZE=10")
            .expect(555)
            .starts_with("5.5.4")
    );
    t.envelope();
    t.cmd("DATA").expect(354);
    t.send("x\r\n.\r\n").expect(250);
    let e = &t.stored[0];
    assert!(!e.esmtp);
    assert!(
        std::str::from_utf8(&e.raw)
            .unwrap()
            .contains("with SMTP id")
    );
}

#[test]
fn recipients_outside_allowed_hosts_are_refused_and_the_rest_go_on() {
    let mut t = T::ready();
    t.cmd("MAIL FROM:<>").expect(250);
    t.cmd("RCPT TO:<a@example.com>").expect(250);
    assert_eq!(
        t.cmd("RCPT TO:<b@elsewhere.test>").expect(550),
        "5.7.1 <b@elsewhere.test>: Relay access denied"
    );
    t.cmd("RCPT TO:<c@EXAMPLE.COM>").expect(250);
    t.cmd("RCPT TO:<d@sub.example.org>").expect(250);
    t.cmd("RCPT TO:<e@deep.sub.example.org>").expect(250);
    t.cmd("RCPT TO:<f@example.org>").expect(550);
    t.cmd("RCPT TO:<postmaster>").expect(250);
    t.cmd("RCPT TO:<g@[192.0.2.1]>").expect(550);
    // A duplicate is acknowledged but kept once.
    t.cmd("RCPT TO:<a@example.com>").expect(250);
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    assert_eq!(
        t.stored[0].recipients,
        [
            "a@example.com",
            "c@EXAMPLE.COM",
            "d@sub.example.org",
            "e@deep.sub.example.org",
            "postmaster"
        ]
    );
    // Several recipients: the Received header names none of them.
    assert!(
        !std::str::from_utf8(&t.stored[0].raw)
            .unwrap()
            .contains("for <")
    );
}

#[test]
fn too_many_recipients() {
    let mut t = T::ready();
    t.cmd("MAIL FROM:<>").expect(250);
    for i in 0..100 {
        t.cmd(&format!("RCPT TO:<u{i}@example.com>")).expect(250);
    }
    assert!(
        t.cmd("RCPT TO:<u100@example.com>")
            .expect(452)
            .starts_with("4.5.3")
    );
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    assert_eq!(t.stored[0].recipients.len(), 100);
}

#[test]
fn smtputf8_addresses_need_the_parameter() {
    let mut t = T::ready();
    assert!(
        t.cmd("MAIL FROM:<José@example.com>")
            .expect(553)
            .starts_with("5.6.7")
    );
    t.cmd("MAIL FROM:<s@sender.test>").expect(250);
    assert!(
        t.cmd("RCPT TO:<José@example.com>")
            .expect(553)
            .starts_with("5.6.7")
    );
    t.cmd("RSET").expect(250);
    t.cmd("MAIL FROM:<José@example.com> SMTPUTF8").expect(250);
    t.cmd("RCPT TO:<José@example.com>").expect(250);
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    let e = &t.stored[0];
    assert!(e.smtputf8);
    assert_eq!(e.mail_from, "José@example.com");
    assert!(
        std::str::from_utf8(&e.raw)
            .unwrap()
            .contains("with UTF8SMTP id")
    );
}

#[test]
fn size_limits() {
    let mut t = T::ready();
    assert!(
        t.cmd("MAIL FROM:<> SIZE=1001")
            .expect(552)
            .starts_with("5.3.4")
    );
    t.cmd("MAIL FROM:<> SIZE=1000").expect(250);
    t.cmd("RCPT TO:<r@example.com>").expect(250);
    t.cmd("DATA").expect(354);
    // 1001 octets of content: read to its end, then refused.
    let body = format!("{}\r\n.\r\n", "x".repeat(999));
    assert!(t.send(body).expect(552).starts_with("5.3.4"));
    assert!(t.stored.is_empty());
    // The session is still usable, and exactly 1000 octets fit.
    t.envelope();
    t.cmd("DATA").expect(354);
    t.send(format!("{}\r\n.\r\n", "x".repeat(998))).expect(250);
    assert_eq!(t.stored[0].content().len(), 1000);
}

#[test]
fn long_command_line_gets_one_reply_and_is_never_run() {
    let mut t = T::ready();
    // 510 octets + CRLF = 512: allowed.
    let ok = format!("NOOP {}", "x".repeat(505));
    assert_eq!(ok.len(), 510);
    t.cmd(&ok).expect(250);
    // The tail of an over-long line must not run as a command.
    let long = format!("NOOP {}QUIT", "x".repeat(600));
    t.send(&long[..300]).codes(&[]);
    t.send(&long[300..]).codes(&[]);
    assert!(t.send("\r\n").expect(500).starts_with("5.5.2"));
    assert!(!t.closed);
    t.cmd("NOOP").expect(250);
}

#[test]
fn line_limit_is_configurable() {
    let mut t = T::with(SessionConfig {
        max_line_length: 1000,
        ..cfg()
    });
    t.cmd(&format!("NOOP {}", "x".repeat(900))).expect(250);
    t.cmd(&format!("NOOP {}", "x".repeat(995))).expect(500);
}

#[test]
fn nul_in_command() {
    let mut t = T::ready();
    assert!(t.send("NOOP\0\r\n").expect(500).starts_with("5.5.2"));
}

#[test]
fn bare_newlines_in_commands_close_the_session() {
    for input in ["NOOP\nNOOP\r\n", "\n", "NOOP\rQUIT\r\n"] {
        let mut t = T::ready();
        let r = t.send(input);
        r.codes(&[500]);
        assert!(r.0[0].1.starts_with("5.5.2"), "{input:?}: {r:?}");
        assert!(t.closed, "{input:?}");
    }
}

#[test]
fn http_request_is_refused_and_closed() {
    let mut t = T::new();
    t.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect(521);
    assert!(t.closed);
}

#[test]
fn too_many_errors_closes() {
    let mut t = T::ready();
    for _ in 0..9 {
        t.cmd("BOGUS").expect(500);
    }
    let r = t.cmd("BOGUS");
    r.codes(&[500, 421]);
    assert!(r.0[1].1.starts_with("4.7.0"));
    assert!(t.closed);
}

#[test]
fn refused_recipients_count_as_errors_but_too_many_recipients_do_not() {
    let mut t = T::with(SessionConfig {
        max_errors: 3,
        max_recipients: 1,
        ..cfg()
    });
    t.cmd("EHLO c.test").expect(250);
    t.cmd("MAIL FROM:<>").expect(250);
    t.cmd("RCPT TO:<a@example.com>").expect(250);
    for _ in 0..5 {
        t.cmd("RCPT TO:<b@example.com>").expect(452);
    }
    t.cmd("RCPT TO:<x@elsewhere.test>").expect(550);
    t.cmd("RCPT TO:<x@elsewhere.test>").expect(550);
    t.cmd("RCPT TO:<x@elsewhere.test>").codes(&[550, 421]);
    assert!(t.closed);
}

#[test]
fn smuggling_variants_give_one_reply_and_at_most_one_message() {
    // Each variant tries to end the data early and start a second,
    // smuggled transaction. The data ends only at the real CRLF.CRLF.
    for ending in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r"] {
        for forbid in [true, false] {
            let mut t = T::with(SessionConfig {
                forbid_bare_newline: forbid,
                ..cfg()
            });
            t.cmd("EHLO c.test").expect(250);
            t.envelope();
            t.cmd("DATA").expect(354);
            let payload = format!(
                "Subject: first\r\n\r\nhello{ending}MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
            );
            let r = t.send(&payload);
            if forbid {
                assert!(r.expect(550).starts_with("5.6.0"), "{ending:?}");
                assert!(t.stored.is_empty(), "{ending:?}");
            } else {
                r.expect(250);
                assert_eq!(t.stored.len(), 1, "{ending:?}");
                assert_eq!(t.stored[0].recipients, ["r@example.com"]);
                let content = String::from_utf8_lossy(t.stored[0].content()).into_owned();
                assert!(
                    content.contains("Subject: smuggled"),
                    "the smuggled part is content"
                );
            }
            // The session is in command state, with no transaction open.
            t.cmd("RCPT TO:<r@example.com>").expect(503);
        }
    }
}

#[test]
fn data_with_binarymime_needs_bdat() {
    let mut t = T::ready();
    t.cmd("MAIL FROM:<> BODY=BINARYMIME").expect(250);
    t.cmd("RCPT TO:<r@example.com>").expect(250);
    t.cmd("DATA").expect(503);
    t.send(b"BDAT 5 LAST\r\n\0\r\n\x80.").expect(250);
    assert_eq!(t.stored[0].content(), b"\0\r\n\x80.");
    assert_eq!(t.stored[0].body, crate::smtp::BodyType::BinaryMime);
}

#[test]
fn bdat_chunks() {
    let mut t = T::ready();
    t.envelope();
    assert_eq!(
        t.send("BDAT 6\r\nhello\n").expect(250),
        "2.0.0 Ok: 6 octets received"
    );
    // Chunks are counted, not parsed: CRLF.CRLF inside means nothing.
    t.send("BDAT 5\r\n\r\n.\r\n").expect(250);
    t.cmd("RCPT TO:<x@example.com>").expect(503);
    t.cmd("DATA").expect(503);
    t.send("BDAT 0 LAST\r\n").expect(250);
    assert_eq!(t.stored[0].content(), b"hello\n\r\n.\r\n");
    // Pipelined in one write, split anywhere.
    let wire =
        b"MAIL FROM:<>\r\nRCPT TO:<r@example.com>\r\nBDAT 3\r\nabcBDAT 3 LAST\r\ndefNOOP\r\n";
    let mut t = T::ready();
    t.send(wire).codes(&[250, 250, 250, 250, 250]);
    assert_eq!(t.stored[0].content(), b"abcdef");
}

#[test]
fn refused_bdat_chunks_are_skipped_not_run() {
    let mut t = T::ready();
    // No transaction: the chunk's bytes are data, never commands.
    let r = t.send("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    r.codes(&[503, 250]);
    assert!(!t.closed);
    // A malformed end marker: the chunk is skipped too.
    t.send("BDAT 6 FIRST\r\nQUIT\r\nNOOP\r\n")
        .codes(&[501, 250]);
    // A chunk that overflows the size limit fails the transfer; the chunks
    // already pipelined behind it get the same answer, then it is over.
    t.envelope();
    let big = "x".repeat(600);
    let wire = format!("BDAT 600\r\n{big}BDAT 600\r\n{big}BDAT 600 LAST\r\n{big}NOOP\r\n");
    t.send(wire).codes(&[250, 552, 552, 250]);
    assert!(t.stored.is_empty());
    t.cmd("RCPT TO:<r@example.com>").expect(503);
}

#[test]
fn recipient_check_verdicts() {
    let mut t = T::with(SessionConfig {
        check_recipients: true,
        ..cfg()
    });
    t.cmd("EHLO c.test").expect(250);
    t.cmd("MAIL FROM:<>").expect(250);
    t.cmd("RCPT TO:<known@example.com>").expect(250);
    assert_eq!(
        t.cmd("RCPT TO:<nobody@example.com>").expect(550),
        "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    );
    assert_eq!(
        t.cmd("RCPT TO:<down@example.com>").expect(451),
        "4.3.0 <down@example.com>: Temporary lookup failure"
    );
    // Not looked up: outside allowed_hosts (refused first), and postmaster.
    t.cmd("RCPT TO:<known@elsewhere.test>").expect(550);
    t.cmd("RCPT TO:<postmaster>").expect(250);
    assert_eq!(
        t.lookups,
        [
            "known@example.com",
            "nobody@example.com",
            "down@example.com"
        ]
    );
    // Pipelined RCPTs each wait for their lookup, in order.
    t.send("RCPT TO:<known@sub.example.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
        .codes(&[250, 550, 354]);
    t.send(".\r\n").expect(250);
    assert_eq!(
        t.stored[0].recipients,
        ["known@example.com", "postmaster", "known@sub.example.org"]
    );
    assert_eq!(
        t.s.counts().to_string(),
        "ehlo=1 mail=1 rcpt=3/7 data=1 commands=6/10"
    );
}

#[test]
fn lookup_failures_do_not_count_as_client_errors() {
    let mut t = T::with(SessionConfig {
        check_recipients: true,
        max_errors: 2,
        ..cfg()
    });
    t.cmd("EHLO c.test").expect(250);
    t.cmd("MAIL FROM:<>").expect(250);
    for _ in 0..5 {
        t.cmd("RCPT TO:<down@example.com>").expect(451);
    }
    t.cmd("RCPT TO:<nobody@example.com>").expect(550);
    t.cmd("RCPT TO:<nobody@example.com>").codes(&[550, 421]);
}

fn tls_cfg(require_tls: bool) -> SessionConfig {
    SessionConfig {
        starttls: true,
        require_tls,
        ..cfg()
    }
}

#[test]
fn starttls_is_offered_then_resets_the_session() {
    let mut t = T::with(tls_cfg(false));
    assert!(t.cmd("STARTTLS").expect(503).contains("HELO"), "EHLO first");
    let ehlo = t.cmd("EHLO c.test").expect(250).to_string();
    assert!(ehlo.lines().any(|l| l == "STARTTLS"), "{ehlo}");
    t.cmd("MAIL FROM:<>").expect(250);
    assert!(t.cmd("STARTTLS").expect(503).contains("transaction"));
    t.cmd("RSET").expect(250);
    assert!(t.cmd("STARTTLS x").expect(501).starts_with("5.5.4"));
    assert_eq!(t.cmd("STARTTLS").expect(220), "2.0.0 Ready to start TLS");
    // The session starts over: EHLO is needed again, and no longer offers
    // STARTTLS; a second STARTTLS is refused.
    t.cmd("MAIL FROM:<>").expect(503);
    let ehlo = t.cmd("EHLO c.test").expect(250).to_string();
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        t.cmd("STARTTLS").expect(503),
        "5.5.1 Error: TLS already active"
    );
    t.envelope();
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    let raw = String::from_utf8_lossy(&t.stored[0].raw).into_owned();
    assert!(
        raw.contains("\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"),
        "{raw}"
    );
    assert!(raw.contains(" with ESMTPS id "), "{raw}");
    assert!(t.stored[0].tls);
}

#[test]
fn plaintext_pipelined_after_starttls_is_never_answered() {
    let mut t = T::with(tls_cfg(false));
    t.cmd("EHLO c.test").expect(250);
    // CVE-2011-0411: the RSET arrived in plaintext with STARTTLS.
    t.send("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n")
        .codes(&[220]);
    assert_eq!(
        t.dropped_at_starttls,
        b"RSET\r\nMAIL FROM:<evil@x.test>\r\n"
    );
    t.cmd("NOOP").expect(250);
}

#[test]
fn require_tls_refuses_mail_in_plaintext() {
    let mut t = T::with(tls_cfg(true));
    t.cmd("EHLO c.test").expect(250);
    assert_eq!(
        t.cmd("MAIL FROM:<>").expect(530),
        "5.7.0 Must issue a STARTTLS command first"
    );
    t.cmd("STARTTLS").expect(220);
    t.cmd("EHLO c.test").expect(250);
    t.cmd("MAIL FROM:<>").expect(250);
}

#[test]
fn starttls_not_offered_without_tls() {
    let mut t = T::ready();
    assert!(t.cmd("STARTTLS").expect(502).starts_with("5.5.1"));
}

#[test]
fn disconnect_counts() {
    let mut t = T::ready();
    t.envelope();
    t.cmd("RCPT TO:<x@elsewhere.test>").expect(550);
    t.cmd("DATA").expect(354);
    t.send(".\r\n").expect(250);
    t.cmd("QUIT").expect(221);
    assert_eq!(
        t.s.counts().to_string(),
        "ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6"
    );
}

#[test]
fn shutdown_and_timeout_replies() {
    let mut t = T::ready();
    assert!(!t.s.in_transaction());
    t.envelope();
    assert!(t.s.in_transaction());
    t.s.timed_out();
    assert!(t.send("").expect(421).starts_with("4.4.2 mx.test"));
    let mut t = T::ready();
    t.s.shutting_down();
    assert!(t.send("").expect(421).starts_with("4.3.2 mx.test"));
}

/// Replaces message ids, which differ from run to run, in the replies.
fn mask_ids(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    let mut masked = String::new();
    for line in s.split_inclusive("\r\n") {
        match line.find("queued as ") {
            Some(i) => {
                masked.push_str(&line[..i]);
                masked.push_str("queued as ID\r\n");
            }
            None => masked.push_str(line),
        }
    }
    masked
}

/// Runs `input` cut at `cuts` through a fresh session; returns the replies
/// and the stored messages' contents.
fn run_split(input: &[u8], cuts: &[usize]) -> (String, Vec<Vec<u8>>) {
    let mut cfg = cfg();
    cfg.max_errors = 1000;
    let mut t = T::with(cfg);
    let mut out = Vec::new();
    let mut pieces = Vec::new();
    let mut last = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    for p in points.into_iter().chain([input.len()]) {
        pieces.push(&input[last..p]);
        last = p;
    }
    for piece in pieces {
        if t.closed {
            break;
        }
        t.input.extend_from_slice(piece);
        loop {
            match t.s.advance(&mut t.input) {
                Event::NeedInput => break,
                Event::Close => {
                    t.closed = true;
                    break;
                }
                Event::Deliver(e) => {
                    t.stored.push(*e);
                    t.s.delivered(DeliveryOutcome::Stored);
                }
                Event::CheckRecipient(a) => t.s.recipient_checked(directory(&a)),
                Event::StartTls => {
                    t.input.clear();
                    t.s.tls_started(TLS);
                }
            }
        }
        out.extend_from_slice(t.s.output());
        t.s.clear_output();
    }
    (
        mask_ids(&out),
        t.stored.iter().map(|e| e.content().to_vec()).collect(),
    )
}

/// Inputs made of SMTP-ish pieces, so the property test reaches deep states.
fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"EHLO c.test\r\n".to_vec()),
        Just(b"HELO c.test\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.test>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=20 BODY=BINARYMIME\r\n".to_vec()),
        Just(b"RCPT TO:<r@example.com>\r\n".to_vec()),
        Just(b"RCPT TO:<r@nowhere.test>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 4\r\n".to_vec()),
        Just(b"BDAT 3 LAST\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any bytes, split at any points, give the same replies and the same
    /// stored messages as the same bytes in one piece, and never panic.
    #[test]
    fn split_input_gives_same_replies(input in smtp_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = run_split(&input, &[]);
        let split = run_split(&input, &cuts);
        prop_assert_eq!(whole, split);
    }

    /// Byte-at-a-time delivery, the hardest split.
    #[test]
    fn byte_at_a_time(input in smtp_bytes()) {
        let cuts: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(run_split(&input, &[]), run_split(&input, &cuts));
    }

    /// Every reply line is well-formed: three digits, then SP or '-'.
    #[test]
    fn replies_are_well_formed(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (out, _) = run_split(&input, &[]);
        for line in out.split_terminator("\r\n") {
            prop_assert!(line.len() >= 4, "{:?}", line);
            prop_assert!(line[..3].bytes().all(|b| b.is_ascii_digit()), "{:?}", line);
            prop_assert!(matches!(line.as_bytes()[3], b' ' | b'-'), "{:?}", line);
        }
    }
}
