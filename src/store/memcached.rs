//! The Memcached store: the original daemon's cache, from which the web
//! site served a message by its `hash` without a database query.
//!
//! # Keys
//!
//! One item per accepted recipient: key = that recipient's `hash` (32 hex
//! characters, the MD5 the `hash` pipeline step computes over to, from,
//! subject and body, as in `new_mail.hash`), value = the stored message
//! (`Envelope::raw`), flags 0, expiry `ttl_secs` (0: no expiry). Memcached
//! reads an expiry above 30 days as a Unix time, so a longer `ttl_secs` is
//! sent as one. There is no key prefix: readers look up the bare hash.
//! A recipient without a hash (which validation rules out: memcached needs
//! the `parse` and `hash` steps) is logged and not cached.
//!
//! # Size limit
//!
//! Memcached refuses items above its item size limit (`-I`, 1 MiB by
//! default, key and item header included). A message larger than
//! `max_value_size` is not sent: it is logged and the commit counts it as
//! done, because a cache cannot hold it and a retry would never succeed.
//! A value under `max_value_size` that the server still refuses as too
//! large (`SERVER_ERROR object too large for cache`, which also drops the
//! key's old value) is treated the same way.
//!
//! # Failures
//!
//! Memcached has no transactions: a commit that fails halfway may have
//! written some items. Its retry writes them again, harmlessly (`set`
//! overwrites). After any error the connection is dropped and the next
//! commit connects again; connecting and every commit are bounded by
//! `timeout_secs`. While memcached is down, commits fail with a transient
//! [`StoreError`]: `451 4.3.0` when the store is required, a logged warning
//! when it is optional. An unreachable server at start is logged, not an
//! error, for the reason the Redis store gives.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_memcached::{AsciiProtocol, Client, Error, ErrorKind, Status};

use super::{Store, StoreError};
use crate::config::MemcachedConfig;
use crate::message::Envelope;

const NAME: &str = "memcached";

/// The longest expiry memcached takes as relative seconds.
const RELATIVE_EXPIRY_MAX: u64 = 60 * 60 * 24 * 30;

/// The Memcached store.
pub struct MemcachedStore {
    /// `None` after an error or before the first successful connect.
    client: Option<Client>,
    url: String,
    ttl_secs: u64,
    max_value_size: usize,
    timeout: Duration,
}

