//! The node under soak: the policy (the fixture's, plus the run's own signing key and
//! limits that refuse the bursts but never the churn), `node.toml` with a plain-text
//! control plane on loopback (for `GetStats`), the process, and its first session.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use palisade_policy::model::{KeyDoc, PerKeyDoc};

use super::load::Minter;
use super::wire::{Answer, Wire};
use super::{KID, SoakArgs};
use crate::proc::Server;
use crate::scenario::Setup;

pub struct Node {
    pub server: Server,
    pub wire: Arc<Wire>,
    pub control: SocketAddr,
    pub log: PathBuf,
    pub ip_rate: f64,
    pub ip_burst: u64,
    pub ip_burst_size: usize,
}

/// Writes the policy and the configuration, starts the node and waits for its first session.
pub async fn start(a: &SoakArgs, setup: &Setup, minter: &Minter, public_pem: String) -> anyhow::Result<Node> {
    // Limits: generous for the churn, tight enough that the bursts are refused.
    let per_source =
        (a.rate + a.bad_token_rate + a.bad_origin_rate + a.burst_size as f64 / a.burst_every.max(1) as f64) / f64::from(a.sources);
    let ip_rate = (4.0 * per_source).ceil().max(20.0);
    let ip_burst = 2 * ip_rate as u64;
    let ip_burst_size = a.ip_burst_size.unwrap_or(2 * ip_burst as usize);
    let mut doc = setup.fixture.policy_doc.clone();
    doc.auth.keys.push(KeyDoc { kid: KID.into(), alg: "ES256".into(), public_key_pem: Some(public_pem), secret_base64: None });
    doc.limits.max_connections = 50_000;
    doc.limits.per_ip = PerKeyDoc { max_connections: 4096, handshakes_per_second: ip_rate, burst: ip_burst, fleet_max_connections: None };
    doc.limits.per_user = PerKeyDoc { max_connections: 10, handshakes_per_second: 2.0, burst: 5, fleet_max_connections: None };
    doc.limits.messages = Default::default();
    doc.limits.handshake_timeout_ms = a.handshake_timeout_ms;
    doc.limits.idle_timeout_seconds = 60;
    doc.limits.ping_interval_seconds = 25;
    doc.compile(1).context("the soak policy does not compile")?;
    let root = setup.fixture.dir.path().to_path_buf();
    std::fs::write(root.join("soak-policy.yaml"), doc.to_yaml())?;

    let (port, control) = (crate::proc::free_port()?, crate::proc::free_port()?);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let control = SocketAddr::from(([127, 0, 0, 1], control));
    let cfg = root.join("soak-node.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = \"soak-node\"\ndrain_deadline_seconds = 1\npolicy_file = {policy:?}\n\n[listen]\nwss = \"{addr}\"\ncontrol = \"{control}\"\n\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n\n[[routes]]\npath = \"{path}\"\necho = true\n",
            policy = root.join("soak-policy.yaml").display().to_string(),
            cert = setup.fixture.cert.display().to_string(),
            key = setup.fixture.key.display().to_string(),
            path = crate::fixture::PATH,
        ),
    )?;
    let log = root.join("palisade-soak.log");
    let args = vec!["node".into(), "--config".into(), cfg.display().to_string(), "--insecure-control-plane".into()];
    let server = Server::spawn("palisade", &root.join("palisade"), &args, &log, addr)?;
    let wire = Wire::new(&setup.fixture.ca_pem, addr)?;
    let mut server = server;
    ready(&mut server, &wire, minter, Ipv4Addr::new(127, 0, 0, 2)).await?;
    Ok(Node { server, wire, control, log, ip_rate, ip_burst, ip_burst_size })
}

/// Waits (30 s at most) until a real upgrade succeeds, then checks the pid is the node's.
async fn ready(server: &mut Server, wire: &Wire, minter: &Minter, source: Ipv4Addr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_alive()?;
        match wire.handshake(source, crate::fixture::ORIGIN, &minter.bearer("soak-ready", false)).await {
            Ok(Answer::Upgraded(ws)) => {
                ws.close().await.map_err(|e| anyhow::anyhow!("first session: {e}"))?;
                break;
            }
            Ok(Answer::Refused { status, code }) => {
                bail!("the first handshake was refused: {status} {code} (log: {})", server.log.display())
            }
            Err(e) if Instant::now() > deadline => bail!("the node is not ready after 30 s: {e} (log: {})", server.log.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).unwrap_or_default();
    if comm.trim() == "sh" {
        bail!("pid {} is still the shell", server.pid());
    }
    Ok(())
}
