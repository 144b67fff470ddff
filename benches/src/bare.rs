//! The baseline server: rustls and fastwebsockets with no checks at all. It upgrades any
//! request that carries a `Sec-WebSocket-Key` and echoes text and binary messages.
//!
//! Its TLS configuration is the node's (aws-lc-rs, TLS 1.3 and 1.2, ALPN `http/1.1`, the
//! rustls defaults for tickets and the session cache), its runtime is the node's (tokio
//! multi-threaded, one worker per CPU), and sockets get `TCP_NODELAY` like the node's, so
//! the difference measured is the node's own work: caps, deadline, gate, audit, session.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the HTTP upgrade is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Http {
    /// hyper 1 with `.with_upgrades()` and `fastwebsockets::upgrade::upgrade`.
    Hyper,
    /// The head read by hand with httparse, the 101 written by hand.
    Raw,
}

impl Http {
    pub fn name(self) -> &'static str {
        match self {
            Http::Hyper => "hyper",
            Http::Raw => "raw",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BareArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long, required_unless_present = "plain")]
    pub cert: Option<PathBuf>,
    #[arg(long, required_unless_present = "plain")]
    pub key: Option<PathBuf>,
    /// Plain `ws://` without TLS (an upstream echo server, or the baseline of a node with
    /// TLS offloaded); `--cert` and `--key` are then not needed.
    #[arg(long)]
    pub plain: bool,
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    #[arg(long, value_enum, default_value_t = Http::Hyper)]
    pub http: Http,
}

pub fn run(a: BareArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(a))
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    anyhow::ensure!(!certs.is_empty(), "{}: no PEM certificate", cert.display());
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn serve(a: BareArgs) -> anyhow::Result<()> {
    let acceptor = match (&a.cert, &a.key, a.plain) {
        (_, _, true) => None,
        (Some(c), Some(k), false) => Some(TlsAcceptor::from(tls_config(c, k)?)),
        _ => anyhow::bail!("--cert and --key, or --plain"),
    };
    let addr = SocketAddr::new(a.host, a.port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("bare_server_listening addr={addr} http={} tls={}", a.http.name(), !a.plain);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let http = a.http;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match (http, acceptor) {
                (Http::Hyper, Some(acceptor)) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        hyper_connection(tls).await;
                    }
                }
                (Http::Hyper, None) => hyper_connection(tcp).await,
                // The session gets a task of its own (as with hyper's upgrade), so that
                // the handshake's state does not stay in the idle session's memory.
                (Http::Raw, Some(acceptor)) => {
                    if let Ok(tls) = acceptor.accept(tcp).await
                        && let Some(tls) = raw_upgrade(tls).await
                    {
                        tokio::spawn(echo(WebSocket::after_handshake(tls, Role::Server)));
                    }
                }
                (Http::Raw, None) => {
                    if let Some(tcp) = raw_upgrade(tcp).await {
                        tokio::spawn(echo(WebSocket::after_handshake(tcp, Role::Server)));
                    }
                }
            }
        });
    }
}

async fn hyper_connection<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(stream: S) {
    let service = service_fn(|mut req: Request<Incoming>| async move {
        let (response, upgraded) = fastwebsockets::upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            if let Ok(ws) = upgraded.await {
                echo(ws).await;
            }
        });
        Ok::<Response<Empty<Bytes>>, WebSocketError>(response)
    });
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
}

const MAX_HEAD: usize = 8 * 1024;

/// The head read by hand, the 101; the (TLS or plain) stream is then ready for the session.
async fn raw_upgrade<S: AsyncRead + AsyncWrite + Unpin>(mut tls: S) -> Option<S> {
    let mut buf = BytesMut::with_capacity(2048);
    let head_len = loop {
        if tls.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    };
    let response = switching_protocols(&buf[..head_len])?;
    tls.write_all(response.as_bytes()).await.ok()?;
    tls.flush().await.ok()?;
    // A client that sends frames before it has seen the 101 is not served by this
    // baseline (the bench client never does).
    (buf.len() == head_len).then_some(tls)
}

/// The 101 for a request head with a `Sec-WebSocket-Key` (nothing else is checked).
fn switching_protocols(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let key = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?.value;
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    ))
}

/// `Sec-WebSocket-Accept` (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Echoes text and binary frames; fastwebsockets answers pings and close frames itself.
/// After the peer's close frame the TLS session is ended with `close_notify`, as the
/// node ends it.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>) {
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return,
        };
        let written = match frame.opcode {
            // A new frame: the one read keeps the client's masking key, and fastwebsockets
            // would write it back as a masked server frame (RFC 6455 section 5.1 forbids
            // it; palisade's upstream side refuses it).
            OpCode::Text | OpCode::Binary => ws.write_frame(Frame::new(frame.fin, frame.opcode, None, frame.payload)).await,
            OpCode::Close => break,
            _ => continue,
        };
        if written.is_err() || ws.flush().await.is_err() {
            return;
        }
    }
    // The close reply is out; end TLS with `close_notify` as the node does.
    let _ = ws.into_inner().shutdown().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
