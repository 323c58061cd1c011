//! Any bytes, cut at fuzzer-chosen points, through a whole session: never a
//! panic, and the same replies as the same bytes in one piece.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use gsmtpd::smtp::{
    DeliveryOutcome, Event, HostMatcher, Peer, RecipientVerdict, Session, SessionConfig,
};
use libfuzzer_sys::fuzz_target;

fn run(input: &[u8], cut_every: usize, check: bool) -> (Vec<u8>, usize) {
    let cfg = SessionConfig {
        hostname: "mx.fuzz".into(),
        max_message_size: 4096,
        max_errors: 1000,
        allowed_hosts: HostMatcher::new(&["example.com"]).unwrap(),
        check_recipients: check,
        ..SessionConfig::default()
    };
    let peer = Peer { client: "192.0.2.1:1".parse().unwrap(), tls: None };
    let mut s = Session::new(Arc::new(cfg), peer);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut messages = 0;
    'outer: for piece in input.chunks(cut_every.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match s.advance(&mut buf) {
                Event::NeedInput => break,
                Event::Close => {
                    out.extend_from_slice(s.output());
                    break 'outer;
                }
                Event::Deliver(e) => {
                    messages += 1;
                    assert!(e.raw.len() >= e.header_len);
                    s.delivered(DeliveryOutcome::Stored);
                }
                Event::CheckRecipient(a) => s.recipient_checked(if a.len() % 2 == 0 {
                    RecipientVerdict::Known
                } else {
                    RecipientVerdict::Unknown
                }),
            }
        }
        out.extend_from_slice(s.output());
        s.clear_output();
    }
    // Ids differ between runs; compare replies with them masked.
    let text = String::from_utf8_lossy(&out)
        .split_inclusive("\r\n")
        .map(|l| match l.find("queued as ") {
            Some(i) => format!("{}queued as ID\r\n", &l[..i]),
            None => l.to_string(),
        })
        .collect::<String>();
    (text.into_bytes(), messages)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let check = cut & 0x80 != 0;
    let whole = run(input, input.len(), check);
    let split = run(input, usize::from(cut % 16) + 1, check);
    assert_eq!(whole, split);
});
