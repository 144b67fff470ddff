//! JWKS (SPEC section 7, `auth.jwks_url`): keys fetched from the issuer, cached, refreshed
//! in the background, and refetched when a token names an unknown `kid` — at most once per
//! minimum interval, with concurrent handshakes sharing one fetch, so a flood of tokens
//! with made-up kids cannot turn into a fetch storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Empty, Limited};
use palisade_policy::jwt::{self, KeySet};
use palisade_policy::{Claims, CompiledPolicy, TokenError};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const REFRESH_EVERY: Duration = Duration::from_secs(300);

pub struct JwksHolder {
    current: Mutex<Option<Arc<Jwks>>>,
    min_interval_ms: AtomicU64,
}

impl Default for JwksHolder {
    fn default() -> Self {
        JwksHolder { current: Mutex::new(None), min_interval_ms: AtomicU64::new(30_000) }
    }
}

impl JwksHolder {
    /// The cache for `url` (a fresh one when the policy's URL changed).
    pub fn for_url(&self, url: &str) -> Arc<Jwks> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = cur.as_ref().filter(|j| j.url == url) {
            return j.clone();
        }
        let j = Arc::new(Jwks {
            url: url.to_owned(),
            keys: ArcSwap::from_pointee(KeySet::new()),
            last_attempt: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            min_interval: Duration::from_millis(self.min_interval_ms.load(Ordering::Relaxed)),
        });
        spawn_refresher(Arc::downgrade(&j));
        *cur = Some(j.clone());
        j
    }

    /// The minimum time between two fetches (default 30 s).
    pub fn set_min_interval(&self, d: Duration) {
        self.min_interval_ms.store(d.as_millis() as u64, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn current(&self) -> Option<Arc<Jwks>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn spawn_refresher(weak: Weak<Jwks>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let Some(j) = weak.upgrade() else { return };
            j.refresh().await;
        }
    });
}

pub struct Jwks {
    pub url: String,
    keys: ArcSwap<KeySet>,
    last_attempt: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Fetches made (for tests and stats).
    pub fetches: AtomicU64,
    min_interval: Duration,
}

impl Jwks {
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    fn due(&self) -> bool {
        let last = *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= self.min_interval)
    }

    /// Fetches if the minimum interval has passed since the last attempt. Concurrent
    /// callers wait for the one fetch in flight. Returns whether the key set changed.
    pub async fn refresh(&self) -> bool {
        let _one = self.fetch_lock.lock().await;
        if !self.due() {
            return false;
        }
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.url)).await {
            Ok(Ok(body)) => match jwt::parse_jwks(&body) {
                Ok((keys, skipped)) => {
                    let changed = {
                        let old = self.keys.load();
                        old.len() != keys.len() || keys.keys().any(|k| !old.contains_key(k))
                    };
                    tracing::info!(event = "jwks_fetched", url = %self.url, keys = keys.len(), skipped, changed);
                    self.keys.store(Arc::new(keys));
                    changed
                }
                Err(e) => {
                    tracing::warn!(event = "jwks_invalid", url = %self.url, error = %e, "keeping the cached keys");
                    false
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(event = "jwks_fetch_failed", url = %self.url, error = %e, "keeping the cached keys");
                false
            }
            Err(_) => {
                tracing::warn!(event = "jwks_fetch_failed", url = %self.url, error = "timeout", "keeping the cached keys");
                false
            }
        }
    }
}

/// Verifies a token with the policy's keys and, when the policy names a JWKS URL, the
/// fetched keys; an unknown `kid` triggers at most one refetch per minimum interval.
pub async fn verify(holder: &JwksHolder, policy: &CompiledPolicy, token: &str, now: u64) -> Result<Claims, TokenError> {
    let Some(url) = policy.document.auth.jwks_url.as_deref() else {
        return policy.verifier.verify(token, now);
    };
    let jwks = holder.for_url(url);
    let keys = jwks.keys();
    match policy.verifier.verify_with(token, now, Some(&keys)) {
        Err(TokenError::Invalid("unknown_kid")) => {
            let kid_known = jwt::token_kid(token).is_some_and(|k| jwks.keys().contains_key(&k));
            if !kid_known && !jwks.refresh().await && jwks.keys().len() == keys.len() {
                return Err(TokenError::Invalid("unknown_kid"));
            }
            policy.verifier.verify_with(token, now, Some(&jwks.keys()))
        }
        other => other,
    }
}

/// GETs `url` (http or https; https verified against the system's roots).
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = http::Request::get(path)
        .header(http::header::HOST, uri.authority().map_or(host.clone(), |a| a.to_string()))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map_err(|e| e.to_string())?;
        send(hyper_util::rt::TokioIo::new(tls), req).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

async fn send<I>(io: I, req: http::Request<Empty<bytes::Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}
