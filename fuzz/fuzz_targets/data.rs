//! The DATA reader on any bytes: never panics, never finds an end marker
//! that is not CRLF.CRLF, and dot-stuffing round-trips.
#![no_main]

use gsmtpd::smtp::data::{DataReader, MessageBuf, stuff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut reader = DataReader::new();
    let mut msg = MessageBuf::new(b"", u64::MAX, 0);
    let (n, done) = reader.read(input, &mut msg);
    if done {
        let wire = &input[..n];
        assert!(wire == b".\r\n" || wire.ends_with(b"\r\n.\r\n"), "end marker must be CRLF.CRLF");
    } else {
        assert_eq!(n, input.len());
    }
    // CRLF-only content survives stuffing and unstuffing byte-exact.
    if !input.contains(&b'\r') && !input.contains(&b'\n') {
        let content: Vec<u8> = input.iter().flat_map(|&b| if b == b'|' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
        let wire = stuff(&content);
        let mut reader = DataReader::new();
        let mut msg = MessageBuf::new(b"", u64::MAX, 0);
        let (n, done) = reader.read(&wire, &mut msg);
        assert!(done && n == wire.len());
        let mut expected = content.clone();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(msg.into_bytes(), expected);
    }
});
