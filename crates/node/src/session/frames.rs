//! Frames from the client, RFC 6455 section 5, read by a decoder of our own: the
//! conformance rules a server must enforce (masked client frames, no reserved bits, known
//! opcodes, control frames unfragmented and at most 125 bytes, valid close frames) are
//! checked here before anything else looks at a frame, and the read buffer is released
//! whenever a frame has been consumed, so an idle session holds no read buffer.
//!
//! Fragmented messages are reassembled by [`Assembler`] up to the message limit, with
//! UTF-8 checked fragment by fragment (text fails fast). The upstream side (a client
//! connection of ours) reads with fastwebsockets and shares the assembler.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use super::close;

/// What a reader tells the session loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Message {
        binary: bool,
        data: Bytes,
    },
    /// The peer's close frame (its code; 1005 when it sent none).
    Close(u16, String),
    TooBig,
    /// A protocol error (1002).
    Invalid,
    /// A text message that is not UTF-8 (1007).
    InvalidUtf8,
    /// The client's Pongs no longer fit in its outgoing buffer (4013).
    SlowConsumer,
    /// The client sends Pings faster than its ping rate allows (4029).
    PingFlood,
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame header as the server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    pub len: usize,
    /// Bytes of the header itself (2 to 14).
    pub header_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fails the connection with 1002; the text is for the log only.
    Protocol(&'static str),
    /// A data frame over the message limit (1009).
    TooBig,
}

/// Parses a client frame header from the start of `buf`; `Ok(None)` until enough bytes
/// are there. `max_payload` bounds data frames (control frames are bounded by 125).
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    parse_header_from(buf, max_payload, true)
}

/// [`parse_header`] for frames from a client (`masked`: RFC 6455 section 5.1, the server
/// MUST close the connection on an unmasked frame) or from a server (the upstream: its
/// frames MUST NOT be masked).
pub fn parse_header_from(buf: &[u8], max_payload: usize, masked: bool) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(FrameError::Protocol("unknown opcode"));
    }
    match (masked, b1 & 0x80 != 0) {
        (true, false) => return Err(FrameError::Protocol("unmasked client frame")),
        (false, true) => return Err(FrameError::Protocol("masked server frame")),
        _ => {}
    }
    let control = opcode >= OP_CLOSE;
    let (len, off) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with the high bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if control && !fin {
        return Err(FrameError::Protocol("fragmented control frame"));
    }
    if control && len > 125 {
        return Err(FrameError::Protocol("control frame over 125 bytes"));
    }
    if !control && len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    if !masked {
        return Ok(Some(Header { fin, opcode, mask: [0; 4], len: len as usize, header_len: off }));
    }
    let Some(m) = buf.get(off..off + 4) else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: [m[0], m[1], m[2], m[3]], len: len as usize, header_len: off + 4 }))
}

/// The header of a frame of `payload` bytes in its shortest form (RFC 6455 section
/// 5.2), with the masking key when `masked`.
pub fn header_len(payload: usize, masked: bool) -> usize {
    let base = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// XORs `buf` with the masking key (RFC 6455 section 5.3), eight bytes at a time.
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let (chunks, rest) = buf.as_chunks_mut::<8>();
    for c in chunks {
        *c = (u64::from_ne_bytes(*c) ^ wide).to_ne_bytes();
    }
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// One frame, unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// Close codes a peer may send (RFC 6455 section 7.4, IANA registry).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's payload: `(code, reason)`, 1005 for an empty one. A one-byte payload or
/// a forbidden code is a protocol error; a reason that is not UTF-8 is 1007.
pub fn parse_close(p: &[u8]) -> Result<(u16, String), Inbound> {
    match p {
        [] => Ok((close::NO_STATUS, String::new())),
        [_] => Err(Inbound::Invalid),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !close_code_allowed(code) {
                return Err(Inbound::Invalid);
            }
            match std::str::from_utf8(reason) {
                Ok(r) => Ok((code, r.to_owned())),
                Err(_) => Err(Inbound::InvalidUtf8),
            }
        }
    }
}

/// Decodes frames from a byte stream it does not own (the session reads and writes its
/// sockets from one task). Between frames it holds no buffer: a read with an empty buffer
/// goes to a stack buffer first.
pub struct Decoder {
    buf: BytesMut,
    /// Client frames (masked) or server frames (the upstream's, unmasked).
    masked: bool,
    /// Payloads may share a small read buffer ([`SHARED_READ_MAX`]) instead of being
    /// copied: set for frames bound for the upstream, whose queue is bounded in count
    /// ([`super::io::UPSTREAM_QUEUE`]), and for the upstream's frames, which the client's
    /// outbox copies if they have to wait (`Outbox::poll_drain`); not for client frames
    /// on echo routes.
    share: bool,
    /// The read buffer grew past [`SHARED_READ_MAX`] since it was last empty: its frames
    /// are copied.
    big: bool,
    /// Bytes the frame being read needs in all, once its header is known.
    need: usize,
}

const STACK_READ: usize = 2048;
/// Bytes read into the buffer at most at once.
const MAX_READ: usize = 64 * 1024;

/// The largest read buffer that frames may share (a queued frame keeps at most this
/// much alive beyond its own bytes).
pub const SHARED_READ_MAX: usize = 4096;

