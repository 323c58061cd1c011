//! Just enough MIME: the fields the original daemon extracted from every
//! message, with mail-parser doing the MIME work (RFC 2045–2047, charsets).
//!
//! Parsing never fails a message: whatever cannot be read falls back to an
//! empty value or the reference defaults, and the raw message is stored
//! regardless.

use mail_parser::{MessageParser, MimeHeaders, PartType};
use md5::{Digest, Md5};

/// The charset recorded when a body part declares none (the reference's default).
pub const DEFAULT_CHARSET: &str = "ISO-8859-1";
/// The content type recorded when a body part declares none.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";

/// Fields extracted from a message's header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The address in the `From:` header, lower-cased; empty if none.
    pub from: String,
    /// The addresses in the `To:` header, comma-separated, as written.
    pub to: String,
    /// The `Date:` header in RFC 3339; empty if absent or unreadable.
    pub date: String,
    /// The `Message-ID:` header without angle brackets; empty if none.
    pub message_id: String,
    /// The `Subject:` header, RFC 2047 words decoded to UTF-8.
    pub subject: String,
    /// The preferred body: a non-empty HTML part, else the plain-text part,
    /// else everything after the header; transfer-decoded, in UTF-8.
    pub body: String,
    /// The charset the preferred body part declared.
    pub charset: String,
    /// The content type of the preferred body part, e.g. `text/html`.
    pub content_type: String,
    /// The message has attachments.
    pub has_attach: bool,
}

impl Default for Parsed {
    fn default() -> Self {
        Self {
            from: String::new(),
            to: String::new(),
            date: String::new(),
            message_id: String::new(),
            subject: String::new(),
            body: String::new(),
            charset: DEFAULT_CHARSET.to_owned(),
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            has_attach: false,
        }
    }
}

/// Parses `content` (the message as the client sent it).
pub fn parse(content: &[u8]) -> Parsed {
    let Some(msg) = MessageParser::default().parse(content) else {
        return Parsed {
            body: String::from_utf8_lossy(after_header(content)).into_owned(),
            ..Parsed::default()
        };
    };
    let mut p = Parsed {
        from: msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_lowercase)
            .unwrap_or_default(),
        to: msg
            .to()
            .map(|a| {
                a.iter()
                    .filter_map(|a| a.address())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        date: msg.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        message_id: msg.message_id().unwrap_or_default().to_owned(),
        subject: msg.subject().unwrap_or_default().to_owned(),
        has_attach: msg.attachment_count() > 0,
        ..Parsed::default()
    };

    // The original's choice: HTML if there is a non-empty HTML part, else
    // the plain text, else everything after the header.
    let html = msg
        .html_bodies()
        .find(|part| matches!(&part.body, PartType::Html(h) if !h.trim().is_empty()));
    let text = || {
        msg.text_bodies()
            .find(|part| matches!(&part.body, PartType::Text(_)))
    };
    match html.or_else(text) {
        Some(part) => {
            p.body = part.text_contents().unwrap_or_default().to_owned();
            if let Some(ct) = part.content_type() {
                p.content_type = match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                }
                .to_ascii_lowercase();
                if let Some(cs) = ct.attribute("charset") {
                    p.charset = cs.to_owned();
                }
            }
        }
        None => {
            let raw = msg.raw_message();
            let start = (msg.root_part().raw_body_offset() as usize).min(raw.len());
            p.body = String::from_utf8_lossy(&raw[start..]).into_owned();
        }
    }
    p
}

/// Everything after the first empty line, or nothing if there is none.
fn after_header(content: &[u8]) -> &[u8] {
    memchr::memmem::find(content, b"\r\n\r\n")
        .map(|i| &content[i + 4..])
        .or_else(|| memchr::memmem::find(content, b"\n\n").map(|i| &content[i + 2..]))
        .unwrap_or_default()
}

/// The reference's `hash`: 32 hex digits of MD5 over `to`, `from`,
/// `subject` and `body`, concatenated in that order.
pub fn hash(to: &str, from: &str, subject: &str, body: &str) -> String {
    let mut h = Md5::new();
    for part in [to, from, subject, body] {
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut hex = String::with_capacity(32);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// A recipient with its domain replaced by `host` (the original's
/// `GM_PRIMARY_MAIL_HOST`): `user@any-allowed-domain` → `user@host`.
pub fn rewrite_to_host(recipient: &str, host: &str) -> String {
    match recipient.rfind('@') {
        Some(at) => format!("{}@{}", &recipient[..at], host),
        None => format!("{recipient}@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_known_values() {
        // RFC 1321 test suite.
        assert_eq!(hash("", "", "", ""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hash("a", "b", "c", ""), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hash("message", " ", "digest", ""),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn rewrite() {
        assert_eq!(
            rewrite_to_host("User@Other.Example", "example.com"),
            "User@example.com"
        );
        assert_eq!(
            rewrite_to_host("postmaster", "example.com"),
            "postmaster@example.com"
        );
    }

    #[test]
    fn unparseable_input_falls_back_to_defaults() {
        let p = parse(b"");
        assert_eq!(p.charset, DEFAULT_CHARSET);
        assert_eq!(p.content_type, DEFAULT_CONTENT_TYPE);
        assert!(p.body.is_empty() && p.subject.is_empty() && !p.has_attach);
    }
}
