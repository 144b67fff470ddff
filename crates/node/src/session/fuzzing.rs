//! The session's client side driven from bytes, for the `fuzz/` targets (not an API):
//! the same decoder, reassembly, Ping answers and close handling as a live session, with
//! no socket and no session loop.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_policy::CompiledPolicy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use super::frames::{Assembler, FrameError, Header, Inbound, parse_close, parse_header, unmask};

use super::close;
use super::frames::{OP_CLOSE, OP_PONG, parse_header_from};
use super::io::{Io, IoEvent};
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

/// A client that sends `R` and never reads: everything queued for it stays queued.
struct NeverReads<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for NeverReads<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for NeverReads<R> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// Runs the client side of a session under `policy` over `rd` until a terminal event or
/// EOF; returns the events it reported to the session loop, in order, and what it queued
/// for the client.
pub async fn client_reader<R: AsyncRead + Unpin>(state: Arc<NodeState>, policy: &CompiledPolicy, rd: R) -> (Vec<Inbound>, Vec<Queued>) {
    let limits = Arc::new(Limits::new(policy));
    let outbox = Outbox::new(state, Arc::new(ConnCounters::default()), limits, "fuzz");
    let mut io: Io<NeverReads<R>, tokio::io::DuplexStream> = Io::new(NeverReads(rd), outbox, policy.limits.messages.rate.burst, None);
    let mut events = Vec::new();
    while let IoEvent::Client(ev) = std::future::poll_fn(|cx| io.poll_event(cx)).await {
        let last = !matches!(ev, Inbound::Message { .. });
        events.push(ev);
        if last {
            break;
        }
    }
    // What was encoded (the client never reads it), then what waits to be.
    let mut queued = Vec::new();
    let mut wire = io.outbox.wire.unwritten();
    while let Ok(Some(h)) = parse_header_from(wire, usize::MAX, false) {
        let payload = &wire[h.header_len..h.header_len + h.len];
        queued.push(match (h.opcode, payload) {
            (OP_PONG, p) => Queued::Pong(p.to_vec()),
            (OP_CLOSE, []) => Queued::Close(close::NO_STATUS, String::new()),
            (OP_CLOSE, [a, b, reason @ ..]) => Queued::Close(u16::from_be_bytes([*a, *b]), String::from_utf8_lossy(reason).into_owned()),
            _ => Queued::Other,
        });
        wire = &wire[h.header_len + h.len..];
    }
    queued.extend(io.outbox.wire.queued().map(|o| match o {
        Out::Pong(p) => Queued::Pong(p.to_vec()),
        Out::Close { code, reason } => Queued::Close(*code, reason.clone()),
        Out::Data { .. } | Out::Frames(_) | Out::Ping => Queued::Other,
    }));
    (events, queued)
}
