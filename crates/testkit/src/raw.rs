//! A raw WebSocket-over-TLS client: arbitrary frame bytes, masked or not, and reads
//! with deadlines that report a close code, EOF, a reset or a timeout.

#[allow(unused_imports)]
use super::*;

/// A client TLS stream to a node.
pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
/// The FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

/// The masking key of [`masked`] frames.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame: first byte `b0` as given (FIN, RSV bits, opcode), the payload length in
/// its shortest form, masked with `mask` when there is one (a client must mask).
pub fn ws_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A well-formed client frame: FIN, `opcode`, masked.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    ws_frame(FIN | opcode, payload, Some(MASK))
}

/// A close frame payload: the code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame from the node, as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1-3, as the top bits of the first byte (`0x70` mask).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A close frame's code (1005 when it has none); `None` for other frames.
    pub fn close_code(&self) -> Option<u16> {
        match (self.opcode, self.payload.as_slice()) {
            (OP_CLOSE, [a, b, ..]) => Some(u16::from_be_bytes([*a, *b])),
            (OP_CLOSE, _) => Some(1005),
            _ => None,
        }
    }
}

/// How the stream ended, or that it had not by the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// A clean end (TLS `close_notify`, then FIN).
    Eof,
    /// A reset, or TCP closed under TLS without `close_notify`, or a broken frame.
    Error(std::io::ErrorKind),
    TimedOut,
}

impl RawEnd {
    /// The node closed the connection (EOF or reset), as opposed to a deadline passing.
    pub fn is_closed(self) -> bool {
        self != RawEnd::TimedOut
    }
}

/// The reading half of a [`RawWs`].
pub struct RawReader {
    rd: tokio::io::ReadHalf<ClientTls>,
    buf: Vec<u8>,
}

/// The writing half of a [`RawWs`].
pub struct RawWriter {
    wr: tokio::io::WriteHalf<ClientTls>,
}

/// A raw WebSocket connection after its 101.
pub struct RawWs {
    pub reader: RawReader,
    pub writer: RawWriter,
    /// The 101 response head.
    pub response: RawResponse,
}

/// Parses one server frame at the start of `buf`: the frame and its length on the wire.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let masked = b1 & 0x80 != 0;
    let (len, mut off) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(off..off + 4)?.try_into().ok()?;
        off += 4;
        Some(m)
    } else {
        None
    };
    let end = off.checked_add(usize::try_from(len).ok()?)?;
    let mut payload = buf.get(off..end)?.to_vec();
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Some((RawFrame { fin: b0 & 0x80 != 0, rsv: b0 & 0x70, opcode: b0 & 0x0F, masked, payload }, end))
}

impl RawReader {
    /// Reads more bytes by `deadline`; `Err` says how the stream ended.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), RawEnd> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
            Err(_) => Err(RawEnd::TimedOut),
            Ok(Ok(0)) => Err(RawEnd::Eof),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(RawEnd::Error(e.kind())),
        }
    }

    /// The next frame from the node, within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((f, n)) = parse_server_frame(&self.buf) {
                self.buf.drain(..n);
                return Ok(f);
            }
            self.fill(deadline).await?;
        }
    }

    /// Reads (and drops) frames until the node's close frame; returns its code (1005 when
    /// it has none), or how the stream ended first.
    pub async fn close_code(&mut self, within: Duration) -> Result<u16, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(code) = self.next_frame(left).await?.close_code() {
                return Ok(code);
            }
        }
    }

    /// The next data frame's payload (Pings, Pongs skipped), within `within`.
    pub async fn next_data(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await?;
            if !matches!(f.opcode, OP_PING | OP_PONG) {
                return Ok(f);
            }
        }
    }

    /// Reads and drops everything until the stream ends: how it ended (or `TimedOut`).
    pub async fn end(&mut self, within: Duration) -> RawEnd {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.buf.clear();
            if let Err(end) = self.fill(deadline).await {
                return end;
            }
        }
    }
}

impl RawWriter {
    /// Writes `bytes` (any frames, well-formed or not) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }
}

impl RawWs {
    /// Connects over TLS to `addr` and sends the upgrade `request` (a whole head). The
    /// client's receive buffer is set to `recv_buffer` bytes when given (a small one
    /// makes a non-reading client fill up quickly). A response other than 101 comes back
    /// as `Err`, read to its end.
    pub async fn open(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        request: &[u8],
        local: Option<std::net::IpAddr>,
        recv_buffer: Option<u32>,
    ) -> Result<RawWs, RawResponse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
        }
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let tcp = tokio::time::timeout_at(deadline, sock.connect(addr)).await.expect("connect in time").expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut s = tokio::time::timeout_at(deadline, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .expect("TLS in time")
            .expect("tls");
        s.write_all(request).await.expect("write head");
        s.flush().await.expect("flush");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Err(parse_raw(&buf)),
            }
        };
        let response = parse_raw(&buf[..head_end]);
        if response.status != 101 {
            let _ = tokio::time::timeout_at(deadline, s.read_to_end(&mut buf)).await;
            return Err(parse_raw(&buf));
        }
        let (rd, wr) = tokio::io::split(s);
        Ok(RawWs { reader: RawReader { rd, buf: buf.split_off(head_end) }, writer: RawWriter { wr }, response })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.send(bytes).await
    }

    pub async fn next_frame(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        self.reader.next_frame(within).await
    }

    pub async fn next_data(&mut self, within: Duration) -> Result<RawFrame, RawEnd> {
        self.reader.next_data(within).await
    }

    pub async fn close_code(&mut self, within: Duration) -> Result<u16, RawEnd> {
        self.reader.close_code(within).await
    }

    pub async fn end(&mut self, within: Duration) -> RawEnd {
        self.reader.end(within).await
    }
}

impl TestNode {
    /// A raw WebSocket over TLS to this node (see [`RawWs::open`]); panics unless 101.
    pub async fn raw_ws(&self, request: &[u8]) -> RawWs {
        match RawWs::open(self.addr, self.tls.clone(), request, None, None).await {
            Ok(ws) => ws,
            Err(r) => panic!("expected 101, got {} {:?}", r.status, r.body),
        }
    }
}
