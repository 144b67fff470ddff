//! The fleet-wide per-user connection cap (`limits.per_user.fleet_max_connections`) with a
//! real etcd and real nodes: exact across nodes and under races, slots freed by closed
//! sessions and by a killed node's lease, and the documented fallback when etcd is away.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use palisade_node::config::EtcdConfig;
use palisade_policy::Policy;
use palisade_testkit::etcd::Etcd;
use palisade_testkit::{Message, Pki, TestKey, TestNode, Ws, eventually, policy, refused, ws_connect};
use serde_json::json;

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");
const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn capped(key: &TestKey, cap: u64) -> Policy {
    let mut p = policy(&[key]);
    p.limits.per_user.fleet_max_connections = Some(cap);
    p.limits.per_user.handshakes_per_second = 1000.0;
    p.limits.per_user.burst = 1000;
    p
}

async fn nodes(etcd: &Etcd, pki: &Arc<Pki>, p: &Policy, n: usize) -> Vec<TestNode> {
    let mut out = Vec::new();
    for _ in 0..n {
        let endpoint = etcd.endpoint();
        let node = TestNode::start_in(pki.clone(), Some(p), move |cfg| {
            let mut e = EtcdConfig::new(vec![endpoint]);
            e.lease_ttl_seconds = 3;
            cfg.etcd = Some(e);
        })
        .await;
        let mut registered = node.handle.state.etcd().expect("etcd").registered();
        tokio::time::timeout(Duration::from_secs(10), registered.wait_for(|r| *r)).await.expect("registered").expect("watch");
        out.push(node);
    }
    out
}

