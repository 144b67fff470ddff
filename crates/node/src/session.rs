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

use crate::handshake::{Accepted, unix_now};
use crate::http::ClientStream;
use crate::registry::{Command, ConnCounters, SessionInfo};
use crate::state::{NodeState, OpenGuard};

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
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

/// Repeated schema violations before the session is closed with 1008.
const SCHEMA_VIOLATIONS_BEFORE_CLOSE: u32 = 3;
/// How long a closing session waits for the client's close reply (avoids resets).
const CLOSE_LINGER: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub enum Inbound {
    Message {
        binary: bool,
        data: Bytes,
    },
    /// The peer's close frame (its code; 1005 when it sent none).
    Close(u16, String),
    TooBig,
    Invalid,
    /// A text message that is not UTF-8 (1007).
    InvalidUtf8,
}

pub enum Out {
    Data { binary: bool, data: Bytes },
    Ping,
    Pong(Bytes),
    Close { code: u16, reason: String },
}

/// The client's outgoing queue with its byte accounting.
#[derive(Clone)]
pub struct Outbox {
    tx: flume::Sender<Out>,
    counters: Arc<ConnCounters>,
    node: Arc<NodeState>,
    max: Arc<AtomicU64>,
    discard: Arc<AtomicBool>,
    subject: Arc<str>,
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
        self.counters.buffered_peak.fetch_max(before + n, Ordering::Relaxed);
        self.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.node.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        self.node.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(Out::Data { binary, data });
        self.account_egress(n);
        Ok(())
    }

    /// Per-subject egress: one alert per window, and the subject's sessions closed with
    /// 4003 when the policy says `action: disconnect`.
    fn account_egress(&self, n: u64) {
        let Some(policy) = self.node.policy.load() else { return };
        let minute = unix_now() / 60;
        if self.node.egress.add(&self.subject, n, policy.egress_alert_bytes_per_minute, minute) {
            self.node.counters.egress_alerts.fetch_add(1, Ordering::Relaxed);
            let disconnect = policy.egress_action == palisade_policy::model::EgressAction::Disconnect;
            tracing::warn!(
                event = "egress_alert",
                node = %self.node.id,
                enduser.id = %self.subject,
                threshold_bytes_per_minute = policy.egress_alert_bytes_per_minute,
                action = if disconnect { "disconnect" } else { "log" },
            );
            if disconnect {
                self.node.registry.dispatch(
                    &crate::registry::Selector::Subject(self.subject.to_string()),
                    Command::Close { code: close::REVOKED, reason: "egress limit".into() },
                );
            }
        }
    }

    fn control(&self, o: Out) {
        let _ = self.tx.send(o);
    }
}

/// The upstream side of a bridged session.
pub struct UpstreamLink {
    pub upstream: crate::upstream::Upstream,
}

/// How long a message to the upstream may wait for room before the session fails (1011).
const UPSTREAM_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A session's place in the registry, taken before the 101 is written so that a session
/// is listed (and reachable by operator commands) as soon as the client sees its upgrade.
pub struct Registration {
    pub conn_id: String,
    counters: Arc<ConnCounters>,
    ctl_rx: flume::Receiver<Command>,
}

pub fn register(state: &NodeState, acc: &Accepted, conn_id: String) -> Registration {
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
    Registration { conn_id, counters, ctl_rx }
}

