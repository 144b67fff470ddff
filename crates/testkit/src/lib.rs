//! Test-only helpers: a test PKI, signing keys of every algorithm family, nodes on free
//! loopback ports, and real clients (rustls + tokio-tungstenite, and a raw HTTP/1.1
//! client over TLS for malformed requests no WebSocket client would send).

pub mod etcd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use palisade_node::config::{Listen, NodeConfig, RouteConfig, TlsConfig, TlsMode};
use palisade_node::{Node, NodeHandle};
use palisade_plane::pki;
pub use palisade_plane::roles::Role;
use palisade_policy::Policy;
use palisade_policy::mint::SigningKey;
use palisade_policy::model::KeyDoc;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

pub use tokio_tungstenite::tungstenite::Message;
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A private key (PKCS#8 PEM or base64 HMAC secret) with the policy entry for it.
pub struct TestKey {
    pub kid: String,
    pub alg: &'static str,
    pub private: String,
    pub doc: KeyDoc,
}

impl TestKey {
    pub fn generate(kid: &str, alg: &'static str) -> TestKey {
        use base64::Engine as _;
        let ra: Option<&'static rcgen::SignatureAlgorithm> = match alg {
            "ES256" => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
            "ES384" => Some(&rcgen::PKCS_ECDSA_P384_SHA384),
            "EdDSA" => Some(&rcgen::PKCS_ED25519),
            "RS256" | "RS384" | "RS512" | "PS256" => Some(&rcgen::PKCS_RSA_SHA256),
            _ => None,
        };
        match ra {
            Some(ra) => {
                let kp = rcgen::KeyPair::generate_for(ra).expect("keygen");
                let doc = KeyDoc { kid: kid.into(), alg: alg.into(), public_key_pem: Some(kp.public_key_pem()), secret_base64: None };
                TestKey { kid: kid.into(), alg, private: kp.serialize_pem(), doc }
            }
            None => {
                let secret = base64::engine::general_purpose::STANDARD.encode(rand_bytes::<64>());
                let doc = KeyDoc { kid: kid.into(), alg: alg.into(), public_key_pem: None, secret_base64: Some(secret.clone()) };
                TestKey { kid: kid.into(), alg, private: secret, doc }
            }
        }
    }

    /// Signs `claims` over the defaults (`sub`, `iat` now, `exp` in 10 minutes).
    pub fn token(&self, claims: serde_json::Value) -> String {
        let n = now();
        let mut c = serde_json::json!({"sub": "alice", "iat": n, "exp": n + 600});
        if let (Some(m), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        SigningKey::from_text(&self.private, Some(self.alg)).expect("key").sign(Some(&self.kid), &c).expect("sign")
    }

    pub fn token_for(&self, sub: &str) -> String {
        self.token(serde_json::json!({"sub": sub}))
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_fill(&mut b);
    b
}

fn aws_lc_fill(b: &mut [u8]) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(b);
}

/// A permissive test policy around `keys`: generous limits, app origins, no missing
/// Origin.
pub fn policy(keys: &[&TestKey]) -> Policy {
    let mut p = Policy::default();
    p.origins.allow = vec!["https://app.example.com".into(), "https://*.example.com".into()];
    p.auth.keys = keys.iter().map(|k| k.doc.clone()).collect();
    p.limits.per_ip.handshakes_per_second = 1000.0;
    p.limits.per_ip.burst = 1000;
    p.limits.per_ip.max_connections = 1000;
    p.limits.per_user.handshakes_per_second = 1000.0;
    p.limits.per_user.burst = 1000;
    p.limits.per_user.max_connections = 1000;
    p
}

/// Test PKI on disk: CA, WSS server certificate for localhost and 127.0.0.1, and
/// control-plane certificates that name their role (SPEC section 6) for cluster
/// [`TEST_CLUSTER`].
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: pki::Ca,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

pub const TEST_CA: &str = "Palisade test CA";

/// The cluster of test nodes (and of the role SANs the test PKI issues).
pub const TEST_CLUSTER: &str = "test";

/// A certificate and its key, PEM.
pub type CertKey = (String, String);

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::new_ca(TEST_CA).expect("ca");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).expect("write");
        let (cert_path, key_path) = (dir.path().join("wss.pem"), dir.path().join("wss-key.pem"));
        let pki = Pki { dir, ca, ca_path, cert_path, key_path };
        pki.issue_wss("localhost");
        pki
    }

    /// (Re)issues the WSS certificate with common name `cn` (no role SAN).
    pub fn issue_wss(&self, cn: &str) {
        let leaf = pki::new_leaf(&self.ca, TEST_CA, cn, &["localhost", "127.0.0.1"], true, false).expect("leaf");
        // Key first, then the certificate: a reload sees a consistent pair or keeps the old.
        std::fs::write(&self.key_path, &leaf.key_pem).expect("write");
        std::fs::write(&self.cert_path, &leaf.cert_pem).expect("write");
    }

    /// A certificate from this CA with DNS SANs `dns` and URI SANs `uris`.
    pub fn issue(&self, cn: &str, dns: &[&str], uris: &[String], server: bool, client: bool) -> CertKey {
        let leaf = pki::new_role_leaf(&self.ca, TEST_CA, cn, dns, uris, server, client).expect("leaf");
        (leaf.cert_pem, leaf.key_pem)
    }

    /// A client certificate naming `role` in `cluster`.
    pub fn role_cert_in(&self, cluster: &str, role: &Role) -> CertKey {
        self.issue(&role.to_string().replace('/', "-"), &[], &[role.uri(cluster)], false, true)
    }

    /// A client certificate naming `role` in the test cluster.
    pub fn role_cert(&self, role: &Role) -> CertKey {
        self.role_cert_in(TEST_CLUSTER, role)
    }

    /// An operator client certificate of the test cluster (CLI, grpcurl), common name `cn`.
    pub fn client_cert(&self, cn: &str) -> CertKey {
        self.issue(cn, &[], &[Role::Operator.uri(TEST_CLUSTER)], false, true)
    }

    pub fn operator_cert(&self) -> CertKey {
        self.role_cert(&Role::Operator)
    }

    /// The controller's client identity towards nodes.
    pub fn controller_cert(&self) -> CertKey {
        self.role_cert(&Role::Controller)
    }

    /// Node `id`'s control identity, as a client certificate (it must call nothing).
    pub fn node_cert(&self, id: &str) -> CertKey {
        self.role_cert(&Role::Node(id.to_owned()))
    }

    /// A client certificate from this CA without any role SAN.
    pub fn no_role_cert(&self) -> CertKey {
        self.issue("no-role", &["no-role.example"], &["spiffe://example.org/operator".to_owned()], false, true)
    }

    /// An operator of another cluster, from this same CA.
    pub fn other_cluster_operator(&self) -> CertKey {
        self.role_cert_in("other", &Role::Operator)
    }

    /// Writes `name.pem` and `name-key.pem` in the PKI directory and returns their paths.
    pub fn write(&self, name: &str, (cert, key): &CertKey) -> (PathBuf, PathBuf) {
        let (c, k) = (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}-key.pem")));
        std::fs::write(&k, key).expect("write");
        std::fs::write(&c, cert).expect("write");
        (c, k)
    }

    /// The controller's files (`control.pem`, `control-key.pem`): server and client auth
    /// for localhost/127.0.0.1, role `controller` of the test cluster. It serves
    /// FleetControl and calls the nodes with it.
    pub fn control_config(&self) -> palisade_node::config::ControlConfig {
        let leaf = self.issue("controller", &["localhost", "127.0.0.1"], &[Role::Controller.uri(TEST_CLUSTER)], true, true);
        let (cert, key) = self.write("control", &leaf);
        palisade_node::config::ControlConfig { cert, key, ca: self.ca_path.clone() }
    }

    /// Node `id`'s control-plane server files (`node-<id>.pem`): localhost/127.0.0.1, role
    /// `node/<id>` of the test cluster (server and client auth, so that tests can prove the
    /// role, not the key usage, is what stops it calling).
    pub fn node_control_config(&self, id: &str) -> palisade_node::config::ControlConfig {
        let leaf = self.issue(id, &["localhost", "127.0.0.1"], &[Role::Node(id.to_owned()).uri(TEST_CLUSTER)], true, true);
        let (cert, key) = self.write(&format!("node-{id}"), &leaf);
        palisade_node::config::ControlConfig { cert, key, ca: self.ca_path.clone() }
    }

    /// The WSS certificate and key (no role SAN) as a client identity.
    pub fn wss_identity(&self) -> CertKey {
        (std::fs::read_to_string(&self.cert_path).expect("read"), std::fs::read_to_string(&self.key_path).expect("read"))
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

pub fn echo_route() -> RouteConfig {
    RouteConfig { path: "/echo".into(), echo: true, upstream: None, upstream_ca: None, allow_binary: true, schema: None }
}

pub fn node_config(pki: &Pki, policy_file: Option<PathBuf>) -> NodeConfig {
    NodeConfig {
        id: Some(format!("test-node-{}", rand_bytes::<4>().iter().map(|b| format!("{b:02x}")).collect::<String>())),
        cluster: TEST_CLUSTER.into(),
        listen: Listen { wss: ([127, 0, 0, 1], 0).into(), control: None },
        tls: TlsConfig {
            mode: TlsMode::Rustls,
            cert: Some(pki.cert_path.clone()),
            key: Some(pki.key_path.clone()),
            reload_interval_ms: 100,
        },
        trusted_proxies: Vec::new(),
        ipv6_prefix_len: 64,
        routes: vec![echo_route()],
        policy_file,
        drain_deadline_seconds: 2,
        refusal_lane: 64,
        control: None,
        etcd: None,
        insecure_control_plane: false,
    }
}

/// A minimal `node.toml` for running the real binary: WSS on 127.0.0.1:`port` with the
/// PKI's `wss.pem`/`wss-key.pem` (relative to the file) and the `/echo` route. `extra` is
/// prepended (top-level keys) and `tail` appended (more sections).
pub fn node_toml(port: u16, extra: &str, tail: &str) -> String {
    format!(
        "{extra}\n[listen]\nwss = \"127.0.0.1:{port}\"\n[tls]\ncert = \"wss.pem\"\nkey = \"wss-key.pem\"\n[[routes]]\npath = \"/echo\"\necho = true\n{tail}"
    )
}

/// A node on a free loopback port, with its PKI.
pub struct TestNode {
    pub pki: Arc<Pki>,
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

impl TestNode {
    /// Starts a node serving `policy` (none: the node has no policy and fails closed).
    pub async fn start(policy: Option<&Policy>, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        Self::start_inner(policy, |cfg, _| tweak(cfg)).await
    }

    async fn start_inner(policy: Option<&Policy>, tweak: impl FnOnce(&mut NodeConfig, &Pki)) -> TestNode {
        init();
        Self::start_with_pki(Arc::new(Pki::new()), policy, tweak).await
    }

    /// Starts a node with a control plane whose certificates come from a shared `pki`
    /// (several nodes and a controller under one CA).
    pub async fn start_in(pki: Arc<Pki>, policy: Option<&Policy>, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        init();
        Self::start_with_pki(pki, policy, move |cfg, pki| {
            cfg.listen.control = Some(([127, 0, 0, 1], 0).into());
            cfg.control = Some(pki.node_control_config(cfg.id.as_deref().unwrap_or("node")));
            tweak(cfg);
        })
        .await
    }

    async fn start_with_pki(pki: Arc<Pki>, policy: Option<&Policy>, tweak: impl FnOnce(&mut NodeConfig, &Pki)) -> TestNode {
        let policy_file = policy.map(|p| {
            let path =
                pki.dir.path().join(format!("policy-{}.yaml", rand_bytes::<4>().iter().map(|b| format!("{b:02x}")).collect::<String>()));
            std::fs::write(&path, p.to_yaml()).expect("write policy");
            path
        });
        let mut cfg = node_config(&pki, policy_file);
        tweak(&mut cfg, &pki);
        let node = Node::bind(cfg).await.expect("node binds");
        let handle = node.spawn().await;
        let addr = handle.wss_addr;
        let tls = pki.client_tls();
        TestNode { pki, handle, addr, tls }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("wss://127.0.0.1:{}{}", self.addr.port(), path_and_query)
    }

    /// Starts a node with its control plane on a free port, mTLS with this test CA (its
    /// control certificate names role `node/<id>`; operators and the controller may call).
    pub async fn start_with_control(policy: Option<&Policy>, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        Self::start_inner(policy, move |cfg, pki| {
            cfg.listen.control = Some(([127, 0, 0, 1], 0).into());
            cfg.control = Some(pki.node_control_config(cfg.id.as_deref().unwrap_or("node")));
            tweak(cfg);
        })
        .await
    }

    /// A gRPC channel to the control plane; `identity` is a client certificate and key
    /// (none: no client certificate), `ca` the roots to trust (default: the test CA).
    pub async fn control_channel(&self, identity: Option<(String, String)>) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let addr = self.handle.control_addr.expect("control listener");
        grpc_channel(addr, &self.pki.ca.cert_pem, identity).await
    }

    pub async fn control(&self) -> palisade_proto::node::v1::node_control_client::NodeControlClient<tonic::transport::Channel> {
        let ch = self.control_channel(Some(self.pki.client_cert("operator"))).await.expect("channel");
        palisade_proto::node::v1::node_control_client::NodeControlClient::new(ch)
    }

    /// A WebSocket handshake through tokio-tungstenite over real TLS.
    pub async fn ws(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
        ws_connect(&self.url(path_and_query), headers, Some(self.tls.clone())).await
    }

    /// A raw request over TLS; reads the whole response (the node closes after refusals).
    pub async fn raw(&self, request: &[u8]) -> RawResponse {
        raw_tls(self.addr, self.tls.clone(), request, None).await
    }
}

pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut().append(name, http::HeaderValue::from_str(v).expect("header value"));
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))?
}

