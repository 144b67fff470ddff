//! Everything queued for a client, and the writers. Every frame queued for the client
//! counts toward `max_buffered_bytes` by its wire size, control frames (Pong, Close)
//! included, so a client that never reads cannot grow the node's memory: over the limit
//! it is closed with 4013. The queue itself is unbounded only in count; its bytes are
//! bounded by that accounting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Limits;
use super::close;
use super::frames::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use crate::registry::{Command, ConnCounters};
use crate::state::NodeState;

pub enum Out {
    Data {
        binary: bool,
        data: Bytes,
    },
    Ping,
    Pong(Bytes),
    /// `code` 1005 (no status) sends an empty close frame.
    Close {
        code: u16,
        reason: String,
    },
}

impl Out {
    /// Bytes on the wire, as accounted.
    fn cost(&self) -> u64 {
        let payload = match self {
            Out::Data { data, .. } => data.len(),
            Out::Ping => 0,
            Out::Pong(p) => p.len(),
            Out::Close { reason, .. } => 2 + truncate_reason(reason).len(),
        };
        (payload + frame_header_len(payload)) as u64
    }
}

fn frame_header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// The client's outgoing queue with its byte accounting.
#[derive(Clone)]
pub struct Outbox {
    tx: flume::Sender<Out>,
    pub(super) counters: Arc<ConnCounters>,
    node: Arc<NodeState>,
    limits: Arc<Limits>,
    /// Set on a 4013 close: queued data is skipped, the close frame goes next.
    pub(super) discard: Arc<AtomicBool>,
    subject: Arc<str>,
}

#[derive(Debug)]
pub struct SlowConsumer;

impl Outbox {
    pub(super) fn new(
        node: Arc<NodeState>,
        counters: Arc<ConnCounters>,
        limits: Arc<Limits>,
        subject: &str,
    ) -> (Outbox, flume::Receiver<Out>) {
        let (tx, rx) = flume::unbounded();
        let outbox = Outbox { tx, counters, node, limits, discard: Arc::new(AtomicBool::new(false)), subject: Arc::from(subject) };
        (outbox, rx)
    }

