//! The fleet-wide per-user connection cap (`limits.per_user.fleet_max_connections`,
//! SPEC section 8): one etcd key per held slot, `/palisade/<cluster>/users/<sub>/<i>` for
//! `i` below the cap, each created by a transaction that succeeds only if the key does not
//! exist, under the node's registration lease. So the cap is exact under races (two nodes
//! can never hold the same slot), a killed node's slots vanish with its lease, and a
//! closed session deletes its key. Only subjects of a policy with the cap pay for it.
//!
//! With etcd unreachable (or the node not registered yet) the node falls back to its
//! per-node cap: the handshake is not refused for want of etcd; the fallback is counted
//! and logged. After an outage longer than the lease TTL the old lease's slots are gone,
//! so sessions that outlived it no longer count fleet-wide until they end. A release that
//! etcd does not answer (a slow election, a partition shorter than the lease) is retried
//! in the background until it succeeds or the lease that held the slot is gone: a blip
//! never shrinks a subject's cap for the node's life.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use crate::etcd::{ClusterError, Etcd};

/// At most this many slot transactions per handshake (after one read of the held ones).
const MAX_TRIES: usize = 8;

/// The longest wait between two attempts to release a slot.
const RELEASE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A slot held for a session's life; dropping it deletes the key (in the background).
pub struct FleetSlot {
    etcd: Arc<Etcd>,
    key: String,
    /// The holder written in the key: only a key still holding it is deleted.
    conn_id: String,
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        // The slot was taken under the lease the node holds now, or under an older one,
        // whose keys are gone already (the delete then finds nothing to delete).
        let lease = self.etcd.lease_id.load(Ordering::Acquire);
        self.etcd.release_slot(std::mem::take(&mut self.key), std::mem::take(&mut self.conn_id), lease);
    }
}

/// What a reservation found.
pub enum Reserved {
    Held(FleetSlot),
    /// Every slot is held elsewhere in the fleet: 429 `too_many_connections`.
    Full,
}

impl Etcd {
    /// Deletes `key` if `holder` still holds it, in the background, retrying with backoff
    /// while etcd does not answer, until it is done or the node no longer holds `lease`
    /// (a new lease means the old one, and every key under it, is gone).
    fn release_slot(self: &Arc<Self>, key: String, holder: String, lease: i64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let etcd = self.clone();
        rt.spawn(async move {
            let mut wait = std::time::Duration::from_millis(100);
            for attempt in 1u32.. {
                match etcd.delete_slot(&key, &holder).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(event = "fleet_slot_release_failed", attempt, error = %e),
                }
                if lease == 0 || etcd.lease_id.load(Ordering::Acquire) != lease {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RELEASE_BACKOFF_MAX);
            }
        });
    }

    /// Deletes `key` if `holder` still holds it: a slot that went with an old lease and
    /// was taken by another session since is left alone.
    async fn delete_slot(&self, key: &str, holder: &str) -> Result<(), ClusterError> {
        let mut c = self.client().await?;
        let txn = Txn::new().when([Compare::value(key, CompareOp::Equal, holder)]).and_then([TxnOp::delete(key, None)]);
        self.bounded(c.txn(txn)).await?;
        Ok(())
    }

    /// Takes a free slot of `sub` (below `cap`) for `conn_id`.
    pub(crate) async fn reserve_slot(self: &Arc<Self>, sub: &str, cap: u64, conn_id: &str) -> Result<Reserved, ClusterError> {
        let lease = self.live_lease().ok_or(ClusterError::Protocol("not registered: no lease for fleet slots"))?;
        let mut c = self.client().await?;
        let prefix = self.keys().user_slots(sub);
        let held = self.bounded(c.get(prefix.clone(), Some(GetOptions::new().with_prefix().with_keys_only()))).await?;
        let taken: HashSet<u64> =
            held.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(prefix.as_str())?.parse().ok()).collect();
        // Start at a random free slot so racing nodes rarely collide.
        let free: Vec<u64> = (0..cap).filter(|i| !taken.contains(i)).collect();
        if free.is_empty() {
            return Ok(Reserved::Full);
        }
        let start = rand::random::<u64>() as usize % free.len();
        for i in free.iter().cycle().skip(start).take(free.len().min(MAX_TRIES)) {
            let key = self.keys().user_slot(sub, *i);
            let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
                key.clone(),
                conn_id,
                Some(PutOptions::new().with_lease(lease)),
            )]);
            match self.bounded(c.txn(txn)).await {
                Ok(r) if r.succeeded() => return Ok(Reserved::Held(FleetSlot { etcd: self.clone(), key, conn_id: conn_id.to_owned() })),
                Ok(_) => {}
                Err(e) => {
                    // The transaction may have committed after all: release what it may
                    // hold (retried until etcd answers), so that a timeout never leaks a
                    // slot for the node's life. The handshake falls back to the node's cap.
                    self.release_slot(key, conn_id.to_owned(), lease);
                    return Err(e);
                }
            }
        }
        Ok(Reserved::Full)
    }
}

/// Fleet-cap outcomes, for stats and metrics.
#[derive(Debug, Default)]
pub struct FleetCapCounters {
    pub reserved: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub fallbacks: std::sync::atomic::AtomicU64,
}

impl FleetCapCounters {
    pub fn count(&self, c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