impl MemcachedStore {
    /// Connects to `cfg.url`.
    ///
    /// An unreachable server is logged, not an error: the store connects
    /// again at each commit. A URL that does not parse, a zero timeout or
    /// a zero `max_value_size` is an error.
    pub async fn connect(cfg: &MemcachedConfig) -> Result<Self, StoreError> {
        for (key, v) in [
            ("timeout_secs", cfg.timeout_secs),
            ("max_value_size", cfg.max_value_size as u64),
        ] {
            if v == 0 {
                return Err(StoreError::permanent(
                    NAME,
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        let mut store = Self {
            client: None,
            url: cfg.url.clone(),
            ttl_secs: cfg.ttl_secs,
            max_value_size: cfg.max_value_size,
            timeout: Duration::from_secs(cfg.timeout_secs),
        };
        match tokio::time::timeout(store.timeout, Client::new(&store.url)).await {
            Ok(Ok(client)) => store.client = Some(client),
            // The crate reports a URL it cannot parse, and an address
            // without a port, as invalid input: no retry fixes those.
            Ok(Err(Error::Connect(e))) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(StoreError::permanent(NAME, format!("invalid url: {e}")));
            }
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
        Ok(store)
    }

    /// The `(hash, message)` items `batch` writes: one per recipient that
    /// has a hash, for messages that fit `max_value_size`.
    fn items<'a>(&self, batch: &'a [Arc<Envelope>]) -> Vec<(&'a str, &'a [u8])> {
        let mut items = Vec::new();
        for e in batch {
            if e.raw.len() > self.max_value_size {
                tracing::warn!(
                    store = NAME,
                    id = %e.id,
                    size = e.raw.len(),
                    max_value_size = self.max_value_size,
                    "message larger than max_value_size, not cached"
                );
                continue;
            }
            for (i, recipient) in e.recipients.iter().enumerate() {
                match e.hashes.get(i) {
                    Some(hash) if is_hash(hash) => items.push((hash.as_str(), &e.raw[..])),
                    _ => tracing::warn!(
                        store = NAME,
                        id = %e.id,
                        recipient = %recipient,
                        "no hash for the recipient, not cached"
                    ),
                }
            }
        }
        items
    }

    /// [`MemcachedStore::write`] bounded by the timeout.
    async fn write_within_timeout(
        &mut self,
        items: &[(&str, &[u8])],
        exptime: i64,
    ) -> Result<(), StoreError> {
        match tokio::time::timeout(self.timeout, self.write(items, exptime)).await {
            Ok(result) => result,
            Err(_) => {
                // Cut off mid-operation: the rest of the reply could be
                // taken for the next one's, so the connection goes.
                self.client = None;
                Err(StoreError::timed_out(NAME, self.timeout))
            }
        }
    }

    /// Sends `items`, connecting first if there is no usable connection.
    async fn write(&mut self, items: &[(&str, &[u8])], exptime: i64) -> Result<(), StoreError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => Client::new(&self.url)
                .await
                .map_err(|e| StoreError::transient(NAME, e))?,
        };
        let client = self.client.insert(client);
        let results = match client.set_multi(items, Some(exptime), None).await {
            Ok(r) => r,
            Err(e) => {
                self.client = None;
                return Err(StoreError::transient(NAME, e));
            }
        };
        let mut failed = Vec::new();
        for (key, result) in results {
            match result {
                Ok(()) => {}
                Err(Error::Protocol(Status::Error(ErrorKind::Server(m))))
                    if m.contains("too large") =>
                {
                    tracing::warn!(store = NAME, hash = key, reply = %m, "value refused as too large, not cached");
                }
                Err(e) => failed.push(format!("{key}: {e}")),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        // A reply we did not expect may mean the stream is out of step.
        self.client = None;
        Err(StoreError::transient(
            NAME,
            format!(
                "{} of {} not stored: {}",
                failed.len(),
                items.len(),
                failed.join("; ")
            ),
        ))
    }
}

impl Store for MemcachedStore {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A cheap write of an empty item that expires at once: proves the
    /// server takes writes on a working connection.
    async fn ping(&mut self) -> Result<(), StoreError> {
        let probe: [(&str, &[u8]); 1] = [("gsmtpd-readyz", b"")];
        self.write_within_timeout(&probe, -1).await
    }

    async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        let items = self.items(batch);
        if items.is_empty() {
            return Ok(());
        }
        let exptime = exptime(self.ttl_secs, SystemTime::now());
        self.write_within_timeout(&items, exptime).await
    }
}

/// The reference's hash: 32 hex characters (also a valid memcached key).
fn is_hash(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `exptime` of a `set` for `ttl_secs` from `now`: relative up to 30
/// days, a Unix time beyond (memcached's rule), capped at the largest
/// value its text protocol parses (a signed 32-bit number).
fn exptime(ttl_secs: u64, now: SystemTime) -> i64 {
    if ttl_secs <= RELATIVE_EXPIRY_MAX {
        return ttl_secs as i64;
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now.saturating_add(ttl_secs).min(i32::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_relative_up_to_30_days_then_absolute() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (ttl, want) in [
            (0, 0),
            (60, 60),
            (86_400, 86_400),
            (RELATIVE_EXPIRY_MAX, RELATIVE_EXPIRY_MAX as i64),
            (
                RELATIVE_EXPIRY_MAX + 1,
                1_800_000_000 + RELATIVE_EXPIRY_MAX as i64 + 1,
            ),
            (u64::MAX, i32::MAX as i64),
        ] {
            assert_eq!(exptime(ttl, now), want, "ttl {ttl}");
        }
    }

    #[test]
    fn hashes_are_32_hex_characters() {
        assert!(is_hash("0123456789abcdef0123456789ABCDEF"));
        for bad in [
            "",
            "0123",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef 123456789abcdef",
        ] {
            assert!(!is_hash(bad), "{bad:?}");
        }
    }

    fn store(max_value_size: usize) -> MemcachedStore {
        MemcachedStore {
            client: None,
            url: "tcp://127.0.0.1:1".into(),
            ttl_secs: 60,
            max_value_size,
            timeout: Duration::from_secs(1),
        }
    }

    fn envelope(raw: &'static [u8], recipients: &[&str], hashes: &[&str]) -> Arc<Envelope> {
        Arc::new(Envelope {
            hashes: hashes.iter().map(|s| s.to_string()).collect(),
            ..Envelope::fixture(recipients, raw)
        })
    }

    const H1: &str = "0123456789abcdef0123456789abcdef";
    const H2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn items_skip_missing_hashes_and_oversized_messages() {
        let s = store(10);
        let batch = [
            envelope(b"small", &["a@x", "b@x"], &[H1, H2]),
            // The pipeline did not hash: nothing to key the item by.
            envelope(b"small", &["c@x"], &[]),
            // One hash for two recipients: the second is skipped.
            envelope(b"short", &["d@x", "e@x"], &[H2]),
            envelope(b"far too large", &["f@x"], &[H1]),
        ];
        let items = s.items(&batch);
        assert_eq!(
            items,
            [
                (H1, &b"small"[..]),
                (H2, &b"small"[..]),
                (H2, &b"short"[..])
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_with_nothing_to_cache_commits_without_a_server() {
        // Port 1 refuses: the commit must not even try to connect.
        let mut s = store(4);
        let batch = [
            envelope(b"too large", &["a@x"], &[H1]),
            envelope(b"ok", &["b@x"], &[]),
        ];
        s.commit(&batch).await.unwrap();
        let err = s
            .commit(&[envelope(b"ok", &["b@x"], &[H1])])
            .await
            .unwrap_err();
        assert_eq!(err.kind, super::super::ErrorKind::Transient);
    }
}
