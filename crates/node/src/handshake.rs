//! The handshake gate: SPEC section 3, steps 4 to 13, one call per check, cheapest first.
//! Steps 1 to 3 (caps, TLS, deadline) run in `server.rs` before the head is parsed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use palisade_policy::credentials::{self, CarrierInputs, Credential, Extracted};
use palisade_policy::model::Carrier;
use palisade_policy::{Claims, CompiledPolicy};

use crate::audit::Attempt;
use crate::http::Head;
use crate::limiter::Slot;
use crate::refusal::Refusal;
use crate::state::{NodeState, Route};

/// Everything a session needs from an accepted handshake.
pub struct Accepted {
    pub route: Arc<Route>,
    pub claims: Claims,
    pub carrier: Carrier,
    pub client: IpAddr,
    pub app_protocol: Option<String>,
    /// The application subprotocols the client offered (never the `bearer.` entry), in
    /// order: passed to an upstream, which picks.
    pub offered_protocols: Vec<String>,
    pub accept_key: String,
    pub ip_slot: Option<Slot<IpAddr>>,
    pub user_slot: Slot<String>,
    pub policy: Arc<CompiledPolicy>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs steps 4 to 11 for an upgrade request. `ip_slot` is the per-IP slot taken at
/// accept, or `None` when the peer is a trusted proxy (the cap then applies to the
/// forwarded client address, here).
pub async fn check(
    state: &NodeState,
    policy: &Arc<CompiledPolicy>,
    head: &Head<'_>,
    mut ip_slot: Option<Slot<IpAddr>>,
    attempt: &mut Attempt,
) -> Result<Accepted, Refusal> {
    let accept_key = valid_upgrade(head, attempt)?; // 4
    let client = client_address(state, head, attempt); // 5
    if ip_slot.is_none() {
        ip_slot = Some(per_ip_cap(state, policy, client)?); // 1, for proxied clients
    }
    let route = route(state, head, attempt)?; // 6
    per_ip_rate(state, policy, client)?; // 7
    origin(policy, head, attempt)?; // 8
    let credential = carrier(policy, head, attempt)?; // 9
    let carrier = credential.carrier();
    let claims = verify(state, policy, credential, head, attempt).await?; // 10
    let user_slot = per_user(state, policy, &claims.sub)?; // 11
    let protocols: Vec<&str> = head.all("sec-websocket-protocol").collect();
    let app_protocol = credentials::app_protocol(&protocols).map(str::to_owned);
    let offered_protocols = credentials::offered_protocols(&protocols).filter(|p| !p.starts_with("bearer.")).map(str::to_owned).collect();
    Ok(Accepted { route, claims, carrier, client, app_protocol, offered_protocols, accept_key, ip_slot, user_slot, policy: policy.clone() })
}

/// Step 4: GET, HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, a valid key, and
/// version 13 (426 otherwise). Returns the `Sec-WebSocket-Accept` value.
fn valid_upgrade(head: &Head<'_>, attempt: &mut Attempt) -> Result<String, Refusal> {
    let refuse = |attempt: &mut Attempt, why| {
        attempt.reason = Some(why);
        Refusal::BadHandshake
    };
    if head.method != "GET" {
        return Err(refuse(attempt, "method"));
    }
    if head.minor_version != 1 {
        return Err(refuse(attempt, "http_version"));
    }
    if !head.has_token("upgrade", "websocket") {
        return Err(refuse(attempt, "upgrade_header"));
    }
    if !head.has_token("connection", "upgrade") {
        return Err(refuse(attempt, "connection_header"));
    }
    let key = match (head.count("sec-websocket-key"), head.header("sec-websocket-key")) {
        (1, Some(k)) => k.trim(),
        _ => return Err(refuse(attempt, "key_header")),
    };
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(refuse(attempt, "key_header")),
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        attempt.reason = Some("version");
        return Err(Refusal::UpgradeRequired);
    }
    Ok(accept_key(key))
}

/// `Sec-WebSocket-Accept` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Step 5: the TCP peer, or the right-most untrusted `X-Forwarded-For` entry when the
/// peer is a trusted proxy.
fn client_address(state: &NodeState, head: &Head<'_>, attempt: &mut Attempt) -> IpAddr {
    let peer = attempt.peer.ip();
    let client = if state.trusted.is_empty() { peer } else { state.trusted.client_addr(peer, head.all("x-forwarded-for")) };
    attempt.client = Some(client);
    client
}

