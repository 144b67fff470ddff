//! etcd v3 authentication as docs/etcd.md sets it up, on a real etcd: a `palisade-node`
//! user that may read the policy and write its cluster's nodes and tickets, a
//! `palisade-controller` user that may write the policy and read the nodes. The node
//! registers, reads the policy and serves tickets with its user; it cannot write the
//! policy; the real controller applies a policy with its user; a wrong password leaves
//! the node serving and logging `etcd_unavailable`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_node::config::EtcdConfig;
use palisade_policy::wire;
use palisade_proto::controller::v1 as fleet;
use palisade_proto::node::v1 as pb;
use palisade_testkit::etcd::{Etcd, etcd_client};
use palisade_testkit::{Message, Pki, TEST_CLUSTER, TestKey, TestNode, grpc_channel, next_data, policy};

const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");
const ROOT_PASSWORD: &str = "root-Secret-1";
const NODE_PASSWORD: &str = "node-Secret-2";
const CONTROLLER_PASSWORD: &str = "controller-Secret-3";

use palisade_testkit::captured_logs as logs;

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().expect("lock")).into_owned()
}

/// `etcdctl` against `etcd`, as `user` (`name:password`) when given.
fn etcdctl(etcd: &Etcd, user: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3").arg("--endpoints").arg(etcd.endpoint()).arg("--dial-timeout=3s").arg("--command-timeout=5s");
    if let Some(u) = user {
        cmd.arg("--user").arg(u);
    }
    let out = cmd.args(args).output().expect("etcdctl (apt-get install -y etcd-client)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn must(etcd: &Etcd, user: Option<&str>, args: &[&str]) {
    let (ok, out) = etcdctl(etcd, user, args);
    assert!(ok, "etcdctl {args:?}: {out}");
}

/// The users and roles of docs/etcd.md for `cluster`, then `auth enable`.
fn enable_auth(etcd: &Etcd, cluster: &str) {
    let p = format!("/palisade/{cluster}");
    let (policy, nodes, tickets) = (format!("{p}/policy"), format!("{p}/nodes/"), format!("{p}/tickets/"));
    let steps: Vec<Vec<String>> = vec![
        vec!["user".into(), "add".into(), format!("root:{ROOT_PASSWORD}"), "--interactive=false".into()],
        vec!["user".into(), "grant-role".into(), "root".into(), "root".into()],
        vec!["role".into(), "add".into(), "palisade-node".into()],
        vec!["role".into(), "grant-permission".into(), "palisade-node".into(), "read".into(), policy.clone()],
        vec!["role".into(), "grant-permission".into(), "palisade-node".into(), "--prefix=true".into(), "readwrite".into(), nodes.clone()],
        vec!["role".into(), "grant-permission".into(), "palisade-node".into(), "--prefix=true".into(), "readwrite".into(), tickets],
        vec!["user".into(), "add".into(), format!("palisade-node:{NODE_PASSWORD}"), "--interactive=false".into()],
        vec!["user".into(), "grant-role".into(), "palisade-node".into(), "palisade-node".into()],
        vec!["role".into(), "add".into(), "palisade-controller".into()],
        vec!["role".into(), "grant-permission".into(), "palisade-controller".into(), "readwrite".into(), policy],
        vec!["role".into(), "grant-permission".into(), "palisade-controller".into(), "--prefix=true".into(), "read".into(), nodes],
        vec!["user".into(), "add".into(), format!("palisade-controller:{CONTROLLER_PASSWORD}"), "--interactive=false".into()],
        vec!["user".into(), "grant-role".into(), "palisade-controller".into(), "palisade-controller".into()],
        vec!["auth".into(), "enable".into()],
    ];
    for s in steps {
        let args: Vec<&str> = s.iter().map(String::as_str).collect();
        must(etcd, None, &args);
    }
    // From now on anonymous requests are refused.
    let (ok, out) = etcdctl(etcd, None, &["get", "/palisade/"]);
    assert!(!ok, "auth is on: {out}");
}

fn write_password(dir: &Path, name: &str, password: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{password}\n")).expect("write");
    p
}

async fn authed_client(etcd: &Etcd, user: &str, password: &str) -> etcd_client::Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_user(user, password)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    etcd_client::Client::connect([etcd.endpoint()], Some(opts)).await.expect("authenticated client")
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_controller_users_hold_exactly_their_rights() {
    let _ = logs();
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    enable_auth(&etcd, TEST_CLUSTER);
    let pki = Arc::new(Pki::new());
    let dir = pki.dir.path().to_owned();
    let key = TestKey::generate("k1", "ES256");
    let p = policy(&[&key]);

    // The real controller, from its TOML configuration, with the controller user.
    let ctl = pki.control_config();
    write_password(&dir, "controller.password", CONTROLLER_PASSWORD);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let toml = format!(
        "cluster = \"{TEST_CLUSTER}\"\nlisten = \"127.0.0.1:{port}\"\n[tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"ca.pem\"\n[nodes_tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"ca.pem\"\n[etcd]\nendpoints = [\"{e}\"]\nusername = \"palisade-controller\"\npassword_file = \"controller.password\"\n",
        c = ctl.cert.display(),
        k = ctl.key.display(),
        e = etcd.endpoint()
    );
    std::fs::write(dir.join("controller.toml"), toml).expect("write");
    let cfg = palisade_controller::config::ControllerConfig::load(&dir.join("controller.toml"), false).expect("controller config");
    let (controller, client) = palisade_controller::Controller::from_config(&cfg).await.expect("controller connects as its user");
    let tls = palisade_plane::ControlTls::from_config(cfg.tls.as_ref().expect("tls")).expect("tls files");
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.expect("bind");
    let controller = controller.serve(listener, Some(tls), client).await;
    let ch = grpc_channel(controller.addr, &pki.ca.cert_pem, Some(pki.operator_cert())).await.expect("operator channel");
    let mut ops = fleet::fleet_control_client::FleetControlClient::new(ch);

    // The controller user applies a policy: it lands in etcd, version = its revision.
    let r = ops
        .apply_policy(fleet::ApplyPolicyRequest { policy: Some(wire::versioned(0, &p)), dry_run: false, expected_version: None })
        .await
        .expect("the controller user writes the policy")
        .into_inner();
    let (_, _, mod_rev) = {
        let mut root = authed_client(&etcd, "root", ROOT_PASSWORD).await;
        let got = root.get(format!("/palisade/{TEST_CLUSTER}/policy"), None).await.expect("root reads");
        let kv = got.kvs().first().expect("the policy is in etcd").clone();
        (kv.value().to_vec(), kv.lease(), kv.mod_revision())
    };
    assert_eq!(r.version as i64, mod_rev);

    // A node with the node user (no bootstrap file): it registers and reads the policy.
    write_password(&dir, "node.password", NODE_PASSWORD);
    let endpoint = etcd.endpoint();
    let pw = dir.join("node.password");
    let node = TestNode::start_in(pki.clone(), None, move |cfg| {
        let mut e = EtcdConfig::new(vec![endpoint]);
        e.lease_ttl_seconds = 5;
        e.username = Some("palisade-node".into());
        e.password_file = Some(pw);
        cfg.etcd = Some(e);
    })
    .await;
    let mut node_ops = node.control().await;
    let id = node_ops.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().node_id;
    wait_until("the node reads the policy from etcd", async || {
        node_ops.get_stats(pb::GetStatsRequest {}).await.is_ok_and(|s| s.into_inner().policy_version == r.version)
    })
    .await;
    let mut root = authed_client(&etcd, "root", ROOT_PASSWORD).await;
    let node_key = format!("/palisade/{TEST_CLUSTER}/nodes/{id}");
    wait_until("the node registers", async || root.get(node_key.as_str(), None).await.is_ok_and(|g| !g.kvs().is_empty())).await;
    // The controller user reads the registry: the node is listed and reachable.
    wait_until("the controller discovers the node", async || {
        ops.list_nodes(fleet::ListNodesRequest::default())
            .await
            .is_ok_and(|n| n.into_inner().nodes.iter().any(|n| n.id == id && n.reachable))
    })
    .await;

    // Tickets live in etcd under the node user's rights: minted, then consumed once.
    let token = key.token_for("alice");
    let body = r#"{"origin":"https://app.example.com"}"#;
    let req =
        format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let minted = node.raw(req.as_bytes()).await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let ticket = serde_json::from_str::<serde_json::Value>(&minted.body).expect("json")["ticket"].as_str().expect("ticket").to_owned();
    let (mut ws, _) = node.ws(&format!("/echo?ticket={ticket}"), &[ORIGIN]).await.expect("the ticket opens a session");
    ws.send(Message::Text("hi".into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("hi".into())));

    // The node user cannot write the policy, nor read another cluster's keys.
    let mut as_node = authed_client(&etcd, "palisade-node", NODE_PASSWORD).await;
    let e = as_node
        .put(format!("/palisade/{TEST_CLUSTER}/policy"), "origins: {}", None)
        .await
        .expect_err("the node user cannot put the policy");
    assert!(e.to_string().contains("permission denied"), "{e}");
    let e = as_node.get("/palisade/other/policy", None).await.expect_err("nor read another cluster");
    assert!(e.to_string().contains("permission denied"), "{e}");
    let (ok, out) =
        etcdctl(&etcd, Some(&format!("palisade-node:{NODE_PASSWORD}")), &["put", &format!("/palisade/{TEST_CLUSTER}/policy"), "x"]);
    assert!(!ok && out.contains("permission denied"), "etcdctl as the node user: {out}");
    // The controller user cannot touch the registry or the tickets.
    let mut as_ctl = authed_client(&etcd, "palisade-controller", CONTROLLER_PASSWORD).await;
    let e = as_ctl.put(node_key.as_str(), "{}", None).await.expect_err("the controller user cannot write node records");
    assert!(e.to_string().contains("permission denied"), "{e}");
    let e = as_ctl.get(format!("/palisade/{TEST_CLUSTER}/tickets/"), Some(etcd_client::GetOptions::new().with_prefix())).await;
    assert!(e.is_err_and(|e| e.to_string().contains("permission denied")), "tickets are the nodes' own");
    // The policy is what the controller stored.
    let got = root.get(format!("/palisade/{TEST_CLUSTER}/policy"), None).await.expect("get");
    assert_eq!(got.kvs().first().map(|kv| kv.mod_revision()), Some(mod_rev));

    // A second push through the controller reaches the node (push and watch).
    let mut p2 = p.clone();
    p2.origins.allow.push("https://two.example.com".into());
    let r2 = ops
        .apply_policy(fleet::ApplyPolicyRequest {
            policy: Some(wire::versioned(0, &p2)),
            dry_run: false,
            expected_version: Some(r.version),
        })
        .await
        .expect("second apply")
        .into_inner();
    assert!(r2.converged, "{r2:?}");
    assert_eq!(node_ops.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().policy_version, r2.version);

    // The store compares on the version: an apply made against the first version, now
    // stale, is refused and writes nothing, pushes nothing.
    let mut p3 = p.clone();
    p3.origins.allow.push("https://three.example.com".into());
    let e = ops
        .apply_policy(fleet::ApplyPolicyRequest {
            policy: Some(wire::versioned(0, &p3)),
            dry_run: false,
            expected_version: Some(r.version),
        })
        .await
        .expect_err("a stale expected_version");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("version {}", r2.version)), "names the current version: {}", e.message());
    let got = root.get(format!("/palisade/{TEST_CLUSTER}/policy"), None).await.expect("get");
    assert_eq!(got.kvs().first().map(|kv| kv.mod_revision() as u64), Some(r2.version), "nothing written");
    assert_eq!(node_ops.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().policy_version, r2.version);

    // No password in the logs.
    let text = log_text();
    for secret in [ROOT_PASSWORD, NODE_PASSWORD, CONTROLLER_PASSWORD] {
        assert!(!text.contains(secret), "a password leaked into the logs");
    }
    node.handle.drain().await;
    controller.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_leaves_the_node_serving() {
    let _ = logs();
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    enable_auth(&etcd, TEST_CLUSTER);
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k1", "ES256");
    let pw = write_password(pki.dir.path(), "wrong.password", "not-the-password");
    let endpoint = etcd.endpoint();
    let node = TestNode::start_in(pki.clone(), Some(&policy(&[&key])), move |cfg| {
        let mut e = EtcdConfig::new(vec![endpoint]);
        e.username = Some("palisade-node".into());
        e.password_file = Some(pw);
        cfg.etcd = Some(e);
    })
    .await;
    let id = node.control().await.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().node_id;
    // It says etcd is unavailable (registration and policy watch) ...
    wait_until("etcd_unavailable logged", async || {
        log_text().lines().any(|l| l.contains(r#""event":"etcd_unavailable""#) && l.contains(&id) && l.contains("registration"))
    })
    .await;
    let line =
        log_text().lines().find(|l| l.contains(r#""event":"etcd_unavailable""#) && l.contains(&id)).map(str::to_owned).unwrap_or_default();
    assert!(line.contains("authentication failed") || line.contains("invalid user"), "the cause is named: {line}");
    assert!(!log_text().contains("not-the-password"), "the password is never logged");
    // ... and keeps serving with its bootstrap policy.
    let auth = format!("Bearer {}", key.token_for("bob"));
    let (mut ws, _) = node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("serving without etcd");
    ws.send(Message::Text("still".into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("still".into())));
    assert_eq!(node.raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.status, 200);
    // Nothing registered under its name.
    let mut root = authed_client(&etcd, "root", ROOT_PASSWORD).await;
    let got = root.get(format!("/palisade/{TEST_CLUSTER}/nodes/{id}"), None).await.expect("root reads");
    assert!(got.kvs().is_empty());
    node.handle.drain().await;
}
