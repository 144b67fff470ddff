//! The node's connection to etcd (SPEC section 8): one lazy client, every request bounded
//! by `timeout_ms`, and the node's keys. The registration and policy tasks that use it
//! are in `cluster`; ticket operations in `tickets`.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use palisade_plane::etcd::Keys;
use tokio::sync::{Mutex, OnceCell, watch};

use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    TlsFile(#[from] palisade_plane::etcd::TlsFileError),
    #[error("etcd: {0}")]
    Protocol(&'static str),
}

pub(crate) struct Registration {
    /// The lease that holds the node's key now.
    pub(crate) lease: Option<i64>,
}

/// The node's connection to etcd and its place there. One per node, shared by the
/// registration and policy tasks and the ticket store.
pub struct Etcd {
    pub(crate) cfg: EtcdConfig,
    options: ConnectOptions,
    keys: Keys,
    pub(crate) node_id: String,
    /// Connected on first use (the client connects lazily and reconnects by itself).
    client: OnceCell<Client>,
    /// Serialises (re-)registration and deregistration: a drain never races a re-register.
    pub(crate) registration: Mutex<Registration>,
    /// Set once by a drain: the node must not register again.
    pub(crate) deregistered: watch::Sender<bool>,
    /// The lease the node's key lives under now (0: none): fleet-wide user slots are put
    /// under it, so they vanish with the node.
    pub(crate) lease_id: std::sync::atomic::AtomicI64,
    /// Whether the node's key is in place under a live lease (as far as this node knows).
    pub(crate) registered: watch::Sender<bool>,
}

impl Etcd {
    /// Prepares the connection (reads the TLS and password files); nothing is sent until
    /// first use.
    pub fn new(cfg: &EtcdConfig, cluster: &str, node_id: &str) -> Result<Etcd, ClusterError> {
        let user = cfg.username.as_deref().zip(cfg.password_file.as_deref());
        let options =
            palisade_plane::etcd::connect_options(cfg.timeout(), cfg.ca.as_deref(), cfg.cert.as_deref(), cfg.key.as_deref(), user)?;
        Ok(Etcd {
            cfg: cfg.clone(),
            options,
            keys: Keys::new(cluster),
            node_id: node_id.to_owned(),
            client: OnceCell::new(),
            registration: Mutex::new(Registration { lease: None }),
            deregistered: watch::channel(false).0,
            lease_id: std::sync::atomic::AtomicI64::new(0),
            registered: watch::channel(false).0,
        })
    }

    pub fn node_key(&self) -> String {
        self.keys.node(&self.node_id)
    }

    pub fn policy_key(&self) -> String {
        self.keys.policy()
    }

    pub(crate) fn ticket_key(&self, id: &str) -> String {
        self.keys.ticket(id)
    }

    /// Whether the node's key is in place under a live lease, as far as the node knows.
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.subscribe()
    }

    /// The node's live lease, when it is registered.
    pub(crate) fn live_lease(&self) -> Option<i64> {
        let id = self.lease_id.load(std::sync::atomic::Ordering::Acquire);
        (id != 0 && *self.registered.borrow()).then_some(id)
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) async fn client(&self) -> Result<Client, ClusterError> {
        let c = self.client.get_or_try_init(|| Client::connect(self.cfg.endpoints.clone(), Some(self.options.clone()))).await?;
        Ok(c.clone())
    }

    /// One etcd request, bounded by the configured timeout.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.cfg.timeout(), call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(self.cfg.timeout())),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
