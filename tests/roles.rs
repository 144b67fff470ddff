//! Control-plane roles (SPEC section 6) over real mTLS with real tonic clients: every
//! identity against a real node's NodeControl and a real controller's FleetControl, on a
//! real RPC, on `grpc.health.v1.Health/Check` and on reflection (v1 and v1alpha); every
//! refusal is PERMISSION_DENIED and one `control_refused` record. Then the files of
//! `palisade dev`: the WSS certificate is no control identity, the operator's is.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt as _;
use palisade_proto::controller::v1 as fleet;
use palisade_proto::node::v1 as pb;
use palisade_testkit::{CertKey, Message, Pki, Role, TEST_CLUSTER, TestKey, TestNode, grpc_channel, next_data, policy};
use tonic::Code;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

use palisade_testkit::captured_logs as logs;

/// The `control_refused` records logged so far.
fn refusals(buf: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&buf.lock().expect("lock")).into_owned();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["event"] == "control_refused").collect()
}

/// A node with its control plane and an in-process controller in front of it, one CA.
struct Fleet {
    node: TestNode,
    controller: palisade_controller::ControllerHandle,
    key: TestKey,
}

async fn fleet() -> Fleet {
    palisade_testkit::init();
    let pki = Arc::new(Pki::new());
    let key = TestKey::generate("k", "ES256");
    let p = policy(&[&key]);
    let node = TestNode::start_in(pki.clone(), Some(&p), |_| {}).await;
    // The controller serves FleetControl and calls the node with `controller` certificates.
    let tls = palisade_plane::ControlTls::from_config(&pki.control_config()).expect("controller files");
    let directory = palisade_controller::directory::Directory::new(Some(tls.clone()), Duration::from_secs(5));
    let store = palisade_controller::store::FleetPolicy::memory(Some((p, 1)));
    let controller = palisade_controller::Controller::new(TEST_CLUSTER.into(), directory, store, 4);
    controller.add_static(vec![palisade_node::cluster::node_record(&node.handle.state, node.handle.wss_addr, node.handle.control_addr)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let controller = controller.serve(listener, Some(tls), None).await;
    Fleet { node, controller, key }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Node,
    Controller,
}

impl Server {
    fn service(self) -> &'static str {
        match self {
            Server::Node => "palisade.node.v1.NodeControl",
            Server::Controller => "palisade.controller.v1.FleetControl",
        }
    }
}

/// One identity of the matrix: its certificate, what it presents in the audit record,
/// and where it is allowed.
struct Identity {
    label: &'static str,
    cert: CertKey,
    presents: String,
    node: bool,
    controller: bool,
}

fn identities(pki: &Pki, node_id: &str) -> Vec<Identity> {
    let uri = |r: Role| r.uri(TEST_CLUSTER);
    vec![
        Identity { label: "operator", cert: pki.operator_cert(), presents: uri(Role::Operator), node: true, controller: true },
        Identity { label: "controller", cert: pki.controller_cert(), presents: uri(Role::Controller), node: true, controller: false },
        Identity {
            label: "node",
            // The node's own control certificate (server and client auth).
            cert: (
                std::fs::read_to_string(pki.dir.path().join(format!("node-{node_id}.pem"))).expect("node cert"),
                std::fs::read_to_string(pki.dir.path().join(format!("node-{node_id}-key.pem"))).expect("node key"),
            ),
            presents: uri(Role::Node(node_id.to_owned())),
            node: false,
            controller: false,
        },
        Identity {
            label: "no role",
            cert: pki.no_role_cert(),
            presents: "spiffe://example.org/operator".into(),
            node: false,
            controller: false,
        },
        Identity {
            label: "operator of another cluster",
            cert: pki.other_cluster_operator(),
            presents: Role::Operator.uri("other"),
            node: false,
            controller: false,
        },
        Identity {
            label: "WSS certificate",
            // As `palisade dev` writes it: server and client auth, localhost, no role.
            cert: pki.issue("localhost", &["localhost", "127.0.0.1"], &[], true, true),
            presents: "none".into(),
            node: false,
            controller: false,
        },
    ]
}

/// Health `Check` and reflection `ListServices` (v1 and v1alpha): Ok(services listed) or
/// the status of the first refusal.
async fn health_and_reflection(ch: &Channel, service: &str) -> Vec<Result<Vec<String>, tonic::Status>> {
    let mut out = Vec::new();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    out.push(
        h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.map(|r| vec![r.into_inner().status.to_string()]),
    );
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let r = async {
            let mut s =
                ServerReflectionClient::new(ch.clone()).server_reflection_info(futures_util::stream::iter(vec![req])).await?.into_inner();
            match s.message().await?.and_then(|m| m.message_response) {
                Some(MessageResponse::ListServicesResponse(l)) => Ok(l.service.into_iter().map(|s| s.name).collect()),
                other => Err(tonic::Status::internal(format!("not a list: {other:?}"))),
            }
        };
        out.push(r.await);
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let r = async {
            let mut s =
                ServerReflectionClient::new(ch.clone()).server_reflection_info(futures_util::stream::iter(vec![req])).await?.into_inner();
            match s.message().await?.and_then(|m| m.message_response) {
                Some(MessageResponse::ListServicesResponse(l)) => Ok(l.service.into_iter().map(|s| s.name).collect()),
                other => Err(tonic::Status::internal(format!("not a list: {other:?}"))),
            }
        };
        out.push(r.await);
    }
    out
}

