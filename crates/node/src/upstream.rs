//! Upstream routes (SPEC section 3 step 12 and section 4): the node connects to the
//! application's WebSocket server before it answers 101, so an unreachable upstream is a
//! 502 and not a dead socket. The upstream sees the verified identity as headers and never
//! the client's credentials: the request to it is built here from scratch.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::http::accept_key;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream URL: {0}")]
    Url(String),
    #[error("upstream unreachable: {0}")]
    Connect(io::Error),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream refused the upgrade: {0}")]
    Handshake(String),
    #[error("upstream timed out")]
    Timeout,
}

/// A parsed `ws://` or `wss://` upstream.
#[derive(Debug, Clone)]
pub struct Target {
    pub tls: Option<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
    pub host_header: String,
    pub addr: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str, ca_file: Option<&std::path::Path>) -> Result<Target, UpstreamError> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(UpstreamError::Url("must start with ws:// or wss://".into()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(UpstreamError::Url("needs a host (and no userinfo)".into()));
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            // [v6]:port
            let (h, tail) = inner.split_once(']').ok_or_else(|| UpstreamError::Url("unclosed [".into()))?;
            (h, tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| UpstreamError::Url(format!("bad port `{p}`")))?,
            None => default_port,
        };
        let host = host.to_owned();
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let tls = if secure {
            // The route's CA file when given (private upstreams), else the system's roots.
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(ca) => {
                    for c in crate::tls::load_certs(ca).map_err(|e| UpstreamError::Tls(e.to_string()))? {
                        roots.add(c).map_err(|e| UpstreamError::Tls(e.to_string()))?;
                    }
                }
                None => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                    if roots.is_empty() {
                        return Err(UpstreamError::Url("a wss:// upstream needs upstream_ca: no system roots found".into()));
                    }
                }
            }
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| UpstreamError::Url(e.to_string()))?;
            Some((Arc::new(cfg), name))
        } else {
            None
        };
        Ok(Target { tls, host_header: authority.to_owned(), addr, path: path.to_owned() })
    }
}

pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connected upstream WebSocket (handshake done) and what it selected.
pub struct Upstream {
    pub stream: UpstreamStream,
    /// Bytes the upstream sent after its 101 (the start of its first frames).
    pub leftover: BytesMut,
    pub protocol: Option<String>,
}

/// Who the client is, as the upstream is told (SPEC section 4): never a credential.
pub struct Identity<'a> {
    pub subject: &'a str,
    /// base64url JSON of the verified claims.
    pub claims_b64: &'a str,
    pub client: std::net::IpAddr,
    pub conn_id: &'a str,
}

/// Connects and performs the client handshake, within `deadline`.
pub async fn connect(
    target: &Target,
    who: &Identity<'_>,
    offered_protocols: &[String],
    deadline: Duration,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(deadline, connect_inner(target, who, offered_protocols)).await.map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(target: &Target, who: &Identity<'_>, offered: &[String]) -> Result<Upstream, UpstreamError> {
    let tcp = TcpStream::connect(&target.addr).await.map_err(UpstreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &target.tls {
        None => UpstreamStream::Plain(tcp),
        Some((cfg, name)) => {
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            UpstreamStream::Tls(Box::new(s))
        }
    };
    let key_bytes: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         X-Palisade-Subject: {}\r\nX-Palisade-Connection: {}\r\nX-Palisade-Claims: {}\r\nX-Forwarded-For: {}\r\n",
        target.path,
        target.host_header,
        header_safe(who.subject),
        who.conn_id,
        who.claims_b64,
        who.client,
    );
    if !offered.is_empty() {
        req.push_str("Sec-WebSocket-Protocol: ");
        req.push_str(&offered.join(", "));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.map_err(UpstreamError::Connect)?;
    stream.flush().await.map_err(UpstreamError::Connect)?;

    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if buf.len() > crate::http::MAX_HEAD {
            return Err(UpstreamError::Handshake("response head too large".into()));
        }
        if stream.read_buf(&mut buf).await.map_err(UpstreamError::Connect)? == 0 {
            return Err(UpstreamError::Handshake("closed before answering".into()));
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let leftover = buf.split_off(end);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).map_err(|e| UpstreamError::Handshake(e.to_string()))?;
    if resp.code != Some(101) {
        return Err(UpstreamError::Handshake(format!("status {}", resp.code.unwrap_or(0))));
    }
    let get = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok());
    if get("sec-websocket-accept").map(str::trim) != Some(accept_key(&key).as_str()) {
        return Err(UpstreamError::Handshake("bad Sec-WebSocket-Accept".into()));
    }
    let protocol = get("sec-websocket-protocol").map(|p| p.trim().to_owned());
    if let Some(p) = &protocol
        && !offered.iter().any(|o| o == p)
    {
        return Err(UpstreamError::Handshake("selected a subprotocol that was not offered".into()));
    }
    Ok(Upstream { stream, leftover, protocol })
}

/// The upstream stream with the bytes it sent right after its 101 replayed first.
pub struct PrefixedUpstream {
    inner: UpstreamStream,
    prefix: BytesMut,
}

impl PrefixedUpstream {
    pub fn new(inner: UpstreamStream, prefix: BytesMut) -> Self {
        PrefixedUpstream { inner, prefix }
    }
}

impl AsyncRead for PrefixedUpstream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if crate::http::read_prefix(&mut self.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedUpstream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Subjects go into a header: anything outside visible ASCII is percent-encoded.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("ws://127.0.0.1:9000/socket?x=1", None).expect("ok");
        assert_eq!((t.addr.as_str(), t.path.as_str(), t.host_header.as_str()), ("127.0.0.1:9000", "/socket?x=1", "127.0.0.1:9000"));
        let t = Target::parse("ws://example.com", None).expect("ok");
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("example.com:80", "/"));
        assert!(Target::parse("http://example.com", None).is_err());
        assert!(Target::parse("ws://user@example.com", None).is_err());
    }

    #[test]
    fn subjects_are_header_safe() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a b\r\nX: y"), "a%20b%0D%0AX:%20y");
    }
}
