//! The clustered fleet end to end, across processes: a real etcd, three nodes that
//! register in it, the controller as its own process, and every operator verb through
//! the `palisade` CLI (tables and `--output json`, exit codes).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_node::config::EtcdConfig;
use palisade_testkit::etcd::Etcd;
use palisade_testkit::{Message, Pki, TestKey, TestNode, close_code, next_data, policy};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

struct Fleet {
    _etcd: Etcd,
    pki: Arc<Pki>,
    nodes: Vec<TestNode>,
    controller: tokio::process::Child,
    env: Vec<(String, String)>,
    key: TestKey,
}

async fn fleet(n: usize) -> Fleet {
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k1", "ES256");
    let p = policy(&[&key]);
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
    // The controller process: server and node-client identity from the test CA.
    let dir = pki.dir.path();
    let ctl = pki.control_config();
    let (ctl_cert, ctl_key) = (dir.join("controller.pem"), dir.join("controller-key.pem"));
    std::fs::copy(&ctl.cert, &ctl_cert).expect("copy");
    std::fs::copy(&ctl.key, &ctl_key).expect("copy");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cfg = format!(
        r#"cluster = "test"
listen = "127.0.0.1:{port}"
[tls]
cert = "{c}"
key = "{k}"
ca = "{ca}"
[nodes_tls]
cert = "{c}"
key = "{k}"
ca = "{ca}"
[etcd]
endpoints = ["{e}"]
"#,
        c = ctl_cert.display(),
        k = ctl_key.display(),
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
    let (op_cert, op_key) = pki.client_cert("operator");
    std::fs::write(dir.join("operator.pem"), op_cert).expect("w");
    std::fs::write(dir.join("operator-key.pem"), op_key).expect("w");
    let env = vec![
        ("PALISADE_CONTROLLER".to_string(), format!("127.0.0.1:{port}")),
        ("PALISADE_CA".to_string(), pki.ca_path.display().to_string()),
        ("PALISADE_CERT".to_string(), dir.join("operator.pem").display().to_string()),
        ("PALISADE_KEY".to_string(), dir.join("operator-key.pem").display().to_string()),
    ];
    let f = Fleet { _etcd: etcd, pki, nodes, controller, env, key };
    // Wait until the controller sees every node (discovered through etcd) as reachable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = f.cli(&["nodes", "-o", "json"]).await;
        if code == 0
            && let Ok(v) = serde_json::from_str::<Value>(&out)
            && v.as_array().is_some_and(|a| a.len() == n && a.iter().all(|x| x["reachable"] == true))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the controller never saw {n} reachable nodes: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f
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

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let (code, out, err) = self.cli(&a).await;
        assert_eq!(code, 0, "palisade {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("palisade {args:?} printed no JSON ({e}): {out}"))
    }

    async fn open(&self, node: usize, sub: &str) -> palisade_testkit::Ws {
        self.open_with(node, &self.key.token_for(sub)).await
    }

    /// Stores the test policy as the fleet's (through the CLI), converged on every node.
    async fn store_policy(&self) {
        let file = self.pki.dir.path().join("stored-policy.yaml");
        std::fs::write(&file, policy(&[&self.key]).to_yaml()).expect("w");
        assert_eq!(self.json(&["policy", "apply", "-f", file.to_str().expect("p")]).await["converged"], true);
    }

    async fn open_with(&self, node: usize, token: &str) -> palisade_testkit::Ws {
        self.nodes[node].ws("/echo", &[ORIGIN, ("Authorization", &format!("Bearer {token}"))]).await.expect("open").0
    }
}

async fn echoes(ws: &mut palisade_testkit::Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
    assert_eq!(next_data(ws).await, Some(Message::Text(text.into())), "{text}");
}

/// `policy get`, edit, `policy apply`: the file remembers the version it was read at
/// (`# version N`), and a change made meanwhile (here a revocation) is not silently
/// undone: the apply and its dry run are refused, naming the versions, until `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_from_a_stale_get_is_refused() {
    let f = fleet(1).await;
    f.store_policy().await;
    let (code, got, err) = f.cli(&["policy", "get"]).await;
    assert_eq!(code, 0, "{err}");
    let read_at: u64 = got.lines().next().and_then(|l| l.strip_prefix("# version ")).and_then(|v| v.parse().ok()).expect("# version N");
    let file = f.pki.dir.path().join("edited.yaml");
    std::fs::write(&file, got.replace("https://app.example.com", "https://edited.example.com")).expect("w");
    let file = file.to_str().expect("p");

    let r = f.json(&["revoke", "--user", "zed"]).await;
    let now = r["version"].as_u64().expect("version");
    assert!(now > read_at);
    for args in [vec!["policy", "apply", "-f", file, "--dry-run"], vec!["policy", "apply", "-f", file]] {
        let (code, _, err) = f.cli(&args).await;
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(&format!("version {now}, expected {read_at}")) && err.contains("--force"), "{args:?}: {err}");
    }
    let (_, current, _) = f.cli(&["policy", "get"]).await;
    assert!(current.starts_with(&format!("# version {now}\n")) && current.contains("zed"), "the revocation stands: {current}");
    // --expected-version names the version to compare with instead of the header.
    let (code, _, err) = f.cli(&["policy", "apply", "-f", file, "--expected-version", &read_at.to_string()]).await;
    assert_eq!(code, 1, "{err}");
    // --force stores the file over whatever came since.
    let r = f.json(&["policy", "apply", "-f", file, "--force"]).await;
    assert_eq!(r["converged"], true, "{r}");
    let (_, current, _) = f.cli(&["policy", "get"]).await;
    assert!(current.contains("https://edited.example.com") && !current.contains("zed"), "{current}");
}

