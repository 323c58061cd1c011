//! The embedded SQLite store: WAL mode, one writer connection, one
//! transaction per group commit, `synchronous=FULL` unless told otherwise.
//!
//! rusqlite is synchronous; the store's writer is a thread of its own
//! (see [`BlockingStore`]), so the runtime threads never wait on fsync.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, MAIN_DB, OpenFlags, TransactionBehavior, params};

use super::{BlockingStore, StoreError};
use crate::config::{SqliteConfig, Synchronous};
use crate::message::{Envelope, Parsed, time::Utc};

const NAME: &str = "sqlite";

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// Page size of a new database. A commit writes every page it touched to
/// the WAL, checksums it and fsyncs it: at a few messages per commit that
/// is most of the cost, and it grows with the page. Measured with the
/// benchmark, 16 KiB pages cost a quarter more CPU per 1 KB message than
/// 4 KiB ones and saved nothing on 100 KB messages.
const PAGE_SIZE: u32 = 4_096;

/// Version 3: messages and recipients with the parsed fields; recipients
/// clustered on (message_id, position), so a commit touches one b-tree fewer
/// and a message's recipients read back in RCPT order.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id           TEXT PRIMARY KEY NOT NULL, -- time-sortable message id
    received_at  TEXT NOT NULL,             -- RFC 3339, UTC
    remote_ip    TEXT NOT NULL,
    helo         TEXT NOT NULL,
    mail_from    TEXT NOT NULL,             -- '' for the null reverse-path
    size         INTEGER NOT NULL,          -- octets of raw
    tls          INTEGER NOT NULL,          -- 0 or 1
    protocol     TEXT NOT NULL,             -- SMTP, ESMTP, ESMTPS, UTF8SMTP...
    body_type    TEXT NOT NULL,             -- 7BIT, 8BITMIME, BINARYMIME
    raw          BLOB NOT NULL,             -- Received header + message, CRLF
    subject      TEXT NOT NULL DEFAULT '',  -- decoded to UTF-8
    from_addr    TEXT NOT NULL DEFAULT '',  -- From: address, lower-cased
    to_addr      TEXT NOT NULL DEFAULT '',  -- To: addresses, comma-separated
    date         TEXT NOT NULL DEFAULT '',  -- Date: header, RFC 3339
    message_id   TEXT NOT NULL DEFAULT '',  -- Message-ID: header
    body         TEXT NOT NULL DEFAULT '',  -- preferred body part, UTF-8
    charset      TEXT NOT NULL DEFAULT '',  -- its declared charset
    content_type TEXT NOT NULL DEFAULT '',  -- its content type
    has_attach   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,          -- 0, 1, ... in RCPT order
    address      TEXT NOT NULL,
    hash         TEXT NOT NULL DEFAULT '',  -- the reference's MD5 hash
    PRIMARY KEY (message_id, position)
) WITHOUT ROWID;
-- No index on hash: MD5 keys are random, so each message would dirty a
-- different index page, and every dirty page is written to the WAL and
-- fsynced at each commit (measured: a third of the writer's CPU). Add
-- one if you look messages up by hash.
CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address);
";

/// From version 1 (issue 2's schema) to version 2: the parsed fields.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE messages ADD COLUMN subject      TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN from_addr    TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN to_addr      TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN date         TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN message_id   TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN body         TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN charset      TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN content_type TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN has_attach   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recipients ADD COLUMN hash       TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS recipients_hash ON recipients(hash);
";

/// From version 2 to version 3: recipients clustered on their message.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE recipients_v3 (
    message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    address      TEXT NOT NULL,
    hash         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, position)
) WITHOUT ROWID;
INSERT INTO recipients_v3 (message_id, position, address, hash)
    SELECT message_id, ROW_NUMBER() OVER (PARTITION BY message_id ORDER BY rowid) - 1,
           address, hash
    FROM recipients;
DROP TABLE recipients;
ALTER TABLE recipients_v3 RENAME TO recipients;
CREATE INDEX recipients_address ON recipients(address);
";

