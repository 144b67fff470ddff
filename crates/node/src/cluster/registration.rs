//! Registration (SPEC section 8): grant a lease, put the node's record under it, keep the
//! lease alive; when etcd goes away or the lease is gone (keep-alive TTL 0), register
//! again with a backoff capped at 1 s, so the node is back soon after etcd returns. A
//! drain deregisters (revokes the lease) before sessions are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use etcd_client::PutOptions;
use palisade_plane::record::{NodeRecord, host_port};

use super::{Backoff, pause};
use crate::config::TlsMode;
use crate::etcd::{ClusterError, Etcd};
use crate::state::NodeState;

/// The record of `state`'s node, listening on `wss` (and `control`).
pub fn node_record(state: &NodeState, wss: SocketAddr, control: Option<SocketAddr>) -> NodeRecord {
    let etcd = state.config.etcd.as_ref();
    let advertised = |addr: SocketAddr| {
        let host = match etcd.and_then(|e| e.advertise_host.clone()) {
            Some(h) => h,
            None if addr.ip().is_unspecified() => host_name(),
            None => addr.ip().to_string(),
        };
        host_port(&host, addr.port())
    };
    let scheme = if state.config.tls.mode == TlsMode::Offloaded { "ws" } else { "wss" };
    NodeRecord {
        id: state.id.clone(),
        wss: format!("{scheme}://{}", advertised(wss)),
        control: control.map(advertised).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").into(),
        labels: etcd.map(|e| e.labels.clone()).unwrap_or_default(),
        started_unix_ms: state.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        routes: {
            let mut r: Vec<String> = state.routes.keys().cloned().collect();
            r.sort();
            r
        },
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Etcd {
    /// Grants a fresh lease and puts the record under it, unless the node was
    /// deregistered. The lease it replaces (gone, or kept by an etcd that was away) is
    /// revoked. Returns the new lease, `None` when deregistered.
    pub(crate) async fn register(&self, record: &NodeRecord) -> Result<Option<i64>, ClusterError> {
        let value = serde_json::to_vec(record).map_err(|_| ClusterError::Protocol("cannot encode the node record"))?;
        let mut c = self.client().await?;
        let mut reg = self.registration.lock().await;
        if *self.deregistered.borrow() {
            return Ok(None);
        }
        let ttl = i64::try_from(self.cfg.lease_ttl_seconds).unwrap_or(10);
        // A lease that is still alive (a keep-alive that failed once, etcd back within
        // the TTL) is kept: revoking it would delete the fleet-wide user slots of the
        // node's live sessions.
        let alive = match reg.lease {
            Some(old) => self.bounded(c.lease_time_to_live(old, None)).await.is_ok_and(|r| r.ttl() > 0),
            None => false,
        };
        let lease = match reg.lease {
            Some(old) if alive => old,
            _ => self.bounded(c.lease_grant(ttl, None)).await?.id(),
        };
        if let Err(e) = self.bounded(c.put(self.node_key(), value, Some(PutOptions::new().with_lease(lease)))).await {
            if !alive {
                let _ = self.bounded(c.lease_revoke(lease)).await;
            }
            return Err(e);
        }
        if let Some(old) = reg.lease.replace(lease)
            && old != lease
        {
            // Best effort: the key is on the new lease now, so this deletes nothing.
            let _ = self.bounded(c.lease_revoke(old)).await;
        }
        self.lease_id.store(lease, std::sync::atomic::Ordering::Release);
        self.registered.send_replace(true);
        Ok(Some(lease))
    }

    /// Removes the node from the registry (revokes its lease, which deletes the key) and
    /// keeps it out: the registration task stops. Bounded by twice the etcd timeout; when
    /// etcd is unreachable the lease expires by itself within its TTL.
    pub async fn deregister(&self) {
        self.deregistered.send_replace(true);
        let bound = self.cfg.timeout() * 2;
        if tokio::time::timeout(bound, self.release()).await.is_err() {
            tracing::warn!(event = "node_deregister_failed", node = %self.node_id, error = "etcd did not answer in time");
        }
    }

    /// Revokes the current lease (deleting the key when the lease is already gone).
    pub(crate) async fn release(&self) {
        let mut reg = self.registration.lock().await;
        self.registered.send_replace(false);
        self.lease_id.store(0, std::sync::atomic::Ordering::Release);
        let Some(lease) = reg.lease.take() else { return };
        let result = async {
            let mut c = self.client().await?;
            if self.bounded(c.lease_revoke(lease)).await.is_err() {
                self.bounded(c.delete(self.node_key(), None)).await?;
            }
            Ok::<_, ClusterError>(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(event = "node_deregistered", node = %self.node_id),
            Err(e) => tracing::warn!(event = "node_deregister_failed", node = %self.node_id, error = %e),
        }
    }

    /// Keeps `lease` alive until it is lost (an error), or the node is deregistered (`Ok`).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<(), ClusterError> {
        let mut c = self.client().await?;
        let (mut keeper, mut stream) = self.bounded(c.lease_keep_alive(lease)).await?;
        let interval = Duration::from_millis(self.cfg.lease_ttl_seconds * 1000 / 3).max(Duration::from_millis(500));
        let mut deregistered = self.deregistered.subscribe();
        loop {
            self.bounded(keeper.keep_alive()).await?;
            match self.bounded(stream.message()).await? {
                Some(r) if r.ttl() > 0 => {}
                Some(_) => return Err(ClusterError::Protocol("the registration lease is gone")),
                None => return Err(ClusterError::Protocol("the keep-alive stream ended")),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = deregistered.wait_for(|d| *d) => return Ok(()),
            }
        }
    }
}

pub(super) async fn run(state: Arc<NodeState>, etcd: Arc<Etcd>, record: NodeRecord) {
    let mut stop = state.stop_tx.subscribe();
    let mut backoff = Backoff::new();
    // Log an outage once, not at every retry.
    let mut failing = false;
    while !*stop.borrow() && !*etcd.deregistered.borrow() {
        let attempt = async {
            let Some(lease) = etcd.register(&record).await? else { return Ok(()) };
            tracing::info!(event = "node_registered", node = %state.id, key = %etcd.node_key(), lease, ttl = etcd.cfg.lease_ttl_seconds);
            backoff.reset();
            failing = false;
            etcd.keep_alive(lease).await
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match result {
            // Deregistered by a drain: the lease is revoked (by `deregister`, or here when
            // the drain gave up waiting).
            Ok(()) => {
                etcd.release().await;
                break;
            }
            Err(e) => {
                etcd.registered.send_replace(false);
                if !failing {
                    tracing::warn!(event = "etcd_unavailable", node = %state.id, task = "registration", error = %e, "registering again when etcd returns; serving continues");
                    failing = true;
                } else {
                    tracing::debug!(event = "etcd_retry", node = %state.id, task = "registration", error = %e);
                }
            }
        }
        if !pause(&mut stop, backoff.next()).await {
            break;
        }
    }
}
