//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API; hidden from the docs):
//! the parsers of untrusted input that live in private modules, re-exported as they are.

pub use crate::handshake::{Refused, carrier, client_address, origin, route, subprotocols, valid_upgrade};
pub use crate::http::{Head, HeadError, MAX_HEAD, MAX_HEADERS, accept_key, parse_head};
pub use crate::refusal::Refusal;
pub use crate::session::ENTRY_OVERHEAD;
pub use crate::session::fuzzing::*;
pub use crate::tickets::store::{MemoryTickets, TicketRecord, new_ticket_id, plausible_id};
pub use crate::tickets::{cors_origin, request_origin as ticket_request_origin};

/// A ticket as the etcd store reads it back: the record and its expiry (unix ms), and
/// the record stored again (`None` when the bytes are not a stored ticket).
pub fn stored_ticket(bytes: &[u8]) -> Option<(TicketRecord, u64, Vec<u8>)> {
    let stored = crate::tickets::store::StoredTicket::decode(bytes)?;
    let expires = stored.expires_unix_ms;
    let record = stored.into_record();
    let again = crate::tickets::store::StoredTicket::from_record(record.clone(), expires).encode();
    Some((record, expires, again))
}
