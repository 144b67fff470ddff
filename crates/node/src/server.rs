//! The WSS listener: accept, caps (step 1), TLS (step 2) and the handshake deadline
//! (step 3), then the request head, the non-upgrade endpoints, the gate, and the 101.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::audit::Attempt;
use crate::handshake::{self, Accepted};
use crate::http::{self, ClientStream, Head, HeadError};
use crate::limiter::Slot;
use crate::refusal::Refusal;
use crate::state::{NodeState, OpenGuard, RouteKind};
use crate::tickets::TicketRecord;

/// Why a connection is being served: normally, or only to be told it is over a cap.
enum Admission {
    Admitted { ip_slot: Option<Slot<IpAddr>> },
    OverCap(Refusal, tokio::sync::OwnedSemaphorePermit),
}

pub async fn serve(state: Arc<NodeState>, listener: TcpListener, tls: Option<TlsAcceptor>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *stop.borrow() {
            break;
        }
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move { connection(state, tcp, peer, tls).await });
    }
}

fn new_conn_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn connection(state: Arc<NodeState>, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
    let _ = tcp.set_nodelay(true);
    state.open.fetch_add(1, Ordering::AcqRel);
    let open = OpenGuard(state.clone());
    let peer_trusted = state.trusted.contains(peer.ip());
    // Offloaded TLS: only the configured proxies may talk to the plain listener.
    if tls.is_none() && !peer_trusted {
        return;
    }
    let Some(admission) = admit(&state, peer, peer_trusted) else { return };
    let deadline = state.handshake_timeout();
    let read = async {
        let mut stream = match &tls {
            Some(acceptor) => ClientStream::tls(acceptor.accept(tcp).await.map_err(|_| HeadError::Closed)?),
            None => ClientStream::plain(tcp),
        };
        let head = http::read_head(&mut stream).await;
        Ok::<_, HeadError>((stream, head))
    };
    // Step 3: TLS plus the full head within the deadline, or the socket is closed.
    let (mut stream, head) = match tokio::time::timeout(deadline, read).await {
        Ok(Ok(x)) => x,
        _ => return,
    };
    let mut attempt = Attempt::new(new_conn_id(), peer);
    let (mut buf, head_len) = match head {
        Ok(x) => x,
        Err(HeadError::TooLarge) => return refuse(&state, &mut stream, &attempt, Refusal::HeadersTooLarge).await,
        Err(_) => return,
    };
    let rest = buf.split_off(head_len);
    let mut storage = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
    let head = match http::parse_head(&buf, &mut storage) {
        Ok(h) => h,
        Err(HeadError::TooLarge) => return refuse(&state, &mut stream, &attempt, Refusal::HeadersTooLarge).await,
        Err(_) => {
            attempt.reason = Some("malformed_head");
            return refuse(&state, &mut stream, &attempt, Refusal::BadHandshake).await;
        }
    };
    attempt.query_masked = head.query.map(palisade_policy::credentials::mask_query);

    // Non-upgrade endpoints.
    match (head.method, head.path) {
        ("GET", "/healthz") => return plain(&mut stream, 200, r#"{"status":"ok"}"#).await,
        ("GET", "/readyz") => {
            let (code, body) = if state.is_ready() { (200, r#"{"status":"ready"}"#) } else { (503, r#"{"status":"not_ready"}"#) };
            return plain(&mut stream, code, body).await;
        }
        _ => {}
    }
    let ip_slot = match admission {
        Admission::OverCap(refusal, _permit) => return refuse(&state, &mut stream, &attempt, refusal).await,
        Admission::Admitted { ip_slot } => ip_slot,
    };
    // No valid policy yet, or draining: fail closed.
    let Some(policy) = state.policy.load().filter(|_| !state.is_draining()) else {
        attempt.reason = Some(if state.is_draining() { "draining" } else { "no_policy" });
        return refuse(&state, &mut stream, &attempt, Refusal::Unavailable { retry_after: Duration::from_secs(5) }).await;
    };
    if (head.method, head.path) == ("POST", "/v1/tickets") {
        return mint_ticket(&state, &policy, &mut stream, &head, rest, &mut attempt).await;
    }
    if !head.has_token("upgrade", "websocket") && !state.routes.contains_key(head.path) {
        attempt.route = Some(head.path.chars().take(200).collect());
        return refuse(&state, &mut stream, &attempt, Refusal::NotFound).await;
    }

    match handshake::check(&state, &policy, &head, ip_slot, &mut attempt).await {
        Err(r) => refuse(&state, &mut stream, &attempt, r).await,
        Ok(mut accepted) => {
            // Step 12: an upstream route connects before the 101.
            let link = match &accepted.route.kind {
                RouteKind::Echo => None,
                RouteKind::Upstream(target) => {
                    match crate::upstream::connect(
                        target,
                        &accepted,
                        &attempt.conn_id,
                        &accepted.offered_protocols,
                        policy.limits.handshake_timeout,
                    )
                    .await
                    {
                        Ok(up) => {
                            accepted.app_protocol = up.protocol.clone();
                            Some(crate::session::UpstreamLink { upstream: up })
                        }
                        Err(e) => {
                            tracing::warn!(event = "upstream_unavailable", conn.id = %attempt.conn_id, http.route = %accepted.route.path, error = %e);
                            attempt.reason = Some("upstream_connect");
                            return refuse(&state, &mut stream, &attempt, Refusal::UpstreamUnavailable).await;
                        }
                    }
                }
            };
            upgrade(state, stream, rest, accepted, attempt, link, open).await;
        }
    }
}

/// Step 1: the global cap and, for direct clients, the per-IP cap. A connection over a
/// cap still gets a proper answer while the refusal lane has room; beyond that it is
/// closed at once, which is the cheapest thing to do under a flood.
fn admit(state: &Arc<NodeState>, peer: SocketAddr, peer_trusted: bool) -> Option<Admission> {
    let policy = state.policy.load();
    let (max, per_ip) = policy.as_ref().map_or((u64::MAX, u64::MAX), |p| (p.limits.max_connections, p.limits.per_ip_max_connections));
    let over = if state.open.load(Ordering::Acquire) > max {
        Some(Refusal::Unavailable { retry_after: Duration::from_secs(1) })
    } else if peer_trusted {
        return Some(Admission::Admitted { ip_slot: None });
    } else {
        match state.ip_slots.try_acquire(peer.ip(), per_ip) {
            Some(slot) => return Some(Admission::Admitted { ip_slot: Some(slot) }),
            None => Some(Refusal::TooManyConnections),
        }
    };
    let refusal = over?;
    state.refusal_lane.clone().try_acquire_owned().ok().map(|permit| Admission::OverCap(refusal, permit))
}

async fn plain(stream: &mut ClientStream, status: u16, body: &str) {
    let _ = http::write_response(stream, status, &[], "application/json", body.as_bytes()).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
}

async fn refuse(state: &NodeState, stream: &mut ClientStream, attempt: &Attempt, r: Refusal) {
    state.counters.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    attempt.emit(&state.id, false, r.status(), r.code());
    let extra = r.headers();
    let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = http::write_response(stream, r.status(), &headers, "application/json", r.body().as_bytes()).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
    })
    .await;
}

async fn upgrade(
    state: Arc<NodeState>,
    mut stream: ClientStream,
    rest: BytesMut,
    accepted: Accepted,
    attempt: Attempt,
    link: Option<crate::session::UpstreamLink>,
    open: OpenGuard,
) {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accepted.accept_key
    );
    if let Some(p) = &accepted.app_protocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    let reg = crate::session::register(&state, &accepted, attempt.conn_id.clone());
    let written = async {
        tokio::io::AsyncWriteExt::write_all(&mut stream, response.as_bytes()).await?;
        tokio::io::AsyncWriteExt::flush(&mut stream).await
    };
    if written.await.is_err() {
        state.registry.remove(&reg.conn_id);
        return;
    }
    state.counters.handshakes_accepted.fetch_add(1, Ordering::Relaxed);
    attempt.emit(&state.id, true, 101, "ok");
    stream.unread(rest);
    // The session gets a task of its own: this one was sized for the TLS handshake and
    // the request head, which an idle session should not keep.
    tokio::spawn(crate::session::run(state, stream, accepted, reg, link, open));
}

