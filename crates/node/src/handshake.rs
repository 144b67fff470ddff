//! The checks of SPEC section 3, one function per step, cheapest first. `gate.rs` calls
//! them in order for an upgrade, `tickets.rs` for `POST /v1/tickets`. Each returns what
//! the next steps need, or a [`Refused`] that knows its status, code and (for the audit
//! record only) its reason.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use palisade_policy::credentials::{self, CarrierInputs, Credential, Extracted};
use palisade_policy::model::Carrier;
use palisade_policy::{Claims, CompiledPolicy};

use crate::fleet_cap::{FleetSlot, Reserved};
use crate::http::Head;
use crate::limiter::Slot;
use crate::refusal::Refusal;
use crate::state::{NodeState, Route, RouteKind};

/// A refusal and why (the reason goes to the audit record, never to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub reason: &'static str,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused { refusal, reason: refusal.code() }
    }
}

impl Refusal {
    pub fn because(self, reason: &'static str) -> Refused {
        Refused { refusal: self, reason }
    }
}

impl From<palisade_policy::TokenError> for Refused {
    fn from(e: palisade_policy::TokenError) -> Refused {
        Refusal::from(e).because(e.reason())
    }
}

/// Everything a session needs from an accepted handshake.
pub struct Accepted {
    pub route: Arc<Route>,
    pub claims: Claims,
    pub client: IpAddr,
    pub app_protocol: Option<String>,
    pub accept_key: String,
    /// The per-IP and per-user slots, held for the session's life.
    pub _ip_slot: Option<Slot<IpAddr>>,
    pub _user_slot: Slot<String>,
    /// The fleet-wide slot in etcd, when the policy caps the subject fleet-wide.
    pub _fleet_slot: Option<FleetSlot>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// No valid policy yet, or draining: fail closed (503).
pub fn serving(state: &NodeState) -> Result<Arc<CompiledPolicy>, Refused> {
    let retry = Refusal::Unavailable { retry_after: std::time::Duration::from_secs(5) };
    if state.is_draining() {
        return Err(retry.because("draining"));
    }
    state.policy.load().ok_or(retry.because("no_policy"))
}

/// Step 4: GET, HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, a valid key, and
/// version 13 (426 otherwise). Returns the `Sec-WebSocket-Accept` value.
pub fn valid_upgrade(head: &Head<'_>) -> Result<String, Refused> {
    let bad = |why| Err(Refusal::BadHandshake.because(why));
    if head.method != "GET" {
        return bad("method");
    }
    if head.minor_version != 1 {
        return bad("http_version");
    }
    if !head.has_token("upgrade", "websocket") {
        return bad("upgrade_header");
    }
    if !head.has_token("connection", "upgrade") {
        return bad("connection_header");
    }
    let key = match (head.count("sec-websocket-key"), head.header("sec-websocket-key")) {
        (1, Some(k)) => k.trim(),
        _ => return bad("key_header"),
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return bad("key_header"),
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refusal::UpgradeRequired.because("version"));
    }
    Ok(crate::http::accept_key(key))
}

/// Step 5: the TCP peer, or the right-most untrusted `X-Forwarded-For` entry when the
/// peer is a trusted proxy. A trusted proxy's chain that cannot be read is refused: it
/// is never attributed to the proxy itself.
pub fn client_address(state: &NodeState, head: &Head<'_>, peer: IpAddr) -> Result<IpAddr, Refused> {
    // An IPv4 client of a dual-stack listener (`[::]:443`) is its IPv4 address, as a
    // forwarded one is: in the audit, the registry (`disconnect --ip`) and upstream headers.
    let peer = peer.to_canonical();
    if state.trusted.is_empty() || !state.trusted.contains(peer) {
        return Ok(peer);
    }
    let raw = head.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).map(|h| h.value);
    state.trusted.client_addr_checked(peer, raw).map_err(|_| Refusal::BadHandshake.because("bad_forwarded_for"))
}

/// Step 1 for proxied clients: the per-IP cap on the forwarded address (direct peers
/// took theirs at accept).
pub fn per_ip_cap(state: &NodeState, policy: &CompiledPolicy, client: IpAddr) -> Result<Slot<IpAddr>, Refused> {
    let key = state.ip_key(client);
    state.ip_slots.try_acquire(key, policy.limits.per_ip_max_connections).ok_or(Refusal::TooManyConnections.into())
}

/// Step 6.
pub fn route(state: &NodeState, head: &Head<'_>) -> Result<Arc<Route>, Refused> {
    state.routes.get(head.path).cloned().ok_or(Refusal::NotFound.into())
}

/// Step 7.
pub fn per_ip_rate(state: &NodeState, policy: &CompiledPolicy, client: IpAddr) -> Result<(), Refused> {
    state.ip_rate.check(policy.limits.per_ip_rate, &state.ip_key(client)).map_err(|retry_after| Refusal::RateLimited { retry_after }.into())
}

/// Step 8.
pub fn origin(policy: &CompiledPolicy, head: &Head<'_>) -> Result<(), Refused> {
    let origin = head.header("origin");
    if head.count("origin") > 1 || !policy.origins.allows(origin) {
        return Err(Refusal::OriginNotAllowed.because(if origin.is_none() { "origin_missing" } else { "origin_refused" }));
    }
    Ok(())
}

