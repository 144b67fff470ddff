//! The dev fleet's files (SPEC section 11): the CA, certificates with their roles, the
//! signing key and the bootstrap policy, created when missing and reused when present.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use palisade_plane::Role;
use palisade_plane::pki;

/// The dev fleet's cluster name (etcd prefix `/palisade/dev/`, role URIs).
pub(super) const CLUSTER: &str = "dev";

/// The files of SPEC section 11, created when missing and reused when present.
///
/// Control-plane identities name their role in a URI SAN (SPEC section 6): the operator
/// certificate `spiffe://palisade/dev/operator`, the controller's (it serves FleetControl
/// and calls the nodes with it) `.../controller`, node `i`'s control certificate
/// `.../node/dev-node-<i>`. The WSS certificate has no role: it is never a control
/// identity.
pub struct DevFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub wss_cert: PathBuf,
    pub wss_key: PathBuf,
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    pub controller_cert: PathBuf,
    pub controller_key: PathBuf,
    pub signing_key: PathBuf,
    pub policy: PathBuf,
    pub endpoints: PathBuf,
}

impl DevFiles {
    pub fn in_dir(dir: &Path) -> DevFiles {
        DevFiles {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            wss_cert: dir.join("wss.pem"),
            wss_key: dir.join("wss-key.pem"),
            operator_cert: dir.join("operator.pem"),
            operator_key: dir.join("operator-key.pem"),
            controller_cert: dir.join("controller.pem"),
            controller_key: dir.join("controller-key.pem"),
            signing_key: dir.join("signing-key.pem"),
            policy: dir.join("policy.yaml"),
            endpoints: dir.join("endpoints.json"),
        }
    }

    /// The control-plane certificate and key of node `i` (1-based): `node-<i>.pem`,
    /// `node-<i>-key.pem`.
    pub fn node_control(&self, i: usize) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("node-{i}.pem")), self.dir.join(format!("node-{i}-key.pem")))
    }
}

/// The id of dev node `i` (1-based).
pub fn node_id(i: usize) -> String {
    format!("dev-node-{i}")
}

/// One leaf the dev directory must hold.
struct Wanted<'a> {
    cert: &'a Path,
    key: &'a Path,
    cn: &'a str,
    dns: &'a [&'a str],
    /// The role its URI SAN names; `None`: no role at all (the WSS certificate).
    role: Option<Role>,
    server: bool,
    client: bool,
}

/// Issues `w` unless a certificate and key are there already, from this CA (`fresh_ca`
/// false), with the right role SAN: a directory written before roles existed gets role
/// certificates, and a WSS certificate that names a role is replaced.
fn ensure_leaf(ca: &pki::Ca, fresh_ca: bool, w: Wanted<'_>) -> anyhow::Result<()> {
    let current = if !fresh_ca && w.key.exists() { std::fs::read_to_string(w.cert).ok() } else { None };
    let fits = current.is_some_and(|pem| {
        let roles = palisade_plane::roles::roles_of_pem(&pem, CLUSTER);
        match &w.role {
            Some(r) => roles.contains(r),
            None => roles.is_empty(),
        }
    });
    if fits {
        return Ok(());
    }
    let uris: Vec<String> = w.role.iter().map(|r| r.uri(CLUSTER)).collect();
    let leaf = pki::new_role_leaf(ca, pki::DEV_CA_NAME, w.cn, w.dns, &uris, w.server, w.client)?;
    // Key first, then the certificate: a reader sees the old pair or the new one.
    pki::write_private(w.key, &leaf.key_pem)?;
    std::fs::write(w.cert, &leaf.cert_pem)?;
    Ok(())
}

/// Writes whatever is missing, for a fleet of `nodes` nodes. The CA key stays in
/// `ca-key.pem` so that certificates can be added later for the same CA.
pub fn ensure_files(dir: &Path, nodes: usize) -> anyhow::Result<DevFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let f = DevFiles::in_dir(dir);
    let ca_key_path = dir.join("ca-key.pem");
    let (ca, fresh_ca) = if f.ca.exists() && ca_key_path.exists() {
        (pki::Ca { cert_pem: std::fs::read_to_string(&f.ca)?, key_pem: std::fs::read_to_string(&ca_key_path)? }, false)
    } else {
        let ca = pki::new_ca(pki::DEV_CA_NAME)?;
        std::fs::write(&f.ca, &ca.cert_pem)?;
        pki::write_private(&ca_key_path, &ca.key_pem)?;
        // A new CA invalidates every certificate it did not sign: all are issued again.
        (ca, true)
    };
    const LOCAL: &[&str] = &["localhost", "127.0.0.1"];
    // Server auth for the WSS listener; client auth is kept from the files written before
    // roles existed. Either way it names no role, so it calls nothing on the control plane.
    ensure_leaf(
        &ca,
        fresh_ca,
        Wanted { cert: &f.wss_cert, key: &f.wss_key, cn: "localhost", dns: LOCAL, role: None, server: true, client: true },
    )?;
    ensure_leaf(
        &ca,
        fresh_ca,
        Wanted {
            cert: &f.operator_cert,
            key: &f.operator_key,
            cn: "operator",
            dns: &[],
            role: Some(Role::Operator),
            server: false,
            client: true,
        },
    )?;
    ensure_leaf(
        &ca,
        fresh_ca,
        Wanted {
            cert: &f.controller_cert,
            key: &f.controller_key,
            cn: "controller",
            dns: LOCAL,
            role: Some(Role::Controller),
            server: true,
            client: true,
        },
    )?;
    for i in 1..=nodes {
        let (cert, key) = f.node_control(i);
        let id = node_id(i);
        ensure_leaf(
            &ca,
            fresh_ca,
            Wanted { cert: &cert, key: &key, cn: &id, dns: LOCAL, role: Some(Role::Node(id.clone())), server: true, client: false },
        )?;
    }
    if !f.signing_key.exists() {
        let (private, _) = pki::new_signing_key()?;
        pki::write_private(&f.signing_key, &private)?;
    }
    if !f.policy.exists() {
        let public = pki::public_key_pem(&std::fs::read_to_string(&f.signing_key)?)?;
        std::fs::write(&f.policy, bootstrap_policy(&public))?;
    }
    Ok(f)
}

/// The dev bootstrap policy: the dev key, localhost origins, and native clients (no
/// Origin) allowed, since websocat and grpc tools send none.
pub fn bootstrap_policy(public_pem: &str) -> String {
    let mut p = palisade_policy::Policy::default();
    p.origins.allow = vec!["https://localhost".into(), "http://localhost".into()];
    p.origins.allow_missing = true;
    p.auth.keys = vec![palisade_policy::model::KeyDoc {
        kid: "dev".into(),
        alg: "ES256".into(),
        public_key_pem: Some(public_pem.into()),
        secret_base64: None,
    }];
    format!("# Palisade dev bootstrap policy (SPEC section 7). Edit and restart, or push a new version.\n{}", p.to_yaml())
}
