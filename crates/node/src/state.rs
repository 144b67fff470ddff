//! The node's shared state: configuration, the live policy, limiters, the session
//! registry. One `Arc<NodeState>` per node; every connection task holds a clone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use palisade_policy::RateSpec;
use palisade_policy::client_addr::TrustedProxies;
use tokio::sync::{Semaphore, watch};

use crate::config::{NodeConfig, RouteConfig};
use crate::limiter::{RateLimiter, Slots};
use crate::policy_store::PolicyStore;
use crate::registry::Registry;
use crate::tickets::store::Tickets;

pub enum RouteKind {
    Echo,
    Upstream(crate::upstream::Target),
}

pub struct Route {
    pub path: String,
    pub kind: RouteKind,
    pub allow_binary: bool,
    /// Every text message must be JSON valid against this schema.
    pub schema: Option<jsonschema::Validator>,
}

impl Route {
    /// Builds a route, loading its upstream CA and JSON Schema. Errors name the route.
    pub fn from_config(r: &RouteConfig) -> Result<Route, String> {
        let kind = match &r.upstream {
            Some(u) => RouteKind::Upstream(
                crate::upstream::Target::parse(u, r.upstream_ca.as_deref()).map_err(|e| format!("route {}: {e}", r.path))?,
            ),
            None => RouteKind::Echo,
        };
        let schema = match &r.schema {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("route {}: cannot read schema {}: {e}", r.path, path.display()))?;
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("route {}: schema {} is not JSON: {e}", r.path, path.display()))?;
                Some(jsonschema::validator_for(&json).map_err(|e| format!("route {}: invalid JSON Schema: {e}", r.path))?)
            }
            None => None,
        };
        Ok(Route { path: r.path.clone(), kind, allow_binary: r.allow_binary, schema })
    }
}

/// Node-wide counters for stats and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub handshakes_accepted: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub egress_alerts: AtomicU64,
    /// Handshakes by code and disconnects by close code (metrics).
    pub breakdown: crate::instruments::Breakdown,
}

pub struct NodeState {
    pub(crate) id: String,
    pub(crate) cluster: String,
    pub(crate) config: NodeConfig,
    pub(crate) started: SystemTime,
    pub(crate) policy: PolicyStore,
    pub(crate) routes: HashMap<String, Arc<Route>>,
    pub(crate) trusted: TrustedProxies,
    pub(crate) ip_rate: RateLimiter<IpAddr>,
    pub(crate) user_rate: RateLimiter<String>,
    pub(crate) ip_slots: Arc<Slots<IpAddr>>,
    pub(crate) user_slots: Arc<Slots<String>>,
    /// Open client connections, including those still in the handshake.
    pub(crate) open: AtomicU64,
    /// Signalled when `open` falls to zero.
    no_connections: tokio::sync::Notify,
    pub(crate) refusal_lane: Arc<Semaphore>,
    pub(crate) draining: AtomicBool,
    /// `Some(deadline)` once a drain started: sessions spread their 1001 over its first 80%.
    pub(crate) drain_tx: watch::Sender<Option<std::time::Duration>>,
    /// Stops the listeners (WSS and control).
    pub(crate) stop_tx: watch::Sender<bool>,
    /// One-time tickets: in etcd when `[etcd]` is configured (shared by the fleet), else
    /// in memory.
    pub(crate) tickets: Tickets,
    /// The cluster store (`[etcd]`): registration, the policy watch, tickets.
    pub(crate) etcd: Option<Arc<crate::etcd::Etcd>>,
    pub(crate) registry: Registry,
    pub(crate) counters: Counters,
    /// Fleet-wide user cap outcomes: reserved, refused, fell back to the node's cap.
    pub fleet_cap: crate::fleet_cap::FleetCapCounters,
    /// When the WSS and control certificates expire.
    pub cert_expiry: crate::cert_expiry::CertExpiry,
    pub(crate) egress: crate::egress::EgressMeter,
    /// Keys from the policy's `auth.jwks_url`, when it has one.
    pub(crate) jwks: crate::jwks::JwksHolder,
    /// Audit events for `WatchEvents` (bounded, never waits).
    pub(crate) events: crate::events::EventBus,
    /// OTLP export (SPEC section 9), set once at bind; empty when nothing is exported.
    pub(crate) telemetry: std::sync::OnceLock<crate::instruments::NodeTelemetry>,
}

