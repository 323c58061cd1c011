//! The MySQL/MariaDB store: the original daemon's `new_mail` table, one row
//! per accepted recipient, so an existing install (GuerrillaMail's web site
//! reads that table) can swap daemons without touching its schema.
//!
//! What this module owns, and why:
//!
//! - **The row.** Each column gets what the PHP daemon put there (see
//!   `new_mail.md`): `to` rewritten to `primary_mail_host`, `recipient` as
//!   received, the parsed `from`/`subject`/`body`/`charset`/`content_type`,
//!   the whole stored message in `mail`, the per-recipient `hash`. The Go
//!   successor's optional columns (`return_path`, `is_tls`, `message_id`,
//!   `reply_to`, `sender`) are filled when the table has them.
//! - **Value fitting.** The original columns are narrow (`varchar(128)`),
//!   partly 3-byte `utf8` and partly `latin1`, and servers run
//!   `STRICT_TRANS_TABLES`, where one value too long or one character the
//!   column cannot hold fails the INSERT, and with it the whole batch, for
//!   as long as the sender retries. So at connect the store reads each
//!   column's character set and length from `information_schema` and makes
//!   every value fit before binding it (see [`TextLimit::fit`]).
//! - **Group commit.** A batch is one transaction: one multi-row INSERT
//!   (split only to stay under `max_allowed_packet` and the 65535
//!   placeholders of a prepared statement), then the `received_emails`
//!   counter, then COMMIT.
//! - **Reconnecting.** A sqlx pool opens connections on demand, so while
//!   the server is down each commit fails within `timeout_secs` with a
//!   transient error (the clients get `451 4.3.0`) and the first commit
//!   after it is back succeeds, with no restart. A failed transaction is
//!   never retried: once COMMIT has been sent we cannot know whether it
//!   landed, and a retry could store a message twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool,
    MySqlPoolOptions,
};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Executor, Row};

use super::{ErrorKind, Store, StoreError};
use crate::config::{MysqlConfig, is_plain_identifier};
use crate::message::parse::{self, Parsed};
use crate::message::{Envelope, time::Utc};

const NAME: &str = "mysql";

/// The original's counter table; its name was never configurable.
const SETTINGS_TABLE: &str = "gm2_setting";

/// MySQL's limit on placeholders in one prepared statement.
const MAX_PLACEHOLDERS: usize = 65_535;

/// Room left in each INSERT packet for the command header, the parameter
/// types and the null bitmap.
const PACKET_MARGIN: usize = 16 * 1024;

/// Framing counted per bound value: a length prefix of up to 9 bytes and
/// the type's 2 bytes, rounded up.
const PER_VALUE_OVERHEAD: usize = 12;

/// The most our Received header adds to a message.
const RECEIVED_ALLOWANCE: usize = 2 * 1024;

/// The original DDL (from the original README), with the configured table
/// name in place of `new_mail`.
const CREATE_NEW_MAIL: &str = "CREATE TABLE IF NOT EXISTS `{table}` (
  `mail_id` int(11) NOT NULL auto_increment,
  `date` datetime NOT NULL,
  `from` varchar(128) character set utf8 NOT NULL,
  `to` varchar(128) character set utf8 NOT NULL,
  `subject` varchar(255) character set utf8 NOT NULL,
  `body` text NOT NULL,
  `charset` varchar(32) character set utf8 NOT NULL,
  `mail` longblob NOT NULL,
  `spam_score` float NOT NULL,
  `hash` char(32) character set latin1 NOT NULL,
  `content_type` varchar(64) character set latin1 NOT NULL,
  `recipient` varchar(128) character set latin1 NOT NULL,
  `has_attach` int(11) NOT NULL,
  `ip_addr` varchar(64) NOT NULL,
  PRIMARY KEY (`mail_id`), KEY `to` (`to`), KEY `hash` (`hash`), KEY `date` (`date`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8";

/// The original DDL of the counter table.
const CREATE_GM2_SETTING: &str = "CREATE TABLE IF NOT EXISTS `gm2_setting` (
  `id` int(11) NOT NULL auto_increment,
  `setting_value` int(11) NOT NULL,
  `date` datetime NOT NULL,
  `setting_name` varchar(128) character set utf8 NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8";

/// The counter row the original increments once per stored row.
const INSERT_COUNTER_ROW: &str =
    "INSERT INTO `gm2_setting` (`setting_value`, `date`, `setting_name`)
  SELECT 0, UTC_TIMESTAMP(), 'received_emails' FROM DUAL
  WHERE NOT EXISTS (SELECT 1 FROM `gm2_setting` WHERE `setting_name` = 'received_emails')";

/// Adds the rows of a commit to the counter. `LEAST` saturates at the
/// column's maximum: under strict mode an overflowing `int(11)` would
/// otherwise fail every commit, and a counter must never stop the mail.
const BUMP_COUNTER: &str =
    "UPDATE `gm2_setting` SET `setting_value` = LEAST(`setting_value` + ?, ?)
  WHERE `setting_name` = 'received_emails' LIMIT 1";

/// Every column we may write, in the order of the INSERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Date,
    To,
    From,
    Subject,
    Body,
    Charset,
    Mail,
    SpamScore,
    Hash,
    ContentType,
    Recipient,
    HasAttach,
    IpAddr,
    ReturnPath,
    IsTls,
    MessageId,
    ReplyTo,
    Sender,
}

impl Field {
    const ALL: [Field; 18] = [
        Field::Date,
        Field::To,
        Field::From,
        Field::Subject,
        Field::Body,
        Field::Charset,
        Field::Mail,
        Field::SpamScore,
        Field::Hash,
        Field::ContentType,
        Field::Recipient,
        Field::HasAttach,
        Field::IpAddr,
        Field::ReturnPath,
        Field::IsTls,
        Field::MessageId,
        Field::ReplyTo,
        Field::Sender,
    ];

    fn column(self) -> &'static str {
        match self {
            Field::Date => "date",
            Field::To => "to",
            Field::From => "from",
            Field::Subject => "subject",
            Field::Body => "body",
            Field::Charset => "charset",
            Field::Mail => "mail",
            Field::SpamScore => "spam_score",
            Field::Hash => "hash",
            Field::ContentType => "content_type",
            Field::Recipient => "recipient",
            Field::HasAttach => "has_attach",
            Field::IpAddr => "ip_addr",
            Field::ReturnPath => "return_path",
            Field::IsTls => "is_tls",
            Field::MessageId => "message_id",
            Field::ReplyTo => "reply_to",
            Field::Sender => "sender",
        }
    }

    /// The original table has it; the rest are the Go successor's additions.
    fn required(self) -> bool {
        !matches!(
            self,
            Field::ReturnPath | Field::IsTls | Field::MessageId | Field::ReplyTo | Field::Sender
        )
    }

    /// Differs between the recipients of one message.
    fn per_recipient(self) -> bool {
        matches!(self, Field::To | Field::Recipient | Field::Hash)
    }
}

