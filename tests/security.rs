//! Attacks on a real node, by raw clients over real TLS, each asserting the behaviour the
//! SPEC names: request heads with bare LFs, Ping floods from clients that never read,
//! clients that never answer a close, the ticket endpoint's deadline, rates and caps,
//! normalised ticket Origin binding, broken `X-Forwarded-For` and IPv6 /64 buckets, far
//! future `exp`, RFC 6455 violations, operator commands past a stalled upstream, `Send`
//! payloads that cannot fit a client's buffer, and SIGTERM for `palisade dev`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use palisade_node::config::RouteConfig;
use palisade_node::registry::{Command, ConnCounters, Selector};
use palisade_policy::Policy;
use palisade_proto::node::v1 as pb;
use palisade_testkit::{
    FIN, MASK, Message, OP_CLOSE, OP_PING, OP_TEXT, RawEnd, RawResponse, RawWriter, RawWs, TestKey, TestNode, close_payload, echo_route,
    eventually, masked, next_data, policy, raw_tls, refused, upgrade_request, ws_frame,
};
use serde_json::json;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");
/// The trusted proxy of the proxied tests (the node trusts 127.0.0.1/32).
const PROXY: [u8; 4] = [127, 0, 0, 1];
/// The session's close linger (SPEC section 4: every close waits at most 3 s).
const LINGER: Duration = Duration::from_secs(3);

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// An upgrade head for `/echo` from the app's Origin with a bearer token, plus `extra`
/// header lines (each ending in CRLF).
fn upgrade(token: &str, extra: &str) -> Vec<u8> {
    upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: Bearer {token}\r\n{extra}"))
}

fn trusting_proxy(c: &mut palisade_node::NodeConfig) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
}

async fn registered(node: &TestNode) -> Arc<ConnCounters> {
    let state = node.handle.state.clone();
    eventually(Duration::from_secs(5), "the session is registered", || {
        let state = state.clone();
        async move { state.registry().list(&Selector::All, None, 1).first().map(|i| i.counters.clone()) }
    })
    .await
}

/// Waits until the node has no session left; returns when it saw that.
async fn registry_empties(node: &TestNode, within: Duration) -> Instant {
    let state = node.handle.state.clone();
    eventually(within, "the registry is empty", || {
        let state = state.clone();
        async move { state.registry().is_empty().then(Instant::now) }
    })
    .await
}

/// Writes `frame` `count` times in 64 KiB writes, never reading; ends at the first
/// failed write (the node closed the socket) with when it failed.
fn flood(mut wr: RawWriter, frame: Vec<u8>, count: usize) -> tokio::task::JoinHandle<Result<(), Instant>> {
    tokio::spawn(async move {
        let per_write = (64 * 1024 / frame.len()).max(1);
        let chunk: Vec<u8> = frame.repeat(per_write);
        let mut sent = 0;
        while sent < count {
            let n = per_write.min(count - sent);
            if wr.send(&chunk[..n * frame.len()]).await.is_err() {
                return Err(Instant::now());
            }
            sent += n;
        }
        Ok(())
    })
}

// a) A head with a bare LF.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_request_heads_are_400_bad_handshake() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let t = key.token(json!({}));
    let cases: Vec<Vec<u8>> = vec![
        // httparse alone ends this head at `\n\n`: the Origin after it would be dropped
        // unseen and the rest replayed as WebSocket bytes.
        b"GET /echo HTTP/1.1\r\nHost: x\n\nOrigin: https://evil\r\n\r\n".to_vec(),
        // A whole valid upgrade before the bare `\n\n`, WebSocket-looking bytes after it.
        format!(
            "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\nAuthorization: Bearer {t}\n\nX-Smuggled: 1\r\n\r\n"
        )
        .into_bytes(),
        // A bare LF between two headers, and one ending the request line.
        upgrade_request("/echo", &format!("Origin: https://app.example.com\nAuthorization: Bearer {t}\r\n")),
        format!("GET /echo HTTP/1.1\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\nAuthorization: Bearer {t}\r\n\r\n").into_bytes(),
        // The probes and the ticket endpoint go through the same head parser.
        b"GET /healthz HTTP/1.1\r\nHost: x\n\n\r\n\r\n".to_vec(),
    ];
    for req in &cases {
        let r = node.raw(req).await;
        assert_eq!((r.status, r.code().as_str()), (400, "bad_handshake"), "{:?} got {r:?}", String::from_utf8_lossy(req));
    }
    // The same upgrade with CRLFs only is accepted.
    let mut ok = node.raw_ws(&upgrade(&t, "")).await;
    ok.send(&masked(OP_TEXT, b"crlf")).await.expect("send");
    assert_eq!(ok.next_data(Duration::from_secs(5)).await.expect("echo").payload, b"crlf");
}