/// The refusal of a handshake: status, the `error` code of the JSON body, headers.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub code: String,
    pub headers: http::HeaderMap,
}

/// Expects the handshake to be refused and returns what came back.
pub fn refused(r: Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error>) -> Refused {
    match r {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&body)));
            Refused {
                status: resp.status().as_u16(),
                code: v["error"].as_str().unwrap_or_default().to_owned(),
                headers: resp.headers().clone(),
            }
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, resp)) => panic!("expected a refusal, got {}", resp.status()),
    }
}

#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body).ok().and_then(|v| v["error"].as_str().map(str::to_owned)).unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

pub async fn raw_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &[u8], local: Option<std::net::IpAddr>) -> RawResponse {
    let tcp = connect_from(addr, local).await;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("tls");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    parse_raw(&out)
}

pub fn parse_raw(out: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    RawResponse { status, head: head.to_owned(), body: body.to_owned() }
}

/// A TCP connection from a chosen loopback source address (127.0.0.x).
pub async fn connect_from(addr: SocketAddr, local: Option<std::net::IpAddr>) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    sock.connect(addr).await.expect("connect")
}

/// A WebSocket upgrade request head for raw tests.
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Reads the next data message (text or binary), skipping pings and pongs.
pub async fn next_data(ws: &mut Ws) -> Option<Message> {
    use futures_util::StreamExt as _;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.ok()?? {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

/// Waits for the close frame and returns its code (None if the socket ended without one).
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// What an upstream test server received in a handshake.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A real WebSocket server (tokio-tungstenite) standing in for the application. It
/// records every handshake and behaves by the messages it gets:
/// - `close:<code>`: closes with that code;
/// - `drop`: drops the TCP connection without a close frame;
/// - `flood:<n>`: sends n messages of 16 KiB as fast as it can;
/// - anything else: echoed back prefixed with `up:` (binary echoed as is).
///
/// It selects the first subprotocol offered, if any.
pub struct UpstreamServer {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpstreamServer {
    pub async fn start() -> UpstreamServer {
        Self::start_inner(None).await
    }

    /// The same server over TLS (`wss://localhost:PORT`), with a certificate from `pki`.
    pub async fn start_tls(pki: &Pki) -> UpstreamServer {
        init();
        let leaf = pki::new_leaf(&pki.ca, TEST_CA, "upstream", &["localhost"], true, false).expect("leaf");
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("pem");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("cert");
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> UpstreamServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_upstream(tcp, seen).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve_upstream(s, seen).await;
                            }
                        }
                    }
                });
            }
        });
        UpstreamServer { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// The URL of a server started with `start_tls`.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/socket", self.addr.port())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A gRPC channel over TLS to `addr` (server name `localhost`), trusting `ca_pem`.
pub async fn grpc_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// One upstream connection: record the handshake, then behave by the messages.
async fn serve_upstream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tcp: S, seen: Arc<std::sync::Mutex<Vec<Recorded>>>) {
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let cb = |req: &tungstenite::handshake::server::Request, mut resp: tungstenite::handshake::server::Response| {
        let rec = Recorded {
            path: req.uri().to_string(),
            headers: req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
        };
        if let Some(first) = rec.header("sec-websocket-protocol").and_then(|p| p.split(',').next()).map(|s| s.trim().to_owned())
            && let Ok(v) = http::HeaderValue::from_str(&first)
        {
            resp.headers_mut().insert("sec-websocket-protocol", v);
        }
        seen.lock().expect("lock").push(rec);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else { return };
    use futures_util::{SinkExt as _, StreamExt as _};
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) => {
                let t = t.as_str();
                if let Some(code) = t.strip_prefix("close:").and_then(|c| c.parse::<u16>().ok()) {
                    let frame = tungstenite::protocol::CloseFrame { code: code.into(), reason: "upstream says bye".into() };
                    let _ = ws.close(Some(frame)).await;
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                } else if t == "drop" {
                    return; // drops the socket: no close frame
                } else if let Some(n) = t.strip_prefix("flood:").and_then(|n| n.parse::<usize>().ok()) {
                    let chunk = "f".repeat(16 * 1024);
                    for _ in 0..n {
                        if ws.send(Message::Text(chunk.clone().into())).await.is_err() {
                            return;
                        }
                    }
                } else if ws.send(Message::Text(format!("up:{t}").into())).await.is_err() {
                    return;
                }
            }
            Message::Binary(b) if ws.send(Message::Binary(b.clone())).await.is_err() => return,
            Message::Close(_) => {
                let _ = ws.close(None).await;
                return;
            }
            _ => {}
        }
    }
}

