//! The node's telemetry (SPEC section 9): its own providers (`palisade-node`,
//! `service.instance.id` = the node id), the `ws.handshake` span of every attempt, the
//! `session_closed` event, and the metrics.
//!
//! Metrics are observable instruments read from the counters the node keeps anyway
//! (`Counters`, the registry, the policy store) at each export, so the data path pays
//! nothing for them; the one synchronous instrument is the handshake-duration histogram,
//! recorded once per attempt and only when metrics are exported. Attributes are
//! low-cardinality only: result, code, direction, close code. Never a subject, a
//! connection id or an address.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use opentelemetry::KeyValue;
use palisade_plane::telemetry::{LogRoute, ServiceInfo, Telemetry};

pub use crate::instruments::{CODES, NodeTelemetry, result};
use crate::registry::ConnCounters;
use crate::state::NodeState;

/// The node's telemetry, as the process environment says (`None`: nothing exported).
pub fn start(state: &Arc<NodeState>) -> Option<NodeTelemetry> {
    let telemetry = Telemetry::start(ServiceInfo {
        name: "palisade-node",
        instance_id: state.id().to_owned(),
        cluster: state.cluster().to_owned(),
        route: LogRoute::Node(state.id().to_owned()),
    });
    if !telemetry.is_on() {
        return None;
    }
    let handshake_duration = telemetry.meter().map(|m| {
        register(m, Arc::downgrade(state));
        m.f64_histogram("palisade.handshake.duration")
            .with_description("Time from accept to the handshake's answer")
            .with_unit("s")
            .with_boundaries(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            .build()
    });
    Some(NodeTelemetry { telemetry, handshake_duration })
}

/// The observable instruments, read from the node's counters at each collection.
fn register(meter: &opentelemetry::metrics::Meter, state: Weak<NodeState>) {
    let s = state.clone();
    meter
        .i64_observable_gauge("palisade.connections.active")
        .with_description("Open WebSocket sessions")
        .with_unit("{connection}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.registry().len() as i64, &[]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.handshakes")
        .with_description("Handshake attempts by result and code")
        .with_unit("{handshake}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                for (i, (code, accepted)) in CODES.iter().enumerate() {
                    let n = s.counters().breakdown.handshakes[i].load(Ordering::Relaxed);
                    if n > 0 {
                        o.observe(n, &[KeyValue::new("palisade.result", result(*accepted)), KeyValue::new("palisade.code", *code)]);
                    }
                }
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.messages")
        .with_description("Application messages, client to node (in) and node to client (out)")
        .with_unit("{message}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = s.counters();
                o.observe(c.messages_in.load(Ordering::Relaxed), &[KeyValue::new("direction", "in")]);
                o.observe(c.messages_out.load(Ordering::Relaxed), &[KeyValue::new("direction", "out")]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.bytes")
        .with_description("Application payload bytes by direction")
        .with_unit("By")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = s.counters();
                o.observe(c.bytes_in.load(Ordering::Relaxed), &[KeyValue::new("direction", "in")]);
                o.observe(c.bytes_out.load(Ordering::Relaxed), &[KeyValue::new("direction", "out")]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.disconnects")
        .with_description("Closed sessions by WebSocket close code")
        .with_unit("{session}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let codes = s.counters().breakdown.disconnects.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for (code, n) in codes {
                    o.observe(n, &[KeyValue::new("palisade.close_code", i64::from(code))]);
                }
            }
        })
        .build();
    let s = state.clone();
    meter
        .i64_observable_gauge("palisade.policy.version")
        .with_description("The policy version this node serves (0: none yet)")
        .with_unit("{version}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.policy().version() as i64, &[]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.fleet_cap")
        .with_description("Fleet-wide user cap outcomes: a slot reserved in etcd, a refusal (every slot held), a fallback to the node's cap (etcd unavailable)")
        .with_unit("{handshake}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                let c = &s.fleet_cap;
                for (outcome, n) in [("reserved", &c.reserved), ("refused", &c.refused), ("fallback", &c.fallbacks)] {
                    o.observe(n.load(Ordering::Relaxed), &[KeyValue::new("palisade.outcome", outcome)]);
                }
            }
        })
        .build();
    let s = state.clone();
    meter
        .u64_observable_counter("palisade.token_cache.hits")
        .with_description("Token verifications answered by the cache of verified tokens (auth.token_cache)")
        .with_unit("{verification}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.policy().token_cache_hits(), &[]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .i64_observable_gauge("palisade.token_cache.entries")
        .with_description("Verified tokens the cache holds under the current policy (0 when it is off)")
        .with_unit("{token}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.policy().token_cache_entries() as i64, &[]);
            }
        })
        .build();
    let s = state.clone();
    meter
        .i64_observable_gauge("palisade.tls.certificate.expiry")
        .with_description("Seconds until a certificate of the node expires (negative once expired)")
        .with_unit("s")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                for (certificate, not_after) in s.cert_expiry.certificates() {
                    o.observe(palisade_plane::cert::seconds_left(not_after), &[KeyValue::new("palisade.certificate", certificate)]);
                }
            }
        })
        .build();
    let s = state;
    meter
        .u64_observable_counter("palisade.egress.alerts")
        .with_description("Subjects over egress.alert_bytes_per_minute (one per subject and minute)")
        .with_unit("{alert}")
        .with_callback(move |o| {
            if let Some(s) = s.upgrade() {
                o.observe(s.counters().egress_alerts.load(Ordering::Relaxed), &[]);
            }
        })
        .build();
}

/// A session's end: one log event (no span lives as long as a session) and the
/// disconnect count.
/// `trace_id` is the handshake's, which links the end to its `ws.handshake` span.
#[allow(clippy::too_many_arguments)]
pub fn session_closed(
    state: &NodeState,
    conn_id: &str,
    trace_id: &str,
    subject: &str,
    route: &str,
    code: u16,
    started: Instant,
    c: &ConnCounters,
) {
    state.counters().breakdown.disconnect(code);
    tracing::info!(
        event = "session_closed",
        node = state.id(),
        conn.id = conn_id,
        enduser.id = subject,
        http.route = route,
        close_code = code,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_in = c.bytes_in.load(Ordering::Relaxed),
        bytes_out = c.bytes_out.load(Ordering::Relaxed),
        messages_in = c.messages_in.load(Ordering::Relaxed),
        messages_out = c.messages_out.load(Ordering::Relaxed),
        trace_id,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_code_has_its_own_series() {
        use crate::refusal::Refusal;
        use std::time::Duration;
        let all = [
            Refusal::BadHandshake,
            Refusal::UpgradeRequired,
            Refusal::HeadersTooLarge,
            Refusal::NotFound,
            Refusal::RateLimited { retry_after: Duration::from_secs(1) },
            Refusal::TooManyConnections,
            Refusal::OriginNotAllowed,
            Refusal::CredentialsMissing,
            Refusal::AmbiguousCredentials,
            Refusal::TokenInvalid,
            Refusal::TokenExpired,
            Refusal::TokenRevoked,
            Refusal::TicketInvalid,
            Refusal::UpstreamUnavailable,
            Refusal::Unavailable { retry_after: Duration::from_secs(1) },
        ];
        for r in all {
            assert!(CODES.iter().any(|(c, accepted)| *c == r.code() && !accepted), "{}", r.code());
        }
        let b = crate::instruments::Breakdown::default();
        b.handshake("ok");
        b.handshake("made_up");
        assert_eq!(b.handshakes[0].load(Ordering::Relaxed), 1);
        assert_eq!(b.handshakes[CODES.len() - 1].load(Ordering::Relaxed), 1);
    }
}
