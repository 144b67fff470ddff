//! `palisade.controller.v1.FleetControl` over gRPC: each RPC validates its request and
//! calls the [`Controller`]; `Controller::serve` runs it with health, reflection and the
//! operator-only access rule.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use palisade_plane::ControlTls;
use palisade_policy::wire;
use palisade_proto::controller::v1 as pb;
use palisade_proto::controller::v1::fleet_control_server::{FleetControl, FleetControlServer};
use palisade_proto::node::v1 as npb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::service::{Controller, ControllerHandle, NodeOp, STATS_MAX_AGE, need_selector, store_status};

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Controller {
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
            t.fleet_cap_reserved += s.fleet_cap_reserved;
            t.fleet_cap_refused += s.fleet_cap_refused;
            t.fleet_cap_fallbacks += s.fleet_cap_fallbacks;
            t.token_cache_hits += s.token_cache_hits;
            t.token_cache_entries += s.token_cache_entries;
            // The fleet's soonest certificate expiry.
            t.wss_cert_seconds_left = min_some(t.wss_cert_seconds_left, s.wss_cert_seconds_left);
            t.control_cert_seconds_left = min_some(t.control_cert_seconds_left, s.control_cert_seconds_left);
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
        let sel = Some(npb::Selector { target: Some(npb::selector::Target::Subject(subject.clone())) });
        let (connections, unreachable_node_ids) = self.c.connections("", sel, 1000).await?;
        // The fleet-wide view, when the policy caps the subject across the fleet.
        let cap = self.c.store.get().await.map_err(store_status)?.and_then(|(p, _)| p.limits.per_user.fleet_max_connections);
        let fleet_connections = match cap {
            Some(_) => self.c.store.user_slots(&subject).await.map_err(store_status)?,
            None => None,
        };
        Ok(Response::new(pb::FindSubjectResponse { connections, unreachable_node_ids, fleet_max_connections: cap, fleet_connections }))
    }

    async fn get_policy_status(&self, _r: Request<pb::GetPolicyStatusRequest>) -> Result<Response<pb::PolicyStatus>, Status> {
        Ok(Response::new(self.c.policy_status().await?))
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
        Ok(Response::new(crate::watch::watch_events(&self.c, r.into_inner()).await?))
    }
}
