//! The embedded SQLite store: WAL mode, one writer connection, one
//! transaction per group commit, `synchronous=FULL` unless told otherwise.
//!
//! rusqlite is synchronous; each commit runs on tokio's blocking pool with
//! the connection moved in and back out, so the runtime threads never wait
//! on fsync.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};

use super::{Store, StoreError};
use crate::config::{SqliteConfig, Synchronous};
use crate::message::{Envelope, time::Utc};

const NAME: &str = "sqlite";

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY NOT NULL, -- time-sortable message id
    received_at TEXT NOT NULL,             -- RFC 3339, UTC
    remote_ip   TEXT NOT NULL,
    helo        TEXT NOT NULL,
    mail_from   TEXT NOT NULL,             -- '' for the null reverse-path
    size        INTEGER NOT NULL,          -- octets of raw
    tls         INTEGER NOT NULL,          -- 0 or 1
    protocol    TEXT NOT NULL,             -- SMTP, ESMTP, ESMTPS, UTF8SMTP...
    body_type   TEXT NOT NULL,             -- 7BIT, 8BITMIME, BINARYMIME
    raw         BLOB NOT NULL              -- Received header + message, CRLF
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
";

/// The SQLite store.
pub struct SqliteStore {
    /// `None` only while a commit runs on the blocking pool (or after it
    /// panicked there, in which case the next commit reopens).
    conn: Option<Connection>,
    cfg: SqliteConfig,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and its schema.
    pub fn open(cfg: &SqliteConfig) -> Result<Self, StoreError> {
        let conn = open_connection(cfg)?;
        Ok(Self {
            conn: Some(conn),
            cfg: cfg.clone(),
        })
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
        .and_then(|()| conn.execute_batch(SCHEMA))
        .and_then(|()| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
        .map_err(|e| fail("cannot create the schema in", &e))?;
    Ok(conn)
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

/// Writes a batch in one transaction; a failure rolls all of it back.
fn write_batch(conn: &mut Connection, batch: &[Arc<Envelope>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut message = tx.prepare_cached(
            "INSERT INTO messages (id, received_at, remote_ip, helo, mail_from, size, tls, protocol, body_type, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut recipient =
            tx.prepare_cached("INSERT INTO recipients (message_id, address) VALUES (?1, ?2)")?;
        for e in batch {
            let id = e.id.as_str();
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
                &e.raw[..],
            ])?;
            for r in &e.recipients {
                recipient.execute(params![id, r])?;
            }
        }
    }
    tx.commit()
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => open_connection(&self.cfg)?,
        };
        let batch = batch.to_vec();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = write_batch(&mut conn, &batch).map_err(classify);
            (conn, r)
        })
        .await
        .map_err(|e| StoreError::transient(NAME, format!("commit task failed: {e}")))?;
        self.conn = Some(conn);
        result
    }
}

/// Opens an existing database read-only, for tools and tests.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageId;
    use std::time::SystemTime;

    fn envelope(rcpts: &[&str]) -> Arc<Envelope> {
        Arc::new(Envelope {
            id: MessageId::generate(SystemTime::now()),
            received_at: SystemTime::now(),
            client: "192.0.2.9:25".parse().unwrap(),
            helo: "client.test".into(),
            esmtp: true,
            tls: false,
            mail_from: "s@sender.test".into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            body: Default::default(),
            smtputf8: false,
            raw: bytes::Bytes::from_static(b"Received: x\r\n\r\nhello\r\n"),
            header_len: 13,
        })
    }

    #[tokio::test]
    async fn commits_a_batch_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("sub/dir/m.db"),
            ..SqliteConfig::default()
        };
        let mut store = SqliteStore::open(&cfg).unwrap();
        let a = envelope(&["a@example.com", "b@example.com"]);
        let b = envelope(&["c@example.com"]);
        store.commit(&[a.clone(), b.clone()]).await.unwrap();
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
    }

    #[tokio::test]
    async fn a_failing_batch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SqliteConfig {
            path: dir.path().join("m.db"),
            ..SqliteConfig::default()
        };
        let mut store = SqliteStore::open(&cfg).unwrap();
        let a = envelope(&["a@example.com"]);
        store.commit(std::slice::from_ref(&a)).await.unwrap();
        // The second batch repeats an id: its first message must not stay.
        let fresh = envelope(&["b@example.com"]);
        let err = store.commit(&[fresh.clone(), a]).await.unwrap_err();
        assert!(err.message.contains("UNIQUE"), "{err}");
        let db = open_read_only(&cfg.path).unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        // The store keeps working after a failure.
        store.commit(&[fresh]).await.unwrap();
    }
}