/// The SQLite store. Its commits block: it runs with a writer thread of
/// its own ([`BlockingStore`]).
pub struct SqliteStore {
    conn: Connection,
    _checkpointer: Checkpointer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and its schema, and starts
    /// its checkpointer.
    pub fn open(cfg: &SqliteConfig) -> Result<Self, StoreError> {
        let conn = open_connection(cfg)?;
        // Checkpoints run on their own thread; the writer checkpoints only
        // if that one falls far behind.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(classify)?;
        let checkpointer = Checkpointer::start(open_connection(cfg)?)?;
        Ok(Self {
            conn,
            _checkpointer: checkpointer,
        })
    }
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// The WAL size (in pages) at which the writer checkpoints by itself: a
/// safety net for a checkpointer that cannot keep up (64 MiB of 4 KiB pages).
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// Copies the WAL into the database file from a connection and a thread of
/// its own. Measured at 200 clients, the checkpoints SQLite otherwise runs
/// inside a commit took a quarter of the writer's time, during which no
/// message could be committed. A PASSIVE checkpoint never blocks the
/// writer; with `synchronous=FULL` it fsyncs the database before the WAL
/// may be reused, so durability is unchanged.
struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Self, StoreError> {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("gsmtpd-sqlite-ckpt".into())
            .spawn(move || {
                let (lock, wake) = &*stop2;
                loop {
                    let stopped = {
                        let guard = lock.lock().expect("checkpointer lock");
                        let (guard, _) = wake
                            .wait_timeout_while(guard, CHECKPOINT_EVERY, |stop| !*stop)
                            .expect("checkpointer lock");
                        *guard
                    };
                    let r = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
                    if let Err(e) = r {
                        tracing::warn!(store = NAME, error = %e, "checkpoint failed");
                    }
                    if stopped {
                        return;
                    }
                }
            })
            .map_err(|e| {
                StoreError::permanent(NAME, format!("cannot start the checkpointer: {e}"))
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().expect("checkpointer lock") = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_connection(cfg: &SqliteConfig) -> Result<Connection, StoreError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::permanent(NAME, format!("{what} {}: {e}", cfg.path.display()))
    };
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", &e))?;
    }
    let conn = Connection::open_with_flags(
        &cfg.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail("cannot open", &e))?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))
        .map_err(|e| fail("cannot configure", &e))?;
    // Takes effect only on a database that has no content yet, and must
    // come before WAL mode, which fixes the page size.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(|e| fail("cannot configure", &e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| fail("cannot set WAL mode on", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail("WAL mode refused by", &mode));
    }
    let sync = match cfg.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
        .map_err(|e| fail("cannot configure", &e))?;
    migrate(&conn).map_err(|e| fail("cannot create or migrate the schema in", &e))?;
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`], in one transaction.
fn migrate(conn: &Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let has_messages: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| e.to_string())?
        > 0;
    let script = match (version, has_messages) {
        (SCHEMA_VERSION, _) => return Ok(()),
        (0, false) => SCHEMA.to_owned(),
        (1, true) => format!("{MIGRATE_1_TO_2}{MIGRATE_2_TO_3}"),
        (2, true) => MIGRATE_2_TO_3.to_owned(),
        (v, _) if v > SCHEMA_VERSION => {
            return Err(format!(
                "schema version {v} is newer than this gsmtpd ({SCHEMA_VERSION})"
            ));
        }
        (v, _) => return Err(format!("unexpected schema version {v}")),
    };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {script}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    })?;
    if version > 0 {
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "sqlite schema migrated"
        );
    }
    Ok(())
}

fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => StoreError::transient(NAME, e),
        _ => StoreError::permanent(NAME, e),
    }
}

/// Messages larger than this are written into the database a piece at a
/// time rather than bound whole (see `write_batch`).
const STREAM_ABOVE: usize = 1 << 20;

/// `raw` as a bound value, or the zero-filled space it is streamed into.
enum Value<'a> {
    Blob(&'a [u8]),
    ZeroBlob(u64),
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            Value::Blob(b) => {
                rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Blob(b))
            }
            Value::ZeroBlob(n) => rusqlite::types::ToSqlOutput::ZeroBlob(*n),
        })
    }
}

/// Writes a batch in one transaction; a failure rolls all of it back.
fn write_batch(conn: &mut Connection, batch: &[Arc<Envelope>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut message = tx.prepare_cached(
            "INSERT INTO messages (id, received_at, remote_ip, helo, mail_from, size, tls,
                 protocol, body_type, raw, subject, from_addr, to_addr, date, message_id,
                 body, charset, content_type, has_attach)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18, ?19)",
        )?;
        let mut recipient = tx.prepare_cached(
            "INSERT INTO recipients (message_id, position, address, hash) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let unparsed = Parsed {
            charset: String::new(),
            content_type: String::new(),
            ..Parsed::default()
        };
        for e in batch {
            let id = e.id.as_str();
            let p = e.parsed.as_ref().unwrap_or(&unparsed);
            // A large message is streamed into a zero-filled blob after the
            // insert: bound as a value, SQLite would copy it, then copy it
            // again into the record it builds, doubling its memory.
            let streamed = e.raw.len() > STREAM_ABOVE;
            let raw = if streamed {
                Value::ZeroBlob(e.raw.len() as u64)
            } else {
                Value::Blob(&e.raw[..])
            };
            message.execute(params![
                id,
                Utc::from_system(e.received_at).rfc3339(),
                e.client.ip().to_string(),
                e.helo,
                e.mail_from,
                e.raw.len() as i64,
                e.tls,
                crate::message::protocol_name(e.esmtp, e.tls, e.smtputf8),
                e.body.as_str(),
                raw,
                p.subject,
                p.from,
                p.to,
                p.date,
                p.message_id,
                p.body,
                p.charset,
                p.content_type,
                p.has_attach,
            ])?;
            if streamed {
                let rowid = tx.last_insert_rowid();
                let mut blob = tx.blob_open(MAIN_DB, c"messages", c"raw", rowid, false)?;
                blob.write_all_at(&e.raw, 0)?;
            }
            for (i, r) in e.recipients.iter().enumerate() {
                let hash = e.hashes.get(i).map(String::as_str).unwrap_or_default();
                recipient.execute(params![id, i as i64, r, hash])?;
            }
        }
    }
    tx.commit()
}

impl BlockingStore for SqliteStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        // A read through the writer's connection: cheap, never waits for a lock.
        self.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(classify)
    }

    fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        write_batch(&mut self.conn, batch).map_err(classify)
    }
}

/// Opens an existing database read-only, for tools and tests.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(rcpts: &[&str]) -> Arc<Envelope> {
        Arc::new(Envelope {
            header_len: 13,
            ..Envelope::fixture(rcpts, b"Received: x\r\n\r\nhello\r\n")
        })
    }

    #[test]
    fn commits_a_batch_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("sub/dir/m.db"),
            ..SqliteConfig::default()
        };
        let mut store = SqliteStore::open(&cfg).unwrap();
        let a = envelope(&["a@example.com", "b@example.com"]);
        let b = envelope(&["c@example.com"]);
        store.commit(&[a.clone(), b.clone()]).unwrap();
        let db = open_read_only(&cfg.path).unwrap();
        let (raw, size, ip): (Vec<u8>, i64, String) = db
            .query_row(
                "SELECT raw, size, remote_ip FROM messages WHERE id = ?1",
                [a.id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(raw, &a.raw[..]);
        assert_eq!(size, a.raw.len() as i64);
        assert_eq!(ip, "192.0.2.9");
        let n: i64 = db
            .query_row("SELECT count(*) FROM recipients", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let page: u32 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, PAGE_SIZE);
    }

    #[test]
    fn a_large_message_is_streamed_in_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("big.db"),
            ..SqliteConfig::default()
        };
        let mut store = SqliteStore::open(&cfg).unwrap();
        let raw: Vec<u8> = (0..(STREAM_ABOVE + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let small = envelope(&["a@example.com"]);
        let big = Arc::new(Envelope {
            raw: raw.clone().into(),
            ..(*envelope(&["b@example.com"])).clone()
        });
        store.commit(&[small.clone(), big.clone()]).unwrap();
        let db = open_read_only(&cfg.path).unwrap();
        let read = |id: &str| -> (Vec<u8>, i64) {
            db.query_row("SELECT raw, size FROM messages WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        };
        assert_eq!(read(big.id.as_str()), (raw.clone(), raw.len() as i64));
        assert_eq!(read(small.id.as_str()).0, &small.raw[..]);
    }

    /// The schema issue 2 shipped, as a database in the field has it.
    const SCHEMA_V1: &str = "
        CREATE TABLE messages (id TEXT PRIMARY KEY NOT NULL, received_at TEXT NOT NULL,
            remote_ip TEXT NOT NULL, helo TEXT NOT NULL, mail_from TEXT NOT NULL,
            size INTEGER NOT NULL, tls INTEGER NOT NULL, protocol TEXT NOT NULL,
            body_type TEXT NOT NULL, raw BLOB NOT NULL);
        CREATE TABLE recipients (message_id TEXT NOT NULL REFERENCES messages(id)
            ON DELETE CASCADE, address TEXT NOT NULL);
        CREATE INDEX recipients_address ON recipients(address);
        CREATE INDEX recipients_message ON recipients(message_id);
        INSERT INTO messages VALUES ('OLD', '2026-01-01T00:00:00.000Z', '192.0.2.1', 'h',
            'a@b.test', 3, 0, 'ESMTP', '7BIT', X'616263');
        INSERT INTO recipients VALUES ('OLD', 'r@example.com');
        PRAGMA user_version = 1;
    ";

    #[test]
    fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("v1.db"),
            ..SqliteConfig::default()
        };
        Connection::open(&cfg.path)
            .unwrap()
            .execute_batch(SCHEMA_V1)
            .unwrap();
        let mut store = SqliteStore::open(&cfg).unwrap();
        let mut e = (*envelope(&["n@example.com"])).clone();
        e.parsed = Some(crate::message::parse::parse(b"Subject: new\r\n\r\nbody"));
        e.hashes = vec!["0123456789abcdef0123456789abcdef".into()];
        store.commit(&[Arc::new(e.clone())]).unwrap();
        let db = open_read_only(&cfg.path).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let old: (Vec<u8>, String, String) = db
            .query_row(
                "SELECT raw, subject, (SELECT hash FROM recipients WHERE message_id = 'OLD')
                 FROM messages WHERE id = 'OLD'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(old, (b"abc".to_vec(), String::new(), String::new()));
        let new: (String, String, String) = db
            .query_row(
                "SELECT subject, body, (SELECT hash FROM recipients WHERE message_id = m.id)
                 FROM messages m WHERE id = ?1",
                [e.id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            new,
            (
                "new".into(),
                "body".into(),
                "0123456789abcdef0123456789abcdef".into()
            )
        );
        // Version 3: recipients clustered on (message_id, address).
        let ddl: String = db
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'recipients'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            ddl.contains("WITHOUT ROWID") && ddl.contains("PRIMARY KEY (message_id, position)"),
            "{ddl}"
        );
        let indexes: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(indexes, ["recipients_address"]);
        drop(store);
        // Opening again is a no-op.
        SqliteStore::open(&cfg).unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("v9.db"),
            ..SqliteConfig::default()
        };
        Connection::open(&cfg.path)
            .unwrap()
            .execute_batch("CREATE TABLE messages (id TEXT); PRAGMA user_version = 9;")
            .unwrap();
        let err = SqliteStore::open(&cfg).err().expect("refused");
        assert!(err.message.contains("newer"), "{err}");
    }

    #[test]
    fn a_failing_batch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("m.db"),
            ..SqliteConfig::default()
        };
        let mut store = SqliteStore::open(&cfg).unwrap();
        let a = envelope(&["a@example.com"]);
        store.commit(std::slice::from_ref(&a)).unwrap();
        // The second batch repeats an id: its first message must not stay.
        let fresh = envelope(&["b@example.com"]);
        let err = store.commit(&[fresh.clone(), a]).unwrap_err();
        assert!(err.message.contains("UNIQUE"), "{err}");
        let db = open_read_only(&cfg.path).unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        // The store keeps working after a failure.
        store.commit(&[fresh]).unwrap();
    }
}
