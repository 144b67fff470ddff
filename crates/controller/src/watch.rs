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
    let results = c
        .fan_out(nodes, |n| {
            let r = node_req.clone();
            async move {
                let mut stream = n.client.clone().watch_events(r).await?.into_inner();
                let mut out = Vec::new();
                while let Some(m) = stream.next().await {
                    if let Some(npb::events_message::Item::Event(e)) = m?.item {
                        out.push(e);
                    }
                }
                Ok(out)
            }
        })
        .await;
    let (mut ok, mut missing, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for (id, r) in results {
        match r {
            Ok(evs) => {
                ok.push(id);
                events.extend(evs);
            }
            Err(_) => missing.push(id),
        }
    }
    // Stable: a node's own order holds among events of the same millisecond.
    events.sort_by_key(|e| e.unix_ms);
    let skip = events.len().saturating_sub(limit as usize);
    let msgs: Vec<Result<pb::EventsMessage, Status>> = std::iter::once(Ok(watching(ok, missing)))
        .chain(events.into_iter().skip(skip).map(|e| Ok(pb::EventsMessage { item: Some(pb::events_message::Item::Event(e)) })))
        .collect();
    Box::pin(futures_util::stream::iter(msgs))
}
