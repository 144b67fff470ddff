//! Runs of whole messages relayed as they came: the frames at the start of a small read
//! that are each a whole text or binary message are judged in place and handed on as one
//! piece of the read buffer, already encoded for the other side, instead of one payload,
//! one queue entry and one encoding per message. A client's frames are unmasked to be
//! judged and masked again with a fresh key (RFC 6455 section 10.3: the node picks the
//! keys of what it sends); a server's frames are sent to the client unchanged, as a
//! server's frames are. Anything else (control frames, fragments, frames cut by the read,
//! a length not in its shortest form, a message the judge refuses) ends the run and stays
//! in the buffer, untouched, for [`Decoder::try_frame`] and the rules of the slow path.

use bytes::Bytes;

use super::{Decoder, OP_BINARY, OP_TEXT, header_len, parse_header_from, unmask};

/// A run taken from the read buffer: `frames` holds `messages` whole frames carrying
/// `payload_bytes` of payload.
#[derive(Debug)]
pub struct Run {
    pub frames: Bytes,
    pub messages: u32,
    pub payload_bytes: u64,
}

impl Decoder {
    /// The whole messages at the start of what was read, while `judge` takes each one
    /// (`binary`, the unmasked payload); client frames get keys from `key`. Only small
    /// reads are relayed this way (a run keeps its read buffer alive, as shared payloads
    /// do): `None` when the buffer is large, or its first frame is not taken.
    pub fn take_run(
        &mut self,
        max_payload: usize,
        mut judge: impl FnMut(bool, &[u8]) -> bool,
        mut key: impl FnMut() -> [u8; 4],
    ) -> Option<Run> {
        if !self.share || self.big {
            return None;
        }
        let (mut end, mut messages, mut payload_bytes) = (0usize, 0u32, 0u64);
        while let Ok(Some(h)) = parse_header_from(&self.buf[end..], max_payload, self.masked) {
            let binary = match h.opcode {
                OP_TEXT => false,
                OP_BINARY => true,
                _ => break,
            };
            let total = h.header_len + h.len;
            if !h.fin || h.header_len != header_len(h.len, self.masked) || self.buf.len() - end < total {
                break;
            }
            let payload = &mut self.buf[end + h.header_len..end + total];
            if self.masked {
                unmask(payload, h.mask);
            }
            if !judge(binary, payload) {
                if self.masked {
                    // Back as it came, for the slow path.
                    unmask(payload, h.mask);
                }
                break;
            }
            if self.masked {
                let k = key();
                unmask(payload, k);
                self.buf[end + h.header_len - 4..end + h.header_len].copy_from_slice(&k);
            }
            end += total;
            messages += 1;
            payload_bytes += h.len as u64;
        }
        if messages == 0 {
            return None;
        }
        self.need = 2;
        let frames = if end == self.buf.len() {
            self.big = false;
            std::mem::take(&mut self.buf).freeze()
        } else {
            self.buf.split_to(end).freeze()
        };
        Some(Run { frames, messages, payload_bytes })
    }
}
