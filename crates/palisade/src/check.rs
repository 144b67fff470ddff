//! `palisade node --check-config` and `palisade controller --check-config`: load the
//! configuration with the same loaders the servers use (so `PALISADE_*` overrides and
//! relative paths count), then open every file it names the way the server would:
//! certificates parse, private keys match their certificates, CA files parse as trust
//! anchors, the bootstrap policy parses and validates, route upstream CAs and JSON
//! Schemas load. Nothing is bound and nothing is contacted (etcd, upstreams).
//!
//! An error names the field (`tls.cert: cannot read /x.pem: ...`). A certificate that
//! expires within [`EXPIRY_WARNING_DAYS`] is a warning; one that has already expired (or
//! is not valid yet) is an error, since every TLS peer would refuse it. A control-plane
//! certificate without the role URI SAN the chart and the SPEC give it
//! (`spiffe://palisade/<cluster>/...`) is a warning.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use palisade_plane::cert as der;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificates that expire sooner than this are reported on stderr.
pub const EXPIRY_WARNING_DAYS: i64 = palisade_plane::cert::EXPIRY_WARNING_SECONDS / 86_400;

/// What a successful check found worth saying.
#[derive(Debug, Default)]
pub struct Report {
    pub warnings: Vec<String>,
}

/// Warnings on stderr, then `ok` on stdout.
pub fn print(report: Report) {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("ok");
}

/// Checks a node configuration file and every file it names.
pub fn node(config: &Path, insecure_control_plane: bool) -> anyhow::Result<Report> {
    let cfg = palisade_node::config::NodeConfig::load_with(config, insecure_control_plane).map_err(|e| anyhow!("{e}"))?;
    let mut r = Report::default();
    let now = unix_now();
    if cfg.tls.mode == palisade_node::config::TlsMode::Rustls {
        // validate() made sure both are set in this mode.
        if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
            pair(&mut r, now, "tls", cert, key, None)?;
        }
    }
    if let Some(c) = &cfg.control {
        let prefix = format!("spiffe://palisade/{}/node/", cfg.cluster);
        pair(&mut r, now, "control", &c.cert, &c.key, Some(&prefix))?;
        ca_file(&mut r, now, "control.ca", &c.ca)?;
    }
    for (i, route) in cfg.routes.iter().enumerate() {
        if let Some(ca) = &route.upstream_ca {
            ca_file(&mut r, now, &format!("routes[{i}].upstream_ca"), ca)?;
        }
        if let Some(schema) = &route.schema {
            let f = format!("routes[{i}].schema");
            let text = read(&f, schema)?;
            serde_json::from_str::<serde_json::Value>(&text).with_context(|| format!("{f}: {} is not JSON", schema.display()))?;
        }
        // The node's own route builder: URL, upstream TLS roots, JSON Schema compilation.
        palisade_node::state::Route::from_config(route).map_err(|e| anyhow!("routes[{i}]: {e}"))?;
    }
    if let Some(path) = &cfg.policy_file {
        policy_file("policy_file", path)?;
    }
    if let Some(e) = &cfg.etcd {
        etcd_files(&mut r, now, e.ca.as_deref(), e.cert.as_deref(), e.key.as_deref(), e.password_file.as_deref())?;
    }
    Ok(r)
}

/// Checks a controller configuration file and every file it names.
pub fn controller(config: &Path, insecure_control_plane: bool) -> anyhow::Result<Report> {
    let cfg = palisade_controller::ControllerConfig::load(config, insecure_control_plane).map_err(|e| anyhow!("{e}"))?;
    let mut r = Report::default();
    let now = unix_now();
    let role = format!("spiffe://palisade/{}/controller", cfg.cluster);
    if let Some(t) = &cfg.tls {
        pair(&mut r, now, "tls", &t.cert, &t.key, None)?;
        ca_file(&mut r, now, "tls.ca", &t.ca)?;
    }
    if let Some(t) = &cfg.nodes_tls {
        pair(&mut r, now, "nodes_tls", &t.cert, &t.key, Some(&role))?;
        ca_file(&mut r, now, "nodes_tls.ca", &t.ca)?;
    }
    if let Some(e) = &cfg.etcd {
        etcd_files(&mut r, now, e.ca.as_deref(), e.cert.as_deref(), e.key.as_deref(), e.password_file.as_deref())?;
    }
    Ok(r)
}

fn etcd_files(
    r: &mut Report,
    now: i64,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    password_file: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(ca) = ca {
        ca_file(r, now, "etcd.ca", ca)?;
    }
    if let Some(path) = password_file {
        // Read as the start reads it (one trailing newline dropped, empty refused); the
        // password itself is never printed.
        palisade_plane::etcd::read_password(path).map_err(|e| anyhow!("etcd.password_file: {e}"))?;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => pair(r, now, "etcd", cert, key, None),
        (Some(_), None) => bail!("etcd.key: required with etcd.cert"),
        (None, Some(_)) => bail!("etcd.cert: required with etcd.key"),
        (None, None) => Ok(()),
    }
}

