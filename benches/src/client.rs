//! The load generator's WebSocket client, kept cheap so that the two vCPUs go to the
//! server under test: tokio-rustls (aws-lc-rs, TLS 1.3 only, a full handshake every time:
//! resumption disabled), the upgrade request written by hand, frames masked and parsed by
//! hand. Every connection comes from one of several loopback source addresses.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use crate::fixture::{ORIGIN, PATH, SERVER_NAME};

/// Deadline of one connect + TLS + upgrade, and of each wait for the server later on.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

pub struct Client {
    /// None: a plain `ws://` client ([`Client::plain`]).
    connector: Option<TlsConnector>,
    server_name: ServerName<'static>,
    sources: Vec<Ipv4Addr>,
    authorizations: Vec<String>,
    /// `X-Forwarded-For` values used in turn (none when empty).
    forwarded: Vec<String>,
    next: AtomicUsize,
}

/// Why an upgrade did not happen.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with this status instead of 101.
    Refused(u16),
    /// Connect, TLS or I/O error, or a timeout.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(s) => write!(f, "refused with HTTP {s}"),
            Failure::Error(e) => f.write_str(e),
        }
    }
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Error(format!("{what}: {e}"))
}

impl Client {
    /// `sources` loopback source addresses from 127.0.0.2; `authorizations` are used in turn.
    pub fn new(ca_pem: &str, sources: u8, authorizations: Vec<String>) -> anyhow::Result<Arc<Client>> {
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
        let sources = (0..sources.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();
        anyhow::ensure!(!authorizations.is_empty(), "no token");
        Ok(Arc::new(Client {
            connector: Some(TlsConnector::from(Arc::new(cfg))),
            server_name: ServerName::try_from(SERVER_NAME)?.to_owned(),
            sources,
            authorizations,
            forwarded: Vec::new(),
            next: AtomicUsize::new(0),
        }))
    }

    /// TCP connect, a full TLS 1.3 handshake and the upgrade (Origin and bearer token).
    pub async fn open(&self, addr: SocketAddr) -> Result<Wss, Failure> {
        match tokio::time::timeout(IO_TIMEOUT, self.open_inner(addr)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Error("timed out".into())),
        }
    }

    async fn open_inner(&self, addr: SocketAddr) -> Result<Wss, Failure> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let source = self.sources[i % self.sources.len()];
        let authorization = &self.authorizations[i % self.authorizations.len()];
        let socket = TcpSocket::new_v4().map_err(io_err("socket"))?;
        socket.bind(SocketAddr::new(source.into(), 0)).map_err(io_err("bind"))?;
        let tcp = socket.connect(addr).await.map_err(io_err("connect"))?;
        tcp.set_nodelay(true).map_err(io_err("nodelay"))?;
        let mut tls = match &self.connector {
            Some(c) => Stream::Tls(Box::new(c.connect(self.server_name.clone(), tcp).await.map_err(io_err("tls"))?)),
            None => Stream::Plain(tcp),
        };
        let forwarded = match self.forwarded.len() {
            0 => String::new(),
            n => format!("X-Forwarded-For: {}\r\n", self.forwarded[i % n]),
        };
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {PATH} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\nAuthorization: {authorization}\r\n{forwarded}\r\n",
            port = addr.port()
        );
        tls.write_all(request.as_bytes()).await.map_err(io_err("write"))?;
        tls.flush().await.map_err(io_err("flush"))?;
        let mut buf = BytesMut::with_capacity(1024);
        let head_len = loop {
            if tls.read_buf(&mut buf).await.map_err(io_err("read"))? == 0 {
                return Err(Failure::Error("closed before the response".into()));
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(Failure::Error("response head too large".into()));
            }
        };
        let status = buf.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(101) if buf.starts_with(b"HTTP/1.1 ") => {}
            Some(s) => return Err(Failure::Refused(s)),
            None => return Err(Failure::Error("malformed response".into())),
        }
        buf.advance(head_len);
        Ok(Wss { stream: tls, rd: buf })
    }
}

/// An open WebSocket session (client side).
pub struct Wss {
    stream: Stream,
    rd: BytesMut,
}

