//! The session's sockets, driven from the session's own task: one poll reads and decodes
//! client frames (answering Pings, checking closes), writes what is queued for the
//! client, and on upstream routes does the same with the upstream (frames of a client
//! role: masked out, unmasked in). What needs the session's rules comes out as an
//! [`IoEvent`]; everything else (Pongs, close replies) is handled here. On bridged
//! routes the whole messages of a small read go on as one run ([`relay`]).
//!
//! Frames already read are served before any socket is polled, and writes are flushed
//! before the next read: a burst of client messages is answered in one write. While the
//! upstream's queue is full nothing more is read from the client (backpressure); when it
//! stays full for [`UPSTREAM_SEND_TIMEOUT`] the session fails.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::close;
use super::frames::{self, Assembler, DISCARD_BUDGET, Decoder, Frame, FrameError, Inbound, parse_close};
use super::limits::TokenBucket;
use super::outbox::{Out, Outbox, Wire};

/// Entries (frames, or relayed runs of one small read) queued for the upstream before
/// the client is read no more.
pub(super) const UPSTREAM_QUEUE: usize = 64;
/// How long the upstream's queue may stay full before the session fails (1011).
pub(super) const UPSTREAM_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session loop is told.
#[derive(Debug, PartialEq, Eq)]
pub enum IoEvent {
    Client(Inbound),
    /// The client's stream ended or failed without a close frame.
    ClientGone,
    /// What ends the upstream's side; never a message (those are queued for the client
    /// here, in [`Io`]).
    Upstream(Inbound),
    /// The upstream's stream ended or failed, or it took nothing for
    /// [`UPSTREAM_SEND_TIMEOUT`].
    UpstreamFailed,
    /// A run of whole client messages was judged and queued for the upstream ([`relay`]).
    Relayed,
}

/// How far the client's side is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    Open,
    /// A terminal event was reported: the rest is read only to be discarded, up to the
    /// client's close frame.
    Draining,
    /// Its close frame came, its stream ended, or it sent something unreadable.
    Done,
}

pub(super) struct Upstream<U> {
    stream: U,
    dec: Decoder,
    pub(super) wire: Wire,
    assembler: Assembler,
    /// Set while the queue is full: the deadline of [`UPSTREAM_SEND_TIMEOUT`].
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    failed: bool,
}

impl<U> Upstream<U> {
    pub(super) fn new(stream: U) -> Self {
        Upstream { stream, dec: Decoder::server(), wire: Wire::new(true), assembler: Assembler::default(), stalled: None, failed: false }
    }
}

pub(super) struct Io<C, U> {
    client: C,
    dec: Decoder,
    pub(super) outbox: Outbox,
    assembler: Assembler,
    pings: TokenBucket,
    /// The client's message rate (the session's rules and the relay take from it).
    messages: TokenBucket,
    /// The route's rules for relayed messages.
    pub(super) relay: RelayRules,
    reading: Reading,
    discard_budget: usize,
    /// When the client last sent a frame (the idle timeout).
    pub(super) last_seen: Instant,
    /// When the client's last read returned data, taken at its first frame: the frames
    /// of one read share one clock read.
    read_at: Option<Instant>,
    /// Boxed: most routes have none, and an idle session should not carry its room.
    pub(super) up: Option<Box<Upstream<U>>>,
}

impl<C: AsyncRead + AsyncWrite + Unpin, U: AsyncRead + AsyncWrite + Unpin> Io<C, U> {
    /// The session's limits are the outbox's (one reference per session).
    pub(super) fn new(client: C, outbox: Outbox, burst: u64, up: Option<Box<Upstream<U>>>) -> Self {
        Io {
            client,
            dec: if up.is_some() { Decoder::client_to_upstream() } else { Decoder::client() },
            outbox,
            assembler: Assembler::default(),
            pings: TokenBucket::new(burst),
            messages: TokenBucket::new(burst),
            relay: RelayRules::default(),
            reading: Reading::Open,
            discard_budget: DISCARD_BUDGET,
            last_seen: Instant::now(),
            read_at: None,
            up,
        }
    }

    /// One client message's token, at the time its frame was read.
    pub(super) fn take_message_token(&mut self) -> bool {
        self.messages.take(self.last_seen, self.outbox.limits.rate())
    }

