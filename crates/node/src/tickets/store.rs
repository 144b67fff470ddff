//! The ticket store. Two stores behind one API ([`Tickets`]): in memory for a node on its own (and
//! `palisade dev`), and etcd for a fleet, where a ticket minted on one node is consumed on
//! any node exactly once (an etcd transaction) and expires with its lease. With etcd
//! unreachable the etcd store fails closed: minting answers 503, consuming refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use palisade_policy::Claims;
use serde::{Deserialize, Serialize};

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::etcd::{ClusterError, Etcd};

/// What a ticket stands for: the verified token's identity and an optional Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub claims: Claims,
    pub origin: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// The store cannot be reached (etcd down or slow): fail closed.
    #[error("the ticket store is unavailable: {0}")]
    Unavailable(#[from] ClusterError),
    /// The in-memory store holds [`MEMORY_CAPACITY`] live tickets.
    #[error("the ticket store is full")]
    Full,
}

/// Live tickets the in-memory store holds at most; expired ones are pruned first.
pub const MEMORY_CAPACITY: usize = 50_000;

/// The ticket store of a node: in memory, or shared by the fleet in etcd.
pub enum Tickets {
    Memory(MemoryTickets),
    Etcd(Arc<Etcd>),
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets::Memory(MemoryTickets::default())
    }
}

impl Tickets {
    /// Stores `record` for `ttl` and returns the new ticket id.
    pub async fn mint(&self, record: TicketRecord, ttl: Duration) -> Result<String, TicketError> {
        match self {
            Tickets::Memory(m) => m.mint(record, ttl).ok_or(TicketError::Full),
            Tickets::Etcd(etcd) => {
                let id = new_ticket_id();
                let expires_unix_ms = crate::etcd::unix_ms().saturating_add(ttl.as_millis() as u64);
                let value = StoredTicket::from_record(record, expires_unix_ms).encode();
                etcd.put_ticket(&id, value, ttl).await?;
                Ok(id)
            }
        }
    }

    /// Removes and returns the ticket if it exists and has not expired: the first call
    /// with an id wins, on any node; every later call gets `Ok(None)`. `Err` when the
    /// store is unreachable (the caller refuses: fail closed).
    pub async fn consume(&self, id: &str) -> Result<Option<TicketRecord>, TicketError> {
        // Not one of ours: refused without a round trip (and never a key we did not make).
        if !plausible_id(id) {
            return Ok(None);
        }
        match self {
            Tickets::Memory(m) => Ok(m.consume(id)),
            Tickets::Etcd(etcd) => {
                let Some(value) = etcd.take_ticket(id).await? else { return Ok(None) };
                // A value we cannot read is treated as no ticket at all.
                let Some(stored) = StoredTicket::decode(&value) else {
                    tracing::warn!(event = "ticket_corrupt", "a ticket in etcd could not be decoded; refused");
                    return Ok(None);
                };
                // The lease is whole seconds and expires lazily; the record is exact.
                Ok((stored.expires_unix_ms > crate::etcd::unix_ms()).then(|| stored.into_record()))
            }
        }
    }
}

/// A ticket id as minted: base64url, between 128 and 1024 bits.
pub fn plausible_id(id: &str) -> bool {
    (22..=171).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A ticket as stored in etcd (JSON). `palisade_policy::Claims` has no serde derives: this
/// mirrors it field by field.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredTicket {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    claims_b64: String,
    #[serde(default)]
    origin: Option<String>,
    pub(crate) expires_unix_ms: u64,
}

impl StoredTicket {
    pub(crate) fn from_record(r: TicketRecord, expires_unix_ms: u64) -> StoredTicket {
        let Claims { sub, exp, iat, jti, kid, claims_b64 } = r.claims;
        StoredTicket { sub, exp, iat, jti, kid, claims_b64, origin: r.origin, expires_unix_ms }
    }

