//! `palisade.controller.v1.FleetControl`: the fleet's one control point.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use palisade_plane::ControlTls;
use palisade_policy::Policy;
use palisade_policy::wire;
use palisade_proto::controller::v1 as pb;
use palisade_proto::controller::v1::fleet_control_server::{FleetControl, FleetControlServer};
use palisade_proto::node::v1 as npb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::config::ControllerConfig;
use crate::directory::{Directory, NodeEntry, NodeRecord, NodeTls};
use crate::store::{FleetPolicy, StoreError};

/// How old a node's streamed statistics may be before GetFleetStats asks the node itself.
const STATS_MAX_AGE: Duration = Duration::from_secs(3);

pub struct Controller {
    pub cluster: String,
    pub directory: Arc<Directory>,
    pub store: FleetPolicy,
    concurrency: usize,
    /// Serialises read-modify-write policy changes of this controller (etcd's compare
    /// protects against other controllers).
    policy_lock: tokio::sync::Mutex<()>,
    /// Followers of `WatchEvents` and the node event streams they need.
    pub events: Arc<crate::events::EventHub>,
    /// OTLP export (SPEC section 9), started by `serve`.
    pub(crate) telemetry: crate::telemetry::ControllerTelemetry,
}

pub struct ControllerHandle {
    pub controller: Arc<Controller>,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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

