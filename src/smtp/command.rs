//! The command parser: one command line (CRLF already removed) in, a typed
//! [`Command`] or the exact error [`Reply`] out. Pure and table-tested; the
//! session decides what a valid command means in its current state.

use super::address::{self, Path, Role};
use super::reply::{self, Reply};

/// The verb of a line, known even when its arguments are bad, so the
/// session can count commands the way Postfix's disconnect line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// Anything else, recognized or not.
    Other,
}

impl Verb {
    /// Every verb, in the order the disconnect log prints them.
    pub const ALL: [Verb; 13] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::StartTls,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Vrfy,
        Verb::Help,
        Verb::Quit,
        Verb::Other,
    ];

    /// Lower-case name, as in Postfix's `disconnect` log line.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Ehlo => "ehlo",
            Verb::Helo => "helo",
            Verb::Mail => "mail",
            Verb::Rcpt => "rcpt",
            Verb::Data => "data",
            Verb::Bdat => "bdat",
            Verb::Rset => "rset",
            Verb::Noop => "noop",
            Verb::Quit => "quit",
            Verb::Vrfy => "vrfy",
            Verb::Help => "help",
            Verb::StartTls => "starttls",
            Verb::Other => "unknown",
        }
    }
}

/// The `BODY=` parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `7BIT`, also the default.
    #[default]
    SevenBit,
    /// `8BITMIME`
    EightBitMime,
    /// `BINARYMIME`: only BDAT may carry it.
    BinaryMime,
}

impl BodyType {
    /// The keyword as sent in `BODY=`.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
            BodyType::BinaryMime => "BINARYMIME",
        }
    }
}

/// The MAIL parameters we implement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=`; saturates at `u64::MAX` so a huge value is simply too big.
    pub size: Option<u64>,
    /// `BODY=`
    pub body: Option<BodyType>,
    /// `SMTPUTF8`
    pub smtputf8: bool,
    /// Some parameter was given at all (not allowed after HELO).
    pub any: bool,
}

/// A syntactically valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: Path,
        params: MailParams,
    },
    Rcpt {
        to: Path,
    },
    Data,
    /// `BDAT size [LAST]`
    Bdat {
        size: u64,
        last: bool,
    },
    /// A BDAT whose size parsed but whose rest did not: the chunk must still
    /// be read and thrown away, or its bytes would be taken for commands.
    BadBdat {
        size: u64,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// A verb from the RFCs we deliberately do not implement (EXPN, AUTH, ...).
    NotImplemented,
    /// An HTTP verb: someone pointed a web client or a proxy at us.
    Forbidden,
}