// 1. Ping floods from a client that never reads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_over_the_ping_rate_gets_4029() {
    let key = TestKey::generate("k", "ES256");
    // Default message rate: 50 per second, burst 100; client Pings have a bucket of their own.
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let RawWs { mut reader, writer, .. } = node.raw_ws(&upgrade(&key.token(json!({})), "")).await;
    let counters = registered(&node).await;
    let pings = flood(writer, masked(OP_PING, b""), 200_000);
    registry_empties(&node, Duration::from_secs(5)).await;
    // The node stops reading: the flood either fit in the kernel's buffers or was reset.
    let _ = tokio::time::timeout(LINGER + Duration::from_secs(1), pings).await.expect("the flood ends").expect("join");
    assert_eq!(reader.close_code(Duration::from_secs(5)).await, Ok(4029), "ping rate limit");
    assert!(reader.end(Duration::from_secs(5)).await.is_closed(), "the node closed the socket");
    let peak = counters.buffered_peak.load(Ordering::Relaxed);
    assert!(peak <= 1024 * 1024, "queued bytes stayed under max_buffered_bytes: {peak}");
    assert!(node.handle.state.registry().is_empty());
}

fn tiny_buffer_policy(key: &TestKey) -> Policy {
    let mut p = policy(&[key]);
    // A ping rate that never trips: the Pongs' buffer is what stops the client.
    p.limits.messages.per_second = 1e9;
    p.limits.messages.burst = 1_000_000;
    p.limits.messages.max_buffered_bytes = 1024;
    p.limits.messages.max_bytes = 1024;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_past_the_buffer_gets_4013_with_bounded_memory() {
    let key = TestKey::generate("k", "ES256");
    let p = tiny_buffer_policy(&key);
    let node = TestNode::start(Some(&p), |_| {}).await;
    // A small receive window: the node's Pongs back up after a few MiB at most.
    let RawWs { mut reader, writer, .. } =
        RawWs::open(node.addr, node.tls.clone(), &upgrade(&key.token(json!({})), ""), None, Some(4096)).await.expect("101");
    let counters = registered(&node).await;
    // 200,000 Pings of 125 bytes: 25 MB of Pongs, far past any socket buffer.
    let pings = flood(writer, masked(OP_PING, &[0x55; 125]), 200_000);
    registry_empties(&node, Duration::from_secs(10)).await;
    // Read now, within the linger: what the kernel held, then the close.
    assert_eq!(reader.close_code(Duration::from_secs(5)).await, Ok(4013), "slow consumer");
    assert!(reader.end(Duration::from_secs(5)).await.is_closed(), "the node closed the socket");
    let ended = tokio::time::timeout(Duration::from_secs(5), pings).await.expect("the flood ends").expect("join");
    assert!(ended.is_err(), "the node stopped taking the flood and closed the socket");
    let peak = counters.buffered_peak.load(Ordering::Relaxed);
    // Pongs up to the limit, plus the node's own close frame (always queued).
    assert!(peak <= 1024 + 127, "queued bytes stayed under max_buffered_bytes: {peak}");
}

// 2. Clients that never answer the node's close.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_close_unanswered_ends_the_socket_within_the_linger() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let mut ws = node.raw_ws(&upgrade(&key.token(json!({})), "")).await;
    registered(&node).await;
    let t0 = Instant::now();
    let n = node.handle.state.registry().dispatch(&Selector::All, Command::Close { code: 4003, reason: "operator".into() });
    assert_eq!(n, 1);
    // Reading sends nothing: the node never gets a close reply.
    assert_eq!(ws.close_code(Duration::from_secs(2)).await, Ok(4003));
    let end = ws.end(LINGER + Duration::from_secs(2)).await;
    let took = t0.elapsed();
    assert!(end.is_closed(), "the socket was closed ({end:?})");
    assert!(took <= LINGER + Duration::from_secs(1), "closed {took:?} after the operator's close");
    assert!(node.handle.state.registry().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_close_unanswered_ends_the_socket_within_the_linger() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.per_second = 0.01;
    p.limits.messages.burst = 5;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let mut ws = node.raw_ws(&upgrade(&key.token(json!({})), "")).await;
    registered(&node).await;
    // Twenty messages in one write: the sixth is over the rate (4029).
    ws.send(&masked(OP_TEXT, b"m").repeat(20)).await.expect("send");
    let t0 = Instant::now();
    assert_eq!(ws.close_code(Duration::from_secs(2)).await, Ok(4029));
    let end = ws.end(LINGER + Duration::from_secs(2)).await;
    let took = t0.elapsed();
    assert!(end.is_closed(), "the socket was closed ({end:?})");
    assert!(took <= LINGER + Duration::from_secs(1), "closed {took:?} after the 4029");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_at_the_end_of_the_linger() {
    // The node's close frame cannot even be written (the client's window is full); the
    // socket is closed at the end of the linger all the same, which the client, still
    // writing and never reading, sees as a failed write.
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&tiny_buffer_policy(&key)), |_| {}).await;
    let RawWs { reader, writer, .. } =
        RawWs::open(node.addr, node.tls.clone(), &upgrade(&key.token(json!({})), ""), None, Some(4096)).await.expect("101");
    registered(&node).await;
    let pings = flood(writer, masked(OP_PING, &[0x55; 125]), 200_000);
    let closed_at = registry_empties(&node, Duration::from_secs(10)).await;
    let ended = tokio::time::timeout(LINGER + Duration::from_secs(3), pings).await.expect("the flood ends").expect("join");
    let failed_at = ended.expect_err("the node closed the socket under the flood");
    let took = failed_at.saturating_duration_since(closed_at);
    assert!(took <= LINGER + Duration::from_secs(1), "the socket was closed {took:?} after the session ended");
    drop(reader);
}

