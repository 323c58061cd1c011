//! The Maildir store: one file per message and recipient mailbox, in
//! `<root>/<domain>/<local>/new/`, for IMAP servers (Dovecot, Courier) and
//! tools that read Maildir.
//!
//! # Delivery
//!
//! For each message and each distinct mailbox among its recipients the
//! store writes `Return-Path:` and `Delivered-To:` header lines (as
//! Postfix's local delivery does) and then the stored message
//! ([`Envelope::raw`]: our `Received:` header and the content as received,
//! CRLF line ends kept) to a new file in the mailbox's `tmp/`, fsyncs it,
//! renames it into `new/`, and fsyncs `new/` before the `250`. A mailbox
//! that does not exist yet is created with its `tmp`, `new` and `cur`, and
//! the directories above it are fsynced, so the entry survives a crash too.
//!
//! A batch is all or nothing as far as a file system allows: every file is
//! written and synced in `tmp/` before any is renamed; a rename that fails
//! takes back the renames before it. Only a failing fsync of `new/` after
//! the renames leaves files that the client will send again (`451`, RFC
//! 1047's duplicate window).
//!
//! # Names
//!
//! Files are named `<seconds>.M<microseconds>P<pid>Q<n>.<host>,S=<size>`
//! (the Maildir convention; `<n>` counts this process's deliveries, `/`
//! and `:` in the host name are written `\057` and `\072`).
//!
//! Mailbox directories are the recipient's domain and local part, ASCII
//! lower-cased. A byte that is not a letter, digit, UTF-8, or one of
//! ``!#$&'*+-=?^_`{|}~.@`` is written `%XX`, and so is a leading `.`: a
//! local part such as `..`, `../x` or `a/b` stays one directory below the
//! domain, never `.`, `..` or a path. A name longer than 200 bytes is cut
//! and ends in `~` and 16 hex digits of its MD5, so two long names still
//! differ. A recipient without a domain (`postmaster`, RFC 5321 §4.5.1)
//! goes to the domain directory `_local`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

use super::{BlockingStore, StoreError};
use crate::config::MaildirConfig;
use crate::message::{Envelope, NO_DOMAIN, split_recipient};

const NAME: &str = "maildir";

/// Longest directory name we write; file systems allow 255 bytes.
const MAX_COMPONENT: usize = 200;

/// Mailboxes known to exist, forgotten wholesale past this many.
const KNOWN_MAILBOXES: usize = 100_000;

/// The Maildir store.
pub struct MaildirStore {
    root: PathBuf,
    /// The host part of file names, escaped.
    host: String,
    pid: u32,
    /// Deliveries so far, for unique names.
    deliveries: u64,
    /// Mailbox directories created or seen, so a delivery costs no mkdir.
    known: HashSet<PathBuf>,
}

impl MaildirStore {
    /// Creates the root directory if missing; `hostname` names the files.
    pub fn open(cfg: &MaildirConfig, hostname: &str) -> Result<Self, StoreError> {
        fs::create_dir_all(&cfg.path).map_err(|e| {
            StoreError::permanent(NAME, format!("cannot create {}: {e}", cfg.path.display()))
        })?;
        Ok(Self {
            root: cfg.path.clone(),
            host: escape_host(hostname),
            pid: std::process::id(),
            deliveries: 0,
            known: HashSet::new(),
        })
    }

    /// The mailbox directory for `recipient`, always below the root.
    pub fn mailbox(&self, recipient: &str) -> PathBuf {
        let (local, domain) = split_recipient(recipient);
        let domain = domain.map_or_else(|| NO_DOMAIN.to_owned(), dir_name);
        self.root.join(domain).join(dir_name(local))
    }

