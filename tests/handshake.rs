//! The handshake gate (SPEC section 3) against a real node over real TLS, with a real
//! WebSocket client (tokio-tungstenite) and, for requests no WebSocket client would
//! send, a raw HTTP/1.1 client over TLS.

use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_testkit::{Message, TestKey, TestNode, eventually, next_data, policy, refused, upgrade_request};
use serde_json::json;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn echo_once(ws: &mut palisade_testkit::Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
    match next_data(ws).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_with_every_algorithm_family() {
    let keys: Vec<TestKey> = [("hs", "HS256"), ("rs", "RS256"), ("ps", "PS256"), ("es", "ES256"), ("ed", "EdDSA"), ("es384", "ES384")]
        .iter()
        .map(|(k, a)| TestKey::generate(k, a))
        .collect();
    let refs: Vec<&TestKey> = keys.iter().collect();
    let node = TestNode::start(Some(&policy(&refs)), |_| {}).await;
    for key in &keys {
        let token = key.token(json!({}));
        // Header.
        let (mut ws, _) =
            node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&token))]).await.unwrap_or_else(|e| panic!("{}: {e}", key.alg));
        echo_once(&mut ws, key.alg).await;
        // Subprotocol: the app protocol is echoed, never the token.
        let offered = format!("chat.v1, bearer.{token}");
        let (mut ws, resp) = node.ws("/echo", &[ORIGIN, ("Sec-WebSocket-Protocol", &offered)]).await.expect("subprotocol");
        let selected = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(selected, "chat.v1");
        assert!(!format!("{:?}", resp.headers()).contains(&token));
        echo_once(&mut ws, "sub").await;
        // Query, both names.
        let (mut ws, _) = node.ws(&format!("/echo?access_token={token}"), &[ORIGIN]).await.expect("query");
        echo_once(&mut ws, "q").await;
        let (mut ws, _) = node.ws(&format!("/echo?token={token}"), &[ORIGIN]).await.expect("query alias");
        echo_once(&mut ws, "q2").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_table_rows() {
    let key = TestKey::generate("k1", "ES256");
    let mut p = policy(&[&key]);
    p.revocations = serde_yaml_ng::from_str(r#"[{ sub: "mallory" }, { jti: "stolen-1" }]"#).expect("yaml");
    let node = TestNode::start(Some(&p), |_| {}).await;
    let good = key.token(json!({}));
    let auth = bearer(&good);

    // 400 bad_handshake: an invalid key (raw: no WebSocket client sends this).
    let req = String::from_utf8(upgrade_request("/echo", "")).expect("utf8").replace("dGhlIHNhbXBsZSBub25jZQ==", "not-a-key");
    let r = node.raw(req.as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (400, "bad_handshake"));
    assert!(r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")));
    // 426 upgrade_required with Sec-WebSocket-Version: 13.
    let req = String::from_utf8(upgrade_request("/echo", "")).expect("utf8").replace("Version: 13", "Version: 8");
    let r = node.raw(req.as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (426, "upgrade_required"));
    assert_eq!(r.header("sec-websocket-version").as_deref(), Some("13"));
    // 431 headers_too_large, from a real client.
    let big = "x".repeat(9000);
    let r = refused(node.ws("/echo", &[ORIGIN, ("X-Big", &big)]).await);
    assert_eq!((r.status, r.code.as_str()), (431, "headers_too_large"));
    // 404 not_found.
    let r = refused(node.ws("/nope", &[ORIGIN, ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (404, "not_found"));
    // 403 origin_not_allowed.
    let r = refused(node.ws("/echo", &[("Origin", "https://evil.net"), ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "origin_not_allowed"));
    // 401 credentials_missing with WWW-Authenticate.
    let r = refused(node.ws("/echo", &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (401, "credentials_missing"));
    assert_eq!(r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    // 400 ambiguous_credentials.
    let r = refused(node.ws(&format!("/echo?access_token={good}"), &[ORIGIN, ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (400, "ambiguous_credentials"));
    // 403 token_invalid / token_expired / token_revoked.
    let bad_sig = format!("{}x", &good[..good.len() - 1]);
    for (token, code) in [
        (bad_sig, "token_invalid"),
        (key.token(json!({"exp": palisade_testkit::now() - 3600})), "token_expired"),
        (key.token(json!({"sub": "mallory"})), "token_revoked"),
        (key.token(json!({"jti": "stolen-1"})), "token_revoked"),
    ] {
        let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&token))]).await);
        assert_eq!((r.status, r.code.as_str()), (403, code));
    }
    // 403 ticket_invalid.
    let r = refused(node.ws("/echo?ticket=AAAAAAAAAAAAAAAAAAAAAA", &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    // The node survived all of it.
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("still serving");
    echo_once(&mut ws, "alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_policy_fails_closed_with_503() {
    let node = TestNode::start(None, |_| {}).await;
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", "Bearer x.y.z")]).await);
    assert_eq!((r.status, r.code.as_str()), (503, "unavailable"));
    assert!(r.headers.get("retry-after").is_some());
    let ready = node.raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ready.status, 503);
    let health = node.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(health.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_node_refuses_with_503() {
    let key = TestKey::generate("k1", "ES256");
    // A long drain window, and two live sessions that keep the node draining (they are
    // closed at random points of the window) while the new handshake is refused.
    let node = TestNode::start(Some(&policy(&[&key])), |c| c.drain_deadline_seconds = 120).await;
    let ready = node.raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(ready.status, 200);
    let _a = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({"sub": "a"}))))]).await.expect("session a");
    let _b = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({"sub": "b"}))))]).await.expect("session b");
    let _drain = node.handle.start_drain();
    eventually(Duration::from_secs(5), "/readyz turns 503", || async {
        (node.raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.status == 503).then_some(())
    })
    .await;
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({}))))]).await);
    assert_eq!((r.status, r.code.as_str()), (503, "unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_confusion_none_and_unknown_kid_are_token_invalid() {
    use base64::Engine as _;
    let rsa = TestKey::generate("rsa", "RS256");
    let node = TestNode::start(Some(&policy(&[&rsa])), |_| {}).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": "alice", "exp": palisade_testkit::now() + 600});
    // HS256 signed with the RSA public key PEM as the HMAC secret.
    let secret = base64::engine::general_purpose::STANDARD.encode(rsa.doc.public_key_pem.as_deref().unwrap_or_default());
    let forged = palisade_policy::mint::SigningKey::from_text(&secret, Some("HS256")).expect("k").sign(Some("rsa"), &claims).expect("sign");
    let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","kid":"rsa"}"#), b64.encode(claims.to_string()));
    let other = TestKey::generate("other", "RS256");
    for t in [forged, none, other.token(json!({}))] {
        let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&t))]).await);
        assert_eq!((r.status, r.code.as_str()), (403, "token_invalid"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_issuer_audience() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.auth.issuer = Some("https://auth.example.com".into());
    p.auth.audience = vec!["palisade".into()];
    p.auth.leeway_seconds = 30;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let now = palisade_testkit::now();
    let base = json!({"iss": "https://auth.example.com", "aud": "palisade"});
    let with = |extra: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().expect("obj") {
            c[k] = v.clone();
        }
        key.token(c)
    };
    // Expired 10 s ago: within the leeway, accepted.
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&with(json!({"exp": now - 10}))))]).await.is_ok());
    for (t, code) in [
        (with(json!({"exp": now - 120})), "token_expired"),
        (with(json!({"aud": "other"})), "token_invalid"),
        (with(json!({"iss": "https://evil.example.com"})), "token_invalid"),
        (with(json!({"nbf": now + 600})), "token_invalid"),
    ] {
        let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&t))]).await);
        assert_eq!((r.status, r.code.as_str()), (403, code));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_exact_wildcard_and_missing() {
    let key = TestKey::generate("k", "ES256");
    let auth = bearer(&key.token(json!({})));
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    for (origin, ok) in [
        ("https://app.example.com", true),
        ("https://a.example.com", true),
        ("https://A.Example.com:443", true),
        ("https://example.com.evil.net", false),
        ("http://a.example.com", false),
        ("https://example.com", false),
        ("null", false),
    ] {
        let r = node.ws("/echo", &[("Origin", origin), ("Authorization", &auth)]).await;
        if ok {
            assert!(r.is_ok(), "{origin} refused");
        } else {
            let r = refused(r);
            assert_eq!((r.status, r.code.as_str()), (403, "origin_not_allowed"), "{origin}");
        }
    }
    // Missing Origin: refused by default...
    let r = refused(node.ws("/echo", &[("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "origin_not_allowed"));
    // ...accepted with allow_missing.
    let mut p = policy(&[&key]);
    p.origins.allow_missing = true;
    let native = TestNode::start(Some(&p), |_| {}).await;
    assert!(native.ws("/echo", &[("Authorization", &auth)]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit_gives_429_with_retry_after() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.handshakes_per_second = 0.1;
    p.limits.per_ip.burst = 2;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let auth = bearer(&key.token(json!({})));
    for _ in 0..2 {
        assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.is_ok());
    }
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"));
    let retry: u64 = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Another client address is not limited.
    let req = upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: {auth}\r\n"));
    let other = palisade_testkit::raw_tls(node.addr, node.tls.clone(), &req, Some([127, 0, 0, 2].into())).await;
    assert_eq!(other.status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_rate_limit_and_cap() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_user.handshakes_per_second = 0.1;
    p.limits.per_user.burst = 3;
    p.limits.per_user.max_connections = 2;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let alice = bearer(&key.token_for("alice"));
    let (_a1, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &alice)]).await.expect("1");
    let (_a2, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &alice)]).await.expect("2");
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &alice)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "too_many_connections"));
    // The bucket is now empty too: the next one is rate limited, with Retry-After.
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &alice)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"));
    assert!(r.headers.get("retry-after").is_some());
    // Bob is unaffected.
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token_for("bob")))]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_global_caps() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.max_connections = 1;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let auth = bearer(&key.token(json!({})));
    let (_held, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("first");
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "too_many_connections"));

    let mut p = policy(&[&key]);
    p.limits.max_connections = 1;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let (_held, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("first");
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await);
    assert_eq!((r.status, r.code.as_str()), (503, "unavailable"));
    assert!(r.headers.get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_only_from_trusted_proxies() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.max_connections = 1;
    let node = TestNode::start(Some(&p), |c| c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")]).await;
    let auth = bearer(&key.token(json!({})));
    let head = |xff: &str| {
        upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: {auth}\r\nX-Forwarded-For: {xff}\r\n"))
    };
    // Through the trusted proxy 127.0.0.1, the cap applies to the forwarded address.
    let held = open_raw(&node, &head("198.51.100.1, 203.0.113.7"), Some([127, 0, 0, 1].into())).await;
    assert_eq!(held.1.status, 101);
    let second = open_raw(&node, &head("203.0.113.8"), Some([127, 0, 0, 1].into())).await;
    assert_eq!(second.1.status, 101, "another forwarded client is not capped");
    let third = open_raw(&node, &head("203.0.113.7"), Some([127, 0, 0, 1].into())).await;
    assert_eq!((third.1.status, third.1.code().as_str()), (429, "too_many_connections"));
    // From an untrusted peer (127.0.0.3) the header is ignored: the peer is the client.
    let u1 = open_raw(&node, &head("203.0.113.50"), Some([127, 0, 0, 3].into())).await;
    assert_eq!(u1.1.status, 101);
    let u2 = open_raw(&node, &head("203.0.113.51"), Some([127, 0, 0, 3].into())).await;
    assert_eq!((u2.1.status, u2.1.code().as_str()), (429, "too_many_connections"));
}

/// Sends a raw head and reads the response head (keeps the stream open on a 101).
async fn open_raw(
    node: &TestNode,
    req: &[u8],
    local: Option<std::net::IpAddr>,
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, palisade_testkit::RawResponse) {
    let (s, resp, _) = open_raw_with_rest(node, req, local).await;
    (s, resp)
}

/// As [`open_raw`], also returning what was read past a 101's head (the first frames,
/// when the server answered quickly).
async fn open_raw_with_rest(
    node: &TestNode,
    req: &[u8],
    local: Option<std::net::IpAddr>,
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, palisade_testkit::RawResponse, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = palisade_testkit::connect_from(node.addr, local).await;
    let connector = tokio_rustls::TlsConnector::from(node.tls.clone());
    let mut s = connector.connect(rustls_pki_types::ServerName::try_from("localhost").expect("n"), tcp).await.expect("tls");
    s.write_all(req).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("response in time").expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // A refusal's body follows its head.
    let mut resp = palisade_testkit::parse_raw(&buf);
    if resp.status != 101 {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        buf.extend_from_slice(&rest);
        resp = palisade_testkit::parse_raw(&buf);
        return (s, resp, Vec::new());
    }
    let rest = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or_else(Vec::new, |i| buf[i + 4..].to_vec());
    (s, resp, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_closed_after_the_deadline_while_others_connect() {
    use tokio::io::AsyncReadExt;
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.handshake_timeout_ms = 500;
    let node = TestNode::start(Some(&p), |_| {}).await;
    // One socket that never sends anything, one that stops halfway through the head.
    let mut silent = palisade_testkit::connect_from(node.addr, None).await;
    let started = tokio::time::Instant::now();
    let (mut partial, _) = {
        use tokio::io::AsyncWriteExt;
        let tcp = palisade_testkit::connect_from(node.addr, None).await;
        let connector = tokio_rustls::TlsConnector::from(node.tls.clone());
        let mut s = connector.connect(rustls_pki_types::ServerName::try_from("localhost").expect("n"), tcp).await.expect("tls");
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        (s, ())
    };
    // An honest client connects fine meanwhile.
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({}))))]).await.expect("honest");
    echo_once(&mut ws, "honest").await;
    // Both stalled sockets are closed by the node within deadline + 1 s.
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(1500), silent.read(&mut b)).await.expect("silent socket closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    let n = tokio::time::timeout(Duration::from_millis(1500), partial.read(&mut b)).await.expect("partial socket closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "no response for a stalled head");
    assert!(started.elapsed() >= Duration::from_millis(450), "closed before the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_single_use_and_origin_bound() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let token = key.token(json!({"sub": "tina"}));
    let body = r#"{"origin":"https://app.example.com"}"#;
    let req = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = node.raw(req.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let ticket = v["ticket"].as_str().expect("ticket").to_owned();
    assert!(ticket.len() >= 22, "at least 128 bits");
    assert_eq!(v["expires_in"], 30);
    // Wrong origin consumes and fails.
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[("Origin", "https://b.example.com")]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    // A fresh one works once, with the right origin.
    let r = node.raw(req.as_bytes()).await;
    let ticket: String = serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["ticket"].as_str().expect("t").into();
    let (mut ws, _) = node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await.expect("ticket accepted");
    echo_once(&mut ws, "ticketed").await;
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    // Minting needs a valid token.
    let r = node.raw(b"POST /v1/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!((r.status, r.code().as_str()), (401, "credentials_missing"));
    let two = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    let r = node.raw(two.as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (400, "ambiguous_credentials"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_live_sessions() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let auth = bearer(&key.token(json!({})));
    let (mut live, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("live");
    let before = peer_cert_cn(&node).await;
    assert_eq!(before, "localhost");
    node.pki.issue_wss("reloaded");
    // File mtimes have a coarse granularity on some filesystems: move them on explicitly
    // rather than waiting a second.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for f in [&node.pki.key_path, &node.pki.cert_path] {
        std::fs::File::options().write(true).open(f).expect("open").set_modified(later).expect("mtime");
    }
    eventually(Duration::from_secs(5), "new handshakes see the new certificate", || async {
        (peer_cert_cn(&node).await == "reloaded").then_some(())
    })
    .await;
    echo_once(&mut live, "still here").await;
}

async fn peer_cert_cn(node: &TestNode) -> String {
    let tcp = palisade_testkit::connect_from(node.addr, None).await;
    let connector = tokio_rustls::TlsConnector::from(node.tls.clone());
    let s = connector.connect(rustls_pki_types::ServerName::try_from("localhost").expect("n"), tcp).await.expect("tls");
    let der = s.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("cert").to_vec();
    // The CN is the printable string after the commonName OID (2.5.4.3) in the subject.
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    let positions: Vec<usize> = der.windows(5).enumerate().filter(|(_, w)| *w == oid).map(|(i, _)| i).collect();
    let i = *positions.last().expect("cn");
    let len = der[i + 6] as usize;
    String::from_utf8_lossy(&der[i + 7..i + 7 + len]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_listener_serves_trusted_proxies_only() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |c| {
        c.tls.mode = palisade_node::config::TlsMode::Offloaded;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/echo", node.addr.port());
    let auth = bearer(&key.token(json!({})));
    let (mut ws, _) = palisade_testkit::ws_connect(&url, &[ORIGIN, ("Authorization", &auth), ("X-Forwarded-For", "203.0.113.9")], None)
        .await
        .expect("trusted proxy");
    echo_once(&mut ws, "plain").await;
    // An untrusted peer gets nothing at all.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = palisade_testkit::connect_from(node.addr, Some([127, 0, 0, 9].into())).await;
    let _ = s.write_all(&upgrade_request("/echo", "")).await;
    let mut b = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut b)).await.expect("closed");
    assert!(b.is_empty(), "untrusted peer got {:?}", String::from_utf8_lossy(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_first_frame_is_not_lost() {
    // A client that sends its first frame right behind the head: the bytes read past the
    // head must reach the WebSocket codec.
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let auth = bearer(&key.token(json!({})));
    let mut req = upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: {auth}\r\n"));
    // A masked text frame "hi".
    let mask = [1u8, 2, 3, 4];
    req.extend_from_slice(&[0x81, 0x82]);
    req.extend_from_slice(&mask);
    req.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let (mut s, resp, mut got) = open_raw_with_rest(&node, &req, None).await;
    assert_eq!(resp.status, 101);
    use tokio::io::AsyncReadExt;
    // The echo may have come in the same read as the 101's head.
    while got.len() < 4 {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("echo").expect("read");
        assert!(n > 0, "closed before the echo");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..], &[0x81, 0x02, b'h', b'i']);
}

/// SPEC section 12: 5,000 stalled sockets (slowloris) do not stop 200 honest clients, and
/// each stalled one is closed within the handshake timeout plus 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_stalled_sockets_do_not_stop_honest_clients() {
    use tokio::io::AsyncReadExt;
    const STALLED: usize = 5000;
    const HONEST: usize = 200;
    // Two descriptors per stalled socket live in this process (client and node side).
    let limit = rlimit::increase_nofile_limit(20_000).expect("raise the open-file limit");
    assert!(limit >= 2 * STALLED as u64 + 1000, "open-file limit {limit} is too low for this test");
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.handshake_timeout_ms = 3000;
    p.limits.per_ip.max_connections = 20_000;
    p.limits.max_connections = 20_000;
    let node = std::sync::Arc::new(TestNode::start(Some(&p), |_| {}).await);
    // Open the stalled sockets (they never send a byte), spread over a few source addresses.
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let src = std::net::IpAddr::from([127, 0, 1, (i % 8) as u8 + 1]);
        stalled.push((palisade_testkit::connect_from(node.addr, Some(src)).await, tokio::time::Instant::now()));
    }
    // Honest clients, 20 at a time, while the stalled sockets are held.
    let token = bearer(&key.token(json!({})));
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(20));
    let mut honest = tokio::task::JoinSet::new();
    for i in 0..HONEST {
        let (node, token, sem) = (node.clone(), token.clone(), sem.clone());
        honest.spawn(async move {
            let _permit = sem.acquire().await.expect("permit");
            let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &token)]).await.expect("an honest client connects");
            echo_once(&mut ws, &format!("honest {i}")).await;
        });
    }
    let mut ok = 0;
    while let Some(r) = honest.join_next().await {
        r.expect("honest client");
        ok += 1;
    }
    assert_eq!(ok, HONEST);
    // Every stalled socket is closed by the node within the deadline + 1 s of its connect.
    let mut closers = tokio::task::JoinSet::new();
    for (mut s, opened) in stalled {
        closers.spawn(async move {
            let mut b = [0u8; 16];
            let limit = opened + Duration::from_millis(3000 + 1000);
            let r = tokio::time::timeout_at(limit, s.read(&mut b)).await;
            matches!(r, Ok(Ok(0)) | Ok(Err(_)))
        });
    }
    let mut closed = 0;
    while let Some(r) = closers.join_next().await {
        if r.expect("join") {
            closed += 1;
        }
    }
    assert_eq!(closed, STALLED, "stalled sockets closed within handshake_timeout + 1 s");
}

