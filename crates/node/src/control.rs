//! The node's control plane (SPEC section 6): `palisade.node.v1.NodeControl` over gRPC,
//! with health and reflection (v1 and v1alpha), mTLS by default.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_policy::wire;
use palisade_proto::node::v1 as pb;
use palisade_proto::node::v1::node_control_server::{NodeControl, NodeControlServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use palisade_plane::grpc::serve_grpc;
use palisade_plane::{Access, ControlTls};

use crate::policy_store::ApplyError;
use crate::registry::{Command, Selector, SessionInfo};
use crate::state::NodeState;

/// The longest `WatchStats` interval: a longer one is refused (a watcher's task must not
/// sit for days before it learns that its caller left).
const MAX_STATS_INTERVAL_MS: u32 = 60_000;

/// Starts the node's control server in the background.
pub async fn spawn(
    state: Arc<NodeState>,
    listener: TcpListener,
    tls: Option<ControlTls>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodeControlServer<NodeControlService>>().await;
    let svc = NodeControlServer::new(NodeControlService { state: state.clone() }).max_decoding_message_size(4 * 1024 * 1024);
    tokio::spawn(async move {
        let _health = health; // keeps the serving status registered
        // The controller and operators of the node's cluster; a node's certificate calls nothing.
        let access = tls.as_ref().map(|_| Access::node(&state.cluster));
        let tracer = state.tracer().cloned();
        if let Err(e) =
            serve_grpc("palisade.node.v1.NodeControl", move |r| r.add_service(svc), health_service, listener, tls, access, stop, tracer)
                .await
        {
            tracing::error!(event = "control_plane_failed", node = %state.id, error = %e);
        }
    })
}

pub struct NodeControlService {
    pub state: Arc<NodeState>,
}

/// Converts a wire selector; an empty one is `None`.
fn selector(s: Option<pb::Selector>) -> Result<Option<Selector>, Status> {
    Ok(Selector::from_proto(s.as_ref())?)
}

pub fn connection(i: &SessionInfo) -> pb::Connection {
    let c = &i.counters;
    pb::Connection {
        conn_id: i.conn_id.clone(),
        subject: i.subject.clone(),
        session: i.jti.clone().unwrap_or_default(),
        client_address: i.client.to_string(),
        route: i.route.clone(),
        started_unix_ms: i.started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        bytes_in: c.bytes_in.load(Ordering::Relaxed),
        bytes_out: c.bytes_out.load(Ordering::Relaxed),
        messages_in: c.messages_in.load(Ordering::Relaxed),
        messages_out: c.messages_out.load(Ordering::Relaxed),
        buffered_bytes: c.buffered.load(Ordering::Relaxed),
    }
}

pub fn stats(state: &NodeState) -> pb::Stats {
    let c = &state.counters;
    pb::Stats {
        node_id: state.id.clone(),
        cluster: state.cluster.clone(),
        policy_version: state.policy.version(),
        active_connections: state.registry.len() as u64,
        handshakes_accepted: c.handshakes_accepted.load(Ordering::Relaxed),
        handshakes_refused: c.handshakes_refused.load(Ordering::Relaxed),
        messages_in: c.messages_in.load(Ordering::Relaxed),
        messages_out: c.messages_out.load(Ordering::Relaxed),
        bytes_in: c.bytes_in.load(Ordering::Relaxed),
        bytes_out: c.bytes_out.load(Ordering::Relaxed),
        buffered_bytes: state.registry.buffered_bytes(),
        draining: state.is_draining(),
        ready: state.is_ready(),
        uptime_seconds: state.started.elapsed().map_or(0, |d| d.as_secs()),
        egress_alerts: c.egress_alerts.load(Ordering::Relaxed),
        fleet_cap_reserved: state.fleet_cap.reserved.load(Ordering::Relaxed),
        fleet_cap_refused: state.fleet_cap.refused.load(Ordering::Relaxed),
        fleet_cap_fallbacks: state.fleet_cap.fallbacks.load(Ordering::Relaxed),
        wss_cert_seconds_left: state.cert_expiry.wss_seconds_left(),
        control_cert_seconds_left: state.cert_expiry.control_seconds_left(),
        token_cache_hits: state.policy.token_cache_hits(),
        token_cache_entries: state.policy.token_cache_entries(),
    }
}

/// A policy error as gRPC status: stale is FAILED_PRECONDITION, invalid is
/// INVALID_ARGUMENT naming the field.
pub fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Stale { .. } => Status::failed_precondition(e.to_string()),
        ApplyError::Invalid(p) => Status::invalid_argument(p.to_string()),
    }
}