/// Which characters a column's character set can store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repertoire {
    /// `utf8mb4`: all of Unicode.
    Unicode,
    /// `utf8mb3` (what `character set utf8` means in the original DDL):
    /// the Basic Multilingual Plane only. Anything beyond it (emoji, the
    /// characters UTF-8 encodes in 4 bytes) becomes U+FFFD.
    Bmp,
    /// MariaDB's and MySQL's `latin1`, which is Windows-1252 with its five
    /// undefined bytes mapped to the C1 controls they share a number with.
    /// Anything else becomes `?`.
    Latin1,
    /// `ascii`, and any character set this module does not know (stored
    /// as ASCII to be safe). Anything else becomes `?`.
    Ascii,
}

/// The characters at 0x80..=0x9F of MariaDB's `latin1` other than the C1
/// controls (Windows-1252).
const CP1252_HIGH: [char; 27] = [
    '\u{20AC}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{02C6}',
    '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{017D}', '\u{2018}', '\u{2019}', '\u{201C}',
    '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}',
    '\u{0153}', '\u{017E}', '\u{0178}',
];

impl Repertoire {
    /// From `information_schema.COLUMNS.CHARACTER_SET_NAME`; `None` for an
    /// unknown set, which the caller stores as ASCII.
    fn from_charset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "utf8mb4" => Some(Repertoire::Unicode),
            "utf8mb3" | "utf8" => Some(Repertoire::Bmp),
            "latin1" => Some(Repertoire::Latin1),
            "ascii" => Some(Repertoire::Ascii),
            _ => None,
        }
    }

    /// `c` if the column can hold it, else its replacement.
    fn store(self, c: char) -> char {
        match self {
            Repertoire::Unicode => c,
            Repertoire::Bmp if u32::from(c) > 0xFFFF => char::REPLACEMENT_CHARACTER,
            Repertoire::Bmp => c,
            Repertoire::Latin1 if in_latin1(c) => c,
            Repertoire::Ascii if c.is_ascii() => c,
            Repertoire::Latin1 | Repertoire::Ascii => '?',
        }
    }

    /// Bytes `c` (already passed through [`Repertoire::store`]) takes in
    /// the column.
    fn stored_len(self, c: char) -> usize {
        match self {
            Repertoire::Unicode | Repertoire::Bmp => c.len_utf8(),
            Repertoire::Latin1 | Repertoire::Ascii => 1,
        }
    }

    /// Cheap check that `s` needs no replacement and its UTF-8 length is
    /// its stored length (the fast path of [`TextLimit::fit`]).
    fn holds_as_is(self, s: &str) -> bool {
        match self {
            Repertoire::Unicode => true,
            // The lead byte of every 4-byte UTF-8 sequence is 0xF0..=0xF4.
            Repertoire::Bmp => s.bytes().all(|b| b < 0xF0),
            Repertoire::Latin1 | Repertoire::Ascii => s.is_ascii(),
        }
    }
}

fn in_latin1(c: char) -> bool {
    matches!(c, '\0'..='\u{7F}' | '\u{A0}'..='\u{FF}')
        || matches!(c, '\u{81}' | '\u{8D}' | '\u{8F}' | '\u{90}' | '\u{9D}')
        || CP1252_HIGH.contains(&c)
}

/// What a character column can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TextLimit {
    repertoire: Repertoire,
    /// `CHARACTER_MAXIMUM_LENGTH`: characters for `VARCHAR`/`CHAR`.
    max_chars: usize,
    /// `CHARACTER_OCTET_LENGTH`: bytes, the real limit of `TEXT`.
    max_bytes: usize,
}

impl TextLimit {
    /// Makes `value` storable in the column, borrowing when it already is:
    ///
    /// - a character the column's set cannot hold is replaced: U+FFFD in
    ///   `utf8mb3`, `?` in `latin1` and `ascii` (what MySQL itself writes
    ///   outside strict mode);
    /// - then the value is cut at a character boundary to the column's
    ///   length in characters and in bytes, whichever is reached first.
    fn fit<'a>(&self, value: &'a str) -> Cow<'a, str> {
        if value.len() <= self.max_chars.min(self.max_bytes) && self.repertoire.holds_as_is(value) {
            return Cow::Borrowed(value);
        }
        let mut owned: Option<String> = None;
        let (mut chars, mut bytes) = (0usize, 0usize);
        for (i, c) in value.char_indices() {
            let stored = self.repertoire.store(c);
            let len = self.repertoire.stored_len(stored);
            if chars == self.max_chars || bytes + len > self.max_bytes {
                return match owned {
                    Some(s) => Cow::Owned(s),
                    None => Cow::Borrowed(&value[..i]),
                };
            }
            if stored != c && owned.is_none() {
                owned = Some(value[..i].to_owned());
            }
            if let Some(s) = &mut owned {
                s.push(stored);
            }
            chars += 1;
            bytes += len;
        }
        match owned {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(value),
        }
    }
}

/// How a value is made to fit its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// A character column.
    Text(TextLimit),
    /// A binary column (`mail` is a `longblob`): cut at this many bytes.
    Bytes(usize),
    /// Numbers and dates: nothing to fit.
    Other,
}

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone)]
struct ColumnInfo {
    data_type: String,
    charset: Option<String>,
    max_chars: Option<i64>,
    max_bytes: Option<i64>,
    /// `CHARACTER_SETS.MAXLEN`: bytes per character at most.
    bytes_per_char: Option<i64>,
}

fn to_usize(v: Option<i64>) -> usize {
    v.and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX)
}

impl ColumnInfo {
    /// The fitting rule for this column; an unknown character set is
    /// named in the second value so the caller can warn about it.
    fn fit(&self) -> (Fit, Option<&str>) {
        let max_chars = to_usize(self.max_chars);
        let max_bytes = to_usize(self.max_bytes);
        if let Some(cs) = &self.charset {
            return match Repertoire::from_charset(cs) {
                Some(repertoire) => (
                    Fit::Text(TextLimit {
                        repertoire,
                        max_chars,
                        max_bytes,
                    }),
                    None,
                ),
                None => {
                    // ASCII fits every character set we might meet, at no
                    // more than its widest character per byte.
                    let per = to_usize(self.bytes_per_char).clamp(1, 4);
                    (
                        Fit::Text(TextLimit {
                            repertoire: Repertoire::Ascii,
                            max_chars: max_chars.min(max_bytes / per),
                            max_bytes,
                        }),
                        Some(cs.as_str()),
                    )
                }
            };
        }
        let binary = matches!(
            self.data_type.to_ascii_lowercase().as_str(),
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
        );
        if binary {
            (Fit::Bytes(max_bytes), None)
        } else {
            (Fit::Other, None)
        }
    }
}

