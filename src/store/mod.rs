//! Where accepted messages go. A [`Store`] commits a batch of envelopes
//! durably, all or nothing; the [`writer`] gives each store one task that
//! batches whatever queued up while its previous commit ran (group commit).

use std::future::Future;
use std::sync::Arc;

use crate::message::Envelope;

pub mod maildir;
#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
pub mod null;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod writer;

pub use writer::{BlockingStore, Delivery, WriterHandle};

use crate::config::{Backend, Config, StoreConfig};

/// Whether retrying a failed commit can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Lock held, disk full, connection lost: the client retries later.
    Transient,
    /// Schema mismatch, bad configuration: needs an operator.
    Permanent,
}

/// A failed commit. Either kind answers `451 4.3.0`: a message we could not
/// store is never refused for good, the client keeps it and retries.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store}: {message}")]
pub struct StoreError {
    /// Which store failed.
    pub store: &'static str,
    /// Transient or permanent.
    pub kind: ErrorKind,
    /// What went wrong, for the log.
    pub message: Arc<str>,
}

impl StoreError {
    /// A failure a retry may fix.
    pub fn transient(store: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            store,
            kind: ErrorKind::Transient,
            message: message.to_string().into(),
        }
    }

    /// A failure that needs an operator.
    pub fn permanent(store: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            store,
            kind: ErrorKind::Permanent,
            message: message.to_string().into(),
        }
    }

    /// The server gave no answer within `timeout`: transient.
    pub fn timed_out(store: &'static str, timeout: std::time::Duration) -> Self {
        Self::transient(store, format!("no answer within {} s", timeout.as_secs()))
    }
}