    /// Accounts `o` and queues it; over `max_buffered_bytes` it is refused (unless
    /// `force`: the node's own Close).
    fn queue(&self, o: Out, force: bool) -> Result<(), SlowConsumer> {
        let n = o.cost();
        let before = self.counters.buffered.fetch_add(n, Ordering::AcqRel);
        if !force && before + n > self.limits.max_buffered_bytes() {
            self.counters.buffered.fetch_sub(n, Ordering::AcqRel);
            return Err(SlowConsumer);
        }
        self.counters.buffered_peak.fetch_max(before + n, Ordering::Relaxed);
        if self.tx.send(o).is_err() {
            // The writer is gone: nothing will be written, nothing stays accounted.
            self.counters.buffered.fetch_sub(n, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Queues an application message. Over `max_buffered_bytes` it is refused.
    pub fn data(&self, binary: bool, data: Bytes) -> Result<(), SlowConsumer> {
        let n = data.len() as u64;
        self.queue(Out::Data { binary, data }, false)?;
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.node.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.node.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.account_egress(n);
        Ok(())
    }

    /// The answer to a client Ping.
    pub fn pong(&self, payload: Bytes) -> Result<(), SlowConsumer> {
        self.queue(Out::Pong(payload), false)
    }

    /// The node's heartbeat; skipped while the client is not reading anyway.
    pub fn ping(&self) {
        let _ = self.queue(Out::Ping, false);
    }

    /// The node's close frame: always queued (it is the last thing written).
    pub fn close(&self, code: u16, reason: &str) {
        if code == close::SLOW_CONSUMER {
            self.discard.store(true, Ordering::Release);
        }
        let _ = self.queue(Out::Close { code, reason: reason.to_owned() }, true);
    }

    /// Per-subject egress: one alert per window, and the subject's sessions closed with
    /// 4003 when the policy says `action: disconnect`.
    fn account_egress(&self, n: u64) {
        // Per message: read the two settings without taking a reference on the policy.
        let Some((threshold, action)) = self.node.policy.with(|p| p.map(|p| (p.egress_alert_bytes_per_minute, p.egress_action))) else {
            return;
        };
        let minute = crate::handshake::unix_now() / 60;
        if self.node.egress.add(&self.subject, n, threshold, minute) {
            self.node.counters.egress_alerts.fetch_add(1, Ordering::Relaxed);
            let disconnect = action == palisade_policy::model::EgressAction::Disconnect;
            tracing::warn!(
                event = "egress_alert",
                node = %self.node.id,
                enduser.id = %self.subject,
                threshold_bytes_per_minute = threshold,
                action = if disconnect { "disconnect" } else { "log" },
            );
            self.node.events.publish(|| crate::events::Event {
                kind: crate::events::kind::EGRESS_ALERT,
                subject: self.subject.to_string(),
                result: "alert",
                code: if disconnect { "disconnect" } else { "log" }.into(),
                count: threshold,
                ..Default::default()
            });
            if disconnect {
                self.node.registry.dispatch(
                    &crate::registry::Selector::Subject(self.subject.to_string()),
                    Command::Close { code: close::REVOKED, reason: "egress limit".into() },
                );
            }
        }
    }
}

/// A close reason fits in a control frame (123 bytes), cut on a character boundary.
pub fn truncate_reason(r: &str) -> &str {
    let mut end = r.len().min(123);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    &r[..end]
}

/// Appends one unmasked server frame to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn encode_out(out: &mut Vec<u8>, item: &Out) -> bool {
    match item {
        Out::Data { binary, data } => encode(out, if *binary { OP_BINARY } else { OP_TEXT }, data),
        Out::Ping => encode(out, OP_PING, b""),
        Out::Pong(p) => encode(out, OP_PONG, p),
        Out::Close { code, reason } => {
            if *code == close::NO_STATUS {
                encode(out, OP_CLOSE, b"");
            } else {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(truncate_reason(reason).as_bytes());
                encode(out, OP_CLOSE, &p);
            }
            return true;
        }
    }
    false
}

/// Frames written per batch at most (one write and one flush per batch).
const BATCH_BYTES: usize = 64 * 1024;

/// The client writer: drains the outbox in batches, releasing the accounting of what it
/// wrote. Ends after writing a close frame, or when the socket fails.
pub(super) async fn client_writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    rx: flume::Receiver<Out>,
    counters: Arc<ConnCounters>,
    discard: Arc<AtomicBool>,
) {
    let release = |item: &Out| {
        counters.buffered.fetch_sub(item.cost(), Ordering::AcqRel);
    };
    while let Ok(first) = rx.recv_async().await {
        let mut buf = Vec::new();
        let mut closed = false;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let skip = matches!(item, Out::Data { .. } | Out::Pong(_)) && discard.load(Ordering::Acquire);
            if !skip {
                closed = encode_out(&mut buf, &item);
            }
            release(&item);
            if closed || buf.len() >= BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        if closed {
            break;
        }
    }
    // Closed or failed: drop what remains, releasing its accounting.
    while let Ok(item) = rx.try_recv() {
        release(&item);
    }
}

/// The upstream writer (fastwebsockets, client role): a bounded queue, the session waits
/// for room.
pub(super) async fn upstream_writer<W: AsyncWrite + Unpin>(mut wr: fastwebsockets::WebSocketWrite<W>, rx: flume::Receiver<Out>) {
    while let Ok(item) = rx.recv_async().await {
        match write_upstream(&mut wr, &item).await {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}

async fn write_upstream<W: AsyncWrite + Unpin>(wr: &mut fastwebsockets::WebSocketWrite<W>, item: &Out) -> Result<bool, WebSocketError> {
    match item {
        Out::Data { binary, data } => {
            let op = if *binary { OpCode::Binary } else { OpCode::Text };
            wr.write_frame(Frame::new(true, op, None, Payload::Borrowed(data))).await?;
        }
        Out::Ping => wr.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await?,
        Out::Pong(p) => wr.write_frame(Frame::pong(Payload::Borrowed(p))).await?,
        Out::Close { code, reason } => {
            wr.write_frame(Frame::close(*code, truncate_reason(reason).as_bytes())).await?;
            wr.flush().await?;
            return Ok(true);
        }
    }
    Ok(false)
}
