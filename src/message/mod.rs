//! What one accepted message is: the [`Envelope`] the session hands to the
//! stores, its [`MessageId`], and the `Received:` header we prepend.

mod id;
pub mod parse;
pub mod time;

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use bytes::Bytes;

pub use id::MessageId;
pub use parse::Parsed;

use crate::smtp::BodyType;

/// Where stores that file mail by domain put a recipient without one
/// (`postmaster`, RFC 5321 §4.5.1): a directory or subject token no domain
/// can be.
pub const NO_DOMAIN: &str = "_local";

/// An accepted recipient split at its last `@`: the local part and the
/// domain, or the whole and `None` for `postmaster` without a domain.
pub fn split_recipient(recipient: &str) -> (&str, Option<&str>) {
    match recipient.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (recipient, None),
    }
}

/// One accepted message with everything the stores record about it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Unique, time-sortable id; also in our Received header and the 250 reply.
    pub id: MessageId,
    /// When the DATA or first BDAT command was accepted.
    pub received_at: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The EHLO/HELO argument as sent.
    pub helo: String,
    /// The client said EHLO (not HELO).
    pub esmtp: bool,
    /// The session ran over TLS.
    pub tls: bool,
    /// The reverse-path without brackets; empty for `<>`.
    pub mail_from: String,
    /// The accepted forward-paths without brackets, in order.
    pub recipients: Vec<String>,
    /// `BODY=` from MAIL.
    pub body: BodyType,
    /// `SMTPUTF8` was given at MAIL.
    pub smtputf8: bool,
    /// The message as stored: our Received header, then the content exactly
    /// as received (dot-stuffing undone), CRLF line ends.
    pub raw: Bytes,
    /// Length of our Received header at the start of `raw` (0 when the
    /// pipeline does not keep it).
    pub header_len: usize,
    /// Filled by the pipeline's `parse` step.
    pub parsed: Option<Parsed>,
    /// The reference's `hash`, one per recipient in order; filled by `hash`.
    pub hashes: Vec<String>,
}

impl Envelope {
    /// The message content as the client sent it, without our header.
    pub fn content(&self) -> &[u8] {
        &self.raw[self.header_len..]
    }

    /// A message for unit tests: `raw` (without a header of ours) for
    /// `recipients`, from `s@sender.test`, received now over plain ESMTP
    /// from `client.test` at 192.0.2.9, neither parsed nor hashed. Tests
    /// that need other values set them with `..Envelope::fixture(..)`.
    #[cfg(test)]
    pub(crate) fn fixture(recipients: &[&str], raw: &[u8]) -> Self {
        Self {
            id: MessageId::generate(SystemTime::now()),
            received_at: SystemTime::now(),
            client: SocketAddr::from(([192, 0, 2, 9], 25)),
            helo: "client.test".into(),
            esmtp: true,
            tls: false,
            mail_from: "s@sender.test".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            body: BodyType::default(),
            smtputf8: false,
            raw: Bytes::copy_from_slice(raw),
            header_len: 0,
            parsed: None,
            hashes: Vec::new(),
        }
    }
}

/// The facts a Received header states.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client: IpAddr,
    /// The TLS parameters, stated in a comment as Postfix does.
    pub tls: Option<crate::smtp::TlsInfo>,
    pub by: &'a str,
    pub protocol: &'a str,
    pub id: &'a MessageId,
    /// Named only when the message has one recipient, as Postfix does: more
    /// would leak the other recipients to each of them.
    pub single_recipient: Option<&'a str>,
    pub at: SystemTime,
}

impl Trace<'_> {
    /// The `Received:` header of RFC 5321 §4.4, folded, CRLF-terminated:
    ///
    /// ```text
    /// Received: from client.example ([192.0.2.1])
    ///         by mx.example.com (gsmtpd) with ESMTP id 01J...
    ///         for <user@example.com>; Thu, 3 Dec 2026 17:15:33 +0000
    /// ```
    pub fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(256);
        self.write_header(&mut h);
        h
    }

    /// Appends the header to `out`, formatting in place (no intermediate
    /// strings: this runs once per message).
    pub fn write_header(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "Received: from {} (", self.helo);
        let _ = match self.client {
            IpAddr::V4(a) => write!(out, "[{a}]"),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => write!(out, "[{v4}]"),
                None => write!(out, "[IPv6:{a}]"),
            },
        };
        out.push(b')');
        if let Some(t) = self.tls {
            let _ = write!(out, "\r\n\t(using {} with cipher {})", t.version, t.cipher);
        }
        let _ = write!(
            out,
            "\r\n\tby {} (gsmtpd) with {} id {}",
            self.by, self.protocol, self.id
        );
        match self.single_recipient {
            Some(r) => {
                let _ = write!(out, "\r\n\tfor <{r}>; ");
            }
            None => out.extend_from_slice(b";\r\n\t"),
        }
        time::Utc::from_system(self.at).write_rfc5322(out);
        out.extend_from_slice(b"\r\n");
    }
}

/// The `with` protocol name (RFC 3848, RFC 6531 §3.7.3).
pub fn protocol_name(esmtp: bool, tls: bool, smtputf8: bool) -> &'static str {
    match (smtputf8, esmtp, tls) {
        (true, _, true) => "UTF8SMTPS",
        (true, _, false) => "UTF8SMTP",
        (false, true, true) => "ESMTPS",
        (false, true, false) => "ESMTP",
        (false, false, true) => "SMTPS",
        (false, false, false) => "SMTP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn received_header_format() {
        let id = MessageId::generate(UNIX_EPOCH);
        let at = UNIX_EPOCH + Duration::from_secs(1_796_318_133);
        let t = Trace {
            helo: "client.example",
            client: "192.0.2.1".parse().unwrap(),
            tls: None,
            by: "mx.example.com",
            protocol: "ESMTP",
            id: &id,
            single_recipient: Some("user@example.com"),
            at,
        };
        assert_eq!(
            String::from_utf8(t.header()).unwrap(),
            format!(
                "Received: from client.example ([192.0.2.1])\r\n\tby mx.example.com (gsmtpd) with ESMTP id {id}\r\n\tfor <user@example.com>; Thu, 3 Dec 2026 17:15:33 +0000\r\n"
            )
        );
        let t = Trace {
            client: "2001:db8::1".parse().unwrap(),
            single_recipient: None,
            protocol: "SMTP",
            tls: None,
            ..t
        };
        assert_eq!(
            String::from_utf8(t.header()).unwrap(),
            format!(
                "Received: from client.example ([IPv6:2001:db8::1])\r\n\tby mx.example.com (gsmtpd) with SMTP id {id};\r\n\tThu, 3 Dec 2026 17:15:33 +0000\r\n"
            )
        );
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(false, false, false), "SMTP");
        assert_eq!(protocol_name(true, false, false), "ESMTP");
        assert_eq!(protocol_name(true, true, false), "ESMTPS");
        assert_eq!(protocol_name(true, false, true), "UTF8SMTP");
        assert_eq!(protocol_name(true, true, true), "UTF8SMTPS");
    }
}
