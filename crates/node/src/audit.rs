//! The audit record: exactly one JSON log event per handshake attempt, accepted or
//! refused, emitted here and nowhere else. It never holds a token, key or ticket; the
//! query string is logged with `access_token`, `token` and `ticket` masked.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

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
    /// The index of the access rule that refused the token (step 10a).
    pub access_rule: Option<usize>,
    /// The trace id of the `ws.handshake` span when traces are exported, else random.
    pub trace_id: String,
    /// The `ws.handshake` span (SPEC section 9), ended by `emit`.
    span: Option<opentelemetry_sdk::trace::Span>,
    span_id: String,
}

impl Attempt {
    /// Starts the attempt, and its `ws.handshake` span (a trace root) with `tracer`.
    pub fn new(peer: SocketAddr, tracer: Option<&opentelemetry_sdk::trace::SdkTracer>) -> Self {
        let span = tracer.map(|t| t.span_builder("ws.handshake").with_kind(SpanKind::Server).start_with_context(t, &Context::new()));
        let (trace_id, span_id) =
            span.as_ref().and_then(|s| palisade_plane::telemetry::ids(s.span_context())).unwrap_or_else(|| (new_trace_id(), String::new()));
        Attempt {
            started: Instant::now(),
            conn_id: hex(u128::from(rand::random::<u64>()), 16),
            peer,
            client: None,
            origin: None,
            route: None,
            query_masked: None,
            subject: None,
            carrier: None,
            access_rule: None,
            trace_id,
            span,
            span_id,
        }
    }

    /// Emits the record. `code` is `ok` for an accepted handshake; `reason` is the
    /// internal detail for operators (which check failed), never sent to the client.
    /// The record is emitted inside the attempt's span (its log record carries the span's
    /// ids), which then ends.
    pub fn emit(&mut self, state: &crate::state::NodeState, accepted: bool, status: u16, code: &str, reason: &str) {
        let node = state.id();
        let duration_us = self.started.elapsed().as_micros() as u64;
        let client = self.client.unwrap_or(self.peer.ip());
        state.events.publish(|| handshake_event(self, client, accepted, status, code, reason, duration_us));
        state.counters.breakdown.handshake(code);
        if let Some(t) = state.telemetry.get() {
            t.record_handshake(accepted, duration_us as f64 / 1e6);
        }
        let span = self.span.take().map(|mut s| {
            s.set_attributes(self.span_attributes(client, accepted, status, code, duration_us));
            if status >= 500 {
                s.set_status(Status::error(code.to_owned()));
            }
            Context::new().with_span(s)
        });
        let current = span.clone().map(Context::attach);
        tracing::info!(
            target: "palisade::audit",
            event = "handshake",
            node,
            conn.id = self.conn_id.as_str(),
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
            access_rule = self.access_rule.map(|i| i as u64),
            duration_us,
            trace_id = self.trace_id.as_str(),
            span_id = self.span_id.as_str(),
        );
        drop(current);
        if let Some(cx) = span {
            cx.span().end();
        }
    }

    /// Semantic-convention names where they exist; never a token, a key or a ticket.
    fn span_attributes(&self, client: IpAddr, accepted: bool, status: u16, code: &str, duration_us: u64) -> Vec<KeyValue> {
        let mut a = vec![
            KeyValue::new("client.address", client.to_string()),
            KeyValue::new("network.peer.address", self.peer.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(self.peer.port())),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("palisade.result", crate::instruments::result(accepted)),
            KeyValue::new("palisade.code", code.to_owned()),
            KeyValue::new("palisade.duration_us", duration_us as i64),
            KeyValue::new("palisade.conn.id", self.conn_id.clone()),
        ];
        if let Some(r) = &self.route {
            a.push(KeyValue::new("http.route", r.clone()));
        }
        if let Some(c) = self.carrier {
            a.push(KeyValue::new("palisade.carrier", c));
        }
        if let Some(s) = &self.subject {
            a.push(KeyValue::new("enduser.id", s.clone()));
        }
        if let Some(o) = &self.origin {
            a.push(KeyValue::new("http.request.header.origin", o.clone()));
        }
        a
    }
}

fn new_trace_id() -> String {
    hex(rand::random(), 32)
}

/// The low `digits` hex digits of `v`, zero-padded (ids: no formatter on the hot path).
fn hex(v: u128, digits: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..digits).rev().map(|i| char::from(DIGITS[((v >> (4 * i)) & 0xf) as usize])).collect()
}

/// The handshake's event for `palisade events`: the audit record's fields, without the
/// query string.
pub fn handshake_event(
    a: &Attempt,
    client: std::net::IpAddr,
    accepted: bool,
    status: u16,
    code: &str,
    reason: &str,
    duration_us: u64,
) -> crate::events::Event {
    crate::events::Event {
        kind: crate::events::kind::HANDSHAKE,
        conn_id: a.conn_id.clone(),
        client_address: client.to_string(),
        route: a.route.clone().unwrap_or_default(),
        subject: a.subject.clone().unwrap_or_default(),
        carrier: a.carrier.unwrap_or(""),
        result: if accepted { "accepted" } else { "refused" },
        code: code.to_owned(),
        reason: reason.to_owned(),
        status,
        trace_id: a.trace_id.clone(),
        duration_us,
        origin: a.origin.clone().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_zero_padded_lower_hex() {
        assert_eq!(super::hex(0xab, 16), "00000000000000ab");
        assert_eq!(super::hex(u128::MAX, 32), "f".repeat(32));
        assert_eq!(super::hex(0x1234_5678_9abc_def0, 16), format!("{:016x}", 0x1234_5678_9abc_def0u64));
        assert_eq!(super::new_trace_id().len(), 32);
    }
}
