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

/// Large messages take their share of `max_inflight_bytes`; when it is
/// taken, the next large message waits (the server stops reading it) until
/// the first one is stored — memory stays bounded, and nothing is refused.
#[tokio::test(flavor = "multi_thread")]
async fn large_messages_wait_for_the_memory_budget() {
    let server = Server::start_with(|c| {
        c.max_message_size = 3 << 20;
        c.max_inflight_bytes = 6 << 20;
    })
    .await;
    let body = |tag: &str| {
        let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
        b.extend(std::iter::repeat_n(b'y', 2 << 20));
        b.extend_from_slice(b"\r\n");
        b
    };
    let start = |tag: &'static str| {
        let addr = server.addr;
        let wire = gsmtpd::smtp::data::stuff(&body(tag));
        async move {
            let mut c = crate::harness::Client::connect(addr).await;
            c.expect("EHLO big.test", 250).await;
            c.expect("MAIL FROM:<a@sender.test>", 250).await;
            c.expect("RCPT TO:<r@example.com>", 250).await;
            c.expect("DATA", 354).await;
            (c, wire)
        }
    };
    // A sends all but the final dot: it holds the whole budget.
    let (mut a, wire_a) = start("first").await;
    let (a_body, a_end) = wire_a.split_at(wire_a.len() - 3);
    a.send(a_body).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // B sends everything; past 1 MiB the server stops reading it.
    let (mut b, wire_b) = start("second").await;
    let b_task = tokio::spawn(async move {
        b.send(&wire_b).await;
        let r = b.reply().await;
        (r, std::time::Instant::now())
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        !b_task.is_finished(),
        "B must wait while A holds the budget"
    );
    assert_eq!(server.count(), 0);
    a.send(a_end).await;
    let a_reply = a.reply().await;
    let a_done = std::time::Instant::now();
    a_reply.queued_id();
    let (b_reply, b_done) = b_task.await.unwrap();
    b_reply.queued_id();
    assert!(b_done >= a_done, "B is stored after A released the budget");
    assert_eq!(server.count(), 2);
    server.shutdown().await;
}
