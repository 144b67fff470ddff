//! The gate: SPEC section 3, steps 1 to 13, for every connection the WSS listener
//! accepts, one call per step (the checks themselves are in `handshake.rs`). Every
//! attempt that gets as far as a request head produces exactly one audit record, written
//! here from the gate's result.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use palisade_policy::CompiledPolicy;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::audit::Attempt;
use crate::handshake::{self as step, Accepted, Refused, truncate};
use crate::http::{self, ClientStream, HeadError};
use crate::limiter::Slot;
use crate::refusal::Refusal;
use crate::session::UpstreamLink;
use crate::state::{NodeState, OpenGuard};

/// What step 1 decided: serve the connection, or only tell it that it is over a cap.
enum Admission {
    Admitted { ip_slot: Option<Slot<IpAddr>> },
    OverCap(Refusal, tokio::sync::OwnedSemaphorePermit),
}

/// How an attempt ended, for the audit record and the response.
enum Passed {
    /// `GET /healthz`, `GET /readyz`: not an attempt, no audit record.
    Probe(u16, &'static str),
    /// `POST /v1/tickets` answered 201 with this body (and CORS for this origin).
    Ticket(String, Option<String>),
    /// `OPTIONS /v1/tickets`: a CORS preflight, for an allowed origin.
    Preflight(Option<String>),
    Upgrade(Box<(Accepted, Arc<CompiledPolicy>, Option<UpstreamLink>)>),
}

pub async fn gate(state: Arc<NodeState>, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
    let open = OpenGuard::new(&state);
    let Some(admission) = accept(&state, peer, tls.is_some()) else { return }; // 1
    let deadline = tokio::time::Instant::now() + state.handshake_timeout();
    let (mut stream, head_read) = match tls_and_head(tcp, tls, deadline).await {
        Some(x) => x,
        None => return,
    }; // 2, 3
    let (mut buf, head_len) = head_read.unwrap_or_default();
    let rest = buf.split_off(head_len);
    let mut attempt = Attempt::new(peer, state.tracer());
    let mut lane_permit = None;
    let result = async {
        if head_len == 0 {
            return Err(Refusal::HeadersTooLarge.into());
        }
        let mut storage = [httparse::EMPTY_HEADER; http::MAX_HEADERS];
        let head = http::parse_head(&buf, &mut storage).map_err(|e| match e {
            HeadError::TooLarge => Refusal::HeadersTooLarge.into(),
            _ => Refusal::BadHandshake.because("malformed_head"),
        })?; // 4
        attempt.query_masked = head.query.map(palisade_policy::credentials::mask_query);
        attempt.route = Some(truncate(head.path, 200));
        match (head.method, head.path) {
            ("GET", "/healthz") => return Ok(Passed::Probe(200, r#"{"status":"ok"}"#)),
            ("GET", "/readyz") if state.is_ready() => return Ok(Passed::Probe(200, r#"{"status":"ready"}"#)),
            ("GET", "/readyz") => return Ok(Passed::Probe(503, r#"{"status":"not_ready"}"#)),
            _ => {}
        }
        let mut ip_slot = match admission {
            Admission::OverCap(refusal, permit) => {
                // Held until the refusal is written: the lane bounds those answers.
                lane_permit = Some(permit);
                return Err(refusal.into());
            }
            Admission::Admitted { ip_slot } => ip_slot,
        };
        let policy = step::serving(&state)?;
        if head.path == "/v1/tickets" && matches!(head.method, "POST" | "OPTIONS") {
            attempt.origin = head.header("origin").map(|o| truncate(o, 200));
            let cors = crate::tickets::cors_origin(&policy, &head)?;
            if head.method == "OPTIONS" {
                return Ok(Passed::Preflight(cors));
            }
            let id = Box::pin(crate::tickets::endpoint(&state, &policy, &mut stream, &head, rest.clone(), deadline, ip_slot, &mut attempt))
                .await?;
            return Ok(Passed::Ticket(id, cors));
        }
        if !head.has_token("upgrade", "websocket") && !state.routes.contains_key(head.path) {
            return Err(Refusal::NotFound.into());
        }
        let accept_key = step::valid_upgrade(&head)?; // 4
        let client = step::client_address(&state, &head, peer.ip())?; // 5
        attempt.client = Some(client);
        if ip_slot.is_none() {
            ip_slot = Some(step::per_ip_cap(&state, &policy, client)?); // 1, for proxied clients
        }
        let route = step::route(&state, &head)?; // 6
        step::per_ip_rate(&state, &policy, client)?; // 7
        attempt.origin = head.header("origin").map(|o| truncate(o, 200));
        step::origin(&policy, &head)?; // 8
        let credential = step::carrier(&head, &policy.carriers)?; // 9
        attempt.carrier = Some(credential.carrier().as_str());
        // The awaits below are boxed: their futures (a JWKS fetch, etcd, the upstream's
        // connect and TLS) would otherwise sit inline in every connection's task, which
        // tokio copies at spawn and at completion.
        let claims = Box::pin(step::verify(&state, &policy, credential, &head)).await?; // 10
        attempt.subject = Some(claims.sub.clone());
        step::access(&policy, &route.path, &claims).map_err(|(r, rule)| {
            attempt.access_rule = Some(rule);
            r
        })?; // 10a
        let user_slot = step::per_user(&state, &policy, &claims.sub)?; // 11
        let fleet_slot = Box::pin(step::fleet_cap(&state, &policy, &claims.sub, &attempt.conn_id)).await?; // 11, fleet-wide
        let (mut app_protocol, offered_protocols) = step::subprotocols(&head);
        let upstream = Box::pin(step::upstream(&route, &claims, client, &attempt.conn_id, &offered_protocols, &policy)).await?; // 12
        if let Some(up) = &upstream {
            app_protocol = up.protocol.clone();
        }
        let accepted =
            Accepted { route, claims, client, app_protocol, accept_key, _ip_slot: ip_slot, _user_slot: user_slot, _fleet_slot: fleet_slot };
        Ok(Passed::Upgrade(Box::new((accepted, policy, upstream.map(|upstream| UpstreamLink { upstream })))))
    }
    .await;

    match result {
        Ok(Passed::Probe(status, body)) => respond(&mut stream, status, &[], body).await,
        Ok(Passed::Ticket(body, cors)) => {
            attempt.emit(&state, true, 201, "ticket_issued", "");
            let extra = cors.as_deref().map(|o| crate::tickets::cors_headers(o, false)).unwrap_or_default();
            let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            respond(&mut stream, 201, &headers, &body).await;
        }
        Ok(Passed::Preflight(cors)) => {
            let extra = cors.as_deref().map(|o| crate::tickets::cors_headers(o, true)).unwrap_or_default();
            let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            respond(&mut stream, 204, &headers, "").await;
        }
        Err(Refused { refusal, reason }) => {
            state.counters.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            attempt.emit(&state, false, refusal.status(), refusal.code(), reason);
            let extra = refusal.headers();
            let headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let _ = tokio::time::timeout(Duration::from_secs(2), respond(&mut stream, refusal.status(), &headers, &refusal.body())).await;
        }
        Ok(Passed::Upgrade(up)) => {
            let (accepted, policy, link) = *up;
            upgrade(state, stream, rest, accepted, policy, attempt, link, open).await // 13
        }
    }
}

/// Step 1: the global cap and, for direct clients, the per-IP cap. A connection over a
/// cap still gets a proper answer while the refusal lane has room; beyond that it is
/// closed at once, which is the cheapest thing to do under a flood. The plain listener
/// (TLS offloaded) serves the trusted proxies only.
fn accept(state: &NodeState, peer: SocketAddr, tls: bool) -> Option<Admission> {
    let peer_trusted = state.trusted.contains(peer.ip());
    if !tls && !peer_trusted {
        return None;
    }
    let (max, per_ip) =
        state.policy.with(|p| p.map_or((u64::MAX, u64::MAX), |p| (p.limits.max_connections, p.limits.per_ip_max_connections)));
    let over = if state.open.load(Ordering::Acquire) > max {
        Refusal::Unavailable { retry_after: Duration::from_secs(1) }
    } else if peer_trusted {
        return Some(Admission::Admitted { ip_slot: None });
    } else {
        match state.ip_slots.try_acquire(state.ip_key(peer.ip()), per_ip) {
            Some(slot) => return Some(Admission::Admitted { ip_slot: Some(slot) }),
            None => Refusal::TooManyConnections,
        }
    };
    state.refusal_lane.clone().try_acquire_owned().ok().map(|permit| Admission::OverCap(over, permit))
}

/// Steps 2 and 3: TLS plus the full request head within the deadline, or the socket is
/// closed (`None`). A head over 8 KiB comes back as `Err` so that it still gets its 431.
async fn tls_and_head(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    deadline: tokio::time::Instant,
) -> Option<(ClientStream, Result<(BytesMut, usize), ()>)> {
    let read = async {
        let mut stream = match &tls {
            Some(acceptor) => ClientStream::tls(acceptor.accept(tcp).await.ok()?),
            None => ClientStream::plain(tcp),
        };
        let head = http::read_head(&mut stream).await;
        Some((stream, head))
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Some((stream, Ok(head)))) => Some((stream, Ok(head))),
        Ok(Some((stream, Err(HeadError::TooLarge)))) => Some((stream, Err(()))),
        _ => None,
    }
}

async fn respond(stream: &mut ClientStream, status: u16, headers: &[(&str, &str)], body: &str) {
    let _ = http::write_response(stream, status, headers, "application/json", body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Step 13: the session is registered, then the 101 is written (the application
/// subprotocol echoed, never the `bearer.` entry), then the session runs in a task of
/// its own (this one was sized for the TLS handshake and the request head).
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    state: Arc<NodeState>,
    mut stream: ClientStream,
    rest: BytesMut,
    mut accepted: Accepted,
    policy: Arc<CompiledPolicy>,
    mut attempt: Attempt,
    link: Option<UpstreamLink>,
    open: OpenGuard,
) {
    // Taken, not borrowed: the session has no use for them, and holds no copy.
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        std::mem::take(&mut accepted.accept_key)
    );
    if let Some(p) = accepted.app_protocol.take() {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(&p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    let reg = crate::session::register(&state, &accepted, &attempt);
    let written = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await
    };
    if written.await.is_err() {
        state.registry.remove(&reg.conn_id);
        attempt.emit(&state, false, 101, "client_gone", "write_101");
        return;
    }
    state.counters.handshakes_accepted.fetch_add(1, Ordering::Relaxed);
    attempt.emit(&state, true, 101, "ok", "");
    stream.unread(rest);
    tokio::spawn(crate::session::run(state, stream, accepted, policy, reg, link, open));
}
