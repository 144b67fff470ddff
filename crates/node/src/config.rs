//! Static node configuration (TOML, overridable by `PALISADE_*` environment variables):
//! listeners, TLS files, trusted proxies, routes, the bootstrap policy. Policy (origins,
//! keys, limits) is not here: it arrives versioned from the control plane or etcd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node id; defaults to the host name plus the WSS port.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub listen: Listen,
    pub tls: TlsConfig,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// IPv6 clients share per-IP caps and rates per prefix of this length (one host
    /// commonly holds a whole /64). 128: per address.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix_len: u8,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Bootstrap policy file (YAML or JSON), applied as version 1 at start when no newer
    /// policy arrives. Without one the node is not ready until a policy is pushed.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    #[serde(default = "default_drain")]
    pub drain_deadline_seconds: u64,
    /// How many connections over a cap still get a proper 429/503 answer at once; beyond
    /// that, over-cap sockets are closed without a word (cheapest under a flood).
    #[serde(default = "default_refusal_lane")]
    pub refusal_lane: usize,
    /// mTLS for the control plane (`listen.control`): this node's certificate and key, and
    /// the CA that client (operator, controller) certificates must chain to.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Cluster state in etcd (SPEC section 8): registration, the policy watch, one-time
    /// tickets shared by the fleet. Without it the node stands alone (in-memory tickets).
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// Plain-text control plane: only from the `--insecure-control-plane` flag, never
    /// from a file.
    #[serde(skip)]
    pub insecure_control_plane: bool,
}

pub use palisade_plane::ControlConfig;

/// `[etcd]`: where the cluster state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` (then `ca`, and `cert` + `key` for mTLS).
    pub endpoints: Vec<String>,
    /// TTL of the registration lease, kept alive at a third of it. A killed node leaves
    /// the registry within this TTL.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_seconds: u64,
    /// Deadline of each etcd request (a ticket consumed in a handshake waits at most this).
    #[serde(default = "default_etcd_timeout")]
    pub timeout_ms: u64,
    /// Host (name or address) written in the registration record for the WSS and control
    /// addresses; default: the listener's address, or the host name when it listens on
    /// every interface.
    #[serde(default)]
    pub advertise_host: Option<String>,
    /// Free-form labels published in the registration record.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// CA file for `https://` endpoints.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key for etcd's client-certificate authentication.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// etcd v3 authentication: the user (`palisade-node` in docs/etcd.md) and the file
    /// holding its password (read at start, never logged). Both or neither.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_lease_ttl() -> u64 {
    10
}
fn default_etcd_timeout() -> u64 {
    2_000
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            lease_ttl_seconds: default_lease_ttl(),
            timeout_ms: default_etcd_timeout(),
            advertise_host: None,
            labels: Default::default(),
            ca: None,
            cert: None,
            key: None,
            username: None,
            password_file: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(field("etcd.endpoints", "at least one endpoint is required"));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['/', ' ', '?', '#'])) {
                return Err(field(&format!("etcd.endpoints[{i}]"), "must be http://host:port or https://host:port"));
            }
        }
        let tls = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(field("etcd.endpoints", "TLS files (ca, cert, key) need https:// endpoints"));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(field(if self.cert.is_some() { "etcd.key" } else { "etcd.cert" }, "cert and key go together"));
        }
        if self.username.is_some() != self.password_file.is_some() {
            let missing = if self.username.is_some() { "etcd.password_file" } else { "etcd.username" };
            return Err(field(missing, "username and password_file go together"));
        }
        if self.username.as_deref().is_some_and(str::is_empty) {
            return Err(field("etcd.username", "must not be empty"));
        }
        if !(2..=300).contains(&self.lease_ttl_seconds) {
            return Err(field("etcd.lease_ttl_seconds", "must be between 2 and 300"));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(field("etcd.timeout_ms", "must be between 100 and 60000"));
        }
        if let Some(h) = &self.advertise_host
            && (h.is_empty() || h.contains(['/', ' ', '@']))
        {
            return Err(field("etcd.advertise_host", "must be a host name or an address"));
        }
        Ok(())
    }
}

fn default_cluster() -> String {
    "default".into()
}
fn default_drain() -> u64 {
    30
}
fn default_refusal_lane() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub wss: SocketAddr,
    #[serde(default)]
    pub control: Option<SocketAddr>,
    /// Data-path threads: each runs its own single-threaded runtime and accepts on its own
    /// listener of the WSS port (`SO_REUSEPORT`), and a connection stays on the thread
    /// that accepted it. Default: the CPUs this process may use.
    #[serde(default)]
    pub data_threads: Option<usize>,
}

