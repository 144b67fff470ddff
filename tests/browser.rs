//! A real browser against a real node (SPEC sections 3, 4 and 5): headless Chromium loads
//! test pages from small HTTP servers on their own origins and opens `wss://` to a node
//! with real TLS (the test CA; Chromium ignores certificate errors) and a real policy.
//! The Origin header is the one Chromium sends for the page, never one the test wrote.
//!
//! - a page on the allowed origin connects with `?access_token=`, echoes, gets
//!   `auth_expiring`, refreshes in-band (a fresh token from its own server), gets
//!   `auth_ok`, then stops refreshing and sees close 4001;
//! - pages on foreign origins (the allowed host on another port, and `localhost` on the
//!   allowed port) never open a WebSocket (cross-site WebSocket hijacking), and the node
//!   refused them with `origin_not_allowed` and opened no session for them;
//! - a page on the allowed origin gets a ticket with `fetch` (`POST /v1/tickets`, CORS
//!   preflight), connects with `?ticket=` and echoes, and cannot use the ticket twice; a
//!   credentialed `fetch` fails (no `Access-Control-Allow-Credentials`), and a foreign
//!   page's `fetch` fails by CORS.
//!
//! Each page writes JSON lines into `<pre id="log">`; the test reads them back over the
//! DevTools protocol (`Runtime.evaluate`). Chromium comes from scripts/install-deps.sh;
//! without it these tests fail, they never skip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_testkit::{Browser, PageHandler, PageServer, TestKey, TestNode, captured_logs, now, policy};
use serde_json::{Value, json};

/// Generous: a page's whole flow, Chromium start-up on a busy machine included.
const FLOW: Duration = Duration::from_secs(30);

/// Helpers every page shares: `log` appends a JSON line to `#log`; `token(ttl)` asks the
/// page's own server for a fresh token; `connect` resolves with an open WebSocket, or with
/// `null` once it closed without ever opening.
const COMMON_JS: &str = r#"
const params = new URLSearchParams(location.search);
const node = 'wss://127.0.0.1:' + params.get('node');
const api = 'https://127.0.0.1:' + params.get('node');
function log(o) { document.getElementById('log').textContent += JSON.stringify(o) + '\n'; }
async function token(ttl) { return (await fetch('/token?ttl=' + ttl)).text(); }
function connect(url, name) {
  return new Promise(resolve => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.onopen = () => { opened = true; log({ev: 'open', ws: name}); resolve(ws); };
    ws.onerror = () => log({ev: 'error', ws: name});
    ws.addEventListener('close', e => {
      log({ev: 'close', ws: name, code: e.code, clean: e.wasClean});
      if (!opened) resolve(null);
    });
  });
}
function reply(ws) { return new Promise(resolve => { ws.onmessage = e => resolve(e.data); }); }
function run(flow) { flow().catch(e => log({ev: 'exception', error: String(e)})).finally(() => log({ev: 'done'})); }
"#;

/// Echoes once, then waits for the node's warning, refreshes once with a fresh short
/// token, and never again.
const REFRESH_JS: &str = r#"
run(async () => {
  const ws = await connect(node + '/echo?access_token=' + encodeURIComponent(await token(4)), 'session');
  if (!ws) return;
  ws.send('hello from the page');
  log({ev: 'echo', data: await reply(ws)});
  let refreshed = false;
  const closed = new Promise(resolve => ws.addEventListener('close', resolve));
  ws.onmessage = async e => {
    const m = JSON.parse(e.data);
    log({ev: 'message', data: m});
    if (m.type === 'auth_expiring' && !refreshed) {
      refreshed = true;
      ws.send(JSON.stringify({type: 'auth', token: await token(4)}));
    }
  };
  await closed;
});
"#;

/// Connects with a token from its own server and echoes once.
const CONNECT_JS: &str = r#"
run(async () => {
  const ws = await connect(node + '/echo?access_token=' + encodeURIComponent(await token(600)), 'session');
  if (!ws) return;
  ws.send('hello from ' + location.origin);
  log({ev: 'echo', data: await reply(ws)});
  ws.close(1000);
});
"#;

