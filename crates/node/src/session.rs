//! A live session (SPEC section 4). Three tasks per connection, five on upstream routes:
//! - the client reader ([`frames`]) decodes and checks client frames, answers Pings
//!   through the outbox (accounted, and rate-limited on their own), and sends `Inbound`
//!   events on a bounded channel (a slow consumer of events is backpressure on the
//!   client);
//! - the client writer ([`outbox`]) drains the outbox, whose queued bytes are accounted
//!   and capped at `max_buffered_bytes` (over it: close 4013);
//! - the session loop ([`machine`]) applies the rules: heartbeat and idle timeout,
//!   in-band control messages, token expiry and refresh, message size/rate/type,
//!   revocations, operator commands and drain;
//! - on upstream routes, an upstream reader and a writer behind a bounded queue.
//!
//! Every close the node starts waits at most [`CLOSE_LINGER`] for the client's close
//! reply; then the tasks are aborted, which closes the socket whatever the client does.

mod frames;
#[doc(hidden)]
pub(crate) mod fuzzing;
mod limits;
mod machine;
mod outbox;

pub use limits::Limits;
use limits::PingBucket;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{OpCode, Payload, Role, WebSocket, WebSocketError};
use palisade_policy::{CompiledPolicy, RateSpec};

use frames::{Activity, Assembler, FrameError, FrameReader, Inbound, ReadError, parse_close};
use outbox::{Out, Outbox};

use crate::handshake::Accepted;
use crate::http::ClientStream;
use crate::registry::{Command, ConnCounters, SessionInfo};
use crate::state::{NodeState, OpenGuard};
use crate::upstream::PrefixedUpstream;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never on the wire: "the peer's close frame had no code".
    pub const NO_STATUS: u16 = 1005;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const REVOKED: u16 = 4003;
    pub const IDLE: u16 = 4008;
    pub const SLOW_CONSUMER: u16 = 4013;
    pub const RATE_LIMITED: u16 = 4029;
}

/// How long a closing session waits for the client's close reply (avoids resets); then
/// the socket is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// The upstream side of a bridged session.
pub struct UpstreamLink {
    pub upstream: crate::upstream::Upstream,
}

/// A session's place in the registry, taken before the 101 is written so that a session
/// is listed (and reachable by operator commands) as soon as the client sees its upgrade.
pub struct Registration {
    pub conn_id: String,
    counters: Arc<ConnCounters>,
    ctl_rx: flume::Receiver<Command>,
    /// The handshake's trace id and start, for the session's end event.
    trace_id: String,
    started: Instant,
}

pub fn register(state: &NodeState, acc: &Accepted, attempt: &crate::audit::Attempt) -> Registration {
    let conn_id = attempt.conn_id.clone();
    let counters = Arc::new(ConnCounters::default());
    let (ctl_tx, ctl_rx) = flume::unbounded();
    state.registry.insert(
        SessionInfo {
            conn_id: conn_id.clone(),
            subject: acc.claims.sub.clone(),
            jti: acc.claims.jti.clone(),
            client: acc.client,
            route: acc.route.path.clone(),
            started: std::time::SystemTime::now(),
            counters: counters.clone(),
        },
        ctl_tx,
    );
    Registration { conn_id, counters, ctl_rx, trace_id: attempt.trace_id.clone(), started: Instant::now() }
}