/// The columns this table has and how to fill them, fixed at connect.
#[derive(Debug, Clone)]
struct Layout {
    /// The columns we write, in INSERT order, with their fitting rules.
    fields: Vec<(Field, Fit)>,
    /// `INSERT INTO `t` (...) VALUES `
    insert_head: String,
    /// `(?, ?, ..., 0, ...)`: one row's placeholders.
    row_sql: String,
    /// Placeholders per row.
    binds_per_row: usize,
}

impl Layout {
    fn new(table: &str, columns: &HashMap<String, ColumnInfo>) -> Result<Self, StoreError> {
        let mut fields = Vec::new();
        let mut missing = Vec::new();
        for field in Field::ALL {
            match columns.get(field.column()) {
                Some(info) => {
                    let (fit, unknown) = info.fit();
                    if let Some(cs) = unknown {
                        tracing::warn!(
                            table,
                            column = field.column(),
                            charset = cs,
                            "unknown character set: non-ASCII characters are stored as '?'"
                        );
                    }
                    fields.push((field, fit));
                }
                None if field.required() => missing.push(field.column()),
                None => {}
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::permanent(
                NAME,
                format!(
                    "table `{table}` lacks the column(s) {} of the original new_mail schema",
                    missing.join(", ")
                ),
            ));
        }
        let names: Vec<String> = fields
            .iter()
            .map(|(f, _)| format!("`{}`", f.column()))
            .collect();
        let marks: Vec<&str> = fields
            .iter()
            .map(|(f, _)| match f {
                // The original stored 0: scoring happens further up the stack.
                Field::SpamScore => "0",
                _ => "?",
            })
            .collect();
        Ok(Self {
            insert_head: format!("INSERT INTO `{table}` ({}) VALUES ", names.join(", ")),
            row_sql: format!("({})", marks.join(", ")),
            binds_per_row: marks.iter().filter(|m| **m == "?").count(),
            fields,
        })
    }

    fn insert_sql(&self, rows: usize) -> String {
        let mut sql =
            String::with_capacity(self.insert_head.len() + rows * (self.row_sql.len() + 1));
        sql.push_str(&self.insert_head);
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&self.row_sql);
        }
        sql
    }

    fn fit_of(&self, field: Field) -> Option<Fit> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, fit)| *fit)
    }
}

/// One value ready to bind.
#[derive(Debug, Clone)]
enum Bound<'a> {
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Int(i32),
    Bool(bool),
}

impl<'a> Bound<'a> {
    /// `value` fitted to `fit`.
    fn text(value: Cow<'a, str>, fit: Fit) -> Self {
        match (fit, value) {
            (Fit::Text(limit), Cow::Borrowed(s)) => Bound::Text(limit.fit(s)),
            (Fit::Text(limit), Cow::Owned(s)) => {
                Bound::Text(Cow::Owned(limit.fit(&s).into_owned()))
            }
            (Fit::Bytes(max), Cow::Borrowed(s)) => {
                Bound::Bytes(Cow::Borrowed(&s.as_bytes()[..s.len().min(max)]))
            }
            (Fit::Bytes(max), Cow::Owned(s)) => {
                let mut b = s.into_bytes();
                b.truncate(max);
                Bound::Bytes(Cow::Owned(b))
            }
            (Fit::Other, v) => Bound::Text(v),
        }
    }

    /// Bytes on the wire, for the packet budget.
    fn size(&self) -> usize {
        PER_VALUE_OVERHEAD
            + match self {
                Bound::Text(s) => s.len(),
                Bound::Bytes(b) => b.len(),
                Bound::Int(_) => 4,
                Bound::Bool(_) => 1,
            }
    }

    /// Whether fitting altered a value of `original_len` bytes.
    fn changed_from(&self, original_len: usize) -> bool {
        match self {
            Bound::Text(Cow::Owned(_)) => true,
            Bound::Text(s) => s.len() != original_len,
            Bound::Bytes(b) => b.len() != original_len,
            _ => false,
        }
    }

    fn bind<'q>(&self, q: Query<'q, MySql, MySqlArguments>) -> Query<'q, MySql, MySqlArguments> {
        match self {
            Bound::Text(s) => q.bind(s.as_ref()),
            Bound::Bytes(b) => q.bind(b.as_ref()),
            Bound::Int(n) => q.bind(*n),
            Bound::Bool(b) => q.bind(*b),
        }
    }
}

/// The values of one message: those its rows share, and those of each
/// recipient (`to`, `recipient`, `hash`), fitted once.
struct MessageRows<'a> {
    /// One entry per bound column, in layout order (`spam_score` is a
    /// literal, not bound); `None` where the value is per recipient.
    shared: Vec<Option<Bound<'a>>>,
    shared_size: usize,
    /// Per recipient, in layout order of the per-recipient fields.
    recipients: Vec<Vec<Bound<'a>>>,
}

/// A row: a message and one of its recipients.
#[derive(Debug, Clone, Copy)]
struct RowRef {
    message: usize,
    recipient: usize,
}

/// Turns envelopes into bound rows: everything about a commit that needs
/// no connection, so it is tested without one.
#[derive(Debug, Clone)]
struct RowBuilder {
    layout: Layout,
    primary_mail_host: Option<String>,
    /// The server's `max_allowed_packet`, in bytes.
    max_packet: usize,
}

/// The MySQL/MariaDB store.
pub struct MysqlStore {
    pool: MySqlPool,
    table: String,
    rows: RowBuilder,
    /// The counter's ceiling, or `None` when there is no `gm2_setting`.
    counter_max: Option<i64>,
    /// Per statement; also the pool's acquire (and so connect) timeout.
    timeout: Duration,
}