impl NodeControlService {
    /// A refused store as gRPC status; a stale one carries the node's version in the
    /// `palisade-policy-version` trailer, so the controller needs no second call.
    fn stale_status(&self, e: ApplyError) -> Status {
        let mut s = apply_status(e);
        if s.code() == tonic::Code::FailedPrecondition
            && let Ok(v) = self.state.policy.version().to_string().parse()
        {
            s.metadata_mut().insert(palisade_plane::record::POLICY_VERSION_TRAILER, v);
        }
        s
    }
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::Stats, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NodeControl for NodeControlService {
    async fn get_policy(&self, _req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let p = self.state.policy.load().ok_or_else(|| Status::not_found("this node has no policy yet"))?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(wire::versioned(self.state.policy.version(), &p.document)) }))
    }

    async fn apply_policy(&self, req: Request<pb::ApplyPolicyRequest>) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let trace_id = crate::events::trace_id_of(req.metadata());
        let req = req.into_inner();
        let v = req.policy.ok_or_else(|| Status::invalid_argument("policy: required"))?;
        if v.version == 0 {
            return Err(Status::invalid_argument("policy.version: must be at least 1"));
        }
        let doc = wire::document(&v).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rejected = |e: &ApplyError| {
            let why = crate::events::rejection(e);
            self.state.events.publish(|| crate::events::policy("push", v.version, Some(why), trace_id.clone()));
        };
        let compiled = crate::policy_store::validate(&doc, v.version)
            .inspect_err(|e| {
                if !req.dry_run {
                    rejected(e)
                }
            })
            .map_err(apply_status)?;
        if req.dry_run {
            // A dry run only validates: its version orders nothing.
            return Ok(Response::new(pb::ApplyPolicyResponse { version: self.state.policy.version(), applied: false, dry_run: true }));
        }
        let stored = self.state.policy.store(compiled).inspect_err(rejected).map_err(|e| self.stale_status(e))?;
        self.state.events.publish(|| crate::events::policy("push", v.version, None, trace_id.clone()));
        tracing::info!(event = "policy_applied", node = %self.state.id, version = v.version, unchanged = stored == crate::policy_store::Stored::Unchanged);
        Ok(Response::new(pb::ApplyPolicyResponse { version: v.version, applied: true, dry_run: false }))
    }

    async fn disconnect(&self, req: Request<pb::DisconnectRequest>) -> Result<Response<pb::DisconnectResponse>, Status> {
        let trace_id = crate::events::trace_id_of(req.metadata());
        let req = req.into_inner();
        let sel = selector(req.selector)?.ok_or_else(|| Status::invalid_argument("selector: required (use all=true for everyone)"))?;
        let code = match req.code {
            0 => 4003,
            c @ 4000..=4999 => c as u16,
            _ => return Err(Status::invalid_argument("code: must be 4000-4999 (0 means 4003)")),
        };
        let reason: String = req.reason.chars().take(100).collect();
        let closed = self.state.registry.dispatch(&sel, Command::Close { code, reason: reason.clone() });
        self.state.events.publish(|| crate::events::disconnect(&sel, code, &reason, closed, trace_id));
        tracing::info!(event = "disconnect", node = %self.state.id, code, closed);
        Ok(Response::new(pb::DisconnectResponse { closed: closed as u32 }))
    }

    async fn list_connections(&self, req: Request<pb::ListConnectionsRequest>) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let req = req.into_inner();
        let sel = selector(req.selector)?.unwrap_or(Selector::All);
        let size = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let mut page = self.state.registry.list(&sel, after, size + 1);
        let next = if page.len() > size {
            page.truncate(size);
            page.last().map(|i| i.conn_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListConnectionsResponse { connections: page.iter().map(connection).collect(), next_page_token: next }))
    }

    async fn get_stats(&self, _req: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        Ok(Response::new(stats(&self.state)))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(&self, req: Request<pb::WatchStatsRequest>) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval = Duration::from_millis(match req.into_inner().interval_ms {
            0 => 1000,
            n if n > MAX_STATS_INTERVAL_MS => {
                return Err(Status::invalid_argument(format!("interval_ms: at most {MAX_STATS_INTERVAL_MS} (0 means 1000)")));
            }
            n => u64::from(n.max(100)),
        });
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut stop = state.stop_tx.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The stream ends when the node stops, so that no watcher holds up its
                // graceful shutdown.
                // A watcher that left ends its task now, not at its next tick.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tx.closed() => break,
                }
                if tx.send(Ok(stats(&state))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn send(&self, req: Request<pb::SendRequest>) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let sel = selector(req.selector)?.ok_or_else(|| Status::invalid_argument("selector: required (use all=true for everyone)"))?;
        if !req.binary && std::str::from_utf8(&req.payload).is_err() {
            return Err(Status::invalid_argument("payload: a text message must be UTF-8 (or set binary)"));
        }
        // A message whose frame could never fit a client's outgoing buffer would close
        // every target with 4013 (slow consumer): refuse it here instead.
        if let Some(policy) = self.state.policy.load() {
            let limit = policy.limits.messages.max_buffered_bytes;
            let n = req.payload.len();
            if !crate::session::fits_client_buffer(n, limit as u64) {
                return Err(Status::invalid_argument(format!(
                    "payload: {n} bytes do not fit a client's outgoing buffer (limits.messages.max_buffered_bytes = {limit})"
                )));
            }
        }
        let delivered = self.state.registry.dispatch(&sel, Command::Send { payload: req.payload.into(), binary: req.binary });
        Ok(Response::new(pb::SendResponse { delivered: delivered as u32 }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let deadline = match req.into_inner().deadline_seconds {
            0 => self.state.config.drain_deadline(),
            n => Duration::from_secs(u64::from(n).min(3600)),
        };
        let at_start = self.state.registry.len() as u32;
        let state = self.state.clone();
        tokio::spawn(async move { crate::drain::drain(&state, deadline).await });
        Ok(Response::new(pb::DrainResponse { sessions_at_start: at_start }))
    }

    type WatchEventsStream = crate::events::EventsStream;

    async fn watch_events(&self, req: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(crate::events::watch(&self.state.events, self.state.id(), self.state.stop_tx.subscribe(), req.into_inner())))
    }
}
