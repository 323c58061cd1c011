//! The protocol end to end: a real server on loopback, raw sockets and a
//! real SMTP client, the SQLite store read back after each exchange.

use std::time::Duration;

use crate::harness::{Client, Server, content};

#[tokio::test(flavor = "multi_thread")]
async fn transaction_is_stored_byte_exact() {
    let server = Server::start().await;
    let mut c = server.client().await;
    // Dot-stuffed lines, 8-bit bytes, a long line, an empty line, trailing
    // spaces: all must come back exactly as sent.
    let mut body = b"From: a@sender.test\r\nTo: r@example.com\r\nSubject: exact\r\n\r\n".to_vec();
    body.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n \r\n");
    body.extend_from_slice("caf\u{e9} \u{1F600} trailing  \r\n".as_bytes());
    body.extend_from_slice(&[0xff, 0xfe, b'\r', b'\n']);
    body.extend_from_slice(&[b'x'; 5000]);
    body.extend_from_slice(b"\r\n\r\n");
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@sender.test> BODY=8BITMIME", 250)
        .await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send(gsmtpd::smtp::data::stuff(&body)).await;
    let r = c.reply().await;
    let id = r.queued_id();
    assert_eq!(r.text, format!("2.0.0 Ok: queued as {id}"));
    c.expect("QUIT", 221).await;
    assert!(c.closed().await);

    let raw = server.raw(&id);
    assert_eq!(content(&raw), &body[..]);
    let header = String::from_utf8_lossy(&raw[..raw.len() - body.len()]).into_owned();
    assert!(
        header.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (gsmtpd) with ESMTP id "
        ),
        "{header}"
    );
    assert!(header.contains(&format!("id {id}\r\n\tfor <r@example.com>; ")));
    assert_eq!(server.recipients(&id), ["r@example.com"]);
    let (ip, helo, from, size, body_type): (String, String, String, i64, String) = server
        .db()
        .query_row(
            "SELECT remote_ip, helo, mail_from, size, body_type FROM messages WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        (
            ip.as_str(),
            helo.as_str(),
            from.as_str(),
            size,
            body_type.as_str()
        ),
        (
            "127.0.0.1",
            "client.test",
            "a@sender.test",
            raw.len() as i64,
            "8BITMIME"
        )
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lettre_sends_and_the_message_is_stored() {
    use lettre::message::{Attachment, MultiPart, SinglePart, header::ContentType};
    use lettre::{Message, SmtpTransport, Transport};

    let server = Server::start().await;
    let email = Message::builder()
        .from("Alice <alice@sender.test>".parse().unwrap())
        .to("Bob <bob@example.com>".parse().unwrap())
        .cc("carol@sub.example.org".parse().unwrap())
        .subject("Grüße from lettre")
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(
                    "Hello.\r\n.A line with a dot.\r\n".to_string(),
                ))
                .singlepart(Attachment::new("data.bin".into()).body(
                    vec![0u8, 1, 2, 255],
                    ContentType::parse("application/octet-stream").unwrap(),
                )),
        )
        .unwrap();
    let formatted = email.formatted();
    let port = server.addr.port();
    let response = tokio::task::spawn_blocking(move || {
        let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
            .port(port)
            .build();
        mailer.send(&email)
    })
    .await
    .unwrap()
    .expect("lettre delivers");
    assert_eq!(response.code().to_string(), "250");
    let text = response.message().collect::<Vec<_>>().join(" ");
    let id = text.rsplit(' ').next().unwrap().to_owned();
    let raw = server.raw(&id);
    // lettre terminates the content with CRLF before the final dot.
    let stored = content(&raw);
    assert!(
        stored.starts_with(&formatted),
        "stored content begins with what lettre formatted"
    );
    assert!(stored.len() - formatted.len() <= 2);
    let mut rcpts = server.recipients(&id);
    rcpts.sort();
    assert_eq!(rcpts, ["bob@example.com", "carol@sub.example.org"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_replies_arrive_together() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let group = "EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<r1@example.com>\r\nRCPT TO:<r2@example.com>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n";
    c.send(group).await;
    // All six replies were written in one go: one read returns them all.
    let first = String::from_utf8(c.read_once().await).unwrap();
    let codes: Vec<&str> = first
        .split("\r\n")
        .filter(|l| l.len() > 3 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect();
    assert_eq!(codes, ["250", "250", "250", "250", "550", "354"], "{first}");
    // Message, then QUIT, pipelined behind the end of data.
    c.send("Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    let rest = c.read_to_end().await;
    let lines: Vec<&str> = rest.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 2, "{rest}");
    assert!(lines[0].starts_with("250 2.0.0 Ok: queued as "));
    assert!(lines[1].starts_with("221 2.0.0"));
    assert_eq!(server.count(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn size_limit_at_mail_and_at_end_of_data() {
    let server = Server::start_with(|c| c.max_message_size = 10_000).await;
    let mut c = server.client().await;
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(ehlo.text.contains("SIZE 10000"), "{ehlo:?}");
    let r = c.expect("MAIL FROM:<a@sender.test> SIZE=10001", 552).await;
    assert!(r.text.starts_with("5.3.4"), "{r:?}");
    c.expect("MAIL FROM:<a@sender.test> SIZE=500", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    // The client lied about SIZE: 1 MB is read to its end, then refused.
    let big = vec![b'y'; 1_000_000];
    c.send(gsmtpd::smtp::data::stuff(&big)).await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (552, "5.3.4"), "{r:?}");
    // The session is still usable.
    let r = c
        .send_message(
            "a@sender.test",
            &["r@example.com"],
            b"Subject: small\r\n\r\nok\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    assert_eq!(server.count(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_and_one_recipients() {
    let server = Server::start().await;
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    let mut group = String::new();
    for i in 0..101 {
        group.push_str(&format!("RCPT TO:<user{i}@example.com>\r\n"));
    }
    c.send(group).await;
    for i in 0..100 {
        assert_eq!(c.reply().await.code, 250, "recipient {i}");
    }
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (452, "4.5.3"), "{r:?}");
    c.expect("DATA", 354).await;
    c.send("Subject: many\r\n\r\n.\r\n").await;
    let id = c.reply().await.queued_id();
    let rcpts = server.recipients(&id);
    assert_eq!(rcpts.len(), 100);
    assert_eq!(rcpts[99], "user99@example.com");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunks_and_binarymime() {
    let server = Server::start().await;
    let mut c = server.client().await;
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(ehlo.text.contains("CHUNKING") && ehlo.text.contains("BINARYMIME"));
    c.expect("MAIL FROM:<a@sender.test> BODY=BINARYMIME", 250)
        .await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    let part1 = b"Subject: binary\r\n\r\n\x00\x01\r\n.\r\n";
    let part2: Vec<u8> = (0..=255u8).collect();
    c.send(format!("BDAT {}\r\n", part1.len())).await;
    c.send(part1).await;
    assert_eq!(c.reply().await.code, 250);
    // The last chunk and QUIT in one write.
    let mut wire = format!("BDAT {} LAST\r\n", part2.len()).into_bytes();
    wire.extend_from_slice(&part2);
    wire.extend_from_slice(b"QUIT\r\n");
    c.send(wire).await;
    let id = c.reply().await.queued_id();
    assert_eq!(c.reply().await.code, 221);
    let raw = server.raw(&id);
    let mut expected = part1.to_vec();
    expected.extend_from_slice(&part2);
    assert_eq!(content(&raw), &expected[..]);
    server.shutdown().await;
}

/// Each SMTP-smuggling variant from CVE-2023-51764 and its relatives: the
/// attacker's end-of-data lookalike is followed by a second transaction.
#[tokio::test(flavor = "multi_thread")]
async fn smuggling_variants_never_store_a_second_message() {
    for forbid in [true, false] {
        let server = Server::start_with(|c| c.forbid_bare_newline = forbid).await;
        for ending in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r"] {
            let mut c = server.client().await;
            c.expect("EHLO client.test", 250).await;
            c.expect("MAIL FROM:<a@sender.test>", 250).await;
            c.expect("RCPT TO:<r@example.com>", 250).await;
            c.expect("DATA", 354).await;
            c.send(format!(
                "Subject: innocent\r\n\r\nhello{ending}MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
            ))
            .await;
            let everything = c.read_to_end().await;
            let replies: Vec<&str> = everything.split_terminator("\r\n").collect();
            // Exactly one reply to the data, then QUIT's.
            assert_eq!(replies.len(), 2, "{ending:?}: {everything}");
            assert!(replies[1].starts_with("221"), "{ending:?}: {everything}");
            if forbid {
                assert!(
                    replies[0].starts_with("550 5.6.0"),
                    "{ending:?}: {everything}"
                );
            } else {
                assert!(
                    replies[0].starts_with("250 2.0.0"),
                    "{ending:?}: {everything}"
                );
            }
        }
        let db = server.db();
        let victims: i64 = db
            .query_row(
                "SELECT count(*) FROM recipients WHERE address = 'victim@example.com'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(victims, 0);
        let expected = if forbid { 0 } else { 5 };
        assert_eq!(server.count(), expected, "forbid_bare_newline = {forbid}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_each_stored_exactly_once() {
    let server = Server::start().await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                let body = format!("Subject: client {i}\r\n\r\nbody {i}\r\n");
                let r = c
                    .send_message("a@sender.test", &["r@example.com"], body.as_bytes())
                    .await;
                c.expect("QUIT", 221).await;
                (i, r.queued_id())
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(server.count(), 200);
    for (i, id) in &ids {
        let raw = server.raw(id);
        assert_eq!(
            content(&raw),
            format!("Subject: client {i}\r\n\r\nbody {i}\r\n").as_bytes()
        );
    }
    let distinct: std::collections::HashSet<_> = ids.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_line_and_nul_and_bare_lf_over_tcp() {
    let server = Server::start().await;
    let mut c = server.client().await;
    c.send(format!("NOOP {}\r\nNOOP\r\n", "x".repeat(2000)))
        .await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (500, "5.5.2"));
    assert_eq!(c.reply().await.code, 250, "the next line runs normally");
    let r = c.cmd("NO\0OP").await;
    assert_eq!((r.code, &r.text[..5]), (500, "5.5.2"));
    c.send("NOOP\nQUIT\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (500, "5.5.2"));
    assert!(
        c.closed().await,
        "bare LF in a command closes the connection"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_errors_then_421() {
    let server = Server::start_with(|c| c.max_errors = 3).await;
    let mut c = server.client().await;
    c.expect("FOO", 500).await;
    c.expect("BAR", 500).await;
    c.send("BAZ\r\n").await;
    assert_eq!(c.reply().await.code, 500);
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"));
    assert!(c.closed().await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_and_data_timeouts() {
    let server = Server::start_with(|c| {
        c.command_timeout_secs = 1;
        c.data_timeout_secs = 2;
    })
    .await;
    let mut c = server.client().await;
    let started = std::time::Instant::now();
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.4.2"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(c.closed().await);

    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@sender.test>", 250).await;
    c.expect("RCPT TO:<r@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: stalled\r\n").await;
    // Longer than the command timeout: the data timeout applies in DATA.
    let started = std::time::Instant::now();
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.4.2"));
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(c.closed().await);
    assert_eq!(server.count(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_clients_get_421() {
    let server = Server::start_with(|c| c.max_clients = 2).await;
    let mut a = server.client().await;
    let _b = server.client().await;
    let mut c = Client::connect_raw(server.addr).await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"), "{r:?}");
    assert!(c.closed().await);
    // A slot frees when a client leaves.
    a.expect("QUIT", 221).await;
    assert!(a.closed().await);
    let mut d = None;
    for _ in 0..50 {
        let mut c = Client::connect_raw(server.addr).await;
        if c.reply().await.code == 220 {
            d = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.expect("a slot frees up").expect("NOOP", 250).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_open_transactions_finish() {
    let mut server = Server::start_with(|c| c.shutdown_timeout_secs = 30).await;
    let mut idle = server.client().await;
    idle.expect("EHLO idle.test", 250).await;
    let mut busy = server.client().await;
    busy.expect("EHLO busy.test", 250).await;
    busy.expect("MAIL FROM:<a@sender.test>", 250).await;
    busy.expect("RCPT TO:<r@example.com>", 250).await;

    server.begin_shutdown();
    let r = idle.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.3.2"), "{r:?}");
    assert!(idle.closed().await);
    // New connections are no longer accepted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    // The open transaction completes and is stored; then the session ends.
    busy.expect("DATA", 354).await;
    busy.send("Subject: in flight\r\n\r\n.\r\n").await;
    let id = busy.reply().await.queued_id();
    let r = busy.cmd("MAIL FROM:<a@sender.test>").await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.3.2"), "{r:?}");
    server.finished().await;
    assert!(server.raw(&id).starts_with(b"Received: "));
    assert_eq!(server.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_deadline_closes_stalled_transactions() {
    let mut server = Server::start_with(|c| c.shutdown_timeout_secs = 1).await;
    let mut busy = server.client().await;
    busy.expect("EHLO busy.test", 250).await;
    busy.expect("MAIL FROM:<a@sender.test>", 250).await;
    server.begin_shutdown();
    let r = busy.reply().await;
    assert_eq!((r.code, &r.text[..5]), (421, "4.3.2"), "{r:?}");
    server.finished().await;
    assert_eq!(server.count(), 0);
}
