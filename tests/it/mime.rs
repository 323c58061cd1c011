//! The MIME parser proven on a corpus of messages, first on its own and
//! then end to end through the server into SQLite.
//!
//! `tests/corpus/NAME.eml` is one message, byte for byte (CRLF line ends,
//! real ISO-2022-JP, GB2312 and Latin-1 bytes). `NAME.toml` next to it
//! states what must be extracted from it: every field of [`Parsed`]
//! (`from`, `to`, `date`, `message_id`, `subject`, `body`, `charset`,
//! `content_type`, `has_attach`) and the reference `hash` for the mailbox
//! `hash_to`. To add a case, drop a new pair there, or add it to
//! `tests/corpus/make_corpus.py`, which writes both from the text it encodes;
//! every pair in the directory is checked.

use std::path::{Path, PathBuf};

use gsmtpd::message::parse::{self, Parsed};
use serde::Deserialize;

use crate::harness::{Server, content};

/// What one corpus message must parse to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    from: String,
    to: String,
    date: String,
    message_id: String,
    subject: String,
    body: String,
    charset: String,
    content_type: String,
    has_attach: bool,
    /// The mailbox (`new_mail.to`) the hash is computed for.
    hash_to: String,
    hash: String,
}

impl Expected {
    fn parsed(&self) -> Parsed {
        Parsed {
            from: self.from.clone(),
            to: self.to.clone(),
            date: self.date.clone(),
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            body: self.body.clone(),
            charset: self.charset.clone(),
            content_type: self.content_type.clone(),
            has_attach: self.has_attach,
        }
    }
}

struct Case {
    name: String,
    raw: Vec<u8>,
    expected: Expected,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// One case by name.
fn case(name: &str) -> Case {
    let dir = corpus_dir();
    let raw = std::fs::read(dir.join(format!("{name}.eml")))
        .unwrap_or_else(|e| panic!("{name}.eml: {e}"));
    let text = std::fs::read_to_string(dir.join(format!("{name}.toml")))
        .unwrap_or_else(|e| panic!("{name}.toml: {e}"));
    let expected = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}.toml: {e}"));
    Case {
        name: name.to_owned(),
        raw,
        expected,
    }
}

/// Every case in the directory, by name; an `.eml` without its `.toml` (or
/// the reverse) fails here rather than being skipped.
fn all_cases() -> Vec<Case> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("eml" | "toml")) {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let other = path.with_extension(if ext == Some("eml") { "toml" } else { "eml" });
            assert!(
                other.exists(),
                "{} has no {}",
                path.display(),
                other.display()
            );
            if ext == Some("eml") {
                names.push(stem);
            }
        }
    }
    names.sort();
    names.iter().map(|n| case(n)).collect()
}

/// The field-by-field differences between what was expected and what the
/// parser returned, one line each.
fn differences(name: &str, want: &Parsed, got: &Parsed) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! compare {
        ($($field:ident),+) => {$(
            if want.$field != got.$field {
                out.push(format!(
                    "{name}: {}: expected {:?}, got {:?}",
                    stringify!($field),
                    want.$field,
                    got.$field
                ));
            }
        )+};
    }
    compare!(
        from,
        to,
        date,
        message_id,
        subject,
        body,
        charset,
        content_type,
        has_attach
    );
    // A field added to Parsed but not to the list above still fails here.
    if out.is_empty() {
        assert_eq!(want, got, "{name}");
    }
    out
}

#[test]
fn corpus_parses_to_the_expected_fields() {
    let cases = all_cases();
    // The corpus this test was written with; fewer means files went missing.
    assert!(cases.len() >= 23, "only {} corpus cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = parse::parse(&case.raw);
        let want = case.expected.parsed();
        failures.extend(differences(&case.name, &want, &got));
        let hash = parse::hash(&case.expected.hash_to, &got.from, &got.subject, &got.body);
        if hash != case.expected.hash {
            failures.push(format!(
                "{}: hash: expected {}, got {hash}",
                case.name, case.expected.hash
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Sends `case` over SMTP to `rcpt` and returns the queued id.
async fn deliver(server: &Server, case: &Case, rcpt: &str) -> String {
    let mut c = server.client().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<sender@client.test> BODY=8BITMIME", 250)
        .await;
    c.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
    c.expect("DATA", 354).await;
    c.send(gsmtpd::smtp::data::stuff(&case.raw)).await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{}: {r:?}", case.name);
    c.expect("QUIT", 221).await;
    r.queued_id()
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_messages_over_smtp_are_stored_with_their_fields() {
    // The hash is over the rewritten mailbox: the recipient is accepted at a
    // subdomain and recorded as `someone@example.com`, the corpus's `hash_to`.
    let server = Server::start_with(|c| c.primary_mail_host = Some("example.com".into())).await;
    let rcpt = "someone@mx.example.org";
    let names = [
        "alternative",
        "nested",
        "iso2022jp_subject",
        "raw_latin1_headers",
        "boundary_never_used",
        "boundary_unclosed",
        "garbage",
        "no_separator",
    ];
    for name in names {
        let case = case(name);
        assert_eq!(case.expected.hash_to, "someone@example.com", "{name}");
        let id = deliver(&server, &case, rcpt).await;

        let raw = server.raw(&id);
        assert!(content(&raw) == case.raw, "{name}: stored bytes differ");

        let db = server.db();
        let got = db
            .query_row(
                "SELECT subject, from_addr, to_addr, date, message_id, body, charset,
                     content_type, has_attach FROM messages WHERE id = ?1",
                [&id],
                |r| {
                    Ok(Parsed {
                        subject: r.get(0)?,
                        from: r.get(1)?,
                        to: r.get(2)?,
                        date: r.get(3)?,
                        message_id: r.get(4)?,
                        body: r.get(5)?,
                        charset: r.get(6)?,
                        content_type: r.get(7)?,
                        has_attach: r.get(8)?,
                    })
                },
            )
            .unwrap();
        let diffs = differences(name, &case.expected.parsed(), &got);
        assert!(diffs.is_empty(), "stored columns:\n{}", diffs.join("\n"));

        let (address, hash): (String, String) = db
            .query_row(
                "SELECT address, hash FROM recipients WHERE message_id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(address, rcpt, "{name}: the recipient as received");
        assert_eq!(hash, case.expected.hash, "{name}: recipients.hash");
    }
    assert_eq!(server.count(), names.len() as i64);
    server.shutdown().await;
}
