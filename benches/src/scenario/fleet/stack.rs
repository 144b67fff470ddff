//! One fleet for the bench: a real etcd, the control-plane PKI (a CA; controller, node
//! and operator identities naming their roles), a controller process, and node processes
//! or the simulator process, all on loopback, killed by their pid when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use palisade_plane::Role;
use palisade_plane::pki;
use palisade_proto::controller::v1 as pb;
use palisade_proto::controller::v1::fleet_control_client::FleetControlClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::fixture::Fixture;
use crate::proc::{Server, free_port};

pub type Operator = FleetControlClient<Channel>;

const CA_NAME: &str = "Palisade bench control CA";

pub fn palisade_bin(given: Option<&Path>, fixture: &Fixture) -> anyhow::Result<PathBuf> {
    let bin = given.map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/palisade")), Path::to_path_buf);
    if !bin.is_file() {
        bail!("{} not found: build it first with `cargo build --release -p palisade` (or pass --palisade-bin)", bin.display());
    }
    // One binary for the whole invocation, even if the workspace is rebuilt meanwhile.
    let copy = fixture.dir.path().join("palisade-fleet");
    std::fs::copy(&bin, &copy).with_context(|| format!("cannot copy {}", bin.display()))?;
    Ok(copy)
}

/// PEM files of one identity.
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

pub struct Stack {
    dir: PathBuf,
    bin: PathBuf,
    cluster: String,
    ca: PathBuf,
    etcd_url: String,
    node_files: Files,
    operator: Files,
    policy: PathBuf,
    wss_cert: PathBuf,
    wss_key: PathBuf,
    controller_addr: SocketAddr,
    nodes: Vec<(Server, SocketAddr)>,
    // Dropped last: nodes and simulator go before the controller and etcd.
    simulator: Option<Server>,
    controller: Server,
    _etcd: Server,
}

fn write(dir: &Path, name: &str, leaf: &pki::Leaf) -> anyhow::Result<Files> {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert, &leaf.cert_pem)?;
    pki::write_private(&key, &leaf.key_pem)?;
    Ok(Files { cert, key })
}

impl Stack {
    /// etcd, the PKI and a controller for `cluster`, in a directory of the fixture's.
    pub async fn start(fixture: &Fixture, bin: &Path, cluster: &str) -> anyhow::Result<Stack> {
        let dir = fixture.dir.path().join(cluster);
        std::fs::create_dir_all(&dir)?;
        let ca = pki::new_ca(CA_NAME)?;
        let ca_path = dir.join("control-ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem)?;
        let sans = ["localhost", "127.0.0.1"];
        let leaf = |cn: &str, role: Role, server: bool| pki::new_role_leaf(&ca, CA_NAME, cn, &sans, &[role.uri(cluster)], server, true);
        let controller = write(&dir, "controller", &leaf("controller", Role::Controller, true)?)?;
        // Every node shares one identity: a node's certificate names it, but nothing
        // checks a node's role (a node calls nothing).
        let node_files = write(&dir, "node", &leaf("node", Role::Node("bench".into()), true)?)?;
        let operator = write(&dir, "operator", &leaf("operator", Role::Operator, false)?)?;

        let etcd = spawn_etcd(&dir).await?;
        let etcd_url = format!("http://{}", etcd.addr);
        let controller_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let cfg = format!(
            "cluster = \"{cluster}\"\nlisten = \"{controller_addr}\"\npush_concurrency = 256\nnode_timeout_ms = 5000\n\
             [tls]\ncert = {c:?}\nkey = {k:?}\nca = {ca:?}\n[nodes_tls]\ncert = {c:?}\nkey = {k:?}\nca = {ca:?}\n\
             [etcd]\nendpoints = [\"{etcd_url}\"]\n",
            c = controller.cert.display().to_string(),
            k = controller.key.display().to_string(),
            ca = ca_path.display().to_string(),
        );
        let cfg_path = dir.join("controller.toml");
        std::fs::write(&cfg_path, cfg)?;
        let args = vec!["controller".to_string(), "--config".into(), cfg_path.display().to_string()];
        let controller_proc = Server::spawn("controller", bin, &args, &dir.join("controller.log"), controller_addr)?;
        wait_port(controller_addr, Duration::from_secs(20)).await.context("the controller did not listen")?;
        Ok(Stack {
            dir,
            bin: bin.to_path_buf(),
            cluster: cluster.into(),
            ca: ca_path,
            etcd_url,
            node_files,
            operator,
            policy: fixture.policy.clone(),
            wss_cert: fixture.cert.clone(),
            wss_key: fixture.key.clone(),
            controller_addr,
            nodes: Vec::new(),
            simulator: None,
            controller: controller_proc,
            _etcd: etcd,
        })
    }

    /// A node's configuration: WSS with the fixture's certificate and the `/echo` route,
    /// mTLS control, etcd registration and the bootstrap policy.
    pub fn node_toml(&self, id: &str, wss: &str, control: &str) -> String {
        format!(
            "id = \"{id}\"\ncluster = \"{cluster}\"\ndrain_deadline_seconds = 1\npolicy_file = {policy:?}\n\
             [listen]\nwss = \"{wss}\"\ncontrol = \"{control}\"\n[tls]\ncert = {wc:?}\nkey = {wk:?}\n\
             [control]\ncert = {cc:?}\nkey = {ck:?}\nca = {ca:?}\n[[routes]]\npath = \"/echo\"\necho = true\n\
             [etcd]\nendpoints = [\"{etcd}\"]\nlease_ttl_seconds = 30\n",
            cluster = self.cluster,
            policy = self.policy.display().to_string(),
            wc = self.wss_cert.display().to_string(),
            wk = self.wss_key.display().to_string(),
            cc = self.node_files.cert.display().to_string(),
            ck = self.node_files.key.display().to_string(),
            ca = self.ca.display().to_string(),
            etcd = self.etcd_url,
        )
    }

    /// `n` node processes.
    pub async fn spawn_nodes(&mut self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            let (wss, control) = (SocketAddr::from(([127, 0, 0, 1], free_port()?)), SocketAddr::from(([127, 0, 0, 1], free_port()?)));
            let id = format!("node-{i:02}");
            let path = self.dir.join(format!("{id}.toml"));
            std::fs::write(&path, self.node_toml(&id, &wss.to_string(), &control.to_string()))?;
            let args = vec!["node".to_string(), "--config".into(), path.display().to_string()];
            let server = Server::spawn(&id, &self.bin, &args, &self.dir.join(format!("{id}.log")), wss)?;
            self.nodes.push((server, wss));
        }
        for (s, addr) in &mut self.nodes {
            wait_port(*addr, Duration::from_secs(20)).await.with_context(|| format!("{} did not listen", s.name))?;
            s.check_alive()?;
        }
        Ok(())
    }

