//! Certificates close to expiry, a classic outage: the node knows when its WSS and
//! control certificates end, reports the seconds left (`GetStats`, the
//! `palisade.tls.certificate.expiry` metric) and logs a warning every hour while one has
//! less than 14 days left (an error once it has expired).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade_plane::cert::{EXPIRY_WARNING_SECONDS, format_time, seconds_left};

use crate::tls::ReloadingCert;

/// How often the expiry warning is considered.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct CertExpiry {
    /// The WSS certificate (reloaded from its files): absent with TLS offloaded.
    wss: OnceLock<Arc<ReloadingCert>>,
    /// notAfter of the control-plane certificate: absent in plain text.
    control: OnceLock<i64>,
}

impl CertExpiry {
    pub fn set_wss(&self, cert: Arc<ReloadingCert>) {
        let _ = self.wss.set(cert);
    }

    pub fn set_control_pem(&self, pem: &str) {
        if let Some(na) = palisade_plane::cert::pem_not_after(pem.as_bytes()) {
            let _ = self.control.set(na);
        }
    }

    /// (name, notAfter) of each certificate the node serves with.
    pub fn certificates(&self) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        if let Some(c) = self.wss.get() {
            out.push(("wss", c.not_after()));
        }
        if let Some(na) = self.control.get() {
            out.push(("control", *na));
        }
        out
    }

    pub fn wss_seconds_left(&self) -> Option<i64> {
        self.wss.get().map(|c| seconds_left(c.not_after()))
    }

    pub fn control_seconds_left(&self) -> Option<i64> {
        self.control.get().map(|na| seconds_left(*na))
    }
}

impl CertExpiry {
    /// Logs each certificate that is expired or expires within 14 days.
    pub fn warn_expiring(&self) {
        for (certificate, not_after) in self.certificates() {
            let left = seconds_left(not_after);
            if left <= 0 {
                tracing::error!(event = "certificate_expired", certificate, not_after = %format_time(not_after), "peers refuse this certificate: replace it");
            } else if left < EXPIRY_WARNING_SECONDS {
                tracing::warn!(event = "certificate_expiring", certificate, seconds_left = left, not_after = %format_time(not_after), "renew this certificate");
            }
        }
    }
}
