//! The MySQL/MariaDB store against the real server (`GSMTPD_TEST_MYSQL_URL`):
//! the original `new_mail` row column by column, the fan-out with SQLite,
//! value fitting under strict mode, packet splitting, an outage in the
//! middle of a load (through [`Proxy`]), and the recipient check.
//!
//! Each test works in its own [`ScratchDb`], because the tests run in
//! parallel against one shared server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gsmtpd::Store;
use gsmtpd::config::{Backend, Config, MysqlConfig, RecipientCheckConfig, StoreConfig};
use gsmtpd::message::time::Utc;
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Executor, Row};

use crate::harness::{self, Client, Server};
use crate::proxy::Proxy;
use crate::sql::{self, ScratchDb};

/// A scratch database on the test server, with a pool for the test's own
/// reads and writes. Dropped by [`TestDb::drop_db`] at the end of a test,
/// or when the test panicked first by [`ScratchDb`]'s `Drop`.
struct TestDb {
    scratch: ScratchDb,
    pool: MySqlPool,
}

impl TestDb {
    /// `None` (the test is skipped, and says so) when the URL is unset;
    /// a panic when it is set but the server does not answer.
    async fn create() -> Option<Self> {
        let scratch = ScratchDb::create::<MySqlConnection>(
            "GSMTPD_TEST_MYSQL_URL",
            |name| format!("CREATE DATABASE `{name}`"),
            |name| format!("DROP DATABASE IF EXISTS `{name}`"),
        )
        .await?;
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&scratch.url)
            .await
            .unwrap();
        Some(Self { scratch, pool })
    }

    /// The URL of this database, for a store.
    fn url(&self) -> String {
        self.scratch.url.clone()
    }

    /// A server whose only store is this database, with `to` rewritten to
    /// `primary_mail_host = "mail.test"`.
    async fn only_store(&self) -> Server {
        let url = self.url();
        Server::start_with(|c| {
            c.primary_mail_host = Some("mail.test".into());
            c.store = vec![mysql_store(url)];
        })
        .await
    }

    async fn exec(&self, sql: &str) {
        self.pool
            .execute(AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn counter(&self) -> i64 {
        self.scalar(
            "SELECT CAST(setting_value AS SIGNED) FROM gm2_setting \
             WHERE setting_name = 'received_emails'",
        )
        .await
    }

    /// Every row of `table`, oldest first.
    async fn rows(&self, table: &str) -> Vec<MailRow> {
        let sql = format!(
            "SELECT DATE_FORMAT(`date`, '%Y-%m-%d %H:%i:%s'),
                    CAST(TIMESTAMPDIFF(SECOND, `date`, UTC_TIMESTAMP()) AS SIGNED),
                    `from`, `to`, `subject`, `body`, `charset`, `mail`, `spam_score`, `hash`,
                    `content_type`, `recipient`, `has_attach`, `ip_addr`
             FROM `{table}` ORDER BY `mail_id`"
        );
        sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| MailRow {
                date: r.get(0),
                age_secs: r.get(1),
                from: r.get(2),
                to: r.get(3),
                subject: r.get(4),
                body: r.get(5),
                charset: r.get(6),
                mail: r.get(7),
                spam_score: r.get(8),
                hash: r.get(9),
                content_type: r.get(10),
                recipient: r.get(11),
                has_attach: r.get(12),
                ip_addr: r.get(13),
            })
            .collect()
    }

    async fn drop_db(self) {
        self.pool.close().await;
        self.scratch.drop_db().await;
    }
}

/// One `new_mail` row as read back.
#[derive(Debug)]
struct MailRow {
    date: String,
    age_secs: i64,
    from: String,
    to: String,
    subject: String,
    body: String,
    charset: String,
    mail: Vec<u8>,
    spam_score: f32,
    hash: String,
    content_type: String,
    recipient: String,
    has_attach: i32,
    ip_addr: String,
}

fn mysql_store(url: String) -> StoreConfig {
    StoreConfig {
        backend: Backend::Mysql(MysqlConfig {
            url,
            table: "new_mail".into(),
            create_tables: true,
            timeout_secs: 5,
        }),
        ..StoreConfig::default()
    }
}

