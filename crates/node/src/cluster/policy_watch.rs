//! The policy watch: read `/palisade/<cluster>/policy`, then watch it from the next
//! revision; every value goes through the `PolicyStore` (a stale version is ignored
//! quietly: the controller's push was faster; an invalid document is logged as
//! `policy_rejected` and the last good policy keeps serving). After an outage the key is
//! read again, so a missed update converges.

use std::sync::Arc;

use etcd_client::WatchOptions;

use super::{Backoff, pause};
use crate::etcd::{ClusterError, Etcd};
use crate::policy_store::ApplyError;
use crate::state::NodeState;

impl Etcd {
    /// Reads the policy key, applies it, then applies every change until the watch ends.
    async fn follow_policy(&self, state: &NodeState, connected: &mut bool) -> Result<(), ClusterError> {
        let mut c = self.client().await?;
        let key = self.policy_key();
        let resp = self.bounded(c.get(key.clone(), None)).await?;
        let revision = resp.header().map(|h| h.revision()).ok_or(ClusterError::Protocol("a response without a header"))?;
        if let Some(kv) = resp.kvs().first() {
            apply_policy(state, kv.value(), kv.mod_revision());
        }
        let mut watch = self.bounded(c.watch(key, Some(WatchOptions::new().with_start_revision(revision + 1)))).await?;
        *connected = true;
        loop {
            let Some(resp) = watch.message().await? else {
                return Err(ClusterError::Protocol("the policy watch ended"));
            };
            if resp.canceled() {
                return Err(ClusterError::Protocol("the policy watch was cancelled"));
            }
            for ev in resp.events() {
                match (ev.event_type(), ev.kv()) {
                    (etcd_client::EventType::Put, Some(kv)) => apply_policy(state, kv.value(), kv.mod_revision()),
                    (etcd_client::EventType::Delete, _) => {
                        tracing::warn!(event = "policy_deleted", node = %state.id, "the policy key was deleted in etcd; the current policy keeps serving");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Applies a policy document found in etcd at `revision` (its version).
pub fn apply_policy(state: &NodeState, value: &[u8], revision: i64) {
    let version = u64::try_from(revision).unwrap_or(0);
    let rejected = |field: &str, message: &str| {
        tracing::warn!(event = "policy_rejected", node = %state.id, source = "etcd", version, field, error = message);
        state.events.publish(|| crate::events::policy("etcd", version, Some(("invalid", format!("{field}: {message}"))), String::new()));
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return rejected("document", "not UTF-8 text");
    };
    let doc = match palisade_policy::Policy::from_yaml_or_json(text) {
        Ok(d) => d,
        Err(e) => return rejected(&e.field, &e.message),
    };
    match state.policy.apply(&doc, version) {
        Ok(stored) => {
            tracing::info!(event = "policy_applied", node = %state.id, source = "etcd", version, unchanged = stored == crate::policy_store::Stored::Unchanged);
            state.events.publish(|| crate::events::policy("etcd", version, None, String::new()));
        }
        // The controller's push got here first (or a replay after a reconnect).
        Err(ApplyError::Stale { offered, current }) => {
            tracing::debug!(event = "policy_stale", node = %state.id, source = "etcd", offered, current);
        }
        Err(ApplyError::Invalid(e)) => rejected(&e.field, &e.message),
    }
}

pub(super) async fn run(state: Arc<NodeState>, etcd: Arc<Etcd>) {
    let mut stop = state.stop_tx.subscribe();
    let mut backoff = Backoff::new();
    let mut failing = false;
    while !*stop.borrow() {
        let mut connected = false;
        let result = tokio::select! {
            r = etcd.follow_policy(&state, &mut connected) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        if connected {
            backoff.reset();
            failing = false;
        }
        if let Err(e) = result {
            if !failing {
                tracing::warn!(event = "etcd_unavailable", node = %state.id, task = "policy_watch", error = %e, "the last good policy keeps serving");
                failing = true;
            } else {
                tracing::debug!(event = "etcd_retry", node = %state.id, task = "policy_watch", error = %e);
            }
        }
        if !pause(&mut stop, backoff.next()).await {
            break;
        }
    }
}
