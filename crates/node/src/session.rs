//! A live session (SPEC section 4). Three tasks per connection:
//! - the reader owns the socket's read half and turns frames into `Inbound` events
//!   (bounded channel: a slow consumer of events is backpressure on the client);
//! - the writer owns the write half and drains the `Outbox`, whose queued bytes are
//!   accounted and capped at `max_buffered_bytes` (over it: close 4013);
//! - the session loop below applies the rules: heartbeat and idle timeout, in-band
//!   control messages, token expiry and refresh, message size/rate/type, revocations,
//!   operator commands and drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use palisade_policy::CompiledPolicy;
use palisade_policy::control_msg::{self, ControlMessage};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::handshake::{Accepted, unix_now};
use crate::http::ClientStream;
use crate::registry::{Command, ConnCounters, SessionInfo};
use crate::state::{NodeState, OpenGuard, RouteKind};

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const REVOKED: u16 = 4003;
    pub const IDLE: u16 = 4008;
    pub const SLOW_CONSUMER: u16 = 4013;
    pub const RATE_LIMITED: u16 = 4029;
}

/// Repeated schema violations before the session is closed with 1008.
const SCHEMA_VIOLATIONS_BEFORE_CLOSE: u32 = 3;
/// How long a closing session waits for the client's close reply (avoids resets).
const CLOSE_LINGER: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub enum Inbound {
    Message { binary: bool, data: Bytes },
    Close,
    TooBig,
    Invalid,
}

enum Out {
    Data { binary: bool, data: Bytes },
    Ping,
    Pong(Bytes),
    Close { code: u16, reason: String },
}

/// The client's outgoing queue with its byte accounting.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    counters: Arc<ConnCounters>,
    node: Arc<NodeState>,
    max: Arc<AtomicU64>,
    discard: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct SlowConsumer;

impl Outbox {
    /// Queues an application message. Over `max_buffered_bytes` it is refused.
    pub fn data(&self, binary: bool, data: Bytes) -> Result<(), SlowConsumer> {
        let n = data.len() as u64;
        let before = self.counters.buffered.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max.load(Ordering::Relaxed) {
            self.counters.buffered.fetch_sub(n, Ordering::AcqRel);
            return Err(SlowConsumer);
        }
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.node.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.node.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(Out::Data { binary, data });
        Ok(())
    }

    fn text(&self, s: impl Into<String>) -> Result<(), SlowConsumer> {
        self.data(false, Bytes::from(s.into()))
    }

    fn control(&self, o: Out) {
        let _ = self.tx.send(o);
    }
}

pub async fn run(state: Arc<NodeState>, stream: ClientStream, acc: Accepted, conn_id: String, _open: OpenGuard) {
    let policy = acc.policy.clone();
    let ws = WebSocket::after_handshake(stream, Role::Server);
    let (mut rd, wr) = ws.split(tokio::io::split);
    let limits = policy.limits.messages;
    rd.set_max_message_size(limits.max_bytes + 1);

    let counters = Arc::new(ConnCounters::default());
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let outbox = Outbox {
        tx: out_tx,
        counters: counters.clone(),
        node: state.clone(),
        max: Arc::new(AtomicU64::new(limits.max_buffered_bytes as u64)),
        discard: Arc::new(AtomicBool::new(false)),
    };
    let last_seen = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (in_tx, in_rx) = mpsc::channel(8);
    let reader =
        tokio::spawn(reader(rd, in_tx, outbox.clone(), last_seen.clone(), epoch, Arc::new(AtomicU64::new(limits.max_bytes as u64))));
    let writer = tokio::spawn(writer(wr, out_rx, counters.clone(), outbox.discard.clone()));

    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
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
    let mut s = Session {
        state: state.clone(),
        policy,
        acc,
        outbox,
        last_seen,
        epoch,
        tokens: limits.rate.burst as f64,
        last_refill: Instant::now(),
        schema_violations: 0,
        warned_for_exp: None,
    };
    let code = s.run_loop(in_rx, ctl_rx).await;
    state.registry.remove(&conn_id);
    tracing::debug!(event = "session_closed", conn.id = %conn_id, code);
    // Wait for the writer to flush the close frame, then for the client's reply (or EOF),
    // so that no unread data makes the kernel answer with a reset.
    let _ = tokio::time::timeout(CLOSE_LINGER, writer).await;
    let _ = tokio::time::timeout(CLOSE_LINGER, reader).await;
}

