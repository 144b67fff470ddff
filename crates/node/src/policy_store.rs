//! The live policy: one atomic swap (ArcSwap) that the hot path reads lock-free, plus a
//! `watch` of the version so live sessions learn about revocations.

use std::sync::Arc;

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

pub struct PolicyStore {
    current: ArcSwapOption<CompiledPolicy>,
    version: watch::Sender<u64>,
    /// Serialises writers so that the version check and the swap are one step.
    write: std::sync::Mutex<()>,
}

impl Default for PolicyStore {
    fn default() -> Self {
        PolicyStore { current: ArcSwapOption::empty(), version: watch::channel(0).0, write: std::sync::Mutex::new(()) }
    }
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

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Validates and swaps in `doc` as `version`. A version not newer than the current one
    /// is refused; an invalid document is refused and the current policy keeps serving.
    /// With `dry_run` only the document is checked and nothing changes. Returns the
    /// compiled policy.
    pub fn apply(&self, doc: &Policy, version: u64, dry_run: bool) -> Result<Arc<CompiledPolicy>, ApplyError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        // A dry run only validates: its version orders nothing.
        let current = self.version();
        if version <= current && !dry_run {
            return Err(ApplyError::Stale { offered: version, current });
        }
        let compiled = Arc::new(doc.compile(version)?);
        if !dry_run {
            self.current.store(Some(compiled.clone()));
            self.version.send_replace(version);
        }
        Ok(compiled)
    }
}
