//! OpenTelemetry export (SPEC section 9) against a real OTLP/gRPC receiver
//! (`tests/otlp_receiver.py`: the published opentelemetry-proto definitions + grpcio),
//! with the real binary in separate processes configured by `OTEL_*` only:
//!
//! - `ws.handshake` spans with their attributes for accepted and refused attempts, the
//!   metrics (names, kinds, values), log records whose trace ids are the spans';
//! - `disconnect --user` and `policy apply` across a controller and three nodes are each
//!   one trace: CLI span -> controller server span -> one child per node -> node server span;
//! - no token, ticket or key in anything exported;
//! - handshakes succeed with the collector dead or silent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::SinkExt as _;
use palisade_testkit::etcd::Etcd;
use palisade_testkit::{Message, Pki, TestKey, next_data, policy, ws_connect};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/otlp_receiver.py");
const ORIGIN: (&str, &str) = ("Origin", "https://app.example.com");

fn normal() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 1000.into(), reason: "".into() }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The receiver process and what it wrote.
struct Receiver {
    _child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    async fn spawn(dir: &Path) -> Receiver {
        let out = dir.join("otlp.jsonl");
        let mut child = Command::new("python3")
            .args([RECEIVER, "--port", "0", "--out", out.to_str().expect("path")])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 tests/otlp_receiver.py (scripts/install-deps.sh installs opentelemetry-proto and grpcio)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("receiver starts").expect("read");
        let port = line.and_then(|l| l.strip_prefix("port ").and_then(|p| p.trim().parse().ok())).expect("receiver prints its port");
        Receiver { _child: child, port, out }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn requests(&self, signal: &str) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["signal"] == signal)
            .map(|v| v["request"].clone())
            .collect()
    }

    fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for r in self.requests("traces") {
            for rs in r["resourceSpans"].as_array().into_iter().flatten() {
                let res = attrs(&rs["resource"]["attributes"]);
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        out.push(Span {
                            resource: res.clone(),
                            name: s["name"].as_str().unwrap_or_default().to_owned(),
                            kind: s["kind"].as_str().unwrap_or_default().to_owned(),
                            trace_id: hex(&s["traceId"]),
                            span_id: hex(&s["spanId"]),
                            parent: hex(&s["parentSpanId"]),
                            attrs: attrs(&s["attributes"]),
                        });
                    }
                }
            }
        }
        out
    }

    /// The latest data points of `name` from the service instance `instance`: (kind,
    /// points as (attributes, value)).
    fn metric(&self, instance: &str, name: &str) -> Option<Metric> {
        let mut found = None;
        for r in self.requests("metrics") {
            for rm in r["resourceMetrics"].as_array().into_iter().flatten() {
                if attrs(&rm["resource"]["attributes"]).get("service.instance.id").map(String::as_str) != Some(instance) {
                    continue;
                }
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for m in sm["metrics"].as_array().into_iter().flatten().filter(|m| m["name"] == name) {
                        for kind in ["sum", "gauge", "histogram"] {
                            if let Some(d) = m.get(kind) {
                                let kind = if kind == "sum" && d["isMonotonic"] == true { "counter".to_owned() } else { kind.to_owned() };
                                let points = d["dataPoints"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .map(|p| (attrs(&p["attributes"]), p.clone()))
                                    .collect();
                                found = Some((kind, points));
                            }
                        }
                    }
                }
            }
        }
        found
    }

    fn logs(&self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        for r in self.requests("logs") {
            for rl in r["resourceLogs"].as_array().into_iter().flatten() {
                let res = attrs(&rl["resource"]["attributes"]);
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for l in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push((res.clone(), attrs(&l["attributes"]), hex(&l["traceId"])));
                    }
                }
            }
        }
        out
    }
}

type Attrs = HashMap<String, String>;
/// A metric's kind and its points (attributes, the point's JSON).
type Metric = (String, Vec<(Attrs, Value)>);
/// A log record: resource attributes, record attributes, trace id.
type LogRecord = (Attrs, Attrs, String);

