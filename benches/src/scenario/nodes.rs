//! Servers of the `node-reference`, `memory-offloaded` and `bridge` scenarios that
//! [`Setup::start`] does not make: a `palisade node` with TLS offloaded or an upstream
//! route, a bare server without TLS, and the reference Node.js server. Each is started like
//! the others (a separate process, its log in the temporary directory) and is ready once a
//! real upgrade by the given client succeeded.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use super::Setup;
use crate::bare::Http;
use crate::client::Client;
use crate::fixture::PATH;
use crate::proc::Server;

/// How the node's listener and its one route are set up.
pub enum NodeVariant {
    /// `[tls] mode = "offloaded"`: a plain listener behind a TLS-terminating proxy, the
    /// loopback range as the trusted proxies.
    Offloaded,
    /// TLS in the process (as in `handshake`), the route bridged to this upstream URL.
    Upstream(String),
}

/// Writes `node-<port>.toml` for `variant`; everything else as in [`crate::fixture::Fixture::node_config`].
fn node_config(setup: &Setup, port: u16, variant: &NodeVariant) -> anyhow::Result<PathBuf> {
    let f = &setup.fixture;
    let path = f.dir.path().join(format!("node-{port}.toml"));
    let (top, tls, route) = match variant {
        NodeVariant::Offloaded => {
            ("trusted_proxies = [\"127.0.0.0/8\"]\n".to_string(), "mode = \"offloaded\"\n".to_string(), "echo = true\n".to_string())
        }
        NodeVariant::Upstream(url) => (
            String::new(),
            format!("cert = {:?}\nkey = {:?}\n", f.cert.display().to_string(), f.key.display().to_string()),
            format!("upstream = {url:?}\n"),
        ),
    };
    let text = format!(
        "id = \"bench-node-{port}\"\ndrain_deadline_seconds = 1\npolicy_file = {policy:?}\n{top}\n[listen]\nwss = \"127.0.0.1:{port}\"\n\n\
         [tls]\n{tls}\n[[routes]]\npath = \"{PATH}\"\n{route}",
        policy = f.policy.display().to_string(),
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A fresh loopback address and the log file of server `name`.
fn place(setup: &Setup, name: &str) -> anyhow::Result<(SocketAddr, PathBuf)> {
    let port = crate::proc::free_port()?;
    Ok((SocketAddr::from(([127, 0, 0, 1], port)), setup.fixture.dir.path().join(format!("{name}-{port}.log"))))
}

/// A `palisade node` (the copy of the binary that every scenario runs) in `variant`.
pub async fn palisade(setup: &Setup, name: &str, variant: &NodeVariant, client: &Client) -> anyhow::Result<Server> {
    let (addr, log) = place(setup, name)?;
    let cfg = node_config(setup, addr.port(), variant)?;
    let args = vec!["node".to_string(), "--config".into(), cfg.display().to_string()];
    let server = Server::spawn(name, &setup.palisade_copy, &args, &log, addr)?;
    setup.ready(server, client).await
}

/// `palisade-bench bare-server --plain`: the bare baseline over plain TCP (`ws://`).
pub async fn bare_plain(setup: &Setup, name: &str, http: Http, client: &Client) -> anyhow::Result<Server> {
    let (addr, log) = place(setup, name)?;
    let me = std::env::current_exe().context("cannot find this executable")?;
    let args =
        vec!["bare-server".to_string(), "--port".into(), addr.port().to_string(), "--http".into(), http.name().into(), "--plain".into()];
    let server = Server::spawn(name, &me, &args, &log, addr)?;
    setup.ready(server, client).await
}

/// The `ws://` client of a plain server: the same tokens as `setup.client`. Behind a
/// TLS-terminating proxy each connection carries `X-Forwarded-For` with a client address
/// (one per source address, 198.51.100.1 .., so that the node keeps as many per-IP entries
/// as in the TLS scenarios); a plain upstream gets none.
pub fn plain_client(setup: &Setup, sources: u8, tokens: usize, forwarded: bool) -> anyhow::Result<std::sync::Arc<Client>> {
    let xff = if forwarded { (0..sources.max(1)).map(|i| format!("198.51.100.{}", u16::from(i) + 1)).collect() } else { Vec::new() };
    Client::plain(sources, setup.fixture.bearer_tokens(tokens)?, xff)
}