/// `POST /v1/tickets`: a bearer token (verified like a handshake token) buys a one-time
/// ticket, optionally bound to an Origin.
async fn mint_ticket(
    state: &NodeState,
    policy: &palisade_policy::CompiledPolicy,
    stream: &mut ClientStream,
    head: &Head<'_>,
    rest: BytesMut,
    attempt: &mut Attempt,
) {
    attempt.route = Some("/v1/tickets".into());
    let client = state.trusted.client_addr(attempt.peer.ip(), head.all("x-forwarded-for"));
    attempt.client = Some(client);
    if let Err(retry_after) = state.ip_rate.check(policy.limits.per_ip_rate, &client) {
        return refuse(state, stream, attempt, Refusal::RateLimited { retry_after }).await;
    }
    if !policy.carrier_enabled(palisade_policy::model::Carrier::Ticket) {
        attempt.reason = Some("tickets_disabled");
        return refuse(state, stream, attempt, Refusal::NotFound).await;
    }
    // Exactly one `Authorization: Bearer`, parsed like a handshake's header carrier.
    use palisade_policy::credentials::{self, CarrierInputs, Credential, Extracted};
    let inputs = CarrierInputs { authorization: head.all("authorization").collect(), ..Default::default() };
    let token = match credentials::extract(&inputs, &[palisade_policy::model::Carrier::Header]) {
        Extracted::One(Credential::Jwt { token, .. }) => token,
        Extracted::Ambiguous => return refuse(state, stream, attempt, Refusal::AmbiguousCredentials).await,
        _ => return refuse(state, stream, attempt, Refusal::CredentialsMissing).await,
    };
    attempt.carrier = Some("header");
    let claims = match crate::jwks::verify(&state.jwks, policy, &token, handshake::unix_now()).await {
        Ok(c) => c,
        Err(e) => {
            attempt.reason = Some(e.reason());
            return refuse(state, stream, attempt, Refusal::from(e)).await;
        }
    };
    attempt.subject = Some(claims.sub.clone());
    let len: usize = head.header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    if len > 4096 {
        attempt.reason = Some("body_too_large");
        return refuse(state, stream, attempt, Refusal::BadHandshake).await;
    }
    let origin = if len == 0 {
        None
    } else {
        let Ok(body) = http::read_body(stream, rest, len).await else { return };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            origin: Option<String>,
        }
        match serde_json::from_slice::<Req>(&body) {
            Ok(Req { origin: Some(o) }) if palisade_policy::origin::Origin::parse(&o).is_some() => Some(o),
            Ok(Req { origin: None }) => None,
            _ => {
                attempt.reason = Some("bad_ticket_request");
                return refuse(state, stream, attempt, Refusal::BadHandshake).await;
            }
        }
    };
    let ttl = policy.ticket_ttl_seconds;
    // With etcd unreachable tickets fail closed: no ticket rather than one the fleet may
    // not honour exactly once.
    let id = match state.tickets.mint(TicketRecord { claims, origin }, Duration::from_secs(ttl)).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(event = "ticket_store_unavailable", node = %state.id, error = %e);
            attempt.reason = Some("ticket_store_unavailable");
            return refuse(state, stream, attempt, Refusal::Unavailable { retry_after: Duration::from_secs(1) }).await;
        }
    };
    attempt.emit(&state.id, true, 201, "ticket_issued");
    let body = serde_json::json!({"ticket": id, "expires_in": ttl}).to_string();
    let _ = http::write_response(stream, 201, &[], "application/json", body.as_bytes()).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
}