/// Step 9: exactly one of `enabled` carriers.
pub fn carrier<'h>(head: &Head<'h>, enabled: &[Carrier]) -> Result<Credential<'h>, Refused> {
    let inputs = CarrierInputs {
        authorization: head.all("authorization").collect(),
        protocols: head.all("sec-websocket-protocol").collect(),
        query: head.query,
    };
    match credentials::extract(&inputs, enabled) {
        Extracted::One(c) => Ok(c),
        Extracted::None => Err(Refusal::CredentialsMissing.into()),
        Extracted::Ambiguous => Err(Refusal::AmbiguousCredentials.into()),
    }
}

/// Step 10: the token's signature and claims, or the ticket's single use (bound to the
/// Origin it was minted for, if any).
pub async fn verify(state: &NodeState, policy: &CompiledPolicy, credential: Credential<'_>, head: &Head<'_>) -> Result<Claims, Refused> {
    let now = unix_now();
    match credential {
        Credential::Jwt { token, .. } => Ok(crate::jwks::verify(&state.jwks, policy, &token, now).await?),
        Credential::Ticket(id) => {
            let rec = match state.tickets.consume(&id).await {
                Ok(Some(rec)) => rec,
                Ok(None) => return Err(Refusal::TicketInvalid.because("ticket_unknown")),
                // The store (etcd) is unreachable: fail closed.
                Err(_) => return Err(Refusal::TicketInvalid.because("ticket_store_unavailable")),
            };
            if let Some(bound) = &rec.origin
                && !head.header("origin").is_some_and(|o| palisade_policy::origin::same_origin(bound, o))
            {
                return Err(Refusal::TicketInvalid.because("ticket_origin"));
            }
            policy.verifier.still_valid(&rec.claims, now)?;
            Ok(rec.claims)
        }
    }
}

/// Step 10a: the route's access rule (required claims and scopes), if it has one. The
/// refusal says only `forbidden`; the audit record gets the rule's index.
pub fn access(policy: &CompiledPolicy, route: &str, claims: &Claims) -> Result<(), (Refused, usize)> {
    policy.access.check(route, &claims.claims_b64).map_err(|d| (Refusal::Forbidden.because(d.reason), d.rule))
}

/// Step 11: per-user handshake rate, then the per-user connection cap.
pub fn per_user(state: &NodeState, policy: &CompiledPolicy, sub: &str) -> Result<Slot<String>, Refused> {
    state.user_rate.check(policy.limits.per_user_rate, &sub.to_owned()).map_err(|retry_after| Refusal::RateLimited { retry_after })?;
    state.user_slots.try_acquire(sub.to_owned(), policy.limits.per_user_max_connections).ok_or(Refusal::TooManyConnections.into())
}

/// Step 11, fleet-wide: a slot of the subject's `fleet_max_connections` in etcd, when the
/// policy sets one. Without etcd the node's own cap (already checked) is the fallback.
pub async fn fleet_cap(state: &NodeState, policy: &CompiledPolicy, sub: &str, conn_id: &str) -> Result<Option<FleetSlot>, Refused> {
    let Some(cap) = policy.limits.per_user_fleet_max_connections else { return Ok(None) };
    let Some(etcd) = state.etcd() else { return Ok(None) };
    let counters = &state.fleet_cap;
    match etcd.reserve_slot(sub, cap, conn_id).await {
        Ok(Reserved::Held(slot)) => {
            counters.count(&counters.reserved);
            Ok(Some(slot))
        }
        Ok(Reserved::Full) => {
            counters.count(&counters.refused);
            Err(Refusal::TooManyConnections.because("fleet_cap"))
        }
        Err(e) => {
            counters.count(&counters.fallbacks);
            tracing::warn!(event = "fleet_cap_fallback", node = %state.id, error = %e, "etcd unavailable: the per-node cap applies");
            Ok(None)
        }
    }
}

/// Step 12: an upstream route connects before the 101, so an unreachable upstream is a
/// 502 and not a dead socket.
pub async fn upstream(
    route: &Route,
    claims: &Claims,
    client: IpAddr,
    conn_id: &str,
    offered: &[String],
    policy: &CompiledPolicy,
) -> Result<Option<crate::upstream::Upstream>, Refused> {
    let RouteKind::Upstream(target) = &route.kind else { return Ok(None) };
    let who = crate::upstream::Identity { subject: &claims.sub, claims_b64: &claims.claims_b64, client, conn_id };
    match crate::upstream::connect(target, &who, offered, policy.limits.handshake_timeout).await {
        Ok(up) => Ok(Some(up)),
        Err(e) => {
            tracing::warn!(event = "upstream_unavailable", conn.id = %conn_id, http.route = %route.path, error = %e);
            Err(Refusal::UpstreamUnavailable.because("upstream_connect"))
        }
    }
}

/// The subprotocols: the application protocol to echo (never the `bearer.` entry) and
/// the application protocols offered, in order.
pub fn subprotocols(head: &Head<'_>) -> (Option<String>, Vec<String>) {
    let protocols: Vec<&str> = head.all("sec-websocket-protocol").collect();
    let app = credentials::app_protocol(&protocols).map(str::to_owned);
    let offered = credentials::offered_protocols(&protocols).filter(|p| !p.starts_with("bearer.")).map(str::to_owned).collect();
    (app, offered)
}

pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}
