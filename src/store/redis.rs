//! The Redis store: a hot copy of every message for web front ends, each
//! key with an expiry, one MULTI/EXEC transaction per group commit.
//!
//! # Key layout
//!
//! With `prefix = "gsmtpd:"` (the default) and `ttl_secs = 86400`:
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `gsmtpd:<id>` | string | the stored message (`Envelope::raw`: our `Received:` header and the content as received), zlib-compressed (RFC 1950) when `compression = "zlib"` | `ttl_secs` from the write |
//! | `gsmtpd:rcpt:<recipient>` | list | the ids of the messages for that recipient (lower-cased address), oldest first (`RPUSH`) | refreshed to `ttl_secs` by every message for the recipient |
//!
//! A message id is 26 Crockford base32 characters, so `<prefix><id>` never
//! collides with `<prefix>rcpt:...`. A list can name an id whose message
//! key expired already (the list lives as long as its newest message);
//! readers skip ids whose `GET` returns nil. `ttl_secs = 0` writes keys
//! without an expiry.
//!
//! # Transactions
//!
//! A batch is one pipeline wrapped in `MULTI`/`EXEC`: other clients never
//! see half of it, and a batch that does not reach `EXEC` (connection lost,
//! timeout, command refused while queued) writes nothing. Redis does not
//! roll back a command that fails *while* `EXEC` runs (say `WRONGTYPE`
//! because something else wrote a string under a recipient key); such a
//! commit fails, and its retry can repeat an id in a list.
//!
//! # Failures
//!
//! The connection is a `ConnectionManager`, which reconnects by itself.
//! Connecting, every command and every commit is bounded by `timeout_secs`.
//! While Redis is down or slow, commits fail with a transient
//! [`StoreError`]: `451 4.3.0` when the store is required, a logged warning
//! when it is optional. [`RedisStore::connect`] fails only on a
//! configuration error (bad URL, zero timeout): an unreachable server at
//! start is logged and the daemon starts anyway, because the same server
//! can go away a second after start and the answer must then be the same
//! (`451`, the sender retries) rather than a daemon that cannot boot while
//! a cache is down.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, RetryMethod};

use super::{Store, StoreError};
use crate::config::{Compression, RedisConfig};
use crate::message::Envelope;
use crate::pipeline::BLOCKING_THRESHOLD;

const NAME: &str = "redis";

/// Reconnect attempts per failure before a command is failed. Few: a commit
/// that cannot get a connection answers `451` and the sender retries, which
/// is cheaper than holding every connection of the batch.
const RECONNECT_RETRIES: usize = 2;

/// The Redis store.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    /// `None` when `ttl_secs = 0`: keys never expire.
    ttl: Option<u64>,
    compression: Compression,
    timeout: Duration,
}

impl RedisStore {
    /// Prepares the connection to `cfg.url` and checks that Redis answers.
    ///
    /// An unreachable server is logged, not an error (see the module docs);
    /// a URL that does not parse or a zero timeout is.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        if cfg.timeout_secs == 0 {
            return Err(StoreError::permanent(
                NAME,
                "timeout_secs must be greater than 0",
            ));
        }
        if i64::try_from(cfg.ttl_secs).is_err() {
            return Err(StoreError::permanent(
                NAME,
                format!("ttl_secs = {} is too large for Redis", cfg.ttl_secs),
            ));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs);
        // The URL may hold a password: the error names the problem only.
        let client = ::redis::Client::open(cfg.url.as_str())
            .map_err(|e| StoreError::permanent(NAME, format!("invalid url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| StoreError::permanent(NAME, e))?;
        let ping = ::redis::cmd("PING");
        match tokio::time::timeout(timeout, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                store = NAME,
                error = %e,
                "not reachable at start; commits fail until it is"
            ),
            Err(_) => tracing::warn!(
                store = NAME,
                timeout_secs = cfg.timeout_secs,
                "no answer at start; commits fail until it answers"
            ),
        }
        Ok(Self {
            conn,
            prefix: cfg.prefix.clone(),
            ttl: (cfg.ttl_secs > 0).then_some(cfg.ttl_secs),
            compression: cfg.compression,
            timeout,
        })
    }

    /// The key of a message.
    pub fn message_key(prefix: &str, id: &str) -> String {
        format!("{prefix}{id}")
    }

    /// The key of a recipient's list of message ids.
    pub fn recipient_key(prefix: &str, recipient: &str) -> String {
        format!("{prefix}rcpt:{}", recipient.to_lowercase())
    }

    /// Every write of `batch` as one `MULTI`/`EXEC` pipeline.
    async fn transaction(&self, batch: &[Arc<Envelope>]) -> Result<::redis::Pipeline, StoreError> {
        let compressed = match self.compression {
            Compression::None => None,
            Compression::Zlib => Some(compress_batch(batch).await?),
        };
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (i, e) in batch.iter().enumerate() {
            let id = e.id.as_str();
            let value: &[u8] = compressed.as_ref().map_or(&e.raw[..], |c| &c[i][..]);
            let key = Self::message_key(&self.prefix, id);
            match self.ttl {
                Some(ttl) => pipe.set_ex(key, value, ttl).ignore(),
                None => pipe.set(key, value).ignore(),
            };
            for r in &e.recipients {
                let list = Self::recipient_key(&self.prefix, r);
                pipe.rpush(&list, id).ignore();
                if let Some(ttl) = self.ttl {
                    // Checked to fit in `connect`.
                    pipe.expire(&list, ttl as i64).ignore();
                }
            }
        }
        Ok(pipe)
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn ping(&mut self) -> Result<(), StoreError> {
        let ping = ::redis::cmd("PING");
        bounded(self.timeout, ping.query_async::<()>(&mut self.conn)).await
    }

    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        let tx = self.transaction(batch).await?;
        let conn = &mut self.conn;
        let attempt = async {
            match tx.query_async::<()>(conn).await {
                // A refused connection sent nothing, so a second try cannot
                // write twice. The manager reports a failed reconnect once
                // more before it starts the next one; without this retry the
                // first commit after Redis comes back would still fail.
                Err(e) if e.is_connection_refusal() => tx.query_async::<()>(conn).await,
                other => other,
            }
        };
        bounded(self.timeout, attempt).await
    }
}

