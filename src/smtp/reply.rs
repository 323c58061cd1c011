//! SMTP replies: a three-digit code and a text that, for 2xx/4xx/5xx,
//! starts with the RFC 3463 enhanced status code (RFC 2034).
//!
//! Fixed replies are constants so the hot path never formats them; replies
//! that name an address or a limit are built at the point of use.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply line (multi-line replies are written by the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with a fixed text.
    pub const fn new(code: u16, text: &'static str) -> Self {
        Self {
            code,
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with a text built at run time.
    pub fn owned(code: u16, text: String) -> Self {
        Self {
            code,
            text: Cow::Owned(text),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text after the code (enhanced status code included).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends `CODE SP TEXT CRLF` to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa3(self.code).as_slice());
        out.push(b' ');
        out.extend_from_slice(self.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

fn itoa3(code: u16) -> [u8; 3] {
    debug_assert!((200..600).contains(&code));
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

// Positive replies.
pub const OK: Reply = Reply::new(250, "2.0.0 Ok");
pub const MAIL_OK: Reply = Reply::new(250, "2.1.0 Ok");
pub const RCPT_OK: Reply = Reply::new(250, "2.1.5 Ok");
pub const START_DATA: Reply = Reply::new(354, "End data with <CR><LF>.<CR><LF>");
pub const BYE: Reply = Reply::new(221, "2.0.0 Bye");
pub const VRFY: Reply = Reply::new(
    252,
    "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
);

// Syntax and sequence errors (RFC 5321 §4.2.2, RFC 3463 X.5.x).
pub const UNRECOGNIZED: Reply = Reply::new(500, "5.5.2 Error: command not recognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2 Error: line too long");
pub const NUL_IN_COMMAND: Reply = Reply::new(500, "5.5.2 Error: NUL character in command");
pub const BARE_LF_IN_COMMAND: Reply = Reply::new(500, "5.5.2 Error: bare <LF> received");
pub const BARE_CR_IN_COMMAND: Reply = Reply::new(500, "5.5.2 Error: bare <CR> received");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1 Error: command not implemented");
pub const NEED_HELO: Reply = Reply::new(503, "5.5.1 Error: send HELO/EHLO first");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1 Error: nested MAIL command");
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1 Error: need MAIL command");
pub const NEED_RCPT: Reply = Reply::new(503, "5.5.1 Error: need RCPT command");
pub const READY_TLS: Reply = Reply::new(220, "2.0.0 Ready to start TLS");
pub const TLS_ACTIVE: Reply = Reply::new(503, "5.5.1 Error: TLS already active");
pub const TX_IN_PROGRESS: Reply = Reply::new(503, "5.5.1 Error: MAIL transaction in progress");
pub const NEED_TLS: Reply = Reply::new(530, "5.7.0 Must issue a STARTTLS command first");
pub const BDAT_IN_PROGRESS: Reply = Reply::new(503, "5.5.1 Error: BDAT transfer in progress");
pub const DATA_AFTER_BDAT: Reply = Reply::new(503, "5.5.1 Error: DATA not allowed after BDAT");
pub const BINARYMIME_NEEDS_BDAT: Reply =
    Reply::new(503, "5.5.1 Error: BODY=BINARYMIME requires BDAT");
pub const SYNTAX_EHLO: Reply = Reply::new(501, "5.5.4 Syntax: EHLO hostname");
pub const SYNTAX_HELO: Reply = Reply::new(501, "5.5.4 Syntax: HELO hostname");
pub const SYNTAX_MAIL: Reply = Reply::new(501, "5.5.4 Syntax: MAIL FROM:<address>");
pub const SYNTAX_RCPT: Reply = Reply::new(501, "5.5.4 Syntax: RCPT TO:<address>");
pub const SYNTAX_BDAT: Reply = Reply::new(501, "5.5.4 Syntax: BDAT chunk-size [LAST]");
pub const SYNTAX_VRFY: Reply = Reply::new(501, "5.5.4 Syntax: VRFY address");
pub const SYNTAX_NO_ARGS: Reply = Reply::new(501, "5.5.4 Syntax: no parameters allowed");
pub const SYNTAX_PARAM: Reply = Reply::new(501, "5.5.4 Error: bad parameter syntax");
pub const DUPLICATE_PARAM: Reply = Reply::new(501, "5.5.4 Error: duplicate parameter");
pub const BAD_BODY: Reply = Reply::new(
    501,
    "5.5.4 Error: BODY must be 7BIT, 8BITMIME or BINARYMIME",
);
pub const BAD_SIZE: Reply = Reply::new(501, "5.5.4 Error: bad SIZE value");
pub const BAD_SENDER: Reply = Reply::new(501, "5.1.7 Error: bad sender address syntax");
pub const BAD_RECIPIENT: Reply = Reply::new(501, "5.1.3 Error: bad recipient address syntax");
pub const SENDER_PATH_TOO_LONG: Reply = Reply::new(501, "5.1.7 Error: path too long");
pub const RECIPIENT_PATH_TOO_LONG: Reply = Reply::new(501, "5.1.3 Error: path too long");
pub const SENDER_TOO_LONG: Reply = Reply::new(553, "5.1.7 Error: local part or domain too long");
pub const RECIPIENT_TOO_LONG: Reply = Reply::new(553, "5.1.3 Error: local part or domain too long");
pub const NEED_SMTPUTF8: Reply = Reply::new(
    553,
    "5.6.7 Error: non-ASCII address requires the SMTPUTF8 parameter",
);
pub const PARAMS_NEED_EHLO: Reply = Reply::new(555, "5.5.4 Error: parameters require EHLO");

// Policy and limits.
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4 Error: message size exceeds fixed maximum message size",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3 Error: too many recipients");
pub const BARE_NEWLINE_IN_DATA: Reply = Reply::new(
    550,
    "5.6.0 Error: bare <CR> or <LF> in message content (RFC 5321 section 2.3.8)",
);
pub const FORBIDDEN_COMMAND: Reply =
    Reply::new(521, "5.7.0 Error: this is an SMTP server. Goodbye.");
pub const RATE_LIMITED: Reply = Reply::new(
    451,
    "4.7.1 Error: too much mail from your address, try again later",
);
pub const STORE_FAILED: Reply = Reply::new(
    451,
    "4.3.0 Error: temporary storage failure, try again later",
);

/// `250 2.1.5` is for accepted recipients; this one refuses a domain we do not serve.
pub fn relay_denied(address: &str) -> Reply {
    Reply::owned(550, format!("5.7.1 <{address}>: Relay access denied"))
}

/// The recipient check found no such mailbox.
pub fn user_unknown(address: &str) -> Reply {
    Reply::owned(
        550,
        format!("5.1.1 <{address}>: Recipient address rejected: User unknown"),
    )
}

/// The recipient check could not answer in time.
pub fn lookup_failed(address: &str) -> Reply {
    Reply::owned(451, format!("4.3.0 <{address}>: Temporary lookup failure"))
}

/// An ESMTP parameter we do not implement (RFC 5321 §4.1.1.11, RFC 1869).
pub fn unsupported_param(keyword: &str) -> Reply {
    Reply::owned(555, format!("5.5.4 Error: unsupported parameter {keyword}"))
}

/// The final reply after a message was durably stored.
pub fn queued(id: &str) -> Reply {
    Reply::owned(250, format!("2.0.0 Ok: queued as {id}"))
}

/// Appends [`queued`] to `out` without building a `Reply` (once per message).
pub fn write_queued(id: &str, out: &mut Vec<u8>) {
    tracing::debug!(target: "gsmtpd::dialogue", "> 250 2.0.0 Ok: queued as {id}");
    out.extend_from_slice(b"250 2.0.0 Ok: queued as ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `250` for a non-final BDAT chunk.
pub fn chunk_ok(octets: u64) -> Reply {
    Reply::owned(250, format!("2.0.0 Ok: {octets} octets received"))
}

/// Closing replies name the host, as RFC 5321 §4.2 suggests for 421.
pub fn too_many_errors(host: &str) -> Reply {
    Reply::owned(421, format!("4.7.0 {host} Error: too many errors"))
}

/// The command or data timeout expired.
pub fn timeout(host: &str) -> Reply {
    Reply::owned(421, format!("4.4.2 {host} Error: timeout exceeded"))
}

/// The server is at its connection limit.
pub fn too_many_connections(host: &str) -> Reply {
    Reply::owned(421, format!("4.7.0 {host} Error: too many connections"))
}

/// Too many connections from one client address.
pub fn too_many_connections_from(host: &str) -> Reply {
    Reply::owned(
        421,
        format!("4.7.0 {host} Error: too many connections from your address"),
    )
}

/// The server is shutting down.
pub fn shutting_down(host: &str) -> Reply {
    Reply::owned(
        421,
        format!("4.3.2 {host} Service shutting down, try again later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_code_text_crlf() {
        let mut out = Vec::new();
        OK.write_to(&mut out);
        queued("ABC").write_to(&mut out);
        write_queued("ABC", &mut out);
        assert_eq!(
            out,
            b"250 2.0.0 Ok\r\n250 2.0.0 Ok: queued as ABC\r\n250 2.0.0 Ok: queued as ABC\r\n"
        );
    }

    #[test]
    fn every_fixed_error_carries_an_enhanced_code_of_its_class() {
        let all = [
            UNRECOGNIZED,
            LINE_TOO_LONG,
            NUL_IN_COMMAND,
            BARE_LF_IN_COMMAND,
            BARE_CR_IN_COMMAND,
            NOT_IMPLEMENTED,
            NEED_HELO,
            NESTED_MAIL,
            NEED_MAIL,
            NEED_RCPT,
            BDAT_IN_PROGRESS,
            READY_TLS,
            TLS_ACTIVE,
            TX_IN_PROGRESS,
            NEED_TLS,
            DATA_AFTER_BDAT,
            BINARYMIME_NEEDS_BDAT,
            SYNTAX_EHLO,
            SYNTAX_HELO,
            SYNTAX_MAIL,
            SYNTAX_RCPT,
            SYNTAX_BDAT,
            SYNTAX_VRFY,
            SYNTAX_NO_ARGS,
            SYNTAX_PARAM,
            DUPLICATE_PARAM,
            BAD_BODY,
            BAD_SIZE,
            BAD_SENDER,
            BAD_RECIPIENT,
            SENDER_PATH_TOO_LONG,
            RECIPIENT_PATH_TOO_LONG,
            SENDER_TOO_LONG,
            RECIPIENT_TOO_LONG,
            NEED_SMTPUTF8,
            PARAMS_NEED_EHLO,
            MESSAGE_TOO_BIG,
            TOO_MANY_RECIPIENTS,
            BARE_NEWLINE_IN_DATA,
            FORBIDDEN_COMMAND,
            STORE_FAILED,
            RATE_LIMITED,
            OK,
            MAIL_OK,
            RCPT_OK,
            BYE,
            VRFY,
            HELP,
        ];
        for r in all {
            let class = (r.code() / 100).to_string();
            let enhanced = r.text().split(' ').next().unwrap();
            let parts: Vec<&str> = enhanced.split('.').collect();
            assert_eq!(parts.len(), 3, "{r}");
            assert_eq!(parts[0], class, "{r}");
            assert!(parts[1..].iter().all(|p| p.parse::<u16>().is_ok()), "{r}");
        }
    }
}