async fn open(node: &TestNode, key: &TestKey, sub: &str) -> Result<Ws, palisade_testkit::Refused> {
    let t = format!("Bearer {}", key.token(json!({"sub": sub})));
    match node.ws("/echo", &[ORIGIN, ("Authorization", &t)]).await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(refused(Err(e))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_capped_fleet_wide_gets_exactly_its_cap_across_nodes() {
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let fleet = nodes(&etcd, &pki, &capped(&key, 3), 3).await;
    // Three sessions spread over three nodes; the fourth is refused on any node.
    let mut held = Vec::new();
    for n in &fleet {
        held.push(open(n, &key, "carol").await.expect("under the fleet cap"));
    }
    for n in &fleet {
        let r = open(n, &key, "carol").await.expect_err("over the fleet cap");
        assert_eq!((r.status, r.code.as_str()), (429, "too_many_connections"));
    }
    // Another subject is not affected.
    let _other = open(&fleet[0], &key, "someone-else").await.expect("other subjects are free");
    // Closing one session on node 1 frees a slot for node 0.
    let mut closing = held.remove(1);
    closing.send(Message::Close(None)).await.expect("close");
    drop(closing);
    let _again = eventually(Duration::from_secs(5), "the freed slot is taken on another node", || async {
        open(&fleet[0], &key, "carol").await.ok()
    })
    .await;
    assert!(open(&fleet[2], &key, "carol").await.is_err(), "the cap holds again");
    assert!(fleet.iter().map(|n| n.handle.state.fleet_cap.reserved.load(Ordering::Relaxed)).sum::<u64>() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_handshakes_over_three_nodes_get_exactly_the_cap() {
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let fleet = Arc::new(nodes(&etcd, &pki, &capped(&key, 3), 3).await);
    let key = Arc::new(key);
    let attempts: Vec<_> = (0..10)
        .map(|i| {
            let fleet = fleet.clone();
            let key = key.clone();
            tokio::spawn(async move { open(&fleet[i % 3], &key, "dave").await })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused_n = 0;
    for a in attempts {
        match a.await.expect("join") {
            Ok(ws) => accepted.push(ws),
            Err(r) => {
                assert_eq!((r.status, r.code.as_str()), (429, "too_many_connections"));
                refused_n += 1;
            }
        }
    }
    assert_eq!((accepted.len(), refused_n), (3, 7), "exactly the cap, under races");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_slots_come_free_within_its_lease_ttl() {
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let p = capped(&key, 1);
    let survivor = nodes(&etcd, &pki, &p, 1).await.remove(0);
    // A node process that holds erin's one slot, then is SIGKILLed.
    let dir = pki.dir.path();
    std::fs::write(dir.join("capped.yaml"), p.to_yaml()).expect("policy");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    const TTL: u64 = 3;
    let tail = format!("[etcd]\nendpoints = [\"{}\"]\nlease_ttl_seconds = {TTL}\n", etcd.endpoint());
    std::fs::write(
        dir.join("victim.toml"),
        palisade_testkit::node_toml(port, "id = \"victim\"\ncluster = \"test\"\npolicy_file = \"capped.yaml\"", &tail),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(BIN)
        .args(["node", "--config", dir.join("victim.toml").to_str().expect("path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn palisade");
    let _output = palisade_testkit::capture_lines(&mut child);
    let url = format!("wss://localhost:{port}/echo");
    let t = format!("Bearer {}", key.token(json!({"sub": "erin"})));
    let _held = eventually(Duration::from_secs(10), "a session on the node process", || async {
        ws_connect(&url, &[ORIGIN, ("Authorization", &t)], Some(survivor.tls.clone())).await.ok()
    })
    .await;
    let r = open(&survivor, &key, "erin").await.expect_err("the slot is held on the other node");
    assert_eq!(r.code, "too_many_connections");
    let pid = child.id().expect("pid").to_string();
    assert!(tokio::process::Command::new("kill").args(["-KILL", &pid]).status().await.expect("kill").success());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("the node died");
    let killed = Instant::now();
    let _ws = eventually(Duration::from_secs(TTL + 2), "the killed node's slot to come free", || async {
        open(&survivor, &key, "erin").await.ok()
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(TTL + 2), "freed within the lease TTL: {:?}", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_away_the_node_falls_back_to_its_own_cap_and_recovers() {
    let mut etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let mut p = capped(&key, 1);
    p.limits.per_user.max_connections = 2;
    let node = nodes(&etcd, &pki, &p, 1).await.remove(0);
    let _one = open(&node, &key, "frank").await.expect("first");
    assert_eq!(open(&node, &key, "frank").await.expect_err("fleet cap 1").code, "too_many_connections");
    etcd.stop();
    // The per-node cap (2) applies: one more, then 429; the fallback is counted.
    let _two =
        eventually(Duration::from_secs(15), "the fallback to the per-node cap", || async { open(&node, &key, "frank").await.ok() }).await;
    assert_eq!(open(&node, &key, "frank").await.expect_err("per-node cap 2").code, "too_many_connections");
    assert!(node.handle.state.fleet_cap.fallbacks.load(Ordering::Relaxed) >= 1, "counted");
    etcd.start().await;
    // Back with etcd, the node registers again and the fleet cap holds for new sessions.
    let mut registered = node.handle.state.etcd().expect("etcd").registered();
    tokio::time::timeout(Duration::from_secs(15), registered.wait_for(|r| *r)).await.expect("registered again").expect("watch");
    let other = open(&node, &key, "gina").await.expect("gina's first");
    assert_eq!(open(&node, &key, "gina").await.expect_err("fleet cap 1 again").code, "too_many_connections");
    drop(other);
}

/// A release that etcd does not answer (etcd frozen for 2 s: shorter than the lease,
/// longer than the request timeout) is retried until it is done, on the same lease: the
/// subject's cap is whole again, not one slot short for the node's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_during_an_etcd_stall_is_retried_until_done() {
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let endpoint = etcd.endpoint();
    let node = TestNode::start_in(pki.clone(), Some(&capped(&key, 1)), move |cfg| {
        let mut e = EtcdConfig::new(vec![endpoint]);
        e.lease_ttl_seconds = 10;
        e.timeout_ms = 300;
        cfg.etcd = Some(e);
    })
    .await;
    let mut registered = node.handle.state.etcd().expect("etcd").registered();
    tokio::time::timeout(Duration::from_secs(10), registered.wait_for(|r| *r)).await.expect("registered").expect("watch");
    let slots = "/palisade/test/users/ZG9yYQ/"; // the subject, base64url
    let mut ws = open(&node, &key, "dora").await.expect("the one slot");
    assert_eq!(etcd.keys(slots).await.len(), 1);

    etcd.pause();
    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);
    // The first attempts time out (300 ms each) while etcd is frozen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.resume();
    eventually(Duration::from_secs(6), "the slot released once etcd answers", || async { etcd.keys(slots).await.is_empty().then_some(()) })
        .await;
    let _again = open(&node, &key, "dora").await.expect("the cap is whole again");
}