impl RowBuilder {
    /// The recipient as `new_mail.to` records it.
    fn mailbox<'a>(&self, recipient: &'a str) -> Cow<'a, str> {
        match &self.primary_mail_host {
            Some(host) => Cow::Owned(parse::rewrite_to_host(recipient, host)),
            None => Cow::Borrowed(recipient),
        }
    }

    /// Fits the values of one message, once for all its recipients.
    fn message_rows<'a>(&self, e: &'a Envelope, defaults: &'a Parsed) -> MessageRows<'a> {
        let p = e.parsed.as_ref().unwrap_or(defaults);
        let mut shared = Vec::with_capacity(self.layout.fields.len());
        let mut shared_size = 0;
        for &(field, fit) in &self.layout.fields {
            let text = |s: &'a str| {
                let b = Bound::text(Cow::Borrowed(s), fit);
                if b.changed_from(s.len()) {
                    tracing::debug!(id = %e.id, column = field.column(), "value fitted to its column");
                }
                b
            };
            let value = match field {
                Field::To | Field::Recipient | Field::Hash => None,
                Field::SpamScore => continue,
                Field::Date => Some(Bound::Text(Cow::Owned(
                    Utc::from_system(e.received_at).sql_datetime(),
                ))),
                Field::From => Some(text(&p.from)),
                Field::Subject => Some(text(&p.subject)),
                Field::Body => Some(text(&p.body)),
                Field::Charset => Some(text(&p.charset)),
                Field::ContentType => Some(text(&p.content_type)),
                Field::Mail => Some(match fit {
                    Fit::Bytes(max) if e.raw.len() > max => {
                        tracing::warn!(id = %e.id, size = e.raw.len(), column_bytes = max,
                            "message cut short to fit the mail column");
                        Bound::Bytes(Cow::Borrowed(&e.raw[..max]))
                    }
                    _ => Bound::Bytes(Cow::Borrowed(&e.raw[..])),
                }),
                Field::HasAttach => Some(Bound::Int(i32::from(p.has_attach))),
                Field::IpAddr => Some(Bound::text(
                    Cow::Owned(e.client.ip().to_canonical().to_string()),
                    fit,
                )),
                Field::ReturnPath => Some(text(&e.mail_from)),
                Field::IsTls => Some(Bound::Bool(e.tls)),
                Field::MessageId => Some(text(&p.message_id)),
                // Parsed does not extract Reply-To: and Sender: (yet); the
                // successor left them empty when absent, too.
                Field::ReplyTo | Field::Sender => Some(text("")),
            };
            if let Some(v) = &value {
                shared_size += v.size();
            }
            shared.push(value);
        }
        let recipients = e
            .recipients
            .iter()
            .enumerate()
            .map(|(i, rcpt)| {
                let to = self.mailbox(rcpt);
                let hash = match e.hashes.get(i) {
                    Some(h) => Cow::Borrowed(h.as_str()),
                    // The config requires the hash step; should it be
                    // missing, compute what it would have.
                    None => Cow::Owned(parse::hash(&to, &p.from, &p.subject, &p.body)),
                };
                self.layout
                    .fields
                    .iter()
                    .filter(|(f, _)| f.per_recipient())
                    .map(|&(f, fit)| match f {
                        Field::To => Bound::text(to.clone(), fit),
                        Field::Recipient => Bound::text(Cow::Borrowed(rcpt.as_str()), fit),
                        _ => Bound::text(hash.clone(), fit),
                    })
                    .collect()
            })
            .collect();
        MessageRows {
            shared,
            shared_size,
            recipients,
        }
    }

    /// Groups the rows into INSERTs, each under the packet budget and the
    /// placeholder limit. A row that fits no packet is a permanent error.
    fn plan(
        &self,
        batch: &[Arc<Envelope>],
        messages: &[MessageRows<'_>],
    ) -> Result<Vec<Vec<RowRef>>, StoreError> {
        let budget = self.max_packet.saturating_sub(PACKET_MARGIN);
        let max_rows = (MAX_PLACEHOLDERS / self.layout.binds_per_row.max(1)).max(1);
        let mut chunks: Vec<Vec<RowRef>> = Vec::new();
        let mut current: Vec<RowRef> = Vec::new();
        let mut current_size = 0;
        for (m, msg) in messages.iter().enumerate() {
            for (r, values) in msg.recipients.iter().enumerate() {
                let size = msg.shared_size + values.iter().map(Bound::size).sum::<usize>();
                if size > budget {
                    return Err(StoreError::permanent(
                        NAME,
                        format!(
                            "message {} needs a {size}-byte row, over the server's \
                             max_allowed_packet ({}); raise it",
                            batch[m].id, self.max_packet
                        ),
                    ));
                }
                if !current.is_empty()
                    && (current.len() == max_rows || current_size + size > budget)
                {
                    chunks.push(std::mem::take(&mut current));
                    current_size = 0;
                }
                current.push(RowRef {
                    message: m,
                    recipient: r,
                });
                current_size += size;
            }
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        Ok(chunks)
    }

    /// One INSERT with the values of `rows` bound.
    fn insert_query(
        &self,
        rows: &[RowRef],
        messages: &[MessageRows<'_>],
    ) -> Query<'static, MySql, MySqlArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.layout.insert_sql(rows.len())));
        for row in rows {
            let msg = &messages[row.message];
            let mut own = msg.recipients[row.recipient].iter();
            for value in &msg.shared {
                // A `None` slot is the next per-recipient value, in order.
                q = match value.as_ref().or_else(|| own.next()) {
                    Some(v) => v.bind(q),
                    None => q,
                };
            }
        }
        q
    }
}

impl MysqlStore {
    /// Connects, creates the tables if configured to, and reads the
    /// table's columns and the server's `max_allowed_packet`.
    pub async fn connect(
        cfg: &MysqlConfig,
        primary_mail_host: Option<String>,
    ) -> Result<Self, StoreError> {
        if !is_plain_identifier(&cfg.table) {
            return Err(StoreError::permanent(
                NAME,
                format!("table {:?} is not a plain identifier", cfg.table),
            ));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        let pool = pool(&cfg.url, timeout, 2)?;
        let mut conn = tokio::time::timeout(timeout, pool.acquire())
            .await
            .map_err(|_| StoreError::transient(NAME, "connect timed out"))?
            .map_err(|e| classify("connect", e))?;
        if cfg.create_tables {
            create_tables(&mut conn, &cfg.table).await?;
        }
        let columns = read_columns(&mut conn, &cfg.table).await?;
        if columns.is_empty() {
            return Err(StoreError::permanent(
                NAME,
                format!(
                    "table `{}` does not exist (create_tables = true creates it)",
                    cfg.table
                ),
            ));
        }
        let layout = Layout::new(&cfg.table, &columns)?;
        let counter_max = counter_ceiling(&mut conn).await?;
        let max_packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify("read max_allowed_packet", e))?;
        let optional: Vec<&str> = layout
            .fields
            .iter()
            .filter(|(f, _)| !f.required())
            .map(|(f, _)| f.column())
            .collect();
        tracing::info!(
            table = %cfg.table,
            optional_columns = %optional.join(","),
            counter = counter_max.is_some(),
            max_allowed_packet = max_packet,
            "mysql store ready"
        );
        Ok(Self {
            pool,
            table: cfg.table.clone(),
            rows: RowBuilder {
                layout,
                primary_mail_host,
                max_packet: usize::try_from(max_packet).unwrap_or(0),
            },
            counter_max,
            timeout,
        })
    }

    /// Warns when a message of `max_message_size` octets could not be
    /// stored: its row would exceed the server's `max_allowed_packet`, or
    /// the `mail` column is too small to hold it whole.
    pub fn warn_if_packet_too_small(&self, max_message_size: u64) {
        let message = usize::try_from(max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_add(RECEIVED_ALLOWANCE);
        let mut row = PACKET_MARGIN;
        for (field, fit) in &self.rows.layout.fields {
            let column = match (field, fit) {
                (Field::Mail, _) => message,
                // No other value is longer than the message it comes from.
                (_, Fit::Text(l)) => l.max_bytes.min(message),
                (_, Fit::Bytes(n)) => (*n).min(message),
                (_, Fit::Other) => 8,
            };
            row = row.saturating_add(column + PER_VALUE_OVERHEAD);
        }
        if row > self.rows.max_packet {
            tracing::warn!(
                max_allowed_packet = self.rows.max_packet,
                needed = row,
                max_message_size,
                "the server's max_allowed_packet is smaller than a row for a message of \
                 max_message_size: larger messages cannot be stored and are answered 451 \
                 (raise max_allowed_packet or lower max_message_size)"
            );
        }
        if let Some(Fit::Bytes(n)) = self.rows.layout.fit_of(Field::Mail)
            && n < message
        {
            tracing::warn!(
                table = %self.table,
                mail_column_bytes = n,
                max_message_size,
                "the mail column is smaller than a message of max_message_size: \
                 larger messages are stored cut short"
            );
        }
    }

    /// The transaction: the INSERTs, the counter, COMMIT. On error, says
    /// whether COMMIT had been sent (the outcome is then unknown).
    async fn write(
        &self,
        conn: &mut MySqlConnection,
        chunks: &[Vec<RowRef>],
        messages: &[MessageRows<'_>],
    ) -> Result<(), (StoreError, bool)> {
        let before = |e| (e, false);
        self.timed("BEGIN", conn.execute("BEGIN"))
            .await
            .map_err(before)?;
        let mut rows = 0u64;
        for chunk in chunks {
            let done = self
                .timed(
                    "INSERT",
                    self.rows.insert_query(chunk, messages).execute(&mut *conn),
                )
                .await
                .map_err(before)?;
            if done.rows_affected() != chunk.len() as u64 {
                return Err(before(StoreError::permanent(
                    NAME,
                    format!(
                        "INSERT stored {} of {} rows",
                        done.rows_affected(),
                        chunk.len()
                    ),
                )));
            }
            rows += done.rows_affected();
        }
        if let Some(max) = self.counter_max {
            let bump = sqlx::query(BUMP_COUNTER)
                .bind(i64::try_from(rows).unwrap_or(i64::MAX))
                .bind(max);
            self.timed("UPDATE gm2_setting", bump.execute(&mut *conn))
                .await
                .map_err(before)?;
        }
        self.timed("COMMIT", conn.execute("COMMIT"))
            .await
            .map_err(|e| (e, true))?;
        Ok(())
    }

    /// Runs one statement under the statement timeout.
    async fn timed<T>(
        &self,
        what: &str,
        statement: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(result) => result.map_err(|e| classify(what, e)),
            Err(_) => Err(StoreError::transient(
                NAME,
                format!("{what} timed out after {} s", self.timeout.as_secs()),
            )),
        }
    }
}

impl Store for MysqlStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        let defaults = Parsed::default();
        let messages: Vec<MessageRows<'_>> = batch
            .iter()
            .map(|e| self.rows.message_rows(e, &defaults))
            .collect();
        let chunks = self.rows.plan(batch, &messages)?;
        if chunks.is_empty() {
            return Ok(());
        }
        // Nothing has been sent yet: a failed acquire is plainly transient.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| classify("connect", e))?;
        match self.write(&mut conn, &chunks, &messages).await {
            Ok(()) => Ok(()),
            Err((error, commit_sent)) => {
                // The connection's state is unknown (a statement may still
                // run, a transaction may be open): never hand it out again.
                conn.close_on_drop();
                if commit_sent {
                    tracing::warn!(
                        store = NAME,
                        batch = batch.len(),
                        error = %error.message,
                        "COMMIT sent but not confirmed: these messages may be stored \
                         although they are answered 451; not retried, so never twice"
                    );
                }
                Err(error)
            }
        }
    }
}

