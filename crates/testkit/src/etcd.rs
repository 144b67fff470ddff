//! A real etcd (Debian `etcd-server`, 3.4) on free loopback ports with a temporary data
//! directory, for cluster tests: registration, the policy watch, tickets, outages.
//!
//! `stop` kills the process and keeps the data; `start` brings it back on the same ports
//! with the same data, so an outage test sees what a real etcd restart looks like.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use etcd_client;

pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// The etcd binary: `PALISADE_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on the PATH.
fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_ETCD_BIN") {
        return p.into();
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    if debian.exists() { debian } else { PathBuf::from("etcd") }
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn spawn() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut etcd = Etcd { dir, client_port: free_port(), peer_port: free_port(), child: None };
        etcd.start().await;
        etcd
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the process on the same ports and data directory, and waits until it
    /// serves requests (at most 20 s).
    pub async fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).expect("etcd log file");
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
            .stderr(Stdio::from(log));
        if cfg!(target_arch = "aarch64") {
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e} (install it with `apt-get install -y etcd-server etcd-client`)", etcd_bin().display())
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy().await {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd did not become healthy within 20 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open and nothing is answered, as
    /// with a stalled etcd (a slow election). [`Etcd::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd is running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().expect("kill").success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Kills the process (SIGKILL) and waits for it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One status request with a fresh client, bounded to 1 s.
    async fn healthy(&self) -> bool {
        let probe = async {
            let mut c = etcd_client::Client::connect([self.endpoint()], None).await.ok()?;
            c.status().await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Some(_)))
    }

    /// A fresh client (a client made before a `stop` may not recover: make a new one).
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect([self.endpoint()], Some(opts)).await.expect("etcd client")
    }

    /// The value, lease and mod revision of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Option<(Vec<u8>, i64, i64)> {
        let mut c = self.client().await;
        let r = tokio::time::timeout(Duration::from_secs(5), c.get(key, None)).await.expect("etcd get in time").expect("etcd get");
        r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease(), kv.mod_revision()))
    }

    /// Puts `value` at `key` and returns the new mod revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> i64 {
        let mut c = self.client().await;
        let r = tokio::time::timeout(Duration::from_secs(5), c.put(key, value.into(), None))
            .await
            .expect("etcd put in time")
            .expect("etcd put");
        r.header().map(|h| h.revision()).expect("response header")
    }

    /// Keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut c = self.client().await;
        let opts = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        let r = tokio::time::timeout(Duration::from_secs(5), c.get(prefix, Some(opts))).await.expect("etcd get in time").expect("etcd get");
        r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
    }

    /// What etcd wrote to its log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