/// Bytes of client frames read and dropped after the node failed the connection.
pub const DISCARD_BUDGET: usize = 64 * 1024;

impl Decoder {
    /// For frames from a client.
    pub fn client() -> Self {
        Decoder { buf: BytesMut::new(), masked: true, share: false, big: false, need: 2 }
    }

    /// For client frames that all go to the upstream: payloads of one small read share
    /// its buffer.
    pub fn client_to_upstream() -> Self {
        Decoder { share: true, ..Decoder::client() }
    }

    /// For frames from a server (the upstream); payloads of one small read share its
    /// buffer.
    pub fn server() -> Self {
        Decoder { buf: BytesMut::new(), masked: false, share: true, big: false, need: 2 }
    }

    /// Bytes held by the read buffer.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// A complete frame from what was read already, without reading.
    pub fn try_frame(&mut self, max_payload: usize) -> Result<Option<Frame>, FrameError> {
        let Some(h) = parse_header_from(&self.buf, max_payload, self.masked)? else {
            self.need = 2;
            return Ok(None);
        };
        let total = h.header_len + h.len;
        if self.buf.len() < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 2;
        // A payload that owns its buffer is handed on as is; one that shares a read with
        // other frames (or sits in a much larger buffer) is copied, so that a queued
        // message never keeps more memory alive than the bytes it is accounted for. With
        // `share` (see the field) payloads are views of a small read buffer instead.
        let payload = if total == self.buf.len() && self.buf.capacity() <= 2 * total + 64 {
            // The whole buffer: taken as it is (a split would first make it shared).
            let mut frame = std::mem::take(&mut self.buf);
            self.big = false;
            frame.advance(h.header_len);
            if self.masked {
                unmask(&mut frame, h.mask);
            }
            frame.freeze()
        } else if self.share && !self.big {
            // A view of the read buffer, which the frames of this read share.
            let mut frame = self.buf.split_to(total);
            frame.advance(h.header_len);
            if self.masked {
                unmask(&mut frame, h.mask);
            }
            frame.freeze()
        } else {
            let mut own = BytesMut::from(&self.buf[h.header_len..total]);
            if self.masked {
                unmask(&mut own, h.mask);
            }
            self.buf.advance(total);
            own.freeze()
        };
        if self.buf.is_empty() {
            // Give the buffer back between frames.
            self.buf = BytesMut::new();
            self.big = false;
        }
        Ok(Some(Frame { fin: h.fin, opcode: h.opcode, payload }))
    }

    /// Reads more bytes from `rd` (once); `Ok(false)` at EOF.
    pub fn poll_fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let want = self.need;
        if self.buf.capacity() - self.buf.len() > 0 || want > STACK_READ {
            self.buf.reserve(want.saturating_sub(self.buf.len()).max(64));
            // Read into the spare room, zeroed first (at most one read's worth).
            let before = self.buf.len();
            let room = (self.buf.capacity() - before).min(MAX_READ);
            self.buf.resize(before + room, 0);
            let mut rb = ReadBuf::new(&mut self.buf[before..]);
            let polled = Pin::new(rd).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            self.buf.truncate(before + n);
            self.big |= self.buf.capacity() > SHARED_READ_MAX;
            ready!(polled)?;
            return Poll::Ready(Ok(n > 0));
        }
        let mut tmp = [0u8; STACK_READ];
        let mut rb = ReadBuf::new(&mut tmp);
        ready!(Pin::new(rd).poll_read(cx, &mut rb))?;
        self.buf.extend_from_slice(rb.filled());
        self.big |= self.buf.capacity() > SHARED_READ_MAX;
        Poll::Ready(Ok(!rb.filled().is_empty()))
    }

    /// The next frame read from `rd`; `Ok(None)` at a clean EOF between frames. (The
    /// session reads with [`Decoder::try_frame`] and [`Decoder::poll_fill`] directly.)
    #[cfg(test)]
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        cx: &mut Context<'_>,
        max_payload: &impl Fn() -> usize,
    ) -> Poll<Result<Option<Frame>, ReadError>> {
        loop {
            if let Some(f) = self.try_frame(max_payload()).map_err(ReadError::Frame)? {
                return Poll::Ready(Ok(Some(f)));
            }
            if !ready!(self.poll_fill(rd, cx)).map_err(|_| ReadError::Io)? {
                return Poll::Ready(if self.buf.is_empty() { Ok(None) } else { Err(ReadError::Io) });
            }
        }
    }
}

/// A [`Decoder`] of client frames that owns its stream (tests).
#[cfg(test)]
pub struct FrameReader<R> {
    rd: R,
    pub(super) dec: Decoder,
}

#[cfg(test)]
impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R) -> Self {
        FrameReader { rd, dec: Decoder::client() }
    }

    /// The next frame. `Ok(None)` at a clean EOF between frames.
    pub async fn next(&mut self, max_payload: impl Fn() -> usize) -> Result<Option<Frame>, ReadError> {
        std::future::poll_fn(|cx| self.dec.poll_frame(&mut self.rd, cx, &max_payload)).await
    }
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Frame(FrameError),
    Io,
}

mod assembler;
mod run;
pub use assembler::Assembler;
pub use run::Run;

#[cfg(test)]
mod tests;