/// Creates the original tables under their configured names, and the
/// counter row, if missing.
async fn create_tables(conn: &mut MySqlConnection, table: &str) -> Result<(), StoreError> {
    let ddl = CREATE_NEW_MAIL.replace("{table}", table);
    for (what, sql) in [
        ("create the mail table", ddl.as_str()),
        ("create gm2_setting", CREATE_GM2_SETTING),
        ("insert the received_emails row", INSERT_COUNTER_ROW),
    ] {
        conn.execute(AssertSqlSafe(sql))
            .await
            .map_err(|e| classify(what, e))?;
    }
    Ok(())
}

/// The columns of `table` in the current database, by name.
async fn read_columns(
    conn: &mut MySqlConnection,
    table: &str,
) -> Result<HashMap<String, ColumnInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.COLUMN_NAME, c.DATA_TYPE, c.CHARACTER_SET_NAME,
                CAST(c.CHARACTER_MAXIMUM_LENGTH AS SIGNED),
                CAST(c.CHARACTER_OCTET_LENGTH AS SIGNED),
                CAST(s.MAXLEN AS SIGNED)
         FROM information_schema.COLUMNS c
         LEFT JOIN information_schema.CHARACTER_SETS s
                ON s.CHARACTER_SET_NAME = c.CHARACTER_SET_NAME
         WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = ?",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify("read the table's columns", e))?;
    let decode = |e| classify("read the table's columns", e);
    let mut columns = HashMap::new();
    for row in rows {
        let name: String = row.try_get(0).map_err(decode)?;
        columns.insert(
            name.to_ascii_lowercase(),
            ColumnInfo {
                data_type: row.try_get(1).map_err(decode)?,
                charset: row.try_get(2).map_err(decode)?,
                max_chars: row.try_get(3).map_err(decode)?,
                max_bytes: row.try_get(4).map_err(decode)?,
                bytes_per_char: row.try_get(5).map_err(decode)?,
            },
        );
    }
    Ok(columns)
}

