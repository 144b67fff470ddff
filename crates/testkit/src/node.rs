//! A real node on free loopback ports, with its configuration.

#[allow(unused_imports)]
use super::*;

pub fn echo_route() -> RouteConfig {
    RouteConfig { path: "/echo".into(), echo: true, upstream: None, upstream_ca: None, allow_binary: true, schema: None }
}

pub fn node_config(pki: &Pki, policy_file: Option<PathBuf>) -> NodeConfig {
    NodeConfig {
        id: Some(format!("test-node-{}", rand_bytes::<4>().iter().map(|b| format!("{b:02x}")).collect::<String>())),
        cluster: TEST_CLUSTER.into(),
        listen: Listen { wss: ([127, 0, 0, 1], 0).into(), control: None, data_threads: None },
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
