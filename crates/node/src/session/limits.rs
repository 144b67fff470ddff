//! The limits a session reads, and the client's own ping bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use palisade_policy::CompiledPolicy;

/// The limits one session reads, updated in place at every policy change: the message
/// limit and ping rate, the outbox's buffered-bytes limit. Shared by the session, its
/// sockets and its outbox (one task; atomics because the future must be `Send`).
pub struct Limits {
    max_message_bytes: AtomicUsize,
    max_buffered_bytes: AtomicU64,
    rate_per_second_bits: AtomicU64,
    rate_burst: AtomicU64,
}

impl Limits {
    pub(super) fn new(p: &CompiledPolicy) -> Limits {
        let l = Limits {
            max_message_bytes: AtomicUsize::new(0),
            max_buffered_bytes: AtomicU64::new(0),
            rate_per_second_bits: AtomicU64::new(0),
            rate_burst: AtomicU64::new(0),
        };
        l.update(p);
        l
    }

    pub fn update(&self, p: &CompiledPolicy) {
        let m = &p.limits.messages;
        self.max_message_bytes.store(m.max_bytes, Ordering::Relaxed);
        self.max_buffered_bytes.store(m.max_buffered_bytes as u64, Ordering::Relaxed);
        self.rate_per_second_bits.store(m.rate.per_second.to_bits(), Ordering::Relaxed);
        self.rate_burst.store(m.rate.burst, Ordering::Relaxed);
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.load(Ordering::Relaxed)
    }

    pub fn max_buffered_bytes(&self) -> u64 {
        self.max_buffered_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn rate(&self) -> (f64, f64) {
        (f64::from_bits(self.rate_per_second_bits.load(Ordering::Relaxed)), self.rate_burst.load(Ordering::Relaxed) as f64)
    }
}

/// A token bucket over the session's rate (`Limits::rate`): the client's messages take
/// from one, its Pings from another (counted apart).
pub(super) struct TokenBucket {
    tokens: f64,
    last_refill: Instant,
}

impl TokenBucket {
    pub(super) fn new(burst: u64) -> TokenBucket {
        TokenBucket { tokens: burst as f64, last_refill: Instant::now() }
    }

    /// One token, refilled up to `at` (never earlier than the last refill).
    pub(super) fn take(&mut self, at: Instant, (per_second, burst): (f64, f64)) -> bool {
        let now = at.max(self.last_refill);
        let elapsed = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