    /// Queues a message for the upstream. `false`: the upstream is gone.
    pub(super) fn send_upstream(&mut self, o: Out) -> bool {
        self.up.as_mut().is_some_and(|u| !u.failed && u.wire.push(o).is_ok())
    }

    fn client_readable(&self) -> bool {
        self.reading == Reading::Open && self.up.as_ref().is_none_or(|u| u.wire.len() < UPSTREAM_QUEUE)
    }

    /// The next event; meanwhile it writes and reads whatever it can.
    pub(super) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        loop {
            // Frames already read first: no socket is polled while one is there.
            while self.client_readable() {
                if let Some(ev) = self.relay_client() {
                    return Poll::Ready(ev);
                }
                match self.dec.try_frame(self.outbox.limits.max_message_bytes()) {
                    Ok(Some(f)) => {
                        if let Some(ev) = self.on_client_frame(f) {
                            return Poll::Ready(self.report(ev));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.reading = Reading::Done;
                        return Poll::Ready(IoEvent::Client(frame_error(e)));
                    }
                }
            }
            if let Some(ev) = self.upstream_buffered() {
                return Poll::Ready(ev);
            }
            // Then what is queued goes out.
            if matches!(self.outbox.poll_drain(&mut self.client, cx), Poll::Ready(Err(_))) {
                self.reading = Reading::Done;
                return Poll::Ready(IoEvent::ClientGone);
            }
            if let Some(u) = &mut self.up
                && !u.failed
                && matches!(u.wire.poll_drain(&mut u.stream, cx, |_| (), |_| false), Poll::Ready(Err(_)))
            {
                u.failed = true;
                return Poll::Ready(IoEvent::UpstreamFailed);
            }
            // Then each socket is read once.
            let mut progress = false;
            if self.client_readable() {
                match self.dec.poll_fill(&mut self.client, cx) {
                    Poll::Ready(Ok(true)) => {
                        self.read_at = None;
                        progress = true;
                    }
                    Poll::Ready(_) => {
                        self.reading = Reading::Done;
                        return Poll::Ready(IoEvent::ClientGone);
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(u) = &mut self.up
                && !u.failed
            {
                match u.dec.poll_fill(&mut u.stream, cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(_) => {
                        u.failed = true;
                        return Poll::Ready(IoEvent::UpstreamFailed);
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                return self.poll_stall(cx);
            }
        }
    }

    /// A terminal client event ends reading (the rest is discarded up to the close).
    fn report(&mut self, ev: Inbound) -> IoEvent {
        if !matches!(ev, Inbound::Message { .. }) && self.reading == Reading::Open {
            self.reading = Reading::Draining;
        }
        IoEvent::Client(ev)
    }

    fn on_client_frame(&mut self, f: Frame) -> Option<Inbound> {
        self.last_seen = *self.read_at.get_or_insert_with(Instant::now);
        match f.opcode {
            frames::OP_PING if !self.pings.take(Instant::now(), self.outbox.limits.rate()) => Some(Inbound::PingFlood),
            frames::OP_PING => self.outbox.pong(Bytes::copy_from_slice(&f.payload)).err().map(|_| Inbound::SlowConsumer),
            frames::OP_PONG => None,
            frames::OP_CLOSE => {
                // After the client's own close frame (valid or not) nothing more comes.
                self.reading = Reading::Done;
                Some(match parse_close(&f.payload) {
                    Ok((code, reason)) => {
                        self.outbox.close(code, "");
                        Inbound::Close(code, reason)
                    }
                    Err(ev) => ev,
                })
            }
            op => match self.assembler.push(f.fin, op, f.payload, self.outbox.limits.max_message_bytes()) {
                Ok(m) => m,
                Err(ev) => Some(ev),
            },
        }
    }

    /// The upstream's frames already read: its Pings and close answered on its queue.
    fn upstream_buffered(&mut self) -> Option<IoEvent> {
        let u = self.up.as_mut().filter(|u| !u.failed)?;
        // A message from the upstream must fit the client's outgoing buffer, frame header
        // (at most 14 bytes) and queue entry included.
        let limit = usize::try_from(self.outbox.limits.max_buffered_bytes().saturating_sub(14 + super::outbox::ENTRY_OVERHEAD))
            .unwrap_or(usize::MAX);
        loop {
            if u.assembler.is_idle()
                && let Some(run) = u.dec.take_run(limit, |binary, p| binary || std::str::from_utf8(p).is_ok(), || [0; 4])
            {
                // Whole messages in one piece, for the client as they are.
                if self.outbox.frames(run).is_err() {
                    return Some(self.report(Inbound::SlowConsumer));
                }
                continue;
            }
            let f = match u.dec.try_frame(limit) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    u.failed = true;
                    return Some(IoEvent::Upstream(frame_error(e)));
                }
            };
            match f.opcode {
                // Answered while its queue has room (an upstream that sends Pings and
                // reads nothing does not grow the queue).
                frames::OP_PING if u.wire.len() < UPSTREAM_QUEUE => {
                    let _ = u.wire.push(Out::Pong(f.payload));
                }
                frames::OP_PING => {}
                frames::OP_PONG => {}
                frames::OP_CLOSE => {
                    u.failed = true;
                    let p = &f.payload[..];
                    let (code, ev) = match p {
                        [] | [_] => (close::NORMAL, Inbound::Close(close::NO_STATUS, String::new())),
                        [a, b, reason @ ..] => {
                            let code = u16::from_be_bytes([*a, *b]);
                            (code, Inbound::Close(code, String::from_utf8_lossy(reason).into_owned()))
                        }
                    };
                    // The close reply; the session's own close to the upstream is not sent.
                    let _ = u.wire.push(Out::Close { code, reason: String::new() });
                    return Some(IoEvent::Upstream(ev));
                }
                op => match u.assembler.push(f.fin, op, f.payload, limit) {
                    Ok(None) => {}
                    // The upstream's messages go to the client as they are: queued here,
                    // without a turn of the session loop each.
                    Ok(Some(Inbound::Message { binary, data })) => {
                        if self.outbox.data(binary, data).is_err() {
                            return Some(self.report(Inbound::SlowConsumer));
                        }
                    }
                    Ok(Some(m)) => return Some(IoEvent::Upstream(m)),
                    Err(ev) => {
                        u.failed = true;
                        return Some(IoEvent::Upstream(ev));
                    }
                },
            }
        }
    }

    /// The upstream's queue full for too long fails the session.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        let Some(u) = &mut self.up else { return Poll::Pending };
        if u.failed || u.wire.len() < UPSTREAM_QUEUE {
            u.stalled = None;
            return Poll::Pending;
        }
        let timer = u.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(UPSTREAM_SEND_TIMEOUT)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                u.failed = true;
                Poll::Ready(IoEvent::UpstreamFailed)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// After the session ended: writes the close frames queued for both sides, and
    /// reads and drops what the client still sends until its close frame (the reply to
    /// the node's), so that unread input does not make the kernel answer the node's
    /// close with a reset. Stops reading at anything it cannot read, and after
    /// [`DISCARD_BUDGET`] bytes (a client still flooding is not served for free). Ready
    /// when all of that is done; the caller bounds it in time.
    pub(super) fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let written = self.outbox.poll_drain(&mut self.client, cx).is_ready();
        let up_written = match &mut self.up {
            Some(u) if !u.failed || u.wire.busy() => u.wire.poll_drain(&mut u.stream, cx, |_| (), |_| false).is_ready(),
            _ => true,
        };
        while self.reading != Reading::Done {
            let max = self.outbox.limits.max_message_bytes().min(self.discard_budget);
            match self.dec.try_frame(max) {
                Ok(Some(f)) if f.opcode != frames::OP_CLOSE && f.payload.len() + 2 <= self.discard_budget => {
                    self.discard_budget -= f.payload.len() + 2;
                    continue;
                }
                Ok(Some(_)) | Err(_) => self.reading = Reading::Done,
                Ok(None) => match self.dec.poll_fill(&mut self.client, cx) {
                    Poll::Ready(Ok(true)) => {}
                    Poll::Ready(_) => self.reading = Reading::Done,
                    Poll::Pending => break,
                },
            }
        }
        if written && up_written && self.reading == Reading::Done { Poll::Ready(()) } else { Poll::Pending }
    }
}

mod relay;
pub(super) use relay::RelayRules;

fn frame_error(e: FrameError) -> Inbound {
    match e {
        FrameError::TooBig => Inbound::TooBig,
        FrameError::Protocol(why) => {
            tracing::debug!(event = "protocol_error", error = why);
            Inbound::Invalid
        }
    }
}
