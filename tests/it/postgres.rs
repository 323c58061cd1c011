//! The PostgreSQL store and recipient check against a real PostgreSQL
//! (`GSMTPD_TEST_POSTGRES_URL`): what lands in the tables, batching,
//! text PostgreSQL cannot hold, an outage and its end, the schema version.
//!
//! Tests run in parallel, so each works in its own [`ScratchDb`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gsmtpd::config::{Backend, Config, PostgresConfig, RecipientCheckConfig, StoreConfig};
use gsmtpd::message::parse;
use gsmtpd::store::postgres::{PostgresStore, SCHEMA_VERSION};
use gsmtpd::store::{ErrorKind, Store};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, Row};

use crate::harness::{self, Client, Server};
use crate::proxy::Proxy;
use crate::sql::{self, ScratchDb};

/// A [`ScratchDb`] for one test, dropped with it.
struct TestDb(ScratchDb);

impl TestDb {
    /// `None` (the test is skipped, and says so) when the variable is unset;
    /// a panic when it is set and the server does not answer.
    async fn create() -> Option<Self> {
        ScratchDb::create::<PgConnection>(
            "GSMTPD_TEST_POSTGRES_URL",
            // template0: UTF8 whatever the cluster's default, and no other
            // session can be in the template while parallel tests copy it.
            |name| format!("CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"),
            // FORCE: the server's pools may still be closing.
            |name| format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await
        .map(Self)
    }

    /// The URL of this database.
    fn url(&self) -> &str {
        &self.0.url
    }

    /// A pool for the test's own reads and writes.
    async fn pool(&self) -> PgPool {
        PgPool::connect(self.url()).await.unwrap()
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url().to_owned(),
            create_tables: true,
            timeout_secs: 5,
        }
    }

    /// A proxy in front of the database, and a server whose only store is
    /// the database through it, with a 2 s timeout.
    async fn behind_proxy(&self) -> (Proxy, Server) {
        let (proxy, url) = Proxy::in_front_of(self.url(), 5432).await;
        let cfg = PostgresConfig {
            url,
            timeout_secs: 2,
            ..self.config()
        };
        let server = Server::start_with(|c| c.store = vec![postgres_store(cfg)]).await;
        (proxy, server)
    }
}

