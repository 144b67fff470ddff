//! The HTTP/1.1 request head, read by hand: bounded (8 KiB, 64 headers), under the
//! handshake deadline, with exact control over every refusal we write. After a 101 the
//! same stream (with any bytes read past the head) goes to the WebSocket codec.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Maximum request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 64;

/// The client's transport: TLS, or plain behind a TLS-offloading proxy. Bytes read
/// ahead of the WebSocket codec are replayed first.
pub struct ClientStream {
    inner: Inner,
    prefix: BytesMut,
}

enum Inner {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl ClientStream {
    pub fn tls(s: TlsStream<TcpStream>) -> Self {
        ClientStream { inner: Inner::Tls(Box::new(s)), prefix: BytesMut::new() }
    }
    pub fn plain(s: TcpStream) -> Self {
        ClientStream { inner: Inner::Plain(s), prefix: BytesMut::new() }
    }
    /// Puts bytes read past the head back in front of the stream.
    pub fn unread(&mut self, rest: BytesMut) {
        debug_assert!(self.prefix.is_empty());
        // An empty remainder still points into the head buffer: keeping it would pin that
        // allocation for the session's whole life.
        if !rest.is_empty() {
            self.prefix = rest;
        }
    }
}

/// Serves bytes read ahead of a codec (`prefix`) before the stream itself; returns whether
/// it did. An emptied prefix gives its buffer back.
pub(crate) fn read_prefix(prefix: &mut BytesMut, buf: &mut ReadBuf<'_>) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix[..n]);
    prefix.advance(n);
    if prefix.is_empty() {
        *prefix = BytesMut::new();
    }
    true
}

impl Drop for ClientStream {
    /// Ends TLS properly: queue `close_notify` and write it without blocking (a socket
    /// that has room for it, which is the normal case after a close handshake). Without
    /// it, clients see an unexpected EOF instead of a clean end.
    fn drop(&mut self) {
        if let Inner::Tls(s) = &mut self.inner {
            let (tcp, conn) = s.get_mut();
            conn.send_close_notify();
            let mut w = TryWrite(tcp);
            while conn.wants_write() {
                if conn.write_tls(&mut w).is_err() {
                    break;
                }
            }
        }
    }
}

/// A `std::io::Write` over a non-blocking tokio socket (never waits).
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if read_prefix(&mut self.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        match &mut self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Head over 8 KiB or over 64 headers: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
    /// The peer closed or failed before a full head.
    Closed,
}

/// Reads until the end of the head. Returns the buffer and the head's length; bytes past
/// the head stay in the buffer.
pub async fn read_head(stream: &mut ClientStream) -> Result<(BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanned: usize = 0;
    loop {
        if buf.len() >= MAX_HEAD + 4 {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024.min(MAX_HEAD + 4 - buf.len()).max(512));
        }
        let n = stream.read_buf(&mut buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let from = scanned.saturating_sub(3);
        if let Some(pos) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + pos + 4;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            return Ok((buf, end));
        }
        scanned = buf.len();
    }
}

/// A parsed request head borrowing from the read buffer.
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub minor_version: u8,
    pub headers: &'a [httparse::Header<'a>],
}

/// Parses the head `read_head` found (everything up to and including its `\r\n\r\n`).
/// httparse also ends a head at a bare `\n\n`: a head it parses short of the whole, or
/// with any bare LF in it, is malformed, so that no header after a bare LF is dropped
/// unseen and no part of the head is replayed as WebSocket bytes.
pub fn parse_head<'a>(bytes: &'a [u8], storage: &'a mut [httparse::Header<'a>; MAX_HEADERS]) -> Result<Head<'a>, HeadError> {
    if has_bare_lf(bytes) {
        return Err(HeadError::Malformed);
    }
    let mut req = httparse::Request::new(storage);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::Malformed),
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    }
    let method = req.method.ok_or(HeadError::Malformed)?;
    let target = req.path.ok_or(HeadError::Malformed)?;
    let minor_version = req.version.ok_or(HeadError::Malformed)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Ok(Head { method, path, query, minor_version, headers: req.headers })
}

/// Whether a `\n` appears that is not the end of a `\r\n`.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

impl<'a> Head<'a> {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count()
    }

    /// Every value of a header (repeated headers in order).
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).filter_map(|h| std::str::from_utf8(h.value).ok())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn has_token(&self, name: &'a str, token: &str) -> bool {
        self.all(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a complete response with `Connection: close` and flushes it.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status == 204 {
        // No content: no Content-Type or Content-Length (RFC 9110 section 8.6).
        out.extend_from_slice(b"Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    } else {
        out.extend_from_slice(
            format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads a request body of exactly `len` bytes (already bounded by the caller), using
/// bytes already buffered after the head first.
pub async fn read_body(stream: &mut ClientStream, mut already: BytesMut, len: usize) -> io::Result<BytesMut> {
    while already.len() < len {
        let n = stream.read_buf(&mut already).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    already.truncate(len);
    Ok(already)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn parses_head_and_query() {
        let raw = b"GET /echo?x=1&access_token=abc HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_head(raw, &mut storage).expect("head");
        assert_eq!((h.method, h.path, h.query, h.minor_version), ("GET", "/echo", Some("x=1&access_token=abc"), 1));
        assert!(h.has_token("connection", "upgrade"));
        assert_eq!(h.all("x-a").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(h.count("X-A"), 2);
    }

    #[test]
    fn bare_lf_heads_are_malformed() {
        for raw in [
            &b"GET /echo HTTP/1.1\r\nHost: x\n\nOrigin: https://evil\r\n\r\n"[..],
            b"GET /echo HTTP/1.1\nHost: x\r\n\r\n",
            b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: 1\n\r\n",
            b"\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert_eq!(parse_head(raw, &mut storage).err(), Some(HeadError::Malformed), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_head_parsed_short_of_the_whole_is_malformed() {
        // What httparse would stop at, were the bare LF check not there: bytes after the
        // end it finds.
        let raw = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nX: y\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(parse_head(raw, &mut storage).err(), Some(HeadError::Malformed));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            raw.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(parse_head(&raw, &mut storage).err(), Some(HeadError::TooLarge));
    }
}
