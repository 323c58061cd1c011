//! The PostgreSQL store: the same logical record as the SQLite store
//! (`messages` and `recipients`), in PostgreSQL types, written one
//! transaction per group commit.
//!
//! It owns its connection pool, its schema (created when asked, versioned in
//! `gsmtpd_schema` so a later release can migrate it) and the mapping of
//! PostgreSQL failures to transient or permanent store errors. The pool
//! reconnects by itself: while the server is unreachable a commit fails
//! (the client gets `451` and retries) after at most `timeout_secs` spent
//! getting a connection and as long again on the transaction, and the
//! first commit after the server is back succeeds without a restart.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, SqlSafeStr as _};

use super::{Store, StoreError};
use crate::config::PostgresConfig;
use crate::message::{Envelope, Parsed, time::Utc};

const NAME: &str = "postgres";

/// The schema version this code writes, kept in the one row of
/// `gsmtpd_schema`. The numbering is this store's own: its version 1 holds
/// the record of the SQLite store's version 2.
pub const SCHEMA_VERSION: i32 = 1;

/// Version 1. `IF NOT EXISTS` throughout, so creating it over tables an
/// operator made by hand is harmless; the inserts are then checked against
/// whatever is there.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gsmtpd_schema (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one), -- at most one row
    version      integer NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id           text PRIMARY KEY,          -- time-sortable message id
    received_at  timestamptz NOT NULL,
    remote_ip    inet NOT NULL,
    helo         text NOT NULL,
    mail_from    text NOT NULL,             -- '' for the null reverse-path
    size         bigint NOT NULL,           -- octets of raw
    tls          boolean NOT NULL,
    protocol     text NOT NULL,             -- SMTP, ESMTP, ESMTPS, UTF8SMTP...
    body_type    text NOT NULL,             -- 7BIT, 8BITMIME, BINARYMIME
    raw          bytea NOT NULL,            -- Received header + message, CRLF
    subject      text NOT NULL DEFAULT '',  -- decoded to UTF-8
    from_addr    text NOT NULL DEFAULT '',  -- From: address, lower-cased
    to_addr      text NOT NULL DEFAULT '',  -- To: addresses, comma-separated
    date         timestamptz,               -- Date: header; NULL if absent or unreadable
    message_id   text NOT NULL DEFAULT '',  -- Message-ID: header
    body         text NOT NULL DEFAULT '',  -- preferred body part, UTF-8
    charset      text NOT NULL DEFAULT '',  -- its declared charset
    content_type text NOT NULL DEFAULT '',  -- its content type
    has_attach   boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id   text NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address      text NOT NULL,
    hash         text NOT NULL DEFAULT ''   -- the reference's MD5 hash
);
CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
CREATE INDEX IF NOT EXISTS recipients_hash ON recipients(hash);
";

/// Serialises schema creation between gsmtpd processes starting at once
/// against one database: concurrent `CREATE TABLE IF NOT EXISTS` can still
/// collide in the catalog. Any constant works; this one spells "gsmtpd".
const SCHEMA_LOCK: i64 = 0x6773_6d74_7064;

// Both inserts take one array per column and UNNEST them into rows, rather
// than a multi-row VALUES list: the statement text is the same for every
// batch size, so it is prepared once per connection and reused, and the
// number of bind parameters is fixed (19 and 3) instead of growing with the
// batch into PostgreSQL's limit of 65 535 (a batch of 512 messages with 100
// recipients each would need 153 600 for the recipients alone). Timestamps
// and addresses travel as text and are cast on the server, which needs no
// date or network types on our side.
const INSERT_MESSAGES: &str = "
INSERT INTO messages (id, received_at, remote_ip, helo, mail_from, size, tls, protocol,
    body_type, raw, subject, from_addr, to_addr, date, message_id, body, charset,
    content_type, has_attach)
SELECT id, received_at::timestamptz, remote_ip::inet, helo, mail_from, size, tls, protocol,
    body_type, raw, subject, from_addr, to_addr, date::timestamptz, message_id, body, charset,
    content_type, has_attach
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
    $7::bool[], $8::text[], $9::text[], $10::bytea[], $11::text[], $12::text[], $13::text[],
    $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::bool[])
    AS m(id, received_at, remote_ip, helo, mail_from, size, tls, protocol, body_type, raw,
        subject, from_addr, to_addr, date, message_id, body, charset, content_type, has_attach)";

const INSERT_RECIPIENTS: &str = "
INSERT INTO recipients (message_id, address, hash)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])";

/// A PostgreSQL array value (and a protocol message) is capped at 1 GB, so
/// a batch of many large messages cannot go in one statement. Messages are
/// inserted in as few statements as keep each under this many bytes of
/// message data; a typical batch is one statement, and all of them run in
/// the same transaction either way. It also bounds the memory the server
/// needs to receive one statement.
const MAX_STATEMENT_BYTES: usize = 64 << 20;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    /// How long one transaction may take before its batch gets `451`.
    timeout: Duration,
}

