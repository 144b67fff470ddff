//! `palisade.controller.v1.FleetControl`: the fleet's one control point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use palisade_policy::Policy;
use palisade_policy::wire;
use palisade_proto::controller::v1 as pb;
use palisade_proto::node::v1 as npb;
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::config::ControllerConfig;
use crate::directory::{Directory, NodeEntry, NodeRecord, NodeTls};
use crate::store::{FleetPolicy, StoreError};

/// How old a node's streamed statistics may be before GetFleetStats asks the node itself.
pub(crate) const STATS_MAX_AGE: Duration = Duration::from_secs(3);

pub struct Controller {
    pub cluster: String,
    pub directory: Arc<Directory>,
    pub store: FleetPolicy,
    concurrency: usize,
    /// Serialises read-modify-write policy changes of this controller (etcd's compare
    /// protects against other controllers).
    pub(crate) policy_lock: tokio::sync::Mutex<()>,
    /// Followers of `WatchEvents` and the node event streams they need.
    pub events: Arc<crate::events::EventHub>,
    /// OTLP export (SPEC section 9), started by `serve`.
    pub(crate) telemetry: crate::telemetry::ControllerTelemetry,
    /// Since when each node has been off the fleet's version (`GetPolicyStatus`).
    pub(crate) lag: crate::lag::LagTracker,
}

pub struct ControllerHandle {
    pub controller: Arc<Controller>,
    pub addr: SocketAddr,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl ControllerHandle {
    /// Stops serving, following the registry, and watching the nodes.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.controller.events.stop();
        self.controller.directory.replace_all(Vec::new());
    }
    pub async fn join(self) {
        let _ = self.task.await;
        self.controller.telemetry.shutdown().await;
    }
}

impl Controller {
    pub fn new(cluster: String, directory: Arc<Directory>, store: FleetPolicy, concurrency: usize) -> Arc<Controller> {
        let events = crate::events::EventHub::new(directory.clone());
        Arc::new(Controller {
            cluster,
            directory,
            store,
            concurrency,
            policy_lock: tokio::sync::Mutex::new(()),
            events,
            telemetry: Default::default(),
            lag: Default::default(),
        })
    }

    /// Builds a controller from its configuration: etcd discovery and store when
    /// configured, else an empty in-memory directory (the caller adds nodes).
    pub async fn from_config(cfg: &ControllerConfig) -> Result<(Arc<Controller>, Option<etcd_client::Client>), String> {
        let nodes_tls = match &cfg.nodes_tls {
            Some(t) => Some(NodeTls::from_config(t).map_err(|e| format!("nodes_tls: cannot read {e}"))?),
            None => None,
        };
        let dir = Directory::with_server_name(nodes_tls, cfg.node_server_name.clone(), Duration::from_millis(cfg.node_timeout_ms));
        let (store, etcd) = match &cfg.etcd {
            Some(e) => {
                let opts = palisade_plane::etcd::connect_options(
                    Duration::from_millis(e.timeout_ms),
                    e.ca.as_deref(),
                    e.cert.as_deref(),
                    e.key.as_deref(),
                    e.username.as_deref().zip(e.password_file.as_deref()),
                )
                .map_err(|e| e.to_string())?;
                let client = etcd_client::Client::connect(&e.endpoints, Some(opts)).await.map_err(|e| format!("etcd: {e}"))?;
                (FleetPolicy::etcd(client.clone(), &cfg.cluster), Some(client))
            }
            None => (FleetPolicy::memory(None), None),
        };
        Ok((Controller::new(cfg.cluster.clone(), dir, store, cfg.push_concurrency), etcd))
    }

    /// Adds nodes known in advance (in-process dev fleet).
    pub fn add_static(&self, recs: Vec<NodeRecord>) {
        for r in recs {
            self.directory.upsert(r);
        }
    }

    pub(crate) fn targets(&self, node_id: &str) -> Result<Vec<Arc<NodeEntry>>, Status> {
        if node_id.is_empty() {
            return Ok(self.directory.snapshot());
        }
        self.directory.get(node_id).map(|n| vec![n]).ok_or_else(|| Status::not_found(format!("node {node_id} is not registered")))
    }

