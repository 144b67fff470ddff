//! The session's deadlines on one timer: the heartbeat, the idle check, the token's
//! expiry warning and expiry, and the drain close. One timer entry per session instead of
//! five: less memory per idle session and one timer registration per handshake.

use tokio::time::Instant;

use super::*;

pub(in crate::session) struct Deadlines {
    ping: Instant,
    /// When the idle check is next due (it looks at the client's last frame then).
    idle: Instant,
    pub(super) expiry: Instant,
    pub(super) warning: Instant,
    /// What `expiry` and `warning` were computed from: the effective expiry, the grace
    /// and the warning lead.
    pub(super) key: (u64, u64, u64),
    pub(super) drain: Option<Instant>,
}

impl Deadlines {
    /// The earliest deadline; the warning counts until it was sent for this expiry.
    pub(super) fn next(&self, warned_for_exp: Option<u64>) -> Instant {
        let mut next = self.ping.min(self.idle).min(self.expiry);
        if warned_for_exp != Some(self.key.0) {
            next = next.min(self.warning);
        }
        if let Some(d) = self.drain {
            next = next.min(d);
        }
        next
    }
}

impl Session {
    pub(super) fn expiry_key(&self) -> (u64, u64, u64) {
        (self.effective_exp(), self.policy.refresh_grace_seconds, self.policy.refresh_warning_seconds)
    }

    pub(super) fn deadlines(&self, draining: bool) -> Deadlines {
        let now = Instant::now();
        Deadlines {
            ping: now + self.policy.limits.ping_interval,
            idle: now + self.policy.limits.idle_timeout,
            expiry: self.expiry_deadline(),
            warning: self.warning_deadline(),
            key: self.expiry_key(),
            drain: draining.then(|| now + self.drain_delay()),
        }
    }

    /// Whatever is due: in the order drain, heartbeat, idle, warning, expiry.
    pub(super) fn on_timer(&mut self, at: &mut Deadlines) -> Flow {
        let now = Instant::now();
        if at.drain.is_some_and(|d| now >= d) {
            return close_with(close::GOING_AWAY, "node draining");
        }
        if now >= at.ping {
            self.io.outbox.ping();
            at.ping = now + self.policy.limits.ping_interval;
        }
        if now >= at.idle {
            let idle = self.policy.limits.idle_timeout;
            let seen = self.io.last_seen;
            if seen.elapsed() >= idle {
                return close_with(close::IDLE, "idle timeout");
            }
            at.idle = Instant::from_std(seen + idle);
        }
        let exp = self.effective_exp();
        if now >= at.warning && self.warned_for_exp != Some(exp) {
            self.warned_for_exp = Some(exp);
            if let Flow::Close(code, reason) = self.push(false, Bytes::from(control_msg::auth_expiring(exp))) {
                return Flow::Close(code, reason);
            }
        }
        if now >= at.expiry {
            if unix_now() >= exp.saturating_add(self.policy.refresh_grace_seconds) {
                return close_with(close::TOKEN_EXPIRED, "token expired");
            }
            // The deadline is in whole seconds of the wall clock: not due yet means within
            // the second, so look again shortly rather than at once.
            at.expiry = self.expiry_deadline().max(now + Duration::from_millis(100));
        }
        Flow::Continue
    }
}