/// The most data threads a node runs (more than the CPUs only adds switching).
pub const MAX_DATA_THREADS: usize = 256;

impl Listen {
    /// `data_threads`, or the CPUs this process may use (cgroup quotas included).
    pub fn data_threads(&self) -> usize {
        self.data_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, MAX_DATA_THREADS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Rustls,
    /// A load balancer terminates TLS: plain listener, trusted proxies only.
    Offloaded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// How often certificate files are checked for changes.
    #[serde(default = "default_reload")]
    pub reload_interval_ms: u64,
}

fn default_reload() -> u64 {
    2_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub path: String,
    /// `echo`, or an upstream `ws://` / `wss://` URL.
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub upstream: Option<String>,
    /// CA file for a `wss://` upstream (else the upstream certificate is checked against
    /// this file only; there are no system roots on purpose).
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    #[serde(default = "yes")]
    pub allow_binary: bool,
    /// JSON Schema file that every text message must satisfy.
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid node configuration: {0}")]
    Parse(String),
    #[error("invalid node configuration: {field}: {message}")]
    Field { field: String, message: String },
}

fn default_ipv6_prefix() -> u8 {
    64
}

fn field(f: &str, m: impl Into<String>) -> ConfigError {
    ConfigError::Field { field: f.into(), message: m.into() }
}

impl NodeConfig {
    pub fn load(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        Self::load_with(path, false)
    }

    /// Loads with the `--insecure-control-plane` flag's value (it is never in the file).
    pub fn load_with(path: &std::path::Path, insecure_control_plane: bool) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = NodeConfig::from_toml(&text)?;
        cfg.insecure_control_plane = insecure_control_plane;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        // Relative paths are relative to the configuration file.
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.data_threads.is_some_and(|n| n == 0 || n > MAX_DATA_THREADS) {
            return Err(field("listen.data_threads", "must be between 1 and 256"));
        }
        if self.ipv6_prefix_len == 0 || self.ipv6_prefix_len > 128 {
            return Err(field("ipv6_prefix_len", "must be between 1 and 128"));
        }
        match self.tls.mode {
            TlsMode::Rustls => {
                if self.tls.cert.is_none() {
                    return Err(field("tls.cert", "required unless tls.mode = \"offloaded\""));
                }
                if self.tls.key.is_none() {
                    return Err(field("tls.key", "required unless tls.mode = \"offloaded\""));
                }
            }
            TlsMode::Offloaded => {
                if self.trusted_proxies.is_empty() {
                    return Err(field("trusted_proxies", "tls.mode = \"offloaded\" accepts only trusted proxies: list them"));
                }
            }
        }
        if self.routes.is_empty() {
            return Err(field("routes", "at least one route is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
                return Err(field(&format!("routes[{i}].path"), "must be an absolute path without query"));
            }
            if ["/healthz", "/readyz", "/v1/tickets"].contains(&r.path.as_str()) {
                return Err(field(&format!("routes[{i}].path"), "is reserved"));
            }
            if !seen.insert(r.path.as_str()) {
                return Err(field(&format!("routes[{i}].path"), "is listed twice"));
            }
            match (&r.upstream, r.echo) {
                (Some(_), true) | (None, false) => {
                    return Err(field(&format!("routes[{i}]"), "needs exactly one of `echo = true` or `upstream`"));
                }
                (Some(u), false) if !(u.starts_with("ws://") || u.starts_with("wss://")) => {
                    return Err(field(&format!("routes[{i}].upstream"), "must be a ws:// or wss:// URL"));
                }
                _ => {}
            }
        }
        if self.listen.control.is_some() && self.control.is_none() && !self.insecure_control_plane {
            return Err(field("control", "listen.control needs [control] cert, key and ca (mTLS), or --insecure-control-plane"));
        }
        if self.drain_deadline_seconds > 3600 {
            return Err(field("drain_deadline_seconds", "must be at most 3600"));
        }
        if let Some(e) = &self.etcd {
            e.validate()?;
        }
        if self.cluster.is_empty() || self.cluster.contains(['/', ' ']) {
            return Err(field("cluster", "must be a non-empty name without `/` or spaces"));
        }
        if let Some(id) = &self.id
            && (id.is_empty() || id.contains('/') || id.contains(char::is_whitespace))
        {
            return Err(field("id", "must be a non-empty name without `/` or spaces"));
        }
        Ok(())
    }

    pub fn node_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into());
            format!("{host}-{}", self.listen.wss.port())
        })
    }

    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_seconds)
    }
}

mod env;

#[cfg(test)]
mod tests;
