//! Control-plane roles (SPEC section 6): who may call which server.
//!
//! A control certificate names its role in a URI SAN:
//!
//! | URI SAN | role |
//! |---|---|
//! | `spiffe://palisade/<cluster>/operator` | [`Role::Operator`]: the CLI, grpcurl |
//! | `spiffe://palisade/<cluster>/controller` | [`Role::Controller`]: the controller calling nodes |
//! | `spiffe://palisade/<cluster>/node/<id>` | [`Role::Node`]: a node's control identity |
//!
//! Only the SANs of the server's own cluster count. The CA chain says a certificate is
//! ours; the role says what it may do. [`AccessLayer`] checks every request of a server
//! (its services, health and reflection alike) against an [`Access`] rule before any
//! service sees it: a caller without an allowed role gets `PERMISSION_DENIED`, and the
//! refusal is logged as one `control_refused` event.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The URI scheme and trust domain of every role SAN.
pub const ROLE_URI_PREFIX: &str = "spiffe://palisade/";

/// What a control certificate may do, from its URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Controller,
    /// A node's control identity (its id). It calls nothing.
    Node(String),
}

impl Role {
    /// The URI SAN naming this role in `cluster`.
    pub fn uri(&self, cluster: &str) -> String {
        match self {
            Role::Operator => format!("{ROLE_URI_PREFIX}{cluster}/operator"),
            Role::Controller => format!("{ROLE_URI_PREFIX}{cluster}/controller"),
            Role::Node(id) => format!("{ROLE_URI_PREFIX}{cluster}/node/{id}"),
        }
    }

    /// The role `uri` names in `cluster`; `None` for anything else (another cluster, another
    /// scheme, an unknown role, an empty or nested node id).
    pub fn from_uri(uri: &str, cluster: &str) -> Option<Role> {
        if !valid_segment(cluster) {
            return None;
        }
        let rest = uri.strip_prefix(ROLE_URI_PREFIX)?.strip_prefix(cluster)?.strip_prefix('/')?;
        match rest {
            "operator" => Some(Role::Operator),
            "controller" => Some(Role::Controller),
            _ => rest.strip_prefix("node/").filter(|id| valid_segment(id)).map(|id| Role::Node(id.to_owned())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Operator => f.write_str("operator"),
            Role::Controller => f.write_str("controller"),
            Role::Node(id) => write!(f, "node/{id}"),
        }
    }
}

/// One path segment: not empty, no `/`, printable ASCII.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct CertError(String);

impl CertError {
    pub fn new(why: String) -> CertError {
        CertError(why)
    }
}

/// Every URI SAN of a DER certificate, in order.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| CertError(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| CertError(e.to_string()))?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The roles an end-entity certificate (DER) holds in `cluster`. A certificate that does
/// not parse holds none.
pub fn roles_of(cert_der: &[u8], cluster: &str) -> Vec<Role> {
    uri_sans(cert_der).unwrap_or_default().iter().filter_map(|u| Role::from_uri(u, cluster)).collect()
}

/// The roles of the first certificate of a PEM text (a certificate file).
pub fn roles_of_pem(pem: &str, cluster: &str) -> Vec<Role> {
    match x509_parser::pem::parse_x509_pem(pem.as_bytes()) {
        Ok((_, p)) if p.label == "CERTIFICATE" => roles_of(&p.contents, cluster),
        _ => Vec::new(),
    }
}

/// Who may call a server: its cluster and the roles it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    cluster: String,
    allowed: Vec<Role>,
}

/// Why a call was refused (the `reason` of `control_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Plain text, or a connection without a certificate.
    NoCertificate,
    /// The end-entity certificate does not parse.
    Unreadable,
    /// No role SAN of this cluster (none at all, or another cluster's).
    NoRole,
    /// A role of this cluster that this server does not accept.
    RoleNotAllowed,
    /// The server was started with TLS but without an access rule: nothing is allowed.
    NoRule,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no client certificate",
            Refusal::Unreadable => "unreadable client certificate",
            Refusal::NoRole => "no role for this cluster",
            Refusal::RoleNotAllowed => "role not allowed on this server",
            Refusal::NoRule => "no access rule on this server",
        }
    }
}

impl Access {
    pub fn new(cluster: impl Into<String>, allowed: impl IntoIterator<Item = Role>) -> Access {
        Access { cluster: cluster.into(), allowed: allowed.into_iter().collect() }
    }

    /// The node's rule: the controller and operators of its cluster.
    pub fn node(cluster: &str) -> Access {
        Access::new(cluster, [Role::Controller, Role::Operator])
    }