/// The reference message: a quoted-printable ISO-8859-1 subject, an HTML
/// alternative and an attachment, so every parsed column has something
/// to show.
fn reference_message() -> Vec<u8> {
    harness::mime("=?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_column_of_new_mail_is_as_the_original_wrote_it() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let server = db.only_store().await;
    assert_eq!(db.counter().await, 0, "create_tables adds the counter row");

    let before = Utc::from_system(SystemTime::now() - Duration::from_secs(1)).sql_datetime();
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    let rcpts = ["Alice.Smith@example.com", "bob@sub.example.org"];
    let message = reference_message();
    let r = c.transaction("bounces@remote.test", &rcpts, &message).await;
    let id = r.queued_id();
    let after = Utc::from_system(SystemTime::now() + Duration::from_secs(1)).sql_datetime();

    let rows = db.rows("new_mail").await;
    assert_eq!(rows.len(), 2, "one row per accepted recipient");
    let from = "sender@example.net";
    let subject = "Grüße aus Köln";
    let body = "<p>Café <b>html</b></p>";
    for (row, (rcpt, to)) in rows.iter().zip([
        (rcpts[0], "Alice.Smith@mail.test"),
        (rcpts[1], "bob@mail.test"),
    ]) {
        assert!(
            before <= row.date && row.date <= after,
            "date {} is the UTC receipt time ({before} .. {after})",
            row.date
        );
        assert!(
            (0..60).contains(&row.age_secs),
            "date is UTC by the server's clock too: {} s old",
            row.age_secs
        );
        assert_eq!(row.from, from, "From: address, lower-cased");
        assert_eq!(row.to, to, "rewritten to primary_mail_host");
        assert_eq!(row.recipient, rcpt, "as received");
        assert_eq!(row.subject, subject, "RFC 2047 decoded");
        assert_eq!(row.body, body, "the HTML part, transfer-decoded, in UTF-8");
        assert_eq!(row.charset, "ISO-8859-1", "the HTML part's charset");
        assert_eq!(row.content_type, "text/html");
        assert_eq!(row.spam_score, 0.0);
        assert_eq!(row.hash, sql::md5_hex(&[to, from, subject, body]));
        assert_eq!(row.has_attach, 1);
        assert_eq!(row.ip_addr, "127.0.0.1");
        // The whole stored message: our Received header, then the content.
        assert_eq!(harness::content(&row.mail), message);
        let header =
            String::from_utf8_lossy(&row.mail[..row.mail.len() - message.len()]).into_owned();
        assert!(
            header.starts_with(&format!(
                "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (gsmtpd) with ESMTP id {id};"
            )),
            "{header}"
        );
    }
    assert_eq!(
        db.counter().await,
        2,
        "the counter moved by the rows stored"
    );

    // One more message, one recipient: one more row, counter +1.
    let r = c
        .transaction(
            "x@remote.test",
            &["carol@example.com"],
            b"Subject: plain\r\n\r\nhello\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let rows = db.rows("new_mail").await;
    assert_eq!(rows.len(), 3);
    let last = &rows[2];
    assert_eq!(
        (last.to.as_str(), last.from.as_str(), last.subject.as_str()),
        ("carol@mail.test", "", "plain")
    );
    assert_eq!(
        (
            last.body.as_str(),
            last.charset.as_str(),
            last.content_type.as_str()
        ),
        ("hello\r\n", "ISO-8859-1", "text/plain"),
        "the reference's defaults"
    );
    assert_eq!(last.has_attach, 0);
    assert_eq!(db.counter().await, 3);
    server.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_stores_the_same_bytes_in_sqlite_and_mysql() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let url = db.url();
    let server = Server::start_with(|c| c.store.push(mysql_store(url))).await;
    let mut c = server.client().await;
    let r = c
        .send_message(
            "a@remote.test",
            &["one@example.com", "two@example.com"],
            &reference_message(),
        )
        .await;
    let id = r.queued_id();
    let raw = server.raw(&id);
    assert_eq!(
        server.recipients(&id),
        ["one@example.com", "two@example.com"]
    );
    let rows = db.rows("new_mail").await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.mail, raw, "both stores hold the same bytes");
    }
    assert_eq!(
        rows.iter()
            .map(|r| r.recipient.as_str())
            .collect::<Vec<_>>(),
        ["one@example.com", "two@example.com"]
    );
    server.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn values_are_fitted_so_strict_mode_accepts_them() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let server = db.only_store().await;
    // The premise: the server refuses what does not fit, rather than
    // fitting it itself.
    let refused = sqlx::query(
        "INSERT INTO new_mail (`date`, `from`, `to`, `subject`, `body`, `charset`, `mail`,
             `spam_score`, `hash`, `content_type`, `recipient`, `has_attach`, `ip_addr`)
         VALUES (UTC_TIMESTAMP(), '', '', ?, '', '', '', 0, '', '', '', 0, '')",
    )
    .bind("emoji 😀 in utf8mb3")
    .execute(&db.pool)
    .await;
    assert!(
        refused.is_err(),
        "the server runs STRICT_TRANS_TABLES, or this test proves nothing"
    );

    let subject = format!("{}{}", "s".repeat(250), "😀".repeat(10));
    let body = "é".repeat(40_000);
    let content = format!(
        "From: <Fröm😀@Remote.Test>\r\nSubject: {subject}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    let rcpt = "ünï日本@example.com";
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@remote.test> SMTPUTF8 BODY=8BITMIME", 250)
        .await;
    c.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
    c.expect("DATA", 354).await;
    c.send(gsmtpd::smtp::data::stuff(content.as_bytes())).await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "stored despite the narrow columns: {r:?}");

    let rows = db.rows("new_mail").await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    // varchar(255) utf8mb3: four-byte characters become U+FFFD, then 255
    // characters are kept.
    assert_eq!(
        row.subject,
        format!("{}{}", "s".repeat(250), "\u{FFFD}".repeat(5))
    );
    // varchar(128) utf8mb3.
    assert_eq!(row.from, "fröm\u{FFFD}@remote.test");
    // latin1 keeps ü and ï, not the CJK characters.
    assert_eq!(row.recipient, "ünï??@example.com");
    // utf8mb3 keeps them all.
    assert_eq!(row.to, "ünï日本@mail.test");
    // TEXT holds 65535 bytes: 32767 two-byte characters, and the next one
    // is not split.
    let expected = "é".repeat(32_767);
    assert!(
        row.body == expected,
        "body: {} bytes ending {:?}, expected {} bytes ending {:?}",
        row.body.len(),
        row.body.chars().rev().take(3).collect::<String>(),
        expected.len(),
        expected.chars().rev().take(3).collect::<String>()
    );
    // The hash is the pipeline's, over the values before fitting.
    assert_eq!(
        row.hash,
        sql::md5_hex(&[
            "ünï日本@mail.test",
            "fröm😀@remote.test",
            &subject,
            &format!("{body}\r\n")
        ])
    );
    // The raw message is never altered.
    assert_eq!(harness::content(&row.mail), content.as_bytes());
    server.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn successor_columns_and_a_custom_table_name() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The Go successor's table, made by its operator: no gm2_setting.
    db.exec(
        "CREATE TABLE `mail_v2` (
           `mail_id` int(11) NOT NULL auto_increment, `date` datetime NOT NULL,
           `from` varchar(128) character set utf8 NOT NULL,
           `to` varchar(128) character set utf8 NOT NULL,
           `subject` varchar(255) character set utf8 NOT NULL, `body` text NOT NULL,
           `charset` varchar(32) character set utf8 NOT NULL, `mail` longblob NOT NULL,
           `spam_score` float NOT NULL, `hash` char(32) character set latin1 NOT NULL,
           `content_type` varchar(64) character set latin1 NOT NULL,
           `recipient` varchar(128) character set latin1 NOT NULL,
           `has_attach` int(11) NOT NULL, `ip_addr` varchar(64) NOT NULL,
           `return_path` varchar(255) NOT NULL, `is_tls` bit(1) NOT NULL,
           `message_id` varchar(255) NOT NULL, `reply_to` varchar(255) NOT NULL,
           `sender` varchar(255) NOT NULL,
           PRIMARY KEY (`mail_id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
    )
    .await;
    let url = db.url();
    let server = Server::start_with(|c| {
        c.store = vec![mysql_store(url)];
        let Backend::Mysql(m) = &mut c.store[0].backend else {
            unreachable!()
        };
        m.table = "mail_v2".into();
        m.create_tables = false;
    })
    .await;
    let mut c = server.client().await;
    let r = c
        .send_message(
            "Bounce@Remote.Test",
            &["r@example.com"],
            b"Message-ID: <abc.123@remote.test>\r\nSubject: v2\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let row = sqlx::query(
        "SELECT `return_path`, CAST(`is_tls` + 0 AS SIGNED), `message_id`, `reply_to`,
                `sender`, `subject`, `to`
         FROM `mail_v2`",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let got: (String, i64, String, String, String, String, String) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    assert_eq!(
        got,
        (
            "Bounce@Remote.Test".into(),
            0,
            "abc.123@remote.test".into(),
            String::new(),
            String::new(),
            "v2".into(),
            "r@example.com".into(),
        ),
        "return_path = MAIL FROM, no TLS, Message-ID; `to` unchanged without primary_mail_host"
    );
    let tables = db
        .scalar(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('new_mail', 'gm2_setting')",
        )
        .await;
    assert_eq!(tables, 0, "create_tables = false creates nothing");
    server.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_max_allowed_packet_is_split_and_a_row_over_it_is_refused() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let cfg = MysqlConfig {
        url: db.url(),
        table: "new_mail".into(),
        create_tables: true,
        timeout_secs: 30,
    };
    let mut store = gsmtpd::store::mysql::MysqlStore::connect(&cfg, None)
        .await
        .unwrap();
    let packet = usize::try_from(
        db.scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .await,
    )
    .unwrap();
    // Six rows of 40% of a packet each: no two-and-a-half fit one INSERT.
    let part = packet * 2 / 5;
    let batch: Vec<_> = (0..3u8)
        .map(|i| sql::envelope(&["a@example.com", "b@example.com"], vec![b'a' + i; part]))
        .collect();
    store.commit(&batch).await.unwrap();
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT `recipient`, CAST(LENGTH(`mail`) AS SIGNED) FROM new_mail ORDER BY mail_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        sizes.len(),
        6,
        "the batch went in whole, over several INSERTs"
    );
    assert!(sizes.iter().all(|(_, n)| *n == part as i64));
    assert_eq!(db.counter().await, 6);

    // A message whose row cannot fit any packet fails its whole batch, and
    // nothing of that batch is stored.
    let small = sql::envelope(&["c@example.com"], &b"Subject: small\r\n\r\n"[..]);
    let huge = sql::envelope(&["d@example.com"], vec![b'x'; packet + 1]);
    let err = store.commit(&[small, huge.clone()]).await.unwrap_err();
    assert!(err.message.contains(huge.id.as_str()), "{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM new_mail").await, 6);
    assert_eq!(db.counter().await, 6);
    drop(store);
    db.drop_db().await;
}

/// What one attempt of the fault test got.
struct Attempt {
    marker: String,
    code: u16,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_answers_451_and_mail_flows_again_without_a_restart() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (mut proxy, url) = Proxy::in_front_of(&db.url(), 3306).await;
    let server = Server::start_with(|c| {
        let mut store = mysql_store(url);
        let Backend::Mysql(m) = &mut store.backend else {
            unreachable!()
        };
        m.timeout_secs = 2;
        c.store = vec![store];
    })
    .await;
    let addr = server.addr;
    let restored = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    const CLIENTS: usize = 20;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (restored, stop) = (Arc::clone(&restored), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut attempts = Vec::new();
                let mut stored_after_restore = false;
                let mut session: Option<Client> = None;
                // Bounded: at most 2000 attempts per client.
                for seq in 0..2000 {
                    if stop.load(Ordering::SeqCst) && stored_after_restore {
                        break;
                    }
                    let was_restored = restored.load(Ordering::SeqCst);
                    let c = match &mut session {
                        Some(c) => c,
                        None => {
                            let mut c = Client::connect(addr).await;
                            c.expect("EHLO client.test", 250).await;
                            session.insert(c)
                        }
                    };
                    let marker = format!("fault-{i}-{seq}");
                    let content = format!("Subject: {marker}\r\n\r\nbody of {marker}\r\n");
                    let r = c
                        .transaction(
                            "load@remote.test",
                            &["x@example.com", "y@example.com"],
                            content.as_bytes(),
                        )
                        .await;
                    assert!(
                        r.code == 250 || (r.code == 451 && r.text.starts_with("4.3.0")),
                        "{r:?}"
                    );
                    if r.code == 250 && was_restored {
                        stored_after_restore = true;
                    }
                    if r.code != 250 {
                        // 451s count towards max_errors: start a new session,
                        // and do not hammer the server while it is down.
                        session = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    attempts.push(Attempt {
                        marker,
                        code: r.code,
                    });
                }
                (attempts, stored_after_restore)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.cut().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;
    restored.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);

    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, client) in clients.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (attempts, recovered) = tokio::time::timeout(left, client)
            .await
            .expect("clients finish within 60 s")
            .unwrap();
        assert!(recovered, "client {i} stored mail again after the outage");
        all.extend(attempts);
    }
    server.shutdown().await;
    drop(proxy);

    let per_marker: HashMap<String, i64> = sqlx::query_as(
        "SELECT `subject`, CAST(COUNT(*) AS SIGNED) FROM new_mail GROUP BY `subject`",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let accepted: Vec<_> = all.iter().filter(|a| a.code == 250).collect();
    let failed: Vec<_> = all.iter().filter(|a| a.code == 451).collect();
    let failed_but_stored = failed
        .iter()
        .filter(|a| per_marker.contains_key(&a.marker))
        .count();
    println!(
        "fault test: {} attempts, {} got 250, {} got 451 ({} of those stored anyway)",
        all.len(),
        accepted.len(),
        failed.len(),
        failed_but_stored
    );
    assert!(!failed.is_empty(), "the outage was seen as 451 4.3.0");
    for a in &accepted {
        assert_eq!(
            per_marker.get(&a.marker),
            Some(&2),
            "{} got 250: stored exactly once per recipient",
            a.marker
        );
    }
    for a in &failed {
        let n = per_marker.get(&a.marker).copied().unwrap_or(0);
        assert!(
            n == 0 || n == 2,
            "{}: all or nothing, found {n} rows",
            a.marker
        );
    }
    assert!(
        per_marker
            .keys()
            .all(|m| all.iter().any(|a| &a.marker == m)),
        "no row that no client sent"
    );
    let rows: i64 = per_marker.values().sum();
    assert_eq!(db.counter().await, rows, "the counter moved with the rows");
    db.drop_db().await;
}

fn check_config(c: &mut Config, url: String, query: &str) {
    c.store = vec![mysql_store(url)];
    c.recipient_check = Some(RecipientCheckConfig {
        store: "mysql".into(),
        query: query.into(),
        timeout_ms: 1000,
        cache_ttl_secs: 0,
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_check_against_a_users_table() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    db.exec("CREATE TABLE users (address varchar(255) NOT NULL PRIMARY KEY)")
        .await;
    db.exec("INSERT INTO users VALUES ('known@example.com'), ('other@example.com')")
        .await;
    let (mut proxy, url) = Proxy::in_front_of(&db.url(), 3306).await;

    // A query the server cannot prepare, or without its one parameter,
    // stops the start, not the first RCPT.
    for bad in [
        "SELECT 1 FROM no_such_table WHERE address = ?",
        "SELECT 1 FROM users",
    ] {
        let mut c = harness::test_config(std::path::Path::new("unused.db"));
        check_config(&mut c, url.clone(), bad);
        assert!(gsmtpd::Backends::open(&c).await.is_err(), "{bad}");
    }

    let server = Server::start_with(|c| {
        check_config(c, url, "SELECT 1 FROM users WHERE address = ?");
    })
    .await;
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@remote.test>", 250).await;
    c.expect("RCPT TO:<known@example.com>", 250).await;
    c.expect("RCPT TO:<Known@Example.COM>", 250).await;
    let r = c.expect("RCPT TO:<unknown@example.com>", 550).await;
    assert!(r.text.starts_with("5.1.1"), "{r:?}");

    proxy.cut().await;
    let r = c.expect("RCPT TO:<other@example.com>", 451).await;
    assert!(r.text.starts_with("4.3.0"), "{r:?}");
    proxy.restore().await;
    // No cache (cache_ttl_secs = 0): this lookup reached the database again.
    c.expect("RCPT TO:<other@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: checked\r\n\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    // The accepted recipients; the second `known@` differed only in case.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT `recipient` FROM new_mail ORDER BY mail_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, ["known@example.com", "other@example.com"]);
    server.shutdown().await;
    drop(proxy);
    db.drop_db().await;
}