impl PostgresStore {
    /// Connects, checks the database, and creates or checks the schema.
    ///
    /// The server must be reachable now: a store that cannot even be set up
    /// should stop the start, not answer `451` forever.
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        // The writer commits one batch at a time, so one connection is all
        // it can use.
        let pool = connect_pool(cfg, 1, Duration::from_secs(cfg.timeout_secs)).await?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| context("cannot connect", e))?;
        check_encoding(&mut conn).await?;
        migrate(&mut conn, cfg.create_tables).await?;
        // Fail at start, not at the first message, if the tables do not
        // have the columns we write (say, made by hand without create_tables).
        for sql in [INSERT_MESSAGES, INSERT_RECIPIENTS] {
            (&mut *conn)
                .prepare(sql.into_sql_str())
                .await
                .map_err(|e| {
                    StoreError::permanent(
                        NAME,
                        format!("the tables do not fit what gsmtpd writes: {e}"),
                    )
                })?;
        }
        Ok(Self {
            pool,
            timeout: Duration::from_secs(cfg.timeout_secs),
        })
    }
}

/// A pool for `cfg`'s database with at most `max` connections, whose
/// acquire (connecting included) gives up after `acquire_timeout`; also
/// used by the recipient check. It connects once before it returns.
pub async fn connect_pool(
    cfg: &PostgresConfig,
    max: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, StoreError> {
    if acquire_timeout.is_zero() {
        return Err(StoreError::permanent(
            NAME,
            "timeout_secs must be greater than 0",
        ));
    }
    let mut options: PgConnectOptions = cfg
        .url
        .parse()
        .map_err(|e| StoreError::permanent(NAME, format!("url: {e}")))?;
    if options.get_application_name().is_none() {
        // Lets an operator tell our sessions apart in pg_stat_activity.
        options = options.application_name("gsmtpd");
    }
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        // A ping before each use costs one round trip per batch and spares
        // a whole batch its 451 when the server restarted while the pooled
        // connection sat idle: the dead one is replaced before the write.
        .test_before_acquire(true)
        .connect_with(options)
        .await
        .map_err(|e| context("cannot connect", e))
}

/// Our text is UTF-8; a database in another encoding would refuse (or
/// mangle) any character it cannot convert, one message at a time.
async fn check_encoding(conn: &mut PgConnection) -> Result<(), StoreError> {
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| context("cannot read the server encoding", e))?;
    // SQL_ASCII stores bytes unchecked, so UTF-8 survives it too.
    if encoding != "UTF8" && encoding != "SQL_ASCII" {
        return Err(StoreError::permanent(
            NAME,
            format!("the database encoding is {encoding}; gsmtpd needs UTF8"),
        ));
    }
    Ok(())
}

/// Creates the schema if asked and it is missing, and refuses a version
/// this code does not know. One transaction, under an advisory lock.
async fn migrate(conn: &mut PgConnection, create_tables: bool) -> Result<(), StoreError> {
    let schema = |e| context("cannot create or check the schema", e);
    let mut tx = conn.begin().await.map_err(schema)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(schema)?;
    let has_version_table: bool =
        sqlx::query_scalar("SELECT to_regclass('gsmtpd_schema') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await
            .map_err(schema)?;
    let version: Option<i32> = if has_version_table {
        sqlx::query_scalar("SELECT max(version) FROM gsmtpd_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(schema)?
    } else {
        None
    };
    match version {
        Some(SCHEMA_VERSION) => {}
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::permanent(
                NAME,
                format!(
                    "schema version {v} (gsmtpd_schema) is newer than this gsmtpd ({SCHEMA_VERSION}): \
                     upgrade gsmtpd"
                ),
            ));
        }
        Some(v) => {
            return Err(StoreError::permanent(
                NAME,
                format!("unexpected schema version {v} in gsmtpd_schema"),
            ));
        }
        // Without create_tables the operator owns the tables; the prepared
        // inserts check them.
        None if !create_tables => {}
        None => {
            sqlx::raw_sql(SCHEMA)
                .execute(&mut *tx)
                .await
                .map_err(schema)?;
            sqlx::query("INSERT INTO gsmtpd_schema (version) VALUES ($1)")
                .bind(SCHEMA_VERSION)
                .execute(&mut *tx)
                .await
                .map_err(schema)?;
            tracing::info!(version = SCHEMA_VERSION, "postgres schema created");
        }
    }
    tx.commit().await.map_err(schema)
}

/// A failure, with what we were doing, as a store error of the right kind.
fn context(what: &str, e: sqlx::Error) -> StoreError {
    let kind = classify(&e);
    StoreError {
        kind,
        ..StoreError::transient(NAME, format!("{what}: {e}"))
    }
}