    /// The controller's rule: operators of its cluster.
    pub fn controller(cluster: &str) -> Access {
        Access::new(cluster, [Role::Operator])
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The allowed role the end-entity certificate `cert_der` holds (none given: no
    /// certificate).
    pub fn check(&self, cert_der: Option<&[u8]>) -> Result<Role, Refusal> {
        let der = cert_der.ok_or(Refusal::NoCertificate)?;
        let sans = uri_sans(der).map_err(|_| Refusal::Unreadable)?;
        let roles: Vec<Role> = sans.iter().filter_map(|u| Role::from_uri(u, &self.cluster)).collect();
        if roles.is_empty() {
            return Err(Refusal::NoRole);
        }
        roles.into_iter().find(|r| self.allowed.contains(r)).ok_or(Refusal::RoleNotAllowed)
    }
}

/// The caller's role, in the request extensions of every call the layer lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Role);

/// The identity a certificate presents, for the audit record: its URI SANs (at most 8,
/// each at most 200 characters), or `none`.
fn presented_identity(cert_der: Option<&[u8]>) -> String {
    let Some(der) = cert_der else { return "none".into() };
    match uri_sans(der) {
        Ok(sans) if !sans.is_empty() => {
            let shown: Vec<String> = sans.iter().take(8).map(|s| s.chars().take(200).collect()).collect();
            let more = if sans.len() > 8 { format!(" (+{} more)", sans.len() - 8) } else { String::new() };
            format!("{}{more}", shown.join(","))
        }
        Ok(_) => "none".into(),
        Err(_) => "unreadable".into(),
    }
}

/// A tower layer for the whole tonic server: every request passes [`Access::check`]
/// first, or is answered `PERMISSION_DENIED`.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    guard: Option<Arc<Guard>>,
}

#[derive(Debug)]
struct Guard {
    server: String,
    /// `None`: nothing is allowed (TLS without a rule fails closed).
    access: Option<Access>,
}

impl AccessLayer {
    /// `access` for a server named `server` (its main service, for the log). Without TLS
    /// and without a rule (`--insecure-control-plane`) everything passes; with TLS and
    /// no rule nothing does; a rule without TLS refuses everything (no certificate).
    pub fn new(server: &str, tls: bool, access: Option<Access>) -> AccessLayer {
        let guard = (tls || access.is_some()).then(|| Arc::new(Guard { server: server.to_owned(), access }));
        AccessLayer { guard }
    }
}

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService { inner, guard: self.guard.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    guard: Option<Arc<Guard>>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for AccessService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let Some(guard) = &self.guard else { return Box::pin(self.inner.call(req)) };
        let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer: Option<SocketAddr> =
            tls.and_then(|t| t.get_ref().remote_addr()).or_else(|| req.extensions().get::<TcpConnectInfo>().and_then(|t| t.remote_addr()));
        let certs = tls.and_then(|t| t.peer_certs());
        let leaf: Option<&[u8]> = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let decision = match &guard.access {
            Some(access) => access.check(leaf),
            None => Err(Refusal::NoRule),
        };
        match decision {
            Ok(role) => {
                req.extensions_mut().insert(Caller(role));
                Box::pin(self.inner.call(req))
            }
            Err(reason) => {
                let path = req.uri().path();
                let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
                tracing::warn!(
                    event = "control_refused",
                    server = %guard.server,
                    service,
                    rpc = path,
                    peer = %peer.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                    identity = %presented_identity(leaf),
                    reason = reason.as_str(),
                    "control-plane call refused"
                );
                let status = tonic::Status::permission_denied(format!("control_refused: {}", reason.as_str()));
                Box::pin(std::future::ready(Ok(status.into_http::<Body>())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uris_round_trip_in_their_cluster_only() {
        for r in [Role::Operator, Role::Controller, Role::Node("n-1".into())] {
            assert_eq!(Role::from_uri(&r.uri("prod"), "prod"), Some(r.clone()));
            assert_eq!(Role::from_uri(&r.uri("prod"), "staging"), None);
            assert_eq!(Role::from_uri(&r.uri("prod"), "pro"), None);
        }
        assert_eq!(Role::uri(&Role::Node("a".into()), "c"), "spiffe://palisade/c/node/a");
    }

    #[test]
    fn anything_else_is_no_role() {
        for u in [
            "spiffe://palisade/prod/admin",
            "spiffe://palisade/prod/operator/x",
            "spiffe://palisade/prod/node/",
            "spiffe://palisade/prod/node/a/b",
            "spiffe://palisade/prodoperator",
            "spiffe://other/prod/operator",
            "https://palisade/prod/operator",
            "SPIFFE://palisade/prod/operator",
            "spiffe://palisade//operator",
        ] {
            assert_eq!(Role::from_uri(u, "prod"), None, "{u}");
        }
        // A cluster name that is not one segment matches nothing.
        assert_eq!(Role::from_uri("spiffe://palisade/a/b/operator", "a/b"), None);
        assert_eq!(Role::from_uri("spiffe://palisade//operator", ""), None);
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(roles_of(b"not der", "prod").is_empty());
        assert!(roles_of_pem("nothing", "prod").is_empty());
        assert_eq!(Access::node("prod").check(Some(b"junk")), Err(Refusal::Unreadable));
        assert_eq!(Access::node("prod").check(None), Err(Refusal::NoCertificate));
        assert_eq!(presented_identity(None), "none");
    }
}
