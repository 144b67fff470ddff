//! The node directory: who is in the fleet (from etcd's registry or an in-process list),
//! an mTLS client to each, and each node's latest statistics from its `WatchStats`
//! stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use palisade_proto::node::v1 as pb;
use palisade_proto::node::v1::node_control_client::NodeControlClient;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

/// A node's registry record (`/palisade/<cluster>/nodes/<id>`), as the node writes it.
pub use palisade_plane::NodeRecord;

/// The controller's client identity and the CA of node certificates (None: plain text).
pub type NodeTls = palisade_plane::ControlTls;

pub struct NodeEntry {
    pub record: NodeRecord,
    pub client: NodeControlClient<Channel>,
    /// The latest `WatchStats` value and when it arrived.
    pub stats: Mutex<Option<(pb::Stats, std::time::Instant)>>,
    pub reachable: AtomicBool,
    stop: watch::Sender<bool>,
}

impl NodeEntry {
    /// The latest `WatchStats` value, if it is at most `max_age` old.
    pub fn latest_stats(&self, max_age: Duration) -> Option<pb::Stats> {
        let cur = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().filter(|(_, at)| at.elapsed() <= max_age).map(|(s, _)| s.clone())
    }
}

impl NodeEntry {
    /// The latest `WatchStats` value, however old, and when it arrived.
    pub fn last_stats_at(&self) -> Option<(pb::Stats, std::time::Instant)> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for NodeEntry {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

pub struct Directory {
    nodes: RwLock<BTreeMap<String, Arc<NodeEntry>>>,
    tls: Option<NodeTls>,
    /// Verify node certificates against this name instead of each record's host.
    server_name: Option<String>,
    timeout: Duration,
    changed: watch::Sender<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("node {id}: bad control address `{addr}`: {why}")]
pub struct BadRecord {
    pub id: String,
    pub addr: String,
    pub why: String,
}

impl Directory {
    pub fn new(tls: Option<NodeTls>, timeout: Duration) -> Arc<Directory> {
        Directory::with_server_name(tls, None, timeout)
    }

    /// As [`Directory::new`], verifying every node's certificate against `server_name`.
    pub fn with_server_name(tls: Option<NodeTls>, server_name: Option<String>, timeout: Duration) -> Arc<Directory> {
        Arc::new(Directory { nodes: RwLock::new(BTreeMap::new()), tls, server_name, timeout, changed: watch::channel(0).0 })
    }

    /// Nodes, sorted by id.
    pub fn snapshot(&self) -> Vec<Arc<NodeEntry>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<NodeEntry>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bumped at every membership change (tests and `stats --watch` wait on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn channel(&self, rec: &NodeRecord) -> Result<Channel, BadRecord> {
        let bad = |why: String| BadRecord { id: rec.id.clone(), addr: rec.control.clone(), why };
        if rec.control.is_empty() {
            return Err(bad("no control address".into()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", rec.control)).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &self.tls {
            let name = self.server_name.as_deref().unwrap_or(rec.control_host());
            ep = ep.tls_config(t.client_config(name)).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ep.connect_timeout(Duration::from_secs(2)).timeout(self.timeout).tcp_nodelay(true).connect_lazy())
    }

    /// Adds or updates a node; a changed control address gets a new client.
    pub fn upsert(&self, rec: NodeRecord) {
        if let Some(cur) = self.get(&rec.id)
            && cur.record == rec
        {
            return;
        }
        let channel = match self.channel(&rec) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(event = "node_record_rejected", error = %e);
                return;
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let entry = Arc::new(NodeEntry {
            record: rec.clone(),
            client: NodeControlClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
            stats: Mutex::new(None),
            reachable: AtomicBool::new(false),
            stop,
        });
        spawn_stats_watch(Arc::downgrade(&entry), stop_rx);
        tracing::info!(event = "node_discovered", node = %rec.id, control = %rec.control);
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(rec.id.clone(), entry);
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn remove(&self, id: &str) {
        if self.nodes.write().unwrap_or_else(|p| p.into_inner()).remove(id).is_some() {
            tracing::info!(event = "node_gone", node = %id);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Replaces the whole membership (after a fresh etcd read).
    pub fn replace_all(&self, recs: Vec<NodeRecord>) {
        let keep: HashMap<String, NodeRecord> = recs.into_iter().map(|r| (r.id.clone(), r)).collect();
        let gone: Vec<String> = self.snapshot().iter().map(|e| e.record.id.clone()).filter(|id| !keep.contains_key(id)).collect();
        for id in gone {
            self.remove(&id);
        }
        for rec in keep.into_values() {
            self.upsert(rec);
        }
    }
}

/// Keeps a node's `WatchStats` stream open, caching the latest statistics; marks the node
/// unreachable while the stream is down. Ends when the entry is dropped.
fn spawn_stats_watch(entry: std::sync::Weak<NodeEntry>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let Some(e) = entry.upgrade() else { return };
            let mut client = e.client.clone();
            drop(e);
            let opened = tokio::select! {
                r = client.watch_stats(pb::WatchStatsRequest { interval_ms: 1000 }) => r,
                _ = stop.changed() => return,
            };
            if let Ok(resp) = opened {
                let mut stream = resp.into_inner();
                loop {
                    let item = tokio::select! {
                        i = stream.next() => i,
                        _ = stop.changed() => return,
                    };
                    let Some(Ok(stats)) = item else { break };
                    let Some(e) = entry.upgrade() else { return };
                    e.reachable.store(true, Ordering::Relaxed);
                    *e.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some((stats, std::time::Instant::now()));
                }
            }
            if let Some(e) = entry.upgrade() {
                e.reachable.store(false, Ordering::Relaxed);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// Follows `/palisade/<cluster>/nodes/` in etcd: a full read, then a watch from the next
/// revision; after any error, a fresh read (so nothing missed stays missed).
pub async fn run_etcd_discovery(dir: Arc<Directory>, mut client: etcd_client::Client, cluster: String, mut stop: watch::Receiver<bool>) {
    use etcd_client::{EventType, GetOptions, WatchOptions};
    let prefix = palisade_plane::etcd::Keys::new(&cluster).nodes();
    loop {
        let round = async {
            let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
            let rev = resp.header().map_or(0, |h| h.revision());
            let recs = resp.kvs().iter().filter_map(|kv| serde_json::from_slice::<NodeRecord>(kv.value()).ok()).collect();
            dir.replace_all(recs);
            let mut stream = client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1))).await?;
            while let Some(msg) = stream.message().await? {
                // A cancelled watch (a compaction past its revision, a permission change)
                // stays open and silent: read the registry again instead of waiting on it.
                if msg.canceled() {
                    return Err(etcd_client::Error::WatchError("the registry watch was cancelled".into()));
                }
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    match ev.event_type() {
                        EventType::Put => {
                            if let Ok(rec) = serde_json::from_slice::<NodeRecord>(kv.value()) {
                                dir.upsert(rec);
                            }
                        }
                        EventType::Delete => {
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            if let Some(id) = key.strip_prefix(&prefix) {
                                dir.remove(id);
                            }
                        }
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            r = round => {
                if let Err(e) = r {
                    tracing::warn!(event = "discovery_error", error = %e, "re-reading the node registry");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}
