//! `FleetControl.WatchEvents`: the fleet's audit events, followed through the
//! [`EventHub`] or gathered recent from every node.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt as _;
use palisade_proto::controller::v1 as pb;
use palisade_proto::node::v1 as npb;
use tonic::Status;

use crate::directory::NodeEntry;
use crate::events::{EventsStream, Filter, Leave};
use crate::service::Controller;

fn watching(node_ids: Vec<String>, unreachable_node_ids: Vec<String>) -> pb::EventsMessage {
    pb::EventsMessage { item: Some(pb::events_message::Item::Watching(pb::Watching { node_ids, unreachable_node_ids })) }
}

/// The WatchEvents RPC.
pub async fn watch_events(c: &Arc<Controller>, req: pb::WatchEventsRequest) -> Result<EventsStream, Status> {
    let targets: Vec<String> = c.targets(&req.node_id)?.iter().map(|n| n.record.id.clone()).collect();
    let filter = Filter::from_request(&req);
    if !req.follow {
        return Ok(recent(c, req, targets).await);
    }
    let hub = c.events.clone();
    let (id, rx, w) = hub.register(filter);
    let leave = Leave { hub: hub.clone(), id };
    let (ok, missing) = hub.wait_connected(&targets).await;
    let stopped = hub.stopped.subscribe();
    let first = futures_util::stream::iter([Ok(watching(ok, missing))]);
    let rest = futures_util::stream::unfold((rx, w, leave, stopped), |(mut rx, w, leave, mut stopped)| async move {
        // Losses first: the follower learns of them as soon as it reads again.
        let lost = w.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let msg =
                pb::EventsMessage { item: Some(pb::events_message::Item::Dropped(npb::Dropped { count: lost, node_id: String::new() })) };
            return Some((Ok(msg), (rx, w, leave, stopped)));
        }
        let msg = tokio::select! {
            m = rx.recv() => m?,
            _ = stopped.wait_for(|s| *s) => return None,
        };
        Some((Ok(msg), (rx, w, leave, stopped)))
    });
    Ok(Box::pin(first.chain(rest)))
}

/// Without `follow`: every target node's recent matching events, the newest `limit`.
async fn recent(c: &Arc<Controller>, req: pb::WatchEventsRequest, targets: Vec<String>) -> EventsStream {
    let limit = match req.limit {
        0 => 100,
        n => n.min(1000),
    };
    let nodes: Vec<Arc<NodeEntry>> = targets.iter().filter_map(|id| c.directory.get(id)).collect();
    let node_req = npb::WatchEventsRequest { subject: req.subject, result: req.result, code: req.code, follow: false, limit };
    // The newest `limit` of all answers, kept as they arrive, and each node read only up
    // to `limit` events: memory stays within `limit` entries (plus the calls in flight),
    // whatever the fleet's size or a node's answer.
    let newest = std::sync::Mutex::new(Newest::new(limit as usize));
    let results = c
        .fan_out(nodes, |n| {
            let (r, newest) = (node_req.clone(), &newest);
            async move {
                let mut stream = n.client.clone().watch_events(r).await?.into_inner();
                let mut mine = Vec::new();
                while mine.len() < limit as usize
                    && let Some(m) = stream.next().await
                {
                    if let Some(npb::events_message::Item::Event(e)) = m?.item {
                        mine.push(e);
                    }
                }
                let mut kept = newest.lock().unwrap_or_else(|p| p.into_inner());
                for (i, e) in mine.into_iter().enumerate() {
                    kept.push((e.unix_ms, n.record.id.clone(), i), e);
                }
                Ok(())
            }
        })
        .await;
    let (mut ok, mut missing) = (Vec::new(), Vec::new());
    for (id, r) in results {
        match r {
            Ok(()) => ok.push(id),
            Err(_) => missing.push(id),
        }
    }
    let events = newest.into_inner().unwrap_or_else(|p| p.into_inner()).into_sorted();
    let msgs: Vec<Result<pb::EventsMessage, Status>> = std::iter::once(Ok(watching(ok, missing)))
        .chain(events.into_iter().map(|e| Ok(pb::EventsMessage { item: Some(pb::events_message::Item::Event(e)) })))
        .collect();
    Box::pin(futures_util::stream::iter(msgs))
}

/// Where an event sorts: its millisecond, then its node and its place in that node's
/// answer (so a node's own order holds among events of the same millisecond).
type Key = (u64, String, usize);

/// The newest `limit` events pushed so far (a min-heap on [`Key`]: the oldest goes first).
struct Newest {
    limit: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Keyed>>,
}

struct Keyed(Key, npb::Event);

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Newest {
    fn new(limit: usize) -> Self {
        Newest { limit, heap: std::collections::BinaryHeap::with_capacity(limit + 1) }
    }

    fn push(&mut self, key: Key, e: npb::Event) {
        self.heap.push(std::cmp::Reverse(Keyed(key, e)));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// Oldest first.
    fn into_sorted(self) -> Vec<npb::Event> {
        // Ascending in Reverse is descending in the key.
        self.heap.into_sorted_vec().into_iter().rev().map(|std::cmp::Reverse(Keyed(_, e))| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ms: u64, code: &str) -> npb::Event {
        npb::Event { unix_ms: ms, code: code.into(), ..Default::default() }
    }

    #[test]
    fn newest_keeps_the_last_limit_oldest_first_and_a_nodes_order_within_a_millisecond() {
        let mut n = Newest::new(3);
        for (key, e) in [
            ((5, "b".to_string(), 0), ev(5, "b0")),
            ((1, "a".to_string(), 0), ev(1, "a0")),
            ((5, "a".to_string(), 1), ev(5, "a1")),
            ((5, "a".to_string(), 2), ev(5, "a2")),
            ((2, "b".to_string(), 1), ev(2, "b1")),
        ] {
            n.push(key, e);
        }
        let codes: Vec<String> = n.into_sorted().into_iter().map(|e| e.code).collect();
        assert_eq!(codes, ["a1", "a2", "b0"]);
    }
}