/// A durable destination for messages.
///
/// `commit` writes every envelope of the batch or none of them, and returns
/// only once the write is durable by the store's own standard: the `250`
/// goes out after it returns `Ok`. One writer task owns the store, so
/// `commit` takes `&mut self` and is never called concurrently.
pub trait Store: Send + 'static {
    /// A short name for logs and metrics, e.g. `"sqlite"`.
    fn name(&self) -> &'static str;

    /// Durably writes `batch`, all or nothing.
    fn commit(
        &mut self,
        batch: &[Arc<Envelope>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks the store can take a commit now (for `/readyz`). The default
    /// says yes; backends that talk to a server ask it.
    fn ping(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

/// The configured stores, each with its writer task.
#[derive(Default)]
pub struct Stores {
    required: Vec<Delivery>,
    optional: Vec<Delivery>,
    writers: Vec<WriterHandle>,
    /// The largest message content every required store can take, when
    /// one of them has a limit of its own.
    size_cap: Option<u64>,
}

impl Stores {
    /// No stores yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `store` with its own writer.
    pub fn add<S: Store>(&mut self, store: S, cfg: &StoreConfig) {
        let (delivery, writer) = writer::spawn(store, cfg.queue_size, cfg.max_batch);
        if cfg.optional {
            self.optional.push(delivery);
        } else {
            self.required.push(delivery);
        }
        self.writers.push(writer);
    }

    /// Adds a blocking `store`, with its writer on a thread of its own.
    pub fn add_blocking<S: BlockingStore>(
        &mut self,
        store: S,
        cfg: &StoreConfig,
    ) -> Result<(), StoreError> {
        let (delivery, writer) = writer::spawn_thread(store, cfg.queue_size, cfg.max_batch)
            .map_err(|e| StoreError::permanent("writer", format!("cannot start a thread: {e}")))?;
        if cfg.optional {
            self.optional.push(delivery);
        } else {
            self.required.push(delivery);
        }
        self.writers.push(writer);
        Ok(())
    }

    /// The largest message content every required store can take, if a
    /// store limits it (NATS with `oversize = "reject"`); the server
    /// lowers its SIZE limit to it.
    pub fn size_cap(&self) -> Option<u64> {
        self.size_cap
    }

    /// Lowers the size cap to `cap` for a required store.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    fn cap_size(&mut self, cap: Option<u64>, cfg: &StoreConfig) {
        if let Some(cap) = cap.filter(|_| !cfg.optional) {
            self.size_cap = Some(self.size_cap.map_or(cap, |c| c.min(cap)));
        }
    }

    /// Opens every store the configuration lists.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        let mut stores = Self::new();
        for cfg in &config.store {
            match &cfg.backend {
                #[cfg(feature = "sqlite")]
                Backend::Sqlite(c) => stores.add_blocking(sqlite::SqliteStore::open(c)?, cfg)?,
                Backend::Null(_) => {
                    tracing::warn!("store kind \"null\": messages are acknowledged and discarded");
                    stores.add(null::NullStore, cfg);
                }
                #[cfg(feature = "redis")]
                Backend::Redis(c) => stores.add(self::redis::RedisStore::connect(c).await?, cfg),
                #[cfg(feature = "memcached")]
                Backend::Memcached(c) => {
                    stores.add(memcached::MemcachedStore::connect(c).await?, cfg)
                }
                #[cfg(feature = "nats")]
                Backend::Nats(c) => {
                    let store = nats::NatsStore::connect(c).await?;
                    stores.cap_size(store.size_cap(config.max_recipients), cfg);
                    stores.add(store, cfg);
                }
                Backend::Maildir(c) => {
                    stores.add_blocking(maildir::MaildirStore::open(c, &config.hostname)?, cfg)?
                }
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => stores.add(postgres::PostgresStore::connect(c).await?, cfg),
                #[cfg(feature = "mysql")]
                Backend::Mysql(c) => {
                    let store =
                        mysql::MysqlStore::connect(c, config.primary_mail_host.clone()).await?;
                    store.warn_if_packet_too_small(config.max_message_size);
                    stores.add(store, cfg);
                }
                #[allow(unreachable_patterns)]
                other => {
                    return Err(StoreError::permanent(
                        "config",
                        format!("store kind {:?} is not compiled in", other.kind()),
                    ));
                }
            }
            tracing::info!(
                kind = cfg.backend.kind(),
                optional = cfg.optional,
                "store open"
            );
        }
        Ok(stores)
    }

    /// The connections' side and the writers to drain at shutdown.
    pub fn split(self) -> (FanOut, Vec<WriterHandle>) {
        (
            FanOut {
                required: self.required,
                optional: self.optional,
            },
            self.writers,
        )
    }
}

/// Hands each message to every store: the `250` waits for the required
/// ones, the optional ones get it best-effort.
#[derive(Clone)]
pub struct FanOut {
    required: Vec<Delivery>,
    optional: Vec<Delivery>,
}

impl FanOut {
    /// Asks every required store whether it can commit now; the first
    /// failure, if any.
    pub async fn ready(&self) -> Result<(), StoreError> {
        for d in &self.required {
            d.ping().await?;
        }
        Ok(())
    }

    /// Commits `envelope` to every required store; `Err` if any failed.
    pub async fn deliver(&self, envelope: Arc<Envelope>) -> Result<(), StoreError> {
        for o in &self.optional {
            o.offer(Arc::clone(&envelope));
        }
        if let [only] = self.required.as_slice() {
            return only.deliver(envelope).await;
        }
        // Queue to all first, so the stores commit in parallel, then wait.
        let mut pending = Vec::with_capacity(self.required.len());
        for d in &self.required {
            pending.push(d.submit(Arc::clone(&envelope)).await?);
        }
        let mut result = Ok(());
        for p in pending {
            if let Err(e) = p.wait().await {
                result = Err(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::message::MessageId;

    /// Records what it was given and fails on demand. It tests the fan-out
    /// rules only; real stores are tested against real databases.
    struct Probe {
        seen: Arc<Mutex<Vec<MessageId>>>,
        fail: bool,
    }

    impl Store for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        async fn commit(&mut self, batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
            if self.fail {
                return Err(StoreError::transient("probe", "down"));
            }
            self.seen.lock().unwrap().extend(batch.iter().map(|e| e.id));
            Ok(())
        }
    }

    fn envelope() -> Arc<Envelope> {
        Arc::new(Envelope::fixture(&["r@x"], b"x"))
    }

    fn probe(fail: bool) -> (Probe, Arc<Mutex<Vec<MessageId>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Probe {
                seen: seen.clone(),
                fail,
            },
            seen,
        )
    }

    fn cfg(optional: bool) -> StoreConfig {
        StoreConfig {
            optional,
            ..StoreConfig::default()
        }
    }

    #[tokio::test]
    async fn every_required_store_must_commit() {
        let (a, seen_a) = probe(false);
        let (b, seen_b) = probe(false);
        let mut stores = Stores::new();
        stores.add(a, &cfg(false));
        stores.add(b, &cfg(false));
        let (fan, writers) = stores.split();
        let e = envelope();
        fan.deliver(e.clone()).await.unwrap();
        assert_eq!(*seen_a.lock().unwrap(), [e.id]);
        assert_eq!(*seen_b.lock().unwrap(), [e.id]);

        let (c, _) = probe(true);
        let (d, seen_d) = probe(false);
        let mut stores = Stores::new();
        stores.add(c, &cfg(false));
        stores.add(d, &cfg(false));
        let (fan2, writers2) = stores.split();
        assert!(
            fan2.deliver(envelope()).await.is_err(),
            "one failing required store fails the message"
        );
        assert_eq!(seen_d.lock().unwrap().len(), 1);
        drop((fan, fan2));
        for w in writers.into_iter().chain(writers2) {
            w.drained().await;
        }
    }

    #[tokio::test]
    async fn an_optional_store_never_fails_a_message() {
        let (a, seen_a) = probe(false);
        let (b, _) = probe(true);
        let (c, seen_c) = probe(false);
        let mut stores = Stores::new();
        stores.add(a, &cfg(false));
        stores.add(b, &cfg(true));
        stores.add(c, &cfg(true));
        let (fan, writers) = stores.split();
        let e = envelope();
        fan.deliver(e.clone()).await.unwrap();
        drop(fan);
        for w in writers {
            w.drained().await;
        }
        assert_eq!(*seen_a.lock().unwrap(), [e.id]);
        // The optional store that works got it too (after its writer drained).
        assert_eq!(*seen_c.lock().unwrap(), [e.id]);
    }
}
