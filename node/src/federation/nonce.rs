//! The replay cache: which (origin, nonce) pairs were accepted recently.
//!
//! An accepted request's `created` is within the window of the time it was
//! seen, so once `2 × window` has passed since then any copy of it is refused as
//! stale: remembering a nonce that long is enough (DESIGN §5). Memory is bounded
//! by a cap on entries; when full the oldest entry is dropped, so the cap must
//! exceed the peak accepted-request rate times the retention, or a replay of
//! an evicted request within its window would pass (docs/federation.md).

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

/// A pair is kept as 16 bytes of SHA-256 over `origin \n nonce` (names and
/// nonces never contain a line feed), so an entry costs the same whatever the
/// lengths: about 65 bytes with the map and queue overhead.
type PairHash = [u8; 16];

fn pair_hash(origin: &str, nonce: &str) -> PairHash {
    let mut hasher = Sha256::new();
    hasher.update(origin.as_bytes());
    hasher.update(b"\n");
    hasher.update(nonce.as_bytes());
    let digest = hasher.finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Remembered (origin, nonce) pairs, oldest first.
#[derive(Debug)]
pub struct NonceCache {
    retention_ms: i64,
    capacity: usize,
    seen: HashMap<PairHash, i64>,
    order: VecDeque<(i64, PairHash)>,
}

impl NonceCache {
    /// A cache that remembers each nonce for `retention_ms` and holds at most
    /// `capacity` (at least 1) of them.
    pub fn new(retention_ms: i64, capacity: usize) -> Self {
        Self {
            retention_ms,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records the pair if it is new and returns `true`; `false` if it was
    /// seen within the retention (a replay).
    pub fn insert(&mut self, origin: &str, nonce: &str, now_ms: i64) -> bool {
        self.expire(now_ms);
        let key = pair_hash(origin, nonce);
        if self.seen.contains_key(&key) {
            return false;
        }
        while self.order.len() >= self.capacity {
            self.evict_oldest();
        }
        self.seen.insert(key, now_ms);
        self.order.push_back((now_ms, key));
        true
    }

    /// Whether the pair is remembered (without recording it).
    pub fn contains(&self, origin: &str, nonce: &str, now_ms: i64) -> bool {
        self.seen
            .get(&pair_hash(origin, nonce))
            .is_some_and(|&at| now_ms - at < self.retention_ms)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Drops entries older than the retention. Entries are in arrival order,
    /// so this stops at the first one still young enough.
    fn expire(&mut self, now_ms: i64) {
        while let Some((at, _)) = self.order.front() {
            if now_ms - at < self.retention_ms {
                break;
            }
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_nonce_twice_within_the_retention() {
        let mut cache = NonceCache::new(600_000, 10);
        assert!(cache.insert("a.example", "n1", 1_000));
        assert!(!cache.insert("a.example", "n1", 500_000));
        // Another origin may use the same nonce: the key is (origin, nonce).
        assert!(cache.insert("b.example", "n1", 500_000));
    }

    #[test]
    fn forgets_after_the_retention() {
        let mut cache = NonceCache::new(600_000, 10);
        assert!(cache.insert("a.example", "n1", 1_000));
        assert!(cache.contains("a.example", "n1", 600_999));
        assert!(!cache.contains("a.example", "n1", 601_000));
        assert!(cache.insert("a.example", "n2", 601_000));
        assert_eq!(cache.len(), 1, "the expired entry was dropped");
        assert!(cache.insert("a.example", "n1", 601_000));
    }

    #[test]
    fn holds_at_most_its_capacity_and_evicts_the_oldest() {
        let mut cache = NonceCache::new(600_000, 3);
        for (i, nonce) in ["n1", "n2", "n3", "n4", "n5"].iter().enumerate() {
            assert!(cache.insert("a.example", nonce, i as i64));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains("a.example", "n1", 10));
        assert!(!cache.contains("a.example", "n2", 10));
        for nonce in ["n3", "n4", "n5"] {
            assert!(!cache.insert("a.example", nonce, 10), "{nonce} is kept");
        }
    }
}
