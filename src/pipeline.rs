//! The ordered steps a message passes between the end of its data and the
//! stores, configured as `pipeline = ["received", "parse", "hash"]` (the
//! successor's `save_process`, without the stores, which are `[[store]]`).
//!
//! The session writes our Received header while the message arrives, so
//! keeping it costs nothing; without the `received` step the stored message
//! starts at the client's first byte (a zero-copy slice).

use crate::config::{Config, Step};
use crate::message::{Envelope, parse};

/// Messages larger than this are parsed on the blocking pool, so a huge
/// MIME tree never stalls a runtime thread.
pub const BLOCKING_THRESHOLD: usize = 1 << 20;

/// The configured steps.
#[derive(Debug, Clone)]
pub struct Pipeline {
    steps: Vec<Step>,
    primary_mail_host: Option<String>,
}

impl Pipeline {
    /// The pipeline a configuration describes (validated by the config).
    pub fn from_config(config: &Config) -> Self {
        Self {
            steps: config.pipeline.clone(),
            primary_mail_host: config.primary_mail_host.clone(),
        }
    }

    /// Runs every step on `envelope`, in order.
    pub fn run(&self, envelope: &mut Envelope) {
        let mut keep_received = false;
        for step in &self.steps {
            match step {
                Step::Received => keep_received = true,
                Step::Parse => envelope.parsed = Some(guarded_parse(envelope)),
                Step::Hash => {
                    let p = envelope
                        .parsed
                        .as_ref()
                        .expect("config puts parse before hash");
                    envelope.hashes = envelope
                        .recipients
                        .iter()
                        .map(|r| parse::hash(&self.mailbox(r), &p.from, &p.subject, &p.body))
                        .collect();
                }
            }
        }
        if !keep_received && envelope.header_len > 0 {
            envelope.raw = envelope.raw.slice(envelope.header_len..);
            envelope.header_len = 0;
        }
    }

    /// The recipient as `new_mail.to` records it: rewritten to
    /// `primary_mail_host` when one is configured.
    pub fn mailbox(&self, recipient: &str) -> String {
        match &self.primary_mail_host {
            Some(host) => parse::rewrite_to_host(recipient, host),
            None => recipient.to_owned(),
        }
    }
}

/// Malformed MIME must never lose a message: should the parser panic on
/// some input, the message is stored with default fields.
fn guarded_parse(envelope: &Envelope) -> parse::Parsed {
    let content = envelope.content();
    std::panic::catch_unwind(|| parse::parse(content)).unwrap_or_else(|_| {
        tracing::error!(id = %envelope.id, "MIME parser panicked; storing with default fields");
        parse::Parsed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        let header = b"Received: from x\r\n";
        let content = b"From: A <A@Sender.Test>\r\nSubject: hi\r\n\r\nbody\r\n";
        Envelope {
            header_len: header.len(),
            ..Envelope::fixture(
                &["u@other.example", "v@other.example"],
                &[&header[..], &content[..]].concat(),
            )
        }
    }

    fn pipeline(toml: &str) -> Pipeline {
        Pipeline::from_config(&Config::from_toml(toml).unwrap())
    }

    #[test]
    fn default_steps_parse_hash_and_keep_the_header() {
        let p = pipeline("primary_mail_host = \"example.com\"");
        let mut e = envelope();
        p.run(&mut e);
        assert!(e.raw.starts_with(b"Received: "));
        let parsed = e.parsed.as_ref().unwrap();
        assert_eq!(parsed.from, "a@sender.test");
        assert_eq!(parsed.subject, "hi");
        assert_eq!(
            e.hashes,
            [
                parse::hash("u@example.com", "a@sender.test", "hi", "body\r\n"),
                parse::hash("v@example.com", "a@sender.test", "hi", "body\r\n"),
            ]
        );
        assert_eq!(p.mailbox("u@other.example"), "u@example.com");
    }

    #[test]
    fn without_received_the_header_is_not_stored() {
        let p = pipeline("pipeline = [\"parse\"]");
        let mut e = envelope();
        p.run(&mut e);
        assert!(e.raw.starts_with(b"From: "));
        assert_eq!(e.header_len, 0);
        assert!(e.parsed.is_some());
        assert!(e.hashes.is_empty());
        assert_eq!(p.mailbox("u@other.example"), "u@other.example");
    }

    #[test]
    fn empty_pipeline_stores_the_message_as_sent() {
        let p = pipeline("pipeline = []");
        let mut e = envelope();
        p.run(&mut e);
        assert!(e.parsed.is_none());
        assert_eq!(&e.raw[..], e.content());
    }
}
