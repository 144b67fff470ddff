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
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificates that expire sooner than this are reported on stderr.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

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
        etcd_files(&mut r, now, e.ca.as_deref(), e.cert.as_deref(), e.key.as_deref())?;
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
        etcd_files(&mut r, now, e.ca.as_deref(), e.cert.as_deref(), e.key.as_deref())?;
    }
    Ok(r)
}

fn etcd_files(r: &mut Report, now: i64, ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<()> {
    if let Some(ca) = ca {
        ca_file(r, now, "etcd.ca", ca)?;
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
        let uris = der::san_uris(&chain[0]).unwrap_or_default();
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
    let (not_before, not_after) = der::validity(cert).ok_or_else(|| anyhow!("{field}: {}: not an X.509 certificate", path.display()))?;
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
mod der {
    /// One TLV: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The TBSCertificate's fields, in order.
    fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let (0x30, cert, _) = tlv(cert)? else { return None };
        let (0x30, mut tbs, _) = tlv(cert)? else { return None };
        let mut fields = Vec::new();
        while !tbs.is_empty() {
            let (tag, body, rest) = tlv(tbs)?;
            fields.push((tag, body));
            tbs = rest;
        }
        Some(fields)
    }

    /// (notBefore, notAfter) in Unix seconds.
    pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
        let fields = tbs_fields(cert)?;
        // [0] version is optional; then serial, signature, issuer, validity.
        let skip = usize::from(fields.first()?.0 == 0xa0);
        let (0x30, validity) = *fields.get(skip + 3)? else { return None };
        let (t1, b1, rest) = tlv(validity)?;
        let (t2, b2, _) = tlv(rest)?;
        Some((time(t1, b1)?, time(t2, b2)?))
    }

    /// The subjectAltName URIs of a certificate.
    pub fn san_uris(cert: &[u8]) -> Option<Vec<String>> {
        const SAN: &[u8] = &[0x55, 0x1d, 0x11];
        let fields = tbs_fields(cert)?;
        let mut out = Vec::new();
        let Some(&(_, exts)) = fields.iter().find(|(t, _)| *t == 0xa3) else { return Some(out) };
        let (0x30, mut exts, _) = tlv(exts)? else { return None };
        while !exts.is_empty() {
            let (_, ext, rest) = tlv(exts)?;
            exts = rest;
            let (0x06, oid, mut ext) = tlv(ext)? else { return None };
            if oid != SAN {
                continue;
            }
            let (mut tag, mut value, mut after) = tlv(ext)?;
            if tag == 0x01 {
                // critical BOOLEAN
                ext = after;
                (tag, value, after) = tlv(ext)?;
            }
            let _ = after;
            if tag != 0x04 {
                return None;
            }
            let (0x30, mut names, _) = tlv(value)? else { return None };
            while !names.is_empty() {
                let (t, v, rest) = tlv(names)?;
                names = rest;
                if t == 0x86 {
                    out.push(String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        Some(out)
    }

    fn digits(s: &[u8]) -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0')))
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) to Unix seconds.
    fn time(tag: u8, s: &[u8]) -> Option<i64> {
        let (year, rest) = match tag {
            0x17 if s.len() == 13 => {
                let yy = digits(&s[..2])?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
            }
            0x18 if s.len() == 15 => (digits(&s[..4])?, &s[4..]),
            _ => return None,
        };
        if rest[10] != b'Z' {
            return None;
        }
        let (month, day) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
        let (h, m, sec) = (digits(&rest[4..6])?, digits(&rest[6..8])?, digits(&rest[8..10])?);
        Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Unix seconds as RFC 3339 (UTC).
    pub fn format_time(t: i64) -> String {
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn dates_round_trip() {
            assert_eq!(super::days_from_civil(1970, 1, 1), 0);
            assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
            assert_eq!(super::time(0x17, b"260301120000Z"), Some(1_772_366_400));
            assert_eq!(super::format_time(1_772_366_400), "2026-03-01T12:00:00Z");
            assert_eq!(super::time(0x18, b"20260301120000Z"), Some(1_772_366_400));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::der;

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
        assert_eq!(der::san_uris(der_bytes).expect("sans"), ["spiffe://palisade/prod/node/any"]);
    }
}
