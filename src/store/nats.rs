//! The NATS JetStream store: each accepted message is published to a
//! stream, and the `250` waits for JetStream's acknowledgements. Heavy
//! processing (MIME, spam scoring, indexing) belongs to consumers of the
//! stream, as the original left MIME processing to the programs above it.
//!
//! # Messages
//!
//! A message is published once per recipient domain, to the subject
//! `<subject>.<domain>` (`gsmtpd.mail.example.org` with the default
//! prefix; a recipient without a domain, `postmaster`, goes to
//! `<subject>._local`). The payload is the stored message
//! ([`Envelope::raw`]: our `Received:` header and the content as received);
//! the headers carry the envelope:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the message id; `<id>.<domain>` when the message has recipients in several domains |
//! | `Gsmtpd-Id` | the message id, as in the `250` reply and the `Received:` header |
//! | `Gsmtpd-Mail-From` | the reverse-path in angle brackets, `<>` for the null one |
//! | `Gsmtpd-Rcpt-To` | one header per recipient in this domain, as accepted |
//! | `Gsmtpd-Client-Ip` | the client's address (the PROXY protocol's, behind a balancer) |
//! | `Gsmtpd-Helo` | the EHLO/HELO argument |
//! | `Gsmtpd-Tls` | `true` or `false` |
//! | `Gsmtpd-Received-At` | RFC 3339, UTC |
//! | `Gsmtpd-Object` | only for a message in the object store: `<bucket>/<id>` |
//!
//! `Nats-Msg-Id` makes a publish that is retried within the stream's
//! duplicate window (two minutes by default) a no-op: a batch that failed
//! half-way and is committed again stores nothing twice.
//!
//! # Acknowledgements
//!
//! A commit sends every publish of the batch, then awaits every
//! acknowledgement; the commit succeeds only when JetStream has stored all
//! of them. A negative acknowledgement, a missing stream, or no answer
//! within `timeout_secs` fails the commit: `451 4.3.0` when the store is
//! required.
//!
//! # Messages larger than a NATS message
//!
//! The NATS server refuses messages past its `max_payload` (1 MiB by
//! default). With `oversize = "reject"` (the default) the server's SIZE
//! limit shrinks to fit: a client announcing a larger `SIZE=` gets `552
//! 5.3.4` at MAIL, and one sending more than that gets `552 5.3.4` at the
//! end of data — before anything is promised. (The limit is fixed at start;
//! when NATS does not answer then, its default of 1 MiB is assumed.) With
//! `oversize =
//! "object_store"` such a message goes to the JetStream object store
//! `object_bucket` under its id, and the stream message carries the
//! envelope headers, `Gsmtpd-Object`, and an empty payload.
//!
//! # Failures
//!
//! The client reconnects by itself. A server that is down at start is
//! logged, not fatal (as with Redis): until it answers, commits fail with
//! a transient error and clients get `451`. With `create_stream = true`
//! the stream is created (or found) at the first chance: at start, or at
//! the first commit after NATS comes up.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;

use super::{Store, StoreError};
use crate::config::{NatsConfig, Oversize};
use crate::message::{Envelope, NO_DOMAIN, split_recipient, time::Utc};

const NAME: &str = "nats";

/// Room kept in a NATS message for the envelope headers and our
/// `Received:` header, beside the content, when the SIZE limit is shrunk.
const HEADROOM: usize = 8_192;

/// Room per recipient for its `Gsmtpd-Rcpt-To` header.
const HEADROOM_PER_RECIPIENT: usize = 300;

/// The NATS JetStream store.
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: NatsConfig,
    timeout: Duration,
    /// The stream was created or found (only tracked with `create_stream`).
    stream_ready: bool,
    /// The object store, once opened (`oversize = "object_store"`).
    objects: Option<jetstream::object_store::ObjectStore>,
}

