//! Just enough MIME: the fields the original daemon extracted from every
//! message, with mail-parser doing the MIME work (RFC 2045–2047, charsets).
//!
//! Parsing never fails a message: whatever cannot be read falls back to an
//! empty value or the reference defaults, and the raw message is stored
//! regardless.
//!
//! Three pieces of glue sit on top of mail-parser, each proven by a case in
//! `tests/corpus/`:
//! - bytes that are not UTF-8 in the header, in a body part without a
//!   charset mail-parser knows, or after the header of a message with no
//!   readable part are read in the reference's default charset, ISO-8859-1,
//!   where mail-parser would write U+FFFD;
//! - a message cut short before its closing delimiters is closed and parsed
//!   again, so its last part is still a body (mail-parser gives up on it);
//! - `has_attach` follows RFC 8621's `hasAttachment`, so an inline image or
//!   a multipart whose boundary never appears is not an attachment.

use std::borrow::Cow;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, Message, MessageParser, MessagePart, MimeHeaders, PartType};
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
    /// The charset the preferred body part declared, as written;
    /// [`DEFAULT_CHARSET`] when it declared none or there is no such part.
    pub charset: String,
    /// The content type of the preferred body part, lower-cased, e.g.
    /// `text/html`; [`DEFAULT_CONTENT_TYPE`] when there is no such part.
    pub content_type: String,
    /// The message has a part that is neither a body nor marked
    /// `Content-Disposition: inline` (RFC 8621's `hasAttachment`).
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
    let parser = MessageParser::default();
    let Some(first) = parser.parse(content) else {
        return Parsed {
            body: utf8_or_latin1(after_header(content)).into_owned(),
            ..Parsed::default()
        };
    };
    let closed = close_open_multiparts(content, &first);
    let msg = match closed.as_deref().and_then(|c| parser.parse(c)) {
        Some(repaired) => repaired,
        None => first,
    };

    // Raw 8-bit header bytes that are not UTF-8 are read in the default
    // charset; mail-parser would turn each of them into U+FFFD.
    let header = &content[..(msg.root_part().offset_body as usize).min(content.len())];
    let mut p = match std::str::from_utf8(header) {
        Ok(_) => header_fields(&msg),
        Err(_) => {
            let header = utf8_or_latin1(header);
            match parser.parse_headers(header.as_bytes()) {
                Some(h) => header_fields(&h),
                None => header_fields(&msg),
            }
        }
    };
    p.has_attach = msg.attachments().any(is_attachment);

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
            p.body = body_text(msg.raw_message(), part);
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
            // Offsets of the original bytes: a repair only appends.
            let start = (msg.root_part().raw_body_offset() as usize).min(content.len());
            p.body = utf8_or_latin1(&content[start..]).into_owned();
        }
    }
    p
}

/// The fields read from the top-level header alone.
fn header_fields(msg: &Message<'_>) -> Parsed {
    Parsed {
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
        ..Parsed::default()
    }
}

/// A message cut short leaves its multiparts open, and mail-parser then
/// gives up on the last part: an HTML part becomes an attachment, a base64
/// part stays encoded. The sender meant the part to end where the message
/// ends, so the missing close delimiters are appended, innermost first,
/// for a second parse. `None` when nothing needs closing.
fn close_open_multiparts(content: &[u8], msg: &Message<'_>) -> Option<Vec<u8>> {
    // Only a part that ran into trouble can be the victim of an open
    // multipart; this keeps the search off well-formed mail.
    if !msg.parts.iter().any(|part| part.is_encoding_problem) {
        return None;
    }
    let open: Vec<&str> = msg
        .parts
        .iter()
        .filter(|part| matches!(part.body, PartType::Multipart(_)))
        .filter_map(|part| part.content_type()?.attribute("boundary"))
        .filter(|b| memchr::memmem::find(content, format!("--{b}--").as_bytes()).is_none())
        .collect();
    if open.is_empty() {
        return None;
    }
    let mut closed = content.to_vec();
    // Parts are listed outermost first.
    for boundary in open.iter().rev() {
        closed.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    }
    Some(closed)
}

/// RFC 8621's `hasAttachment`: a part that is not a body counts unless it
/// says `Content-Disposition: inline` (an image the HTML shows). A
/// multipart whose boundary never appears is not a file either: it is the
/// unreadable body itself.
fn is_attachment(part: &MessagePart<'_>) -> bool {
    let inline = part.content_disposition().is_some_and(|d| d.is_inline());
    let lost_multipart = part
        .content_type()
        .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("multipart"))
        && !matches!(part.body, PartType::Multipart(_));
    !inline && !lost_multipart
}

/// The text of a body part. mail-parser reads a part that declares no
/// charset (or one it does not know) as UTF-8, replacing what is not; the
/// reference's default charset says those bytes are ISO-8859-1, so such a
/// part is transfer-decoded again and read that way.
fn body_text(raw: &[u8], part: &MessagePart<'_>) -> String {
    let text = part.text_contents().unwrap_or_default();
    let known_charset = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .is_some_and(|cs| charset_decoder(cs.as_bytes()).is_some());
    if known_charset || !text.contains(char::REPLACEMENT_CHARACTER) {
        return text.to_owned();
    }
    let Some(encoded) = raw.get(part.offset_body as usize..part.offset_end as usize) else {
        return text.to_owned();
    };
    let decoded = match part.encoding {
        Encoding::Base64 => base64_decode(encoded).map(Cow::Owned),
        Encoding::QuotedPrintable => quoted_printable_decode(encoded).map(Cow::Owned),
        Encoding::None => Some(Cow::Borrowed(encoded)),
    };
    match decoded {
        Some(bytes) => utf8_or_latin1(&bytes).into_owned(),
        None => text.to_owned(),
    }
}

/// `bytes` as UTF-8 where they are UTF-8, and in the default charset where
/// they are not. ISO-8859-1 is read as windows-1252, as mail-parser (after
/// WHATWG) reads a declared ISO-8859-1: the C1 controls it would give are
/// never what a sender meant.
fn utf8_or_latin1(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let latin1 = charset_decoder(DEFAULT_CHARSET.as_bytes());
    let mut text = String::with_capacity(bytes.len() + bytes.len() / 2);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        match latin1 {
            Some(decode) => text.push_str(&decode(chunk.invalid())),
            None => text.extend(chunk.invalid().iter().copied().map(char::from)),
        }
    }
    Cow::Owned(text)
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
    fn bytes_that_are_not_utf8_are_read_as_latin1() {
        // UTF-8, Latin-1 and windows-1252 punctuation in one string: each
        // run is read its own way.
        assert_eq!(
            utf8_or_latin1(b"caf\xc3\xa9 / caf\xe9 / \x93q\x94 / \xc3("),
            "caf\u{e9} / caf\u{e9} / \u{201c}q\u{201d} / \u{c3}("
        );
        assert!(matches!(utf8_or_latin1(b"plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn well_formed_multiparts_are_parsed_once() {
        let msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n--b--\r\n";
        let parsed = MessageParser::default().parse(&msg[..]).unwrap();
        assert_eq!(close_open_multiparts(msg, &parsed), None);
        // Cut before the close: the delimiter is appended.
        let cut = &msg[..msg.len() - 7];
        let parsed = MessageParser::default().parse(cut).unwrap();
        let closed = close_open_multiparts(cut, &parsed);
        assert_eq!(
            closed.as_deref(),
            Some(
                &b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n\r\n--b--\r\n"
                    [..]
            )
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
