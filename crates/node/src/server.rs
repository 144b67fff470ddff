//! The WSS listener: accepts connections and hands each to the gate (`gate.rs`) in a
//! task of its own. Accepted sockets get TCP keepalive and `TCP_USER_TIMEOUT`, so a dead
//! peer is found even when nothing is being sent or when sent data is never acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::state::NodeState;

/// Idle time before the first keepalive probe, the probe interval, and the probes sent.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(10), 3);
/// How long sent data may stay unacknowledged before the kernel drops the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(state: Arc<NodeState>, listener: TcpListener, tls: Option<TlsAcceptor>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *stop.borrow() {
            break;
        }
        socket_options(&tcp);
        tokio::spawn(crate::gate::gate(state.clone(), tcp, peer, tls.clone()));
    }
}

/// No Nagle delay; keepalive and `TCP_USER_TIMEOUT` to find dead peers.
pub fn socket_options(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let (time, interval, retries) = KEEPALIVE;
    let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(retries));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_a_user_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        super::socket_options(&s);
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().expect("keepalive"));
        assert_eq!(sock.tcp_keepalive_time().expect("time"), super::KEEPALIVE.0);
        assert_eq!(sock.tcp_keepalive_interval().expect("interval"), super::KEEPALIVE.1);
        assert_eq!(sock.tcp_keepalive_retries().expect("retries"), super::KEEPALIVE.2);
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().expect("user timeout"), Some(super::USER_TIMEOUT));
        assert!(s.nodelay().expect("nodelay"));
    }
}