pub async fn run(
    state: Arc<NodeState>,
    stream: ClientStream,
    acc: Accepted,
    policy: Arc<CompiledPolicy>,
    reg: Registration,
    upstream: Option<UpstreamLink>,
    _open: OpenGuard,
) {
    let Registration { conn_id, counters, ctl_rx, trace_id, started } = reg;
    let limits = Arc::new(Limits::new(&policy));
    let (rd, wr) = tokio::io::split(stream);
    let (outbox, out_rx) = Outbox::new(state.clone(), counters.clone(), limits.clone(), &acc.claims.sub);
    let activity = Arc::new(Activity { last_seen_ms: Arc::new(AtomicU64::new(0)), epoch: Instant::now() });
    let (in_tx, in_rx) = flume::bounded(8);
    let mut client_reader = tokio::spawn(client_reader(
        FrameReader::new(rd),
        in_tx,
        outbox.clone(),
        activity.clone(),
        limits.clone(),
        policy.limits.messages.rate,
    ));
    let mut client_writer = tokio::spawn(outbox::client_writer(wr, out_rx, counters.clone(), outbox.discard.clone()));

    // The upstream: its own reader (events to the session loop, bounded) and writer
    // (bounded queue: a slow upstream is backpressure on the client).
    let mut up = None;
    if let Some(link) = upstream {
        let mut uws = WebSocket::after_handshake(PrefixedUpstream::new(link.upstream.stream, link.upstream.leftover), Role::Client);
        uws.set_auto_close(true);
        let (urd, uwr) = uws.split(tokio::io::split);
        let (utx, urx) = flume::bounded::<Out>(64);
        let (uin_tx, uin_rx) = flume::bounded(8);
        let ureader = tokio::spawn(upstream_reader(urd, uin_tx, utx.clone(), limits.clone()));
        let uwriter = tokio::spawn(outbox::upstream_writer(uwr, urx));
        up = Some((utx, uin_rx, ureader, uwriter));
    }

    let mut s = machine::Session {
        state: state.clone(),
        tokens: policy.limits.messages.rate.burst as f64,
        policy,
        acc,
        outbox,
        limits,
        activity,
        last_refill: Instant::now(),
        schema_violations: 0,
        warned_for_exp: None,
        authenticated_at: crate::handshake::unix_now(),
        up_tx: up.as_ref().map(|u| u.0.clone()),
        conn_id: conn_id.clone(),
    };
    let up_rx = up.as_mut().map(|u| std::mem::replace(&mut u.1, flume::bounded(1).1));
    let code = s.run_loop(in_rx, ctl_rx, up_rx).await;
    state.registry.remove(&conn_id);
    crate::telemetry::session_closed(&state, &conn_id, &trace_id, &s.acc.claims.sub, &s.acc.route.path, code, started, &counters);
    state.events.publish(|| crate::events::Event {
        kind: crate::events::kind::SESSION_CLOSED,
        conn_id: conn_id.clone(),
        client_address: s.acc.client.to_string(),
        route: s.acc.route.path.clone(),
        subject: s.acc.claims.sub.clone(),
        result: "closed",
        close_code: code,
        trace_id,
        duration_us: started.elapsed().as_micros() as u64,
        bytes_in: counters.bytes_in.load(Ordering::Relaxed),
        bytes_out: counters.bytes_out.load(Ordering::Relaxed),
        ..Default::default()
    });
    drop(s);
    // Wait for the writer to flush the close frame, then for the client's reply (or EOF),
    // so that no unread data makes the kernel answer with a reset; at the end of the
    // linger the socket is closed whatever the client does.
    let linger = tokio::time::Instant::now() + CLOSE_LINGER;
    let _ = tokio::time::timeout_at(linger, &mut client_writer).await;
    let _ = tokio::time::timeout_at(linger, &mut client_reader).await;
    client_writer.abort();
    client_reader.abort();
    if let Some((utx, _, ureader, mut uwriter)) = up {
        drop(utx);
        let _ = tokio::time::timeout(CLOSE_LINGER, &mut uwriter).await;
        uwriter.abort();
        ureader.abort();
    }
}