/// The node's TLS suite order wins over the client's (crates/node/src/tls.rs): a client
/// preferring AES-256 (rustls' own default order) gets AES-128-GCM with SHA-256, and a
/// client offering AES-256 only is still served with it.
#[tokio::test]
async fn the_node_prefers_aes_128_gcm_and_still_serves_other_suites() {
    use tokio_rustls::rustls;
    let node = TestNode::start(None, |_| {}).await;
    let connect = |cfg: std::sync::Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(node.addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.expect("TLS handshake");
        tls.get_ref().1.negotiated_cipher_suite().expect("a suite").suite()
    };
    let default_order = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(default_order.cipher_suites[0].suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384, "the client prefers AES-256");
    assert_eq!(connect(node.tls.clone()).await, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut only_256 = rustls::crypto::aws_lc_rs::default_provider();
    only_256.cipher_suites.retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(connect(node.pki.client_tls_with(only_256)).await, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
}

/// SPEC 3, step 4: an upgrade is a GET over HTTP/1.1 with `Upgrade: websocket` and
/// `Connection: upgrade`; a request on a route that is anything else is 400, a plain
/// request for a path that is no route is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_head_must_be_a_websocket_upgrade() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let extra = format!("Origin: https://app.example.com\r\nAuthorization: {}\r\n", bearer(&key.token(json!({}))));
    let good = String::from_utf8(upgrade_request("/echo", &extra)).expect("utf8");
    assert_eq!(open_raw(&node, good.as_bytes(), None).await.1.status, 101, "the request unchanged upgrades");
    for (what, req) in [
        ("POST", good.replacen("GET ", "POST ", 1)),
        ("HTTP/1.0", good.replacen("HTTP/1.1", "HTTP/1.0", 1)),
        ("no Upgrade header", good.replace("Upgrade: websocket\r\n", "")),
        ("Upgrade: h2c", good.replace("Upgrade: websocket", "Upgrade: h2c")),
        ("Connection: keep-alive", good.replace("Connection: Upgrade", "Connection: keep-alive")),
        ("two keys", good.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n")),
    ] {
        assert_ne!(req, good, "{what}: the request was changed");
        let r = node.raw(req.as_bytes()).await;
        assert_eq!((r.status, r.code().as_str()), (400, "bad_handshake"), "{what}");
    }
    let r = node.raw(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}

/// SPEC 3: checks run cheapest first. The route comes before anything about the client,
/// the per-IP rate before the Origin and the credentials, the Origin before the
/// credentials: a forged token is not verified, and a ticket not consumed, for a request
/// a cheaper check refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheap_checks_refuse_before_credentials_are_spent() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.handshakes_per_second = 0.01;
    p.limits.per_ip.burst = 3;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let good = key.token(json!({}));
    let forged = bearer(&format!("{}x", &good[..good.len() - 1]));
    let evil = ("Origin", "https://evil.net");
    // A ticket bound to the app's origin, minted from another address (its own bucket).
    let body = r#"{"origin":"https://app.example.com"}"#;
    let mint = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = palisade_testkit::raw_tls(node.addr, node.tls.clone(), mint.as_bytes(), Some([127, 0, 0, 2].into())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ticket: String = serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["ticket"].as_str().expect("ticket").into();

    // From 127.0.0.1, whose bucket holds three handshakes. An unknown path is refused
    // before the Origin, the credentials and the bucket are looked at.
    for _ in 0..3 {
        let r = refused(node.ws("/nope", &[evil, ("Authorization", &forged)]).await);
        assert_eq!((r.status, r.code.as_str()), (404, "not_found"));
    }
    // A foreign Origin is refused before the credentials: no credential, or a ticket that
    // the verification would refuse (it is bound to another origin) and must not consume.
    let r = refused(node.ws("/echo", &[evil]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "origin_not_allowed"), "not 401: the Origin comes first");
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[evil]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "origin_not_allowed"), "not ticket_invalid: the ticket was not looked at");
    let (mut ws, _) = node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await.expect("the ticket is still unused");
    echo_once(&mut ws, "ticketed").await;
    // The bucket is empty now (three handshakes, the 404s took none): a forged token is
    // refused by the rate limit, not by a signature check.
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &forged)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"));
    let r = refused(node.ws("/echo", &[evil, ("Authorization", &forged)]).await);
    assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"), "the rate before the Origin");
    // From an address with tokens left, the same forged token is what verification refuses.
    let req = upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: {forged}\r\n"));
    let r = palisade_testkit::raw_tls(node.addr, node.tls.clone(), &req, Some([127, 0, 0, 3].into())).await;
    assert_eq!((r.status, r.code().as_str()), (403, "token_invalid"));
}