/// The narrower verbs reach exactly what they name: `disconnect --node N --code C`
/// closes the subject's session on that node only, with that code; `revoke --session JTI`
/// one token (live and at the next handshake, on every node), `revoke --user U
/// --issued-before T` only that subject's older tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_revoke_reach_exactly_what_they_name() {
    let f = fleet(2).await;
    // Revocations change the fleet's stored policy: store one first.
    f.store_policy().await;
    // stats --watch answers again every second: a session opened meanwhile shows in a
    // later answer.
    let watch = tokio::process::Command::new(BIN)
        .args(["stats", "--watch", "-o", "json"])
        .envs(f.env.iter().cloned())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stats --watch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut dave0 = f.open(0, "dave").await;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let _ = std::process::Command::new("kill").arg(watch.id().expect("pid").to_string()).status();
    let out = watch.wait_with_output().await.expect("output");
    // The last answer may be cut by the kill.
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>().map_while(Result::ok).collect();
    assert!(answers.len() >= 4, "one answer a second: {}", String::from_utf8_lossy(&out.stdout));
    let active: Vec<u64> = answers.iter().filter_map(|a| a["totals"]["active_connections"].as_u64()).collect();
    assert_eq!((active.first(), active.last()), (Some(&0), Some(&1)), "{active:?}");
    let node1 = f.nodes[1].handle.state.id().to_owned();
    let mut dave1 = f.open(1, "dave").await;
    let r = f.json(&["disconnect", "--user", "dave", "--node", &node1, "--code", "4100"]).await;
    assert_eq!(r["total"], 1, "{r}");
    assert_eq!(close_code(&mut dave1, Duration::from_secs(2)).await, Some(4100));
    echoes(&mut dave0, "dave stays on the other node").await;

    let (e1, e2) = (f.key.token(json!({"sub": "erin", "jti": "erin-1"})), f.key.token(json!({"sub": "erin", "jti": "erin-2"})));
    let (mut erin1, mut erin2) = (f.open_with(0, &e1).await, f.open_with(1, &e2).await);
    let r = f.json(&["revoke", "--session", "erin-1"]).await;
    assert_eq!(r["converged"], true, "{r}");
    assert_eq!(close_code(&mut erin1, Duration::from_secs(2)).await, Some(4003));
    echoes(&mut erin2, "erin's other token").await;
    for n in &f.nodes {
        let r = palisade_testkit::refused(n.ws("/echo", &[ORIGIN, ("Authorization", &format!("Bearer {e1}"))]).await);
        assert_eq!(r.code, "token_revoked");
    }

    // A token issued in 2001 and one issued now; the cut is in 2020.
    let (old, new) = (f.key.token(json!({"sub": "frank", "iat": 1_000_000_000})), f.key.token_for("frank"));
    let (mut frank_old, mut frank_new) = (f.open_with(0, &old).await, f.open_with(1, &new).await);
    let r = f.json(&["revoke", "--user", "frank", "--issued-before", "2020-01-01T00:00:00Z"]).await;
    assert_eq!(r["converged"], true, "{r}");
    assert_eq!(close_code(&mut frank_old, Duration::from_secs(2)).await, Some(4003));
    echoes(&mut frank_new, "frank's newer token").await;
    let r = palisade_testkit::refused(f.nodes[1].ws("/echo", &[ORIGIN, ("Authorization", &format!("Bearer {old}"))]).await);
    assert_eq!(r.code, "token_revoked");
    let _still = f.open_with(0, &new).await;
    // --issued-before names tokens of a subject, not one token.
    let (code, _, err) = f.cli(&["revoke", "--session", "erin-2", "--issued-before", "2020-01-01T00:00:00Z"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("issued_before"), "{err}");
    echoes(&mut erin2, "nothing was revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_verbs_across_the_fleet() {
    let f = fleet(3).await;
    // Nodes appear in `palisade nodes` (table too).
    let (code, table, _) = f.cli(&["nodes"]).await;
    assert_eq!(code, 0);
    for n in &f.nodes {
        assert!(table.contains(n.handle.state.id()), "{table}");
    }

    let mut alices = Vec::new();
    for i in 0..3 {
        alices.push(f.open(i, "alice").await);
    }
    let mut bob = f.open(0, "bob").await;

    // A policy applied through the CLI reaches every node.
    let mut p2 = policy(&[&f.key]);
    p2.origins.allow.push("https://new.example.org".into());
    let file = f.pki.dir.path().join("p2.yaml");
    std::fs::write(&file, p2.to_yaml()).expect("w");
    let (code, diff, _) = f.cli(&["policy", "diff", "-f", file.to_str().expect("p")]).await;
    assert_eq!(code, 0);
    assert!(diff.contains("+  - https://new.example.org") || diff.contains("https://new.example.org"), "{diff}");
    // A dry run validates on every node and changes nothing.
    let before = f.nodes[0].handle.state.policy().version();
    let r = f.json(&["policy", "apply", "-f", file.to_str().expect("p"), "--dry-run"]).await;
    assert_eq!(r["converged"], true, "{r}");
    for n in &f.nodes {
        assert_eq!(n.handle.state.policy().version(), before);
    }
    let r = f.json(&["policy", "apply", "-f", file.to_str().expect("p")]).await;
    assert_eq!(r["converged"], true, "{r}");
    let version = r["version"].as_u64().expect("version");
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(3));
    for n in &f.nodes {
        assert_eq!(n.handle.state.policy().version(), version, "every node reports the new version");
    }
    let got = f.json(&["policy", "get"]).await;
    assert_eq!(got["version"].as_u64(), Some(version));

    // FindSubject / connections.
    let conns = f.json(&["connections", "--user", "alice"]).await;
    let list = conns["connections"].as_array().expect("list");
    assert_eq!(list.len(), 3);
    let mut on: Vec<&str> = list.iter().filter_map(|c| c["node"].as_str()).collect();
    on.sort();
    on.dedup();
    assert_eq!(on.len(), 3, "one on every node");
    let all = f.json(&["connections"]).await;
    assert_eq!(all["connections"].as_array().map(Vec::len), Some(4));
    let node0 = f.nodes[0].handle.state.id().to_owned();
    let on0 = f.json(&["connections", "--node", &node0]).await;
    assert_eq!(on0["connections"].as_array().map(Vec::len), Some(2), "alice and bob on the first node");
    let (code, table, _) = f.cli(&["connections", "--user", "alice"]).await;
    assert_eq!(code, 0);
    assert_eq!(table.lines().filter(|l| l.contains("alice")).count(), 3, "{table}");

    // send --user reaches every session of the subject.
    let r = f.json(&["send", "--user", "alice", "--data", r#"{"notice":"hello"}"#]).await;
    assert_eq!(r["total"], 3);
    for ws in &mut alices {
        assert_eq!(next_data(ws).await, Some(Message::Text(r#"{"notice":"hello"}"#.into())));
    }
    // disconnect --user closes them on every node; bob stays.
    let r = f.json(&["disconnect", "--user", "alice"]).await;
    assert_eq!(r["total"], 3);
    for ws in &mut alices {
        assert_eq!(close_code(ws, Duration::from_secs(2)).await, Some(4003));
    }
    bob.send(Message::Text("still".into())).await.expect("send");
    assert_eq!(next_data(&mut bob).await, Some(Message::Text("still".into())));

    // revoke --user applies to live sessions too.
    let r = f.json(&["revoke", "--user", "bob"]).await;
    assert_eq!(r["converged"], true);
    assert_eq!(close_code(&mut bob, Duration::from_secs(2)).await, Some(4003));

    // Key rotation through the CLI.
    let k2 = TestKey::generate("k2", "ES256");
    let pem = f.pki.dir.path().join("k2.pem");
    std::fs::write(&pem, k2.doc.public_key_pem.clone().expect("pem")).expect("w");
    let r = f.json(&["keys", "add", "--kid", "k2", "--alg", "ES256", "--public-key", pem.to_str().expect("p")]).await;
    assert_eq!(r["converged"], true);
    let t2 = format!("Bearer {}", k2.token_for("carol"));
    let t1 = format!("Bearer {}", f.key.token_for("carol"));
    assert!(f.nodes[1].ws("/echo", &[ORIGIN, ("Authorization", &t2)]).await.is_ok());
    let keys = f.json(&["keys", "list"]).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2));
    f.json(&["keys", "retire", "--kid", "k1"]).await;
    let r = palisade_testkit::refused(f.nodes[2].ws("/echo", &[ORIGIN, ("Authorization", &t1)]).await);
    assert_eq!(r.code, "token_invalid");

    // Stats, aggregated from the nodes' WatchStats streams (one value a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = f.json(&["stats"]).await;
        assert_eq!(s["nodes"].as_array().map(Vec::len), Some(3));
        if s["totals"]["handshakes_accepted"].as_u64().unwrap_or(0) >= 5 {
            // The token cache's figures are the sums of the nodes' (in one answer).
            for k in ["hits", "entries"] {
                let nodes: Option<u64> = s["nodes"].as_array().and_then(|n| n.iter().map(|n| n["token_cache"][k].as_u64()).sum());
                assert_eq!(s["totals"]["token_cache"][k].as_u64(), nodes, "token_cache.{k}: {s}");
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "fleet totals never caught up: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Errors: an invalid policy names the field and exits 1; a usage error exits 2.
    let bad = f.pki.dir.path().join("bad.yaml");
    let mut invalid = policy(&[&f.key]);
    invalid.limits.per_ip.max_connections = 0;
    std::fs::write(&bad, invalid.to_yaml()).expect("w");
    let (code, _, err) = f.cli(&["policy", "apply", "-f", bad.to_str().expect("p")]).await;
    assert_eq!(code, 1);
    assert!(err.contains("limits.per_ip.max_connections"), "{err}");
    let (code, _, _) = f.cli(&["disconnect"]).await;
    assert_eq!(code, 2);

    // Drain one node through the controller.
    let id = f.nodes[2].handle.state.id().to_owned();
    let r = f.json(&["drain", &id]).await;
    assert_eq!(r["node"], id.as_str());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f.nodes[2].handle.state.is_draining() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_controller_leaves_every_node_serving() {
    let mut f = fleet(2).await;
    let mut a = f.open(0, "dora").await;
    let mut b = f.open(1, "dora").await;
    f.controller.kill().await.expect("kill controller");
    let (code, _, err) = f.cli(&["nodes"]).await;
    assert_eq!(code, 1, "the CLI says the controller is unreachable");
    assert!(err.contains("cannot reach the controller"), "{err}");
    for ws in [&mut a, &mut b] {
        ws.send(Message::Text("alive".into())).await.expect("send");
        assert_eq!(next_data(ws).await, Some(Message::Text("alive".into())));
    }
    // New clients are still admitted.
    let _c = f.open(1, "erin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pushed_ahead_of_the_fleet_is_reported_diverged_not_ok() {
    let f = fleet(2).await;
    let first = f.pki.dir.path().join("first.yaml");
    std::fs::write(&first, policy(&[&f.key]).to_yaml()).expect("w");
    let r = f.json(&["policy", "apply", "-f", first.to_str().expect("p")]).await;
    assert_eq!(r["converged"], true, "{r}");
    let current = r["version"].as_u64().expect("version");
    // Someone pushes straight to node 0, far ahead of the fleet's etcd revision.
    let mut direct = policy(&[&f.key]);
    direct.origins.allow.push("https://direct.example.org".into());
    f.nodes[0].handle.state.policy().apply(&direct, current + 1000).expect("direct push");
    let mut p2 = policy(&[&f.key]);
    p2.origins.allow.push("https://fleet.example.org".into());
    // A rule for a route no node serves is allowed, with a warning.
    p2.access = vec![palisade_policy::access::AccessRule {
        route: "/nowhere".into(),
        require: palisade_policy::access::Require { scopes: vec!["x".into()], ..Default::default() },
    }];
    let file = f.pki.dir.path().join("fleet.yaml");
    std::fs::write(&file, p2.to_yaml()).expect("w");
    let (code, out, err) = f.cli(&["policy", "apply", "-f", file.to_str().expect("p"), "-o", "json"]).await;
    assert!(err.contains("warning: access[0].route: no registered node serves `/nowhere`"), "{err}");
    assert_eq!(code, 1, "not converged: {out} {err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["converged"], false, "{r}");
    let version = r["version"].as_u64().expect("version");
    let nodes = r["nodes"].as_array().expect("nodes");
    let id0 = f.nodes[0].handle.state.id();
    let diverged = nodes.iter().find(|n| n["node"] == id0).expect("node 0");
    assert_eq!(diverged["ok"], false, "ahead of the fleet is not ok: {diverged}");
    assert_eq!(diverged["version"].as_u64(), Some(current + 1000), "{diverged}");
    let err0 = diverged["error"].as_str().unwrap_or_default();
    assert!(err0.contains("diverged") && err0.contains(&version.to_string()), "both versions named: {err0}");
    let ok = nodes.iter().find(|n| n["node"] != id0).expect("node 1");
    assert_eq!((ok["ok"].as_bool(), ok["version"].as_u64()), (Some(true), Some(version)), "{ok}");

    // `policy status` says the same: node 0 diverged with its own version, node 1 ok.
    let (code, out, err) = f.cli(&["policy", "status", "-o", "json"]).await;
    assert_eq!(code, 1, "a diverged fleet has not converged: {out} {err}");
    let st: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((st["fleet_version"].as_u64(), st["converged"].as_bool()), (Some(version), Some(false)), "{st}");
    let by_id = |id: &str| st["nodes"].as_array().expect("nodes").iter().find(|n| n["node"] == id).cloned().expect("listed");
    let d = by_id(id0);
    assert_eq!((d["state"].as_str(), d["version"].as_u64()), (Some("diverged"), Some(current + 1000)), "{d}");
    assert!(!d["since"].as_str().unwrap_or_default().is_empty(), "since when: {d}");
    let o = by_id(f.nodes[1].handle.state.id());
    assert_eq!((o["state"].as_str(), o["version"].as_u64(), o["since"].as_str()), (Some("ok"), Some(version), Some("")), "{o}");
    let (_, table, _) = f.cli(&["policy", "status"]).await;
    assert!(table.contains("diverged") && table.contains(&format!("fleet version {version}")), "{table}");
}

/// A node process that misses a push (stopped with SIGSTOP) is reported unreachable, then
/// converges through its etcd watch once it runs again, and `policy status` shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_push_converges_through_its_watch_and_status_shows_it() {
    let f = fleet(1).await;
    let dir = f.pki.dir.path().to_path_buf();
    std::fs::write(dir.join("sleeper-policy.yaml"), policy(&[&f.key]).to_yaml()).expect("w");
    let ctl = f.pki.node_control_config("sleeper");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (wss, control) = (free(), free());
    let cfg = format!(
        "id = \"sleeper\"\ncluster = \"test\"\npolicy_file = \"sleeper-policy.yaml\"\n[listen]\nwss = \"127.0.0.1:{wss}\"\ncontrol = \"127.0.0.1:{control}\"\n[tls]\ncert = \"wss.pem\"\nkey = \"wss-key.pem\"\n[control]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[[routes]]\npath = \"/echo\"\necho = true\n[etcd]\nendpoints = [\"{}\"]\nlease_ttl_seconds = 60\n",
        ctl.cert.display(),
        ctl.key.display(),
        ctl.ca.display(),
        f._etcd.endpoint()
    );
    std::fs::write(dir.join("sleeper.toml"), cfg).expect("w");
    let mut child = tokio::process::Command::new(BIN)
        .args(["node", "--config", dir.join("sleeper.toml").to_str().expect("p")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node process");
    let pid = child.id().expect("pid").to_string();
    palisade_testkit::eventually(Duration::from_secs(20), "the controller reaches both nodes", || async {
        let (code, out, _) = f.cli(&["nodes", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && v.as_array()?.len() == 2 && v.as_array()?.iter().all(|n| n["reachable"] == true)).then_some(())
    })
    .await;
    let file = dir.join("p1.yaml");
    std::fs::write(&file, policy(&[&f.key]).to_yaml()).expect("w");
    let r = f.json(&["policy", "apply", "-f", file.to_str().expect("p")]).await;
    assert_eq!(r["converged"], true, "{r}");
    let v1 = r["version"].as_u64().expect("version");

    // The node stops running (it keeps its sockets and its 60 s lease): the push misses it.
    assert!(tokio::process::Command::new("kill").args(["-STOP", &pid]).status().await.expect("kill").success());
    let mut p2 = policy(&[&f.key]);
    p2.origins.allow.push("https://later.example.org".into());
    std::fs::write(&file, p2.to_yaml()).expect("w");
    let (code, out, _) = f.cli(&["policy", "apply", "-f", file.to_str().expect("p"), "-o", "json"]).await;
    assert_eq!(code, 1, "not converged: {out}");
    let r: Value = serde_json::from_str(&out).expect("json");
    let v2 = r["version"].as_u64().expect("version");
    let missed = r["nodes"].as_array().expect("nodes").iter().find(|n| n["node"] == "sleeper").cloned().expect("sleeper");
    assert_eq!(missed["ok"], false, "{missed}");
    let (code, out, _) = f.cli(&["policy", "status", "-o", "json"]).await;
    assert_eq!(code, 1);
    let st: Value = serde_json::from_str(&out).expect("json");
    let sleeper = st["nodes"].as_array().expect("nodes").iter().find(|n| n["node"] == "sleeper").cloned().expect("sleeper");
    assert_eq!((sleeper["state"].as_str(), sleeper["version"].as_u64()), (Some("unreachable"), Some(v1)), "last version seen: {sleeper}");
    assert!(!sleeper["since"].as_str().unwrap_or_default().is_empty(), "since the missed push: {sleeper}");

    // Running again, the node converges through its etcd watch (no second push).
    assert!(tokio::process::Command::new("kill").args(["-CONT", &pid]).status().await.expect("kill").success());
    palisade_testkit::eventually(Duration::from_secs(20), "the sleeper converges through its watch", || async {
        let (code, out, _) = f.cli(&["policy", "status", "-o", "json"]).await;
        let st: Value = serde_json::from_str(&out).ok()?;
        let s = st["nodes"].as_array()?.iter().find(|n| n["node"] == "sleeper")?.clone();
        (code == 0 && st["converged"] == true && s["state"] == "ok" && s["version"].as_u64() == Some(v2) && s["since"] == "").then_some(())
    })
    .await;
    let _ = child.kill().await;
}

/// `connections --user` shows a capped subject's fleet-wide slots and the cap; `stats`
/// counts the reservations and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_a_capped_subject_show_the_fleet_count_and_the_cap() {
    let f = fleet(2).await;
    let mut capped = policy(&[&f.key]);
    capped.limits.per_user.fleet_max_connections = Some(3);
    let file = f.pki.dir.path().join("capped.yaml");
    std::fs::write(&file, capped.to_yaml()).expect("w");
    let r = f.json(&["policy", "apply", "-f", file.to_str().expect("p")]).await;
    assert_eq!(r["converged"], true, "{r}");
    let _a = f.open(0, "frank").await;
    let _b = f.open(1, "frank").await;
    let r = f.json(&["connections", "--user", "frank"]).await;
    assert_eq!(r["connections"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!((r["fleet"]["connections"].as_u64(), r["fleet"]["max_connections"].as_u64()), (Some(2), Some(3)), "{r}");
    let (code, table, _) = f.cli(&["connections", "--user", "frank"]).await;
    assert_eq!(code, 0);
    assert!(table.contains("fleet-wide: 2 of 3 connections"), "{table}");
    // A subject without sessions holds no slot.
    let r = f.json(&["connections", "--user", "nobody"]).await;
    assert_eq!(r["fleet"]["connections"].as_u64(), Some(0), "{r}");
    let _c = f.open(0, "frank").await;
    let t = format!("Bearer {}", f.key.token_for("frank"));
    let refused = palisade_testkit::refused(f.nodes[1].ws("/echo", &[ORIGIN, ("Authorization", &t)]).await);
    assert_eq!(refused.status, 429);
    let totals = palisade_testkit::eventually(Duration::from_secs(10), "the stats to count the cap", || async {
        let s = f.json(&["stats"]).await;
        (s["totals"]["fleet_cap"]["reserved"].as_u64() == Some(3) && s["totals"]["fleet_cap"]["refused"].as_u64() == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(totals["totals"]["fleet_cap"]["fallbacks"].as_u64(), Some(0), "{totals}");
    assert!(totals["totals"]["wss_cert_seconds_left"].as_i64().is_some_and(|s| s > 0), "{totals}");
}
