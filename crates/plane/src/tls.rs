//! Control-plane mTLS: the files a server or client names, and the tonic configurations
//! built from them. Servers require a client certificate chained to the control CA.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// `[control]` of a node, `[tls]` and `[nodes_tls]` of the controller: a certificate, its
/// key, and the CA the other side's certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The PEM contents of a [`ControlConfig`].
#[derive(Debug, Clone)]
pub struct ControlTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA the peer's certificate must chain to.
    pub ca_pem: String,
}

impl ControlTls {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> std::io::Result<ControlTls> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())));
        Ok(ControlTls { cert_pem: read(cert)?, key_pem: read(key)?, ca_pem: read(ca)? })
    }

    pub fn from_config(c: &ControlConfig) -> std::io::Result<ControlTls> {
        ControlTls::load(&c.cert, &c.key, &c.ca)
    }

    /// Client certificates are required (not optional) and must chain to the control CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// A client presenting this identity to a server whose certificate chains to the CA
    /// and names `domain`.
    pub fn client_config(&self, domain: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(domain)
    }
}