/// Mints a ticket with `fetch` (credentialed first, which CORS must refuse), connects
/// with it, echoes, and tries it a second time.
const TICKET_JS: &str = r#"
run(async () => {
  const t = await token(600);
  const mint = extra => fetch(api + '/v1/tickets', Object.assign({
    method: 'POST',
    headers: {'Authorization': 'Bearer ' + t, 'Content-Type': 'application/json'},
    body: JSON.stringify({origin: location.origin}),
  }, extra));
  try { const r = await mint({credentials: 'include'}); log({ev: 'credentialed_fetch', status: r.status}); }
  catch (e) { log({ev: 'credentialed_fetch', error: e.name}); }
  let ticket;
  try {
    const r = await mint({});
    const body = await r.json();
    ticket = body.ticket;
    log({ev: 'fetch', status: r.status, expires_in: body.expires_in, ticket_chars: (ticket || '').length});
  } catch (e) { log({ev: 'fetch', error: e.name}); }
  if (!ticket) return;
  const ws = await connect(node + '/echo?ticket=' + encodeURIComponent(ticket), 'ticketed');
  if (ws) {
    ws.send('hello by ticket');
    log({ev: 'echo', data: await reply(ws)});
    const closed = new Promise(resolve => ws.addEventListener('close', resolve));
    ws.close(1000);
    await closed;
  }
  const again = await connect(node + '/echo?ticket=' + encodeURIComponent(ticket), 'reused');
  if (again) again.close(1000);
});
"#;

fn page(script: &str) -> String {
    format!("<!doctype html><meta charset=utf-8><title>palisade</title><pre id=log></pre><script>{COMMON_JS}{script}</script>")
}

/// Tokens minted for the pages: (`exp`, the token), in order.
type Minted = Arc<Mutex<Vec<(u64, String)>>>;

/// The pages and `GET /token?ttl=N` (a fresh token for `alice`, `exp` = now + N).
fn pages(key: Arc<TestKey>, minted: Minted) -> Arc<PageHandler> {
    Arc::new(move |target: &str| {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let html = "text/html; charset=utf-8";
        match path {
            "/refresh.html" => Some((html, page(REFRESH_JS))),
            "/connect.html" => Some((html, page(CONNECT_JS))),
            "/ticket.html" => Some((html, page(TICKET_JS))),
            "/token" => {
                let ttl = query.strip_prefix("ttl=").and_then(|t| t.parse::<u64>().ok())?;
                let exp = now() + ttl;
                let token = key.token(json!({"sub": "alice", "exp": exp}));
                minted.lock().unwrap_or_else(|p| p.into_inner()).push((exp, token.clone()));
                Some(("text/plain", token))
            }
            _ => None,
        }
    })
}

/// A node whose policy allows exactly `allowed` (one page server's origin).
async fn node_for(key: &TestKey, allowed: &str, tweak: impl FnOnce(&mut palisade_policy::Policy)) -> TestNode {
    let _ = captured_logs();
    let mut p = policy(&[key]);
    p.origins.allow = vec![allowed.to_owned()];
    tweak(&mut p);
    TestNode::start(Some(&p), |_| {}).await
}

/// This node's handshake audit records.
fn audit(node: &TestNode) -> Vec<Value> {
    let id = node.handle.state.id().to_owned();
    let logs = captured_logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "handshake" && v["node"] == id.as_str())
        .collect()
}

fn events<'a>(log: &'a [Value], ev: &str) -> Vec<&'a Value> {
    log.iter().filter(|l| l["ev"] == ev).collect()
}

fn position(log: &[Value], what: &str, f: impl Fn(&Value) -> bool) -> usize {
    log.iter().position(f).unwrap_or_else(|| panic!("the page never logged {what}: {log:#?}"))
}

