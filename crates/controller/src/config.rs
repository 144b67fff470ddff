//! Controller configuration (TOML, `PALISADE_*` environment overrides).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// FleetControl listener (default 0.0.0.0:9444).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// mTLS of the FleetControl server: its certificate and key, and the CA that operator
    /// certificates must chain to.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The controller's client identity towards nodes and the CA their control
    /// certificates chain to.
    #[serde(default)]
    pub nodes_tls: Option<TlsFiles>,
    /// The name node control certificates are verified against. Unset: the host of each
    /// node's registered control address. Set it when one certificate serves a whole
    /// deployment whose nodes register pod addresses (the Helm chart sets
    /// `<release>-node-control.<namespace>.svc`).
    #[serde(default)]
    pub node_server_name: Option<String>,
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// How many nodes a fan-out talks to at once.
    #[serde(default = "default_concurrency")]
    pub push_concurrency: usize,
    /// Per-node RPC timeout, milliseconds.
    #[serde(default = "default_rpc_timeout")]
    pub node_timeout_ms: u64,
    /// Plain text (no mTLS) on both sides: only from `--insecure-control-plane`.
    #[serde(skip)]
    pub insecure: bool,
}

fn default_listen() -> SocketAddr {
    ([0, 0, 0, 0], 9444).into()
}

fn default_cluster() -> String {
    "default".into()
}
fn default_concurrency() -> usize {
    64
}
fn default_rpc_timeout() -> u64 {
    5_000
}

/// Certificate, key and CA files (the same shape as a node's `[control]`).
pub type TlsFiles = palisade_plane::ControlConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Deadline of each etcd request, milliseconds.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_ms: u64,
    /// CA file for `https://` endpoints.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key for etcd's client-certificate authentication.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// etcd v3 authentication: the user (`palisade-controller` in docs/etcd.md) and the
    /// file holding its password (read at start, never logged). Both or neither.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_etcd_timeout() -> u64 {
    5_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid controller configuration: {0}")]
    Invalid(String),
}

impl ControllerConfig {
    pub fn load(path: &std::path::Path, insecure: bool) -> Result<ControllerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let mut cfg: ControllerConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.insecure = insecure;
        if let Ok(v) = std::env::var("PALISADE_CLUSTER") {
            cfg.cluster = v;
        }
        if let Ok(v) = std::env::var("PALISADE_ETCD_ENDPOINTS") {
            let endpoints = v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
            match &mut cfg.etcd {
                Some(e) => e.endpoints = endpoints,
                None => {
                    cfg.etcd = Some(EtcdConfig {
                        endpoints,
                        timeout_ms: default_etcd_timeout(),
                        ca: None,
                        cert: None,
                        key: None,
                        username: None,
                        password_file: None,
                    })
                }
            }
        }
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        if let Some(e) = &mut cfg.etcd {
            for p in [&mut e.ca, &mut e.cert, &mut e.key, &mut e.password_file].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for t in [&mut cfg.tls, &mut cfg.nodes_tls].into_iter().flatten() {
            for p in [&mut t.cert, &mut t.key, &mut t.ca] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.insecure && (self.tls.is_none() || self.nodes_tls.is_none()) {
            return Err(ConfigError::Invalid("[tls] and [nodes_tls] are required (mTLS), unless --insecure-control-plane".into()));
        }
        if self.push_concurrency == 0 || self.push_concurrency > 10_000 {
            return Err(ConfigError::Invalid("push_concurrency: must be 1 to 10000".into()));
        }
        if self.etcd.as_ref().is_some_and(|e| e.endpoints.is_empty()) {
            return Err(ConfigError::Invalid("etcd.endpoints: at least one endpoint".into()));
        }
        if let Some(e) = &self.etcd {
            if e.username.is_some() != e.password_file.is_some() {
                return Err(ConfigError::Invalid("etcd.username and etcd.password_file go together".into()));
            }
            if e.username.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::Invalid("etcd.username: must not be empty".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ControllerConfig;

    #[test]
    fn etcd_user_and_password_file_go_together() {
        let check = |extra: &str| {
            let mut c: ControllerConfig = toml::from_str(&format!("[etcd]\nendpoints = [\"http://e:2379\"]\n{extra}")).expect("parses");
            c.insecure = true;
            c.validate()
        };
        assert!(check("").is_ok());
        assert!(check("username = \"palisade-controller\"\npassword_file = \"pw\"\n").is_ok());
        for bad in ["username = \"palisade-controller\"\n", "password_file = \"pw\"\n", "username = \"\"\npassword_file = \"pw\"\n"] {
            let e = check(bad).expect_err("refused");
            assert!(e.to_string().contains("etcd.username") || e.to_string().contains("etcd.password_file"), "{bad}: {e}");
        }
    }
}