    /// Creates `mailbox` with `tmp`, `new` and `cur` unless known, and
    /// makes the new entries durable.
    fn ensure(&mut self, mailbox: &Path) -> io::Result<()> {
        if self.known.contains(mailbox) {
            return Ok(());
        }
        let domain = mailbox.parent().unwrap_or(&self.root);
        let fresh_domain = !domain.exists();
        let fresh = !mailbox.exists();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(mailbox.join(sub))?;
        }
        if fresh {
            sync_dir(mailbox)?;
            sync_dir(domain)?;
        }
        if fresh_domain {
            sync_dir(&self.root)?;
        }
        if self.known.len() >= KNOWN_MAILBOXES {
            self.known.clear();
        }
        self.known.insert(mailbox.to_owned());
        Ok(())
    }

    /// A new unique file name for `size` octets.
    fn file_name(&mut self, size: usize) -> String {
        self.deliveries += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{},S={size}",
            now.as_secs(),
            now.subsec_micros(),
            self.pid,
            self.deliveries,
            self.host
        )
    }

    /// Writes one file into `mailbox/tmp` and syncs it; returns its name.
    fn write_tmp(&mut self, mailbox: &Path, env: &Envelope, rcpt: &str) -> io::Result<String> {
        let head = format!(
            "Return-Path: <{}>\r\nDelivered-To: {rcpt}\r\n",
            env.mail_from
        );
        let name = self.file_name(head.len() + env.raw.len());
        let path = mailbox.join("tmp").join(&name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let written = file
            .write_all(head.as_bytes())
            .and_then(|()| file.write_all(&env.raw))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(name)
    }

    fn deliver(&mut self, batch: &[Arc<Envelope>]) -> io::Result<()> {
        // (mailbox, file name) of every file written to tmp/.
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        let written = self.write_all_tmp(batch, &mut files);
        if let Err(e) = written {
            for (mailbox, name) in &files {
                let _ = fs::remove_file(mailbox.join("tmp").join(name));
            }
            return Err(e);
        }
        for (i, (mailbox, name)) in files.iter().enumerate() {
            if let Err(e) = fs::rename(
                mailbox.join("tmp").join(name),
                mailbox.join("new").join(name),
            ) {
                for (mailbox, name) in &files[..i] {
                    let _ = fs::remove_file(mailbox.join("new").join(name));
                }
                for (mailbox, name) in &files[i..] {
                    let _ = fs::remove_file(mailbox.join("tmp").join(name));
                }
                return Err(e);
            }
        }
        let dirs: HashSet<&PathBuf> = files.iter().map(|(m, _)| m).collect();
        for mailbox in dirs {
            sync_dir(&mailbox.join("new"))?;
        }
        Ok(())
    }

    fn write_all_tmp(
        &mut self,
        batch: &[Arc<Envelope>],
        files: &mut Vec<(PathBuf, String)>,
    ) -> io::Result<()> {
        for env in batch {
            // One file per mailbox, addressed to its first recipient.
            let mut mailboxes: HashMap<PathBuf, &str> = HashMap::new();
            for rcpt in &env.recipients {
                mailboxes.entry(self.mailbox(rcpt)).or_insert(rcpt);
            }
            let mut mailboxes: Vec<_> = mailboxes.into_iter().collect();
            mailboxes.sort();
            for (mailbox, rcpt) in mailboxes {
                self.ensure(&mailbox)?;
                let name = self.write_tmp(&mailbox, env, rcpt)?;
                files.push((mailbox, name));
            }
        }
        Ok(())
    }
}

impl BlockingStore for MaildirStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        let meta = fs::metadata(&self.root)
            .map_err(|e| StoreError::transient(NAME, format!("{}: {e}", self.root.display())))?;
        if meta.permissions().readonly() {
            return Err(StoreError::transient(
                NAME,
                format!("{} is read-only", self.root.display()),
            ));
        }
        Ok(())
    }

    fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        self.deliver(batch).map_err(|e| {
            // A mailbox removed under us must be created again next time.
            self.known.clear();
            StoreError::transient(NAME, e)
        })
    }
}

/// fsync of a directory: makes its entries (creates, renames) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A character that may stand for itself in a directory name.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || !c.is_ascii() || "!#$&'*+-=?^_`{|}~.@".contains(c)
}

