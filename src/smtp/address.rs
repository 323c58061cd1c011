//! Reverse- and forward-path parsing per RFC 5321 §4.1.2, with the
//! SMTPUTF8 extension of RFC 6531 (UTF-8 in local parts and U-labels).
//!
//! The parser is strict about the grammar: angle brackets are required,
//! dot-strings have no empty atoms, domains are LDH labels or address
//! literals. Source routes (`<@a,@b:user@c>`) are accepted and dropped, as
//! §4.1.1.3 asks. Whether UTF-8 is *allowed* depends on the MAIL parameters,
//! so the parser only reports that it saw some; the session decides.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::reply::{self, Reply};

/// Which command the path belongs to; it picks the enhanced status code
/// (X.1.7 for senders, X.1.3 for recipients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `MAIL FROM:`
    Sender,
    /// `RCPT TO:`
    Recipient,
}

/// RFC 5321 §4.5.3.1 limits, in octets.
pub const MAX_LOCAL_PART: usize = 64;
/// Maximum length of a domain.
pub const MAX_DOMAIN: usize = 255;
/// Maximum length of a path, angle brackets included.
pub const MAX_PATH: usize = 256;

/// A mailbox as received. `domain` is empty only for the special
/// recipient `<postmaster>` (RFC 5321 §4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part exactly as sent (a quoted string keeps its quotes).
    pub local: String,
    /// The domain as sent: LDH/U-labels or an address literal in brackets.
    pub domain: String,
}

impl Mailbox {
    /// True for `<postmaster>` without a domain.
    pub fn is_bare_postmaster(&self) -> bool {
        self.domain.is_empty()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// A parsed path and what the session needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// `None` is the null reverse-path `<>`.
    pub mailbox: Option<Mailbox>,
    /// The path contained UTF-8 (allowed only with SMTPUTF8).
    pub non_ascii: bool,
}

/// Parses a path at the start of `input`; returns it and the bytes after `>`.
pub fn parse_path(input: &[u8], role: Role) -> Result<(Path, &[u8]), Reply> {
    let bad = match role {
        Role::Sender => reply::BAD_SENDER,
        Role::Recipient => reply::BAD_RECIPIENT,
    };
    if input.first() != Some(&b'<') {
        return Err(bad);
    }
    let close = find_close(input).ok_or_else(|| bad.clone())?;
    let inner = &input[1..close];
    let rest = &input[close + 1..];
    let non_ascii = !inner.is_ascii();
    if non_ascii && std::str::from_utf8(inner).is_err() {
        return Err(bad);
    }
    if inner.is_empty() {
        return match role {
            Role::Sender => Ok((
                Path {
                    mailbox: None,
                    non_ascii: false,
                },
                rest,
            )),
            Role::Recipient => Err(bad),
        };
    }
    let mut p = Cursor { s: inner, i: 0 };
    if p.peek() == Some(b'@') {
        skip_source_route(&mut p).ok_or_else(|| bad.clone())?;
    }
    let local_start = p.i;
    if p.peek() == Some(b'"') {
        quoted_string(&mut p).ok_or_else(|| bad.clone())?;
    } else {
        dot_string(&mut p).ok_or_else(|| bad.clone())?;
    }
    let local = &inner[local_start..p.i];
    if p.at_end() {
        // Only `<postmaster>` may omit the domain, and only as a recipient.
        if role == Role::Recipient && local.eq_ignore_ascii_case(b"postmaster") {
            return Ok((
                Path {
                    mailbox: Some(Mailbox {
                        local: utf8(local),
                        domain: String::new(),
                    }),
                    non_ascii,
                },
                rest,
            ));
        }
        return Err(bad);
    }
    if !p.eat(b'@') {
        return Err(bad);
    }
    let domain_start = p.i;
    domain(&mut p).ok_or_else(|| bad.clone())?;
    if !p.at_end() {
        return Err(bad);
    }
    let domain = &inner[domain_start..];
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return Err(match role {
            Role::Sender => reply::SENDER_TOO_LONG,
            Role::Recipient => reply::RECIPIENT_TOO_LONG,
        });
    }
    if close + 1 > MAX_PATH {
        return Err(match role {
            Role::Sender => reply::SENDER_PATH_TOO_LONG,
            Role::Recipient => reply::RECIPIENT_PATH_TOO_LONG,
        });
    }
    Ok((
        Path {
            mailbox: Some(Mailbox {
                local: utf8(local),
                domain: utf8(domain),
            }),
            non_ascii,
        },
        rest,
    ))
}

/// Checks a bare domain (as in EHLO or a config entry): LDH or U-labels.
pub fn is_valid_domain(s: &str) -> bool {
    let mut p = Cursor {
        s: s.as_bytes(),
        i: 0,
    };
    labels(&mut p).is_some() && p.at_end()
}