#[derive(Debug, Clone)]
struct Span {
    resource: HashMap<String, String>,
    name: String,
    kind: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

fn hex(v: &Value) -> String {
    let b = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(v: &Value) -> HashMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let val = a["value"].as_object().and_then(|o| o.values().next()).cloned().unwrap_or(Value::Null);
            (a["key"].as_str().unwrap_or_default().to_owned(), val.as_str().map_or_else(|| val.to_string(), str::to_owned))
        })
        .collect()
}

/// The integer value of a counter or gauge point (json_format writes int64 as strings).
fn int(p: &Value) -> i64 {
    p["asInt"].as_str().and_then(|s| s.parse().ok()).or_else(|| p["asInt"].as_i64()).unwrap_or(-1)
}

async fn eventually<T>(within: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    try_eventually(within, check).await.unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

async fn try_eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A `palisade` process whose output lines are kept.
struct Proc {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

fn spawn(args: &[&str], env: &[(String, String)], dir: &Path) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).envs(env.iter().cloned()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn palisade");
    let lines = palisade_testkit::capture_lines(&mut child);
    Proc { _child: child, lines }
}

impl Proc {
    async fn wait_for(&self, needle: &str) {
        let lines = self.lines.clone();
        eventually(Duration::from_secs(20), needle, || lines.lock().expect("lock").iter().any(|l| l.contains(needle)).then_some(())).await;
    }
}

/// A node process on `port` (WSS) with the PKI's files in `dir`; `control` and `etcd`
/// for fleet members.
fn node(dir: &Path, id: &str, port: u16, control: Option<(u16, &Pki)>, etcd: Option<&str>, env: &[(String, String)]) -> Proc {
    let mut tail = String::new();
    let mut extra = format!("id = \"{id}\"\ncluster = \"test\"\npolicy_file = \"policy.yaml\"\ndrain_deadline_seconds = 1");
    if let Some((cport, pki)) = control {
        let c = pki.node_control_config(id);
        extra = format!("{extra}\n");
        tail += &format!("[control]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n", c.cert.display(), c.key.display(), c.ca.display());
        let toml = palisade_testkit::node_toml(port, &extra, &tail);
        let toml = toml.replacen("[listen]\n", &format!("[listen]\ncontrol = \"127.0.0.1:{cport}\"\n"), 1);
        let toml = match etcd {
            Some(e) => format!("{toml}[etcd]\nendpoints = [\"{e}\"]\nlease_ttl_seconds = 5\n"),
            None => toml,
        };
        std::fs::write(dir.join(format!("{id}.toml")), toml).expect("config");
    } else {
        std::fs::write(dir.join(format!("{id}.toml")), palisade_testkit::node_toml(port, &extra, "")).expect("config");
    }
    let cfg = dir.join(format!("{id}.toml"));
    spawn(&["node", "--config", cfg.to_str().expect("path")], env, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_spans_metrics_and_logs_reach_a_real_receiver() {
    palisade_testkit::init();
    let pki = Pki::new();
    let dir = pki.dir.path();
    let rx = Receiver::spawn(dir).await;
    let key = TestKey::generate("k", "ES256");
    std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
    let port = free_port();
    // Resource attributes from the environment join the node's own (service.name stays).
    let mut env = otel_env(&rx.endpoint());
    env.push(("OTEL_RESOURCE_ATTRIBUTES".into(), "deployment.environment.name=ci,service.namespace=edge".into()));
    let n = node(dir, "otel-node", port, None, None, &env);
    n.wait_for("node_started").await;
    let url = |q: &str| format!("wss://127.0.0.1:{port}/echo{q}");
    let tls = Some(pki.client_tls());

    // Accepted: a header token, a query token, a ticket; refused: a forged token, none.
    let good = key.token(json!({"sub": "tess"}));
    let forged = format!("{}AAAA", &good[..good.len() - 4]);
    let bearer = format!("Bearer {good}");
    let (mut a, _) = ws_connect(&url(""), &[ORIGIN, ("Authorization", &bearer)], tls.clone()).await.expect("header token");
    a.send(Message::Text("hi".into())).await.expect("send");
    assert!(next_data(&mut a).await.is_some());
    a.close(Some(normal())).await.expect("close");
    let (mut b, _) = ws_connect(&url(&format!("?access_token={good}")), &[ORIGIN], tls.clone()).await.expect("query token");
    b.close(Some(normal())).await.expect("close");
    let body = r#"{"origin":"https://app.example.com"}"#;
    let req =
        format!("POST /v1/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let r = palisade_testkit::raw_tls(([127, 0, 0, 1], port).into(), pki.client_tls(), req.as_bytes(), None).await;
    assert_eq!(r.status, 201);
    let ticket = serde_json::from_str::<Value>(&r.body).expect("json")["ticket"].as_str().expect("ticket").to_owned();
    let (_held, _) = ws_connect(&url(&format!("?ticket={ticket}")), &[ORIGIN], tls.clone()).await.expect("ticket");
    let forged_header = format!("Bearer {forged}");
    assert!(ws_connect(&url(""), &[ORIGIN, ("Authorization", &forged_header)], tls.clone()).await.is_err());
    assert!(ws_connect(&url(""), &[ORIGIN], tls.clone()).await.is_err());

    // Spans: one ws.handshake per attempt (the ticket mint is one too), with attributes.
    let spans = eventually(Duration::from_secs(20), "6 ws.handshake spans", || {
        let s: Vec<Span> = rx.spans().into_iter().filter(|s| s.name == "ws.handshake").collect();
        (s.len() >= 6).then_some(s)
    })
    .await;
    assert_eq!(spans.len(), 6, "{spans:#?}");
    for s in &spans {
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some("palisade-node"));
        assert_eq!(s.resource.get("service.instance.id").map(String::as_str), Some("otel-node"));
        assert_eq!(s.resource.get("palisade.cluster").map(String::as_str), Some("test"));
        assert!(s.resource.contains_key("service.version"));
        assert_eq!(s.resource.get("deployment.environment.name").map(String::as_str), Some("ci"), "OTEL_RESOURCE_ATTRIBUTES");
        assert_eq!(s.resource.get("service.namespace").map(String::as_str), Some("edge"));
        assert_eq!(s.kind, "SPAN_KIND_SERVER");
        assert!(s.parent.is_empty(), "a handshake is a trace root");
        assert_eq!(s.attrs.get("client.address").map(String::as_str), Some("127.0.0.1"));
        assert_eq!(s.attrs.get("network.peer.address").map(String::as_str), Some("127.0.0.1"));
        assert_eq!(
            s.attrs.get("http.route").map(String::as_str),
            Some(if s.attrs["palisade.code"] == "ticket_issued" { "/v1/tickets" } else { "/echo" })
        );
        assert!(s.attrs.contains_key("palisade.duration_us"));
    }
    let by_code = |c: &str| spans.iter().filter(|s| s.attrs.get("palisade.code").map(String::as_str) == Some(c)).collect::<Vec<_>>();
    let ok = by_code("ok");
    assert_eq!(ok.len(), 3);
    assert!(ok.iter().all(|s| s.attrs["palisade.result"] == "accepted" && s.attrs["http.response.status_code"] == "101"));
    let carriers: Vec<&str> = ok.iter().map(|s| s.attrs["palisade.carrier"].as_str()).collect();
    for c in ["header", "query", "ticket"] {
        assert!(carriers.contains(&c), "{carriers:?}");
    }
    let invalid = by_code("token_invalid");
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].attrs["palisade.result"], "refused");
    assert_eq!(invalid[0].attrs["palisade.carrier"], "header");
    assert_eq!(invalid[0].attrs["http.response.status_code"], "403");
    assert_eq!(by_code("credentials_missing").len(), 1);
    assert_eq!(by_code("ticket_issued").len(), 1);

    // Metrics: names, kinds, values (two sessions closed with 1000, one still open).
    let counts = eventually(Duration::from_secs(20), "palisade.handshakes with every code", || {
        let (kind, points) = rx.metric("otel-node", "palisade.handshakes")?;
        let m: HashMap<(String, String), i64> = points
            .iter()
            .map(|(a, p)| Some(((a.get("palisade.result")?.clone(), a.get("palisade.code")?.clone()), int(p))))
            .collect::<Option<_>>()?;
        (kind == "counter" && m.get(&("accepted".into(), "ok".into())) == Some(&3) && m.len() == 4).then_some(m)
    })
    .await;
    assert_eq!(counts[&("refused".to_string(), "token_invalid".to_string())], 1);
    assert_eq!(counts[&("refused".to_string(), "credentials_missing".to_string())], 1);
    assert_eq!(counts[&("accepted".to_string(), "ticket_issued".to_string())], 1);
    try_eventually(Duration::from_secs(20), || {
        let (kind, points) = rx.metric("otel-node", "palisade.connections.active")?;
        (kind == "gauge" && points.len() == 1 && int(&points[0].1) == 1).then_some(())?;
        let (kind, points) = rx.metric("otel-node", "palisade.disconnects")?;
        let closed = points.iter().find(|(a, _)| a.get("palisade.close_code").map(String::as_str) == Some("1000"))?;
        (kind == "counter" && int(&closed.1) == 2).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "palisade.connections.active = 1 and two 1000 disconnects: {:?} {:?}",
            rx.metric("otel-node", "palisade.connections.active"),
            rx.metric("otel-node", "palisade.disconnects")
        )
    });
    let (kind, points) = rx.metric("otel-node", "palisade.handshake.duration").expect("duration");
    assert_eq!(kind, "histogram");
    let total: i64 = points.iter().map(|(_, p)| p["count"].as_str().and_then(|c| c.parse().ok()).unwrap_or(0)).sum();
    assert_eq!(total, 6);
    for (name, want) in [
        ("palisade.messages", "counter"),
        ("palisade.bytes", "counter"),
        ("palisade.policy.version", "gauge"),
        ("palisade.egress.alerts", "counter"),
    ] {
        let (kind, _) = rx.metric("otel-node", name).unwrap_or_else(|| panic!("{name} exported"));
        assert_eq!(kind, want, "{name}");
    }
    // The WSS certificate's seconds left (the test certificate is years from expiry), and
    // the fleet cap's outcomes (no cap in this policy: all zero, but every series there).
    let (kind, certs) = rx.metric("otel-node", "palisade.tls.certificate.expiry").expect("certificate expiry exported");
    assert_eq!(kind, "gauge");
    let wss = certs.iter().find(|(a, _)| a.get("palisade.certificate").map(String::as_str) == Some("wss")).expect("the WSS certificate");
    assert!(int(&wss.1) > 14 * 86_400, "{wss:?}");
    let (kind, caps) = rx.metric("otel-node", "palisade.fleet_cap").expect("fleet cap exported");
    assert_eq!(kind, "counter");
    let mut outcomes: Vec<&str> = caps.iter().filter_map(|(a, _)| a.get("palisade.outcome").map(String::as_str)).collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["fallback", "refused", "reserved"]);
    // The same token twice (header, then query) and once more to mint the ticket: the
    // cache of verified tokens answered the later ones and holds that one token.
    let (kind, hits) = rx.metric("otel-node", "palisade.token_cache.hits").expect("token cache hits exported");
    assert_eq!(kind, "counter");
    assert!(int(&hits[0].1) >= 1, "{hits:?}");
    let (kind, held) = rx.metric("otel-node", "palisade.token_cache.entries").expect("token cache entries exported");
    assert_eq!((kind.as_str(), int(&held[0].1)), ("gauge", 1));
    // The values, not only the kinds: one message of two bytes each way (the echo of
    // "hi"), the policy of the file (version 1), no egress alert.
    let by_direction = |name: &str| {
        let (_, points) = rx.metric("otel-node", name)?;
        let of = |d: &str| points.iter().find(|(a, _)| a.get("direction").map(String::as_str) == Some(d)).map(|(_, p)| int(p));
        Some((of("in")?, of("out")?))
    };
    try_eventually(Duration::from_secs(10), || (by_direction("palisade.messages")? == (1, 1)).then_some(()))
        .await
        .unwrap_or_else(|| panic!("palisade.messages in 1, out 1: {:?}", by_direction("palisade.messages")));
    assert_eq!(by_direction("palisade.bytes"), Some((2, 2)), "palisade.bytes");
    let (_, version) = rx.metric("otel-node", "palisade.policy.version").expect("policy version");
    assert_eq!(version.iter().map(|(_, p)| int(p)).collect::<Vec<_>>(), [1]);
    let (_, alerts) = rx.metric("otel-node", "palisade.egress.alerts").expect("egress alerts");
    assert!(alerts.iter().all(|(_, p)| int(p) == 0), "{alerts:?}");
    // Never a subject, connection id or address on a metric.
    for r in rx.requests("metrics") {
        let t = r.to_string();
        assert!(!t.contains("tess") && !t.contains("127.0.0.1") && !t.contains("conn.id"), "high-cardinality attribute in {t}");
    }

    // Log records: the audit records, each with its span's trace id.
    let logs = eventually(Duration::from_secs(20), "6 audit log records", || {
        let l: Vec<_> = rx.logs().into_iter().filter(|(_, a, _)| a.get("event").map(String::as_str) == Some("handshake")).collect();
        (l.len() >= 6).then_some(l)
    })
    .await;
    let mut span_traces: Vec<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let mut log_traces: Vec<&str> = logs.iter().map(|(_, _, t)| t.as_str()).collect();
    span_traces.sort();
    log_traces.sort();
    assert_eq!(span_traces, log_traces, "every audit record is in its span");
    for (res, a, t) in &logs {
        assert_eq!(res.get("service.instance.id").map(String::as_str), Some("otel-node"));
        assert_eq!(a.get("trace_id").map(String::as_str), Some(t.as_str()), "the JSON field is the real trace id");
    }
    eventually(Duration::from_secs(20), "session_closed log records", || {
        rx.logs()
            .iter()
            .any(|(_, a, _)| {
                a.get("event").map(String::as_str) == Some("session_closed") && a.get("close_code").map(String::as_str) == Some("1000")
            })
            .then_some(())
    })
    .await;

    // No secret anywhere in the export: tokens, the ticket, the signing key.
    let all = rx.text();
    for secret in [good.as_str(), forged.as_str(), ticket.as_str(), &good[good.len() - 43..]] {
        assert!(!all.contains(secret), "a token or ticket was exported");
    }
    for line in key.private.lines().filter(|l| !l.starts_with("-----") && l.len() > 16) {
        assert!(!all.contains(line), "signing key material was exported");
    }
}

