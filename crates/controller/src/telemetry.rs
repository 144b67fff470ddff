//! The controller's telemetry (SPEC section 9): its own providers (`palisade-controller`,
//! `service.instance.id` = host:port), a child span per node call of a fan-out (whose
//! context travels to the node in the request's metadata), and the fleet metrics:
//!
//! | metric | kind | attributes |
//! |---|---|---|
//! | `palisade.fleet.nodes` | gauge | `palisade.reachable` |
//! | `palisade.fleet.connections.active` | gauge | none (fleet total) |
//! | `palisade.fleet.node.connections.active` | gauge | `palisade.node.id` |
//! | `palisade.fleet.handshakes` | counter | `palisade.result` (fleet total) |
//! | `palisade.fleet.node.handshakes` | counter | `palisade.node.id`, `palisade.result` |
//! | `palisade.fleet.node.policy.version` | gauge | `palisade.node.id` |
//! | `palisade.policy.push.duration` | histogram (s) | `palisade.converged`, `palisade.dry_run` |
//! | `palisade.policy.pushes` | counter | `palisade.converged`, `palisade.dry_run` |
//! | `palisade.policy.converged` | gauge (1/0, the last push) | none |
//!
//! The fleet series come from the nodes' `WatchStats` values the directory caches, read
//! at each export; the per-node series are bounded by the fleet's size.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{SpanKind, Status as SpanStatus, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use palisade_plane::telemetry::{LogRoute, ServiceInfo, Telemetry, host_name};

use crate::directory::{Directory, NodeEntry};

/// How old a node's cached statistics may be to count in the fleet metrics.
const STATS_MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ControllerTelemetry(OnceLock<Inner>);

struct Inner {
    telemetry: Telemetry,
    push_duration: Option<Histogram<f64>>,
    pushes: Option<Counter<u64>>,
    converged: Arc<AtomicI64>,
}

impl ControllerTelemetry {
    /// Starts the controller's telemetry (once; `addr` is where it serves). Returns the
    /// tracer for its RPC server spans.
    pub fn start(
        &self,
        cluster: &str,
        addr: std::net::SocketAddr,
        directory: &Arc<Directory>,
    ) -> Option<opentelemetry_sdk::trace::SdkTracer> {
        let inner = self.0.get_or_init(|| {
            let telemetry = Telemetry::start(ServiceInfo {
                name: "palisade-controller",
                instance_id: format!("{}:{}", host_name(), addr.port()),
                cluster: cluster.to_owned(),
                route: LogRoute::Default,
            });
            let converged = Arc::new(AtomicI64::new(-1));
            let (push_duration, pushes) = match telemetry.meter() {
                Some(m) => {
                    register(m, Arc::downgrade(directory), converged.clone());
                    let h = m
                        .f64_histogram("palisade.policy.push.duration")
                        .with_description("From the controller's ApplyPolicy to every node's answer")
                        .with_unit("s")
                        .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                        .build();
                    let c = m
                        .u64_counter("palisade.policy.pushes")
                        .with_description("Policy pushes by convergence")
                        .with_unit("{push}")
                        .build();
                    (Some(h), Some(c))
                }
                None => (None, None),
            };
            Inner { telemetry, push_duration, pushes, converged }
        });
        inner.telemetry.tracer().cloned()
    }

    fn tracer(&self) -> Option<&opentelemetry_sdk::trace::SdkTracer> {
        self.0.get()?.telemetry.tracer()
    }

    /// The context of a child span for one node call of a fan-out (`None`: not traced).
    pub fn node_call(&self, node: &NodeEntry) -> Option<Context> {
        let tracer = self.tracer()?;
        let parent = Context::current();
        let span = tracer
            .span_builder(format!("node {}", node.record.id))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "palisade.node.v1.NodeControl"),
                KeyValue::new("palisade.node.id", node.record.id.clone()),
                KeyValue::new("server.address", node.record.control.clone()),
            ])
            .start_with_context(tracer, &parent);
        Some(parent.with_span(span))
    }

    /// A finished policy push.
    pub fn policy_pushed(&self, elapsed: Duration, converged: bool, dry_run: bool) {
        let Some(inner) = self.0.get() else { return };
        let attrs = [KeyValue::new("palisade.converged", converged), KeyValue::new("palisade.dry_run", dry_run)];
        if let Some(h) = &inner.push_duration {
            h.record(elapsed.as_secs_f64(), &attrs);
        }
        if let Some(c) = &inner.pushes {
            c.add(1, &attrs);
        }
        if !dry_run {
            inner.converged.store(i64::from(converged), Ordering::Relaxed);
        }
    }

    pub async fn shutdown(&self) {
        if let Some(inner) = self.0.get() {
            inner.telemetry.shutdown().await;
        }
    }
}

