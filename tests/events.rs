//! `palisade events` end to end, across processes: a real etcd, three nodes, the
//! controller as its own process, and the CLI. The fleet's audit events reach a follower
//! within a second with their node, code and trace id; filters (node, result, code,
//! user) hold both when following and for recent events; no token ever appears; and a
//! follower that stops reading never slows a node: it loses events and is told how many.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use palisade_node::config::EtcdConfig;
use palisade_proto::controller::v1 as pb;
use palisade_proto::controller::v1::fleet_control_client::FleetControlClient;
use palisade_testkit::etcd::Etcd;
use palisade_testkit::{Message, Pki, TestKey, TestNode, policy, refused};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

/// The two tests measure time: they run one after the other, not side by side.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    _etcd: Etcd,
    pki: Arc<Pki>,
    nodes: Vec<TestNode>,
    _controller: tokio::process::Child,
    addr: String,
    env: Vec<(String, String)>,
    key: TestKey,
}

async fn fleet(n: usize) -> Fleet {
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k1", "ES256");
    let mut p = policy(&[&key]);
    p.limits.per_ip.handshakes_per_second = 100_000.0;
    p.limits.per_ip.burst = 100_000;
    p.limits.per_user.handshakes_per_second = 100_000.0;
    p.limits.per_user.burst = 100_000;
    let mut nodes = Vec::new();
    for _ in 0..n {
        let endpoint = etcd.endpoint();
        nodes.push(
            TestNode::start_in(pki.clone(), Some(&p), move |cfg| {
                let mut e = EtcdConfig::new(vec![endpoint]);
                e.lease_ttl_seconds = 5;
                cfg.etcd = Some(e);
            })
            .await,
        );
    }
    let dir = pki.dir.path();
    let ctl = pki.control_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cfg = format!(
        "cluster = \"test\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{ca}\"\n\
         [nodes_tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{ca}\"\n[etcd]\nendpoints = [\"{e}\"]\n",
        c = ctl.cert.display(),
        k = ctl.key.display(),
        ca = pki.ca_path.display(),
        e = etcd.endpoint()
    );
    std::fs::write(dir.join("controller.toml"), cfg).expect("write");
    let controller = tokio::process::Command::new(BIN)
        .args(["controller", "--config", dir.join("controller.toml").to_str().expect("p")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("controller");
    let (cert, key_path) = pki.write("operator", &pki.client_cert("operator"));
    let addr = format!("127.0.0.1:{port}");
    let env = vec![
        ("PALISADE_CONTROLLER".to_string(), addr.clone()),
        ("PALISADE_CA".to_string(), pki.ca_path.display().to_string()),
        ("PALISADE_CERT".to_string(), cert.display().to_string()),
        ("PALISADE_KEY".to_string(), key_path.display().to_string()),
    ];
    let f = Fleet { _etcd: etcd, pki, nodes, _controller: controller, addr, env, key };
    palisade_testkit::eventually(Duration::from_secs(20), "every node reachable from the controller", || async {
        let (code, out, _) = f.cli(&["nodes", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && v.as_array().is_some_and(|a| a.len() == n && a.iter().all(|x| x["reachable"] == true))).then_some(())
    })
    .await;
    f
}

/// A `palisade events --follow -o json` process, its stdout read line by line.
struct Follower {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<Value>,
}

impl Follower {
    /// The next JSON line, within `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let line = tokio::time::timeout(within, self.lines.next_line()).await.ok()?.ok()??;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        self.seen.push(v.clone());
        Some(v)
    }

    /// Reads until an event satisfies `want`; returns it and the events before it.
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no event {what}; saw {:?}", self.seen));
            if v.get("event").is_none() {
                continue;
            }
            if want(&v) {
                return (v, before);
            }
            before.push(v);
        }
    }
}

impl Fleet {
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(BIN).args(args).envs(self.env.iter().cloned()).output().await.expect("run palisade");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `palisade events --follow -o json ARGS` and waits for its `watching` line
    /// naming every node (the one node of `--node`).
    async fn follow(&self, args: &[&str]) -> Follower {
        let mut child = tokio::process::Command::new(BIN)
            .args(["events", "--follow", "-o", "json"])
            .args(args)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("palisade events");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut f = Follower { child, lines, seen: Vec::new() };
        let first = f.next(Duration::from_secs(10)).await.expect("a watching line");
        let nodes = if args.contains(&"--node") { 1 } else { self.nodes.len() };
        assert_eq!(first["watching"].as_array().map(Vec::len), Some(nodes), "{first}");
        f
    }

