//! Dev and test PKI: a CA, the WSS server certificate, control-plane certificates and
//! the ES256 signing key, as PEM files.

use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
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

/// A leaf signed by `ca`, without a role: `server` for TLS servers (the WSS listener),
/// `client` for client authentication. `sans` are DNS names or IP addresses.
pub fn new_leaf(ca: &Ca, ca_name: &str, cn: &str, sans: &[&str], server: bool, client: bool) -> anyhow::Result<Leaf> {
    new_role_leaf(ca, ca_name, cn, sans, &[], server, client)
}

/// A leaf signed by `ca` that also names `uris` as URI SANs: a control-plane identity
/// names its role there (`spiffe://palisade/<cluster>/...`, see [`crate::roles::Role::uri`]).
pub fn new_role_leaf(
    ca: &Ca,
    ca_name: &str,
    cn: &str,
    dns_sans: &[&str],
    uris: &[String],
    server: bool,
    client: bool,
) -> anyhow::Result<Leaf> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(ca_name)?, &ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(dns_sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    for u in uris {
        p.subject_alt_names.push(SanType::URI(Ia5String::try_from(u.as_str())?));
    }
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

#[cfg(test)]
mod tests {
    use crate::roles::{Access, Refusal, Role, roles_of_pem, uri_sans};

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents
    }

    #[test]
    fn role_leaves_carry_their_uri_san_and_plain_leaves_none() {
        let ca = super::new_ca("t").expect("ca");
        let uris = [Role::Operator.uri("prod"), "https://example.org/x".to_owned()];
        let op = super::new_role_leaf(&ca, "t", "op", &["localhost"], &uris, false, true).expect("leaf");
        assert_eq!(uri_sans(&der(&op.cert_pem)).expect("parses"), uris);
        assert_eq!(roles_of_pem(&op.cert_pem, "prod"), [Role::Operator]);
        assert!(roles_of_pem(&op.cert_pem, "staging").is_empty());
        let node = super::new_role_leaf(&ca, "t", "n", &[], &[Role::Node("n1".into()).uri("prod")], true, true).expect("leaf");
        assert_eq!(roles_of_pem(&node.cert_pem, "prod"), [Role::Node("n1".into())]);
        let wss = super::new_leaf(&ca, "t", "localhost", &["localhost", "127.0.0.1"], true, true).expect("leaf");
        assert!(uri_sans(&der(&wss.cert_pem)).expect("parses").is_empty());

        let node_rule = Access::node("prod");
        assert_eq!(node_rule.check(Some(&der(&op.cert_pem))), Ok(Role::Operator));
        assert_eq!(node_rule.check(Some(&der(&node.cert_pem))), Err(Refusal::RoleNotAllowed));
        assert_eq!(node_rule.check(Some(&der(&wss.cert_pem))), Err(Refusal::NoRole));
        assert_eq!(Access::node("staging").check(Some(&der(&op.cert_pem))), Err(Refusal::NoRole));
        assert_eq!(Access::controller("prod").check(Some(&der(&op.cert_pem))), Ok(Role::Operator));
    }
}