// 3. The ticket endpoint: deadline, per-user rate, per-IP cap for proxied clients.

fn ticket_request(token: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn ticket_of(r: &RawResponse) -> String {
    assert_eq!(r.status, 201, "minted: {r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    v["ticket"].as_str().expect("ticket").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_body_that_never_comes_is_cut_at_the_handshake_deadline() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.handshake_timeout_ms = 1000;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let req =
        format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 4096\r\n\r\n", key.token(json!({})));
    let t0 = Instant::now();
    let r = node.raw(req.as_bytes()).await;
    let took = t0.elapsed();
    assert!(took <= Duration::from_secs(2), "answered and closed {took:?} after the request (deadline 1 s)");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_handshake"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_counts_against_the_per_user_rate() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_user.handshakes_per_second = 0.001;
    p.limits.per_user.burst = 1;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let t = key.token(json!({}));
    ticket_of(&node.raw(&ticket_request(&t, "", "")).await);
    let second = node.raw(&ticket_request(&t, "", "")).await;
    assert_eq!((second.status, second.code().as_str()), (429, "rate_limited"), "{second:?}");
    assert!(second.header("retry-after").is_some());
    // The same bucket as a handshake's.
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&t))]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_through_a_trusted_proxy_is_under_the_per_ip_cap() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.max_connections = 2;
    let node = TestNode::start(Some(&p), trusting_proxy).await;
    let t = key.token(json!({}));
    let xff = "X-Forwarded-For: 203.0.113.7\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(RawWs::open(node.addr, node.tls.clone(), &upgrade(&t, xff), Some(PROXY.into()), None).await.expect("101"));
    }
    let r = raw_tls(node.addr, node.tls.clone(), &ticket_request(&t, "", xff), Some(PROXY.into())).await;
    assert_eq!((r.status, r.code().as_str()), (429, "too_many_connections"), "{r:?}");
    // Another forwarded client mints.
    let other = raw_tls(node.addr, node.tls.clone(), &ticket_request(&t, "", "X-Forwarded-For: 203.0.113.8\r\n"), Some(PROXY.into())).await;
    ticket_of(&other);
}