    fn id(&self, i: usize) -> String {
        self.nodes[i].handle.state.id().to_owned()
    }

    /// Events printed by `palisade events -o json ARGS` (recent ones).
    async fn recent(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["events", "-o", "json"];
        a.extend(args);
        let (code, out, err) = self.cli(&a).await;
        assert_eq!(code, 0, "palisade {a:?}: {err}");
        out.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON line")).filter(|v| v.get("event").is_some()).collect()
    }

    async fn accepted(&self, node: usize, sub: &str) -> palisade_testkit::Ws {
        let t = format!("Bearer {}", self.key.token_for(sub));
        self.nodes[node].ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.expect("accepted").0
    }

    async fn refused_with(&self, node: usize, token: &str) -> String {
        let t = format!("Bearer {token}");
        refused(self.nodes[node].ws("/echo", &[ORIGIN, ("Authorization", &t)]).await).code
    }
}

fn is(v: &Value, node: &str, kind: &str, code: &str) -> bool {
    v["node"] == node && v["event"] == kind && v["code"] == code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_events_reach_followers_filtered_and_without_tokens() {
    let _one = SERIAL.lock().await;
    let f = fleet(3).await;
    let (n1, n2, n3) = (f.id(0), f.id(1), f.id(2));
    let mut all = f.follow(&[]).await;

    // A refused handshake on node 2 reaches the follower within a second, with its node,
    // code and trace id.
    let forged = TestKey::generate("k1", "ES256").token_for("mallory");
    assert_eq!(f.refused_with(1, &forged).await, "token_invalid");
    let at = Instant::now();
    let (e, _) = all.until("token_invalid on node 2", |v| is(v, &n2, "handshake", "token_invalid")).await;
    let took = at.elapsed();
    assert!(took < Duration::from_secs(1), "the event took {took:?}");
    println!("refused handshake on node 2 seen by `palisade events --follow` after {took:?}");
    assert_eq!(e["result"], "refused");
    assert_eq!(e["status"], 403);
    assert_eq!(e["route"], "/echo");
    assert_eq!(e["carrier"], "header");
    assert!(!e["reason"].as_str().unwrap_or_default().is_empty(), "the audit reason: {e}");
    let trace = e["trace_id"].as_str().unwrap_or_default();
    assert!(trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()), "trace id: {e}");

    // Filtered followers, started before the noise.
    let mut on_n3 = f.follow(&["--node", &n3]).await;
    let mut accepted = f.follow(&["--result", "accepted"]).await;
    let mut expired = f.follow(&["--code", "token_expired"]).await;
    let mut alice = f.follow(&["--user", "alice"]).await;

    // The noise: every kind of handshake on every node, a session end, a token in the
    // query string; then wait until the unfiltered follower has all of it, so that it was
    // offered to every follower before the markers below.
    let expired_token = f.key.token(serde_json::json!({"sub": "carol", "exp": palisade_testkit::now() - 3600}));
    let alice_token = f.key.token_for("alice");
    {
        let t = format!("Bearer {alice_token}");
        let (mut ws, _) = f.nodes[0].ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.expect("alice");
        // A message and the close in one write: the session ends on the close before it
        // writes the echo.
        ws.feed(Message::Text("seven b".into())).await.expect("queue");
        ws.close(None).await.expect("close");
        drop(ws);
    }
    assert_eq!(f.refused_with(1, &forged).await, "token_invalid");
    assert_eq!(f.refused_with(2, &expired_token).await, "token_expired");
    let bob_token = f.key.token_for("bob");
    let _bob = f.nodes[2].ws(&format!("/echo?access_token={bob_token}"), &[ORIGIN]).await.expect("bob by query").0;
    let (end, _) = all.until("alice's session end", |v| v["event"] == "session_closed" && v["subject"] == "alice").await;
    // Her message counted both ways in the event, though the session ended before it
    // wrote again.
    assert_eq!((end["bytes_in"].as_u64(), end["bytes_out"].as_u64()), (Some(7), Some(7)), "{end}");
    all.until("bob's handshake", |v| v["event"] == "handshake" && v["subject"] == "bob").await;
    let mut others = 0;
    while all.seen.iter().filter(|v| v["event"] == "handshake").count() < 5 {
        all.next(Duration::from_secs(5)).await.expect("the rest of the noise");
        others += 1;
        assert!(others < 100);
    }

    // One marker per filtered follower: what it printed before it matches its filter.
    let marker_n3 = f.refused_with(2, &forged).await;
    assert_eq!(marker_n3, "token_invalid");
    let (_, before) = on_n3.until("the node 3 marker", |v| is(v, &n3, "handshake", "token_invalid")).await;
    assert!(before.iter().all(|v| v["node"] == n3.as_str()), "--node {n3}: {before:?}");
    assert!(before.iter().any(|v| is(v, &n3, "handshake", "token_expired")), "{before:?}");

    let _dave = f.accepted(1, "dave").await;
    let (_, before) = accepted.until("dave's handshake", |v| v["subject"] == "dave").await;
    assert!(before.iter().all(|v| v["result"] == "accepted"), "--result accepted: {before:?}");
    assert!(before.iter().any(|v| v["subject"] == "alice") && before.iter().any(|v| v["subject"] == "bob"), "{before:?}");

    assert_eq!(f.refused_with(0, &expired_token).await, "token_expired");
    let (_, before) = expired.until("the expired marker", |v| is(v, &n1, "handshake", "token_expired")).await;
    assert_eq!(before.len(), 1, "--code token_expired: only node 3's: {before:?}");
    assert!(is(&before[0], &n3, "handshake", "token_expired"));

    let _alice2 = f.accepted(1, "alice").await;
    let (_, before) = alice.until("alice on node 2", |v| v["node"] == n2.as_str() && v["subject"] == "alice").await;
    assert!(before.iter().all(|v| v["subject"] == "alice"), "--user alice: {before:?}");
    assert!(before.iter().any(|v| v["event"] == "session_closed" && v["close_code"].as_u64().is_some_and(|c| c > 0)), "{before:?}");

    // Recent events (no --follow), with the same filters, from the nodes' memories.
    let recent = f.recent(&["--node", &n2, "--result", "refused", "--code", "token_invalid"]).await;
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert!(recent.iter().all(|v| is(v, &n2, "handshake", "token_invalid")));
    assert_eq!(recent[0]["trace_id"], e["trace_id"], "the same record, oldest first");
    let mine = f.recent(&["--user", "alice"]).await;
    assert!(mine.len() >= 3 && mine.iter().all(|v| v["subject"] == "alice"), "{mine:?}");
    let times: Vec<u64> = mine.iter().filter_map(|v| v["unix_ms"].as_u64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged in time order: {times:?}");
    let last2 = f.recent(&["--limit", "2"]).await;
    assert_eq!(last2.len(), 2);
    let (code, table, _) = f.cli(&["events", "--result", "refused"]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("TIME") && table.contains("TRACE ID"), "{table}");
    assert!(table.lines().any(|l| l.contains(&n2) && l.contains("token_invalid") && l.contains(trace)), "{table}");
    let (code, _, err) = f.cli(&["events", "--node", "no-such-node"]).await;
    assert_eq!(code, 1, "{err}");

    // An operator disconnect and a policy push are events too, with the call's trace id.
    let r = f.cli(&["disconnect", "--user", "dave", "--reason", "bye"]).await;
    assert_eq!(r.0, 0, "{}", r.2);
    let (d, _) = all.until("the disconnect", |v| v["event"] == "disconnect" && v["subject"] == "dave" && v["count"] == 1).await;
    assert_eq!(d["close_code"], 4003);
    let mut p = policy(&[&f.key]);
    p.limits.per_ip.burst = 100_000;
    p.limits.per_ip.handshakes_per_second = 100_000.0;
    p.limits.per_user.burst = 100_000;
    p.limits.per_user.handshakes_per_second = 100_000.0;
    let file = f.pki.dir.path().join("p2.yaml");
    std::fs::write(&file, p.to_yaml()).expect("w");
    let r = f.cli(&["policy", "apply", "-f", file.to_str().expect("p")]).await;
    assert_eq!(r.0, 0, "{}", r.2);
    let (pe, _) = all.until("a policy event", |v| v["event"] == "policy" && v["result"] == "applied").await;
    assert!(pe["policy_version"].as_u64().is_some_and(|v| v > 0), "{pe}");

    // No token in any event: every line printed, and every recent event.
    let everything = f.recent(&["--limit", "1000"]).await;
    let mut text: String = everything.iter().map(|v| v.to_string()).collect();
    for fl in [&all, &on_n3, &accepted, &expired, &alice] {
        text.extend(fl.seen.iter().map(|v| v.to_string()));
    }
    for (name, token) in [("forged", &forged), ("expired", &expired_token), ("alice", &alice_token), ("bob (query)", &bob_token)] {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!text.contains(token.as_str()) && !text.contains(signature), "the {name} token leaked into an event");
    }
    assert!(!text.contains("access_token"), "no query string in events");
    for fl in [all, on_n3, accepted, expired, alice] {
        let mut c = fl.child;
        let _ = c.kill().await;
    }
}

