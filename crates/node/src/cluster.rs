//! Cluster state in etcd (SPEC section 8).
//!
//! | key | value |
//! |---|---|
//! | `/palisade/<cluster>/nodes/<node-id>` | [`NodeRecord`] as JSON, under a lease of `lease_ttl_seconds`, kept alive |
//! | `/palisade/<cluster>/policy` | the policy document, YAML or JSON text; its version is the key's mod revision |
//! | `/palisade/<cluster>/tickets/<id>` | a one-time ticket (JSON, see `tickets.rs`), under a lease of the ticket TTL |
//!
//! Two background tasks per node (started by `Node::spawn` when `[etcd]` is configured,
//! stopped by `stop_tx`):
//! - registration: grant a lease, put the record, keep the lease alive; when etcd goes
//!   away or the lease is gone (keep-alive TTL 0), register again, retrying with a
//!   backoff capped at 1 s, so the node is back in the registry soon after etcd returns.
//!   A drain deregisters (revokes the lease) before sessions are closed.
//! - policy: read the key, then watch it from the next revision; every value is applied
//!   through the `PolicyStore` (stale versions are ignored quietly: the controller's push
//!   was faster; an invalid document is logged as `policy_rejected` and the last good
//!   policy keeps serving). After an outage the key is read again, so a missed update
//!   converges.
//!
//! Serving never depends on etcd: with etcd unreachable the node keeps its sessions and its
//! last good policy. Only tickets need etcd, and they fail closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell, watch};

use crate::config::{EtcdConfig, TlsMode};
use crate::policy_store::ApplyError;
use crate::state::NodeState;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the etcd TLS file {path}: {source}")]
    TlsFile { path: String, source: std::io::Error },
    #[error("etcd: {0}")]
    Protocol(&'static str),
}

/// A node's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// The node's base URL: `wss://host:port` (`ws://` behind a TLS-offloading proxy).
    pub wss: String,
    /// The control plane's `host:port`, empty without one.
    pub control: String,
    /// The node's software version.
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_unix_ms: u64,
}

