//! A small cache of authentication and authorization decisions: entries live for a fixed TTL
//! (so a revoked token or a removed RoleBinding takes effect within it), and the cache never
//! holds more than its capacity (full of live entries, it starts over rather than grow).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries of `V` by `K`, each for `ttl`, at most `capacity` of them.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache keeping entries `ttl` (zero: nothing is kept), at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The live value of `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// Keeps `value` for `key` from now on.
    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert_at(&self, key: K, value: V, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (now, value));
    }

    /// Entries held (live or not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl_and_the_size_stays_bounded() {
        let cache = TtlCache::new(Duration::from_secs(30), 3);
        let start = Instant::now();
        cache.insert_at("a", 1, start);
        assert_eq!(cache.get_at(&"a", start + Duration::from_secs(29)), Some(1));
        assert_eq!(cache.get_at(&"a", start + Duration::from_secs(30)), None);
        for (i, key) in ["b", "c", "d", "e", "f"].into_iter().enumerate() {
            cache.insert_at(key, i, start + Duration::from_secs(1));
            assert!(cache.len() <= 3, "{} entries", cache.len());
        }
        // Expired entries go first when room is needed.
        let later = start + Duration::from_secs(60);
        cache.insert_at("g", 9, later);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get_at(&"g", later), Some(9));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = TtlCache::new(Duration::ZERO, 10);
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), None);
        assert_eq!(cache.len(), 0);
    }
}
