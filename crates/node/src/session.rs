//! A live session (SPEC section 4), in one task: [`io`] reads and decodes the client's
//! frames (answering Pings, accounted and rate-limited on their own), writes the outbox
//! ([`outbox`]: queued bytes accounted and capped at `max_buffered_bytes`, over it close
//! 4013) and, on upstream routes, relays to and from the upstream behind a bounded queue;
//! the session loop ([`machine`]) applies the rules: heartbeat and idle timeout, in-band
//! control messages, token expiry and refresh, message size/rate/type, revocations,
//! operator commands and drain. A message crosses no task and no channel: the task that
//! reads it writes it out.
//!
//! Every close the node starts waits at most [`CLOSE_LINGER`] for the client's close
//! reply; then the sockets are closed whatever the client does.

mod frames;
#[doc(hidden)]
pub(crate) mod fuzzing;
mod io;
mod limits;
mod machine;
mod outbox;

pub use limits::Limits;
pub use outbox::{ENTRY_OVERHEAD, fits_client_buffer};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use palisade_policy::CompiledPolicy;

use outbox::Outbox;

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

/// The session's task. The session is built here, outside the future: an `async fn`
/// keeps its arguments in the future for its whole life, next to the session made of
/// them, and every idle session would pay for both.
pub fn run(
    state: Arc<NodeState>,
    stream: ClientStream,
    acc: Accepted,
    policy: Arc<CompiledPolicy>,
    reg: Registration,
    upstream: Option<UpstreamLink>,
    open: OpenGuard,
) -> impl Future<Output = ()> + Send + 'static {
    let Registration { conn_id, counters, ctl_rx, trace_id, started } = reg;
    let limits = Arc::new(Limits::new(&policy));
    let outbox = Outbox::new(state.clone(), counters.clone(), limits.clone(), &acc.claims.sub);
    let up = upstream.map(|link| Box::new(io::Upstream::new(PrefixedUpstream::new(link.upstream.stream, link.upstream.leftover))));
    let mut io = io::Io::new(stream, outbox, policy.limits.messages.rate.burst, up);
    io.relay = io::RelayRules { allow_binary: acc.route.allow_binary, schema: acc.route.schema.is_some() };
    let mut s = machine::Session {
        state,
        policy,
        acc,
        io,
        limits,
        schema_violations: 0,
        warned_for_exp: None,
        authenticated_at: crate::handshake::unix_now(),
        conn_id,
    };
    // Everything the future needs is captured as it is, never rebound in it: a captured
    // value moved into a local takes a second place in the future.
    async move {
        let _open = &open;
        let code = s.run_loop(ctl_rx).await;
        s.io.outbox.flush_accounting();
        let state = &s.state;
        let conn_id = &s.conn_id;
        state.registry.remove(conn_id);
        crate::telemetry::session_closed(state, conn_id, &trace_id, &s.acc.claims.sub, &s.acc.route.path, code, started, &counters);
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
        // Write the close frames, then wait for the client's reply (or EOF), so that no
        // unread data makes the kernel answer with a reset; at the end of the linger the
        // sockets are closed whatever the peers do.
        let _ = tokio::time::timeout(CLOSE_LINGER, std::future::poll_fn(|cx| s.io.poll_finish(cx))).await;
    }
}

/// Tells every session of a policy swap and of the drain, through its command channel:
/// one waiting point per session (its channel) instead of a watch per session, so an idle
/// session holds less and a busy one polls no node-wide lock per message. Sessions check
/// both when they start, so one registered during a swap misses nothing. Ends with the
/// node.
pub fn spawn_notifier(state: Arc<NodeState>) -> tokio::task::JoinHandle<()> {
    let mut policy = state.policy.subscribe();
    let mut drain = state.drain_tx.subscribe();
    let mut stop = state.stop_tx.subscribe();
    tokio::spawn(async move {
        let mut draining = drain.borrow_and_update().is_some();
        loop {
            tokio::select! {
                changed = policy.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    state.registry.dispatch(&crate::registry::Selector::All, Command::PolicyChanged);
                }
                changed = drain.changed(), if !draining => {
                    if changed.is_err() {
                        return;
                    }
                    if drain.borrow_and_update().is_some() {
                        draining = true;
                        state.registry.dispatch(&crate::registry::Selector::All, Command::Drain);
                    }
                }
                _ = stop.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// Every idle session carries this state in its task (benches/RESULTS.md: the idle
    /// memory bars); a field that grows it belongs behind a `Box` when it is rarely used.
    #[test]
    fn an_idle_session_stays_within_its_inline_budget() {
        use std::mem::size_of;
        let session = size_of::<super::machine::Session>();
        let io = size_of::<super::io::Io<crate::http::ClientStream, crate::upstream::PrefixedUpstream>>();
        assert!(session <= 900, "Session is {session} bytes");
        // Io holds the message bucket the relay takes from (moved out of the Session, which
        // contains Io): Session 816 / Io 416 bytes in release, 824 / 424 in debug builds.
        assert!(io <= 424, "Io is {io} bytes (the upstream side is boxed)");
    }
}
