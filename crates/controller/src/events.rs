//! `FleetControl.WatchEvents`: the nodes' audit events, merged and filtered for
//! operators (`palisade events`).
//!
//! Following: the controller keeps one `NodeControl.WatchEvents` stream per node only
//! while at least one operator follows (a fleet nobody watches sends the controller
//! nothing), shared by every follower. Each follower has a bounded queue filled with
//! `try_send`: a follower that reads too slowly loses events, counted and reported to it
//! as `dropped` when it reads again, and never holds up a node stream, a node, or
//! another follower. A node that dropped events for the controller's stream (its own
//! buffer overflowed) says so and the notice goes to every follower of that node.
//!
//! Without `follow`: each target node's recent events (the node keeps its last 1000),
//! merged in time order, the newest `limit`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use palisade_proto::controller::v1 as pb;
use palisade_proto::node::v1 as npb;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::directory::{Directory, NodeEntry};

/// Events queued for one follower before it starts losing them.
pub const WATCHER_BUFFER: usize = 256;
/// How long a new follower waits for the node streams before its `watching` message.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

pub type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::EventsMessage, Status>> + Send + 'static>>;

/// What a follower asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub node_id: String,
    pub subject: String,
    pub result: String,
    pub code: String,
}

impl Filter {
    pub(crate) fn from_request(r: &pb::WatchEventsRequest) -> Filter {
        Filter { node_id: r.node_id.clone(), subject: r.subject.clone(), result: r.result.clone(), code: r.code.clone() }
    }

    pub fn matches(&self, e: &npb::Event) -> bool {
        (self.node_id.is_empty() || self.node_id == e.node_id)
            && (self.subject.is_empty() || self.subject == e.subject)
            && (self.result.is_empty() || self.result == e.result)
            && (self.code.is_empty() || self.code == e.code || (e.close_code != 0 && self.code == e.close_code.to_string()))
    }
}

pub(crate) struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<pb::EventsMessage>,
    /// Events this follower lost since it was last told.
    pub(crate) dropped: AtomicU64,
}