fn read(field: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("{field}: cannot read {}: {e}", path.display()))
}

fn certs(field: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(field, path)?;
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        out.push(c.map_err(|e| anyhow!("{field}: {}: bad PEM certificate: {e:?}", path.display()))?);
    }
    if out.is_empty() {
        bail!("{field}: {}: no PEM certificate found", path.display());
    }
    Ok(out)
}

/// A certificate chain and its private key: both parse, and the key is the certificate's.
/// `role_prefix`: the URI SAN the leaf should carry (a warning when it does not).
fn pair(r: &mut Report, now: i64, section: &str, cert: &Path, key: &Path, role_prefix: Option<&str>) -> anyhow::Result<()> {
    let cert_field = format!("{section}.cert");
    let key_field = format!("{section}.key");
    let chain = certs(&cert_field, cert)?;
    let key_pem = read(&key_field, key)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow!("{key_field}: {}: no usable PEM private key: {e:?}", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow!("{key_field}: {}: unsupported private key: {e}", key.display()))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            r.warnings.push(format!("{key_field}: cannot tell whether the key matches {}", cert.display()));
        }
        Err(e) => bail!("{key_field}: {} does not match the certificate in {}: {e}", key.display(), cert.display()),
    }
    for (i, c) in chain.iter().enumerate() {
        let what = if i == 0 { cert_field.clone() } else { format!("{cert_field} (chain certificate {i})") };
        validity(r, now, &what, cert, c)?;
    }
    if let Some(prefix) = role_prefix {
        let uris = palisade_plane::roles::uri_sans(&chain[0]).unwrap_or_default();
        if !uris.iter().any(|u| u.starts_with(prefix)) {
            r.warnings.push(format!(
                "{cert_field}: {} carries no role URI SAN `{prefix}...` (found: {})",
                cert.display(),
                if uris.is_empty() { "none".to_owned() } else { uris.join(", ") }
            ));
        }
    }
    Ok(())
}

fn ca_file(r: &mut Report, now: i64, field: &str, path: &Path) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs(field, path)?.into_iter().enumerate() {
        validity(r, now, field, path, &c)?;
        roots.add(c).map_err(|e| anyhow!("{field}: {}: certificate {i} is not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

fn validity(r: &mut Report, now: i64, field: &str, path: &Path, cert: &CertificateDer<'_>) -> anyhow::Result<()> {
    let (not_before, not_after) = der::validity(cert).map_err(|e| anyhow!("{field}: {}: {e}", path.display()))?;
    if now < not_before {
        bail!("{field}: {}: certificate not valid before {}", path.display(), der::format_time(not_before));
    }
    if now >= not_after {
        bail!("{field}: {}: certificate expired at {}", path.display(), der::format_time(not_after));
    }
    let days = (not_after - now) / 86_400;
    if days < EXPIRY_WARNING_DAYS {
        r.warnings.push(format!("{field}: {}: certificate expires in {days} days ({})", path.display(), der::format_time(not_after)));
    }
    Ok(())
}

fn policy_file(field: &str, path: &Path) -> anyhow::Result<()> {
    let text = read(field, path)?;
    let doc = palisade_policy::Policy::from_yaml_or_json(&text).map_err(|e| anyhow!("{field}: {}: {e}", path.display()))?;
    doc.compile(1).map_err(|e| anyhow!("{field}: {}: {e}", path.display()))?;
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Just enough DER to read a certificate's validity and its URI SANs (rustls and webpki
/// parse certificates but expose neither).
#[cfg(test)]
mod tests {
    use palisade_plane::cert as der;
    use palisade_plane::roles::uri_sans;

    #[test]
    fn reads_validity_and_uri_sans_of_a_real_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        p.subject_alt_names.push(rcgen::SanType::URI("spiffe://palisade/prod/node/any".try_into().expect("uri")));
        p.not_before = rcgen::date_time_ymd(2025, 1, 2);
        p.not_after = rcgen::date_time_ymd(2061, 3, 4);
        let cert = p.self_signed(&key).expect("cert");
        let der_bytes = cert.der();
        let (nb, na) = der::validity(der_bytes).expect("validity");
        assert_eq!(der::format_time(nb), "2025-01-02T00:00:00Z");
        assert_eq!(der::format_time(na), "2061-03-04T00:00:00Z");
        assert_eq!(uri_sans(der_bytes).expect("sans"), ["spiffe://palisade/prod/node/any"]);
    }
}