pub async fn run(
    state: Arc<NodeState>,
    stream: ClientStream,
    acc: Accepted,
    reg: Registration,
    upstream: Option<UpstreamLink>,
    _open: OpenGuard,
) {
    let Registration { conn_id, counters, ctl_rx } = reg;
    let policy = acc.policy.clone();
    let ws = WebSocket::after_handshake(stream, Role::Server);
    let (rd, wr) = ws.split(tokio::io::split);
    let limits = policy.limits.messages;

    let (out_tx, out_rx) = flume::unbounded();
    let outbox = Outbox {
        tx: out_tx,
        counters: counters.clone(),
        node: state.clone(),
        max: Arc::new(AtomicU64::new(limits.max_buffered_bytes as u64)),
        discard: Arc::new(AtomicBool::new(false)),
        subject: Arc::from(acc.claims.sub.as_str()),
    };
    let last_seen = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (in_tx, in_rx) = flume::bounded(8);
    let client_obligations = {
        let ob = outbox.clone();
        move |o: Out| ob.control(o)
    };
    // The message limit is read from the live policy before each frame, so a push that
    // changes it applies from the next frame on.
    let client_limit = {
        let state = state.clone();
        let fallback = limits.max_bytes;
        move || state.policy.with(|p| p.map_or(fallback, |p| p.limits.messages.max_bytes))
    };
    let client_reader = tokio::spawn(reader(rd, in_tx, client_obligations, Some((last_seen.clone(), epoch)), client_limit));
    let client_writer = tokio::spawn(writer(wr, out_rx, Some(counters.clone()), outbox.discard.clone()));

    // The upstream: its own reader (events to the session loop, bounded) and writer
    // (bounded queue: a slow upstream is backpressure on the client).
    let mut up = None;
    if let Some(link) = upstream {
        let mut uws = WebSocket::after_handshake(PrefixedUpstream::new(link.upstream.stream, link.upstream.leftover), Role::Client);
        uws.set_auto_close(true);
        let (urd, uwr) = uws.split(tokio::io::split);
        let (utx, urx) = flume::bounded::<Out>(64);
        let (uin_tx, uin_rx) = flume::bounded(8);
        let obligations = {
            let utx = utx.clone();
            move |o: Out| {
                let _ = utx.try_send(o);
            }
        };
        let upstream_limit = {
            let max = outbox.max.clone();
            move || max.load(Ordering::Relaxed) as usize
        };
        let ureader = tokio::spawn(reader(urd, uin_tx, obligations, None, upstream_limit));
        let uwriter = tokio::spawn(bounded_writer(uwr, urx));
        up = Some(UpSide { tx: utx, rx: uin_rx, reader: ureader, writer: uwriter });
    }

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
        up_tx: up.as_ref().map(|u| u.tx.clone()),
        conn_id: conn_id.clone(),
    };
    let up_rx = up.as_mut().map(|u| std::mem::replace(&mut u.rx, flume::bounded(1).1));
    let code = s.run_loop(in_rx, ctl_rx, up_rx).await;
    state.registry.remove(&conn_id);
    tracing::debug!(event = "session_closed", conn.id = %conn_id, code);
    drop(s);
    // Wait for the writer to flush the close frame, then for the client's reply (or EOF),
    // so that no unread data makes the kernel answer with a reset.
    let _ = tokio::time::timeout(CLOSE_LINGER, client_writer).await;
    let _ = tokio::time::timeout(CLOSE_LINGER, client_reader).await;
    if let Some(u) = up {
        drop(u.tx);
        let _ = tokio::time::timeout(CLOSE_LINGER, u.writer).await;
        u.reader.abort();
    }
}

struct UpSide {
    tx: flume::Sender<Out>,
    rx: flume::Receiver<Inbound>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

/// The upstream stream with the bytes it sent right after its 101 replayed first.
pub struct PrefixedUpstream {
    inner: crate::upstream::UpstreamStream,
    prefix: bytes::BytesMut,
}

impl PrefixedUpstream {
    fn new(inner: crate::upstream::UpstreamStream, prefix: bytes::BytesMut) -> Self {
        PrefixedUpstream { inner, prefix }
    }
}

impl tokio::io::AsyncRead for PrefixedUpstream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if crate::http::read_prefix(&mut self.prefix, buf) {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PrefixedUpstream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    up_tx: Option<flume::Sender<Out>>,
    conn_id: String,
}

enum Flow {
    Continue,
    Close(u16, String),
}

fn close_with(code: u16, reason: &str) -> Flow {
    Flow::Close(code, reason.to_owned())
}

async fn recv_upstream(rx: &mut Option<flume::Receiver<Inbound>>) -> Option<Inbound> {
    match rx {
        Some(rx) => rx.recv_async().await.ok(),
        None => std::future::pending().await,
    }
}

impl Session {
    fn instant_at_unix(&self, t: u64) -> tokio::time::Instant {
        let now = unix_now();
        let base = tokio::time::Instant::now();
        if t > now { base + Duration::from_secs(t - now) } else { base }
    }

    async fn run_loop(
        &mut self,
        in_rx: flume::Receiver<Inbound>,
        ctl_rx: flume::Receiver<Command>,
        mut up_rx: Option<flume::Receiver<Inbound>>,
    ) -> u16 {
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
            drain_at.as_mut().reset(tokio::time::Instant::now() + self.drain_delay());
        }

