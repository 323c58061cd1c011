//! Where accepted messages go. A [`Store`] commits a batch of envelopes
//! durably, all or nothing; the [`writer`] gives each store one task that
//! batches whatever queued up while its previous commit ran (group commit).

use std::future::Future;
use std::sync::Arc;

use crate::message::Envelope;

#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod writer;

pub use writer::{Delivery, WriterHandle};

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
}
