//! The soak's own WebSocket client. Like `crate::client` (TLS 1.3 through tokio-rustls
//! with aws-lc-rs, no resumption, the upgrade written by hand, frames masked and parsed
//! by hand), but every handshake names its source address, Origin and Authorization, a
//! refusal comes back with its status and the `error` code of its body, and it makes the
//! stalled sockets of the refusal mix.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::{Buf as _, BytesMut};
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::client::masked_frame;
use crate::fixture::{PATH, SERVER_NAME};

/// Deadline of one connect + TLS + upgrade (or refusal), and of each wait for an echo.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 16 * 1024;

pub struct Wire {
    config: Arc<rustls::ClientConfig>,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    pub addr: SocketAddr,
}

/// What the node answered to an upgrade request.
pub enum Answer {
    Upgraded(Box<SoakWs>),
    /// Any other status, with the `error` code of the JSON body (empty when none).
    Refused {
        status: u16,
        code: String,
    },
}

/// How a stalled socket stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// TCP connect, then nothing.
    Silent,
    /// TCP connect and a TLS ClientHello, then nothing (the TLS handshake never ends).
    Hello,
    /// A whole TLS handshake and half a request head, then nothing (slowloris).
    Head,
}

impl Stall {
    pub const ALL: [Stall; 3] = [Stall::Silent, Stall::Hello, Stall::Head];

    pub fn name(self) -> &'static str {
        match self {
            Stall::Silent => "stall_silent",
            Stall::Hello => "stall_hello",
            Stall::Head => "stall_head",
        }
    }
}

impl Wire {
    pub fn new(ca_pem: &str, addr: SocketAddr) -> anyhow::Result<Arc<Wire>> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("the bench CA")?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.resumption = Resumption::disabled();
        let config = Arc::new(cfg);
        Ok(Arc::new(Wire {
            connector: TlsConnector::from(config.clone()),
            config,
            server_name: ServerName::try_from(SERVER_NAME)?.to_owned(),
            addr,
        }))
    }

    async fn tcp(&self, source: Ipv4Addr) -> Result<TcpStream, String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket.bind(SocketAddr::new(source.into(), 0)).map_err(|e| format!("bind {source}: {e}"))?;
        let tcp = socket.connect(self.addr).await.map_err(|e| format!("connect from {source}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        Ok(tcp)
    }

    /// TCP connect from `source`, a full TLS 1.3 handshake and the upgrade request with
    /// this Origin and Authorization; the node's answer.
    pub async fn handshake(&self, source: Ipv4Addr, origin: &str, authorization: &str) -> Result<Answer, String> {
        match tokio::time::timeout(IO_TIMEOUT, self.handshake_inner(source, origin, authorization)).await {
            Ok(r) => r,
            Err(_) => Err(format!("handshake from {source} timed out")),
        }
    }

    async fn handshake_inner(&self, source: Ipv4Addr, origin: &str, authorization: &str) -> Result<Answer, String> {
        let tcp = self.tcp(source).await?;
        let mut tls = self.connector.connect(self.server_name.clone(), tcp).await.map_err(|e| format!("tls: {e}"))?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {PATH} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nAuthorization: {authorization}\r\n\r\n",
            port = self.addr.port()
        );
        tls.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut buf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if tls.read_buf(&mut buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("closed before the response".into());
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_RESPONSE {
                return Err("response head too large".into());
            }
        };
        let status = buf.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse::<u16>().ok());
        let status = match status {
            Some(s) if buf.starts_with(b"HTTP/1.1 ") => s,
            _ => return Err("malformed response".into()),
        };
        if status == 101 {
            buf.advance(head_len);
            return Ok(Answer::Upgraded(Box::new(SoakWs { stream: tls, rd: buf })));
        }
        // A refusal: the node writes the body and ends the connection.
        while buf.len() < MAX_RESPONSE {
            match tls.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let body = &buf[head_len.min(buf.len())..];
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Ok(Answer::Refused { status, code })
    }

    /// Opens a stalled socket from `source` and waits (at most `max_wait`) for the node to
    /// end it; returns how long that took from the TCP connect.
    pub async fn stall(&self, source: Ipv4Addr, kind: Stall, max_wait: Duration) -> Result<Duration, String> {
        let mut tcp = tokio::time::timeout(IO_TIMEOUT, self.tcp(source)).await.map_err(|_| "stall: connect timed out".to_string())??;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + max_wait);
        let waited = match kind {
            Stall::Silent => tokio::time::timeout_at(deadline, until_end(&mut tcp)).await,
            Stall::Hello => {
                let mut conn =
                    rustls::ClientConnection::new(self.config.clone(), self.server_name.clone()).map_err(|e| format!("hello: {e}"))?;
                let mut hello = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut hello).map_err(|e| format!("hello: {e}"))?;
                }
                tcp.write_all(&hello).await.map_err(|e| format!("hello: {e}"))?;
                tokio::time::timeout_at(deadline, until_end(&mut tcp)).await
            }
            Stall::Head => {
                let connect = self.connector.connect(self.server_name.clone(), tcp);
                let mut tls = tokio::time::timeout_at(deadline, connect)
                    .await
                    .map_err(|_| "stall: TLS timed out".to_string())?
                    .map_err(|e| format!("stall: tls: {e}"))?;
                let half = format!("GET {PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUpgrade: websocket\r\n");
                tls.write_all(half.as_bytes()).await.map_err(|e| format!("stall: write: {e}"))?;
                tls.flush().await.map_err(|e| format!("stall: flush: {e}"))?;
                tokio::time::timeout_at(deadline, until_end(&mut tls)).await
            }
        };
        match waited {
            Ok(()) => Ok(started.elapsed()),
            Err(_) => Err(format!("{}: the node had not closed it after {:.1} s", kind.name(), max_wait.as_secs_f64())),
        }
    }
}