        let flow = loop {
            let flow = tokio::select! {
                ev = in_rx.recv_async() => match ev.ok() {
                    Some(Inbound::Message { binary, data }) => self.on_message(binary, data).await,
                    Some(Inbound::TooBig) => close_with(close::TOO_BIG, "message too big"),
                    Some(Inbound::Invalid) => close_with(close::PROTOCOL_ERROR, "protocol error"),
                    Some(Inbound::InvalidUtf8) => close_with(close::INVALID_DATA, "invalid UTF-8"),
                    // The reader already answered the client's close; pass it upstream.
                    Some(Inbound::Close(code, reason)) => {
                        self.close_upstream(code, reason).await;
                        return code;
                    }
                    None => {
                        self.close_upstream(close::GOING_AWAY, "client gone".into()).await;
                        return close::NORMAL;
                    }
                },
                ev = recv_upstream(&mut up_rx) => match ev {
                    Some(Inbound::Message { binary, data }) => self.push(binary, data),
                    // An upstream close goes to the client with its code.
                    Some(Inbound::Close(code, reason)) => Flow::Close(pass_through(code), reason),
                    Some(Inbound::TooBig | Inbound::Invalid | Inbound::InvalidUtf8) | None => close_with(close::INTERNAL, "upstream failure"),
                },
                cmd = ctl_rx.recv_async() => match cmd.ok() {
                    Some(Command::Close { code, reason }) => Flow::Close(code, reason),
                    Some(Command::Send { payload, binary }) => self.push(binary, payload),
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
                        close_with(close::IDLE, "idle timeout")
                    } else {
                        idle_check.as_mut().reset(tokio::time::Instant::from_std(seen + idle));
                        Flow::Continue
                    }
                }
                _ = &mut warning, if self.warned_for_exp != Some(self.acc.claims.exp) => {
                    self.warned_for_exp = Some(self.acc.claims.exp);
                    self.push(false, Bytes::from(control_msg::auth_expiring(self.acc.claims.exp)))
                }
                _ = &mut expiry => {
                    if unix_now() >= self.acc.claims.exp.saturating_add(self.policy.refresh_grace_seconds) {
                        close_with(close::TOKEN_EXPIRED, "token expired")
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
                _ = &mut drain_at, if draining => close_with(close::GOING_AWAY, "node draining"),
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
                self.close(code, &reason);
                let up_code = if (4000..5000).contains(&code) || code == close::GOING_AWAY { code } else { close::GOING_AWAY };
                self.close_upstream(up_code, reason).await;
                code
            }
            Flow::Continue => close::NORMAL,
        }
    }

    fn push(&self, binary: bool, data: Bytes) -> Flow {
        match self.outbox.data(binary, data) {
            Ok(()) => Flow::Continue,
            Err(SlowConsumer) => close_with(close::SLOW_CONSUMER, "slow consumer"),
        }
    }

    async fn close_upstream(&mut self, code: u16, reason: String) {
        if let Some(tx) = self.up_tx.take() {
            let code = if code == 1005 || code == 1006 { close::NORMAL } else { code };
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send_async(Out::Close { code, reason })).await;
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
            return close_with(close::REVOKED, "revoked");
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
        let max_bytes = self.state.policy.with(|p| p.map_or(self.policy.limits.messages.max_bytes, |p| p.limits.messages.max_bytes));
        if data.len() > max_bytes {
            return close_with(close::TOO_BIG, "message too big");
        }
        // Control messages count too: a refresh costs a signature check.
        if !self.take_token() {
            return close_with(close::RATE_LIMITED, "message rate limit");
        }
        if !binary && let Some(ctl) = control_msg::parse(&data) {
            return self.on_control(ctl).await;
        }
        if binary && !self.acc.route.allow_binary {
            return close_with(close::POLICY, "binary messages not allowed");
        }
        if !binary && let Some(schema) = &self.acc.route.schema {
            let valid = serde_json::from_slice::<serde_json::Value>(&data).is_ok_and(|v| schema.is_valid(&v));
            if !valid {
                self.schema_violations += 1;
                if self.schema_violations >= SCHEMA_VIOLATIONS_BEFORE_CLOSE {
                    return close_with(close::POLICY, "schema violations");
                }
                return self.push(false, Bytes::from_static(control_msg::schema_violation().as_bytes()));
            }
        }
        match &self.up_tx {
            None => self.push(binary, data),
            Some(tx) => match tokio::time::timeout(UPSTREAM_SEND_TIMEOUT, tx.send_async(Out::Data { binary, data })).await {
                Ok(Ok(())) => Flow::Continue,
                _ => close_with(close::INTERNAL, "upstream failure"),
            },
        }
    }