/// Reads client frames: data to the session loop (reassembled), Pings answered through
/// the outbox, a close answered and reported. Any protocol error ends the reader.
async fn client_reader<R: tokio::io::AsyncRead + Unpin>(
    mut rd: FrameReader<R>,
    tx: flume::Sender<Inbound>,
    outbox: Outbox,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    rate: RateSpec,
) {
    let mut assembler = Assembler::default();
    let mut pings = PingBucket { tokens: rate.burst as f64, at: Instant::now() };
    loop {
        let mut peer_closed = false;
        let ev = match rd.next(|| limits.max_message_bytes()).await {
            Ok(Some(f)) => {
                activity.touch();
                peer_closed = f.opcode == frames::OP_CLOSE;
                match f.opcode {
                    frames::OP_PING if !pings.take(limits.rate()) => Some(Inbound::PingFlood),
                    frames::OP_PING => outbox.pong(Bytes::copy_from_slice(&f.payload)).err().map(|_| Inbound::SlowConsumer),
                    frames::OP_PONG => None,
                    frames::OP_CLOSE => Some(match parse_close(&f.payload) {
                        Ok((code, reason)) => {
                            outbox.close(code, "");
                            Inbound::Close(code, reason)
                        }
                        Err(ev) => ev,
                    }),
                    op => match assembler.push(f.fin, op, f.payload, limits.max_message_bytes()) {
                        Ok(m) => m,
                        Err(ev) => Some(ev),
                    },
                }
            }
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Frame(FrameError::TooBig)) => Some(Inbound::TooBig),
            Err(ReadError::Frame(FrameError::Protocol(why))) => {
                tracing::debug!(event = "client_protocol_error", error = why);
                Some(Inbound::Invalid)
            }
        };
        if let Some(ev) = ev {
            let last = !matches!(ev, Inbound::Message { .. });

            if tx.send_async(ev).await.is_err() {
                // The session ended (the node is closing): read on until the client's
                // close reply, within the linger, rather than leaving input unread.
                if !peer_closed {
                    rd.discard_until_close(limits.max_message_bytes()).await;
                }
                return;
            }
            if last {
                // After the client's own close frame (valid or not) nothing more comes.
                if !peer_closed {
                    rd.discard_until_close(limits.max_message_bytes()).await;
                }
                return;
            }
        }
    }
}

/// An upstream payload in an allocation of its own: fastwebsockets cuts frames out of its
/// read buffer, and a queued message must not keep that whole buffer alive.
fn payload_bytes(p: Payload<'_>) -> Bytes {
    match p {
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

/// Reads the upstream's frames (fastwebsockets, client role): messages up to
/// `max_buffered_bytes`, its Pings and close answered on the upstream queue.
async fn upstream_reader<S: tokio::io::AsyncRead + Unpin>(
    mut rd: fastwebsockets::WebSocketRead<S>,
    tx: flume::Sender<Inbound>,
    utx: flume::Sender<Out>,
    limits: Arc<Limits>,
) {
    let mut assembler = Assembler::default();
    loop {
        let obligations = utx.clone();
        let mut send = move |f: fastwebsockets::Frame<'_>| {
            let o = match f.opcode {
                OpCode::Pong => Some(Out::Pong(payload_bytes(f.payload))),
                OpCode::Close if f.payload.len() > 125 => Some(Out::Close { code: close::PROTOCOL_ERROR, reason: String::new() }),
                OpCode::Close => {
                    let code = if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { close::NORMAL };
                    Some(Out::Close { code, reason: String::new() })
                }
                _ => None,
            };
            if let Some(o) = o {
                let _ = obligations.try_send(o);
            }
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        // A message from the upstream must fit the client's outgoing buffer, frame header
        // included (at most 14 bytes).
        let limit = usize::try_from(limits.max_buffered_bytes()).unwrap_or(usize::MAX).saturating_sub(14);
        rd.set_max_message_size(limit.saturating_add(1));
        let frame = match rd.read_frame(&mut send).await {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => {
                let _ = tx.send_async(Inbound::TooBig).await;
                return;
            }
            Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::ConnectionClosed) => return,
            Err(_) => {
                let _ = tx.send_async(Inbound::Invalid).await;
                return;
            }
        };
        let op = match frame.opcode {
            OpCode::Close => {
                let p = &frame.payload;
                let ev = if p.len() > 125 {
                    Inbound::Invalid
                } else if p.len() >= 2 {
                    Inbound::Close(u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned())
                } else {
                    Inbound::Close(close::NO_STATUS, String::new())
                };
                let _ = tx.send_async(ev).await;
                return;
            }
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text => frames::OP_TEXT,
            OpCode::Binary => frames::OP_BINARY,
            OpCode::Continuation => frames::OP_CONTINUATION,
        };
        let ev = match assembler.push(frame.fin, op, payload_bytes(frame.payload), limit) {
            Ok(None) => continue,
            Ok(Some(m)) => m,
            Err(ev) => {
                let _ = tx.send_async(ev).await;
                return;
            }
        };
        if tx.send_async(ev).await.is_err() {
            return;
        }
    }
}