/// Polls `check` every 20 ms until it yields a value, or panics naming `what` once
/// `within` has passed: tests wait on events, with a deadline, never on bare sleeps.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(within: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// A raw WebSocket client over TLS, as an attacker would write one: any frame bytes
// (masked or not, reserved bits, unknown opcodes, broken control frames), a choice of
// when (and whether) to read, and every read under a deadline.

/// A client TLS stream to a node.
pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
/// The FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

/// The masking key of [`masked`] frames.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame: first byte `b0` as given (FIN, RSV bits, opcode), the payload length in
/// its shortest form, masked with `mask` when there is one (a client must mask).
pub fn ws_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed client frame: FIN, `opcode`, masked.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    ws_frame(FIN | opcode, payload, Some(MASK))
}

/// A close frame payload: the code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame from the node, as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1-3, as the top bits of the first byte (`0x70` mask).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A close frame's code (1005 when it has none); `None` for other frames.
    pub fn close_code(&self) -> Option<u16> {
        match (self.opcode, self.payload.as_slice()) {
            (OP_CLOSE, [a, b, ..]) => Some(u16::from_be_bytes([*a, *b])),
            (OP_CLOSE, _) => Some(1005),
            _ => None,
        }
    }
}

/// How the stream ended, or that it had not by the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// A clean end (TLS `close_notify`, then FIN).
    Eof,
    /// A reset, or TCP closed under TLS without `close_notify`, or a broken frame.
    Error(std::io::ErrorKind),
    TimedOut,
}

