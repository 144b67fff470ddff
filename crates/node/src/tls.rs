//! WSS TLS: rustls with the certificate chain and key from PEM files, reloaded when the
//! files change, without touching live connections (each handshake picks up the current
//! `CertifiedKey`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate found")]
    NoCert(PathBuf),
    #[error("{0}: no usable PEM private key found")]
    BadKey(PathBuf),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read(path.into(), e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read(path.into(), e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::BadKey(path.into()))
}

/// The key pair and the end-entity certificate's notAfter (Unix seconds; `i64::MAX` when
/// it does not parse as X.509, which rustls would have refused anyway).
fn certified_key(cert: &Path, key: &Path) -> Result<(CertifiedKey, i64), TlsError> {
    let certs = load_certs(cert)?;
    let not_after = palisade_plane::cert::validity(&certs[0]).map_or(i64::MAX, |(_, na)| na);
    let key = load_key(key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok((CertifiedKey::from_der(certs, key, &provider)?, not_after))
}

/// Serves the current certificate; `reload_if_changed` swaps in new files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// notAfter of the current certificate (Unix seconds).
    not_after: std::sync::atomic::AtomicI64,
    stamp: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Result<Arc<Self>, TlsError> {
        let (ck, not_after) = certified_key(&cert_path, &key_path)?;
        let stamp = (mtime(&cert_path), mtime(&key_path));
        Ok(Arc::new(ReloadingCert {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(ck),
            not_after: not_after.into(),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// notAfter of the certificate being served (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reloads when either file's modification time changed. A broken pair (half-written
    /// files, mismatched key) is logged and the current certificate keeps serving.
    pub fn reload_if_changed(&self) -> bool {
        let now = (mtime(&self.cert_path), mtime(&self.key_path));
        let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *stamp == now {
            return false;
        }
        match certified_key(&self.cert_path, &self.key_path) {
            Ok((ck, not_after)) => {
                self.current.store(Arc::new(ck));
                self.not_after.store(not_after, std::sync::atomic::Ordering::Relaxed);
                *stamp = now;
                tracing::info!(event = "tls_reloaded", cert = %self.cert_path.display(), "WSS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(event = "tls_reload_failed", error = %e, "keeping the current WSS certificate");
                false
            }
        }
    }

    /// Polls the files every `interval` until the returned task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.reload_if_changed();
            }
        })
    }
}

/// The server's preference: AES-128-GCM first (TLS 1.3, then 1.2), the rest in the
/// provider's order (a stable sort).
fn suite_rank(s: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 2,
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The node's TLS: aws-lc-rs, TLS 1.3 and 1.2, and the server's own suite order, which
/// puts AES-128-GCM with SHA-256 first (TLS 1.3's mandatory suite, 128-bit security like
/// the X25519 and P-256 key exchanges it is paired with). SHA-256 has hardware support on
/// current x86 and Arm cores where SHA-384 mostly does not, and AES-128 runs 10 rounds
/// to AES-256's 14: the handshake's transcript hashing and key schedule and every
/// record cost less (benches/RESULTS.md). Clients that offer only the others get them.
pub fn server_config(resolver: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| suite_rank(s.suite()));
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
