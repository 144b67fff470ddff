//! Test-only helpers: a test PKI, signing keys of every algorithm family, nodes on free
//! loopback ports, and real clients (rustls + tokio-tungstenite, and a raw HTTP/1.1
//! client over TLS for malformed requests no WebSocket client would send), and headless
//! Chromium over the DevTools protocol with a server of test pages (`browser.rs`).

pub mod etcd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use palisade_node::config::{Listen, NodeConfig, RouteConfig, TlsConfig, TlsMode};
use palisade_node::{Node, NodeHandle};
use palisade_plane::pki;
pub use palisade_plane::roles::Role;
use palisade_policy::Policy;
use palisade_policy::mint::SigningKey;
use palisade_policy::model::KeyDoc;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

pub use tokio_tungstenite::tungstenite::Message;
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

mod capture;
pub use capture::*;
mod keys;
pub use keys::*;
mod certs;
pub use certs::*;
mod node;
pub use node::*;
mod clients;
pub use clients::*;
mod upstream;
pub use upstream::*;
mod raw;
pub use raw::*;
mod browser;
pub use browser::*;