impl NodeRecord {
    /// The record of `state`'s node, listening on `wss` (and `control`).
    pub fn new(state: &NodeState, wss: SocketAddr, control: Option<SocketAddr>) -> NodeRecord {
        let etcd = state.config.etcd.as_ref();
        let advertised = |addr: SocketAddr| {
            let host = match etcd.and_then(|e| e.advertise_host.clone()) {
                Some(h) => h,
                None if addr.ip().is_unspecified() => host_name(),
                None => addr.ip().to_string(),
            };
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", addr.port())
            } else {
                format!("{host}:{}", addr.port())
            }
        };
        let scheme = if state.config.tls.mode == TlsMode::Offloaded { "ws" } else { "wss" };
        NodeRecord {
            id: state.id.clone(),
            wss: format!("{scheme}://{}", advertised(wss)),
            control: control.map(advertised).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: etcd.map(|e| e.labels.clone()).unwrap_or_default(),
            started_unix_ms: state.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

struct Registration {
    /// The lease that holds the node's key now.
    lease: Option<i64>,
}

/// The node's connection to etcd and its place there. One per node, shared by the
/// registration and policy tasks and the ticket store.
pub struct Etcd {
    cfg: EtcdConfig,
    options: ConnectOptions,
    prefix: String,
    node_id: String,
    /// Connected on first use (the client connects lazily and reconnects by itself).
    client: OnceCell<Client>,
    /// Serialises (re-)registration and deregistration: a drain never races a re-register.
    registration: Mutex<Registration>,
    /// Set once by a drain: the node must not register again.
    deregistered: watch::Sender<bool>,
    /// Whether the node's key is in place under a live lease (as far as this node knows).
    registered: watch::Sender<bool>,
}

/// etcd client options: timeouts, keep-alive, and TLS when a CA or a client certificate is
/// given (shared by nodes and the controller).
pub fn connect_options(
    timeout: Duration,
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<ConnectOptions, ClusterError> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|source| ClusterError::TlsFile { path: p.display().to_string(), source });
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        // A half-open connection (a dead peer, a partition) is noticed within ~15 s even
        // on the long-lived watch and keep-alive streams. etcd refuses pings more often
        // than every 5 s.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if ca.is_some() || cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl Etcd {
    /// Prepares the connection (reads the TLS files); nothing is sent until first use.
    pub fn new(cfg: &EtcdConfig, cluster: &str, node_id: &str) -> Result<Etcd, ClusterError> {
        let options = connect_options(cfg.timeout(), cfg.ca.as_deref(), cfg.cert.as_deref(), cfg.key.as_deref())?;
        Ok(Etcd {
            cfg: cfg.clone(),
            options,
            prefix: format!("/palisade/{cluster}"),
            node_id: node_id.to_owned(),
            client: OnceCell::new(),
            registration: Mutex::new(Registration { lease: None }),
            deregistered: watch::channel(false).0,
            registered: watch::channel(false).0,
        })
    }

    pub fn node_key(&self) -> String {
        format!("{}/nodes/{}", self.prefix, self.node_id)
    }

    pub fn policy_key(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    fn ticket_key(&self, id: &str) -> String {
        format!("{}/tickets/{id}", self.prefix)
    }

    /// Whether the node's key is in place under a live lease, as far as the node knows.
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.subscribe()
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        let c = self.client.get_or_try_init(|| Client::connect(self.cfg.endpoints.clone(), Some(self.options.clone()))).await?;
        Ok(c.clone())
    }

    /// One etcd request, bounded by the configured timeout.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.cfg.timeout(), call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(self.cfg.timeout())),
        }
    }

    // ---- registration ----

    /// Grants a fresh lease and puts the record under it, unless the node was
    /// deregistered. The lease it replaces (gone, or kept by an etcd that was away) is
    /// revoked. Returns the new lease, `None` when deregistered.
    async fn register(&self, record: &NodeRecord) -> Result<Option<i64>, ClusterError> {
        let value = serde_json::to_vec(record).map_err(|_| ClusterError::Protocol("cannot encode the node record"))?;
        let mut c = self.client().await?;
        let mut reg = self.registration.lock().await;
        if *self.deregistered.borrow() {
            return Ok(None);
        }
        let ttl = i64::try_from(self.cfg.lease_ttl_seconds).unwrap_or(10);
        let lease = self.bounded(c.lease_grant(ttl, None)).await?.id();
        if let Err(e) = self.bounded(c.put(self.node_key(), value, Some(PutOptions::new().with_lease(lease)))).await {
            let _ = self.bounded(c.lease_revoke(lease)).await;
            return Err(e);
        }
        if let Some(old) = reg.lease.replace(lease)
            && old != lease
        {
            // Best effort: the key is on the new lease now, so this deletes nothing.
            let _ = self.bounded(c.lease_revoke(old)).await;
        }
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
    async fn release(&self) {
        let mut reg = self.registration.lock().await;
        self.registered.send_replace(false);
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
    async fn keep_alive(&self, lease: i64) -> Result<(), ClusterError> {
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

    // ---- tickets ----

    /// Stores a ticket under its own lease of `ttl`.
    pub(crate) async fn put_ticket(&self, id: &str, value: Vec<u8>, ttl: Duration) -> Result<(), ClusterError> {
        let mut c = self.client().await?;
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self.bounded(c.lease_grant(ttl, None)).await?.id();
        self.bounded(c.put(self.ticket_key(id), value, Some(PutOptions::new().with_lease(lease)))).await?;
        Ok(())
    }

    /// Takes a ticket out of etcd in one transaction: if the key exists, delete it and
    /// return what it held. Of two nodes racing for one ticket exactly one gets it.
    pub(crate) async fn take_ticket(&self, id: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut c = self.client().await?;
        let key = self.ticket_key(id);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))]);
        let resp = self.bounded(c.txn(txn)).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        Ok(resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(d) if d.deleted() == 1 => d.prev_kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        }))
    }

    // ---- policy ----

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
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return rejected("document", "not UTF-8 text");
    };
    let doc = match palisade_policy::Policy::from_yaml_or_json(text) {
        Ok(d) => d,
        Err(e) => return rejected(&e.field, &e.message),
    };
    match state.policy.apply(&doc, version, false) {
        Ok(p) => tracing::info!(event = "policy_applied", node = %state.id, source = "etcd", version = p.version),
        // The controller's push got here first (or a replay after a reconnect).
        Err(ApplyError::Stale { offered, current }) => {
            tracing::debug!(event = "policy_stale", node = %state.id, source = "etcd", offered, current);
        }
        Err(ApplyError::Invalid(e)) => rejected(&e.field, &e.message),
    }
}

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
    vec![tokio::spawn(registration(state.clone(), etcd.clone(), record)), tokio::spawn(policy_watch(state, etcd))]
}

async fn registration(state: Arc<NodeState>, etcd: Arc<Etcd>, record: NodeRecord) {
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

async fn policy_watch(state: Arc<NodeState>, etcd: Arc<Etcd>) {
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

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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

    #[test]
    fn node_record_is_json_with_the_spec_fields() {
        let r = NodeRecord {
            id: "n1".into(),
            wss: "wss://127.0.0.1:8443".into(),
            control: "127.0.0.1:9443".into(),
            version: "0.1.0".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            started_unix_ms: 1,
        };
        let v: serde_json::Value = serde_json::to_value(&r).expect("json");
        for f in ["id", "wss", "control", "version", "labels", "started_unix_ms"] {
            assert!(v.get(f).is_some(), "{f}");
        }
        assert_eq!(serde_json::from_value::<NodeRecord>(v).expect("back"), r);
    }
}
