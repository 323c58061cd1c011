//! The recipient check and the fan-out, end to end with real SQLite stores.

use gsmtpd::config::{Backend, RecipientCheckConfig, SqliteConfig, StoreConfig};

use crate::harness::Server;

/// A server whose SQLite database holds a `users` table, checked at RCPT.
async fn server_with_users(cache_ttl_secs: u64) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.db");
    let conn = rusqlite::Connection::open(&users).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (address TEXT PRIMARY KEY);
         INSERT INTO users VALUES ('alice@example.com'), ('bob@example.com');",
    )
    .unwrap();
    drop(conn);
    let server = Server::start_with(move |c| {
        // The users live in the store's own database, as in the original.
        let Backend::Sqlite(s) = &mut c.store[0].backend else {
            unreachable!()
        };
        s.path = users.clone();
        c.recipient_check = Some(RecipientCheckConfig {
            store: "sqlite".into(),
            query: "SELECT 1 FROM users WHERE address = ?".into(),
            timeout_ms: 2000,
            cache_ttl_secs,
        });
    })
    .await;
    // Keep the directory alive as long as the server.
    std::mem::forget(dir);
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn known_unknown_and_failed_lookups() {
    let server = server_with_users(0).await;
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<s@sender.test>", 250).await;
    c.expect("RCPT TO:<alice@example.com>", 250).await;
    // The lookup is case-insensitive.
    c.expect("RCPT TO:<Bob@Example.COM>", 250).await;
    let r = c.expect("RCPT TO:<mallory@example.com>", 550).await;
    assert_eq!(
        r.text,
        "5.1.1 <mallory@example.com>: Recipient address rejected: User unknown"
    );
    // Postmaster is never looked up (RFC 5321 §4.5.1).
    c.expect("RCPT TO:<postmaster>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: checked\r\n\r\n.\r\n").await;
    let id = c.reply().await.queued_id();
    assert_eq!(
        server.recipients(&id),
        ["alice@example.com", "Bob@Example.COM", "postmaster"]
    );

    // The lookup breaks (the table is gone): 451, never 550.
    let db = rusqlite::Connection::open(&server.db).unwrap();
    db.execute_batch("ALTER TABLE users RENAME TO users_gone")
        .unwrap();
    c.expect("MAIL FROM:<s@sender.test>", 250).await;
    let r = c.expect("RCPT TO:<alice@example.com>", 451).await;
    assert_eq!(
        r.text,
        "4.3.0 <alice@example.com>: Temporary lookup failure"
    );
    db.execute_batch("ALTER TABLE users_gone RENAME TO users")
        .unwrap();
    c.expect("RCPT TO:<alice@example.com>", 250).await;
    // An open transaction would hold the shutdown for its grace period.
    c.expect("RSET", 250).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_cached_for_their_ttl() {
    let server = server_with_users(3600).await;
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<s@sender.test>", 250).await;
    c.expect("RCPT TO:<alice@example.com>", 250).await;
    c.expect("RCPT TO:<mallory@example.com>", 550).await;
    // With the table gone, cached answers still hold; a new address fails.
    let db = rusqlite::Connection::open(&server.db).unwrap();
    db.execute_batch("DROP TABLE users").unwrap();
    c.expect("RCPT TO:<alice@example.com>", 250).await;
    c.expect("RCPT TO:<mallory@example.com>", 550).await;
    c.expect("RCPT TO:<bob@example.com>", 451).await;
    c.expect("RSET", 250).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_check_query_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(&dir.path().join("m.db"));
    config.recipient_check = Some(RecipientCheckConfig {
        store: "sqlite".into(),
        query: "SELECT 1 FROM no_such_table WHERE address = ?".into(),
        timeout_ms: 2000,
        cache_ttl_secs: 0,
    });
    let err = gsmtpd::Backends::open(&config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

fn sqlite_store(path: std::path::PathBuf, optional: bool) -> StoreConfig {
    StoreConfig {
        optional,
        backend: Backend::Sqlite(SqliteConfig {
            path,
            busy_timeout_ms: 100,
            ..SqliteConfig::default()
        }),
        ..StoreConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_to_required_and_optional_stores() {
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second.db");
    let optional = dir.path().join("optional.db");
    let (second2, optional2) = (second.clone(), optional.clone());
    let server = Server::start_with(move |c| {
        c.store.push(sqlite_store(second2, false));
        c.store.push(sqlite_store(optional2, true));
    })
    .await;
    let count = |path: &std::path::Path| -> i64 {
        gsmtpd::store::sqlite::open_read_only(path)
            .unwrap()
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap()
    };
    let mut c = server.client().await;
    let id = c
        .send_message(
            "s@sender.test",
            &["r@example.com"],
            b"Subject: everywhere\r\n\r\n",
        )
        .await
        .queued_id();
    // Both required stores hold it when the 250 arrives.
    let raw = server.raw(&id);
    let raw2: Vec<u8> = gsmtpd::store::sqlite::open_read_only(&second)
        .unwrap()
        .query_row("SELECT raw FROM messages WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(raw, raw2);

    // The optional store is locked: its failure does not fail the message.
    let lock = rusqlite::Connection::open(&optional).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c.expect("MAIL FROM:<s@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: optional down\r\n\r\n.\r\n").await;
    c.reply().await.queued_id();
    // Hold the lock well past the optional store's 100 ms busy timeout, so
    // its commit has failed before the lock goes.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    lock.execute_batch("ROLLBACK").unwrap();

    // A required store locked: 451, and the other required store may hold
    // it (nothing acknowledged), which is the documented duplicate window.
    let lock = rusqlite::Connection::open(&second).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c.expect("MAIL FROM:<s@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: required down\r\n\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");
    lock.execute_batch("ROLLBACK").unwrap();
    server.shutdown().await;

    let subjects = |path: &std::path::Path| -> Vec<String> {
        let db = gsmtpd::store::sqlite::open_read_only(path).unwrap();
        let mut st = db
            .prepare("SELECT subject FROM messages ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(count(&second), 2);
    assert_eq!(subjects(&second), ["everywhere", "optional down"]);
    // The optional store missed only the message sent while it was locked.
    assert_eq!(subjects(&optional), ["everywhere", "required down"]);
}
