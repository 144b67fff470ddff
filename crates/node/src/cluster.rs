//! Cluster state in etcd (SPEC section 8).
//!
//! | key | value |
//! |---|---|
//! | `/palisade/<cluster>/nodes/<node-id>` | `NodeRecord` as JSON, under a lease of `lease_ttl_seconds`, kept alive |
//! | `/palisade/<cluster>/policy` | the policy document, YAML or JSON text; its version is the key's mod revision |
//! | `/palisade/<cluster>/tickets/<id>` | a one-time ticket (JSON, see `tickets.rs`), under a lease of the ticket TTL |
//!
//! Two background tasks per node (started by `Node::spawn` when `[etcd]` is configured,
//! stopped by `stop_tx`): [`registration`] and [`policy_watch`]. Serving never depends on
//! etcd: with etcd unreachable the node keeps its sessions and its last good policy.
//! Only tickets need etcd, and they fail closed.

mod policy_watch;
mod registration;

use std::sync::Arc;
use std::time::Duration;

use palisade_plane::NodeRecord;
use tokio::sync::watch;

pub use policy_watch::apply_policy;
pub use registration::node_record;

use crate::etcd::Etcd;
use crate::state::NodeState;

/// Retry delays: 100 ms doubling up to 1 s, with jitter.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff(Self::FIRST)
    }
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d.mul_f64(0.75 + rand::random::<f64>() * 0.25)
    }
}

/// Sleeps for `d` unless the node stops first (then `false`).
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Starts the registration and policy tasks; both end when the node stops.
pub fn spawn(state: Arc<NodeState>, etcd: Arc<Etcd>, record: NodeRecord) -> Vec<tokio::task::JoinHandle<()>> {
    vec![tokio::spawn(registration::run(state.clone(), etcd.clone(), record)), tokio::spawn(policy_watch::run(state, etcd))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_at_one_second() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[9] >= Duration::from_millis(750));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