/// Parses one command line without its CRLF.
pub fn parse(line: &[u8]) -> (Verb, Result<Command, Reply>) {
    if memchr::memchr(0, line).is_some() {
        return (Verb::Other, Err(reply::NUL_IN_COMMAND));
    }
    let line = trim_end(line);
    let (verb, args) = match memchr::memchr(b' ', line) {
        Some(sp) => (&line[..sp], Some(&line[sp + 1..])),
        None => (line, None),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    let v = if is("EHLO") {
        Verb::Ehlo
    } else if is("HELO") {
        Verb::Helo
    } else if is("MAIL") {
        Verb::Mail
    } else if is("RCPT") {
        Verb::Rcpt
    } else if is("DATA") {
        Verb::Data
    } else if is("BDAT") {
        Verb::Bdat
    } else if is("RSET") {
        Verb::Rset
    } else if is("NOOP") {
        Verb::Noop
    } else if is("QUIT") {
        Verb::Quit
    } else if is("VRFY") {
        Verb::Vrfy
    } else if is("HELP") {
        Verb::Help
    } else if is("STARTTLS") {
        Verb::StartTls
    } else {
        let cmd = if [
            "EXPN", "AUTH", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "BURL",
        ]
        .iter()
        .any(|v| is(v))
        {
            Ok(Command::NotImplemented)
        } else if ["GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE"]
            .iter()
            .any(|v| verb == v.as_bytes())
        {
            Ok(Command::Forbidden)
        } else {
            Err(reply::UNRECOGNIZED)
        };
        return (Verb::Other, cmd);
    };
    let cmd = match v {
        Verb::Ehlo => hello(args, reply::SYNTAX_EHLO).map(Command::Ehlo),
        Verb::Helo => hello(args, reply::SYNTAX_HELO).map(Command::Helo),
        Verb::Mail => mail(args),
        Verb::Rcpt => rcpt(args),
        Verb::Bdat => bdat(args),
        Verb::Data => no_args(args, Command::Data),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::StartTls => no_args(args, Command::StartTls),
        Verb::Noop => Ok(Command::Noop),
        Verb::Help => Ok(Command::Help),
        Verb::Vrfy => match args {
            Some(a) if !a.is_empty() => Ok(Command::Vrfy),
            _ => Err(reply::SYNTAX_VRFY),
        },
        Verb::Other => unreachable!("handled above"),
    };
    (v, cmd)
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn no_args(args: Option<&[u8]>, cmd: Command) -> Result<Command, Reply> {
    match args {
        None => Ok(cmd),
        Some(_) => Err(reply::SYNTAX_NO_ARGS),
    }
}

/// EHLO/HELO take one argument: a domain or address literal. Clients in the
/// wild send all sorts of names here, so any printable token is taken; it
/// only ever appears, as sent, in our Received header.
fn hello(args: Option<&[u8]>, syntax: Reply) -> Result<String, Reply> {
    let Some(arg) = args else { return Err(syntax) };
    if arg.is_empty() || arg.contains(&b' ') {
        return Err(syntax);
    }
    let s = std::str::from_utf8(arg).map_err(|_| syntax.clone())?;
    if s.chars().any(char::is_control) {
        return Err(syntax);
    }
    Ok(s.to_owned())
}

/// Strips a case-insensitive `prefix` (e.g. `FROM:`) and the spaces some
/// clients put after the colon.
fn after_prefix<'a>(args: Option<&'a [u8]>, prefix: &[u8]) -> Option<&'a [u8]> {
    let a = args?;
    if a.len() < prefix.len() || !a[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let mut rest = &a[prefix.len()..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    Some(rest)
}

fn mail(args: Option<&[u8]>) -> Result<Command, Reply> {
    let rest = after_prefix(args, b"FROM:").ok_or(reply::SYNTAX_MAIL)?;
    let (from, rest) = address::parse_path(rest, Role::Sender)?;
    let mut params = MailParams::default();
    for (key, value) in esmtp_params(rest)? {
        params.any = true;
        if key.eq_ignore_ascii_case(b"SIZE") {
            let v = value.ok_or(reply::BAD_SIZE)?;
            if params.size.is_some() {
                return Err(reply::DUPLICATE_PARAM);
            }
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(reply::BAD_SIZE);
            }
            params.size = Some(v.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            }));
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let v = value.ok_or(reply::BAD_BODY)?;
            if params.body.is_some() {
                return Err(reply::DUPLICATE_PARAM);
            }
            params.body = Some(if v.eq_ignore_ascii_case(b"7BIT") {
                BodyType::SevenBit
            } else if v.eq_ignore_ascii_case(b"8BITMIME") {
                BodyType::EightBitMime
            } else if v.eq_ignore_ascii_case(b"BINARYMIME") {
                BodyType::BinaryMime
            } else {
                return Err(reply::BAD_BODY);
            });
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err(reply::SYNTAX_PARAM);
            }
            if params.smtputf8 {
                return Err(reply::DUPLICATE_PARAM);
            }
            params.smtputf8 = true;
        } else {
            return Err(reply::unsupported_param(&String::from_utf8_lossy(key)));
        }
    }
    Ok(Command::Mail { from, params })
}

fn rcpt(args: Option<&[u8]>) -> Result<Command, Reply> {
    let rest = after_prefix(args, b"TO:").ok_or(reply::SYNTAX_RCPT)?;
    let (to, rest) = address::parse_path(rest, Role::Recipient)?;
    // We advertise no RCPT parameters (no DSN), so any is unsupported.
    if let Some((key, _)) = esmtp_params(rest)?.first() {
        return Err(reply::unsupported_param(&String::from_utf8_lossy(key)));
    }
    Ok(Command::Rcpt { to })
}

type Param<'a> = (&'a [u8], Option<&'a [u8]>);

