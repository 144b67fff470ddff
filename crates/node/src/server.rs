//! The WSS listeners: accept connections and hand each to the gate (`gate.rs`) in a task
//! of its own. Accepted sockets get TCP keepalive and `TCP_USER_TIMEOUT`, so a dead peer
//! is found even when nothing is being sent or when sent data is never acknowledged. On
//! Linux they are set once on the listening socket, which accepted sockets inherit
//! (six system calls fewer per handshake); elsewhere on each accepted socket.
//!
//! The data path runs thread per core: each data thread has a single-threaded runtime and
//! a listener of its own on the WSS port (`SO_REUSEPORT`: the kernel spreads connections
//! over them). A connection, its handshake and its session stay on the thread that
//! accepted it, so a message crosses no thread and wakes no other worker; the control
//! plane, etcd and telemetry keep the process's multi-threaded runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::state::NodeState;

/// Idle time before the first keepalive probe, the probe interval, and the probes sent.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(10), 3);
/// How long sent data may stay unacknowledged before the kernel drops the connection.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener`, which comes from [`bind_listeners`] (on Linux it carries the options
/// its accepted sockets inherit).
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
        if !INHERITED {
            socket_options(socket2::SockRef::from(&tcp));
        }
        tokio::spawn(crate::gate::gate(state.clone(), tcp, peer, tls.clone()));
    }
}

/// Binds the WSS port once per data thread. A plain bind comes first, so that a port in
/// use (by another node, by any program) is refused as before rather than shared; the
/// listeners then share the port it resolved (port 0 included) with `SO_REUSEPORT`.
pub fn bind_listeners(addr: SocketAddr, threads: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let probe = std::net::TcpListener::bind(addr)?;
    if threads <= 1 {
        probe.set_nonblocking(true)?;
        if INHERITED {
            socket_options(socket2::SockRef::from(&probe));
        }
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr()?;
    drop(probe);
    (0..threads).map(|_| shared_listener(addr)).collect()
}

fn shared_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    if INHERITED {
        socket_options(socket2::SockRef::from(&s));
    }
    Ok(s.into())
}

/// A data thread's job: serves `listener` until the node stops accepting (then sends
/// `done`), and keeps the thread's runtime until the node has no open connection left,
/// since the sessions it accepted live on it.
pub async fn data_thread(state: Arc<NodeState>, listener: std::net::TcpListener, tls: Option<TlsAcceptor>, done: oneshot::Sender<()>) {
    match TcpListener::from_std(listener) {
        Ok(l) => serve(state.clone(), l, tls, state.stop_tx.subscribe()).await,
        Err(e) => tracing::error!(event = "listener_failed", error = %e, "a data thread cannot serve its listener"),
    }
    let _ = done.send(());
    state.no_connection_left().await;
}

/// Runs `job` on a thread of its own with a current-thread runtime. When the system
/// refuses the thread or its runtime, `job` runs on the caller's runtime instead.
pub fn spawn_data_thread<F: Future<Output = ()> + Send + 'static>(i: usize, job: F) {
    let shared = tokio::runtime::Handle::current();
    // The job is handed over once the thread exists: a refused spawn leaves it here.
    let (tx, rx) = std::sync::mpsc::sync_channel::<F>(1);
    let spawned = std::thread::Builder::new().name(format!("palisade-data-{i}")).spawn(move || {
        let Ok(job) = rx.recv() else { return };
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(job),
            Err(e) => {
                tracing::warn!(event = "data_thread_failed", error = %e, "serving this listener on the shared runtime");
                shared.spawn(job);
            }
        }
    });
    match spawned {
        Ok(_) => {
            let _ = tx.send(job);
        }
        Err(e) => {
            tracing::warn!(event = "data_thread_failed", error = %e, "serving this listener on the shared runtime");
            tokio::spawn(job);
        }
    }
}

/// Whether accepted sockets inherit these options from the listening socket (Linux copies
/// `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT` at accept; tested below).
const INHERITED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// No Nagle delay; keepalive and `TCP_USER_TIMEOUT` to find dead peers.
fn socket_options(sock: socket2::SockRef<'_>) {
    let _ = sock.set_tcp_nodelay(true);
    let (time, interval, retries) = KEEPALIVE;
    let _ = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(retries));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listeners_share_one_port_and_a_port_in_use_is_refused_not_shared() {
        let ls = super::bind_listeners(([127, 0, 0, 1], 0).into(), 3).expect("bind");
        assert_eq!(ls.len(), 3);
        let addr = ls[0].local_addr().expect("addr");
        assert!(addr.port() != 0 && ls.iter().all(|l| l.local_addr().ok() == Some(addr)));
        // Another node (or any program) on the same port: refused, as with one listener.
        let again = super::bind_listeners(addr, 3).expect_err("in use");
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(super::bind_listeners(addr, 1).expect_err("in use").kind(), std::io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = plain.local_addr().expect("addr");
        assert_eq!(super::bind_listeners(taken, 2).expect_err("in use").kind(), std::io::ErrorKind::AddrInUse);
        // Every listener of the group gets connections (the kernel hashes the 4-tuple).
        let mut served = [0usize; 3];
        let conns: Vec<_> = (0..60).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while served.iter().sum::<usize>() < conns.len() && std::time::Instant::now() < deadline {
            for (i, l) in ls.iter().enumerate() {
                while l.accept().is_ok() {
                    served[i] += 1;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(served.iter().sum::<usize>(), conns.len(), "{served:?}");
        assert!(served.iter().all(|&n| n > 0), "60 connections over 3 listeners: {served:?}");
    }

    #[tokio::test]
    async fn accepted_sockets_get_keepalive_and_a_user_timeout() {
        for threads in [1, 2] {
            let ls = super::bind_listeners(([127, 0, 0, 1], 0).into(), threads).expect("bind");
            let addr = ls[0].local_addr().expect("addr");
            let conns: Vec<_> = (0..8).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
            let mut checked = 0;
            for l in ls {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                // Whatever this listener got of the connections (the kernel spreads them).
                while let Ok(Ok((s, _))) = tokio::time::timeout(std::time::Duration::from_millis(200), l.accept()).await {
                    if !super::INHERITED {
                        super::socket_options(socket2::SockRef::from(&s));
                    }
                    has_the_options(&s);
                    checked += 1;
                }
            }
            assert_eq!(checked, conns.len(), "every connection accepted and checked ({threads} listeners)");
        }
    }

    fn has_the_options(s: &tokio::net::TcpStream) {
        let sock = socket2::SockRef::from(s);
        assert!(sock.keepalive().expect("keepalive"));
        assert_eq!(sock.tcp_keepalive_time().expect("time"), super::KEEPALIVE.0);
        assert_eq!(sock.tcp_keepalive_interval().expect("interval"), super::KEEPALIVE.1);
        assert_eq!(sock.tcp_keepalive_retries().expect("retries"), super::KEEPALIVE.2);
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().expect("user timeout"), Some(super::USER_TIMEOUT));
        assert!(s.nodelay().expect("nodelay"));
    }
}
