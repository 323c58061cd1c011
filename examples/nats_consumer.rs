//! The template for a downstream processor: pulls the messages gsmtpd's
//! NATS store published, parses each (MIME, decoded subject, preferred
//! body) and prints one line per message, then acknowledges it. A durable
//! consumer remembers where it stopped, so a restart goes on from there;
//! a message that is not acknowledged (the processor died) is delivered
//! again after `ack_wait`.
//!
//! ```text
//! cargo run --features nats --example nats_consumer -- \
//!     --url nats://127.0.0.1:4222 --stream MAIL --durable printer
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser)]
struct Cli {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// The stream gsmtpd publishes to (`stream` in its `[[store]]`).
    #[arg(long, default_value = "MAIL")]
    stream: String,
    /// The durable consumer's name: processors sharing it share the work.
    #[arg(long, default_value = "printer")]
    durable: String,
    /// Only these subjects, e.g. `gsmtpd.mail.example.org` (default: all).
    #[arg(long)]
    filter: Option<String>,
    /// Stop after this long without a message (default: never).
    #[arg(long)]
    idle_exit_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = async_nats::connect(cli.url.as_str()).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&cli.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &cli.durable,
            pull::Config {
                durable_name: Some(cli.durable.clone()),
                filter_subject: cli.filter.clone().unwrap_or_default(),
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let next = match cli.idle_exit_secs {
            Some(s) => match tokio::time::timeout(Duration::from_secs(s), messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => messages.next().await,
        };
        let Some(message) = next else { break };
        let message = message?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map_or("", |v| v.as_str())
                .to_owned()
        };
        let rcpts: Vec<String> = message
            .headers
            .as_ref()
            .map(|h| {
                h.get_all("Gsmtpd-Rcpt-To")
                    .map(|v| v.as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        // A message too large for NATS is in the object store.
        let raw = match header("Gsmtpd-Object").split_once('/') {
            Some((bucket, name)) => {
                let mut data = Vec::new();
                let mut object = js.get_object_store(bucket).await?.get(name).await?;
                tokio::io::AsyncReadExt::read_to_end(&mut object, &mut data).await?;
                data
            }
            None => message.payload.to_vec(),
        };
        let parsed = gsmtpd::message::parse::parse(&raw);
        println!(
            "{} {} from={} to={} size={} attach={} subject={:?}",
            header("Gsmtpd-Received-At"),
            header("Gsmtpd-Id"),
            header("Gsmtpd-Mail-From"),
            rcpts.join(","),
            raw.len(),
            parsed.has_attach,
            parsed.subject,
        );
        // Acknowledge only once the work is done: a crash before this line
        // gets the message delivered again.
        message
            .ack_with(AckKind::Ack)
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    Ok(())
}
