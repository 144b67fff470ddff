//! Node life cycle: bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{NodeConfig, TlsMode};
use crate::state::NodeState;
use crate::tls::{self, ReloadingCert};
use palisade_plane::ControlTls;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("invalid node configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("control-plane TLS files: {0}")]
    ControlTls(std::io::Error),
    #[error("{0}")]
    Route(String),
    #[error("cannot read the bootstrap policy {path}: {source}")]
    PolicyRead { path: String, source: std::io::Error },
    #[error("bootstrap policy {path}: {source}")]
    Policy { path: String, source: palisade_policy::PolicyError },
}

pub struct Node {
    state: Arc<NodeState>,
    /// The WSS listeners, one per data thread (`server.rs`).
    listeners: Vec<std::net::TcpListener>,
    control: Option<(TcpListener, Option<ControlTls>)>,
    tls: Option<TlsAcceptor>,
    cert: Option<Arc<ReloadingCert>>,
}

impl Node {
    /// Loads TLS material and the bootstrap policy, and binds the WSS (and control)
    /// listeners.
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let (tls, cert) = match (config.tls.mode, &config.tls.cert, &config.tls.key) {
            (TlsMode::Rustls, Some(c), Some(k)) => {
                let cert = ReloadingCert::new(c.clone(), k.clone())?;
                (Some(TlsAcceptor::from(tls::server_config(cert.clone())?)), Some(cert))
            }
            _ => (None, None),
        };
        let listeners = crate::server::bind_listeners(config.listen.wss, config.listen.data_threads())
            .map_err(|source| NodeError::Bind { addr: config.listen.wss, source })?;
        let control = match config.listen.control {
            None => None,
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { addr, source })?;
                let tls = match (&config.control, config.insecure_control_plane) {
                    (Some(c), _) => Some(ControlTls::load(&c.cert, &c.key, &c.ca).map_err(NodeError::ControlTls)?),
                    (None, true) => {
                        tracing::warn!(event = "insecure_control_plane", "the control plane is PLAIN TEXT without client authentication");
                        None
                    }
                    (None, false) => None, // refused by validate()
                };
                Some((l, tls))
            }
        };
        let policy_file = config.policy_file.clone();
        let state = NodeState::new(config).map_err(NodeError::Route)?;
        if let Some(c) = &cert {
            state.cert_expiry.set_wss(c.clone());
        }
        if let Some((_, Some(t))) = &control {
            state.cert_expiry.set_control_pem(&t.cert_pem);
        }
        if let Some(t) = crate::telemetry::start(&state) {
            let _ = state.telemetry.set(t);
        }
        if let Some(path) = policy_file {
            let p = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| NodeError::PolicyRead { path: p.clone(), source })?;
            let doc = palisade_policy::Policy::from_yaml_or_json(&text).map_err(|source| NodeError::Policy { path: p.clone(), source })?;
            state.policy.apply(&doc, 1).map_err(|e| match e {
                crate::policy_store::ApplyError::Invalid(source) => NodeError::Policy { path: p.clone(), source },
                crate::policy_store::ApplyError::Stale { .. } => {
                    NodeError::Policy { path: p.clone(), source: palisade_policy::PolicyError::new("version", "stale") }
                }
            })?;
        }
        Ok(Node { state, listeners, control, tls, cert })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.first().and_then(|l| l.local_addr().ok()).unwrap_or(self.state.config.listen.wss)
    }

    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// Starts serving in the background.
    pub async fn spawn(self) -> NodeHandle {
        let wss_addr = self.local_addr();
        let data_threads = self.listeners.len();
        let watcher = self.cert.as_ref().map(|c| c.spawn_watcher(Duration::from_millis(self.state.config.tls.reload_interval_ms)));
        let mut control_addr = None;
        let mut control_task = None;
        if let Some((listener, tls)) = self.control {
            control_addr = listener.local_addr().ok();
            control_task = Some(crate::control::spawn(self.state.clone(), listener, tls, self.state.stop_tx.subscribe()).await);
        }
        let mut accepting = Vec::new();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let (done, stopped) = tokio::sync::oneshot::channel();
            let job = crate::server::data_thread(self.state.clone(), listener, self.tls.clone(), done);
            crate::server::spawn_data_thread(i, job);
            accepting.push(stopped);
        }
        // Ends when every data thread has stopped accepting.
        let task = tokio::spawn(async move {
            for stopped in accepting {
                let _ = stopped.await;
            }
        });
        // Cluster state (SPEC section 8): registration and the policy watch, once the
        // listeners are bound so that the record holds their real addresses.
        let mut cluster_tasks = match &self.state.etcd {
            Some(etcd) => {
                let record = crate::cluster::node_record(&self.state, wss_addr, control_addr);
                crate::cluster::spawn(self.state.clone(), etcd.clone(), record)
            }
            None => Vec::new(),
        };
        cluster_tasks.push(spawn_expiry_warnings(self.state.clone()));
        cluster_tasks.push(crate::session::spawn_notifier(self.state.clone()));
        tracing::info!(event = "node_started", node = %self.state.id, wss = %wss_addr, control = ?control_addr, data_threads, "node serving");
        NodeHandle { state: self.state, wss_addr, control_addr, task, control_task, watcher, cluster_tasks }
    }
}

/// Logs, once now and then hourly, each certificate that is expired or expires within 14
/// days. Ends with the node.
fn spawn_expiry_warnings(state: Arc<NodeState>) -> tokio::task::JoinHandle<()> {
    let mut stop = state.stop_tx.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::cert_expiry::CHECK_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => state.cert_expiry.warn_expiring(),
                _ = stop.changed() => return,
            }
        }
    })
}

pub struct NodeHandle {
    pub state: Arc<NodeState>,
    pub wss_addr: SocketAddr,
    pub control_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    control_task: Option<tokio::task::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// etcd registration, the policy watch, certificate expiry warnings (they end with
    /// `stop_tx`).
    cluster_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeHandle {
    /// Drains with the configured deadline (see [`crate::drain::drain`]).
    pub async fn drain(&self) -> usize {
        crate::drain::drain(&self.state, self.state.config.drain_deadline()).await
    }

    /// Starts a drain in the background (what SIGTERM and the `Drain` RPC do).
    pub fn start_drain(&self) -> tokio::task::JoinHandle<usize> {
        let state = self.state.clone();
        tokio::spawn(async move { crate::drain::drain(&state, state.config.drain_deadline()).await })
    }

    /// Stops accepting at once (sessions are left to end with the process).
    pub fn stop(&self) {
        self.state.stop_tx.send_replace(true);
    }

    /// Waits until the listeners have stopped (after a drain or `stop`).
    pub async fn join(self) {
        let _ = self.task.await;
        if let Some(c) = self.control_task {
            let _ = c.await;
        }
        if let Some(w) = self.watcher {
            w.abort();
        }
        for t in self.cluster_tasks {
            let _ = t.await;
        }
        if let Some(t) = self.state.telemetry.get() {
            t.telemetry.shutdown().await;
        }
    }
}