/// Every NodeControl RPC, with empty requests: (rpc path, result).
async fn every_node_rpc(ch: &Channel) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut c = pb::node_control_client::NodeControlClient::new(ch.clone());
    vec![
        ("GetPolicy", c.get_policy(pb::GetPolicyRequest::default()).await.map(drop)),
        ("ApplyPolicy", c.apply_policy(pb::ApplyPolicyRequest::default()).await.map(drop)),
        ("Disconnect", c.disconnect(pb::DisconnectRequest::default()).await.map(drop)),
        ("ListConnections", c.list_connections(pb::ListConnectionsRequest::default()).await.map(drop)),
        ("GetStats", c.get_stats(pb::GetStatsRequest::default()).await.map(drop)),
        ("WatchStats", c.watch_stats(pb::WatchStatsRequest::default()).await.map(drop)),
        ("Send", c.send(pb::SendRequest::default()).await.map(drop)),
        ("Drain", c.drain(pb::DrainRequest::default()).await.map(drop)),
    ]
}

/// Every FleetControl RPC, with empty requests.
async fn every_fleet_rpc(ch: &Channel) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut c = fleet::fleet_control_client::FleetControlClient::new(ch.clone());
    vec![
        ("ListNodes", c.list_nodes(fleet::ListNodesRequest::default()).await.map(drop)),
        ("GetPolicy", c.get_policy(fleet::GetPolicyRequest::default()).await.map(drop)),
        ("ApplyPolicy", c.apply_policy(fleet::ApplyPolicyRequest::default()).await.map(drop)),
        ("Disconnect", c.disconnect(fleet::DisconnectRequest::default()).await.map(drop)),
        ("Send", c.send(fleet::SendRequest::default()).await.map(drop)),
        ("Revoke", c.revoke(fleet::RevokeRequest::default()).await.map(drop)),
        ("AddKey", c.add_key(fleet::AddKeyRequest::default()).await.map(drop)),
        ("RetireKey", c.retire_key(fleet::RetireKeyRequest::default()).await.map(drop)),
        ("GetFleetStats", c.get_fleet_stats(fleet::GetFleetStatsRequest::default()).await.map(drop)),
        ("FindSubject", c.find_subject(fleet::FindSubjectRequest::default()).await.map(drop)),
        ("Drain", c.drain(fleet::DrainRequest::default()).await.map(drop)),
        ("ListConnections", c.list_connections(fleet::ListConnectionsRequest::default()).await.map(drop)),
    ]
}

