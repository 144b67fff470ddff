//! Live sessions (SPEC section 4) with a real client: every close code, refresh and
//! expiry, message rules, the upstream bridge with a recording upstream, slow consumers,
//! revocations, operator commands, egress and drain.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use palisade_node::config::RouteConfig;
use palisade_node::registry::{Command, Selector};
use palisade_testkit::{Message, TestKey, TestNode, UpstreamServer, Ws, close_code, echo_route, eventually, next_data, policy};
use serde_json::json;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn auth(t: &str) -> String {
    format!("Bearer {t}")
}

fn route(path: &str, f: impl FnOnce(&mut RouteConfig)) -> RouteConfig {
    let mut r = echo_route();
    r.path = path.into();
    f(&mut r);
    r
}

async fn text(ws: &mut Ws) -> String {
    match next_data(ws).await {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, s: &str) {
    ws.send(Message::Text(s.into())).await.expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_readers_alive_and_idle_clients_get_4008() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.idle_timeout_seconds = 2;
    p.limits.ping_interval_seconds = 1;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let a = auth(&key.token(json!({})));
    let (mut live, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("live");
    let (mut idle, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("idle");
    // The live client reads (and so answers pings) past the idle timeout.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, live.next()).await {
        if matches!(m, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 2, "server pings every ping_interval ({pings})");
    send(&mut live, "still").await;
    assert_eq!(text(&mut live).await, "still");
    // The idle one never read: it was closed with 4008.
    assert_eq!(close_code(&mut idle, Duration::from_secs(5)).await, Some(4008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warning_refresh_and_4001() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.auth.refresh.warning_seconds = 2;
    p.auth.refresh.grace_seconds = 1;
    p.auth.leeway_seconds = 0;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let exp = palisade_testkit::now() + 2;
    let short = key.token(json!({"exp": exp}));
    let (mut expiring, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&short))]).await.expect("expiring");
    let (mut refreshed, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&short))]).await.expect("refreshed");

    for ws in [&mut expiring, &mut refreshed] {
        let warn: serde_json::Value = serde_json::from_str(&text(ws).await).expect("json");
        assert_eq!(warn, json!({"type": "auth_expiring", "exp": exp}));
    }

    // Refresh with another subject: refused, the session keeps its old expiry.
    send(&mut refreshed, &json!({"type": "auth", "token": key.token_for("mallory")}).to_string()).await;
    assert_eq!(text(&mut refreshed).await, r#"{"type":"auth_error","error":"subject_mismatch"}"#);
    send(&mut refreshed, r#"{"type":"auth","token":"garbage"}"#).await;
    assert_eq!(text(&mut refreshed).await, r#"{"type":"auth_error","error":"token_invalid"}"#);
    // A valid refresh for the same subject.
    let new_exp = palisade_testkit::now() + 600;
    send(&mut refreshed, &json!({"type": "auth", "token": key.token(json!({"exp": new_exp, "jti": "refreshed-jti"}))}).to_string()).await;
    let ok: serde_json::Value = serde_json::from_str(&text(&mut refreshed).await).expect("json");
    assert_eq!(ok, json!({"type": "auth_ok", "exp": new_exp}));

    // Without a refresh: 4001 after exp + grace.
    assert_eq!(close_code(&mut expiring, Duration::from_secs(6)).await, Some(4001));
    // The refreshed one lives past its first token's exp + grace.
    send(&mut refreshed, r#"{"type":"ping"}"#).await;
    assert_eq!(text(&mut refreshed).await, r#"{"type":"pong"}"#);
    assert!(palisade_testkit::now() > exp, "checked after the first token's expiry and grace");
    send(&mut refreshed, "after").await;
    assert_eq!(text(&mut refreshed).await, "after");
    // The session is now found by its new token's jti.
    let reg = node.handle.state.registry();
    assert_eq!(reg.list(&Selector::Session("refreshed-jti".into()), None, 10).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rules_1009_4029_1008_and_schema() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.max_bytes = 1024;
    p.limits.messages.per_second = 1.0;
    p.limits.messages.burst = 3;
    let node = TestNode::start(Some(&p), move |c| c.routes.push(route("/text", |r| r.allow_binary = false))).await;
    let a = auth(&key.token(json!({})));
    let open = |path: &'static str| {
        let a = a.clone();
        let node = &node;
        async move { node.ws(path, &[ORIGIN, ("Authorization", &a)]).await.expect("open").0 }
    };

    let mut ws = open("/echo").await;
    send(&mut ws, &"x".repeat(1025)).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1009));

    let mut ws = open("/echo").await;
    for i in 0..6 {
        let _ = ws.send(Message::Text(format!("m{i}").into())).await;
    }
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4029));

    let mut ws = open("/text").await;
    send(&mut ws, "text is fine").await;
    assert_eq!(text(&mut ws).await, "text is fine");
    ws.send(Message::Binary(vec![1u8, 2, 3].into())).await.expect("send");
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violations_are_answered_then_close_1008() {
    let key = TestKey::generate("k", "ES256");
    let p = policy(&[&key]);
    let schema = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(schema.path(), r#"{"type":"object","required":["kind"],"properties":{"kind":{"enum":["chat","typing"]}}}"#)
        .expect("schema");
    let schema_path = schema.path().to_owned();
    let node = TestNode::start(Some(&p), move |c| c.routes.push(route("/schema", |r| r.schema = Some(schema_path)))).await;
    let (mut ws, _) = node.ws("/schema", &[ORIGIN, ("Authorization", &auth(&key.token(json!({}))))]).await.expect("open");
    send(&mut ws, r#"{"kind":"chat","text":"hi"}"#).await;
    assert_eq!(text(&mut ws).await, r#"{"kind":"chat","text":"hi"}"#);
    send(&mut ws, r#"{"kind":"shout"}"#).await;
    assert_eq!(text(&mut ws).await, r#"{"type":"error","error":"schema_violation"}"#);
    send(&mut ws, "not json").await;
    assert_eq!(text(&mut ws).await, r#"{"type":"error","error":"schema_violation"}"#);
    send(&mut ws, r#"{"nope":1}"#).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1008), "repeated violations close 1008");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_push_and_operator_commands() {
    let key = TestKey::generate("k", "ES256");
    let p = policy(&[&key]);
    let node = TestNode::start(Some(&p), |_| {}).await;
    let state = node.handle.state.clone();
    let mallory_token = key.token_for("mallory");
    let (mut mallory, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&mallory_token))]).await.expect("m");
    // A reconnect with the same token is answered by the node's token cache.
    drop(node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&mallory_token))]).await.expect("reconnect"));
    assert_eq!(state.policy().load().expect("policy").verifier.token_cache_stats().map(|s| s.0), Some(1));
    let (mut bob, _) =
        node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&key.token(json!({"sub": "bob", "jti": "bob-1"}))))]).await.expect("b");
    let (mut carol, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&key.token_for("carol")))]).await.expect("c");

    // A new policy revoking mallory closes her session with 4003 within 1 s.
    let mut p2 = p.clone();
    p2.revocations = serde_yaml_ng::from_str(r#"[{ sub: "mallory" }]"#).expect("yaml");
    let pushed = tokio::time::Instant::now();
    state.policy().apply(&p2, 2).expect("apply");
    assert_eq!(close_code(&mut mallory, Duration::from_secs(1)).await, Some(4003));
    assert!(pushed.elapsed() < Duration::from_secs(1));
    // Her token, remembered under the old policy, is refused under the new one.
    let r = palisade_testkit::refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&mallory_token))]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "token_revoked"));

    // Server push reaches bob; an operator disconnect by session closes him with its code.
    assert_eq!(state.registry().dispatch(&Selector::Subject("bob".into()), Command::Send { payload: "news".into(), binary: false }), 1);
    assert_eq!(text(&mut bob).await, "news");
    let listed = state.registry().list(&Selector::All, None, 10);
    assert_eq!(listed.len(), 2);
    assert!(listed.windows(2).all(|w| w[0].conn_id < w[1].conn_id), "sorted for paging");
    let page = state.registry().list(&Selector::All, Some(&listed[0].conn_id), 10);
    assert_eq!(page.len(), 1);
    assert_eq!(state.registry().dispatch(&Selector::Session("bob-1".into()), Command::Close { code: 4100, reason: "bye".into() }), 1);
    assert_eq!(close_code(&mut bob, Duration::from_secs(1)).await, Some(4100));
    // Carol was never touched.
    send(&mut carol, "ok").await;
    assert_eq!(text(&mut carol).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bridge_identity_stripping_and_close_codes() {
    let up = UpstreamServer::start().await;
    let key = TestKey::generate("k", "ES256");
    let up_url = up.url();
    let node = TestNode::start(Some(&policy(&[&key])), move |c| {
        c.routes.push(route("/app", |r| {
            r.echo = false;
            r.upstream = Some(up_url);
        }))
    })
    .await;
    let token = key.token(json!({"sub": "alice", "role": "admin"}));
    let offered = format!("chat.v1, bearer.{token}");
    let (mut ws, resp) = node.ws("/app", &[ORIGIN, ("Sec-WebSocket-Protocol", &offered)]).await.expect("bridged");
    assert_eq!(resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("chat.v1"));
    send(&mut ws, "hi").await;
    assert_eq!(text(&mut ws).await, "up:hi");
    ws.send(Message::Binary(vec![9u8, 8, 7].into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Binary(vec![9u8, 8, 7].into())));

    let seen = up.requests();
    let r = &seen[0];
    assert_eq!(r.header("x-palisade-subject"), Some("alice"));
    assert!(r.header("x-palisade-connection").is_some_and(|c| !c.is_empty()));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    use base64::Engine as _;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(r.header("x-palisade-claims").expect("claims")).expect("b64");
    let claims: serde_json::Value = serde_json::from_slice(&claims).expect("json");
    assert_eq!((claims["sub"].as_str(), claims["role"].as_str()), (Some("alice"), Some("admin")));
    assert_eq!(r.header("sec-websocket-protocol"), Some("chat.v1"), "the bearer entry is stripped");
    assert!(r.header("authorization").is_none());
    let signature = token.rsplit('.').next().expect("sig");
    assert!(!format!("{r:?}").contains(signature), "no credential reached the upstream");

    // The upstream's close code reaches the client.
    send(&mut ws, "close:4321").await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4321));

    // Header and query carriers are stripped as well.
    let (mut ws, _) = node.ws(&format!("/app?access_token={token}"), &[ORIGIN]).await.expect("query");
    send(&mut ws, "q").await;
    assert_eq!(text(&mut ws).await, "up:q");
    let (mut ws2, _) = node.ws("/app", &[ORIGIN, ("Authorization", &auth(&token))]).await.expect("header");
    send(&mut ws2, "h").await;
    assert_eq!(text(&mut ws2).await, "up:h");
    for r in up.requests() {
        assert_eq!(r.path, "/socket");
        assert!(r.header("authorization").is_none());
        assert!(!format!("{r:?}").contains(signature));
    }

    // An upstream that breaks the protocol (a masked frame from a server) is 1011, and
    // nothing of the frame reaches the client first.
    send(&mut ws2, "masked").await;
    match tokio::time::timeout(Duration::from_secs(5), ws2.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("expected the 1011 close first, got {other:?}"),
    }

    // An upstream failure (TCP dropped without a close) is 1011 for the client.
    send(&mut ws, "drop").await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1011));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), move |c| {
        c.routes.push(route("/app", |r| {
            r.echo = false;
            r.upstream = Some(format!("ws://{closed}/"));
        }))
    })
    .await;
    let r = palisade_testkit::refused(node.ws("/app", &[ORIGIN, ("Authorization", &auth(&key.token(json!({}))))]).await);
    assert_eq!((r.status, r.code.as_str()), (502, "upstream_unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_gets_4013_with_bounded_memory() {
    let up = UpstreamServer::start().await;
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    let max = 256 * 1024;
    p.limits.messages.max_buffered_bytes = max;
    let up_url = up.url();
    let node = TestNode::start(Some(&p), move |c| {
        c.routes.push(route("/app", |r| {
            r.echo = false;
            r.upstream = Some(up_url);
        }))
    })
    .await;
    let state = node.handle.state.clone();
    let (mut ws, _) = node.ws("/app", &[ORIGIN, ("Authorization", &auth(&key.token(json!({}))))]).await.expect("open");
    // 2,000 x 16 KiB = 32 MiB from the upstream to a client that does not read.
    send(&mut ws, "flood:2000").await;
    eventually(Duration::from_secs(5), "the session is registered", || async { (!state.registry().is_empty()).then_some(()) }).await;
    let counters = state.registry().list(&Selector::All, None, 1)[0].counters.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !state.registry().is_empty() && tokio::time::Instant::now() < deadline {
        assert!(state.registry().buffered_bytes() <= max);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(state.registry().is_empty(), "the slow consumer was closed");
    let peak = counters.buffered_peak.load(Ordering::Relaxed);
    assert!(peak <= max, "buffered bytes stayed under max_buffered_bytes: peak {peak}");
    assert!(peak > max - 32 * 1024, "the queue did fill up to the limit: peak {peak}");
    // Reading now, the client finds what the kernel held, then the close: 4013.
    assert_eq!(close_code(&mut ws, Duration::from_secs(20)).await, Some(4013));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_alert_disconnects_the_subject() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.egress.alert_bytes_per_minute = 1000;
    p.egress.action = palisade_policy::model::EgressAction::Disconnect;
    let node = TestNode::start(Some(&p), |_| {}).await;
    // The windows are the clock's minutes: start early in one, so that the reconnect
    // below falls in the same window.
    let into_minute = palisade_testkit::now() % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let a = auth(&key.token_for("hog"));
    let (mut one, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("1");
    let (mut two, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("2");
    send(&mut one, &"x".repeat(600)).await;
    assert_eq!(text(&mut one).await.len(), 600);
    send(&mut one, &"y".repeat(600)).await;
    assert_eq!(close_code(&mut one, Duration::from_secs(2)).await, Some(4003));
    assert_eq!(close_code(&mut two, Duration::from_secs(2)).await, Some(4003), "every session of the subject");
    assert_eq!(node.handle.state.counters().egress_alerts.load(Ordering::Relaxed), 1);
    // A reconnect in the same window buys no fresh allowance: the first thing sent to it
    // closes it with 4003 (no second alert).
    let (mut again, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("the handshake itself is allowed");
    send(&mut again, "more").await;
    assert_eq!(close_code(&mut again, Duration::from_secs(2)).await, Some(4003), "still over in this window");
    assert_eq!(node.handle.state.counters().egress_alerts.load(Ordering::Relaxed), 1, "one alert per window");
    // Another subject is not affected.
    let (mut other, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth(&key.token_for("light")))]).await.expect("other");
    send(&mut other, "hi").await;
    assert_eq!(text(&mut other).await, "hi");

    // `action: log` (the default) alerts once and disconnects nobody.
    let mut p = policy(&[&key]);
    p.egress.alert_bytes_per_minute = 1000;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("open");
    for _ in 0..3 {
        send(&mut ws, &"z".repeat(600)).await;
        assert_eq!(text(&mut ws).await.len(), 600);
    }
    assert_eq!(node.handle.state.counters().egress_alerts.load(Ordering::Relaxed), 1, "one alert per window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_every_session_with_1001_and_no_reset() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start(Some(&policy(&[&key])), |c| c.drain_deadline_seconds = 1).await;
    let a = auth(&key.token(json!({})));
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("open").0);
    }
    let handle = &node.handle;
    let (left, codes) = tokio::join!(handle.drain(), async {
        let mut codes = Vec::new();
        for ws in &mut clients {
            let code = close_code(ws, Duration::from_secs(5)).await;
            // After the close frame the stream ends cleanly: no reset.
            let after = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("ends");
            match after {
                None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => {}
                Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => panic!("connection error after close: {e}"),
                Some(other) => panic!("unexpected after close: {other:?}"),
            }
            codes.push(code);
        }
        codes
    });
    assert!(codes.iter().all(|c| *c == Some(1001)), "{codes:?}");
    assert_eq!(left, 0, "all closed within the drain window");
    // The drained node accepts nobody.
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_upstream_is_verified_against_its_ca_file() {
    let key = TestKey::generate("k", "ES256");
    let upstream_pki = palisade_testkit::Pki::new();
    let up = UpstreamServer::start_tls(&upstream_pki).await;
    let (url, ca) = (up.wss_url(), upstream_pki.ca_path.clone());
    let other_ca = palisade_testkit::Pki::new();
    let (url2, wrong_ca) = (up.wss_url(), other_ca.ca_path.clone());
    let node = TestNode::start(Some(&policy(&[&key])), move |c| {
        c.routes.push(route("/secure", |r| {
            r.echo = false;
            r.upstream = Some(url);
            r.upstream_ca = Some(ca);
        }));
        c.routes.push(route("/mismatch", |r| {
            r.echo = false;
            r.upstream = Some(url2);
            r.upstream_ca = Some(wrong_ca);
        }));
    })
    .await;
    let a = auth(&key.token(json!({"sub": "tls-user"})));
    let (mut ws, _) = node.ws("/secure", &[ORIGIN, ("Authorization", &a)]).await.expect("bridged over TLS");
    send(&mut ws, "secret").await;
    assert_eq!(text(&mut ws).await, "up:secret");
    assert_eq!(up.requests()[0].header("x-palisade-subject"), Some("tls-user"));
    // An upstream certificate from another CA is refused: 502, not a bridge.
    let r = palisade_testkit::refused(node.ws("/mismatch", &[ORIGIN, ("Authorization", &a)]).await);
    assert_eq!((r.status, r.code.as_str()), (502, "upstream_unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_count_against_the_rate_and_limits_follow_pushes() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.per_second = 0.5;
    p.limits.messages.burst = 3;
    p.limits.messages.max_bytes = 1024;
    let node = TestNode::start(Some(&p), |_| {}).await;
    let a = auth(&key.token(json!({})));
    // In-band pings are not free: a ping flood is a message flood.
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("open");
    for _ in 0..6 {
        let _ = ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await;
    }
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4029));
    // A push raising max_bytes applies to a session opened before it.
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &a)]).await.expect("open");
    let mut p2 = p.clone();
    p2.limits.messages.max_bytes = 4096;
    node.handle.state.policy().apply(&p2, 2).expect("apply");
    let big = "b".repeat(3000);
    // The first frame after the push is judged by it: the session compares the policy
    // generation before each frame, without waiting for the notifier's command.
    send(&mut ws, &big).await;
    assert_eq!(text(&mut ws).await, big);
}

