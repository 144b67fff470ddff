//! The session loop: one `select!` over client events, upstream events, operator
//! commands, the heartbeat, the idle check, token expiry and refresh, policy changes and
//! drain, and the session's sockets ([`Io`]). Nothing in it waits on anything slow: a
//! full upstream queue stops reading from the client (backpressure) while commands and
//! policy changes are still served, and a refresh's signature check (which may fetch JWKS
//! keys) runs in a task of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use palisade_policy::control_msg;
use palisade_policy::{Claims, CompiledPolicy, TokenError};
use tokio_stream::Stream;

use super::frames::Inbound;
use super::io::{Io, IoEvent};
use super::outbox::{Out, SlowConsumer};
use super::{Limits, close};
use crate::handshake::{Accepted, unix_now};
use crate::http::ClientStream;
use crate::registry::Command;
use crate::state::NodeState;
use crate::upstream::PrefixedUpstream;

/// Repeated schema violations before the session is closed with 1008.
pub(super) const SCHEMA_VIOLATIONS_BEFORE_CLOSE: u32 = 3;
/// Events served at most between two polls of the session's timer (a poll registers
/// its waker; between polls its expiry is read from its state).
const TIMER_POLL_EVENTS: u32 = 64;
/// Timers further away than this are treated as "never" (a token `exp` far in the future
/// must not overflow the clock).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

pub(super) struct Session {
    pub(super) state: Arc<NodeState>,
    pub(super) policy: Arc<CompiledPolicy>,
    pub(super) acc: Accepted,
    pub(super) io: Io<ClientStream, PrefixedUpstream>,
    pub(super) limits: Arc<Limits>,
    pub(super) schema_violations: u32,
    pub(super) warned_for_exp: Option<u64>,
    /// When the client last authenticated (the handshake, then each refresh), unix
    /// seconds: with `auth.refresh.interval_seconds` it bounds the session's expiry.
    pub(super) authenticated_at: u64,
    pub(super) conn_id: String,
}

pub(super) enum Flow {
    Continue,
    /// The node closes the session with this code and reason.
    Close(u16, String),
    /// The session ended (its close frames are queued already).
    End(u16),
}

/// What woke the session loop.
enum Wake {
    Command(Option<Command>),
    /// An in-band refresh was verified (`None`: its task failed).
    Refreshed(Option<Result<Claims, TokenError>>),
    Timer,
    Io(IoEvent),
}

fn close_with(code: u16, reason: &str) -> Flow {
    Flow::Close(code, reason.to_owned())
}

/// An in-band refresh being verified (at most one: a newer one replaces it).
type Refresh = tokio::task::JoinHandle<Result<Claims, TokenError>>;

impl Session {
    fn instant_at_unix(&self, t: u64) -> tokio::time::Instant {
        let now = unix_now();
        let base = tokio::time::Instant::now();
        let ahead = Duration::from_secs(t.saturating_sub(now)).min(FAR_FUTURE);
        base.checked_add(ahead).unwrap_or(base)
    }

