//! The relay: on a bridged route, the whole client messages at the start of a read go to
//! the upstream as one run ([`crate::session::frames::Run`]), judged here by the rules
//! the session loop applies to each message (`Session::on_message`): within the size
//! limit (the frame's header), a token of the message rate, text that is UTF-8 and no
//! in-band control message, binary only where the route allows it, and no route schema
//! (those routes take the slow path). A message that fails any of them ends the run and
//! is served by the slow path, which applies the rules in their order and answers as it
//! always did; so does every frame that is not a whole message.
//!
//! What a run saves is per message: no payload handle, no queue entry, no encoding, no
//! turn of the session loop (one per run instead).

use std::time::Instant;

use palisade_policy::control_msg;
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Io, IoEvent, Reading};
use crate::session::outbox::Out;

/// The route's rules for relayed messages.
#[derive(Clone, Copy, Default)]
pub(in crate::session) struct RelayRules {
    pub(in crate::session) allow_binary: bool,
    /// The route validates text messages against a schema: no text is relayed.
    pub(in crate::session) schema: bool,
}

impl<C: AsyncRead + AsyncWrite + Unpin, U: AsyncRead + AsyncWrite + Unpin> Io<C, U> {
    /// Queues the run of whole client messages at the start of what was read for the
    /// upstream: `Some(Relayed)` when there was one, `Some(UpstreamFailed)` when the
    /// upstream can take nothing more, `None` when the next frame is for the slow path.
    pub(super) fn relay_client(&mut self) -> Option<IoEvent> {
        let u = self.up.as_mut().filter(|u| !u.failed)?;
        if self.reading != Reading::Open || !self.assembler.is_idle() {
            return None;
        }
        let read_at = *self.read_at.get_or_insert_with(Instant::now);
        let rules = self.relay;
        let (limits, messages) = (&self.outbox.limits, &mut self.messages);
        let rate = limits.rate();
        let mut rng = rand::rng();
        let run = self.dec.take_run(
            limits.max_message_bytes(),
            |binary, p| {
                let allowed = if binary {
                    rules.allow_binary
                } else {
                    !rules.schema && std::str::from_utf8(p).is_ok() && control_msg::parse(p).is_none()
                };
                // The token last: a message the slow path will judge keeps it.
                allowed && messages.take(read_at, rate)
            },
            || rng.random(),
        )?;
        self.last_seen = read_at;
        self.outbox.received(run.messages, run.payload_bytes as usize);
        Some(if u.wire.push(Out::Frames(run.frames)).is_ok() { IoEvent::Relayed } else { IoEvent::UpstreamFailed })
    }
}
