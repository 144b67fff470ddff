//! The live policy: one atomic swap (ArcSwap) that the hot path reads lock-free, the
//! version the node serves, and a `watch` that wakes live sessions when the policy they
//! enforce changed (revocations, limits).
//!
//! Validation (document -> compiled policy) is apart from storing (compiled policy ->
//! live): a dry run only validates, and every hop compiles a document once. A document
//! equal to the live one is not swapped and wakes nobody; its newer version is still
//! recorded, so the node reports the fleet's version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use palisade_policy::{CompiledPolicy, Policy, PolicyError};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("version {offered} is not newer than the current version {current}")]
    Stale { offered: u64, current: u64 },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

/// What `store` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The new policy is live; sessions were told.
    Swapped,
    /// Same document as the live one: only the version moved; nobody was woken.
    Unchanged,
}

pub struct PolicyStore {
    current: ArcSwapOption<CompiledPolicy>,
    /// The version served: the live policy's, or newer when a push changed nothing.
    version: AtomicU64,
    /// Bumped at every swap: what the notifier waits on.
    swaps: watch::Sender<u64>,
    /// Bumped at every swap, after the new policy is live: what a busy session compares
    /// before each frame it reads, so a frame sent after a push is judged by it.
    generation: AtomicU64,
    /// Serialises writers so that the version check and the swap are one step.
    write: std::sync::Mutex<()>,
    /// Token cache hits of every policy this node served (each policy's cache is its own).
    token_cache_hits: Arc<AtomicU64>,
}

impl Default for PolicyStore {
    fn default() -> Self {
        PolicyStore {
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            swaps: watch::channel(0).0,
            generation: AtomicU64::new(0),
            write: std::sync::Mutex::new(()),
            token_cache_hits: Arc::default(),
        }
    }
}

/// Compiles `doc` as `version`: matchers and keys prepared once. Nothing changes.
pub fn validate(doc: &Policy, version: u64) -> Result<CompiledPolicy, ApplyError> {
    Ok(doc.compile(version)?)
}

impl PolicyStore {
    /// The snapshot a handshake runs with from start to end. `None`: no valid policy yet.
    pub fn load(&self) -> Option<Arc<CompiledPolicy>> {
        self.current.load_full()
    }

    /// Reads the current policy without taking a reference count (hot paths).
    pub fn with<R>(&self, f: impl FnOnce(Option<&CompiledPolicy>) -> R) -> R {
        let guard = self.current.load();
        f(guard.as_deref())
    }

    /// The version this node serves (0: none yet).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Counts the swaps of the live policy (one atomic load: the session's hot path). A
    /// value read before `load` never announces a policy newer than the one loaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Token verifications answered by a token cache since the node started.
    pub fn token_cache_hits(&self) -> u64 {
        self.token_cache_hits.load(Ordering::Relaxed)
    }

    /// Tokens the live policy's cache holds (0 when it is off).
    pub fn token_cache_entries(&self) -> u64 {
        self.with(|p| p.and_then(|p| p.verifier.token_cache_stats()).map_or(0, |(_, n)| n as u64))
    }

    /// Changes at every swap of the live policy (not at an unchanged push).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Makes `compiled` live. A version not newer than the current one is refused; a
    /// document equal to the live one only moves the version.
    pub fn store(&self, mut compiled: CompiledPolicy) -> Result<Stored, ApplyError> {
        compiled.verifier.count_token_cache_hits_in(self.token_cache_hits.clone());
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.version();
        if compiled.version <= current {
            return Err(ApplyError::Stale { offered: compiled.version, current });
        }
        let version = compiled.version;
        let unchanged = self.current.load().as_ref().is_some_and(|live| live.document == compiled.document);
        self.version.store(version, Ordering::Release);
        if unchanged {
            return Ok(Stored::Unchanged);
        }
        self.current.store(Some(Arc::new(compiled)));
        self.generation.fetch_add(1, Ordering::Release);
        self.swaps.send_modify(|n| *n += 1);
        Ok(Stored::Swapped)
    }

    /// Validates and stores `doc` as `version` (the etcd watch, the bootstrap file).
    pub fn apply(&self, doc: &Policy, version: u64) -> Result<Stored, ApplyError> {
        self.store(validate(doc, version)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(max_connections: u64) -> Policy {
        let mut p: Policy = Policy::from_yaml_or_json(
            r#"{"auth":{"keys":[{"kid":"k","alg":"HS256","secret_base64":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="}]}}"#,
        )
        .expect("doc");
        p.limits.max_connections = max_connections;
        p
    }

    #[test]
    fn versions_must_grow_and_a_stale_push_changes_nothing() {
        let s = PolicyStore::default();
        assert!(s.load().is_none());
        assert_eq!(s.apply(&doc(10), 3).expect("first"), Stored::Swapped);
        assert!(matches!(s.apply(&doc(20), 3), Err(ApplyError::Stale { offered: 3, current: 3 })));
        assert!(matches!(s.apply(&doc(20), 2), Err(ApplyError::Stale { offered: 2, current: 3 })));
        assert_eq!(s.load().expect("live").limits.max_connections, 10);
        assert_eq!(s.version(), 3);
    }

    #[test]
    fn an_invalid_document_is_refused_and_the_last_good_policy_keeps_serving() {
        let s = PolicyStore::default();
        s.apply(&doc(10), 1).expect("first");
        let mut bad = doc(10);
        bad.limits.messages.max_bytes = 0;
        match s.apply(&bad, 2) {
            Err(ApplyError::Invalid(e)) => assert_eq!(e.field, "limits.messages.max_bytes"),
            other => panic!("expected invalid, got {other:?}"),
        }
        assert_eq!((s.version(), s.load().expect("live").version), (1, 1));
    }

    #[test]
    fn validating_changes_nothing() {
        let s = PolicyStore::default();
        s.apply(&doc(10), 5).expect("first");
        let rx = s.subscribe();
        // A dry run at any version, older ones included, only compiles.
        assert_eq!(validate(&doc(99), 1).expect("valid").limits.max_connections, 99);
        assert_eq!((s.version(), s.load().expect("live").limits.max_connections), (5, 10));
        assert!(!rx.has_changed().expect("open"));
    }

    #[test]
    fn the_generation_counts_swaps_only() {
        let s = PolicyStore::default();
        s.apply(&doc(10), 1).expect("first");
        let g = s.generation();
        s.apply(&doc(10), 2).expect("unchanged");
        assert_eq!(s.generation(), g, "an unchanged push is not a swap");
        s.apply(&doc(11), 3).expect("swap");
        assert_eq!(s.generation(), g + 1);
        assert!(s.apply(&doc(12), 3).is_err());
        assert_eq!(s.generation(), g + 1, "a refused push is not a swap");
    }

    #[test]
    fn an_unchanged_document_moves_the_version_and_wakes_nobody() {
        let s = PolicyStore::default();
        s.apply(&doc(10), 1).expect("first");
        let before = s.load().expect("live");
        let rx = s.subscribe();
        assert_eq!(s.apply(&doc(10), 2).expect("same doc"), Stored::Unchanged);
        assert_eq!(s.version(), 2, "the node reports the fleet's version");
        assert!(Arc::ptr_eq(&before, &s.load().expect("live")), "not swapped");
        assert!(!rx.has_changed().expect("open"), "no session woken");
        assert_eq!(s.apply(&doc(11), 3).expect("changed"), Stored::Swapped);
        assert!(rx.has_changed().expect("open"), "sessions woken by a real change");
    }
}