/// The largest value `gm2_setting.setting_value` holds, or `None` (with a
/// warning) when there is no such table to count in.
async fn counter_ceiling(conn: &mut MySqlConnection) -> Result<Option<i64>, StoreError> {
    let column: Option<(String, String)> = sqlx::query_as(
        "SELECT DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'setting_value'",
    )
    .bind(SETTINGS_TABLE)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| classify("read gm2_setting's columns", e))?;
    let Some((data_type, column_type)) = column else {
        tracing::warn!("no gm2_setting.setting_value: the received_emails counter is not kept");
        return Ok(None);
    };
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM `gm2_setting` WHERE `setting_name` = 'received_emails'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify("read gm2_setting", e))?;
    if rows == 0 {
        tracing::warn!(
            "gm2_setting has no received_emails row: the counter is not kept until one is added"
        );
    }
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    Ok(Some(
        match (data_type.to_ascii_lowercase().as_str(), unsigned) {
            ("tinyint", false) => i64::from(i8::MAX),
            ("tinyint", true) => i64::from(u8::MAX),
            ("smallint", false) => i64::from(i16::MAX),
            ("smallint", true) => i64::from(u16::MAX),
            ("mediumint", false) => (1 << 23) - 1,
            ("mediumint", true) => (1 << 24) - 1,
            ("int", false) => i64::from(i32::MAX),
            ("int", true) => i64::from(u32::MAX),
            _ => i64::MAX,
        },
    ))
}

/// MySQL/MariaDB error numbers a retry can get past: locks, deadlocks,
/// connection limits, a server shutting down or out of space, read-only
/// during a fail-over, a killed or interrupted statement.
const TRANSIENT_ERRORS: [u16; 18] = [
    1021, // ER_DISK_FULL
    1030, // ER_GET_ERRNO (storage engine error)
    1040, // ER_CON_COUNT_ERROR
    1053, // ER_SERVER_SHUTDOWN
    1114, // ER_RECORD_FILE_FULL
    1152, // ER_ABORTING_CONNECTION
    1158, // ER_NET_READ_ERROR
    1159, // ER_NET_READ_INTERRUPTED
    1160, // ER_NET_ERROR_ON_WRITE
    1161, // ER_NET_WRITE_INTERRUPTED
    1180, // ER_ERROR_DURING_COMMIT
    1203, // ER_TOO_MANY_USER_CONNECTIONS
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK
    1290, // ER_OPTION_PREVENTS_STATEMENT (--read-only)
    1317, // ER_QUERY_INTERRUPTED
    1836, // ER_READ_ONLY_MODE
    1927, // ER_CONNECTION_KILLED (MariaDB)
];

/// Sorts a sqlx error into transient (the network, the pool, a busy
/// server) or permanent (the schema, the data, the credentials).
fn classify(what: &str, e: sqlx::Error) -> StoreError {
    let kind = error_kind(&e);
    let message = format!("{what}: {e}");
    match kind {
        ErrorKind::Transient => StoreError::transient(NAME, message),
        ErrorKind::Permanent => StoreError::permanent(NAME, message),
    }
}

fn error_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => ErrorKind::Transient,
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) if TRANSIENT_ERRORS.contains(&my.number()) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
        _ => ErrorKind::Permanent,
    }
}

/// Opens a pool for the recipient check: `timeout` bounds each connect.
pub fn check_pool(url: &str, timeout: Duration) -> Result<MySqlPool, StoreError> {
    pool(url, timeout, 8)
}

