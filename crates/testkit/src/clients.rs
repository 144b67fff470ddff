//! Clients: tokio-tungstenite WebSockets, raw HTTP/1.1 over TLS, gRPC channels, and
//! `eventually` for waiting on events with a deadline.

#[allow(unused_imports)]
use super::*;

pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut().append(name, http::HeaderValue::from_str(v).expect("header value"));
    }
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector))
        .await
        .map_err(|_| tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into()))?
}

/// The refusal of a handshake: status, the `error` code of the JSON body, headers.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub code: String,
    pub headers: http::HeaderMap,
}

/// Expects the handshake to be refused and returns what came back.
pub fn refused(r: Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error>) -> Refused {
    match r {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&body)));
            Refused {
                status: resp.status().as_u16(),
                code: v["error"].as_str().unwrap_or_default().to_owned(),
                headers: resp.headers().clone(),
            }
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok((_, resp)) => panic!("expected a refusal, got {}", resp.status()),
    }
}

#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body).ok().and_then(|v| v["error"].as_str().map(str::to_owned)).unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

pub async fn raw_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &[u8], local: Option<std::net::IpAddr>) -> RawResponse {
    let tcp = connect_from(addr, local).await;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("tls");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    parse_raw(&out)
}

pub fn parse_raw(out: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    RawResponse { status, head: head.to_owned(), body: body.to_owned() }
}

/// A TCP connection from a chosen loopback source address (127.0.0.x).
pub async fn connect_from(addr: SocketAddr, local: Option<std::net::IpAddr>) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    sock.connect(addr).await.expect("connect")
}

/// A WebSocket upgrade request head for raw tests.
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Reads the next data message (text or binary), skipping pings and pongs.
pub async fn next_data(ws: &mut Ws) -> Option<Message> {
    use futures_util::StreamExt as _;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.ok()?? {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

/// Waits for the close frame and returns its code (None if the socket ended without one).
pub async fn close_code(ws: &mut Ws, within: Duration) -> Option<u16> {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A gRPC channel over TLS to `addr` (server name `localhost`), trusting `ca_pem`.
pub async fn grpc_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Polls `check` every 20 ms until it yields a value, or panics naming `what` once
/// `within` has passed: tests wait on events, with a deadline, never on bare sleeps.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(within: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// A raw WebSocket client over TLS, as an attacker would write one: any frame bytes
// (masked or not, reserved bits, unknown opcodes, broken control frames), a choice of
// when (and whether) to read, and every read under a deadline.