/// etcd, a controller and three nodes, each its own process exporting to the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_action_is_one_trace_across_the_fleet() {
    palisade_testkit::init();
    let etcd = Etcd::spawn().await;
    let pki = Pki::new();
    let dir = pki.dir.path();
    let rx = Receiver::spawn(dir).await;
    let env = otel_env(&rx.endpoint());
    let key = TestKey::generate("k", "ES256");
    std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for i in 1..=3 {
        let (port, cport) = (free_port(), free_port());
        nodes.push(node(dir, &format!("tn-{i}"), port, Some((cport, &pki)), Some(&etcd.endpoint()), &env));
        ports.push(port);
    }
    let ctl = pki.control_config();
    let cport = free_port();
    let cfg = format!(
        "cluster = \"test\"\nlisten = \"127.0.0.1:{cport}\"\n[tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{ca}\"\n[nodes_tls]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{ca}\"\n[etcd]\nendpoints = [\"{e}\"]\n",
        c = ctl.cert.display(),
        k = ctl.key.display(),
        ca = ctl.ca.display(),
        e = etcd.endpoint()
    );
    std::fs::write(dir.join("controller.toml"), cfg).expect("write");
    let _controller = spawn(&["controller", "--config", dir.join("controller.toml").to_str().expect("p")], &env, dir);
    let (op_cert, op_key) = pki.operator_cert();
    std::fs::write(dir.join("operator.pem"), op_cert).expect("w");
    std::fs::write(dir.join("operator-key.pem"), op_key).expect("w");
    let mut cli_env = env.clone();
    cli_env.extend([
        ("PALISADE_CONTROLLER".to_string(), format!("127.0.0.1:{cport}")),
        ("PALISADE_CA".to_string(), pki.ca_path.display().to_string()),
        ("PALISADE_CERT".to_string(), dir.join("operator.pem").display().to_string()),
        ("PALISADE_KEY".to_string(), dir.join("operator-key.pem").display().to_string()),
    ]);
    let cli_with = |args: Vec<String>, extra: Vec<(String, String)>| {
        let env = cli_env.clone();
        async move {
            let out = Command::new(BIN).args(&args).envs(env).envs(extra).output().await.expect("run palisade");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let cli = |args: Vec<String>| cli_with(args, vec![]);
    // Every node registered and reachable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, _) = cli(vec!["nodes".into(), "-o".into(), "json".into()]).await;
        if code == 0
            && serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v.as_array().map(|a| a.len() == 3 && a.iter().all(|x| x["reachable"] == true)))
                == Some(true)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the controller never saw 3 reachable nodes: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t = format!("Bearer {}", key.token_for("alice"));
    let (mut alice, _) =
        ws_connect(&format!("wss://127.0.0.1:{}/echo", ports[0]), &[ORIGIN, ("Authorization", &t)], Some(pki.client_tls()))
            .await
            .expect("alice");

    let trace_of = |stderr: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("trace id: ").map(|t| t.trim().to_owned()))
            .unwrap_or_else(|| panic!("-v prints the trace id: {stderr}"))
    };
    let (code, out, err) = cli(vec!["-v".into(), "disconnect".into(), "--user".into(), "alice".into()]).await;
    assert_eq!(code, 0, "{out}{err}");
    let disconnect = trace_of(&err);
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut alice).await {
            if let Message::Close(c) = m {
                buf.push(c.map(|c| u16::from(c.code)));
                break;
            }
        }
    })
    .await;
    assert_eq!(buf, vec![Some(4003)]);

    let policy_file = dir.join("new-policy.yaml");
    let mut p = policy(&[&key]);
    p.origins.allow.push("https://other.example.com".into());
    std::fs::write(&policy_file, p.to_yaml()).expect("write");
    // OTEL_SERVICE_NAME names the operator's process (the other CLI call keeps palisade-cli).
    let (code, out, err) = cli_with(
        vec!["policy".into(), "apply".into(), "-f".into(), policy_file.display().to_string(), "--verbose".into()],
        vec![("OTEL_SERVICE_NAME".into(), "ops-console".into())],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let apply = trace_of(&err);

    for (trace, rpc, cli_name, service) in
        [(disconnect, "Disconnect", "palisade disconnect", "palisade-cli"), (apply, "ApplyPolicy", "palisade policy apply", "ops-console")]
    {
        let spans = eventually(Duration::from_secs(20), &format!("the {rpc} trace"), || {
            let s: Vec<Span> = rx.spans().into_iter().filter(|s| s.trace_id == trace).collect();
            // Each process exports on its own schedule: wait for all eight spans.
            (s.len() >= 8
                && s.iter().filter(|s| s.name == format!("palisade.node.v1.NodeControl/{rpc}")).count() == 3
                && s.iter().any(|s| s.name == cli_name)
                && s.iter().any(|s| s.name == format!("palisade.controller.v1.FleetControl/{rpc}")))
            .then_some(s)
        })
        .await;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(spans.len(), 8, "one CLI span, one controller span, three fan-out children, three node spans: {names:?}");
        let root = spans.iter().find(|s| s.name == cli_name).expect("cli span");
        assert!(root.parent.is_empty());
        assert_eq!(root.resource["service.name"], service);
        let server = spans.iter().find(|s| s.name == format!("palisade.controller.v1.FleetControl/{rpc}")).expect("controller span");
        assert_eq!(server.parent, root.span_id);
        assert_eq!(server.resource["service.name"], "palisade-controller");
        assert_eq!(server.kind, "SPAN_KIND_SERVER");
        let children: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("node tn-")).collect();
        assert_eq!(children.len(), 3);
        for c in &children {
            assert_eq!(c.parent, server.span_id);
            assert_eq!(c.kind, "SPAN_KIND_CLIENT");
            let id = &c.attrs["palisade.node.id"];
            let on_node: Vec<&Span> = spans.iter().filter(|s| s.parent == c.span_id).collect();
            assert_eq!(on_node.len(), 1, "{rpc}: one node span under {id}");
            assert_eq!(on_node[0].name, format!("palisade.node.v1.NodeControl/{rpc}"));
            assert_eq!(&on_node[0].resource["service.instance.id"], id, "each node exports as its own resource");
            assert_eq!(on_node[0].resource["service.name"], "palisade-node");
        }
    }
    // The controller's fleet metrics, per node.
    eventually(Duration::from_secs(20), "per-node fleet series", || {
        let inst = rx
            .spans()
            .into_iter()
            .find(|s| s.resource.get("service.name").map(String::as_str) == Some("palisade-controller"))?
            .resource["service.instance.id"]
            .clone();
        let (_, points) = rx.metric(&inst, "palisade.fleet.node.policy.version")?;
        let nodes: Vec<&str> = points.iter().filter_map(|(a, _)| a.get("palisade.node.id").map(String::as_str)).collect();
        let (kind, _) = rx.metric(&inst, "palisade.policy.push.duration")?;
        (nodes.len() == 3 && kind == "histogram").then_some(())
    })
    .await;
    drop(nodes);
}

