//! Any bytes as one command line: the parser answers or refuses, never panics,
//! and every refusal is a well-formed 5xx reply with an enhanced code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let (_, result) = gsmtpd::smtp::command::parse(line);
    if let Err(reply) = result {
        assert!((500..600).contains(&reply.code()), "{reply}");
        assert!(reply.text().starts_with('5'), "{reply}");
    }
});
