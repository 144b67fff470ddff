//! What is queued for a peer, and how it is encoded for the wire (RFC 6455 section 5.2),
//! masked on the upstream side.

use bytes::Bytes;

use super::close;
use crate::session::frames::{OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, header_len, unmask};

#[derive(Debug)]
pub enum Out {
    Data {
        binary: bool,
        data: Bytes,
    },
    Ping,
    Pong(Bytes),
    /// `code` 1005 (no status) sends an empty close frame.
    Close {
        code: u16,
        reason: String,
    },
    /// Whole data frames encoded for this side already (a relayed run,
    /// [`crate::session::frames::Run`]): written as they are.
    Frames(Bytes),
}

/// What one queued entry costs beside its bytes: its slot in the queue. Charged to
/// `max_buffered_bytes` with every entry, so that many tiny frames (empty messages, the
/// Pongs to empty Pings) cannot hold far more memory than the limit says.
pub const ENTRY_OVERHEAD: u64 = std::mem::size_of::<Out>() as u64;
const _: () = assert!(ENTRY_OVERHEAD >= 24, "an entry holds at least a Bytes handle");

impl Out {
    /// What the entry counts toward `max_buffered_bytes`: its wire size and its slot.
    pub(super) fn accounted(&self) -> u64 {
        self.cost() + ENTRY_OVERHEAD
    }

    /// Bytes on the wire.
    pub(super) fn cost(&self) -> u64 {
        let payload = match self {
            Out::Frames(f) => return f.len() as u64,
            Out::Data { data, .. } => data.len(),
            Out::Ping => 0,
            Out::Pong(p) => p.len(),
            Out::Close { reason, .. } => 2 + truncate_reason(reason).len(),
        };
        (payload + header_len(payload, false)) as u64
    }
}

/// A close reason fits in a control frame (123 bytes), cut on a character boundary.
fn truncate_reason(r: &str) -> &str {
    let mut end = r.len().min(123);
    while !r.is_char_boundary(end) {
        end -= 1;
    }
    &r[..end]
}

/// Appends one frame to `out`, masked with `mask` when it is a client's (RFC 6455
/// section 5.3).
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(bit | n as u8),
        n @ 126..=65535 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(payload);
            unmask(&mut out[start..], m);
        }
    }
}

/// Encodes `item`, masked with `mask` when it is a client's; true for a close frame (the
/// last one).
pub(super) fn encode_out(out: &mut Vec<u8>, item: &Out, mask: Option<[u8; 4]>) -> bool {
    match item {
        Out::Frames(f) => out.extend_from_slice(f),
        Out::Data { binary, data } => encode_frame(out, if *binary { OP_BINARY } else { OP_TEXT }, data, mask),
        Out::Ping => encode_frame(out, OP_PING, b"", mask),
        Out::Pong(p) => encode_frame(out, OP_PONG, p, mask),
        Out::Close { code, reason } => {
            if *code == close::NO_STATUS {
                encode_frame(out, OP_CLOSE, b"", mask);
            } else {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(truncate_reason(reason).as_bytes());
                encode_frame(out, OP_CLOSE, &p, mask);
            }
            return true;
        }
    }
    false
}
