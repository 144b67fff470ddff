//! Everything queued for a client or an upstream, and how it is written. Every frame
//! queued for the client counts toward `max_buffered_bytes` by its wire size plus its
//! queue entry ([`ENTRY_OVERHEAD`]), control frames (Pong, Close) included, so a client
//! that never reads (or is sent a flood of empty frames) cannot grow the node's
//! memory: over the limit it is closed with 4013. The queue itself is unbounded only in
//! count; its bytes are bounded by that accounting. The upstream's queue is bounded in
//! count: while it is full the session reads nothing more from the client.
//!
//! Both are drained by the session's own task ([`Wire::poll_drain`]): frames are encoded
//! in batches into one buffer, written and flushed, and the buffer is given back once
//! written, so an idle session holds no write buffer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use rand::Rng as _;
use tokio::io::AsyncWrite;

use super::Limits;
use super::close;
use crate::registry::ConnCounters;
use crate::state::NodeState;

/// Frames waiting to be written to one peer, and the batch being written.
pub(super) struct Wire {
    queue: VecDeque<Out>,
    buf: Vec<u8>,
    written: usize,
    /// The accounted cost of the frames in `buf`, released once they are written.
    in_flight: u64,
    needs_flush: bool,
    /// Frames from a client role are masked (the upstream side).
    masked: bool,
    /// A close frame was encoded: nothing after it is written.
    closed: bool,
    /// The close frame was written and flushed, or the socket failed: nothing more will
    /// be written.
    pub(super) done: bool,
}

impl Wire {
    pub(super) fn new(masked: bool) -> Wire {
        Wire { queue: VecDeque::new(), buf: Vec::new(), written: 0, in_flight: 0, needs_flush: false, masked, closed: false, done: false }
    }

    /// What is queued and not yet encoded.
    pub(super) fn queued(&self) -> impl Iterator<Item = &Out> {
        self.queue.iter()
    }

    /// Frames encoded and not yet written.
    pub(super) fn unwritten(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether a frame is queued or being written.
    pub(super) fn busy(&self) -> bool {
        !self.done && (!self.queue.is_empty() || self.written < self.buf.len() || self.needs_flush)
    }

    /// Gives the last `n` queued data frames allocations of their own.
    fn own_last(&mut self, n: usize) {
        let from = self.queue.len().saturating_sub(n);
        for item in self.queue.range_mut(from..) {
            if let Out::Data { data, .. } | Out::Frames(data) = item {
                *data = Bytes::copy_from_slice(data);
            }
        }
    }

    pub(super) fn push(&mut self, o: Out) -> Result<(), Out> {
        if self.done || self.closed {
            return Err(o);
        }
        self.queue.push_back(o);
        Ok(())
    }

    /// Writes what is queued to `w`: `Ready(Ok)` once all of it is written and flushed.
    /// `release` is given the accounted cost of frames once they are written or dropped;
    /// `skip` says which frames are dropped unwritten.
    pub(super) fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
        mut release: impl FnMut(u64),
        skip: impl Fn(&Out) -> bool,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.written == self.buf.len() {
                self.buf.clear();
                self.written = 0;
                if self.in_flight > 0 {
                    release(std::mem::take(&mut self.in_flight));
                }
                // One allocation for the batch rather than a chain of regrowths.
                let mut want = 0;
                for item in &self.queue {
                    if want >= BATCH_BYTES {
                        break;
                    }
                    want += item.cost() as usize + 4 * usize::from(self.masked);
                }
                self.buf.reserve(want);
                // The masking key of a client frame must be unpredictable (RFC 6455
                // section 10.3): each one from the thread's CSPRNG, taken once per batch.
                let mut rng = self.masked.then(rand::rng);
                while !self.closed
                    && self.buf.len() < BATCH_BYTES
                    && let Some(item) = self.queue.pop_front()
                {
                    if skip(&item) {
                        release(item.accounted());
                    } else {
                        let mask = rng.as_mut().map(|r| r.random::<[u8; 4]>());
                        self.closed = encode_out(&mut self.buf, &item, mask);
                        self.in_flight += item.accounted();
                    }
                }
                if self.buf.is_empty() {
                    break;
                }
            }
            while self.written < self.buf.len() {
                let n = match Pin::new(&mut *w).poll_write(cx, &self.buf[self.written..]) {
                    Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(r) => r,
                    Poll::Pending => return Poll::Pending,
                };
                match n {
                    Ok(n) => {
                        self.written += n;
                        self.needs_flush = true;
                    }
                    Err(e) => return Poll::Ready(Err(self.fail(e, &mut release))),
                }
            }
        }
        if self.needs_flush {
            if let Err(e) = ready!(Pin::new(&mut *w).poll_flush(cx)) {
                return Poll::Ready(Err(self.fail(e, &mut release)));
            }
            self.needs_flush = false;
        }
        // Written: give the buffer back (an idle session holds none).
        self.buf = Vec::new();
        self.written = 0;
        if self.closed {
            self.finish(&mut release);
        }
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, e: io::Error, release: &mut impl FnMut(u64)) -> io::Error {
        self.buf = Vec::new();
        self.written = 0;
        self.needs_flush = false;
        self.finish(release);
        e
    }

    /// Nothing more is written: what remains is dropped, its accounting released.
    fn finish(&mut self, release: &mut impl FnMut(u64)) {
        self.done = true;
        self.closed = true;
        let rest = std::mem::take(&mut self.in_flight) + self.queue.drain(..).map(|o| o.accounted()).sum::<u64>();
        if rest > 0 {
            release(rest);
        }
    }
}