fn denied(label: &str, what: &str, r: &Result<impl std::fmt::Debug, tonic::Status>) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{label}: {what}: {s:?}");
            assert!(s.message().starts_with("control_refused"), "{label}: {what}: {}", s.message());
        }
        Ok(v) => panic!("{label}: {what} was allowed: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_against_node_control_and_fleet_control() {
    let logs = logs();
    let f = fleet().await;
    let pki = f.node.pki.clone();
    let mut operator = f.node.control().await;
    let node_id = operator.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner().node_id;
    // A live session, which no refused call may touch.
    let auth = format!("Bearer {}", f.key.token_for("alice"));
    let (mut ws, _) = f.node.ws("/echo", &[ORIGIN, ("Authorization", &auth)]).await.expect("session");

    let node_addr = f.node.handle.control_addr.expect("control");
    for id in identities(&pki, &node_id) {
        for server in [Server::Node, Server::Controller] {
            let addr = if server == Server::Node { node_addr } else { f.controller.addr };
            let allowed = if server == Server::Node { id.node } else { id.controller };
            let label = format!("{} -> {}", id.label, server.service());
            let ch = grpc_channel(addr, &pki.ca.cert_pem, Some(id.cert.clone())).await.unwrap_or_else(|e| panic!("{label}: TLS: {e}"));
            let before = refusals(&logs).len();
            let checks = health_and_reflection(&ch, server.service()).await;
            if allowed {
                let serving = (tonic_health::pb::health_check_response::ServingStatus::Serving as i32).to_string();
                assert_eq!(checks[0].as_ref().expect("health"), &[serving], "{label}");
                for listed in &checks[1..] {
                    let names = listed.as_ref().unwrap_or_else(|e| panic!("{label}: reflection: {e:?}"));
                    assert!(names.contains(&server.service().to_owned()), "{label}: {names:?}");
                }
                match server {
                    Server::Node => {
                        let mut c = pb::node_control_client::NodeControlClient::new(ch.clone());
                        let s = c.get_stats(pb::GetStatsRequest {}).await.unwrap_or_else(|e| panic!("{label}: {e:?}")).into_inner();
                        assert_eq!(s.active_connections, 1, "{label}");
                    }
                    Server::Controller => {
                        // The operator's call reaches the node through the controller's
                        // `controller` identity.
                        let mut c = fleet::fleet_control_client::FleetControlClient::new(ch.clone());
                        let nodes = c.list_nodes(fleet::ListNodesRequest::default()).await.expect("list").into_inner().nodes;
                        assert_eq!(nodes.len(), 1, "{label}");
                        assert!(nodes[0].reachable, "{label}: the controller reaches the node as `controller`");
                    }
                }
                assert_eq!(refusals(&logs).len(), before, "{label}: an allowed identity is never refused");
                continue;
            }
            for (i, what) in ["health Check", "reflection v1", "reflection v1alpha"].iter().enumerate() {
                denied(&label, what, &checks[i]);
            }
            let rpcs = match server {
                Server::Node => every_node_rpc(&ch).await,
                Server::Controller => every_fleet_rpc(&ch).await,
            };
            for (rpc, r) in &rpcs {
                denied(&label, rpc, r);
            }
            // One audit record per refusal, with the service, the RPC path, the peer, the
            // presented identity and the reason.
            let new: Vec<serde_json::Value> = refusals(&logs)
                .into_iter()
                .skip(before)
                .filter(|r| r["server"] == server.service() && r["identity"] == id.presents.as_str())
                .collect();
            assert_eq!(new.len(), 3 + rpcs.len(), "{label}: {new:#?}");
            for (rpc, _) in &rpcs {
                let path = format!("/{}/{rpc}", server.service());
                let r = new.iter().find(|r| r["rpc"] == path.as_str()).unwrap_or_else(|| panic!("{label}: no record for {path}"));
                assert_eq!(r["service"], server.service(), "{label}");
                assert_eq!(r["level"], "WARN", "{label}");
                assert!(r["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{label}: {r}");
                let reason = r["reason"].as_str().unwrap_or_default();
                let want = if id.presents.starts_with("spiffe://palisade/test/") {
                    "role not allowed on this server"
                } else {
                    "no role for this cluster"
                };
                assert_eq!(reason, want, "{label}");
            }
            for svc in [
                "/grpc.health.v1.Health/Check",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ] {
                assert!(new.iter().any(|r| r["rpc"] == svc), "{label}: no record for {svc}");
            }
        }
    }
    // Nothing any refused identity sent reached the node: the session is open, the node
    // not draining, the policy unchanged.
    ws.send(Message::Text("still here".into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("still here".into())));
    assert_eq!(f.node.raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.status, 200, "not draining");
    let stats = operator.get_stats(pb::GetStatsRequest {}).await.expect("stats").into_inner();
    assert_eq!((stats.policy_version, stats.active_connections), (1, 1));
    // No key material in the audit trail.
    let text = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
    assert!(!text.contains("PRIVATE KEY") && !text.contains("BEGIN"), "PEM in the logs");
    f.controller.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_controller_still_serves_plain_text() {
    palisade_testkit::init();
    let directory = palisade_controller::directory::Directory::new(None, Duration::from_secs(5));
    let store = palisade_controller::store::FleetPolicy::memory(None);
    let controller = palisade_controller::Controller::new(TEST_CLUSTER.into(), directory, store, 4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = controller.serve(listener, None, None).await;
    let ch = Channel::from_shared(format!("http://{}", handle.addr)).expect("uri").connect().await.expect("plain");
    let mut c = fleet::fleet_control_client::FleetControlClient::new(ch.clone());
    assert!(c.list_nodes(fleet::ListNodesRequest::default()).await.expect("plain text").into_inner().nodes.is_empty());
    let checks = health_and_reflection(&ch, "palisade.controller.v1.FleetControl").await;
    assert!(checks.iter().all(Result::is_ok), "{checks:?}");
    handle.stop();
}

/// `palisade dev` as a process: its JSON lines.
struct Dev {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Dev {
    fn spawn(dir: &std::path::Path) -> Dev {
        let mut child = tokio::process::Command::new(BIN)
            .args(["dev", "--dir", dir.to_str().expect("path"), "--nodes", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("palisade dev");
        let lines = palisade_testkit::capture_lines(&mut child);
        Dev { child, lines }
    }

    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..400 {
            if let Some(l) = self.lines.lock().expect("lock").iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{needle}` never appeared in:\n{}", self.lines.lock().expect("lock").join("\n"));
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

fn read_pair(dir: &std::path::Path, cert: &str, key: &str) -> CertKey {
    (std::fs::read_to_string(dir.join(cert)).expect("cert"), std::fs::read_to_string(dir.join(key)).expect("key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_files_the_wss_certificate_cannot_disconnect_the_fleet_the_operator_can() {
    palisade_testkit::init();
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().join("dev");
    // A directory written before roles existed: its operator certificate has no role SAN
    // and the WSS certificate doubled as the control identity. dev re-issues the operator
    // certificate and keeps the WSS one (it names no role).
    std::fs::create_dir_all(&d).expect("dir");
    let ca = palisade_plane::pki::new_ca(palisade_plane::pki::DEV_CA_NAME).expect("ca");
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).expect("w");
    std::fs::write(d.join("ca-key.pem"), &ca.key_pem).expect("w");
    let old_op =
        palisade_plane::pki::new_leaf(&ca, palisade_plane::pki::DEV_CA_NAME, "operator", &["operator"], false, true).expect("leaf");
    std::fs::write(d.join("operator.pem"), &old_op.cert_pem).expect("w");
    std::fs::write(d.join("operator-key.pem"), &old_op.key_pem).expect("w");
    let old_wss =
        palisade_plane::pki::new_leaf(&ca, palisade_plane::pki::DEV_CA_NAME, "localhost", &["localhost", "127.0.0.1"], true, true)
            .expect("leaf");
    std::fs::write(d.join("wss.pem"), &old_wss.cert_pem).expect("w");
    std::fs::write(d.join("wss-key.pem"), &old_wss.key_pem).expect("w");

    let dev = Dev::spawn(&d);
    dev.wait_for("websocat").await;
    let roles = |f: &str| palisade_plane::roles::roles_of_pem(&std::fs::read_to_string(d.join(f)).expect("read"), "dev");
    assert_eq!(std::fs::read_to_string(d.join("wss.pem")).expect("wss"), old_wss.cert_pem, "the WSS certificate is kept");
    assert!(roles("wss.pem").is_empty());
    assert_ne!(std::fs::read_to_string(d.join("operator.pem")).expect("op"), old_op.cert_pem, "re-issued with its role");
    assert_eq!(roles("operator.pem"), [Role::Operator]);
    assert_eq!(roles("controller.pem"), [Role::Controller]);
    assert_eq!(roles("node-1.pem"), [Role::Node("dev-node-1".into())]);
    assert_eq!(roles("node-2.pem"), [Role::Node("dev-node-2".into())]);

    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("endpoints.json")).expect("endpoints")).expect("json");
    let controller: std::net::SocketAddr = endpoints["controller"].as_str().expect("controller").parse().expect("addr");
    let first_node: std::net::SocketAddr = endpoints["nodes"][0]["control"].as_str().expect("control").parse().expect("addr");
    let ca_pem = std::fs::read_to_string(d.join("ca.pem")).expect("ca");
    let all = || fleet::DisconnectRequest {
        selector: Some(pb::Selector { target: Some(pb::selector::Target::All(true)) }),
        code: 0,
        reason: String::new(),
        ..Default::default()
    };

    // A session on a dev node, to see who may close it.
    let signing = std::fs::read_to_string(d.join("signing-key.pem")).expect("signing key");
    let jwt = palisade_policy::mint::SigningKey::from_text(&signing, Some("ES256"))
        .expect("key")
        .sign(Some("dev"), &serde_json::json!({"sub": "alice", "iat": palisade_testkit::now(), "exp": palisade_testkit::now() + 600}))
        .expect("sign");
    let wss = endpoints["nodes"][0]["wss"].as_str().expect("wss").to_owned();
    let tls = {
        let mut store = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            store.add(c.expect("pem")).expect("root");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(store)
                .with_no_client_auth(),
        )
    };
    let auth = format!("Bearer {jwt}");
    let (mut ws, _) =
        palisade_testkit::ws_connect(&format!("{wss}/echo"), &[("Authorization", &auth)], Some(tls)).await.expect("dev session");

    // The WSS certificate and key as a client identity: the TLS handshake passes (same
    // CA, client auth), every call is refused.
    let wss_id = read_pair(&d, "wss.pem", "wss-key.pem");
    for addr in [controller, first_node] {
        let ch = grpc_channel(addr, &ca_pem, Some(wss_id.clone())).await.expect("TLS with the WSS certificate");
        let mut c = fleet::fleet_control_client::FleetControlClient::new(ch.clone());
        if addr == controller {
            let e = c.disconnect(all()).await.expect_err("the WSS certificate disconnects nobody");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        } else {
            let mut n = pb::node_control_client::NodeControlClient::new(ch.clone());
            let e = n
                .disconnect(pb::DisconnectRequest {
                    selector: Some(pb::Selector { target: Some(pb::selector::Target::All(true)) }),
                    code: 0,
                    reason: String::new(),
                })
                .await
                .expect_err("the WSS certificate disconnects nobody on a node either");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        }
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        let e = h.check(tonic_health::pb::HealthCheckRequest::default()).await.expect_err("health refused");
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    // So is the controller's certificate on FleetControl.
    let ch = grpc_channel(controller, &ca_pem, Some(read_pair(&d, "controller.pem", "controller-key.pem"))).await.expect("TLS");
    let e = fleet::fleet_control_client::FleetControlClient::new(ch).disconnect(all()).await.expect_err("controller.pem");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A dev node's control certificate is a server certificate only: the TLS handshake
    // already refuses it as a client, and the role check would.
    if let Ok(ch) = grpc_channel(controller, &ca_pem, Some(read_pair(&d, "node-1.pem", "node-1-key.pem"))).await {
        let e = fleet::fleet_control_client::FleetControlClient::new(ch).disconnect(all()).await.expect_err("node-1.pem");
        assert!(matches!(e.code(), Code::PermissionDenied | Code::Unknown | Code::Unavailable | Code::Cancelled), "{e:?}");
    }
    let line = dev.wait_for(r#""event":"control_refused""#).await;
    let rec: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(rec["identity"], "none", "{rec}");
    assert_eq!(rec["reason"], "no role for this cluster", "{rec}");
    // Each refusal has its line; the controller certificate's may come after the first
    // one found (log lines are written in batches).
    let controller_uri = Role::Controller.uri("dev");
    palisade_testkit::eventually(Duration::from_secs(10), "the controller certificate's refusal logged", || {
        let found = dev.lines.lock().expect("lock").iter().any(|l| {
            l.contains("control_refused") && l.contains("/palisade.controller.v1.FleetControl/Disconnect") && l.contains(&controller_uri)
        });
        std::future::ready(found.then_some(()))
    })
    .await;
    // The session is still open.
    ws.send(Message::Text("ping".into())).await.expect("send");
    assert_eq!(next_data(&mut ws).await, Some(Message::Text("ping".into())));

    // The operator certificate can.
    let op = read_pair(&d, "operator.pem", "operator-key.pem");
    let ch = grpc_channel(controller, &ca_pem, Some(op)).await.expect("operator TLS");
    let r = fleet::fleet_control_client::FleetControlClient::new(ch).disconnect(all()).await.expect("operator disconnects").into_inner();
    assert_eq!(r.closed, 1, "{r:?}");
    assert_eq!(palisade_testkit::close_code(&mut ws, Duration::from_secs(5)).await, Some(4003), "the session was closed");
    dev.stop().await;
}