    /// Calls `f` on every target node, `concurrency` at a time; results sorted by node id.
    pub(crate) async fn fan_out<T, F, Fut>(&self, nodes: Vec<Arc<NodeEntry>>, f: F) -> Vec<(String, Result<T, Status>)>
    where
        F: Fn(Arc<NodeEntry>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut out: Vec<(String, Result<T, Status>)> = futures_util::stream::iter(nodes)
            .map(|n| {
                let id = n.record.id.clone();
                // One child span per node call; the call's request carries its context.
                let span = self.telemetry.node_call(&n);
                let fut = f(n);
                async move { (id, crate::telemetry::traced(span, fut).await) }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Validates, stores with a compare on the version, pushes to every node. Returns the
    /// version, per-node results and whether the fleet converged.
    pub async fn apply(&self, doc: Policy, expected: Option<u64>, dry_run: bool) -> Result<(u64, Vec<pb::NodeResult>, bool), Status> {
        doc.compile(1).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let current = self.store.get().await.map_err(store_status)?.map_or(0, |(_, v)| v);
        let version = match (dry_run, expected) {
            // A dry run answers what the apply would: a stale expected version is refused.
            (true, Some(expected)) if expected != current => return Err(store_status(StoreError::Conflict { expected, current })),
            (true, _) => current + 1,
            (false, _) => self.store.put(&doc, expected.unwrap_or(current)).await.map_err(store_status)?,
        };
        let pushing = std::time::Instant::now();
        let started_ms = crate::lag::unix_ms();
        let results = self.push(&doc, version, dry_run).await;
        if !dry_run {
            self.lag.pushed(started_ms, &results);
        }
        let converged = results.iter().all(|r| r.ok);
        self.telemetry.policy_pushed(pushing.elapsed(), converged, dry_run);
        tracing::info!(event = "policy_pushed", version, dry_run, nodes = results.len(), converged);
        Ok((version, results, converged))
    }

    async fn push(&self, doc: &Policy, version: u64, dry_run: bool) -> Vec<pb::NodeResult> {
        let versioned = wire::versioned(version, doc);
        let results = self
            .fan_out(self.directory.snapshot(), |n| {
                let req = npb::ApplyPolicyRequest { policy: Some(versioned.clone()), dry_run };
                async move {
                    let mut c = n.client.clone();
                    match c.apply_policy(palisade_plane::telemetry::request(req)).await {
                        Ok(r) => Ok(r.into_inner().version),
                        // Stale: the node says which version it serves. The same as ours
                        // (its etcd watch was faster) is converged; a newer one means
                        // someone pushed to it directly, and it may lack this policy.
                        Err(s) if s.code() == Code::FailedPrecondition && !dry_run => match trailer_version(&s) {
                            Some(v) if v == version => Ok(v),
                            Some(v) => {
                                Err(Status::failed_precondition(format!("diverged: the node serves version {v}, the fleet {version}"))
                                    .with_node_version(v))
                            }
                            None => Err(s),
                        },
                        Err(s) => Err(s),
                    }
                }
            })
            .await;
        results
            .into_iter()
            .map(|(node_id, r)| match r {
                Ok(v) => pb::NodeResult { node_id, ok: true, error: String::new(), version: v },
                Err(s) => pb::NodeResult {
                    node_id,
                    ok: false,
                    error: format!("{:?}: {}", s.code(), s.message()),
                    version: trailer_version(&s).unwrap_or(0),
                },
            })
            .collect()
    }

    /// A read-modify-write policy change (keys, revocations).
    pub(crate) async fn change(
        &self,
        f: impl FnOnce(&mut Policy) -> Result<(), Status>,
    ) -> Result<(u64, Vec<pb::NodeResult>, bool), Status> {
        let _one = self.policy_lock.lock().await;
        let (mut doc, version) =
            self.store.get().await.map_err(store_status)?.ok_or_else(|| Status::failed_precondition("no policy yet: apply one first"))?;
        f(&mut doc)?;
        prune_expired(&mut doc, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        self.apply(doc, Some(version), false).await
    }

    pub(crate) async fn counts(&self, node_id: &str, sel: &Option<npb::Selector>, op: NodeOp) -> Result<(Vec<pb::NodeCount>, u32), Status> {
        let nodes = self.targets(node_id)?;
        let results = self
            .fan_out(nodes, |n| {
                let sel = sel.clone();
                let op = op.clone();
                async move {
                    let mut c = n.client.clone();
                    match op {
                        NodeOp::Disconnect { code, reason } => Ok(c
                            .disconnect(palisade_plane::telemetry::request(npb::DisconnectRequest { selector: sel, code, reason }))
                            .await?
                            .into_inner()
                            .closed),
                        NodeOp::Send { payload, binary } => Ok(c
                            .send(palisade_plane::telemetry::request(npb::SendRequest { selector: sel, payload, binary }))
                            .await?
                            .into_inner()
                            .delivered),
                    }
                }
            })
            .await;
        let mut total = 0;
        let nodes = results
            .into_iter()
            .map(|(node_id, r)| match r {
                Ok(n) => {
                    total += n;
                    pb::NodeCount { node_id, ok: true, error: String::new(), count: n }
                }
                Err(s) => pb::NodeCount { node_id, ok: false, error: format!("{:?}: {}", s.code(), s.message()), count: 0 },
            })
            .collect();
        Ok((nodes, total))
    }

    pub(crate) async fn connections(
        &self,
        node_id: &str,
        sel: Option<npb::Selector>,
        limit: u32,
    ) -> Result<(Vec<pb::SubjectConnection>, Vec<String>), Status> {
        let nodes = self.targets(node_id)?;
        let limit = match limit {
            0 => 100,
            n => n.min(1000),
        };
        let results = self
            .fan_out(nodes, |n| {
                let sel = sel.clone();
                async move {
                    let mut c = n.client.clone();
                    let r = c
                        .list_connections(palisade_plane::telemetry::request(npb::ListConnectionsRequest {
                            selector: sel,
                            page_size: limit,
                            page_token: String::new(),
                        }))
                        .await?;
                    Ok(r.into_inner().connections)
                }
            })
            .await;
        let mut found = Vec::new();
        let mut unreachable = Vec::new();
        for (node_id, r) in results {
            match r {
                Ok(conns) => {
                    found.extend(conns.into_iter().map(|c| pb::SubjectConnection { node_id: node_id.clone(), connection: Some(c) }))
                }
                Err(_) => unreachable.push(node_id),
            }
        }
        Ok((found, unreachable))
    }
}

#[derive(Clone)]
pub(crate) enum NodeOp {
    Disconnect { code: u32, reason: String },
    Send { payload: Vec<u8>, binary: bool },
}

/// Drops revocations whose `expires` has passed: the tokens they target have expired, so
/// the entry protects nothing and only makes every node's policy larger.
pub fn prune_expired(doc: &mut Policy, now: u64) {
    doc.revocations.retain(|r| r.expires.as_deref().and_then(palisade_policy::parse_rfc3339).is_none_or(|t| t > now));
}

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Etcd(_) => Status::unavailable(e.to_string()),
        StoreError::Corrupt(_) => Status::internal(e.to_string()),
    }
}

pub(crate) fn need_selector(s: &Option<npb::Selector>) -> Result<(), Status> {
    palisade_plane::Selector::from_proto(s.as_ref())?
        .map(|_| ())
        .ok_or_else(|| Status::invalid_argument("selector: required (use all=true for everyone)"))
}

/// The version a node reported in the trailer of a stale `ApplyPolicy`.
fn trailer_version(s: &Status) -> Option<u64> {
    s.metadata().get(palisade_plane::record::POLICY_VERSION_TRAILER)?.to_str().ok()?.parse().ok()
}

trait WithNodeVersion {
    fn with_node_version(self, v: u64) -> Self;
}

impl WithNodeVersion for Status {
    /// Keeps the node's version on a status made here.
    fn with_node_version(mut self, v: u64) -> Status {
        if let Ok(value) = v.to_string().parse() {
            self.metadata_mut().insert(palisade_plane::record::POLICY_VERSION_TRAILER, value);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_revocations_are_pruned() {
        let mut doc = Policy::from_yaml_or_json(
            r#"
revocations:
  - { sub: "kept-forever" }
  - { jti: "old", expires: "2020-01-01T00:00:00Z" }
  - { jti: "future", expires: "2099-01-01T00:00:00Z" }
"#,
        )
        .expect("yaml");
        prune_expired(&mut doc, 1_800_000_000);
        let left: Vec<String> = doc.revocations.iter().map(|r| r.sub.clone().or(r.jti.clone()).unwrap_or_default()).collect();
        assert_eq!(left, vec!["kept-forever".to_string(), "future".to_string()]);
    }
}