/// `op` bounded by `timeout`, its error classified.
async fn bounded(
    timeout: Duration,
    op: impl Future<Output = Result<(), RedisError>>,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(result) => result.map_err(|e| classify(&e)),
        Err(_) => Err(StoreError::timed_out(NAME, timeout)),
    }
}

/// Connection trouble, timeouts and a busy, loading, read-only or full
/// server are transient; a refused command (wrong type, no permission) is
/// not. Both answer `451`; the kind tells the log reader who must act.
fn classify(e: &RedisError) -> StoreError {
    // OOM: keys expire and memory frees up by itself.
    let transient = e.is_io_error()
        || e.code() == Some("OOM")
        || !matches!(e.retry_method(), RetryMethod::NoRetry);
    if transient {
        StoreError::transient(NAME, e)
    } else {
        StoreError::permanent(NAME, e)
    }
}

/// Compresses every message of `batch`, off the runtime threads when the
/// batch is large (zlib runs at tens of MB/s, a large batch would stall
/// every connection on the thread).
async fn compress_batch(batch: &[Arc<Envelope>]) -> Result<Vec<Vec<u8>>, StoreError> {
    let total: usize = batch.iter().map(|e| e.raw.len()).sum();
    if total < BLOCKING_THRESHOLD {
        return compress_all(batch);
    }
    let owned = batch.to_vec();
    tokio::task::spawn_blocking(move || compress_all(&owned))
        .await
        .map_err(|e| StoreError::transient(NAME, format!("compression task failed: {e}")))?
}

fn compress_all(batch: &[Arc<Envelope>]) -> Result<Vec<Vec<u8>>, StoreError> {
    batch
        .iter()
        .map(|e| zlib(&e.raw))
        .collect::<std::io::Result<_>>()
        .map_err(|e| StoreError::permanent(NAME, format!("zlib: {e}")))
}

/// `data` as a zlib stream (RFC 1950) at the default level.
pub fn zlib(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::default(),
    );
    z.write_all(data)?;
    z.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn keys() {
        assert_eq!(RedisStore::message_key("p:", "01ABC"), "p:01ABC".to_owned());
        assert_eq!(
            RedisStore::recipient_key("p:", "Alice@Example.COM"),
            "p:rcpt:alice@example.com"
        );
    }

    #[test]
    fn zlib_round_trips() {
        let data = b"Subject: x\r\n\r\n".repeat(100);
        let z = zlib(&data).unwrap();
        assert!(z.len() < data.len());
        // RFC 1950 header: deflate, 32 KiB window, check bits valid.
        assert_eq!(z[0], 0x78);
        assert_eq!(((u16::from(z[0]) << 8) | u16::from(z[1])) % 31, 0);
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn configuration_errors_fail_at_connect() {
        let cfg = |url: &str, timeout_secs| RedisConfig {
            url: url.into(),
            prefix: "p:".into(),
            ttl_secs: 60,
            compression: Compression::None,
            timeout_secs,
        };
        for (c, words) in [
            (cfg("http://127.0.0.1:6379/", 5), "invalid url"),
            (cfg("redis://127.0.0.1:6379/", 0), "timeout_secs"),
            (
                RedisConfig {
                    ttl_secs: u64::MAX,
                    ..cfg("redis://127.0.0.1:6379/", 5)
                },
                "ttl_secs",
            ),
        ] {
            let err = RedisStore::connect(&c).await.err().expect("refused");
            assert_eq!(err.kind, super::super::ErrorKind::Permanent);
            assert!(err.message.contains(words), "{err}");
        }
    }
}