    /// The simulator process with `n` in-process nodes (`palisade-bench fleet-sim`).
    pub async fn spawn_simulator(&mut self, n: usize) -> anyhow::Result<()> {
        let template = self.dir.join("sim-node.toml");
        std::fs::write(&template, self.node_toml("sim-{i}", "127.0.0.1:0", "127.0.0.1:0"))?;
        let ready = self.dir.join("sim.ready");
        let me = std::env::current_exe()?;
        let args = vec![
            "fleet-sim".to_string(),
            "--nodes".into(),
            n.to_string(),
            "--template".into(),
            template.display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        let mut sim = Server::spawn("fleet-sim", &me, &args, &self.dir.join("sim.log"), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !ready.exists() {
            sim.check_alive()?;
            if Instant::now() > deadline {
                bail!("the simulator did not start {n} nodes within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.simulator = Some(sim);
        Ok(())
    }

    pub fn etcd_addr(&self) -> SocketAddr {
        self._etcd.addr
    }

    /// The first node process.
    pub fn first_node(&self) -> Option<&Server> {
        self.nodes.first().map(|(s, _)| s)
    }

    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|(_, a)| *a).collect()
    }

    /// An operator's FleetControl client (mTLS).
    pub async fn operator(&self) -> anyhow::Result<Operator> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read_to_string(&self.ca)?))
            .identity(Identity::from_pem(std::fs::read_to_string(&self.operator.cert)?, std::fs::read_to_string(&self.operator.key)?))
            .domain_name("localhost");
        let ch = Channel::from_shared(format!("https://{}", self.controller_addr))?.tls_config(tls)?.connect().await?;
        Ok(FleetControlClient::new(ch).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Until the controller lists `n` nodes, every one reachable.
    pub async fn wait_reachable(&mut self, ctl: &mut Operator, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.controller.check_alive()?;
            let nodes = ctl.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes;
            let reachable = nodes.iter().filter(|n| n.reachable).count();
            if nodes.len() == n && reachable == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the controller sees {} nodes, {reachable} reachable, of {n} after {within:?}", nodes.len());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn controller_rss_kib(&self) -> anyhow::Result<u64> {
        self.controller.rss_kib()
    }

    /// The controller's peak RSS (VmHWM), KiB.
    pub fn controller_hwm_kib(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.controller.pid()))?;
        let line = text.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("bad VmHWM")
    }

    /// Kills everything (nodes first).
    pub fn stop(self) {
        let Stack { nodes, simulator, controller, _etcd, .. } = self;
        drop(nodes);
        drop(simulator);
        drop(controller);
        drop(_etcd);
    }
}

async fn spawn_etcd(dir: &Path) -> anyhow::Result<Server> {
    let etcd = which("etcd").context("etcd not found on PATH: run scripts/install-deps.sh")?;
    let (client, peer) = (free_port()?, free_port()?);
    let addr = SocketAddr::from(([127, 0, 0, 1], client));
    let args: Vec<String> = [
        "--name=bench".to_string(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://{addr}"),
        format!("--advertise-client-urls=http://{addr}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=bench=http://127.0.0.1:{peer}"),
        "--log-level=warn".into(),
    ]
    .into();
    let server = Server::spawn("etcd", &etcd, &args, &dir.join("etcd.log"), addr)?;
    wait_port(addr, Duration::from_secs(20)).await.context("etcd did not listen")?;
    Ok(server)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

async fn wait_port(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