/// The client's outgoing queue with its byte accounting.
pub struct Outbox {
    pub(super) wire: Wire,
    pub(super) counters: Arc<ConnCounters>,
    node: Arc<NodeState>,
    pub(super) limits: Arc<Limits>,
    /// Set on a 4013 close: queued data is skipped, the close frame goes next.
    discard: bool,
    /// Data frames queued since the queue last owned its payloads: those at its tail may
    /// be views of an upstream read buffer ([`super::frames::SHARED_READ_MAX`]), and are
    /// copied if they have to wait for the client ([`Outbox::poll_drain`]).
    unowned: u32,
    subject: Arc<str>,
    /// Messages and bytes queued since the last write, not yet in the node's counters
    /// and the subject's egress: added once per write, not once per message (the node's
    /// counters are shared by every data thread).
    unflushed: (u64, u64),
    /// Messages and bytes received from the client, not yet in the node's counters (a
    /// read's worth at most: they are added before each write).
    unflushed_in: (u32, u32),
}

#[derive(Debug)]
pub struct SlowConsumer;

impl Outbox {
    pub(super) fn new(node: Arc<NodeState>, counters: Arc<ConnCounters>, limits: Arc<Limits>, subject: &str) -> Outbox {
        Outbox {
            wire: Wire::new(false),
            counters,
            node,
            limits,
            discard: false,
            unowned: 0,
            subject: Arc::from(subject),
            unflushed: (0, 0),
            unflushed_in: (0, 0),
        }
    }

