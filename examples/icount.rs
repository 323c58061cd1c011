//! A fixed, deterministic workload for counting instructions with
//! callgrind: the sans-IO session and the pipeline (Received header, MIME
//! parsing, hash) over in-memory input, no sockets and no store. Run by
//! `bench/icount.sh`, which fails CI on a large regression.
//!
//! `icount small` sends 2000 pipelined 1 KB messages on one session;
//! `icount large` sends 20 messages of 100 KB. Each prints a checksum of
//! what it produced so nothing is optimized away.

use std::sync::Arc;

use bytes::BytesMut;
use gsmtpd::Config;
use gsmtpd::pipeline::Pipeline;
use gsmtpd::smtp::{DeliveryOutcome, Event, Peer, Session};

/// A message of `size` octets of content: headers, then text lines.
fn message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender{n}@example.net>\r\nTo: rcpt@example.com\r\n\
         Subject: message {n}\r\nMessage-ID: <{n}@example.net>\r\n\
         Date: Thu, 3 Dec 2026 17:15:33 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "small".into());
    let (count, size) = match which.as_str() {
        "small" => (2000, 1024),
        "large" => (20, 100 * 1024),
        other => panic!("workload {other:?}: small or large"),
    };
    let mut wire = b"EHLO client.example\r\n".to_vec();
    for n in 0..count {
        wire.extend_from_slice(
            b"MAIL FROM:<sender@example.net>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
        );
        wire.extend_from_slice(&gsmtpd::smtp::data::stuff(&message(n, size)));
    }
    wire.extend_from_slice(b"QUIT\r\n");
    let checksum = measured(&wire, count);
    println!("{which}: {count} messages of {size} octets, checksum {checksum}");
}

/// The part callgrind counts (`--toggle-collect=*measured*`): building the
/// input above is not the server's work.
#[inline(never)]
fn measured(wire: &[u8], count: usize) -> u64 {
    let config = Config::from_toml("hostname = \"mx.example\"\nallowed_hosts = [\"*\"]")
        .expect("a valid configuration");
    let pipeline = Pipeline::from_config(&config);
    let peer = Peer {
        client: "192.0.2.1:40000".parse().expect("an address"),
        tls: None,
    };
    let mut session = Session::new(Arc::new(config.session_config()), peer);
    session.greeting();
    session.clear_output();
    let mut checksum = 0u64;
    let mut input = BytesMut::new();
    for chunk in wire.chunks(4096) {
        input.extend_from_slice(chunk);
        loop {
            match session.advance(&mut input) {
                Event::NeedInput | Event::Close => break,
                Event::Deliver(mut envelope) => {
                    pipeline.run(&mut envelope);
                    checksum = checksum.wrapping_add(envelope.raw.len() as u64);
                    checksum = checksum.wrapping_add(envelope.hashes[0].len() as u64);
                    session.delivered(DeliveryOutcome::Stored);
                }
                Event::CheckRecipient(_) | Event::StartTls => unreachable!("not configured"),
            }
        }
        checksum = checksum.wrapping_add(session.output().len() as u64);
        session.clear_output();
    }
    assert_eq!(session.accepted() as usize, count);
    checksum
}