fn postgres_store(cfg: PostgresConfig) -> StoreConfig {
    StoreConfig {
        backend: Backend::Postgres(cfg),
        ..StoreConfig::default()
    }
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// (address, hash) of a message's recipients, by address.
async fn recipients(pool: &PgPool, id: &str) -> Vec<(String, String)> {
    sqlx::query(
        "SELECT address, hash FROM recipients WHERE message_id = $1 ORDER BY address COLLATE \"C\"",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn count(pool: &PgPool, table: &'static str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mime_message_lands_in_postgres_field_by_field() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let cfg = db.config();
    // SQLite first (the harness reads it), PostgreSQL second: both must
    // commit before the 250.
    let server = Server::start_with(|c| {
        c.primary_mail_host = Some("example.com".into());
        c.store.push(postgres_store(cfg));
    })
    .await;
    let message = harness::mime("=?ISO-8859-1?Q?Caf=E9_cr=E8me?=");
    let before = SystemTime::now();
    let mut c = server.client().await;
    let id = c
        .send_message(
            "sender@example.net",
            &["Alice@example.com", "bob@sub.example.org"],
            &message,
        )
        .await
        .queued_id();
    let after = SystemTime::now();

    let pool = db.pool().await;
    let row = sqlx::query(
        "SELECT id, extract(epoch FROM received_at)::float8, host(remote_ip), helo, mail_from,
             size, tls, protocol, body_type, raw, subject, from_addr, to_addr,
             extract(epoch FROM date)::float8, message_id, body, charset, content_type,
             has_attach
         FROM messages",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let raw: Vec<u8> = row.get("raw");
    // Byte-exact: our Received header, then the message as sent.
    assert_eq!(harness::content(&raw), message);
    let received = format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (gsmtpd) with ESMTP id {id};\r\n\t"
    );
    assert!(
        raw.starts_with(received.as_bytes()),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    assert_eq!(raw, server.raw(&id), "the same bytes as in SQLite");

    assert_eq!(row.get::<String, _>("id"), id);
    let at: f64 = row.get(1);
    assert!(
        (epoch_secs(before).floor()..=epoch_secs(after).ceil()).contains(&at),
        "received_at {at} within the test"
    );
    assert_eq!(row.get::<String, _>(2), "127.0.0.1");
    assert_eq!(row.get::<String, _>("helo"), "client.test");
    assert_eq!(row.get::<String, _>("mail_from"), "sender@example.net");
    assert_eq!(row.get::<i64, _>("size"), raw.len() as i64);
    assert!(!row.get::<bool, _>("tls"));
    assert_eq!(row.get::<String, _>("protocol"), "ESMTP");
    assert_eq!(row.get::<String, _>("body_type"), "7BIT");
    assert_eq!(row.get::<String, _>("subject"), "Café crème");
    assert_eq!(row.get::<String, _>("from_addr"), "sender@example.net");
    assert_eq!(
        row.get::<String, _>("to_addr"),
        "Alice@example.com, bob@sub.example.org"
    );
    // 17:15:33 +0100 is 16:15:33 UTC; 1_796_318_133 is 17:15:33 UTC that day.
    assert_eq!(row.get::<f64, _>(13), (1_796_318_133 - 3600) as f64);
    assert_eq!(
        row.get::<String, _>("message_id"),
        "abc.123@sender.example.net"
    );
    // The HTML part wins over the plain one; QP and ISO-8859-1 decoded.
    let body = "<p>Café <b>html</b></p>";
    assert_eq!(row.get::<String, _>("body"), body);
    assert_eq!(row.get::<String, _>("charset"), "ISO-8859-1");
    assert_eq!(row.get::<String, _>("content_type"), "text/html");
    assert!(row.get::<bool, _>("has_attach"));

    // One row per recipient, as accepted; the hash is over the recipient
    // rewritten to primary_mail_host, then from, subject and body.
    let hash = |to: &str| sql::md5_hex(&[to, "sender@example.net", "Café crème", body]);
    assert_eq!(
        recipients(&pool, &id).await,
        [
            ("Alice@example.com".into(), hash("Alice@example.com")),
            ("bob@sub.example.org".into(), hash("bob@example.com")),
        ]
    );
    assert_eq!(count(&pool, "recipients").await, 2);
    pool.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_are_stored_once_each_in_shared_transactions() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let cfg = db.config();
    let server = Server::start_with(|c| c.store = vec![postgres_store(cfg)]).await;
    const CLIENTS: usize = 30;
    // Everyone ends DATA at once, so the writer sees a queue to batch.
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, barrier) = (server.addr, barrier.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.expect("EHLO client.test", 250).await;
                c.expect("MAIL FROM:<a@sender.test>", 250).await;
                c.expect(&format!("RCPT TO:<r{i}@example.com>"), 250).await;
                c.expect("RCPT TO:<shared@example.com>", 250).await;
                c.expect("DATA", 354).await;
                barrier.wait().await;
                c.send(format!("Subject: batch {i}\r\n\r\nbody {i}\r\n.\r\n"))
                    .await;
                (i, c.reply().await.queued_id())
            })
        })
        .collect();
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap());
    }

    let pool = db.pool().await;
    assert_eq!(count(&pool, "messages").await, CLIENTS as i64);
    assert_eq!(count(&pool, "recipients").await, 2 * CLIENTS as i64);
    for (i, id) in &sent {
        let subject: String = sqlx::query_scalar("SELECT subject FROM messages WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(subject, format!("batch {i}"));
        let addresses: Vec<String> = recipients(&pool, id)
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(
            addresses,
            [format!("r{i}@example.com"), "shared@example.com".into()]
        );
    }
    // Rows written by one transaction share its xmin: every recipient was
    // written with its message, and the 30 messages took fewer than 30
    // transactions (group commit).
    let split: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recipients r JOIN messages m ON m.id = r.message_id
         WHERE r.xmin <> m.xmin",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(split, 0, "recipients committed apart from their message");
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("{CLIENTS} messages in {transactions} transactions");
    assert!(transactions < CLIENTS as i64, "{transactions} transactions");
    pool.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_and_four_byte_utf8_are_stored() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let cfg = db.config();
    let server = Server::start_with(|c| c.store = vec![postgres_store(cfg)]).await;
    // The subject decodes to "nul\0here 😀"; the body holds a QP-encoded
    // NUL, a literal one and a 4-byte character; 31 April is no date.
    let content: &[u8] = b"From: a@sender.test\r\n\
Subject: =?UTF-8?B?bnVsAGhlcmUg8J+YgA==?=\r\n\
Date: Thu, 31 Apr 2026 10:00:00 +0000\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
before=00after \0raw =F0=9F=98=80\r\n";
    // What the pipeline hands the store really has the NULs (and the
    // impossible date), or this test would prove nothing.
    let parsed = parse::parse(content);
    assert_eq!(parsed.subject, "nul\0here 😀");
    assert_eq!(parsed.body, "before\0after \0raw 😀\r\n");
    assert_eq!(parsed.date, "2026-04-31T10:00:00Z");

    let mut c = server.client().await;
    let r = c
        .send_message("a@sender.test", &["r@example.com"], content)
        .await;
    let id = r.queued_id();

    let pool = db.pool().await;
    let row = sqlx::query("SELECT raw, subject, body, date IS NULL FROM messages WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        harness::content(&row.get::<Vec<u8>, _>(0)),
        content,
        "raw keeps the NULs"
    );
    assert_eq!(row.get::<String, _>(1), "nul\u{FFFD}here 😀");
    assert_eq!(
        row.get::<String, _>(2),
        "before\u{FFFD}after \u{FFFD}raw 😀\r\n"
    );
    assert!(row.get::<bool, _>(3), "an impossible date is NULL");
    // The hash is the pipeline's, over the text as parsed.
    assert_eq!(
        recipients(&pool, &id).await,
        [(
            "r@example.com".into(),
            sql::md5_hex(&[
                "r@example.com",
                "a@sender.test",
                &parsed.subject,
                &parsed.body
            ])
        )]
    );
    pool.close().await;
    server.shutdown().await;
}