    pub(super) async fn run_loop(&mut self, ctl_rx: flume::Receiver<Command>) -> u16 {
        // Kept across waits: its waiter is registered once, not at every wait.
        let mut ctl = ctl_rx.stream();
        // The channel is polled (it takes the channel's lock) only while a command was sent
        // and not taken, or until a poll found it empty: that poll's waker is the one a
        // later send wakes.
        let mut commands = 0u64;
        let mut ctl_armed = false;
        let mut draining = self.state.drain_tx.borrow().is_some();
        let mut at = self.deadlines(draining);
        let timer = tokio::time::sleep_until(at.next(self.warned_for_exp));
        tokio::pin!(timer);
        let mut pending: Option<Refresh> = None;
        // Events served since the timer was last polled (its first poll registers it).
        let mut events_since_timer = TIMER_POLL_EVENTS;
        let mut ctl_open = true;
        let mut generation = self.state.policy.generation();
        // A policy swapped between the handshake and the registration (a revocation, new
        // limits) applies now: the notifier only reports later swaps.
        let mut first = Some(self.on_policy_change());

        let flow = loop {
            let flow = if let Some(f) = first.take() {
                f
            } else {
                // Operator commands (policy changes and drain among them) first, then the
                // timer: neither is delayed by a busy client.
                let wake = std::future::poll_fn(|cx| {
                    if ctl_open && (!ctl_armed || self.io.outbox.counters.commands.load(Ordering::Acquire) != commands) {
                        match Pin::new(&mut ctl).poll_next(cx) {
                            Poll::Ready(cmd) => {
                                commands += 1;
                                ctl_armed = false;
                                return Poll::Ready(Wake::Command(cmd));
                            }
                            Poll::Pending => ctl_armed = true,
                        }
                    }
                    if let Some(h) = &mut pending
                        && let Poll::Ready(r) = Pin::new(h).poll(cx)
                    {
                        return Poll::Ready(Wake::Refreshed(r.ok()));
                    }
                    // The timer is polled (its waker registered) before the task waits and
                    // at least every TIMER_POLL_EVENTS events; in between, whether the
                    // driver fired it is one atomic load.
                    if timer.is_elapsed() {
                        return Poll::Ready(Wake::Timer);
                    }
                    events_since_timer += 1;
                    if events_since_timer >= TIMER_POLL_EVENTS {
                        events_since_timer = 0;
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Timer);
                        }
                    }
                    // A push is applied before the next frame is judged, without waiting
                    // for the notifier's command (which still wakes an idle session).
                    let g = self.state.policy.generation();
                    if g != generation {
                        generation = g;
                        return Poll::Ready(Wake::Command(Some(Command::PolicyChanged)));
                    }
                    match self.io.poll_event(cx) {
                        Poll::Ready(ev) => Poll::Ready(Wake::Io(ev)),
                        Poll::Pending => {
                            events_since_timer = 0;
                            if timer.as_mut().poll(cx).is_ready() { Poll::Ready(Wake::Timer) } else { Poll::Pending }
                        }
                    }
                })
                .await;
                match wake {
                    Wake::Command(Some(Command::Close { code, reason })) => Flow::Close(code, reason),
                    Wake::Command(Some(Command::Send { payload, binary })) => self.push(binary, payload),
                    Wake::Command(Some(Command::PolicyChanged)) => self.on_policy_change(),
                    Wake::Command(Some(Command::Drain)) => {
                        if !draining {
                            draining = true;
                            at.drain = Some(tokio::time::Instant::now() + self.drain_delay());
                        }
                        Flow::Continue
                    }
                    Wake::Command(None) => {
                        ctl_open = false;
                        Flow::Continue
                    }
                    Wake::Refreshed(verified) => {
                        pending = None;
                        match verified {
                            Some(r) => self.on_refresh(r),
                            None => self.push(false, Bytes::from(control_msg::auth_error("token_invalid"))),
                        }
                    }
                    Wake::Timer => self.on_timer(&mut at),
                    Wake::Io(ev) => self.on_io(ev, &mut pending),
                }
            };
            if let Flow::Continue = flow {
                // A refresh or a new policy moves the token's deadlines.
                let key = self.expiry_key();
                if key != at.key {
                    at.key = key;
                    at.expiry = self.expiry_deadline();
                    at.warning = self.warning_deadline();
                }
                let next = at.next(self.warned_for_exp);
                if timer.deadline() != next {
                    timer.as_mut().reset(next);
                }
                continue;
            }
            break flow;
        };
        if let Some(h) = pending.take() {
            h.abort();
        }
        match flow {
            Flow::Close(code, reason) => {
                self.io.outbox.close(code, &reason);
                let up_code = if (4000..5000).contains(&code) || code == close::GOING_AWAY { code } else { close::GOING_AWAY };
                self.close_upstream(up_code, reason);
                code
            }
            Flow::End(code) => code,
            Flow::Continue => close::NORMAL,
        }
    }

    fn on_io(&mut self, ev: IoEvent, pending: &mut Option<Refresh>) -> Flow {
        match ev {
            IoEvent::Client(Inbound::Message { binary, data }) => self.on_message(binary, data, pending),
            // Judged and queued in `Io` already: the loop's turn serves commands and timers.
            IoEvent::Relayed => Flow::Continue,
            IoEvent::Client(Inbound::TooBig) => close_with(close::TOO_BIG, "message too big"),
            IoEvent::Client(Inbound::Invalid) => close_with(close::PROTOCOL_ERROR, "protocol error"),
            IoEvent::Client(Inbound::InvalidUtf8) => close_with(close::INVALID_DATA, "invalid UTF-8"),
            IoEvent::Client(Inbound::SlowConsumer) => close_with(close::SLOW_CONSUMER, "slow consumer"),
            IoEvent::Client(Inbound::PingFlood) => close_with(close::RATE_LIMITED, "ping rate limit"),
            // The close was answered already; pass it upstream.
            IoEvent::Client(Inbound::Close(code, reason)) => {
                self.close_upstream(code, reason);
                Flow::End(code)
            }
            IoEvent::ClientGone => {
                self.close_upstream(close::GOING_AWAY, "client gone".into());
                Flow::End(close::NORMAL)
            }
            // An upstream close goes to the client with its code.
            IoEvent::Upstream(Inbound::Close(code, reason)) => Flow::Close(pass_through(code), reason),
            IoEvent::Upstream(_) | IoEvent::UpstreamFailed => close_with(close::INTERNAL, "upstream failure"),
        }
    }

    fn push(&mut self, binary: bool, data: Bytes) -> Flow {
        match self.io.outbox.data(binary, data) {
            Ok(()) => Flow::Continue,
            Err(SlowConsumer) => close_with(close::SLOW_CONSUMER, "slow consumer"),
        }
    }

    /// Queues the session's close for the upstream (written at the end, within the
    /// close linger).
    fn close_upstream(&mut self, code: u16, reason: String) {
        let code = if code == close::NO_STATUS || code == 1006 { close::NORMAL } else { code };
        self.io.send_upstream(Out::Close { code, reason });
    }

    /// The session's expiry: the token's `exp`, or earlier when the policy requires a
    /// fresh token every `auth.refresh.interval_seconds`.
    fn effective_exp(&self) -> u64 {
        match self.policy.refresh_interval_seconds {
            Some(i) => self.acc.claims.exp.min(self.authenticated_at.saturating_add(i)),
            None => self.acc.claims.exp,
        }
    }

    fn expiry_deadline(&self) -> tokio::time::Instant {
        self.instant_at_unix(self.effective_exp().saturating_add(self.policy.refresh_grace_seconds))
    }

    fn warning_deadline(&self) -> tokio::time::Instant {
        self.instant_at_unix(self.effective_exp().saturating_sub(self.policy.refresh_warning_seconds))
    }

    /// Drain closes are spread over the first 80% of this drain's deadline (the Drain
    /// RPC's, or the configured one) so that clients do not all reconnect at the same
    /// instant.
    fn drain_delay(&self) -> Duration {
        let deadline = (*self.state.drain_tx.borrow()).unwrap_or_else(|| self.state.config.drain_deadline());
        let window = deadline.mul_f64(0.8);
        let frac: f64 = rand::random();
        window.mul_f64(frac)
    }

    fn on_policy_change(&mut self) -> Flow {
        let Some(p) = self.state.policy.load() else { return Flow::Continue };
        if Arc::ptr_eq(&p, &self.policy) {
            return Flow::Continue;
        }
        let c = &self.acc.claims;
        if p.verifier.revocations.is_revoked(&c.sub, c.jti.as_deref(), c.iat) {
            return close_with(close::REVOKED, "revoked");
        }
        // The route's access rule as the new policy has it (step 10a again).
        if p.access.check(&self.acc.route.path, &c.claims_b64).is_err() {
            return close_with(close::REVOKED, "forbidden");
        }
        self.limits.update(&p);
        self.policy = p;
        Flow::Continue
    }
}

/// Close codes that may not be sent on the wire (1005, 1006, 1015) become 1011.
fn pass_through(code: u16) -> u16 {
    match code {
        // An empty close frame is a normal closure.
        close::NO_STATUS => close::NORMAL,
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => close::INTERNAL,
    }
}

mod messages;
mod timers;

#[cfg(test)]
mod tests {
    #[test]
    fn upstream_close_codes_reach_the_client_as_the_spec_says() {
        assert_eq!(super::pass_through(super::close::NO_STATUS), super::close::NORMAL, "an empty close is a normal closure");
        assert_eq!(super::pass_through(4003), 4003);
        assert_eq!(super::pass_through(1006), super::close::INTERNAL);
        assert_eq!(super::pass_through(1015), super::close::INTERNAL);
    }
}