/// Connection trouble, overload and operator intervention are transient;
/// what the statement itself caused (a constraint, a type, a missing
/// table) needs someone to look.
fn classify(e: &sqlx::Error) -> super::ErrorKind {
    use super::ErrorKind::{Permanent, Transient};
    match e {
        sqlx::Error::Database(db) => match db.code() {
            // SQLSTATE classes (PostgreSQL appendix A): 08 connection
            // exception, 40 transaction rollback (serialization, deadlock),
            // 53 insufficient resources (disk full, out of memory, too many
            // connections), 57 operator intervention (shutdown, cancel), 58
            // system error (I/O).
            Some(code)
                if ["08", "40", "53", "57", "58"]
                    .iter()
                    .any(|c| code.starts_with(c)) =>
            {
                Transient
            }
            _ => Permanent,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Transient,
        _ => Permanent,
    }
}

/// PostgreSQL text cannot hold U+0000, and one such value would fail the
/// whole batch; a message's text may contain it (a QP `=00`, a raw NUL in
/// a header). It becomes U+FFFD, the mark for "a character was here that
/// could not be kept". `raw` is bytea and keeps the NUL.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The `Date:` field as [`Parsed::date`] has it (`YYYY-MM-DDTHH:MM:SSZ` or
/// `...±HH:MM`), if PostgreSQL will take it as a timestamptz. A header
/// can claim 31 April or a +20:00 zone; cast as is, that would fail the
/// whole batch, so such a date is stored as NULL (the raw header remains).
fn timestamp(date: &str) -> Option<&str> {
    let b = date.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let zone_ok = match &b[19..] {
        b"Z" => true,
        [b'+' | b'-', _, _, b':', _, _] => {
            // PostgreSQL takes offsets up to 15:59.
            num(20, 2)? <= 15 && num(23, 2)? <= 59
        }
        _ => false,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    let valid = zone_ok
        && (1..=9999).contains(&year)
        && (1..=month_days).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    valid.then_some(date)
}

/// One batch as column arrays, borrowing from the envelopes.
#[derive(Default)]
struct MessageColumns<'a> {
    id: Vec<&'a str>,
    received_at: Vec<String>,
    remote_ip: Vec<String>,
    helo: Vec<Cow<'a, str>>,
    mail_from: Vec<Cow<'a, str>>,
    size: Vec<i64>,
    tls: Vec<bool>,
    protocol: Vec<&'static str>,
    body_type: Vec<&'static str>,
    raw: Vec<&'a [u8]>,
    subject: Vec<Cow<'a, str>>,
    from_addr: Vec<Cow<'a, str>>,
    to_addr: Vec<Cow<'a, str>>,
    date: Vec<Option<&'a str>>,
    message_id: Vec<Cow<'a, str>>,
    body: Vec<Cow<'a, str>>,
    charset: Vec<Cow<'a, str>>,
    content_type: Vec<Cow<'a, str>>,
    has_attach: Vec<bool>,
}

impl<'a> MessageColumns<'a> {
    fn push(&mut self, e: &'a Envelope, unparsed: &'a Parsed) {
        let p = e.parsed.as_ref().unwrap_or(unparsed);
        self.id.push(e.id.as_str());
        self.received_at
            .push(Utc::from_system(e.received_at).rfc3339());
        self.remote_ip.push(e.client.ip().to_string());
        self.helo.push(text(&e.helo));
        self.mail_from.push(text(&e.mail_from));
        self.size.push(e.raw.len() as i64);
        self.tls.push(e.tls);
        self.protocol
            .push(crate::message::protocol_name(e.esmtp, e.tls, e.smtputf8));
        self.body_type.push(e.body.as_str());
        self.raw.push(&e.raw);
        self.subject.push(text(&p.subject));
        self.from_addr.push(text(&p.from));
        self.to_addr.push(text(&p.to));
        self.date.push(timestamp(&p.date));
        self.message_id.push(text(&p.message_id));
        self.body.push(text(&p.body));
        self.charset.push(text(&p.charset));
        self.content_type.push(text(&p.content_type));
        self.has_attach.push(p.has_attach);
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(INSERT_MESSAGES)
            .bind(self.id)
            .bind(self.received_at)
            .bind(self.remote_ip)
            .bind(self.helo)
            .bind(self.mail_from)
            .bind(self.size)
            .bind(self.tls)
            .bind(self.protocol)
            .bind(self.body_type)
            .bind(self.raw)
            .bind(self.subject)
            .bind(self.from_addr)
            .bind(self.to_addr)
            .bind(self.date)
            .bind(self.message_id)
            .bind(self.body)
            .bind(self.charset)
            .bind(self.content_type)
            .bind(self.has_attach)
            .execute(conn)
            .await
            .map(drop)
    }
}

/// Roughly what a message adds to the insert: its raw bytes and its
/// decoded body (the other columns are small).
fn weight(e: &Envelope) -> usize {
    e.raw.len() + e.parsed.as_ref().map_or(0, |p| p.body.len())
}

/// `batch` cut, in order, into runs of at most `cap` bytes by [`weight`];
/// a message heavier than `cap` makes a run of its own.
fn statement_chunks(batch: &[Arc<Envelope>], cap: usize) -> Vec<&[Arc<Envelope>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in batch.iter().enumerate() {
        let w = weight(e);
        if i > start && bytes + w > cap {
            chunks.push(&batch[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += w;
    }
    if start < batch.len() {
        chunks.push(&batch[start..]);
    }
    chunks
}

/// Writes `batch` in one transaction; an error anywhere rolls all of it
/// back (the transaction is rolled back when dropped uncommitted).
async fn write_batch(conn: &mut PgConnection, batch: &[Arc<Envelope>]) -> Result<(), sqlx::Error> {
    // What SQLite records for a message the pipeline did not parse.
    let unparsed = Parsed {
        charset: String::new(),
        content_type: String::new(),
        ..Parsed::default()
    };
    let mut tx = conn.begin().await?;
    for chunk in statement_chunks(batch, MAX_STATEMENT_BYTES) {
        let mut columns = MessageColumns::default();
        for e in chunk {
            columns.push(e, &unparsed);
        }
        columns.insert(&mut tx).await?;
    }

    let rows = batch.iter().map(|e| e.recipients.len()).sum();
    let (mut ids, mut addresses, mut hashes) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for e in batch {
        for (i, r) in e.recipients.iter().enumerate() {
            ids.push(e.id.as_str());
            addresses.push(text(r));
            hashes.push(e.hashes.get(i).map(String::as_str).unwrap_or_default());
        }
    }
    sqlx::query(INSERT_RECIPIENTS)
        .bind(ids)
        .bind(addresses)
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&mut self) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| context("no connection", e))?;
        match tokio::time::timeout(self.timeout, sqlx::query("SELECT 1").execute(&mut *conn)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(context("ping failed", e)),
            Err(_) => Err(StoreError::timed_out(NAME, self.timeout)),
        }
    }

    /// One attempt, never retried here: a failure answers `451` and the
    /// client retries. A retry of our own could not be safe anyway: when
    /// the connection fails after COMMIT was sent, the batch may or may not
    /// be stored, and only a new delivery attempt (new id) is honest.
    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        // Bounded by the pool's acquire timeout, connecting included.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| context("no connection", e))?;
        let result = tokio::time::timeout(self.timeout, write_batch(&mut conn, batch)).await;
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => context("commit failed", e),
            Err(_) => StoreError::transient(
                NAME,
                format!("commit timed out after {} s", self.timeout.as_secs()),
            ),
        };
        // After an I/O error or a timeout the connection may be mid-reply
        // or dead; a fresh one costs little next to reusing a bad one.
        conn.close_on_drop();
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(size: usize) -> Arc<Envelope> {
        Arc::new(Envelope::fixture(&["r@example.com"], &vec![b'x'; size]))
    }

    #[test]
    fn batches_split_by_bytes_in_order() {
        let sizes = |chunks: Vec<&[Arc<Envelope>]>| -> Vec<Vec<usize>> {
            chunks
                .iter()
                .map(|c| c.iter().map(|e| e.raw.len()).collect())
                .collect()
        };
        let batch: Vec<_> = [3, 4, 3, 11, 1, 10].map(envelope).into();
        assert_eq!(
            sizes(statement_chunks(&batch, 10)),
            [vec![3, 4, 3], vec![11], vec![1], vec![10]]
        );
        assert_eq!(
            sizes(statement_chunks(&batch, 100)),
            [vec![3, 4, 3, 11, 1, 10]]
        );
        assert!(statement_chunks(&[], 10).is_empty());
    }

    #[test]
    fn nul_becomes_a_replacement_character() {
        assert!(matches!(text("plain 😀"), Cow::Borrowed("plain 😀")));
        assert_eq!(text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn dates_postgresql_would_refuse_become_null() {
        for ok in [
            "2026-12-03T17:15:33Z",
            "2026-12-03T17:15:33+01:00",
            "2024-02-29T00:00:00-15:59",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+15:00",
        ] {
            assert_eq!(timestamp(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "2023-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T17:60:00Z",
            "2026-12-03T17:15:60Z",
            "2026-12-03T17:15:33+16:00",
            "2026-12-03T17:15:33+01:60",
            "2026-12-03T17:15:33",
            "2026-12-03T17:15:33+0100",
            "2026-12-03 17:15:33Z",
            "2026-1a-03T17:15:33Z",
            "2026-12-03T17:15:33Zjunk",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }
}