// 4. Ticket Origin binding on normalised origins.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_origin_binding_compares_normalised_origins() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let t = key.token(json!({}));
    let body = r#"{"origin":"https://App.Example.com:443"}"#;
    let ticket = ticket_of(&node.raw(&ticket_request(&t, body, "")).await);
    let (mut ws, _) = node.ws(&format!("/echo?ticket={ticket}"), &[("Origin", "https://app.example.com")]).await.expect("same origin");
    ws.send(Message::Text("ticketed".into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("ticketed".into())));
    // Another origin the policy allows (`https://*.example.com`) is not the bound one.
    let ticket = ticket_of(&node.raw(&ticket_request(&t, body, "")).await);
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[("Origin", "https://other.example.com")]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    // The same ticket was consumed by that attempt: not even the bound origin gets it now.
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[("Origin", "https://app.example.com")]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
}

// 5. X-Forwarded-For from a trusted proxy: broken chains, IPv6 /64 buckets.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_forwarded_for_from_a_trusted_proxy_is_400() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), trusting_proxy).await;
    let t = key.token(json!({}));
    let mut not_utf8 = upgrade(&t, "");
    not_utf8.truncate(not_utf8.len() - 2);
    not_utf8.extend_from_slice(b"X-Forwarded-For: \xff\xfe\r\n\r\n");
    for req in [not_utf8, upgrade(&t, "X-Forwarded-For: garbage\r\n"), upgrade(&t, "X-Forwarded-For: 203.0.113.7, garbage\r\n")] {
        let r = raw_tls(node.addr, node.tls.clone(), &req, Some(PROXY.into())).await;
        assert_eq!((r.status, r.code().as_str()), (400, "bad_handshake"), "{:?}: {r:?}", String::from_utf8_lossy(&req));
    }
    assert!(node.handle.state.registry().is_empty(), "nothing was attributed to the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_share_the_per_ip_cap_per_64() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.max_connections = 1;
    let node = TestNode::start(Some(&p), trusting_proxy).await;
    let t = key.token(json!({}));
    let open = |xff: &str| {
        let req = upgrade(&t, &format!("X-Forwarded-For: {xff}\r\n"));
        let (addr, tls) = (node.addr, node.tls.clone());
        async move { RawWs::open(addr, tls, &req, Some(PROXY.into()), None).await }
    };
    let _first = open("2001:db8::1").await.expect("the /64's first client");
    let second = open("2001:db8::2").await.err().expect("the same /64 is over the cap");
    assert_eq!((second.status, second.code().as_str()), (429, "too_many_connections"));
    let _other = open("2001:db8:0:1::1").await.expect("another /64 has a cap of its own");
    let clients: Vec<IpAddr> = node.handle.state.registry().list(&Selector::All, None, 10).iter().map(|i| i.client).collect();
    assert!(clients.contains(&"2001:db8::1".parse().expect("ip")) && clients.contains(&"2001:db8:0:1::1".parse().expect("ip")));
}