/// A bridged session relays the whole messages of one read as a run (the node's fast
/// path): frames sent in one write arrive in one read, and every message rule still
/// holds in the middle of a run, for the message that breaks it and not the ones before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_bursts_keep_every_message_rule() {
    use palisade_testkit::{OP_BINARY, OP_PING, OP_PONG, OP_TEXT, RawWs, masked, upgrade_request};
    let up = UpstreamServer::start().await;
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.limits.messages.max_bytes = 1024;
    p.limits.messages.per_second = 0.5;
    p.limits.messages.burst = 30;
    let schema = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(schema.path(), r#"{"type":"object","required":["kind"]}"#).expect("schema");
    let (url, schema_path) = (up.url(), schema.path().to_owned());
    let node = TestNode::start(Some(&p), move |c| {
        for (path, binary, schema) in [("/app", true, None), ("/app-text", false, None), ("/app-schema", true, Some(schema_path))] {
            c.routes.push(route(path, |r| {
                r.echo = false;
                r.upstream = Some(url.clone());
                r.allow_binary = binary;
                r.schema = schema;
            }));
        }
    })
    .await;
    let token = key.token(json!({}));
    let open = |path: &'static str| {
        let head = upgrade_request(path, &format!("Origin: https://app.example.com\r\nAuthorization: Bearer {token}\r\n"));
        let node = &node;
        async move { node.raw_ws(&head).await }
    };
    let burst = |frames: &[Vec<u8>]| frames.concat();
    let texts = |n: usize| (0..n).map(|i| masked(OP_TEXT, format!("m{i}").as_bytes())).collect::<Vec<_>>();
    let within = Duration::from_secs(5);

    // Twenty messages in one write come back in order, then binary and text after them.
    let RawWs { mut reader, mut writer, .. } = open("/app").await;
    writer.send(&burst(&texts(20))).await.expect("send");
    for i in 0..20 {
        assert_eq!(reader.next_data(within).await.expect("echo").payload, format!("up:m{i}").into_bytes());
    }
    writer.send(&burst(&[masked(OP_BINARY, &[1, 2, 3]), masked(OP_TEXT, b"after")])).await.expect("send");
    assert_eq!(reader.next_data(within).await.expect("binary").payload, vec![1, 2, 3]);
    assert_eq!(reader.next_data(within).await.expect("text").payload, b"up:after".to_vec());
    // Relayed messages are counted as every message is, both ways (the egress rules read
    // the bytes out).
    let counters = node.handle.state.registry().list(&Selector::All, None, 1)[0].counters.clone();
    let payload = (0..20).map(|i| format!("m{i}").len() as u64).sum::<u64>() + 3 + 5;
    let echoed = (0..20).map(|i| format!("up:m{i}").len() as u64).sum::<u64>() + 3 + 8;
    let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!((read(&counters.messages_in), read(&counters.bytes_in)), (22, payload));
    assert_eq!((read(&counters.messages_out), read(&counters.bytes_out)), (22, echoed));
    drop((reader, writer));
    eventually(within, "the session gone", || async { node.handle.state.registry().is_empty().then_some(()) }).await;

    // A Ping and an in-band control message in a run are the node's to answer, not the
    // upstream's; the messages around them are relayed in their order.
    let RawWs { mut reader, mut writer, .. } = open("/app").await;
    let mixed = [masked(OP_TEXT, b"a"), masked(OP_PING, b"p"), masked(OP_TEXT, br#"{"type":"ping"}"#), masked(OP_TEXT, b"b")];
    writer.send(&burst(&mixed)).await.expect("send");
    let (mut relayed, mut answered) = (Vec::new(), Vec::new());
    while relayed.len() + answered.len() < 4 {
        let f = reader.next_frame(within).await.expect("frame");
        match (f.opcode, f.payload.starts_with(b"up:")) {
            (OP_TEXT, true) => relayed.push(f.payload),
            (OP_TEXT | OP_PONG, false) => answered.push((f.opcode, f.payload)),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(relayed, [b"up:a".to_vec(), b"up:b".to_vec()]);
    answered.sort();
    assert_eq!(answered, [(OP_TEXT, br#"{"type":"pong"}"#.to_vec()), (OP_PONG, b"p".to_vec())]);

    // The rate: the burst's thirty tokens relay thirty messages; the thirty-first closes
    // the session with 4029 and neither it nor any after it reaches the upstream.
    let RawWs { mut reader, mut writer, .. } = open("/app").await;
    writer.send(&burst(&texts(40))).await.expect("send");
    let code = loop {
        let f = reader.next_frame(within).await.expect("frame");
        if let Some(code) = f.close_code() {
            break code;
        }
        let n: usize = std::str::from_utf8(&f.payload).expect("utf8").trim_start_matches("up:m").parse().expect("echo");
        assert!(n < 30, "message {n} was over the rate and reached the upstream");
    };
    assert_eq!(code, 4029);
    let first_thirty: Vec<Vec<u8>> = (0..30).map(|i| format!("m{i}").into_bytes()).collect();
    let at_upstream = || up.requests().last().map(|r| r.messages.clone()).unwrap_or_default();
    eventually(within, "thirty messages at the upstream", || async { (at_upstream().len() >= 30).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(at_upstream(), first_thirty, "exactly the thirty the rate allowed, in order");

    // Text that is not UTF-8, a message over max_bytes, and binary where the route
    // forbids it, each after a good message in the same run: the good one reaches the
    // upstream, the bad one closes the session with its code and never does.
    for (path, bad, want) in [
        ("/app", masked(OP_TEXT, &[0xff, 0xfe]), 1007),
        ("/app", masked(OP_TEXT, &[b'x'; 1025]), 1009),
        ("/app-text", masked(OP_BINARY, &[1]), 1008),
    ] {
        let before = up.requests().len();
        let RawWs { mut reader, mut writer, .. } = open(path).await;
        writer.send(&burst(&[masked(OP_TEXT, format!("ok{want}").as_bytes()), bad])).await.expect("send");
        assert_eq!(reader.close_code(within).await, Ok(want), "{path}");
        let good = format!("ok{want}").into_bytes();
        eventually(within, "the good message at the upstream", || async { up.requests()[before].messages.contains(&good).then_some(()) })
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(up.requests()[before].messages, [good], "{path}: only the message before the bad one");
    }

    // The upstream's messages are judged too: text that is not UTF-8 fails the session
    // (1011) after the good message before it, and never reaches the client.
    let RawWs { mut reader, mut writer, .. } = open("/app").await;
    writer.send(&masked(OP_TEXT, b"badutf8")).await.expect("send");
    assert_eq!(reader.next_data(within).await.expect("the good one").payload, b"ok".to_vec());
    assert_eq!(reader.close_code(within).await, Ok(1011));

    // A route with a schema judges every text message: the violation is answered by the
    // node, the valid message relayed.
    let RawWs { mut reader, mut writer, .. } = open("/app-schema").await;
    writer.send(&burst(&[masked(OP_TEXT, b"not json"), masked(OP_TEXT, br#"{"kind":"chat"}"#)])).await.expect("send");
    assert_eq!(reader.next_data(within).await.expect("reply").payload, br#"{"type":"error","error":"schema_violation"}"#.to_vec());
    assert_eq!(reader.next_data(within).await.expect("echo").payload, br#"up:{"kind":"chat"}"#.to_vec());
}