fn per_ip_cap(state: &NodeState, policy: &CompiledPolicy, client: IpAddr) -> Result<Slot<IpAddr>, Refusal> {
    state.ip_slots.try_acquire(client, policy.limits.per_ip_max_connections).ok_or(Refusal::TooManyConnections)
}

/// Step 6.
fn route(state: &NodeState, head: &Head<'_>, attempt: &mut Attempt) -> Result<Arc<Route>, Refusal> {
    attempt.route = Some(truncate(head.path, 200));
    state.routes.get(head.path).cloned().ok_or(Refusal::NotFound)
}

/// Step 7.
fn per_ip_rate(state: &NodeState, policy: &CompiledPolicy, client: IpAddr) -> Result<(), Refusal> {
    state.ip_rate.check(policy.limits.per_ip_rate, &client).map_err(|retry_after| Refusal::RateLimited { retry_after })
}

/// Step 8.
fn origin(policy: &CompiledPolicy, head: &Head<'_>, attempt: &mut Attempt) -> Result<(), Refusal> {
    let origin = head.header("origin");
    attempt.origin = origin.map(|o| truncate(o, 200));
    if head.count("origin") > 1 || !policy.origins.allows(origin) {
        attempt.reason = Some(if origin.is_none() { "origin_missing" } else { "origin_refused" });
        return Err(Refusal::OriginNotAllowed);
    }
    Ok(())
}

/// Step 9: exactly one enabled carrier.
fn carrier<'h>(policy: &CompiledPolicy, head: &Head<'h>, attempt: &mut Attempt) -> Result<Credential<'h>, Refusal> {
    let inputs = CarrierInputs {
        authorization: head.all("authorization").collect(),
        protocols: head.all("sec-websocket-protocol").collect(),
        query: head.query,
    };
    match credentials::extract(&inputs, &policy.carriers) {
        Extracted::One(c) => {
            attempt.carrier = Some(c.carrier().as_str());
            Ok(c)
        }
        Extracted::None => Err(Refusal::CredentialsMissing),
        Extracted::Ambiguous => Err(Refusal::AmbiguousCredentials),
    }
}

/// Step 10: the token's signature and claims, or the ticket's single use.
async fn verify(
    state: &NodeState,
    policy: &CompiledPolicy,
    credential: Credential<'_>,
    head: &Head<'_>,
    attempt: &mut Attempt,
) -> Result<Claims, Refusal> {
    let now = unix_now();
    let result = match credential {
        Credential::Jwt { token, .. } => crate::jwks::verify(&state.jwks, policy, &token, now).await.map_err(|e| {
            attempt.reason = Some(e.reason());
            Refusal::from(e)
        }),
        Credential::Ticket(id) => {
            let rec = match state.tickets.consume(&id).await {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    attempt.reason = Some("ticket_unknown");
                    return Err(Refusal::TicketInvalid);
                }
                // The store (etcd) is unreachable: fail closed.
                Err(_) => {
                    attempt.reason = Some("ticket_store_unavailable");
                    return Err(Refusal::TicketInvalid);
                }
            };
            if let Some(bound) = &rec.origin
                && head.header("origin") != Some(bound.as_str())
            {
                attempt.reason = Some("ticket_origin");
                return Err(Refusal::TicketInvalid);
            }
            let c = rec.claims;
            policy.verifier.still_valid(&c, now).map(|()| c).map_err(|e| {
                attempt.reason = Some(e.reason());
                Refusal::from(e)
            })
        }
    };
    if let Ok(c) = &result {
        attempt.subject = Some(c.sub.clone());
    }
    result
}

/// Step 11: per-user handshake rate, then the per-user connection cap.
fn per_user(state: &NodeState, policy: &CompiledPolicy, sub: &str) -> Result<Slot<String>, Refusal> {
    state.user_rate.check(policy.limits.per_user_rate, &sub.to_owned()).map_err(|retry_after| Refusal::RateLimited { retry_after })?;
    state.user_slots.try_acquire(sub.to_owned(), policy.limits.per_user_max_connections).ok_or(Refusal::TooManyConnections)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
