//! The files both servers need, in a temporary directory: a CA, the WSS certificate
//! (ECDSA P-256, `localhost` and `127.0.0.1`), the ES256 signing key, the node's policy
//! (the bench key, one allowed Origin, generous but enforced limits) and node.toml.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use palisade_policy::Policy;
use palisade_policy::mint::SigningKey;
use palisade_policy::model::{KeyDoc, MessagesDoc, PerKeyDoc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The Origin every bench client sends, the only one the policy allows.
pub const ORIGIN: &str = "https://app.bench.example";
/// The echo route of the node (the bare servers answer on any path).
pub const PATH: &str = "/echo";
/// The name the client verifies in the server certificate.
pub const SERVER_NAME: &str = "localhost";
const KID: &str = "bench";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub policy: PathBuf,
    pub policy_doc: Policy,
    signing_key: SigningKey,
}

fn params(cn: &str, sans: Vec<String>) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Palisade bench");
    p.distinguished_name = dn;
    Ok(p)
}

impl Fixture {
    pub fn new(keep: bool) -> anyhow::Result<Fixture> {
        let mut dir = tempfile::Builder::new().prefix("palisade-bench-").tempdir().context("cannot create a temporary directory")?;
        if keep {
            dir.disable_cleanup(true);
        }
        let root = dir.path();

        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = params("Palisade bench CA", Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut leaf = params(SERVER_NAME, vec![SERVER_NAME.into(), "127.0.0.1".into()])?;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

        let signing = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let signing_key = SigningKey::from_text(&signing.serialize_pem(), Some("ES256")).context("the ES256 signing key")?;

        let cert = root.join("wss.pem");
        let key = root.join("wss-key.pem");
        let policy = root.join("policy.yaml");
        write(&root.join("ca.pem"), &ca_cert.pem())?;
        write(&cert, &leaf_cert.pem())?;
        write(&key, &leaf_key.serialize_pem())?;
        let doc = bench_policy(&signing.public_key_pem());
        doc.compile(1).context("the bench policy does not compile")?;
        write(&policy, &doc.to_yaml())?;
        Ok(Fixture { ca_pem: ca_cert.pem(), dir, cert, key, policy, policy_doc: doc, signing_key })
    }

    /// Writes `node-<port>.toml` for a node listening on 127.0.0.1:`port`.
    pub fn node_config(&self, port: u16) -> anyhow::Result<PathBuf> {
        self.node_config_with(port, &self.policy)
    }

    /// The same with the bench policy's token cache off.
    pub fn node_config_no_cache(&self, port: u16) -> anyhow::Result<PathBuf> {
        let policy = self.dir.path().join("policy-no-cache.yaml");
        write(&policy, &self.policy_without_cache().to_yaml())?;
        self.node_config_with(port, &policy)
    }

    /// The bench policy with `auth.token_cache.max_entries: 0`.
    pub fn policy_without_cache(&self) -> Policy {
        let mut doc = self.policy_doc.clone();
        doc.auth.token_cache.max_entries = 0;
        doc
    }

    fn node_config_with(&self, port: u16, policy: &std::path::Path) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("node-{port}.toml"));
        let text = format!(
            "id = \"bench-node-{port}\"\ndrain_deadline_seconds = 1\npolicy_file = {policy:?}\n\n[listen]\nwss = \"127.0.0.1:{port}\"\n\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n\n[[routes]]\npath = \"{PATH}\"\necho = true\n",
            policy = policy.display().to_string(),
            cert = self.cert.display().to_string(),
            key = self.key.display().to_string(),
        );
        write(&path, &text)?;
        Ok(path)
    }

    /// An `Authorization` header value for subject `sub`, valid for two hours.
    pub fn bearer_for(&self, sub: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 7200, "jti": format!("{:032x}", rand::random::<u128>())});
        Ok(format!("Bearer {}", self.signing_key.sign(Some(KID), &claims)?))
    }

    /// `n` distinct `Authorization` header values (subjects `bench-0`, `bench-1`, ...),
    /// valid for two hours.
    pub fn bearer_tokens(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        (0..n.max(1))
            .map(|i| -> anyhow::Result<String> {
                let claims = serde_json::json!({
                    "sub": format!("bench-{i}"),
                    "iat": now,
                    "exp": now + 7200,
                    "jti": format!("{:032x}", rand::random::<u128>()),
                });
                Ok(format!("Bearer {}", self.signing_key.sign(Some(KID), &claims)?))
            })
            .collect()
    }
}

/// Every check of the gate stays on (Origin allow-list, the ES256 key, per-IP and
/// per-user caps and rates, message size and rate); only the numbers are generous, so
/// that the load of the bench is never refused. Heartbeats are rare so that idle
/// sessions stay idle.
/// Context for the handshake bar: the wall time of one verification of a bench token by
/// the node's own verifier (`palisade_policy`), in microseconds, in this process: the full
/// check, without the cache of verified tokens.
pub fn es256_verify_us(f: &Fixture) -> anyhow::Result<f64> {
    let compiled = f.policy_without_cache().compile(1)?;
    let tokens = f.bearer_tokens(1)?;
    let token = tokens.first().and_then(|t| t.strip_prefix("Bearer ")).context("no token")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    const N: u32 = 2000;
    for _ in 0..N / 10 {
        compiled.verifier.verify(token, now).map_err(|e| anyhow::anyhow!("the bench token does not verify: {}", e.reason()))?;
    }
    let started = std::time::Instant::now();
    for _ in 0..N {
        compiled.verifier.verify(token, now).map_err(|e| anyhow::anyhow!("the bench token does not verify: {}", e.reason()))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(N))
}

fn bench_policy(public_pem: &str) -> Policy {
    let mut p = Policy::default();
    p.origins.allow = vec![ORIGIN.into()];
    p.origins.allow_missing = false;
    p.auth.keys = vec![KeyDoc { kid: KID.into(), alg: "ES256".into(), public_key_pem: Some(public_pem.into()), secret_base64: None }];
    let generous =
        PerKeyDoc { max_connections: 1_000_000, handshakes_per_second: 1_000_000.0, burst: 1_000_000, fleet_max_connections: None };
    p.limits.max_connections = 1_000_000;
    p.limits.per_ip = generous.clone();
    p.limits.per_user = generous;
    p.limits.messages = MessagesDoc { max_bytes: 65_536, per_second: 1_000_000.0, burst: 1_000_000, max_buffered_bytes: 1_048_576 };
    p.limits.idle_timeout_seconds = 3600;
    p.limits.ping_interval_seconds = 1800;
    p.egress.alert_bytes_per_minute = 1 << 40;
    p
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
