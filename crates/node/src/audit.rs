//! The audit record: exactly one JSON log event per handshake attempt, accepted or
//! refused, emitted here and nowhere else. It never holds a token, key or ticket; the
//! query string is logged with `access_token`, `token` and `ticket` masked.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// What a handshake learned, filled in step by step.
pub struct Attempt {
    pub started: Instant,
    pub conn_id: String,
    pub peer: SocketAddr,
    pub client: Option<IpAddr>,
    pub origin: Option<String>,
    pub route: Option<String>,
    pub query_masked: Option<String>,
    pub subject: Option<String>,
    pub carrier: Option<&'static str>,
    pub trace_id: String,
}

impl Attempt {
    pub fn new(peer: SocketAddr) -> Self {
        Attempt {
            started: Instant::now(),
            conn_id: format!("{:016x}", rand::random::<u64>()),
            peer,
            client: None,
            origin: None,
            route: None,
            query_masked: None,
            subject: None,
            carrier: None,
            trace_id: new_trace_id(),
        }
    }

    /// Emits the record. `code` is `ok` for an accepted handshake; `reason` is the
    /// internal detail for operators (which check failed), never sent to the client.
    pub fn emit(&self, node: &str, accepted: bool, status: u16, code: &str, reason: &str) {
        let duration_us = self.started.elapsed().as_micros() as u64;
        let client = self.client.unwrap_or(self.peer.ip());
        tracing::info!(
            target: "palisade::audit",
            event = "handshake",
            node,
            conn.id = %self.conn_id,
            client.address = %client,
            peer.address = %self.peer,
            origin = self.origin.as_deref().unwrap_or(""),
            http.route = self.route.as_deref().unwrap_or(""),
            query = self.query_masked.as_deref().unwrap_or(""),
            enduser.id = self.subject.as_deref().unwrap_or(""),
            carrier = self.carrier.unwrap_or(""),
            result = if accepted { "accepted" } else { "refused" },
            status,
            code,
            reason,
            duration_us,
            trace_id = %self.trace_id,
        );
    }
}

fn new_trace_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}