impl RawEnd {
    /// The node closed the connection (EOF or reset), as opposed to a deadline passing.
    pub fn is_closed(self) -> bool {
        self != RawEnd::TimedOut
    }
}

/// The reading half of a [`RawWs`].
pub struct RawReader {
    rd: tokio::io::ReadHalf<ClientTls>,
    buf: Vec<u8>,
}

/// The writing half of a [`RawWs`].
pub struct RawWriter {
    wr: tokio::io::WriteHalf<ClientTls>,
}

/// A raw WebSocket connection after its 101.
pub struct RawWs {
    pub reader: RawReader,
    pub writer: RawWriter,
    /// The 101 response head.
    pub response: RawResponse,
}

/// Parses one server frame at the start of `buf`: the frame and its length on the wire.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let masked = b1 & 0x80 != 0;
    let (len, mut off) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(off..off + 4)?.try_into().ok()?;
        off += 4;
        Some(m)
    } else {
        None
    };
    let end = off.checked_add(usize::try_from(len).ok()?)?;
    let mut payload = buf.get(off..end)?.to_vec();
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Some((RawFrame { fin: b0 & 0x80 != 0, rsv: b0 & 0x70, opcode: b0 & 0x0F, masked, payload }, end))
}

impl RawReader {
    /// Reads more bytes by `deadline`; `Err` says how the stream ended.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), RawEnd> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
            Err(_) => Err(RawEnd::TimedOut),
            Ok(Ok(0)) => Err(RawEnd::Eof),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(RawEnd::Error(e.kind())),
        }
    }

    /// The next frame from the node, within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((f, n)) = parse_server_frame(&self.buf) {
                self.buf.drain(..n);
                return Ok(f);
            }
            self.fill(deadline).await?;
        }
    }

    /// Reads (and drops) frames until the node's close frame; returns its code (1005 when
    /// it has none), or how the stream ended first.
    pub async fn close_code(&mut self, within: Duration) -> Result<u16, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(code) = self.next_frame(left).await?.close_code() {
                return Ok(code);
            }
        }
    }

    /// The next data frame's payload (Pings, Pongs skipped), within `within`.
    pub async fn next_data(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await?;
            if !matches!(f.opcode, OP_PING | OP_PONG) {
                return Ok(f);
            }
        }
    }

    /// Reads and drops everything until the stream ends: how it ended (or `TimedOut`).
    pub async fn end(&mut self, within: Duration) -> RawEnd {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.buf.clear();
            if let Err(end) = self.fill(deadline).await {
                return end;
            }
        }
    }
}