fn done(log: &[Value]) -> bool {
    log.iter().any(|l| l["ev"] == "done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origin_echoes_refreshes_in_band_and_gets_4001_once_it_stops() {
    let key = Arc::new(TestKey::generate("k", "ES256"));
    let minted = Minted::default();
    let site = PageServer::start(pages(key.clone(), minted.clone())).await;
    let node = node_for(&key, &site.origin(), |p| {
        p.auth.refresh.warning_seconds = 2;
        p.auth.refresh.grace_seconds = 1;
        p.auth.leeway_seconds = 0;
    })
    .await;
    let mut browser = Browser::launch().await;
    let tab = browser.open(&format!("{}/refresh.html?node={}", site.origin(), node.addr.port())).await;
    let log = browser.wait_log(&tab, FLOW, "the session's close", done).await;
    browser.close().await;

    let minted = minted.lock().expect("lock").clone();
    let exps: Vec<u64> = minted.iter().map(|(exp, _)| *exp).collect();
    let [first, second] = exps[..] else { panic!("the page asked for two tokens: {exps:?}; it logged {log:#?}") };
    assert!(events(&log, "exception").is_empty() && events(&log, "error").is_empty(), "{log:#?}");
    let open = position(&log, "open", |l| l["ev"] == "open");
    let echo = position(&log, "the echo", |l| l["ev"] == "echo" && l["data"] == "hello from the page");
    let warned = position(&log, "auth_expiring", |l| l["data"] == json!({"type": "auth_expiring", "exp": first}));
    let ok = position(&log, "auth_ok", |l| l["data"] == json!({"type": "auth_ok", "exp": second}));
    let warned_again = position(&log, "a second auth_expiring", |l| l["data"] == json!({"type": "auth_expiring", "exp": second}));
    let closed = position(&log, "the close", |l| l["ev"] == "close");
    assert!(open < echo && echo < warned && warned < ok && ok < warned_again && warned_again < closed, "order: {log:#?}");
    assert_eq!(log[closed]["code"], 4001, "no refresh by exp + grace: close 4001; {log:#?}");
    assert!(!log.iter().any(|l| l["data"]["type"] == "auth_error"), "{log:#?}");

    // The node saw the browser's own Origin and the query carrier; no token in its logs.
    let records = audit(&node);
    let accepted: Vec<&Value> = records.iter().filter(|r| r["result"] == "accepted").collect();
    assert_eq!(accepted.len(), 1, "{records:#?}");
    assert_eq!((accepted[0]["origin"].as_str(), accepted[0]["carrier"].as_str()), (Some(site.origin().as_str()), Some("query")));
    let text = String::from_utf8_lossy(&captured_logs().lock().expect("lock")).into_owned();
    for (_, token) in &minted {
        assert!(!text.contains(token.as_str()), "a token leaked into the logs");
    }
    node.handle.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_cannot_open_a_websocket() {
    let key = Arc::new(TestKey::generate("k", "ES256"));
    let handler = pages(key.clone(), Minted::default());
    let (site, other) = (PageServer::start(handler.clone()).await, PageServer::start(handler).await);
    let node = node_for(&key, &site.origin(), |_| {}).await;
    let port = node.addr.port();
    // The allowed host on another port, and another host on the allowed port: an origin
    // is scheme, host and port.
    let foreign = [other.origin(), site.localhost_origin()];
    let mut browser = Browser::launch().await;
    let allowed_tab = browser.open(&format!("{}/connect.html?node={port}", site.origin())).await;
    let mut foreign_tabs = Vec::new();
    for origin in &foreign {
        foreign_tabs.push(browser.open(&format!("{origin}/connect.html?node={port}")).await);
    }

    // The control: the same page on the allowed origin opens and echoes.
    let log = browser.wait_log(&allowed_tab, FLOW, "the allowed page", done).await;
    assert_eq!(events(&log, "echo").first().map(|l| l["data"].clone()), Some(json!(format!("hello from {}", site.origin()))), "{log:#?}");
    for (origin, tab) in foreign.iter().zip(&foreign_tabs) {
        let log = browser.wait_log(tab, FLOW, "the foreign page", done).await;
        assert!(events(&log, "open").is_empty() && events(&log, "echo").is_empty(), "{origin} opened a WebSocket: {log:#?}");
        assert!(!events(&log, "error").is_empty(), "{origin}: the handshake failed ({log:#?})");
        let close = events(&log, "close");
        assert_eq!(close.first().map(|c| c["code"].clone()), Some(json!(1006)), "{origin}: closed without a close frame ({log:#?})");
    }
    browser.close().await;

    // The node refused exactly those two, for their Origin, and opened one session only.
    let records = audit(&node);
    for origin in &foreign {
        let mine: Vec<&Value> = records.iter().filter(|r| r["origin"] == origin.as_str()).collect();
        assert!(!mine.is_empty(), "{origin} reached the node: {records:#?}");
        for r in mine {
            assert_eq!(
                (r["result"].as_str(), r["status"].as_u64(), r["code"].as_str()),
                (Some("refused"), Some(403), Some("origin_not_allowed"))
            );
        }
    }
    let counters = node.handle.state.counters();
    assert_eq!(
        counters.handshakes_accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the allowed page was accepted: {records:#?}"
    );
    assert_eq!(counters.handshakes_refused.load(std::sync::atomic::Ordering::Relaxed), 2, "{records:#?}");
    node.handle.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_fetches_a_ticket_with_cors_and_connects_with_it_once() {
    let key = Arc::new(TestKey::generate("k", "ES256"));
    let handler = pages(key.clone(), Minted::default());
    let (site, other) = (PageServer::start(handler.clone()).await, PageServer::start(handler).await);
    let node = node_for(&key, &site.origin(), |_| {}).await;
    let port = node.addr.port();
    let mut browser = Browser::launch().await;
    let tab = browser.open(&format!("{}/ticket.html?node={port}", site.origin())).await;
    let foreign_tab = browser.open(&format!("{}/ticket.html?node={port}", other.origin())).await;

    let log = browser.wait_log(&tab, FLOW, "the ticket page", done).await;
    assert!(events(&log, "exception").is_empty(), "{log:#?}");
    // The bearer token is the credential: CORS never allows credentials, so a credentialed
    // fetch fails in the browser.
    assert_eq!(events(&log, "credentialed_fetch").first().map(|l| l["error"].clone()), Some(json!("TypeError")), "{log:#?}");
    let fetched = events(&log, "fetch");
    assert_eq!(fetched.first().map(|l| (l["status"].clone(), l["expires_in"].clone())), Some((json!(201), json!(30))), "{log:#?}");
    assert!(fetched[0]["ticket_chars"].as_u64().unwrap_or(0) >= 22, "at least 128 bits, base64url: {log:#?}");
    let opened: Vec<&Value> = events(&log, "open");
    assert_eq!(opened.iter().map(|l| l["ws"].clone()).collect::<Vec<_>>(), [json!("ticketed")], "the ticket opens once: {log:#?}");
    assert_eq!(events(&log, "echo").first().map(|l| l["data"].clone()), Some(json!("hello by ticket")), "{log:#?}");
    let reused = position(&log, "the reused ticket's close", |l| l["ev"] == "close" && l["ws"] == "reused");
    assert_eq!(log[reused]["code"], 1006, "{log:#?}");

    let foreign_log = browser.wait_log(&foreign_tab, FLOW, "the foreign ticket page", done).await;
    browser.close().await;
    assert_eq!(
        events(&foreign_log, "fetch").first().map(|l| l["error"].clone()),
        Some(json!("TypeError")),
        "CORS blocks: {foreign_log:#?}"
    );
    assert!(events(&foreign_log, "open").is_empty(), "{foreign_log:#?}");

    // The node: one ticket, for the allowed origin, consumed once; the foreign origin and
    // the credentialed request got no ticket (their preflights failed).
    let records = audit(&node);
    let issued: Vec<&Value> = records.iter().filter(|r| r["code"] == "ticket_issued").collect();
    assert_eq!(issued.len(), 1, "{records:#?}");
    assert_eq!(issued[0]["origin"], site.origin().as_str());
    let ticketed: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["carrier"] == "ticket")
        .map(|r| (r["result"].as_str().unwrap_or_default(), r["code"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(ticketed, [("accepted", "ok"), ("refused", "ticket_invalid")], "{records:#?}");
    for r in records.iter().filter(|r| r["origin"] == other.origin().as_str()) {
        assert_eq!((r["status"].as_u64(), r["code"].as_str()), (Some(403), Some("origin_not_allowed")), "{r}");
    }

    // What the browser was told, read on the wire: the one allowed origin, never `*`,
    // never credentials; a foreign origin gets no CORS headers at all.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/tickets HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
    };
    let r = node.raw(preflight(&site.origin()).as_bytes()).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert_eq!(r.header("access-control-allow-origin"), Some(site.origin()), "{}", r.head);
    assert_eq!(r.header("access-control-allow-credentials"), None, "{}", r.head);
    assert_eq!(r.header("vary").as_deref(), Some("Origin"), "{}", r.head);
    let r = node.raw(preflight(&other.origin()).as_bytes()).await;
    assert_eq!((r.status, r.code().as_str()), (403, "origin_not_allowed"), "{}", r.head);
    assert_eq!(r.header("access-control-allow-origin"), None, "{}", r.head);
    node.handle.drain().await;
}