/// A pool whose connections use utf8mb4 and time out after `timeout`.
fn pool(url: &str, timeout: Duration, max_connections: u32) -> Result<MySqlPool, StoreError> {
    let options = MySqlConnectOptions::from_str(url)
        .map_err(|e| StoreError::permanent(NAME, format!("url: {e}")))?
        // Whatever the server's default, values travel as real UTF-8; each
        // column converts them to its own set (which fitting made possible).
        .charset("utf8mb4");
    Ok(MySqlPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(timeout)
        // A ping before each use finds a connection the server or a
        // network device closed, so it costs a reconnect, not a 451.
        .test_before_acquire(true)
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn limit(repertoire: Repertoire, max_chars: usize, max_bytes: usize) -> TextLimit {
        TextLimit {
            repertoire,
            max_chars,
            max_bytes,
        }
    }

    #[test]
    fn fitting_replaces_what_the_column_cannot_hold_and_cuts_at_a_character() {
        use Repertoire::*;
        let e_acute_40k = "é".repeat(40_000);
        let e_acute_cut = "é".repeat(32_767);
        let euro_a = format!("a{}", "€".repeat(21_845));
        let euro_a_cut = format!("a{}", "€".repeat(21_844));
        let emoji_30k = "😀".repeat(30_000);
        let fffd_cut = "\u{FFFD}".repeat(21_845);
        // (column, input, stored, borrowed: no copy was needed)
        let cases: Vec<(TextLimit, &str, &str, bool)> = vec![
            // varchar(128) utf8mb3, the original `from` and `to`.
            (
                limit(Bmp, 128, 384),
                "plain@example.com",
                "plain@example.com",
                true,
            ),
            (limit(Bmp, 128, 384), "", "", true),
            (limit(Bmp, 128, 384), "Grüße", "Grüße", true),
            (limit(Bmp, 128, 384), "a😀b", "a\u{FFFD}b", false),
            (limit(Bmp, 3, 9), "abcdef", "abc", true),
            (limit(Bmp, 3, 9), "ü😀xyz", "ü\u{FFFD}x", false),
            // TEXT utf8mb3, the original `body`: 65535 bytes is the limit.
            (limit(Bmp, 65_535, 65_535), &e_acute_40k, &e_acute_cut, true),
            (limit(Bmp, 65_535, 65_535), &euro_a, &euro_a_cut, true),
            (limit(Bmp, 65_535, 65_535), &emoji_30k, &fffd_cut, false),
            // latin1 (Windows-1252 in MariaDB): `recipient`, `content_type`.
            (limit(Latin1, 128, 128), "Grüße", "Grüße", true),
            (limit(Latin1, 128, 128), "€‚ƒ„…Ÿ", "€‚ƒ„…Ÿ", true),
            (
                limit(Latin1, 128, 128),
                "\u{81}\u{8D}\u{8F}\u{90}\u{9D}",
                "\u{81}\u{8D}\u{8F}\u{90}\u{9D}",
                true,
            ),
            (limit(Latin1, 128, 128), "\u{80}\u{9F}", "??", false),
            (
                limit(Latin1, 128, 128),
                "日本@example.com",
                "??@example.com",
                false,
            ),
            (limit(Latin1, 128, 128), "a😀", "a?", false),
            (limit(Latin1, 4, 4), "aé日bc", "aé?b", false),
            (limit(Ascii, 10, 10), "aé", "a?", false),
            // utf8mb4: nothing is replaced, only cut.
            (limit(Unicode, 3, 12), "😀😀😀😀", "😀😀😀", true),
            (limit(Unicode, 10, 5), "😀😀", "😀", true),
            (limit(Unicode, 10, 3), "aé😀", "aé", true),
        ];
        for (i, (column, input, stored, borrowed)) in cases.into_iter().enumerate() {
            let got = column.fit(input);
            assert_eq!(got, stored, "case {i}: {column:?}");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                borrowed,
                "case {i}: borrowed"
            );
            let chars = got.chars().count();
            let bytes: usize = got.chars().map(|c| column.repertoire.stored_len(c)).sum();
            assert!(
                chars <= column.max_chars && bytes <= column.max_bytes,
                "case {i}"
            );
        }
    }

    #[test]
    fn every_character_latin1_accepts_is_kept_and_no_other() {
        // MariaDB's latin1 maps each byte 0x00..=0xFF to one character;
        // those 256 characters are exactly the ones kept.
        let kept = (0..=0x2FFF_u32)
            .filter_map(char::from_u32)
            .filter(|&c| Repertoire::Latin1.store(c) == c)
            .count();
        assert_eq!(kept, 256);
    }

    fn info(
        data_type: &str,
        charset: Option<&str>,
        chars: i64,
        bytes: i64,
        per: i64,
    ) -> ColumnInfo {
        ColumnInfo {
            data_type: data_type.into(),
            charset: charset.map(Into::into),
            max_chars: (chars > 0).then_some(chars),
            max_bytes: (bytes > 0).then_some(bytes),
            bytes_per_char: (per > 0).then_some(per),
        }
    }

    /// The original table as MariaDB 10.11's information_schema shows it.
    fn original_columns() -> HashMap<String, ColumnInfo> {
        [
            ("mail_id", info("int", None, 0, 0, 0)),
            ("date", info("datetime", None, 0, 0, 0)),
            ("from", info("varchar", Some("utf8mb3"), 128, 384, 3)),
            ("to", info("varchar", Some("utf8mb3"), 128, 384, 3)),
            ("subject", info("varchar", Some("utf8mb3"), 255, 765, 3)),
            ("body", info("text", Some("utf8mb3"), 65_535, 65_535, 3)),
            ("charset", info("varchar", Some("utf8mb3"), 32, 96, 3)),
            (
                "mail",
                info("longblob", None, 4_294_967_295, 4_294_967_295, 0),
            ),
            ("spam_score", info("float", None, 0, 0, 0)),
            ("hash", info("char", Some("latin1"), 32, 32, 1)),
            ("content_type", info("varchar", Some("latin1"), 64, 64, 1)),
            ("recipient", info("varchar", Some("latin1"), 128, 128, 1)),
            ("has_attach", info("int", None, 0, 0, 0)),
            ("ip_addr", info("varchar", Some("utf8mb3"), 64, 192, 3)),
        ]
        .into_iter()
        .map(|(n, i)| (n.to_owned(), i))
        .collect()
    }

    #[test]
    fn column_rules_from_information_schema() {
        let cols = original_columns();
        let cases = [
            ("from", Fit::Text(limit(Repertoire::Bmp, 128, 384))),
            ("body", Fit::Text(limit(Repertoire::Bmp, 65_535, 65_535))),
            ("recipient", Fit::Text(limit(Repertoire::Latin1, 128, 128))),
            ("mail", Fit::Bytes(4_294_967_295)),
            ("date", Fit::Other),
            ("has_attach", Fit::Other),
        ];
        for (name, fit) in cases {
            assert_eq!(cols[name].fit(), (fit, None), "{name}");
        }
        // An unknown set stores ASCII, at most max_bytes / MAXLEN of it.
        let ucs2 = info("varchar", Some("ucs2"), 10, 20, 2);
        assert_eq!(
            ucs2.fit(),
            (Fit::Text(limit(Repertoire::Ascii, 10, 20)), Some("ucs2"))
        );
        let big5 = info("varchar", Some("big5"), 10, 20, 2);
        assert_eq!(big5.fit().0, Fit::Text(limit(Repertoire::Ascii, 10, 20)));
        let varbinary = info("varbinary", None, 16, 16, 0);
        assert_eq!(varbinary.fit().0, Fit::Bytes(16));
    }

    #[test]
    fn layout_of_the_original_table_and_of_the_successors() {
        let cols = original_columns();
        let l = Layout::new("new_mail", &cols).unwrap();
        let names: Vec<_> = l.fields.iter().map(|(f, _)| f.column()).collect();
        assert_eq!(
            names,
            [
                "date",
                "to",
                "from",
                "subject",
                "body",
                "charset",
                "mail",
                "spam_score",
                "hash",
                "content_type",
                "recipient",
                "has_attach",
                "ip_addr"
            ]
        );
        assert_eq!(l.binds_per_row, 12);
        assert_eq!(
            l.insert_sql(2),
            "INSERT INTO `new_mail` (`date`, `to`, `from`, `subject`, `body`, `charset`, \
             `mail`, `spam_score`, `hash`, `content_type`, `recipient`, `has_attach`, \
             `ip_addr`) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?),\
             (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)"
        );

        let mut go = cols.clone();
        for name in ["return_path", "message_id", "reply_to", "sender"] {
            go.insert(name.into(), info("varchar", Some("utf8mb3"), 255, 765, 3));
        }
        go.insert("is_tls".into(), info("bit", None, 0, 0, 0));
        let l = Layout::new("mail2", &go).unwrap();
        assert_eq!(l.binds_per_row, 17);
        assert!(l.insert_sql(1).ends_with("`is_tls`, `message_id`, `reply_to`, `sender`) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));

        let mut broken = cols;
        broken.remove("hash");
        broken.remove("recipient");
        let err = Layout::new("new_mail", &broken).unwrap_err().to_string();
        assert!(err.contains("hash") && err.contains("recipient"), "{err}");
    }

    fn envelope(rcpts: &[&str], raw: &'static [u8], parsed: Option<Parsed>) -> Arc<Envelope> {
        Arc::new(Envelope {
            received_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_318_133),
            client: "[::ffff:192.0.2.7]:2525".parse().unwrap(),
            tls: true,
            mail_from: "bounce@sender.test".into(),
            smtputf8: true,
            parsed,
            ..Envelope::fixture(rcpts, raw)
        })
    }

    fn builder(columns: &HashMap<String, ColumnInfo>, max_packet: usize) -> RowBuilder {
        RowBuilder {
            layout: Layout::new("new_mail", columns).unwrap(),
            primary_mail_host: Some("mail.test".into()),
            max_packet,
        }
    }

    /// The bound values of row `r` of message `m`, as text, by column.
    fn row_values(
        b: &RowBuilder,
        msg: &MessageRows<'_>,
        r: usize,
    ) -> HashMap<&'static str, String> {
        let mut own = msg.recipients[r].iter();
        let bound = b
            .layout
            .fields
            .iter()
            .filter(|(f, _)| *f != Field::SpamScore);
        bound
            .zip(&msg.shared)
            .map(|((f, _), v)| {
                let v = v.as_ref().or_else(|| own.next()).unwrap();
                let text = match v {
                    Bound::Text(s) => s.to_string(),
                    Bound::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                    Bound::Int(n) => n.to_string(),
                    Bound::Bool(b) => b.to_string(),
                };
                (f.column(), text)
            })
            .collect()
    }

    #[test]
    fn rows_without_parsed_fields_use_the_defaults_and_fit_their_columns() {
        let b = builder(&original_columns(), 16 << 20);
        let e = envelope(
            &["Ünï@Other.Example", "b@x.test"],
            b"Subject: x\r\n\r\nhi\r\n",
            None,
        );
        let defaults = Parsed::default();
        let msg = b.message_rows(&e, &defaults);
        assert_eq!(msg.recipients.len(), 2);
        let row = row_values(&b, &msg, 0);
        assert_eq!(row["date"], "2026-12-03 17:15:33");
        assert_eq!(
            row["to"], "Ünï@mail.test",
            "utf8 column keeps it, rewritten"
        );
        assert_eq!(row["recipient"], "Ünï@Other.Example", "latin1 holds Ü, ï");
        assert_eq!(row["from"], "");
        assert_eq!(row["charset"], "ISO-8859-1");
        assert_eq!(row["content_type"], "text/plain");
        assert_eq!(row["mail"], "Subject: x\r\n\r\nhi\r\n");
        assert_eq!(row["has_attach"], "0");
        assert_eq!(row["ip_addr"], "192.0.2.7", "IPv4-mapped shown as IPv4");
        assert_eq!(row["hash"], parse::hash("Ünï@mail.test", "", "", ""));
        assert_eq!(row_values(&b, &msg, 1)["to"], "b@mail.test");
        assert!(!row.contains_key("return_path"));
    }

    #[test]
    fn rows_fill_the_successors_columns_when_present() {
        let mut cols = original_columns();
        for name in ["return_path", "message_id", "reply_to", "sender"] {
            cols.insert(name.into(), info("varchar", Some("utf8mb3"), 255, 765, 3));
        }
        cols.insert("is_tls".into(), info("tinyint", None, 0, 0, 0));
        let b = builder(&cols, 16 << 20);
        let parsed = Parsed {
            message_id: "abc@sender.test".into(),
            subject: format!("{} 😀", "s".repeat(300)),
            has_attach: true,
            ..Parsed::default()
        };
        let mut e = (*envelope(&["r@example.com"], b"x", Some(parsed))).clone();
        e.hashes = vec!["0123456789abcdef0123456789abcdef".into()];
        let defaults = Parsed::default();
        let msg = b.message_rows(&e, &defaults);
        let row = row_values(&b, &msg, 0);
        assert_eq!(row["return_path"], "bounce@sender.test");
        assert_eq!(row["is_tls"], "true");
        assert_eq!(row["message_id"], "abc@sender.test");
        assert_eq!((row["reply_to"].as_str(), row["sender"].as_str()), ("", ""));
        assert_eq!(row["hash"], "0123456789abcdef0123456789abcdef");
        assert_eq!(row["subject"], "s".repeat(255), "cut to varchar(255)");
        assert_eq!(row["has_attach"], "1");
    }

    #[test]
    fn inserts_split_under_the_packet_and_placeholder_limits() {
        let cols = original_columns();
        let defaults = Parsed::default();
        let one = envelope(&["a@example.com"], &[b'x'; 1000], None);
        let probe = builder(&cols, usize::MAX);
        let row = {
            let m = probe.message_rows(&one, &defaults);
            m.shared_size + m.recipients[0].iter().map(Bound::size).sum::<usize>()
        };
        // Room for exactly three rows per INSERT.
        let b = builder(&cols, PACKET_MARGIN + 3 * row + row / 2);
        let batch: Vec<_> = (0..4)
            .map(|_| envelope(&["a@example.com", "b@example.com"], &[b'x'; 1000], None))
            .collect();
        let msgs: Vec<_> = batch.iter().map(|e| b.message_rows(e, &defaults)).collect();
        let plan = b.plan(&batch, &msgs).unwrap();
        let sizes: Vec<_> = plan.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 2]);
        // The rows are all there, in order.
        let order: Vec<_> = plan
            .iter()
            .flatten()
            .map(|r| (r.message, r.recipient))
            .collect();
        assert_eq!(
            order,
            (0..4).flat_map(|m| [(m, 0), (m, 1)]).collect::<Vec<_>>()
        );

        // 65535 placeholders / 12 per row = 5461 rows per INSERT.
        let many: Vec<String> = (0..6000).map(|i| format!("r{i}@example.com")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let big = vec![envelope(&many, b"x", None)];
        let b = builder(&cols, 1 << 30);
        let msgs: Vec<_> = big.iter().map(|e| b.message_rows(e, &defaults)).collect();
        let sizes: Vec<_> = b.plan(&big, &msgs).unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [5461, 539]);

        // A row that fits no packet is refused, naming the message.
        let b = builder(&cols, PACKET_MARGIN + row / 2);
        let msgs = vec![b.message_rows(&one, &defaults)];
        let err = b.plan(std::slice::from_ref(&one), &msgs).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains(one.id.as_str()), "{}", err.message);
    }

    #[test]
    fn errors_are_sorted_into_transient_and_permanent() {
        let cases = [
            (
                sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                ErrorKind::Transient,
            ),
            (sqlx::Error::PoolTimedOut, ErrorKind::Transient),
            (sqlx::Error::Protocol("eof".into()), ErrorKind::Transient),
            (
                sqlx::Error::ColumnNotFound("x".into()),
                ErrorKind::Permanent,
            ),
            (sqlx::Error::RowNotFound, ErrorKind::Permanent),
        ];
        for (e, kind) in cases {
            assert_eq!(error_kind(&e), kind, "{e}");
        }
    }

    #[test]
    fn table_names_must_be_plain_identifiers() {
        for (name, ok) in [
            ("new_mail", true),
            ("Mail$2", true),
            ("_", true),
            ("123", false),
            ("", false),
            ("new mail", false),
            ("a`b", false),
            ("db.new_mail", false),
            ("ünï", false),
        ] {
            assert_eq!(is_plain_identifier(name), ok, "{name:?}");
        }
        assert!(is_plain_identifier(&"a".repeat(64)));
        assert!(!is_plain_identifier(&"a".repeat(65)));
        let err = crate::Config::from_toml(
            "[store]\nkind = \"mysql\"\nurl = \"mysql://root@127.0.0.1/test\"\ntable = \"x; DROP\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plain identifier"), "{err}");
    }
}