// 6. Far-future `exp`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_exp_sessions_open_echo_and_leave_no_ghost() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    for exp in [json!(1e19), json!(u64::MAX)] {
        let t = key.token(json!({"exp": exp}));
        let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&t))]).await.unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        ws.send(Message::Text("far".into())).await.expect("send");
        assert_eq!(next_data(&mut ws).await, Some(Message::Text("far".into())), "exp {exp}");
        assert_eq!(node.handle.state.registry().len(), 1);
        ws.close(None).await.expect("close");
        registry_empties(&node, Duration::from_secs(5)).await;
    }
}

// 7. RFC 6455 from a raw client.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6455_violations_get_1002_or_1007_and_the_socket_closed() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let t = key.token(json!({}));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked client frame", ws_frame(FIN | OP_TEXT, b"hi", None), 1002),
        ("RSV1 set", ws_frame(FIN | 0x40 | OP_TEXT, b"hi", Some(MASK)), 1002),
        ("opcode 0x3", ws_frame(FIN | 0x3, b"", Some(MASK)), 1002),
        ("Ping of 126 bytes", masked(OP_PING, &[0; 126]), 1002),
        ("fragmented Ping", ws_frame(OP_PING, b"x", Some(MASK)), 1002),
        ("close with a 1-byte payload", masked(OP_CLOSE, &[0x03]), 1002),
        ("close with code 1005", masked(OP_CLOSE, &close_payload(1005, "")), 1002),
        ("text that is not UTF-8", masked(OP_TEXT, &[b'a', 0xff, 0xfe]), 1007),
    ];
    for (what, frame, want) in cases {
        let mut ws = node.raw_ws(&upgrade(&t, "")).await;
        ws.send(&frame).await.expect("send");
        assert_eq!(ws.close_code(Duration::from_secs(5)).await, Ok(want), "{what}");
        let end = ws.end(LINGER + Duration::from_secs(1)).await;
        assert!(end.is_closed(), "{what}: the node closed the socket ({end:?})");
    }
    // The control: a masked text frame is echoed, and a close is answered.
    let mut ws = node.raw_ws(&upgrade(&t, "")).await;
    ws.send(&masked(OP_TEXT, b"hello")).await.expect("send");
    let f = ws.next_data(Duration::from_secs(5)).await.expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice(), f.masked, f.rsv), (OP_TEXT, &b"hello"[..], false, 0));
    ws.send(&masked(OP_CLOSE, &close_payload(1000, ""))).await.expect("close");
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Ok(1000));
    assert_eq!(ws.end(Duration::from_secs(5)).await, RawEnd::Eof, "a clean end after a close handshake");
    registry_empties(&node, Duration::from_secs(5)).await;
}

// 8. Operator commands past a stalled upstream.

