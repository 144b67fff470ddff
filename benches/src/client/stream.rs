//! The client's transport: TLS (the product path, `wss://`) or plain TCP (`ws://`: a node
//! with TLS offloaded, or a plain upstream), and the plain client that uses it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[allow(unused_imports)]
use super::*;

/// One client connection's byte stream.
pub enum Stream {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Stream {
    /// The socket, without the client's TLS state.
    pub fn into_tcp(self) -> TcpStream {
        match self {
            Stream::Tls(s) => s.into_inner().0,
            Stream::Plain(s) => s,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Client {
    /// A plain `ws://` client: the same upgrade request (Origin, bearer token) over TCP
    /// without TLS. `forwarded`, when not empty, are `X-Forwarded-For` values used in
    /// turn, as a TLS-terminating load balancer in front of a node would send them.
    pub fn plain(sources: u8, authorizations: Vec<String>, forwarded: Vec<String>) -> anyhow::Result<Arc<Client>> {
        let sources = (0..sources.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();
        anyhow::ensure!(!authorizations.is_empty(), "no token");
        Ok(Arc::new(Client {
            connector: None,
            server_name: ServerName::try_from(SERVER_NAME)?.to_owned(),
            sources,
            authorizations,
            forwarded,
            next: AtomicUsize::new(0),
        }))
    }
}
