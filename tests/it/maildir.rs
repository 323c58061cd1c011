//! The Maildir store behind the real server: files in `new/` before the
//! `250`, one per mailbox, and hostile local parts kept inside the root.

use std::path::{Path, PathBuf};

use gsmtpd::config::{Backend, MaildirConfig, StoreConfig};

use crate::harness::Server;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn messages_are_in_new_before_the_250_and_never_outside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("maildir");
    let path = root.clone();
    let server = Server::start_with(move |c| {
        c.store.push(StoreConfig {
            backend: Backend::Maildir(MaildirConfig { path }),
            ..StoreConfig::default()
        })
    })
    .await;
    let mut c = server.client().await;
    let content = b"Subject: to the mailboxes\r\n\r\nhello\r\n";
    let id = c
        .send_message(
            "from@example.net",
            &[
                "User@Example.com",
                "\"../../escape\"@example.com",
                "postmaster",
            ],
            content,
        )
        .await
        .queued_id();
    // The 250 is out: the files are there already, nothing left in tmp/.
    let user = root.join("example.com/user");
    let hostile = root.join("example.com/%22..%2F..%2Fescape%22");
    let postmaster = root.join("_local/postmaster");
    for mailbox in [&user, &hostile, &postmaster] {
        let new = files(&mailbox.join("new"));
        assert_eq!(new.len(), 1, "{}", mailbox.display());
        assert!(files(&mailbox.join("tmp")).is_empty());
        let text = std::fs::read(&new[0]).unwrap();
        assert!(text.starts_with(b"Return-Path: <from@example.net>\r\nDelivered-To: "));
        assert!(
            String::from_utf8_lossy(&text).contains(&format!("with ESMTP id {id}")),
            "our Received header"
        );
        assert!(text.ends_with(content));
    }
    assert_eq!(
        files(dir.path()),
        std::slice::from_ref(&root),
        "nothing beside the root"
    );
    assert_eq!(
        files(&root),
        [root.join("_local"), root.join("example.com")]
    );
    c.expect("QUIT", 221).await;
    server.shutdown().await;
}
