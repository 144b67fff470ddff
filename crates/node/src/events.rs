//! The node's event bus: the audit events (handshakes, session ends, operator
//! disconnects, policy changes, egress alerts) that `NodeControl.WatchEvents` streams and
//! the controller merges for `palisade events`.
//!
//! Publishing never waits: a bounded `tokio::sync::broadcast` (a receiver that falls
//! behind by more than [`BUS_CAPACITY`] events skips the oldest ones and is told how
//! many), plus a ring of the last [`RECENT`] events for watchers that ask for history.
//! An event is built only when someone can see it (a receiver, or the ring). It holds
//! subjects but never a token, ticket or key, and no query string at all.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use palisade_proto::node::v1 as pb;
use tokio::sync::broadcast;
use tokio_stream::Stream;

/// Unread events kept per follower before it starts losing the oldest ones.
pub const BUS_CAPACITY: usize = 1024;
/// Events a node keeps for `WatchEvents` without `follow`.
pub const RECENT: usize = 1000;

pub mod kind {
    pub const HANDSHAKE: &str = "handshake";
    pub const SESSION_CLOSED: &str = "session_closed";
    pub const DISCONNECT: &str = "disconnect";
    pub const POLICY: &str = "policy";
    pub const EGRESS_ALERT: &str = "egress_alert";
}

/// One audit event; fields that do not apply to its `kind` stay empty (see `Event` in
/// `node.proto`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub unix_ms: u64,
    pub kind: &'static str,
    pub conn_id: String,
    pub client_address: String,
    pub route: String,
    pub subject: String,
    pub carrier: &'static str,
    pub result: &'static str,
    pub code: String,
    pub reason: String,
    pub status: u16,
    pub close_code: u16,
    pub trace_id: String,
    pub policy_version: u64,
    pub duration_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub count: u64,
    pub source: &'static str,
    pub origin: String,
}

impl Event {
    pub fn to_proto(&self, node_id: &str) -> pb::Event {
        pb::Event {
            unix_ms: self.unix_ms,
            node_id: node_id.to_owned(),
            kind: self.kind.to_owned(),
            conn_id: self.conn_id.clone(),
            client_address: self.client_address.clone(),
            route: self.route.clone(),
            subject: self.subject.clone(),
            carrier: self.carrier.to_owned(),
            result: self.result.to_owned(),
            code: self.code.clone(),
            reason: self.reason.clone(),
            status: u32::from(self.status),
            close_code: u32::from(self.close_code),
            trace_id: self.trace_id.clone(),
            policy_version: self.policy_version,
            duration_us: self.duration_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            count: self.count,
            source: self.source.to_owned(),
            origin: self.origin.clone(),
        }
    }
}

/// Which events a watcher wants; an empty field matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub subject: String,
    pub result: String,
    pub code: String,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.subject.is_empty() || self.subject == e.subject)
            && (self.result.is_empty() || self.result == e.result)
            && (self.code.is_empty() || self.code == e.code || (e.close_code != 0 && self.code == e.close_code.to_string()))
    }
}

pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    recent_cap: usize,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(BUS_CAPACITY, RECENT)
    }
}

impl EventBus {
    /// A bus whose followers may fall `capacity` events behind, keeping the last `recent`.
    pub fn new(capacity: usize, recent: usize) -> EventBus {
        EventBus { tx: broadcast::channel(capacity.max(1)).0, recent: Mutex::new(VecDeque::with_capacity(recent)), recent_cap: recent }
    }

    /// Whether anyone can see an event (a follower or the ring); else publishing is free.
    pub fn active(&self) -> bool {
        self.recent_cap > 0 || self.tx.receiver_count() > 0
    }