impl NatsStore {
    /// Connects to `cfg.url`; with `create_stream`, creates the stream.
    ///
    /// An unreachable server is logged, not an error: the client keeps
    /// trying, and commits answer `451` until it is back.
    pub async fn connect(cfg: &NatsConfig) -> Result<Self, StoreError> {
        if cfg.timeout_secs == 0 {
            return Err(StoreError::permanent(
                NAME,
                "timeout_secs must be greater than 0",
            ));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let client = ConnectOptions::new()
            .name("gsmtpd")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(|event| async move {
                tracing::info!(store = NAME, %event, "connection event");
            })
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| StoreError::permanent(NAME, format!("{}: {e}", cfg.url)))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .ack_timeout(timeout)
            .build(client.clone());
        let mut store = Self {
            client,
            js,
            cfg: cfg.clone(),
            timeout,
            stream_ready: !cfg.create_stream,
            objects: None,
        };
        // Wait for the first INFO, which carries the server's max payload.
        let connected = tokio::time::timeout(timeout, async {
            while store.client.try_server_info().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        match connected {
            Ok(()) => {
                if let Err(e) = store.ensure_stream().await {
                    tracing::warn!(store = NAME, error = %e, "stream not ready at start");
                }
            }
            Err(_) => tracing::warn!(
                store = NAME,
                url = %cfg.url,
                "NATS does not answer; messages get 451 until it does"
            ),
        }
        Ok(store)
    }

    /// The largest message content this store can publish whole, when it
    /// refuses larger ones (`oversize = "reject"`); `None` otherwise.
    pub fn size_cap(&self, max_recipients: usize) -> Option<u64> {
        (self.cfg.oversize == Oversize::Reject).then(|| {
            let room = HEADROOM + max_recipients * HEADROOM_PER_RECIPIENT;
            self.client.max_payload().saturating_sub(room) as u64
        })
    }

    /// Creates or finds the stream (and the object store), once.
    async fn ensure_stream(&mut self) -> Result<(), StoreError> {
        if self.stream_ready {
            return Ok(());
        }
        let unlimited = |n: u64| if n == 0 { -1 } else { n as i64 };
        let config = stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![format!("{}.>", self.cfg.subject)],
            max_age: Duration::from_secs(self.cfg.max_age_secs),
            max_bytes: unlimited(self.cfg.max_bytes),
            num_replicas: self.cfg.replicas,
            storage: stream::StorageType::File,
            // A full stream refuses new mail (451) rather than drop old mail.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| StoreError::transient(NAME, format!("stream {}: {e}", self.cfg.stream)))?;
        if self.cfg.oversize == Oversize::ObjectStore {
            self.open_objects().await?;
        }
        self.stream_ready = true;
        tracing::info!(store = NAME, stream = %self.cfg.stream, "stream ready");
        Ok(())
    }

    /// The object store for large messages, created with `create_stream`.
    async fn open_objects(&mut self) -> Result<&jetstream::object_store::ObjectStore, StoreError> {
        if self.objects.is_none() {
            let bucket = &self.cfg.object_bucket;
            let store = match self.js.get_object_store(bucket).await {
                Ok(s) => s,
                Err(_) if self.cfg.create_stream => self
                    .js
                    .create_object_store(jetstream::object_store::Config {
                        bucket: bucket.clone(),
                        max_age: Duration::from_secs(self.cfg.max_age_secs),
                        num_replicas: self.cfg.replicas,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| StoreError::transient(NAME, format!("bucket {bucket}: {e}")))?,
                Err(e) => {
                    return Err(StoreError::transient(NAME, format!("bucket {bucket}: {e}")));
                }
            };
            self.objects = Some(store);
        }
        Ok(self.objects.as_ref().expect("just opened"))
    }

    /// Sends every publish of `batch`; returns the acknowledgements to await.
    async fn send(
        &mut self,
        batch: &[Arc<Envelope>],
    ) -> Result<Vec<jetstream::context::PublishAckFuture>, StoreError> {
        let mut acks = Vec::with_capacity(batch.len());
        for env in batch {
            let groups = by_domain(&env.recipients);
            let object = self.object_for(env, groups.len()).await?;
            for (domain, rcpts) in &groups {
                let mut headers = envelope_headers(env, rcpts);
                let msg_id = if groups.len() == 1 {
                    env.id.to_string()
                } else {
                    format!("{}.{domain}", env.id)
                };
                let payload = match &object {
                    Some(reference) => {
                        headers.insert("Gsmtpd-Object", reference.as_str());
                        Bytes::new()
                    }
                    None => env.raw.clone(),
                };
                let publish = PublishMessage::build()
                    .headers(headers)
                    .payload(payload)
                    .message_id(msg_id);
                let subject = format!("{}.{}", self.cfg.subject, subject_tokens(domain));
                let ack =
                    self.js
                        .send_publish(subject, publish)
                        .await
                        .map_err(|e| match e.kind() {
                            PublishErrorKind::MaxPayloadExceeded => StoreError::permanent(
                                NAME,
                                format!("message {} is larger than NATS accepts: {e}", env.id),
                            ),
                            _ => StoreError::transient(NAME, format!("publish: {e}")),
                        })?;
                acks.push(ack);
            }
        }
        Ok(acks)
    }

    /// With `oversize = "object_store"`, puts a message too large for one
    /// NATS message into the object store; returns its reference.
    async fn object_for(
        &mut self,
        env: &Envelope,
        copies: usize,
    ) -> Result<Option<String>, StoreError> {
        if self.cfg.oversize != Oversize::ObjectStore {
            return Ok(None);
        }
        let room = HEADROOM + copies.max(env.recipients.len()) * HEADROOM_PER_RECIPIENT;
        if env.raw.len() + room <= self.client.max_payload() {
            return Ok(None);
        }
        let name = env.id.to_string();
        let bucket = self.cfg.object_bucket.clone();
        let timeout = self.timeout;
        let objects = self.open_objects().await?;
        let mut reader: &[u8] = &env.raw;
        tokio::time::timeout(timeout, objects.put(name.as_str(), &mut reader))
            .await
            .map_err(|_| StoreError::timed_out(NAME, timeout))?
            .map_err(|e| StoreError::transient(NAME, format!("object {bucket}/{name}: {e}")))?;
        Ok(Some(format!("{bucket}/{name}")))
    }
}

impl Store for NatsStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&mut self) -> Result<(), StoreError> {
        tokio::time::timeout(self.timeout, self.js.query_account())
            .await
            .map_err(|_| StoreError::timed_out(NAME, self.timeout))?
            .map_err(|e| StoreError::transient(NAME, e))?;
        Ok(())
    }

    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        self.ensure_stream().await?;
        let acks = self.send(batch).await?;
        // Every publish is on its way: the acks come back concurrently,
        // so awaiting them in order costs the slowest one, not the sum.
        let mut failed = None;
        for ack in acks {
            if let Err(e) = ack.await {
                failed.get_or_insert(e);
            }
        }
        match failed {
            None => Ok(()),
            Some(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                // Create it again at the next commit, if we create it.
                self.stream_ready = !self.cfg.create_stream;
                Err(StoreError::transient(
                    NAME,
                    format!("no stream takes subject {}.*: {e}", self.cfg.subject),
                ))
            }
            Some(e) => Err(StoreError::transient(NAME, format!("acknowledgement: {e}"))),
        }
    }
}

