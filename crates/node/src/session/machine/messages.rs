//! Messages from the client: the size, rate, type and schema rules, in-band control
//! messages and refreshes (verified off the loop), and what goes to the upstream.

use bytes::Bytes;
use palisade_policy::control_msg::{self, ControlMessage};
use palisade_policy::{Claims, TokenError};

use super::*;

impl Session {
    pub(super) fn on_message(&mut self, binary: bool, data: Bytes, pending: &mut Option<Refresh>) -> Flow {
        // Counted once per read, not per message (`Outbox::received`).
        self.io.outbox.received(1, data.len());
        if data.len() > self.limits.max_message_bytes() {
            return close_with(close::TOO_BIG, "message too big");
        }
        // Control messages count too: a refresh costs a signature check.
        if !self.io.take_message_token() {
            return close_with(close::RATE_LIMITED, "message rate limit");
        }
        if !binary && let Some(ctl) = control_msg::parse(&data) {
            return self.on_control(ctl, pending);
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
        if self.io.up.is_none() {
            return self.push(binary, data);
        }
        if self.io.send_upstream(Out::Data { binary, data }) { Flow::Continue } else { close_with(close::INTERNAL, "upstream failure") }
    }

    fn on_control(&mut self, ctl: ControlMessage, pending: &mut Option<Refresh>) -> Flow {
        match ctl {
            ControlMessage::Ping => self.push(false, Bytes::from_static(control_msg::pong().as_bytes())),
            ControlMessage::Auth(None) => self.push(false, Bytes::from(control_msg::auth_error("token_invalid"))),
            ControlMessage::Auth(Some(token)) => {
                let policy = self.state.policy.load().unwrap_or_else(|| self.policy.clone());
                let state = self.state.clone();
                if let Some(old) = pending.take() {
                    old.abort();
                }
                *pending = Some(tokio::spawn(async move { crate::jwks::verify(&state.jwks, &policy, &token, unix_now()).await }));
                Flow::Continue
            }
        }
    }

    pub(super) fn on_refresh(&mut self, verified: Result<Claims, TokenError>) -> Flow {
        let reply = match verified {
            // A refresh must satisfy the route's rule too; the session keeps its old expiry.
            Ok(c) if c.sub == self.acc.claims.sub && self.policy.access.check(&self.acc.route.path, &c.claims_b64).is_err() => {
                control_msg::auth_error("forbidden")
            }
            Ok(c) if c.sub == self.acc.claims.sub => {
                if c.jti != self.acc.claims.jti {
                    // `disconnect --session` finds the session by its current token.
                    self.state.registry.set_session(&self.conn_id, c.jti.clone());
                }
                self.acc.claims = c;
                self.authenticated_at = unix_now();
                control_msg::auth_ok(self.effective_exp())
            }
            Ok(_) => control_msg::auth_error("subject_mismatch"),
            Err(e) => control_msg::auth_error(e.code()),
        };
        self.push(false, Bytes::from(reply))
    }
}
