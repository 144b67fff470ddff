//! Authorization at the gate (SPEC section 3 step 10a, section 4, section 7 `access`):
//! per-route claim and scope rules with real WebSocket clients over real TLS, rules
//! re-checked on live sessions at every policy change and at every refresh, and
//! `auth.refresh.interval_seconds`.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use palisade_policy::Policy;
use palisade_policy::access::{AccessRule, Require};
use palisade_testkit::{Message, TestKey, TestNode, Ws, close_code, echo_route, next_data, policy, refused};
use serde_json::json;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn rule(route: &str, claims: &[(&str, &[&str])], scopes: &[&str]) -> AccessRule {
    AccessRule {
        route: route.into(),
        require: Require {
            claims: claims.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        },
    }
}

/// A node serving `/echo`, `/admin` and `/chat` (all echo routes).
async fn node(p: &Policy) -> TestNode {
    TestNode::start(Some(p), |c| {
        for path in ["/admin", "/chat"] {
            let mut r = echo_route();
            r.path = path.into();
            c.routes.push(r);
        }
    })
    .await
}

async fn text(ws: &mut Ws) -> String {
    match next_data(ws).await {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn echo(ws: &mut Ws, s: &str) {
    ws.send(Message::Text(s.into())).await.expect("send");
    assert_eq!(text(ws).await, s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruled_routes_need_their_claims_and_scopes_and_other_routes_do_not() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.access = vec![rule("/admin", &[("role", &["admin", "ops"])], &["ws:admin"])];
    let node = node(&p).await;
    let open = |claims: serde_json::Value, path: &'static str| {
        let t = bearer(&key.token(claims));
        let node = &node;
        async move { node.ws(path, &[ORIGIN, ("Authorization", &t)]).await }
    };
    // Claim as a string and as an array; scopes as `scope` (space-separated) and `scp`.
    for claims in [
        json!({"role": "admin", "scope": "read ws:admin"}),
        json!({"role": ["user", "ops"], "scp": ["ws:admin"]}),
        json!({"role": "ops", "scp": "ws:admin write"}),
    ] {
        let (mut ws, _) = open(claims.clone(), "/admin").await.unwrap_or_else(|e| panic!("{claims} accepted: {e}"));
        echo(&mut ws, "admin ok").await;
    }
    // A token without the scope, or without the claim: 403 forbidden on the ruled route,
    // and the body says nothing more.
    for claims in [json!({"role": "admin", "scope": "read"}), json!({"role": "user", "scope": "ws:admin"}), json!({"scope": "ws:admin"})] {
        let r = refused(open(claims.clone(), "/admin").await);
        assert_eq!((r.status, r.code.as_str()), (403, "forbidden"), "{claims}");
    }
    // The same token on a route without a rule is fine.
    let (mut ws, _) = open(json!({"role": "user"}), "/chat").await.expect("chat needs no rule");
    echo(&mut ws, "chat ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_carries_its_tokens_claims_through_the_rule() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.access = vec![rule("/admin", &[], &["ws:admin"])];
    let node = node(&p).await;
    let mint = |claims: serde_json::Value| {
        let token = key.token(claims);
        let node = &node;
        async move {
            let req = format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n");
            let r = node.raw(req.as_bytes()).await;
            assert_eq!(r.status, 201, "{}", r.body);
            serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["ticket"].as_str().expect("ticket").to_owned()
        }
    };
    let without = mint(json!({"scope": "read"})).await;
    let r = refused(node.ws(&format!("/admin?ticket={without}"), &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "forbidden"));
    let with = mint(json!({"scope": "ws:admin"})).await;
    let (mut ws, _) = node.ws(&format!("/admin?ticket={with}"), &[ORIGIN]).await.expect("ticket with the scope");
    echo(&mut ws, "ticketed admin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_adding_a_rule_closes_exactly_the_sessions_that_no_longer_satisfy_it() {
    let key = TestKey::generate("k", "ES256");
    let p = policy(&[&key]);
    let node = node(&p).await;
    let open = |claims: serde_json::Value| {
        let t = bearer(&key.token(claims));
        let node = &node;
        async move { node.ws("/admin", &[ORIGIN, ("Authorization", &t)]).await.expect("open before the rule").0 }
    };
    let mut keeps = open(json!({"sub": "root", "role": "admin"})).await;
    let mut loses_a = open(json!({"sub": "u1", "role": "user"})).await;
    let mut loses_b = open(json!({"sub": "u2"})).await;
    let mut other_route = {
        let t = bearer(&key.token(json!({"sub": "u3"})));
        node.ws("/chat", &[ORIGIN, ("Authorization", &t)]).await.expect("chat").0
    };
    let mut p2 = p.clone();
    p2.access = vec![rule("/admin", &[("role", &["admin"])], &[])];
    let t0 = Instant::now();
    node.handle.state.policy().apply(&p2, 2).expect("push");
    for ws in [&mut loses_a, &mut loses_b] {
        assert_eq!(close_code(ws, Duration::from_secs(2)).await, Some(4003));
    }
    assert!(t0.elapsed() <= Duration::from_secs(1), "closed within 1 s: {:?}", t0.elapsed());
    echo(&mut keeps, "still admin").await;
    echo(&mut other_route, "still chatting").await;
    assert_eq!(node.handle.state.registry().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_lost_the_scope_gets_auth_error_forbidden() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.access = vec![rule("/admin", &[], &["ws:admin"])];
    let node = node(&p).await;
    let exp = palisade_testkit::now() + 600;
    let t = bearer(&key.token(json!({"scope": "ws:admin", "exp": exp})));
    let (mut ws, _) = node.ws("/admin", &[ORIGIN, ("Authorization", &t)]).await.expect("open");
    let lost = key.token(json!({"scope": "read", "exp": exp + 600}));
    ws.send(Message::Text(json!({"type": "auth", "token": lost}).to_string().into())).await.expect("send");
    assert_eq!(text(&mut ws).await, r#"{"type":"auth_error","error":"forbidden"}"#);
    // The session keeps its old expiry, and a refresh that keeps the scope works.
    let kept = key.token(json!({"scope": "ws:admin", "exp": exp + 900}));
    ws.send(Message::Text(json!({"type": "auth", "token": kept}).to_string().into())).await.expect("send");
    let ok: serde_json::Value = serde_json::from_str(&text(&mut ws).await).expect("json");
    assert_eq!(ok, json!({"type": "auth_ok", "exp": exp + 900}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_interval_forces_a_fresh_token_whatever_the_tokens_exp() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.auth.refresh.interval_seconds = Some(12);
    p.auth.refresh.warning_seconds = 10;
    p.auth.refresh.grace_seconds = 1;
    let node = node(&p).await;
    // The token is valid for hours.
    let hours = palisade_testkit::now() + 6 * 3600;
    let t = bearer(&key.token(json!({"exp": hours})));
    let started = palisade_testkit::now();
    let (mut refreshing, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.expect("open");
    let (mut lazy, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.expect("open");
    for ws in [&mut refreshing, &mut lazy] {
        let warn: serde_json::Value = serde_json::from_str(&text(ws).await).expect("json");
        assert_eq!(warn["type"], "auth_expiring");
        let exp = warn["exp"].as_u64().expect("exp");
        assert!((started + 12..=started + 13).contains(&exp), "the interval, not the token's exp: {exp}");
    }
    // A fresh token moves the session's expiry to the next interval.
    let fresh = key.token(json!({"exp": hours}));
    refreshing.send(Message::Text(json!({"type": "auth", "token": fresh}).to_string().into())).await.expect("send");
    let ok: serde_json::Value = serde_json::from_str(&text(&mut refreshing).await).expect("json");
    assert_eq!(ok["type"], "auth_ok");
    assert!(ok["exp"].as_u64().expect("exp") < hours);
    // Without one: 4001 at the interval plus grace, hours before the token's exp.
    assert_eq!(close_code(&mut lazy, Duration::from_secs(16)).await, Some(4001));
    // The refreshed session lives on (its next interval has started: it is warned again).
    refreshing.send(Message::Text("refreshed in time".into())).await.expect("send");
    loop {
        let t = text(&mut refreshing).await;
        if t == "refreshed in time" {
            break;
        }
        assert!(t.contains("auth_expiring"), "only warnings before the echo: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_refused_with_the_field_named_and_the_last_good_policy_serves() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.access = vec![rule("/admin", &[], &["ws:admin"])];
    let node = node(&p).await;
    let mut bad = p.clone();
    bad.access = vec![rule("/chat", &[], &["ok"]), rule("/admin", &[("role", &[])], &[])];
    match node.handle.state.policy().apply(&bad, 2) {
        Err(palisade_node::policy_store::ApplyError::Invalid(e)) => assert_eq!(e.field, "access[1].require.claims.role"),
        other => panic!("expected an invalid policy, got {other:?}"),
    }
    // Through the control plane too, as INVALID_ARGUMENT naming the field.
    let node = TestNode::start_with_control(Some(&p), |c| {
        let mut r = echo_route();
        r.path = "/admin".into();
        c.routes.push(r);
    })
    .await;
    let mut c = node.control().await;
    let req = palisade_proto::node::v1::ApplyPolicyRequest { policy: Some(palisade_policy::wire::versioned(2, &bad)), dry_run: false };
    let s = c.apply_policy(req).await.expect_err("refused");
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("access[1].require.claims.role"), "{}", s.message());
    assert_eq!(node.handle.state.policy().version(), 1, "the last good policy keeps serving");
    let r = refused(node.ws("/admin", &[ORIGIN, ("Authorization", &bearer(&key.token(json!({}))))]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "forbidden"), "its rule still applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_check_with_a_route_decides_as_a_node_would() {
    let key = TestKey::generate("k", "ES256");
    let mut p = policy(&[&key]);
    p.access = vec![rule("/admin", &[], &["ws:admin"])];
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, p.to_yaml()).expect("policy");
    let check = |token: String, route: &'static str| {
        let file = file.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
                .args(["token", "check", &token, "--policy", file.to_str().expect("path"), "--route", route])
                .output()
                .await
                .expect("run");
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let (code, out) = check(key.token(json!({"scope": "ws:admin"})), "/admin").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""verification": "valid""#), "{out}");
    let (code, out) = check(key.token(json!({"scope": "read"})), "/admin").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(r#""verification": "forbidden""#), "{out}");
    let (code, out) = check(key.token(json!({"scope": "read"})), "/chat").await;
    assert_eq!(code, Some(0), "a route without a rule: {out}");
    let (code, out) = check(key.token(json!({"exp": palisade_testkit::now() - 3600})), "/chat").await;
    assert_eq!(code, Some(1));
    assert!(out.contains("token_expired"), "{out}");
}
