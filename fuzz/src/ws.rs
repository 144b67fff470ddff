//! The `session_frames` target's pieces: its input format, a reader that hands the
//! session its bytes in the chunks the fuzzer chose (sometimes after a `Pending`), and a
//! model of what the session's client reader must report for a byte stream, written from
//! RFC 6455 and the SPEC independently of `session/frames.rs`.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use palisade_node::fuzzing::{ENTRY_OVERHEAD, Inbound, Queued};
use palisade_policy::CompiledPolicy;
use palisade_policy::model::MessagesDoc;
use tokio::io::{AsyncRead, ReadBuf};

/// Message limits the target picks from (`limits.messages.max_bytes`).
pub const LIMITS: [usize; 4] = [16, 125, 1024, 65_536];
/// Ping bursts (`limits.messages.burst`; the rate is so low that none refills).
pub const BURSTS: [u64; 3] = [1, 3, 1_000_000];

/// One input: `[config] [k] [k chunk sizes] [the client's bytes]`. Config bits 0-1 pick
/// the limit, bits 2-3 the burst. A chunk size byte reads `(s & 0x7f) + 1` bytes,
/// after one `Pending` when bit 7 is set; the sizes repeat.
pub struct Input<'a> {
    pub limit: usize,
    pub burst: u64,
    pub sizes: &'a [u8],
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let (&config, rest) = data.split_first()?;
        let (&k, rest) = rest.split_first()?;
        let k = usize::from(k & 0x0f) + 1;
        if rest.len() < k {
            return None;
        }
        let (sizes, stream) = rest.split_at(k);
        Some(Input { limit: LIMITS[usize::from(config & 3)], burst: BURSTS[usize::from((config >> 2) & 3).min(2)], sizes, stream })
    }

    /// The buffered-bytes limit that goes with the message limit (at least 1024).
    pub fn max_buffered(&self) -> usize {
        self.limit.max(1024)
    }
}

/// The fixture policy with these message limits, compiled once per pair.
pub fn policy_for(limit: usize, burst: u64) -> &'static CompiledPolicy {
    static P: OnceLock<Vec<CompiledPolicy>> = OnceLock::new();
    let all = P.get_or_init(|| {
        let base = palisade_policy::Policy::from_yaml_or_json(crate::POLICY_YAML).expect("fixture");
        let mut out = Vec::new();
        for l in LIMITS {
            for b in BURSTS {
                let mut doc = base.clone();
                doc.limits.messages =
                    MessagesDoc { max_bytes: l as u64, per_second: 1e-9, burst: b, max_buffered_bytes: l.max(1024) as u64 };
                out.push(doc.compile(1).expect("fixture limits compile"));
            }
        }
        out
    });
    let li = LIMITS.iter().position(|l| *l == limit).expect("a known limit");
    let bi = BURSTS.iter().position(|b| *b == burst).expect("a known burst");
    &all[li * BURSTS.len() + bi]
}

/// Hands out `data` in the chunks `sizes` describe, then EOF.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
    pended: bool,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], sizes: &'a [u8]) -> Self {
        Chunked { data, sizes, next: 0, pended: false }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let s = self.sizes[self.next % self.sizes.len()];
        if s & 0x80 != 0 && !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pended = false;
        self.next += 1;
        let n = (usize::from(s & 0x7f) + 1).min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

enum Step {
    /// The stream ends inside this frame: the reader stops without a word.
    Eof,
    Fail(Inbound),
    Frame {
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
        len: usize,
    },
}

