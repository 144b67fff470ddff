//! What an X.509 certificate says about its life, read with `x509-parser`: its validity
//! window, how long it has left, and that as RFC 3339. The node watches its WSS and
//! control certificates with these (a log warning, `GetStats`, a metric) and
//! `--check-config` refuses expired ones and warns about those close to expiry.

use crate::roles::CertError;

/// Certificates that expire sooner than this are warned about (log, `--check-config`).
pub const EXPIRY_WARNING_SECONDS: i64 = 14 * 86_400;

/// (notBefore, notAfter) of a DER certificate, in Unix seconds.
pub fn validity(cert_der: &[u8]) -> Result<(i64, i64), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| CertError::new(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// notAfter of the first certificate (the end entity) of a PEM text.
pub fn pem_not_after(pem: &[u8]) -> Option<i64> {
    match x509_parser::pem::parse_x509_pem(pem) {
        Ok((_, p)) if p.label == "CERTIFICATE" => validity(&p.contents).ok().map(|(_, na)| na),
        _ => None,
    }
}

/// Seconds from now until `not_after` (negative once past).
pub fn seconds_left(not_after: i64) -> i64 {
    not_after - unix_now()
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as RFC 3339 (UTC).
pub fn format_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_772_366_400), "2026-03-01T12:00:00Z");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(validity(b"\x30\x03\x02\x01\x01").is_err());
        assert_eq!(pem_not_after(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), None);
        assert!(seconds_left(unix_now() + 100) > 90);
    }
}
