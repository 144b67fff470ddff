//! Verified tokens, remembered for reconnects: a client that reconnects with the token it
//! used before (a dropped network, a deploy's drain, a page reload) skips the signature
//! check, which is most of a handshake's cost after TLS.
//!
//! - Keyed by the token's SHA-256, so the cache holds no credential and a lookup's
//!   timing depends on digests only.
//! - Bounded (`auth.token_cache.max_entries`, quick_cache's S3-FIFO eviction).
//! - It belongs to the policy's [`Verifier`]: every policy change (keys, issuer,
//!   audience, revocations) starts with an empty cache.
//! - At every hit: the key the token names must still be the one that verified it (a
//!   JWKS refresh may have replaced or dropped it), and every rule that depends on the
//!   time (`exp`, `nbf`, `iat`, the lifetime) and the revocations are checked again, so a
//!   hit answers what the full check would (`iss`, `aud` and the signature are fixed by
//!   the token and the policy).
//! - Only tokens that passed are remembered; a refused one is checked in full each time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::digest;

use super::{Claims, Key, KeySet, TokenError, Verifier};

pub(super) struct TokenCache {
    entries: quick_cache::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Verifications answered from the cache: its own counter, or one that outlives the
    /// policy (the node's, across its policies).
    hits: Arc<AtomicU64>,
}

/// What a full check found, packed: the claims' text in one allocation, so that an entry
/// is two blocks of memory (the cache's memory is what a fresh token's insert and the
/// eviction it causes touch: with 10,000 scattered five-block entries the node's
/// handshakes were 3.4% dearer than with 100, the P-256 math among what slowed).
struct Verified {
    /// `sub`, `jti`, `kid` and the claims segment, one after the other.
    text: Box<str>,
    /// Where `sub`, `jti` and `kid` end in `text`.
    ends: [usize; 3],
    has_jti: bool,
    has_kid: bool,
    exp: u64,
    iat: Option<u64>,
    nbf: Option<u64>,
    key: Arc<Key>,
}

impl Verified {
    fn new(c: &Claims, nbf: Option<u64>, key: Arc<Key>) -> Self {
        let (jti, kid) = (c.jti.as_deref().unwrap_or(""), c.kid.as_deref().unwrap_or(""));
        let mut text = String::with_capacity(c.sub.len() + jti.len() + kid.len() + c.claims_b64.len());
        let mut ends = [0; 3];
        for (i, part) in [c.sub.as_str(), jti, kid].into_iter().enumerate() {
            text.push_str(part);
            ends[i] = text.len();
        }
        text.push_str(&c.claims_b64);
        let (has_jti, has_kid) = (c.jti.is_some(), c.kid.is_some());
        Verified { text: text.into_boxed_str(), ends, has_jti, has_kid, exp: c.exp, iat: c.iat, nbf, key }
    }

    fn kid(&self) -> Option<&str> {
        self.has_kid.then(|| &self.text[self.ends[1]..self.ends[2]])
    }

    fn claims(&self) -> Claims {
        let t = &self.text;
        Claims {
            sub: t[..self.ends[0]].to_owned(),
            exp: self.exp,
            iat: self.iat,
            jti: self.has_jti.then(|| t[self.ends[0]..self.ends[1]].to_owned()),
            kid: self.kid().map(str::to_owned),
            claims_b64: t[self.ends[2]..].to_owned(),
        }
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the entries: their claims are personal data.
        f.debug_struct("TokenCache").field("len", &self.entries.len()).field("capacity", &self.entries.capacity()).finish()
    }
}

impl TokenCache {
    /// `None` for 0 entries (no cache).
    pub(super) fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| TokenCache { entries: quick_cache::sync::Cache::new(entries), hits: Arc::default() })
    }

    pub(super) fn verify(&self, v: &Verifier, token: &str, now: u64, extra: Option<&KeySet>) -> Result<Claims, TokenError> {
        let id = fingerprint(token);
        if let Some(hit) = self.entries.get(&id)
            && v.select_key(hit.kid(), extra).is_ok_and(|k| Arc::ptr_eq(k, &hit.key))
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let claims = hit.claims();
            v.check_times(&claims, hit.nbf, now)?;
            return Ok(claims);
        }
        let (claims, nbf, key) = v.verify_uncached(token, now, extra)?;
        self.entries.insert(id, Arc::new(Verified::new(&claims, nbf, key.clone())));
        Ok(claims)
    }

    /// `(hits so far, tokens held)`.
    fn stats(&self) -> (u64, usize) {
        (self.hits.load(Ordering::Relaxed), self.entries.len())
    }
}

impl Verifier {
    /// Remembers up to `entries` verified tokens (none: no cache). The cache belongs to
    /// this verifier, so a new policy starts with an empty one.
    pub fn with_token_cache(self, entries: usize) -> Self {
        Verifier { cache: TokenCache::new(entries), ..self }
    }

    /// Counts this cache's hits in `counter` (one that outlives the policy) instead of its
    /// own.
    pub fn count_token_cache_hits_in(&mut self, counter: Arc<AtomicU64>) {
        if let Some(c) = &mut self.cache {
            c.hits = counter;
        }
    }

    /// The token cache's `(hits counted in its counter, tokens held)`; `None` when it is
    /// off.
    pub fn token_cache_stats(&self) -> Option<(u64, usize)> {
        self.cache.as_ref().map(TokenCache::stats)
    }
}

fn fingerprint(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut id = [0u8; 32];
    id.copy_from_slice(d.as_ref());
    id
}