impl Watcher {
    fn offer(&self, msg: &pb::EventsMessage, lost: u64) {
        if self.tx.try_send(msg.clone()).is_err() {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// A node stream task and whether its stream is open.
struct NodeStream {
    entry: Weak<NodeEntry>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Streams {
    supervising: bool,
    by_node: HashMap<String, NodeStream>,
}

pub struct EventHub {
    directory: Arc<Directory>,
    watchers: RwLock<HashMap<u64, Arc<Watcher>>>,
    next_id: AtomicU64,
    streams: Mutex<Streams>,
    /// Wakes the supervisor when followers come or go.
    changed: Notify,
    /// Set when the controller stops: every follow stream ends.
    pub(crate) stopped: watch::Sender<bool>,
}

impl EventHub {
    pub fn new(directory: Arc<Directory>) -> Arc<EventHub> {
        Arc::new(EventHub {
            directory,
            watchers: RwLock::default(),
            next_id: AtomicU64::new(1),
            streams: Mutex::default(),
            changed: Notify::new(),
            stopped: watch::channel(false).0,
        })
    }

    /// Ends every follow stream and the node streams (the controller stops).
    pub fn stop(&self) {
        self.stopped.send_replace(true);
        self.watchers.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.changed.notify_one();
    }

    /// Followers now (tests).
    pub fn followers(&self) -> usize {
        self.watchers.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Node streams open now (tests).
    pub fn node_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).by_node.len()
    }

    fn dispatch(&self, node_id: &str, msg: pb::EventsMessage) {
        let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
        match &msg.item {
            Some(pb::events_message::Item::Event(e)) => {
                for w in watchers.values().filter(|w| w.filter.matches(e)) {
                    w.offer(&msg, 1);
                }
            }
            Some(pb::events_message::Item::Dropped(d)) => {
                for w in watchers.values().filter(|w| w.filter.node_id.is_empty() || w.filter.node_id == node_id) {
                    w.offer(&msg, d.count);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn register(self: &Arc<Self>, filter: Filter) -> (u64, mpsc::Receiver<pb::EventsMessage>, Arc<Watcher>) {
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let w = Arc::new(Watcher { filter, tx, dropped: AtomicU64::new(0) });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.watchers.write().unwrap_or_else(|p| p.into_inner()).insert(id, w.clone());
        {
            let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            if !s.supervising {
                s.supervising = true;
                tokio::spawn(supervise(self.clone()));
            }
        }
        // The node streams exist before the caller waits for them.
        self.reconcile();
        (id, rx, w)
    }

    fn deregister(&self, id: u64) {
        self.watchers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.changed.notify_one();
    }

    /// Opens a stream to every registered node that has none (or a stale one) and closes
    /// those of nodes gone. Returns false, closing everything, when nobody follows.
    fn reconcile(self: &Arc<Self>) -> bool {
        let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if self.followers() == 0 {
            s.by_node.clear();
            s.supervising = false;
            return false;
        }
        let nodes = self.directory.snapshot();
        s.by_node.retain(|id, ns| nodes.iter().any(|n| &n.record.id == id && ns.entry.upgrade().is_some_and(|e| Arc::ptr_eq(&e, n))));
        for n in nodes {
            if !s.by_node.contains_key(&n.record.id) {
                let (tx, connected) = watch::channel(false);
                let task = tokio::spawn(follow_node(Arc::downgrade(self), Arc::downgrade(&n), n.record.id.clone(), tx));
                s.by_node.insert(n.record.id.clone(), NodeStream { entry: Arc::downgrade(&n), connected, task });
            }
        }
        true
    }

    /// Waits (at most [`CONNECT_WAIT`]) until the streams of `nodes` are open; returns
    /// the nodes covered and those not.
    pub(crate) async fn wait_connected(&self, nodes: &[String]) -> (Vec<String>, Vec<String>) {
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        let mut rxs: Vec<(String, Option<watch::Receiver<bool>>)> = {
            let s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            nodes.iter().map(|id| (id.clone(), s.by_node.get(id).map(|ns| ns.connected.clone()))).collect()
        };
        let mut ok = Vec::new();
        let mut missing = Vec::new();
        for (id, rx) in &mut rxs {
            let up = match rx {
                Some(rx) => tokio::time::timeout_at(deadline, rx.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok()),
                None => false,
            };
            if up { ok.push(id.clone()) } else { missing.push(id.clone()) }
        }
        (ok, missing)
    }
}

/// Runs while anyone follows: keeps the node streams in step with the directory.
async fn supervise(hub: Arc<EventHub>) {
    let mut members = hub.directory.subscribe();
    while hub.reconcile() {
        tokio::select! {
            _ = members.changed() => {}
            _ = hub.changed.notified() => {}
        }
    }
}

/// One node's event stream into the hub; reopened 500 ms after it fails.
async fn follow_node(hub: Weak<EventHub>, entry: Weak<NodeEntry>, node_id: String, connected: watch::Sender<bool>) {
    loop {
        let Some(mut client) = entry.upgrade().map(|e| e.client.clone()) else { return };
        if let Ok(resp) = client.watch_events(npb::WatchEventsRequest { follow: true, ..Default::default() }).await {
            connected.send_replace(true);
            let mut stream = resp.into_inner();
            while let Some(Ok(m)) = stream.next().await {
                let Some(hub) = hub.upgrade() else { return };
                let item = match m.item {
                    Some(npb::events_message::Item::Event(e)) => pb::events_message::Item::Event(e),
                    Some(npb::events_message::Item::Dropped(d)) => pb::events_message::Item::Dropped(d),
                    None => continue,
                };
                hub.dispatch(&node_id, pb::EventsMessage { item: Some(item) });
            }
            connected.send_replace(false);
            tracing::debug!(event = "node_events_stream_ended", node = %node_id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Takes a follower out of the hub when its stream is dropped (the operator went).
pub(crate) struct Leave {
    pub(crate) hub: Arc<EventHub>,
    pub(crate) id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.hub.deregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_every_set_field() {
        let e = npb::Event {
            node_id: "n2".into(),
            subject: "alice".into(),
            result: "refused".into(),
            code: "token_invalid".into(),
            ..Default::default()
        };
        assert!(Filter::default().matches(&e));
        assert!(Filter { node_id: "n2".into(), code: "token_invalid".into(), ..Default::default() }.matches(&e));
        assert!(!Filter { node_id: "n1".into(), ..Default::default() }.matches(&e));
        assert!(!Filter { result: "accepted".into(), ..Default::default() }.matches(&e));
        assert!(!Filter { subject: "bob".into(), ..Default::default() }.matches(&e));
        let closed = npb::Event { close_code: 4013, result: "closed".into(), ..Default::default() };
        assert!(Filter { code: "4013".into(), ..Default::default() }.matches(&closed));
    }

    #[tokio::test]
    async fn a_full_follower_counts_what_it_lost() {
        let hub = EventHub::new(Directory::new(None, Duration::from_secs(1)));
        let (_id, mut rx, w) = hub.register(Filter { result: "refused".into(), ..Default::default() });
        let ev = |result: &str| pb::EventsMessage {
            item: Some(pb::events_message::Item::Event(npb::Event { result: result.into(), ..Default::default() })),
        };
        for _ in 0..WATCHER_BUFFER + 10 {
            hub.dispatch("n1", ev("refused"));
            hub.dispatch("n1", ev("accepted"));
        }
        hub.dispatch(
            "n1",
            pb::EventsMessage { item: Some(pb::events_message::Item::Dropped(npb::Dropped { count: 5, node_id: "n1".into() })) },
        );
        assert_eq!(w.dropped.load(Ordering::Relaxed), 15, "10 events over the buffer and the node's 5");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, WATCHER_BUFFER, "only matching events were queued");
    }
}