/// A client frame: FIN, `opcode`, masked with a random key.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server frame at the start of `b`: (opcode, header length, payload length), when whole.
pub fn parse_frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (mut header, mut len) = (2usize, (b1 & 0x7f) as usize);
    if len == 126 {
        len = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize;
        header = 4;
    } else if len == 127 {
        let raw: [u8; 8] = b.get(2..10)?.try_into().ok()?;
        len = usize::try_from(u64::from_be_bytes(raw)).ok()?;
        header = 10;
    }
    if b1 & 0x80 != 0 {
        header += 4;
    }
    (b.len() >= header.checked_add(len)?).then_some((b0 & 0x0f, header, len))
}

impl Wss {
    /// Reads until one whole frame is buffered; returns (opcode, header length, payload length).
    async fn next_frame(&mut self) -> Result<(u8, usize, usize), String> {
        loop {
            if let Some(f) = parse_frame(&self.rd) {
                return Ok(f);
            }
            match tokio::time::timeout(IO_TIMEOUT, self.stream.read_buf(&mut self.rd)).await {
                Ok(Ok(0)) => return Err("closed by the server".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Err(_) => return Err("timed out waiting for the server".into()),
            }
        }
    }

    /// Sends `messages` copies of `frame` (a masked text frame of `payload`), at most
    /// `window` in flight: a batch is written at once, then its echoes are awaited.
    /// Returns the number of echoes received, each checked against `payload`.
    pub async fn echo(&mut self, messages: usize, window: usize, frame: &[u8], payload: &[u8]) -> Result<usize, String> {
        let window = window.max(1);
        let batch = frame.repeat(window);
        let mut echoed = 0;
        while echoed < messages {
            let k = window.min(messages - echoed);
            self.stream.write_all(&batch[..k * frame.len()]).await.map_err(|e| format!("write: {e}"))?;
            self.stream.flush().await.map_err(|e| format!("flush: {e}"))?;
            let mut got = 0;
            while got < k {
                let (opcode, header, len) = self.next_frame().await?;
                let body = &self.rd[header..header + len];
                match opcode {
                    0x1 | 0x2 if body == payload => got += 1,
                    0x1 | 0x2 => return Err(format!("echo of {len} bytes differs from the {} bytes sent", payload.len())),
                    0x9 => {
                        let pong = masked_frame(0xA, body);
                        self.stream.write_all(&pong).await.map_err(|e| format!("pong: {e}"))?;
                    }
                    0xA => {}
                    0x8 => {
                        let code = body.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        return Err(format!("the server closed the session (code {code:?})"));
                    }
                    op => return Err(format!("unexpected opcode {op}")),
                }
                self.rd.advance(header + len);
            }
            echoed += k;
        }
        Ok(echoed)
    }

    /// Waits for the server's close frame (answering Pings) and returns its code.
    pub async fn wait_close(&mut self) -> Result<u16, String> {
        loop {
            let (opcode, header, len) = self.next_frame().await?;
            let body = self.rd[header..header + len].to_vec();
            self.rd.advance(header + len);
            match opcode {
                0x8 => return Ok(body.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))),
                0x9 => {
                    let pong = masked_frame(0xA, &body);
                    self.stream.write_all(&pong).await.map_err(|e| format!("pong: {e}"))?;
                }
                _ => {}
            }
        }
    }

    /// The close handshake (1000), then waits for the server to end the connection, so
    /// that the server has done its teardown work when this returns.
    pub async fn close(mut self) -> Result<(), String> {
        let frame = masked_frame(0x8, &1000u16.to_be_bytes());
        self.stream.write_all(&frame).await.map_err(|e| format!("close: {e}"))?;
        self.stream.flush().await.map_err(|e| format!("close: {e}"))?;
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut scratch)).await {
                // The end: `close_notify` (Ok(0)) or the TCP end without it.
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
                Err(_) => return Err("the server did not end the connection after the close handshake".into()),
            }
        }
    }

    /// Drops the client's TLS state and keeps only the socket: an idle session that costs
    /// this process almost nothing. The socket is reset (no TIME_WAIT) when dropped.
    pub fn into_idle(self) -> TcpStream {
        let tcp = self.stream.into_tcp();
        let _ = tcp.set_zero_linger();
        tcp
    }
}

mod load;
mod paced;
mod stream;
pub use load::*;
pub use stream::*;
