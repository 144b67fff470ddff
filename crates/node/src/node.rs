//! Node life cycle: bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{NodeConfig, TlsMode};
use crate::registry::{Command, Selector};
use crate::state::NodeState;
use crate::tls::{self, ReloadingCert};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read the bootstrap policy {path}: {source}")]
    PolicyRead { path: String, source: std::io::Error },
    #[error("{0}")]
    Route(String),
    #[error("bootstrap policy {path}: {source}")]
    Policy { path: String, source: palisade_policy::PolicyError },
}

pub struct Node {
    state: Arc<NodeState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    cert: Option<Arc<ReloadingCert>>,
}

impl Node {
    /// Loads TLS material and the bootstrap policy, and binds the WSS listener.
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate().map_err(|e| NodeError::Bind { addr: config.listen.wss, source: std::io::Error::other(e.to_string()) })?;
        let (tls, cert) = match config.tls.mode {
            TlsMode::Rustls => {
                let (Some(c), Some(k)) = (config.tls.cert.clone(), config.tls.key.clone()) else {
                    return Err(NodeError::Bind {
                        addr: config.listen.wss,
                        source: std::io::Error::other("tls.cert and tls.key are required"),
                    });
                };
                let cert = ReloadingCert::new(c, k)?;
                (Some(TlsAcceptor::from(tls::server_config(cert.clone())?)), Some(cert))
            }
            TlsMode::Offloaded => (None, None),
        };
        let listener = TcpListener::bind(config.listen.wss).await.map_err(|source| NodeError::Bind { addr: config.listen.wss, source })?;
        let policy_file = config.policy_file.clone();
        let state = NodeState::new(config).map_err(NodeError::Route)?;
        if let Some(path) = policy_file {
            let p = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| NodeError::PolicyRead { path: p.clone(), source })?;
            let doc = palisade_policy::Policy::from_yaml_or_json(&text).map_err(|source| NodeError::Policy { path: p.clone(), source })?;
            state.policy.apply(&doc, 1, false).map_err(|e| match e {
                crate::policy_store::ApplyError::Invalid(source) => NodeError::Policy { path: p.clone(), source },
                crate::policy_store::ApplyError::Stale { .. } => {
                    NodeError::Policy { path: p.clone(), source: palisade_policy::PolicyError::new("version", "stale") }
                }
            })?;
        }
        Ok(Node { state, listener, tls, cert })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.state.config.listen.wss)
    }

    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// Starts serving in the background.
    pub fn spawn(self) -> NodeHandle {
        let wss_addr = self.local_addr();
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = self.cert.as_ref().map(|c| c.spawn_watcher(Duration::from_millis(self.state.config.tls.reload_interval_ms)));
        let task = tokio::spawn(crate::server::serve(self.state.clone(), self.listener, self.tls, stop_rx));
        tracing::info!(event = "node_started", node = %self.state.id, wss = %wss_addr, "node serving");
        NodeHandle { state: self.state, wss_addr, stop_tx, task, watcher }
    }
}

pub struct NodeHandle {
    pub state: Arc<NodeState>,
    pub wss_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl NodeHandle {
    /// Graceful drain: `/readyz` turns 503 and new handshakes get 503 at once; live
    /// sessions are closed with 1001 spread over the drain deadline; the listener stops
    /// when they are gone or at the deadline. Returns how many sessions were left and
    /// closed at the deadline.
    pub async fn drain(&self) -> usize {
        let st = &self.state;
        if st.draining.swap(true, Ordering::AcqRel) {
            return 0;
        }
        tracing::info!(event = "drain_started", node = %st.id, sessions = st.registry.len());
        st.drain_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + st.config.drain_deadline();
        while !st.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = st.registry.dispatch(&Selector::All, Command::Close { code: 1001, reason: "node draining".into() });
        // Let the last close frames go out before the listener stops.
        let grace = tokio::time::Instant::now() + Duration::from_secs(2);
        while !st.registry.is_empty() && tokio::time::Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_tx.send_replace(true);
        tracing::info!(event = "drain_finished", node = %st.id, forced = left);
        left
    }

    /// Stops accepting at once (sessions are left to end with the process).
    pub fn stop(&self) {
        self.stop_tx.send_replace(true);
    }

    pub async fn join(self) {
        let _ = self.task.await;
        if let Some(w) = self.watcher {
            w.abort();
        }
    }
}
