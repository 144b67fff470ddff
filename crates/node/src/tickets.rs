//! One-time tickets (SPEC section 5): `POST /v1/tickets` mints one for a verified bearer
//! token; the first handshake that presents it (`?ticket=`) consumes it, on any node of
//! the fleet. The endpoint runs the gate's own steps (client address, caps, rates,
//! carrier, verification) and must receive its whole request, body included, within the
//! handshake deadline. The store is in [`store`].

pub mod store;

use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use palisade_policy::CompiledPolicy;
use palisade_policy::model::Carrier;

pub use store::TicketRecord;

use crate::audit::Attempt;
use crate::handshake::{self as step, Refused};
use crate::http::{self, ClientStream, Head};
use crate::limiter::Slot;
use crate::refusal::Refusal;
use crate::state::NodeState;

/// Largest ticket request body (`{"origin":"..."}`).
const MAX_BODY: usize = 4096;

/// Serves `POST /v1/tickets`; returns the 201 body.
#[allow(clippy::too_many_arguments)]
pub async fn endpoint(
    state: &NodeState,
    policy: &CompiledPolicy,
    stream: &mut ClientStream,
    head: &Head<'_>,
    rest: BytesMut,
    deadline: tokio::time::Instant,
    ip_slot: Option<Slot<IpAddr>>,
    attempt: &mut Attempt,
) -> Result<String, Refused> {
    let client = step::client_address(state, head, attempt.peer.ip())?; // 5
    attempt.client = Some(client);
    let _ip_slot = match ip_slot {
        Some(s) => s,
        None => step::per_ip_cap(state, policy, client)?, // 1, for proxied clients
    };
    step::per_ip_rate(state, policy, client)?; // 7
    if !policy.carrier_enabled(Carrier::Ticket) {
        return Err(Refusal::NotFound.because("tickets_disabled"));
    }
    let credential = step::carrier(head, &[Carrier::Header])?; // 9: exactly one `Authorization: Bearer`
    attempt.carrier = Some("header");
    let claims = step::verify(state, policy, credential, head).await?; // 10
    attempt.subject = Some(claims.sub.clone());
    drop(step::per_user(state, policy, &claims.sub)?); // 11: the rate, and the cap as a handshake would see it
    let origin = read_origin(stream, head, rest, deadline).await?;
    let ttl = policy.ticket_ttl_seconds;
    // With etcd unreachable tickets fail closed: no ticket rather than one the fleet may
    // not honour exactly once.
    let id = state.tickets.mint(TicketRecord { claims, origin }, Duration::from_secs(ttl)).await.map_err(|e| {
        tracing::warn!(event = "ticket_store_unavailable", node = %state.id, error = %e);
        Refusal::Unavailable { retry_after: Duration::from_secs(1) }.because("ticket_store_unavailable")
    })?;
    Ok(serde_json::json!({"ticket": id, "expires_in": ttl}).to_string())
}

/// CORS (SPEC section 5): browsers may call the endpoint from the policy's allowed
/// origins only. An `Origin` that is present must be allowed (else 403
/// `origin_not_allowed`); the answer then names that one origin, never `*`, and never
/// allows credentials (the bearer token is the credential, not a cookie). No `Origin`
/// (a native client): no CORS. Written by hand because the endpoint is served by the
/// gate's own HTTP/1.1 reader, not a tower stack.
pub fn cors_origin(policy: &CompiledPolicy, head: &Head<'_>) -> Result<Option<String>, Refused> {
    match (head.count("origin"), head.header("origin")) {
        (0, _) => Ok(None),
        (1, Some(o)) if policy.origins.allows(Some(o)) => Ok(Some(o.to_owned())),
        _ => Err(Refusal::OriginNotAllowed.because("origin_refused")),
    }
}

/// The CORS headers for an allowed `origin`; `preflight` adds what a preflight answers.
pub fn cors_headers(origin: &str, preflight: bool) -> Vec<(&'static str, String)> {
    let mut h = vec![("Access-Control-Allow-Origin", origin.to_owned()), ("Vary", "Origin".into())];
    if preflight {
        h.push(("Access-Control-Allow-Methods", "POST".into()));
        h.push(("Access-Control-Allow-Headers", "authorization, content-type".into()));
        h.push(("Access-Control-Max-Age", "600".into()));
    }
    h
}

/// The optional body `{"origin":"https://app.example.com"}`, within the deadline; the
/// origin is kept normalised so that the binding compares as origins do.
async fn read_origin(
    stream: &mut ClientStream,
    head: &Head<'_>,
    rest: BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Option<String>, Refused> {
    let len = match head.header("content-length").map(str::trim) {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| Refusal::BadHandshake.because("bad_content_length"))?,
    };
    if len > MAX_BODY {
        return Err(Refusal::BadHandshake.because("body_too_large"));
    }
    if len == 0 {
        return Ok(None);
    }
    let body = match tokio::time::timeout_at(deadline, http::read_body(stream, rest, len)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Err(Refusal::BadHandshake.because("body_incomplete")),
        Err(_) => return Err(Refusal::BadHandshake.because("body_timeout")),
    };
    request_origin(&body)
}

/// The ticket request body: `{"origin": ...}` or `{}`, the origin normalised.
pub fn request_origin(body: &[u8]) -> Result<Option<String>, Refused> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        origin: Option<String>,
    }
    match serde_json::from_slice::<Req>(body) {
        Ok(Req { origin: Some(o) }) => match palisade_policy::origin::Origin::parse(&o) {
            Some(parsed) => Ok(Some(parsed.normalized())),
            None => Err(Refusal::BadHandshake.because("bad_ticket_request")),
        },
        Ok(Req { origin: None }) => Ok(None),
        Err(_) => Err(Refusal::BadHandshake.because("bad_ticket_request")),
    }
}