    pub(crate) fn into_record(self) -> TicketRecord {
        let StoredTicket { sub, exp, iat, jti, kid, claims_b64, origin, .. } = self;
        TicketRecord { claims: Claims { sub, exp, iat, jti, kid, claims_b64 }, origin }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain strings and integers: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<StoredTicket> {
        serde_json::from_slice(bytes).ok()
    }
}

pub struct MemoryTickets {
    map: Mutex<HashMap<String, (TicketRecord, Instant)>>,
    prune_at: std::sync::atomic::AtomicUsize,
}

impl Default for MemoryTickets {
    fn default() -> Self {
        MemoryTickets { map: Mutex::default(), prune_at: std::sync::atomic::AtomicUsize::new(1024) }
    }
}

/// A new ticket id: 256 random bits, base64url.
pub fn new_ticket_id() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl MemoryTickets {
    /// Stores `record` for `ttl`; `None` when [`MEMORY_CAPACITY`] live tickets are held.
    /// Expired tickets are pruned as the store grows (amortised: every time it doubles
    /// past 1,024 entries, and always before refusing).
    pub fn mint(&self, record: TicketRecord, ttl: Duration) -> Option<String> {
        let id = new_ticket_id();
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= self.prune_at.load(std::sync::atomic::Ordering::Relaxed) || m.len() >= MEMORY_CAPACITY {
            m.retain(|_, (_, exp)| *exp > now);
            self.prune_at.store((m.len() * 2).max(1024), std::sync::atomic::Ordering::Relaxed);
        }
        if m.len() >= MEMORY_CAPACITY {
            return None;
        }
        m.insert(id.clone(), (record, now + ttl));
        Some(id)
    }

    #[cfg(test)]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Removes and returns the ticket if it exists and has not expired. A second call
    /// with the same id always returns `None`.
    pub fn consume(&self, id: &str) -> Option<TicketRecord> {
        let (rec, exp) = self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id)?;
        (exp > Instant::now()).then_some(rec)
    }
}

/// The fleet's tickets in etcd: `/palisade/<cluster>/tickets/<id>`.
impl Etcd {
    /// Stores a ticket under its own lease of `ttl`.
    pub(crate) async fn put_ticket(&self, id: &str, value: Vec<u8>, ttl: Duration) -> Result<(), ClusterError> {
        let mut c = self.client().await?;
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self.bounded(c.lease_grant(ttl, None)).await?.id();
        self.bounded(c.put(self.ticket_key(id), value, Some(PutOptions::new().with_lease(lease)))).await?;
        Ok(())
    }

    /// Takes a ticket out of etcd in one transaction: if the key exists, delete it and
    /// return what it held. Of two nodes racing for one ticket exactly one gets it.
    pub(crate) async fn take_ticket(&self, id: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut c = self.client().await?;
        let key = self.ticket_key(id);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))]);
        let resp = self.bounded(c.txn(txn)).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        Ok(resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(d) if d.deleted() == 1 => d.prev_kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TicketRecord {
        TicketRecord {
            claims: Claims {
                sub: "alice".into(),
                exp: 2_000_000_000,
                iat: Some(1_900_000_000),
                jti: Some("j1".into()),
                kid: None,
                claims_b64: "eyJzdWIiOiJhbGljZSJ9".into(),
            },
            origin: Some("https://app.example.com".into()),
        }
    }

    #[test]
    fn stored_ticket_round_trips_every_claim() {
        let bytes = StoredTicket::from_record(record(), 42).encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["sub"], "alice");
        assert_eq!(v["origin"], "https://app.example.com");
        assert_eq!(v["expires_unix_ms"], 42);
        let back = StoredTicket::decode(&bytes).expect("decodes");
        assert_eq!(back.expires_unix_ms, 42);
        assert_eq!(back.into_record(), record());
        assert!(StoredTicket::decode(b"{\"sub\":1}").is_none());
    }

    #[tokio::test]
    async fn memory_tickets_are_single_use() {
        let t = Tickets::default();
        let id = t.mint(record(), Duration::from_secs(30)).await.expect("mint");
        assert!(plausible_id(&id));
        assert_eq!(t.consume(&id).await.expect("store").expect("first use"), record());
        assert!(t.consume(&id).await.expect("store").is_none(), "second use");
        assert!(t.consume("../nodes/x").await.expect("store").is_none());
        let id = t.mint(record(), Duration::ZERO).await.expect("mint");
        assert!(t.consume(&id).await.expect("store").is_none(), "expired");
    }

    #[test]
    fn the_memory_store_is_bounded_and_prunes_expired_tickets() {
        let m = MemoryTickets::default();
        for _ in 0..3000 {
            assert!(m.mint(record(), Duration::ZERO).is_some());
        }
        assert!(m.len() <= 2048, "expired tickets are pruned as the store grows: {}", m.len());
        let m = MemoryTickets::default();
        for _ in 0..MEMORY_CAPACITY {
            assert!(m.mint(record(), Duration::from_secs(60)).is_some());
        }
        assert!(m.mint(record(), Duration::from_secs(60)).is_none(), "full of live tickets: refused");
        assert_eq!(m.len(), MEMORY_CAPACITY);
    }
}