impl RawWriter {
    /// Writes `bytes` (any frames, well-formed or not) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }
}

impl RawWs {
    /// Connects over TLS to `addr` and sends the upgrade `request` (a whole head). The
    /// client's receive buffer is set to `recv_buffer` bytes when given (a small one
    /// makes a non-reading client fill up quickly). A response other than 101 comes back
    /// as `Err`, read to its end.
    pub async fn open(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        request: &[u8],
        local: Option<std::net::IpAddr>,
        recv_buffer: Option<u32>,
    ) -> Result<RawWs, RawResponse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
        }
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let tcp = tokio::time::timeout_at(deadline, sock.connect(addr)).await.expect("connect in time").expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut s = tokio::time::timeout_at(deadline, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .expect("TLS in time")
            .expect("tls");
        s.write_all(request).await.expect("write head");
        s.flush().await.expect("flush");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Err(parse_raw(&buf)),
            }
        };
        let response = parse_raw(&buf[..head_end]);
        if response.status != 101 {
            let _ = tokio::time::timeout_at(deadline, s.read_to_end(&mut buf)).await;
            return Err(parse_raw(&buf));
        }
        let (rd, wr) = tokio::io::split(s);
        Ok(RawWs { reader: RawReader { rd, buf: buf.split_off(head_end) }, writer: RawWriter { wr }, response })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.send(bytes).await
    }

    pub async fn next_frame(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        self.reader.next_frame(within).await
    }

    pub async fn next_data(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        self.reader.next_data(within).await
    }

    pub async fn close_code(&mut self, within: Duration) -> Result<u16, RawEnd> {
        self.reader.close_code(within).await
    }

    pub async fn end(&mut self, within: Duration) -> RawEnd {
        self.reader.end(within).await
    }
}

impl TestNode {
    /// A raw WebSocket over TLS to this node (see [`RawWs::open`]); panics unless 101.
    pub async fn raw_ws(&self, request: &[u8]) -> RawWs {
        match RawWs::open(self.addr, self.tls.clone(), request, None, None).await {
            Ok(ws) => ws,
            Err(r) => panic!("expected 101, got {} {:?}", r.status, r.body),
        }
    }
}
