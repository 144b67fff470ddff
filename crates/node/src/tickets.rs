//! One-time tickets (SPEC section 5): minted by `POST /v1/tickets` for a verified token,
//! consumed by the first handshake that presents one. This is the in-process store of
//! a single node or of `palisade dev`; the cluster store lives in etcd.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use palisade_policy::Claims;

/// What a ticket stands for: the verified token's identity and an optional Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub claims: Claims,
    pub origin: Option<String>,
}

#[derive(Default)]
pub struct MemoryTickets {
    map: Mutex<HashMap<String, (TicketRecord, Instant)>>,
}

/// A new ticket id: 256 random bits, base64url.
pub fn new_ticket_id() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl MemoryTickets {
    pub fn mint(&self, record: TicketRecord, ttl: Duration) -> String {
        let id = new_ticket_id();
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, (_, exp)| *exp > now);
        }
        m.insert(id.clone(), (record, now + ttl));
        id
    }

    /// Removes and returns the ticket if it exists and has not expired. A second call
    /// with the same id always returns `None`.
    pub fn consume(&self, id: &str) -> Option<TicketRecord> {
        let (rec, exp) = self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id)?;
        (exp > Instant::now()).then_some(rec)
    }
}