    async fn on_control(&mut self, ctl: ControlMessage) -> Flow {
        let reply = match ctl {
            ControlMessage::Ping => control_msg::pong().to_owned(),
            ControlMessage::Auth(None) => control_msg::auth_error("token_invalid"),
            ControlMessage::Auth(Some(token)) => {
                let policy = self.state.policy.load().unwrap_or_else(|| self.policy.clone());
                match crate::jwks::verify(&self.state.jwks, &policy, &token, unix_now()).await {
                    Ok(c) if c.sub == self.acc.claims.sub => {
                        let exp = c.exp;
                        if c.jti != self.acc.claims.jti {
                            // `disconnect --session` finds the session by its current token.
                            self.state.registry.set_session(&self.conn_id, c.jti.clone());
                        }
                        self.acc.claims = c;
                        control_msg::auth_ok(exp)
                    }
                    Ok(_) => control_msg::auth_error("subject_mismatch"),
                    Err(e) => control_msg::auth_error(e.code()),
                }
            }
        };
        self.push(false, Bytes::from(reply))
    }
}

/// Close codes that may not be sent on the wire (1005, 1006, 1015) become 1011.
fn pass_through(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => close::INTERNAL,
    }
}

fn payload_bytes(p: Payload<'_>) -> Bytes {
    match p {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

/// Reads frames from one side (client or upstream), reassembles fragmented messages up to
/// `max` bytes, answers pings and closes through `obligations`, and sends events on a
/// bounded channel.
async fn reader<S: tokio::io::AsyncRead + Unpin>(
    mut rd: fastwebsockets::WebSocketRead<S>,
    tx: flume::Sender<Inbound>,
    obligations: impl Fn(Out) + Clone,
    activity: Option<(Arc<AtomicU64>, Instant)>,
    max: impl Fn() -> usize,
) {
    let touch = |a: &Option<(Arc<AtomicU64>, Instant)>| {
        if let Some((ls, epoch)) = a {
            ls.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    };
    let mut partial: Option<Partial> = None;
    loop {
        let ob = obligations.clone();
        let act = activity.clone();
        let mut send = move |f: Frame<'_>| {
            touch(&act);
            match f.opcode {
                OpCode::Pong => ob(Out::Pong(payload_bytes(f.payload))),
                // A control frame carries at most 125 bytes; a longer close is a protocol error.
                OpCode::Close if f.payload.len() > 125 => ob(Out::Close { code: close::PROTOCOL_ERROR, reason: String::new() }),
                OpCode::Close => {
                    let code = if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { close::NORMAL };
                    ob(Out::Close { code, reason: String::new() })
                }
                _ => {}
            }
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        // The limit follows policy pushes (a raised max_bytes helps live sessions too).
        let limit = max();
        rd.set_max_message_size(limit + 1);
        let frame = match rd.read_frame(&mut send).await {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => {
                let _ = tx.send_async(Inbound::TooBig).await;
                return;
            }
            Err(WebSocketError::UnexpectedEOF) | Err(WebSocketError::IoError(_)) | Err(WebSocketError::ConnectionClosed) => {
                return;
            }
            Err(WebSocketError::InvalidUTF8) => {
                let _ = tx.send_async(Inbound::InvalidUtf8).await;
                return;
            }
            Err(_) => {
                let _ = tx.send_async(Inbound::Invalid).await;
                return;
            }
        };
        touch(&activity);
        let ev = match (frame.opcode, frame.fin) {
            (OpCode::Close, _) if frame.payload.len() > 125 => {
                let _ = tx.send_async(Inbound::Invalid).await;
                return;
            }
            (OpCode::Close, _) => {
                let p = &frame.payload;
                let (code, reason) = if p.len() >= 2 {
                    (u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned())
                } else {
                    (1005, String::new())
                };
                let _ = tx.send_async(Inbound::Close(code, reason)).await;
                return;
            }
            (OpCode::Pong | OpCode::Ping, _) => continue,
            (OpCode::Text | OpCode::Binary, true) if partial.is_none() => {
                Inbound::Message { binary: frame.opcode == OpCode::Binary, data: payload_bytes(frame.payload) }
            }
            (OpCode::Text | OpCode::Binary, false) if partial.is_none() => {
                let binary = frame.opcode == OpCode::Binary;
                let mut p = Partial { binary, buf: bytes::BytesMut::from(&frame.payload[..]), valid_up_to: 0 };
                if !binary && !p.utf8_so_far(false) {
                    let _ = tx.send_async(Inbound::InvalidUtf8).await;
                    return;
                }
                partial = Some(p);
                continue;
            }
            (OpCode::Continuation, fin) if partial.is_some() => {
                let Some(mut p) = partial.take() else { continue };
                if p.buf.len() + frame.payload.len() > limit {
                    let _ = tx.send_async(Inbound::TooBig).await;
                    return;
                }
                p.buf.extend_from_slice(&frame.payload);
                // Text fails fast: at the first fragment that cannot be UTF-8.
                if !p.binary && !p.utf8_so_far(fin) {
                    let _ = tx.send_async(Inbound::InvalidUtf8).await;
                    return;
                }
                if !fin {
                    partial = Some(p);
                    continue;
                }
                Inbound::Message { binary: p.binary, data: p.buf.freeze() }
            }
            _ => {
                let _ = tx.send_async(Inbound::Invalid).await;
                return;
            }
        };
        if tx.send_async(ev).await.is_err() {
            return;
        }
    }
}

/// A fragmented message being reassembled.
struct Partial {
    binary: bool,
    buf: bytes::BytesMut,
    /// Bytes already known to be UTF-8 (text), so each fragment is checked once.
    valid_up_to: usize,
}

impl Partial {
    /// Whether the text so far can still be UTF-8: only an incomplete sequence at the end
    /// is allowed, and not at all once `fin`.
    fn utf8_so_far(&mut self, fin: bool) -> bool {
        match std::str::from_utf8(&self.buf[self.valid_up_to..]) {
            Ok(_) => {
                self.valid_up_to = self.buf.len();
                true
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.valid_up_to += e.valid_up_to();
                true
            }
            Err(_) => false,
        }
    }
}

async fn write_out<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut fastwebsockets::WebSocketWrite<W>,
    item: &Out,
) -> Result<bool, WebSocketError> {
    match item {
        Out::Data { binary, data } => {
            let op = if *binary { OpCode::Binary } else { OpCode::Text };
            wr.write_frame(Frame::new(true, op, None, Payload::Borrowed(data))).await?;
        }
        Out::Ping => wr.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await?,
        Out::Pong(p) => wr.write_frame(Frame::pong(Payload::Borrowed(p))).await?,
        Out::Close { code, reason } => {
            let reason = truncate_reason(reason);
            wr.write_frame(Frame::close(*code, reason.as_bytes())).await?;
            wr.flush().await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A close reason fits in a control frame (123 bytes), cut on a character boundary.
fn truncate_reason(r: &str) -> &str {
    let mut end = r.len().min(123);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    &r[..end]
}

/// The client writer: unbounded queue, bounded by the outbox's byte accounting.
async fn writer<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: fastwebsockets::WebSocketWrite<W>,
    rx: flume::Receiver<Out>,
    counters: Option<Arc<ConnCounters>>,
    discard: Arc<AtomicBool>,
) {
    let release = |item: &Out| {
        if let (Out::Data { data, .. }, Some(c)) = (item, &counters) {
            c.buffered.fetch_sub(data.len() as u64, Ordering::AcqRel);
        }
    };
    while let Ok(item) = rx.recv_async().await {
        let skip = matches!(item, Out::Data { .. }) && discard.load(Ordering::Acquire);
        let res = if skip { Ok(false) } else { write_out(&mut wr, &item).await };
        release(&item);
        match res {
            Ok(true) => {
                // Closed: drop what remains, releasing its accounting.
                while let Ok(item) = rx.try_recv() {
                    release(&item);
                }
                return;
            }
            Ok(false) => {}
            Err(_) => return,
        }
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}

/// The upstream writer: a bounded queue (the session waits for room).
async fn bounded_writer<W: tokio::io::AsyncWrite + Unpin>(mut wr: fastwebsockets::WebSocketWrite<W>, rx: flume::Receiver<Out>) {
    while let Ok(item) = rx.recv_async().await {
        match write_out(&mut wr, &item).await {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}