/// SPEC 3, step 9: each carrier is enabled or disabled by policy, and a disabled carrier
/// is as if absent. With the header alone: a token in the query or the subprotocol is no
/// credential (401, and beside a header no ambiguity), a ticket is not read, and
/// `POST /v1/tickets` is no endpoint (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_the_policy_disables_are_ignored() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.auth.carriers = vec![palisade_policy::model::Carrier::Header];
    let node = TestNode::start(Some(&p), |_| {}).await;
    let token = key.token(json!({}));
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&token))]).await.expect("the header carrier");
    echo_once(&mut ws, "header").await;
    for path in [format!("/echo?access_token={token}"), format!("/echo?token={token}"), "/echo?ticket=AAAAAAAAAAAAAAAAAAAAAA".into()] {
        let r = refused(node.ws(&path, &[ORIGIN]).await);
        assert_eq!((r.status, r.code.as_str()), (401, "credentials_missing"), "{path}");
    }
    let offered = format!("chat.v1, bearer.{token}");
    let r = refused(node.ws("/echo", &[ORIGIN, ("Sec-WebSocket-Protocol", &offered)]).await);
    assert_eq!((r.status, r.code.as_str()), (401, "credentials_missing"), "subprotocol");
    let (mut ws, _) =
        node.ws(&format!("/echo?access_token={token}"), &[ORIGIN, ("Authorization", &bearer(&token))]).await.expect("one carrier");
    echo_once(&mut ws, "not ambiguous").await;
    let req = format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n");
    let r = node.raw(req.as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}

/// SPEC 3, step 2: TLS 1.2 and 1.3. A client that speaks TLS 1.2 only is upgraded.
#[tokio::test]
async fn a_tls_1_2_client_is_upgraded() {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |_| {}).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(node.pki.ca.cert_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12)).connect(name, tcp).await.expect("a TLS 1.2 handshake");
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let req = upgrade_request("/echo", &format!("Origin: https://app.example.com\r\nAuthorization: {}\r\n", bearer(&key.token(json!({})))));
    s.write_all(&req).await.expect("write");
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("in time").expect("read");
        assert!(n > 0, "closed before the response head");
        head.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(palisade_testkit::parse_raw(&head).status, 101);
}
