//! The session's client reader driven from bytes, for the `fuzz/` targets (not an API):
//! the same decoder, reassembly, Ping answers and close handling as a live session, with
//! no socket and no session loop.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use palisade_policy::CompiledPolicy;
use tokio::io::AsyncRead;

pub use super::frames::{Assembler, FrameError, Header, Inbound, parse_close, parse_header, unmask};

use super::frames::{Activity, FrameReader};
use super::limits::Limits;
use super::outbox::{Out, Outbox};
use crate::registry::ConnCounters;
use crate::state::NodeState;

/// What the reader queued for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    Pong(Vec<u8>),
    Close(u16, String),
    /// Anything else (the reader queues nothing else).
    Other,
}

/// Runs the client reader of a session under `policy` over `rd` until it returns (a
/// terminal event, or EOF); returns the events it sent to the session loop, in order,
/// and what it queued for the client.
pub async fn client_reader<R: AsyncRead + Unpin>(state: Arc<NodeState>, policy: &CompiledPolicy, rd: R) -> (Vec<Inbound>, Vec<Queued>) {
    let limits = Arc::new(Limits::new(policy));
    let (outbox, out_rx) = Outbox::new(state, Arc::new(ConnCounters::default()), limits.clone(), "fuzz");
    let activity = Arc::new(Activity { last_seen_ms: Arc::new(AtomicU64::new(0)), epoch: Instant::now() });
    let (tx, rx) = flume::bounded(8);
    let reader = super::client_reader(FrameReader::new(rd), tx, outbox, activity, limits, policy.limits.messages.rate);
    let events = async {
        let mut v = Vec::new();
        while let Ok(ev) = rx.recv_async().await {
            v.push(ev);
        }
        v
    };
    let ((), events) = tokio::join!(reader, events);
    let queued = out_rx
        .drain()
        .map(|o| match o {
            Out::Pong(p) => Queued::Pong(p.to_vec()),
            Out::Close { code, reason } => Queued::Close(code, reason),
            Out::Data { .. } | Out::Ping => Queued::Other,
        })
        .collect();
    (events, queued)
}