struct Session {
    state: Arc<NodeState>,
    policy: Arc<CompiledPolicy>,
    acc: Accepted,
    outbox: Outbox,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    tokens: f64,
    last_refill: Instant,
    schema_violations: u32,
    warned_for_exp: Option<u64>,
}

enum Flow {
    Continue,
    Close(u16, &'static str),
}

impl Session {
    fn instant_at_unix(&self, t: u64) -> tokio::time::Instant {
        let now = unix_now();
        let base = tokio::time::Instant::now();
        if t > now { base + Duration::from_secs(t - now) } else { base }
    }

    async fn run_loop(&mut self, mut in_rx: mpsc::Receiver<Inbound>, mut ctl_rx: mpsc::UnboundedReceiver<Command>) -> u16 {
        let mut policy_rx = self.state.policy.subscribe();
        let mut drain_rx = self.state.drain_tx.subscribe();
        let mut ping = tokio::time::interval(self.policy.limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let idle_check = tokio::time::sleep(self.policy.limits.idle_timeout);
        tokio::pin!(idle_check);
        let expiry = tokio::time::sleep_until(self.expiry_deadline());
        tokio::pin!(expiry);
        let warning = tokio::time::sleep_until(self.warning_deadline());
        tokio::pin!(warning);
        let mut draining = *drain_rx.borrow();
        let drain_at = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(drain_at);
        if draining {
            drain_at.as_mut().reset(tokio::time::Instant::now());
        }

        let flow = loop {
            let flow = tokio::select! {
                ev = in_rx.recv() => match ev {
                    Some(Inbound::Message { binary, data }) => self.on_message(binary, data).await,
                    Some(Inbound::TooBig) => Flow::Close(close::TOO_BIG, "message too big"),
                    Some(Inbound::Invalid) => Flow::Close(close::PROTOCOL_ERROR, "protocol error"),
                    // The reader already answered the client's close; the socket is done.
                    Some(Inbound::Close) | None => return close::NORMAL,
                },
                cmd = ctl_rx.recv() => match cmd {
                    Some(Command::Close { code, reason }) => {
                        self.close(code, &reason);
                        return code;
                    }
                    Some(Command::Send { payload, binary }) => match self.outbox.data(binary, payload) {
                        Ok(()) => Flow::Continue,
                        Err(SlowConsumer) => Flow::Close(close::SLOW_CONSUMER, "slow consumer"),
                    },
                    None => Flow::Continue,
                },
                _ = ping.tick() => {
                    self.outbox.control(Out::Ping);
                    Flow::Continue
                }
                _ = &mut idle_check => {
                    let idle = self.policy.limits.idle_timeout;
                    let seen = self.epoch + Duration::from_millis(self.last_seen.load(Ordering::Relaxed));
                    if seen.elapsed() >= idle {
                        Flow::Close(close::IDLE, "idle timeout")
                    } else {
                        idle_check.as_mut().reset(tokio::time::Instant::from_std(seen + idle));
                        Flow::Continue
                    }
                }
                _ = &mut warning, if self.warned_for_exp != Some(self.acc.claims.exp) => {
                    self.warned_for_exp = Some(self.acc.claims.exp);
                    match self.outbox.text(control_msg::auth_expiring(self.acc.claims.exp)) {
                        Ok(()) => Flow::Continue,
                        Err(SlowConsumer) => Flow::Close(close::SLOW_CONSUMER, "slow consumer"),
                    }
                }
                _ = &mut expiry => {
                    if unix_now() >= self.acc.claims.exp.saturating_add(self.policy.refresh_grace_seconds) {
                        Flow::Close(close::TOKEN_EXPIRED, "token expired")
                    } else {
                        expiry.as_mut().reset(self.expiry_deadline());
                        Flow::Continue
                    }
                }
                changed = policy_rx.changed() => {
                    if changed.is_ok() { self.on_policy_change() } else { Flow::Continue }
                }
                changed = drain_rx.changed(), if !draining => {
                    if changed.is_ok() && *drain_rx.borrow() {
                        draining = true;
                        drain_at.as_mut().reset(tokio::time::Instant::now() + self.drain_delay());
                    }
                    Flow::Continue
                }
                _ = &mut drain_at, if draining => Flow::Close(close::GOING_AWAY, "node draining"),
            };
            // A refresh moves the expiry and warning timers.
            if let Flow::Continue = flow {
                let e = self.expiry_deadline();
                if expiry.deadline() != e {
                    expiry.as_mut().reset(e);
                    warning.as_mut().reset(self.warning_deadline());
                }
                continue;
            }
            break flow;
        };
        match flow {
            Flow::Close(code, reason) => {
                self.close(code, reason);
                code
            }
            Flow::Continue => close::NORMAL,
        }
    }

    fn expiry_deadline(&self) -> tokio::time::Instant {
        self.instant_at_unix(self.acc.claims.exp.saturating_add(self.policy.refresh_grace_seconds))
    }

    fn warning_deadline(&self) -> tokio::time::Instant {
        self.instant_at_unix(self.acc.claims.exp.saturating_sub(self.policy.refresh_warning_seconds))
    }

    /// Drain closes are spread over the drain window so that clients do not all
    /// reconnect at the same instant.
    fn drain_delay(&self) -> Duration {
        let window = self.state.config.drain_deadline().mul_f64(0.8);
        let frac: f64 = rand::random();
        window.mul_f64(frac)
    }

    fn close(&self, code: u16, reason: &str) {
        if code == close::SLOW_CONSUMER {
            // Skip what the client did not read: the close frame goes next.
            self.outbox.discard.store(true, Ordering::Release);
        }
        self.outbox.control(Out::Close { code, reason: reason.to_owned() });
    }

    fn on_policy_change(&mut self) -> Flow {
        let Some(p) = self.state.policy.load() else { return Flow::Continue };
        let c = &self.acc.claims;
        if p.verifier.revocations.is_revoked(&c.sub, c.jti.as_deref(), c.iat) {
            return Flow::Close(close::REVOKED, "revoked");
        }
        self.outbox.max.store(p.limits.messages.max_buffered_bytes as u64, Ordering::Relaxed);
        self.policy = p;
        Flow::Continue
    }

    fn take_token(&mut self) -> bool {
        let rate = self.policy.limits.messages.rate;
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_refill).as_secs_f64();
        self.last_refill = now;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn on_message(&mut self, binary: bool, data: Bytes) -> Flow {
        let n = data.len() as u64;
        let node = &self.state.counters;
        node.messages_in.fetch_add(1, Ordering::Relaxed);
        node.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.outbox.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        self.outbox.counters.bytes_in.fetch_add(n, Ordering::Relaxed);
        if data.len() > self.policy.limits.messages.max_bytes {
            return Flow::Close(close::TOO_BIG, "message too big");
        }
        if !binary && let Some(ctl) = control_msg::parse(&data) {
            return self.on_control(ctl);
        }
        if !self.take_token() {
            return Flow::Close(close::RATE_LIMITED, "message rate limit");
        }
        if binary && !self.acc.route.allow_binary {
            return Flow::Close(close::POLICY, "binary messages not allowed");
        }
        let _ = SCHEMA_VIOLATIONS_BEFORE_CLOSE;
        let _ = self.schema_violations;
        match &self.acc.route.kind {
            RouteKind::Echo => match self.outbox.data(binary, data) {
                Ok(()) => Flow::Continue,
                Err(SlowConsumer) => Flow::Close(close::SLOW_CONSUMER, "slow consumer"),
            },
            RouteKind::Upstream { .. } => Flow::Close(close::INTERNAL, "upstream unavailable"),
        }
    }

    fn on_control(&mut self, ctl: ControlMessage) -> Flow {
        let reply = match ctl {
            ControlMessage::Ping => control_msg::pong().to_owned(),
            ControlMessage::Auth(None) => control_msg::auth_error("token_invalid"),
            ControlMessage::Auth(Some(token)) => {
                let policy = self.state.policy.load().unwrap_or_else(|| self.policy.clone());
                match policy.verifier.verify(&token, unix_now()) {
                    Ok(c) if c.sub == self.acc.claims.sub => {
                        let exp = c.exp;
                        self.acc.claims = c;
                        control_msg::auth_ok(exp)
                    }
                    Ok(_) => control_msg::auth_error("subject_mismatch"),
                    Err(e) => control_msg::auth_error(e.code()),
                }
            }
        };
        match self.outbox.text(reply) {
            Ok(()) => Flow::Continue,
            Err(SlowConsumer) => Flow::Close(close::SLOW_CONSUMER, "slow consumer"),
        }
    }
}

fn payload_bytes(p: Payload<'_>) -> Bytes {
    match p {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

async fn reader(
    mut rd: fastwebsockets::WebSocketRead<ReadHalf<ClientStream>>,
    tx: mpsc::Sender<Inbound>,
    outbox: Outbox,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    max: Arc<AtomicU64>,
) {
    let touch = |ls: &AtomicU64| ls.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    let mut partial: Option<(bool, bytes::BytesMut)> = None;
    loop {
        let ob = outbox.clone();
        let ls = last_seen.clone();
        let mut send = move |f: Frame<'_>| {
            ls.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            match f.opcode {
                OpCode::Pong => ob.control(Out::Pong(payload_bytes(f.payload))),
                OpCode::Close => {
                    let code = if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { close::NORMAL };
                    ob.control(Out::Close { code, reason: String::new() })
                }
                _ => {}
            }
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        let frame = match rd.read_frame(&mut send).await {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => {
                let _ = tx.send(Inbound::TooBig).await;
                return;
            }
            Err(WebSocketError::UnexpectedEOF) | Err(WebSocketError::IoError(_)) | Err(WebSocketError::ConnectionClosed) => {
                return;
            }
            Err(_) => {
                let _ = tx.send(Inbound::Invalid).await;
                return;
            }
        };
        touch(&last_seen);
        let limit = max.load(Ordering::Relaxed) as usize;
        let ev = match (frame.opcode, frame.fin) {
            (OpCode::Close, _) => {
                let _ = tx.send(Inbound::Close).await;
                return;
            }
            (OpCode::Pong | OpCode::Ping, _) => continue,
            (OpCode::Text | OpCode::Binary, true) if partial.is_none() => {
                Inbound::Message { binary: frame.opcode == OpCode::Binary, data: payload_bytes(frame.payload) }
            }
            (OpCode::Text | OpCode::Binary, false) if partial.is_none() => {
                partial = Some((frame.opcode == OpCode::Binary, bytes::BytesMut::from(&frame.payload[..])));
                continue;
            }
            (OpCode::Continuation, fin) if partial.is_some() => {
                let Some((binary, mut buf)) = partial.take() else { continue };
                if buf.len() + frame.payload.len() > limit {
                    let _ = tx.send(Inbound::TooBig).await;
                    return;
                }
                buf.extend_from_slice(&frame.payload);
                if !fin {
                    partial = Some((binary, buf));
                    continue;
                }
                if !binary && std::str::from_utf8(&buf).is_err() {
                    let _ = tx.send(Inbound::Invalid).await;
                    return;
                }
                Inbound::Message { binary, data: buf.freeze() }
            }
            _ => {
                let _ = tx.send(Inbound::Invalid).await;
                return;
            }
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

async fn writer(
    mut wr: fastwebsockets::WebSocketWrite<WriteHalf<ClientStream>>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    counters: Arc<ConnCounters>,
    discard: Arc<AtomicBool>,
) {
    while let Some(item) = rx.recv().await {
        let res = match item {
            Out::Data { binary, data } => {
                let n = data.len() as u64;
                let r = if discard.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    let op = if binary { OpCode::Binary } else { OpCode::Text };
                    wr.write_frame(Frame::new(true, op, None, Payload::Borrowed(&data))).await
                };
                counters.buffered.fetch_sub(n, Ordering::AcqRel);
                r
            }
            Out::Ping => wr.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await,
            Out::Pong(p) => wr.write_frame(Frame::pong(Payload::Borrowed(&p))).await,
            Out::Close { code, reason } => {
                let r = wr.write_frame(Frame::close(code, reason.as_bytes())).await;
                let _ = wr.flush().await;
                // Drop what remains, releasing its accounting.
                rx.close();
                while let Ok(item) = rx.try_recv() {
                    if let Out::Data { data, .. } = item {
                        counters.buffered.fetch_sub(data.len() as u64, Ordering::AcqRel);
                    }
                }
                let _ = r;
                return;
            }
        };
        if res.is_err() {
            return;
        }
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}