/// The next client frame at the start of `b` (RFC 6455 section 5.2, checked in the
/// order the header's bytes arrive).
fn frame(b: &[u8], limit: usize) -> Step {
    let [b0, b1, ..] = *b else { return Step::Eof };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    if b0 & 0x70 != 0 || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) || b1 & 0x80 == 0 {
        return Step::Fail(Inbound::Invalid);
    }
    let (len, at) = match b1 & 0x7f {
        126 if b.len() < 4 => return Step::Eof,
        126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() < 10 => return Step::Eof,
        127 => {
            let l = u64::from_be_bytes(b[2..10].try_into().expect("eight bytes"));
            if l > i64::MAX as u64 {
                return Step::Fail(Inbound::Invalid);
            }
            (l, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 8 && (!fin || len > 125) {
        return Step::Fail(Inbound::Invalid);
    }
    if opcode < 8 && len > limit as u64 {
        return Step::Fail(Inbound::TooBig);
    }
    let len = len as usize;
    if b.len() < at + 4 + len {
        return Step::Eof;
    }
    let mask = &b[at..at + 4];
    let payload = b[at + 4..at + 4 + len].iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
    Step::Frame { fin, opcode, payload, len: at + 4 + len }
}

/// UTF-8 so far: valid, or cut inside the last character (not allowed once `fin`).
fn utf8_ok(b: &[u8], fin: bool) -> bool {
    match std::str::from_utf8(b) {
        Ok(_) => true,
        Err(e) => !fin && e.error_len().is_none(),
    }
}

/// What the session's client reader must send to the session loop and queue for the
/// client, for this stream. It stops at the first event that is not a message.
pub fn model(input: &Input<'_>) -> (Vec<Inbound>, Vec<Queued>) {
    let (mut events, mut queued) = (Vec::new(), Vec::new());
    let (mut at, mut pings, mut buffered) = (0usize, 0u64, 0usize);
    let mut partial: Option<(bool, Vec<u8>)> = None;
    loop {
        let (fin, opcode, payload) = match frame(&input.stream[at..], input.limit) {
            Step::Eof => break,
            Step::Fail(ev) => {
                events.push(ev);
                break;
            }
            Step::Frame { fin, opcode, payload, len } => {
                at += len;
                (fin, opcode, payload)
            }
        };
        let ev = match opcode {
            9 if pings >= input.burst => Inbound::PingFlood,
            9 => {
                pings += 1;
                // A Pong costs its wire size (two header bytes and the payload) and its
                // queue entry.
                let cost = payload.len() + 2 + ENTRY_OVERHEAD as usize;
                if buffered + cost > input.max_buffered() {
                    Inbound::SlowConsumer
                } else {
                    buffered += cost;
                    queued.push(Queued::Pong(payload));
                    continue;
                }
            }
            10 => continue,
            8 => match payload.as_slice() {
                [] => {
                    queued.push(Queued::Close(1005, String::new()));
                    Inbound::Close(1005, String::new())
                }
                [_] => Inbound::Invalid,
                [a, b, reason @ ..] => {
                    let code = u16::from_be_bytes([*a, *b]);
                    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                        Inbound::Invalid
                    } else if let Ok(r) = std::str::from_utf8(reason) {
                        queued.push(Queued::Close(code, String::new()));
                        Inbound::Close(code, r.to_owned())
                    } else {
                        Inbound::InvalidUtf8
                    }
                }
            },
            op => {
                let (binary, data) = match (op, partial.take()) {
                    (1 | 2, None) => (op == 2, payload),
                    (0, Some((binary, mut data))) => {
                        if data.len() + payload.len() > input.limit {
                            events.push(Inbound::TooBig);
                            break;
                        }
                        data.extend_from_slice(&payload);
                        (binary, data)
                    }
                    _ => {
                        events.push(Inbound::Invalid);
                        break;
                    }
                };
                if !binary && !utf8_ok(&data, fin) {
                    Inbound::InvalidUtf8
                } else if fin {
                    events.push(Inbound::Message { binary, data: Bytes::from(data) });
                    continue;
                } else {
                    partial = Some((binary, data));
                    continue;
                }
            }
        };
        events.push(ev);
        break;
    }
    (events, queued)
}

/// A masked client frame (for seeds and tests).
pub fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