/// `part` as one safe directory name (see the module docs).
pub fn dir_name(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for (i, c) in part.chars().enumerate() {
        if is_plain(c) && !(i == 0 && c == '.') {
            out.push(c.to_ascii_lowercase());
        } else {
            // Only ASCII is escaped: one byte.
            out.push_str(&format!("%{:02X}", c as u32));
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    if out.len() > MAX_COMPONENT {
        let digest = Md5::digest(out.as_bytes());
        let mut cut = MAX_COMPONENT - 17;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('~');
        for b in &digest[..8] {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The host name as the Maildir convention writes it in a file name.
fn escape_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Component;

    fn store(root: &Path) -> MaildirStore {
        MaildirStore::open(
            &MaildirConfig {
                path: root.to_owned(),
            },
            "mx.test",
        )
        .unwrap()
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn delivers_once_per_mailbox_into_new() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let env = Arc::new(Envelope::fixture(
            &["Alice@Example.org", "alice@example.org", "bob@example.org"],
            b"Subject: hi\r\n\r\nbody\r\n",
        ));
        s.commit(&[env]).unwrap();
        let alice = dir.path().join("example.org/alice");
        let bob = dir.path().join("example.org/bob");
        for m in [&alice, &bob] {
            assert!(m.join("cur").is_dir() && files(&m.join("tmp")).is_empty());
            assert_eq!(files(&m.join("new")).len(), 1, "{}", m.display());
        }
        let file = &files(&alice.join("new"))[0];
        let text = fs::read_to_string(file).unwrap();
        assert_eq!(
            text,
            "Return-Path: <s@sender.test>\r\nDelivered-To: Alice@Example.org\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            name.ends_with(&format!(".mx.test,S={}", text.len())),
            "{name}"
        );
        assert!(
            name.contains(&format!("P{}Q", std::process::id())),
            "{name}"
        );
    }

    #[test]
    fn hostile_local_parts_stay_below_their_domain() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let long = "x".repeat(300);
        let rcpts = [
            "..@example.org",
            ".@example.org",
            "../../etc@example.org",
            "a/b@example.org",
            "\"a\0b\"@example.org",
            "\".hidden\"@example.org",
            &format!("{long}@example.org"),
            "postmaster",
            "x@..",
        ];
        let env = Arc::new(Envelope::fixture(&rcpts, b"\r\nx\r\n"));
        s.commit(&[env]).unwrap();
        let domain = dir.path().join("example.org");
        let mut names: Vec<String> = fs::read_dir(&domain)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(names.contains(&"%2E.".to_owned()), "{names:?}");
        assert!(names.contains(&"%2E".to_owned()), "{names:?}");
        assert!(names.contains(&"%2E.%2F..%2Fetc".to_owned()), "{names:?}");
        assert!(names.contains(&"a%2Fb".to_owned()), "{names:?}");
        assert!(names.contains(&"%22a%00b%22".to_owned()), "{names:?}");
        assert!(names.contains(&"%22.hidden%22".to_owned()), "{names:?}");
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(names.iter().all(|n| n.len() <= MAX_COMPONENT));
        assert!(dir.path().join("_local/postmaster/new").is_dir());
        assert!(dir.path().join("%2E./x/new").is_dir());
        // Nothing was written outside the root's own tree.
        let mut top: Vec<_> = files(dir.path());
        top.sort();
        assert_eq!(
            top,
            [
                dir.path().join("%2E."),
                dir.path().join("_local"),
                dir.path().join("example.org")
            ]
        );
    }

    #[test]
    fn long_names_that_share_a_prefix_stay_distinct() {
        let a = dir_name(&format!("{}a", "y".repeat(250)));
        let b = dir_name(&format!("{}b", "y".repeat(250)));
        assert_ne!(a, b);
        assert!(a.len() <= MAX_COMPONENT && b.len() <= MAX_COMPONENT);
        let utf8 = dir_name(&"é".repeat(150));
        assert!(utf8.len() <= MAX_COMPONENT, "{}", utf8.len());
    }

    #[test]
    fn a_failed_batch_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let ok = Arc::new(Envelope::fixture(&["a@example.org"], b"\r\none\r\n"));
        // A file where the second message's domain directory would go.
        fs::write(dir.path().join("blocked.test"), b"").unwrap();
        let bad = Arc::new(Envelope::fixture(&["b@blocked.test"], b"\r\ntwo\r\n"));
        let err = s.commit(&[ok.clone(), bad]).unwrap_err();
        assert_eq!(err.kind, crate::store::ErrorKind::Transient);
        let alice = dir.path().join("example.org/a");
        assert!(files(&alice.join("new")).is_empty());
        assert!(files(&alice.join("tmp")).is_empty());
        // The same store goes on once the obstacle is gone.
        fs::remove_file(dir.path().join("blocked.test")).unwrap();
        s.commit(&[ok]).unwrap();
        assert_eq!(files(&alice.join("new")).len(), 1);
    }

    #[test]
    fn host_names_are_escaped_in_file_names() {
        assert_eq!(escape_host("a/b:c"), "a\\057b\\072c");
    }

    proptest! {
        #[test]
        fn any_recipient_maps_to_exactly_two_normal_components(rcpt in "\\PC{0,80}|[./\\\\\\x00 %@]{0,40}") {
            let s = MaildirStore {
                root: PathBuf::from("/root"),
                host: String::new(),
                pid: 0,
                deliveries: 0,
                known: HashSet::new(),
            };
            let path = s.mailbox(&rcpt);
            let rest = path.strip_prefix("/root").unwrap();
            let parts: Vec<_> = rest.components().collect();
            prop_assert_eq!(parts.len(), 2, "{:?} -> {:?}", rcpt, path);
            for p in parts {
                prop_assert!(matches!(p, Component::Normal(_)), "{:?} -> {:?}", rcpt, path);
                let name = p.as_os_str().to_str().unwrap();
                prop_assert!(!name.starts_with('.') && !name.contains('/') && !name.contains('\0'));
                prop_assert!(name.len() <= MAX_COMPONENT);
            }
        }
    }
}
