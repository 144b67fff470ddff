//! A recording upstream WebSocket server (plain or TLS).

#[allow(unused_imports)]
use super::*;

/// What an upstream test server received in a handshake.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The data messages of the connection, in their order (text as its bytes).
    pub messages: Vec<Vec<u8>>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A real WebSocket server (tokio-tungstenite) standing in for the application. It
/// records every handshake and every data message, and behaves by the messages it gets:
/// - `close:<code>`: closes with that code;
/// - `drop`: drops the TCP connection without a close frame;
/// - `masked`: sends a masked text frame, which a server must never send (RFC 6455 5.1);
/// - `badutf8`: sends a text frame that is not UTF-8 (`ff fe`), after a good one;
/// - `flood:<n>`: sends n messages of 16 KiB as fast as it can;
/// - anything else: echoed back prefixed with `up:` (binary echoed as is).
///
/// It selects the first subprotocol offered, if any.
pub struct UpstreamServer {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpstreamServer {
    pub async fn start() -> UpstreamServer {
        Self::start_inner(None).await
    }

    /// The same server over TLS (`wss://localhost:PORT`), with a certificate from `pki`.
    pub async fn start_tls(pki: &Pki) -> UpstreamServer {
        init();
        let leaf = pki::new_leaf(&pki.ca, TEST_CA, "upstream", &["localhost"], true, false).expect("leaf");
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("pem");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("cert");
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> UpstreamServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_upstream(tcp, seen).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve_upstream(s, seen).await;
                            }
                        }
                    }
                });
            }
        });
        UpstreamServer { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    /// The URL of a server started with `start_tls`.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/socket", self.addr.port())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }
}

/// One upstream connection: record the handshake, then behave by the messages.
async fn serve_upstream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(tcp: S, seen: Arc<std::sync::Mutex<Vec<Recorded>>>) {
    let mut index = None;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let cb = |req: &tungstenite::handshake::server::Request, mut resp: tungstenite::handshake::server::Response| {
        let rec = Recorded {
            path: req.uri().to_string(),
            headers: req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
            messages: Vec::new(),
        };
        if let Some(first) = rec.header("sec-websocket-protocol").and_then(|p| p.split(',').next()).map(|s| s.trim().to_owned())
            && let Ok(v) = http::HeaderValue::from_str(&first)
        {
            resp.headers_mut().insert("sec-websocket-protocol", v);
        }
        let mut seen = seen.lock().expect("lock");
        index = Some(seen.len());
        seen.push(rec);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else { return };
    let Some(index) = index else { return };
    use futures_util::{SinkExt as _, StreamExt as _};
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(_) | Message::Binary(_) = &msg {
            seen.lock().expect("lock")[index].messages.push(msg.clone().into_data().to_vec());
        }
        match msg {
            Message::Text(t) => {
                let t = t.as_str();
                if let Some(code) = t.strip_prefix("close:").and_then(|c| c.parse::<u16>().ok()) {
                    let frame = tungstenite::protocol::CloseFrame { code: code.into(), reason: "upstream says bye".into() };
                    let _ = ws.close(Some(frame)).await;
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                } else if t == "drop" {
                    return; // drops the socket: no close frame
                } else if t == "masked" || t == "badutf8" {
                    use tokio::io::AsyncWriteExt as _;
                    let (mask, payload) = ([1u8, 2, 3, 4], *b"hi");
                    let masked = [0x81, 0x80 | 2, mask[0], mask[1], mask[2], mask[3], payload[0] ^ mask[0], payload[1] ^ mask[1]];
                    let bad: &[u8] = &[0x81, 2, b'o', b'k', 0x81, 2, 0xff, 0xfe];
                    let raw = ws.get_mut();
                    let frame = if t == "masked" { &masked[..] } else { bad };
                    if raw.write_all(frame).await.is_err() || raw.flush().await.is_err() {
                        return;
                    }
                } else if let Some(n) = t.strip_prefix("flood:").and_then(|n| n.parse::<usize>().ok()) {
                    let chunk = "f".repeat(16 * 1024);
                    for _ in 0..n {
                        if ws.send(Message::Text(chunk.clone().into())).await.is_err() {
                            return;
                        }
                    }
                } else if ws.send(Message::Text(format!("up:{t}").into())).await.is_err() {
                    return;
                }
            }
            Message::Binary(b) if ws.send(Message::Binary(b.clone())).await.is_err() => return,
            Message::Close(_) => {
                let _ = ws.close(None).await;
                return;
            }
            _ => {}
        }
    }
}
