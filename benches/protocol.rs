//! Micro-benchmarks of the hot path, one function each: the command and
//! address parsers, the DATA reader, a whole session for one message, MIME
//! parsing and the hash. `cargo bench` runs them (divan); wall-clock
//! figures are for comparing changes on one machine, the CI check counts
//! instructions instead (bench/icount.sh).

use std::sync::Arc;

use bytes::BytesMut;
use divan::{Bencher, black_box};
use gsmtpd::smtp::data::{DataReader, MessageBuf, stuff};
use gsmtpd::smtp::{DeliveryOutcome, Event, Peer, Session, SessionConfig};

fn main() {
    divan::main();
}

/// A text message of about `size` octets.
fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: Sender <s@example.net>\r\nTo: r@example.com\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

#[divan::bench(args = [
    "MAIL FROM:<sender@example.net> SIZE=1024 BODY=8BITMIME",
    "RCPT TO:<\"quoted local\"@[IPv6:2001:db8::1]>",
    "NOOP",
])]
fn command_parse(line: &str) -> bool {
    gsmtpd::smtp::command::parse(black_box(line.as_bytes()))
        .1
        .is_ok()
}

#[divan::bench(args = [1024, 102_400])]
fn data_reader(bencher: Bencher, size: usize) {
    let wire = stuff(&message(size));
    bencher
        .counter(divan::counter::BytesCount::new(wire.len()))
        .bench(|| {
            let mut reader = DataReader::new();
            let mut msg = MessageBuf::new(b"", u64::MAX, size as u64);
            let (n, done) = reader.read(black_box(&wire), &mut msg);
            assert!(done && n == wire.len());
            msg
        });
}

#[divan::bench]
fn session_one_message(bencher: Bencher) {
    let cfg = Arc::new(SessionConfig::default());
    let mut wire =
        b"EHLO c.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n"
            .to_vec();
    wire.extend_from_slice(&stuff(&message(1024)));
    wire.extend_from_slice(b"QUIT\r\n");
    let peer = Peer {
        client: "192.0.2.1:1".parse().unwrap(),
        tls: None,
    };
    bencher.bench(|| {
        let mut s = Session::new(Arc::clone(&cfg), peer.clone());
        let mut input = BytesMut::from(&wire[..]);
        loop {
            match s.advance(&mut input) {
                Event::Deliver(e) => {
                    black_box(e);
                    s.delivered(DeliveryOutcome::Stored);
                }
                Event::Close | Event::NeedInput => break,
                Event::CheckRecipient(_) | Event::StartTls => unreachable!(),
            }
        }
        s.output().len()
    });
}

/// A multipart/alternative message with a quoted-printable text part and a
/// base64 HTML part, as newsletters are.
fn mime() -> Vec<u8> {
    let html = "<html><body><p>Hello, world. Caf\u{e9}.</p></body></html>\r\n".repeat(20);
    let html_b64 = {
        // Enough of an encoder for a benchmark input.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = html.as_bytes();
        let mut out = String::new();
        for (i, c) in b.chunks(3).enumerate() {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for k in 0..4 {
                if k <= c.len() {
                    out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
            if i % 19 == 18 {
                out.push_str("\r\n");
            }
        }
        out
    };
    format!(
        "From: \"News\" <News@Example.NET>\r\nTo: r@example.com\r\n\
         Subject: =?ISO-8859-1?Q?Caf=E9_news?=\r\nDate: Thu, 3 Dec 2026 17:15:33 +0000\r\n\
         Message-ID: <1@example.net>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=ISO-8859-1\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\r\nHello, world. Caf=E9.\r\n\
         --b\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {html_b64}\r\n--b--\r\n"
    )
    .into_bytes()
}

#[divan::bench]
fn mime_parse(bencher: Bencher) {
    let m = mime();
    bencher
        .counter(divan::counter::BytesCount::new(m.len()))
        .bench(|| gsmtpd::message::parse::parse(black_box(&m)));
}

#[divan::bench(args = [1024, 102_400])]
fn hash(bencher: Bencher, size: usize) {
    let body = String::from_utf8(message(size)).unwrap();
    bencher
        .counter(divan::counter::BytesCount::new(size))
        .bench(|| {
            gsmtpd::message::parse::hash(
                black_box("r@example.com"),
                "s@example.net",
                "bench",
                black_box(&body),
            )
        });
}