/// The database goes away behind a proxy while the server runs (the shared
/// PostgreSQL server stays up for the other tests). A proxy cuts at the
/// network, so this covers what an outage does to the store: live
/// connections die mid-stream and reconnects fail; pg_terminate_backend
/// with a connection limit would only cover the first, and a superuser
/// ignores connection limits.
#[tokio::test(flavor = "multi_thread")]
async fn outage_answers_451_then_mail_flows_again_without_restart() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (mut proxy, server) = db.behind_proxy().await;
    let mut c = server.client().await;
    let first = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: before\r\n\r\n",
        )
        .await
        .queued_id();

    proxy.cut().await;
    let r = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: during\r\n\r\n",
        )
        .await;
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");

    proxy.restore().await;
    let again = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: after\r\n\r\n",
        )
        .await
        .queued_id();

    // An outage while idle (a database restart at night): the pooled
    // connection died unseen, and the next message must not pay for it.
    proxy.cut().await;
    proxy.restore().await;
    let idle = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: idle\r\n\r\n",
        )
        .await
        .queued_id();

    let pool = db.pool().await;
    let stored: Vec<(String, String)> = sqlx::query("SELECT id, subject FROM messages ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [
            (first, "before".into()),
            (again, "after".into()),
            (idle, "idle".into())
        ],
        "the 451 left nothing behind"
    );
    assert_eq!(count(&pool, "recipients").await, 3);
    pool.close().await;
    server.shutdown().await;
}

/// A database that stops answering without closing anything (a network
/// dropping packets): only the store's timeout can notice, and it must,
/// or the client would wait until its own timeout with nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_database_answers_451_after_the_timeout() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (mut proxy, server) = db.behind_proxy().await;
    let mut c = server.client().await;
    let first = c
        .send_message("a@sender.test", &["r@example.com"], b"Subject: one\r\n\r\n")
        .await
        .queued_id();

    proxy.stall();
    let started = std::time::Instant::now();
    let r = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: lost\r\n\r\n",
        )
        .await;
    // The harness's reply timeout (20 s) fails the test if this hangs.
    println!("451 after {:?} of silence", started.elapsed());
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");

    // The network comes back as a reset of what hung, then service.
    proxy.cut().await;
    proxy.restore().await;
    let second = c
        .send_message("a@sender.test", &["r@example.com"], b"Subject: two\r\n\r\n")
        .await
        .queued_id();

    let pool = db.pool().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM messages ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, [first, second]);
    pool.close().await;
    server.shutdown().await;
}

