//! Any bytes as a message through the MIME parser: never panics (the
//! pipeline's catch_unwind is the last line, not the plan), always records
//! a charset and a content type, and gives the same fields every time.
#![no_main]

use gsmtpd::message::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|content: &[u8]| {
    let p = parse::parse(content);
    assert!(!p.charset.is_empty(), "empty charset");
    assert!(!p.content_type.is_empty(), "empty content type");
    assert_eq!(p.content_type, p.content_type.to_ascii_lowercase());
    assert_eq!(p.from, p.from.to_lowercase(), "From is lower-cased");
    let hash = parse::hash("someone@example.com", &p.from, &p.subject, &p.body);
    assert!(hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(parse::parse(content), p, "parsing is deterministic");
});