    /// Publishes the event `build` makes, stamped with the time; never waits. `build`
    /// runs only when someone can see it.
    pub fn publish(&self, build: impl FnOnce() -> Event) {
        if !self.active() {
            return;
        }
        let mut e = build();
        e.unix_ms = unix_ms();
        let e = Arc::new(e);
        if self.recent_cap > 0 {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() >= self.recent_cap {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        // An error only says that nobody follows.
        let _ = self.tx.send(e);
    }

    /// Open follow streams (the controller's, grpcurl's) now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The newest `limit` kept events that match, oldest first.
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Arc<Event>> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Event>> = r.iter().rev().filter(|e| filter.matches(e)).take(limit).cloned().collect();
        out.reverse();
        out
    }
}

/// A policy change: `applied` (or `rejected` with `code` `invalid` or `stale` and the
/// reason), from a push (`trace_id` of the call) or the etcd watch.
pub fn policy(source: &'static str, version: u64, rejected: Option<(&str, String)>, trace_id: String) -> Event {
    let (result, code, reason) = match rejected {
        None => ("applied", String::new(), String::new()),
        Some((code, reason)) => ("rejected", code.to_owned(), reason),
    };
    Event { kind: kind::POLICY, result, code, reason, policy_version: version, source, trace_id, ..Default::default() }
}

/// How a refused policy is reported: `stale` or `invalid`, with the message.
pub fn rejection(e: &crate::policy_store::ApplyError) -> (&'static str, String) {
    match e {
        crate::policy_store::ApplyError::Stale { .. } => ("stale", e.to_string()),
        crate::policy_store::ApplyError::Invalid(_) => ("invalid", e.to_string()),
    }
}

/// An operator's Disconnect: the selector in `subject` (a subject) or `reason`.
pub fn disconnect(sel: &palisade_plane::Selector, code: u16, reason: &str, closed: usize, trace_id: String) -> Event {
    use palisade_plane::Selector as S;
    let (subject, conn_id, target) = match sel {
        S::Subject(s) => (s.clone(), String::new(), format!("subject {s}")),
        S::Conn(c) => (String::new(), c.clone(), format!("conn {c}")),
        S::Session(j) => (String::new(), String::new(), format!("session {j}")),
        S::Client(ip) => (String::new(), String::new(), format!("client {ip}")),
        S::All => (String::new(), String::new(), "all".to_owned()),
    };
    let reason = if reason.is_empty() { target } else { format!("{target}: {reason}") };
    Event {
        kind: kind::DISCONNECT,
        subject,
        conn_id,
        result: "closed",
        reason,
        close_code: code,
        count: closed as u64,
        trace_id,
        ..Default::default()
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) in gRPC metadata,
/// else empty.
pub fn trace_id_of(md: &tonic::metadata::MetadataMap) -> String {
    md.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) && t.bytes().any(|b| b != b'0'))
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

pub type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::EventsMessage, tonic::Status>> + Send + 'static>>;

fn event_msg(node: &str, e: &Event) -> Result<pb::EventsMessage, tonic::Status> {
    Ok(pb::EventsMessage { item: Some(pb::events_message::Item::Event(e.to_proto(node))) })
}

/// `NodeControl.WatchEvents`: the recent matching events, or (`follow`) every new one
/// until the client goes or the node stops. A follower that lags is told how many
/// events it lost; the node never waits for it.
pub fn watch(bus: &EventBus, node: &str, mut stop: tokio::sync::watch::Receiver<bool>, req: pb::WatchEventsRequest) -> EventsStream {
    let filter = Filter { subject: req.subject, result: req.result, code: req.code };
    let node = node.to_owned();
    if !req.follow {
        let limit = match req.limit {
            0 => 100,
            n => n.min(RECENT as u32) as usize,
        };
        let items: Vec<_> = bus.recent(&filter, limit).iter().map(|e| event_msg(&node, e)).collect();
        return Box::pin(tokio_stream::iter(items));
    }
    // Subscribed before the answer's headers go out: a caller that has the answer sees
    // every later event.
    let mut rx = bus.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                // The stream ends when the node stops, so no watcher holds up its shutdown.
                _ = stop.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            };
            let msg = match got {
                Ok(e) if filter.matches(&e) => event_msg(&node, &e),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Ok(pb::EventsMessage { item: Some(pb::events_message::Item::Dropped(pb::Dropped { count: n, node_id: node.clone() })) })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // Waits only for this watcher's room; meanwhile the bus moves on without it.
            let sent = tokio::select! {
                r = tx.send(msg) => r.is_ok(),
                _ = stop.wait_for(|s| *s) => false,
            };
            if !sent {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sub: &str) -> Event {
        Event { kind: kind::HANDSHAKE, subject: sub.into(), result: "refused", code: "token_invalid".into(), ..Default::default() }
    }

    #[test]
    fn publishing_without_receivers_is_a_no_op() {
        let bus = EventBus::new(4, 0);
        assert!(!bus.active());
        let mut built = false;
        bus.publish(|| {
            built = true;
            refused("a")
        });
        assert!(!built, "no event is built when nobody can see it");
        assert!(bus.recent(&Filter::default(), 10).is_empty());
        // A follower turns it on; it goes off again when the follower goes.
        let rx = bus.subscribe();
        assert!(bus.active());
        drop(rx);
        assert!(!bus.active());
    }

    #[test]
    fn a_lagged_receiver_is_told_how_many_it_lost() {
        let bus = EventBus::new(4, 0);
        let mut rx = bus.subscribe();
        for i in 0..10 {
            bus.publish(|| refused(&format!("s{i}")));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        // Then the newest four, in order.
        let rest: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.subject.clone()).collect();
        assert_eq!(rest, ["s6", "s7", "s8", "s9"]);
    }

    #[test]
    fn the_ring_keeps_the_newest_matching_events() {
        let bus = EventBus::new(4, 5);
        for i in 0..8 {
            bus.publish(|| refused(if i % 2 == 0 { "even" } else { "odd" }));
        }
        assert_eq!(bus.recent(&Filter::default(), 100).len(), 5, "bounded");
        let f = Filter { subject: "odd".into(), ..Default::default() };
        let odd = bus.recent(&f, 1);
        assert_eq!(odd.len(), 1);
        assert!(odd[0].unix_ms > 0, "stamped");
        let by_close = Event { close_code: 4003, result: "closed", ..Default::default() };
        assert!(Filter { code: "4003".into(), ..Default::default() }.matches(&by_close));
        assert!(!Filter { code: "4001".into(), ..Default::default() }.matches(&by_close));
        assert!(!Filter { result: "accepted".into(), ..Default::default() }.matches(&refused("x")));
    }

    #[test]
    fn trace_ids_come_from_traceparent_only() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(trace_id_of(&md), "");
        md.insert("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse().expect("v"));
        assert_eq!(trace_id_of(&md), "4bf92f3577b34da6a3ce929d0e0e4736");
        md.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().expect("v"));
        assert_eq!(trace_id_of(&md), "");
    }
}
