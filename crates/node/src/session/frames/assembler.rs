//! Fragmented messages reassembled up to the message limit, with UTF-8 checked fragment
//! by fragment (text fails fast).

use bytes::{Bytes, BytesMut};

use super::{Inbound, OP_BINARY, OP_CONTINUATION, OP_TEXT};

/// Reassembles data frames into messages, at most `limit` bytes each.
#[derive(Default)]
pub struct Assembler {
    partial: Option<Partial>,
}

/// A fragmented message being reassembled.
struct Partial {
    binary: bool,
    buf: BytesMut,
    /// Bytes already known to be UTF-8 (text), so each fragment is checked once.
    valid_up_to: usize,
}

impl Partial {
    /// Whether the text so far can still be UTF-8: only an incomplete sequence at the end
    /// is allowed, and not at all once `fin`.
    fn utf8_so_far(&mut self, fin: bool) -> bool {
        match std::str::from_utf8(&self.buf[self.valid_up_to..]) {
            Ok(_) => {
                self.valid_up_to = self.buf.len();
                true
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.valid_up_to += e.valid_up_to();
                true
            }
            Err(_) => false,
        }
    }
}

impl Assembler {
    /// No fragmented message is being reassembled.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Feeds a data frame (text, binary or continuation). `Ok(None)`: more fragments to
    /// come. `Err` ends the connection with the event it carries.
    pub fn push(&mut self, fin: bool, opcode: u8, payload: Bytes, limit: usize) -> Result<Option<Inbound>, Inbound> {
        match (opcode, self.partial.take()) {
            (OP_TEXT | OP_BINARY, None) => {
                let binary = opcode == OP_BINARY;
                if fin {
                    if !binary && std::str::from_utf8(&payload).is_err() {
                        return Err(Inbound::InvalidUtf8);
                    }
                    return Ok(Some(Inbound::Message { binary, data: payload }));
                }
                let mut p = Partial { binary, buf: BytesMut::from(&payload[..]), valid_up_to: 0 };
                if !binary && !p.utf8_so_far(false) {
                    return Err(Inbound::InvalidUtf8);
                }
                self.partial = Some(p);
                Ok(None)
            }
            (OP_CONTINUATION, Some(mut p)) => {
                if p.buf.len() + payload.len() > limit {
                    return Err(Inbound::TooBig);
                }
                p.buf.extend_from_slice(&payload);
                if !p.binary && !p.utf8_so_far(fin) {
                    return Err(Inbound::InvalidUtf8);
                }
                if !fin {
                    self.partial = Some(p);
                    return Ok(None);
                }
                Ok(Some(Inbound::Message { binary: p.binary, data: p.buf.freeze() }))
            }
            // A continuation with nothing to continue, or a new message inside a
            // fragmented one.
            _ => Err(Inbound::Invalid),
        }
    }
}