    /// Serves FleetControl (plus health and reflection) on `listener`; with an etcd
    /// client, follows the node registry.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<ControlTls>,
        etcd: Option<etcd_client::Client>,
    ) -> ControllerHandle {
        let addr = listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let (stop, stop_rx) = watch::channel(false);
        if let Some(client) = etcd {
            tokio::spawn(crate::directory::run_etcd_discovery(self.directory.clone(), client, self.cluster.clone(), stop_rx.clone()));
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FleetControlServer<Service>>().await;
        let svc = FleetControlServer::new(Service { c: self.clone() }).max_decoding_message_size(4 * 1024 * 1024);
        // Operators of the controller's cluster only.
        let access = tls.as_ref().map(|_| palisade_plane::Access::controller(&self.cluster));
        let tracer = self.telemetry.start(&self.cluster, addr, &self.directory);
        let task = tokio::spawn(async move {
            let _health = health;
            if let Err(e) = palisade_plane::grpc::serve_grpc(
                "palisade.controller.v1.FleetControl",
                move |r| r.add_service(svc),
                health_service,
                listener,
                tls,
                access,
                stop_rx,
                tracer,
            )
            .await
            {
                tracing::error!(event = "controller_failed", error = %e);
            }
        });
        tracing::info!(event = "controller_started", %addr);
        ControllerHandle { controller: self, addr, stop, task }
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
        let version = if dry_run { current + 1 } else { self.store.put(&doc, expected.unwrap_or(current)).await.map_err(store_status)? };
        let pushing = std::time::Instant::now();
        let results = self.push(&doc, version, dry_run).await;
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
    async fn change(&self, f: impl FnOnce(&mut Policy) -> Result<(), Status>) -> Result<(u64, Vec<pb::NodeResult>, bool), Status> {
        let _one = self.policy_lock.lock().await;
        let (mut doc, version) =
            self.store.get().await.map_err(store_status)?.ok_or_else(|| Status::failed_precondition("no policy yet: apply one first"))?;
        f(&mut doc)?;
        prune_expired(&mut doc, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        self.apply(doc, Some(version), false).await
    }

    async fn counts(&self, node_id: &str, sel: &Option<npb::Selector>, op: NodeOp) -> Result<(Vec<pb::NodeCount>, u32), Status> {
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

    async fn connections(
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
enum NodeOp {
    Disconnect { code: u32, reason: String },
    Send { payload: Vec<u8>, binary: bool },
}

/// Drops revocations whose `expires` has passed: the tokens they target have expired, so
/// the entry protects nothing and only makes every node's policy larger.
pub fn prune_expired(doc: &mut Policy, now: u64) {
    doc.revocations.retain(|r| r.expires.as_deref().and_then(palisade_policy::parse_rfc3339).is_none_or(|t| t > now));
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Etcd(_) => Status::unavailable(e.to_string()),
        StoreError::Corrupt(_) => Status::internal(e.to_string()),
    }
}

fn need_selector(s: &Option<npb::Selector>) -> Result<(), Status> {
    palisade_plane::Selector::from_proto(s.as_ref())?
        .map(|_| ())
        .ok_or_else(|| Status::invalid_argument("selector: required (use all=true for everyone)"))
}

struct Service {
    c: Arc<Controller>,
}

#[tonic::async_trait]
impl FleetControl for Service {
    async fn list_nodes(&self, _r: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self
            .c
            .directory
            .snapshot()
            .iter()
            .map(|n| pb::Node {
                id: n.record.id.clone(),
                wss_address: n.record.wss.clone(),
                control_address: n.record.control.clone(),
                version: n.record.version.clone(),
                labels: n.record.labels.clone().into_iter().collect(),
                started_unix_ms: n.record.started_unix_ms,
                reachable: n.reachable.load(Ordering::Relaxed),
                routes: n.record.routes.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_policy(&self, _r: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let (doc, v) = self.c.store.get().await.map_err(store_status)?.ok_or_else(|| Status::not_found("no policy was applied yet"))?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(wire::versioned(v, &doc)) }))
    }

    async fn apply_policy(&self, r: Request<pb::ApplyPolicyRequest>) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let r = r.into_inner();
        let v = r.policy.ok_or_else(|| Status::invalid_argument("policy: required"))?;
        let doc = wire::document(&v).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _one = self.c.policy_lock.lock().await;
        let (version, results, converged) = self.c.apply(doc, r.expected_version, r.dry_run).await?;
        Ok(Response::new(pb::ApplyPolicyResponse { version, results, converged, applied: !r.dry_run, dry_run: r.dry_run }))
    }

    async fn disconnect(&self, r: Request<pb::DisconnectRequest>) -> Result<Response<pb::DisconnectResponse>, Status> {
        let r = r.into_inner();
        need_selector(&r.selector)?;
        if r.code != 0 && !(4000..=4999).contains(&r.code) {
            return Err(Status::invalid_argument("code: must be 4000-4999 (0 means 4003)"));
        }
        let (nodes, closed) = self.c.counts(&r.node_id, &r.selector, NodeOp::Disconnect { code: r.code, reason: r.reason }).await?;
        tracing::info!(event = "fleet_disconnect", closed, nodes = nodes.len());
        Ok(Response::new(pb::DisconnectResponse { nodes, closed }))
    }

    async fn send(&self, r: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        let r = r.into_inner();
        need_selector(&r.selector)?;
        let (nodes, delivered) = self.c.counts(&r.node_id, &r.selector, NodeOp::Send { payload: r.payload, binary: r.binary }).await?;
        Ok(Response::new(pb::SendResponse { nodes, delivered }))
    }

    async fn revoke(&self, r: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let r = r.into_inner();
        let entry = match r.target {
            Some(Target::Subject(s)) if !s.is_empty() => {
                palisade_policy::model::Revocation { sub: Some(s), jti: None, issued_before: r.issued_before, expires: r.expires }
            }
            Some(Target::Session(j)) if !j.is_empty() => {
                if r.issued_before.is_some() {
                    return Err(Status::invalid_argument("issued_before: applies to subject revocations only"));
                }
                palisade_policy::model::Revocation { sub: None, jti: Some(j), issued_before: None, expires: r.expires }
            }
            _ => return Err(Status::invalid_argument("target: a subject or a session is required")),
        };
        let (version, results, converged) = self
            .c
            .change(|doc| {
                if !doc.revocations.contains(&entry) {
                    doc.revocations.push(entry);
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::RevokeResponse { version, results, converged }))
    }

    async fn add_key(&self, r: Request<pb::AddKeyRequest>) -> Result<Response<pb::AddKeyResponse>, Status> {
        let r = r.into_inner();
        let (version, results, converged) = self
            .c
            .change(|doc| {
                if doc.auth.keys.iter().any(|k| k.kid == r.kid) {
                    return Err(Status::already_exists(format!("kid `{}` is already in the policy", r.kid)));
                }
                doc.auth.keys.push(palisade_policy::model::KeyDoc {
                    kid: r.kid.clone(),
                    alg: r.alg.clone(),
                    public_key_pem: r.public_key_pem.clone(),
                    secret_base64: r.secret_base64.clone(),
                });
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::AddKeyResponse { version, results, converged }))
    }

    async fn retire_key(&self, r: Request<pb::RetireKeyRequest>) -> Result<Response<pb::RetireKeyResponse>, Status> {
        let kid = r.into_inner().kid;
        let (version, results, converged) = self
            .c
            .change(|doc| {
                let before = doc.auth.keys.len();
                doc.auth.keys.retain(|k| k.kid != kid);
                if doc.auth.keys.len() == before {
                    return Err(Status::not_found(format!("no key `{kid}` in the policy")));
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::RetireKeyResponse { version, results, converged }))
    }

    async fn get_fleet_stats(&self, _r: Request<pb::GetFleetStatsRequest>) -> Result<Response<pb::FleetStats>, Status> {
        let results = self
            .c
            .fan_out(self.c.directory.snapshot(), |n| async move {
                // Aggregated from each node's WatchStats stream (one value a second); a node
                // whose stream has no recent value is asked once.
                match n.latest_stats(STATS_MAX_AGE) {
                    Some(s) => Ok(s),
                    None => Ok(n.client.clone().get_stats(palisade_plane::telemetry::request(npb::GetStatsRequest {})).await?.into_inner()),
                }
            })
            .await;
        let mut nodes = Vec::new();
        let mut unreachable = Vec::new();
        for (id, r) in results {
            match r {
                Ok(s) => nodes.push(s),
                Err(_) => unreachable.push(id),
            }
        }
        let version = self.c.store.get().await.ok().flatten().map_or(0, |(_, v)| v);
        let mut t = npb::Stats {
            node_id: "fleet".into(),
            cluster: self.c.cluster.clone(),
            policy_version: version,
            ready: true,
            ..Default::default()
        };
        for s in &nodes {
            t.active_connections += s.active_connections;
            t.handshakes_accepted += s.handshakes_accepted;
            t.handshakes_refused += s.handshakes_refused;
            t.messages_in += s.messages_in;
            t.messages_out += s.messages_out;
            t.bytes_in += s.bytes_in;
            t.bytes_out += s.bytes_out;
            t.buffered_bytes += s.buffered_bytes;
            t.egress_alerts += s.egress_alerts;
            t.ready &= s.ready;
            t.draining |= s.draining;
        }
        Ok(Response::new(pb::FleetStats { totals: Some(t), nodes, unreachable_node_ids: unreachable }))
    }

    async fn find_subject(&self, r: Request<pb::FindSubjectRequest>) -> Result<Response<pb::FindSubjectResponse>, Status> {
        let subject = r.into_inner().subject;
        if subject.is_empty() {
            return Err(Status::invalid_argument("subject: required"));
        }
        let sel = Some(npb::Selector { target: Some(npb::selector::Target::Subject(subject)) });
        let (connections, unreachable_node_ids) = self.c.connections("", sel, 1000).await?;
        Ok(Response::new(pb::FindSubjectResponse { connections, unreachable_node_ids }))
    }

    async fn drain(&self, r: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let r = r.into_inner();
        let node = self.c.directory.get(&r.node_id).ok_or_else(|| Status::not_found(format!("node {} is not registered", r.node_id)))?;
        let resp = node
            .client
            .clone()
            .drain(palisade_plane::telemetry::request(npb::DrainRequest { deadline_seconds: r.deadline_seconds }))
            .await?
            .into_inner();
        Ok(Response::new(pb::DrainResponse { node_id: r.node_id, sessions_at_start: resp.sessions_at_start }))
    }

    async fn list_connections(&self, r: Request<pb::ListConnectionsRequest>) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let r = r.into_inner();
        palisade_plane::Selector::from_proto(r.selector.as_ref())?;
        let (connections, unreachable_node_ids) = self.c.connections(&r.node_id, r.selector, r.limit_per_node).await?;
        Ok(Response::new(pb::ListConnectionsResponse { connections, unreachable_node_ids }))
    }

    type WatchEventsStream = crate::events::EventsStream;

    async fn watch_events(&self, r: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(crate::events::watch_events(&self.c, r.into_inner()).await?))
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