/// A listener that accepts and reads, and never answers: a hung collector.
async fn silent_collector() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_succeed_with_a_dead_or_silent_collector() {
    palisade_testkit::init();
    let dead = free_port(); // bound and released: nothing listens there
    let silent = silent_collector().await;
    for (what, collector) in [("dead", dead), ("silent", silent)] {
        let pki = Pki::new();
        let dir = pki.dir.path();
        let key = TestKey::generate("k", "ES256");
        std::fs::write(dir.join("policy.yaml"), policy(&[&key]).to_yaml()).expect("policy");
        let port = free_port();
        let mut env = otel_env(&format!("http://127.0.0.1:{collector}"));
        env.push(("OTEL_BSP_MAX_QUEUE_SIZE".into(), "16".into()));
        env.push(("OTEL_BLRP_MAX_QUEUE_SIZE".into(), "16".into()));
        let n = node(dir, &format!("{what}-node"), port, None, None, &env);
        n.wait_for("node_started").await;
        let url = format!("wss://127.0.0.1:{port}/echo");
        let tls = pki.client_tls();
        let started = std::time::Instant::now();
        let mut ok = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (url, tls, t) = (url.clone(), tls.clone(), format!("Bearer {}", key.token_for(&format!("u{}", i % 5))));
            tasks.spawn(async move {
                let (mut ws, _) = ws_connect(&url, &[ORIGIN, ("Authorization", &t)], Some(tls)).await.ok()?;
                ws.close(None).await.ok()?;
                Some(())
            });
            if tasks.len() >= 8
                && let Some(r) = tasks.join_next().await
            {
                ok += usize::from(matches!(r, Ok(Some(()))));
            }
        }
        while let Some(r) = tasks.join_next().await {
            ok += usize::from(matches!(r, Ok(Some(()))));
        }
        assert_eq!(ok, 200, "{what} collector: every handshake succeeds");
        eprintln!("{what} collector: 200 handshakes in {:?}", started.elapsed());
        if what == "silent" {
            // The bounded queues dropped, and said so.
            n.wait_for("telemetry_dropped").await;
        }
    }
}