fn check_config(db: &TestDb, query: &str) -> Config {
    let mut c = harness::test_config(std::path::Path::new("unused.db"));
    c.store = vec![postgres_store(db.config())];
    c.recipient_check = Some(RecipientCheckConfig {
        store: "postgres".into(),
        query: query.into(),
        timeout_ms: 2_000,
        cache_ttl_secs: 60,
    });
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_check_known_unknown_and_failing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE users (address text PRIMARY KEY);
         INSERT INTO users VALUES ('known@example.com');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let query = "SELECT 1 FROM users WHERE address = $1";
    let check = check_config(&db, query).recipient_check;
    let server = Server::start_with(|c| {
        c.store = vec![postgres_store(db.config())];
        c.recipient_check = check;
    })
    .await;
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    // Looked up lower-cased.
    c.expect("RCPT TO:<Known@Example.com>", 250).await;
    let r = c.expect("RCPT TO:<nobody@example.com>", 550).await;
    assert!(r.text.starts_with("5.1.1"), "{r:?}");

    // The lookup itself fails: the recipient is deferred, never refused.
    sqlx::query("DROP TABLE users")
        .execute(&pool)
        .await
        .unwrap();
    let r = c.expect("RCPT TO:<other@example.com>", 451).await;
    assert!(r.text.starts_with("4.3.0"), "{r:?}");

    // The session goes on with the recipient that was accepted.
    c.expect("DATA", 354).await;
    c.send("Subject: checked\r\n\r\n.\r\n").await;
    let id = c.reply().await.queued_id();
    assert_eq!(
        recipients(&pool, &id)
            .await
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>(),
        ["Known@Example.com"]
    );
    pool.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_check_query_is_checked_at_start() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE ids (id integer)")
        .execute(&pool)
        .await
        .unwrap();
    for (query, words) in [
        ("SELECT 1 FROM missing WHERE address = $1", "missing"),
        ("SELECT 1", "exactly one parameter"),
        (
            "SELECT 1 FROM ids WHERE id = $1 OR id = $2",
            "exactly one parameter",
        ),
        // $1 is bound as text; an integer column cannot take it.
        ("SELECT 1 FROM ids WHERE id = $1", "operator does not exist"),
    ] {
        let err = gsmtpd::Backends::open(&check_config(&db, query))
            .await
            .err()
            .unwrap_or_else(|| panic!("{query} accepted"));
        assert_eq!(err.kind, ErrorKind::Permanent, "{query}");
        assert!(err.to_string().contains(words), "{query}: {err}");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_is_versioned_and_a_newer_one_is_refused() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.pool().await;
    PostgresStore::connect(&db.config()).await.unwrap();
    // Connecting again finds the schema and changes nothing.
    PostgresStore::connect(&db.config()).await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM gsmtpd_schema")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(versions, [SCHEMA_VERSION]);

    sqlx::query("UPDATE gsmtpd_schema SET version = version + 1")
        .execute(&pool)
        .await
        .unwrap();
    let err = PostgresStore::connect(&db.config())
        .await
        .err()
        .expect("a newer schema is refused");
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.to_string()
            .contains(&format!("schema version {} ", SCHEMA_VERSION + 1))
            && err.to_string().contains("newer"),
        "{err}"
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_create_tables_missing_tables_stop_the_start() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let cfg = PostgresConfig {
        create_tables: false,
        ..db.config()
    };
    let err = PostgresStore::connect(&cfg)
        .await
        .err()
        .expect("no tables, no store");
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.to_string().contains("do not fit") && err.to_string().contains("messages"),
        "{err}"
    );
}

/// Batches over the statement size limit are written in several
/// statements, still in one transaction: a failure in the last one leaves
/// nothing of the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_batch_is_split_but_stays_all_or_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let pool = db.pool().await;
    let mut store = PostgresStore::connect(&db.config()).await.unwrap();
    let small = sql::envelope(&["r@example.com"], &b"Subject: small\r\n\r\n"[..]);
    store.commit(std::slice::from_ref(&small)).await.unwrap();

    // Three messages of 22 MiB: 66 MiB is over the 64 MiB per statement.
    let big: Vec<_> = (0..3u8)
        .map(|k| sql::envelope(&["r@example.com"], vec![b'a' + k; 22 << 20]))
        .collect();
    let mut failing = big.clone();
    failing.push(small.clone());
    let err = store.commit(&failing).await.unwrap_err();
    assert!(err.to_string().contains("duplicate key"), "{err}");
    assert_eq!(
        count(&pool, "messages").await,
        1,
        "the failed batch left nothing"
    );
    assert_eq!(count(&pool, "recipients").await, 1);

    // The store recovers, and the big batch goes in whole.
    store.commit(&big).await.unwrap();
    for (k, e) in big.iter().enumerate() {
        let (size, first, last): (i64, i32, i32) = sqlx::query_as(
            "SELECT length(raw)::int8, get_byte(raw, 0), get_byte(raw, length(raw) - 1)
             FROM messages WHERE id = $1",
        )
        .bind(e.id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        let byte = i32::from(b'a') + k as i32;
        assert_eq!((size, first, last), (22 << 20, byte, byte));
    }
    assert_eq!(count(&pool, "messages").await, 4);
    pool.close().await;
}