/// `Mail-parameters = esmtp-param *(SP esmtp-param)` after the path.
/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`,
/// `esmtp-value = 1*(%d33-60 / %d62-126 / UTF8-non-ascii)`.
fn esmtp_params(rest: &[u8]) -> Result<Vec<Param<'_>>, Reply> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = rest.strip_prefix(b" ") else {
        return Err(reply::SYNTAX_PARAM);
    };
    let mut out = Vec::new();
    for param in rest.split(|&b| b == b' ') {
        let (key, value) = match memchr::memchr(b'=', param) {
            Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
            None => (param, None),
        };
        let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
            && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.iter()
                    .all(|&b| (33..=126).contains(&b) && b != b'=' || b >= 0x80)
        });
        if !key_ok || !value_ok {
            return Err(reply::SYNTAX_PARAM);
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]` (RFC 3030 §2).
fn bdat(args: Option<&[u8]>) -> Result<Command, Reply> {
    let args = args.ok_or(reply::SYNTAX_BDAT)?;
    let (size, rest) = match memchr::memchr(b' ', args) {
        Some(sp) => (&args[..sp], Some(&args[sp + 1..])),
        None => (args, None),
    };
    // 20 digits can overflow u64; no real chunk is that large, and a count
    // we cannot hold is a count we cannot skip.
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return Err(reply::SYNTAX_BDAT);
    }
    let size = size.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    match rest {
        None => Ok(Command::Bdat { size, last: false }),
        Some(r) if r.eq_ignore_ascii_case(b"LAST") => Ok(Command::Bdat { size, last: true }),
        Some(_) => Ok(Command::BadBdat { size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn mb(local: &str, domain: &str) -> Option<Mailbox> {
        Some(Mailbox {
            local: local.into(),
            domain: domain.into(),
        })
    }

    fn path(local: &str, domain: &str) -> Path {
        Path {
            mailbox: mb(local, domain),
            non_ascii: false,
        }
    }

    #[test]
    fn valid_commands() {
        let null = Path {
            mailbox: None,
            non_ascii: false,
        };
        let cases: Vec<(&str, Verb, Command)> = vec![
            (
                "EHLO client.example",
                Verb::Ehlo,
                Command::Ehlo("client.example".into()),
            ),
            (
                "ehlo [192.0.2.1]",
                Verb::Ehlo,
                Command::Ehlo("[192.0.2.1]".into()),
            ),
            ("HELO x", Verb::Helo, Command::Helo("x".into())),
            ("EHLO x  ", Verb::Ehlo, Command::Ehlo("x".into())),
            (
                "MAIL FROM:<>",
                Verb::Mail,
                Command::Mail {
                    from: null.clone(),
                    params: MailParams::default(),
                },
            ),
            (
                "mail from:<a@b.c>",
                Verb::Mail,
                Command::Mail {
                    from: path("a", "b.c"),
                    params: MailParams::default(),
                },
            ),
            (
                "MAIL FROM: <a@b.c>",
                Verb::Mail,
                Command::Mail {
                    from: path("a", "b.c"),
                    params: MailParams::default(),
                },
            ),
            (
                "MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME SMTPUTF8",
                Verb::Mail,
                Command::Mail {
                    from: path("a", "b.c"),
                    params: MailParams {
                        size: Some(1000),
                        body: Some(BodyType::EightBitMime),
                        smtputf8: true,
                        any: true,
                    },
                },
            ),
            (
                "MAIL FROM:<> body=binarymime",
                Verb::Mail,
                Command::Mail {
                    from: null.clone(),
                    params: MailParams {
                        body: Some(BodyType::BinaryMime),
                        any: true,
                        ..Default::default()
                    },
                },
            ),
            (
                "MAIL FROM:<> SIZE=99999999999999999999999",
                Verb::Mail,
                Command::Mail {
                    from: null,
                    params: MailParams {
                        size: Some(u64::MAX),
                        any: true,
                        ..Default::default()
                    },
                },
            ),
            (
                "RCPT TO:<x@y.z>",
                Verb::Rcpt,
                Command::Rcpt {
                    to: path("x", "y.z"),
                },
            ),
            (
                "Rcpt To:<postmaster>",
                Verb::Rcpt,
                Command::Rcpt {
                    to: path("postmaster", ""),
                },
            ),
            ("DATA", Verb::Data, Command::Data),
            (
                "BDAT 0 LAST",
                Verb::Bdat,
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 1000",
                Verb::Bdat,
                Command::Bdat {
                    size: 1000,
                    last: false,
                },
            ),
            (
                "BDAT 10 last",
                Verb::Bdat,
                Command::Bdat {
                    size: 10,
                    last: true,
                },
            ),
            ("BDAT 10 FIRST", Verb::Bdat, Command::BadBdat { size: 10 }),
            ("RSET", Verb::Rset, Command::Rset),
            ("NOOP", Verb::Noop, Command::Noop),
            ("NOOP anything at all", Verb::Noop, Command::Noop),
            ("QUIT", Verb::Quit, Command::Quit),
            ("VRFY postmaster", Verb::Vrfy, Command::Vrfy),
            ("HELP", Verb::Help, Command::Help),
            ("HELP MAIL", Verb::Help, Command::Help),
            ("STARTTLS", Verb::StartTls, Command::StartTls),
            ("EXPN list", Verb::Other, Command::NotImplemented),
            ("AUTH PLAIN AAAA", Verb::Other, Command::NotImplemented),
            ("GET / HTTP/1.1", Verb::Other, Command::Forbidden),
            ("CONNECT host:25 HTTP/1.1", Verb::Other, Command::Forbidden),
        ];
        for (line, verb, cmd) in cases {
            assert_eq!(parse(line.as_bytes()), (verb, Ok(cmd)), "{line}");
        }
    }

    #[test]
    fn invalid_commands() {
        let cases: &[(&[u8], Verb, u16, &str)] = &[
            (b"", Verb::Other, 500, "5.5.2"),
            (b"FOO", Verb::Other, 500, "5.5.2"),
            (b"MAILFROM:<a@b.c>", Verb::Other, 500, "5.5.2"),
            (b"NOOP\0", Verb::Other, 500, "5.5.2"),
            (b"EHLO", Verb::Ehlo, 501, "5.5.4"),
            (b"EHLO ", Verb::Ehlo, 501, "5.5.4"),
            (b"HELO a b", Verb::Helo, 501, "5.5.4"),
            (b"EHLO \xff", Verb::Ehlo, 501, "5.5.4"),
            (b"MAIL", Verb::Mail, 501, "5.5.4"),
            (b"MAIL TO:<a@b.c>", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:a@b.c", Verb::Mail, 501, "5.1.7"),
            (b"MAIL FROM:<a@b.c>SIZE=1", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> SIZE=abc", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> SIZE", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> BODY=9BIT", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> SMTPUTF8=yes", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c>  SIZE=1", Verb::Mail, 501, "5.5.4"),
            (b"MAIL FROM:<a@b.c> RET=FULL", Verb::Mail, 555, "5.5.4"),
            (b"MAIL FROM:<a@b.c> AUTH=<>", Verb::Mail, 555, "5.5.4"),
            (b"RCPT TO:<a@b.c> NOTIFY=NEVER", Verb::Rcpt, 555, "5.5.4"),
            (b"RCPT TO:a@b.c", Verb::Rcpt, 501, "5.1.3"),
            (b"RCPT FROM:<a@b.c>", Verb::Rcpt, 501, "5.5.4"),
            (b"DATA now", Verb::Data, 501, "5.5.4"),
            (b"RSET x", Verb::Rset, 501, "5.5.4"),
            (b"QUIT now", Verb::Quit, 501, "5.5.4"),
            (b"STARTTLS x", Verb::StartTls, 501, "5.5.4"),
            (b"VRFY", Verb::Vrfy, 501, "5.5.4"),
            (b"BDAT", Verb::Bdat, 501, "5.5.4"),
            (b"BDAT x", Verb::Bdat, 501, "5.5.4"),
            (b"BDAT -1", Verb::Bdat, 501, "5.5.4"),
            (b"BDAT 99999999999999999999", Verb::Bdat, 501, "5.5.4"),
        ];
        for &(line, verb, code, enhanced) in cases {
            let (v, r) = parse(line);
            let err = r.expect_err(&String::from_utf8_lossy(line));
            assert_eq!(v, verb, "{}", String::from_utf8_lossy(line));
            assert_eq!(err.code(), code, "{}: {err}", String::from_utf8_lossy(line));
            assert!(
                err.text().starts_with(enhanced),
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
