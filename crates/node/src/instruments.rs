//! The node's metric instruments and breakdowns, apart from the state they read
//! (`telemetry.rs` registers them): the codes of `palisade.handshakes`, the per-code and
//! per-close-code counts, and the handshake-duration histogram.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use palisade_plane::telemetry::Telemetry;

/// Every code an audit record can carry (SPEC section 3, plus the ticket endpoint's and
/// a client gone before its 101), and whether it is an accepted attempt. The last entry
/// counts anything else.
pub const CODES: [(&str, bool); 20] = [
    ("ok", true),
    ("ticket_issued", true),
    ("client_gone", false),
    ("bad_handshake", false),
    ("upgrade_required", false),
    ("headers_too_large", false),
    ("not_found", false),
    ("rate_limited", false),
    ("too_many_connections", false),
    ("origin_not_allowed", false),
    ("credentials_missing", false),
    ("ambiguous_credentials", false),
    ("token_invalid", false),
    ("token_expired", false),
    ("token_revoked", false),
    ("forbidden", false),
    ("ticket_invalid", false),
    ("upstream_unavailable", false),
    ("unavailable", false),
    ("other", false),
];

/// Breakdowns the stats RPC does not need but the metrics do: handshakes by code,
/// disconnects by close code. Always counted (one atomic add per attempt, one short
/// lock per session end), exported only when metrics are.
#[derive(Debug, Default)]
pub struct Breakdown {
    pub(crate) handshakes: [AtomicU64; CODES.len()],
    pub(crate) disconnects: Mutex<BTreeMap<u16, u64>>,
}

impl Breakdown {
    pub fn handshake(&self, code: &str) {
        let i = CODES.iter().position(|(c, _)| *c == code).unwrap_or(CODES.len() - 1);
        self.handshakes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn disconnect(&self, close_code: u16) {
        *self.disconnects.lock().unwrap_or_else(|p| p.into_inner()).entry(close_code).or_default() += 1;
    }
}

/// The node's providers and its one synchronous instrument.
pub struct NodeTelemetry {
    pub telemetry: Telemetry,
    pub(crate) handshake_duration: Option<Histogram<f64>>,
}

impl NodeTelemetry {
    pub fn record_handshake(&self, accepted: bool, seconds: f64) {
        if let Some(h) = &self.handshake_duration {
            h.record(seconds, &[KeyValue::new("palisade.result", result(accepted))]);
        }
    }
}

pub fn result(accepted: bool) -> &'static str {
    if accepted { "accepted" } else { "refused" }
}