/// 200 accepted handshakes (each closed at once) on node 1, 8 at a time.
async fn handshakes(f: &Fleet, n: usize) -> Duration {
    let t = format!("Bearer {}", f.key.token_for("load"));
    let start = Instant::now();
    let done = futures_util::stream::iter(0..n)
        .map(|_| {
            let t = t.clone();
            async move { f.nodes[0].ws("/echo", &[ORIGIN, ("Authorization", &t)]).await.map(|_| ()) }
        })
        .buffer_unordered(8)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(done, n, "every handshake completes");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_never_slows_a_node() {
    let _one = SERIAL.lock().await;
    let f = fleet(3).await;
    handshakes(&f, 20).await; // warm-up: TLS session caches, code paths
    let baseline = handshakes(&f, 200).await;

    // Two followers that stop reading: a raw gRPC stream with a small flow-control window,
    // never polled after its first message, and a CLI whose stdout is never read.
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let (cert, key) = f.pki.client_cert("operator");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&f.pki.ca.cert_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", f.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .initial_stream_window_size(Some(4096))
        .connect()
        .await
        .expect("controller");
    let mut raw = FleetControlClient::new(channel)
        .watch_events(pb::WatchEventsRequest { follow: true, ..Default::default() })
        .await
        .expect("watch")
        .into_inner();
    let first = raw.message().await.expect("message").expect("watching");
    assert!(matches!(first.item, Some(pb::events_message::Item::Watching(ref w)) if w.node_ids.len() == 3), "{first:?}");
    let mut cli = tokio::process::Command::new(BIN)
        .args(["events", "--follow", "-o", "json"])
        .envs(f.env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("palisade events");
    let mut cli_out = BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let watching = tokio::time::timeout(Duration::from_secs(10), cli_out.next_line()).await.expect("in time").expect("read");
    assert!(watching.is_some_and(|l| l.contains("watching")));
    for n in &f.nodes {
        assert_eq!(n.handle.state.events().followers(), 1, "one controller stream per node, shared by both followers");
    }

    let stalled = handshakes(&f, 200).await;
    println!("200 handshakes: {baseline:?} without a follower, {stalled:?} with two stalled followers");
    assert!(
        stalled <= baseline * 3 + Duration::from_millis(300),
        "stalled followers slowed the node: {stalled:?} against {baseline:?} without"
    );
    // More events than any buffer on the way holds (each refused handshake is one).
    let forged = TestKey::generate("k1", "ES256").token_for("x");
    for _ in 0..400 {
        assert_eq!(f.refused_with(0, &forged).await, "token_invalid");
    }

    // Resumed, the raw follower is told how many it lost, then gets new events again.
    let mut lost = 0;
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lost == 0 || after == 0 {
        assert!(Instant::now() < deadline, "no dropped notice (lost {lost})");
        let m = tokio::time::timeout(Duration::from_secs(5), raw.message()).await.expect("in time").expect("ok").expect("open");
        match m.item {
            Some(pb::events_message::Item::Dropped(d)) if d.node_id.is_empty() => lost += d.count,
            Some(pb::events_message::Item::Event(_)) if lost > 0 => after += 1,
            _ => {}
        }
    }
    println!("the stalled raw follower was told it lost {lost} events");
    assert!(lost > 0);

    // When the followers go, the controller closes its node streams.
    drop(raw);
    let _ = cli.kill().await;
    palisade_testkit::eventually(Duration::from_secs(10), "no node streams without followers", || async {
        f.nodes.iter().all(|n| n.handle.state.events().followers() == 0).then_some(())
    })
    .await;
}