/// The recipients grouped by domain (lower-cased), in order of first use.
fn by_domain(recipients: &[String]) -> Vec<(String, Vec<&str>)> {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for rcpt in recipients {
        let domain = split_recipient(rcpt)
            .1
            .map_or_else(|| NO_DOMAIN.to_owned(), str::to_ascii_lowercase);
        match groups.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, v)) => v.push(rcpt),
            None => groups.push((domain, vec![rcpt])),
        }
    }
    groups
}

/// `domain` as subject tokens: its labels, each free of the characters
/// NATS gives a meaning (`*`, `>`, white space), none empty.
pub fn subject_tokens(domain: &str) -> String {
    let tokens: Vec<String> = domain
        .split('.')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.chars()
                .map(|c| {
                    if c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect()
        })
        .collect();
    if tokens.is_empty() {
        NO_DOMAIN.to_owned()
    } else {
        tokens.join(".")
    }
}

/// A header value without line breaks or other control characters.
fn header_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The envelope headers of one published copy, for `rcpts` of `env`.
fn envelope_headers(env: &Envelope, rcpts: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Gsmtpd-Id", env.id.to_string().as_str());
    h.insert(
        "Gsmtpd-Mail-From",
        header_value(&format!("<{}>", env.mail_from)).as_str(),
    );
    for rcpt in rcpts {
        h.append("Gsmtpd-Rcpt-To", header_value(rcpt).as_str());
    }
    h.insert("Gsmtpd-Client-Ip", env.client.ip().to_string().as_str());
    h.insert("Gsmtpd-Helo", header_value(&env.helo).as_str());
    h.insert("Gsmtpd-Tls", if env.tls { "true" } else { "false" });
    h.insert(
        "Gsmtpd-Received-At",
        Utc::from_system(env.received_at).rfc3339().as_str(),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_grouped_by_domain_in_order() {
        let rcpts: Vec<String> = ["a@B.org", "c@x.test", "d@b.org", "postmaster"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let groups = by_domain(&rcpts);
        assert_eq!(
            groups,
            [
                ("b.org".to_owned(), vec!["a@B.org", "d@b.org"]),
                ("x.test".to_owned(), vec!["c@x.test"]),
                ("_local".to_owned(), vec!["postmaster"]),
            ]
        );
    }

    #[test]
    fn subject_tokens_never_hold_wildcards_or_empty_tokens() {
        assert_eq!(subject_tokens("example.org"), "example.org");
        assert_eq!(subject_tokens("[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]");
        assert_eq!(subject_tokens("[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(subject_tokens("a..b."), "a.b");
        assert_eq!(subject_tokens("*.>.x y"), "_._.x_y");
        assert_eq!(subject_tokens(""), "_local");
        assert_eq!(subject_tokens("..."), "_local");
    }

    #[test]
    fn headers_carry_the_envelope_without_line_breaks() {
        let env = Envelope {
            helo: "evil\r\nX-Injected: 1".into(),
            tls: true,
            ..Envelope::fixture(&["a@example.org", "b@example.org"], b"\r\nx\r\n")
        };
        let h = envelope_headers(&env, &["a@example.org", "b@example.org"]);
        assert_eq!(
            h.get("Gsmtpd-Helo").unwrap().as_str(),
            "evil??X-Injected: 1"
        );
        assert_eq!(h.get("Gsmtpd-Id").unwrap().as_str(), env.id.to_string());
        assert_eq!(
            h.get("Gsmtpd-Mail-From").unwrap().as_str(),
            "<s@sender.test>"
        );
        assert_eq!(h.get("Gsmtpd-Client-Ip").unwrap().as_str(), "192.0.2.9");
        assert_eq!(h.get("Gsmtpd-Tls").unwrap().as_str(), "true");
        let rcpts: Vec<&str> = h.get_all("Gsmtpd-Rcpt-To").map(|v| v.as_str()).collect();
        assert_eq!(rcpts, ["a@example.org", "b@example.org"]);
    }
}
