//! The `palisade` binary as operators run it: a node's logs never hold a token, the dev
//! fleet prints a working token and websocat command, token helpers and exit codes.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_testkit::{Message, Pki, TestKey, next_data, policy, ws_connect};
use serde_json::json;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// Collects a child's stdout and stderr lines.
struct Captured {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Captured {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn palisade");
    let lines = palisade_testkit::capture_lines(&mut child);
    Captured { child, lines }
}

/// The variables of the `export K=V ...` line dev prints for operator commands.
fn exported(line: &str) -> Vec<(String, String)> {
    line.trim()
        .trim_start_matches("export ")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

impl Captured {
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..300 {
            if let Some(l) = self.lines.lock().expect("lock").iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{needle}` never appeared in:\n{}", self.text());
    }
    fn text(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }
    async fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid").to_string();
        let _ = Command::new("kill").args([sig, &pid]).status().await;
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("exits").expect("status")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_logs_never_contain_tokens() {
    palisade_testkit::init();
    let pki = Pki::new();
    let key = TestKey::generate("k", "ES256");
    let dir = pki.dir.path();
    std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
    let port = free_port();
    std::fs::write(dir.join("node.toml"), palisade_testkit::node_toml(port, "id = \"log-node\"\ndrain_deadline_seconds = 1", ""))
        .expect("config");
    std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
    let cfg = dir.join("node.toml");
    let mut node = spawn(
        &["node", "--config", cfg.to_str().expect("path")],
        &[("PALISADE_POLICY_FILE", dir.join("policy.yaml").to_str().expect("p"))],
    );
    node.wait_for("node_started").await;
    let url = |q: &str| format!("wss://127.0.0.1:{port}/echo{q}");
    let tls = Some(pki.client_tls());
    let origin = ("Origin", "https://app.example.com");

    let good = key.token(json!({"sub": "logan"}));
    let expired = key.token(json!({"sub": "logan", "exp": palisade_testkit::now() - 3600}));
    let forged = format!("{}AAAA", &good[..good.len() - 4]);
    let mut secrets = vec![good.clone(), expired.clone(), forged.clone()];
    let mut attempts = 0;
    for token in [&good, &expired, &forged] {
        let header = format!("Bearer {token}");
        let proto = format!("chat, bearer.{token}");
        let _ = ws_connect(&url(""), &[origin, ("Authorization", &header)], tls.clone()).await;
        let _ = ws_connect(&url(""), &[origin, ("Sec-WebSocket-Protocol", &proto)], tls.clone()).await;
        let _ = ws_connect(&url(&format!("?access_token={token}&x=1")), &[origin], tls.clone()).await;
        let _ = ws_connect(&url(&format!("?token={token}")), &[origin], tls.clone()).await;
        attempts += 4;
    }
    // A ticket, minted and then used.
    let body = r#"{"origin":"https://app.example.com"}"#;
    let req =
        format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let r = palisade_testkit::raw_tls(([127, 0, 0, 1], port).into(), pki.client_tls(), req.as_bytes(), None).await;
    assert_eq!(r.status, 201);
    let ticket = serde_json::from_str::<serde_json::Value>(&r.body).expect("json")["ticket"].as_str().expect("t").to_owned();
    let (mut ws, _) = ws_connect(&url(&format!("?ticket={ticket}")), &[origin], tls.clone()).await.expect("ticket");
    ws.send(Message::Text("hi".into())).await.expect("send");
    assert!(next_data(&mut ws).await.is_some());
    secrets.push(ticket);
    attempts += 2;

    // SIGTERM drains (SPEC section 4): the live session is closed with 1001 within the
    // drain deadline (1 s), then the process exits 0.
    let closed = tokio::spawn(async move { palisade_testkit::close_code(&mut ws, Duration::from_secs(10)).await });
    let status = node.signal_and_wait("-TERM").await;
    assert!(status.success(), "node exits cleanly on SIGTERM: {status}");
    assert_eq!(closed.await.expect("join"), Some(1001), "the session was closed as going away");
    let logs = node.text();
    assert!(logs.contains("drain_started") && logs.contains("drain_finished"), "the drain is logged: {logs}");
    for s in &secrets {
        // The whole value and its signature part (the part that makes it usable).
        let sig = s.rsplit('.').next().unwrap_or(s);
        assert!(!logs.contains(s.as_str()), "a secret leaked into the logs");
        assert!(sig.len() < 16 || !logs.contains(sig), "a signature leaked into the logs");
    }
    let audits = logs.lines().filter(|l| l.contains(r#""event":"handshake""#)).count();
    // The accepted ticket's record holds every field SPEC section 3 names.
    let records: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let rec = records
        .iter()
        .find(|v| v["event"] == "handshake" && v["carrier"] == "ticket" && v["result"] == "accepted")
        .unwrap_or_else(|| panic!("no audit record of the ticket's handshake in:\n{logs}"));
    assert_eq!(rec["node"], "log-node", "{rec}");
    assert!(rec["conn.id"].as_str().is_some_and(|c| c.len() == 16 && c.bytes().all(|b| b.is_ascii_hexdigit())), "{rec}");
    assert_eq!(rec["client.address"], "127.0.0.1", "{rec}");
    assert!(rec["peer.address"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{rec}");
    assert_eq!(
        (&rec["origin"], &rec["http.route"], &rec["enduser.id"]),
        (&json!("https://app.example.com"), &json!("/echo"), &json!("logan"))
    );
    assert_eq!((&rec["status"], &rec["code"]), (&json!(101), &json!("ok")), "{rec}");
    assert!(rec["duration_us"].as_u64().is_some_and(|d| d > 0), "{rec}");
    assert!(rec["trace_id"].as_str().is_some_and(|t| t.len() == 32), "{rec}");
    assert!(rec["query"].as_str().is_some_and(|q| q.starts_with("ticket=") && !q.contains(&secrets[3])), "masked: {rec}");
    assert!(audits >= attempts, "one audit record per attempt: {audits} < {attempts}");
    assert!(logs.contains("access_token=***"), "query logged masked");
    assert!(logs.contains(r#""code":"token_expired""#) && logs.contains(r#""code":"token_invalid""#));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_token_and_a_working_websocat_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("x");
    let mut dev = spawn(&["dev", "--dir", d.to_str().expect("p"), "--nodes", "2"], &[]);
    let cmd = dev.wait_for("websocat").await;
    for f in ["ca.pem", "wss.pem", "wss-key.pem", "operator.pem", "operator-key.pem", "signing-key.pem", "policy.yaml", "endpoints.json"] {
        assert!(d.join(f).exists(), "{f} written");
    }
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("endpoints.json")).expect("read")).expect("json");
    assert_eq!(endpoints["nodes"].as_array().map(Vec::len), Some(2));
    assert!(endpoints["nodes"][0]["wss"].as_str().is_some_and(|u| u.starts_with("wss://127.0.0.1:")));
    // The printed command, exactly as printed, through a shell.
    let out = Command::new("bash").arg("-c").arg(cmd.trim()).output().await.expect("run websocat");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello", "websocat stderr: {}", String::from_utf8_lossy(&out.stderr));
    // Without etcd, a node drained through the controller leaves its directory, so the
    // next policy change converges over the nodes that are left.
    let exports = dev.wait_for("export PALISADE_CONTROLLER").await;
    let env = exported(&exports);
    let ops = |args: Vec<String>| {
        let env = env.clone();
        async move {
            let out = Command::new(BIN).args(&args).envs(env).output().await.expect("run");
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let second = endpoints["nodes"][1]["id"].as_str().expect("id").to_owned();
    let (code, _, err) = ops(vec!["drain".into(), second.clone(), "--deadline".into(), "1".into()]).await;
    assert_eq!(code, Some(0), "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = ops(vec!["nodes".into(), "-o".into(), "json".into()]).await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if v.as_array().is_some_and(|a| a.len() == 1 && a[0]["id"] != second.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the drained node never left: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let policy_file = d.join("policy.yaml").display().to_string();
    let (code, out, err) = ops(vec!["policy".into(), "apply".into(), "-f".into(), policy_file, "-o".into(), "json".into()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(r#""converged": true"#), "{out}");
    // A token minted by the CLI with the dev key is accepted too.
    let minted = Command::new(BIN)
        .args(["token", "mint", "--key", d.join("signing-key.pem").to_str().expect("p"), "--kid", "dev", "--sub", "bob", "--ttl", "15m"])
        .output()
        .await
        .expect("mint");
    assert!(minted.status.success());
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let check = Command::new(BIN)
        .args(["token", "check", &token, "--policy", d.join("policy.yaml").to_str().expect("p")])
        .output()
        .await
        .expect("check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(String::from_utf8_lossy(&check.stdout).contains(r#""verification": "valid""#));
    // Reuse: the second start keeps the same CA and key.
    let ca_before = std::fs::read(d.join("ca.pem")).expect("ca");
    let status = dev.signal_and_wait("-INT").await;
    assert!(status.success(), "Ctrl-C drains and exits 0: {status}");
    // ... and with --upstream, the route /app bridges to that application.
    let upstream = palisade_testkit::UpstreamServer::start().await;
    let mut again = spawn(&["dev", "--dir", d.to_str().expect("p"), "--nodes", "1", "--upstream", &upstream.url()], &[]);
    let cmd = again.wait_for("websocat").await;
    again.wait_for(&format!("route /app bridges to {}", upstream.url())).await;
    assert_eq!(std::fs::read(d.join("ca.pem")).expect("ca"), ca_before);
    let out = Command::new("bash").arg("-c").arg(cmd.trim().replace("/echo'", "/app'")).output().await.expect("run websocat");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "up:hello", "websocat stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(upstream.requests().len(), 1, "one bridged connection");
    assert!(again.signal_and_wait("-INT").await.success());
}

/// `token mint` writes the claims it is asked for, and `token check --policy` verifies
/// them as a node would: the policy's issuer and audience must match.
#[tokio::test]
async fn token_mint_sets_the_claims_asked_for() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = TestKey::generate("k9", "ES256");
    let key_file = dir.path().join("k9.pem");
    std::fs::write(&key_file, &key.private).expect("key");
    let mut p = policy(&[&key]);
    p.auth.issuer = Some("https://id.example.com".into());
    p.auth.audience = vec!["api".into()];
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, p.to_yaml()).expect("policy");
    let run = |args: Vec<String>| async move {
        let out = Command::new(BIN).args(&args).output().await.expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mint = |aud: &str| {
        ["token", "mint", "--key", key_file.to_str().expect("p"), "--kid", "k9", "--sub", "mia", "--ttl", "90s", "--jti", "j-1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--aud", aud, "--iss", "https://id.example.com"].iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
    };
    let (code, token) = run(mint("api")).await;
    assert_eq!(code, Some(0));
    let (code, decoded) = run(vec!["token".into(), "check".into(), token.clone()]).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&decoded).expect("json");
    let c = &v["claims"];
    assert_eq!(
        (c["sub"].as_str(), c["aud"].as_str(), c["iss"].as_str(), c["jti"].as_str()),
        (Some("mia"), Some("api"), Some("https://id.example.com"), Some("j-1")),
        "{v}"
    );
    assert_eq!(c["exp"].as_i64().zip(c["iat"].as_i64()).map(|(e, i)| e - i), Some(90), "{v}");
    assert_eq!((v["header"]["alg"].as_str(), v["header"]["kid"].as_str()), (Some("ES256"), Some("k9")));
    let check = |t: String| vec!["token".into(), "check".into(), t, "--policy".into(), policy_file.to_str().expect("p").to_owned()];
    let (code, out) = run(check(token)).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""verification": "valid""#), "{out}");
    let (_, other_aud) = run(mint("billing")).await;
    let (code, out) = run(check(other_aud)).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("token_invalid"), "another audience is refused: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let usage = Command::new(BIN).args(["token", "mint"]).output().await.expect("run");
    assert_eq!(usage.status.code(), Some(2), "usage error");
    let failed = Command::new(BIN).args(["token", "check", "not-a-token"]).output().await.expect("run");
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("error:"));
    let bad_cfg = Command::new(BIN).args(["node", "--config", "/nonexistent/node.toml"]).output().await.expect("run");
    assert_eq!(bad_cfg.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_fleet_on_a_real_etcd_when_given() {
    let etcd = palisade_testkit::etcd::Etcd::spawn().await;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("fleet");
    let mut dev = spawn(&["dev", "--dir", d.to_str().expect("p"), "--nodes", "2", "--etcd", &etcd.endpoint()], &[]);
    let cmd = dev.wait_for("websocat").await;
    let exports = dev.wait_for("export PALISADE_CONTROLLER").await;
    let env = exported(&exports);
    assert_eq!(env.len(), 4, "{exports}");
    // Both nodes registered in etcd, and the controller sees them through it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(BIN).args(["nodes", "-o", "json"]).envs(env.iter().cloned()).output().await.expect("nodes");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|n| n["reachable"] == true)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes never appeared: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(etcd.keys("/palisade/dev/nodes/").await.len(), 2);
    // The policy lives in etcd; its version is the key's revision.
    let (_, _, mod_rev) = etcd.get("/palisade/dev/policy").await.expect("policy in etcd");
    let out = Command::new(BIN).args(["policy", "get", "-o", "json"]).envs(env.iter().cloned()).output().await.expect("get");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["version"].as_i64(), Some(mod_rev), "{v}");
    // And the printed command echoes through a node.
    let out = Command::new("bash").arg("-c").arg(cmd.trim()).output().await.expect("run websocat");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let status = dev.signal_and_wait("-INT").await;
    assert!(status.success(), "{status}");
    // Drained nodes deregistered.
    assert!(etcd.keys("/palisade/dev/nodes/").await.is_empty());
    // Another directory has another dev key than the policy left in etcd: refused with a
    // clear error, rather than printing a token the fleet would refuse.
    let other = dir.path().join("other");
    let out = Command::new(BIN)
        .args(["dev", "--dir", other.to_str().expect("p"), "--nodes", "1", "--etcd", &etcd.endpoint()])
        .output()
        .await
        .expect("run dev");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusts another `dev` key"), "{}", String::from_utf8_lossy(&out.stderr));
}
