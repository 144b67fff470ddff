//! Dev and test PKI: a CA, the WSS server certificate, control-plane certificates and
//! the ES256 signing key, as PEM files.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d.push(DnType::OrganizationName, "Palisade dev");
    d
}

/// The CA's parameters are derived from its name alone, so a CA loaded from disk (its
/// certificate and key) can issue again without parsing its certificate.
fn ca_params(name: &str) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

pub const DEV_CA_NAME: &str = "Palisade dev CA";

pub fn new_ca(name: &str) -> anyhow::Result<Ca> {
    let key = KeyPair::generate()?;
    let cert = ca_params(name)?.self_signed(&key)?;
    Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A leaf signed by `ca`: `server` for TLS servers (WSS, control plane), else a client
/// certificate (operators, controller-to-node).
pub fn new_leaf(ca: &Ca, ca_name: &str, cn: &str, sans: &[&str], server: bool, client: bool) -> anyhow::Result<Leaf> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(ca_name)?, &ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    p.distinguished_name = dn(cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut eku = Vec::new();
    if server {
        eku.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if client {
        eku.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.extended_key_usages = eku;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// An ES256 (P-256) private key in PKCS#8 PEM and its public half in SPKI PEM.
pub fn new_signing_key() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// The public half of a PKCS#8 private key PEM.
pub fn public_key_pem(private_pem: &str) -> anyhow::Result<String> {
    Ok(KeyPair::from_pem(private_pem)?.public_key_pem())
}

/// Writes a private file (mode 0600 on Unix).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
