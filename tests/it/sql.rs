//! What the MySQL and PostgreSQL tests share. Scratch databases: each test
//! creates a database of its own on the shared server and drops it when
//! done, even when it fails, because the tests run in parallel against one
//! server; the dialects differ only in the statements, which the caller
//! gives. Envelopes to drive a store with directly, and an MD5 of our own
//! to check the hashes the stores write.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use gsmtpd::{Envelope, MessageId};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::harness;

/// Runs one statement on a connection of its own to a URL.
type Exec = fn(String, String) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send>>;

/// A database of one test's own, dropped with it.
pub struct ScratchDb {
    /// Its name: a plain identifier no other test uses.
    name: String,
    /// The URL of this database.
    pub url: String,
    /// The URL from the environment, to create and drop it with.
    admin_url: String,
    drop_sql: String,
    exec: Exec,
    dropped: bool,
}

impl ScratchDb {
    /// Creates the database on the server that `var` names, with the
    /// statement `create` makes of its name; `drop` makes the statement
    /// that drops it. `None` (the test is skipped, and says so) when `var`
    /// is unset; a panic when it is set and the server does not answer.
    pub async fn create<C>(
        var: &str,
        create: impl FnOnce(&str) -> String,
        drop: impl FnOnce(&str) -> String,
    ) -> Option<Self>
    where
        C: Connection + 'static,
        for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    {
        let admin_url = harness::service_url(var)?;
        let name = harness::unique("gsmtpd_t");
        let exec: Exec = |url, sql| Box::pin(exec::<C>(url, sql));
        exec(admin_url.clone(), create(&name))
            .await
            .unwrap_or_else(|e| {
                panic!("{var}={admin_url} is set but the server does not answer: {e}")
            });
        Some(Self {
            url: with_database(&admin_url, &name),
            drop_sql: drop(&name),
            name,
            admin_url,
            exec,
            dropped: false,
        })
    }

    /// Drops the database now, and fails the test if it cannot.
    pub async fn drop_db(mut self) {
        (self.exec)(self.admin_url.clone(), self.drop_sql.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.drop_sql));
        self.dropped = true;
    }
}

impl Drop for ScratchDb {
    /// Dropped from inside a runtime, which cannot block on its own
    /// futures: the clean-up runs on a thread with a runtime of its own.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (exec, url, sql) = (self.exec, self.admin_url.clone(), self.drop_sql.clone());
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(exec(url, sql))
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {done:?}", self.name);
        }
    }
}

async fn exec<C>(url: String, sql: String) -> Result<(), sqlx::Error>
where
    C: Connection + 'static,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    let mut conn = C::connect(&url).await?;
    conn.execute(AssertSqlSafe(sql)).await?;
    conn.close().await
}

/// MD5 of the concatenated `parts` in lower-case hex, computed here rather
/// than with the server's helper, to check the hashes the stores write.
pub fn md5_hex(parts: &[&str]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An envelope for tests that drive a store directly: `raw` (without a
/// header of ours) for `recipients`, from `s@sender.test` at 192.0.2.9,
/// received now over plain ESMTP, neither parsed nor hashed.
pub fn envelope(recipients: &[&str], raw: impl Into<bytes::Bytes>) -> Arc<Envelope> {
    Arc::new(Envelope {
        id: MessageId::generate(SystemTime::now()),
        received_at: SystemTime::now(),
        client: SocketAddr::from(([192, 0, 2, 9], 25)),
        helo: "client.test".into(),
        esmtp: true,
        tls: false,
        mail_from: "s@sender.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        body: Default::default(),
        smtputf8: false,
        raw: raw.into(),
        header_len: 0,
        parsed: None,
        hashes: Vec::new(),
    })
}

/// `url` with its database replaced by `db`, query string kept.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{db}{query}")
}

#[test]
fn urls_are_rewritten() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("mysql://root@127.0.0.1:3306/test", "x"),
        "mysql://root@127.0.0.1:3306/x"
    );
}