fn utf8(b: &[u8]) -> String {
    // Callers checked the whole path is UTF-8; this cannot lose bytes.
    String::from_utf8_lossy(b).into_owned()
}

/// Index of the `>` that closes the path, skipping quoted strings.
fn find_close(input: &[u8]) -> Option<usize> {
    let mut i = 1;
    let mut quoted = false;
    while i < input.len() {
        match input[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }
}

/// `A-d-l ":"` where `A-d-l = At-domain *( "," At-domain )`.
fn skip_source_route(p: &mut Cursor) -> Option<()> {
    loop {
        if !p.eat(b'@') {
            return None;
        }
        domain(p)?;
        if p.eat(b':') {
            return Some(());
        }
        if !p.eat(b',') {
            return None;
        }
    }
}

/// RFC 5322 atext, plus any UTF-8 octet (RFC 6531 §3.3 `UTF8-non-ascii`).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// `Dot-string = Atom *("." Atom)`.
fn dot_string(p: &mut Cursor) -> Option<()> {
    loop {
        let start = p.i;
        while p.peek().is_some_and(is_atext) {
            p.i += 1;
        }
        if p.i == start {
            return None;
        }
        if !p.eat(b'.') {
            return Some(());
        }
    }
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`.
fn quoted_string(p: &mut Cursor) -> Option<()> {
    if !p.eat(b'"') {
        return None;
    }
    loop {
        match p.peek()? {
            b'"' => {
                p.i += 1;
                return Some(());
            }
            b'\\' => {
                p.i += 1;
                let c = p.peek()?;
                if !(32..=126).contains(&c) {
                    return None;
                }
                p.i += 1;
            }
            32..=126 | 0x80.. => p.i += 1,
            _ => return None,
        }
    }
}

/// `Domain / address-literal`.
fn domain(p: &mut Cursor) -> Option<()> {
    if p.peek() == Some(b'[') {
        address_literal(p)
    } else {
        labels(p)
    }
}

/// `sub-domain *("." sub-domain)`; a label is `Let-dig [Ldh-str]`, or a
/// U-label (any UTF-8) under SMTPUTF8. Labels are at most 63 octets.
fn labels(p: &mut Cursor) -> Option<()> {
    loop {
        let start = p.i;
        while p
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        {
            p.i += 1;
        }
        let label = &p.s[start..p.i];
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return None;
        }
        if !p.eat(b'.') {
            return Some(());
        }
    }
}

/// `"[" ( IPv4-address-literal / IPv6-address-literal ) "]"`. The general
/// form `[tag:content]` is refused: no standardized tag but IPv6 exists.
fn address_literal(p: &mut Cursor) -> Option<()> {
    if !p.eat(b'[') {
        return None;
    }
    let start = p.i;
    let end = start + p.s[start..].iter().position(|&b| b == b']')?;
    let text = std::str::from_utf8(&p.s[start..end]).ok()?;
    let ok = match text.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => text[5..].parse::<Ipv6Addr>().is_ok(),
        _ => text.parse::<Ipv4Addr>().is_ok(),
    };
    if !ok {
        return None;
    }
    p.i = end + 1;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str, role: Role) -> (Option<String>, bool, String) {
        let (path, rest) =
            parse_path(input.as_bytes(), role).unwrap_or_else(|e| panic!("{input}: {e}"));
        (
            path.mailbox.map(|m| m.to_string()),
            path.non_ascii,
            String::from_utf8(rest.to_vec()).unwrap(),
        )
    }

    #[test]
    fn valid_paths() {
        use Role::*;
        let cases: &[(&str, Role, Option<&str>, bool, &str)] = &[
            ("<>", Sender, None, false, ""),
            ("<a@b.c>", Sender, Some("a@b.c"), false, ""),
            ("<a@b.c> SIZE=10", Sender, Some("a@b.c"), false, " SIZE=10"),
            (
                "<first.last+tag@example.com>",
                Recipient,
                Some("first.last+tag@example.com"),
                false,
                "",
            ),
            (
                "<\"john doe\"@example.com>",
                Recipient,
                Some("\"john doe\"@example.com"),
                false,
                "",
            ),
            (
                "<\"a>b\"@example.com>",
                Recipient,
                Some("\"a>b\"@example.com"),
                false,
                "",
            ),
            (
                "<\"a\\\"b\"@example.com>",
                Recipient,
                Some("\"a\\\"b\"@example.com"),
                false,
                "",
            ),
            (
                "<user@[192.0.2.1]>",
                Recipient,
                Some("user@[192.0.2.1]"),
                false,
                "",
            ),
            (
                "<user@[IPv6:2001:db8::1]>",
                Recipient,
                Some("user@[IPv6:2001:db8::1]"),
                false,
                "",
            ),
            (
                "<@relay.example,@other.example:user@example.com>",
                Recipient,
                Some("user@example.com"),
                false,
                "",
            ),
            (
                "<@[IPv6:::1]:user@example.com>",
                Recipient,
                Some("user@example.com"),
                false,
                "",
            ),
            ("<postmaster>", Recipient, Some("postmaster"), false, ""),
            ("<PostMaster>", Recipient, Some("PostMaster"), false, ""),
            (
                "<δοκιμή@παράδειγμα.δοκιμή>",
                Recipient,
                Some("δοκιμή@παράδειγμα.δοκιμή"),
                true,
                "",
            ),
            (
                "<a-b@x-y.example>",
                Sender,
                Some("a-b@x-y.example"),
                false,
                "",
            ),
        ];
        for &(input, role, mailbox, non_ascii, rest) in cases {
            assert_eq!(
                ok(input, role),
                (mailbox.map(String::from), non_ascii, rest.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_paths() {
        use Role::*;
        let long_local = format!("<{}@example.com>", "a".repeat(65));
        let long_domain = format!("<a@{}.com>", vec!["b".repeat(63); 4].join("."));
        let long_path = format!(
            "<{}@{}.com>",
            "a".repeat(60),
            vec!["b".repeat(60); 4].join(".")
        );
        let cases: Vec<(&str, Role, u16, &str)> = vec![
            ("a@b.c", Sender, 501, "5.1.7"),
            ("a@b.c", Recipient, 501, "5.1.3"),
            ("<a@b.c", Sender, 501, "5.1.7"),
            ("<>", Recipient, 501, "5.1.3"),
            ("<postmaster>", Sender, 501, "5.1.7"),
            ("<user>", Recipient, 501, "5.1.3"),
            ("<a..b@c.d>", Recipient, 501, "5.1.3"),
            ("<.a@c.d>", Recipient, 501, "5.1.3"),
            ("<a.@c.d>", Recipient, 501, "5.1.3"),
            ("<a@-c.d>", Recipient, 501, "5.1.3"),
            ("<a@c-.d>", Recipient, 501, "5.1.3"),
            ("<a@c..d>", Recipient, 501, "5.1.3"),
            ("<a@c.d.>", Recipient, 501, "5.1.3"),
            ("<a@>", Recipient, 501, "5.1.3"),
            ("<@c.d>", Recipient, 501, "5.1.3"),
            ("<a b@c.d>", Recipient, 501, "5.1.3"),
            ("<a@b@c.d>", Recipient, 501, "5.1.3"),
            ("<a@[300.0.0.1]>", Recipient, 501, "5.1.3"),
            ("<a@[IPv6:zz::1]>", Recipient, 501, "5.1.3"),
            ("<a@[tag:foo]>", Recipient, 501, "5.1.3"),
            ("<\"unterminated@c.d>", Recipient, 501, "5.1.3"),
            ("<@relay.example user@c.d>", Recipient, 501, "5.1.3"),
            ("<a\u{1}b@c.d>", Recipient, 501, "5.1.3"),
            (&long_local, Recipient, 553, "5.1.3"),
            (&long_local, Sender, 553, "5.1.7"),
            (&long_domain, Recipient, 553, "5.1.3"),
            (&long_path, Recipient, 501, "5.1.3"),
        ];
        for (input, role, code, enhanced) in cases {
            let err = parse_path(input.as_bytes(), role).unwrap_err();
            assert_eq!(err.code(), code, "{input}: {err}");
            assert!(err.text().starts_with(enhanced), "{input}: {err}");
        }
        // Invalid UTF-8 is a syntax error, not a "needs SMTPUTF8".
        let err = parse_path(b"<\xff@c.d>", Recipient).unwrap_err();
        assert_eq!(err.code(), 501);
    }

    #[test]
    fn limits_are_inclusive() {
        let local = format!("<{}@example.com>", "a".repeat(64));
        assert!(parse_path(local.as_bytes(), Role::Recipient).is_ok());
        // 256 octets including the brackets is the longest path allowed.
        let d = format!(
            "{}.{}.{}.{}",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(50)
        );
        let path = format!("<{}@{}>", "a".repeat(256 - 3 - d.len()), d);
        assert_eq!(path.len(), 256);
        assert!(parse_path(path.as_bytes(), Role::Recipient).is_ok());
    }

    #[test]
    fn bare_domains() {
        assert!(is_valid_domain("mx.example.com"));
        assert!(is_valid_domain("localhost"));
        assert!(!is_valid_domain("bad_domain.example"));
        assert!(!is_valid_domain(""));
        assert!(!is_valid_domain("a..b"));
    }
}
