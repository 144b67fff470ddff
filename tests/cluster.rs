//! Cluster state in a real etcd (SPEC sections 5 and 8, reliability bars of section 12):
//! registration under a lease, deregistration on drain before sessions close, a killed
//! node leaving the registry, an etcd outage that disconnects nobody, the policy watch,
//! and one-time tickets consumed exactly once across the fleet, failing closed without
//! etcd.
//!
//! Every wait is on an event (a key appearing, a version, a log line, a close frame),
//! polled against a bounded deadline.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_node::config::EtcdConfig;
use palisade_testkit::etcd::Etcd;
use palisade_testkit::{Message, Pki, TestKey, TestNode, Ws, close_code, next_data, policy, refused};
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");
const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Polls `check` every 50 ms until it yields a value or `within` passes.
async fn eventually<T, F: Future<Output = Option<T>>>(within: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echo_once(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
    match next_data(ws).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// A node of cluster `test` registered in `etcd`.
async fn etcd_node(etcd: &Etcd, policy_doc: Option<&palisade_policy::Policy>, ttl: u64) -> TestNode {
    let endpoint = etcd.endpoint();
    TestNode::start(policy_doc, move |cfg| {
        let mut e = EtcdConfig::new(vec![endpoint]);
        e.lease_ttl_seconds = ttl;
        e.labels.insert("zone".into(), "test-a".into());
        cfg.etcd = Some(e);
        cfg.drain_deadline_seconds = 2;
    })
    .await
}

fn node_key(node: &TestNode) -> String {
    format!("/palisade/test/nodes/{}", node.handle.state.id())
}

/// The lease of `key` and its remaining TTL, once the key exists under a live lease.
async fn live_lease(etcd: &Etcd, key: &str) -> Option<(i64, i64)> {
    let (_, lease, _) = etcd.get(key).await?;
    if lease == 0 {
        return None;
    }
    let mut c = etcd.client().await;
    let ttl = c.lease_time_to_live(lease, None).await.ok()?.ttl();
    (ttl > 0).then_some((lease, ttl))
}

async fn mint_ticket(node: &TestNode, token: &str) -> palisade_testkit::RawResponse {
    let body = r#"{"origin":"https://app.example.com"}"#;
    let req = format!(
        "POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    node.raw(req.as_bytes()).await
}

fn ticket_of(r: &palisade_testkit::RawResponse) -> String {
    assert_eq!(r.status, 201, "{}", r.body);
    serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["ticket"].as_str().expect("ticket").to_owned()
}

use palisade_testkit::captured_logs as logs;

fn log_lines(node_id: &str, event: &str) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&logs().lock().expect("lock")).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["node"] == node_id && v["event"] == event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_under_a_lease_and_deregisters_before_sessions_close() {
    let etcd = Etcd::spawn().await;
    let key = TestKey::generate("k", "ES256");
    let node = etcd_node(&etcd, Some(&policy(&[&key])), 10).await;
    let k = node_key(&node);
    let (lease, _) = eventually(Duration::from_secs(5), "the node's key under a live lease", || live_lease(&etcd, &k)).await;
    let (value, _, _) = etcd.get(&k).await.expect("key");
    let record: serde_json::Value = serde_json::from_slice(&value).expect("JSON record");
    assert_eq!(record["id"], node.handle.state.id());
    assert_eq!(record["wss"], format!("wss://127.0.0.1:{}", node.addr.port()));
    assert_eq!(record["control"], "", "no control listener");
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(record["labels"], json!({"zone": "test-a"}));
    assert!(record["started_unix_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000));
    let mut c = etcd.client().await;
    assert_eq!(c.lease_time_to_live(lease, None).await.expect("ttl").granted_ttl(), 10, "default lease TTL");

    // Drain: the key is gone before the session gets its 1001.
    let auth = bearer(&key.token(json!({})));
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("session");
    echo_once(&mut ws, "before drain").await;
    let drain = node.handle.start_drain();
    assert_eq!(close_code(&mut ws, Duration::from_secs(10)).await, Some(1001));
    assert!(etcd.get(&k).await.is_none(), "deregistered before the sessions were closed");
    let resp = c.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(resp.ttl() <= 0, "the lease was revoked");
    drain.await.expect("drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_leaves_the_registry_within_its_lease_ttl() {
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    let pki = Pki::new();
    let key = TestKey::generate("k", "ES256");
    let dir = pki.dir.path();
    std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    const TTL: u64 = 3;
    let tail = format!("[etcd]\nendpoints = [\"{}\"]\nlease_ttl_seconds = {TTL}\n", etcd.endpoint());
    std::fs::write(
        dir.join("node.toml"),
        palisade_testkit::node_toml(port, "id = \"doomed\"\ncluster = \"kill\"\npolicy_file = \"policy.yaml\"", &tail),
    )
    .expect("config");
    let mut child = Command::new(BIN)
        .args(["node", "--config", dir.join("node.toml").to_str().expect("path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn palisade");
    // Drain stdout so the node never blocks on a full pipe.
    let _output = palisade_testkit::capture_lines(&mut child);
    let k = "/palisade/kill/nodes/doomed";
    eventually(Duration::from_secs(10), "the node process registered", || live_lease(&etcd, k)).await;
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill").args(["-KILL", &pid]).status().await.expect("kill");
    assert!(status.success());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("the node died");
    let killed = Instant::now();
    // SPEC section 12: a killed node leaves the registry within its lease TTL plus 2 s.
    eventually(Duration::from_secs(TTL + 2), "the killed node's key to expire", || async { etcd.get(k).await.is_none().then_some(()) })
        .await;
    assert!(killed.elapsed() <= Duration::from_secs(TTL + 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_disconnects_nobody_and_the_node_registers_again() {
    let mut etcd = Etcd::spawn().await;
    let key = TestKey::generate("k", "ES256");
    let node = etcd_node(&etcd, Some(&policy(&[&key])), 3).await;
    let k = node_key(&node);
    let (old_lease, _) = eventually(Duration::from_secs(5), "registration", || live_lease(&etcd, &k)).await;
    let auth = bearer(&key.token(json!({})));
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("session");
    echo_once(&mut ws, "before the outage").await;

    etcd.stop();
    let cluster = node.handle.state.etcd().cloned().expect("etcd configured");
    let mut registered = cluster.registered();
    tokio::time::timeout(Duration::from_secs(10), registered.wait_for(|r| !*r)).await.expect("the node notices").expect("watch");
    // SPEC section 12: a 30 s outage, ten times the lease TTL. The session is used all
    // along and a new one is accepted.
    let outage = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while Instant::now() < outage {
        echo_once(&mut ws, &format!("during the outage {i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (mut fresh, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("new sessions while etcd is away");
    echo_once(&mut fresh, "new").await;
    assert!(node.handle.state.is_ready(), "ready with the last good policy");

    etcd.start().await;
    let back = Instant::now();
    // Registered again within 5 s: the node says so, and its key is under a live lease.
    // etcd restores old leases on restart, and the node keeps a lease that is still alive
    // (revoking it would drop its sessions' fleet-wide slots), so the key alone proves
    // nothing: it must outlive the lease's TTL, kept alive by the node.
    tokio::time::timeout(Duration::from_secs(5), registered.wait_for(|r| *r)).await.expect("registered again within 5 s").expect("watch");
    assert!(back.elapsed() <= Duration::from_secs(5));
    let (lease, _) = eventually(Duration::from_secs(5), "the key under a live lease", || live_lease(&etcd, &k)).await;
    eventually(Duration::from_secs(10), "the lease kept alive past its TTL", || async {
        (back.elapsed() > Duration::from_secs(4) && live_lease(&etcd, &k).await.is_some_and(|(l, _)| l == lease)).then_some(())
    })
    .await;
    let _ = old_lease;
    echo_once(&mut ws, "after the outage").await;
    echo_once(&mut fresh, "after the outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_in_etcd_reaches_the_node_and_an_invalid_one_is_rejected() {
    let _ = logs();
    let etcd = Etcd::spawn().await;
    let (a, b) = (TestKey::generate("a", "ES256"), TestKey::generate("b", "ES256"));
    // No bootstrap policy: the node fails closed until etcd's policy arrives.
    let node = etcd_node(&etcd, None, 10).await;
    let state = node.handle.state.clone();
    let token_a = bearer(&a.token(json!({})));
    let token_b = bearer(&b.token(json!({})));
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &token_a)]).await);
    assert_eq!((r.status, r.code.as_str()), (503, "unavailable"));

    let v1 = etcd.put("/palisade/test/policy", policy(&[&a]).to_yaml()).await;
    eventually(Duration::from_secs(5), "policy v1 applied", || async { (state.policy().version() == v1 as u64).then_some(()) }).await;
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &token_a)]).await.expect("key a accepted");
    echo_once(&mut ws, "v1").await;

    // JSON works as well as YAML; the new key replaces the old one.
    let json_doc = serde_json::to_string(&serde_yaml_doc_to_json(&policy(&[&b]).to_yaml())).expect("json");
    let v2 = etcd.put("/palisade/test/policy", json_doc).await;
    eventually(Duration::from_secs(5), "policy v2 applied", || async { (state.policy().version() == v2 as u64).then_some(()) }).await;
    let r = refused(node.ws("/echo", &[ORIGIN, ("Authorization", &token_a)]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "token_invalid"));
    node.ws("/echo", &[ORIGIN, ("Authorization", &token_b)]).await.expect("key b accepted");

    // An invalid document: refused with its field, and v2 keeps serving.
    let mut bad = policy(&[&b]);
    bad.auth.keys[0].alg = "none".into();
    let v3 = etcd.put("/palisade/test/policy", bad.to_yaml()).await;
    let id = state.id().to_owned();
    let rejected = eventually(Duration::from_secs(5), "policy_rejected logged", || {
        let id = id.clone();
        async move { log_lines(&id, "policy_rejected").into_iter().find(|l| l["version"] == v3) }
    })
    .await;
    assert!(rejected["field"].as_str().is_some_and(|f| f.starts_with("auth.keys")), "names the field: {rejected}");
    assert_eq!(state.policy().version(), v2 as u64);
    node.ws("/echo", &[ORIGIN, ("Authorization", &token_b)]).await.expect("the last good policy keeps serving");
    // Not even YAML.
    let v4 = etcd.put("/palisade/test/policy", "origins: [unclosed").await;
    eventually(Duration::from_secs(5), "policy_rejected logged", || {
        let id = id.clone();
        async move { log_lines(&id, "policy_rejected").into_iter().find(|l| l["version"] == v4) }
    })
    .await;
    assert_eq!(state.policy().version(), v2 as u64);
    echo_once(&mut ws, "the live session stays").await;
}

fn serde_yaml_doc_to_json(yaml: &str) -> serde_json::Value {
    let p = palisade_policy::Policy::from_yaml_or_json(yaml).expect("policy");
    serde_json::to_value(&p).expect("policy as JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_is_accepted_once_across_the_fleet() {
    let etcd = Etcd::spawn().await;
    let key = TestKey::generate("k", "ES256");
    let p = policy(&[&key]);
    let (node_a, node_b) = (etcd_node(&etcd, Some(&p), 10).await, etcd_node(&etcd, Some(&p), 10).await);
    let token = key.token(json!({"sub": "tina"}));

    // Minted on A: stored in etcd under a lease, as JSON without any token.
    let ticket = ticket_of(&mint_ticket(&node_a, &token).await);
    let tkey = format!("/palisade/test/tickets/{ticket}");
    let (value, lease, _) = etcd.get(&tkey).await.expect("the ticket is in etcd");
    assert_ne!(lease, 0, "under a lease");
    let stored: serde_json::Value = serde_json::from_slice(&value).expect("JSON");
    assert_eq!((stored["sub"].as_str(), stored["origin"].as_str()), (Some("tina"), Some("https://app.example.com")));
    assert!(!String::from_utf8_lossy(&value).contains(&token), "no token in etcd");
    let mut c = etcd.client().await;
    let granted = c.lease_time_to_live(lease, None).await.expect("ttl").granted_ttl();
    assert_eq!(granted, 30, "the ticket's lease is its TTL");

    // Accepted once on B, refused afterwards on both.
    let (mut ws, _) = node_b.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await.expect("accepted on B");
    echo_once(&mut ws, "ticketed").await;
    assert!(etcd.get(&tkey).await.is_none(), "consumed");
    for node in [&node_a, &node_b] {
        let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await);
        assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    }

    // Two nodes racing for one ticket: exactly one wins, every time.
    for round in 0..8 {
        let ticket = ticket_of(&mint_ticket(if round % 2 == 0 { &node_a } else { &node_b }, &token).await);
        let path = format!("/echo?ticket={ticket}");
        let (ra, rb) = tokio::join!(node_a.ws(&path, &[ORIGIN]), node_b.ws(&path, &[ORIGIN]));
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: exactly one node accepts the ticket");
        let loser = if ra.is_ok() { rb } else { ra };
        let r = refused(loser);
        assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_fail_closed_while_etcd_is_away() {
    let mut etcd = Etcd::spawn().await;
    let key = TestKey::generate("k", "ES256");
    let node = etcd_node(&etcd, Some(&policy(&[&key])), 10).await;
    let token = key.token(json!({"sub": "fay"}));
    let ticket = ticket_of(&mint_ticket(&node, &token).await);

    etcd.stop();
    let r = mint_ticket(&node, &token).await;
    assert_eq!((r.status, r.code().as_str()), (503, "unavailable"), "no ticket without etcd");
    assert!(r.header("retry-after").is_some());
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"), "no ticket accepted without etcd");
    // Tokens still work: only tickets depend on etcd.
    node.ws("/echo", &[ORIGIN, ("Authorization", &bearer(&token))]).await.expect("JWT sessions while etcd is away");

    // The refused ticket was not consumed: once etcd is back it works, once.
    etcd.start().await;
    let (mut ws, _) = eventually(Duration::from_secs(5), "the ticket accepted after etcd's return", || async {
        node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await.ok()
    })
    .await;
    echo_once(&mut ws, "back").await;
    let r = refused(node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await);
    assert_eq!((r.status, r.code.as_str()), (403, "ticket_invalid"));
    ticket_of(&mint_ticket(&node, &token).await);
}
