//! Store failures seen from the client: nothing is acknowledged unless it
//! was committed, and a failed commit is a `451` the client can retry.

use gsmtpd::config::Backend;

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread")]
async fn locked_database_answers_451_and_stores_nothing() {
    let server = Server::start_with(|c| {
        let Backend::Sqlite(s) = &mut c.store[0].backend else {
            unreachable!()
        };
        s.busy_timeout_ms = 200;
    })
    .await;
    // Another process holds the write lock: every commit fails.
    let locker = rusqlite::Connection::open(&server.db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let mut c = server.client().await;
    let r = c
        .send_message("a@sender.test", &["r@example.com"], b"Subject: one\r\n\r\n")
        .await;
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");
    // The session goes on; the retry fails the same way while the lock holds.
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: two\r\n\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 451);

    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(server.count(), 0, "a 451 leaves no row");
    let n: i64 = server
        .db()
        .query_row("SELECT count(*) FROM recipients", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    // Once the lock is gone, mail flows again without a restart.
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: three\r\n\r\n.\r\n").await;
    let id = c.reply().await.queued_id();
    assert_eq!(server.count(), 1);
    assert!(server.raw(&id).ends_with(b"Subject: three\r\n\r\n"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_commit_batches_concurrent_messages() {
    let server = Server::start().await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = crate::harness::Client::connect(addr).await;
                let mut ids = Vec::new();
                for j in 0..10 {
                    let r = c
                        .send_message(
                            "a@sender.test",
                            &["r@example.com"],
                            format!("Subject: {i}/{j}\r\n\r\n").as_bytes(),
                        )
                        .await;
                    ids.push(r.queued_id());
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 500);
    assert_eq!(server.count(), 500);
    for id in &all {
        assert_eq!(server.recipients(id), ["r@example.com"]);
    }
    server.shutdown().await;
}

/// `chattr +i` makes a file unwritable even for root (ext4, xfs, btrfs).
fn set_immutable(path: &std::path::Path, on: bool) -> Result<(), String> {
    let flag = if on { "+i" } else { "-i" };
    let out = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .map_err(|e| format!("chattr: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_database_answers_451_and_stores_nothing() {
    let server = Server::start().await;
    let wal = server.db.with_extension("db-wal");
    if let Err(why) = set_immutable(&wal, true) {
        println!(
            "SKIPPED unwritable_database_answers_451_and_stores_nothing: cannot make the WAL immutable ({why})"
        );
        server.shutdown().await;
        return;
    }
    let mut c = server.client().await;
    let r = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: lost?\r\n\r\n",
        )
        .await;
    set_immutable(&wal, false).unwrap();
    assert_eq!((r.code, &r.text[..5]), (451, "4.3.0"), "{r:?}");
    assert_eq!(server.count(), 0, "a 451 leaves no row");
    // Writable again: the next message is stored without a restart.
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: retry\r\n\r\n.\r\n").await;
    let id = c.reply().await.queued_id();
    assert_eq!(server.count(), 1);
    assert!(server.raw(&id).ends_with(b"Subject: retry\r\n\r\n"));
    server.shutdown().await;
}