/// Reads (and drops) whatever comes until the peer ends the connection.
async fn until_end<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut scratch = [0u8; 4096];
    loop {
        match s.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// An open session (client side).
pub struct SoakWs {
    stream: TlsStream<TcpStream>,
    rd: BytesMut,
}

impl SoakWs {
    /// Sends `frame` (a masked text frame of `payload`) and waits for its echo, answering
    /// pings meanwhile; the echo must equal `payload`.
    pub async fn echo(&mut self, frame: &[u8], payload: &[u8]) -> Result<(), String> {
        self.stream.write_all(frame).await.map_err(|e| format!("write: {e}"))?;
        self.stream.flush().await.map_err(|e| format!("flush: {e}"))?;
        loop {
            let (opcode, header, len) = loop {
                if let Some(f) = crate::client::parse_frame(&self.rd) {
                    break f;
                }
                match tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.rd)).await {
                    Ok(Ok(0)) => return Err("closed by the node".into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("read: {e}")),
                    Err(_) => return Err("no echo within 10 s".into()),
                }
            };
            let body = self.rd[header..header + len].to_vec();
            self.rd.advance(header + len);
            match opcode {
                0x1 | 0x2 if body == payload => return Ok(()),
                0x1 | 0x2 => return Err(format!("echo of {len} bytes differs from the {} bytes sent", payload.len())),
                0x9 => self.stream.write_all(&masked_frame(0xA, &body)).await.map_err(|e| format!("pong: {e}"))?,
                0xA => {}
                0x8 => {
                    let code = body.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("the node closed the session (code {code:?})"));
                }
                op => return Err(format!("unexpected opcode {op}")),
            }
        }
    }

    /// The close handshake (1000), then waits for the node to end the connection.
    pub async fn close(mut self) -> Result<(), String> {
        let frame = masked_frame(0x8, &1000u16.to_be_bytes());
        self.stream.write_all(&frame).await.map_err(|e| format!("close: {e}"))?;
        self.stream.flush().await.map_err(|e| format!("close: {e}"))?;
        match tokio::time::timeout(IO_TIMEOUT, until_end(&mut self.stream)).await {
            Ok(()) => Ok(()),
            Err(_) => Err("the node did not end the connection after the close handshake".into()),
        }
    }
}
