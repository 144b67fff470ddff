//! A real browser for tests: headless Chromium driven over the DevTools protocol (CDP),
//! and a small HTTP/1.1 server for the test pages, so that each page runs on an origin of
//! its own (`http://127.0.0.1:PORT`, `http://localhost:PORT`). A page writes what it saw
//! into the DOM; the test reads it back with `Runtime.evaluate`. Pages live in real time
//! (no `--virtual-time-budget`), so timers, fetches and WebSockets behave as in a user's
//! browser.

use std::sync::Mutex;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};

#[allow(unused_imports)]
use super::*;

/// The Chromium binary: `PALISADE_CHROMIUM`, else `chromium` or `chromium-browser` on the
/// PATH. Missing, it panics: scripts/install-deps.sh installs it, and tests never skip.
pub fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("chromium is not installed: run scripts/install-deps.sh (as root), or set PALISADE_CHROMIUM")
}

/// Headless Chromium with a throw-away profile, and the DevTools connection to it.
pub struct Browser {
    child: tokio::process::Child,
    cdp: Ws,
    next_id: u64,
    output: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

/// A tab, attached over CDP (its flat-mode session id).
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts Chromium (certificate errors ignored: the node's WSS certificate is from the
    /// test CA) and connects to its DevTools endpoint.
    pub async fn launch() -> Browser {
        let exe = chromium_path();
        let profile = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run scripts/install-deps.sh)", exe.display()));
        let output = capture_lines(&mut child);
        // Chromium writes its port and browser target path once DevTools listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let endpoint = eventually(Duration::from_secs(30), "Chromium's DevToolsActivePort", || {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            async move {
                let mut lines = text.lines();
                let port = lines.next().and_then(|p| p.trim().parse::<u16>().ok())?;
                Some(format!("ws://127.0.0.1:{port}{}", lines.next()?.trim()))
            }
        })
        .await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("chromium exited ({status}): {:?}", output.lock().unwrap_or_else(|p| p.into_inner()));
        }
        let (cdp, _) = ws_connect(&endpoint, &[], None).await.expect("DevTools WebSocket");
        Browser { child, cdp, next_id: 0, output, _profile: profile }
    }

    /// One CDP command (to the browser, or to a page's session); its `result`.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let r = self.try_call(session, method, params).await;
        r.unwrap_or_else(|e| panic!("CDP {method} failed: {e}"))
    }

    /// One CDP command; its `result`, or the `error` the browser answered.
    pub async fn try_call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.cdp.send(Message::Text(msg.to_string().into())).await.expect("CDP send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let m = match tokio::time::timeout_at(deadline, self.cdp.next()).await {
                Ok(Some(Ok(m))) => m,
                other => panic!("CDP {method}: no answer ({other:?}); chromium said {:?}", self.output()),
            };
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
            if v["id"].as_u64() != Some(id) {
                continue; // an event: nothing here waits on events
            }
            return match v.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(v["result"].clone()),
            };
        }
    }

    /// Opens `url` in a new tab and attaches to it.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).await;
        Page { session: attached["sessionId"].as_str().expect("sessionId").to_owned() }
    }

    /// Evaluates `expression` in the page; its value (JSON), or null while the page has no
    /// context to evaluate in (it is still navigating).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true});
        match self.try_call(Some(&page.session), "Runtime.evaluate", params).await {
            Ok(r) => r["result"]["value"].clone(),
            Err(_) => Value::Null,
        }
    }

    /// The JSON lines the page wrote into its `<pre id="log">`.
    pub async fn log(&mut self, page: &Page) -> Vec<Value> {
        let text = self.eval(page, "(document.getElementById('log') || {}).textContent || ''").await;
        text.as_str().unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Polls the page's log until `done` holds, or panics after `within` with what it saw.
    pub async fn wait_log(&mut self, page: &Page, within: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = self.log(page).await;
            if done(&log) {
                return log;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}; the page logged {log:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Chromium printed (for failure messages).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes the browser and waits for it to exit (killed if it does not within 10 s).
    pub async fn close(mut self) {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": "Browser.close"}).to_string();
        let _ = self.cdp.send(Message::Text(msg.into())).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// What a page server answers for a request target (path and query): content type and
/// body, or `None` for 404.
pub type PageHandler = dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync;

/// An HTTP/1.1 server of test pages on a free 127.0.0.1 port (GET only, one request per
/// connection). Its origin is `http://127.0.0.1:PORT`; `http://localhost:PORT` reaches the
/// same server from another origin.
pub struct PageServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start(handler: Arc<PageHandler>) -> PageServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind page server");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_page(tcp, handler.clone()));
            }
        });
        PageServer { addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// `http://localhost:PORT`: the same server, another origin.
    pub fn localhost_origin(&self) -> String {
        format!("http://localhost:{}", self.addr.port())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_page(mut tcp: TcpStream, handler: Arc<PageHandler>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_read = tokio::time::timeout(Duration::from_secs(10), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    });
    if !head_read.await.unwrap_or(false) {
        return;
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let answer = match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => handler(target),
        _ => None,
    };
    let (status, ctype, body) = match answer {
        Some((ctype, body)) => ("200 OK", ctype, body),
        None => ("404 Not Found", "text/plain", "not found".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
