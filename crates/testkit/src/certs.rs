//! The test PKI: a CA, the WSS certificate, control-plane certificates with roles.

#[allow(unused_imports)]
use super::*;

/// Test PKI on disk: CA, WSS server certificate for localhost and 127.0.0.1, and
/// control-plane certificates that name their role (SPEC section 6) for cluster
/// [`TEST_CLUSTER`].
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: pki::Ca,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

pub const TEST_CA: &str = "Palisade test CA";

/// The cluster of test nodes (and of the role SANs the test PKI issues).
pub const TEST_CLUSTER: &str = "test";

/// A certificate and its key, PEM.
pub type CertKey = (String, String);

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::new_ca(TEST_CA).expect("ca");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).expect("write");
        let (cert_path, key_path) = (dir.path().join("wss.pem"), dir.path().join("wss-key.pem"));
        let pki = Pki { dir, ca, ca_path, cert_path, key_path };
        pki.issue_wss("localhost");
        pki
    }

    /// (Re)issues the WSS certificate with common name `cn` (no role SAN).
    pub fn issue_wss(&self, cn: &str) {
        let leaf = pki::new_leaf(&self.ca, TEST_CA, cn, &["localhost", "127.0.0.1"], true, false).expect("leaf");
        // Key first, then the certificate: a reload sees a consistent pair or keeps the old.
        std::fs::write(&self.key_path, &leaf.key_pem).expect("write");
        std::fs::write(&self.cert_path, &leaf.cert_pem).expect("write");
    }

    /// A certificate from this CA with DNS SANs `dns` and URI SANs `uris`.
    pub fn issue(&self, cn: &str, dns: &[&str], uris: &[String], server: bool, client: bool) -> CertKey {
        let leaf = pki::new_role_leaf(&self.ca, TEST_CA, cn, dns, uris, server, client).expect("leaf");
        (leaf.cert_pem, leaf.key_pem)
    }

    /// A client certificate naming `role` in `cluster`.
    pub fn role_cert_in(&self, cluster: &str, role: &Role) -> CertKey {
        self.issue(&role.to_string().replace('/', "-"), &[], &[role.uri(cluster)], false, true)
    }

    /// A client certificate naming `role` in the test cluster.
    pub fn role_cert(&self, role: &Role) -> CertKey {
        self.role_cert_in(TEST_CLUSTER, role)
    }

    /// An operator client certificate of the test cluster (CLI, grpcurl), common name `cn`.
    pub fn client_cert(&self, cn: &str) -> CertKey {
        self.issue(cn, &[], &[Role::Operator.uri(TEST_CLUSTER)], false, true)
    }

    pub fn operator_cert(&self) -> CertKey {
        self.role_cert(&Role::Operator)
    }

    /// The controller's client identity towards nodes.
    pub fn controller_cert(&self) -> CertKey {
        self.role_cert(&Role::Controller)
    }

    /// Node `id`'s control identity, as a client certificate (it must call nothing).
    pub fn node_cert(&self, id: &str) -> CertKey {
        self.role_cert(&Role::Node(id.to_owned()))
    }

    /// A client certificate from this CA without any role SAN.
    pub fn no_role_cert(&self) -> CertKey {
        self.issue("no-role", &["no-role.example"], &["spiffe://example.org/operator".to_owned()], false, true)
    }

    /// An operator of another cluster, from this same CA.
    pub fn other_cluster_operator(&self) -> CertKey {
        self.role_cert_in("other", &Role::Operator)
    }

    /// Writes `name.pem` and `name-key.pem` in the PKI directory and returns their paths.
    pub fn write(&self, name: &str, (cert, key): &CertKey) -> (PathBuf, PathBuf) {
        let (c, k) = (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}-key.pem")));
        std::fs::write(&k, key).expect("write");
        std::fs::write(&c, cert).expect("write");
        (c, k)
    }

    /// The controller's files (`control.pem`, `control-key.pem`): server and client auth
    /// for localhost/127.0.0.1, role `controller` of the test cluster. It serves
    /// FleetControl and calls the nodes with it.
    pub fn control_config(&self) -> palisade_node::config::ControlConfig {
        let leaf = self.issue("controller", &["localhost", "127.0.0.1"], &[Role::Controller.uri(TEST_CLUSTER)], true, true);
        let (cert, key) = self.write("control", &leaf);
        palisade_node::config::ControlConfig { cert, key, ca: self.ca_path.clone() }
    }

    /// Node `id`'s control-plane server files (`node-<id>.pem`): localhost/127.0.0.1, role
    /// `node/<id>` of the test cluster (server and client auth, so that tests can prove the
    /// role, not the key usage, is what stops it calling).
    pub fn node_control_config(&self, id: &str) -> palisade_node::config::ControlConfig {
        let leaf = self.issue(id, &["localhost", "127.0.0.1"], &[Role::Node(id.to_owned()).uri(TEST_CLUSTER)], true, true);
        let (cert, key) = self.write(&format!("node-{id}"), &leaf);
        palisade_node::config::ControlConfig { cert, key, ca: self.ca_path.clone() }
    }

    /// The WSS certificate and key (no role SAN) as a client identity.
    pub fn wss_identity(&self) -> CertKey {
        (std::fs::read_to_string(&self.cert_path).expect("read"), std::fs::read_to_string(&self.key_path).expect("read"))
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls_with(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// [`Pki::client_tls`] with the suites (and the rest) of `provider`.
    pub fn client_tls_with(&self, provider: rustls::crypto::CryptoProvider) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
