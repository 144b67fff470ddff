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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::session::frames::{OP_PING, OP_PONG, parse_header_from, unmask};
    use crate::session::io::Upstream;
    use crate::session::limits::Limits;
    use crate::session::outbox::Outbox;

    const CLIENT_KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&CLIENT_KEY);
        let mut p = payload.to_vec();
        unmask(&mut p, CLIENT_KEY);
        f.extend(p);
        f
    }

    /// The sockets of a bridged session with nothing but this module's judge in between:
    /// a burst is relayed as runs, the Ping in it takes the slow path.
    #[tokio::test]
    async fn a_burst_goes_to_the_upstream_as_runs_around_the_frame_for_the_slow_path() {
        let config = crate::config::NodeConfig::from_toml(
            "[listen]\nwss = \"127.0.0.1:0\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[routes]]\npath = \"/app\"\nupstream = \"ws://127.0.0.1:9/\"\n",
        )
        .expect("config");
        let state = crate::state::NodeState::new(config).expect("state");
        let policy = palisade_policy::Policy::from_yaml_or_json(
            "origins: { allow: [\"https://app.example.com\"] }\nauth:\n  keys:\n    - { kid: k1, alg: HS256, secret_base64: \"cGFsaXNhZGUtZnV6ei1zZWNyZXQtMDEyMzQ1Njc4OWFi\" }\n",
        )
        .expect("policy")
        .compile(1)
        .expect("compiles");
        let outbox = Outbox::new(state, Arc::new(crate::registry::ConnCounters::default()), Arc::new(Limits::new(&policy)), "alice");
        let (client, mut client_peer) = tokio::io::duplex(1 << 16);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
        let mut io = Io::new(client, outbox, policy.limits.messages.rate.burst, Some(Box::new(Upstream::new(upstream))));
        io.relay = RelayRules { allow_binary: true, schema: false };
        let burst = [client_frame(0x1, b"a"), client_frame(0x2, b"b"), client_frame(OP_PING, b"p"), client_frame(0x1, b"c")].concat();
        client_peer.write_all(&burst).await.expect("write");

        let mut events = Vec::new();
        while let Poll::Ready(ev) = std::future::poll_fn(|cx| Poll::Ready(io.poll_event(cx))).await {
            events.push(ev);
        }
        assert_eq!(events, [IoEvent::Relayed, IoEvent::Relayed], "a and b, then c after the Ping");

        let mut wire = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(1), upstream_peer.read(&mut wire)).await.expect("in time").expect("read");
        let mut at = &wire[..n];
        let mut got = Vec::new();
        while let Ok(Some(h)) = parse_header_from(at, 125, true) {
            let mut p = at[h.header_len..h.header_len + h.len].to_vec();
            unmask(&mut p, h.mask);
            assert_ne!(h.mask, CLIENT_KEY, "masked again with the node's own key");
            got.push((h.opcode, p));
            at = &at[h.header_len + h.len..];
        }
        assert_eq!(got, [(0x1, b"a".to_vec()), (0x2, b"b".to_vec()), (0x1, b"c".to_vec())]);
        let mut reply = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), client_peer.read(&mut reply)).await.expect("in time").expect("read");
        let pong = parse_header_from(&reply[..n], 125, false).expect("valid").expect("complete");
        assert_eq!((pong.opcode, &reply[pong.header_len..n]), (OP_PONG, &b"p"[..]), "the Ping answered by the node");
    }
}