/// Runs one node call inside its span (when traced) and ends the span with the result.
pub async fn traced<T>(cx: Option<Context>, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    let Some(cx) = cx else { return call.await };
    let r = call.with_context(cx.clone()).await;
    let span = cx.span();
    match &r {
        Ok(_) => span.set_attribute(KeyValue::new("rpc.grpc.status_code", 0_i64)),
        Err(s) => {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", s.code() as i64));
            span.set_status(SpanStatus::error(format!("{:?}", s.code())));
        }
    }
    span.end();
    r
}

fn register(meter: &opentelemetry::metrics::Meter, dir: Weak<Directory>, converged: Arc<AtomicI64>) {
    let stats = move |d: &Weak<Directory>| -> Vec<(String, bool, Option<palisade_proto::node::v1::Stats>)> {
        d.upgrade().map_or_else(Vec::new, |d| {
            d.snapshot().iter().map(|n| (n.record.id.clone(), n.reachable.load(Ordering::Relaxed), n.latest_stats(STATS_MAX_AGE))).collect()
        })
    };
    let d = dir.clone();
    meter
        .i64_observable_gauge("palisade.fleet.nodes")
        .with_description("Registered nodes, reachable or not")
        .with_unit("{node}")
        .with_callback(move |o| {
            let all = stats(&d);
            let up = all.iter().filter(|(_, r, _)| *r).count() as i64;
            o.observe(up, &[KeyValue::new("palisade.reachable", true)]);
            o.observe(all.len() as i64 - up, &[KeyValue::new("palisade.reachable", false)]);
        })
        .build();
    let d = dir.clone();
    meter
        .i64_observable_gauge("palisade.fleet.connections.active")
        .with_description("Open sessions across the fleet")
        .with_unit("{connection}")
        .with_callback(move |o| {
            let total: u64 = stats(&d).iter().filter_map(|(_, _, s)| s.as_ref()).map(|s| s.active_connections).sum();
            o.observe(total as i64, &[]);
        })
        .build();
    let d = dir.clone();
    meter
        .i64_observable_gauge("palisade.fleet.node.connections.active")
        .with_description("Open sessions per node")
        .with_unit("{connection}")
        .with_callback(move |o| {
            for (id, _, s) in stats(&d) {
                if let Some(s) = s {
                    o.observe(s.active_connections as i64, &[KeyValue::new("palisade.node.id", id)]);
                }
            }
        })
        .build();
    let d = dir.clone();
    meter
        .u64_observable_counter("palisade.fleet.handshakes")
        .with_description("Handshakes across the fleet (sum of the nodes' counters)")
        .with_unit("{handshake}")
        .with_callback(move |o| {
            let all = stats(&d);
            let (acc, refused) = all
                .iter()
                .filter_map(|(_, _, s)| s.as_ref())
                .fold((0, 0), |(a, r), s| (a + s.handshakes_accepted, r + s.handshakes_refused));
            o.observe(acc, &[KeyValue::new("palisade.result", "accepted")]);
            o.observe(refused, &[KeyValue::new("palisade.result", "refused")]);
        })
        .build();
    let d = dir.clone();
    meter
        .u64_observable_counter("palisade.fleet.node.handshakes")
        .with_description("Handshakes per node")
        .with_unit("{handshake}")
        .with_callback(move |o| {
            for (id, _, s) in stats(&d) {
                if let Some(s) = s {
                    o.observe(
                        s.handshakes_accepted,
                        &[KeyValue::new("palisade.node.id", id.clone()), KeyValue::new("palisade.result", "accepted")],
                    );
                    o.observe(s.handshakes_refused, &[KeyValue::new("palisade.node.id", id), KeyValue::new("palisade.result", "refused")]);
                }
            }
        })
        .build();
    let d = dir;
    meter
        .i64_observable_gauge("palisade.fleet.node.policy.version")
        .with_description("The policy version each node serves")
        .with_unit("{version}")
        .with_callback(move |o| {
            for (id, _, s) in stats(&d) {
                if let Some(s) = s {
                    o.observe(s.policy_version as i64, &[KeyValue::new("palisade.node.id", id)]);
                }
            }
        })
        .build();
    meter
        .i64_observable_gauge("palisade.policy.converged")
        .with_description("Whether the last policy push reached every node (1) or not (0)")
        .with_unit("1")
        .with_callback(move |o| {
            let v = converged.load(Ordering::Relaxed);
            if v >= 0 {
                o.observe(v, &[]);
            }
        })
        .build();
}
