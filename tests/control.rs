//! The node control plane (SPEC section 6) with real gRPC clients over mTLS: every
//! NodeControl RPC, live policy, key rotation, limiter continuity, the mTLS wall, and
//! grpcurl 1.8 with reflection.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use palisade_policy::wire;
use palisade_proto::node::v1 as pb;
use palisade_testkit::{Message, TestKey, TestNode, close_code, next_data, policy, refused};
use serde_json::json;
use tonic::Code;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn sel(t: pb::selector::Target) -> Option<pb::Selector> {
    Some(pb::Selector { target: Some(t) })
}

fn apply(version: u64, p: &palisade_policy::Policy) -> pb::ApplyPolicyRequest {
    pb::ApplyPolicyRequest { policy: Some(wire::versioned(version, p)), dry_run: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rpcs_live_changes_stale_and_invalid() {
    let key = TestKey::generate("k", "ES256");
    let p1 = policy(&[&key]);
    let node = TestNode::start_with_control(Some(&p1), |_| {}).await;
    let mut c = node.control().await;
    let got = c.get_policy(pb::GetPolicyRequest {}).await.expect("get").into_inner().policy.expect("policy");
    assert_eq!(got.version, 1);
    assert_eq!(wire::document(&got).expect("doc"), p1);

    let auth = bearer(&key.token(json!({})));
    let other_origin = ("Origin", "https://other.test");
    assert_eq!(refused(node.ws("/echo", &[other_origin, ("Authorization", &auth)]).await).code, "origin_not_allowed");

    // An origin change takes effect on the next handshake.
    let mut p2 = p1.clone();
    p2.origins.allow.push("https://other.test".into());
    let r = c.apply_policy(apply(2, &p2)).await.expect("apply").into_inner();
    assert_eq!((r.version, r.applied), (2, true));
    assert!(node.ws("/echo", &[other_origin, ("Authorization", &auth)]).await.is_ok());

    // Stale: FAILED_PRECONDITION.
    let e = c.apply_policy(apply(2, &p1)).await.expect_err("stale");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Invalid: INVALID_ARGUMENT naming the field; the node keeps serving version 2.
    let mut bad = p2.clone();
    bad.limits.per_ip.burst = 0;
    let e = c.apply_policy(apply(3, &bad)).await.expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limits.per_ip.burst"), "{}", e.message());
    // A YAML document sent as text, with an unknown field.
    let yaml = pb::ApplyPolicyRequest {
        policy: Some(palisade_proto::policy::v1::VersionedPolicy { version: 3, policy: None, yaml: "origins: { alow: [] }".into() }),
        dry_run: false,
    };
    let e = c.apply_policy(yaml).await.expect_err("unknown field");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("alow"), "{}", e.message());
    let stats = c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(stats.policy_version, 2);
    assert!(node.ws("/echo", &[other_origin, ("Authorization", &auth)]).await.is_ok(), "old policy still serving");

    // Dry run validates and changes nothing.
    let r = c.apply_policy(pb::ApplyPolicyRequest { dry_run: true, ..apply(5, &p1) }).await.expect("dry").into_inner();
    assert_eq!((r.applied, r.dry_run), (false, true));
    assert_eq!(c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().policy_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_rpcs_disconnect_list_send_stats_watch_and_revocation() {
    let key = TestKey::generate("k", "ES256");
    let p1 = policy(&[&key]);
    let node = TestNode::start_with_control(Some(&p1), |_| {}).await;
    let mut c = node.control().await;
    let open = |sub: &str| {
        let t = bearer(&key.token(json!({"sub": sub, "jti": format!("{sub}-jti")})));
        let node = &node;
        async move { node.ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.expect("open").0 }
    };
    let mut a1 = open("ann").await;
    let mut a2 = open("ann").await;
    let mut b = open("ben").await;
    let mut d = open("dan").await;

    // Paging.
    let page1 = c
        .list_connections(pb::ListConnectionsRequest { selector: None, page_size: 3, page_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page1.connections.len(), 3);
    assert!(!page1.next_page_token.is_empty());
    let page2 = c
        .list_connections(pb::ListConnectionsRequest { selector: None, page_size: 3, page_token: page1.next_page_token })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page2.connections.len(), 1);
    assert!(page2.next_page_token.is_empty());
    let anns = c
        .list_connections(pb::ListConnectionsRequest {
            selector: sel(pb::selector::Target::Subject("ann".into())),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(anns.connections.len(), 2);
    // By client address and by connection id.
    let from_lo = c
        .list_connections(pb::ListConnectionsRequest {
            selector: sel(pb::selector::Target::ClientAddress("127.0.0.1".into())),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(from_lo.connections.len(), 4);
    let e = c
        .list_connections(pb::ListConnectionsRequest {
            selector: sel(pb::selector::Target::ClientAddress("not-an-ip".into())),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect_err("bad address");
    assert_eq!(e.code(), Code::InvalidArgument);

    assert!(anns.connections.iter().all(|x| x.subject == "ann" && x.session == "ann-jti" && x.client_address == "127.0.0.1"));

    // Send to a subject.
    let r = c
        .send(pb::SendRequest { selector: sel(pb::selector::Target::Subject("ann".into())), payload: b"{\"n\":1}".to_vec(), binary: false })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(r.delivered, 2);
    for ws in [&mut a1, &mut a2] {
        assert_eq!(next_data(ws).await, Some(Message::Text("{\"n\":1}".into())));
    }
    // By connection id: exactly one of the two gets it.
    let one = anns.connections[0].conn_id.clone();
    let r = c
        .send(pb::SendRequest { selector: sel(pb::selector::Target::ConnId(one)), payload: b"just you".to_vec(), binary: false })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(r.delivered, 1);
    let mut got = 0;
    for ws in [&mut a1, &mut a2] {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), next_data(ws)).await {
            assert_eq!(m, Message::Text("just you".into()));
            got += 1;
        }
    }
    assert_eq!(got, 1);
    // Binary: a Binary frame with the bytes as given, which need not be UTF-8; the same
    // bytes as text are refused, naming the field.
    let bytes = vec![0u8, 0x9f, 0xff, b'b'];
    let r = c
        .send(pb::SendRequest { selector: sel(pb::selector::Target::Subject("ann".into())), payload: bytes.clone(), binary: true })
        .await
        .expect("send binary")
        .into_inner();
    assert_eq!(r.delivered, 2);
    for ws in [&mut a1, &mut a2] {
        assert_eq!(next_data(ws).await, Some(Message::Binary(bytes.clone().into())));
    }
    let e = c
        .send(pb::SendRequest { selector: sel(pb::selector::Target::Subject("ann".into())), payload: bytes, binary: false })
        .await
        .expect_err("not UTF-8");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("payload:"), "{}", e.message());
    // Disconnect by session with a chosen code; by subject with the default 4003.
    let r = c
        .disconnect(pb::DisconnectRequest {
            selector: sel(pb::selector::Target::Session("ben-jti".into())),
            code: 4100,
            reason: "moved".into(),
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.closed, 1);
    assert_eq!(close_code(&mut b, Duration::from_secs(2)).await, Some(4100));
    let r = c
        .disconnect(pb::DisconnectRequest { selector: sel(pb::selector::Target::Subject("ann".into())), code: 0, reason: String::new() })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.closed, 2);
    assert_eq!(close_code(&mut a1, Duration::from_secs(2)).await, Some(4003));
    assert_eq!(close_code(&mut a2, Duration::from_secs(2)).await, Some(4003));
    let e = c.disconnect(pb::DisconnectRequest { selector: None, code: 0, reason: String::new() }).await.expect_err("no selector");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .disconnect(pb::DisconnectRequest { selector: sel(pb::selector::Target::All(true)), code: 1000, reason: String::new() })
        .await
        .expect_err("bad code");
    assert_eq!(e.code(), Code::InvalidArgument);

    // A token seen before is answered by the token cache, and GetStats counts it.
    let cache_before = c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    let eve = bearer(&key.token(json!({"sub": "eve", "jti": "eve-jti"})));
    for _ in 0..2 {
        let _ = node.ws("/echo", &[ORIGIN, ("Authorization", &eve)]).await;
    }
    let cached = c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(cached.token_cache_hits - cache_before.token_cache_hits, 1, "the second handshake was a hit");
    assert!(cached.token_cache_entries > cache_before.token_cache_entries, "eve's token is held");

    // Stats and the stats stream. One echoed message moves the node's counters by one
    // message and its byte each way, by the time the echo is at the client.
    let before = c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    d.send(Message::Text("x".into())).await.expect("send");
    assert!(next_data(&mut d).await.is_some());
    let s = c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    assert!(s.handshakes_accepted >= 4 && s.messages_in >= 1 && s.ready && !s.draining);
    let moved = (
        s.messages_in - before.messages_in,
        s.messages_out - before.messages_out,
        s.bytes_in - before.bytes_in,
        s.bytes_out - before.bytes_out,
    );
    assert_eq!(moved, (1, 1, 1, 1), "messages in, out, bytes in, out");
    let mut stream = c.watch_stats(pb::WatchStatsRequest { interval_ms: 100 }).await.expect("watch").into_inner();
    let first = stream.next().await.expect("item").expect("ok");
    let second = stream.next().await.expect("item").expect("ok");
    assert_eq!(first.node_id, second.node_id);
    let e = c.watch_stats(pb::WatchStatsRequest { interval_ms: 3_600_000 }).await.expect_err("an hour is too long");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("interval_ms:"), "{}", e.message());

    // A revocation push closes the live session with 4003.
    let mut p2 = p1.clone();
    p2.revocations = serde_yaml_ng::from_str(r#"[{ jti: "dan-jti" }]"#).expect("yaml");
    c.apply_policy(apply(2, &p2)).await.expect("apply");
    assert_eq!(close_code(&mut d, Duration::from_secs(1)).await, Some(4003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rpc_closes_sessions_with_1001() {
    let key = TestKey::generate("k", "ES256");
    // The configured deadline is a minute; the RPC asks for 2 s. The 1001s are spread
    // over the first 80% of the RPC's deadline (not of the configured one, which would
    // leave nearly every session to the forced close at 2 s, all at the same instant).
    let node = TestNode::start_with_control(Some(&policy(&[&key])), |c| c.drain_deadline_seconds = 60).await;
    let mut c = node.control().await;
    let auth = bearer(&key.token(json!({})));
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("open").0);
    }
    let started = tokio::time::Instant::now();
    let r = c.drain(pb::DrainRequest { deadline_seconds: 2 }).await.expect("drain").into_inner();
    assert_eq!(r.sessions_at_start, 8);
    let closes = futures_util::future::join_all(sessions.iter_mut().map(|ws| async move {
        let code = close_code(ws, Duration::from_secs(5)).await;
        (code, started.elapsed())
    }))
    .await;
    assert!(closes.iter().all(|(code, _)| *code == Some(1001)), "{closes:?}");
    let at: Vec<Duration> = closes.iter().map(|(_, t)| *t).collect();
    let (first, last) = (at.iter().min().copied().unwrap_or_default(), at.iter().max().copied().unwrap_or_default());
    assert!(last < Duration::from_millis(1850), "every 1001 within 80% of the 2 s deadline (+ slack): {at:?}");
    assert!(last - first > Duration::from_millis(100), "spread, not all at one instant: {at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_overlap_then_retirement() {
    let old = TestKey::generate("2026-10", "ES256");
    let new = TestKey::generate("2026-11", "RS256");
    let p1 = policy(&[&old]);
    let node = TestNode::start_with_control(Some(&p1), |_| {}).await;
    let mut c = node.control().await;
    let old_token = bearer(&old.token(json!({})));
    let new_token = bearer(&new.token(json!({})));
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &old_token)]).await.is_ok());
    assert_eq!(refused(node.ws("/echo", &[ORIGIN, ("Authorization", &new_token)]).await).code, "token_invalid");
    // Add the new key: both accepted during the overlap.
    let p2 = policy(&[&old, &new]);
    c.apply_policy(apply(2, &p2)).await.expect("add key");
    for _ in 0..5 {
        assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &old_token)]).await.is_ok());
        assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &new_token)]).await.is_ok());
    }
    // Retire the old key.
    c.apply_policy(apply(3, &policy(&[&new]))).await.expect("retire");
    assert_eq!(refused(node.ws("/echo", &[ORIGIN, ("Authorization", &old_token)]).await).code, "token_invalid");
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &new_token)]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_does_not_reset_rate_limits() {
    let key = TestKey::generate("k", "ES256");
    let mut p1 = policy(&[&key]);
    p1.limits.per_ip.handshakes_per_second = 0.01;
    p1.limits.per_ip.burst = 2;
    let node = TestNode::start_with_control(Some(&p1), |_| {}).await;
    let mut c = node.control().await;
    let auth = bearer(&key.token(json!({})));
    for _ in 0..2 {
        assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.is_ok());
    }
    assert_eq!(refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await).code, "rate_limited");
    // Same quota, other changes: still limited.
    let mut p2 = p1.clone();
    p2.origins.allow.push("https://x.test".into());
    c.apply_policy(apply(2, &p2)).await.expect("apply");
    assert_eq!(refused(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await).code, "rate_limited");
    // A new quota starts fresh.
    let mut p3 = p2.clone();
    p3.limits.per_ip.burst = 3;
    c.apply_policy(apply(3, &p3)).await.expect("apply");
    assert!(node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rpc_without_a_certificate_from_the_control_ca() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start_with_control(Some(&policy(&[&key])), |_| {}).await;
    let foreign = palisade_testkit::Pki::new().client_cert("intruder");
    for identity in [None, Some(foreign)] {
        let label = if identity.is_none() { "no certificate" } else { "foreign CA" };
        // The TLS handshake itself may fail, or the first RPC: either way nothing succeeds.
        if let Ok(ch) = node.control_channel(identity).await {
            let mut c = pb::node_control_client::NodeControlClient::new(ch.clone());
            assert!(c.get_stats(pb::GetStatsRequest {}).await.is_err(), "{label}: GetStats");
            assert!(c.get_policy(pb::GetPolicyRequest {}).await.is_err(), "{label}: GetPolicy");
            let r = c
                .disconnect(pb::DisconnectRequest { selector: sel(pb::selector::Target::All(true)), code: 0, reason: String::new() })
                .await;
            assert!(r.is_err(), "{label}: Disconnect");
            let r = c.apply_policy(apply(9, &policy(&[&key]))).await;
            assert!(r.is_err(), "{label}: ApplyPolicy");
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
            assert!(h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_err(), "{label}: health");
        }
    }
    // The operator certificate works.
    let mut c = node.control().await;
    assert_eq!(c.get_stats(pb::GetStatsRequest {}).await.expect("ok").into_inner().policy_version, 1);
    // And nothing changed.
    assert_eq!(c.get_policy(pb::GetPolicyRequest {}).await.expect("ok").into_inner().policy.expect("p").version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_v1_over_mtls() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start_with_control(Some(&policy(&[&key])), |_| {}).await;
    let ch = node.control_channel(Some(node.pki.client_cert("operator"))).await.expect("channel");
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = h
        .check(tonic_health::pb::HealthCheckRequest { service: "palisade.node.v1.NodeControl".into() })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut r = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut resp = r.server_reflection_info(futures_util::stream::iter(vec![req])).await.expect("reflection").into_inner();
    let Some(Ok(msg)) = resp.next().await else { panic!("no reflection answer") };
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("not a list") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"palisade.node.v1.NodeControl".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_over_mtls() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start_with_control(Some(&policy(&[&key])), |_| {}).await;
    let dir = node.pki.dir.path().to_owned();
    let (cert, k) = node.pki.client_cert("operator");
    std::fs::write(dir.join("operator.pem"), cert).expect("w");
    std::fs::write(dir.join("operator-key.pem"), k).expect("w");
    let addr = node.handle.control_addr.expect("control").to_string();
    let tls_args: Vec<String> = vec![
        "-cacert".into(),
        node.pki.ca_path.display().to_string(),
        "-cert".into(),
        dir.join("operator.pem").display().to_string(),
        "-key".into(),
        dir.join("operator-key.pem").display().to_string(),
        "-authority".into(),
        "localhost".into(),
    ];
    let version = run(vec!["-version".into()]).await;
    assert!(version.1.contains("1.8"), "grpcurl 1.8 (reflection v1alpha only): {version:?}");
    let call = |pre: &[&str], post: &[&str]| {
        let mut args = tls_args.clone();
        args.extend(pre.iter().map(|s| s.to_string()));
        args.push(addr.clone());
        args.extend(post.iter().map(|s| s.to_string()));
        args
    };
    let (ok, list) = run(call(&[], &["list"])).await;
    assert!(ok && list.contains("palisade.node.v1.NodeControl") && list.contains("grpc.health.v1.Health"), "{list}");
    let (ok, described) = run(call(&[], &["describe", "palisade.node.v1.NodeControl"])).await;
    assert!(ok && described.contains("ApplyPolicy") && described.contains("WatchStats"), "{described}");
    let (ok, stats) = run(call(&["-d", "{}"], &["palisade.node.v1.NodeControl/GetStats"])).await;
    assert!(ok, "{stats}");
    let v: serde_json::Value = serde_json::from_str(&stats).expect("JSON from grpcurl");
    assert_eq!(v["policyVersion"], "1");
    assert_eq!(v["ready"], true);
    // Without a client certificate grpcurl gets nothing.
    let (ok, _) = run(vec![
        "-cacert".into(),
        node.pki.ca_path.display().to_string(),
        "-authority".into(),
        "localhost".into(),
        addr.clone(),
        "list".into(),
    ])
    .await;
    assert!(!ok);
}

/// Runs grpcurl off the runtime's threads; returns success and stdout+stderr.
async fn run(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("grpcurl").args(&args).output().expect("grpcurl is installed (scripts/install-deps.sh)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_control_plane_only_when_asked() {
    let key = TestKey::generate("k", "ES256");
    // Without TLS files and without the flag, the configuration is refused.
    let pki = palisade_testkit::Pki::new();
    let mut cfg = palisade_testkit::node_config(&pki, None);
    cfg.listen.control = Some(([127, 0, 0, 1], 0).into());
    let e = palisade_node::Node::bind(cfg.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("control"), "{e}");
    // With the flag: plain text.
    let node = TestNode::start(Some(&policy(&[&key])), |c| {
        c.listen.control = Some(([127, 0, 0, 1], 0).into());
        c.insecure_control_plane = true;
    })
    .await;
    let addr = node.handle.control_addr.expect("control");
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("plain");
    let mut c = pb::node_control_client::NodeControlClient::new(ch);
    assert_eq!(c.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().policy_version, 1);
}

/// A WSS certificate with 3 days left: `GetStats` counts its seconds down, the control
/// certificate's too, and the node logs a `certificate_expiring` warning naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_close_to_expiry_is_warned_and_counted_down() {
    let logs = palisade_testkit::captured_logs();
    let pki = std::sync::Arc::new(palisade_testkit::Pki::new());
    // Self-signed, for localhost, expiring in 3 days (the day is what rcgen takes).
    let in3 = palisade_plane::cert::format_time(palisade_plane::cert::unix_now() + 3 * 86_400 + 3600);
    let ymd: Vec<i32> = in3[..10].split('-').map(|p| p.parse().expect("date")).collect();
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(&pki.key_path, key.serialize_pem()).expect("w");
    std::fs::write(&pki.cert_path, cert.pem()).expect("w");
    let node = TestNode::start_in(pki, None, |_| {}).await;
    let s = node.control().await.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    let left = s.wss_cert_seconds_left.expect("the WSS certificate is the node's");
    assert!((2 * 86_400..=4 * 86_400).contains(&left), "about 3 days: {left}");
    assert!(s.control_cert_seconds_left.is_some_and(|c| c > 14 * 86_400), "the control certificate is fresh: {s:?}");
    let warned = palisade_testkit::eventually(Duration::from_secs(5), "the expiry warning", || {
        let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "certificate_expiring" && v["certificate"] == "wss");
        std::future::ready(found)
    })
    .await;
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert!(warned["seconds_left"].as_i64().is_some_and(|n| (2 * 86_400..=4 * 86_400).contains(&n)), "{warned}");
    assert!(
        !String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner()))
            .lines()
            .any(|l| l.contains("certificate_expiring") && l.contains("\"control\"")),
        "a fresh certificate is not warned about"
    );
}

/// A dual-stack listener (`[::]:port`): an IPv4 client is registered as its IPv4 address,
/// not `::ffff:127.0.0.1`, so selectors by address find it, in either spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
    let key = TestKey::generate("k", "ES256");
    let node = TestNode::start_with_control(Some(&policy(&[&key])), |c| c.listen.wss = "[::]:0".parse().expect("addr")).await;
    let mut c = node.control().await;
    let (_ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({}))))]).await.expect("open over IPv4");
    for spelling in ["127.0.0.1", "::ffff:127.0.0.1"] {
        let list = c
            .list_connections(pb::ListConnectionsRequest {
                selector: sel(pb::selector::Target::ClientAddress(spelling.into())),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(list.connections.iter().map(|x| x.client_address.as_str()).collect::<Vec<_>>(), ["127.0.0.1"], "{spelling}");
    }
}
