//! Token buckets keyed by client address or subject, and concurrency slots.
//!
//! Bucket state lives outside the compiled policy, keyed by quota: a policy push that
//! leaves a quota unchanged keeps its counters, so a push is no way to reset rate limits.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_policy::RateSpec;

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets for one quota.
pub struct Buckets<K> {
    spec: RateSpec,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(spec: RateSpec) -> Self {
        Buckets { spec, shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: Default::default() }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Bucket>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Takes one token, or returns how long until one is available.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let burst = self.spec.burst as f64;
        let rate = self.spec.per_second;
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Forget full buckets first: they carry no state worth keeping.
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.clone()).or_insert(Bucket { tokens: burst, last: now });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// A keyed limiter whose quota follows the policy, keeping state while the quota holds.
pub struct RateLimiter<K> {
    current: Mutex<Arc<Buckets<K>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(spec: RateSpec) -> Self {
        RateLimiter { current: Mutex::new(Arc::new(Buckets::new(spec))) }
    }

    pub fn check(&self, spec: RateSpec, key: &K) -> Result<(), Duration> {
        let buckets = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if cur.spec != spec {
                *cur = Arc::new(Buckets::new(spec));
            }
            cur.clone()
        };
        buckets.check(key, Instant::now())
    }
}

/// Concurrency slots per key (per-IP and per-user connection caps). A `Slot` gives its
/// place back when dropped.
pub struct Slots<K: Hash + Eq + Clone + Send + 'static> {
    counts: Mutex<HashMap<K, u64>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Default for Slots<K> {
    fn default() -> Self {
        Slots { counts: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Slots<K> {
    pub fn try_acquire(self: &Arc<Self>, key: K, limit: u64) -> Option<Slot<K>> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key.clone()).or_insert(0);
        if *c >= limit {
            if *c == 0 {
                m.remove(&key);
            }
            return None;
        }
        *c += 1;
        Some(Slot { slots: self.clone(), key: Some(key) })
    }

    #[cfg(test)]
    pub fn count(&self, key: &K) -> u64 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }

    fn release(&self, key: &K) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(key) {
            *c -= 1;
            if *c == 0 {
                m.remove(key);
            }
        }
    }
}

pub struct Slot<K: Hash + Eq + Clone + Send + 'static> {
    slots: Arc<Slots<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.slots.release(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_and_reports_retry_after() {
        let b = Buckets::new(RateSpec { per_second: 2.0, burst: 3 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.check(&1, t0).is_ok());
        }
        let wait = b.check(&1, t0).expect_err("empty bucket");
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO);
        assert!(b.check(&1, t0 + Duration::from_millis(500)).is_ok());
        assert!(b.check(&2, t0).is_ok(), "keys are independent");
    }

    #[test]
    fn quota_state_survives_unchanged_quota() {
        let spec = RateSpec { per_second: 0.001, burst: 1 };
        let l = RateLimiter::new(spec);
        assert!(l.check(spec, &"a").is_ok());
        assert!(l.check(spec, &"a").is_err());
        assert!(l.check(spec, &"a").is_err(), "same quota: still limited");
        let other = RateSpec { per_second: 0.001, burst: 2 };
        assert!(l.check(other, &"a").is_ok(), "a new quota starts fresh");
    }

    #[test]
    fn slots_cap_and_release() {
        let s = Arc::new(Slots::default());
        let a = s.try_acquire("x", 2).expect("1");
        let _b = s.try_acquire("x", 2).expect("2");
        assert!(s.try_acquire("x", 2).is_none());
        drop(a);
        assert!(s.try_acquire("x", 2).is_some());
        assert_eq!(s.count(&"y"), 0);
    }
}