impl NodeState {
    pub fn new(config: NodeConfig) -> Result<Arc<NodeState>, String> {
        let routes = config
            .routes
            .iter()
            .map(|r| Ok((r.path.clone(), Arc::new(Route::from_config(r)?))))
            .collect::<Result<HashMap<_, _>, String>>()?;
        let placeholder = RateSpec { per_second: 1.0, burst: 1 };
        let id = config.node_id();
        let etcd = match &config.etcd {
            Some(e) => Some(Arc::new(crate::etcd::Etcd::new(e, &config.cluster, &id).map_err(|e| e.to_string())?)),
            None => None,
        };
        let tickets = etcd.clone().map_or_else(Tickets::default, Tickets::Etcd);
        Ok(Arc::new(NodeState {
            id,
            cluster: config.cluster.clone(),
            started: SystemTime::now(),
            policy: PolicyStore::default(),
            routes,
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            ip_rate: RateLimiter::new(placeholder),
            user_rate: RateLimiter::new(placeholder),
            ip_slots: Arc::default(),
            user_slots: Arc::default(),
            open: AtomicU64::new(0),
            no_connections: tokio::sync::Notify::new(),
            refusal_lane: Arc::new(Semaphore::new(config.refusal_lane)),
            draining: AtomicBool::new(false),
            drain_tx: watch::channel(None).0,
            stop_tx: watch::channel(false).0,
            tickets,
            etcd,
            registry: Registry::default(),
            counters: Counters::default(),
            fleet_cap: Default::default(),
            cert_expiry: Default::default(),
            egress: Default::default(),
            jwks: Default::default(),
            events: Default::default(),
            telemetry: Default::default(),
            config,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The live policy (the `ApplyPolicy` RPC and the etcd watch write it).
    pub fn policy(&self) -> &PolicyStore {
        &self.policy
    }

    /// Live sessions (what `Disconnect`, `Send` and `ListConnections` operate on).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn jwks(&self) -> &crate::jwks::JwksHolder {
        &self.jwks
    }

    /// The node's tracer, when traces are exported.
    pub(crate) fn tracer(&self) -> Option<&opentelemetry_sdk::trace::SdkTracer> {
        self.telemetry.get()?.telemetry.tracer()
    }

    /// The audit events `WatchEvents` streams.
    pub fn events(&self) -> &crate::events::EventBus {
        &self.events
    }

    pub fn etcd(&self) -> Option<&Arc<crate::etcd::Etcd>> {
        self.etcd.as_ref()
    }

    /// The key of `ip` for per-IP caps and rates: IPv6 addresses share one per prefix
    /// (`ipv6_prefix_len`, default /64), since one host commonly holds a whole /64.
    pub fn ip_key(&self, ip: IpAddr) -> IpAddr {
        palisade_policy::client_addr::rate_key(ip, self.config.ipv6_prefix_len)
    }

    /// Resolves once the node stopped (after a drain, or `NodeHandle::stop`).
    pub async fn stopped(&self) {
        let _ = self.stop_tx.subscribe().wait_for(|s| *s).await;
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready: a valid policy and not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.policy.load().is_some()
    }

    /// Resolves once no client connection is open (at once when none is).
    pub(crate) async fn no_connection_left(&self) {
        loop {
            let emptied = self.no_connections.notified();
            tokio::pin!(emptied);
            // Registered before the count is read: a drop in between is not missed.
            emptied.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// The handshake deadline: the policy's, or the default before any policy.
    pub fn handshake_timeout(&self) -> Duration {
        self.policy.load().map_or(Duration::from_secs(5), |p| p.limits.handshake_timeout)
    }
}

/// Counts an open connection for as long as it lives.
pub struct OpenGuard(Arc<NodeState>);

impl OpenGuard {
    pub fn new(state: &Arc<NodeState>) -> OpenGuard {
        state.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(state.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.no_connections.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_wait_for_no_connection_ends_with_the_last_connection() {
        let config = NodeConfig::from_toml(
            "[listen]\nwss = \"127.0.0.1:0\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[routes]]\npath = \"/echo\"\necho = true\n",
        )
        .expect("config");
        let state = NodeState::new(config).expect("state");
        tokio::time::timeout(Duration::from_secs(1), state.no_connection_left()).await.expect("none open: at once");
        let (a, b) = (OpenGuard::new(&state), OpenGuard::new(&state));
        let waiter = tokio::spawn({
            let state = state.clone();
            async move { state.no_connection_left().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one connection is still open");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken by the last close").expect("join");
    }
}
