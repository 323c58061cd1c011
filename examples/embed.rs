//! Embedding gsmtpd with a store of your own, in a few lines: every
//! accepted message is printed, and the client gets its `250` once
//! `commit` returns `Ok`. Run with `cargo run --example embed`, then send
//! mail to 127.0.0.1:2526; Ctrl-C stops it gracefully.

use std::sync::Arc;

use gsmtpd::{Config, Envelope, Store, StoreError};

/// A store that writes one line per message to standard output.
struct Printer;

impl Store for Printer {
    fn name(&self) -> &'static str {
        "printer"
    }

    /// Called with every message queued since the last commit (group
    /// commit); return `Err` and each of them gets `451 4.3.0`.
    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        for e in batch {
            let subject = e.parsed.as_ref().map_or("", |p| p.subject.as_str());
            println!(
                "{} from=<{}> to={:?} size={} subject={subject:?}",
                e.id,
                e.mail_from,
                e.recipients,
                e.raw.len()
            );
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = Config::from_toml("hostname = \"mx.example\"\nallowed_hosts = [\"*\"]")
        .expect("a valid configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:2526").await?;
    gsmtpd::run(listener, config, Printer, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
