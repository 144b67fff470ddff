//! Graceful drain (SPEC section 4), started by SIGTERM or the `Drain` RPC.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::registry::{Command, Selector};
use crate::state::NodeState;

/// Graceful drain (SPEC section 4): `/readyz` turns 503 and new handshakes get 503 at
/// once; the node deregisters from etcd (so the fleet stops sending it clients) before
/// any session is closed; live sessions are closed with 1001 spread over the deadline;
/// the listeners stop when the sessions are gone or at the deadline. Returns how many
/// sessions were still open at the deadline (closed then).
pub async fn drain(st: &Arc<NodeState>, deadline: Duration) -> usize {
    if st.draining.swap(true, Ordering::AcqRel) {
        return 0;
    }
    tracing::info!(event = "drain_started", node = %st.id, sessions = st.registry.len());
    if let Some(etcd) = &st.etcd {
        // Bounded (twice the etcd timeout): an unreachable etcd does not hold the drain;
        // the lease then expires by itself.
        etcd.deregister().await;
    }
    st.drain_tx.send_replace(Some(deadline));
    let until = tokio::time::Instant::now() + deadline;
    while !st.registry.is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = st.registry.dispatch(&Selector::All, Command::Close { code: 1001, reason: "node draining".into() });
    // Let the last close frames go out before the listeners stop.
    let grace = tokio::time::Instant::now() + Duration::from_secs(2);
    while !st.registry.is_empty() && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    st.stop_tx.send_replace(true);
    tracing::info!(event = "drain_finished", node = %st.id, forced = left);
    left
}