    /// Accounts `o` and queues it; over `max_buffered_bytes` it is refused (unless
    /// `force`: the node's own Close).
    fn queue(&mut self, o: Out, force: bool) -> Result<(), SlowConsumer> {
        let n = o.accounted();
        let before = self.counters.buffered.load(Ordering::Relaxed);
        if !force && before + n > self.limits.max_buffered_bytes() {
            return Err(SlowConsumer);
        }
        if self.wire.push(o).is_ok() {
            // Only this task changes them; others read them (`connections`).
            self.counters.buffered.store(before + n, Ordering::Relaxed);
            if before + n > self.counters.buffered_peak.load(Ordering::Relaxed) {
                self.counters.buffered_peak.store(before + n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Queues an application message. Over `max_buffered_bytes` it is refused.
    pub fn data(&mut self, binary: bool, data: Bytes) -> Result<(), SlowConsumer> {
        let n = data.len() as u64;
        self.queue_messages(Out::Data { binary, data }, 1, n)
    }

    /// Queues a relayed run of the upstream's messages, accounted by wire size like them.
    pub fn frames(&mut self, run: super::frames::Run) -> Result<(), SlowConsumer> {
        self.queue_messages(Out::Frames(run.frames), u64::from(run.messages), run.payload_bytes)
    }

    fn queue_messages(&mut self, o: Out, messages: u64, bytes: u64) -> Result<(), SlowConsumer> {
        self.queue(o, false)?;
        self.unowned = self.unowned.saturating_add(1);
        self.unflushed.0 += messages;
        self.unflushed.1 += bytes;
        Ok(())
    }

    /// Counts messages received from the client toward the session's and the node's
    /// counters (at the next [`Outbox::flush_accounting`]: the session polls its writes
    /// after every read).
    pub(super) fn received(&mut self, messages: u32, bytes: usize) {
        if self.unflushed_in.1 as usize + bytes > u32::MAX as usize || self.unflushed_in.0.checked_add(messages).is_none() {
            self.flush_accounting();
        }
        self.unflushed_in.0 += messages;
        self.unflushed_in.1 += bytes as u32;
    }

    /// The session's and the node's counters and the subject's egress, for what was
    /// received and queued since the last call (before each write, and when the session
    /// ends): once per read or write, not once per message.
    pub(super) fn flush_accounting(&mut self) {
        let (messages, bytes) = std::mem::take(&mut self.unflushed_in);
        if messages > 0 {
            let (messages, bytes) = (u64::from(messages), u64::from(bytes));
            self.counters.messages_in.fetch_add(messages, Ordering::Relaxed);
            self.counters.bytes_in.fetch_add(bytes, Ordering::Relaxed);
            self.node.counters.messages_in.fetch_add(messages, Ordering::Relaxed);
            self.node.counters.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
        let (messages, bytes) = std::mem::take(&mut self.unflushed);
        if messages == 0 {
            return;
        }
        self.counters.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        self.node.counters.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.node.counters.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        egress::account(&self.node, &self.subject, bytes);
    }

    /// The answer to a client Ping.
    pub fn pong(&mut self, payload: Bytes) -> Result<(), SlowConsumer> {
        self.queue(Out::Pong(payload), false)
    }

    /// The node's heartbeat; skipped while the client is not reading anyway.
    pub fn ping(&mut self) {
        let _ = self.queue(Out::Ping, false);
    }

    /// The node's close frame: always queued (it is the last thing written).
    pub fn close(&mut self, code: u16, reason: &str) {
        if code == close::SLOW_CONSUMER {
            self.discard = true;
        }
        let _ = self.queue(Out::Close { code, reason: reason.to_owned() }, true);
    }

    /// Writes what is queued to the client, releasing the accounting of what leaves the
    /// queue.
    pub(super) fn poll_drain<W: AsyncWrite + Unpin>(&mut self, w: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_accounting();
        let counters = &self.counters;
        let discard = self.discard;
        let polled = self.wire.poll_drain(
            w,
            cx,
            |n| {
                counters.buffered.fetch_sub(n, Ordering::Relaxed);
            },
            |item| discard && matches!(item, Out::Data { .. } | Out::Frames(_) | Out::Pong(_)),
        );
        // What waits for a slow client owns its bytes, so that a queued message never
        // keeps more memory alive than it is accounted for; each payload is copied at
        // most once, and only when the client does not take it at once.
        if polled.is_pending() && self.unowned > 0 {
            self.wire.own_last(self.unowned as usize);
        }
        self.unowned = 0;
        polled
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.flush_accounting();
    }
}

mod egress;
mod encode;
use encode::encode_out;
pub use encode::{ENTRY_OVERHEAD, Out};

/// Whether a server message of `payload` bytes can ever be queued for a client whose
/// outgoing buffer holds `max_buffered_bytes`: its frame and its queue entry.
pub fn fits_client_buffer(payload: usize, max_buffered_bytes: u64) -> bool {
    (payload + super::frames::header_len(payload, false)) as u64 + ENTRY_OVERHEAD <= max_buffered_bytes
}

/// Frames encoded per batch at most (one write and one flush per batch).
const BATCH_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests;
