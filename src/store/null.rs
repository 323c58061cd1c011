//! The `null` store: acknowledges every message and keeps none. For load
//! tests and benchmarks, to measure the protocol without the storage; a
//! server with only a null store promises nothing with its `250`.

use std::sync::Arc;

use super::{Store, StoreError};
use crate::message::Envelope;

/// Accepts and discards.
#[derive(Debug, Default)]
pub struct NullStore;

impl Store for NullStore {
    fn name(&self) -> &'static str {
        "null"
    }

    async fn commit(&mut self, _batch: &[Arc<Envelope>]) -> Result<(), StoreError> {
        Ok(())
    }
}
