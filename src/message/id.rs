//! Message ids: unique across processes and restarts, and sortable by time.
//!
//! 128 bits — 48 bits of milliseconds since the epoch, 32 random bits chosen
//! once per process, 48 bits of a per-process counter that starts at a random
//! value — written as 26 characters of Crockford base32 (like a ULID). Two
//! receivers behind one load balancer therefore never collide, and ids from
//! one receiver sort in the order it accepted the messages.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A message id; `Copy`, and formats without allocating.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; 26]);

impl MessageId {
    /// A new id for a message received at `now`.
    pub fn generate(now: SystemTime) -> Self {
        static NODE: OnceLock<(u32, AtomicU64)> = OnceLock::new();
        let (node, counter) = NODE.get_or_init(|| {
            let r = random_u64();
            (r as u32, AtomicU64::new(random_u64() >> 16))
        });
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            & ((1 << 48) - 1);
        let seq = counter.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
        Self::from_u128((u128::from(ms) << 80) | (u128::from(*node) << 48) | u128::from(seq))
    }

    fn from_u128(mut v: u128) -> Self {
        let mut out = [0u8; 26];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        Self(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII from ALPHABET is ever written.
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

/// 64 random bits from the standard library's per-process hasher keys, so
/// no extra dependency is needed for a one-off seed.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn unique_and_time_sorted() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_796_318_133);
        let mut seen = HashSet::new();
        let mut last = MessageId::generate(t0);
        for i in 0..10_000u64 {
            let id = MessageId::generate(t0 + Duration::from_millis(i / 10));
            assert!(seen.insert(id), "duplicate {id}");
            assert!(id > last, "{id} not after {last}");
            assert_eq!(id.as_str().len(), 26);
            last = id;
        }
    }

    #[test]
    fn encodes_in_crockford_base32() {
        assert_eq!(
            MessageId::from_u128(0).as_str(),
            "00000000000000000000000000"
        );
        assert_eq!(
            MessageId::from_u128(31).as_str(),
            "0000000000000000000000000Z"
        );
        assert_eq!(
            MessageId::from_u128(u128::MAX).as_str(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
    }
}