/// A WebSocket upstream that completes the handshake (a 101 by hand) and then never
/// reads again, with a small receive buffer so that the node's upstream queue fills.
async fn stalled_upstream() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let listener = sock.listen(16).expect("listen");
    let url = format!("ws://{}/stalled", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut b).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let key = text
                .lines()
                .find_map(|l| {
                    l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if tcp.write_all(resp.as_bytes()).await.is_ok() {
                held.push(tcp); // never read again
            }
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_close_is_not_delayed_by_a_stalled_upstream() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.per_second = 1e9;
    p.limits.messages.burst = 1_000_000;
    let (up_url, _upstream) = stalled_upstream().await;
    let node = TestNode::start(Some(&p), move |c| {
        c.routes.push(RouteConfig { path: "/app".into(), echo: false, upstream: Some(up_url), ..echo_route() });
    })
    .await;
    let req = upgrade_request("/app", &format!("Origin: https://app.example.com\r\nAuthorization: Bearer {}\r\n", key.token(json!({}))));
    let RawWs { mut reader, mut writer, .. } = node.raw_ws(&req).await;
    registered(&node).await;
    // Messages until the node stops reading the client: the writes stop making progress.
    let written = Arc::new(AtomicU64::new(0));
    let last_progress = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (w, lp) = (written.clone(), last_progress.clone());
    let msg = masked(OP_TEXT, &[b'x'; 16 * 1024]);
    let pusher = tokio::spawn(async move {
        while writer.send(&msg).await.is_ok() {
            w.fetch_add(msg.len() as u64, Ordering::Relaxed);
            lp.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    });
    eventually(Duration::from_secs(8), "backpressure: the client's writes stall", || {
        let (w, lp) = (written.load(Ordering::Relaxed), last_progress.load(Ordering::Relaxed));
        let stalled = w > 0 && epoch.elapsed().as_millis() as u64 > lp + 500;
        async move { stalled.then_some(()) }
    })
    .await;
    assert!(!node.handle.state.registry().is_empty(), "the session is still up under backpressure");
    let t0 = Instant::now();
    let n = node.handle.state.registry().dispatch(&Selector::All, Command::Close { code: 4003, reason: "operator".into() });
    assert_eq!(n, 1);
    assert_eq!(reader.close_code(Duration::from_secs(1)).await, Ok(4003), "the close reached the client within 1 s");
    assert!(t0.elapsed() <= Duration::from_secs(1));
    pusher.abort();
    registry_empties(&node, Duration::from_secs(5)).await;
}

// b) `Send` payloads that could never fit a client's outgoing buffer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_larger_than_the_client_buffer_is_refused_at_the_rpc() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.max_buffered_bytes = 4096;
    p.limits.messages.max_bytes = 4096;
    let node = TestNode::start_with_control(Some(&p), |_| {}).await;
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({}))))]).await.expect("open");
    registered(&node).await;
    let mut ctl = node.control().await;
    let all = Some(pb::Selector { target: Some(pb::selector::Target::All(true)) });
    let e = ctl
        .send(pb::SendRequest { selector: all.clone(), payload: vec![b'a'; 8192], binary: false })
        .await
        .expect_err("a payload over max_buffered_bytes");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("payload"), "names the field: {}", e.message());
    // The session was not closed for it: a message that fits is delivered.
    let ok = ctl.send(pb::SendRequest { selector: all, payload: b"fits".to_vec(), binary: false }).await.expect("send").into_inner();
    assert_eq!(ok.delivered, 1);
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("fits".into())));
}

// c) `palisade dev` and SIGTERM.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_drains_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["dev", "--dir", dir.path().to_str().expect("path"), "--nodes", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn palisade dev");
    let endpoints = dir.path().join("endpoints.json");
    eventually(Duration::from_secs(30), "endpoints.json (the dev fleet is ready)", || {
        let ready = std::fs::read_to_string(&endpoints).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()).is_some();
        async move { ready.then_some(()) }
    })
    .await;
    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits after SIGTERM").expect("status");
    assert_eq!(status.code(), Some(0), "drains and exits 0 like Ctrl-C");
}

// CORS on the ticket endpoint (SPEC section 5): allowed origins only, never a wildcard,
// never credentials.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_cors_answers_allowed_origins_only() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/tickets HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
    };
    let r = node.raw(preflight("https://app.example.com").as_bytes()).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    assert_eq!(r.header("access-control-allow-methods").as_deref(), Some("POST"));
    assert!(r.header("access-control-allow-headers").is_some_and(|h| h.contains("authorization")));
    assert_eq!(r.header("access-control-allow-credentials"), None, "no credentials reflected");
    assert_eq!(r.header("vary").as_deref(), Some("Origin"));
    // A foreign origin: refused, and nothing that lets the browser read anything.
    let r = node.raw(preflight("https://evil.example.net").as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (403, "origin_not_allowed"));
    assert_eq!(r.header("access-control-allow-origin"), None);
    // The POST itself names the allowed origin; a foreign one is refused before minting.
    let token = key.token(json!({}));
    let post = |origin: &str| {
        format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n")
    };
    let r = node.raw(post("https://app.example.com").as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    assert_ne!(r.header("access-control-allow-origin").as_deref(), Some("*"));
    let r = node.raw(post("https://evil.example.net").as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (403, "origin_not_allowed"));
    // Native clients send no Origin: no CORS, and minting works.
    let r = node
        .raw(format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), None);
}
